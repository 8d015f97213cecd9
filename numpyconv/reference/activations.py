"""Plain-loop definitions of the activations relu6, hardsigmoid, hardswish and silu, forward and
backward: one element at a time, PyTorch's branches at the kinks (docs/derivations/blocks.md,
eq. 36-43). Outputs keep the input's dtype; each backward returns ``(dx,)``.
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
