"""Plain-loop definitions of the building blocks: slow, obvious, the thing to read first.

Each function is the defining formula of docs/derivations/blocks.md written element by element
with Python loops and the ``math`` module (no vectorised NumPy arithmetic). The tests compare the
fast ops of ``numpyconv.blocks`` against these. Outputs keep the input's dtype.
"""
import math

import numpy as np

from .._checks import pair


def linear(x, weight, bias=None):
    """``y[m, o] = b[o] + sum_f W[o, f] x[m, f]`` for ``x (M, F)`` (eq. 1)."""
    rows, features = x.shape
    outs = weight.shape[0]
    y = np.zeros((rows, outs), dtype=x.dtype)
    for m in range(rows):
        for o in range(outs):
            total = 0.0 if bias is None else float(bias[o])
            for f in range(features):
                total += weight[o, f] * x[m, f]
            y[m, o] = total
    return y


def _elementwise(x, scalar_fn):
    y = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        y[index] = scalar_fn(float(x[index]))
    return y


def relu(x):
    """``max(x, 0)`` element by element (eq. 5)."""
    return _elementwise(x, lambda v: v if v > 0 else 0.0)


def sigmoid(x, temperature=1.0):
    """``1 / (1 + exp(-x / T))`` element by element (eq. 7)."""
    return _elementwise(x, lambda v: 1.0 / (1.0 + math.exp(-v / temperature)))


def gelu(x):
    """``x * Phi(x)``, ``Phi(x) = (1 + erf(x / sqrt 2)) / 2`` (eq. 12)."""
    return _elementwise(x, lambda v: v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))))


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


def _mean_var(values):
    """Mean and biased variance of a list of floats (eq. 14)."""
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / len(values)


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """BatchNorm output (eq. 14-15 in training, eq. 21 in eval); ``x (N, C, ...)``.

    Does not touch the running statistics (see :func:`batch_norm_running_stats`).
    """
    y = np.zeros_like(x)
    for c in range(x.shape[1]):
        channel = [i for i in np.ndindex(*x.shape) if i[1] == c]
        if training:
            mean, var = _mean_var([float(x[i]) for i in channel])
        else:
            mean, var = float(running_mean[c]), float(running_var[c])
        gamma = 1.0 if weight is None else float(weight[c])
        beta = 0.0 if bias is None else float(bias[c])
        for i in channel:
            y[i] = gamma * (x[i] - mean) / math.sqrt(var + eps) + beta
    return y


def batch_norm_running_stats(x, running_mean, running_var, momentum=0.1):
    """New ``(running_mean, running_var)`` after one training step on ``x`` (eq. 19)."""
    new_mean, new_var = running_mean.copy(), running_var.copy()
    for c in range(x.shape[1]):
        values = [float(x[i]) for i in np.ndindex(*x.shape) if i[1] == c]
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


def avg_pool2d(x, kernel_size, stride=None):
    """``y[n,c,i,j] = mean of x[n, c, i*sh : i*sh + kh, j*sw : j*sw + kw]`` (eq. 25)."""
    kh, kw = pair(kernel_size, 'kernel_size')
    sh, sw = pair(kernel_size if stride is None else stride, 'stride')
    n_batch, channels, h, w = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = np.zeros((n_batch, channels, ho, wo), dtype=x.dtype)
    for n in range(n_batch):
        for c in range(channels):
            for i in range(ho):
                for j in range(wo):
                    total = 0.0
                    for p in range(kh):
                        for q in range(kw):
                            total += x[n, c, i * sh + p, j * sw + q]
                    y[n, c, i, j] = total / (kh * kw)
    return y


def global_avg_pool2d(x):
    """``z[n, c] = sum_{h,w} x[n, c, h, w] / (H W)`` (eq. 27)."""
    n_batch, channels, h, w = x.shape
    z = np.zeros((n_batch, channels), dtype=x.dtype)
    for n in range(n_batch):
        for c in range(channels):
            z[n, c] = sum(float(x[n, c, i, j]) for i in range(h) for j in range(w)) / (h * w)
    return z


def upsample_nearest2d(x, scale_factor=2):
    """``y[n, c, i, j] = x[n, c, i // sh, j // sw]`` (eq. 29)."""
    sh, sw = pair(scale_factor, 'scale_factor')
    n_batch, channels, h, w = x.shape
    y = np.zeros((n_batch, channels, h * sh, w * sw), dtype=x.dtype)
    for n, c, i, j in np.ndindex(*y.shape):
        y[n, c, i, j] = x[n, c, i // sh, j // sw]
    return y


def cross_entropy(logits, labels):
    """``mean_n -log(exp(z[n, t_n]) / sum_k exp(z[n, k]))`` (eq. 31)."""
    n_batch, classes = logits.shape
    total = 0.0
    for n in range(n_batch):
        normaliser = sum(math.exp(logits[n, k]) for k in range(classes))
        total += -math.log(math.exp(logits[n, labels[n]]) / normaliser)
    return logits.dtype.type(total / n_batch)
