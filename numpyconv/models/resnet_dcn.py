"""ResNet-50 with modulated deformable convolutions (DCNv2, Zhu et al., CVPR 2019), as mmdet builds it.

mmdet's ``ResNet(depth=50, dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
stage_with_dcn=(False, True, True, True))`` (``style='pytorch'``: the 3x3 convolution strides): the
torchvision ResNet-50 tree (mmdet names its norms ``bn1..bn3`` and its stem ``conv1``/``bn1``, so the
keys are torchvision's) whose ``conv2`` in stages 2-4 is mmcv's ``ModulatedDeformConv2dPack(planes,
planes, 3, stride, padding=1, deform_groups=1, bias=False)`` = :class:`~numpyconv.ModulatedDeformConv2d`
without bias: keys ``layerN.M.conv2.weight``, ``layerN.M.conv2.conv_offset.weight``,
``layerN.M.conv2.conv_offset.bias``. A classification head is added as torchvision's (``avgpool``,
``fc``), so ImageNet checkpoints of this network load with ``fc.*`` keys.

``include_top=False`` builds the backbone alone (no ``fc``): ``forward`` returns the last stage's
features ``(N, 2048, H/32, W/32)`` (mmdet's ``out_indices=(3,)``), ``backward`` takes their gradient;
load a detector's backbone with ``numpyconv.state_dict_of(checkpoint, prefix='backbone.')``.
``norm_eval=True`` keeps every BatchNorm in eval mode inside ``train()`` (running statistics frozen and
used, as mmdet's detection configs set it).

Initialisation as mmdet's ``init_weights()``: convolutions ``kaiming_normal_(fan_out)``, the offset
convolutions 0 (the layer starts as half a plain convolution: mask 0.5), BatchNorm 1 and 0, and
``zero_init_residual=True``: each block's ``bn3`` weight 0; ``fc`` as torchvision's ``Linear``.
"""
import numpy as np

from ..deformable import ModulatedDeformConv2d
from ._common import Chain, init_convs_fan_out
from .resnet import Bottleneck, Convs, ResNet, zero_init_last_norms

STAGE_WITH_DCN = (False, True, True, True)


class DCNConvs(Convs):
    """Plain convolutions, and ``ModulatedDeformConv2d(bias=False)`` for ``conv2`` of the stages with DCN."""

    def __init__(self, stage_with_dcn, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.stage_with_dcn = stage_with_dcn

    def __call__(self, place, position, in_planes, out_planes, kernel_size, stride=1, dilation=1, groups=1):
        if position == 'conv2' and self.stage_with_dcn[place.stage]:
            return ModulatedDeformConv2d(in_planes, out_planes, kernel_size, stride, dilation, dilation,
                                         groups, deform_groups=1, bias=False, dtype=self.dtype, rng=self.rng)
        return self.conv2d(in_planes, out_planes, kernel_size, stride, dilation, groups)


class ResNetDCN(ResNet):
    """mmdet ResNet-50 with DCNv2 (module docstring), with or without torchvision's head.

    Parameters
    ----------
    num_classes : int
    include_top : bool
        False: the backbone alone (``forward`` returns the last stage's features).
    norm_eval : bool
        Keep BatchNorm in eval mode inside ``train()``.
    base_channels : int, keyword-only
        Test-size option (:mod:`numpyconv.models.resnet`); 64 officially.
    dtype, rng : keyword-only
    """

    def __init__(self, num_classes=1000, include_top=True, norm_eval=False, *, base_channels=64,
                 dtype=np.float32, rng=None):
        Chain.__init__(self, dtype=dtype, rng=rng)
        self.norm_eval = bool(norm_eval)
        convs = DCNConvs(STAGE_WITH_DCN, dtype=self.dtype, rng=self.rng)
        self.build(Bottleneck, [3, 4, 6, 3], convs, num_classes, base_channels=base_channels,
                   include_top=include_top)
        init_convs_fan_out(self)
        for _, module in self.named_modules():
            if isinstance(module, ModulatedDeformConv2d):
                for value in module.conv_offset.params.values():
                    value.fill(0)
        zero_init_last_norms(self)
        self.train()

def resnet50_dcnv2(num_classes=1000, include_top=True, norm_eval=False, *, base_channels=64, dtype=np.float32,
                   rng=None):
    """ResNet-50 with DCNv2 in stages 2-4 (mmdet), plus torchvision's ``fc`` head; see :class:`ResNetDCN`.

    Returns
    -------
    ResNetDCN
        ``forward(x (N, 3, H, W))`` -> logits ``(N, num_classes)``, or with ``include_top=False``
        the features ``(N, 2048, H/32, W/32)``.
    """
    return ResNetDCN(num_classes, include_top, norm_eval, base_channels=base_channels, dtype=dtype, rng=rng)
