"""ODConv ResNets (Li, Zhou, Yao, ICLR 2022) as OSVAI/ODConv ``models/od_resnet.py`` builds them.

``OD_ResNet(block, layers, num_classes=1000, dropout=0.1, reduction=0.0625, kernel_num=1)``: the
torchvision ResNet tree (:mod:`numpyconv.models.resnet`) whose block convolutions, both 3x3 of a
BasicBlock and the 1x1, 3x3, 1x1 of a Bottleneck, are ``ODConv2d(reduction, kernel_num)`` (padding 1
for 3x3, 0 for 1x1; no dilation, no groups); the stem and the ``downsample`` 1x1 convolutions stay
plain ``Conv2d``, and ``Dropout(dropout)`` precedes ``fc``. Keys as the official module:
``layer1.0.conv1.weight (kernel_num, C_out, C_in, k, k)``, ``layer1.0.conv1.attention.fc.weight``,
``layer1.0.conv1.attention.bn.running_mean``, ``layer1.0.conv1.attention.channel_fc.bias``, ...

Every ODConv2d starts at temperature 1 (the official value, not saved in the state_dict);
:meth:`ODResNet.net_update_temperature` sets all of them, as the official method.

Counts (``numpyconv.count`` at 224x224, 1000 classes; OSVAI/ODConv README): OD-ResNet-18 11.94M
parameters (1x) / 44.90M (4x); OD-ResNet-50 28.64M (1x) / 90.67M (4x). The README's MAdds come
from an unnamed counter and are not reproduced (see docs/derivations/odconv.md).
"""
import numpy as np

from ..odconv import ODConv2d
from ._common import Chain, init_normal
from .resnet import BasicBlock, Bottleneck, Convs, ResNet, init_convs_fan_out


class ODConvs(Convs):
    """``odconv3x3`` / ``odconv1x1`` for the block convolutions, a plain 1x1 for ``downsample``."""

    def __init__(self, reduction, kernel_num, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.reduction, self.kernel_num = reduction, kernel_num

    def __call__(self, place, position, in_planes, out_planes, kernel_size, stride=1, dilation=1, groups=1):
        if position == 'downsample':
            return self.conv2d(in_planes, out_planes, kernel_size, stride)
        return ODConv2d(in_planes, out_planes, kernel_size, stride, kernel_size // 2,
                        reduction=self.reduction, kernel_num=self.kernel_num, dtype=self.dtype, rng=self.rng)


class ODResNet(ResNet):
    """Official ``OD_ResNet``; ``forward(x (N, 3, H, W)) -> (N, num_classes)``.

    Parameters
    ----------
    block : BasicBlock or Bottleneck
    layers : sequence of 4 ints
        Blocks per stage.
    num_classes : int
    dropout : float
        Dropout probability before ``fc``.
    reduction : float
        Attention width ``max(int(C_in * reduction), 16)`` of every ODConv2d.
    kernel_num : int
        Kernels per ODConv2d.
    base_channels : int, keyword-only
        Test-size option (module docstring of :mod:`numpyconv.models.resnet`); 64 officially.
    dtype, rng : keyword-only
    """

    def __init__(self, block, layers, num_classes=1000, dropout=0.1, reduction=0.0625, kernel_num=1, *,
                 base_channels=64, dtype=np.float32, rng=None):
        Chain.__init__(self, dtype=dtype, rng=rng)
        convs = ODConvs(reduction, kernel_num, dtype=self.dtype, rng=self.rng)
        self.build(block, layers, convs, num_classes, base_channels=base_channels, dropout=dropout)
        init_convs_fan_out(self)                                  # stem and downsample convolutions
        init_normal(self._modules['fc'], self.rng, 0.01)

    def net_update_temperature(self, temperature):
        """Set the temperature of every ODConv2d (official ``net_update_temperature``)."""
        for _, module in self.named_modules():
            if isinstance(module, ODConv2d):
                module.update_temperature(temperature)


def od_resnet18(*, num_classes=1000, dropout=0.1, reduction=0.0625, kernel_num=1, base_channels=64,
                dtype=np.float32, rng=None):
    """Official ``od_resnet18``: ODResNet(BasicBlock, [2, 2, 2, 2]); arguments as :class:`ODResNet`.

    Returns
    -------
    ODResNet
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``.
    """
    return ODResNet(BasicBlock, [2, 2, 2, 2], num_classes, dropout, reduction, kernel_num,
                    base_channels=base_channels, dtype=dtype, rng=rng)


def od_resnet50(*, num_classes=1000, dropout=0.1, reduction=0.0625, kernel_num=1, base_channels=64,
                dtype=np.float32, rng=None):
    """Official ``od_resnet50``: ODResNet(Bottleneck, [3, 4, 6, 3]); arguments as :class:`ODResNet`.

    Returns
    -------
    ODResNet
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``.
    """
    return ODResNet(Bottleneck, [3, 4, 6, 3], num_classes, dropout, reduction, kernel_num,
                    base_channels=base_channels, dtype=dtype, rng=rng)
