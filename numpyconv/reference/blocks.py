"""Plain-loop definitions of the building blocks and their gradients: slow, obvious, the thing to read first.

Each forward is the defining formula of docs/derivations/blocks.md written element by element with
Python loops and the ``math`` module (no vectorised NumPy arithmetic). Each ``<op>_backward(dout,
*forward_args)`` walks the same loops and adds, for every output element ``y_j`` and input element
``x_i`` it depends on, the chain-rule term ``dx_i += dy_j * dy_j/dx_i`` of the equation cited on the
line. A backward returns what ``numpyconv.<op>_backward`` returns: one gradient per array input of
forward, in forward's order, None for an input given as None. Outputs keep the input's dtype.
"""
import math

import numpy as np


# -- linear ----------------------------------------------------------------------------------------
def linear(x, weight, bias=None):
    """``y[m, o] = b[o] + sum_f W[o, f] x[m, f]`` for every row ``m`` of ``x (..., F)`` (eq. 1)."""
    outs, features = weight.shape
    y = np.zeros(x.shape[:-1] + (outs,), dtype=x.dtype)
    for m in np.ndindex(*x.shape[:-1]):
        for o in range(outs):
            total = 0.0 if bias is None else float(bias[o])
            for f in range(features):
                total += weight[o, f] * x[m + (f,)]
            y[m + (o,)] = total
    return y


def linear_backward(dout, x, weight, bias=None):
    """``(dx, dweight, dbias)`` of :func:`linear`; ``dout`` ``(..., O)``; ``dbias`` None without bias."""
    outs, features = weight.shape
    dx, dweight = np.zeros_like(x), np.zeros_like(weight)
    dbias = None if bias is None else np.zeros_like(bias)
    for m in np.ndindex(*x.shape[:-1]):
        for o in range(outs):
            if bias is not None:
                dbias[o] += dout[m + (o,)]                                    # (eq. 3)
            for f in range(features):
                dweight[o, f] += dout[m + (o,)] * x[m + (f,)]                 # (eq. 2)
                dx[m + (f,)] += dout[m + (o,)] * weight[o, f]                 # (eq. 4)
    return dx, dweight, dbias


# -- element-wise activations -------------------------------------------------------------------
def _elementwise(x, scalar_fn):
    y = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        y[index] = scalar_fn(float(x[index]))
    return y


def _cdf(v):
    """Standard normal cdf ``Phi(v) = (1 + erf(v / sqrt 2)) / 2``."""
    return 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))


def _pdf(v):
    """Standard normal density ``phi(v) = exp(-v^2 / 2) / sqrt(2 pi)``."""
    return math.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi)


def relu(x):
    """``max(x, 0)`` element by element (eq. 5)."""
    return _elementwise(x, lambda v: v if v > 0 else 0.0)


def relu_backward(dout, x):
    """``(dx,)`` of :func:`relu`; the kink at 0 gets gradient 0."""
    dx = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        dx[i] = dout[i] * (1.0 if x[i] > 0 else 0.0)                          # (eq. 6)
    return (dx,)


def sigmoid(x, temperature=1.0):
    """``1 / (1 + exp(-x / T))`` element by element (eq. 7)."""
    return _elementwise(x, lambda v: 1.0 / (1.0 + math.exp(-v / temperature)))


def sigmoid_backward(dout, x, temperature=1.0):
    """``(dx,)`` of :func:`sigmoid`."""
    a = sigmoid(x, temperature)                                               # (eq. 7)
    dx = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        dx[i] = dout[i] * a[i] * (1.0 - a[i]) / temperature                   # (eq. 8)
    return (dx,)


def gelu(x):
    """``x * Phi(x)``, ``Phi(x) = (1 + erf(x / sqrt 2)) / 2`` (eq. 12)."""
    return _elementwise(x, lambda v: v * _cdf(v))


def gelu_backward(dout, x):
    """``(dx,)`` of :func:`gelu`."""
    dx = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        v = float(x[i])
        dx[i] = dout[i] * (_cdf(v) + v * _pdf(v))                             # (eq. 13)
    return (dx,)


def _lines(shape, axis):
    """Yield, for every 1-D line of ``shape`` along ``axis``, the list of its element indices."""
    others = [n for a, n in enumerate(shape) if a != axis]
    for rest in np.ndindex(*others):
        rest = list(rest)
        yield [tuple(rest[:axis] + [k] + rest[axis:]) for k in range(shape[axis])]


def softmax(x, axis=-1, temperature=1.0):
    """``exp(x_k / T) / sum_j exp(x_j / T)`` along ``axis`` (eq. 9)."""
    axis = axis % x.ndim
    y = np.zeros_like(x)
    for line in _lines(x.shape, axis):
        exps = [math.exp(x[i] / temperature) for i in line]
        for i, e in zip(line, exps):
            y[i] = e / sum(exps)
    return y


def softmax_backward(dout, x, axis=-1, temperature=1.0):
    """``(dx,)`` of :func:`softmax`: every probability of a line against every logit of that line."""
    axis = axis % x.ndim
    p = softmax(x, axis, temperature)                                         # (eq. 9)
    dx = np.zeros_like(x)
    for line in _lines(x.shape, axis):
        for i in line:
            for k in line:
                dx[i] += dout[k] * p[k] * ((1.0 if k == i else 0.0) - p[i]) / temperature   # (eq. 10, 11)
    return (dx,)


# -- normalisation ---------------------------------------------------------------------------------
def _mean_var(values):
    """Mean and biased variance of a list of floats (eq. 14); ``(0, 0)`` for no values (batch 0)."""
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / len(values)


def _channel(shape, c):
    """The indices of every element of channel ``c`` (axis 1) of an array of ``shape``: the set R."""
    return [i for i in np.ndindex(*shape) if i[1] == c]


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """BatchNorm output (eq. 14-15 in training, eq. 21 in eval); ``x (N, C, ...)``.

    Does not touch the running statistics (see :func:`batch_norm_running_stats`).
    """
    y = np.zeros_like(x)
    for c in range(x.shape[1]):
        channel = _channel(x.shape, c)
        if training:
            mean, var = _mean_var([float(x[i]) for i in channel])
        else:
            mean, var = float(running_mean[c]), float(running_var[c])
        gamma = 1.0 if weight is None else float(weight[c])
        beta = 0.0 if bias is None else float(bias[c])
        for i in channel:
            y[i] = gamma * (x[i] - mean) / math.sqrt(var + eps) + beta
    return y


def batch_norm_backward(dout, x, weight, bias, running_mean, running_var, training, momentum=0.1,
                        eps=1e-5):
    """``(dx, dweight, dbias, drunning_mean, drunning_var)`` of :func:`batch_norm`.

    Per channel, ``m`` elements ``R``. Training: ``dx_i = sum_j g_j dx_hat_j/dx_i`` through the
    batch statistics, every element of the channel against every other; the running statistics do
    not enter the output, their gradients are zero. Eval: the running statistics are constants of
    ``x`` and get their own gradients. None for an input given as None.
    """
    dx = np.zeros_like(x)
    dweight, dbias = (None if v is None else np.zeros_like(v) for v in (weight, bias))
    dmean, dvar = (None if v is None else np.zeros_like(v) for v in (running_mean, running_var))
    for c in range(x.shape[1]):
        channel = _channel(x.shape, c)
        m = len(channel)
        if training:
            mean, var = _mean_var([float(x[i]) for i in channel])             # (eq. 14)
        else:
            mean, var = float(running_mean[c]), float(running_var[c])         # (eq. 21)
        s = 1.0 / math.sqrt(var + eps)                                        # (eq. 15)
        x_hat = {i: (x[i] - mean) * s for i in channel}                       # (eq. 15)
        g = {i: dout[i] * (1.0 if weight is None else weight[c]) for i in channel}   # g = dL/dx_hat
        for i in channel:
            if weight is not None:
                dweight[c] += dout[i] * x_hat[i]                              # (eq. 18)
            if bias is not None:
                dbias[c] += dout[i]                                           # (eq. 18)
            if training:
                for j in channel:
                    jac = s * ((1.0 if i == j else 0.0) - 1 / m - x_hat[i] * x_hat[j] / m)  # (eq. 16)
                    dx[i] += g[j] * jac                                       # (eq. 20)
                # dmean[c], dvar[c] stay 0                                    # (eq. 22b)
            else:
                dx[i] += g[i] * s                                             # (eq. 22)
                dmean[c] += -s * g[i]                                         # (eq. 22a)
                dvar[c] += -0.5 * s * s * g[i] * x_hat[i]                     # (eq. 22a)
    return dx, dweight, dbias, dmean, dvar


def batch_norm_running_stats(x, running_mean, running_var, momentum=0.1):
    """New ``(running_mean, running_var)`` after one training step on ``x`` (eq. 19)."""
    new_mean, new_var = running_mean.copy(), running_var.copy()
    for c in range(x.shape[1]):
        values = [float(x[i]) for i in _channel(x.shape, c)]
        mean, var = _mean_var(values)
        unbiased = var * len(values) / (len(values) - 1)
        new_mean[c] = momentum * mean + (1 - momentum) * running_mean[c]
        new_var[c] = momentum * unbiased + (1 - momentum) * running_var[c]
    return new_mean, new_var


def layer_norm(x, weight, bias, eps=1e-5):
    """Normalise every line along the last axis, then ``gamma * x_hat + beta`` (eq. 23)."""
    y = np.zeros_like(x)
    for line in _lines(x.shape, x.ndim - 1):
        mean, var = _mean_var([float(x[i]) for i in line])
        for d, i in enumerate(line):
            gamma = 1.0 if weight is None else float(weight[d])
            beta = 0.0 if bias is None else float(bias[d])
            y[i] = gamma * (x[i] - mean) / math.sqrt(var + eps) + beta
    return y


def layer_norm_backward(dout, x, weight, bias, eps=1e-5):
    """``(dx, dweight, dbias)`` of :func:`layer_norm`: per line of ``D`` elements, every element
    against every other; None for ``weight`` / ``bias`` given as None."""
    dx = np.zeros_like(x)
    dweight, dbias = (None if v is None else np.zeros_like(v) for v in (weight, bias))
    size = x.shape[-1]                                                        # D
    for line in _lines(x.shape, x.ndim - 1):
        mean, var = _mean_var([float(x[i]) for i in line])                    # (eq. 14)
        s = 1.0 / math.sqrt(var + eps)                                        # (eq. 15)
        x_hat = [(x[i] - mean) * s for i in line]                             # (eq. 15)
        g = [dout[i] * (1.0 if weight is None else weight[d]) for d, i in enumerate(line)]  # dL/dx_hat
        for d, i in enumerate(line):
            if weight is not None:
                dweight[d] += dout[i] * x_hat[d]                              # (eq. 18)
            if bias is not None:
                dbias[d] += dout[i]                                           # (eq. 18)
            for e in range(size):
                jac = s * ((1.0 if d == e else 0.0) - 1 / size - x_hat[d] * x_hat[e] / size)   # (eq. 16)
                dx[i] += g[e] * jac                                           # (eq. 24)
    return dx, dweight, dbias


# -- pooling and upsampling ------------------------------------------------------------------------
def global_avg_pool2d(x):
    """``z[n, c] = sum_{h,w} x[n, c, h, w] / (H W)`` (eq. 27)."""
    n_batch, channels, h, w = x.shape
    z = np.zeros((n_batch, channels), dtype=x.dtype)
    for n in range(n_batch):
        for c in range(channels):
            z[n, c] = sum(float(x[n, c, i, j]) for i in range(h) for j in range(w)) / (h * w)
    return z


def global_avg_pool2d_backward(dout, x):
    """``(dx,)`` of :func:`global_avg_pool2d`."""
    h, w = x.shape[2:]
    dx = np.zeros_like(x)
    for n, c, i, j in np.ndindex(*x.shape):
        dx[n, c, i, j] = dout[n, c] / (h * w)                                 # (eq. 28)
    return (dx,)


# -- cross-entropy -------------------------------------------------------------------------------
def cross_entropy(logits, labels):
    """``mean_n -log(exp(z[n, t_n]) / sum_k exp(z[n, k]))`` (eq. 31); NaN for no sample."""
    n_batch, classes = logits.shape
    total = 0.0
    for n in range(n_batch):
        normaliser = sum(math.exp(logits[n, k]) for k in range(classes))
        total += -math.log(math.exp(logits[n, labels[n]]) / normaliser)
    return logits.dtype.type(total / n_batch if n_batch else math.nan)


def cross_entropy_backward(dout, logits, labels):
    """``(dlogits, None)`` of :func:`cross_entropy` for the upstream scalar ``dout``; the integer
    labels have no gradient."""
    n_batch, classes = logits.shape
    dlogits = np.zeros_like(logits)
    for n in range(n_batch):
        normaliser = sum(math.exp(logits[n, k]) for k in range(classes))
        for i in range(classes):
            p = math.exp(logits[n, i]) / normaliser                           # (eq. 9, T = 1)
            dlogits[n, i] = float(dout) / n_batch * (p - (1.0 if i == labels[n] else 0.0))   # (eq. 32)
    return dlogits, None
