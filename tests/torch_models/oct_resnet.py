"""d-li14/octconv.pytorch ``oct_resnet.py`` (+ ``octconv.py``'s ``Conv_BN`` / ``Conv_BN_ACT``) in PyTorch,
written from the official files; ``OctaveConv`` is the re-creation of test_octave.py."""
import torch
from torch import nn

from test_octave import official_octave_class

OctaveConv = official_octave_class(torch)


class Conv_BN(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, alpha_in=0.5, alpha_out=0.5, stride=1,
                 padding=0, groups=1, act=False):
        super().__init__()
        self.conv = OctaveConv(in_channels, out_channels, kernel_size, alpha_in, alpha_out, stride, padding,
                               1, groups, False)
        self.bn_h = None if alpha_out == 1 else nn.BatchNorm2d(int(out_channels * (1 - alpha_out)))
        self.bn_l = None if alpha_out == 0 else nn.BatchNorm2d(int(out_channels * alpha_out))
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x):
        x_h, x_l = self.conv(x)
        x_h = self.act(self.bn_h(x_h))
        x_l = self.act(self.bn_l(x_l)) if x_l is not None else None
        return x_h, x_l


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, alpha_in=0.5,
                 alpha_out=0.5, output=False):
        super().__init__()
        width = int(planes * (base_width / 64.)) * groups
        inner = 0 if output else 0.5
        self.conv1 = Conv_BN(inplanes, width, 1, alpha_in, alpha_out, act=True)
        self.conv2 = Conv_BN(width, width, 3, inner, inner, stride, 1, groups, act=True)
        self.conv3 = Conv_BN(width, planes * self.expansion, 1, inner, inner)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity_h = x[0] if type(x) is tuple else x
        identity_l = x[1] if type(x) is tuple else None
        x_h, x_l = self.conv3(self.conv2(self.conv1(x)))
        if self.downsample is not None:
            identity_h, identity_l = self.downsample(x)
        x_h = x_h + identity_h
        x_l = x_l + identity_l if identity_l is not None else None
        return self.relu(x_h), self.relu(x_l) if x_l is not None else None


class OctResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, groups=1, width_per_group=64):
        super().__init__()
        self.inplanes, self.groups, self.base_width = 64, groups, width_per_group
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], alpha_in=0)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, alpha_out=0, output=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, alpha_in=0.5, alpha_out=0.5, output=False):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(Conv_BN(self.inplanes, planes * block.expansion, 1, alpha_in,
                                               alpha_out, stride))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, alpha_in,
                        alpha_out, output)]
        self.inplanes = planes * block.expansion
        inner = 0 if output else 0.5
        layers += [block(self.inplanes, planes, 1, None, self.groups, self.base_width, inner, inner, output)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x_h, x_l = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x_h).flatten(1))


def oct_resnet26(**kwargs):
    return OctResNet(Bottleneck, [2, 2, 2, 2], **kwargs)


def oct_resnet50(**kwargs):
    return OctResNet(Bottleneck, [3, 4, 6, 3], **kwargs)
