"""InternImage (DCNv3) and FlashInternImage (DCNv4), channels-last throughout.

Two builders, each the official module tree as the official ``build.py`` builds it from the T
config (``configs/internimage_t_1k_224.yaml`` / ``configs/flash_intern_image_t_1k_224.yaml`` over
the defaults of ``config.py``):

* :func:`internimage_t`: OpenGVLab/InternImage ``classification/models/intern_image.py``
  (``InternImage``, ``core_op='DCNv3'``, whose parameters are those of ``DCNv3_pytorch``);
* :func:`flash_internimage_t`: OpenGVLab/DCNv4 ``classification/models/flash_intern_image.py``
  (``FlashInternImage``, ``core_op='DCNv4'``, no bias in the MLP's ``fc2`` nor in DCNv4's
  ``output_proj``).

T config: ``channels=64, depths=(4, 4, 18, 4), groups=(4, 8, 16, 32), mlp_ratio=4,
offset_scale=1.0, drop_path_rate=0.1`` (linear over the 30 blocks), ``layer_scale=None``,
``post_norm=False``, ``cls_scale=1.5``, LayerNorm (eps 1e-6) and GELU; the constructors' own
defaults differ (depths (3, 4, 18, 5), groups (3, 6, 12, 24), drop path 0.2, and FlashInternImage's
offset_scale 0.5): the config wins.

The module tree (keys)::

    patch_embed   conv1 (3x3/2, C/2), norm1 = (to_channels_last, LayerNorm, to_channels_first),
                  act GELU, conv2 (3x3/2, C), norm2 = (to_channels_last, LayerNorm): NHWC out
    levels.i      blocks.j: [gamma1, gamma2 with layer_scale], norm1.0 (LayerNorm), dcn (DCNv3 /
                  DCNv4 on NHWC), norm2.0, mlp.fc1, mlp.fc2; then norm.0 (LayerNorm) and, but for
                  the last level, downsample.conv (3x3/2, 2C, no bias), downsample.norm.1
    conv_head     0: 1x1 conv to int(8C * cls_scale), 1.0: BatchNorm2d, 2: GELU
    head          Linear (Identity when num_classes == 0), after the average pooling

A block computes ``x + DropPath(dcn(norm1(x)))`` then ``x + DropPath(mlp(norm2(x)))`` (post_norm:
``x + DropPath(norm1(dcn(x)))``; layer_scale multiplies each branch by ``gamma1`` / ``gamma2``).
The stochastic depth draws one keep mask per sample and branch from the model's ``rng``;
``drop_path_masks`` on a block (a pair of boolean arrays ``(N, 1, 1, 1)``, True = keep) replaces the
two draws, to reproduce a run of another framework.
"""
import numpy as np

from .._checks import count_int, positive_int
from ..activations import GELU, Identity
from ..conv import Conv2d
from ..dcnv3 import DCNv3, ToChannelsLast, nchw_to_nhwc, nhwc_to_nchw
from ..dcnv4 import DCNv4
from ..dropout import (Dropout, DropPath, drop_path_backward, drop_path_forward, dropout_backward,
                       dropout_forward)
from ..layers import BatchNorm2d, LayerNorm, Linear
from ..module import Module, Sequential, xavier_uniform
from ..pooling import AdaptiveAvgPool2d
from ._common import Chain

T_CONFIG = dict(channels=64, depths=(4, 4, 18, 4), groups=(4, 8, 16, 32), mlp_ratio=4.0, offset_scale=1.0,
                drop_path_rate=0.1, layer_scale=None, post_norm=False, cls_scale=1.5)


class ToChannelsFirst(Module):
    """InternImage's ``to_channels_first``: ``(N, H, W, C) -> (N, C, H, W)``; no parameters."""

    def forward(self, x):
        return x.transpose(0, 3, 1, 2)

    def backward(self, dout):
        return np.ascontiguousarray(dout.transpose(0, 2, 3, 1))

    def macs(self, input_shape):
        n, h, w, c = input_shape
        return 0, (n, c, h, w)


def _layer_norm(channels, in_first, out_first, *, dtype):
    """The official ``build_norm_layer(dim, 'LN', in_format, out_format)`` (eps 1e-6): a Sequential
    whose LayerNorm sits after a ``to_channels_last`` when the input is channels-first."""
    layers = [ToChannelsLast(dtype=dtype)] if in_first else []
    layers.append(LayerNorm(channels, eps=1e-6, dtype=dtype))
    if out_first:
        layers.append(ToChannelsFirst(dtype=dtype))
    return Sequential(*layers)


def linear_drop_path_rates(drop_path_rate, total):
    """``[x.item() for x in torch.linspace(0, drop_path_rate, total)]`` (float32 values): PyTorch's
    rule ``start + i*step`` for the first half, ``end - (total-1-i)*step`` for the second, in float32
    (PyTorch's vectorised CPU kernel may round a value the other way: one float32 ulp at most)."""
    end, f32 = np.float32(drop_path_rate), np.float32
    if total == 1:
        return [0.0]
    step = end / f32(total - 1)
    return [float(step * f32(i)) if i < total // 2 else float(end - step * f32(total - 1 - i))
            for i in range(total)]


def _masking(forward, x, p, training, *args, mask=None):
    """``forward(x, p, training, *args, mask)`` (dropout or drop path), or ``(x, None)`` with no copy
    when it is the identity: eval mode or ``p = 0``, no mask given."""
    if mask is None and (not training or p == 0):
        return x, None
    return forward(x, p, training, *args, mask)


def _masking_backward(backward, dout, cache):
    """The input gradient of :func:`_masking`: ``dout`` itself after an identity."""
    return dout if cache is None else backward(dout, cache)[0]


# -- pieces ---------------------------------------------------------------------------------------------
class StemLayer(Chain):
    """``StemLayer``: two 3x3 stride-2 convolutions with LayerNorm (and GELU between them);
    ``(N, 3, H, W) -> (N, H/4, W/4, C)``."""

    def __init__(self, in_chans=3, out_chans=96, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        kw = dict(dtype=self.dtype, rng=self.rng)
        self.conv1 = self.add_module('conv1', Conv2d(in_chans, out_chans // 2, 3, 2, 1, **kw))
        self.norm1 = self.add_module('norm1', _layer_norm(out_chans // 2, True, True, dtype=self.dtype))
        self.act = self.add_module('act', GELU(dtype=self.dtype))
        self.conv2 = self.add_module('conv2', Conv2d(out_chans // 2, out_chans, 3, 2, 1, **kw))
        self.norm2 = self.add_module('norm2', _layer_norm(out_chans, True, False, dtype=self.dtype))


class DownsampleLayer(Module):
    """``DownsampleLayer``: NHWC -> 3x3 stride-2 convolution to ``2C`` (no bias) -> LayerNorm, NHWC
    out. FlashInternImage's norm is (to_channels_last, LayerNorm, to_channels_first) followed by a
    flattening back to tokens: the same values, key ``norm.1`` in both."""

    def __init__(self, channels, flash=False, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.flash = flash
        self.conv = self.add_module('conv', Conv2d(channels, 2 * channels, 3, 2, 1, bias=False,
                                                   dtype=self.dtype, rng=self.rng))
        self.norm = self.add_module('norm', _layer_norm(2 * channels, True, flash, dtype=self.dtype))

    def forward(self, x):
        y = self.norm(self.conv(nhwc_to_nchw(x)))
        return nchw_to_nhwc(y) if self.flash else y

    def backward(self, dout):
        if self.flash:
            dout = nhwc_to_nchw(dout)
        return nchw_to_nhwc(self.conv.backward(self.norm.backward(dout)))

    def macs(self, input_shape):
        n, h, w, c = input_shape
        m, (n, c2, ho, wo) = self.conv.macs((n, c, h, w))
        return m, (n, ho, wo, c2)


class MLPLayer(Module):
    """``MLPLayer``: ``fc1 -> GELU -> dropout -> fc2 -> dropout`` on the last axis (the same dropout
    module twice, two masks)."""

    def __init__(self, in_features, hidden_features, drop=0.0, fc2_bias=True, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        kw = dict(dtype=self.dtype, rng=self.rng)
        self.fc1 = self.add_module('fc1', Linear(in_features, hidden_features, **kw))
        self.act = self.add_module('act', GELU(dtype=self.dtype))
        self.fc2 = self.add_module('fc2', Linear(hidden_features, in_features, bias=fc2_bias, **kw))
        self.drop = self.add_module('drop', Dropout(drop, dtype=self.dtype, rng=self.rng))

    def _dropout(self, x):
        y, cache = _masking(dropout_forward, x, self.drop.p, self.training, self.drop.rng)
        self._drop_cache.append(cache)
        return y

    def forward(self, x):
        self._drop_cache = []
        return self._dropout(self.fc2(self._dropout(self.act(self.fc1(x)))))

    def backward(self, dout):
        first, second = self._drop_cache
        dh = self.fc2.backward(_masking_backward(dropout_backward, dout, second))
        return self.fc1.backward(self.act.backward(_masking_backward(dropout_backward, dh, first)))

    def macs(self, input_shape):
        m1, shape = self.fc1.macs(input_shape)
        m2, shape = self.fc2.macs(shape)
        return m1 + m2, shape


class InternImageLayer(Module):
    """``InternImageLayer``: the DCN branch and the MLP branch, each residual (module docstring)."""

    def __init__(self, channels, groups, mlp_ratio=4.0, drop=0.0, drop_path=0.0, post_norm=False,
                 layer_scale=None, offset_scale=1.0, dw_kernel_size=None, center_feature_scale=False,
                 flash=False, mlp_fc2_bias=True, dcn_output_bias=True, remove_center=False, *,
                 dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        kw = dict(dtype=self.dtype, rng=self.rng)
        self.post_norm, self.layer_scale = bool(post_norm), layer_scale is not None
        if self.layer_scale:
            self.add_param('gamma1', np.full(channels, layer_scale))
            self.add_param('gamma2', np.full(channels, layer_scale))
        self.norm1 = self.add_module('norm1', _layer_norm(channels, False, False, dtype=self.dtype))
        if flash:
            dcn = DCNv4(channels=channels, group=groups, offset_scale=offset_scale,
                        dw_kernel_size=dw_kernel_size, output_bias=dcn_output_bias, channels_last=True, **kw)
        else:
            dcn = DCNv3(channels=channels, kernel_size=3, stride=1, pad=1, dilation=1, group=groups,
                        offset_scale=offset_scale, dw_kernel_size=dw_kernel_size,
                        center_feature_scale=center_feature_scale, remove_center=remove_center,
                        channels_last=True, **kw)
        self.dcn = self.add_module('dcn', dcn)
        self.drop_path = self.add_module('drop_path', DropPath(drop_path, **kw) if drop_path > 0 else
                                         Identity(dtype=self.dtype))
        self.norm2 = self.add_module('norm2', _layer_norm(channels, False, False, dtype=self.dtype))
        self.mlp = self.add_module('mlp', MLPLayer(channels, int(channels * mlp_ratio), drop, mlp_fc2_bias,
                                                   **kw))
        self.drop_path_masks = None

    def _branch(self, k):
        """``(first, second, gamma key)`` of branch ``k`` (0: DCN, 1: MLP)."""
        norm, core = (self.norm1, self.dcn) if k == 0 else (self.norm2, self.mlp)
        return ((core, norm) if self.post_norm else (norm, core)) + (f'gamma{k + 1}',)

    def _drop_path(self, y, k):
        p = getattr(self.drop_path, 'drop_prob', 0.0)                     # Identity when 0
        mask = None if self.drop_path_masks is None or p == 0 else self.drop_path_masks[k]
        y, cache = _masking(drop_path_forward, y, p, self.training, True, self.drop_path.rng, mask=mask)
        self._branch_cache[f'drop{k}'] = cache
        return y

    def forward(self, x):
        """``(N, H, W, C) -> (N, H, W, C)``."""
        self._branch_cache = {}
        for k in (0, 1):
            first, second, gamma = self._branch(k)
            y = second(first(x))
            if self.layer_scale:
                self._branch_cache[gamma] = y
                y = y * self._params[gamma]
            x = x + self._drop_path(y, k)
        return x

    def backward(self, dout):
        for k in (1, 0):
            first, second, gamma = self._branch(k)
            dy = _masking_backward(drop_path_backward, dout, self._branch_cache[f'drop{k}'])
            if self.layer_scale:
                scaled = dy * self._branch_cache[gamma]
                self._add_grad(gamma, scaled.reshape(-1, dy.shape[-1]).sum(axis=0))
                dy = dy * self._params[gamma]
            dout = dout + first.backward(second.backward(dy))
        return dout

    def macs(self, input_shape):
        total = 0
        for k in (0, 1):
            first, second, _ = self._branch(k)
            m1, shape = first.macs(input_shape)
            m2, _ = second.macs(shape)
            total += m1 + m2
        return total, tuple(input_shape)


class InternImageBlock(Chain):
    """``InternImageBlock`` (a level): ``blocks``, ``norm`` (unless post_norm without
    center_feature_scale), ``downsample`` (all levels but the last); NHWC in and out."""

    def __init__(self, channels, depth, groups, downsample=True, drop_path=(), norm=True, flash=False,
                 *, dtype=np.float32, rng=None, **layer_args):
        super().__init__(dtype=dtype, rng=rng)
        kw = dict(dtype=self.dtype, rng=self.rng)
        self.blocks = self.add_module('blocks', Sequential(*[
            InternImageLayer(channels, groups, drop_path=drop_path[i], flash=flash, **layer_args, **kw)
            for i in range(depth)]))
        if norm:
            self.add_module('norm', _layer_norm(channels, False, False, dtype=self.dtype))
        if downsample:
            self.add_module('downsample', DownsampleLayer(channels, flash, **kw))


# -- the networks ------------------------------------------------------------------------------------------
class InternImage(Module):
    """InternImage / FlashInternImage for classification (``flash`` selects DCNv4 and the
    FlashInternImage details); see :func:`internimage_t` / :func:`flash_internimage_t`."""

    def __init__(self, *, flash, channels, depths, groups, num_classes, mlp_ratio, drop_rate, drop_path_rate,
                 drop_path_type, layer_scale, offset_scale, post_norm, cls_scale, dw_kernel_size,
                 center_feature_scale, mlp_fc2_bias, dcn_output_bias, remove_center, dtype, rng):
        super().__init__(dtype=dtype, rng=rng)
        depths, groups = tuple(depths), tuple(groups)
        _check_config(channels, depths, groups, num_classes, drop_path_type)
        kw = dict(dtype=self.dtype, rng=self.rng)
        self.num_levels, self.flash = len(depths), flash
        self.num_features = int(channels * 2 ** (self.num_levels - 1))
        self.patch_embed = self.add_module('patch_embed', StemLayer(3, channels, **kw))
        self.pos_drop = self.add_module('pos_drop', Dropout(drop_rate, **kw))
        dpr = linear_drop_path_rates(drop_path_rate, sum(depths))
        if drop_path_type == 'uniform':
            dpr = [drop_path_rate] * len(dpr)
        layer_args = dict(mlp_ratio=mlp_ratio, drop=drop_rate, post_norm=post_norm, layer_scale=layer_scale,
                          offset_scale=offset_scale, dw_kernel_size=dw_kernel_size,
                          center_feature_scale=center_feature_scale)
        if flash:
            layer_args.update(mlp_fc2_bias=mlp_fc2_bias, dcn_output_bias=dcn_output_bias)
        else:
            layer_args.update(remove_center=remove_center)
        levels = [InternImageBlock(int(channels * 2 ** i), depths[i], groups[i], i < self.num_levels - 1,
                                   dpr[sum(depths[:i]):sum(depths[:i + 1])],
                                   not post_norm or center_feature_scale, flash, **layer_args, **kw)
                  for i in range(self.num_levels)]
        self.levels = self.add_module('levels', Sequential(*levels))
        head_channels = int(self.num_features * cls_scale)
        self.conv_head = self.add_module('conv_head', Sequential(
            Conv2d(self.num_features, head_channels, 1, bias=False, **kw),
            Sequential(BatchNorm2d(head_channels, dtype=self.dtype)), GELU(dtype=self.dtype)))
        self.head = self.add_module('head', Linear(head_channels, num_classes, **kw) if num_classes > 0 else
                                    Identity(dtype=self.dtype))
        self.avgpool = self.add_module('avgpool', AdaptiveAvgPool2d((1, 1), dtype=self.dtype))
        self._init_weights()

    def _init_weights(self):
        """The official ``_init_weights`` (Linear: truncated N(0, 0.02^2) within +-2, zero bias;
        LayerNorm 1/0) then each DCN's own ``_reset_parameters`` (offset/mask zero, projections
        Xavier-uniform, zero biases)."""
        for _, module in self.named_modules():
            if isinstance(module, Linear):
                weight = module.params['weight']
                weight[...] = _trunc_normal(self.rng, weight.shape, 0.02)
                if 'bias' in module.params:
                    module.params['bias'][...] = 0
        for _, module in self.named_modules():
            if isinstance(module, DCNv3):
                module._reset_parameters()
            elif isinstance(module, DCNv4):
                _reset_dcnv4(module)

    def set_drop_path_masks(self, masks):
        """Keep masks for the stochastic depth of the next forward passes: one pair ``(N, 1, 1, 1)``
        booleans per block in order (``levels.0.blocks.0`` first), or None to draw them again."""
        layers = [m for _, m in self.named_modules() if isinstance(m, InternImageLayer)]
        if masks is not None and len(masks) != len(layers):
            raise ValueError(f"masks must hold one pair per block ({len(layers)}), got {len(masks)}")
        for k, layer in enumerate(layers):
            layer.drop_path_masks = None if masks is None else tuple(masks[k])

    def forward(self, x):
        """``(N, 3, H, W) -> (N, num_classes)`` logits."""
        self.patch_embed.conv1._check_input(x, channels=3)
        x = self.levels(self.pos_drop(self.patch_embed(x)))                # (N, H/32, W/32, 8C)
        x = self.avgpool(self.conv_head(nhwc_to_nchw(x)))                  # (N, 1.5 * 8C, 1, 1)
        return self.head(x.reshape(x.shape[:2]))

    def backward(self, dout):
        """``dlogits (N, num_classes) -> dx (N, 3, H, W)``."""
        d = self.head.backward(dout)
        d = self.conv_head.backward(self.avgpool.backward(d.reshape(d.shape + (1, 1))))
        return self.patch_embed.backward(self.pos_drop.backward(self.levels.backward(nchw_to_nhwc(d))))

    def macs(self, input_shape):
        total, shape = self.patch_embed.macs(input_shape)
        m, (n, h, w, c) = self.levels.macs(shape)
        total += m
        m, (n, c, _, _) = self.conv_head.macs((n, c, h, w))
        m_head, out_shape = self.head.macs((n, c))
        return total + m + m_head, out_shape


def _trunc_normal(rng, shape, std):
    """timm's ``trunc_normal_(w, std)``: N(0, std^2) truncated to [-2, 2] (absolute bounds)."""
    out = rng.normal(0.0, std, size=shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
        bad = np.abs(out) > 2
    return out


def _reset_dcnv4(module):
    """DCNv4's ``_reset_parameters``: offset_mask zero, value/output projections Xavier-uniform."""
    module.offset_mask.params['weight'][...] = 0
    module.offset_mask.params['bias'][...] = 0
    if module.pointwise:
        for linear in (module.value_proj, module.output_proj):
            weight = linear.params['weight']
            weight[...] = xavier_uniform(module.rng, weight.shape, module.dtype)
            if 'bias' in linear.params:
                linear.params['bias'][...] = 0


def _check_config(channels, depths, groups, num_classes, drop_path_type):
    positive_int(channels, 'channels')
    if len(depths) != len(groups) or not depths:
        raise ValueError(f"depths and groups must have one entry per level, got depths {depths} and "
                         f"groups {groups}")
    for i, g in enumerate(groups):
        if int(channels * 2 ** i) % g:
            raise ValueError(f"groups[{i}] = {g} must divide the channels of level {i}, "
                             f"{int(channels * 2 ** i)} (channels * 2**{i})")
    count_int(num_classes, 'num_classes')
    if drop_path_type not in ('linear', 'uniform'):
        raise ValueError(f"drop_path_type must be 'linear' or 'uniform', got {drop_path_type!r}")


def _only_defaults(act_layer, norm_layer, use_clip_projector, level2_post_norm, res_post_norm):
    """Options of the official constructors numpyconv does not build (H/G models, other layers)."""
    if act_layer != 'GELU' or norm_layer != 'LN':
        raise ValueError(f"act_layer='GELU' and norm_layer='LN' are supported (the DCN layers use LayerNorm "
                         f"and GELU), got act_layer={act_layer!r}, norm_layer={norm_layer!r}")
    if use_clip_projector or level2_post_norm or res_post_norm:
        raise ValueError("use_clip_projector, level2_post_norm and res_post_norm (InternImage-H/G) are not "
                         "supported")


def _build(flash, args):
    """An :class:`InternImage` from a builder's arguments (``locals()``)."""
    unsupported = ('act_layer', 'norm_layer', 'use_clip_projector', 'level2_post_norm', 'res_post_norm')
    _only_defaults(*(args[k] for k in unsupported))
    names = ('channels', 'depths', 'groups', 'num_classes', 'mlp_ratio', 'drop_rate', 'drop_path_rate',
             'drop_path_type', 'layer_scale', 'offset_scale', 'post_norm', 'cls_scale', 'dw_kernel_size',
             'center_feature_scale', 'mlp_fc2_bias', 'dcn_output_bias', 'remove_center', 'dtype', 'rng')
    return InternImage(flash=flash, **{name: args[name] for name in names})


def internimage_t(num_classes=1000, core_op='DCNv3', channels=64, depths=(4, 4, 18, 4), groups=(4, 8, 16, 32),
                  mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.1, drop_path_type='linear', act_layer='GELU',
                  norm_layer='LN', layer_scale=None, offset_scale=1.0, post_norm=False, cls_scale=1.5,
                  with_cp=False, dw_kernel_size=None, use_clip_projector=False, level2_post_norm=False,
                  level2_post_norm_block_ids=None, res_post_norm=False, center_feature_scale=False,
                  remove_center=False, *, dtype=np.float32, rng=None):
    """InternImage-T: ``InternImage`` as ``build.py`` builds it from ``internimage_t_1k_224.yaml``.

    Parameters
    ----------
    num_classes : int
        0 replaces the head by an identity (features ``(N, 768)`` out).
    core_op : {'DCNv3', 'DCNv3_pytorch'}
        Same parameters and math (the CUDA op or the pure-PyTorch core).
    channels, depths, groups, mlp_ratio, offset_scale, layer_scale, post_norm, cls_scale : as the
        official constructor (defaults: the T config).
    drop_rate, drop_path_rate, drop_path_type : float, float, {'linear', 'uniform'}
        Dropout in the MLPs and after the stem; stochastic depth, linear in the block index.
    dw_kernel_size, center_feature_scale, remove_center : passed to every DCNv3.
    with_cp : bool
        Accepted and ignored (PyTorch's activation checkpointing only trades memory).
    act_layer, norm_layer, use_clip_projector, level2_post_norm, res_post_norm
        Only the T values ('GELU', 'LN', off) are supported (ValueError otherwise).
    level2_post_norm_block_ids : accepted (``build.py`` passes it); read only with
        ``level2_post_norm``.
    dtype, rng : keyword-only
        Parameter dtype; seed or Generator (initialisation, dropout and drop-path draws).

    Returns
    -------
    InternImage
        ``forward(x (N, 3, H, W)) -> logits (N, num_classes)``, H and W multiples of 32.
    """
    if core_op not in ('DCNv3', 'DCNv3_pytorch'):
        raise ValueError(f"core_op must be 'DCNv3' or 'DCNv3_pytorch', got {core_op!r}")
    args = dict(locals())
    return _build(False, dict(args, mlp_fc2_bias=True, dcn_output_bias=True))


def flash_internimage_t(num_classes=1000, core_op='DCNv4', channels=64, depths=(4, 4, 18, 4),
                        groups=(4, 8, 16, 32), mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.1,
                        drop_path_type='linear', act_layer='GELU', norm_layer='LN', layer_scale=None,
                        offset_scale=1.0, post_norm=False, cls_scale=1.5, with_cp=False, mlp_fc2_bias=False,
                        dcn_output_bias=False, dw_kernel_size=None, use_clip_projector=False,
                        level2_post_norm=False, level2_post_norm_block_ids=None, res_post_norm=False,
                        center_feature_scale=False, *, dtype=np.float32, rng=None):
    """FlashInternImage-T: ``FlashInternImage`` as ``build.py`` builds it from
    ``flash_intern_image_t_1k_224.yaml`` (``mlp_fc2_bias=False``, ``dcn_output_bias=False``,
    ``dw_kernel_size=None``, offset_scale 1.0 from the config).

    Parameters as :func:`internimage_t`, plus ``mlp_fc2_bias`` and ``dcn_output_bias`` (the biases of
    the MLP's ``fc2`` and of DCNv4's ``output_proj``); ``core_op`` must be ``'DCNv4'``. As in the
    official model, ``center_feature_scale`` only keeps each level's ``norm`` under ``post_norm``
    (it is not passed to DCNv4).

    Returns
    -------
    InternImage
        ``forward(x (N, 3, H, W)) -> logits (N, num_classes)``.
    """
    if core_op != 'DCNv4':
        raise ValueError(f"core_op must be 'DCNv4', got {core_op!r}")
    return _build(True, dict(locals(), remove_center=False))
