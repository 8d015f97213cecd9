"""Plain-loop definitions of the standard convolutions and their gradients: slow, obvious, the thing to
read first.

Each forward is the defining sum of docs/derivations/conv.md written as nested loops, with no im2col
and no GEMM: ``xp`` is ``x`` zero-padded by ``(top, bottom, left, right)``, output ``(n, o, i, j)``
reads ``xp[n, g(o)*C_g + c, i*sh + p*dh, j*sw + q*dw]`` for every channel ``c`` of its group and every
kernel point ``(p, q)``. Each ``<op>_backward(dout, *forward_args)`` walks the same loops: every
term ``W[o,c,p,q] * xp[...]`` of an output sends ``dy[n,o,i,j]`` times the one factor to the other,
and the padding's share of ``dxp`` is cropped away. It returns what ``numpyconv.<op>_backward``
returns: ``(dx, dweight, dbias)`` (separable: ``(dx, d_dw_weight, d_pw_weight, d_dw_bias,
d_pw_bias)``), None for a bias given as None.
"""
import numpy as np

from .._checks import padding4, pair


def _geometry(x, kernel_hw, stride, padding, dilation):
    """``((sh, sw), (dh, dw), (top, bottom, left, right), (ho, wo))`` of (eq. 2)."""
    (kh, kw), (h, w) = kernel_hw, x.shape[2:]
    sh, sw = pair(stride, 'stride')
    dh, dw = pair(dilation, 'dilation')
    top, bottom, left, right = padding4(padding, (kh, kw), (sh, sw), (dh, dw))
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    return (sh, sw), (dh, dw), (top, bottom, left, right), (ho, wo)


def _pad(x, pads):
    """``xp``: ``x`` with ``pads = (top, bottom, left, right)`` rows and columns of zeros around it."""
    top, bottom, left, right = pads
    n_batch, channels, h, w = x.shape
    xp = np.zeros((n_batch, channels, h + top + bottom, w + left + right), dtype=x.dtype)
    for n, c, r, s in np.ndindex(*x.shape):
        xp[n, c, top + r, left + s] = x[n, c, r, s]
    return xp


def _crop(dxp, pads, hw):
    """``dx``: the gradient of ``xp`` without its padding ring (padding's adjoint, eq. 7)."""
    top, left = pads[0], pads[2]
    dx = np.zeros(dxp.shape[:2] + tuple(hw), dtype=dxp.dtype)
    for n, c, r, s in np.ndindex(*dx.shape):
        dx[n, c, r, s] = dxp[n, c, top + r, left + s]
    return dx


# -- conv2d --------------------------------------------------------------------------------------
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``y[n,o,i,j] = b[o] + sum_{c,p,q} W[o,c,p,q] xp[n, g(o)*C_g + c, i*sh + p*dh, j*sw + q*dw]`` (eq. 1).

    ``weight`` may be per sample ``(N, C_out, C_in//groups, kh, kw)`` (one convolution per sample)
    with ``bias (N, C_out)``.
    """
    c_out, c_g, kh, kw = weight.shape[-4:]
    (sh, sw), (dh, dw), pads, (ho, wo) = _geometry(x, (kh, kw), stride, padding, dilation)
    xp = _pad(x, pads)
    o_g = c_out // groups
    y = np.zeros((x.shape[0], c_out, ho, wo), dtype=x.dtype)
    for n, o, i, j in np.ndindex(*y.shape):
        w_n = weight[n] if weight.ndim == 5 else weight
        b_n = bias[n] if bias is not None and bias.ndim == 2 else bias
        g = o // o_g
        total = 0.0 if b_n is None else b_n[o]
        for c, p, q in np.ndindex(c_g, kh, kw):
            total += w_n[o, c, p, q] * xp[n, g * c_g + c, i * sh + p * dh, j * sw + q * dw]
        y[n, o, i, j] = total
    return y


def conv2d_backward(dout, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``(dx, dweight, dbias)`` of :func:`conv2d` for ``dout (N, C_out, Ho, Wo)``; a per-sample
    weight gets a per-sample gradient (no sum over ``n``)."""
    c_out, c_g, kh, kw = weight.shape[-4:]
    (sh, sw), (dh, dw), pads, (ho, wo) = _geometry(x, (kh, kw), stride, padding, dilation)
    xp = _pad(x, pads)
    o_g = c_out // groups
    dxp, dweight = np.zeros_like(xp), np.zeros_like(weight)
    dbias = None if bias is None else np.zeros_like(bias)
    for n, o, i, j in np.ndindex(x.shape[0], c_out, ho, wo):
        w_n, dw_n = (weight[n], dweight[n]) if weight.ndim == 5 else (weight, dweight)   # views
        g = o // o_g
        if bias is not None:
            dbias[(n, o) if bias.ndim == 2 else o] += dout[n, o, i, j]                    # (eq. 5)
        for c, p, q in np.ndindex(c_g, kh, kw):
            row, col = i * sh + p * dh, j * sw + q * dw
            dw_n[o, c, p, q] += dout[n, o, i, j] * xp[n, g * c_g + c, row, col]           # (eq. 6)
            dxp[n, g * c_g + c, row, col] += dout[n, o, i, j] * w_n[o, c, p, q]           # (eq. 7)
    return _crop(dxp, pads, x.shape[2:]), dweight, dbias                                  # (eq. 7)


# -- depthwise -----------------------------------------------------------------------------------
def depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """Output channel ``o = c*m + t`` reads input channel ``c`` only, ``weight (C*m, 1, kh, kw)``:
    ``y[n,o,i,j] = b[o] + sum_{p,q} W[o,0,p,q] xp[n, c, i*sh + p*dh, j*sw + q*dw]`` (eq. 8)."""
    channels, (kh, kw) = x.shape[1], weight.shape[2:]
    mult = weight.shape[0] // channels
    (sh, sw), (dh, dw), pads, (ho, wo) = _geometry(x, (kh, kw), stride, padding, dilation)
    xp = _pad(x, pads)
    y = np.zeros((x.shape[0], channels * mult, ho, wo), dtype=x.dtype)
    for n, c, t, i, j in np.ndindex(x.shape[0], channels, mult, ho, wo):
        o = c * mult + t
        total = 0.0 if bias is None else bias[o]
        for p, q in np.ndindex(kh, kw):
            total += weight[o, 0, p, q] * xp[n, c, i * sh + p * dh, j * sw + q * dw]
        y[n, o, i, j] = total
    return y


def depthwise_conv2d_backward(dout, x, weight, bias=None, stride=1, padding=0, dilation=1):
    """``(dx, dweight, dbias)`` of :func:`depthwise_conv2d`."""
    channels, (kh, kw) = x.shape[1], weight.shape[2:]
    mult = weight.shape[0] // channels
    (sh, sw), (dh, dw), pads, (ho, wo) = _geometry(x, (kh, kw), stride, padding, dilation)
    xp = _pad(x, pads)
    dxp, dweight = np.zeros_like(xp), np.zeros_like(weight)
    dbias = None if bias is None else np.zeros_like(bias)
    for n, c, t, i, j in np.ndindex(x.shape[0], channels, mult, ho, wo):
        o = c * mult + t
        if bias is not None:
            dbias[o] += dout[n, o, i, j]                                                  # (eq. 5)
        for p, q in np.ndindex(kh, kw):
            row, col = i * sh + p * dh, j * sw + q * dw
            dweight[o, 0, p, q] += dout[n, o, i, j] * xp[n, c, row, col]                  # (eq. 9)
            dxp[n, c, row, col] += weight[o, 0, p, q] * dout[n, o, i, j]                  # (eq. 10)
    return _crop(dxp, pads, x.shape[2:]), dweight, dbias                                  # (eq. 7)


# -- pointwise -----------------------------------------------------------------------------------
def pointwise_conv2d(x, weight, bias=None, stride=1):
    """``y[n,o,i,j] = b[o] + sum_c W[o,c,0,0] x[n,c,i*sh,j*sw]`` (eq. 11)."""
    sh, sw = pair(stride, 'stride')
    n_batch, c_in, h, w = x.shape
    ho, wo = -(-h // sh), -(-w // sw)                     # every sh-th row from row 0
    y = np.zeros((n_batch, weight.shape[0], ho, wo), dtype=x.dtype)
    for n, o, i, j in np.ndindex(*y.shape):
        y[n, o, i, j] = (0.0 if bias is None else bias[o]) + sum(
            weight[o, c, 0, 0] * x[n, c, i * sh, j * sw] for c in range(c_in))
    return y


def pointwise_conv2d_backward(dout, x, weight, bias=None, stride=1):
    """``(dx, dweight, dbias)`` of :func:`pointwise_conv2d`; the rows and columns the stride skips
    get 0."""
    sh, sw = pair(stride, 'stride')
    dx, dweight = np.zeros_like(x), np.zeros_like(weight)
    dbias = None if bias is None else np.zeros_like(bias)
    for n, o, i, j in np.ndindex(*dout.shape):
        if bias is not None:
            dbias[o] += dout[n, o, i, j]                                                  # (eq. 5)
        for c in range(x.shape[1]):
            dweight[o, c, 0, 0] += dout[n, o, i, j] * x[n, c, i * sh, j * sw]             # (eq. 12)
            dx[n, c, i * sh, j * sw] += weight[o, c, 0, 0] * dout[n, o, i, j]             # (eq. 12)
    return dx, dweight, dbias


# -- separable -----------------------------------------------------------------------------------
def separable_conv2d(x, dw_weight, pw_weight, dw_bias=None, pw_bias=None, stride=1, padding=0,
                     dilation=1):
    """Depthwise (with stride, padding, dilation) then pointwise 1x1 (eq. 13)."""
    mid = depthwise_conv2d(x, dw_weight, dw_bias, stride, padding, dilation)
    return pointwise_conv2d(mid, pw_weight, pw_bias)


def separable_conv2d_backward(dout, x, dw_weight, pw_weight, dw_bias=None, pw_bias=None, stride=1,
                              padding=0, dilation=1):
    """``(dx, d_dw_weight, d_pw_weight, d_dw_bias, d_pw_bias)`` of :func:`separable_conv2d`."""
    mid = depthwise_conv2d(x, dw_weight, dw_bias, stride, padding, dilation)             # (eq. 13)
    dmid, d_pw_weight, d_pw_bias = pointwise_conv2d_backward(dout, mid, pw_weight, pw_bias)   # (eq. 14)
    dx, d_dw_weight, d_dw_bias = depthwise_conv2d_backward(dmid, x, dw_weight, dw_bias, stride,
                                                           padding, dilation)              # (eq. 14)
    return dx, d_dw_weight, d_pw_weight, d_dw_bias, d_pw_bias


def im2col(xp, kernel_size, stride, dilation, out_hw):
    """``cols[n, c, p, q, i, j] = xp[n, c, i*sh + p*dh, j*sw + q*dw]``, element by element."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel_size, stride, dilation, out_hw
    n_batch, c_in = xp.shape[:2]
    cols = np.zeros((n_batch, c_in, kh, kw, ho, wo), dtype=xp.dtype)
    for n, c, p, q, i, j in np.ndindex(*cols.shape):
        cols[n, c, p, q, i, j] = xp[n, c, i * sh + p * dh, j * sw + q * dw]
    return cols
