"""Plain-loop definition of Octave Convolution and its gradients (docs/derivations/octave.md).

Slow and obvious: 2x2 average pooling ``P``, nearest upsampling ``U`` and their adjoints written
element by element, the four convolutions and their gradients by the plain loops of
``reference.conv``. The forward is eq. 5-7 path by path; the backward walks the same paths: each
sends its output gradient back through its upsampling (``U^T``), its convolution (``K^T`` and the
weight gradient) and its pooling (``P^T``) to the input it read. ``dout = (dy_h, dy_l)``, a None
entry a zero gradient; the gradients are ``(dx_h, dx_l, dw_h2h, dw_h2l, dw_l2h, dw_l2l)``: None for an
input given as None, zero for an input given but not used (``w_l2h`` / ``w_l2l`` without ``x_l``).
"""
import numpy as np

from .._checks import pair
from .conv import conv2d, conv2d_backward


def avg_pool2(x):
    """``y[n,c,i,j] = (x[2i,2j] + x[2i,2j+1] + x[2i+1,2j] + x[2i+1,2j+1]) / 4``, floor size (eq. 3)."""
    n_batch, channels, h, w = x.shape
    y = np.zeros((n_batch, channels, h // 2, w // 2), dtype=x.dtype)
    for n, c, i, j in np.ndindex(*y.shape):
        y[n, c, i, j] = (x[n, c, 2 * i, 2 * j] + x[n, c, 2 * i, 2 * j + 1]
                         + x[n, c, 2 * i + 1, 2 * j] + x[n, c, 2 * i + 1, 2 * j + 1]) / 4
    return y


def avg_pool2_backward(g, shape):
    """``P^T g`` of shape ``shape``: each ``g[i, j] / 4`` to its 2x2 window; a trailing odd row or
    column gets 0."""
    dz = np.zeros(shape, dtype=g.dtype)
    for n, c, i, j, a, b in np.ndindex(*g.shape, 2, 2):
        dz[n, c, 2 * i + a, 2 * j + b] = g[n, c, i, j] / 4                   # (eq. 10)
    return dz


def upsample2(x):
    """``y[n,c,i,j] = x[n,c,i//2,j//2]`` (eq. 4)."""
    n_batch, channels, h, w = x.shape
    y = np.zeros((n_batch, channels, 2 * h, 2 * w), dtype=x.dtype)
    for n, c, i, j in np.ndindex(*y.shape):
        y[n, c, i, j] = x[n, c, i // 2, j // 2]
    return y


def upsample2_backward(g):
    """``U^T g``: each pixel sums its 2x2 block of ``g``."""
    n_batch, channels, h, w = g.shape
    dz = np.zeros((n_batch, channels, h // 2, w // 2), dtype=g.dtype)
    for n, c, i, j, a, b in np.ndindex(*dz.shape, 2, 2):
        dz[n, c, i, j] += g[n, c, 2 * i + a, 2 * j + b]                       # (eq. 11)
    return dz


def _path_groups(groups):
    """``(h2h, h2l, l2h, l2l)`` groups from one int or a 4-tuple."""
    return tuple(groups) if isinstance(groups, (tuple, list)) else (groups,) * 4


def _pooled(stride):
    """``sigma`` of (eq. 5): 1 at stride 2 (pool, then stride-1 convolutions), 0 at stride 1."""
    return 1 if pair(stride, 'stride')[0] == 2 else 0


def octave_conv2d(x_h, x_l, w_h2h, w_h2l, w_l2h, w_l2l, stride=1, padding=0, dilation=1, groups=1):
    """``(y_h, y_l)`` of eq. 5-7; ``groups`` an int or ``(h2h, h2l, l2h, l2l)``; stride 1 or 2.

    A term is dropped when its weight is None, the two ``x_l`` terms when ``x_l`` is None; an output
    with no term is None.
    """
    g_h2h, g_h2l, g_l2h, g_l2l = _path_groups(groups)
    sigma = _pooled(stride)

    def conv(z, w, g):
        return conv2d(z, w, None, 1, padding, dilation, g)

    xt_h = avg_pool2(x_h) if sigma else x_h
    high, low = [], []
    if w_h2h is not None:
        high.append(conv(xt_h, w_h2h, g_h2h))
    if w_h2l is not None:
        low.append(conv(avg_pool2(xt_h), w_h2l, g_h2l))
    if x_l is not None and w_l2h is not None:
        y_l2h = conv(x_l, w_l2h, g_l2h)
        high.append(y_l2h if sigma else upsample2(y_l2h))
    if x_l is not None and w_l2l is not None:
        low.append(conv(avg_pool2(x_l) if sigma else x_l, w_l2l, g_l2l))
    return (sum(high) if high else None), (sum(low) if low else None)


def octave_conv2d_backward(dout, x_h, x_l, w_h2h, w_h2l, w_l2h, w_l2l, stride=1, padding=0,
                           dilation=1, groups=1):
    """``(dx_h, dx_l, dw_h2h, dw_h2l, dw_l2h, dw_l2l)`` of :func:`octave_conv2d` for
    ``dout = (dy_h, dy_l)``."""
    dy_h, dy_l = dout
    g_h2h, g_h2l, g_l2h, g_l2l = _path_groups(groups)
    sigma = _pooled(stride)

    def conv_backward(dy, z, w, g):
        """``(dz, dw)`` of ``conv2d(z, w, None, 1, padding, dilation, g)``."""
        return conv2d_backward(dy, z, w, None, 1, padding, dilation, g)[:2]

    xt_h = avg_pool2(x_h) if sigma else x_h                                   # (eq. 5)
    xt_l = None if x_l is None else avg_pool2(x_l) if sigma else x_l          # (eq. 5)
    dxt_h = np.zeros_like(xt_h)
    dx_l = None if x_l is None else np.zeros_like(x_l)
    dw_h2h, dw_h2l, dw_l2h, dw_l2l = (None if w is None else np.zeros_like(w)
                                      for w in (w_h2h, w_h2l, w_l2h, w_l2l))
    if w_h2h is not None and dy_h is not None:
        dz, dw_h2h = conv_backward(dy_h, xt_h, w_h2h, g_h2h)                 # (eq. 12, 14)
        dxt_h += dz                                                           # (eq. 16)
    if w_h2l is not None and dy_l is not None:
        dz, dw_h2l = conv_backward(dy_l, avg_pool2(xt_h), w_h2l, g_h2l)      # (eq. 12, 14)
        dxt_h += avg_pool2_backward(dz, xt_h.shape)                           # (eq. 16)
    if x_l is not None and w_l2h is not None and dy_h is not None:
        g_lh = dy_h if sigma else upsample2_backward(dy_h)                    # (eq. 13)
        dz, dw_l2h = conv_backward(g_lh, x_l, w_l2h, g_l2h)                  # (eq. 12, 14)
        dx_l += dz                                                            # (eq. 17)
    if x_l is not None and w_l2l is not None and dy_l is not None:
        dz, dw_l2l = conv_backward(dy_l, xt_l, w_l2l, g_l2l)                 # (eq. 12, 14)
        dx_l += avg_pool2_backward(dz, x_l.shape) if sigma else dz            # (eq. 17)
    dx_h = avg_pool2_backward(dxt_h, x_h.shape) if sigma else dxt_h           # (eq. 16)
    return dx_h, dx_l, dw_h2h, dw_h2l, dw_l2h, dw_l2l
