"""PyTorch re-creations of the official MobileNetV2 variants, for the cross-checks only.

Written from the official definitions (same module tree, state_dict keys, arguments and forward):

* OSVAI/ODConv ``models/od_mobilenetv2.py`` (its ``ODConv2d`` is test_odconv.py's re-creation)
  (``ConvBNReLU``, ``ODConvBNReLU``, ``InvertedResidual``, ``OD_MobileNetV2``);
* d-li14/condconv.pytorch ``condconv.py`` (``route_func``, ``CondConv2d``) and
  ``cond_mobilenetv2.py`` (``InvertedResidual``, ``CondMobileNetV2``).

Initialisation is left to the tests (random weights and BatchNorm statistics).
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from test_odconv import official_odconv_class


def _make_divisible(v, divisor, min_value=None):
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
           [6, 320, 1, 1]]


# -- ODConv (the layer re-creation of test_odconv.py) ------------------------------------------------
ODConv2d = official_odconv_class(torch)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, groups=1):
        super().__init__(nn.Conv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2,
                                   groups=groups, bias=False),
                         nn.BatchNorm2d(out_planes), nn.ReLU6(inplace=True))


class ODConvBNReLU(nn.Sequential):
    def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, groups=1, reduction=0.0625,
                 kernel_num=1):
        super().__init__(ODConv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2,
                                  groups=groups, reduction=reduction, kernel_num=kernel_num),
                         nn.BatchNorm2d(out_planes), nn.ReLU6(inplace=True))


class ODInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, reduction=0.0625, kernel_num=1):
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ODConvBNReLU(inp, hidden_dim, kernel_size=1, reduction=reduction,
                                       kernel_num=kernel_num))
        layers.extend([ODConvBNReLU(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim,
                                    reduction=reduction, kernel_num=kernel_num),
                       ODConv2d(hidden_dim, oup, 1, 1, 0, reduction=reduction, kernel_num=kernel_num),
                       nn.BatchNorm2d(oup)])
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class OD_MobileNetV2(nn.Module):
    def __init__(self, num_classes=1000, width_mult=1.0, inverted_residual_setting=None, round_nearest=8,
                 dropout=0.2, reduction=0.0625, kernel_num=1):
        super().__init__()
        setting = SETTING if inverted_residual_setting is None else inverted_residual_setting
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features = [ConvBNReLU(3, input_channel, stride=2)]
        for t, c, n, s in setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(ODInvertedResidual(input_channel, output_channel, s if i == 0 else 1, t,
                                                   reduction, kernel_num))
                input_channel = output_channel
        features.append(ODConvBNReLU(input_channel, self.last_channel, kernel_size=1, reduction=reduction,
                                     kernel_num=kernel_num))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))

    def net_update_temperature(self, temperature):
        for m in self.modules():
            if isinstance(m, ODConv2d):
                m.attention.temperature = temperature

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        return self.classifier(x)


# -- CondConv ----------------------------------------------------------------------------------------------
class route_func(nn.Module):  # noqa: N801 (the official name)
    def __init__(self, c_in, num_experts):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(output_size=1)
        self.fc = nn.Linear(c_in, num_experts)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return self.sigmoid(self.fc(self.avgpool(x).view(x.size(0), -1)))


class CondConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, num_experts=1):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.weight = nn.Parameter(torch.randn(num_experts, out_channels, in_channels // groups, kernel_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.randn(num_experts, out_channels)) if bias else None

    def forward(self, x, routing_weight):
        b, _, h, w = x.size()
        k, c_out, c_in, kh, kw = self.weight.size()
        combined_weight = torch.mm(routing_weight, self.weight.view(k, -1)).view(-1, c_in, kh, kw)
        combined_bias = None if self.bias is None else torch.mm(routing_weight, self.bias).view(-1)
        y = F.conv2d(x.view(1, -1, h, w), combined_weight, combined_bias, stride=self.stride,
                     padding=self.padding, dilation=self.dilation, groups=self.groups * b)
        return y.view(b, c_out, y.size(-2), y.size(-1))


class CondInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, num_experts=None):
        super().__init__()
        hidden_dim = round(inp * expand_ratio)
        self.identity = stride == 1 and inp == oup
        self.expand_ratio = expand_ratio
        self.cond = num_experts is not None
        Conv2d = functools.partial(CondConv2d, num_experts=num_experts) if num_experts else nn.Conv2d
        if expand_ratio != 1:
            self.pw = Conv2d(inp, hidden_dim, 1, 1, 0, bias=False)
            self.bn_pw = nn.BatchNorm2d(hidden_dim)
        self.dw = Conv2d(hidden_dim, hidden_dim, 3, stride, 1, groups=hidden_dim, bias=False)
        self.bn_dw = nn.BatchNorm2d(hidden_dim)
        self.pw_linear = Conv2d(hidden_dim, oup, 1, 1, 0, bias=False)
        self.bn_pw_linear = nn.BatchNorm2d(oup)
        self.relu = nn.ReLU6(inplace=True)
        if num_experts:
            self.route = route_func(inp, num_experts)

    def forward(self, x):
        identity = x
        args = (self.route(x),) if self.cond else ()
        if self.expand_ratio != 1:
            x = self.relu(self.bn_pw(self.pw(x, *args)))
        x = self.relu(self.bn_dw(self.dw(x, *args)))
        x = self.bn_pw_linear(self.pw_linear(x, *args))
        return x + identity if self.identity else x


class CondMobileNetV2(nn.Module):
    def __init__(self, num_classes=1000, width_mult=1., num_experts=8):
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, 8)
        layers = [nn.Sequential(nn.Conv2d(3, input_channel, 3, 2, 1, bias=False),
                                nn.BatchNorm2d(input_channel), nn.ReLU6(inplace=True))]
        experts = None
        for j, (t, c, n, s) in enumerate(SETTING):
            output_channel = _make_divisible(c * width_mult, 8)
            for i in range(n):
                layers.append(CondInvertedResidual(input_channel, output_channel, s if i == 0 else 1, t,
                                                   experts))
                input_channel = output_channel
                if j == 4 and i == 0:
                    experts = num_experts
        self.features = nn.Sequential(*layers)
        output_channel = _make_divisible(1280 * width_mult, 8) if width_mult > 1.0 else 1280
        self.conv = nn.Sequential(nn.Conv2d(input_channel, output_channel, 1, 1, 0, bias=False),
                                  nn.BatchNorm2d(output_channel), nn.ReLU6(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier_route = route_func(output_channel, num_experts)
        self.classifier = CondConv2d(output_channel, num_classes, kernel_size=1, bias=False,
                                     num_experts=num_experts)

    def forward(self, x):
        x = self.avgpool(self.conv(self.features(x)))
        x = self.classifier(x, self.classifier_route(x))
        return x.squeeze_()
