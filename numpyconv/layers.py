"""Layers around the building blocks of :mod:`numpyconv.blocks`, named and keyed as ``torch.nn``.

Each layer calls one functional pair (math and gradients: the blocks module docstring and
docs/derivations/blocks.md). ``backward(dout) -> dx`` accumulates parameter gradients into
``grads``. state_dict keys are PyTorch's:

=================  =============================================================================
layer              keys
=================  =============================================================================
``Linear``         ``weight (out, in)``, ``bias (out,)``
``BatchNorm1d/2d`` ``weight``, ``bias``, ``running_mean``, ``running_var`` ``(C,)``;
                   ``num_batches_tracked`` (int64, shape ``()``)
``LayerNorm``      ``weight (D,)``, ``bias (D,)``
others             none
=================  =============================================================================

Initialisation as PyTorch: Linear ``U(+-1/sqrt(in))`` for weight and bias; norms weight 1, bias 0,
running mean 0, running variance 1.

Cost model (``macs``): Linear counts ``in * out`` multiply-adds per row of the input. Normalisation
and flatten layers count 0 multiply-adds, as the papers do (their element-wise cost is not counted
in the MAC/FLOP tables).

Flatten accepts float32 and float64 input whatever its ``dtype`` (the output keeps the input's
dtype); layers with parameters require input of their own dtype. The activation, pooling,
upsampling and dropout layers live in numpyconv/activations.py, pooling.py, upsample.py and
dropout.py.
"""
import math

import numpy as np

from ._checks import flag, float_array, grad_out, is_int, positive_int, real
from .blocks import (batch_norm_backward, batch_norm_forward, batch_norm_inference, layer_norm_backward,
                     layer_norm_forward, layer_norm_inference, linear_backward_into, linear_forward)
from .module import Module, default_bias, is_grad_enabled, kaiming_uniform


def _check_dtype(layer, x):
    if x.dtype != layer.dtype:
        raise TypeError(f"{type(layer).__name__} holds {layer.dtype} parameters, got x of dtype "
                        f"{x.dtype}; build the layer with dtype={x.dtype} or cast x")


class Linear(Module):
    """``torch.nn.Linear``: ``y = x W^T + b`` over the last axis, ``(..., in_features) -> (...,
    out_features)``.

    Parameters
    ----------
    in_features, out_features : int
        ``F`` and ``O``: keys ``weight (O, F)``, ``bias (O,)``.
    bias : bool
        Learn ``bias``.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.in_features = positive_int(in_features, 'in_features')
        self.out_features = positive_int(out_features, 'out_features')
        shape = (self.out_features, self.in_features)
        self.add_param('weight', kaiming_uniform(self.rng, shape, self.dtype))
        if bias:
            self.add_param('bias', default_bias(self.rng, self.in_features, self.out_features,
                                                self.dtype))

    def forward(self, x):
        float_array(x, 'x')
        _check_dtype(self, x)
        y, self._cache = linear_forward(x, self._params['weight'], self._params.get('bias'))
        return y

    def backward(self, dout):
        into = self._cleared_grad('weight')          # written by the GEMM when zero_grad cleared it
        dx, dweight, dbias = linear_backward_into(dout, self._cache, into)
        self._add_grad('weight', dweight)
        if dbias is not None:
            self._add_grad('bias', dbias)
        return dx

    def macs(self, input_shape):
        input_shape = self._check_input_shape(input_shape, self.in_features, ranks=None, axis=-1,
                                              hint="(..., {c})")
        out_shape = input_shape[:-1] + (self.out_features,)
        return math.prod(input_shape[:-1]) * self.in_features * self.out_features, out_shape


class _BatchNorm(Module):
    """Shared body of BatchNorm1d / BatchNorm2d (``torch.nn.modules.batchnorm._BatchNorm``).

    ``momentum=None`` gives PyTorch's cumulative average (factor ``1 / num_batches_tracked``).
    Without ``track_running_stats`` the batch statistics are used in eval mode too.
    """
    _ranks, _hint = (), ''

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.num_features = positive_int(num_features, 'num_features')
        self.eps = real(eps, 'eps', 0)
        self.momentum = None if momentum is None else real(momentum, 'momentum', 0, 1)
        if affine:
            self.add_param('weight', np.ones(self.num_features))
            self.add_param('bias', np.zeros(self.num_features))
        if track_running_stats:
            self.add_buffer('running_mean', np.zeros(self.num_features))
            self.add_buffer('running_var', np.ones(self.num_features))
            self.add_buffer('num_batches_tracked', np.array(0, dtype=np.int64))

    def _check_x(self, x):
        float_array(x, 'x', self._ranks, self._hint)
        _check_dtype(self, x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"x must have shape {self._hint} with C={self.num_features}, "
                             f"got {x.shape}")

    def forward(self, x):
        self._check_x(x)
        tracking = 'running_mean' in self._buffers
        update = self.training and tracking
        y, self._cache = batch_norm_forward(
            x, self._params.get('weight'), self._params.get('bias'),
            self._buffers.get('running_mean'), self._buffers.get('running_var'),
            training=self.training or not tracking, momentum=self._factor() if update else 0.0,
            eps=self.eps)
        if update:
            self._track_batch_norm(self._cache)                              # (eq. 19)
        return y

    def _infers_clamped(self):
        """Whether :meth:`_inference_clamped` gives this layer's output: eval mode with running
        statistics."""
        return not self.training and 'running_mean' in self._buffers

    def _inference_clamped(self, x, low, high, residual=None):
        """The eval-mode output (plus ``residual``) clamped to ``[low, high]`` in one pass, keeping
        nothing (a BatchNorm and the ReLU after it, or the end of a residual block:
        :func:`numpyconv.blocks.batch_norm_inference`)."""
        self._check_x(x)
        return batch_norm_inference(x, self._params.get('weight'), self._params.get('bias'),
                                    self._buffers['running_mean'], self._buffers['running_var'],
                                    self.eps, low, high, residual)

    def _factor(self):
        """The running-average factor of this training step."""
        if self.momentum is not None:
            return self.momentum
        return 1.0 / (int(self._buffers['num_batches_tracked']) + 1)

    def backward(self, dout):
        dx, dweight, dbias, _, _ = batch_norm_backward(dout, self._cache)   # buffers: no gradient
        if dweight is not None:
            self._add_grad('weight', dweight)
            self._add_grad('bias', dbias)
        return dx

    def macs(self, input_shape):
        hint = self._hint.replace('C', '{c}')
        return 0, self._check_input_shape(input_shape, self.num_features, self._ranks, hint=hint)


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d`` on ``(N, C)`` or ``(N, C, L)`` (:func:`numpyconv.batch_norm_forward`).

    Parameters
    ----------
    num_features : int
        ``C``, the channels.
    eps : float >= 0
        Added to the variance.
    momentum : float in [0, 1] or None
        Weight of each batch in the running statistics; None gives PyTorch's cumulative average
        (factor ``1 / num_batches_tracked``).
    affine : bool
        Learn ``weight`` (ones) and ``bias`` (zeros), each ``(C,)``.
    track_running_stats : bool
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked``; without them the batch
        statistics are used in eval mode too.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """
    _ranks, _hint = (2, 3), "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d`` on ``(N, C, H, W)`` (:func:`numpyconv.batch_norm_forward`).

    Parameters
    ----------
    num_features : int
        ``C``, the channels.
    eps : float >= 0
        Added to the variance.
    momentum : float in [0, 1] or None
        Weight of each batch in the running statistics; None gives PyTorch's cumulative average
        (factor ``1 / num_batches_tracked``).
    affine : bool
        Learn ``weight`` (ones) and ``bias`` (zeros), each ``(C,)``.
    track_running_stats : bool
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked``; without them the batch
        statistics are used in eval mode too.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """
    _ranks, _hint = (4,), "(N, C, H, W)"


class LayerNorm(Module):
    """``torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)`` over the trailing
    axes ``normalized_shape`` of ``x``; keys ``weight``, ``bias`` (those present), shaped
    ``normalized_shape``. Several axes are normalised as one axis of their product size.

    Parameters
    ----------
    normalized_shape : int or tuple of ints
        The trailing axes of the input to normalise over.
    eps : float >= 0
        Added to the variance.
    elementwise_affine : bool
        Learn ``weight`` (ones).
    bias : bool
        With ``elementwise_affine``, learn ``bias`` (zeros).
    channels_first : bool, keyword-only
        With one ``normalized_shape`` axis ``C``: normalise ``(N, C, H, W)`` over ``C`` per pixel
        (the same math on the NHWC view; ConvNeXt's / InternImage's channels-first LayerNorm).
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *,
                 channels_first=False, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        dims = normalized_shape if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,)
        if not dims:
            raise ValueError("normalized_shape must name at least one axis, got ()")
        self.normalized_shape = tuple(positive_int(d, 'normalized_shape') for d in dims)
        self.eps = real(eps, 'eps', 0)
        self.channels_first = flag(channels_first, 'channels_first')
        if self.channels_first and len(self.normalized_shape) != 1:
            raise ValueError(f"channels_first LayerNorm normalises one axis (C), got normalized_shape "
                             f"{normalized_shape!r}")
        if elementwise_affine:
            self.add_param('weight', np.ones(self.normalized_shape))
            if bias:
                self.add_param('bias', np.zeros(self.normalized_shape))

    def _hint(self):
        return f"(..., {', '.join(map(str, self.normalized_shape))})"

    def _ends_normalized(self, shape):
        """Whether ``shape`` ends with ``normalized_shape``."""
        k = len(self.normalized_shape)
        return len(shape) >= k and tuple(shape[len(shape) - k:]) == self.normalized_shape

    def _flat_param(self, name):
        """The parameter as one axis ``(prod(normalized_shape),)`` (a view), or None."""
        p = self._params.get(name)
        return None if p is None else p.reshape(-1)

    def forward(self, x):
        k = len(self.normalized_shape)
        if self.channels_first:
            x = self._check_input(x, channels=self.normalized_shape[0]).transpose(0, 2, 3, 1)  # NHWC
        else:
            float_array(x, 'x')
            _check_dtype(self, x)
            if not self._ends_normalized(x.shape):
                raise ValueError(f"x must have shape {self._hint()}, got {x.shape}")
            x = x.reshape(x.shape[:x.ndim - k] + (math.prod(self.normalized_shape),))
        weight, bias = self._flat_param('weight'), self._flat_param('bias')
        if is_grad_enabled():
            y, self._cache = layer_norm_forward(x, weight, bias, self.eps)
        else:
            y = layer_norm_inference(x, weight, bias, self.eps)                  # no x_hat to keep
        if self.channels_first:
            return np.ascontiguousarray(y.transpose(0, 3, 1, 2))
        return y.reshape(y.shape[:-1] + self.normalized_shape)

    def backward(self, dout):
        x_hat = self._cache['x_hat']
        if self.channels_first:
            n, h, w, c = x_hat.shape
            dout = grad_out(dout, (n, c, h, w), self.dtype).transpose(0, 2, 3, 1)    # (N, H, W, C)
        else:
            dout = grad_out(dout, x_hat.shape[:-1] + self.normalized_shape, self.dtype)
            dout = dout.reshape(x_hat.shape)                               # (..., prod(normalized_shape))
        dx, dweight, dbias = layer_norm_backward(dout, self._cache)
        if dweight is not None:
            self._add_grad('weight', dweight.reshape(self.normalized_shape))
        if dbias is not None:
            self._add_grad('bias', dbias.reshape(self.normalized_shape))
        if self.channels_first:
            return np.ascontiguousarray(dx.transpose(0, 3, 1, 2))
        return dx.reshape(dx.shape[:-1] + self.normalized_shape)

    def macs(self, input_shape):
        if self.channels_first:
            return 0, self._check_input_shape(input_shape, self.normalized_shape[0])
        shape = self._check_input_shape(input_shape, ranks=None, hint=self._hint())
        if not self._ends_normalized(shape):
            raise ValueError(f"input_shape must be {self._hint()}, got {shape}")
        return 0, shape


# -- flatten ------------------------------------------------------------------------------------
class Flatten(Module):
    """``torch.nn.Flatten(start_dim=1, end_dim=-1)``: merge axes ``start_dim..end_dim``.

    Parameters
    ----------
    start_dim, end_dim : int
        The first and last axis merged (negative counts from the end).
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """

    def __init__(self, start_dim=1, end_dim=-1, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        for name, value in (('start_dim', start_dim), ('end_dim', end_dim)):
            if not is_int(value):
                raise TypeError(f"{name} must be an int, got {value!r}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def _out_shape(self, shape):
        ndim = len(shape)
        valid = -ndim <= self.start_dim < ndim and -ndim <= self.end_dim < ndim
        if not valid or self.start_dim % ndim > self.end_dim % ndim:
            raise ValueError(f"cannot flatten axes {self.start_dim}..{self.end_dim} of an input "
                             f"of shape {tuple(shape)}")
        start, end = self.start_dim % ndim, self.end_dim % ndim
        return tuple(shape[:start]) + (math.prod(shape[start:end + 1]),) + tuple(shape[end + 1:])

    def forward(self, x):
        float_array(x, 'x')
        self._cache = (x.shape, self._out_shape(x.shape), x.dtype)         # (input, output) shapes
        return x.reshape(self._cache[1])

    def backward(self, dout):
        x_shape, y_shape, dtype = self._cache
        return grad_out(dout, y_shape, dtype).reshape(x_shape)

    def macs(self, input_shape):
        return 0, self._out_shape(input_shape)
