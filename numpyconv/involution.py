r"""Involution (RedNet, Li et al. CVPR 2021): the op and the d-li14/involution module.

Shapes (``K = kh*kw`` kernel points, ``G`` groups inferred from the kernel, ``C_g = C / G``)::

    x       (N, C, H, W)
    kernel  (N, G*kh*kw, Ho, Wo)   channel g*kh*kw + u*kw + v  (row-major points, as nn.Unfold)
    y       (N, C, Ho, Wo)

Geometry: the official ``nn.Unfold(K, d, d*(K-1)//2, s)``, i.e. zero padding
``p = floor(d (k - 1) / 2)`` per axis and ``Ho = floor((H + 2p - d(k-1) - 1) / s) + 1`` (eq. 1),
which is ``ceil(H / s)`` when ``d (k - 1)`` is even (odd ``k`` or even dilation).

Forward (docs/derivations/involution.md), with ``g(c) = c // C_g`` (eq. 2)::

    y[n,c,i,j] = sum_{u<kh, v<kw} kernel[n, g(c)K + u kw + v, i, j] * xp[n, c, i sh + u dh, j sw + v dw]

Backward, given ``dy`` (``xp`` is the zero-padded input, so padded taps contribute nothing):

* ``dkernel[n, gK + u kw + v, i, j] = sum_{c in group g} dy[n,c,i,j] xp[n, c, i sh + u dh, j sw + v dw]``
  (eq. 3)
* ``dx[n,c,h,w] = sum kernel[n, g(c)K + u kw + v, i, j] dy[n,c,i,j]`` over the ``(u, v, i, j)`` with
  ``i sh + u dh - p_h = h`` and ``j sw + v dw - p_w = w``: the transposed gather, a scatter of
  ``kernel * dy`` back to the sampled positions (eq. 4)

In this file "kernel" is the generated per-position weight tensor ``kernel`` above and nothing
else; the compiled Numba functions are *loops*, one per equation: ``_forward_loop`` (eq. 2, a
gather), ``_input_grad_loop`` (eq. 4, its transpose, a scatter) and ``_kernel_grad_loop`` (eq. 3).
They take the geometry as the int tuple of :func:`numpyconv.im2col.loop_geo` and never build the
unfolded ``(N, C, K, Ho, Wo)`` tensor: they loop over the kernel points and, for each, over the
output rows/columns whose tap lands inside the input (eq. 5; the helpers of
``numpyconv/taps.py``), so there is no padded copy and no branch in the inner loop. Each runs in
parallel (each iteration owns what it writes, fixed summation order, bitwise reproducible):
forward and ``dx`` over ``(n, c)`` (one output / input-gradient plane each), ``dkernel`` over
``(n, g, point)`` (one kernel plane each).

Layer :class:`Involution2d` = d-li14/involution ``involution`` (eq. 6-8)::

    z      = x                       (stride 1)  or AvgPool2d(s, s)(x)     (stride s > 1)
    kernel = conv2(relu(bn(conv1(z))))          conv1: 1x1 C -> C//r, no bias; conv2: 1x1 C//r -> K*G
    y      = involution(x, kernel, K, s, d)

Its input gradient is the sum of the unfold path (eq. 4) and the kernel-generation path (the
children's backward in reverse order; in train mode BatchNorm couples every sample and position,
eq. 9). Keys as mmcv's ``ConvModule``: ``conv1.conv.weight``, ``conv1.bn.{weight, bias,
running_mean, running_var, num_batches_tracked}``, ``conv2.conv.weight``, ``conv2.conv.bias``.

Cost (``macs``, as the RedNet paper counts, eq. 10): the two 1x1 convolutions of the kernel
generation plus ``Ho*Wo*C*K`` multiply-adds of the involution itself; pooling, BatchNorm, ReLU and
biases count 0.

Example::

    >>> x = np.arange(16.0).reshape(1, 1, 4, 4); k = np.zeros((1, 9, 4, 4)); k[:, 4] = 1
    >>> y, cache = involution_forward(x, k, 3)          # one-hot centre point: identity
    >>> bool(np.array_equal(y, x))
    True
"""
import numpy as np
from numba import njit, prange

from ._checks import Cache, check_cache, expect_shape, float_array, grad_out, pair, positive_int, same_dtype
from .conv import PointwiseConv2d, conv_geometry
from .im2col import loop_geo
from ._parallel import launch, loop_operand
from .taps import gather_row, point_taps, scatter_row
from .activations import ReLU
from .layers import BatchNorm2d
from .memory import require_memory
from .pooling import AvgPool2d
from .module import Module, Sequential, kaiming_normal_fan_out


# -- Numba loops ------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _forward_loop(x, kernel, geo, y):
    """``y (N, C, Ho, Wo)`` (zero on entry) from ``x`` and ``kernel`` (eq. 2). Parallel over
    ``(n, c)``: each iteration owns the output plane ``y[n, c]``."""
    points, sh, sw = geo[0] * geo[1], geo[2], geo[3]
    n, channels, height, width = x.shape
    per_group = channels // (kernel.shape[1] // points)
    for t in prange(n * channels):
        b, c = t // channels, t % channels
        for p in range(points):
            i0, i1, j0, j1, row0, col0 = point_taps(p, geo, height, width)
            k = kernel[b, (c // per_group) * points + p]
            for i in range(i0, i1):
                gather_row(y[b, c, i, j0:j1], k[i, j0:j1], x[b, c, i * sh + row0], col0, sw)


@njit(cache=True, parallel=True)
def _input_grad_loop(dy, kernel, geo, dx):
    """``dx (N, C, H, W)`` (zero on entry) from ``dy`` and ``kernel``: the scatter of (eq. 4).
    Parallel over ``(n, c)``: each iteration owns the input-gradient plane ``dx[n, c]``, so the
    scatter never races."""
    points, sh, sw = geo[0] * geo[1], geo[2], geo[3]
    n, channels, height, width = dx.shape
    per_group = channels // (kernel.shape[1] // points)
    for t in prange(n * channels):
        b, c = t // channels, t % channels
        for p in range(points):
            i0, i1, j0, j1, row0, col0 = point_taps(p, geo, height, width)
            k = kernel[b, (c // per_group) * points + p]
            for i in range(i0, i1):
                scatter_row(dx[b, c, i * sh + row0], col0, sw, k[i, j0:j1], dy[b, c, i, j0:j1])


@njit(cache=True, parallel=True)
def _kernel_grad_loop(x, dy, geo, dkernel):
    """``dkernel (N, G*K, Ho, Wo)`` (zero on entry) (eq. 3); parallel over (n, g, point): each
    iteration owns one plane of ``dkernel``."""
    points, sh, sw = geo[0] * geo[1], geo[2], geo[3]
    n, channels, height, width = x.shape
    planes = dkernel.shape[1]
    per_group = channels // (planes // points)
    for t in prange(n * planes):
        b, r = t // planes, t % planes
        g, p = r // points, r % points
        i0, i1, j0, j1, row0, col0 = point_taps(p, geo, height, width)
        for c in range(g * per_group, (g + 1) * per_group):
            for i in range(i0, i1):
                gather_row(dkernel[b, r, i, j0:j1], dy[b, c, i, j0:j1], x[b, c, i * sh + row0], col0, sw)


# -- the op ---------------------------------------------------------------------------------------
def involution_padding(kernel_size, dilation):
    """The official unfold padding ``floor(d (k - 1) / 2)`` per axis (eq. 1)."""
    (kh, kw), (dh, dw) = pair(kernel_size, 'kernel_size', minimum=1), pair(dilation, 'dilation', minimum=1)
    return dh * (kh - 1) // 2, dw * (kw - 1) // 2


def _check_involution(x, kernel, kernel_size, stride, dilation):
    """Validate the operands; return ``(geo, groups)``."""
    float_array(x, 'x', 4, "(N, C, H, W)")
    float_array(kernel, 'kernel', 4, "(N, G*K*K, Ho, Wo)")
    same_dtype(('x', x), ('kernel', kernel))
    geo = conv_geometry(x.shape[2:], kernel_size, stride, involution_padding(kernel_size, dilation),
                        dilation)
    n, channels = x.shape[:2]
    points = geo.kernel[0] * geo.kernel[1]
    groups = kernel.shape[1] // points
    if kernel.shape[1] % points or groups == 0 or channels % groups:
        raise ValueError(f"kernel must have shape (N, G*K*K, Ho, Wo) = ({n}, G*{points}, "
                         f"{geo.out_hw[0]}, {geo.out_hw[1]}) with G dividing the {channels} channels "
                         f"of x (shape {x.shape}) and K*K = {points} for kernel_size {geo.kernel}, "
                         f"got {kernel.shape}")
    expect_shape(kernel, (n, groups * points) + geo.out_hw, 'kernel')
    return geo, groups


def involution_forward(x, kernel, kernel_size, stride=1, dilation=1):
    """Involution as the official unfold formula (eq. 2).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
        Input, float32 or float64.
    kernel : ndarray (N, G*kh*kw, Ho, Wo)
        The per-position weights, channel ``g*kh*kw + u*kw + v``; ``G`` is inferred and must divide
        ``C``; ``x``'s dtype.
    kernel_size : int or pair
        ``(kh, kw)``; the zero padding is ``d*(k-1)//2`` per axis (eq. 1).
    stride, dilation : int or pair

    Returns
    -------
    y : ndarray (N, C, Ho, Wo)
    cache : Cache
        ``Cache('involution')`` with ``x`` and ``kernel`` (C-contiguous), ``geo`` (the
        :class:`~numpyconv.im2col.Geometry`), ``groups`` (``G``) and ``work`` (multiply-adds); none of
        them None.
    """
    geo, groups = _check_involution(x, kernel, kernel_size, stride, dilation)
    require_memory(x.shape[:2] + geo.out_hw, x.dtype, f"x of shape {x.shape} with kernel_size="
                   f"{kernel_size!r}, stride={stride!r}, dilation={dilation!r}")
    x, kernel = loop_operand(x), loop_operand(kernel)
    y = np.zeros(x.shape[:2] + geo.out_hw, dtype=x.dtype)                 # (N, C, Ho, Wo)
    work = y.size * geo.kernel[0] * geo.kernel[1]
    launch(_forward_loop, work, x, kernel, loop_geo(geo), y)                 # (eq. 2)
    return y, Cache('involution', x=x, kernel=kernel, geo=geo, groups=groups, work=work)


def involution_backward(dout, cache):
    """Gradients of :func:`involution_forward` (eq. 3, 4).

    Parameters
    ----------
    dout : ndarray, (N, C, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`involution_forward`.
    cache : Cache
        The cache :func:`involution_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx (N, C, H, W), dkernel (N, G*kh*kw, Ho, Wo))``.
    """
    cache = check_cache(cache, 'involution')
    x, kernel, geo, work = cache['x'], cache['kernel'], cache['geo'], cache['work']
    dout = loop_operand(grad_out(dout, x.shape[:2] + geo.out_hw, x.dtype))
    dx, dkernel = np.zeros_like(x), np.zeros_like(kernel)
    launch(_input_grad_loop, work, dout, kernel, loop_geo(geo), dx)          # (eq. 4)
    launch(_kernel_grad_loop, work, x, dout, loop_geo(geo), dkernel)         # (eq. 3)
    return dx, dkernel


# -- layers ---------------------------------------------------------------------------------------
class _ConvModule(Sequential):
    """mmcv ``ConvModule``: ``conv -> bn -> activate`` applied in order (Sequential's forward,
    backward and macs) under mmcv's child names (keys ``conv.*``, ``bn.*``) instead of ``0``, ``1``;
    ``bn`` and ``activate`` may be absent. Weights as its ``init_weights``:
    ``kaiming_normal_(fan_out, relu)``, bias 0 (the BatchNorm starts at weight 1, bias 0)."""

    def __init__(self, conv, bn=None, activate=None):
        Module.__init__(self, dtype=conv.dtype, rng=conv.rng)
        self.add_module('conv', conv)
        conv.params['weight'][...] = kaiming_normal_fan_out(self.rng, conv.params['weight'].shape,
                                                            self.dtype)
        if 'bias' in conv.params:
            conv.params['bias'][...] = 0
        for name, child in (('bn', bn), ('activate', activate)):
            if child is not None:
                self.add_module(name, child)


class Involution2d(Module):
    """d-li14/involution ``involution(channels, kernel_size, stride)`` (keys: module docstring).

    ``(N, C, H, W) -> (N, C, Ho, Wo)``. At stride ``s > 1`` the kernel comes from
    ``AvgPool2d(s, s)(x)``, so H and W must be divisible by ``s`` (forward raises otherwise, where
    the official view fails); ``d (k - 1)`` must be even for the same reason (eq. 1).

    Parameters
    ----------
    channels : int
        ``C``, input and output channels; a multiple of ``group_channels``.
    kernel_size : int or pair
    stride : int or pair
    reduction_ratio : int
        The kernel generation's bottleneck ``C -> C // reduction_ratio`` (the official module's 4).
    group_channels : int
        Channels per kernel group (the official 16): ``G = channels // group_channels``.
    dilation : int or pair
        The dilated variant's extra argument (its fourth there, after the API's arguments here).
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, channels, kernel_size, stride=1, reduction_ratio=4, group_channels=16,
                 dilation=1, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.channels = positive_int(channels, 'channels')
        reduction_ratio = positive_int(reduction_ratio, 'reduction_ratio')
        self.group_channels = positive_int(group_channels, 'group_channels')
        self.kernel_size = pair(kernel_size, 'kernel_size', minimum=1)
        self.stride = pair(stride, 'stride', minimum=1)
        self.dilation = pair(dilation, 'dilation', minimum=1)
        self._check_construction(reduction_ratio)
        self.groups = self.channels // self.group_channels
        reduced = self.channels // reduction_ratio
        points = self.kernel_size[0] * self.kernel_size[1]
        self.avgpool = None
        if self.stride != (1, 1):
            self.avgpool = self.add_module('avgpool', AvgPool2d(self.stride, self.stride, dtype=dtype))
        self.add_module('conv1', _ConvModule(
            PointwiseConv2d(self.channels, reduced, bias=False, dtype=dtype, rng=self.rng),
            BatchNorm2d(reduced, dtype=dtype), ReLU(dtype=dtype)))
        self.add_module('conv2', _ConvModule(
            PointwiseConv2d(reduced, points * self.groups, dtype=dtype, rng=self.rng)))

    def _check_construction(self, reduction_ratio):
        if self.channels % self.group_channels:
            raise ValueError(f"channels={self.channels} must be a multiple of group_channels="
                             f"{self.group_channels} (the official module views the unfolded input "
                             f"as (N, channels // {self.group_channels}, {self.group_channels}, ...))")
        if self.channels < reduction_ratio:
            raise ValueError(f"channels={self.channels} // reduction_ratio={reduction_ratio} leaves "
                             f"no channel for the kernel generation; need channels >= reduction_ratio")
        if any(d * (k - 1) % 2 for k, d in zip(self.kernel_size, self.dilation)):
            raise ValueError(f"kernel_size {self.kernel_size} with dilation {self.dilation}: "
                             f"dilation*(kernel_size-1) must be even (odd kernel_size or even "
                             f"dilation); otherwise the unfold output is one row/column smaller than "
                             f"the generated kernel and the official module cannot reshape it")

    def _kernel_hw(self, input_shape):
        """Size of the generated kernel; raise where it differs from the unfold output (eq. 1)."""
        geo = conv_geometry(input_shape[2:], self.kernel_size, self.stride,
                            involution_padding(self.kernel_size, self.dilation), self.dilation)
        branch = tuple(h // s for h, s in zip(input_shape[2:], self.stride))
        if branch != geo.out_hw:
            raise ValueError(f"Involution2d with stride {self.stride} needs H and W divisible by the "
                             f"stride: the kernel branch (AvgPool2d) gives {branch} but the unfold "
                             f"gives {geo.out_hw}, got x of shape {tuple(input_shape)}")
        return geo.out_hw

    def forward(self, x):
        self._check_input(x, channels=self.channels)
        self._kernel_hw(x.shape)
        z = x if self.avgpool is None else self.avgpool(x)                  # (N, C, Ho, Wo)
        kernel = self._modules['conv2'](self._modules['conv1'](z))          # (N, G*K*K, Ho, Wo) (eq. 7)
        y, self._cache = involution_forward(x, kernel, self.kernel_size, self.stride, self.dilation)
        return y

    def backward(self, dout):
        dx, dkernel = involution_backward(dout, self._cache)
        dz = self._modules['conv1'].backward(self._modules['conv2'].backward(dkernel))   # (eq. 9)
        return dx + (dz if self.avgpool is None else self.avgpool.backward(dz))

    def macs(self, input_shape):
        input_shape = self._check_input_shape(input_shape, self.channels)
        branch_shape = tuple(input_shape[:2]) + self._kernel_hw(input_shape)   # (N, C, Ho, Wo)
        reduce_macs, reduced_shape = self._modules['conv1'].macs(branch_shape)
        span_macs, _ = self._modules['conv2'].macs(reduced_shape)
        points = self.kernel_size[0] * self.kernel_size[1]
        return reduce_macs + span_macs + int(np.prod(branch_shape)) * points, branch_shape  # (eq. 10)
