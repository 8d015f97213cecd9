"""Building-block layers: gradients, state_dict, BatchNorm bookkeeping, counting, errors, torch."""
import math

import numpy as np
import pytest

import numpyconv as nc
import numpyconv.layers as L
from numpyconv.activations import GELU, ReLU, Sigmoid
from numpyconv import blocks as B
from numpyconv.gradcheck import gradcheck_layer
from numpyconv.module import Sequential, count

RNG = np.random.default_rng(77)
F64 = dict(dtype=np.float64, rng=0)


def normal(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def randomise(layer):
    """Random parameters (and positive running variances) so that gradients are not trivial."""
    for key, value in layer.state_dict().items():
        if value.dtype.kind == 'f':
            fresh = RNG.standard_normal(value.shape)
            layer.load_state_dict({key: np.abs(fresh) + 0.5 if 'var' in key else fresh}, strict=False)
    return layer


LAYERS = {
    'linear': (lambda dt: L.Linear(4, 3, dtype=dt, rng=0), (2, 4)),
    'linear_no_bias_3d': (lambda dt: L.Linear(4, 3, bias=False, dtype=dt, rng=0), (2, 2, 4)),
    'bn1d_train': (lambda dt: L.BatchNorm1d(3, dtype=dt, rng=0), (4, 3)),
    'bn1d_train_3d': (lambda dt: L.BatchNorm1d(3, dtype=dt, rng=0), (2, 3, 3)),
    'bn2d_train': (lambda dt: L.BatchNorm2d(3, dtype=dt, rng=0), (2, 3, 2, 3)),
    'bn2d_eval': (lambda dt: L.BatchNorm2d(3, dtype=dt, rng=0).eval(), (2, 3, 2, 3)),
    'bn2d_momentum_none': (lambda dt: L.BatchNorm2d(2, momentum=None, dtype=dt, rng=0), (2, 2, 2, 2)),
    'bn2d_no_affine_no_stats': (lambda dt: L.BatchNorm2d(2, affine=False, track_running_stats=False,
                                                         dtype=dt, rng=0).eval(), (3, 2, 2, 2)),
    'layer_norm': (lambda dt: L.LayerNorm(5, dtype=dt, rng=0), (2, 3, 5)),
    'layer_norm_channels_first': (lambda dt: L.LayerNorm(3, eps=1e-6, channels_first=True, dtype=dt, rng=0),
                                  (2, 3, 2, 2)),
    'flatten': (lambda dt: L.Flatten(dtype=dt, rng=0), (2, 3, 2, 2)),
}


@pytest.mark.parametrize('name', LAYERS)
def test_gradcheck_layer(name):
    make, shape = LAYERS[name]
    gradcheck_layer(randomise(make(np.float64)), normal(*shape), mode='full')


@pytest.mark.parametrize('name', LAYERS)
def test_float32_layer_preserves_dtype_and_does_not_mutate(name):
    make, shape = LAYERS[name]
    layer = make(np.float32)
    x = normal(*shape, dtype=np.float32)
    x_copy = x.copy()
    y = layer(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32 and dx.shape == x.shape
    assert all(v.dtype == np.float32 for v in layer.params.values())
    np.testing.assert_array_equal(x, x_copy)


@pytest.mark.parametrize('name', ['linear', 'bn2d_train', 'layer_norm'])
def test_layers_match_functional_and_accumulate_grads(name):
    make, shape = LAYERS[name]
    layer, x = randomise(make(np.float64)), normal(*shape)
    y = layer(x)
    dout = normal(*y.shape)
    layer.backward(dout)
    first = {k: g.copy() for k, g in layer.grads.items()}
    layer(x)
    layer.backward(dout)
    for k, g in layer.grads.items():
        np.testing.assert_allclose(g, 2 * first[k], rtol=1e-13)
    layer.zero_grad()
    assert all(not g.any() for g in layer.grads.values())


def test_linear_is_linear_forward_and_counts_macs():
    layer = L.Linear(6, 4, **F64)
    x = normal(5, 6)
    expected, _ = B.linear_forward(x, layer.params['weight'], layer.params['bias'])
    np.testing.assert_array_equal(layer(x), expected)
    assert count(layer, (5, 6)) == (6 * 4 + 4, 5 * 6 * 4)
    assert count(layer, (2, 3, 6)) == (28, 2 * 3 * 6 * 4)


def test_default_initialisation():
    layer = L.Linear(64, 300, dtype=np.float64, rng=1)
    bound = 1 / math.sqrt(64)
    for key in ('weight', 'bias'):
        v = layer.params[key]
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound
    assert L.Linear(3, 2, rng=5).params['weight'].tolist() == L.Linear(3, 2, rng=5).params['weight'].tolist()
    bn = L.BatchNorm2d(4)
    state = bn.state_dict()
    assert list(state) == ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    np.testing.assert_array_equal(state['weight'], 1.0)
    np.testing.assert_array_equal(state['bias'], 0.0)
    np.testing.assert_array_equal(state['running_mean'], 0.0)
    np.testing.assert_array_equal(state['running_var'], 1.0)
    assert state['num_batches_tracked'].dtype == np.int64 and state['num_batches_tracked'].shape == ()
    ln = L.LayerNorm((5,)).state_dict()
    assert list(ln) == ['weight', 'bias'] and ln['weight'].shape == (5,)


def test_batch_norm_layer_bookkeeping():
    bn = L.BatchNorm2d(3, momentum=0.3, **F64)
    x = normal(4, 3, 2, 2)
    running_mean, running_var = np.zeros(3), np.ones(3)
    for step in range(1, 3):
        bn(x)
        _, cache = B.batch_norm_forward(x, None, None, running_mean, running_var, True, momentum=0.3)
        running_mean, running_var = cache['running_mean'], cache['running_var']
        assert int(bn.buffers['num_batches_tracked']) == step
    np.testing.assert_allclose(bn.buffers['running_mean'], running_mean, rtol=1e-14)
    np.testing.assert_allclose(bn.buffers['running_var'], running_var, rtol=1e-14)
    bn.eval()
    y = bn(x)
    assert int(bn.buffers['num_batches_tracked']) == 2                       # eval: no update
    mean, var = running_mean[:, None, None], running_var[:, None, None]
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5))


def test_batch_norm_momentum_none_is_cumulative_average():
    bn = L.BatchNorm1d(2, momentum=None, **F64)
    batches = [normal(5, 2) for _ in range(3)]
    for x in batches:
        bn(x)
    np.testing.assert_allclose(bn.buffers['running_mean'], np.mean([b.mean(axis=0) for b in batches], axis=0))
    unbiased = [b.var(axis=0, ddof=1) for b in batches]
    np.testing.assert_allclose(bn.buffers['running_var'], np.mean(unbiased, axis=0))


def test_batch_norm_without_running_stats_uses_batch_stats_in_eval():
    bn = L.BatchNorm2d(2, affine=False, track_running_stats=False, **F64).eval()
    assert bn.state_dict() == {}
    x = normal(3, 2, 2, 2)
    np.testing.assert_allclose(bn(x), B.batch_norm_forward(x, None, None, None, None, True)[0])


def test_state_dict_round_trip_and_errors():
    source, target = randomise(L.BatchNorm2d(3, **F64)), L.BatchNorm2d(3, **F64)
    source(normal(2, 3, 2, 2))
    target.load_state_dict(source.state_dict())
    for k, v in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[k], v)
    x = normal(2, 3, 2, 2)
    np.testing.assert_array_equal(source.eval()(x), target.eval()(x))
    state = source.state_dict()
    del state['running_var']
    with pytest.raises(KeyError, match='running_var'):
        target.load_state_dict(state)
    with pytest.raises(ValueError, match='weight must have shape'):
        L.Linear(3, 2).load_state_dict({'weight': np.zeros((3, 2)), 'bias': np.zeros(2)})


def test_sequential_mlp_gradcheck_and_count():
    model = Sequential(L.Flatten(**F64), L.Linear(12, 5, **F64), L.BatchNorm1d(5, **F64), GELU(**F64),
                       L.Linear(5, 3, **F64), Sigmoid(**F64))
    gradcheck_layer(randomise(model), normal(4, 3, 2, 2), mode='full')
    assert count(model, (4, 3, 2, 2)) == (12 * 5 + 5 + 10 + 5 * 3 + 3, 4 * (12 * 5 + 5 * 3))
    assert sorted(model.state_dict()) == sorted(['1.weight', '1.bias', '2.weight', '2.bias', '2.running_mean',
                                                 '2.running_var', '2.num_batches_tracked', '4.weight',
                                                 '4.bias'])


@pytest.mark.parametrize('layer, shape, out_shape', [
    (L.Flatten(), (2, 4, 3, 2), (2, 24)),
    (L.Flatten(2), (2, 4, 3, 2), (2, 4, 6)),
    (L.BatchNorm2d(4), (2, 4, 3, 3), (2, 4, 3, 3)),
    (L.LayerNorm(4, channels_first=True), (2, 4, 3, 3), (2, 4, 3, 3)),
])
def test_parameter_free_costs_are_zero_and_shapes_right(layer, shape, out_shape):
    macs, predicted = layer.macs(shape)
    assert macs == 0 and predicted == out_shape
    assert layer(np.zeros(shape, dtype=np.float32)).shape == out_shape


@pytest.mark.parametrize('layer, shape', [
    (L.Linear(4, 3), (0, 4)), (L.BatchNorm2d(3), (0, 3, 2, 2)), (L.BatchNorm1d(3), (0, 3)),
    (L.LayerNorm(4), (0, 4)), (L.Flatten(), (0, 2, 3)),
])
def test_batch_zero(layer, shape):
    y = layer(np.zeros(shape, dtype=np.float32))
    assert y.shape[0] == 0 and layer.backward(np.zeros_like(y)).shape == shape
    assert all(not g.any() for g in layer.grads.values())


@pytest.mark.parametrize('call, error, match', [
    (lambda: L.Linear(4, 3)(np.zeros((2, 4))), TypeError, 'Linear holds float32 parameters'),
    (lambda: L.Linear(4, 3)(np.zeros((2, 5), dtype=np.float32)),
     ValueError, r'x must have shape \(\.\.\., 4\)'),
    (lambda: L.Linear(0, 3), ValueError, 'in_features must be a positive int'),
    (lambda: L.BatchNorm2d(3)(np.zeros((2, 3, 4), dtype=np.float32)),
     ValueError, r'x must be \(N, C, H, W\)'),
    (lambda: L.BatchNorm1d(3)(np.zeros((2, 3, 4, 4), dtype=np.float32)),
     ValueError, r'\(N, C\) or \(N, C, L\)'),
    (lambda: L.BatchNorm2d(3)(np.zeros((2, 4, 2, 2), dtype=np.float32)), ValueError, 'C=3'),
    (lambda: L.BatchNorm1d(3)(np.zeros((1, 3), dtype=np.float32)), ValueError, 'Expected more than 1 value'),
    (lambda: L.BatchNorm2d(3, momentum=2), ValueError, 'momentum'),
    (lambda: L.LayerNorm(4)(np.zeros((2, 5), dtype=np.float32)),
     ValueError, r'x must have shape \(\.\.\., 4\)'),
    (lambda: L.LayerNorm(4, channels_first=True)(np.zeros((2, 4), dtype=np.float32)),
     ValueError, r'\(N, C, H, W\)'),
    (lambda: L.LayerNorm((2, 3.5)), TypeError, 'normalized_shape must be an int, got 3.5'),
    (lambda: L.LayerNorm(()), ValueError, 'normalized_shape must name at least one axis'),
    (lambda: L.LayerNorm((2, 3), channels_first=True), ValueError, 'channels_first LayerNorm normalises one'),
    (lambda: L.LayerNorm((2, 3))(np.zeros((4, 3, 2), dtype=np.float32)), ValueError,
     r'x must have shape \(\.\.\., 2, 3\), got \(4, 3, 2\)'),
    (lambda: L.Flatten(3)(np.zeros((2, 3), dtype=np.float32)), ValueError, 'cannot flatten axes 3..-1'),
])
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bn_counter_not_incremented_on_error():
    bn = L.BatchNorm1d(3)
    with pytest.raises(ValueError):
        bn(np.zeros((1, 3), dtype=np.float32))
    assert int(bn.buffers['num_batches_tracked']) == 0


# -- PyTorch: load the official state_dict, compare outputs and gradients --------------------------
@pytest.mark.parametrize('name', ['linear', 'bn1d', 'bn1d_3d', 'bn2d', 'bn2d_eval', 'bn2d_momentum_none',
                                  'layer_norm', 'layer_norm_channels_first', 'flatten'])
def test_matches_torch(name):
    torch = pytest.importorskip('torch')
    nn = torch.nn
    cases = {
        'linear': (nn.Linear(4, 3), L.Linear(4, 3, **F64), (2, 3, 4), True),
        'bn1d': (nn.BatchNorm1d(3), L.BatchNorm1d(3, **F64), (5, 3), True),
        'bn1d_3d': (nn.BatchNorm1d(3, momentum=0.3), L.BatchNorm1d(3, momentum=0.3, **F64), (2, 3, 4), True),
        'bn2d': (nn.BatchNorm2d(3), L.BatchNorm2d(3, **F64), (2, 3, 3, 2), True),
        'bn2d_eval': (nn.BatchNorm2d(3), L.BatchNorm2d(3, **F64), (2, 3, 3, 2), False),
        'bn2d_momentum_none': (nn.BatchNorm2d(2, momentum=None), L.BatchNorm2d(2, momentum=None, **F64),
                               (2, 2, 2, 2), True),
        'layer_norm': (nn.LayerNorm(5, eps=1e-6), L.LayerNorm(5, eps=1e-6, **F64), (2, 3, 5), True),
        'layer_norm_channels_first': (None, L.LayerNorm(3, channels_first=True, **F64), (2, 3, 2, 2), True),
        'flatten': (nn.Flatten(), L.Flatten(**F64), (2, 3, 2, 2), True),
    }
    tmod, layer, shape, train = cases[name]
    if tmod is None:                                          # NCHW LayerNorm over C = permute + LayerNorm
        class ChannelsFirst(nn.LayerNorm):
            def forward(self, x):
                return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        tmod = ChannelsFirst(3)
    with torch.no_grad():
        for p in tmod.parameters():
            p.copy_(torch.randn(p.shape))
        for key, buf in tmod.named_buffers():
            if 'running_var' in key:
                buf.copy_(torch.rand(buf.shape) + 0.5)
            elif 'running_mean' in key:
                buf.copy_(torch.randn(buf.shape))
    tmod = tmod.double().train(train)
    layer.load_state_dict({k: v.numpy() for k, v in tmod.state_dict().items()})
    layer.train(train)
    for _ in range(3):                                        # several steps: running statistics
        x = normal(*shape)
        xt = torch.tensor(x, requires_grad=True)
        tmod.zero_grad()
        yt, y = tmod(xt), layer(x)
    dout = normal(*y.shape)
    yt.backward(torch.tensor(dout))
    layer.zero_grad()
    dx = layer.backward(dout)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for key, p in tmod.named_parameters():
        np.testing.assert_allclose(layer.grads[key], p.grad.numpy(), rtol=1e-10, atol=1e-12)
    for key, value in tmod.state_dict().items():
        np.testing.assert_allclose(layer.state_dict()[key], value.numpy(), rtol=1e-12, atol=1e-14)
        assert layer.state_dict()[key].shape == tuple(value.shape)


# -- misuse and edge cases, compared with torch --------------------------------------------------------------
def test_backward_before_forward_says_so():
    with pytest.raises(RuntimeError, match='call forward'):               # not AttributeError: _cache
        L.Linear(3, 2).backward(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(RuntimeError, match='Flatten.backward needs'):
        L.Flatten().backward(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(AttributeError, match='no_such_thing'):             # other names: AttributeError
        L.Linear(3, 2).no_such_thing


@pytest.mark.parametrize('state, error, match', [
    ([('weight', np.zeros((2, 3)))], TypeError, 'state must be a mapping'),
    ({'weight': np.zeros((2, 3)), 'bias': np.ones(2) * 1j}, TypeError, 'bias must hold real numbers'),
    ({'weight': np.zeros((2, 3)), 'bias': np.array(['a', 'b'])}, TypeError, 'bias must hold real numbers'),
    ({'weight': np.zeros((2, 3))}, ValueError, r"missing keys \['bias'\]"),      # also a KeyError
    ({'weight': np.zeros((2, 3)), 'bias': np.zeros(2), 3: 0}, KeyError, r"unexpected keys \[3\]"),
])
def test_load_state_dict_rejects_bad_state_without_copying(state, error, match):
    layer = L.Linear(3, 2, **F64)
    before = layer.state_dict()
    with pytest.raises(error, match=match):
        layer.load_state_dict(state)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_flatten_dims_must_be_ints():
    with pytest.raises(TypeError, match='start_dim must be an int, got 1.5'):   # not truncated to 1
        L.Flatten(1.5)
    with pytest.raises(TypeError, match="end_dim must be an int, got 'a'"):
        L.Flatten(1, 'a')


def test_flatten_backward_keeps_the_input_dtype():
    layer = L.Flatten()
    y = layer(np.ones((2, 3, 2, 2), np.float32))
    assert layer.backward(y.astype(np.float64)).dtype == np.float32      # the input's dtype


def test_sequential_rejects_what_is_not_a_layer():
    with pytest.raises(TypeError, match='Sequential takes numpyconv layers .* got int at position 1'):
        Sequential(ReLU(), 3)                                          # TypeError at construction


@pytest.mark.parametrize('layer, shape, match', [
    (L.Linear(4, 3), (2, 5), r'input_shape must be \(\.\.\., 4\), got \(2, 5\)'),
    (L.BatchNorm2d(3), (2, 5, 4, 4), r'input_shape must be \(N, 3, H, W\), got \(2, 5, 4, 4\)'),
    (L.BatchNorm1d(3), (2, 3, 4, 4), r'input_shape must be \(N, 3\) or \(N, 3, L\)'),
    (L.LayerNorm(6), (2, 5), r'input_shape must be \(\.\.\., 6\)'),
    (L.LayerNorm(4, channels_first=True), (2, 3, 4, 4), r'input_shape must be \(N, 4, H, W\)'),
    (nc.GlobalAvgPool2d(), (2, 3), r'input_shape must be \(N, C, H, W\), got \(2, 3\)'),
    (nc.Upsample(2), (2, 3), r'input_shape must be \(N, C, H, W\)'),
    (nc.AvgPool2d(2), (2, 3, 1), r'input_shape must be \(N, C, H, W\)'),
    (nc.ReLU(), (2, -1), r'input_shape must be a tuple of non-negative ints, got \(2, -1\)'),
])
def test_count_checks_the_input_shape(layer, shape, match):
    with pytest.raises(ValueError, match=match):                         # refused, not counted
        count(layer, shape)


def test_channels_first_layer_norm_dout_error_in_nchw():
    layer = L.LayerNorm(4, channels_first=True, **F64)
    layer(normal(2, 4, 3, 5))
    with pytest.raises(ValueError, match=r'dout must have shape \(2, 4, 3, 5\), got \(2, 2, 3, 5\)'):
        layer.backward(normal(2, 2, 3, 5))                               # shapes in NCHW, as given


@pytest.mark.parametrize('shape, affine, bias', [(5, False, True), (5, True, False), ((3, 5), True, True)])
def test_layer_norm_elementwise_affine_bias_and_shape_as_torch(shape, affine, bias):
    torch = pytest.importorskip('torch')
    tmod = torch.nn.LayerNorm(shape, 1e-5, affine, bias).double()
    layer = L.LayerNorm(shape, 1e-5, affine, bias, **F64)
    assert list(layer.state_dict()) == list(tmod.state_dict())
    if affine:
        with torch.no_grad():
            tmod.weight.normal_()
        layer.load_state_dict({k: v.numpy() for k, v in tmod.state_dict().items()})
    x, dout = normal(2, 3, 5), normal(2, 3, 5)
    xt = torch.tensor(x, requires_grad=True)
    tmod(xt).backward(torch.tensor(dout))
    np.testing.assert_allclose(layer(x), tmod(xt).detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for key, p in tmod.named_parameters():
        np.testing.assert_allclose(layer.grads[key], p.grad.numpy(), rtol=1e-10, atol=1e-12)
    gradcheck_layer(layer, x, mode='full')


def test_layer_norm_over_two_axes_is_layer_norm_of_their_product():
    layer = randomise(L.LayerNorm((3, 4), **F64))                       # torch's normalized_shape tuple
    x, dout = normal(2, 5, 3, 4), normal(2, 5, 3, 4)
    flat = L.LayerNorm(12, **F64)
    flat.load_state_dict({k: v.reshape(12) for k, v in layer.state_dict().items()})
    np.testing.assert_allclose(layer(x), flat(x.reshape(2, 5, 12)).reshape(x.shape), rtol=1e-13)
    np.testing.assert_allclose(layer.backward(dout), flat.backward(dout.reshape(2, 5, 12)).reshape(x.shape),
                               rtol=1e-13)
    assert layer.grads['weight'].shape == (3, 4) and count(layer, (2, 5, 3, 4)) == (24, 0)
    gradcheck_layer(layer, x, mode='full')
    assert layer(np.zeros((0, 3, 4))).shape == (0, 3, 4)                 # batch 0


def test_state_dict_key_order_matches_torch():
    torch = pytest.importorskip('torch')
    nn = torch.nn
    tmod = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model = Sequential(L.Linear(4, 3), L.BatchNorm1d(3), L.Linear(3, 2))
    assert list(model.state_dict()) == list(tmod.state_dict())             # buffers after their params
    model.load_state_dict({k: v.numpy() for k, v in tmod.state_dict().items()})
    state = model.state_dict()
    assert state['1.num_batches_tracked'].dtype == np.int64 and state['1.num_batches_tracked'].shape == ()


# -- zero_grad: lazy, with the same observable gradients ------------------------------------------
class _FirstOnly(nc.Module):
    """Two Linear children; forward and backward use only the first."""

    def __init__(self):
        super().__init__(dtype=np.float64, rng=0)
        self.first = self.add_module('first', L.Linear(3, 2, dtype=np.float64, rng=1))
        self.second = self.add_module('second', L.Linear(3, 2, dtype=np.float64, rng=2))

    def forward(self, x):
        return self.first(x)

    def backward(self, dout):
        return self.first.backward(dout)


def _one_step(model, x, dout):
    model.zero_grad()
    model.forward(x)
    model.backward(dout)
    return {k: g.copy() for k, g in model.grads.items()}


def test_zero_grad_then_backward_gives_one_backward_gradients_in_the_held_arrays():
    model = Sequential(L.Linear(4, 5, dtype=np.float64, rng=0), ReLU(),
                       L.Linear(5, 3, dtype=np.float64, rng=1))
    x, dout = normal(6, 4), normal(6, 3)
    held = model.grads                                   # the arrays themselves, kept across steps
    first = _one_step(model, x, dout)
    model.forward(x)
    model.backward(dout)                                 # accumulates: twice the gradient
    for k, g in held.items():
        np.testing.assert_allclose(g, 2 * first[k], rtol=1e-14)
    again = _one_step(model, x, dout)
    for k, g in held.items():
        np.testing.assert_array_equal(g, first[k])
        np.testing.assert_array_equal(again[k], first[k])


def test_zero_grad_clears_what_is_read_and_what_no_backward_writes():
    model = _FirstOnly()
    x, dout = normal(4, 3), normal(4, 2)
    model.second.forward(x)
    model.second.backward(dout)                          # gradients in the unused child
    held = model.second.grads['weight']
    assert np.any(held != 0)
    model.zero_grad()
    assert all(np.all(g == 0) for g in model.grads.values())
    model.second.forward(x)
    model.second.backward(dout)
    model.zero_grad()
    model.forward(x)
    model.backward(dout)                                 # the outermost backward fills 'second'
    np.testing.assert_array_equal(held, 0)
    assert np.any(model.first.grads['weight'] != 0)


def test_zero_grad_is_complete_when_the_backward_raises():
    model = _FirstOnly()
    x, dout = normal(4, 3), normal(4, 2)
    model.forward(x)
    model.backward(dout)
    held = model.first.grads['weight']
    model.zero_grad()
    with pytest.raises(ValueError):
        model.backward(normal(4, 5))                     # wrong shape: nothing written
    np.testing.assert_array_equal(held, 0)


def test_optimizer_step_after_lazy_zero_grad_uses_only_the_new_gradient():
    model = _FirstOnly()
    x, dout = normal(4, 3), normal(4, 2)
    model.forward(x)
    model.backward(dout)
    model.second.forward(x)
    model.second.backward(dout)
    opt = nc.optim.SGD(model, lr=0.5)
    model.zero_grad()
    model.forward(x)
    model.backward(dout)
    before = {k: p.copy() for k, p in model.params.items()}
    expected = {k: g.copy() for k, g in model.grads.items()}
    opt.step()
    for k, p in model.params.items():
        np.testing.assert_allclose(p, before[k] - 0.5 * expected[k], rtol=1e-14)
    np.testing.assert_array_equal(model.params['second.weight'], before['second.weight'])
