"""Plain-loop definition of involution and its gradients (docs/derivations/involution.md, eq. 1-4).

One output element at a time: walk the kernel points, read the input tap (zero outside the input,
the padding of ``nn.Unfold(K, d, d*(K-1)//2, s)``) and accumulate ``kernel * tap``. The backward
walks the same loops: each term ``kernel * tap`` sends ``dy`` times the tap to the kernel value and
``dy`` times the kernel value to the tap; taps in the padding send nothing.
"""
import numpy as np

from .._checks import pair


def _geometry(x, kernel, kernel_size, stride, dilation):
    """``((kh, kw), (sh, sw), (dh, dw), (ph, pw), (ho, wo), C_g)``: the unfold geometry (eq. 1) and
    the channels per kernel group (``G`` inferred from the kernel)."""
    kh, kw = pair(kernel_size, 'kernel_size')
    sh, sw = pair(stride, 'stride')
    dh, dw = pair(dilation, 'dilation')
    ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2                          # (eq. 1)
    height, width = x.shape[2:]
    ho = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1                      # (eq. 1)
    wo = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_group = x.shape[1] // (kernel.shape[1] // (kh * kw))
    return (kh, kw), (sh, sw), (dh, dw), (ph, pw), (ho, wo), per_group


def involution(x, kernel, kernel_size, stride=1, dilation=1):
    """Involution by definition (eq. 2): one output element at a time,

    ``y[n,c,i,j] = sum_{u,v} kernel[n, g(c)K + u kw + v, i, j] x[n, c, i sh - ph + u dh, j sw - pw + v dw]``
    with ``x`` read as 0 outside the input, ``g(c) = c // (C / G)``, ``K = kh kw``.
    """
    (kh, kw), (sh, sw), (dh, dw), (ph, pw), (ho, wo), per_group = _geometry(
        x, kernel, kernel_size, stride, dilation)
    height, width = x.shape[2:]
    y = np.zeros(x.shape[:2] + (ho, wo), dtype=x.dtype)
    for b, c, i, j in np.ndindex(*y.shape):
        g = c // per_group
        total = 0.0
        for u, v in np.ndindex(kh, kw):
            h, w = i * sh - ph + u * dh, j * sw - pw + v * dw
            if 0 <= h < height and 0 <= w < width:
                total += kernel[b, g * kh * kw + u * kw + v, i, j] * x[b, c, h, w]
        y[b, c, i, j] = total                                                 # (eq. 2)
    return y


def involution_backward(dout, x, kernel, kernel_size, stride=1, dilation=1):
    """``(dx, dkernel)`` of :func:`involution` for ``dout (N, C, Ho, Wo)``."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw), _, per_group = _geometry(
        x, kernel, kernel_size, stride, dilation)
    height, width = x.shape[2:]
    dx, dkernel = np.zeros_like(x), np.zeros_like(kernel)
    for b, c, i, j in np.ndindex(*dout.shape):
        g = c // per_group
        for u, v in np.ndindex(kh, kw):
            h, w = i * sh - ph + u * dh, j * sw - pw + v * dw
            if 0 <= h < height and 0 <= w < width:
                dkernel[b, g * kh * kw + u * kw + v, i, j] += dout[b, c, i, j] * x[b, c, h, w]   # (eq. 3)
                dx[b, c, h, w] += kernel[b, g * kh * kw + u * kw + v, i, j] * dout[b, c, i, j]   # (eq. 4)
    return dx, dkernel
