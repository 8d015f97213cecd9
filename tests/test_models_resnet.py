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
from numpyconv.models._common import set_masks

RTOL = 1e-9


def rel_err(a, b):
    """``max|a - b| / max|b|`` (0 for two all-zero arrays)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    scale = np.abs(b).max(initial=0.0)
    err = np.abs(a - b).max(initial=0.0)
    return err / scale if scale else err


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
    """Random weights (scaled by each weight's fan-in) and random BatchNorm affine and statistics; the
    weight of the last BatchNorm of every residual branch is scaled by ``branch_scale``.

    The scaling (``zero_init_residual`` with a small value instead of 0) keeps the train-mode
    comparison well conditioned: with batch statistics over a few samples, a deep random network is
    chaotic (in the official KW-ResNet-50 at unit scale, a 1e-14 relative change of the input moves
    the logits by 1e-1), so two correct implementations would differ by the amplified rounding.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    normed = {id(p) for m in norms for p in m.parameters()}
    with torch.no_grad():
        for p in module.parameters():
            if id(p) in normed:
                continue
            fan = int(np.prod(p.shape[-3:] if p.ndim == 5 else p.shape[1:])) if p.ndim > 1 else 100
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / np.sqrt(fan))
        for m in norms:
            c = m.num_features
            m.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen, dtype=m.weight.dtype))
            m.bias.copy_(0.2 * torch.randn(c, generator=gen, dtype=m.bias.dtype))
            m.running_mean.copy_(0.2 * torch.randn(c, generator=gen, dtype=m.running_mean.dtype))
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen, dtype=m.running_var.dtype))
            m.num_batches_tracked.fill_(7)
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
    state = module.state_dict()
    torch.save(state, tmp_path / 'zip.pth')
    torch.save({'epoch': 3, 'state_dict': state}, tmp_path / 'legacy.pth',
               _use_new_zipfile_serialization=False)
    from_zip = nc.state_dict_of(nc.load_checkpoint(tmp_path / 'zip.pth'))
    from_legacy = nc.state_dict_of(nc.load_checkpoint(tmp_path / 'legacy.pth'))
    assert list(from_zip) == list(from_legacy) == list(state) == list(model.state_dict())
    for key in state:
        np.testing.assert_array_equal(from_zip[key], from_legacy[key])
    model.load_state_dict(from_legacy)


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
    rng = np.random.default_rng(seed)
    module.zero_grad(set_to_none=True)
    tx = torch.tensor(x, requires_grad=True)
    ty = module(tx)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.from_numpy(dy))
    model.zero_grad()
    y = model(x)
    assert rel_err(y, ty.detach().numpy()) < RTOL
    assert rel_err(model.backward(dy), tx.grad.numpy()) < RTOL
    grads = model.grads
    torch_grads = {k: p.grad for k, p in module.named_parameters()}
    assert set(grads) == set(torch_grads)
    for key, grad in torch_grads.items():
        expected = np.zeros(grads[key].shape) if grad is None else grad.numpy()
        assert rel_err(grads[key], expected) < RTOL, key
    state = model.state_dict()
    for key, value in module.state_dict().items():
        assert rel_err(state[key], value.numpy()) < RTOL, key


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
