"""RedNet-50 built from numpyconv layers against its published size and cost.

d-li14/involution README (model zoo): RedNet-50 has 15.54M parameters and 2.71 GFLOPs at 224x224
(docs/derivations/involution.md section 6). The network follows ``cls/mmcls/models/backbones/rednet.py``:

* stem: ConvModule(3, 32, 3, s2, p1) -> involution(32, 3, 1) -> BN -> ReLU -> ConvModule(32, 64, 3, p1),
  then MaxPool(3, s2, p1);
* stages (3, 4, 6, 3) of mmcls Bottlenecks (expansion 4, ``style='pytorch'``): 1x1 conv -> BN -> ReLU ->
  involution(mid, 7, stride) -> BN -> ReLU -> 1x1 conv -> BN, downsample 1x1 conv (stride) + BN;
* head: global average pool and ``Linear(2048, 1000)`` (mmcls LinearClsHead).

``numpyconv.count`` counts one multiply-add per MAC of convolutions, kernel generation, involution
(``Ho*Wo*C*K*K``) and the classifier; BatchNorm, ReLU, pooling and biases count 0 (docs/derivations/
involution.md, eq. 10). That gives 2.6485 G. The published 2.71 G comes from mmcv's flop counter, which
also counts element-wise work (BatchNorm 2 per element, ReLU 1, pooling 1 per input element, conv
biases): about 0.046 G for RedNet-50, i.e. 2.695 G; the remaining 0.6 % is within the rounding and
counter-version spread. Without the involution multiply-adds the count would be 2.577 G (2.62 G with
element-wise work), 3.2 % below: the published figure includes them. Parameters match to the digit.
"""
import numpy as np

from numpyconv import BatchNorm2d, Conv2d, Linear, Module, ReLU, Sequential, count
from numpyconv.involution import Involution2d, _ConvModule

PUBLISHED_PARAMS = 15.54e6
PUBLISHED_FLOPS = 2.71e9


class Bottleneck(Module):
    """mmcls Bottleneck with ``conv2 = involution(mid, 7, stride)``; children named as rednet.py."""

    def __init__(self, in_channels, out_channels, stride, rng):
        super().__init__(rng=rng)
        mid = out_channels // 4
        for name, layer in (('conv1', Conv2d(in_channels, mid, 1, bias=False, rng=self.rng)),
                            ('bn1', BatchNorm2d(mid)),
                            ('conv2', Involution2d(mid, 7, stride, rng=self.rng)),
                            ('bn2', BatchNorm2d(mid)),
                            ('conv3', Conv2d(mid, out_channels, 1, bias=False, rng=self.rng)),
                            ('bn3', BatchNorm2d(out_channels))):
            self.add_module(name, layer)
        if stride != 1 or in_channels != out_channels:
            self.add_module('downsample', Sequential(
                Conv2d(in_channels, out_channels, 1, stride, bias=False, rng=self.rng),
                BatchNorm2d(out_channels)))

    def macs(self, input_shape):
        total, shape = 0, input_shape
        for name in ('conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3'):
            m, shape = self._modules[name].macs(shape)
            total += m
        if 'downsample' in self._modules:
            total += self._modules['downsample'].macs(input_shape)[0]
        return total, shape


class RedNet50Backbone(Module):
    """``RedNet(depth=50)``: keys ``stem.*``, ``layer1.*`` ... ``layer4.*`` as the official backbone."""

    def __init__(self, rng=0):
        super().__init__(rng=rng)
        self.add_module('stem', Sequential(
            _ConvModule(Conv2d(3, 32, 3, 2, 1, bias=False, rng=self.rng), BatchNorm2d(32), ReLU()),
            Involution2d(32, 3, 1, rng=self.rng), BatchNorm2d(32), ReLU(),
            _ConvModule(Conv2d(32, 64, 3, 1, 1, bias=False, rng=self.rng), BatchNorm2d(64), ReLU())))
        in_channels = 64
        for stage, (blocks, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, 2))):
            out_channels = 256 * 2 ** stage
            self.add_module(f'layer{stage + 1}', Sequential(*[
                Bottleneck(in_channels if b == 0 else out_channels, out_channels,
                           stride if b == 0 else 1, self.rng) for b in range(blocks)]))
            in_channels = out_channels

    def macs(self, input_shape):
        total, (n, c, h, w) = self._modules['stem'].macs(input_shape)
        shape = (n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)     # MaxPool2d(3, 2, 1): 0 MACs
        for stage in range(1, 5):
            m, shape = self._modules[f'layer{stage}'].macs(shape)
            total += m
        return total, shape


def test_rednet50_matches_published_params_and_flops():
    backbone, fc = RedNet50Backbone(), Linear(2048, 1000)
    params, macs = count(backbone, (1, 3, 224, 224))
    assert backbone.macs((1, 3, 224, 224))[1] == (1, 2048, 7, 7)
    head_params, head_macs = count(fc, (1, 2048))                         # after global pooling
    params, macs = params + head_params, macs + head_macs
    assert params == 15_540_806
    assert abs(params - PUBLISHED_PARAMS) < 0.005e6                       # published to 0.01M
    assert macs == 2_648_505_856
    assert -0.03 < macs / PUBLISHED_FLOPS - 1 < 0                         # module docstring


def test_rednet_key_names():
    backbone = RedNet50Backbone()
    shapes = {k: v.shape for k, v in backbone.state_dict().items()}
    assert shapes['stem.0.conv.weight'] == (32, 3, 3, 3)
    assert shapes['stem.1.conv1.conv.weight'] == (8, 32, 1, 1)
    assert shapes['stem.1.conv2.conv.weight'] == (18, 8, 1, 1)
    assert shapes['stem.1.conv1.bn.num_batches_tracked'] == ()
    assert shapes['layer1.0.conv2.conv1.conv.weight'] == (16, 64, 1, 1)
    assert shapes['layer1.0.conv2.conv2.conv.weight'] == (196, 16, 1, 1)
    assert shapes['layer4.0.conv2.conv2.conv.bias'] == (49 * 32,)
    assert shapes['layer2.0.downsample.0.weight'] == (512, 256, 1, 1)
    assert not any(k.endswith('avgpool.weight') or 'unfold' in k for k in shapes)
    assert np.all(backbone.state_dict()['layer3.5.conv2.conv1.bn.running_var'] == 1)
