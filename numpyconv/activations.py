r"""Activations, each a forward / hand-derived backward pair, and their layers (``torch.nn`` names).

Every op is ``out, cache = <op>_forward(x, ...)`` and ``(dx,) = <op>_backward(dout, cache)``.
Equations: docs/derivations/blocks.md. Element-wise unless said otherwise (``dt`` is the gradient
of the loss with respect to ``t``, ``[.]`` is 1 where true and 0 elsewhere)::

    relu         y = max(x, 0);  dx = dy [x > 0]                                  (eq. 5-6)
    sigmoid      a = sigma(z / T);  dz = da a (1 - a) / T                         (eq. 7-8)
    softmax      p = softmax(z / T) along axis;  dz = p / T (dp - sum_axis p dp)  (eq. 9-11)
    gelu         y = x Phi(x) (exact erf);  dx = dy (Phi(x) + x phi(x))           (eq. 12-13)
    relu6        y = min(max(x, 0), 6);  dx = dy [not (x <= 0 or x >= 6)]         (eq. 36-37)
    hardsigmoid  y = min(max(x + 3, 0), 6) / 6;  dx = dy [-3 < x < 3] / 6          (eq. 38-39)
    hardswish    y = x min(max(x + 3, 0), 6) / 6;                                 (eq. 40)
                 dx = dy * (0 if x <= -3, x/3 + 1/2 if x < 3, else 1)             (eq. 41)
    silu         y = x sigma(x);  dx = dy sigma(x) (1 + x (1 - sigma(x)))          (eq. 42-43)

At the kinks the gradients are PyTorch's: relu 0 at 0; relu6 0 at 0 and at 6; hardsigmoid 0 at
-3 and 3; hardswish 0 at -3 and 1 at 3. A NaN input gives a NaN output; its gradient is PyTorch's
(its comparisons with NaN false: relu, relu6 and hardswish pass ``dy``, hardsigmoid gives 0, silu
NaN; PyTorch's vectorised relu6 / hardswish kernels give 0 / NaN there instead, depending on the
element's position in the tensor). PyTorch's hardsigmoid backward multiplies by the float32 constant
``1/6`` in float64 too (a relative difference of 3e-8); the exact ``1/6`` is used here.

Layers: ``ReLU``, ``ReLU6``, ``Sigmoid``, ``GELU``, ``SiLU``, ``Hardswish``, ``Hardsigmoid``,
``Softmax(dim)``, ``Identity``: no parameters, empty state_dict, 0 multiply-adds; the ``inplace``
argument of the ``torch.nn`` constructors is accepted (the output is always a new array).

Example::

    >>> y, cache = relu6_forward(np.array([-1.0, 0.0, 3.0, 6.0, 7.0]))
    >>> y, relu6_backward(np.ones(5), cache)[0]
    (array([0., 0., 3., 6., 6.]), array([0., 0., 1., 0., 0.]))
"""
import math
import numbers

import numpy as np
from scipy.special import erf, expit

from ._checks import Cache, check_cache, float_array, grad_out, real
from ._stateless import Stateless, inplace_flag


def _axis(axis, ndim, shape):
    if isinstance(axis, bool) or not isinstance(axis, (numbers.Integral, np.integer)):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {shape}")
    return int(axis) % ndim


def _temperature(temperature):
    return real(temperature, 'temperature', 0, strict_low=True)


# -- relu, sigmoid, softmax, gelu --------------------------------------------------------------
def relu_forward(x):
    """``y = max(x, 0)`` (eq. 5)."""
    float_array(x, 'x')
    return np.maximum(x, 0), Cache('relu', positive=~(x <= 0), dtype=x.dtype)


def relu_backward(dout, cache):
    """``(dx,)`` with ``dx = dout [x > 0]``, gradient 0 at 0 (``dout`` at NaN) as in PyTorch (eq. 6)."""
    cache = check_cache(cache, 'relu')
    positive = cache['positive']
    dout = grad_out(dout, positive.shape, cache['dtype'])
    return (dout * positive,)


def sigmoid_forward(x, temperature=1.0):
    """``a = sigmoid(x / temperature)`` (eq. 7)."""
    float_array(x, 'x')
    t = _temperature(temperature)
    a = expit(x / t)
    return a, Cache('sigmoid', a=a, temperature=t)


def sigmoid_backward(dout, cache):
    """``(dx,)`` with ``dx = dout a (1 - a) / T`` (eq. 8)."""
    cache = check_cache(cache, 'sigmoid')
    a, t = cache['a'], cache['temperature']
    dout = grad_out(dout, a.shape, a.dtype)
    return (dout * a * (1 - a) / t,)


def _shifted_exp(z, axis):
    """``(z - max, exp(z - max), sum exp(z - max))`` along ``axis`` (keepdims): no overflow (eq. 9)."""
    shifted = z - np.max(z, axis=axis, keepdims=True, initial=-np.inf)
    e = np.exp(shifted)
    return shifted, e, e.sum(axis=axis, keepdims=True)


def softmax_forward(x, axis=-1, temperature=1.0):
    """``p = softmax(x / temperature)`` along ``axis`` (eq. 9)."""
    float_array(x, 'x')
    axis = _axis(axis, x.ndim, x.shape)
    t = _temperature(temperature)
    _, e, total = _shifted_exp(x / t, axis)
    p = e / total
    return p, Cache('softmax', p=p, axis=axis, temperature=t)


def softmax_backward(dout, cache):
    """``(dx,)`` with ``dx = p / T (dp - sum_axis p dp)`` (eq. 11)."""
    cache = check_cache(cache, 'softmax')
    p, axis, t = cache['p'], cache['axis'], cache['temperature']
    dout = grad_out(dout, p.shape, p.dtype)
    return (p / t * (dout - (p * dout).sum(axis=axis, keepdims=True)),)


def gelu_forward(x):
    """Exact GELU ``y = x Phi(x)``, ``Phi`` the standard normal cdf (eq. 12)."""
    float_array(x, 'x')
    cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
    return x * cdf, Cache('gelu', x=x, cdf=cdf)


def gelu_backward(dout, cache):
    """``(dx,)`` with ``dx = dout (Phi(x) + x phi(x))`` (eq. 13)."""
    cache = check_cache(cache, 'gelu')
    x, cdf = cache['x'], cache['cdf']
    dout = grad_out(dout, x.shape, x.dtype)
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return (dout * (cdf + x * pdf),)


# -- relu6, hardsigmoid, hardswish, silu (MobileNetV2 / V3, EfficientNet) ------------------------
def relu6_forward(x):
    """``y = min(max(x, 0), 6)`` (eq. 36)."""
    float_array(x, 'x')
    return np.minimum(np.maximum(x, 0), 6), Cache('relu6', passes=~((x <= 0) | (x >= 6)), dtype=x.dtype)


def relu6_backward(dout, cache):
    """``(dx,)`` with ``dx = dout`` where ``0 < x < 6`` (and at NaN), 0 elsewhere, as PyTorch (eq. 37)."""
    cache = check_cache(cache, 'relu6')
    passes = cache['passes']
    dout = grad_out(dout, passes.shape, cache['dtype'])
    return (dout * passes,)


def hardsigmoid_forward(x):
    """``y = min(max(x + 3, 0), 6) / 6`` (eq. 38)."""
    float_array(x, 'x')
    y = np.minimum(np.maximum(x + 3, 0), 6) / 6
    return y, Cache('hardsigmoid', inside=(x > -3) & (x < 3), dtype=x.dtype)


def hardsigmoid_backward(dout, cache):
    """``(dx,)`` with ``dx = dout / 6`` where ``-3 < x < 3``, 0 elsewhere (eq. 39)."""
    cache = check_cache(cache, 'hardsigmoid')
    inside = cache['inside']
    dout = grad_out(dout, inside.shape, cache['dtype'])
    return (dout * inside / 6,)


def hardswish_forward(x):
    """``y = x min(max(x + 3, 0), 6) / 6`` (eq. 40)."""
    float_array(x, 'x')
    return x * np.minimum(np.maximum(x + 3, 0), 6) / 6, Cache('hardswish', x=x)


def hardswish_backward(dout, cache):
    """``(dx,)``: ``dx = 0`` for ``x <= -3``, ``dout (x/3 + 1/2)`` for ``-3 < x < 3``, ``dout``
    otherwise (``x >= 3`` and NaN), PyTorch's branches (eq. 41)."""
    cache = check_cache(cache, 'hardswish')
    x = cache['x']
    dout = grad_out(dout, x.shape, x.dtype)
    slope = np.where(x <= -3, 0, np.where(x < 3, x / 3 + 0.5, 1)).astype(x.dtype, copy=False)
    return (dout * slope,)


def silu_forward(x):
    """``y = x sigmoid(x)`` (SiLU, Swish-1), computed as PyTorch: ``x / (1 + exp(-x))`` (eq. 42)."""
    float_array(x, 'x')
    with np.errstate(over='ignore'):                       # exp(-x) = inf for x < -709: y = -0, s = 0
        denominator = 1 + np.exp(-x)
    return x / denominator, Cache('silu', x=x, s=1 / denominator)


def silu_backward(dout, cache):
    """``(dx,)`` with ``dx = dout s (1 + x (1 - s))``, ``s = sigmoid(x)`` (eq. 43)."""
    cache = check_cache(cache, 'silu')
    x, s = cache['x'], cache['s']
    dout = grad_out(dout, x.shape, x.dtype)
    return (dout * s * (1 + x * (1 - s)),)


# -- layers ------------------------------------------------------------------------------------------
class _InplaceActivation(Stateless):
    """An element-wise activation whose ``torch.nn`` constructor takes ``inplace``."""

    def __init__(self, inplace=False, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.inplace = inplace_flag(inplace)


class ReLU(_InplaceActivation):
    """``torch.nn.ReLU(inplace=False)``."""
    _forward_fn, _backward_fn = relu_forward, relu_backward


class ReLU6(_InplaceActivation):
    """``torch.nn.ReLU6(inplace=False)``: ``min(max(x, 0), 6)``."""
    _forward_fn, _backward_fn = relu6_forward, relu6_backward


class Hardsigmoid(_InplaceActivation):
    """``torch.nn.Hardsigmoid(inplace=False)``: ``min(max(x + 3, 0), 6) / 6``."""
    _forward_fn, _backward_fn = hardsigmoid_forward, hardsigmoid_backward


class Hardswish(_InplaceActivation):
    """``torch.nn.Hardswish(inplace=False)``: ``x min(max(x + 3, 0), 6) / 6``."""
    _forward_fn, _backward_fn = hardswish_forward, hardswish_backward


class SiLU(_InplaceActivation):
    """``torch.nn.SiLU(inplace=False)``: ``x sigmoid(x)``."""
    _forward_fn, _backward_fn = silu_forward, silu_backward


class GELU(Stateless):
    """``torch.nn.GELU()`` (exact erf form, ``approximate='none'``)."""
    _forward_fn, _backward_fn = gelu_forward, gelu_backward


class Sigmoid(Stateless):
    """``torch.nn.Sigmoid``."""
    _forward_fn, _backward_fn = sigmoid_forward, sigmoid_backward


class Softmax(Stateless):
    """``torch.nn.Softmax(dim=None)``: softmax along ``dim``.

    Parameters
    ----------
    dim : int or None
        The axis. None takes PyTorch's legacy choice for its input: axis 0 for inputs of rank
        0, 1 or 3, axis 1 otherwise.
    """
    _backward_fn = softmax_backward

    def __init__(self, dim=None, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (numbers.Integral, np.integer))):
            raise TypeError(f"dim must be an int or None, got {dim!r}")
        self.dim = None if dim is None else int(dim)

    def _op_forward(self, x):
        float_array(x, 'x')
        dim = self.dim if self.dim is not None else (0 if x.ndim in (0, 1, 3) else 1)
        return softmax_forward(x, axis=dim)


class Identity(Stateless):
    """``torch.nn.Identity(*args, **kwargs)``: ``y = x`` (a copy), ``dx = dout``; the arguments are
    ignored, as PyTorch ignores them."""

    def __init__(self, *args, dtype=np.float32, rng=None, **kwargs):
        super().__init__(dtype=dtype, rng=rng)

    def _op_forward(self, x):
        float_array(x, 'x')
        return x.copy(), Cache('identity', shape=x.shape, dtype=x.dtype)

    def backward(self, dout):
        cache = check_cache(self._cache, 'identity')
        return grad_out(dout, cache['shape'], cache['dtype']).copy()
