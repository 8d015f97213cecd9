"""The ResNet-family networks of ``numpyconv.models`` against their official PyTorch definitions.

Each builder's official network (torchvision's, or a re-creation in tests/torch_models/ of the
official file) gets random weights and random BatchNorm statistics, is saved with ``torch.save`` in
the zip and the legacy format, loaded with ``load_checkpoint`` + ``state_dict_of`` +
``load_state_dict`` and must give the same logits, input gradient and every parameter gradient in
float64 (relative error below 1e-9), in eval mode and in train mode (dropout and stochastic depth with
the same injected masks; BatchNorm batch statistics and running-statistic updates).
The reduced input sizes (32x32, 64x64 for the octave networks) keep the full official widths.
"""
import numpy as np
import pytest

import numpyconv as nc
from numpyconv import models
from numpyconv.models import set_masks

RTOL = 1e-9


# -- without PyTorch: small instances, structure, behaviour -------------------------------------------------
# builder -> (test-size arguments, input size): the official structure at a reduced width
SMALL = {
    'resnet18': (dict(base_channels=8), 32),
    'resnet50': (dict(base_channels=8), 32),
    'od_resnet18': (dict(base_channels=8, kernel_num=2), 32),
    'od_resnet50': (dict(base_channels=8), 32),
    'kw_resnet18': (dict(base_channels=8), 32),
    'kw_resnet50': (dict(base_channels=8), 32),
    'dy_resnet18': (dict(base_channels=8), 32),
    'oct_resnet26': (dict(base_channels=8), 64),
    'oct_resnet50': (dict(base_channels=8), 64),
    'rednet26': (dict(base_channels=16, stem_channels=32), 32),
    'rednet38': (dict(base_channels=16, stem_channels=32), 32),
    'rednet50': (dict(base_channels=16, stem_channels=32), 32),
    'resnet50_dcnv2': (dict(base_channels=8), 32),
}

# builder -> (state_dict length of the official network with default arguments, a key of its layer4)
OFFICIAL_KEYS = {
    'resnet18': (122, 'layer4.0.conv1.weight'),
    'resnet50': (320, 'layer4.0.conv1.weight'),
    'od_resnet18': (314, 'layer4.0.conv1.attention.channel_fc.bias'),
    'od_resnet50': (832, 'layer4.0.conv2.attention.spatial_fc.weight'),
    'kw_resnet18': (259, 'layer4.0.conv1.attention.fc1.weight'),
    'kw_resnet50': (674, 'layer4.0.downsample.0.attention.norm1.running_var'),
    'dy_resnet18': (179, 'layer4.0.downsample.0.attention.fc2.bias'),
    'oct_resnet26': (342, 'layer4.0.conv1.conv.conv_l2h.weight'),
    'oct_resnet50': (654, 'layer4.0.downsample.0.bn_h.num_batches_tracked'),
    'rednet26': (251, 'backbone.layer4.0.conv2.conv2.conv.bias'),
    'rednet38': (351, 'backbone.layer4.0.conv2.conv1.bn.running_mean'),
    'rednet50': (451, 'backbone.layer4.0.conv2.conv1.conv.weight'),
    'resnet50_dcnv2': (346, 'layer4.0.conv2.conv_offset.bias'),
}


def small(name, dtype=np.float64, **kwargs):
    """The test-size instance of builder ``name`` (3 classes) and an input for it; the BatchNorm running
    statistics are those of that input (eval mode then sees well-scaled activations)."""
    options, size = SMALL[name]
    model = getattr(models, name)(num_classes=3, dtype=dtype, rng=0, **options, **kwargs)
    x = np.random.default_rng(len(name)).standard_normal((2, 3, size, size)).astype(dtype)
    norms = [m for _, m in model.named_modules() if isinstance(m, nc.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0
    model.train()(x)
    for norm in norms:
        norm.momentum = 0.1
    return model.eval(), x


def checked_keys(model):
    """The parameters gradcheck samples: the stem, up to four of the first last-stage block's ``conv2``
    (the technique's layer), the last warehouse and the classifier weight."""
    keys = list(model._checked_params())
    technique = [k for k in keys if f'.{k}'.startswith(('.layer4.0.conv2.', '.backbone.layer4.0.conv2.'))]
    warehouses = [k for k in keys if k.startswith('warehouse_manager.')]
    return [keys[0], *technique[:4], *warehouses[-1:], keys[-2]]


@pytest.mark.filterwarnings('ignore:gradcheck. non-differentiable points')
@pytest.mark.parametrize('name', sorted(SMALL))
def test_gradcheck_small_instance(name):
    model, x = small(name)
    report = nc.gradcheck_layer(model.eval(), x, wrt=['x'] + checked_keys(model), n_directions=1,
                                check_reentrant=False)
    assert report.ok and len(report.results) >= 4


@pytest.mark.filterwarnings('ignore:gradcheck. non-differentiable points')
@pytest.mark.parametrize('name', ['kw_resnet18', 'od_resnet50', 'oct_resnet26'])
def test_gradcheck_train_mode_with_fixed_masks(name):
    """Train mode: BatchNorm batch statistics (every sample couples), dropout and stochastic depth with
    fixed masks."""
    kwargs = dict(drop_path_rate=0.3) if name.startswith('kw') else {}
    model, x = small(name, **kwargs)
    model.train()
    masks = {key[:-1]: np.random.default_rng(0).random((2, 1, 1, 1)) >= 0.3
             for key, m in model.named_modules() if key.endswith('drop_path.')}
    if 'dropout' in model._modules:
        masks['dropout'] = np.random.default_rng(1).random((2, model._modules['fc'].in_features)) >= 0.1
    set_masks(model, masks)
    nc.gradcheck_layer(model, x, wrt=['x'] + checked_keys(model), n_directions=1, check_reentrant=False)


@pytest.mark.parametrize('name', sorted(OFFICIAL_KEYS))
def test_state_dict_layout(name):
    """As many entries as the official network (full size, default arguments), its names, parameters
    and gradients under the same keys, buffers (BatchNorm statistics) with them in the state_dict."""
    length, key = OFFICIAL_KEYS[name]
    widths = {k: v for k, v in SMALL[name][0].items() if k.endswith('channels')}
    model = getattr(models, name)(**widths)
    state = model.state_dict()
    assert len(state) == length and key in state
    assert list(model.grads) == list(model.params)
    assert set(state) == set(model.params) | set(model.buffers)
    assert all(state[k].shape == model.params[k].shape for k in model.params)


def test_forward_backward_shapes_and_float32():
    model, x = small('resnet50', dtype=np.float32)
    y = model(x)
    assert y.dtype == np.float32 and y.shape == (2, 3)
    dx = model.backward(np.ones_like(y))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    twin = nc.module.float64_copy(model)
    y64 = twin(x.astype(np.float64))
    assert np.abs(y - y64).max() < 1e-4 * np.abs(y64).max()


def test_dropout_masks_train_and_eval():
    """Dropout runs in train mode only; a set mask replaces the draw; a key that is not a dropout or
    drop-path layer is refused."""
    model, x = small('od_resnet18')
    y_eval = model(x)
    drop_all = np.zeros((2, model._modules['fc'].in_features), dtype=bool)
    set_masks(model, {'dropout': drop_all})
    np.testing.assert_array_equal(model(x), y_eval)                      # eval: no dropout
    y = model.train()(x)
    np.testing.assert_allclose(y, np.broadcast_to(model._modules['fc'].params['bias'], y.shape))
    set_masks(model, {'dropout': None})
    assert not np.allclose(model(x), y)
    with pytest.raises(KeyError, match='layer1.0.bn1'):
        set_masks(model, {'layer1.0.bn1': drop_all})


def test_drop_path_layers_and_masks():
    model, x = small('kw_resnet50', drop_path_rate=0.5)
    paths = [k for k, m in model.named_modules() if isinstance(m, nc.DropPath)]
    assert len(paths) == 16 and all(m.drop_prob == 0.5 for _, m in model.named_modules()
                                    if isinstance(m, nc.DropPath))
    none = np.zeros((2, 1, 1, 1), dtype=bool)
    set_masks(model, {k[:-1]: none for k in paths})
    model.train()
    y = model(x)
    set_masks(model, {k[:-1]: None for k in paths})
    assert not any(k.endswith('drop_path.') for k in models.kw_resnet50(base_channels=8).state_dict())
    assert y.shape == (2, 3)


def test_norm_eval_keeps_batch_norm_frozen():
    model, x = small('resnet50_dcnv2', norm_eval=True)
    before = model.state_dict()
    model.train()
    norms = [m for _, m in model.named_modules() if isinstance(m, nc.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and model.training
    y_train = model(x)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    np.testing.assert_array_equal(y_train, model.eval()(x))
    free = models.resnet50_dcnv2(base_channels=8, num_classes=3, dtype=np.float64, rng=0).train()
    assert all(m.training for _, m in free.named_modules() if isinstance(m, nc.BatchNorm2d))
    red, x = small('rednet26', norm_eval=True)
    assert not any(m.training for _, m in red.train().named_modules() if isinstance(m, nc.BatchNorm2d))


def test_dcn_backbone_without_head():
    model, x = small('resnet50_dcnv2', include_top=False)
    y = model(x)
    assert y.shape == (2, 256, 1, 1) and not any(k.startswith('fc.') for k in model.state_dict())
    assert model.backward(np.ones_like(y)).shape == x.shape
    assert isinstance(dict(model.named_modules())['layer2.0.conv2.'], nc.ModulatedDeformConv2d)
    assert type(dict(model.named_modules())['layer1.0.conv2.']) is nc.Conv2d


def test_kernel_warehouse_naming_enabled_and_handover():
    """Official names: a Bottleneck's first convolution in stage 0 and ResNet-50's layer1 downsample
    are plain convolutions; each stage's first block hands its first convolution (and the downsample)
    over to the previous stage's warehouse."""
    from numpyconv.models.kw_resnet import warehouse_name
    from numpyconv.models.resnet import Place
    assert warehouse_name(Place(0, 0, True, 4), 'conv1') == ('stage-1_layer0_conv0', False)
    assert warehouse_name(Place(0, 0, True, 1), 'conv1') == ('stage0_layer0_conv0', True)
    assert warehouse_name(Place(1, 3, True, 4), 'conv1') == ('stage0_layer3_conv0', True)
    assert warehouse_name(Place(1, 3, True, 4), 'conv3') == ('stage1_layer0_conv2', True)
    assert warehouse_name(Place(1, 2, False, 4), 'conv2') == ('stage1_layer2_conv1', True)
    assert warehouse_name(Place(2, 4, True, 4), 'downsample') == ('stage1_layer5_conv0', None)
    model = models.kw_resnet50(base_channels=8)
    layers = dict(model.named_modules())
    assert type(layers['layer1.0.conv1.']) is nc.Conv2d
    assert type(layers['layer1.0.downsample.0.']) is nc.Conv2d
    assert type(layers['layer1.1.conv1.']) is nc.KWConv2d
    assert [layers[f'layer{s}.0.conv1.'].warehouse_id for s in (2, 3, 4)] == [0, 1, 2]
    assert [layers[f'layer{s}.0.conv2.'].warehouse_id for s in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert layers['layer3.0.downsample.0.'].warehouse_id == 1
    assert list(model.state_dict())[:4] == [f'warehouse_manager.weights.{i}' for i in range(4)]


def test_reserve_disabled_returns_a_plain_convolution():
    manager = nc.WarehouseManager()
    conv = manager.reserve(8, 16, 3, 2, 1, bias=False, warehouse_name='stage-1_layer0_conv0', enabled=False)
    assert type(conv) is nc.Conv2d and list(conv.state_dict()) == ['weight'] and not manager.warehouses
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), 2, 1)


def test_layer_masks_replace_the_draw():
    x = np.arange(1.0, 7.0).reshape(2, 3)
    layer = nc.Dropout(0.5)
    layer.mask = np.array([[True, False, True], [False, False, True]])
    np.testing.assert_array_equal(layer(x), [[2, 0, 6], [0, 0, 12]])
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), [[2, 0, 2], [0, 0, 2]])
    path = nc.DropPath(0.25)
    path.mask = np.array([[False], [True]])
    np.testing.assert_allclose(path(x), [[0, 0, 0], [16 / 3, 20 / 3, 8]])
    path.mask = np.ones((3, 1), dtype=bool)
    with pytest.raises(ValueError, match='mask must have shape'):
        path(x)


def test_state_dict_orders_dotted_keys_as_torch_submodules():
    """A layer holding ``attention.bn.*`` lists that submodule's parameters, then its buffers, before
    the next submodule, and its own parameters first (``torch.nn.Module.state_dict``)."""
    from numpyconv.module import torch_order
    params = ['attention.fc.weight', 'attention.bn.weight', 'attention.head.weight', 'weight',
              'attention.scale']
    buffers = ['attention.bn.running_mean', 'count']
    assert [k for k, _ in torch_order([(k, 0) for k in params + buffers])] == [
        'weight', 'count', 'attention.scale', 'attention.fc.weight', 'attention.bn.weight',
        'attention.bn.running_mean', 'attention.head.weight']


def test_argument_errors():
    with pytest.raises(TypeError, match='norm_layer'):
        models.resnet18(norm_layer=nc.LayerNorm)
    with pytest.raises(ValueError, match='replace_stride_with_dilation'):
        models.resnet50(replace_stride_with_dilation=[True])
    with pytest.raises(ValueError, match='BasicBlock only supports groups=1'):
        models.resnet18(groups=2)
    with pytest.raises(NotImplementedError, match='Dilation > 1'):
        models.dy_resnet18(replace_stride_with_dilation=[False, False, True], base_channels=8)
    with pytest.raises(ValueError, match='group_channels'):
        models.rednet26(base_channels=8)


def test_official_keyword_arguments_are_accepted_at_the_values_built():
    """The arguments the official functions and training scripts pass: download switches off,
    KernelWarehouse main.py's extras (unused by KW_ResNet), RedNet's config backbone arguments,
    MobileNetV2's block / norm_layer (None means the official ones)."""
    small = dict(num_classes=3, dtype=np.float64, rng=0)
    reference = {'dy_resnet18': models.dy_resnet18(base_channels=8, **small).state_dict(),
                 'oct_resnet26': models.oct_resnet26(base_channels=8, **small).state_dict(),
                 'kw_resnet18': models.kw_resnet18(base_channels=8, **small).state_dict(),
                 'rednet26': models.rednet26(**small).state_dict(),
                 'od_mobilenetv2': models.od_mobilenetv2(width_mult=0.25, **small).state_dict()}
    built = {'dy_resnet18': models.dy_resnet18(False, True, base_channels=8, **small),
             'oct_resnet26': models.oct_resnet26(pretrained=False, base_channels=8, **small),
             'kw_resnet18': models.kw_resnet18(pretrained=False, layer_scale_init_value=1e-6,
                                               head_init_scale=1.0, base_channels=8, **small),
             'rednet26': models.rednet26(num_stages=4, out_indices=(3,), style='pytorch', **small),
             'od_mobilenetv2': models.od_mobilenetv2(width_mult=0.25, block=None, norm_layer=None, **small)}
    for name, model in built.items():
        state = model.state_dict()
        assert list(state) == list(reference[name]), name
        for key, value in state.items():
            np.testing.assert_array_equal(value, reference[name][key], err_msg=f'{name} {key}')
    with pytest.raises(ValueError, match='pretrained/weights=True: numpyconv downloads no weights'):
        models.oct_resnet50(pretrained=True)
    with pytest.raises(ValueError, match="weights='IMAGENET1K_V1': numpyconv downloads no"):
        models.resnet50(weights='IMAGENET1K_V1')
    assert list(models.resnet18(weights=None, progress=False, base_channels=8).state_dict())[:2] == [
        'conv1.weight', 'bn1.weight']
    with pytest.raises(TypeError, match='progress must be a bool'):
        models.dy_resnet18(progress='yes')
    with pytest.raises(ValueError, match=r"style='caffe' is not supported .*accepted: 'pytorch'"):
        models.rednet38(style='caffe')
    with pytest.raises(ValueError, match=r"out_indices=\(1, 2, 3\) is not supported"):
        models.rednet50(out_indices=(1, 2, 3))
    with pytest.raises(ValueError, match='norm_layer=.* is not supported'):
        models.od_mobilenetv2(norm_layer='BN')


def test_dilated_grouped_resnet50_keeps_the_resolution():
    model = models.resnet50(groups=2, width_per_group=32, replace_stride_with_dilation=[False, True, True],
                            base_channels=8, num_classes=3, dtype=np.float64)
    assert model._modules['layer4'][0]._modules['conv2'].dilation == 2
    assert model._modules['layer4'][1]._modules['conv2'].dilation == 4
    assert model.macs((1, 3, 64, 64))[1] == (1, 3) and model._modules['layer4'].macs((1, 128, 8, 8))[1] == \
        (1, 256, 8, 8)


def test_numpyconv_models_is_imported_on_first_use():
    import subprocess
    import sys
    code = ("import sys, numpyconv; assert 'numpyconv.models' not in sys.modules; "
            "print(numpyconv.models.resnet18.__module__)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'numpyconv.models.resnet'


# -- against PyTorch ---------------------------------------------------------------------------------------
@pytest.fixture
def torch():
    """torch (skipped without it) with one thread: the machines running the suite are small."""
    torch = pytest.importorskip('torch')
    pytest.importorskip('torchvision')
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(previous)


# -- the official networks -------------------------------------------------------------------------------
def official(name, **kwargs):
    """The official PyTorch network of builder ``name`` (float64, 5 classes)."""
    import torchvision
    from torch_models import dy_resnet, kw_resnet, oct_resnet, od_resnet, rednet, resnet_dcn
    factories = {
        'resnet18': torchvision.models.resnet18, 'resnet50': torchvision.models.resnet50,
        'od_resnet18': od_resnet.od_resnet18, 'od_resnet50': od_resnet.od_resnet50,
        'kw_resnet18': kw_resnet.kw_resnet18, 'kw_resnet50': kw_resnet.kw_resnet50,
        'dy_resnet18': dy_resnet.resnet18, 'oct_resnet26': oct_resnet.oct_resnet26,
        'oct_resnet50': oct_resnet.oct_resnet50, 'resnet50_dcnv2': resnet_dcn.ResNet50DCN,
        'rednet26': lambda **kw: rednet.ImageClassifier(26, **kw),
        'rednet38': lambda **kw: rednet.ImageClassifier(38, **kw),
        'rednet50': lambda **kw: rednet.ImageClassifier(50, **kw),
    }
    return factories[name](num_classes=5, **kwargs).double()


def randomise(torch, module, seed, branch_scale=0.05):
    """Random weights and BatchNorm statistics (``equivalence.randomize``); the weight of the last
    BatchNorm of every residual branch is then scaled by ``branch_scale``.

    The scaling (``zero_init_residual`` with a small value instead of 0) keeps the train-mode
    comparison well conditioned: with batch statistics over a few samples, a deep random network is
    chaotic (in the official KW-ResNet-50 at unit scale, a 1e-14 relative change of the input moves
    the logits by 1e-1), so two correct implementations would differ by the amplified rounding.
    """
    from torch_models import equivalence
    equivalence.randomize(module, seed)
    with torch.no_grad():
        for norm in last_branch_norms(module):
            norm.weight.mul_(branch_scale)


def last_branch_norms(module):
    """The BatchNorm closing each residual branch: ``bn3`` (Bottleneck), ``bn2`` (BasicBlock), the
    octave ``conv3.bn_h`` / ``conv3.bn_l``."""
    for name, block in module.named_modules():
        if hasattr(block, 'downsample') and hasattr(block, 'conv1'):
            if hasattr(block, 'bn3') or hasattr(block, 'bn2'):
                yield getattr(block, 'bn3', None) or block.bn2
            else:
                yield from (bn for bn in (block.conv3.bn_h, block.conv3.bn_l) if bn is not None)


def transfer(torch, module, model, tmp_path):
    """``module``'s state_dict saved by torch (zip, and legacy inside a training checkpoint), read back
    by numpyconv from both files, loaded into ``model``."""
    from torch_models import equivalence
    equivalence.load_through_files(model, module, tmp_path, legacy=False)
    equivalence.load_through_files(model, module, tmp_path, legacy=True, wrap='state_dict')


def same_masks(torch, module, model, n, seed):
    """The same random keep masks for every dropout / drop-path layer of both networks."""
    rng = np.random.default_rng(seed)
    torch_modules = dict(module.named_modules())
    masks = {}
    for name, layer in model.named_modules():
        p = getattr(layer, 'p', getattr(layer, 'drop_prob', 0))
        if hasattr(type(layer), 'mask') and p > 0:
            shape = (n, model._modules['fc'].in_features) if name == 'dropout.' else (n, 1, 1, 1)
            masks[name[:-1]] = rng.random(shape) >= p
            torch_modules[name[:-1]].mask = torch.from_numpy(masks[name[:-1]].astype(np.float64))
    set_masks(model, masks)
    return masks


def compare(torch, module, model, x, seed):
    """Logits, input gradient, every parameter gradient and the state afterwards (running statistics)."""
    from torch_models import equivalence
    equivalence.assert_same_pass(model, module, x, seed=seed, tol=RTOL)


# builder -> (builder and official keyword arguments, input size)
CASES = {
    'resnet18': ({}, 32),
    'resnet50': ({}, 32),
    'od_resnet18': (dict(kernel_num=4, dropout=0.2), 32),
    'od_resnet50': ({}, 32),
    'kw_resnet18': (dict(drop_path_rate=0.2), 32),
    'kw_resnet50': (dict(cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5,
                         nonlocal_basis_ratio=0.0625, drop_path_rate=0.1), 32),
    'dy_resnet18': ({}, 32),
    'oct_resnet26': ({}, 64),
    'oct_resnet50': ({}, 64),
    'rednet26': ({}, 32),
    'rednet38': ({}, 32),
    'rednet50': ({}, 32),
    'resnet50_dcnv2': ({}, 32),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_matches_official_network(torch, tmp_path, name):
    kwargs, size = CASES[name]
    module = official(name, **kwargs)
    randomise(torch, module, seed=len(name))
    model = getattr(models, name)(num_classes=5, dtype=np.float64, rng=0, **kwargs)
    transfer(torch, module, model, tmp_path)
    x = np.random.default_rng(1).standard_normal((4, 3, size, size))
    compare(torch, module.eval(), model.eval(), x, seed=2)
    module.train()
    model.train()
    masks = same_masks(torch, module, model, 4, seed=3)
    assert bool(masks) == name.startswith(('od_', 'kw_'))
    compare(torch, module, model, x, seed=4)


@pytest.mark.parametrize('name', sorted(CASES))
def test_official_network_saved_whole(torch, tmp_path, name):
    from torch_models import equivalence
    kwargs, size = CASES[name]
    module = official(name, **kwargs)
    randomise(torch, module, seed=len(name) + 1)
    model = getattr(models, name)(num_classes=5, dtype=np.float64, rng=0, **kwargs)
    for legacy in (False, True):
        equivalence.load_whole(model, module, tmp_path, legacy)
    x = np.random.default_rng(1).standard_normal((2, 3, size, size))
    compare(torch, module.eval(), model.eval(), x, seed=2)


def set_official_temperature(module, temperature):
    """The official attributes: KernelWarehouse ``attention.temp_value``, ODConv / DY-CNN ``temperature``."""
    for m in module.modules():
        if hasattr(m, 'init_attention'):
            m.attention.temp_value = temperature
        elif hasattr(m, 'temperature'):
            m.temperature = temperature


@pytest.mark.parametrize('name, kwargs, temperature', [
    ('kw_resnet18', dict(dropout=0.0), 0.375),       # exact in float32, where the official temp_bias stays
    ('od_resnet18', dict(dropout=0.0, kernel_num=2), 4.0),
    ('dy_resnet18', {}, 1)])
def test_temperatures_match_official(torch, tmp_path, name, kwargs, temperature):
    module = official(name, **kwargs)
    randomise(torch, module, seed=5)
    model = getattr(models, name)(num_classes=5, dtype=np.float64, rng=0, **kwargs)
    transfer(torch, module, model, tmp_path)
    set_official_temperature(module, temperature)
    if name == 'dy_resnet18':
        for _ in range(11):                                  # the official schedule: 34 - 3 * 11 = 1
            model.update_temperature()
    else:
        model.net_update_temperature(temperature)
    x = np.random.default_rng(6).standard_normal((4, 3, 32, 32))
    compare(torch, module.train(), model.train(), x, seed=7)


def test_dcn_backbone_from_a_detector_checkpoint(torch, tmp_path):
    """``include_top=False`` loads a detector's ``backbone.`` keys (``state_dict_of(prefix=)``) and
    returns the last stage; ``norm_eval`` keeps every BatchNorm in eval mode inside ``train()``."""
    module = official('resnet50_dcnv2', include_top=False)
    randomise(torch, module, seed=8)
    state = {f'backbone.{k}': v for k, v in module.state_dict().items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.zeros(3, 3)
    torch.save({'meta': {'epoch': 12}, 'state_dict': state}, tmp_path / 'detector.pth')
    model = models.resnet50_dcnv2(include_top=False, norm_eval=True, dtype=np.float64, rng=0)
    model.load_state_dict(nc.state_dict_of(nc.load_checkpoint(tmp_path / 'detector.pth'), prefix='backbone.'))
    model.train()
    module.train()
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = np.random.default_rng(9).standard_normal((2, 3, 64, 64))
    compare(torch, module, model, x, seed=10)
    assert model(x).shape == (2, 2048, 2, 2)
