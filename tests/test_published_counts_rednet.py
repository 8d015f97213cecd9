"""RedNets (``numpyconv.models.rednet26/38/50``) against their published size and cost.

d-li14/involution README (model zoo, ImageNet, 224x224): RedNet-26 9.23M parameters / 1.73 GFLOPs,
RedNet-38 12.39M / 2.22, RedNet-50 15.54M / 2.71. The networks follow
``cls/mmcls/models/backbones/rednet.py`` with the mmcls classifier of ``cls/configs/_base_/models/``:

* stem: ConvModule(3, 32, 3, s2, p1) -> involution(32, 3, 1) -> BN -> ReLU -> ConvModule(32, 64, 3, p1),
  then MaxPool(3, s2, p1);
* stages (1, 2, 4, 1) / (2, 3, 5, 2) / (3, 4, 6, 3) of mmcls Bottlenecks (expansion 4, ``style='pytorch'``):
  1x1 conv -> BN -> ReLU -> involution(mid, 7, stride) -> BN -> ReLU -> 1x1 conv -> BN, downsample 1x1
  conv (stride) + BN;
* head: global average pool and ``Linear(2048, 1000)`` (mmcls LinearClsHead).

``numpyconv.count`` counts one multiply-add per MAC of convolutions, kernel generation, involution
(``Ho*Wo*C*K*K``) and the classifier; BatchNorm, ReLU, pooling and biases count 0 (docs/derivations/
involution.md, eq. 10). That gives 2.6485 G for RedNet-50. The published 2.71 G comes from mmcv's flop
counter, which also counts element-wise work (BatchNorm 2 per element, ReLU 1, pooling 1 per input
element, conv biases): about 0.046 G for RedNet-50, i.e. 2.695 G; the remaining 0.6 % is within the
rounding and counter-version spread. Without the involution multiply-adds the count would be 2.577 G
(2.62 G with element-wise work), 3.2 % below: the published figure includes them. The same
accounting puts RedNet-26 and -38 2.6 % and 2.4 % below their published FLOPs. Parameters match to
the digit.
"""
import numpy as np
import pytest

from numpyconv import count
from numpyconv.models import rednet26, rednet38, rednet50


@pytest.mark.parametrize('builder, params, published_params, macs, published_flops', [
    (rednet26, 9_233_166, 9.23e6, 1_685_176_832, 1.73e9),
    (rednet38, 12_386_986, 12.39e6, 2_166_841_344, 2.22e9),
    (rednet50, 15_540_806, 15.54e6, 2_648_505_856, 2.71e9),
])
def test_rednets_match_published_params_and_flops(builder, params, published_params, macs, published_flops):
    model = builder()
    assert model._modules['backbone'].macs((1, 3, 224, 224))[1] == (1, 2048, 7, 7)
    counted_params, counted_macs = count(model, (1, 3, 224, 224))
    assert counted_params == params
    assert abs(params - published_params) < 0.005e6                      # published to 0.01M
    assert counted_macs == macs
    assert -0.03 < macs / published_flops - 1 < 0                         # module docstring


def test_rednet_key_names():
    shapes = {k: v.shape for k, v in rednet50().state_dict().items()}
    assert shapes['backbone.stem.0.conv.weight'] == (32, 3, 3, 3)
    assert shapes['backbone.stem.1.conv1.conv.weight'] == (8, 32, 1, 1)
    assert shapes['backbone.stem.1.conv2.conv.weight'] == (18, 8, 1, 1)
    assert shapes['backbone.stem.1.conv1.bn.num_batches_tracked'] == ()
    assert shapes['backbone.layer1.0.conv2.conv1.conv.weight'] == (16, 64, 1, 1)
    assert shapes['backbone.layer1.0.conv2.conv2.conv.weight'] == (196, 16, 1, 1)
    assert shapes['backbone.layer4.0.conv2.conv2.conv.bias'] == (49 * 32,)
    assert shapes['backbone.layer2.0.downsample.0.weight'] == (512, 256, 1, 1)
    assert shapes['head.fc.weight'] == (1000, 2048)
    assert not any(k.endswith('avgpool.weight') or 'unfold' in k or k.startswith('neck') for k in shapes)
    assert np.all(rednet50().state_dict()['backbone.layer3.5.conv2.conv1.bn.running_var'] == 1)
