"""KernelWarehouse ResNets (``numpyconv.models.kw_resnet18`` / ``kw_resnet50``): warehouses, cell allocation
and parameter counts against the published figures (OSVAI/KernelWarehouse README; ratios of the
official ``configs/resnet18/kw*.json`` and ``configs/resnet50/kw*.json``;
docs/derivations/kernel_warehouse.md section 7).

The builders mirror ``models/kw_resnet.py``: warehouse names ``stage{s}_layer{l}_conv{c}`` fused by
``sharing_range``, the first block of a stage and the stage's downsample handed over to the previous
stage's warehouse, the downsample reserved before the block's convolutions but registered after them,
KW convolutions without bias, plain stem and classifier.
"""
import pytest

from numpyconv import count
from numpyconv.kernel_warehouse import KWConv2d
from numpyconv.layers import BatchNorm2d
from numpyconv.models import kw_resnet18, kw_resnet50, resnet18
from numpyconv.models.kw_resnet import KW_CONFIGS

SHAPE = (1, 3, 224, 224)


def test_plain_resnet18_baseline():
    params, macs = count(resnet18(), SHAPE)
    assert round(params / 1e6, 2) == 11.69                             # README: 11.69M
    assert round(macs / 1e9, 2) == 1.81


def test_kw1x_warehouses_cells_and_attention_shapes():
    net = kw_resnet18()
    manager = net._modules['warehouse_manager']
    assert [w.shape for w in manager.params.values()] == [
        (56, 64, 64, 1, 1), (47, 128, 128, 1, 1), (47, 256, 256, 1, 1), (27, 512, 512, 1, 1)]
    layers = dict((name[:-1], m) for name, m in net.named_modules() if isinstance(m, KWConv2d))
    table = {'layer1.0.conv1': (0, 9, 0), 'layer1.0.conv2': (0, 9, 9), 'layer1.1.conv1': (0, 9, 18),
             'layer1.1.conv2': (0, 9, 27), 'layer2.0.conv1': (0, 18, 36), 'layer2.0.conv2': (1, 9, 0),
             'layer2.0.downsample.0': (0, 2, 54)}
    for name, (warehouse, m, start) in table.items():
        layer = layers[name]
        assert (layer.warehouse_id, layer.layout.m, layer.start_cell_idx) == (warehouse, m, start), name
    shapes = {k: v.shape for k, v in layers['layer2.0.conv1'].state_dict().items()}
    assert shapes == {'attention.fc1.weight': (16, 64), 'attention.norm1.weight': (16,),
                      'attention.norm1.bias': (16,), 'attention.norm1.running_mean': (16,),
                      'attention.norm1.running_var': (16,), 'attention.norm1.num_batches_tracked': (),
                      'attention.fc2.weight': (1026, 16), 'attention.fc2.bias': (1026,)}
    assert layers['layer4.1.conv2'].params['attention.fc2.weight'].shape == (252, 32)
    assert 'warehouse_manager.weights.3' in net.state_dict()


@pytest.mark.parametrize('config, published', [
    ('kw1x', 11.93),
    ('kw2x', 23.24),
    pytest.param('kw4x', 45.86, marks=pytest.mark.slow),               # allocates 46M parameters
    ('kw1d2x_resnet18', 7.43),
    pytest.param('kw1d4x_resnet18', 4.08, marks=pytest.mark.xfail(
        strict=True, reason='the README gives 4.08M for KW 1/4x; the official code with '
                            'configs/resnet18/kw1d4x_resnet18.json builds 4.03M')),
])
def test_kw_resnet18_parameter_counts_match_readme(config, published):
    params, _ = count(kw_resnet18(**KW_CONFIGS[config]), SHAPE)
    assert round(params / 1e6, 2) == published


def test_kw1d4x_resnet18_counts_as_the_official_code():
    net = kw_resnet18(**KW_CONFIGS['kw1d4x_resnet18'])
    assert [w.shape for w in net._modules['warehouse_manager'].params.values()] == [
        (56, 32, 32, 1, 1), (47, 64, 64, 1, 1), (47, 128, 128, 1, 1), (27, 256, 256, 1, 1)]
    assert round(count(net, SHAPE)[0] / 1e6, 2) == 4.03


@pytest.mark.parametrize('config, published', [
    ('kw1x', 28.05),
    ('kw1d2x_resnet50', 17.64),                                        # nonlocal_basis_ratio 0.0625
    pytest.param('kw4x', 102.02, marks=pytest.mark.slow),              # allocates 102M parameters
])
def test_kw_resnet50_parameter_counts_match_readme(config, published):
    """README: ResNet50 25.56M, + KW (1/2x) 17.64M, (1x) 28.05M, (4x) 102.02M."""
    params, _ = count(kw_resnet50(**KW_CONFIGS[config]), SHAPE)
    assert round(params / 1e6, 2) == published


def test_warehouses_counted_once_and_macs_above_the_static_network():
    net = kw_resnet18()
    manager = net._modules['warehouse_manager']
    params, macs = count(net, (2, 3, 224, 224))
    kw_layers = [m for _, m in net.named_modules() if isinstance(m, KWConv2d)]
    others = params - manager.num_params() - sum(layer.num_params() for layer in kw_layers)
    assert others == 9408 + 1000 * 513 + 2 * 64 + sum(2 * m.num_features for _, m in net.named_modules()
                                                      if isinstance(m, BatchNorm2d) and m is not
                                                      net._modules['bn1'])
    plain_macs = count(resnet18(), (2, 3, 224, 224))[1]
    # KW adds the attention and the kernel assembly (M multiply-adds per kernel weight and sample,
    # eq. 10): 2.20 GMACs per 224x224 image for KW 1x against 1.81 for the static ResNet-18
    assert round(macs / 2e9, 2) == 2.20 and round(plain_macs / 2e9, 2) == 1.81
