"""Plain-loop definitions of the activations relu, sigmoid, gelu, softmax, relu6, hardsigmoid,
hardswish and silu, forward and backward: one element (softmax: one line) at a time, PyTorch's
branches at the kinks (docs/derivations/blocks.md, eq. 5-13, 36-43). Outputs keep the input's
dtype; each backward takes ``(dout, *forward_args)`` and returns ``(dx,)``.
"""
import math

import numpy as np


def _map(x, scalar_fn):
    y = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        y[index] = scalar_fn(float(x[index]))
    return y


def _map_backward(dout, x, slope_fn):
    dx = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        dx[index] = float(dout[index]) * slope_fn(float(x[index]))
    return (dx,)


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def _cdf(v):
    """Standard normal cdf ``Phi(v) = (1 + erf(v / sqrt 2)) / 2``."""
    return 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))


def _pdf(v):
    """Standard normal density ``phi(v) = exp(-v^2 / 2) / sqrt(2 pi)``."""
    return math.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi)


# -- relu, sigmoid, gelu, softmax -----------------------------------------------------------------
def relu(x):
    """``max(x, 0)`` element by element (eq. 5)."""
    return _map(x, lambda v: v if v > 0 else 0.0)


def relu_backward(dout, x):
    """``(dx,)`` of :func:`relu`; the kink at 0 gets gradient 0."""
    dx = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        dx[i] = dout[i] * (1.0 if x[i] > 0 else 0.0)                          # (eq. 6)
    return (dx,)


def sigmoid(x, temperature=1.0):
    """``1 / (1 + exp(-x / T))`` element by element (eq. 7)."""
    return _map(x, lambda v: 1.0 / (1.0 + math.exp(-v / temperature)))


def sigmoid_backward(dout, x, temperature=1.0):
    """``(dx,)`` of :func:`sigmoid`."""
    a = sigmoid(x, temperature)                                               # (eq. 7)
    dx = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        dx[i] = dout[i] * a[i] * (1.0 - a[i]) / temperature                   # (eq. 8)
    return (dx,)


def gelu(x):
    """``x * Phi(x)``, ``Phi(x) = (1 + erf(x / sqrt 2)) / 2`` (eq. 12)."""
    return _map(x, lambda v: v * _cdf(v))


def gelu_backward(dout, x):
    """``(dx,)`` of :func:`gelu`."""
    dx = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        v = float(x[i])
        dx[i] = dout[i] * (_cdf(v) + v * _pdf(v))                             # (eq. 13)
    return (dx,)


def lines_along(shape, axis):
    """Yield, for every 1-D line of ``shape`` along ``axis``, the list of its element indices."""
    others = [n for a, n in enumerate(shape) if a != axis]
    for rest in np.ndindex(*others):
        rest = list(rest)
        yield [tuple(rest[:axis] + [k] + rest[axis:]) for k in range(shape[axis])]


def softmax(x, axis=-1, temperature=1.0):
    """``exp(x_k / T) / sum_j exp(x_j / T)`` along ``axis`` (eq. 9)."""
    axis = axis % x.ndim
    y = np.zeros_like(x)
    for line in lines_along(x.shape, axis):
        exps = [math.exp(x[i] / temperature) for i in line]
        for i, e in zip(line, exps):
            y[i] = e / sum(exps)
    return y


def softmax_backward(dout, x, axis=-1, temperature=1.0):
    """``(dx,)`` of :func:`softmax`: every probability of a line against every logit of that line."""
    axis = axis % x.ndim
    p = softmax(x, axis, temperature)                                         # (eq. 9)
    dx = np.zeros_like(x)
    for line in lines_along(x.shape, axis):
        for i in line:
            for k in line:
                dx[i] += dout[k] * p[k] * ((1.0 if k == i else 0.0) - p[i]) / temperature   # (eq. 10, 11)
    return (dx,)


# -- relu6, hardsigmoid, hardswish, silu --------------------------------------------------------
def relu6(x):
    """``min(max(x, 0), 6)`` (eq. 36)."""
    return _map(x, lambda v: v if math.isnan(v) else min(max(v, 0.0), 6.0))


def relu6_backward(dout, x):
    """``dout`` where ``0 < x < 6`` or x is NaN, 0 elsewhere (eq. 37)."""
    return _map_backward(dout, x, lambda v: 0.0 if v <= 0 or v >= 6 else 1.0)


def hardsigmoid(x):
    """``min(max(x + 3, 0), 6) / 6`` (eq. 38)."""
    return _map(x, lambda v: v if math.isnan(v) else min(max(v + 3.0, 0.0), 6.0) / 6.0)


def hardsigmoid_backward(dout, x):
    """``dout / 6`` where ``-3 < x < 3``, 0 elsewhere (eq. 39)."""
    return _map_backward(dout, x, lambda v: 1.0 / 6.0 if -3 < v < 3 else 0.0)


def hardswish(x):
    """``x min(max(x + 3, 0), 6) / 6`` (eq. 40)."""
    return _map(x, lambda v: v if math.isnan(v) else v * min(max(v + 3.0, 0.0), 6.0) / 6.0)


def hardswish_backward(dout, x):
    """0 for ``x <= -3``, ``x / 3 + 1/2`` for ``-3 < x < 3``, 1 otherwise, times ``dout`` (eq. 41)."""
    return _map_backward(dout, x, lambda v: 0.0 if v <= -3 else (v / 3.0 + 0.5 if v < 3 else 1.0))


def silu(x):
    """``x sigmoid(x)`` (eq. 42)."""
    return _map(x, lambda v: v * _sigmoid(v))


def silu_backward(dout, x):
    """``dout s (1 + x (1 - s))``, ``s = sigmoid(x)`` (eq. 43)."""
    return _map_backward(dout, x, lambda v: _sigmoid(v) * (1.0 + v * (1.0 - _sigmoid(v))))
