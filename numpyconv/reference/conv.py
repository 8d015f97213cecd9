"""Plain-loop definitions of the standard convolutions: slow, obvious, the thing to read first.

Each function is the defining sum of docs/derivations/conv.md written as nested loops, with no
im2col and no GEMM. The tests compare the fast ops against these.
"""
import numpy as np

from .._checks import padding4, pair


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``y[n,o,i,j] = b[o] + sum_{c,p,q} W[o,c,p,q] xp[n, g(o)*C_g + c, i*sh + p*dh, j*sw + q*dw]`` (eq. 1).

    ``weight`` may be per sample ``(N, C_out, C_in//groups, kh, kw)`` (one convolution per sample).
    """
    n_batch, c_in, h, w = x.shape
    c_out, c_g, kh, kw = weight.shape[-4:]
    sh, sw = pair(stride, 'stride')
    dh, dw = pair(dilation, 'dilation')
    top, bottom, left, right = padding4(padding, (kh, kw), (sh, sw), (dh, dw))
    xp = np.zeros((n_batch, c_in, h + top + bottom, w + left + right), dtype=x.dtype)
    xp[:, :, top:top + h, left:left + w] = x
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    o_g = c_out // groups
    y = np.zeros((n_batch, c_out, ho, wo), dtype=x.dtype)
    for n in range(n_batch):
        w_n = weight[n] if weight.ndim == 5 else weight
        b_n = bias[n] if bias is not None and bias.ndim == 2 else bias
        for o in range(c_out):
            g = o // o_g
            for i in range(ho):
                for j in range(wo):
                    total = 0.0 if b_n is None else b_n[o]
                    for c in range(c_g):
                        for p in range(kh):
                            for q in range(kw):
                                row, col = i * sh + p * dh, j * sw + q * dw
                                total += w_n[o, c, p, q] * xp[n, g * c_g + c, row, col]
                    y[n, o, i, j] = total
    return y


def depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """Output channel ``o`` reads input channel ``o // multiplier`` only."""
    return conv2d(x, weight, bias, stride, padding, dilation, groups=x.shape[1])


def pointwise_conv2d(x, weight, bias=None, stride=1):
    """``y[n,o,i,j] = b[o] + sum_c W[o,c] x[n,c,i*sh,j*sw]``."""
    sh, sw = pair(stride, 'stride')
    xs = x[:, :, ::sh, ::sw]
    n_batch, c_in, ho, wo = xs.shape
    y = np.zeros((n_batch, weight.shape[0], ho, wo), dtype=x.dtype)
    for n in range(n_batch):
        for o in range(weight.shape[0]):
            for i in range(ho):
                for j in range(wo):
                    y[n, o, i, j] = (0.0 if bias is None else bias[o]) + sum(
                        weight[o, c, 0, 0] * xs[n, c, i, j] for c in range(c_in))
    return y


def separable_conv2d(x, dw_weight, pw_weight, dw_bias=None, pw_bias=None, stride=1, padding=0,
                     dilation=1):
    """Depthwise then pointwise."""
    return pointwise_conv2d(depthwise_conv2d(x, dw_weight, dw_bias, stride, padding, dilation),
                            pw_weight, pw_bias)


def im2col(xp, kernel_size, stride, dilation, out_hw):
    """``cols[n, c, p, q, i, j] = xp[n, c, i*sh + p*dh, j*sw + q*dw]``, element by element."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel_size, stride, dilation, out_hw
    n_batch, c_in = xp.shape[:2]
    cols = np.zeros((n_batch, c_in, kh, kw, ho, wo), dtype=xp.dtype)
    for n in range(n_batch):
        for c in range(c_in):
            for p in range(kh):
                for q in range(kw):
                    for i in range(ho):
                        for j in range(wo):
                            cols[n, c, p, q, i, j] = xp[n, c, i * sh + p * dh, j * sw + q * dw]
    return cols
