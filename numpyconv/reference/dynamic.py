"""Plain-loop definitions of DY-CNN and CondConv, one sample at a time.

For each sample: pool, run the attention (or routing) element by element, build the sample's
kernel explicitly as a weighted sum of the K kernels, then convolve with the plain-loop
:func:`numpyconv.reference.conv.conv2d`. Equation numbers: docs/derivations/dynamic.md and condconv.md.
"""
import math

import numpy as np

from .conv import conv2d


def _pool(x_n):
    """``p[c] = mean over (h, w) of x_n[c]`` (eq. 1)."""
    c_in, h, w = x_n.shape
    return np.array([sum(x_n[c, i, j] for i in range(h) for j in range(w)) / (h * w)
                     for c in range(c_in)])


def _affine(matrix, vector, bias=None):
    """``out[o] = bias[o] + sum_c matrix[o, c] vector[c]``."""
    return np.array([(0.0 if bias is None else bias[o]) + sum(matrix[o, c] * vector[c]
                                                              for c in range(matrix.shape[1]))
                     for o in range(matrix.shape[0])])


def _softmax(z, temperature):
    """``exp(z_k / T) / sum_j exp(z_j / T)`` (eq. 5), shifted by the maximum for stability."""
    top = max(z)
    e = [math.exp((v - top) / temperature) for v in z]
    return np.array([v / sum(e) for v in e])


def _sigmoid(z):
    return np.array([1.0 / (1.0 + math.exp(-v)) for v in z])


def aggregated_conv2d(x, attention, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Per sample: ``W_n = sum_k a[n,k] W_k``, ``b_n = sum_k a[n,k] b_k`` (eq. 6), then conv (eq. 7)."""
    outputs = []
    for n in range(x.shape[0]):
        kernel = np.zeros(weight.shape[1:])
        for k in range(weight.shape[0]):
            kernel += attention[n][k] * weight[k]
        b_n = None
        if bias is not None:
            b_n = np.zeros(bias.shape[1])
            for k in range(bias.shape[0]):
                b_n += attention[n][k] * bias[k]
        outputs.append(conv2d(x[n:n + 1], kernel, b_n, stride, padding, dilation, groups)[0])
    return np.stack(outputs)


def dynamic_conv2d(x, weight, bias, fc1_weight, fc2_weight, fc2_bias, temperature=1.0, stride=1,
                   padding=0, dilation=1, groups=1):
    """DY-CNN: ``pi_n = softmax(W2 relu(W1 GAP(x_n)) + b2) / T)`` then the mixture convolution."""
    attention = []
    for n in range(x.shape[0]):
        hidden = _affine(fc1_weight[:, :, 0, 0], _pool(x[n]))                   # (eq. 2)
        active = np.array([max(v, 0.0) for v in hidden])                         # (eq. 3)
        logits = _affine(fc2_weight[:, :, 0, 0], active, fc2_bias)               # (eq. 4)
        attention.append(_softmax(logits, temperature))                          # (eq. 5)
    return aggregated_conv2d(x, attention, weight, bias, stride, padding, dilation, groups)


def condconv2d(x, weight, bias, route_weight, route_bias, stride=1, padding=0, dilation=1, groups=1):
    """CondConv: ``r_n = sigmoid(W_r GAP(x_n) + b_r)`` then the mixture convolution."""
    routing = [_sigmoid(_affine(route_weight, _pool(x[n]), route_bias)) for n in range(x.shape[0])]
    return aggregated_conv2d(x, routing, weight, bias, stride, padding, dilation, groups)
