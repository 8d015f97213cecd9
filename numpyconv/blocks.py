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
from ._checks import Cache, check_cache, expect_shape, float_array, grad_out, real as _real, same_dtype
from .activations import _shifted_exp
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
    """``y = x W^T + b`` over the last axis of ``x (..., F)`` (eq. 1); ``weight (O, F)``."""
    float_array(x, 'x')
    float_array(weight, 'weight', 2, "(out_features, in_features)")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x must have shape (..., {weight.shape[1]}) for weight of shape "
                         f"{weight.shape}, got {x.shape}")
    _vector(bias, 'bias', weight.shape[0])
    same_dtype(('x', x), ('weight', weight), ('bias', bias))
    require_memory(x.shape[:-1] + weight.shape[:1], x.dtype,
                   f"x of shape {x.shape} with weight of shape {weight.shape}")
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y, Cache('linear', x=x, weight=weight, has_bias=bias is not None)


def linear_backward(dout, cache):
    """Gradients ``(dx, dweight, dbias)`` of :func:`linear_forward` (``dbias`` None without bias)."""
    cache = check_cache(cache, 'linear')
    x, weight = cache['x'], cache['weight']
    dout = grad_out(dout, x.shape[:-1] + weight.shape[:1], x.dtype)
    rows = math.prod(x.shape[:-1])
    rows_x = x.reshape(rows, weight.shape[1])                            # (M, F)
    rows_dy = dout.reshape(rows, weight.shape[0])                        # (M, O)
    dweight = rows_dy.T @ rows_x                                         # (eq. 2)
    dbias = rows_dy.sum(axis=0) if cache['has_bias'] else None           # (eq. 3)
    return dout @ weight, dweight, dbias                                 # (eq. 4)


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
    ``weight``/``bias`` may be None (affine=False); running statistics may be None in training.
    """
    _check_batch_norm(x, weight, bias, running_mean, running_var, training)
    momentum, eps = _real(momentum, 'momentum', 0, 1), _real(eps, 'eps', 0)
    axes = (0,) + tuple(range(2, x.ndim))                  # R: batch and spatial axes
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)          # per-channel vectors against x
    if training:
        x_hat, inv_std, running_mean, running_var = _batch_statistics(x, axes, eps, running_mean,
                                                                      running_var, momentum)
    else:
        inv_std = 1 / np.sqrt(running_var.reshape(shape) + eps)               # (eq. 21)
        x_hat = (x - running_mean.reshape(shape)) * inv_std
    y = _scale_shift(x_hat, weight, bias, shape)
    return y, Cache('batch_norm', x_hat=x_hat, inv_std=inv_std, weight=weight,
                    has_bias=bias is not None, shape=shape, axes=axes, training=bool(training),
                    running_mean=running_mean, running_var=running_var)


def batch_norm_backward(dout, cache):
    """Gradients ``(dx, dweight, dbias, drunning_mean, drunning_var)`` of :func:`batch_norm_forward`
    (eq. 18, 20, 22, 22a). The running statistics get their eval-mode gradient (eq. 22a); in
    training the output does not depend on them: zeros (None for statistics given as None)."""
    cache = check_cache(cache, 'batch_norm')
    x_hat, axes, inv_std = cache['x_hat'], cache['axes'], cache['inv_std']
    dout = grad_out(dout, x_hat.shape, x_hat.dtype)
    g, dweight, dbias = _scale_shift_backward(dout, cache, axes)
    c = x_hat.shape[1]
    if cache['training']:
        dx = _normalize_backward(g, x_hat, inv_std, axes)                   # (eq. 20)
        dmean, dvar = (None if cache[k] is None else np.zeros(c, x_hat.dtype)        # no dependence
                       for k in ('running_mean', 'running_var'))
    else:
        dx = g * inv_std                                                    # (eq. 22)
        dmean = -(g.sum(axis=axes) * inv_std.ravel())                       # (eq. 22a)
        dvar = -0.5 * (g * x_hat).sum(axis=axes) * inv_std.ravel() ** 2     # (eq. 22a)
    return dx, dweight, dbias, dmean, dvar


# -- layer_norm ------------------------------------------------------------------------------------
def layer_norm_forward(x, weight, bias, eps=1e-5):
    """LayerNorm over the LAST axis of ``x (..., D)``; ``weight``, ``bias`` ``(D,)`` or None (eq. 23)."""
    float_array(x, 'x')
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension (..., D), got a 0-d array")
    d = x.shape[-1]
    _vector(weight, 'weight', d)
    _vector(bias, 'bias', d)
    same_dtype(('x', x), ('weight', weight), ('bias', bias))
    x_hat, inv_std, _, _ = _normalize(x, -1, _real(eps, 'eps', 0))
    y = _scale_shift(x_hat, weight, bias, (d,))
    return y, Cache('layer_norm', x_hat=x_hat, inv_std=inv_std, weight=weight,
                    has_bias=bias is not None, shape=(d,))


def layer_norm_backward(dout, cache):
    """Gradients ``(dx, dweight, dbias)`` of :func:`layer_norm_forward` (eq. 18, 24)."""
    cache = check_cache(cache, 'layer_norm')
    x_hat = cache['x_hat']
    dout = grad_out(dout, x_hat.shape, x_hat.dtype)
    g, dweight, dbias = _scale_shift_backward(dout, cache, tuple(range(x_hat.ndim - 1)))
    return _normalize_backward(g, x_hat, cache['inv_std'], -1), dweight, dbias


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
    """Mean cross-entropy of ``logits (N, K)`` against integer ``labels (N,)`` (eq. 31).

    Returns ``(loss, cache)``, ``loss`` a NumPy scalar of the logits' dtype (NaN for N = 0,
    as in PyTorch).
    """
    float_array(logits, 'logits', 2, "(N, num_classes)")
    _check_labels(labels, logits.shape)
    n = logits.shape[0]
    shifted, e, total = _shifted_exp(logits, axis=1)
    log_p = shifted - np.log(total)                             # (N, K) log-softmax
    loss = -log_p[np.arange(n), labels].mean() if n else np.nan
    return logits.dtype.type(loss), Cache('cross_entropy', p=e / total, labels=labels)


def cross_entropy_backward(dout, cache):
    """``(dlogits, None)`` with ``dlogits = dL (softmax(z) - onehot(t)) / N`` (eq. 32); the integer
    labels have no gradient.

    ``dout`` is the upstream scalar (1.0 when the loss is the final output): a Python or NumPy
    float, or a 0-d float array; an integer, bool or complex ``dout`` raises ``TypeError``.
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
