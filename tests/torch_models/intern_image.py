"""PyTorch re-creations of InternImage and FlashInternImage, for the cross-checks only.

Written from the official definitions (same module tree, keys, arguments and forward):

* OpenGVLab/InternImage ``classification/models/intern_image.py`` with ``core_op='DCNv3_pytorch'``:
  ``ops_dcnv3/modules/dcnv3.py`` (``DCNv3_pytorch``) on ``ops_dcnv3/functions/dcnv3_func.py``
  (``dcnv3_core_pytorch``, ``F.grid_sample``); the CUDA extension is never imported;
* OpenGVLab/DCNv4 ``classification/models/flash_intern_image.py`` with ``DCNv4_op/DCNv4/modules/
  dcnv4.py`` (``DCNv4``), whose CUDA ``DCNv4Function`` is re-created as the DCNv3 core without
  softmax on the packed ``offset_mask`` split per group into ``[offsets (2P) | mask (P)]``;
* timm's ``DropPath`` from ``torch_models.common``, whose keep masks can be given (``masks``,
  consumed in call order).

``dcnv3_core_pytorch`` builds its reference and dilation grids in float32 (``torch.linspace(...,
dtype=torch.float32)``) whatever the input dtype, and so does this re-creation: numpyconv rounds its
grid the same way (docs/derivations/dcnv3.md, eq. 2a).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from torch_models.common import DropPath


class to_channels_first(nn.Module):  # noqa: N801 (the official names)
    def forward(self, x):
        return x.permute(0, 3, 1, 2)


class to_channels_last(nn.Module):  # noqa: N801
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


def build_norm_layer(dim, norm_layer, in_format='channels_last', out_format='channels_last', eps=1e-6):
    layers = []
    if norm_layer == 'BN':
        if in_format == 'channels_last':
            layers.append(to_channels_first())
        layers.append(nn.BatchNorm2d(dim))
        if out_format == 'channels_last':
            layers.append(to_channels_last())
    else:
        if in_format == 'channels_first':
            layers.append(to_channels_last())
        layers.append(nn.LayerNorm(dim, eps=eps))
        if out_format == 'channels_first':
            layers.append(to_channels_first())
    return nn.Sequential(*layers)


# -- the cores -----------------------------------------------------------------------------------------------
def _get_reference_points(spatial_shapes, kernel_h, kernel_w, dilation_h, dilation_w, stride_h, stride_w,
                          dtype):
    _, H_, W_, _ = spatial_shapes
    H_out = (H_ - (dilation_h * (kernel_h - 1) + 1)) // stride_h + 1
    W_out = (W_ - (dilation_w * (kernel_w - 1) + 1)) // stride_w + 1
    ref_y, ref_x = torch.meshgrid(
        torch.linspace((dilation_h * (kernel_h - 1)) // 2 + 0.5,
                       (dilation_h * (kernel_h - 1)) // 2 + 0.5 + (H_out - 1) * stride_h, H_out, dtype=dtype),
        torch.linspace((dilation_w * (kernel_w - 1)) // 2 + 0.5,
                       (dilation_w * (kernel_w - 1)) // 2 + 0.5 + (W_out - 1) * stride_w, W_out, dtype=dtype),
        indexing='ij')
    ref_y = ref_y.reshape(-1)[None] / H_
    ref_x = ref_x.reshape(-1)[None] / W_
    return torch.stack((ref_x, ref_y), -1).reshape(1, H_out, W_out, 1, 2)


def _generate_dilation_grids(spatial_shapes, kernel_h, kernel_w, dilation_h, dilation_w, group, dtype):
    _, H_, W_, _ = spatial_shapes
    half_w, half_h = (dilation_w * (kernel_w - 1)) // 2, (dilation_h * (kernel_h - 1)) // 2
    x, y = torch.meshgrid(
        torch.linspace(-half_w, -half_w + (kernel_w - 1) * dilation_w, kernel_w, dtype=dtype),
        torch.linspace(-half_h, -half_h + (kernel_h - 1) * dilation_h, kernel_h, dtype=dtype),
        indexing='ij')
    grid = torch.stack([x / W_, y / H_], -1).reshape(-1, 1, 2).repeat(1, group, 1).permute(1, 0, 2)
    return grid.reshape(1, 1, 1, group * kernel_h * kernel_w, 2)


def _remove_center_sampling_locations(sampling_locations, kernel_w, kernel_h):
    """Drop each group's centre point from ``(..., group * kh * kw, 2)`` (square odd kernels)."""
    center = (kernel_w * kernel_h - 1) // 2
    keep = [i for i in range(sampling_locations.shape[-2]) if i != center and (i - center) % (2 * center + 1)]
    return sampling_locations[:, :, :, keep, :]


def dcnv3_core_pytorch(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                       dilation_w, group, group_channels, offset_scale, remove_center=0):
    if remove_center and (kernel_h % 2 == 0 or kernel_w % 2 == 0 or kernel_w != kernel_h):
        raise ValueError('remove_center is only compatible with square odd kernel size.')
    input = F.pad(input, [0, 0, pad_h, pad_h, pad_w, pad_w])
    N_, H_in, W_in, _ = input.shape
    _, H_out, W_out, _ = offset.shape
    dtype, grid_dtype = input.dtype, torch.float32                    # the official grids are float32
    ref = _get_reference_points(input.shape, kernel_h, kernel_w, dilation_h, dilation_w, stride_h, stride_w,
                                grid_dtype)
    grid = _generate_dilation_grids(input.shape, kernel_h, kernel_w, dilation_h, dilation_w, group,
                                    grid_dtype)
    P_ = kernel_h * kernel_w - remove_center
    spatial_norm = torch.tensor([W_in, H_in], dtype=dtype).reshape(1, 1, 1, 2).repeat(1, 1, 1, group * P_)
    sampling_locations = (ref + grid * offset_scale).repeat(N_, 1, 1, 1, 1)
    if remove_center:
        sampling_locations = _remove_center_sampling_locations(sampling_locations, kernel_w, kernel_h)
    sampling_locations = sampling_locations.flatten(3, 4)
    sampling_locations = sampling_locations + offset * offset_scale / spatial_norm
    sampling_grids = 2 * sampling_locations - 1
    input_ = input.view(N_, H_in * W_in, group * group_channels).transpose(1, 2).reshape(
        N_ * group, group_channels, H_in, W_in)
    sampling_grid_ = sampling_grids.view(N_, H_out * W_out, group, P_, 2).transpose(1, 2).flatten(0, 1)
    sampling_input_ = F.grid_sample(input_, sampling_grid_, mode='bilinear', padding_mode='zeros',
                                    align_corners=False)
    mask = mask.view(N_, H_out * W_out, group, P_).transpose(1, 2).reshape(N_ * group, 1, H_out * W_out, P_)
    output = (sampling_input_ * mask).sum(-1).view(N_, group * group_channels, H_out * W_out)
    return output.transpose(1, 2).reshape(N_, H_out, W_out, -1).contiguous()


def dcnv4_core_pytorch(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                       dilation_w, group, group_channels, offset_scale, remove_center=0):
    """``DCNv4Function`` in PyTorch: per group ``[dx_0, dy_0, ... | m_0, ...]``, no softmax."""
    N_, H_out, W_out, _ = offset_mask.shape
    P_ = kernel_h * kernel_w - remove_center
    blocks = offset_mask[..., :group * 3 * P_].reshape(N_, H_out, W_out, group, 3 * P_)
    offset = blocks[..., :2 * P_].reshape(N_, H_out, W_out, group * 2 * P_)
    mask = blocks[..., 2 * P_:].reshape(N_, H_out, W_out, group * P_)
    return dcnv3_core_pytorch(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                              dilation_h, dilation_w, group, group_channels, offset_scale, remove_center)


# -- the DCN modules ---------------------------------------------------------------------------------------
class DCNv3_pytorch(nn.Module):  # noqa: N801
    def __init__(self, channels=64, kernel_size=3, dw_kernel_size=None, stride=1, pad=1, dilation=1, group=4,
                 offset_scale=1.0, act_layer='GELU', norm_layer='LN', center_feature_scale=False,
                 remove_center=False):
        super().__init__()
        dw_kernel_size = dw_kernel_size if dw_kernel_size is not None else kernel_size
        self.offset_scale, self.channels, self.kernel_size = offset_scale, channels, kernel_size
        self.stride, self.dilation, self.pad, self.group = stride, dilation, pad, group
        self.group_channels = channels // group
        self.center_feature_scale, self.remove_center = center_feature_scale, int(remove_center)
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=dw_kernel_size, stride=1,
                      padding=(dw_kernel_size - 1) // 2, groups=channels),
            build_norm_layer(channels, norm_layer, 'channels_first', 'channels_last'), nn.GELU())
        self.offset = nn.Linear(channels, group * (kernel_size * kernel_size - remove_center) * 2)
        self.mask = nn.Linear(channels, group * (kernel_size * kernel_size - remove_center))
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros((group, channels)))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))

    def forward(self, input):
        N, H, W, _ = input.shape
        x = self.input_proj(input)
        x_proj = x
        x1 = self.dw_conv(input.permute(0, 3, 1, 2))
        offset = self.offset(x1)
        mask = F.softmax(self.mask(x1).reshape(N, H, W, self.group, -1), -1).reshape(N, H, W, -1)
        x = dcnv3_core_pytorch(x, offset, mask, self.kernel_size, self.kernel_size, self.stride, self.stride,
                               self.pad, self.pad, self.dilation, self.dilation, self.group,
                               self.group_channels, self.offset_scale, self.remove_center)
        if self.center_feature_scale:
            scale = F.linear(x1, self.center_feature_scale_proj_weight,
                             self.center_feature_scale_proj_bias).sigmoid()
            scale = scale[..., None].repeat(1, 1, 1, 1, self.channels // self.group).flatten(-2)
            x = x * (1 - scale) + x_proj * scale
        return self.output_proj(x)


class DCNv4(nn.Module):
    def __init__(self, channels=64, kernel_size=3, stride=1, pad=1, dilation=1, group=4, offset_scale=1.0,
                 dw_kernel_size=None, center_feature_scale=False, remove_center=False, output_bias=True,
                 without_pointwise=False, **kwargs):
        super().__init__()
        self.offset_scale, self.channels, self.kernel_size = offset_scale, channels, kernel_size
        self.stride, self.dilation, self.pad, self.group = stride, dilation, pad, group
        self.group_channels = channels // group
        self.dw_kernel_size, self.center_feature_scale = dw_kernel_size, center_feature_scale
        self.remove_center, self.without_pointwise = int(remove_center), without_pointwise
        self.K = group * (kernel_size * kernel_size - self.remove_center)
        if dw_kernel_size is not None:
            self.offset_mask_dw = nn.Conv2d(channels, channels, dw_kernel_size, stride=1,
                                            padding=(dw_kernel_size - 1) // 2, groups=channels)
        self.offset_mask = nn.Linear(channels, int(math.ceil((self.K * 3) / 8) * 8))
        if not without_pointwise:
            self.value_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros((group, channels)))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))

    def forward(self, input, shape=None):
        N, L, C = input.shape
        H, W = shape if shape is not None else (int(L ** 0.5), int(L ** 0.5))
        x = input if self.without_pointwise else self.value_proj(input)
        x = x.reshape(N, H, W, -1)
        if self.dw_kernel_size is not None:
            offset_mask_input = self.offset_mask_dw(input.view(N, H, W, C).permute(0, 3, 1, 2))
            offset_mask_input = offset_mask_input.permute(0, 2, 3, 1).reshape(N, L, C)
        else:
            offset_mask_input = input
        offset_mask = self.offset_mask(offset_mask_input).reshape(N, H, W, -1)
        x_proj = x
        x = dcnv4_core_pytorch(x, offset_mask, self.kernel_size, self.kernel_size, self.stride, self.stride,
                               self.pad, self.pad, self.dilation, self.dilation, self.group,
                               self.group_channels, self.offset_scale, self.remove_center)
        if self.center_feature_scale:
            scale = F.linear(x, self.center_feature_scale_proj_weight,
                             self.center_feature_scale_proj_bias).sigmoid()
            scale = scale[..., None].repeat(1, 1, 1, 1, self.channels // self.group).flatten(-2)
            x = x * (1 - scale) + x_proj * scale
        x = x.view(N, L, -1)
        return x if self.without_pointwise else self.output_proj(x)


# -- InternImage (classification/models/intern_image.py) ---------------------------------------------------
class StemLayer(nn.Module):
    def __init__(self, in_chans=3, out_chans=96, act_layer='GELU', norm_layer='BN'):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans // 2, kernel_size=3, stride=2, padding=1)
        self.norm1 = build_norm_layer(out_chans // 2, norm_layer, 'channels_first', 'channels_first')
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chans // 2, out_chans, kernel_size=3, stride=2, padding=1)
        self.norm2 = build_norm_layer(out_chans, norm_layer, 'channels_first', 'channels_last')

    def forward(self, x):
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class DownsampleLayer(nn.Module):
    def __init__(self, channels, norm_layer='LN'):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = build_norm_layer(2 * channels, norm_layer, 'channels_first', 'channels_last')

    def forward(self, x):
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class MLPLayer(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer='GELU', drop=0.):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class InternImageLayer(nn.Module):
    def __init__(self, core_op, channels, groups, mlp_ratio=4., drop=0., drop_path=0., act_layer='GELU',
                 norm_layer='LN', post_norm=False, layer_scale=None, offset_scale=1.0, with_cp=False,
                 dw_kernel_size=None, res_post_norm=False, center_feature_scale=False):
        super().__init__()
        self.norm1 = build_norm_layer(channels, 'LN')
        self.post_norm = post_norm
        self.dcn = core_op(channels=channels, kernel_size=3, stride=1, pad=1, dilation=1, group=groups,
                           offset_scale=offset_scale, act_layer=act_layer, norm_layer=norm_layer,
                           dw_kernel_size=dw_kernel_size, center_feature_scale=center_feature_scale)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = build_norm_layer(channels, 'LN')
        self.mlp = MLPLayer(in_features=channels, hidden_features=int(channels * mlp_ratio),
                            act_layer=act_layer, drop=drop)
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(channels), requires_grad=True)
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(channels), requires_grad=True)

    def forward(self, x):
        if not self.layer_scale:
            if self.post_norm:
                x = x + self.drop_path(self.norm1(self.dcn(x)))
                return x + self.drop_path(self.norm2(self.mlp(x)))
            x = x + self.drop_path(self.dcn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        if self.post_norm:
            x = x + self.drop_path(self.gamma1 * self.norm1(self.dcn(x)))
            return x + self.drop_path(self.gamma2 * self.norm2(self.mlp(x)))
        x = x + self.drop_path(self.gamma1 * self.dcn(self.norm1(x)))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))


class InternImageBlock(nn.Module):
    def __init__(self, core_op, channels, depth, groups, downsample=True, mlp_ratio=4., drop=0.,
                 drop_path=0., act_layer='GELU', norm_layer='LN', post_norm=False, offset_scale=1.0,
                 layer_scale=None, with_cp=False, dw_kernel_size=None, center_feature_scale=False):
        super().__init__()
        self.post_norm, self.center_feature_scale = post_norm, center_feature_scale
        self.blocks = nn.ModuleList([
            InternImageLayer(core_op=core_op, channels=channels, groups=groups, mlp_ratio=mlp_ratio,
                             drop=drop, drop_path=drop_path[i] if isinstance(drop_path, list) else drop_path,
                             act_layer=act_layer, norm_layer=norm_layer, post_norm=post_norm,
                             layer_scale=layer_scale, offset_scale=offset_scale, with_cp=with_cp,
                             dw_kernel_size=dw_kernel_size, center_feature_scale=center_feature_scale)
            for i in range(depth)])
        if not self.post_norm or center_feature_scale:
            self.norm = build_norm_layer(channels, 'LN')
        self.downsample = DownsampleLayer(channels=channels, norm_layer=norm_layer) if downsample else None

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        if not self.post_norm or self.center_feature_scale:
            x = self.norm(x)
        return x if self.downsample is None else self.downsample(x)


class opsm:  # noqa: N801 (ops_dcnv3.modules, the extension-free core only)
    DCNv3_pytorch = DCNv3_pytorch


class InternImage(nn.Module):
    def __init__(self, core_op='DCNv3_pytorch', channels=64, depths=[3, 4, 18, 5], groups=[3, 6, 12, 24],
                 num_classes=1000, mlp_ratio=4., drop_rate=0., drop_path_rate=0.2, drop_path_type='linear',
                 act_layer='GELU', norm_layer='LN', layer_scale=None, offset_scale=1.0, post_norm=False,
                 cls_scale=1.5, with_cp=False, dw_kernel_size=None, center_feature_scale=False, **kwargs):
        super().__init__()
        self.num_levels = len(depths)
        self.num_features = int(channels * 2 ** (self.num_levels - 1))
        self.patch_embed = StemLayer(3, channels, act_layer, norm_layer)
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        if drop_path_type == 'uniform':
            dpr = [drop_path_rate] * len(dpr)
        self.levels = nn.ModuleList()
        for i in range(self.num_levels):
            self.levels.append(InternImageBlock(
                core_op=getattr(opsm, core_op), channels=int(channels * 2 ** i), depth=depths[i],
                groups=groups[i], mlp_ratio=mlp_ratio, drop=drop_rate,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], act_layer=act_layer,
                norm_layer=norm_layer,
                post_norm=post_norm, downsample=(i < self.num_levels - 1), layer_scale=layer_scale,
                offset_scale=offset_scale, with_cp=with_cp, dw_kernel_size=dw_kernel_size,
                center_feature_scale=center_feature_scale))
        self.conv_head = nn.Sequential(
            nn.Conv2d(self.num_features, int(self.num_features * cls_scale), kernel_size=1, bias=False),
            build_norm_layer(int(self.num_features * cls_scale), 'BN', 'channels_first', 'channels_first'),
            nn.GELU())
        self.head = nn.Linear(int(self.num_features * cls_scale), num_classes) if num_classes > 0 \
            else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        x = self.pos_drop(self.patch_embed(x))
        for level in self.levels:
            x = level(x)
        x = self.avgpool(self.conv_head(x.permute(0, 3, 1, 2)))
        return self.head(torch.flatten(x, 1))


# -- FlashInternImage (classification/models/flash_intern_image.py) ---------------------------------------
class FlashDownsampleLayer(nn.Module):
    def __init__(self, channels, norm_layer='LN'):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = build_norm_layer(2 * channels, norm_layer, 'channels_first', 'channels_first')

    def forward(self, x, shape=None):
        H, W = shape
        N, HW, C = x.shape
        x = self.norm(self.conv(x.view(N, H, W, C).permute(0, 3, 1, 2)))
        H, W = x.size(2), x.size(3)
        return x.flatten(2).permute(0, 2, 1), (H, W)


class FlashMLPLayer(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer='GELU',
                 mlp_fc2_bias=False, drop=0.):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=True)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=mlp_fc2_bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x, shape):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class FlashInternImageLayer(nn.Module):
    def __init__(self, core_op, channels, groups, mlp_ratio=4., drop=0., drop_path=0., act_layer='GELU',
                 norm_layer='LN', post_norm=False, layer_scale=None, offset_scale=1.0, with_cp=False,
                 dcn_output_bias=False, mlp_fc2_bias=False, dw_kernel_size=None, center_feature_scale=False):
        super().__init__()
        self.norm1 = build_norm_layer(channels, 'LN')
        self.post_norm = post_norm
        self.dcn = core_op(channels=channels, group=groups, offset_scale=offset_scale,
                           dw_kernel_size=dw_kernel_size, output_bias=dcn_output_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = build_norm_layer(channels, 'LN')
        self.mlp = FlashMLPLayer(in_features=channels, hidden_features=int(channels * mlp_ratio),
                                 act_layer=act_layer, drop=drop, mlp_fc2_bias=mlp_fc2_bias)
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(channels), requires_grad=True)
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(channels), requires_grad=True)

    def forward(self, x, shape):
        if not self.layer_scale:
            if self.post_norm:
                x = x + self.drop_path(self.norm1(self.dcn(x, shape)))
                return x + self.drop_path(self.norm2(self.mlp(x, shape)))
            x = x + self.drop_path(self.dcn(self.norm1(x), shape))
            return x + self.drop_path(self.mlp(self.norm2(x), shape))
        if self.post_norm:
            x = x + self.drop_path(self.gamma1 * self.norm1(self.dcn(x, shape)))
            return x + self.drop_path(self.gamma2 * self.norm2(self.mlp(x, shape)))
        x = x + self.drop_path(self.gamma1 * self.dcn(self.norm1(x), shape))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), shape))


class FlashInternImageBlock(nn.Module):
    def __init__(self, core_op, channels, depth, groups, downsample=True, mlp_ratio=4., drop=0., drop_path=0.,
                 act_layer='GELU', norm_layer='LN', post_norm=False, offset_scale=0.5, layer_scale=None,
                 with_cp=False, dcn_output_bias=False, mlp_fc2_bias=False, dw_kernel_size=None,
                 center_feature_scale=False):
        super().__init__()
        self.post_norm, self.center_feature_scale = post_norm, center_feature_scale
        self.blocks = nn.ModuleList([
            FlashInternImageLayer(core_op=core_op, channels=channels, groups=groups, mlp_ratio=mlp_ratio,
                                  drop=drop,
                                  drop_path=drop_path[i] if isinstance(drop_path, list) else drop_path,
                                  act_layer=act_layer, norm_layer=norm_layer, post_norm=post_norm,
                                  layer_scale=layer_scale, offset_scale=offset_scale, with_cp=with_cp,
                                  dcn_output_bias=dcn_output_bias, mlp_fc2_bias=mlp_fc2_bias,
                                  dw_kernel_size=dw_kernel_size, center_feature_scale=center_feature_scale)
            for i in range(depth)])
        if not self.post_norm or center_feature_scale:
            self.norm = build_norm_layer(channels, 'LN')
        self.downsample = FlashDownsampleLayer(channels, norm_layer) if downsample else None

    def forward(self, x, shape=None):
        for blk in self.blocks:
            x = blk(x, shape=shape)
        if not self.post_norm or self.center_feature_scale:
            x = self.norm(x)
        if self.downsample is not None:
            x, shape = self.downsample(x, shape=shape)
        return x, shape


class FlashInternImage(nn.Module):
    def __init__(self, core_op='DCNv4', channels=64, depths=[3, 4, 18, 5], groups=[3, 6, 12, 24],
                 num_classes=1000, mlp_ratio=4., drop_rate=0., drop_path_rate=0.2, drop_path_type='linear',
                 act_layer='GELU', norm_layer='LN', layer_scale=None, offset_scale=0.5, post_norm=False,
                 cls_scale=1.5, with_cp=False, mlp_fc2_bias=False, dcn_output_bias=False, dw_kernel_size=None,
                 center_feature_scale=False, **kwargs):
        super().__init__()
        self.num_levels = len(depths)
        self.num_features = int(channels * 2 ** (self.num_levels - 1))
        self.patch_embed = StemLayer(3, channels, act_layer, norm_layer)
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        if drop_path_type == 'uniform':
            dpr = [drop_path_rate] * len(dpr)
        self.levels = nn.ModuleList()
        for i in range(self.num_levels):
            self.levels.append(FlashInternImageBlock(
                core_op=DCNv4, channels=int(channels * 2 ** i), depth=depths[i], groups=groups[i],
                mlp_ratio=mlp_ratio, drop=drop_rate, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                act_layer=act_layer, norm_layer=norm_layer, post_norm=post_norm,
                downsample=(i < self.num_levels - 1), layer_scale=layer_scale, offset_scale=offset_scale,
                with_cp=with_cp, mlp_fc2_bias=mlp_fc2_bias, dcn_output_bias=dcn_output_bias,
                dw_kernel_size=dw_kernel_size, center_feature_scale=center_feature_scale))
        self.conv_head = nn.Sequential(
            nn.Conv2d(self.num_features, int(self.num_features * cls_scale), kernel_size=1, bias=False),
            build_norm_layer(int(self.num_features * cls_scale), 'BN', 'channels_first', 'channels_first'),
            nn.GELU())
        self.head = nn.Linear(int(self.num_features * cls_scale), num_classes) if num_classes > 0 \
            else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        x = self.patch_embed(x)
        N, H, W, C = x.shape
        x = x.view(N, H * W, C)
        shape = (H, W)
        for level in self.levels:
            x, shape = level(x, shape=shape)
        h, w = shape
        x = self.conv_head(x.view(N, h, w, -1).permute(0, 3, 1, 2))
        return self.head(torch.flatten(self.avgpool(x), 1))


def drop_path_modules(model):
    """The DropPath modules of ``model`` in block order, None where the block has an Identity."""
    layers = [m for m in model.modules() if isinstance(m, (InternImageLayer, FlashInternImageLayer))]
    return [m.drop_path if isinstance(m.drop_path, DropPath) else None for m in layers]
