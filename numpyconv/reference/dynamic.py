"""Plain-loop definitions of DY-CNN and of the kernel aggregation it shares with CondConv.

Forward, for each sample: pool, run the attention element by element, build the sample's kernel
explicitly as a weighted sum of the K kernels, then convolve with the plain-loop
:func:`numpyconv.reference.conv.conv2d`. Backward: the same steps in reverse, one equation a line.
Equation numbers: docs/derivations/dynamic.md. The loops of the pooling, the linear maps and the
per-sample convolution's backward are shared with CondConv, ODConv and KernelWarehouse.
"""
import math
from itertools import product

import numpy as np

from .._checks import padding4, pair
from .conv import conv2d


def per_sample_conv2d_backward(dy, x, weight, stride, padding, dilation, groups):
    """``(dx, dweight (N, C_out, C_g, kh, kw), dbias (N, C_out))`` of a convolution with one kernel
    per sample, ``y[n] = conv(x[n]; weight[n]) + bias[n]``, by its three defining sums (eq. 8)."""
    n_batch, c_in, height, width = x.shape
    c_out, c_g, kh, kw = weight.shape[1:]
    (sh, sw), (dh, dw) = pair(stride, 'stride'), pair(dilation, 'dilation')
    top, _, left, _ = padding4(padding, (kh, kw), (sh, sw), (dh, dw))
    o_g = c_out // groups
    dx, dweight = np.zeros(x.shape, dtype=x.dtype), np.zeros(weight.shape, dtype=x.dtype)
    dbias = np.zeros((n_batch, c_out), dtype=x.dtype)
    for n, o, i, j in np.ndindex(*dy.shape):
        dbias[n, o] += dy[n, o, i, j]                                                   # (eq. 8)
        for c, p, q in product(range(c_g), range(kh), range(kw)):
            ci, row, col = (o // o_g) * c_g + c, i * sh + p * dh - top, j * sw + q * dw - left
            if 0 <= row < height and 0 <= col < width:                  # zero padding reads 0
                dweight[n, o, c, p, q] += dy[n, o, i, j] * x[n, ci, row, col]             # (eq. 8)
                dx[n, ci, row, col] += weight[n, o, c, p, q] * dy[n, o, i, j]             # (eq. 8)
    return dx, dweight, dbias


def pool(x):
    """``p[n, c] = sum_{h,w} x[n, c, h, w] / (H W)`` (eq. 1)."""
    n_batch, c_in, height, width = x.shape
    p = np.zeros((n_batch, c_in), dtype=x.dtype)
    for n, c, h, w in np.ndindex(*x.shape):
        p[n, c] += x[n, c, h, w] / (height * width)
    return p


def affine(matrix, rows, bias=None):
    """``out[n, o] = bias[o] + sum_c matrix[o, c] rows[n, c]``."""
    out = np.zeros((rows.shape[0], matrix.shape[0]), dtype=rows.dtype)
    for n, o in np.ndindex(*out.shape):
        out[n, o] = (0.0 if bias is None else bias[o]) + sum(
            matrix[o, c] * rows[n, c] for c in range(matrix.shape[1]))
    return out


def pool_backward(dp, x_shape):
    """``dx[n, c, h, w] = dp[n, c] / (H W)``: the pooling's transpose."""
    dx = np.zeros(x_shape, dtype=dp.dtype)
    for n, c, h, w in np.ndindex(*x_shape):
        dx[n, c, h, w] = dp[n, c] / (x_shape[2] * x_shape[3])
    return dx


def _mixture(attention, weight, bias):
    """``Wt_n = sum_k a[n,k] W_k`` and ``bt_n = sum_k a[n,k] b_k`` (eq. 6), element by element."""
    n_batch, n_kernels = attention.shape
    kernels = np.zeros((n_batch,) + weight.shape[1:], dtype=weight.dtype)
    for n, k in product(range(n_batch), range(n_kernels)):
        for index in np.ndindex(*weight.shape[1:]):
            kernels[(n,) + index] += attention[n, k] * weight[(k,) + index]             # (eq. 6)
    if bias is None:
        return kernels, None
    biases = np.zeros((n_batch, bias.shape[1]), dtype=bias.dtype)
    for n, k, o in product(range(n_batch), range(n_kernels), range(bias.shape[1])):
        biases[n, o] += attention[n, k] * bias[k, o]                                     # (eq. 6)
    return kernels, biases


def aggregated_conv2d(x, attention, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``y (N, C_out, Ho, Wo)``, per sample: ``Wt_n = sum_k a[n,k] W_k``, ``bt_n = sum_k a[n,k] b_k``
    (eq. 6), then the convolution (eq. 7). Arguments as :func:`numpyconv.aggregated_conv2d_forward`."""
    kernels, biases = _mixture(attention, weight, bias)
    return conv2d(x, kernels, biases, stride, padding, dilation, groups)


def aggregated_conv2d_backward(dout, x, attention, weight, bias=None, stride=1, padding=0, dilation=1,
                               groups=1):
    """``(dx, dattention, dweight, dbias)`` of :func:`aggregated_conv2d` (eqs. 8-10)."""
    kernels, _ = _mixture(attention, weight, bias)
    dx, dkernels, dbiases = per_sample_conv2d_backward(dout, x, kernels, stride, padding, dilation,
                                                       groups)                           # (eq. 8)
    dattention, dweight = np.zeros_like(attention), np.zeros_like(weight)
    for n, k in np.ndindex(*attention.shape):
        for index in np.ndindex(*weight.shape[1:]):
            dweight[(k,) + index] += attention[n, k] * dkernels[(n,) + index]             # (eq. 9)
            dattention[n, k] += weight[(k,) + index] * dkernels[(n,) + index]             # (eq. 10)
    if bias is None:
        return dx, dattention, dweight, None
    dbias = np.zeros_like(bias)
    for n, k, o in product(range(x.shape[0]), *map(range, bias.shape)):
        dbias[k, o] += attention[n, k] * dbiases[n, o]                                   # (eq. 9)
        dattention[n, k] += bias[k, o] * dbiases[n, o]                                   # (eq. 10)
    return dx, dattention, dweight, dbias


def _attention(x, fc1_weight, fc2_weight, fc2_bias, temperature):
    """``(p, a, r, pi)``: pooled input, hidden, active hidden and the softmax attention (eqs. 1-5)."""
    p = pool(x)                                                                          # (eq. 1)
    a = affine(fc1_weight[:, :, 0, 0], p)                                                # (eq. 2)
    r = np.maximum(a, 0)                                                                 # (eq. 3)
    z = affine(fc2_weight[:, :, 0, 0], r, fc2_bias)                                      # (eq. 4)
    pi = np.zeros_like(z)
    for n in range(z.shape[0]):
        top = max(z[n])                                      # shift by the maximum: same value
        exps = [math.exp((z[n, k] - top) / temperature) for k in range(z.shape[1])]
        for k in range(z.shape[1]):
            pi[n, k] = exps[k] / sum(exps)                                               # (eq. 5)
    return p, a, r, pi


def dynamic_conv2d(x, weight, bias, fc1_weight, fc2_weight, fc2_bias, temperature=1.0, stride=1,
                   padding=0, dilation=1, groups=1):
    """DY-CNN, ``y (N, C_out, Ho, Wo)``: ``pi_n = softmax((W2 relu(W1 GAP(x_n)) + b2) / T)``, then the
    mixture convolution. Arguments as :func:`numpyconv.dynamic_conv2d_forward`."""
    pi = _attention(x, fc1_weight, fc2_weight, fc2_bias, temperature)[3]                 # (eqs. 1-5)
    return aggregated_conv2d(x, pi, weight, bias, stride, padding, dilation, groups)     # (eqs. 6-7)


def dynamic_conv2d_backward(dout, x, weight, bias, fc1_weight, fc2_weight, fc2_bias, temperature=1.0,
                            stride=1, padding=0, dilation=1, groups=1):
    """``(dx, dweight, dbias, dfc1_weight, dfc2_weight, dfc2_bias)`` of :func:`dynamic_conv2d`
    (eqs. 8-15); ``dbias`` / ``dfc2_bias`` are None when ``bias`` / ``fc2_bias`` are."""
    p, a, r, pi = _attention(x, fc1_weight, fc2_weight, fc2_bias, temperature)
    w1, w2 = fc1_weight[:, :, 0, 0], fc2_weight[:, :, 0, 0]
    dx, dpi, dweight, dbias = aggregated_conv2d_backward(dout, x, pi, weight, bias, stride, padding,
                                                         dilation, groups)              # (eqs. 8-10)
    dz = np.zeros_like(pi)
    for n, k in np.ndindex(*pi.shape):
        expected = sum(pi[n, j] * dpi[n, j] for j in range(pi.shape[1]))              # <pi_n, dpi_n>
        dz[n, k] = pi[n, k] / temperature * (dpi[n, k] - expected)                       # (eq. 11)
    dw2, dr = np.zeros_like(w2), np.zeros_like(r)
    for n, k, d in product(range(x.shape[0]), *map(range, w2.shape)):
        dw2[k, d] += dz[n, k] * r[n, d]                                                  # (eq. 12)
        dr[n, d] += w2[k, d] * dz[n, k]                                                  # (eq. 12)
    db2 = None if fc2_bias is None else np.zeros_like(fc2_bias)
    if fc2_bias is not None:
        for n, k in np.ndindex(*dz.shape):
            db2[k] += dz[n, k]                                                           # (eq. 12)
    da = dr * (a > 0)                                                                    # (eq. 13)
    dw1, dp = np.zeros_like(w1), np.zeros_like(p)
    for n, d, c in product(range(x.shape[0]), *map(range, w1.shape)):
        dw1[d, c] += da[n, d] * p[n, c]                                                  # (eq. 14)
        dp[n, c] += w1[d, c] * da[n, d]                                                  # (eq. 14)
    dx = dx + pool_backward(dp, x.shape)                                                 # (eq. 15)
    return dx, dweight, dbias, dw1[:, :, None, None], dw2[:, :, None, None], db2
