"""d-li14/involution RedNet classifiers (``cls/configs/_base_/models/rednet*.py``) in PyTorch.

mmcls ``ImageClassifier(backbone=RedNet(depth), neck=GlobalAveragePooling, head=LinearClsHead)``.
``cls/mmcls/models/backbones/rednet.py``'s Bottleneck (``style='pytorch'``) has torchvision's
Bottleneck tree, keys (``bn1..bn3``) and forward with ``conv2 = involution(mid, 7, stride)``, and its
``ResLayer`` builds the stages as torchvision's ``_make_layer``: the stages are taken from a torchvision
ResNet with ``conv2`` swapped. ``involution`` is the re-creation of test_involution.py (mmcv
``ConvModule`` children ``conv``, ``bn``).
"""
import torch
import torchvision
from torch import nn

from test_involution import _torch_modules
from torch_models.common import swap_block_convs

Involution = _torch_modules(torch)
ARCH_SETTINGS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}


class ConvModule(nn.Module):
    """mmcv ``ConvModule(in, out, k, stride, padding, norm_cfg=BN)``: conv (no bias) -> bn -> ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class RedNet(nn.Module):
    def __init__(self, depth, stem_channels=64):
        super().__init__()
        half = stem_channels // 2
        self.stem = nn.Sequential(ConvModule(3, half, 3, 2, 1), Involution(half, 3, 1), nn.BatchNorm2d(half),
                                  nn.ReLU(inplace=True), ConvModule(half, stem_channels, 3, 1, 1))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        resnet = torchvision.models.ResNet(torchvision.models.resnet.Bottleneck, ARCH_SETTINGS[depth])

        def involution(name, conv, stage):
            if name == 'conv2':
                return Involution(conv.in_channels, 7, conv.stride[0])
        swap_block_convs(resnet, involution)
        for i in range(1, 5):
            setattr(self, f'layer{i}', getattr(resnet, f'layer{i}'))

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class GlobalAveragePooling(nn.Module):
    def __init__(self):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        return self.gap(x).view(x.size(0), -1)


class LinearClsHead(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)


class ImageClassifier(nn.Module):
    def __init__(self, depth, num_classes=1000):
        super().__init__()
        self.backbone = RedNet(depth)
        self.neck = GlobalAveragePooling()
        self.head = LinearClsHead(num_classes, 2048)

    def forward(self, x):
        return self.head.fc(self.neck(self.backbone(x)))
