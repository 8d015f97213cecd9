"""numpyconv.models: InternImage-T (DCNv3) and FlashInternImage-T (DCNv4), and the channels-last mode
of the DCNv3 / DCNv4 layers.

Against PyTorch re-creations of the official definitions on their pure-PyTorch cores
(tests/torch_models/intern_image.py), loaded through checkpoint files; published counts; gradcheck
of reduced networks.
"""
import numpy as np
import pytest

import numpyconv as nc
from numpyconv.models import flash_internimage_t, internimage_t
from numpyconv.models.intern_image import InternImageLayer, linear_drop_path_rates

RNG = np.random.default_rng(23)

# documented test-size configuration: the official constructor arguments that shrink the network
SMALL = dict(num_classes=10, channels=16, depths=(1, 1, 2, 1), groups=(1, 2, 4, 8), drop_path_rate=0.3)
BUILDERS = {'internimage_t': internimage_t, 'flash_internimage_t': flash_internimage_t}


def torch_models():
    torch = pytest.importorskip('torch')
    from torch_models import equivalence, intern_image
    return torch, intern_image, equivalence


def official(name, tm, **kwargs):
    """The re-created official network as ``build.py`` builds it from the T config (+ kwargs)."""
    config = dict(channels=64, depths=[4, 4, 18, 4], groups=[4, 8, 16, 32], offset_scale=1.0, mlp_ratio=4.0,
                  drop_path_rate=0.1, layer_scale=None, post_norm=False)
    config.update({k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})
    if name == 'internimage_t':
        return tm.InternImage(core_op='DCNv3_pytorch', **config)
    return tm.FlashInternImage(core_op='DCNv4', mlp_fc2_bias=False, dcn_output_bias=False,
                               dw_kernel_size=None, **config)


def build_pair(tmp_path, name, kwargs, legacy=False, seed=0, scale=1.0):
    torch, tm, eq = torch_models()
    torch.manual_seed(seed)
    theirs = official(name, tm, **kwargs).double()
    eq.randomize(theirs, seed, scale)
    ours = BUILDERS[name](**kwargs, dtype=np.float64, rng=seed)
    eq.load_through_files(ours, theirs, tmp_path, legacy, wrap='model')
    return ours, theirs


def same_drop_path(ours, theirs, tm, batch, rng):
    """The same keep masks on both sides, and PyTorch's float32 drop probabilities on ours (they
    agree within one float32 ulp: see test_drop_path_rates_follow_torch_linspace)."""
    layers = [m for _, m in ours.named_modules() if isinstance(m, InternImageLayer)]
    masks = []
    for layer, module in zip(layers, tm.drop_path_modules(theirs)):
        pair = rng.random((2, batch, 1, 1, 1)) < 0.6
        masks.append(tuple(pair))
        if module is not None:
            assert abs(layer.drop_path.drop_prob - module.drop_prob) <= 1e-8
            layer.drop_path.drop_prob = module.drop_prob
            module.masks = [tm.torch.tensor(m.reshape(batch)) for m in pair]
    ours.set_drop_path_masks(masks)


# -- against the official networks ---------------------------------------------------------------------------
@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_saved_whole_loads_unchanged(tmp_path, name):
    """``torch.save(model)`` (zip; legacy inside ``{'model': ...}``) read without the classes."""
    torch, tm, eq = torch_models()
    torch.manual_seed(2)
    theirs = official(name, tm, **SMALL).double()
    eq.randomize(theirs, 2)
    ours = BUILDERS[name](**SMALL, dtype=np.float64, rng=2)
    for legacy in (False, True):
        eq.load_whole(ours, theirs, tmp_path, legacy)
    ours.eval(), theirs.eval()
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 3, 32, 32)))


@pytest.mark.parametrize('name', sorted(BUILDERS))
@pytest.mark.parametrize('legacy', [False, True])
def test_matches_official_recreation_eval(tmp_path, name, legacy):
    _, _, eq = torch_models()
    ours, theirs = build_pair(tmp_path, name, SMALL, legacy)
    ours.eval(), theirs.eval()
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 3, 32, 32)))


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_matches_official_recreation_train_with_drop_path_masks(tmp_path, name):
    """Train mode: stochastic depth with the same keep masks (per block and branch), BatchNorm batch
    statistics in the head (2x2 maps), dropout at zero (the T config's)."""
    _, tm, eq = torch_models()
    ours, theirs = build_pair(tmp_path, name, SMALL)
    ours.train(), theirs.train()
    same_drop_path(ours, theirs, tm, 2, np.random.default_rng(4))
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 3, 64, 64)))
    assert all(not m.masks for m in tm.drop_path_modules(theirs) if m is not None)      # all consumed


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_matches_official_recreation_post_norm_layer_scale(tmp_path, name):
    """The InternImage-L/XL options: post_norm, layer_scale (gamma1, gamma2 first in each block's
    keys), no level norm; uniform drop path, cls_scale 2, offset_scale 2."""
    _, _, eq = torch_models()
    kwargs = dict(SMALL, post_norm=True, layer_scale=1e-5, cls_scale=2.0, offset_scale=2.0,
                  drop_path_type='uniform')
    ours, theirs = build_pair(tmp_path, name, kwargs)
    assert list(ours.state_dict())[2:4] == ['patch_embed.norm1.1.weight', 'patch_embed.norm1.1.bias']
    assert 'levels.0.norm.0.weight' not in ours.state_dict()
    assert list(ours.state_dict())[6 + 2:6 + 4] == ['levels.0.blocks.0.gamma1', 'levels.0.blocks.0.gamma2']
    ours.eval(), theirs.eval()
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 3, 32, 32)))


def test_internimage_center_feature_scale_and_dw_kernel(tmp_path):
    _, _, eq = torch_models()
    kwargs = dict(SMALL, center_feature_scale=True, dw_kernel_size=5, post_norm=True)
    ours, theirs = build_pair(tmp_path, 'internimage_t', kwargs)
    assert 'levels.0.norm.0.weight' in ours.state_dict()          # kept by center_feature_scale
    ours.eval(), theirs.eval()
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 3, 32, 32)))


def test_internimage_build_py_arguments_and_remove_center():
    """build.py passes level2_post_norm_block_ids and remove_center; remove_center reaches every
    DCNv3 (8 points per group: offset rows group*8*2)."""
    model = internimage_t(**SMALL, level2_post_norm_block_ids=None, remove_center=True, dtype=np.float64,
                          rng=0)
    dcns = [m for _, m in model.named_modules() if isinstance(m, nc.DCNv3)]
    assert len(dcns) == sum(SMALL['depths']) and all(d.remove_center for d in dcns)
    assert model.state_dict()['levels.0.blocks.0.dcn.offset.weight'].shape == (1 * 8 * 2, 16)
    assert model.eval()(RNG.standard_normal((1, 3, 32, 32))).shape == (1, 10)
    flash_internimage_t(**SMALL, level2_post_norm_block_ids=None, rng=0)      # build.py passes it too
    plain = internimage_t(**SMALL, dtype=np.float64, rng=0)
    assert plain.state_dict()['levels.0.blocks.0.dcn.offset.weight'].shape == (1 * 9 * 2, 16)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_full_size_matches_official_recreation(tmp_path, name):
    """Weights at half the fan-in scale: 30 residual blocks of random weights (DCNv4's mask without
    softmax) amplify gradients to 1e6 at full scale, and their rounding with them."""
    _, _, eq = torch_models()
    ours, theirs = build_pair(tmp_path, name, {}, scale=0.5)
    ours.eval(), theirs.eval()
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((1, 3, 224, 224)))


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_t_config_keys_and_shapes_equal_official(name):
    """The builders' defaults are the T configs: every key, in order, with the official shapes."""
    _, tm, _ = torch_models()
    theirs = {k: tuple(v.shape) for k, v in official(name, tm).state_dict().items()}
    ours = {k: v.shape for k, v in BUILDERS[name](rng=0).state_dict().items()}
    assert list(ours) == list(theirs) and ours == theirs


def test_t_config_defaults():
    model = internimage_t(rng=0)
    layers = [m for _, m in model.named_modules() if isinstance(m, InternImageLayer)]
    assert len(layers) == 30 and layers[0].dcn.group == 4 and layers[-1].dcn.group == 32
    assert layers[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert isinstance(layers[0].drop_path, nc.Identity)                   # rate 0: an Identity, as official
    assert layers[0].dcn.offset_scale == 1.0 and layers[0].dcn.channels_last
    assert model.conv_head[0].out_channels == 768 and model.head.params['weight'].shape == (1000, 768)
    flash = flash_internimage_t(rng=0)
    assert 'levels.0.blocks.0.mlp.fc2.bias' not in flash.state_dict()
    assert 'levels.0.blocks.0.dcn.output_proj.bias' not in flash.state_dict()
    assert 'levels.0.blocks.0.mlp.fc2.bias' in internimage_t(**SMALL, rng=0).state_dict()
    flash_layer = next(m for _, m in flash.named_modules() if isinstance(m, InternImageLayer))
    assert flash_layer.dcn.offset_scale == 1.0 and flash_layer.dcn.dw_kernel_size is None


def test_drop_path_rates_follow_torch_linspace():
    torch = pytest.importorskip('torch')
    for rate, total in ((0.1, 30), (0.3, 5), (0.2, 26), (0.5, 39), (0.4, 1)):
        theirs = [x.item() for x in torch.linspace(0, rate, total)]
        ours = linear_drop_path_rates(rate, total)
        ulp = np.spacing(np.float32(rate))
        assert all(abs(a - b) <= ulp for a, b in zip(ours, theirs))
        assert all(np.float32(a) == a for a in ours)                     # float32 values
    assert linear_drop_path_rates(0.1, 30) == [x.item() for x in torch.linspace(0, 0.1, 30)]


# -- published counts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_t_counts_match_published(name):
    """OpenGVLab/InternImage README ("ImageNet-1K and ImageNet-22K Pretrained InternImage Models"):
    InternImage-T 30M #params, 5G FLOPs at 224x224. OpenGVLab/DCNv4 README ("Released Models",
    ImageNet classification): FlashInternImage-T 30M #param; it publishes no FLOPs, and 5G is the
    issue's figure (the same architecture with DCNv4's core). FLOPs there are multiply-adds (the
    DCN core counted as 5 per channel and sampling point, InternImage's get_flops.py).
    numpyconv: 29.92M / 4.89G and 29.82M / 4.87G."""
    params, macs = nc.count(BUILDERS[name](rng=0), (1, 3, 224, 224))
    assert round(params / 1e6) == 30 and round(macs / 1e9) == 5


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_t_parameter_count_equals_official_recreation(name):
    _, tm, _ = torch_models()
    params, _ = nc.count(BUILDERS[name](rng=0), (1, 3, 224, 224))
    assert params == sum(p.numel() for p in official(name, tm).parameters())


# -- gradient checks on reduced networks -----------------------------------------------------------------
TINY = dict(num_classes=5, channels=8, depths=(1, 1, 1, 1), groups=(1, 2, 2, 4), drop_path_rate=0.2)


def randomize(model, rng):
    """Random parameters (the official init zeroes the offsets: every sampling point on a pixel,
    a kink of the bilinear interpolation) and BatchNorm statistics."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith('running_var'):
            state[key] = rng.uniform(0.5, 1.5, value.shape)
        elif value.dtype.kind == 'f':
            scale = 1.0 if value.ndim <= 1 else 1 / np.sqrt(np.prod(value.shape[1:]))
            state[key] = scale * rng.standard_normal(value.shape)
    model.load_state_dict(state, strict=False)


@pytest.mark.parametrize('name, training', [('flash_internimage_t', False), ('internimage_t', True)])
def test_gradcheck_reduced_networks(name, training):
    """Input and every parameter gradient; train mode with drop-path masks (one sample's branch
    dropped) and the head's batch statistics. One mode per builder (the blocks' residual and drop-path
    code is shared; the DCN layers are checked in both layouts in test_channels_last_equals_nchw_mode)."""
    model = BUILDERS[name](**TINY, dtype=np.float64, rng=1)
    randomize(model, np.random.default_rng(2))
    model.train(training)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 64, 64)) + rng.standard_normal((2, 3, 1, 1))
    if training:
        model.set_drop_path_masks([(np.array([True, False]).reshape(2, 1, 1, 1),
                                    np.ones((2, 1, 1, 1), bool))] * 4)
    report = nc.gradcheck_layer(model, x, n_directions=2)
    flagged = sum(len(r.nondifferentiable) for r in report.results)
    assert flagged <= sum(r.n_checked for r in report.results) // 10


def test_drop_path_draws_from_rng_and_masks_override():
    model = internimage_t(**TINY, dtype=np.float64, rng=5).train()
    x = RNG.standard_normal((4, 3, 32, 32))
    assert not np.allclose(model(x), model(x), rtol=1e-6, atol=0)           # new draws each pass
    masks = [tuple(RNG.random((2, 4, 1, 1, 1)) < 0.5) for _ in range(4)]
    model.set_drop_path_masks(masks)
    y = model(x)
    np.testing.assert_array_equal(model(x), y)                            # the given masks, again
    dropped = [m for _, m in model.named_modules() if isinstance(m, InternImageLayer)][1]
    np.testing.assert_array_equal(dropped._branch_cache['drop0']['keep'], masks[1][0])
    model.set_drop_path_masks(None)
    assert not np.allclose(model(x), y, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match='one pair per block'):
        model.set_drop_path_masks(masks[:2])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match='core_op'):
        internimage_t(core_op='DCNv4')
    with pytest.raises(ValueError, match='core_op'):
        flash_internimage_t(core_op='DCNv3')
    with pytest.raises(ValueError, match='groups'):
        internimage_t(channels=8, groups=(3, 2, 2, 2), depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match='depths and groups'):
        internimage_t(depths=(1, 1, 1), groups=(1, 2, 4, 8))
    with pytest.raises(ValueError, match='act_layer'):
        internimage_t(act_layer='ReLU')
    with pytest.raises(ValueError, match='use_clip_projector'):
        internimage_t(use_clip_projector=True)
    with pytest.raises(ValueError, match='drop_path_type'):
        flash_internimage_t(drop_path_type='cosine')
    model = internimage_t(**TINY, rng=0)
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        model(np.zeros((1, 4, 32, 32), np.float32))


def test_float32_and_no_head():
    model = flash_internimage_t(**dict(TINY, num_classes=0), rng=0).eval()
    x = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = model(x)
    assert y.shape == (2, 96) and y.dtype == np.float32                  # 1.5 * 8 * 8 features
    assert model.backward(np.ones_like(y)).dtype == np.float32
    assert nc.count(model, (2, 3, 32, 32))[1] > 0


# -- the channels-last mode of the DCN layers ---------------------------------------------------------------
def random_dcn(cls, channels_last, **kwargs):
    layer = cls(channels=8, group=2, channels_last=channels_last, dtype=np.float64, rng=0, **kwargs)
    rng = np.random.default_rng(1)
    layer.load_state_dict({k: 0.5 * rng.standard_normal(v.shape) for k, v in layer.state_dict().items()})
    return layer


@pytest.mark.parametrize('cls, kwargs', [
    (nc.DCNv3, dict()), (nc.DCNv3, dict(center_feature_scale=True, dw_kernel_size=5)),
    (nc.DCNv4, dict()), (nc.DCNv4, dict(dw_kernel_size=3, center_feature_scale=True, output_bias=False)),
    (nc.DCNv4, dict(without_pointwise=True))])
def test_channels_last_equals_nchw_mode(cls, kwargs):
    first, last = random_dcn(cls, False, **kwargs), random_dcn(cls, True, **kwargs)
    assert list(first.state_dict()) == list(last.state_dict())
    x = RNG.standard_normal((2, 8, 5, 6))
    y_first, y_last = first(x), last(x.transpose(0, 2, 3, 1))
    assert y_last.shape == (2, 5, 6, 8)
    np.testing.assert_allclose(y_last, y_first.transpose(0, 2, 3, 1), rtol=1e-13, atol=1e-13)
    dout = RNG.standard_normal(y_first.shape)
    dx_first, dx_last = first.backward(dout), last.backward(np.ascontiguousarray(dout.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(dx_last, dx_first.transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-13)
    for key, grad in first.grads.items():       # the two layouts sum in different orders: rounding
        np.testing.assert_allclose(last.grads[key], grad, rtol=1e-12, atol=1e-12 * np.abs(grad).max(),
                                   err_msg=key)
    assert nc.count(last, (2, 5, 6, 8)) == nc.count(first, (2, 8, 5, 6))
    assert last.macs((2, 5, 6, 8))[1] == (2, 5, 6, 8)
    nc.gradcheck_layer(last, x.transpose(0, 2, 3, 1))


@pytest.mark.parametrize('cls', [nc.DCNv3, nc.DCNv4])
def test_channels_last_errors(cls):
    layer = cls(channels=8, group=2, channels_last=True)
    with pytest.raises(ValueError, match=r'\(N, H, W, 8\)'):
        layer(np.zeros((1, 8, 4, 4), np.float32))
    with pytest.raises(TypeError, match='dtype'):
        layer(np.zeros((1, 4, 4, 8)))
    y = layer(np.zeros((1, 4, 5, 8), np.float32))
    with pytest.raises(ValueError, match=r'dout must have shape \(1, 4, 5, 8\)'):
        layer.backward(np.zeros((1, 8, 4, 5), np.float32))
    assert y.dtype == np.float32
    with pytest.raises(ValueError, match=r'\(N, H, W, 8\)'):
        layer.macs((1, 8, 4, 4))


def test_channels_last_matches_official_module_layout(tmp_path):
    """The official DCNv3_pytorch takes NHWC and DCNv4 takes (N, H*W, C): the channels-last layers
    give the same values on the same arrays."""
    torch, tm, eq = torch_models()
    def tokens(module, x):                              # DCNv4: (N, H*W, C) and the shape
        return module(x.reshape(2, 30, 16), (5, 6)).reshape(2, 5, 6, 16)
    for official_cls, ours_cls, call in ((tm.DCNv3_pytorch, nc.DCNv3, None), (tm.DCNv4, nc.DCNv4, tokens)):
        torch.manual_seed(0)
        theirs = official_cls(channels=16, group=2).double()
        eq.randomize(theirs, 0)
        ours = ours_cls(channels=16, group=2, channels_last=True, dtype=np.float64)
        ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
        eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 5, 6, 16)), call=call)


@pytest.mark.parametrize('drop, training', [(0.0, True), (0.0, False), (0.4, False)])
def test_mlp_dropout_that_drops_nothing_is_the_identity(drop, training):
    from numpyconv.models.intern_image import MLPLayer
    mlp = MLPLayer(6, 12, drop=drop, dtype=np.float64, rng=1).train(training)
    x, dout = RNG.standard_normal((2, 3, 3, 6)), RNG.standard_normal((2, 3, 3, 6))
    y = mlp(x)
    h = nc.gelu_forward(x @ mlp.fc1.params['weight'].T + mlp.fc1.params['bias'])[0]
    np.testing.assert_array_equal(y, h @ mlp.fc2.params['weight'].T + mlp.fc2.params['bias'])
    dx = mlp.backward(dout)
    expected = mlp.fc1.backward(mlp.act.backward(mlp.fc2.backward(dout)))    # the same layers, no dropout
    np.testing.assert_array_equal(dx, expected)


def test_eval_drop_path_is_the_identity_without_a_copy():
    x, dout = RNG.standard_normal((2, 4, 4, 8)), RNG.standard_normal((2, 4, 4, 8))
    layers = [InternImageLayer(8, 2, drop_path=p, dtype=np.float64, rng=3).eval() for p in (0.5, 0.0)]
    y, y0 = (layer(x) for layer in layers)
    np.testing.assert_array_equal(y, y0)
    dx, dx0 = (layer.backward(dout) for layer in layers)
    np.testing.assert_array_equal(dx, dx0)
    assert layers[0]._branch_cache == {'drop0': None, 'drop1': None}     # nothing drawn, nothing copied


@pytest.mark.parametrize('kind, p, training, keep', [
    ('dropout', 0.3, False, None), ('dropout', 0.0, True, None), ('dropout', 0.3, True, 'mask'),
    ('drop_path', 0.5, False, None), ('drop_path', 0.0, True, None), ('drop_path', 0.5, True, 'mask')])
def test_masking_pair_gradcheck(kind, p, training, keep):
    """_masking and _masking_backward as an op pair (float64): the identity in eval mode or at p = 0,
    the dropout / drop-path op with an injected mask otherwise."""
    from numpyconv.gradcheck import gradcheck
    from numpyconv.models.intern_image import _masking, _masking_backward
    x = RNG.standard_normal((3, 2, 2, 4))
    if kind == 'dropout':
        ops, args, shape = (nc.dropout_forward, nc.dropout_backward), (None,), x.shape
    else:
        ops, args, shape = (nc.drop_path_forward, nc.drop_path_backward), (True, None), (3,) + (1,) * 3
    mask = None
    if keep:                                                               # sample 1 dropped (and more)
        mask = (np.arange(int(np.prod(shape))) % 3 != 1).reshape(shape)
    y, cache = _masking(ops[0], x, p, training, *args, mask=mask)
    if cache is None:
        assert y is x and _masking_backward(ops[1], x, None) is x        # the identity, no copy
    gradcheck(lambda x: _masking(ops[0], x, p, training, *args, mask=mask),
              lambda dy, cache: (_masking_backward(ops[1], dy, cache),), (x,))
