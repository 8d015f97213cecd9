"""KernelWarehouse ResNet-18 built through the manager: warehouses, cell allocation and parameter counts
against the published figures (OSVAI/KernelWarehouse README, docs/derivations/kernel_warehouse.md section 7).

The network mirrors ``models/kw_resnet.py``: warehouse names ``stage{s}_layer{l}_conv{c}`` with
``sharing_range`` ``"layer_conv"`` (the configs' string), the first block of a stage and the stage's
downsample handed over to the previous stage's warehouse, the downsample reserved before the block's
convolutions but registered after them, KW convolutions without bias, plain stem and classifier.
"""
import pytest

from numpyconv import count
from numpyconv.conv import Conv2d
from numpyconv.kernel_warehouse import KWConv2d, WarehouseManager
from numpyconv.layers import BatchNorm2d, Linear
from numpyconv.module import Module, Sequential


class BasicBlock(Module):
    def __init__(self, conv, inplanes, planes, stride, stage, layer_idx, handover, downsample):
        super().__init__()
        conv1_stage = max(stage - 1 if handover else stage, 0)   # handed over to the previous stage
        self.add_module('conv1', conv(inplanes, planes, 3, stride,
                                      f'stage{conv1_stage}_layer{layer_idx}_conv0'))
        self.add_module('bn1', BatchNorm2d(planes))
        self.add_module('conv2', conv(planes, planes, 3, 1,
                                      f'stage{stage}_layer{0 if handover else layer_idx}_conv1'))
        self.add_module('bn2', BatchNorm2d(planes))
        if downsample is not None:
            self.add_module('downsample', downsample)

    def macs(self, input_shape):
        total = 0
        shape = input_shape
        for name in ('conv1', 'conv2'):
            m, shape = self._modules[name].macs(shape)
            total += m
        if 'downsample' in self._modules:
            total += self._modules['downsample'].macs(input_shape)[0]
        return total, shape


class ResNet18(Module):
    """``conv(in, out, k, stride, warehouse_name)`` builds each block convolution (KW or plain)."""

    def __init__(self, conv, manager=None):
        super().__init__()
        if manager is not None:
            self.add_module('warehouse_manager', manager)
        self.add_module('conv1', Conv2d(3, 64, 7, 2, 3, bias=False))
        self.add_module('bn1', BatchNorm2d(64))
        inplanes, layer_idx = 64, 0
        for stage, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if stage == 0 else 2
            downsample = None
            if stride != 1:     # reserved first, registered after the block's convolutions
                downsample = Sequential(conv(inplanes, planes, 1, stride,
                                             f'stage{stage - 1}_layer{layer_idx + 1}_conv0'),
                                        BatchNorm2d(planes))
            blocks = [BasicBlock(conv, inplanes, planes, stride, stage, layer_idx, True, downsample)]
            layer_idx, inplanes = 1, planes
            blocks.append(BasicBlock(conv, planes, planes, 1, stage, layer_idx, False, None))
            layer_idx += 1
            self.add_module(f'layer{stage + 1}', Sequential(*blocks))
        self.add_module('fc', Linear(512, 1000))

    def macs(self, input_shape):
        total, (n, c, h, w) = self._modules['conv1'].macs(input_shape)
        shape = (n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)               # max pool 3, stride 2, pad 1
        for stage in range(1, 5):
            m, shape = self._modules[f'layer{stage}'].macs(shape)
            total += m
        return total + self._modules['fc'].macs(shape[:2])[0], (shape[0], 1000)


def kw_resnet18(cell_num_ratio=1, cell_inplane_ratio=1, cell_outplane_ratio=1):
    manager = WarehouseManager(0.0625, cell_num_ratio, cell_inplane_ratio, cell_outplane_ratio,
                               sharing_range='layer_conv', rng=0)

    def conv(inplanes, planes, k, stride, name):
        return manager.reserve(inplanes, planes, k, stride, (k - 1) // 2, bias=False, warehouse_name=name)

    net = ResNet18(conv, manager)
    manager.store()
    manager.allocate(net)                       # registration (official modules()) order
    return net, manager


def test_plain_resnet18_baseline():
    net = ResNet18(lambda i, o, k, s, _: Conv2d(i, o, k, s, (k - 1) // 2, bias=False))
    params, macs = count(net, (1, 3, 224, 224))
    assert round(params / 1e6, 2) == 11.69                             # README: 11.69M
    assert round(macs / 1e9, 2) == 1.81


def test_kw1x_warehouses_cells_and_attention_shapes():
    net, manager = kw_resnet18()
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


@pytest.mark.parametrize('ratios, published', [
    ((1, 1, 1), 11.93),            # KW 1x
    ((2, 1, 1), 23.24),            # KW 2x
    ((4, 1, 1), 45.86),            # KW 4x
    ((0.5, 0.5, 0.5), 7.43),       # KW 1/2x
    pytest.param((0.25, 0.5, 0.5), 4.08, marks=pytest.mark.xfail(
        strict=True, reason='the README gives 4.08M for KW 1/4x; the official code with '
                            'configs/resnet18/kw1d4x_resnet18.json builds 4.03M')),
])
def test_kw_resnet18_parameter_counts_match_readme(ratios, published):
    net, _ = kw_resnet18(*ratios)
    params, _ = count(net, (1, 3, 224, 224))
    assert round(params / 1e6, 2) == published


def test_kw1d4x_resnet18_counts_as_the_official_code():
    net, manager = kw_resnet18(0.25, 0.5, 0.5)
    assert [w.shape for w in manager.params.values()] == [
        (56, 32, 32, 1, 1), (47, 64, 64, 1, 1), (47, 128, 128, 1, 1), (27, 256, 256, 1, 1)]
    assert round(count(net, (1, 3, 224, 224))[0] / 1e6, 2) == 4.03


def test_warehouses_counted_once_and_macs_above_the_static_network():
    net, manager = kw_resnet18()
    params, macs = count(net, (2, 3, 224, 224))
    kw_layers = [m for _, m in net.named_modules() if isinstance(m, KWConv2d)]
    others = params - manager.num_params() - sum(layer.num_params() for layer in kw_layers)
    assert others == 9408 + 1000 * 513 + 2 * 64 + sum(2 * m.num_features for _, m in net.named_modules()
                                                      if isinstance(m, BatchNorm2d) and m is not
                                                      net._modules['bn1'])
    plain = ResNet18(lambda i, o, k, s, _: Conv2d(i, o, k, s, (k - 1) // 2, bias=False))
    plain_macs = count(plain, (2, 3, 224, 224))[1]
    # KW adds the attention and the kernel assembly (M multiply-adds per kernel weight and sample,
    # eq. 10): 2.20 GMACs per 224x224 image for KW 1x against 1.81 for the static ResNet-18
    assert round(macs / 2e9, 2) == 2.20 and round(plain_macs / 2e9, 2) == 1.81
