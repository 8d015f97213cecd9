"""Plain-loop definition of CondConv: sigmoid routing, then the kernel aggregation of DY-CNN.

Forward, for each sample: pool, route element by element, mix the experts and convolve
(:func:`numpyconv.reference.dynamic.aggregated_conv2d`). Backward: the same steps in reverse, one
equation a line. Equation numbers: docs/derivations/condconv.md.
"""
import math
from itertools import product

import numpy as np

from .dynamic import aggregated_conv2d, aggregated_conv2d_backward, affine, pool, pool_backward


def _routing(x, route_weight, route_bias):
    """``(p, r)``: the pooled input and the routing weights ``r = sigmoid(W_r p + b_r)`` (eqs. 1-3)."""
    p = pool(x)                                                                          # (eq. 1)
    z = affine(route_weight, p, route_bias)                                              # (eq. 2)
    r = np.zeros_like(z)
    for n, e in np.ndindex(*z.shape):
        r[n, e] = 1.0 / (1.0 + math.exp(-z[n, e]))                                      # (eq. 3)
    return p, r


def condconv2d(x, weight, bias, route_weight, route_bias, stride=1, padding=0, dilation=1, groups=1):
    """CondConv, ``y (N, C_out, Ho, Wo)``: ``r_n = sigmoid(W_r GAP(x_n) + b_r)``, then the mixture
    convolution (eqs. 1-5). Arguments as :func:`numpyconv.condconv2d_forward`."""
    r = _routing(x, route_weight, route_bias)[1]                                         # (eqs. 1-3)
    return aggregated_conv2d(x, r, weight, bias, stride, padding, dilation, groups)      # (eqs. 4-5)


def condconv2d_backward(dout, x, weight, bias, route_weight, route_bias, stride=1, padding=0,
                        dilation=1, groups=1):
    """``(dx, dweight, dbias, droute_weight, droute_bias)`` of :func:`condconv2d` (eqs. 6-10);
    ``dbias`` / ``droute_bias`` are None when ``bias`` / ``route_bias`` are."""
    p, r = _routing(x, route_weight, route_bias)
    dx, dr, dweight, dbias = aggregated_conv2d_backward(dout, x, r, weight, bias, stride, padding,
                                                        dilation, groups)               # (eqs. 6, 7)
    dz = np.zeros_like(r)
    for n, e in np.ndindex(*r.shape):
        dz[n, e] = dr[n, e] * r[n, e] * (1 - r[n, e])                                    # (eq. 8)
    droute_weight, dp = np.zeros_like(route_weight), np.zeros_like(p)
    for n, e, c in product(range(x.shape[0]), *map(range, route_weight.shape)):
        droute_weight[e, c] += dz[n, e] * p[n, c]                                        # (eq. 9)
        dp[n, c] += route_weight[e, c] * dz[n, e]                                        # (eq. 9)
    droute_bias = None if route_bias is None else np.zeros_like(route_bias)
    if route_bias is not None:
        for n, e in np.ndindex(*dz.shape):
            droute_bias[e] += dz[n, e]                                                   # (eq. 9)
    dx = dx + pool_backward(dp, x.shape)                                                 # (eq. 10)
    return dx, dweight, dbias, droute_weight, droute_bias
