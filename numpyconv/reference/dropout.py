"""Plain-loop definitions of dropout, dropout2d and drop_path, forward and backward, element by
element (docs/derivations/blocks.md, eq. 55-58). A mask given is used; otherwise the mask is drawn
as the ops draw it, ``numpy.random.default_rng(rng).random(mask_shape) >= p`` (so the same seed
gives the same mask). Each backward returns ``(dx, None)``.
"""
import numpy as np


def _keep(mask_shape, p, rng, mask):
    if mask is not None:
        return mask
    if p == 0:
        return np.ones(mask_shape, dtype=bool)
    return np.random.default_rng(rng).random(mask_shape) >= p


def _apply(a, keep, scale):
    """``a[index] * keep[index reduced to the mask's shape] * scale`` element by element."""
    out = np.zeros_like(a)
    for index in np.ndindex(*a.shape):
        mask_index = tuple(k if size > 1 else 0 for k, size in zip(index, keep.shape))
        out[index] = a[index] * (scale if keep[mask_index] else 0.0)
    return out


def _dropout_scale(p):
    return 0.0 if p == 1 else 1.0 / (1.0 - p)


def dropout(x, p=0.5, training=True, rng=None, mask=None):
    """``y = x m / (1 - p)`` per element in training, ``x`` in eval (eq. 55-56)."""
    if not training:
        return x.copy()
    return _apply(x, _keep(x.shape, p, rng, mask), _dropout_scale(p))


def dropout_backward(dout, x, p=0.5, training=True, rng=None, mask=None):
    """``dx = dout m / (1 - p)`` (eq. 56)."""
    if not training:
        return dout.copy(), None
    return _apply(dout, _keep(x.shape, p, rng, mask), _dropout_scale(p)), None


def dropout2d(x, p=0.5, training=True, rng=None, mask=None):
    """Whole channels: the mask has shape ``(N, C, 1, 1)`` (eq. 57)."""
    if not training:
        return x.copy()
    return _apply(x, _keep(x.shape[:2] + (1, 1), p, rng, mask), _dropout_scale(p))


def dropout2d_backward(dout, x, p=0.5, training=True, rng=None, mask=None):
    """``dx = dout m / (1 - p)``, m per channel (eq. 57)."""
    if not training:
        return dout.copy(), None
    return _apply(dout, _keep(x.shape[:2] + (1, 1), p, rng, mask), _dropout_scale(p)), None


def _path_scale(drop_prob, scale_by_keep):
    return 1.0 / (1.0 - drop_prob) if scale_by_keep and drop_prob < 1 else 1.0


def drop_path(x, drop_prob=0.0, training=True, scale_by_keep=True, rng=None, mask=None):
    """Whole samples: the mask has shape ``(N, 1, ..., 1)`` (eq. 58)."""
    if not training:
        return x.copy()
    keep = _keep(x.shape[:1] + (1,) * (x.ndim - 1), drop_prob, rng, mask)
    return _apply(x, keep, _path_scale(drop_prob, scale_by_keep))


def drop_path_backward(dout, x, drop_prob=0.0, training=True, scale_by_keep=True, rng=None, mask=None):
    """``dx = dout m * scale`` per sample (eq. 58)."""
    if not training:
        return dout.copy(), None
    keep = _keep(x.shape[:1] + (1,) * (x.ndim - 1), drop_prob, rng, mask)
    return _apply(dout, keep, _path_scale(drop_prob, scale_by_keep)), None
