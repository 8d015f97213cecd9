"""Plain-loop definition of involution (docs/derivations/involution.md, eq. 1-2).

One output element at a time: walk the kernel points, read the input tap (zero outside the input,
the padding of ``nn.Unfold(K, d, d*(K-1)//2, s)``) and accumulate ``kernel * tap``.
"""
import numpy as np

from .._checks import pair


def involution(x, kernel, kernel_size, stride=1, dilation=1):
    """Involution by definition (eq. 2): one output element at a time,

    ``y[n,c,i,j] = sum_{u,v} kernel[n, g(c)K + u kw + v, i, j] x[n, c, i sh - ph + u dh, j sw - pw + v dw]``
    with ``x`` read as 0 outside the input, ``g(c) = c // (C / G)``, ``K = kh kw``.
    """
    kh, kw = pair(kernel_size, 'kernel_size')
    sh, sw = pair(stride, 'stride')
    dh, dw = pair(dilation, 'dilation')
    ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2                     # (eq. 1)
    n, channels, height, width = x.shape
    ho = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_group = channels // (kernel.shape[1] // (kh * kw))
    y = np.zeros((n, channels, ho, wo), dtype=x.dtype)
    for b in range(n):
        for c in range(channels):
            g = c // per_group
            for i in range(ho):
                for j in range(wo):
                    total = 0.0
                    for u in range(kh):
                        for v in range(kw):
                            h, w = i * sh - ph + u * dh, j * sw - pw + v * dw
                            if 0 <= h < height and 0 <= w < width:
                                total += kernel[b, g * kh * kw + u * kw + v, i, j] * x[b, c, h, w]
                    y[b, c, i, j] = total                                 # (eq. 2)
    return y
