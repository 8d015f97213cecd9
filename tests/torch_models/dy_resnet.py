"""kaijieshi7/Dynamic-convolution-Pytorch ``dynamic_models/dy_resnet.py`` in PyTorch.

The file is torchvision's resnet.py whose ``conv3x3`` / ``conv1x1`` return ``Dynamic_conv2d(...,
bias=False)`` (block convolutions and the downsample 1x1 alike): built here as torchvision's ResNet with
those convolutions swapped in (same module tree, same keys).
"""
import torch
import torchvision

from test_dynamic import _torch_dynamic_conv2d
from torch_models.common import conv_args, swap_block_convs

DynamicConv2d = _torch_dynamic_conv2d(torch)


def dynamic(name, conv, stage):
    in_planes, out_planes, k, stride, padding, dilation, groups = conv_args(conv)
    return DynamicConv2d(in_planes, out_planes, k, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=False)


def resnet18(**kwargs):
    model = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], **kwargs)
    return swap_block_convs(model, dynamic)
