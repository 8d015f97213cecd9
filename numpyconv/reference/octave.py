"""Plain-loop definition of Octave Convolution (docs/derivations/octave.md, eq. 3-7).

Slow and obvious: 2x2 average pooling and nearest upsampling written element by element, the four
convolutions by the plain-loop ``reference.conv.conv2d``. The tests compare the fast op against it.
"""
import numpy as np

from .conv import conv2d


def avg_pool2(x):
    """``y[n,c,i,j] = (x[2i,2j] + x[2i,2j+1] + x[2i+1,2j] + x[2i+1,2j+1]) / 4``, floor size (eq. 3)."""
    n_batch, channels, h, w = x.shape
    y = np.zeros((n_batch, channels, h // 2, w // 2), dtype=x.dtype)
    for n in range(n_batch):
        for c in range(channels):
            for i in range(h // 2):
                for j in range(w // 2):
                    y[n, c, i, j] = (x[n, c, 2 * i, 2 * j] + x[n, c, 2 * i, 2 * j + 1]
                                     + x[n, c, 2 * i + 1, 2 * j] + x[n, c, 2 * i + 1, 2 * j + 1]) / 4
    return y


def upsample2(x):
    """``y[n,c,i,j] = x[n,c,i//2,j//2]`` (eq. 4)."""
    n_batch, channels, h, w = x.shape
    y = np.zeros((n_batch, channels, 2 * h, 2 * w), dtype=x.dtype)
    for n in range(n_batch):
        for c in range(channels):
            for i in range(2 * h):
                for j in range(2 * w):
                    y[n, c, i, j] = x[n, c, i // 2, j // 2]
    return y


def octave_conv2d(x_h, x_l, w_h2h, w_h2l, w_l2h, w_l2l, stride=1, padding=0, dilation=1, groups=1):
    """``(y_h, y_l)`` of eq. 5-7; ``groups`` an int or ``(h2h, h2l, l2h, l2l)``; stride 1 or 2."""
    g_h2h, g_h2l, g_l2h, g_l2l = groups if isinstance(groups, (tuple, list)) else (groups,) * 4

    def conv(z, w, g):
        return conv2d(z, w, None, 1, padding, dilation, g)

    xt_h = avg_pool2(x_h) if stride == 2 else x_h
    high, low = [], []
    if w_h2h is not None:
        high.append(conv(xt_h, w_h2h, g_h2h))
    if w_h2l is not None:
        low.append(conv(avg_pool2(xt_h), w_h2l, g_h2l))
    if x_l is not None and w_l2h is not None:
        y_l2h = conv(x_l, w_l2h, g_l2h)
        high.append(upsample2(y_l2h) if stride == 1 else y_l2h)
    if x_l is not None and w_l2l is not None:
        low.append(conv(avg_pool2(x_l) if stride == 2 else x_l, w_l2l, g_l2l))
    return (sum(high) if high else None), (sum(low) if low else None)
