"""Plain-loop definition of the transposed convolution, forward and backward: every input pixel
scatters its channels, weighted by the kernel, onto the output window it would be read from by
the corresponding convolution (docs/derivations/conv.md, eq. 15-20). No im2col, no GEMM.
"""
import numpy as np


def _pair(v):
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def _taps(x, weight, stride, padding, output_padding, groups, dilation):
    """``(out_hw, taps)``: every ``(n, c_in, i, j, o, a, b, u, v)`` with output position ``(u, v)``
    inside the output, ``o`` the output channel (eq. 15)."""
    n_batch, c_in, h, w = x.shape
    o_g, kh, kw = weight.shape[1:]
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = map(_pair, (stride, padding, output_padding, dilation))
    ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1                         # (eq. 16)
    wo = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    c_g = c_in // groups
    taps = []
    for n, c, i, j in np.ndindex(n_batch, c_in, h, w):
        g = c // c_g
        for o, a, b in np.ndindex(o_g, kh, kw):
            u, v = i * sh - ph + a * dh, j * sw - pw + b * dw
            if 0 <= u < ho and 0 <= v < wo:
                taps.append((n, c, i, j, g * o_g + o, o, a, b, u, v))
    return (ho, wo), taps


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """``y[n, g O_g + o, i sh - ph + a dh, j sw - pw + b dw] += W[c, o, a, b] x[n, c, i, j]``, then
    ``+ b`` (eq. 15)."""
    (ho, wo), taps = _taps(x, weight, stride, padding, output_padding, groups, dilation)
    c_out = weight.shape[1] * groups
    y = np.zeros((x.shape[0], c_out, ho, wo), dtype=x.dtype)
    for n, c, i, j, out_c, o, a, b, u, v in taps:
        y[n, out_c, u, v] += weight[c, o, a, b] * x[n, c, i, j]
    if bias is not None:
        for n, o, u, v in np.ndindex(*y.shape):
            y[n, o, u, v] += bias[o]
    return y


def conv_transpose2d_backward(dout, x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1):
    """``(dx, dweight, dbias)``: each tap of (eq. 15) differentiated (eq. 18-20)."""
    _, taps = _taps(x, weight, stride, padding, output_padding, groups, dilation)
    dx, dweight = np.zeros_like(x), np.zeros_like(weight)
    for n, c, i, j, out_c, o, a, b, u, v in taps:
        dx[n, c, i, j] += weight[c, o, a, b] * dout[n, out_c, u, v]             # (eq. 18)
        dweight[c, o, a, b] += x[n, c, i, j] * dout[n, out_c, u, v]             # (eq. 19)
    dbias = None
    if bias is not None:
        dbias = np.zeros_like(bias)
        for n, o, u, v in np.ndindex(*dout.shape):
            dbias[o] += dout[n, o, u, v]                                         # (eq. 20)
    return dx, dweight, dbias
