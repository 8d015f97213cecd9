r"""Activations, each a forward / hand-derived backward pair, and their layers (``torch.nn`` names).

Every op is ``out, cache = <op>_forward(x, ...)`` and ``(dx,) = <op>_backward(dout, cache)``.
Equations: docs/derivations/blocks.md. Element-wise unless said otherwise (``dt`` is the gradient
of the loss with respect to ``t``, ``[.]`` is 1 where true and 0 elsewhere)::

    relu         y = max(x, 0);  dx = dy [x > 0]                                  (eq. 5-6)
    sigmoid      a = sigma(z / T);  dz = da a (1 - a) / T                         (eq. 7-8)
    softmax      p = softmax(z / T) along axis;  dz = p / T (dp - sum_axis p dp)  (eq. 9-11)
    gelu         y = x Phi(x) (exact erf);  dx = dy (Phi(x) + x phi(x))           (eq. 12-13)
                 (float32: erf by a rational fit evaluated in float64, within 1e-8)
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

import numpy as np
from numba import njit, prange
from scipy.special import expit

from ._checks import Cache, check_cache, float_array, grad_out, is_int, real
from ._parallel import loop_operand, threads_for
from ._stateless import Stateless, inplace_flag


def _axis(axis, ndim, shape):
    if not is_int(axis):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {shape}")
    return int(axis) % ndim


def _temperature(temperature):
    return real(temperature, 'temperature', 0, strict_low=True)


# -- relu, sigmoid, softmax, gelu --------------------------------------------------------------
def relu_forward(x):
    """``y = max(x, 0)`` element-wise (eq. 5).

    Parameters
    ----------
    x : ndarray, any shape
        Input, float32 or float64.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
        The output.
    cache : Cache
        ``Cache('relu')`` with ``positive`` (bool, shape of ``x``: ``x > 0`` or NaN) and ``dtype``; never
        None.
    """
    float_array(x, 'x')
    y, positive = _clamp(x, 0.0, np.nan)                                        # (eq. 5)
    return y, Cache('relu', positive=positive, dtype=x.dtype)


@njit(cache=True, inline='always')
def _clamp_value(v, low, high):
    """``v`` clamped to ``[low, high]``: ``low`` at or below ``low``, ``high`` at or above ``high``,
    ``v`` otherwise; a NaN passes (and ``high`` NaN means no upper bound). Every clamp of
    numpyconv's ReLU and ReLU6 passes, fused or not, is this one rule."""
    return low if v <= low else (high if v >= high else v)


@njit(cache=True, parallel=True)
def _clamp_loop(x, low, high, y, passes):
    """``y = min(max(x, low), high)`` and ``passes = not (x <= low or x >= high)`` in one parallel
    pass over the flat ``x`` (:func:`_clamp_value`)."""
    for i in prange(x.shape[0]):
        value = x[i]
        passes[i] = not (value <= low or value >= high)
        y[i] = _clamp_value(value, low, high)


def _clamp(x, low, high):
    """``(y, passes)`` of :func:`_clamp_loop`, shaped as ``x``."""
    flat = loop_operand(x).reshape(-1)
    y, passes = np.empty(flat.shape, dtype=x.dtype), np.empty(flat.shape, dtype=np.bool_)
    with threads_for(flat.size):
        _clamp_loop(flat, low, high, y, passes)
    return y.reshape(x.shape), passes.reshape(x.shape)


def clamped_sum(a, b, low, high):
    """``min(max(a + b, low), high)`` in one parallel pass, for inference: a residual sum and the
    ReLU (``low=0, high=inf``) or ReLU6 after it.

    Parameters
    ----------
    a, b : ndarray, the same shape and dtype
    low, high : float
        The clamp, as :func:`relu_forward` and :func:`relu6_forward` clamp (a NaN passes).

    Returns
    -------
    y : ndarray, shape and dtype of ``a``
        Bitwise ``relu_forward(a + b)[0]`` (or ``relu6_forward``); no cache.
    """
    flat_a, flat_b = loop_operand(a).reshape(-1), loop_operand(b).reshape(-1)
    y = np.empty_like(flat_a)
    with threads_for(y.size):
        _clamped_sum_loop(flat_a, flat_b, low, high, y)
    return y.reshape(a.shape)


@njit(cache=True, parallel=True)
def _clamped_sum_loop(a, b, low, high, y):
    """``y = a + b`` clamped to ``[low, high]`` (:func:`_clamp_value`)."""
    for i in prange(a.shape[0]):
        y[i] = _clamp_value(a[i] + b[i], low, high)


def relu_backward(dout, cache):
    """``dx = dout [x > 0]``, gradient 0 at 0 (``dout`` at NaN) as in PyTorch (eq. 6).

    Parameters
    ----------
    dout : ndarray, shape of ``y``
        Gradient of the loss with respect to the output of :func:`relu_forward`.
    cache : Cache
        The cache :func:`relu_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx`` of ``x``'s shape and dtype.
    """
    cache = check_cache(cache, 'relu')
    positive = cache['positive']
    dout = grad_out(dout, positive.shape, cache['dtype'])
    return (dout * positive,)


def sigmoid_forward(x, temperature=1.0):
    """``a = sigmoid(x / temperature)`` element-wise (eq. 7).

    Parameters
    ----------
    x : ndarray, any shape
        Input, float32 or float64.
    temperature : float > 0
        ``T``, the divisor of the input (1: the plain function).

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
        The output.
    cache : Cache
        ``Cache('sigmoid')`` with ``a`` (the output) and ``temperature``; never None.
    """
    float_array(x, 'x')
    t = _temperature(temperature)
    a = expit(x / t)
    return a, Cache('sigmoid', a=a, temperature=t)


def sigmoid_backward(dout, cache):
    """``dx = dout a (1 - a) / T`` (eq. 8).

    Parameters
    ----------
    dout : ndarray, shape of ``y``
        Gradient of the loss with respect to the output of :func:`sigmoid_forward`.
    cache : Cache
        The cache :func:`sigmoid_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx`` of ``x``'s shape and dtype.
    """
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
    """``p = softmax(x / temperature)`` along ``axis`` (eq. 9).

    Parameters
    ----------
    x : ndarray, any shape
        Input, float32 or float64.
    axis : int
        The axis the probabilities sum over (negative counts from the end).
    temperature : float > 0
        ``T``, the divisor of the input (1: the plain function).

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
        The output.
    cache : Cache
        ``Cache('softmax')`` with ``p`` (the output), ``axis`` (non-negative) and ``temperature``; never
        None.
    """
    float_array(x, 'x')
    axis = _axis(axis, x.ndim, x.shape)
    t = _temperature(temperature)
    rows = _last_axis_rows(x, axis)
    if rows is not None:
        p = np.empty_like(rows)
        with threads_for(rows.size):
            _softmax_rows_loop(rows, t, p)                                     # (eq. 9)
        p = p.reshape(x.shape)
    else:
        _, e, total = _shifted_exp(x / t, axis)
        p = e / total
    return p, Cache('softmax', p=p, axis=axis, temperature=t)


def _last_axis_rows(a, axis):
    """``a`` as the contiguous ``(R, K)`` matrix of its rows when ``axis`` is its last (and ``a`` not
    empty): the softmax loops' operand; None otherwise (the NumPy expressions serve)."""
    if axis != a.ndim - 1 or not a.size:
        return None
    return loop_operand(a).reshape(-1, a.shape[-1])


_ROW_BLOCK = 256      # rows per parallel task of the softmax loops


@njit(cache=True, parallel=True)
def _softmax_rows_loop(x, t, p):
    """``p[r] = softmax(x[r] / t)`` for each row of the ``(R, K)`` ``x`` (eq. 9), in float64 and
    rounded once; the maximum is subtracted after the division."""
    rows, k = x.shape
    for block in prange((rows + _ROW_BLOCK - 1) // _ROW_BLOCK):
        e = np.empty(k)
        for r in range(block * _ROW_BLOCK, min(rows, (block + 1) * _ROW_BLOCK)):
            top = -np.inf
            for j in range(k):
                e[j] = x[r, j] / t
                top = max(top, e[j])
            total = 0.0
            for j in range(k):
                e[j] = math.exp(e[j] - top)
                total += e[j]
            for j in range(k):
                p[r, j] = e[j] / total


@njit(cache=True, parallel=True)
def _softmax_backward_rows_loop(dout, p, t, dx):
    """``dx[r] = p[r] / t (dout[r] - sum_k p[r, k] dout[r, k])`` for each row (eq. 11), the sum in
    float64."""
    rows, k = p.shape
    for r in prange(rows):
        total = 0.0
        for j in range(k):
            total += np.float64(p[r, j]) * dout[r, j]
        for j in range(k):
            dx[r, j] = p[r, j] / t * (dout[r, j] - total)


def softmax_backward(dout, cache):
    """``dx = p / T (dp - sum_axis p dp)`` (eq. 11).

    Parameters
    ----------
    dout : ndarray, shape of ``y``
        Gradient of the loss with respect to the output of :func:`softmax_forward`.
    cache : Cache
        The cache :func:`softmax_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx`` of ``x``'s shape and dtype.
    """
    cache = check_cache(cache, 'softmax')
    p, axis, t = cache['p'], cache['axis'], cache['temperature']
    dout = grad_out(dout, p.shape, p.dtype)
    rows = _last_axis_rows(p, axis)
    if rows is None:
        return (p / t * (dout - (p * dout).sum(axis=axis, keepdims=True)),)
    dx = np.empty_like(rows)
    with threads_for(rows.size):
        _softmax_backward_rows_loop(_last_axis_rows(dout, axis), rows, t, dx)              # (eq. 11)
    return (dx.reshape(p.shape),)


def gelu_forward(x):
    """Exact GELU ``y = x Phi(x)``, ``Phi`` the standard normal cdf (eq. 12).

    Parameters
    ----------
    x : ndarray, any shape
        Input, float32 or float64.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
        The output.
    cache : Cache
        ``Cache('gelu')`` with ``x``; never None. The backward recomputes ``Phi(x)``, which costs
        less than writing it here and reading it there.
    """
    float_array(x, 'x')
    flat = loop_operand(x).reshape(-1)
    y = np.empty_like(flat)
    loop = _gelu_float32_loop if x.dtype == np.float32 else _gelu_loop
    with threads_for(flat.size):
        loop(flat, y)                                                          # (eq. 12)
    return y.reshape(x.shape), Cache('gelu', x=x)


# erf(u) = u P(u^2) / Q(u^2) for |u| <= 4.5, sign(u) beyond (erfc(4.5) = 2e-10): a rational least-squares
# fit (Sanathanan-Koerner iterations, relative weights, 40,000 Chebyshev points of [0, 4.5]); absolute
# error below 1e-8 in float64 arithmetic, a sixth of float32's spacing below 1
# (tests/test_fast_paths.py). It has no branch and no library call, so the loop vectorises.
_ERF_P = (1.1283791689351557, 0.18499263035333033, 0.05435825800976097, 0.00384977963106668,
          0.0003824887303185273, 4.7686850643581524e-06, -1.3632002748842353e-08)
_ERF_Q = (1.0, 0.49727888373935025, 0.11393271648576582, 0.015472638788849498, 0.0013114267778755139,
          6.389568009163363e-05)
_ERF_RANGE = 4.5
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@njit(cache=True, inline='always')
def _erf_rational(u):
    """``erf(u)`` by the rational fit above, in float64 (for float32 results); exactly +-1 beyond the
    fitted range, NaN for NaN."""
    inside = min(max(u, -_ERF_RANGE), _ERF_RANGE)
    t = inside * inside
    p = _ERF_P[6]
    for k in range(5, -1, -1):
        p = p * t + _ERF_P[k]
    q = _ERF_Q[5]
    for k in range(4, -1, -1):
        q = q * t + _ERF_Q[k]
    return inside * p / q if abs(u) < _ERF_RANGE or u != u else math.copysign(1.0, u)


# exp(z) for z <= 0 as exp(z / 128) ** 128: a Taylor polynomial of degree 12 on [-0.82, 0] (remainder
# below 3e-11 relative) and seven squarings (which multiply the relative error by 128), so within 4e-9
# of exp in float64 arithmetic, a fifteenth of float32's spacing. Below -104, where exp(z) is under
# float32's smallest number, it is 0. No branch and no library call: the loop vectorises.
_EXP_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(13))
_EXP_FLOOR = -104.0


@njit(cache=True, inline='always')
def _exp_nonpositive(z):
    """``exp(z)`` for ``z <= 0`` by the polynomial and squarings above, in float64; 0 below the floor
    and for NaN."""
    w = max(z, _EXP_FLOOR) / 128.0
    e = _EXP_TAYLOR[12]
    for k in range(11, -1, -1):
        e = e * w + _EXP_TAYLOR[k]
    for _ in range(7):
        e = e * e
    return e if z >= _EXP_FLOOR else 0.0


@njit(cache=True, inline='always')
def _cdf(v):
    """``Phi(v)`` with the C library's ``erf`` (float64)."""
    return 0.5 * (1.0 + math.erf(v * _SQRT_HALF))


@njit(cache=True, inline='always')
def _cdf_float32(v):
    """``Phi(v)`` with :func:`_erf_rational`, in float64 and clamped to ``[0, 1]`` (for float32)."""
    return min(max(0.5 * (1.0 + _erf_rational(v * _SQRT_HALF)), 0.0), 1.0)


@njit(cache=True, parallel=True)
def _gelu_loop(x, y):
    """``y = x Phi(x)``, one parallel pass over the flat ``x`` (float64)."""
    for i in prange(x.shape[0]):
        y[i] = x[i] * _cdf(x[i])


@njit(cache=True, parallel=True, fastmath={'contract'})
def _gelu_float32_loop(x, y):
    """:func:`_gelu_loop` for float32: ``Phi`` by :func:`_cdf_float32`, rounded once to float32
    (within about one unit in the last place of float32). The polynomials' multiply-adds may be fused
    (``fastmath={'contract'}``, nothing else): the same bits for any thread count."""
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        y[i] = v * _cdf_float32(v)


def gelu_backward(dout, cache):
    """``dx = dout (Phi(x) + x phi(x))`` (eq. 13), one parallel pass that recomputes ``Phi(x)``.

    Parameters
    ----------
    dout : ndarray, shape of ``y``
        Gradient of the loss with respect to the output of :func:`gelu_forward`.
    cache : Cache
        The cache :func:`gelu_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx`` of ``x``'s shape and dtype.
    """
    cache = check_cache(cache, 'gelu')
    x = cache['x']
    flat_dout = loop_operand(grad_out(dout, x.shape, x.dtype)).reshape(-1)
    dx = np.empty_like(flat_dout)
    loop = _gelu_backward_float32_loop if x.dtype == np.float32 else _gelu_backward_loop
    with threads_for(dx.size):
        loop(flat_dout, loop_operand(x).reshape(-1), dx)                      # (eq. 13)
    return (dx.reshape(x.shape),)


@njit(cache=True, parallel=True)
def _gelu_backward_loop(dout, x, dx):
    """``dx = dout (Phi(x) + x phi(x))`` with the C library's ``erf`` and ``exp`` (float64)."""
    for i in prange(x.shape[0]):
        v = x[i]
        dx[i] = dout[i] * (_cdf(v) + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI)


@njit(cache=True, parallel=True, fastmath={'contract'})
def _gelu_backward_float32_loop(dout, x, dx):
    """:func:`_gelu_backward_loop` for float32: ``Phi`` by :func:`_cdf_float32` and ``phi`` by
    :func:`_exp_nonpositive`, in float64."""
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        pdf = _exp_nonpositive(-0.5 * v * v) * _INV_SQRT_2PI
        dx[i] = dout[i] * (_cdf_float32(v) + v * pdf)


# -- relu6, hardsigmoid, hardswish, silu (MobileNetV2 / V3, EfficientNet) ------------------------
def relu6_forward(x):
    """``y = min(max(x, 0), 6)`` element-wise (eq. 36).

    Parameters
    ----------
    x : ndarray, any shape
        Input, float32 or float64.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
        The output.
    cache : Cache
        ``Cache('relu6')`` with ``passes`` (bool, shape of ``x``: ``0 < x < 6`` or NaN) and ``dtype``;
        never None.
    """
    float_array(x, 'x')
    y, passes = _clamp(x, 0.0, 6.0)                                             # (eq. 36)
    return y, Cache('relu6', passes=passes, dtype=x.dtype)


def relu6_backward(dout, cache):
    """``dx = dout`` where ``0 < x < 6`` (and at NaN), 0 elsewhere, as PyTorch (eq. 37).

    Parameters
    ----------
    dout : ndarray, shape of ``y``
        Gradient of the loss with respect to the output of :func:`relu6_forward`.
    cache : Cache
        The cache :func:`relu6_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx`` of ``x``'s shape and dtype.
    """
    cache = check_cache(cache, 'relu6')
    passes = cache['passes']
    dout = grad_out(dout, passes.shape, cache['dtype'])
    return (dout * passes,)


def hardsigmoid_forward(x):
    """``y = min(max(x + 3, 0), 6) / 6`` element-wise (eq. 38).

    Parameters
    ----------
    x : ndarray, any shape
        Input, float32 or float64.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
        The output.
    cache : Cache
        ``Cache('hardsigmoid')`` with ``inside`` (bool, shape of ``x``: ``-3 < x < 3``) and ``dtype``;
        never None.
    """
    float_array(x, 'x')
    y = np.minimum(np.maximum(x + 3, 0), 6) / 6
    return y, Cache('hardsigmoid', inside=(x > -3) & (x < 3), dtype=x.dtype)


def hardsigmoid_backward(dout, cache):
    """``dx = dout / 6`` where ``-3 < x < 3``, 0 elsewhere (eq. 39).

    Parameters
    ----------
    dout : ndarray, shape of ``y``
        Gradient of the loss with respect to the output of :func:`hardsigmoid_forward`.
    cache : Cache
        The cache :func:`hardsigmoid_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx`` of ``x``'s shape and dtype.
    """
    cache = check_cache(cache, 'hardsigmoid')
    inside = cache['inside']
    dout = grad_out(dout, inside.shape, cache['dtype'])
    return (dout * inside / 6,)


def hardswish_forward(x):
    """``y = x min(max(x + 3, 0), 6) / 6`` element-wise (eq. 40).

    Parameters
    ----------
    x : ndarray, any shape
        Input, float32 or float64.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
        The output.
    cache : Cache
        ``Cache('hardswish')`` with ``x``; never None.
    """
    float_array(x, 'x')
    return x * np.minimum(np.maximum(x + 3, 0), 6) / 6, Cache('hardswish', x=x)


def hardswish_backward(dout, cache):
    """``dx = 0`` for ``x <= -3``, ``dout (x/3 + 1/2)`` for ``-3 < x < 3``, ``dout``
    otherwise (``x >= 3`` and NaN), PyTorch's branches (eq. 41).

    Parameters
    ----------
    dout : ndarray, shape of ``y``
        Gradient of the loss with respect to the output of :func:`hardswish_forward`.
    cache : Cache
        The cache :func:`hardswish_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx`` of ``x``'s shape and dtype.
    """
    cache = check_cache(cache, 'hardswish')
    x = cache['x']
    dout = grad_out(dout, x.shape, x.dtype)
    slope = np.where(x <= -3, 0, np.where(x < 3, x / 3 + 0.5, 1)).astype(x.dtype, copy=False)
    return (dout * slope,)


def silu_forward(x):
    """``y = x sigmoid(x)`` (SiLU, Swish-1), computed as PyTorch: ``x / (1 + exp(-x))`` (eq. 42).

    Parameters
    ----------
    x : ndarray, any shape
        Input, float32 or float64.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
        The output.
    cache : Cache
        ``Cache('silu')`` with ``x`` and ``s`` (``sigmoid(x)``, shape of ``x``); never None.
    """
    float_array(x, 'x')
    with np.errstate(over='ignore'):                       # exp(-x) = inf for x < -709: y = -0, s = 0
        denominator = 1 + np.exp(-x)
    return x / denominator, Cache('silu', x=x, s=1 / denominator)


def silu_backward(dout, cache):
    """``dx = dout s (1 + x (1 - s))``, ``s = sigmoid(x)`` (eq. 43).

    Parameters
    ----------
    dout : ndarray, shape of ``y``
        Gradient of the loss with respect to the output of :func:`silu_forward`.
    cache : Cache
        The cache :func:`silu_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx`` of ``x``'s shape and dtype.
    """
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
    """``torch.nn.ReLU(inplace=False)``: ``max(x, 0)``.

    Input and output: any shape, the input's float dtype.

    Parameters
    ----------
    inplace : bool
        Accepted for ``torch.nn`` compatibility; the output is always a new array.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _forward_fn, _backward_fn = relu_forward, relu_backward
    _bounds = (0.0, np.inf)                  # the clamp, for a container's fused inference pass


class ReLU6(_InplaceActivation):
    """``torch.nn.ReLU6(inplace=False)``: ``min(max(x, 0), 6)``.

    Input and output: any shape, the input's float dtype.

    Parameters
    ----------
    inplace : bool
        Accepted for ``torch.nn`` compatibility; the output is always a new array.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _forward_fn, _backward_fn = relu6_forward, relu6_backward
    _bounds = (0.0, 6.0)


class Hardsigmoid(_InplaceActivation):
    """``torch.nn.Hardsigmoid(inplace=False)``: ``min(max(x + 3, 0), 6) / 6``.

    Input and output: any shape, the input's float dtype.

    Parameters
    ----------
    inplace : bool
        Accepted for ``torch.nn`` compatibility; the output is always a new array.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _forward_fn, _backward_fn = hardsigmoid_forward, hardsigmoid_backward


class Hardswish(_InplaceActivation):
    """``torch.nn.Hardswish(inplace=False)``: ``x min(max(x + 3, 0), 6) / 6``.

    Input and output: any shape, the input's float dtype.

    Parameters
    ----------
    inplace : bool
        Accepted for ``torch.nn`` compatibility; the output is always a new array.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _forward_fn, _backward_fn = hardswish_forward, hardswish_backward


class SiLU(_InplaceActivation):
    """``torch.nn.SiLU(inplace=False)``: ``x sigmoid(x)``.

    Input and output: any shape, the input's float dtype.

    Parameters
    ----------
    inplace : bool
        Accepted for ``torch.nn`` compatibility; the output is always a new array.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _forward_fn, _backward_fn = silu_forward, silu_backward


class GELU(Stateless):
    """``torch.nn.GELU()`` (exact erf form, ``approximate='none'``).

    Input and output: any shape, the input's float dtype.

    Parameters
    ----------
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _forward_fn, _backward_fn = gelu_forward, gelu_backward


class Sigmoid(Stateless):
    """``torch.nn.Sigmoid()``: ``1 / (1 + exp(-x))``.

    Input and output: any shape, the input's float dtype.

    Parameters
    ----------
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _forward_fn, _backward_fn = sigmoid_forward, sigmoid_backward


class Softmax(Stateless):
    """``torch.nn.Softmax(dim=None)``: softmax along ``dim``.

    Input and output: any shape, the input's float dtype.

    Parameters
    ----------
    dim : int or None
        The axis. None takes PyTorch's legacy choice for its input: axis 0 for inputs of rank
        0, 1 or 3, axis 1 otherwise.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _backward_fn = softmax_backward

    def __init__(self, dim=None, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        if dim is not None and not is_int(dim):
            raise TypeError(f"dim must be an int or None, got {dim!r}")
        self.dim = None if dim is None else int(dim)

    def _op_forward(self, x):
        float_array(x, 'x')
        dim = self.dim if self.dim is not None else (0 if x.ndim in (0, 1, 3) else 1)
        return softmax_forward(x, axis=dim)


class Identity(Stateless):
    """``torch.nn.Identity(*args, **kwargs)``: ``y = x`` (a copy), ``dx = dout``.

    Input and output: any shape, the input's float dtype.

    Parameters
    ----------
    *args, **kwargs : any
        Ignored, as PyTorch ignores them.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """

    def __init__(self, *args, dtype=np.float32, rng=None, **kwargs):
        super().__init__(dtype=dtype, rng=rng)

    def _op_forward(self, x):
        float_array(x, 'x')
        return x.copy(), Cache('identity', shape=x.shape, dtype=x.dtype)

    def backward(self, dout):
        cache = check_cache(self._cache, 'identity')
        return grad_out(dout, cache['shape'], cache['dtype']).copy()
