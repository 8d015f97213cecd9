"""OSVAI/ODConv ``models/od_resnet.py`` in PyTorch.

The official file is torchvision's ResNet with ``odconv3x3`` / ``odconv1x1`` (``ODConv2d(reduction,
kernel_num)``, padding 1 / 0) for every block convolution, plain ``nn.Conv2d`` downsample shortcuts,
and ``Dropout(dropout)`` between the pooling and ``fc``: built here as torchvision's ResNet with those
convolutions swapped in (same module tree, same keys).
"""
import torch
import torchvision

from test_odconv import official_odconv_class
from torch_models.common import MaskDropout, conv_args, swap_block_convs

ODConv2d = official_odconv_class(torch)


class OD_ResNet(torchvision.models.ResNet):
    def __init__(self, block, layers, num_classes=1000, dropout=0.1, reduction=0.0625, kernel_num=1):
        super().__init__(block, layers, num_classes)
        self.dropout = MaskDropout(p=dropout)

        def odconv(name, conv, stage):
            if name != 'downsample':
                in_planes, out_planes, k, stride, padding = conv_args(conv)[:5]
                return ODConv2d(in_planes, out_planes, k, stride, padding, reduction=reduction,
                                kernel_num=kernel_num)
        swap_block_convs(self, odconv)

    def _forward_impl(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def od_resnet18(**kwargs):
    return OD_ResNet(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], **kwargs)


def od_resnet50(**kwargs):
    return OD_ResNet(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], **kwargs)
