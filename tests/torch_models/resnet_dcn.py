"""mmdet ``ResNet(depth=50, dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
stage_with_dcn=(False, True, True, True))`` in PyTorch, with torchvision's head.

mmdet's ResNet-50 (``style='pytorch'``) has torchvision's tree and key names (norms ``bn1..bn3``);
``conv2`` of stages 2-4 is mmcv's ``ModulatedDeformConv2dPack(planes, planes, 3, stride, 1,
deform_groups=1, bias=False)``, re-created on ``torchvision.ops.deform_conv2d`` (``mmcv_pack`` of
test_deformable.py). ``include_top=False``: the backbone alone, returning the last stage.
"""
import torch
import torchvision

from test_deformable import mmcv_pack
from torch_models.common import conv_args, swap_block_convs


class ResNet50DCN(torchvision.models.ResNet):
    def __init__(self, num_classes=1000, include_top=True):
        super().__init__(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], num_classes)
        self.include_top = include_top
        if not include_top:
            del self.avgpool, self.fc

        def dcn(name, conv, stage):
            if name == 'conv2' and stage > 0:
                channels, _, k, stride, padding = conv_args(conv)[:5]
                return mmcv_pack(torch, torchvision.ops, True, channels, channels, (k, k), stride, padding, 1,
                                 1, 1, False)
        swap_block_convs(self, dcn)

    def _forward_impl(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1)) if self.include_top else x
