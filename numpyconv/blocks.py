r"""Building blocks shared by the techniques, each a forward / hand-derived backward pair.

Every op is ``out, cache = <op>_forward(...)`` and ``grads = <op>_backward(dout, cache)``, where
``grads`` is a tuple with one gradient per array input of forward, in forward's positional order
(None for an input given as None). Equations: docs/derivations/blocks.md. The activations live in
numpyconv/activations.py, pooling in numpyconv/pooling.py, upsampling in numpyconv/upsample.py.

Shapes, forward and gradients (``dt`` is the gradient of the loss with respect to ``t``)::

    linear             x (..., F), W (O, F), b (O,)  ->  y (..., O)
                       y = x W^T + b                                              (eq. 1)
                       dW = sum_m dy_m x_m^T,  db = sum_m dy_m,  dx = dy W         (eq. 2-4)
    batch_norm         x (N, C) or (N, C, L) or (N, C, H, W); weight, bias, running stats (C,)
                       train: x_hat = (x - mu) / sqrt(var + eps) with batch mean and biased var
                       over R = all axes but 1, y = gamma x_hat + beta           (eq. 14-15)
                       new running stats, cache['running_mean' / 'running_var'] (inputs
                       untouched), rho = momentum, m = |R| (unbiased variance):  (eq. 19)
                       running_mean' = rho mu + (1 - rho) running_mean
                       running_var'  = rho var m/(m-1) + (1 - rho) running_var
                       dgamma = sum_R dy x_hat, dbeta = sum_R dy                 (eq. 18)
                       dx = gamma s (dy - mean_R dy - x_hat mean_R(dy x_hat)), s = 1/sqrt(var+eps)
                       (couples every sample of the batch)                       (eq. 20)
                       eval: running stats instead of batch stats, dx = dy gamma s  (eq. 21-22)
                       d running_mean = -s sum_R g, d running_var = -s^2/2 sum_R g x_hat,
                       g = dy gamma (eval; zeros in training)                  (eq. 22a)
    layer_norm         over the last axis (size D), weight and bias (D,)         (eq. 23)
                       g = dy gamma, dx = s (g - mean_D g - x_hat mean_D(g x_hat))  (eq. 24)
    cross_entropy      logits (N, K), integer labels (N,): L = mean_n(logsumexp(z_n) - z_n[t_n])
                       dz = dL (softmax(z) - onehot(t)) / N                      (eq. 31-32)

Float dtypes are preserved and inputs are never modified (``batch_norm_forward`` returns the
updated running statistics in its cache, where PyTorch updates its buffers in place). Batch 0
works wherever PyTorch allows it.

Example::

    >>> x, w = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([[1.0, 1.0]])
    >>> y, cache = linear_forward(x, w)
    >>> linear_backward(np.ones_like(y), cache)[1]
    array([[1.5, 1. ]])
"""
import math

import numpy as np
from numba import njit, prange

from ._checks import Cache, check_cache, expect_shape, float_array, grad_out, real as _real, same_dtype
from ._parallel import loop_operand, threads_for
from .activations import _clamp_value, _shifted_exp
from .memory import require_memory


# -- argument checks -------------------------------------------------------------------------
def _vector(v, name, n):
    """Check an optional per-feature vector of shape ``(n,)``."""
    if v is not None:
        float_array(v, name, 1, f"({n},)")
        expect_shape(v, (n,), name)
    return v


def _grad_out(dout, shape, dtype):
    """The output-gradient rule of every op (:func:`numpyconv._checks.grad_out`)."""
    return grad_out(dout, shape, dtype)


def _mean(a, axes):
    """Mean over ``axes`` (keepdims); 0 over an empty set (batch 0) instead of a NaN warning."""
    count = math.prod(a.shape[i] for i in np.atleast_1d(axes))
    return a.sum(axis=axes, keepdims=True) / max(count, 1)


# -- linear ------------------------------------------------------------------------------------
def linear_forward(x, weight, bias=None):
    """``y = x W^T + b`` over the last axis of ``x`` (eq. 1), as ``torch.nn.functional.linear``.

    Parameters
    ----------
    x : ndarray (..., F)
        Input, float32 or float64; any leading axes.
    weight : ndarray (O, F)
    bias : ndarray (O,) or None

    Returns
    -------
    y : ndarray (..., O)
    cache : Cache
        ``Cache('linear')`` with ``x``, ``weight`` and ``has_bias``; none of them None.
    """
    float_array(x, 'x')
    float_array(weight, 'weight', 2, "(out_features, in_features)")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x must have shape (..., {weight.shape[1]}) for weight of shape "
                         f"{weight.shape}, got {x.shape}")
    _vector(bias, 'bias', weight.shape[0])
    same_dtype(('x', x), ('weight', weight), ('bias', bias))
    require_memory(x.shape[:-1] + weight.shape[:1], x.dtype,
                   f"x of shape {x.shape} with weight of shape {weight.shape}")
    y = _rows(x) @ weight.T                                              # one GEMM (M, F) @ (F, O)
    if bias is not None:
        y += bias
    return y.reshape(x.shape[:-1] + weight.shape[:1]), Cache('linear', x=x, weight=weight,
                                                             has_bias=bias is not None)


def _rows(a):
    """``a (..., F)`` as the matrix ``(M, F)`` of its rows, ``M`` the product of the leading axes: one
    GEMM for the whole input rather than one per leading index."""
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def linear_backward(dout, cache):
    """Gradients of :func:`linear_forward` (eq. 2-4).

    Parameters
    ----------
    dout : ndarray, (..., O)
        Gradient of the loss with respect to the output of :func:`linear_forward`.
    cache : Cache
        The cache :func:`linear_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx (..., F), dweight (O, F), dbias (O,))``; ``dbias`` None without bias.
    """
    return linear_backward_into(dout, cache, None)


def linear_backward_into(dout, cache, dweight):
    """:func:`linear_backward` with the weight gradient written into ``dweight`` (an ``(O, F)``
    array of the dtype of ``x``, the GEMM's output) when it is not None: a layer whose gradient array
    holds nothing yet (after ``zero_grad``) saves a copy of it."""
    cache = check_cache(cache, 'linear')
    x, weight = cache['x'], cache['weight']
    dout = grad_out(dout, x.shape[:-1] + weight.shape[:1], x.dtype)
    rows_x, rows_dy = _rows(x), _rows(dout)                              # (M, F), (M, O)
    dweight = np.matmul(rows_dy.T, rows_x, out=dweight)                  # (eq. 2)
    dbias = _column_sums(rows_dy) if cache['has_bias'] else None         # (eq. 3)
    return (rows_dy @ weight).reshape(x.shape), dweight, dbias           # (eq. 4)


def _column_sums(rows):
    """``rows (M, O)`` summed over its rows, as the matrix-vector product ``1_M^T rows``: BLAS reads
    the rows once and runs 3-6 times faster than NumPy's ``sum(axis=0)``, which on a C-ordered
    array adds row after row (float32, 2 threads: 0.2 against 0.65 ms for 25088 x 64)."""
    return np.ones(rows.shape[0], rows.dtype) @ rows


# -- normalisation (shared by batch_norm and layer_norm) ----------------------------------------
def _normalize(x, axes, eps):
    """``(x_hat, inv_std, mean, biased var)`` over ``axes``, statistics kept as dims (eq. 14-15)."""
    mean = _mean(x, axes)
    centred = x - mean
    var = _mean(centred * centred, axes)
    inv_std = 1 / np.sqrt(var + eps)
    return centred * inv_std, inv_std, mean, var


def _normalize_backward(g, x_hat, inv_std, axes):
    """``dx`` from ``g = dL/dx_hat`` when ``x_hat`` normalises over ``axes`` (eq. 17)."""
    return inv_std * (g - _mean(g, axes) - x_hat * _mean(g * x_hat, axes))


def _scale_shift(x_hat, weight, bias, shape):
    """``gamma x_hat + beta`` with the vectors reshaped to ``shape`` (None skipped) (eq. 15)."""
    y = x_hat if weight is None else x_hat * weight.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def _scale_shift_backward(dout, cache, axes):
    """``(g = dL/dx_hat, dweight, dbias)`` of :func:`_scale_shift`, sums over ``axes`` (eq. 18)."""
    weight, x_hat = cache['weight'], cache['x_hat']
    dweight = None if weight is None else (dout * x_hat).sum(axis=axes)
    dbias = dout.sum(axis=axes) if cache['has_bias'] else None
    g = dout if weight is None else dout * weight.reshape(cache['shape'])
    return g, dweight, dbias


# -- batch_norm ----------------------------------------------------------------------------------
def _check_batch_norm(x, weight, bias, running_mean, running_var, training):
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be a bool, got {training!r}")
    float_array(x, 'x', (2, 3, 4), "(N, C), (N, C, L) or (N, C, H, W)")
    c = x.shape[1]
    for name, v in (('weight', weight), ('bias', bias), ('running_mean', running_mean),
                    ('running_var', running_var)):
        _vector(v, name, c)
    same_dtype(('x', x), ('weight', weight), ('bias', bias), ('running_mean', running_mean),
               ('running_var', running_var))
    if not training and (running_mean is None or running_var is None):
        raise ValueError("eval-mode batch_norm needs running_mean and running_var, got None")


def _batch_statistics(x, axes, eps, running_mean, running_var, momentum):
    """Train-mode ``(x_hat, inv_std, new_running_mean, new_running_var)`` (eq. 14, 15, 19); the
    new running statistics are new arrays (None for None; the old ones for batch 0)."""
    count = math.prod(x.shape[a] for a in axes)               # m = |R|
    if count == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of "
                         f"shape {x.shape}")
    x_hat, inv_std, mean, var = _normalize(x, axes, eps)
    if count > 1 and running_mean is not None:
        running_mean = momentum * mean.ravel() + (1 - momentum) * running_mean
    if count > 1 and running_var is not None:
        unbiased = var.ravel() * (count / (count - 1))
        running_var = momentum * unbiased + (1 - momentum) * running_var
    return x_hat, inv_std, running_mean, running_var


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum=0.1,
                       eps=1e-5):
    """BatchNorm as ``torch.nn.functional.batch_norm`` on ``(N, C[, L])`` or ``(N, C, H, W)``.

    Training: batch statistics over every axis but 1 (eq. 14-15), and the running statistics of
    this step (eq. 19, unbiased variance) are returned as ``cache['running_mean']`` /
    ``cache['running_var']``: new arrays, what PyTorch writes into the buffers in place. No input is
    modified. Eval: the running statistics are used (eq. 21) and the cache holds them unchanged.

    Parameters
    ----------
    x : ndarray (N, C), (N, C, L) or (N, C, H, W)
    weight, bias : ndarray (C,) or None
        The affine scale and shift; None for ``affine=False``.
    running_mean, running_var : ndarray (C,) or None
        The running statistics; required in eval, may be None in training.
    training : bool
        Batch statistics (True) or the running ones (False).
    momentum : float in [0, 1]
        Weight of this batch in the running statistics (eq. 19).
    eps : float >= 0
        Added to the variance.

    Returns
    -------
    y : ndarray, shape of ``x``
    cache : Cache
        ``Cache('batch_norm')`` with ``x_hat`` (shape of ``x``) in training, ``x`` (a reference) in
        eval, and ``inv_std`` (per channel, broadcastable), ``weight`` (None without affine),
        ``has_bias``, ``shape``, ``axes``, ``training`` and ``running_mean`` / ``running_var`` (this
        step's statistics in training; None where given as None).
    """
    _check_batch_norm(x, weight, bias, running_mean, running_var, training)
    momentum, eps = _real(momentum, 'momentum', 0, 1), _real(eps, 'eps', 0)
    axes = (0,) + tuple(range(2, x.ndim))                  # R: batch and spatial axes
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)          # per-channel vectors against x
    if not training:
        return _eval_batch_norm(x, weight, bias, running_mean, running_var, eps, shape, axes)
    x_hat, inv_std, running_mean, running_var = _batch_statistics(x, axes, eps, running_mean,
                                                                  running_var, momentum)
    y = _scale_shift(x_hat, weight, bias, shape)
    return y, Cache('batch_norm', x_hat=x_hat, inv_std=inv_std, weight=weight,
                    has_bias=bias is not None, shape=shape, axes=axes, training=True,
                    running_mean=running_mean, running_var=running_var)


@njit(cache=True, parallel=True)
def _channel_affine_loop(x, scale, shift, low, high, y):
    """``y[n, c] = x[n, c] * scale[c] + shift[c]`` for ``x, y (N, C, L)``, clamped to ``[low, high]``
    as ReLU clamps (:func:`numpyconv.activations._clamp_value`); parallel over the ``(n, c)`` rows,
    each iteration owning its row of ``y``."""
    channels = x.shape[1]
    for t in prange(x.shape[0] * channels):
        n, c = t // channels, t % channels
        a, b = scale[c], shift[c]
        for k in range(x.shape[2]):
            y[n, c, k] = _clamp_value(x[n, c, k] * a + b, low, high)


@njit(cache=True, parallel=True)
def _channel_affine_sum_loop(x, scale, shift, r, low, high, y):
    """``y[n, c] = (x[n, c] * scale[c] + shift[c]) + r[n, c]``, clamped to ``[low, high]``: the
    affine map of :func:`_channel_affine_loop`, rounded, then a residual added (the order of the
    separate passes, so the result is theirs to the bit)."""
    channels = x.shape[1]
    for t in prange(x.shape[0] * channels):
        n, c = t // channels, t % channels
        a, b = scale[c], shift[c]
        for k in range(x.shape[2]):
            y[n, c, k] = _clamp_value((x[n, c, k] * a + b) + r[n, c, k], low, high)


def _channel_affine(x, scale, shift, low=-np.inf, high=np.inf, residual=None):
    """``x (N, C, ...) * scale[c] + shift[c]`` (``+ residual``, same shape), clamped to
    ``[low, high]``, in one parallel pass."""
    shape3 = (x.shape[0], x.shape[1], math.prod(x.shape[2:]))
    x3 = loop_operand(x).reshape(shape3)
    y = np.empty(shape3, dtype=x.dtype)
    with threads_for(y.size):
        if residual is None:
            _channel_affine_loop(x3, scale, shift, low, high, y)
        else:
            _channel_affine_sum_loop(x3, scale, shift, loop_operand(residual).reshape(shape3), low, high, y)
    return y.reshape(x.shape)


@njit(cache=True, parallel=True)
def _channel_affine_backward_loop(dout, x, mean, s, gamma, dx, sums):
    """For ``dout, x, dx (N, C, L)``: ``dx = dout gamma s`` (eq. 22) and, per channel,
    ``sums[c] = (sum dout, sum dout x_hat)`` with ``x_hat = (x - mean) s`` (eq. 21), accumulated in
    float64 along ``L`` in a fixed order. Parallel over the channels, each owning its ``dx`` rows and
    sums."""
    batch, channels, length = x.shape
    for c in prange(channels):
        total, total_x_hat = np.zeros(length), np.zeros(length)
        for n in range(batch):
            for k in range(length):
                g = dout[n, c, k]
                dx[n, c, k] = g * (gamma[c] * s[c])
                total[k] += g
                total_x_hat[k] += g * ((x[n, c, k] - mean[c]) * s[c])
        sums[c, 0], sums[c, 1] = total.sum(), total_x_hat.sum()


def _channel_affine_backward(dout, x, mean, s, gamma):
    """``(dx, sum_R dout, sum_R dout x_hat)`` of eval-mode BatchNorm in one parallel pass."""
    shape3 = (x.shape[0], x.shape[1], math.prod(x.shape[2:]))
    dout3, x3 = loop_operand(dout).reshape(shape3), loop_operand(x).reshape(shape3)
    dx, sums = np.empty(shape3, dtype=x.dtype), np.empty((x.shape[1], 2))
    with threads_for(dx.size):
        _channel_affine_backward_loop(dout3, x3, loop_operand(mean), loop_operand(s), loop_operand(gamma),
                                      dx, sums)
    return dx.reshape(x.shape), sums[:, 0].astype(x.dtype), sums[:, 1].astype(x.dtype)


def batch_norm_inference(x, weight, bias, running_mean, running_var, eps, low=-np.inf, high=np.inf,
                         residual=None):
    """Eval-mode BatchNorm's ``y`` alone (eq. 21), clamped to ``[low, high]``: a BatchNorm and the
    ReLU (``low=0``) or ReLU6 (``low=0, high=6``) after it in one pass, for inference; with
    ``residual``, ``clamp(y + residual)``: the end of a residual block (its branch's last
    BatchNorm, the shortcut's sum and the activation) in that one pass.

    Parameters
    ----------
    x : ndarray (N, C), (N, C, L) or (N, C, H, W)
    weight, bias, running_mean, running_var : ndarray (C,) or None
        As :func:`batch_norm_forward` in eval mode (the running statistics are required).
    eps : float >= 0
    low, high : float
        The clamp; the defaults leave ``y`` unclamped. A NaN passes.
    residual : ndarray or None
        Shape and dtype of ``x``, added to ``y`` before the clamp.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
        Bitwise the output of :func:`batch_norm_forward` (eval) (plus ``residual``) followed by
        ``relu_forward`` or ``relu6_forward``; no cache.
    """
    _check_batch_norm(x, weight, bias, running_mean, running_var, False)
    if residual is not None:
        same_dtype(('x', x), ('residual', float_array(residual, 'residual')))
        expect_shape(residual, x.shape, 'residual')
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    return _eval_batch_norm(x, weight, bias, running_mean, running_var, _real(eps, 'eps', 0), shape,
                            None, low, high, residual)[0]


def _eval_batch_norm(x, weight, bias, running_mean, running_var, eps, shape, axes, low=-np.inf,
                     high=np.inf, residual=None):
    """Eval-mode ``(y, cache)``: (eq. 21) as the per-channel affine map ``y = x a + c`` with
    ``a = gamma s`` and ``c = beta - running_mean a``, one pass over ``x`` (clamped to
    ``[low, high]``); the cache keeps ``x`` (a reference) and the backward forms ``x_hat`` only if it
    needs it."""
    inv_std = 1 / np.sqrt(running_var.reshape(shape) + eps)                   # s of (eq. 21)
    scale = inv_std if weight is None else inv_std * weight.reshape(shape)
    shift = -running_mean.reshape(shape) * scale
    if bias is not None:
        shift += bias.reshape(shape)
    y = _channel_affine(x, scale.ravel(), shift.ravel(), low, high, residual)
    return y, Cache('batch_norm', x=x, inv_std=inv_std, weight=weight, has_bias=bias is not None,
                    shape=shape, axes=axes, training=False, running_mean=running_mean,
                    running_var=running_var)


def batch_norm_backward(dout, cache):
    """Gradients of :func:`batch_norm_forward` (eq. 18, 20, 22, 22a).

    The running statistics get their eval-mode gradient (eq. 22a); in training the output does not
    depend on them: zeros.

    Parameters
    ----------
    dout : ndarray, shape of ``x``
        Gradient of the loss with respect to the output of :func:`batch_norm_forward`.
    cache : Cache
        The cache :func:`batch_norm_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, dweight (C,), dbias (C,), drunning_mean (C,), drunning_var (C,))``; None for an input
        given as None.
    """
    cache = check_cache(cache, 'batch_norm')
    if not cache['training']:
        return _eval_batch_norm_backward(dout, cache)
    x_hat, axes, inv_std = cache['x_hat'], cache['axes'], cache['inv_std']
    dout = grad_out(dout, x_hat.shape, x_hat.dtype)
    g, dweight, dbias = _scale_shift_backward(dout, cache, axes)
    dx = _normalize_backward(g, x_hat, inv_std, axes)                       # (eq. 20)
    dmean, dvar = (None if cache[k] is None else np.zeros(x_hat.shape[1], x_hat.dtype)   # (eq. 22b)
                   for k in ('running_mean', 'running_var'))
    return dx, dweight, dbias, dmean, dvar


def _eval_batch_norm_backward(dout, cache):
    """(eq. 22, 18, 22a) of the eval-mode affine map, with ``g = dout gamma``: ``dx = dout gamma s``,
    and the sums over ``R`` of ``dout`` and ``dout x_hat`` serve ``dbias``, ``dweight`` and the running
    statistics' gradients."""
    x, weight, s = cache['x'], cache['weight'], cache['inv_std'].ravel()
    dout = grad_out(dout, x.shape, x.dtype)
    gamma = np.ones(x.shape[1], x.dtype) if weight is None else weight
    dx, sum_dout, sum_dout_x_hat = _channel_affine_backward(dout, x, cache['running_mean'], s, gamma)
    dweight = None if weight is None else sum_dout_x_hat                       # (eq. 18)
    dbias = sum_dout if cache['has_bias'] else None                            # (eq. 18)
    dmean = -s * gamma * sum_dout                                              # (eq. 22a)
    dvar = -0.5 * s ** 2 * gamma * sum_dout_x_hat                              # (eq. 22a)
    return dx, dweight, dbias, dmean, dvar


# -- layer_norm ------------------------------------------------------------------------------------
def layer_norm_forward(x, weight, bias, eps=1e-5):
    """LayerNorm over the last axis of ``x`` (eq. 23), as ``torch.nn.functional.layer_norm``.

    Parameters
    ----------
    x : ndarray (..., D)
    weight, bias : ndarray (D,) or None
        The element-wise affine scale and shift.
    eps : float >= 0
        Added to the variance.

    Returns
    -------
    y : ndarray (..., D)
    cache : Cache
        ``Cache('layer_norm')`` with ``x_hat`` (shape of ``x``), ``inv_std`` ``(..., 1)``, ``weight``
        (None when given as None), ``has_bias`` and ``shape`` ``(D,)``.
    """
    eps = _check_layer_norm(x, weight, bias, eps)
    x_hat, inv_std, y = _layer_norm_rows(x, weight, bias, eps)                     # (eq. 23)
    return y, Cache('layer_norm', x_hat=x_hat, inv_std=inv_std, weight=weight,
                    has_bias=bias is not None, shape=(x.shape[-1],))


def layer_norm_inference(x, weight, bias, eps=1e-5):
    """:func:`layer_norm_forward`'s ``y`` alone, without writing ``x_hat``: for inference.

    Parameters
    ----------
    x : ndarray (..., D)
    weight, bias : ndarray (D,) or None
    eps : float >= 0

    Returns
    -------
    y : ndarray (..., D)
        Bitwise the output of :func:`layer_norm_forward`; no cache.
    """
    eps = _check_layer_norm(x, weight, bias, eps)
    return _layer_norm_rows(x, weight, bias, eps, keep_x_hat=False)[2]            # (eq. 23)


def _check_layer_norm(x, weight, bias, eps):
    """Check LayerNorm's arguments; returns ``eps`` as a float."""
    float_array(x, 'x')
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension (..., D), got a 0-d array")
    _vector(weight, 'weight', x.shape[-1])
    _vector(bias, 'bias', x.shape[-1])
    same_dtype(('x', x), ('weight', weight), ('bias', bias))
    return _real(eps, 'eps', 0)


@njit(cache=True, error_model='numpy', fastmath={'reassoc'})
def _row_statistics(x, r, eps):
    """Mean and ``s = (var + eps)^(-1/2)`` of row ``r`` of ``x (M, D)``, the biased variance (eq. 14):
    two passes, summed in float64. The sums may be reassociated (``fastmath={'reassoc'}``, nothing
    else), so that they vectorise; the order is fixed by the compiled loop, the same for every row
    and thread count."""
    d = max(x.shape[1], 1)
    total = 0.0
    for k in range(x.shape[1]):
        total += x[r, k]
    mean = total / d
    squares = 0.0
    for k in range(x.shape[1]):
        v = x[r, k] - mean
        squares += v * v
    return mean, 1.0 / np.sqrt(squares / d + eps)


@njit(cache=True, parallel=True, error_model='numpy')
def _layer_norm_loop(x, weight, bias, eps, centre, inv_std, x_hat, y):
    """For each row of ``x (M, D)``: its statistics (:func:`_row_statistics`), the mean split into
    ``centre[r] = (hi, lo)`` in ``x``'s dtype (``hi`` the mean rounded, ``lo`` the rest rounded; ``lo``
    is 0 in float64) and ``s`` rounded into ``inv_std``; then ``x_hat = ((x - hi) - lo) s`` (eq. 15)
    and ``y = gamma x_hat + beta`` (eq. 23) in ``x``'s dtype. ``x - hi`` is exact for the values near
    the mean, so ``x_hat`` is accurate relative to the spread of the row, not to its mean. Without
    ``x_hat`` (0 rows: inference) only ``y`` is written. Parallel over the rows, each owning its row
    of the outputs."""
    keep = x_hat.shape[0] > 0
    for r in prange(x.shape[0]):
        mean, inv_std[r] = _row_statistics(x, r, eps)
        centre[r, 0] = mean
        centre[r, 1] = mean - centre[r, 0]
        hi, lo, s = centre[r, 0], centre[r, 1], inv_std[r]
        if keep:
            for k in range(x.shape[1]):
                h = ((x[r, k] - hi) - lo) * s
                x_hat[r, k] = h
                y[r, k] = h * weight[k] + bias[k]
        else:
            for k in range(x.shape[1]):
                y[r, k] = ((x[r, k] - hi) - lo) * s * weight[k] + bias[k]


def _layer_norm_rows(x, weight, bias, eps, keep_x_hat=True):
    """``(x_hat, inv_std (..., 1), y)`` of LayerNorm over the last axis of ``x`` (eq. 14, 15, 23);
    None weight or bias as 1 or 0; ``x_hat`` None unless ``keep_x_hat``."""
    d = x.shape[-1]
    rows = loop_operand(x).reshape(math.prod(x.shape[:-1]), d)
    gamma = np.ones(d, x.dtype) if weight is None else loop_operand(weight)
    beta = np.zeros(d, x.dtype) if bias is None else loop_operand(bias)
    y = np.empty(rows.shape, x.dtype)
    x_hat = np.empty(rows.shape if keep_x_hat else (0, d), x.dtype)
    centre, inv_std = np.empty((rows.shape[0], 2), x.dtype), np.empty(rows.shape[0], x.dtype)
    with threads_for(rows.size):
        _layer_norm_loop(rows, gamma, beta, float(eps), centre, inv_std, x_hat, y)
    return (x_hat.reshape(x.shape) if keep_x_hat else None, inv_std.reshape(x.shape[:-1] + (1,)),
            y.reshape(x.shape))


def layer_norm_backward(dout, cache):
    """Gradients of :func:`layer_norm_forward` (eq. 18, 24).

    Parameters
    ----------
    dout : ndarray, (..., D)
        Gradient of the loss with respect to the output of :func:`layer_norm_forward`.
    cache : Cache
        The cache :func:`layer_norm_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx (..., D), dweight (D,), dbias (D,))``; None for an input given as None.
    """
    cache = check_cache(cache, 'layer_norm')
    x_hat, weight = cache['x_hat'], cache['weight']
    d = x_hat.shape[-1]
    rows_dy = _rows(loop_operand(grad_out(dout, x_hat.shape, x_hat.dtype)))      # (M, D)
    rows_dx = np.empty_like(rows_dy)
    chunks = min(rows_dy.shape[0], _LAYER_NORM_CHUNKS)
    dweight_parts, dbias_parts = np.zeros((chunks, d)), np.zeros((chunks, d))
    gamma = np.ones(d, x_hat.dtype) if weight is None else loop_operand(weight)
    with threads_for(rows_dy.size):
        _layer_norm_backward_loop(rows_dy, _rows(loop_operand(x_hat)),
                                  loop_operand(cache['inv_std']).reshape(-1), gamma, rows_dx,
                                  dweight_parts, dbias_parts)
    dweight = None if weight is None else dweight_parts.sum(axis=0).astype(x_hat.dtype)
    dbias = dbias_parts.sum(axis=0).astype(x_hat.dtype) if cache['has_bias'] else None
    return rows_dx.reshape(x_hat.shape), dweight, dbias


# The rows are split into this many fixed chunks, each summing its own part of dgamma and dbeta, so
# the sums do not depend on the number of threads.
_LAYER_NORM_CHUNKS = 64


@njit(cache=True, parallel=True, error_model='numpy', fastmath={'reassoc'})
def _layer_norm_backward_loop(dy, x_hat, inv_std, gamma, dx, dgamma_parts, dbeta_parts):
    """For each row of ``dy (M, D)``: ``g = dy gamma`` and ``dx = s (g - mean g - x_hat mean(g x_hat))``
    (eq. 24), the means in float64; each chunk of rows adds its ``dy x_hat`` and ``dy`` into its row
    of ``dgamma_parts`` and ``dbeta_parts`` (eq. 18). Parallel over the chunks. The row sums may be
    reassociated so that they vectorise (as in :func:`_row_statistics`)."""
    m, d = dy.shape
    chunks = dgamma_parts.shape[0]
    for j in prange(chunks):
        for r in range(j * m // chunks, (j + 1) * m // chunks):
            sum_g = sum_gh = 0.0
            for k in range(d):
                t, h = np.float64(dy[r, k]), np.float64(x_hat[r, k])
                g = t * gamma[k]
                sum_g += g
                sum_gh += g * h
                dgamma_parts[j, k] += t * h
                dbeta_parts[j, k] += t
            mean_g, mean_gh, s = sum_g / d, sum_gh / d, np.float64(inv_std[r])
            for k in range(d):
                dx[r, k] = s * (np.float64(dy[r, k]) * gamma[k] - mean_g - x_hat[r, k] * mean_gh)


# -- cross-entropy loss -----------------------------------------------------------------------------
def _check_labels(labels, logits_shape):
    n, k = logits_shape
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in 'iu':
        kind = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(f"labels must be an integer numpy.ndarray of shape ({n},), got {kind}")
    expect_shape(labels, (n,), 'labels')
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}) for logits of shape {logits_shape}, got "
                         f"values in [{labels.min()}, {labels.max()}]")


def cross_entropy_forward(logits, labels):
    """Mean cross-entropy of ``logits`` against integer ``labels`` (eq. 31).

    Parameters
    ----------
    logits : ndarray (N, K)
        Unnormalised class scores, float32 or float64.
    labels : ndarray (N,) of ints
        Class indices in ``[0, K)``.

    Returns
    -------
    loss : NumPy scalar
        Of the logits' dtype (NaN for N = 0, as in PyTorch).
    cache : Cache
        ``Cache('cross_entropy')`` with ``p`` (the softmax probabilities, ``(N, K)``) and ``labels``.
    """
    float_array(logits, 'logits', 2, "(N, num_classes)")
    _check_labels(labels, logits.shape)
    n = logits.shape[0]
    shifted, e, total = _shifted_exp(logits, axis=1)
    log_p = shifted - np.log(total)                             # (N, K) log-softmax
    loss = -log_p[np.arange(n), labels].mean() if n else np.nan
    return logits.dtype.type(loss), Cache('cross_entropy', p=e / total, labels=labels)


def cross_entropy_backward(dout, cache):
    """``dlogits = dL (softmax(z) - onehot(t)) / N`` (eq. 32).

    Parameters
    ----------
    dout : float or 0-d float array
        The upstream scalar ``dL`` (1.0 when the loss is the final output); an integer, bool or
        complex ``dout`` raises ``TypeError``.
    cache : Cache
        The cache :func:`cross_entropy_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dlogits (N, K), None)``: the integer labels have no gradient.
    """
    cache = check_cache(cache, 'cross_entropy')
    p, labels = cache['p'], cache['labels']
    if not isinstance(dout, (float, np.floating, np.ndarray)):
        raise TypeError(f"dout must be a float (the gradient of the loss, 1.0 when the loss is the "
                        f"final output) or a 0-d float array, got {type(dout).__name__} {dout!r}")
    dout = grad_out(np.asarray(dout), (), p.dtype)
    n = p.shape[0]
    dlogits = p.copy()
    dlogits[np.arange(n), labels] -= 1
    dlogits *= float(dout) / max(n, 1)
    return dlogits, None
