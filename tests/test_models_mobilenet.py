"""numpyconv.models: OD-MobileNetV2 and CondConv-MobileNetV2, and CondConv's shared routing.

Against PyTorch re-creations of the official definitions (tests/torch_models/mobilenetv2.py), loaded
through checkpoint files; published counts; gradcheck of reduced networks; the routing pair.
"""
import os

import numpy as np
import pytest

import numpyconv as nc
from numpyconv import condconv as cc
from numpyconv.models import cond_mobilenetv2, od_mobilenetv2
from numpyconv.models.mobilenetv2 import _make_divisible
from numpyconv.reference import condconv as ref

RNG = np.random.default_rng(11)

# documented test-size configuration: the official arguments that shrink the network
OD_SMALL = dict(num_classes=10, width_mult=0.5, round_nearest=8,
                inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 1, 2]])
COND_SMALL = dict(num_classes=10, width_mult=0.25, num_experts=2)


def torch_models():
    torch = pytest.importorskip('torch')
    from torch_models import equivalence, mobilenetv2
    return torch, mobilenetv2, equivalence


def build_pair(tmp_path, ours_builder, theirs_class, kwargs, legacy=False, seed=0):
    """A random official network and numpyconv's builder loaded from its checkpoint file (float64)."""
    torch, _, eq = torch_models()
    torch.manual_seed(seed)
    theirs = theirs_class(**kwargs).double()
    eq.randomize(theirs, seed)
    ours = ours_builder(**kwargs, dtype=np.float64, rng=seed)
    eq.load_through_files(ours, theirs, tmp_path, legacy, wrap=None if legacy else 'state_dict')
    return ours, theirs


# -- OD-MobileNetV2 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('kernel_num, legacy', [(1, False), (4, True)])
@pytest.mark.parametrize('training', [False, True])
def test_od_mobilenetv2_matches_official_recreation(tmp_path, kernel_num, legacy, training):
    """Eval, and train mode with dropout 0 (BatchNorm batch statistics, also in every ODConv
    attention; running statistics updated alike)."""
    _, tm, eq = torch_models()
    kwargs = dict(OD_SMALL, kernel_num=kernel_num, dropout=0.0 if training else 0.2)
    ours, theirs = build_pair(tmp_path, od_mobilenetv2, tm.OD_MobileNetV2, kwargs, legacy)
    ours.train(training), theirs.train(training)
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 3, 32, 32)))


def test_od_mobilenetv2_temperature_matches_official(tmp_path):
    _, tm, eq = torch_models()
    ours, theirs = build_pair(tmp_path, od_mobilenetv2, tm.OD_MobileNetV2, dict(OD_SMALL, kernel_num=4))
    ours.eval().net_update_temperature(7.0), theirs.eval().net_update_temperature(7.0)
    assert all(m.temperature == 7.0 for _, m in ours.named_modules() if isinstance(m, nc.ODConv2d))
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 3, 32, 32)))


@pytest.mark.slow
@pytest.mark.parametrize('kernel_num', [1, 4])
def test_od_mobilenetv2_full_size_matches_official_recreation(tmp_path, kernel_num):
    _, tm, eq = torch_models()
    ours, theirs = build_pair(tmp_path, od_mobilenetv2, tm.OD_MobileNetV2, dict(kernel_num=kernel_num))
    ours.eval(), theirs.eval()
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 3, 224, 224)))


def test_od_mobilenetv2_defaults_and_keys():
    """The official function's defaults: 1000 classes, width 1.0, dropout 0.2, 1 kernel, r = 1/16."""
    model = od_mobilenetv2(rng=0)
    assert model.classifier[0].p == 0.2 and model.classifier[1].params['weight'].shape == (1000, 1280)
    keys = list(model.state_dict())
    assert keys[:2] == ['features.0.0.weight', 'features.0.1.weight']
    assert 'features.1.conv.0.0.attention.channel_fc.weight' in keys            # expand_ratio 1: no pw
    assert 'features.1.conv.0.0.attention.filter_fc.weight' not in keys         # depthwise: no filter
    assert 'features.2.conv.0.0.attention.spatial_fc.weight' not in keys        # 1x1: no spatial
    assert 'features.2.conv.1.0.attention.spatial_fc.weight' in keys
    assert not any('kernel_fc' in k for k in keys)                              # kernel_num 1
    assert keys[-2:] == ['classifier.1.weight', 'classifier.1.bias']
    assert model.features[18][0].params['weight'].shape == (1, 1280, 320, 1, 1)
    assert np.abs(model.classifier[1].params['weight']).max() < 0.1              # N(0, 0.01) init


@pytest.mark.parametrize('kernel_num, width, published, readme_madds', [
    (1, 1.0, 4.94, 311.8), (1, 0.75, 3.51, 217.1), (1, 0.5, 2.43, 101.8),
    (4, 1.0, 11.51, 327.1), (4, 0.75, 7.50, 226.3), (4, 0.5, 4.44, 106.4)])
def test_od_mobilenetv2_params_match_readme(kernel_num, width, published, readme_madds):
    """OSVAI/ODConv README, "Results comparison ... MobileNetV2 (1.0x, 0.75x, 0.5x)", r = 1/16:
    MobileNetV2 + ODConv (1x) 4.94M / 3.51M / 2.43M, (4x) 11.51M / 7.50M / 4.44M parameters:
    matched to the two published decimals.

    The README's MAdds (311.8M, 217.1M, 101.8M / 327.1M, 226.3M, 106.4M) come from a counting tool
    it does not name; numpyconv counts ODConv by docs/derivations/odconv.md eq. 27 (convolution,
    attention, kernel aggregation, attention scalings): 312.8M, 219.4M, 103.4M / 321.5M, 224.6M,
    106.0M, within 2% of the README's (code and README disagree: both recorded here).
    """
    params, madds = nc.count(od_mobilenetv2(kernel_num=kernel_num, width_mult=width, rng=0),
                             (1, 3, 224, 224))
    assert round(params / 1e6, 2) == published
    assert abs(madds / 1e6 - readme_madds) / readme_madds < 0.02


def test_make_divisible_rounding():
    assert [_make_divisible(c * 0.5, 8) for c in (32, 16, 24, 96, 160, 320)] == [16, 8, 16, 48, 80, 160]
    assert _make_divisible(12, 8) == 16 and _make_divisible(20, 8) == 24     # halves round up
    assert _make_divisible(9, 8) == 16                                         # never 10% below
    assert _make_divisible(1280 * 1.3, 8) == 1664


@pytest.mark.parametrize('builder, name, kwargs', [
    (od_mobilenetv2, 'OD_MobileNetV2', dict(OD_SMALL, kernel_num=4)),
    (cond_mobilenetv2, 'CondMobileNetV2', COND_SMALL)])
def test_mobilenets_saved_whole_load_unchanged(tmp_path, builder, name, kwargs):
    """``torch.save(model)`` (zip; legacy inside ``{'model': ...}``) read without the classes."""
    torch, tm, eq = torch_models()
    torch.manual_seed(1)
    theirs = getattr(tm, name)(**kwargs).double()
    eq.randomize(theirs, 1)
    ours = builder(**kwargs, dtype=np.float64, rng=1)
    for legacy in (False, True):
        eq.load_whole(ours, theirs, tmp_path, legacy)
    ours.eval(), theirs.eval()
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 3, 32, 32)))


# -- CondConv-MobileNetV2 ----------------------------------------------------------------------------
@pytest.mark.parametrize('legacy', [False, True])
@pytest.mark.parametrize('training', [False, True])
def test_cond_mobilenetv2_matches_official_recreation(tmp_path, legacy, training):
    """The routing of each CondConv block feeds its three convolutions; train mode: BatchNorm batch
    statistics (no dropout in this network)."""
    _, tm, eq = torch_models()
    ours, theirs = build_pair(tmp_path, cond_mobilenetv2, tm.CondMobileNetV2, COND_SMALL, legacy)
    ours.train(training), theirs.train(training)
    size = 64 if training else 32          # batch statistics over 2x2 maps in the last stage, not 1x1
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 3, size, size)))


@pytest.mark.slow
def test_cond_mobilenetv2_full_size_matches_official_recreation(tmp_path):
    _, tm, eq = torch_models()
    ours, theirs = build_pair(tmp_path, cond_mobilenetv2, tm.CondMobileNetV2, {})
    ours.eval(), theirs.eval()
    eq.assert_same_pass(ours, theirs, RNG.standard_normal((2, 3, 224, 224)))


def test_cond_mobilenetv2_batch_of_one_keeps_the_batch_axis(tmp_path):
    """The official ``x.squeeze_()`` returns ``(num_classes,)`` for one image; numpyconv keeps
    ``(1, num_classes)`` (same values)."""
    _, tm, eq = torch_models()
    ours, theirs = build_pair(tmp_path, cond_mobilenetv2, tm.CondMobileNetV2, COND_SMALL)
    ours.eval(), theirs.eval()
    x = RNG.standard_normal((1, 3, 32, 32))
    assert tuple(theirs(eq.torch.tensor(x)).shape) == (10,)
    eq.assert_same_pass(ours, theirs, x, view=lambda yt, y: yt.reshape(y.shape))


def test_cond_mobilenetv2_structure_and_keys():
    """CondConv in the last six blocks (``features.12`` on: the second 96-channel block), 8 experts,
    the 1280-channel head and the CondConv classifier with its own routing."""
    model = cond_mobilenetv2(rng=0)
    keys = list(model.state_dict())
    cond_blocks = sorted({int(k.split('.')[1]) for k in keys if k.endswith('route.fc.weight')
                          and k.startswith('features.')})
    assert cond_blocks == list(range(12, 18))
    assert model.features[12].pw.params['weight'].shape == (8, 576, 96, 1, 1)
    assert model.features[12].dw.params['weight'].shape == (8, 576, 1, 3, 3)
    assert model.features[11].pw.params['weight'].shape == (384, 64, 1, 1)       # plain Conv2d
    assert 'features.1.pw.weight' not in keys                                    # expand_ratio 1
    block = [k for k in keys if k.startswith('features.12.')]
    assert block[-2:] == ['features.12.route.fc.weight', 'features.12.route.fc.bias']
    assert keys[-3:] == ['classifier_route.fc.weight', 'classifier_route.fc.bias', 'classifier.weight']
    assert model.classifier.params['weight'].shape == (8, 1000, 1280, 1, 1)
    assert cond_mobilenetv2(width_mult=1.5, rng=0).conv[0].out_channels == 1920
    assert cond_mobilenetv2(width_mult=0.5, rng=0).conv[0].out_channels == 1280


def test_cond_mobilenetv2_count_matches_official_recreation():
    """d-li14/condconv.pytorch publishes no parameter or MAdd count (its README has none); the
    parameter count equals the re-created official network's, and the multiply-adds are the sum of
    condconv.md eq. 11 over the layers (routing once per block)."""
    torch, tm, _ = torch_models()
    model = cond_mobilenetv2(rng=0)
    params, madds = nc.count(model, (1, 3, 224, 224))
    assert params == sum(p.numel() for p in tm.CondMobileNetV2().parameters())
    plain, _ = nc.count(cond_mobilenetv2(num_experts=1, rng=0), (1, 3, 224, 224))
    assert params > plain
    assert madds > 300e6


# -- gradient checks on reduced networks (float64) ------------------------------------------------------
def randomize_batch_norms(model, rng):
    for key, value in model.state_dict().items():
        if key.endswith('running_var'):
            model.load_state_dict({key: rng.uniform(0.5, 1.5, value.shape)}, strict=False)
        elif key.endswith('running_mean'):
            model.load_state_dict({key: 0.1 * rng.standard_normal(value.shape)}, strict=False)


OD_TINY = dict(OD_SMALL, kernel_num=2, inverted_residual_setting=[[1, 8, 1, 1], [2, 8, 1, 2]])
# checked parameters of the fast tests: the stem, a block of each kind, the head (all in the slow ones)
FAST_WRT = {od_mobilenetv2: ('features.0.', 'features.2.', 'features.3.', 'classifier.'),
            cond_mobilenetv2: ('features.0.', 'features.11.', 'features.12.', 'conv.', 'classifier')}


def gradcheck_reduced(builder, kwargs, training, size, prefixes=None):
    """``gradcheck_layer`` on a float64 network with random BatchNorm statistics, dropout off.

    The images get per-sample channel offsets: train-mode BatchNorm (also inside every ODConv
    attention, on pooled features) normalises over the batch, and samples that differ little make
    it nearly a sign function, too curved for finite differences.
    """
    model = builder(**kwargs, dtype=np.float64, rng=3)
    randomize_batch_norms(model, np.random.default_rng(0))
    model.train(training)
    for _, m in model.named_modules():
        if isinstance(m, nc.Dropout):
            m.p = 0.0
    wrt = None if prefixes is None else ['x'] + [k for k in model.params if k.startswith(prefixes)]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, size, size)) + 2 * rng.standard_normal((2, 3, 1, 1))
    report = nc.gradcheck_layer(model, x, n_directions=2, wrt=wrt)
    flagged = sum(len(r.nondifferentiable) for r in report.results)
    assert flagged <= sum(r.n_checked for r in report.results) // 10


@pytest.mark.parametrize('builder, kwargs, training, size', [
    (od_mobilenetv2, OD_TINY, False, 16), (od_mobilenetv2, OD_TINY, True, 16),
    (cond_mobilenetv2, COND_SMALL, False, 32)])
def test_gradcheck_reduced_networks(builder, kwargs, training, size):
    """Input gradient and the parameters of the stem, one block of each kind and the head."""
    gradcheck_reduced(builder, kwargs, training, size, FAST_WRT[builder])


# cond_mobilenetv2 in train mode at 64x64: batch statistics over 2x2 maps in the last stage, not 1x1.
# Each takes over 20 s: run with NUMPYCONV_SLOW_TESTS=1 (the fast tests above check the stem, one block
# of each kind and the head; the PyTorch comparisons every parameter gradient).
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get('NUMPYCONV_SLOW_TESTS'), reason='over 20 s: NUMPYCONV_SLOW_TESTS=1')
@pytest.mark.parametrize('builder, kwargs, training, size, prefixes', [
    (od_mobilenetv2, OD_TINY, True, 16, None), (cond_mobilenetv2, COND_SMALL, False, 32, None),
    (cond_mobilenetv2, COND_SMALL, True, 64, FAST_WRT[cond_mobilenetv2])])
def test_gradcheck_reduced_networks_slow(builder, kwargs, training, size, prefixes):
    """Every parameter; CondConv-MobileNetV2 in train mode."""
    gradcheck_reduced(builder, kwargs, training, size, prefixes)


def test_dropout_is_active_in_train_mode_only():
    model = od_mobilenetv2(**OD_SMALL, dropout=0.5, dtype=np.float64, rng=1)
    x = RNG.standard_normal((4, 3, 16, 16))
    model.eval()
    y_eval = model(x)
    for _, m in model.named_modules():                       # BatchNorm in eval, dropout in train
        if isinstance(m, nc.Dropout):
            m.train()
    y_train = model(x)
    keep = model.classifier[0]._cache['keep']
    pooled = model.pool(model.features(x))
    head = model.classifier[1]
    np.testing.assert_allclose(y_train, (pooled * keep * 2) @ head.params['weight'].T + head.params['bias'],
                               rtol=1e-12)
    assert not np.allclose(y_train, y_eval, rtol=1e-3, atol=0)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match='num_classes'):
        od_mobilenetv2(num_classes=0)
    with pytest.raises(ValueError, match='width_mult'):
        od_mobilenetv2(width_mult=-1.0)
    with pytest.raises(ValueError, match='inverted_residual_setting'):
        od_mobilenetv2(inverted_residual_setting=[[1, 16, 1]])
    with pytest.raises(ValueError, match='num_experts'):
        cond_mobilenetv2(num_experts=0)
    model = cond_mobilenetv2(**COND_SMALL, rng=0)
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        model(np.zeros((1, 4, 32, 32), np.float32))
    with pytest.raises(TypeError, match='dtype'):
        model(np.zeros((1, 3, 32, 32)))


def test_float32_models_keep_float32():
    for builder, kwargs in ((od_mobilenetv2, OD_SMALL), (cond_mobilenetv2, COND_SMALL)):
        model = builder(**kwargs, rng=0).eval()
        x = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
        y = model(x)
        assert y.dtype == np.float32 and model.backward(np.ones_like(y)).dtype == np.float32
        twin = builder(**kwargs, dtype=np.float64, rng=0).eval()
        twin.load_state_dict(model.state_dict())
        np.testing.assert_allclose(y, twin(x.astype(np.float64)), rtol=1e-3, atol=1e-4)


# -- CondConv's shared routing: the op pair and the two layers --------------------------------------------
def routing_args(bias=True):
    return (RNG.standard_normal((3, 4, 5, 6)), RNG.standard_normal((5, 4)),
            RNG.standard_normal(5) if bias else None)


@pytest.mark.parametrize('bias', [True, False])
def test_routing_pair_matches_reference_and_gradcheck(bias):
    args = routing_args(bias)
    r, cache = cc.condconv_routing_forward(*args)
    np.testing.assert_allclose(r, ref.condconv_routing(*args), rtol=1e-13)
    dout = RNG.standard_normal(r.shape)
    expected = ref.condconv_routing_backward(dout, *args)
    for ours, theirs in zip(cc.condconv_routing_backward(dout, cache), expected):
        if theirs is None:
            assert ours is None
        else:
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    nc.gradcheck(cc.condconv_routing_forward, cc.condconv_routing_backward, args)


def test_routing_is_constant_without_route_weights():
    """W_r = 0: r = sigmoid(b_r) for every sample and dx = 0 (condconv.md section 4)."""
    x, w, b = routing_args()
    r, cache = cc.condconv_routing_forward(x, np.zeros_like(w), b)
    np.testing.assert_allclose(r, np.broadcast_to(1 / (1 + np.exp(-b)), r.shape), rtol=1e-14)
    assert not cc.condconv_routing_backward(np.ones_like(r), cache)[0].any()


def test_condconv2d_is_routing_then_routed_convolution():
    """CondConv2d(x) == RoutedCondConv2d(x, CondConvRouting(x)) with the same arrays, gradients too
    (the routing gradient of a single convolution is eq. 12 with one term)."""
    layer = nc.CondConv2d(4, 6, 3, stride=2, padding=1, groups=2, num_experts=3, dtype=np.float64, rng=0)
    route = cc.CondConvRouting(4, 3, dtype=np.float64, rng=1)
    conv = cc.RoutedCondConv2d(4, 6, 3, stride=2, padding=1, groups=2, num_experts=3, dtype=np.float64, rng=2)
    route.load_state_dict({'fc.' + k[9:]: v for k, v in layer.state_dict().items() if k.startswith('route.')})
    conv.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith('route.')})
    x = RNG.standard_normal((2, 4, 7, 6))
    y = layer(x)
    np.testing.assert_allclose(conv(x, route(x)), y, rtol=1e-13)
    dout = RNG.standard_normal(y.shape)
    dx = layer.backward(dout)
    dx_conv, drouting = conv.backward(dout)
    np.testing.assert_allclose(dx_conv + route.backward(drouting), dx, rtol=1e-12, atol=1e-13)
    for key in ('weight', 'bias'):
        np.testing.assert_allclose(conv.grads[key], layer.grads[key], rtol=1e-12)
    np.testing.assert_allclose(route.grads['fc.weight'], layer.grads['route.fc.weight'], rtol=1e-12)


def test_routed_layers_gradcheck_and_counts():
    route = cc.CondConvRouting(4, 3, dtype=np.float64, rng=1)
    nc.gradcheck_layer(route, RNG.standard_normal((2, 4, 5, 5)))
    conv = cc.RoutedCondConv2d(4, 4, 3, 1, 1, groups=4, bias=True, num_experts=3, dtype=np.float64, rng=0)
    x, r = RNG.standard_normal((2, 4, 5, 5)), RNG.random((2, 3))

    def forward(x, r, weight, bias):
        conv.load_state_dict({'weight': weight, 'bias': bias})
        return conv(x, r), None

    def backward(dout, _):
        conv.zero_grad()
        dx, dr = conv.backward(dout)
        return dx, dr, conv.grads['weight'].copy(), conv.grads['bias'].copy()
    nc.gradcheck(forward, backward, (x, r, conv.params['weight'].copy(), conv.params['bias'].copy()),
                 check_reentrant=False)
    assert nc.count(route, (2, 4, 5, 5)) == (15, 2 * (4 * 25 + 4 * 3))
    assert route.macs((2, 4, 5, 5))[1] == (2, 3)
    assert conv.macs((2, 4, 5, 5)) == (2 * (3 * 4 * 10 + 4 * 25 * 9), (2, 4, 5, 5))


def test_routing_errors():
    x, w, b = routing_args()
    with pytest.raises(ValueError, match=r'route_weight must have shape \(5, 4\)'):
        cc.condconv_routing_forward(x, w[:, :3], b)
    with pytest.raises(ValueError, match='route_bias'):
        cc.condconv_routing_forward(x, w, b[:2])
    with pytest.raises(TypeError, match='same float dtype'):
        cc.condconv_routing_forward(x.astype(np.float32), w, b)
    r, cache = cc.condconv_routing_forward(x, w, b)
    with pytest.raises(ValueError, match=r'dout must have shape \(3, 5\)'):
        cc.condconv_routing_backward(r[:, :2], cache)
    with pytest.raises(TypeError, match='condconv_routing_backward'):
        cc.condconv_routing_backward(r, {})
    with pytest.raises(ValueError, match='num_experts'):
        cc.CondConvRouting(4, 0)
