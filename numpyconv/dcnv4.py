r"""DCNv4 (FlashInternImage): the core op on a packed ``offset_mask`` and the ``DCNv4`` layer.

Core op shapes (OpenGVLab/DCNv4 ``DCNv4Function``)::

    x           (N, H, W, G*D)          channels last, channel g*D + c
    offset_mask (N, Ho, Wo, L)          L a multiple of 8 with L >= 3*G*P (the module uses
                                        L = ceil(3*G*P / 8) * 8); per group g, from channel g*3P:
                                        [dx_0, dy_0, ..., dx_{P-1}, dy_{P-1} | m_0, ..., m_{P-1}]
    y           (N, Ho, Wo, G*D)

with ``P = kh*kw - remove_center`` column-major points, exactly DCNv3's geometry
(docs/derivations/dcnv4.md eq. 1). Channels ``[3*G*P, L)`` are ignored. The forward is DCNv3's
(eq. 2, dcnv3.md eq. 4) on the unpacked tensors **without softmax** (the mask is used as given)::

    offset[n, r, s, (g*P + p)*2 + t] = offset_mask[n, r, s, g*3P + 2p + t]     t = 0 (dx), 1 (dy)
    mask  [n, r, s,  g*P + p]        = offset_mask[n, r, s, g*3P + 2P + p]

The backward (eq. 3) is DCNv3's (dcnv3.md eq. 5-7) packed back into the same layout; the padding
channels get zero gradient. Any kernel size works (the official CUDA op only takes 3x3).
The sampling loops are :mod:`numpyconv.dcnv3`'s Numba loops: this file only (un)packs.

Layer ``DCNv4`` (OpenGVLab/DCNv4 ``DCNv4``), NCHW in and out (eq. 4)::

    v  = value_proj(x)               (x itself when without_pointwise)
    om = offset_mask(dwconv(x))      (dwconv: plain depthwise conv with bias, only if dw_kernel_size)
    o  = core(v, om)
    z  = o*(1 - s) + v*s,  s = sigmoid(o W_cfs^T + b_cfs)   (only with center_feature_scale;
                                                              the query is the core output o)
    y  = output_proj(z)              (z itself when without_pointwise)

Backward (eq. 5-6): the centre feature scale sends two paths into ``o`` (``dz*(1-s)`` and the
sigmoid branch ``da W_cfs``); ``d om`` goes straight into the ``offset_mask`` linear.
MACs (eq. 7): linears and depthwise conv as usual plus ``5 * Ho*Wo * P * C`` for the core.
"""
import math

import numpy as np

from ._checks import Cache, check_cache, expect_shape, flag, float_array, positive_int, same_dtype
from .conv import DepthwiseConv2d
from .dcnv3 import (center_feature_scale_backward, center_feature_scale_forward,
                    check_layer_geometry, check_offset_scale, core_backward, core_forward,
                    core_macs, core_setup, layer_dout, layer_input, layer_macs_shape, nchw_to_nhwc,
                    nhwc_to_nchw, odd_kernel)
from .layers import Linear
from .module import Module, xavier_uniform


def packed_channels(group, points):
    """The module's ``offset_mask`` width: ``ceil(3*group*points / 8) * 8``."""
    return int(math.ceil(3 * group * points / 8) * 8)


def unpack_offset_mask(offset_mask, group, points):
    """``(offset (N, Ho, Wo, G*P*2), mask (N, Ho, Wo, G*P))``, contiguous copies (eq. 1).

    ``offset_mask (N, Ho, Wo, L)`` with ``L >= 3 * group * points``; channels from ``3*G*P`` on
    are ignored.
    """
    group, points = positive_int(group, 'group'), positive_int(points, 'points')
    float_array(offset_mask, 'offset_mask', 4, f"(N, Ho, Wo, L) with L >= 3 * group * points = "
                f"{3 * group * points}")
    if offset_mask.shape[3] < 3 * group * points:
        raise ValueError(f"offset_mask must have shape (N, Ho, Wo, L) with L >= 3 * group * points = "
                         f"{3 * group * points}, got {offset_mask.shape}")
    n, ho, wo, _ = offset_mask.shape
    blocks = offset_mask[..., :3 * group * points].reshape(n, ho, wo, group, 3 * points)
    offset = np.ascontiguousarray(blocks[..., :2 * points]).reshape(n, ho, wo, 2 * group * points)
    mask = np.ascontiguousarray(blocks[..., 2 * points:]).reshape(n, ho, wo, group * points)
    return offset, mask


def pack_offset_mask(offset, mask, group, channels=None):
    """Inverse of :func:`unpack_offset_mask`: ``(N, Ho, Wo, channels)``, zeros in the padding.

    ``channels`` defaults to :func:`packed_channels`. This is also InternImage's DCNv3 -> DCNv4
    bridge (feed it the softmaxed DCNv3 mask).
    """
    float_array(mask, 'mask', 4, "(N, Ho, Wo, group * P)")
    float_array(offset, 'offset', 4, "(N, Ho, Wo, group * P * 2)")
    same_dtype(('offset', offset), ('mask', mask))
    group = positive_int(group, 'group')
    n, ho, wo, width = mask.shape
    if width % group or width == 0:
        raise ValueError(f"mask must have shape (N, Ho, Wo, group * P) with group={group}, got "
                         f"{mask.shape}")
    expect_shape(offset, (n, ho, wo, 2 * width), 'offset')
    points = width // group
    channels = packed_channels(group, points) if channels is None else positive_int(channels, 'channels')
    if channels < 3 * width:
        raise ValueError(f"channels must be >= 3 * group * P = {3 * width}, got {channels}")
    packed = np.zeros((n, ho, wo, channels), dtype=offset.dtype)
    packed[..., :3 * group * points] = np.concatenate(
        [offset.reshape(n, ho, wo, group, 2 * points), mask.reshape(n, ho, wo, group, points)],
        axis=-1).reshape(n, ho, wo, 3 * group * points)        # (N, Ho, Wo, G, 3P) -> (..., 3GP)
    return packed


def _check_offset_mask(offset_mask, setup):
    n, ho, wo, _ = setup['out_shape']
    used = 3 * setup['group'] * setup['points']
    expected = (n, ho, wo, packed_channels(setup['group'], setup['points']))
    float_array(offset_mask, 'offset_mask', 4, f"{expected}")
    width = offset_mask.shape[3]
    if offset_mask.shape[:3] != (n, ho, wo) or width < used or width % 8:
        raise ValueError(f"offset_mask must have shape {expected} (N, Ho, Wo, ceil(3*group*P/8)*8) "
                         f"with group={setup['group']}, P={setup['points']} points (any multiple "
                         f"of 8 >= {used} channels is accepted), got {offset_mask.shape}")


def dcnv4_forward(x, offset_mask, kernel_size, stride, padding, dilation, group, group_channels,
                  offset_scale=1.0, remove_center=False):
    """DCNv4 core op (``DCNv4Function``, no softmax), channels last (eq. 2).

    Parameters
    ----------
    x : ndarray (N, H, W, G*D)
    offset_mask : ndarray (N, Ho, Wo, L)
        Packed per group: ``2P`` offsets ``(dx, dy)`` then ``P`` mask values, from channel ``g*3P``;
        ``L >= 3GP`` a multiple of 8, channels ``[3GP, L)`` ignored.
    kernel_size, stride, dilation : int or pair
    padding : int, pair, 'same' or 'valid'
        Only the top/left pads move the sampling grid (eq. 2); the bottom/right pads set ``Ho``, ``Wo``.
    group, group_channels : int
        ``G`` and ``D``; ``C = G*D``.
    offset_scale : float
        Scales the offsets and the base grid (eq. 2).
    remove_center : bool
        Drop the kernel's centre point (odd kernels only): ``P = kh*kw - 1``.

    Returns
    -------
    y : ndarray (N, Ho, Wo, G*D)
    cache : Cache
        ``Cache('dcnv4')`` with ``x``, the unpacked ``offset`` and ``mask``, ``setup`` and ``channels``
        (``L``); none of them None.
    """
    setup = core_setup(x, kernel_size, stride, padding, dilation, group, group_channels,
                       offset_scale, remove_center)
    _check_offset_mask(offset_mask, setup)
    same_dtype(('x', x), ('offset_mask', offset_mask))
    x = np.ascontiguousarray(x)
    offset, mask = unpack_offset_mask(offset_mask, setup['group'], setup['points'])
    y = core_forward(x, offset, mask, setup)
    return y, Cache('dcnv4', x=x, offset=offset, mask=mask, setup=setup, channels=offset_mask.shape[3])


def dcnv4_backward(dout, cache):
    """Gradients of :func:`dcnv4_forward` (eq. 3), packed as ``offset_mask``.

    Parameters
    ----------
    dout : ndarray, (N, Ho, Wo, G*D)
        Gradient of the loss with respect to the output of :func:`dcnv4_forward`.
    cache : Cache
        The cache :func:`dcnv4_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx (N, H, W, G*D), doffset_mask (N, Ho, Wo, L))``; the padding channels get 0.
    """
    cache = check_cache(cache, 'dcnv4')
    dx, doffset, dmask = core_backward(dout, cache['x'], cache['offset'], cache['mask'],
                                       cache['setup'])
    return dx, pack_offset_mask(doffset, dmask, cache['setup']['group'], cache['channels'])


# -- the layer ----------------------------------------------------------------------------------
class DCNv4(Module):
    """OpenGVLab/DCNv4 ``DCNv4``, NCHW in and out by default (the official module takes ``(N, H*W, C)``).

    ``(N, C, H, W) -> (N, C, Ho, Wo)``. Keys: ``offset_mask_dw.weight/bias`` (if ``dw_kernel_size``),
    ``offset_mask.weight/bias`` (``ceil(3*G*P/8)*8`` outputs), ``value_proj.*`` and
    ``output_proj.weight`` (``.bias`` if ``output_bias``) unless ``without_pointwise``,
    ``center_feature_scale_proj_weight/_bias``. Any kernel size and any ``channels // group`` work
    (the official CUDA op needs 3x3 and a multiple of 16). ``channels_last=True`` takes and returns
    ``(N, H, W, C)`` (the official module's ``(N, H*W, C)`` with the spatial axes unflattened).

    Parameters
    ----------
    channels : int
        ``C``, input and output channels; a multiple of ``group``.
    kernel_size : int
        The sampling grid's size (odd).
    stride, pad, dilation : int
        Of the sampling grid (as :func:`dcnv3_forward`'s stride, padding, dilation).
    group : int
        ``G``; ``D = channels // group`` channels per group.
    offset_scale : float
        Scales offsets and base grid.
    dw_kernel_size : int or None
        A depthwise convolution before ``offset_mask`` (None: none).
    center_feature_scale : bool
        Blend the core's output with the value (eq. 4).
    remove_center : bool
        Drop the kernel's centre point.
    output_bias : bool
        ``output_proj`` has a bias.
    without_pointwise : bool
        No ``value_proj`` / ``output_proj``.
    channels_last : bool
        True: ``x`` and the output are ``(N, H, W, C)``, as the official module's.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, channels=64, kernel_size=3, stride=1, pad=1, dilation=1, group=4,
                 offset_scale=1.0, dw_kernel_size=None, center_feature_scale=False,
                 remove_center=False, output_bias=True, without_pointwise=False, channels_last=False, *,
                 dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.channels_last = flag(channels_last, 'channels_last')
        channels, group, points = check_layer_geometry(channels, kernel_size, stride, pad,
                                                       dilation, group, remove_center)
        self.channels, self.group, self.group_channels = channels, group, channels // group
        self.kernel_size, self.stride, self.pad, self.dilation = kernel_size, stride, pad, dilation
        self.points, self.offset_scale = points, check_offset_scale(offset_scale)
        self.center_feature_scale, self.remove_center = bool(center_feature_scale), bool(remove_center)
        self.dw_kernel_size, self.pointwise = dw_kernel_size, not without_pointwise
        kw = dict(dtype=self.dtype, rng=self.rng)
        if dw_kernel_size is not None:
            dwk = odd_kernel(dw_kernel_size, 'dw_kernel_size')
            self.offset_mask_dw = self.add_module('offset_mask_dw', DepthwiseConv2d(
                channels, dwk, padding=(dwk - 1) // 2, **kw))
        self.offset_mask = self.add_module('offset_mask', Linear(
            channels, packed_channels(group, points), **kw))
        self.offset_mask.params['weight'][...] = 0
        self.offset_mask.params['bias'][...] = 0
        if self.pointwise:
            self.value_proj = self.add_module('value_proj', Linear(channels, channels, **kw))
            self.output_proj = self.add_module('output_proj', Linear(channels, channels,
                                                                     bias=output_bias, **kw))
            for linear in (self.value_proj, self.output_proj):
                weight = linear.params['weight']
                weight[...] = xavier_uniform(self.rng, weight.shape, self.dtype)
                if 'bias' in linear.params:
                    linear.params['bias'][...] = 0
        if self.center_feature_scale:
            self.add_param('center_feature_scale_proj_weight', np.zeros((group, channels)))
            self.add_param('center_feature_scale_proj_bias', np.zeros(group))

    def _core_args(self):
        return (self.kernel_size, self.stride, self.pad, self.dilation, self.group,
                self.group_channels, self.offset_scale, self.remove_center)

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, H, W)``, NHWC with ``channels_last`` (eq. 4)."""
        nchw = bool(self.dw_kernel_size) and not self.channels_last
        inp, x_first = layer_input(self, x, nchw=nchw)                    # (N, H, W, C), NCHW
        value = self.value_proj(inp) if self.pointwise else inp
        om_in, dw_cache = inp, None
        if nchw:
            om_in = nchw_to_nhwc(self.offset_mask_dw(x_first))
        elif self.dw_kernel_size:                    # channels last: convolved as it is, no copies
            om_in, dw_cache = self.offset_mask_dw.forward_channels_last(inp)
        core, core_cache = dcnv4_forward(value, self.offset_mask(om_in), *self._core_args())
        z, blend_cache = core, None
        if self.center_feature_scale:                     # the query is the core output itself
            z, blend_cache = center_feature_scale_forward(
                core, self._params['center_feature_scale_proj_weight'],
                self._params['center_feature_scale_proj_bias'], core, value, self.group)
        self._cache = dict(core=core_cache, blend=blend_cache, dw=dw_cache, shape=x.shape)
        y = self.output_proj(z) if self.pointwise else z
        return y if self.channels_last else nhwc_to_nchw(y)

    def backward(self, dout):
        """``dx``; parameter gradients accumulate into ``grads`` (eq. 5-6)."""
        dz = layer_dout(self, dout)
        if self.pointwise:
            dz = self.output_proj.backward(dz)
        dcore, dvalue = dz, 0.0
        if self.center_feature_scale:
            dquery, dweight, dbias, dcore, dvalue = center_feature_scale_backward(
                dz, self._cache['blend'])
            self._add_grad('center_feature_scale_proj_weight', dweight)
            self._add_grad('center_feature_scale_proj_bias', dbias)
            dcore = dcore + dquery                                        # (eq. 6)
        dvalue_core, doffset_mask = dcnv4_backward(dcore, self._cache['core'])
        dvalue = dvalue_core + dvalue
        dx = self.offset_mask.backward(doffset_mask)                      # (N, H, W, C)
        if self._cache['dw'] is not None:
            dx = self.offset_mask_dw.backward_channels_last(dx, self._cache['dw'])
        elif self.dw_kernel_size:
            dx = nchw_to_nhwc(self.offset_mask_dw.backward(nhwc_to_nchw(dx)))
        dx = dx + (self.value_proj.backward(dvalue) if self.pointwise else dvalue)
        return dx if self.channels_last else nhwc_to_nchw(dx)

    def macs(self, input_shape):
        """Linears, depthwise conv, the core (``5*H*W*P*C``) and the centre-scale linear."""
        n, c, h, w = layer_macs_shape(self, input_shape)
        rows = (n, h, w, c)
        total = self.offset_mask.macs(rows)[0] + core_macs((n, c, h, w), self.points)
        if self.pointwise:
            total += self.value_proj.macs(rows)[0] + self.output_proj.macs(rows)[0]
        if self.dw_kernel_size:
            total += self.offset_mask_dw.macs((n, c, h, w))[0]
        if self.center_feature_scale:
            total += n * h * w * c * self.group
        return total, tuple(input_shape)

    def sampling_locations(self, x):
        """Pixel ``(x, y)`` ``(N, H, W, group, P, 2)`` (points row-major) where this layer samples its
        projected input, and the unnormalised mask ``(N, H, W, group, P)`` as weights
        (:func:`numpyconv.sampling_locations`); keeps nothing for a backward pass."""
        from . import sampling
        self._check_input(x, channels=self.channels)
        inp = nchw_to_nhwc(x)
        with sampling.without_caching(self):
            offset_mask = self.offset_mask(nchw_to_nhwc(self.offset_mask_dw(x)) if self.dw_kernel_size
                                           else inp)
        return sampling.sampling_locations('dcnv4', inp, offset_mask, *self._core_args())
