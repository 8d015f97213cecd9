"""Activations: references, gradcheck, identities, PyTorch's kinks, layers, errors, torch."""
import math

import numpy as np
import pytest

import numpyconv
from numpyconv import activations as A
from numpyconv.gradcheck import gradcheck, gradcheck_layer
from numpyconv.module import count
from numpyconv.reference import activations as ref_act, blocks as ref

RNG = np.random.default_rng(2024)
F64 = dict(dtype=np.float64, rng=0)
NEW = ('relu6', 'hardsigmoid', 'hardswish', 'silu')


def normal(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def away_from_kinks(*shape, dtype=np.float64):
    """Values in (-8, 8) at least 0.01 from every kink (0, 6, +-3), for finite differences."""
    x = RNG.uniform(-8, 8, shape)
    for kink in (0.0, 6.0, -3.0, 3.0):
        near = np.abs(x - kink) < 0.01
        x[near] += 0.05
    return x.astype(dtype)


# One row per case: name -> (forward(*inputs), backward, make_inputs(dtype), reference(*inputs)).
CASES = {
    'relu': (A.relu_forward, A.relu_backward, lambda dt: (normal(2, 3, 4, dtype=dt),), ref.relu),
    'sigmoid': (A.sigmoid_forward, A.sigmoid_backward, lambda dt: (normal(3, 5, dtype=dt),), ref.sigmoid),
    'sigmoid_T': (lambda x: A.sigmoid_forward(x, 2.5), A.sigmoid_backward,
                  lambda dt: (normal(3, 5, dtype=dt),), lambda x: ref.sigmoid(x, 2.5)),
    'softmax': (A.softmax_forward, A.softmax_backward, lambda dt: (normal(3, 5, dtype=dt),), ref.softmax),
    'softmax_axis1_T': (lambda x: A.softmax_forward(x, 1, 0.7), A.softmax_backward,
                        lambda dt: (normal(2, 4, 3, dtype=dt),), lambda x: ref.softmax(x, 1, 0.7)),
    'softmax_axis0_T': (lambda x: A.softmax_forward(x, axis=-3, temperature=3.0), A.softmax_backward,
                        lambda dt: (normal(3, 2, 2, dtype=dt),), lambda x: ref.softmax(x, 0, 3.0)),
    'gelu': (A.gelu_forward, A.gelu_backward, lambda dt: (3 * normal(4, 5, dtype=dt),), ref.gelu),
    'relu6': (A.relu6_forward, A.relu6_backward, lambda dt: (away_from_kinks(3, 7, dtype=dt),),
              ref_act.relu6),
    'hardsigmoid': (A.hardsigmoid_forward, A.hardsigmoid_backward,
                    lambda dt: (away_from_kinks(3, 7, dtype=dt),), ref_act.hardsigmoid),
    'hardswish': (A.hardswish_forward, A.hardswish_backward, lambda dt: (away_from_kinks(3, 7, dtype=dt),),
                  ref_act.hardswish),
    'silu': (A.silu_forward, A.silu_backward, lambda dt: (away_from_kinks(2, 3, 4, dtype=dt),), ref_act.silu),
}


@pytest.mark.parametrize('name', CASES)
def test_forward_matches_reference(name):
    forward, _, make, reference = CASES[name]
    inputs = make(np.float64)
    out, _ = forward(*inputs)
    np.testing.assert_allclose(out, reference(*inputs), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize('name', NEW)
@pytest.mark.parametrize('shape', [(0, 3), (1, 5), (2, 3, 4, 5)])
def test_backward_matches_reference(name, shape):
    forward, backward, _, _ = CASES[name]
    x = away_from_kinks(*shape)
    y, cache = forward(x)
    dout = normal(*y.shape)
    expected = getattr(ref_act, name + '_backward')(dout, x)
    np.testing.assert_allclose(backward(dout, cache)[0], expected[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('name', CASES)
def test_gradcheck(name):
    forward, backward, make, _ = CASES[name]
    gradcheck(forward, backward, make(np.float64), mode='full')


@pytest.mark.parametrize('name', CASES)
def test_float32_preserved_and_close(name):
    forward, backward, make, reference = CASES[name]
    inputs = make(np.float32)
    out, cache = forward(*inputs)
    grads = backward(np.ones(np.shape(out), dtype=np.float32), cache)
    assert out.dtype == np.float32 and grads[0].dtype == np.float32
    np.testing.assert_allclose(out, reference(*[a.astype(np.float64) for a in inputs]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', CASES)
def test_inputs_and_dout_not_mutated(name):
    forward, backward, make, _ = CASES[name]
    inputs = make(np.float64)
    copies = [a.copy() for a in inputs]
    out, cache = forward(*inputs)
    dout = normal(*np.shape(out))
    dout_copy = dout.copy()
    backward(dout, cache)
    backward(dout, cache)                                         # twice on one cache
    for a, c in zip(inputs, copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(dout, dout_copy)


@pytest.mark.parametrize('name', CASES)
def test_batch_zero(name):
    forward, backward, _, _ = CASES[name]
    with np.errstate(all='raise'):
        out, cache = forward(np.zeros((0, 3, 2)))
        (dx,) = backward(np.zeros_like(out), cache)
    assert out.shape == dx.shape == (0, 3, 2)


# -- identities ------------------------------------------------------------------------------
def test_softmax_temperature_equals_softmax_of_scaled_logits():
    z, dp, t = normal(3, 6), normal(3, 6), 4.0
    p_t, cache_t = A.softmax_forward(z, temperature=t)
    p_1, cache_1 = A.softmax_forward(z / t)
    np.testing.assert_allclose(p_t, p_1, rtol=1e-14)
    # chain rule through z / T: grad w.r.t. z is grad w.r.t. z/T divided by T
    np.testing.assert_allclose(A.softmax_backward(dp, cache_t)[0], A.softmax_backward(dp, cache_1)[0] / t,
                               rtol=1e-12)


def test_softmax_shift_invariance_sums_and_no_overflow():
    z = normal(4, 5)
    p, cache = A.softmax_forward(z)
    np.testing.assert_allclose(A.softmax_forward(z + 1000.0)[0], p, rtol=1e-12)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0)
    dz = A.softmax_backward(normal(4, 5), cache)[0]
    np.testing.assert_allclose(dz.sum(axis=-1), 0.0, atol=1e-14)       # (eq. 11): sum_i dz_i = 0
    assert np.isfinite(A.softmax_forward(np.array([[1e4, -1e4, 0.0]]))[0]).all()


def test_sigmoid_temperature_and_symmetry():
    x = normal(10)
    np.testing.assert_allclose(A.sigmoid_forward(x, 3.0)[0], A.sigmoid_forward(x / 3.0)[0], rtol=1e-15)
    np.testing.assert_allclose(A.sigmoid_forward(x)[0] + A.sigmoid_forward(-x)[0], 1.0)
    assert np.isfinite(A.sigmoid_forward(np.array([-1e4, 1e4]))[0]).all()


def test_relu_gradient_zero_at_zero_and_gelu_limits():
    y, cache = A.relu_forward(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(A.relu_backward(np.ones(3), cache)[0], [0.0, 0.0, 1.0])
    x = np.array([-30.0, 0.0, 30.0])
    y, cache = A.gelu_forward(x)
    np.testing.assert_allclose(y, [0.0, 0.0, 30.0], atol=1e-12)
    np.testing.assert_allclose(A.gelu_backward(np.ones(3), cache)[0], [0.0, 0.5, 1.0], atol=1e-12)


def test_hardswish_is_x_times_hardsigmoid_and_product_rule():
    x = away_from_kinks(50)
    s, s_cache = A.hardsigmoid_forward(x)
    y, cache = A.hardswish_forward(x)
    np.testing.assert_allclose(y, x * s, rtol=1e-15)
    dout = normal(50)
    ds = A.hardsigmoid_backward(np.ones(50), s_cache)[0]
    np.testing.assert_allclose(A.hardswish_backward(dout, cache)[0], dout * (s + x * ds), rtol=1e-13)


def test_hardsigmoid_symmetry_relu6_clamp_and_silu_sigmoid():
    x = away_from_kinks(40)
    np.testing.assert_allclose(A.hardsigmoid_forward(x)[0] + A.hardsigmoid_forward(-x)[0], 1.0, rtol=1e-15)
    np.testing.assert_array_equal(A.relu6_forward(x)[0], np.minimum(A.relu_forward(x)[0], 6))
    np.testing.assert_allclose(A.hardsigmoid_forward(x)[0], A.relu6_forward(x + 3)[0] / 6, rtol=1e-15)
    s = A.sigmoid_forward(x)[0]
    np.testing.assert_allclose(A.silu_forward(x)[0], x * s, rtol=1e-15)
    # silu is odd up to x: silu(x) - silu(-x) = x
    np.testing.assert_allclose(A.silu_forward(x)[0] - A.silu_forward(-x)[0], x, rtol=1e-12, atol=1e-14)


KINKS = np.array([-np.inf, -4.0, -3.0, -2.9999999, -1e-300, 0.0, 1e-300, 2.9999999, 3.0, 3.5, 5.9999999, 6.0,
                  6.0000001, 7.0, np.inf])


def _torch_value_and_grad(torch, name, x, dout):
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn.functional, name)(xt)
    yt.backward(torch.tensor(dout))
    return yt.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize('name', ('relu',) + NEW)
def test_values_and_gradients_at_kinks_match_torch(name):
    torch = pytest.importorskip('torch')
    forward, backward = getattr(A, name + '_forward'), getattr(A, name + '_backward')
    for x in (KINKS, np.tile(KINKS, 5)):                         # PyTorch's scalar and vectorised paths
        dout = np.linspace(0.5, 2.0, x.size)
        with np.errstate(invalid='ignore'):                          # inf * 0: NaN, as in PyTorch
            y, cache = forward(x)
            dx = backward(dout, cache)[0]
        expected_y, expected_dx = _torch_value_and_grad(torch, name, x, dout)
        if name == 'silu':                                  # exp differs from PyTorch's by an ulp
            np.testing.assert_allclose(y, expected_y, rtol=1e-14, atol=0)
            np.testing.assert_allclose(dx, expected_dx, rtol=1e-14, atol=0)
            continue
        np.testing.assert_array_equal(y, expected_y)                        # NaN where torch has NaN
        if name == 'hardsigmoid':          # PyTorch's backward multiplies by float32(1/6), also in float64
            np.testing.assert_array_equal(expected_dx, dout * (dx != 0) * float(np.float32(1 / 6)))
            np.testing.assert_allclose(dx, expected_dx, rtol=5e-8, atol=0)
        else:
            np.testing.assert_array_equal(dx, expected_dx)


@pytest.mark.parametrize('name', ('relu',) + NEW)
def test_nan_propagates_with_torchs_scalar_gradient(name):
    torch = pytest.importorskip('torch')
    forward, backward = getattr(A, name + '_forward'), getattr(A, name + '_backward')
    x, dout = np.array([np.nan]), np.array([1.5])
    y, cache = forward(x)
    expected_y, expected_dx = _torch_value_and_grad(torch, name, x, dout)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(backward(dout, cache)[0], expected_dx)


# -- layers ------------------------------------------------------------------------------------------
LAYERS = {
    'relu': (lambda: A.ReLU(**F64), 'ReLU', (2, 3, 2, 2)),
    'relu6': (lambda: A.ReLU6(**F64), 'ReLU6', (2, 3, 2, 2)),
    'hardsigmoid': (lambda: A.Hardsigmoid(**F64), 'Hardsigmoid', (2, 5)),
    'hardswish': (lambda: A.Hardswish(**F64), 'Hardswish', (2, 5)),
    'silu': (lambda: A.SiLU(**F64), 'SiLU', (2, 3, 2)),
    'gelu': (lambda: A.GELU(**F64), 'GELU', (2, 5)),
    'sigmoid': (lambda: A.Sigmoid(**F64), 'Sigmoid', (2, 5)),
    'softmax1': (lambda: A.Softmax(1, **F64), ('Softmax', 1), (2, 4, 3)),
    'softmax-1': (lambda: A.Softmax(dim=-1, **F64), ('Softmax', -1), (2, 3, 4)),
    'identity': (lambda: A.Identity(54, unused='x', **F64), 'Identity', (2, 3)),
}


@pytest.mark.parametrize('name', LAYERS)
def test_layer_gradcheck_float32_and_no_mutation(name):
    make, _, shape = LAYERS[name]
    x = 3 * away_from_kinks(*shape)
    gradcheck_layer(make(), x, mode='full')
    layer = make()
    x32 = x.astype(np.float32)
    copy = x32.copy()
    y = layer(x32)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32 and dx.shape == x.shape
    np.testing.assert_array_equal(x32, copy)
    assert count(layer, shape) == (0, 0) and layer.state_dict() == {}


@pytest.mark.parametrize('name', LAYERS)
def test_layer_matches_torch(name):
    torch = pytest.importorskip('torch')
    make, torch_name, shape = LAYERS[name]
    args = torch_name[1:] if isinstance(torch_name, tuple) else ()
    tmod = getattr(torch.nn, torch_name[0] if args else torch_name)(*args)
    layer = make()
    assert list(layer.state_dict()) == list(tmod.state_dict()) == []
    x, dout = 3 * away_from_kinks(*shape), normal(*shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = tmod(xt)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    rtol = 5e-8 if name == 'hardsigmoid' else 1e-10                # PyTorch's float32 constant 1/6
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=rtol, atol=1e-12)


@pytest.mark.parametrize('shape', [(5,), (3, 4), (2, 3, 4), (2, 3, 2, 2)])
def test_softmax_without_dim_takes_torchs_legacy_axis(shape):
    torch = pytest.importorskip('torch')
    x = normal(*shape)
    with pytest.warns(UserWarning):
        expected = torch.nn.Softmax()(torch.tensor(x)).numpy()           # implicit dim: deprecated in torch
    np.testing.assert_allclose(A.Softmax(**F64)(x), expected, rtol=1e-12)


def test_inplace_is_accepted_and_gives_a_new_array():
    x = normal(2, 3)
    for cls in (A.ReLU, A.ReLU6, A.Hardswish, A.Hardsigmoid, A.SiLU):
        layer = cls(True)
        y = layer(x)
        assert y is not x and layer.inplace
        np.testing.assert_array_equal(x, x.copy())
    assert A.Identity()(x) is not x


def test_layers_are_exported_and_distinct():
    for name in ('ReLU6', 'SiLU', 'Hardswish', 'Hardsigmoid', 'Softmax', 'Identity', 'relu6_forward',
                 'silu_backward', 'hardswish_forward', 'hardsigmoid_backward'):
        assert hasattr(numpyconv, name)
    assert not isinstance(A.ReLU6(), A.ReLU)


@pytest.mark.parametrize('call, error, match', [
    (lambda: A.relu_forward([1.0, 2.0]), TypeError, 'numpy.ndarray'),
    (lambda: A.relu6_forward(np.arange(3)), TypeError, 'x must be float32 or float64'),
    (lambda: A.silu_forward(np.ones(3, dtype=np.float16)), TypeError, 'x must be float32 or float64'),
    (lambda: A.sigmoid_forward(normal(3), 0.0), ValueError, 'temperature'),
    (lambda: A.sigmoid_forward(normal(3), 'hot'), TypeError, 'temperature'),
    (lambda: A.softmax_forward(normal(3, 4), axis=2), ValueError, 'axis 2 is out of range'),
    (lambda: A.softmax_forward(normal(3, 4), axis=1.0), TypeError, 'axis must be an int'),
    (lambda: A.softmax_forward(normal(3, 4), temperature=-1), ValueError, 'temperature'),
    (lambda: A.Softmax(1.5), TypeError, 'dim must be an int or None'),
    (lambda: A.ReLU6(inplace=1), TypeError, 'inplace must be a bool'),
    (lambda: A.ReLU()(np.zeros(3, dtype=np.int64)), TypeError, 'float32 or float64'),
    (lambda: A.hardswish_backward(np.ones(3), A.relu_forward(normal(3))[1]), TypeError,
     'hardswish_backward was given the cache of relu_forward'),
])
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_backward_checks_dout_shape_and_dtype():
    _, cache = A.relu_forward(normal(2, 3))
    with pytest.raises(ValueError, match=r'dout must have shape \(2, 3\), got \(3, 2\)'):
        A.relu_backward(normal(3, 2), cache)
    _, cache = A.silu_forward(normal(2, 3))
    with pytest.raises(TypeError, match='dout must be a real floating array'):
        A.silu_backward(np.ones((2, 3), dtype=int), cache)


def test_layer_backward_before_forward_says_so():
    with pytest.raises(RuntimeError, match='call forward'):
        A.SiLU().backward(np.zeros(3))


@pytest.mark.parametrize('name', ['relu', 'sigmoid_T', 'softmax_T', 'gelu', 'relu6', 'hardsigmoid',
                                  'hardswish', 'silu'])
def test_matches_torch(name):
    torch = pytest.importorskip('torch')
    F = torch.nn.functional
    cases = {
        'relu': (F.relu, A.relu_forward, A.relu_backward),
        'sigmoid_T': (lambda x: torch.sigmoid(x / 2.5), lambda x: A.sigmoid_forward(x, 2.5),
                      A.sigmoid_backward),
        'softmax_T': (lambda x: F.softmax(x / 0.7, dim=1), lambda x: A.softmax_forward(x, 1, 0.7),
                      A.softmax_backward),
        'gelu': (F.gelu, A.gelu_forward, A.gelu_backward),
        'relu6': (F.relu6, A.relu6_forward, A.relu6_backward),
        'hardsigmoid': (F.hardsigmoid, A.hardsigmoid_forward, A.hardsigmoid_backward),
        'hardswish': (F.hardswish, A.hardswish_forward, A.hardswish_backward),
        'silu': (F.silu, A.silu_forward, A.silu_backward),
    }
    torch_fn, forward, backward = cases[name]
    x = 4 * normal(3, 4, 5)
    out, cache = forward(x)
    dout = normal(*out.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_fn(xt)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    rtol = 5e-8 if name == 'hardsigmoid' else 1e-10                # PyTorch's float32 constant 1/6
    np.testing.assert_allclose(backward(dout, cache)[0], xt.grad.numpy(), rtol=rtol, atol=1e-12)


def test_silu_extremes_are_finite():
    y, cache = A.silu_forward(np.array([-800.0, 800.0]))
    np.testing.assert_array_equal(y, [-0.0, 800.0])
    np.testing.assert_array_equal(A.silu_backward(np.ones(2), cache)[0], [0.0, 1.0])
    assert math.isclose(A.silu_forward(np.array([1.0]))[0][0], 1 / (1 + math.exp(-1)), rel_tol=1e-15)
