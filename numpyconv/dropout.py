r"""Dropout, channel dropout and stochastic depth, each a forward / backward pair taking an explicit
keep mask or drawing one, and their layers (``torch.nn.Dropout``, ``torch.nn.Dropout2d``, timm's
``DropPath``).

Inverted scaling: in training an element is kept with probability ``1 - p`` and scaled by
``1 / (1 - p)``, so the expected output is the input; in eval the op is the identity. Equations:
docs/derivations/blocks.md::

    dropout      m (same shape as x), m = [u >= p] with u ~ U[0, 1) per element       (eq. 55)
                 y = x m / (1 - p)  (y = 0 x when p = 1);   dx = dy m / (1 - p)       (eq. 56)
    dropout2d    m (N, C, 1, 1): whole channels kept or dropped                      (eq. 57)
    drop_path    m (N, 1, ..., 1): whole samples (residual branches, timm's stochastic depth);
                 y = x m / (1 - p) with ``scale_by_keep`` (and p < 1), y = x m without  (eq. 58)

``mask`` (a boolean array of the mask's shape, True = keep) replaces the random draw, so that a run
can be reproduced or compared with another framework's (random generators differ from PyTorch's);
otherwise ``rng`` (a seed or a ``numpy.random.Generator``) draws it. The backward returns
``(dx, None)``: the mask gets no gradient. ``cache['keep']`` is the mask used (None in eval).

Example::

    >>> x = np.ones((2, 3))
    >>> y, cache = dropout_forward(x, 0.5, mask=np.array([[True, False, True], [False, True, True]]))
    >>> y
    array([[2., 0., 2.],
           [0., 2., 2.]])
"""
import numpy as np

from ._checks import Cache, check_cache, float_array, grad_out, real
from ._stateless import Stateless, inplace_flag
from .module import make_rng


def _probability(p, name):
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number in [0, 1], got {p!r}")
    if not 0 <= p <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return real(p, name, 0, 1)


def _training(training):
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be a bool, got {training!r}")
    return bool(training)


def _check_mask(mask, shape):
    """``mask`` checked: a boolean ndarray of ``shape``."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a boolean numpy.ndarray of shape {shape} (True = keep), got "
                        f"{type(mask).__name__}")
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array (True = keep) of shape {shape}, got dtype "
                        f"{mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"mask must have shape {shape}, got {mask.shape}")
    return mask


def _masked(op, x, p, training, rng, mask, mask_shape, scale):
    """Shared forward: ``(y, cache)`` with ``y = x * keep * scale`` in training (eq. 55-58)."""
    training = _training(training)
    if mask is not None:
        _check_mask(mask, mask_shape)
    else:
        rng = make_rng(rng)
    if not training:
        return x.copy(), Cache(op, keep=None, multiplier=None, shape=x.shape, dtype=x.dtype)
    if mask is None:
        mask = np.ones(mask_shape, dtype=bool) if p == 0 else rng.random(mask_shape) >= p
    multiplier = mask * x.dtype.type(scale)                          # (eq. 56)
    return x * multiplier, Cache(op, keep=mask, multiplier=multiplier, shape=x.shape, dtype=x.dtype)


def _masked_backward(dout, cache, op):
    """``(dx, None)``: ``dx = dout * keep * scale`` (the identity in eval); None for the mask."""
    cache = check_cache(cache, op)
    dout = grad_out(dout, cache['shape'], cache['dtype'])
    multiplier = cache['multiplier']
    return (dout.copy() if multiplier is None else dout * multiplier), None


def _inverted_scale(p):
    return 0.0 if p == 1 else 1.0 / (1.0 - p)


def dropout_forward(x, p=0.5, training=True, rng=None, mask=None):
    """Dropout as ``torch.nn.functional.dropout`` (eq. 55-56).

    Parameters
    ----------
    x : ndarray (any shape)
    p : float in [0, 1]
        Probability of dropping an element.
    training : bool
        False: the identity.
    rng : int, numpy.random.Generator or None
        Draws the mask (when ``mask`` is None).
    mask : bool ndarray of x's shape or None
        True keeps the element; replaces the random draw.

    Returns
    -------
    y : ndarray, x's shape and dtype
    cache : Cache
        ``Cache('dropout')`` with ``keep`` (the bool mask, ``x's shape``) and ``multiplier`` (``keep``
        times the scale), both None in eval mode, and ``shape`` and ``dtype``.
    """
    float_array(x, 'x')
    p = _probability(p, 'p')
    return _masked('dropout', x, p, training, rng, mask, x.shape, _inverted_scale(p))


def dropout_backward(dout, cache):
    """``dx = dout m / (1 - p)`` (eq. 56; the identity in eval).

    Parameters
    ----------
    dout : ndarray, shape of ``x``
        Gradient of the loss with respect to the output of :func:`dropout_forward`.
    cache : Cache
        The cache :func:`dropout_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, None)``: ``dx`` of ``x``'s shape and dtype; None for the mask.
    """
    return _masked_backward(dout, cache, 'dropout')


def dropout2d_forward(x, p=0.5, training=True, rng=None, mask=None):
    """Channel dropout as ``torch.nn.functional.dropout2d`` on ``x (N, C, H, W)`` (eq. 57).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    p, training, rng : as :func:`dropout_forward`
    mask : bool ndarray (N, C, 1, 1) or None
        True keeps the channel.

    Returns
    -------
    y : ndarray (N, C, H, W)
    cache : Cache
        ``Cache('dropout2d')`` with ``keep`` (the bool mask, ``(N, C, 1, 1)``) and ``multiplier``
        (``keep`` times the scale), both None in eval mode, and ``shape`` and ``dtype``.
    """
    float_array(x, 'x', 4, "(N, C, H, W)")
    p = _probability(p, 'p')
    return _masked('dropout2d', x, p, training, rng, mask, x.shape[:2] + (1, 1), _inverted_scale(p))


def dropout2d_backward(dout, cache):
    """``dx = dout m / (1 - p)``, m per channel (eq. 57).

    Parameters
    ----------
    dout : ndarray, (N, C, H, W)
        Gradient of the loss with respect to the output of :func:`dropout2d_forward`.
    cache : Cache
        The cache :func:`dropout2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, None)``: ``dx`` of ``x``'s shape and dtype; None for the mask.
    """
    return _masked_backward(dout, cache, 'dropout2d')


def drop_path_forward(x, drop_prob=0.0, training=True, scale_by_keep=True, rng=None, mask=None):
    """Stochastic depth as timm's ``drop_path``: one keep-or-drop per sample (eq. 58).

    Parameters
    ----------
    x : ndarray (N, ...)
        A residual branch's output.
    drop_prob : float in [0, 1]
    training : bool
        False: the identity.
    scale_by_keep : bool
        Divide kept samples by ``1 - drop_prob`` (not when ``drop_prob`` is 1).
    rng : int, numpy.random.Generator or None
    mask : bool ndarray (N, 1, ..., 1) or None
        True keeps the sample.

    Returns
    -------
    y : ndarray, x's shape and dtype
    cache : Cache
        ``Cache('drop_path')`` with ``keep`` (the bool mask, ``(N, 1, ..., 1)``) and ``multiplier``
        (``keep`` times the scale), both None in eval mode, and ``shape`` and ``dtype``.
    """
    float_array(x, 'x')
    if x.ndim == 0:
        raise ValueError("x must have a batch axis (N, ...), got a 0-d array")
    p = _probability(drop_prob, 'drop_prob')
    if not isinstance(scale_by_keep, (bool, np.bool_)):
        raise TypeError(f"scale_by_keep must be a bool, got {scale_by_keep!r}")
    scale = 1.0 / (1.0 - p) if scale_by_keep and p < 1 else 1.0
    return _masked('drop_path', x, p, training, rng, mask, x.shape[:1] + (1,) * (x.ndim - 1), scale)


def drop_path_backward(dout, cache):
    """``dout`` times the sample's multiplier (eq. 58).

    Parameters
    ----------
    dout : ndarray, (N, ...)
        Gradient of the loss with respect to the output of :func:`drop_path_forward`.
    cache : Cache
        The cache :func:`drop_path_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, None)``: ``dx`` of ``x``'s shape and dtype; None for the mask.
    """
    return _masked_backward(dout, cache, 'drop_path')


# -- layers ----------------------------------------------------------------------------------------
class _DropoutNd(Stateless):
    """``torch.nn`` dropout layers: ``(p=0.5, inplace=False)``; the op in training, the identity in
    eval; the masks are drawn from the layer's ``rng``, or ``layer.mask`` (a keep mask of the op's
    mask shape, None by default) replaces the draw in every following forward."""
    _op = None
    mask = None

    def __init__(self, p=0.5, inplace=False, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.p = _probability(p, 'p')
        self.inplace = inplace_flag(inplace)

    def _op_forward(self, x):
        return type(self)._op(x, self.p, self.training, self.rng, self.mask)


class Dropout(_DropoutNd):
    """``torch.nn.Dropout(p=0.5, inplace=False)``: :func:`dropout_forward` in training, the identity in
    eval.

    Input and output: any shape. The masks are drawn from the layer's ``rng``.

    Parameters
    ----------
    p : float in [0, 1]
        Probability of dropping an element.
    inplace : bool
        Accepted for ``torch.nn`` compatibility; the output is always a new array.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Draws the masks.
    """
    _op, _backward_fn = dropout_forward, dropout_backward


class Dropout2d(_DropoutNd):
    """``torch.nn.Dropout2d(p=0.5, inplace=False)`` on ``(N, C, H, W)``: whole channels
    (:func:`dropout2d_forward`).

    The identity in eval. The masks are drawn from the layer's ``rng``.

    Parameters
    ----------
    p : float in [0, 1]
        Probability of dropping a channel.
    inplace : bool
        Accepted for ``torch.nn`` compatibility; the output is always a new array.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Draws the masks.
    """
    _op, _backward_fn = dropout2d_forward, dropout2d_backward


class DropPath(Stateless):
    """timm's ``DropPath(drop_prob=0.0, scale_by_keep=True)``: whole samples of a residual branch.

    Input and output ``(N, ...)``; the identity in eval (:func:`drop_path_forward`); ``layer.mask``
    (``(N, 1, ..., 1)``, None by default) replaces the random draw as in Dropout.

    Parameters
    ----------
    drop_prob : float in [0, 1]
        Probability of dropping a sample.
    scale_by_keep : bool
        Divide kept samples by ``1 - drop_prob``.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Draws the masks.
    """
    _backward_fn = drop_path_backward
    mask = None

    def __init__(self, drop_prob=0.0, scale_by_keep=True, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.drop_prob = _probability(drop_prob, 'drop_prob')
        if not isinstance(scale_by_keep, (bool, np.bool_)):
            raise TypeError(f"scale_by_keep must be a bool, got {scale_by_keep!r}")
        self.scale_by_keep = bool(scale_by_keep)

    def _op_forward(self, x):
        return drop_path_forward(x, self.drop_prob, self.training, self.scale_by_keep, self.rng, self.mask)
