"""DY-CNN (numpyconv.dynamic): gradients, plain-loop reference, identities, errors, torch re-creation."""
import math

import numpy as np
import pytest

from numpyconv import count
from numpyconv.condconv import CondConv2d, condconv2d_backward, condconv2d_forward
from numpyconv.conv import conv2d_backward, conv2d_forward
from numpyconv.dynamic import (DynamicConv2d, aggregated_conv2d_backward, aggregated_conv2d_forward,
                               dynamic_conv2d_backward, dynamic_conv2d_forward, dynamic_temperature)
from numpyconv.gradcheck import gradcheck, gradcheck_layer
from numpyconv.reference import dynamic as ref

KEYS = ('weight', 'bias', 'attention.fc1.weight', 'attention.fc2.weight', 'attention.fc2.bias')


def _arrays(rng, n=2, c_in=4, c_out=4, k=3, hidden=3, kernel=(3, 3), groups=1, bias=True,
            fc2_bias=True, dtype=np.float64):
    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)
    return (normal(n, c_in, 5, 6), normal(k, c_out, c_in // groups, *kernel),
            normal(k, c_out) if bias else None, normal(hidden, c_in, 1, 1), normal(k, hidden, 1, 1),
            normal(k) if fc2_bias else None)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# -- functional op ----------------------------------------------------------------------------
CONFIGS = [
    dict(temperature=0.5, stride=1, padding=1, dilation=1, groups=1),
    dict(temperature=7.0, stride=2, padding=(1, 0), dilation=1, groups=2),
    dict(temperature=34.0, stride=1, padding=2, dilation=2, groups=1),
    dict(temperature=3.0, stride=(2, 1), padding='valid', dilation=(1, 2), groups=4),
]


@pytest.mark.parametrize('hyper', CONFIGS)
@pytest.mark.parametrize('bias', [True, False])
def test_gradcheck_every_input(hyper, bias):
    rng = np.random.default_rng(1)
    args = _arrays(rng, groups=hyper['groups'], bias=bias, fc2_bias=bias)
    report = gradcheck(lambda *a: dynamic_conv2d_forward(*a, **hyper), dynamic_conv2d_backward, args,
                       names=['x', 'weight', 'bias', 'fc1_weight', 'fc2_weight', 'fc2_bias'])
    assert report.ok
    assert len(report.results) == (6 if bias else 4)


@pytest.mark.parametrize('hyper', CONFIGS)
def test_matches_plain_loop_reference(hyper):
    args = _arrays(np.random.default_rng(2), groups=hyper['groups'])
    y, _ = dynamic_conv2d_forward(*args, **hyper)
    np.testing.assert_allclose(y, ref.dynamic_conv2d(*args, **hyper), rtol=1e-12, atol=1e-12)


def test_aggregated_conv_gradcheck_and_reference():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 4, 5, 5)), rng.standard_normal((3, 6, 2, 2, 3))
    b = rng.standard_normal((3, 6))
    attention = rng.random((2, 3))
    hyper = dict(stride=2, padding=1, dilation=(2, 1), groups=2)
    gradcheck(lambda *a: aggregated_conv2d_forward(*a, **hyper), aggregated_conv2d_backward,
              (x, attention, w, b))
    y, _ = aggregated_conv2d_forward(x, attention, w, b, **hyper)
    np.testing.assert_allclose(y, ref.aggregated_conv2d(x, attention, w, b, **hyper), atol=1e-12)


def test_one_kernel_is_plain_conv():
    """K = 1: softmax gives 1, the layer is conv2d with weight[0], bias[0]; attention grads are 0."""
    rng = np.random.default_rng(4)
    x, w, b, fc1, fc2, fc2_b = _arrays(rng, k=1, groups=2)
    hyper = dict(stride=2, padding=1, dilation=1, groups=2)
    y, cache = dynamic_conv2d_forward(x, w, b, fc1, fc2, fc2_b, temperature=4.0, **hyper)
    y_ref, cache_ref = conv2d_forward(x, w[0], b[0], **hyper)
    np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-13)
    dy = rng.standard_normal(y.shape)
    dx, dw, db, dfc1, dfc2, dfc2_b = dynamic_conv2d_backward(dy, cache)
    dx_ref, dw_ref, db_ref = conv2d_backward(dy, cache_ref)
    np.testing.assert_allclose(dx, dx_ref, atol=1e-12)
    np.testing.assert_allclose(dw[0], dw_ref, atol=1e-12)
    np.testing.assert_allclose(db[0], db_ref, atol=1e-12)
    for g in (dfc1, dfc2, dfc2_b):
        np.testing.assert_allclose(g, 0, atol=1e-12)


def test_equal_logits_give_the_mean_kernel():
    rng = np.random.default_rng(5)
    x, w, b, fc1, fc2, fc2_b = _arrays(rng)
    y, _ = dynamic_conv2d_forward(x, w, b, fc1, np.zeros_like(fc2), np.full_like(fc2_b, 0.3),
                                  temperature=7.0, padding=1)
    y_ref, _ = conv2d_forward(x, w.mean(axis=0), b.mean(axis=0), padding=1)
    np.testing.assert_allclose(y, y_ref, atol=1e-12)


def test_temperature_scales_logits():
    """softmax(z / T) with logits scaled by c equals temperature T / c (fc2 is linear)."""
    x, w, b, fc1, fc2, fc2_b = _arrays(np.random.default_rng(6))
    y1, _ = dynamic_conv2d_forward(x, w, b, fc1, fc2, fc2_b, temperature=2.0)
    y2, _ = dynamic_conv2d_forward(x, w, b, fc1, 3 * fc2, 3 * fc2_b, temperature=6.0)
    np.testing.assert_allclose(y1, y2, atol=1e-12)


def test_batch_independence():
    rng = np.random.default_rng(7)
    x, *params = _arrays(rng, n=3)
    y, _ = dynamic_conv2d_forward(x, *params, padding=1)
    x2 = x.copy()
    x2[1:] = rng.standard_normal(x2[1:].shape)
    y2, _ = dynamic_conv2d_forward(x2, *params, padding=1)
    np.testing.assert_allclose(y[0], y2[0], atol=1e-13)
    y_single, _ = dynamic_conv2d_forward(x[:1], *params, padding=1)
    np.testing.assert_allclose(y[:1], y_single, atol=1e-13)


def test_float32_preserved_and_inputs_untouched():
    args = _arrays(np.random.default_rng(8), dtype=np.float32)
    copies = [a.copy() for a in args]
    y, cache = dynamic_conv2d_forward(*args, temperature=4.0, padding=1)
    assert y.dtype == np.float32
    dy = np.ones_like(y)
    grads = dynamic_conv2d_backward(dy, cache)
    assert all(g.dtype == np.float32 for g in grads)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(dy, 1)
    y64, _ = dynamic_conv2d_forward(*[a.astype(np.float64) for a in args], temperature=4.0, padding=1)
    np.testing.assert_allclose(y, y64, rtol=1e-4, atol=1e-4)


def test_functional_errors():
    x, w, b, fc1, fc2, fc2_b = _arrays(np.random.default_rng(9))
    with pytest.raises(ValueError, match=r'groups=3 must divide the input channels.*\(2, 4, 5, 6\)'):
        dynamic_conv2d_forward(x, w, b, fc1, fc2, fc2_b, groups=3)
    with pytest.raises(ValueError, match=r'weight must have shape \(3, 4, 5, 3, 3\).*got \(3, 4, 4, 3, 3\)'):
        dynamic_conv2d_forward(np.zeros((2, 5, 5, 6)), w, b, fc1, fc2, fc2_b)
    with pytest.raises(ValueError, match=r'weight must be \(K, C_out, C_in // groups, kh, kw\)'):
        dynamic_conv2d_forward(x, w[0], b, fc1, fc2, fc2_b)
    with pytest.raises(ValueError, match=r'bias must have shape \(3, 4\), got \(3, 5\)'):
        dynamic_conv2d_forward(x, w, np.zeros((3, 5)), fc1, fc2, fc2_b)
    with pytest.raises(ValueError, match=r'fc1_weight must have shape \(3, 4, 1, 1\), got \(3, 5, 1, 1\)'):
        dynamic_conv2d_forward(x, w, b, np.zeros((3, 5, 1, 1)), fc2, fc2_b)
    with pytest.raises(ValueError, match=r'fc2_weight must have shape \(3, 3, 1, 1\), got \(4, 3, 1, 1\)'):
        dynamic_conv2d_forward(x, w, b, fc1, np.zeros((4, 3, 1, 1)), fc2_b)
    with pytest.raises(ValueError, match=r'fc2_bias must have shape \(3,\), got \(4,\)'):
        dynamic_conv2d_forward(x, w, b, fc1, fc2, np.zeros(4))
    with pytest.raises(TypeError, match='same float dtype'):
        dynamic_conv2d_forward(x, w.astype(np.float32), b, fc1, fc2, fc2_b)
    with pytest.raises(TypeError, match='x must be float32 or float64'):
        dynamic_conv2d_forward(x.astype(int), w, b, fc1, fc2, fc2_b)
    with pytest.raises(ValueError, match='temperature'):
        dynamic_conv2d_forward(x, w, b, fc1, fc2, fc2_b, temperature=0.0)
    with pytest.raises(ValueError, match=r'attention must have shape \(2, 3\), got \(2, 4\)'):
        aggregated_conv2d_forward(x, np.ones((2, 4)), w, b)


# -- layer ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('args, kwargs, shapes', [
    ((64, 128, 3), {}, {'weight': (4, 128, 64, 3, 3), 'bias': (4, 128),
                        'attention.fc1.weight': (17, 64, 1, 1), 'attention.fc2.weight': (4, 17, 1, 1),
                        'attention.fc2.bias': (4,)}),
    ((3, 16, 3), {}, {'weight': (4, 16, 3, 3, 3), 'bias': (4, 16), 'attention.fc1.weight': (4, 3, 1, 1),
                      'attention.fc2.weight': (4, 4, 1, 1), 'attention.fc2.bias': (4,)}),
    ((32, 32, 3), dict(groups=32, bias=False, K=2), {
        'weight': (2, 32, 1, 3, 3), 'attention.fc1.weight': (9, 32, 1, 1),
        'attention.fc2.weight': (2, 9, 1, 1), 'attention.fc2.bias': (2,)}),
])
def test_state_dict_keys_and_shapes(args, kwargs, shapes):
    layer = DynamicConv2d(*args, **kwargs, rng=0)
    state = layer.state_dict()
    assert {k: v.shape for k, v in state.items()} == shapes
    assert all(v.dtype == np.float32 for v in state.values())


def test_official_initialisation():
    layer = DynamicConv2d(64, 128, 3, rng=0)
    p = layer.params
    bound = math.sqrt(6 / (64 * 9))                        # kaiming_uniform_(weight[i]), a = 0
    assert bound * 0.99 < np.abs(p['weight']).max() <= bound
    np.testing.assert_array_equal(p['bias'], 0)
    np.testing.assert_array_equal(p['attention.fc2.bias'], 0)
    assert abs(p['attention.fc1.weight'].std() - math.sqrt(2 / 17)) < 0.05   # fan_out = hidden
    assert abs(p['attention.fc2.weight'].std() - math.sqrt(2 / 4)) < 0.25    # fan_out = K


@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('temperature', [4, 34])
def test_gradcheck_layer(mode, temperature):
    layer = DynamicConv2d(4, 6, (3, 2), ratio=0.5, stride=(2, 1), padding=1, groups=2, K=3,
                          temperature=temperature, dtype=np.float64, rng=1)
    getattr(layer, mode)()
    # larger logits so that the attention gradients are not negligible at T = 34
    layer.params['attention.fc2.weight'][...] *= temperature
    x = np.random.default_rng(2).standard_normal((2, 4, 5, 5))
    report = gradcheck_layer(layer, x)
    assert report.ok and [r.name for r in report.results] == ['x', *KEYS]


MIXTURE_LAYERS = {
    'dynamic': (lambda: DynamicConv2d(4, 6, 3, padding=1, temperature=7, dtype=np.float64, rng=5),
                lambda x, *a: dynamic_conv2d_forward(x, *a, temperature=7, padding=1),
                dynamic_conv2d_backward),
    'condconv': (lambda: CondConv2d(4, 6, 3, padding=1, bias=False, dtype=np.float64, rng=5),
                 lambda x, *a: condconv2d_forward(x, *a, padding=1), condconv2d_backward),
}


@pytest.mark.parametrize('name', sorted(MIXTURE_LAYERS))
def test_layers_wrap_the_functional_pair(name):
    """Both layers (MixtureConv2dBase): same function in train and eval mode (no BatchNorm), batch 1
    trains, output and gradients are the functional pair's, gradients accumulate."""
    make, forward, backward = MIXTURE_LAYERS[name]
    layer = make()
    x = np.random.default_rng(6).standard_normal((1, 4, 5, 5))
    y = layer.train()(x)
    np.testing.assert_array_equal(y, layer.eval()(x))
    arrays = [layer.params.get(key) for key in layer.PARAM_KEYS]
    y_ref, cache = forward(x, *arrays)
    np.testing.assert_array_equal(y, y_ref)
    dy = np.cos(np.arange(y.size)).reshape(y.shape)
    dx_ref, *grads = backward(dy, cache)
    np.testing.assert_allclose(layer.backward(dy), dx_ref, atol=1e-13)
    layer(x)
    layer.backward(dy)
    assert sorted(layer.grads) == sorted(k for k, a in zip(layer.PARAM_KEYS, arrays) if a is not None)
    for key, g in zip(layer.PARAM_KEYS, grads):
        if g is not None:
            np.testing.assert_allclose(layer.grads[key], 2 * g, atol=1e-12)


def test_temperature_schedule():
    assert [dynamic_temperature(e) for e in range(13)] == [34, 31, 28, 25, 22, 19, 16, 13, 10, 7, 4, 1, 1]
    assert dynamic_temperature(2, initial=7) == 1
    layer = DynamicConv2d(4, 4, 1, rng=0)
    assert layer.temperature == 34
    seen = [layer.update_temperature() for _ in range(12)]
    assert seen == [31, 28, 25, 22, 19, 16, 13, 10, 7, 4, 1, 1]
    assert 'temperature' not in ''.join(layer.state_dict())
    layer.temperature = 7
    assert layer.update_temperature() == 4
    for bad in (2, 0, -2, 35):
        with pytest.raises(ValueError, match='temperature % 3 == 1'):
            layer.temperature = bad
    with pytest.raises(ValueError, match='temperature % 3 == 1'):
        DynamicConv2d(4, 4, 1, temperature=30)
    with pytest.raises(ValueError, match='epoch'):
        dynamic_temperature(-1)


def test_layer_errors():
    with pytest.raises(ValueError, match='groups=3 must divide in_planes=4'):
        DynamicConv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match='groups=2 must divide in_planes=4 and out_planes=5'):
        DynamicConv2d(4, 5, 3, groups=2)
    with pytest.raises(TypeError, match='K must be an int'):
        DynamicConv2d(4, 6, 3, K=2.5)
    layer = DynamicConv2d(4, 6, 3, rng=0)
    with pytest.raises(ValueError, match=r'x must have shape \(N, 4, H, W\), got \(2, 5, 5, 5\)'):
        layer(np.zeros((2, 5, 5, 5), np.float32))
    with pytest.raises(TypeError, match='dtype=float64'):
        layer(np.zeros((2, 4, 5, 5)))
    with pytest.raises(ValueError, match='kernel_size'):
        layer(np.zeros((2, 4, 2, 2), np.float32))


def test_bad_ratio_and_count_shape_name_the_argument():
    """A non-numeric ratio and a count() shape of the wrong channels or rank raise errors naming the
    argument, not errors from inside int() / tuple unpacking (nor a silent count)."""
    for ratio, error in (('0.25', TypeError), (None, TypeError), (float('nan'), ValueError)):
        with pytest.raises(error, match='ratio must be'):
            DynamicConv2d(4, 6, 3, ratio=ratio)
    layer = DynamicConv2d(4, 6, 3, rng=0)
    for shape in ((2, 3, 8, 8), (4, 8, 8)):
        with pytest.raises(ValueError, match=r'input_shape must be \(N, 4, H, W\), got'):
            count(layer, shape)


def test_state_dict_round_trip_and_float32():
    a = DynamicConv2d(8, 6, 3, padding=1, groups=2, temperature=7, rng=0)
    b = DynamicConv2d(8, 6, 3, padding=1, groups=2, temperature=7, rng=1)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 8, 5, 5)).astype(np.float32)
    x_copy = x.copy()
    y = a(x)
    assert y.dtype == np.float32 and a.backward(np.ones_like(y)).dtype == np.float32
    np.testing.assert_array_equal(y, b(x))
    np.testing.assert_array_equal(x, x_copy)
    with pytest.raises(KeyError, match='attention.fc2.bias'):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != 'attention.fc2.bias'})


def test_macs_counts_attention_aggregation_and_conv():
    layer = DynamicConv2d(16, 32, 3, stride=2, padding=1, rng=0)     # hidden = 5, K = 4
    params, macs = count(layer, (2, 16, 8, 8))
    assert params == 4 * 32 * 16 * 9 + 4 * 32 + 5 * 16 + 4 * 5 + 4
    conv = 32 * 4 * 4 * 16 * 9
    attention = 16 * 64 + 16 * 5 + 5 * 4
    aggregation = 4 * (32 * 16 * 9 + 32)
    assert macs == 2 * (conv + attention + aggregation)


# -- torch re-creation of kaijieshi7 Dynamic_conv2d (docs/derivations/dynamic.md) ---------------
def _torch_dynamic_conv2d(torch):
    nn, F = torch.nn, torch.nn.functional

    class Attention2d(nn.Module):
        def __init__(self, in_planes, ratio, K, temperature):
            super().__init__()
            hidden = K if in_planes == 3 else int(in_planes * ratio) + 1
            self.fc1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
            self.fc2 = nn.Conv2d(hidden, K, 1, bias=True)
            self.temperature = temperature

        def forward(self, x):
            logits = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))).flatten(1)
            return F.softmax(logits / self.temperature, dim=1)

    class OfficialDynamicConv2d(nn.Module):
        def __init__(self, in_planes, out_planes, kernel_size, ratio=0.25, stride=1, padding=0, dilation=1,
                     groups=1, bias=True, K=4, temperature=34):
            super().__init__()
            self.shape = (out_planes, in_planes // groups, kernel_size, kernel_size)
            self.conv_args = (stride, padding, dilation, groups)
            self.attention = Attention2d(in_planes, ratio, K, temperature)
            self.weight = nn.Parameter(torch.randn(K, *self.shape))
            self.bias = nn.Parameter(torch.randn(K, out_planes)) if bias else None

        def forward(self, x):
            n, c, h, w = x.shape
            pi = self.attention(x)                                       # (N, K)
            kernels = (pi @ self.weight.flatten(1)).reshape(n * self.shape[0], *self.shape[1:])
            biases = None if self.bias is None else (pi @ self.bias).flatten()
            stride, padding, dilation, groups = self.conv_args
            y = F.conv2d(x.reshape(1, n * c, h, w), kernels, biases, stride, padding, dilation, groups * n)
            return y.reshape(n, self.shape[0], y.shape[-2], y.shape[-1])

    return OfficialDynamicConv2d


@pytest.mark.parametrize('args, kwargs', [
    ((8, 6, 3), dict(padding=1, temperature=34)),
    ((8, 6, 3), dict(padding=1, temperature=1, bias=False)),
    ((8, 6, 3), dict(stride=2, padding=1, groups=2, temperature=7, K=3)),
    ((3, 4, 3), dict(dilation=2, padding=2, temperature=7)),
    ((6, 6, 3), dict(groups=6, padding=1, temperature=4, ratio=0.5)),
])
def test_matches_torch_recreation(args, kwargs):
    torch = pytest.importorskip('torch')
    torch.manual_seed(0)
    official = _torch_dynamic_conv2d(torch)(*args, **kwargs).double()
    with torch.no_grad():
        official.attention.fc2.weight.mul_(20.0)                      # visible attention at T = 34
        official.attention.fc2.bias.normal_()
    layer = DynamicConv2d(*args, **kwargs, dtype=np.float64, rng=0)
    layer.load_state_dict({k: v.detach().numpy() for k, v in official.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, args[0], 7, 6))
    dy_shape = layer.macs(x.shape)[1]
    dy = rng.standard_normal(dy_shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = official(xt)
    (yt * torch.tensor(dy)).sum().backward()
    y = layer(x)
    dx = layer.backward(dy)
    assert _rel(y, yt.detach().numpy()) < 1e-10
    assert _rel(dx, xt.grad.numpy()) < 1e-10
    torch_grads = dict(official.named_parameters())
    for key, grad in layer.grads.items():
        assert _rel(grad, torch_grads[key].grad.numpy()) < 1e-10, key


@pytest.mark.parametrize('layer_class', [DynamicConv2d, CondConv2d])
def test_batch_zero(layer_class):
    layer = layer_class(4, 6, 3, padding=1, dtype=np.float64, rng=0)
    y = layer(np.zeros((0, 4, 5, 5)))
    assert y.shape == (0, 6, 5, 5) and layer.backward(y).shape == (0, 4, 5, 5)
