"""CondConv (numpyconv.condconv): gradients, plain-loop reference, identities, errors, torch re-creation."""
import math

import numpy as np
import pytest

from numpyconv import count
from numpyconv.condconv import CondConv2d, condconv2d_backward, condconv2d_forward
from numpyconv.conv import conv2d_forward
from numpyconv.dynamic import aggregated_conv2d_backward, aggregated_conv2d_forward
from numpyconv.gradcheck import gradcheck, gradcheck_layer
from numpyconv.reference import condconv as ref

KEYS = ('weight', 'bias', 'route.fc.weight', 'route.fc.bias')


def _arrays(rng, n=2, c_in=4, c_out=4, experts=3, kernel=(3, 3), groups=1, bias=True, route_bias=True,
            dtype=np.float64):
    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)
    return (normal(n, c_in, 5, 6), normal(experts, c_out, c_in // groups, *kernel),
            normal(experts, c_out) if bias else None, normal(experts, c_in),
            normal(experts) if route_bias else None)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


CONFIGS = [
    dict(stride=1, padding=1, dilation=1, groups=1),
    dict(stride=2, padding=(1, 0), dilation=1, groups=2),
    dict(stride=1, padding=2, dilation=2, groups=4),
    dict(stride=(2, 1), padding='valid', dilation=(1, 2), groups=1),
]


# -- functional op ----------------------------------------------------------------------------
@pytest.mark.parametrize('hyper', CONFIGS)
@pytest.mark.parametrize('bias', [True, False])
def test_gradcheck_and_plain_loop_reference(hyper, bias):
    args = _arrays(np.random.default_rng(1), groups=hyper['groups'], bias=bias, route_bias=bias)
    y, _ = condconv2d_forward(*args, **hyper)
    np.testing.assert_allclose(y, ref.condconv2d(*args, **hyper), rtol=1e-12, atol=1e-12)
    names = ['x', 'weight', 'bias', 'route_weight', 'route_bias']
    report = gradcheck(lambda *a: condconv2d_forward(*a, **hyper), condconv2d_backward, args, names=names)
    assert [r.name for r in report.results] == [n for n, a in zip(names, args) if a is not None]


def test_constant_routing_is_plain_conv():
    """W_r = 0: r = sigmoid(b_r) for every sample, a plain conv with sum_e r_e W_e (condconv.md 4)."""
    rng = np.random.default_rng(3)
    x, w, b, route_w, route_b = _arrays(rng, groups=2)
    y, _ = condconv2d_forward(x, w, b, np.zeros_like(route_w), route_b, padding=1, groups=2)
    r = 1 / (1 + np.exp(-route_b))
    y_ref, _ = conv2d_forward(x, np.tensordot(r, w, 1), r @ b, padding=1, groups=2)
    np.testing.assert_allclose(y, y_ref, atol=1e-12)


def test_one_expert_neutral_routing_is_half_the_kernel():
    rng = np.random.default_rng(4)
    x, w, b, route_w, route_b = _arrays(rng, experts=1)
    y, _ = condconv2d_forward(x, w, b, np.zeros_like(route_w), np.zeros_like(route_b), stride=2)
    y_ref, _ = conv2d_forward(x, w[0] / 2, b[0] / 2, stride=2)
    np.testing.assert_allclose(y, y_ref, atol=1e-12)


def test_shared_routing_gradients_add_up():
    """One routing vector feeding two convolutions: dr is the sum of both aggregation gradients."""
    rng = np.random.default_rng(5)
    x, w, b, route_w, route_b = _arrays(rng)
    w2 = rng.standard_normal(w.shape)
    r = 1 / (1 + np.exp(-(x.mean(axis=(2, 3)) @ route_w.T + route_b)))

    def forward(r):
        y1, c1 = aggregated_conv2d_forward(x, r, w, b, padding=1)
        y2, c2 = aggregated_conv2d_forward(x, r, w2, None, padding=1)
        return y1 + y2, (c1, c2)

    def backward(dy, caches):
        return (aggregated_conv2d_backward(dy, caches[0])[1] + aggregated_conv2d_backward(dy, caches[1])[1],)

    assert gradcheck(forward, backward, (r,)).ok


def test_float32_preserved_and_inputs_untouched():
    args = _arrays(np.random.default_rng(6), dtype=np.float32)
    copies = [a.copy() for a in args]
    y, cache = condconv2d_forward(*args, padding=1)
    assert y.dtype == np.float32
    grads = condconv2d_backward(np.ones_like(y), cache)
    assert all(g.dtype == np.float32 for g in grads)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)


def test_functional_errors():
    x, w, b, route_w, route_b = _arrays(np.random.default_rng(7))
    with pytest.raises(ValueError, match=r'groups=3 must divide the input channels.*\(2, 4, 5, 6\)'):
        condconv2d_forward(x, w, b, route_w, route_b, groups=3)
    with pytest.raises(ValueError, match=r'weight must have shape \(3, 4, 5, 3, 3\).*got \(3, 4, 4, 3, 3\)'):
        condconv2d_forward(np.zeros((2, 5, 5, 6)), w, b, route_w, route_b)
    with pytest.raises(ValueError, match=r'route_weight must have shape \(3, 4\), got \(4, 4\)'):
        condconv2d_forward(x, w, b, np.zeros((4, 4)), route_b)
    with pytest.raises(ValueError, match=r'route_bias must have shape \(3,\), got \(2,\)'):
        condconv2d_forward(x, w, b, route_w, np.zeros(2))
    with pytest.raises(TypeError, match='same float dtype'):
        condconv2d_forward(x, w, b, route_w.astype(np.float32), route_b)


# -- layer ----------------------------------------------------------------------------------------
def test_state_dict_keys_shapes_and_init():
    layer = CondConv2d(16, 32, 3, groups=2, num_experts=8, rng=0)
    state = layer.state_dict()
    assert {k: v.shape for k, v in state.items()} == {
        'weight': (8, 32, 8, 3, 3), 'bias': (8, 32), 'route.fc.weight': (8, 16), 'route.fc.bias': (8,)}
    bound = 1 / math.sqrt(8 * 9)                         # per expert, fan_in = (C_in/G) kh kw
    for key in ('weight', 'bias'):
        assert bound * 0.95 < np.abs(state[key]).max() <= bound
    assert np.abs(state['route.fc.weight']).max() <= 1 / math.sqrt(16)
    assert set(CondConv2d(4, 4, 1, bias=False, rng=0).state_dict()) == {
        'weight', 'route.fc.weight', 'route.fc.bias'}


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_gradcheck_layer(mode):
    layer = CondConv2d(4, 6, (2, 3), stride=(1, 2), padding=1, dilation=(2, 1), groups=2, num_experts=3,
                       dtype=np.float64, rng=1)
    getattr(layer, mode)()
    x = np.random.default_rng(2).standard_normal((2, 4, 5, 6))
    report = gradcheck_layer(layer, x)
    assert report.ok and [r.name for r in report.results] == ['x', *KEYS]


@pytest.mark.parametrize('build, error, match', [
    (lambda: CondConv2d(4, 6, 3, groups=3), ValueError, 'groups=3 must divide in_channels=4'),
    (lambda: CondConv2d(4, 6, 3, num_experts=0), ValueError, 'num_experts must be a positive int'),
    (lambda: CondConv2d(4, 6, 3)(np.zeros((2, 3, 5, 5), np.float32)), ValueError,
     r'x must have shape \(N, 4, H, W\), got \(2, 3, 5, 5\)'),
    (lambda: CondConv2d(4, 6, 3)(np.zeros((4, 5, 5), np.float32)), ValueError, r'x must be \(N, C, H, W\)'),
    (lambda: CondConv2d(4, 6, 3)(np.zeros((1, 4, 5, 5))), TypeError, 'dtype=float64'),
    # regression: count() used to accept a shape with the wrong channels and count it silently
    (lambda: count(CondConv2d(4, 6, 3), (2, 3, 8, 8)), ValueError,
     r'input_shape must be \(N, 4, H, W\), got \(2, 3, 8, 8\)'),
])
def test_layer_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_state_dict_round_trip_and_float32():
    a, b = CondConv2d(6, 4, 3, padding=1, rng=0), CondConv2d(6, 4, 3, padding=1, rng=1)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 5)).astype(np.float32)
    y = a(x)
    assert y.dtype == np.float32 and a.backward(np.ones_like(y)).dtype == np.float32
    np.testing.assert_array_equal(y, b(x))


def test_macs_counts_routing_combination_and_conv():
    layer = CondConv2d(16, 32, 3, padding=1, num_experts=8, rng=0)
    params, macs = count(layer, (2, 16, 8, 8))
    assert params == 8 * 32 * 16 * 9 + 8 * 32 + 8 * 16 + 8
    conv = 32 * 64 * 16 * 9
    routing = 16 * 64 + 16 * 8
    combination = 8 * (32 * 16 * 9 + 32)
    assert macs == 2 * (conv + routing + combination)


# -- torch re-creation of d-li14 CondConv2d + route_func (written from the spec) -------------------
def _torch_condconv(torch):
    nn, F = torch.nn, torch.nn.functional

    class Route(nn.Module):
        def __init__(self, c_in, num_experts):
            super().__init__()
            self.fc = nn.Linear(c_in, num_experts)

        def forward(self, x):
            return torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)))

    class OfficialCondConv2d(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     bias=True, num_experts=4):
            super().__init__()
            self.conv_args = (stride, padding, dilation, groups)
            self.weight = nn.Parameter(torch.randn(num_experts, out_channels, in_channels // groups,
                                                   kernel_size, kernel_size))
            self.bias = nn.Parameter(torch.randn(num_experts, out_channels)) if bias else None

        def forward(self, x, routing):
            n, c, h, w = x.shape
            experts, c_out = self.weight.shape[:2]
            kernels = (routing @ self.weight.flatten(1)).reshape(n * c_out, *self.weight.shape[2:])
            biases = None if self.bias is None else (routing @ self.bias).flatten()
            stride, padding, dilation, groups = self.conv_args
            y = F.conv2d(x.reshape(1, n * c, h, w), kernels, biases, stride, padding, dilation, groups * n)
            return y.reshape(n, c_out, y.shape[-2], y.shape[-1])

    return Route, OfficialCondConv2d


@pytest.mark.parametrize('args, kwargs', [
    ((8, 6, 3), dict(padding=1)),
    ((8, 6, 3), dict(stride=2, padding=1, groups=2, bias=False, num_experts=3)),
    ((6, 6, 3), dict(groups=6, padding=2, dilation=2)),
])
def test_matches_torch_recreation(args, kwargs):
    torch = pytest.importorskip('torch')
    torch.manual_seed(0)
    route_cls, conv_cls = _torch_condconv(torch)
    experts = kwargs.get('num_experts', 4)
    route, official = route_cls(args[0], experts).double(), conv_cls(*args, **kwargs).double()
    with torch.no_grad():
        route.fc.weight.mul_(5.0)
    layer = CondConv2d(*args, **kwargs, dtype=np.float64, rng=0)
    state = {k: v.detach().numpy() for k, v in official.state_dict().items()}
    state.update({'route.' + k: v.detach().numpy() for k, v in route.state_dict().items()})
    layer.load_state_dict(state)
    x = np.random.default_rng(0).standard_normal((3, args[0], 7, 6))
    y = layer(x)
    dy = np.cos(np.arange(y.size)).reshape(y.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = official(xt, route(xt))
    yt.backward(torch.tensor(dy))
    ours = {'y': y, 'x': layer.backward(dy), **layer.grads}
    theirs = {'y': yt, 'x': xt.grad, **{k: v.grad for k, v in official.named_parameters()},
              **{'route.' + k: v.grad for k, v in route.named_parameters()}}
    assert sorted(ours) == sorted(theirs)
    for key, value in ours.items():
        assert _rel(value, theirs[key].detach().numpy()) < 1e-10, key
