"""Tests of numpyconv.gradcheck: it must pass correct pairs and catch every kind of wrong one."""
import itertools
import re
import types
import warnings

import numpy as np
import pytest

from numpyconv import (GradcheckError, GradcheckReport, Module, gradcheck, gradcheck_layer, gradgradcheck,
                       jvpcheck)
from numpyconv.conv import Conv2d, conv2d_backward, conv2d_forward


def _rng():
    return np.random.default_rng(0)


def scaled_tanh_forward(x, scale):
    y = np.tanh(scale * x)
    return y, (y, scale, x)


def scaled_tanh_backward(dout, cache):
    y, scale, x = cache
    return dout * scale * (1 - y ** 2), np.sum(dout * x * (1 - y ** 2))


def relu_forward(x):
    return np.maximum(x, 0), x > 0


def relu_backward(dout, positive):
    return dout * positive


def _conv(x, w, b):
    return conv2d_forward(x, w, b, stride=2, padding=1, groups=2)


def _conv_inputs(rng):
    return rng.standard_normal((2, 4, 5, 5)), rng.standard_normal((6, 2, 3, 3)), rng.standard_normal(6)


def test_correct_pairs_pass():
    rng = _rng()
    report = gradcheck(_conv, conv2d_backward, _conv_inputs(rng))
    assert isinstance(report, GradcheckReport) and report.ok and report.mode == 'full'
    assert [r.name for r in report.results] == ['input0', 'input1', 'input2']
    assert max(r.max_rel_error for r in report.results) < 1e-6
    report = gradcheck(scaled_tanh_forward, scaled_tanh_backward, (rng.standard_normal((3, 4)), 0.7),
                       names=['x', 'scale'])
    assert report.ok and report.results[1].name == 'scale' and report.results[1].worst_index == ()


def test_wrong_backward_fails_naming_input_and_index():
    def wrong(dout, cache):
        dx, dw, db = conv2d_backward(dout, cache)
        dw = dw.copy()
        dw[1, 0, 2, 1] += 0.5
        return dx, dw, db

    with pytest.raises(GradcheckError) as info:
        gradcheck(_conv, wrong, _conv_inputs(_rng()), names=['x', 'weight', 'bias'])
    report = info.value.report
    assert not report.ok and [r.ok for r in report.results] == [True, False, True]
    assert report.results[1].worst_index == (1, 0, 2, 1)
    assert abs(report.results[1].analytical - report.results[1].numerical - 0.5) < 1e-6
    assert 'FAIL' in str(info.value) and 'weight' in str(info.value) and '(1, 0, 2, 1)' in str(info.value)


def test_wrong_gradient_shape_and_count():
    x = _rng().standard_normal((3, 4))
    report = gradcheck(relu_forward, lambda d, c: relu_backward(d, c).T, (x + 2,),
                       raise_exception=False)
    assert not report.ok and 'shape (4, 3), expected the input shape (3, 4)' in report.results[0].message
    with pytest.raises(ValueError, match='tuple of 2 gradients'):
        gradcheck(scaled_tanh_forward, lambda d, c: scaled_tanh_backward(d, c)[:1], (x, 0.5))
    report = gradcheck(relu_forward, lambda d, c: relu_backward(d, c).astype(np.float32), (x + 2,),
                       raise_exception=False)
    assert not report.ok and 'dtype float32' in report.results[0].message


def test_none_inputs_and_wrt():
    rng = _rng()
    x, w, _ = _conv_inputs(rng)
    report = gradcheck(_conv, conv2d_backward, (x, w, None))
    assert report.ok and [r.index for r in report.results] == [0, 1]
    report = gradcheck(_conv, conv2d_backward, (x, w, None), wrt=['w'], names=['x', 'w', 'b'])
    assert [r.index for r in report.results] == [1]

    def leaks_bias_grad(dout, cache):
        return conv2d_backward(dout, cache)[:2] + (np.zeros(6),)
    assert not gradcheck(_conv, leaks_bias_grad, (x, w, None), raise_exception=False).ok
    with pytest.raises(ValueError, match='cannot be checked'):
        gradcheck(_conv, conv2d_backward, (x, w, None), wrt=[2])


def test_unchecked_input_gradient_shape_still_validated():
    x, w, b = _conv_inputs(_rng())

    def bad_bias(dout, cache):
        dx, dw, db = conv2d_backward(dout, cache)
        return dx, dw, db[:3]
    report = gradcheck(_conv, bad_bias, (x, w, b), wrt=[0], raise_exception=False)
    assert not report.ok and report.results[0].ok and 'input2' in report.problems[0]


def test_multi_output_forward():
    def split_forward(x, w):
        return (x * w, None, np.sin(x)), (x, w)

    def split_backward(dout, cache):
        (x, w), (da, dnone, db) = cache, dout
        assert dnone is None
        return da * w + db * np.cos(x), da * x

    rng = _rng()
    assert gradcheck(split_forward, split_backward, (rng.standard_normal(5), rng.standard_normal(5))).ok


def test_returns_cache_false():
    def forward(x, a):
        return a * x ** 3

    def backward(dout, x, a):
        return 3 * a * x ** 2 * dout, np.sum(dout * x ** 3)
    assert gradcheck(forward, backward, (_rng().standard_normal(7), 1.5), returns_cache=False).ok


def test_random_mode_detects_wrong_gradient_on_large_input():
    x = _rng().uniform(0.5, 1.5, size=(60, 80))
    assert gradcheck(scaled_tanh_forward, scaled_tanh_backward, (x, 0.3)).mode == 'random'

    def wrong(dout, cache):
        dx, dscale = scaled_tanh_backward(dout, cache)
        return dx * 1.01, dscale
    with pytest.raises(GradcheckError) as info:
        gradcheck(scaled_tanh_forward, wrong, (x, 0.3), n_directions=4)
    report = info.value.report
    assert report.mode == 'random' and not report.results[0].ok and report.results[1].ok
    assert report.results[0].n_checked == 4 and report.results[0].worst_index in range(4)


@pytest.mark.parametrize('options, error, match', [   # were ZeroDivisionError or a vacuous pass
    (dict(eps=0), ValueError, r'eps must be finite and in \(0, inf\), got 0'),
    (dict(eps=-1e-6), ValueError, 'eps must be finite'),
    (dict(eps='1e-6'), TypeError, 'eps must be a real number'),
    (dict(atol=-1.0), ValueError, 'atol must be finite'),
    (dict(atol=0.0, rtol=0.0), ValueError, 'atol and rtol cannot both be 0'),
    (dict(n_directions=0, mode='random'), ValueError, 'n_directions must be a positive int'),
    (dict(wrt=True), ValueError, 'wrt entry True'),
])
def test_bad_options_raise(options, error, match):
    with pytest.raises(error, match=match):
        gradcheck(relu_forward, relu_backward, (_rng().standard_normal(4),), **options)


@pytest.mark.parametrize('atol, rtol', [(0.0, 1e-4), (1e-6, 0.0)])
def test_pure_relative_or_absolute_tolerance(atol, rtol):
    x = _rng().uniform(0.5, 1.5, size=5)
    report = gradcheck(scaled_tanh_forward, scaled_tanh_backward, (x, 0.3), atol=atol, rtol=rtol)
    assert report.ok and all(np.isfinite(r.max_rel_error) for r in report.results)

    def wrong(dout, cache):
        dx, dscale = scaled_tanh_backward(dout, cache)
        return dx * 1.01, dscale
    report = gradcheck(scaled_tanh_forward, wrong, (x, 0.3), atol=atol, rtol=rtol, raise_exception=False)
    assert not report.results[0].ok and 0.005 < report.results[0].max_rel_error < 0.02


def test_relu_at_zero_is_flagged_nondifferentiable():
    x = np.array([-1.0, 0.0, 2.0, 0.5, 0.0])
    with pytest.warns(UserWarning, match='non-differentiable'):
        report = gradcheck(relu_forward, relu_backward, (x,))
    assert report.ok and report.results[0].nondifferentiable == [(1,), (4,)]
    assert 'non-differentiable' in str(report) and 'Move the point' in str(report)
    with pytest.warns(UserWarning):
        report = gradcheck(relu_forward, relu_backward, (np.zeros((40, 60)),), raise_exception=False)
    assert report.mode == 'random' and len(report.results[0].nondifferentiable) == 10


def test_float32_inputs_run_in_float32_against_float64_differences_without_mutation():
    x, w, b = (a.astype(np.float32) for a in _conv_inputs(_rng()))
    copies = [a.copy() for a in (x, w, b)]
    report = gradcheck(_conv, conv2d_backward, (x, w, b))
    assert report.ok and (report.dtype, report.differences) == ('float32', 'float64')
    assert max(r.max_rel_error for r in report.results) < 1e-6
    for a, c in zip((x, w, b), copies):
        assert a.dtype == np.float32 and np.array_equal(a, c)

    def float64_gradients(dout, cache):                  # float dtypes are preserved: float32 in, float32 out
        return tuple(g.astype(np.float64) for g in conv2d_backward(dout, cache))
    report = gradcheck(_conv, float64_gradients, (x, w, b), raise_exception=False)
    assert not report.ok and 'dtype float64, expected float32' in report.results[0].message


def test_mutating_forward_is_reported():
    def forward(x):
        x *= 1.0 + 1e-3
        return x * 2, None
    report = gradcheck(forward, lambda d, c: 2 * d, (np.ones(3),), raise_exception=False)
    assert not report.ok and 'forward mutated its input input0' in report.problems

    def backward(dout, positive):
        dout *= positive
        return dout
    report = gradcheck(relu_forward, backward, (np.array([1.0, -1.0, 2.0]),), raise_exception=False)
    assert report.problems == ['backward mutated dout']


def test_integer_inputs_are_passed_unchanged():
    def pick_forward(x, idx):
        return x[idx], (x.shape, idx)

    def pick_backward(dout, cache):
        shape, idx = cache
        return np.bincount(idx, weights=dout, minlength=shape[0]), None
    report = gradcheck(pick_forward, pick_backward, (_rng().standard_normal(5), np.array([0, 3, 3])))
    assert report.ok and [r.index for r in report.results] == [0]


# -- layers ----------------------------------------------------------------------------------------
def _state(layer):
    return {k: v.copy() for k, v in {**layer.state_dict(), **layer.grads}.items()}


def test_gradcheck_layer_conv2d_passes_and_restores_state():
    layer = Conv2d(4, 6, 3, stride=2, padding=1, groups=2, dtype=np.float64, rng=0)
    layer.grads['weight'][...] = 3.0
    before = {**_state(layer), 'grad.weight': layer.grads['weight'].copy()}
    x = _rng().standard_normal((2, 4, 5, 5))
    x_copy = x.copy()
    report = gradcheck_layer(layer, x)
    assert report.ok and [r.name for r in report.results] == ['x', 'weight', 'bias']
    after = {**_state(layer), 'grad.weight': layer.grads['weight']}
    assert all(np.array_equal(before[k], after[k]) for k in before) and np.array_equal(x, x_copy)


def test_gradcheck_layer_sabotaged_backward_fails():
    class Sabotaged(Conv2d):
        def backward(self, dout):
            dx = super().backward(dout)
            self._grads['weight'] *= 0.9
            return dx

    layer = Sabotaged(3, 4, 3, dtype=np.float64, rng=0)
    with pytest.raises(GradcheckError) as info:
        gradcheck_layer(layer, _rng().standard_normal((1, 3, 5, 5)))
    assert [r.name for r in info.value.report.results if not r.ok] == ['weight']


def _float32_layers():
    """``name -> (layer, x)`` for float32 (default dtype) layers, a KernelWarehouse one included."""
    import numpyconv as nc
    rng = _rng()
    manager = nc.WarehouseManager(rng=0)
    kw = manager.reserve(4, 4, 3, padding=1)
    manager.store()
    manager.allocate([kw])

    def x(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    return {
        'Conv2d': (Conv2d(3, 4, 3, padding=1, rng=0), x(2, 3, 5, 5)),
        'OctaveConv2d': (nc.OctaveConv2d(4, 4, 3, padding=1, rng=0), (x(2, 2, 6, 6), x(2, 2, 3, 3))),
        'ODConv2d': (nc.ODConv2d(4, 4, 3, padding=1, rng=0), x(2, 4, 5, 5)),
        'KWConv2d': (kw, x(2, 4, 5, 5)),
        'DCNv4': (nc.DCNv4(channels=16, group=2, rng=0), x(2, 16, 5, 5)),
        'Involution2d': (nc.Involution2d(16, 3, rng=0), x(2, 16, 4, 4)),
        'Sequential': (nc.Sequential(Conv2d(3, 4, 3, rng=0), nc.BatchNorm2d(4), nc.ReLU(),
                                     nc.GlobalAvgPool2d(), nc.Linear(4, 2, rng=0)), x(2, 3, 5, 5)),
    }


@pytest.mark.parametrize('name', list(_float32_layers()))
def test_gradcheck_layer_checks_a_float32_layer_through_a_float64_copy(name):
    layer, x = _float32_layers()[name]                                   # was a TypeError
    before, grads = layer.state_dict(), {k: g.copy() for k, g in layer.grads.items()}
    report = gradcheck_layer(layer, x, mode='random', n_directions=4)
    assert report.ok and {r.name for r in report.results} >= set(layer.params)
    assert layer.dtype == np.float32 and all(v.dtype == np.float32 for v in layer.params.values())
    for key, value in layer.state_dict().items():                      # the layer is not touched
        np.testing.assert_array_equal(value, before[key])
    for key, value in layer.grads.items():
        np.testing.assert_array_equal(value, grads[key])


def test_float64_copy_keeps_shared_arrays_shared():
    from numpyconv.module import float64_copy
    layer = Conv2d(3, 4, 3, rng=0)
    layer.alias = layer.params['weight']                                 # one array, two references
    twin = float64_copy(layer)
    assert twin.alias is twin.params['weight'] and twin.alias.dtype == np.float64
    np.testing.assert_array_equal(twin.alias, layer.alias.astype(np.float64))


class _CentreTrackMean(Module):
    """Test helper: y = scale * (x - batch mean), updating a running mean at every forward."""

    def __init__(self):
        super().__init__(dtype=np.float64)
        self.add_param('scale', np.array([1.5, -0.5]))
        self.add_buffer('running_mean', np.zeros(2))

    def forward(self, x):
        self._buffers['running_mean'] += 0.1 * x.mean(axis=0)
        self._centred = x - x.mean(axis=0)
        return self._params['scale'] * self._centred

    def backward(self, dout):
        self._grads['scale'] += np.sum(dout * self._centred, axis=0)
        g = self._params['scale'] * dout
        return g - g.mean(axis=0)


def test_gradcheck_layer_restores_buffers_around_every_forward():
    layer = _CentreTrackMean()
    assert gradcheck_layer(layer, _rng().standard_normal((4, 2))).ok
    assert np.array_equal(layer.buffers['running_mean'], np.zeros(2))


class _TwoPath(Module):
    """Test helper with OctaveConv2d's tuple interface: (x_h, x_l) -> (y_h, y_l)."""

    def __init__(self):
        super().__init__(dtype=np.float64)
        self.add_param('weight', _rng().standard_normal((3, 2, 3, 3)))

    def forward(self, x):
        x_h, x_l = x
        y_h, self._cache = conv2d_forward(x_h, self._params['weight'], padding=1)
        self._x_l = x_l
        return y_h, None if x_l is None else x_l ** 2

    def backward(self, dout):
        dy_h, dy_l = dout
        dx_h, dw, _ = conv2d_backward(dy_h, self._cache)
        self._grads['weight'] += dw
        return dx_h, None if self._x_l is None else 2 * self._x_l * dy_l


def test_gradcheck_layer_tuple_input_and_output():
    rng = _rng()
    x_h, x_l = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((1, 1, 2, 2))
    report = gradcheck_layer(_TwoPath(), (x_h, x_l))
    assert report.ok and [r.name for r in report.results] == ['x[0]', 'x[1]', 'weight']
    report = gradcheck_layer(_TwoPath(), (x_h, None), wrt=['weight'])
    assert report.ok and [r.name for r in report.results] == ['weight']


def test_gradcheck_layer_batchnorm2d_train_mode():
    layers = pytest.importorskip('numpyconv.layers')
    bn = layers.BatchNorm2d(3, dtype=np.float64)
    bn.train()
    before = bn.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter('error')      # no point of a batch norm is a kink
        assert gradcheck_layer(bn, _rng().standard_normal((4, 3, 2, 2))).ok
    after = bn.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


# -- mode='jacobian' and the arrays every mode stores ---------------------------------------------
def matmul_forward(x, w):
    return x @ w, (x, w)


def matmul_backward(dout, cache):
    x, w = cache
    return dout @ w.T, x.T @ dout


def _matmul_inputs():
    rng = _rng()
    return rng.standard_normal((2, 3)), rng.standard_normal((3, 4))


def test_jacobian_mode_stores_the_whole_jacobian():
    x, w = _matmul_inputs()
    report = gradcheck(matmul_forward, matmul_backward, (x, w), mode='jacobian', names=['x', 'w'])
    assert report.ok and report.mode == 'jacobian'
    jx = np.kron(np.eye(2), w.T)                  # d y[n, o] / d x[m, c] = [n == m] w[c, o]
    jw = np.kron(x, np.eye(4))                    # d y[n, o] / d w[c, p] = x[n, c] [o == p]
    for result, expected in zip(report.results, (jx, jw)):
        assert result.analytical_array.shape == result.numerical_array.shape == expected.shape
        np.testing.assert_array_equal(result.analytical_array, expected)       # one-hot douts: exact
        np.testing.assert_allclose(result.numerical_array, expected, rtol=0, atol=1e-8)
        assert result.n_checked == expected.size


def test_jacobian_mode_finds_a_single_wrong_entry():
    x, w = _matmul_inputs()

    def wrong(dout, cache):                       # sample 1's dout[1, 2] leaks into dx[0, 1]
        dx, dw = matmul_backward(dout, cache)
        dx[0, 1] += 0.5 * dout[1, 2]
        return dx, dw

    with pytest.raises(GradcheckError) as info:
        gradcheck(matmul_forward, wrong, (x, w), mode='jacobian', names=['x', 'w'])
    rx, rw = info.value.report.results
    assert not rx.ok and rw.ok and rx.worst_index == ((1, 2), (0, 1))
    assert 'out (1, 2) in (0, 1)' in str(info.value)
    error = rx.analytical_array - rx.numerical_array
    row, column = np.ravel_multi_index((1, 2), (2, 4)), np.ravel_multi_index((0, 1), (2, 3))
    assert abs(error[row, column] - 0.5) < 1e-8
    error[row, column] = 0
    assert np.abs(error).max() < 1e-8                                           # every other entry is right


def test_jacobian_mode_tuple_outputs_are_concatenated_in_order():
    def forward(x):
        return (2 * x, None, x[:2] ** 2), x

    def backward(dout, x):
        d0, dnone, d2 = dout
        assert dnone is None
        dx = 2 * d0
        dx[:2] += 2 * x[:2] * d2
        return dx

    x = _rng().standard_normal(3)
    report = gradcheck(forward, backward, (x,), mode='jacobian', returns_cache=True)
    expected = np.vstack([2 * np.eye(3), np.hstack([np.diag(2 * x[:2]), np.zeros((2, 1))])])
    np.testing.assert_array_equal(report.results[0].analytical_array, expected)
    np.testing.assert_allclose(report.results[0].numerical_array, expected, atol=1e-8)


def test_full_and_random_modes_store_what_they_compared():
    x, w = _matmul_inputs()
    report = gradcheck(matmul_forward, matmul_backward, (x, w), mode='full')
    dout = np.random.default_rng(0).standard_normal((2, 4))                    # the seeded dout
    for result, a, grad in zip(report.results, (x, w), matmul_backward(dout, (x, w))):
        assert result.numerical_array.shape == a.shape
        np.testing.assert_array_equal(result.analytical_array, grad)
        np.testing.assert_allclose(result.numerical_array, grad, atol=1e-8)
    report = gradcheck(matmul_forward, matmul_backward, (x, w), mode='random', n_directions=3)
    for result in report.results:
        assert result.numerical_array.shape == result.analytical_array.shape == (3,)
        np.testing.assert_allclose(result.numerical_array, result.analytical_array, atol=1e-8)


def test_jacobian_mode_refuses_a_large_jacobian():
    x = _rng().standard_normal((30, 40)) + 5
    with pytest.raises(ValueError, match=r'1200 x 1200 \(1440000 entries.*jacobian_limit=1000000'):
        gradcheck(relu_forward, relu_backward, (x,), mode='jacobian')
    x, w = _matmul_inputs()
    with pytest.raises(ValueError, match='jacobian_limit=50'):
        gradcheck(matmul_forward, matmul_backward, (x, w), mode='jacobian', jacobian_limit=50)
    assert gradcheck(matmul_forward, matmul_backward, (x, w), mode='jacobian', wrt=[0], jacobian_limit=50).ok


# -- check_reentrant -------------------------------------------------------------------------------
def square_forward(x, w):
    """y = w * x**2 (x (N, C), w (C,)), with a cache of its own arrays."""
    from numpyconv._checks import Cache
    y = x ** 2
    return w * y, Cache('square', x=x.copy(), y=y, w=w, pair=(w.copy(), y.copy()),
                        geo=types.SimpleNamespace(stride=1))


def square_backward(dout, cache):
    return 2 * cache['w'] * cache['x'] * dout, np.sum(dout * cache['y'], axis=0)


def _square_inputs(n=4):
    rng = _rng()
    return rng.standard_normal((n, 3)), rng.standard_normal(3)


def test_reentrant_backward_passes_the_check():
    report = gradcheck(square_forward, square_backward, _square_inputs())
    assert report.ok and report.checks == {'reentrant': True} and 'checks: reentrant ok' in str(report)


def test_nondeterministic_backward_is_caught_by_check_reentrant():
    noise = np.random.default_rng(1)

    def noisy(dout, cache):
        dx, dw = square_backward(dout, cache)
        return dx + 1e-10 * noise.standard_normal(dx.shape), dw

    with pytest.raises(GradcheckError, match='check_reentrant: a second backward on the same cache '
                                             r'returned different values: input0 \(') as info:
        gradcheck(square_forward, noisy, _square_inputs())
    report = info.value.report
    assert report.checks == {'reentrant': False} and all(r.ok for r in report.results)  # gradients right
    assert gradcheck(square_forward, noisy, _square_inputs(), nondet_tol=1e-8).ok
    assert gradcheck(square_forward, noisy, _square_inputs(), check_reentrant=False).checks == {}


def test_summation_order_that_changes_between_calls_is_caught():
    calls = itertools.count()

    def reordered(dout, cache):                   # e.g. atomics or thread scheduling in a port
        dx, _ = square_backward(dout, cache)
        terms = dout * cache['y']                 # dw sums these over the batch
        order = range(len(terms)) if next(calls) % 2 == 0 else reversed(range(len(terms)))
        dw = np.zeros(terms.shape[1])
        for n in order:
            dw += terms[n]
        return dx, dw

    inputs = _square_inputs(64)
    first, second = reordered(np.ones((64, 3)), square_forward(*inputs)[1])[1], \
        reordered(np.ones((64, 3)), square_forward(*inputs)[1])[1]
    assert not np.array_equal(first, second) and np.allclose(first, second, rtol=1e-14)   # premise
    report = gradcheck(square_forward, reordered, inputs, mode='random', raise_exception=False)
    assert not report.ok and all(r.ok for r in report.results)
    assert 'different values: input1' in report.problems[0]
    assert gradcheck(square_forward, reordered, inputs, mode='random', nondet_tol=1e-12).ok


@pytest.mark.parametrize('mutate, expected', [
    (lambda c: np.multiply(c['y'], 2.0, out=c['y']), "cache['y'] modified in place (max abs change"),
    (lambda c: c.__setitem__('w', c['w'] + 1), "cache['w'] replaced (max abs change 1)"),
    (lambda c: c.pop('y'), "cache: key 'y' removed"),
    (lambda c: c.__setitem__('extra', 1), "cache: key 'extra' added"),
    (lambda c: c['pair'][1].fill(0), "cache['pair'][1] modified in place"),
    (lambda c: setattr(c['geo'], 'stride', 2), "cache['geo'].stride changed from 1 to 2"),
    (lambda c: setattr(c, 'op', 'other'), "cache.op changed from 'square' to 'other'"),
])
def test_backward_that_modifies_its_cache_is_caught(mutate, expected):
    def modifying(dout, cache):
        grads = square_backward(dout, cache)
        mutate(cache)
        return grads

    report = gradcheck(square_forward, modifying, _square_inputs(), raise_exception=False)
    assert not report.ok and report.checks == {'reentrant': False}
    assert report.problems[0].startswith('check_reentrant: backward modified its cache: ')
    assert expected in report.problems[0]
    assert all(r.ok for r in report.results)      # the first call's gradients are right
    assert gradcheck(square_forward, modifying, _square_inputs(), check_reentrant=False).ok


def test_backward_that_consumes_its_cache_fails_on_the_second_call():
    def consuming(dout, cache):
        y = cache.pop('y')                        # frees memory early: a second backward cannot run
        return 2 * cache['w'] * cache['x'] * dout, np.sum(dout * y, axis=0)

    report = gradcheck(square_forward, consuming, _square_inputs(), raise_exception=False)
    assert report.problems[0] == "check_reentrant: backward modified its cache: cache: key 'y' removed"
    assert report.problems[1].startswith("check_reentrant: a second backward on the same cache raised "
                                         "KeyError: 'y'")


# -- check_batch -----------------------------------------------------------------------------------
def centred_forward(x, w):
    """y = w * (x - mean of x over the batch): a batch statistic couples the samples."""
    centred = x - x.mean(axis=0)
    return w * centred, (centred, w)


def centred_backward(dout, cache):
    centred, w = cache
    g = w * dout
    return g - g.mean(axis=0), np.sum(dout * centred, axis=0)


def test_check_batch_catches_a_batch_statistic_that_gradcheck_cannot_see():
    inputs = _square_inputs()
    assert gradcheck(centred_forward, centred_backward, inputs).ok                # the gradients are right
    with pytest.raises(GradcheckError) as info:
        gradcheck(centred_forward, centred_backward, inputs, check_batch=0)
    report = info.value.report
    assert report.checks == {'reentrant': True, 'batch': False} and all(r.ok for r in report.results)
    assert any(re.search(r'sample \d alone gives a different output 0 than the batch', p)
               for p in report.problems)
    assert any('gradient of input0' in p for p in report.problems)
    assert 'couples the samples' in report.problems[-1]


def test_check_batch_passes_a_per_sample_kernel():
    report = gradcheck(square_forward, square_backward, _square_inputs(), check_batch=(0,))
    assert report.checks == {'reentrant': True, 'batch': True} and 'check_batch' in report.tolerances


def test_check_batch_catches_gradients_that_mix_samples():
    def leaky(dout, cache):                       # sample n's gradient picks up sample n-1's
        dx, dw = square_backward(dout, cache)
        return dx + 0.1 * np.roll(dx, 1, axis=0), dw

    report = gradcheck(square_forward, leaky, _square_inputs(), check_batch=0, raise_exception=False)
    assert report.checks['batch'] is False
    assert any(re.search(r'sample \d alone gives a different gradient of input0', p) for p in report.problems)

    def mean_not_sum(dout, cache):                # shared weight: the batch mean instead of the sum
        dx, dw = square_backward(dout, cache)
        return dx, dw / len(dout)

    report = gradcheck(square_forward, mean_not_sum, _square_inputs(), check_batch=0, raise_exception=False)
    assert any('the per-sample gradients of input1 do not sum to its batched gradient' in p
               for p in report.problems)


def test_check_batch_with_tuple_outputs():
    def forward(x, w):
        return (x * w, None, np.tanh(x).sum(axis=1)), (x, w)

    def backward(dout, cache):
        (x, w), (d0, _, d2) = cache, dout
        return d0 * w + d2[:, None] * (1 - np.tanh(x) ** 2), np.sum(d0 * x, axis=0)

    assert gradcheck(forward, backward, _square_inputs(), check_batch=0).checks['batch']

    def forward_with_a_total(x, w):               # the second output does not carry the batch
        return (x * w, np.sum(x)), (x, w)

    def backward_with_a_total(dout, cache):
        (x, w), (d0, d1) = cache, dout
        return d0 * w + d1, np.sum(d0 * x, axis=0)

    report = gradcheck(forward_with_a_total, backward_with_a_total, _square_inputs(), check_batch=0,
                       raise_exception=False)
    assert report.problems == ['check_batch: every output must carry the batch (4 samples) on axis 0; '
                               'output 1 has shape ()']


def _deform_inputs(rng, n=2):
    x = rng.standard_normal((n, 2, 4, 4))
    offset = rng.uniform(-1.7, 1.7, (n, 18, 4, 4))          # non-integer: away from the bilinear kinks
    weight, bias = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    mask = rng.uniform(0.2, 1.0, (n, 9, 4, 4))
    return x, offset, weight, bias, mask


@pytest.mark.parametrize('op', ['conv2d', 'deform_conv2d', 'batch_norm_eval'])
def test_check_batch_on_numpyconv_ops(op):
    import numpyconv as nc
    rng = _rng()
    if op == 'conv2d':
        forward, backward, inputs, batch = _conv, conv2d_backward, _conv_inputs(rng), 0
    elif op == 'deform_conv2d':
        forward = lambda x, o, w, b, m: nc.deform_conv2d_forward(x, o, w, b, padding=1, mask=m)  # noqa: E731
        backward, inputs, batch = nc.deform_conv2d_backward, _deform_inputs(rng), (0, 1, 4)
    else:
        forward = lambda x, w, b, m, v: nc.batch_norm_forward(x, w, b, m, v, training=False)  # noqa: E731
        backward, batch = nc.batch_norm_backward, 0
        inputs = (rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(2), rng.standard_normal(2),
                  rng.standard_normal(2), rng.uniform(0.5, 2.0, 2))
    report = gradcheck(forward, backward, inputs, check_batch=batch, mode='random', n_directions=4)
    assert report.checks == {'reentrant': True, 'batch': True}
    report = gradcheck(forward, backward, tuple(a.astype(np.float32) for a in inputs), check_batch=batch,
                       mode='random', n_directions=4)
    assert report.checks == {'reentrant': True, 'batch': True} and report.dtype == 'float32'


def test_batch_norm_in_train_mode_fails_check_batch():
    """Documents what check_batch checks: train-mode batch norm normalises with the batch's statistics,
    so a sample alone is normalised differently: the op couples the samples by design."""
    import numpyconv as nc
    rng = _rng()
    inputs = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(2), rng.standard_normal(2)

    def forward(x, w, b):
        return nc.batch_norm_forward(x, w, b, None, None, training=True)

    def backward(dout, cache):
        return nc.batch_norm_backward(dout, cache)[:3]

    assert gradcheck(forward, backward, inputs).ok
    report = gradcheck(forward, backward, inputs, check_batch=0, raise_exception=False)
    assert report.checks == {'reentrant': True, 'batch': False} and all(r.ok for r in report.results)
    layers = pytest.importorskip('numpyconv.layers')
    bn = layers.BatchNorm2d(2, dtype=np.float64)
    bn.train()
    assert not gradcheck_layer(bn, inputs[0], check_batch=0, raise_exception=False).checks['batch']
    bn.eval()
    assert gradcheck_layer(bn, inputs[0], check_batch=0).checks['batch']
    assert gradcheck_layer(Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0), inputs[0],
                           check_batch=0).checks['batch']


# -- float32 implementations -----------------------------------------------------------------------
def test_float32_tolerances_pass_a_correct_float32_backward_and_fail_a_sloppy_one():
    x, w, b = (a.astype(np.float32) for a in _conv_inputs(_rng()))
    report = gradcheck(_conv, conv2d_backward, (x, w, b))
    assert report.ok and report.atol is None and 1e-6 < report.rtol < 1e-4
    assert 'float32 implementation: rtol = 10 sqrt(n) eps(float32)' in report.tolerances
    assert 'n = 422 elements' in report.tolerances and 'differences in float64' in report.tolerances
    assert all(r.atol == pytest.approx(report.rtol * np.abs(r.numerical_array).max()) for r in report.results)

    def half_precision_dw(dout, cache):           # dw rounded through float16: ~5e-4 relative error
        dx, dw, db = conv2d_backward(dout, cache)
        return dx, dw.astype(np.float16).astype(np.float32), db

    with pytest.raises(GradcheckError) as info:
        gradcheck(_conv, half_precision_dw, (x, w, b), names=['x', 'w', 'b'])
    assert [r.ok for r in info.value.report.results] == [True, False, True]
    assert 'atol per input' in str(info.value)
    report = gradcheck(_conv, half_precision_dw, (x, w, b), atol=1e-5, rtol=1e-3)    # float64's defaults
    assert report.ok and 'rtol 0.001 as given' in report.tolerances                    # would let it through


def _tanh32_forward(x, a):
    """A kernel that runs in float32 only."""
    if x.dtype != np.float32:
        raise TypeError(f'x must be float32, got {x.dtype}')
    y = np.tanh(a * x)
    return y, (x, a, y)


def _tanh32_backward(dout, cache):
    x, a, y = cache
    dz = dout * (1 - y ** 2)
    return dz * a, np.sum(dz * x, dtype=np.float32)


def test_float32_only_forward_is_differenced_in_float32():
    x = _rng().standard_normal((3, 4)).astype(np.float32)
    a = np.float32(0.7)
    report = gradcheck(_tanh32_forward, _tanh32_backward, (x, a))
    assert report.ok and (report.dtype, report.differences) == ('float32', 'float32')
    assert report.eps == pytest.approx(np.finfo(np.float32).eps ** (1 / 3))
    assert 'differences in float32 (the forward raised TypeError on float64 inputs; eps' in report.tolerances
    assert 1e-4 < report.rtol < 1e-2

    def wrong(dout, cache):
        dx, da = _tanh32_backward(dout, cache)
        return dx * np.float32(1.01), da

    report = gradcheck(_tanh32_forward, wrong, (x, a), raise_exception=False)
    assert [r.ok for r in report.results] == [False, True]

    def casting_forward(x, a):                    # accepts float64 but computes in float32
        return _tanh32_forward(x.astype(np.float32), np.float32(a))
    report = gradcheck(casting_forward, _tanh32_backward, (x, a))
    assert report.differences == 'float32' and 'returned float32 outputs from float64' in report.tolerances


# -- gradgradcheck ---------------------------------------------------------------------------------
def square_double_backward(ggrads, dout, cache):
    """Gradients of M = <dx, ggx> + <dw, ggw> (square_backward's outputs) in dout, x and w."""
    ggx, ggw = ggrads
    x, w = cache['x'], cache['w']
    ddout = 2 * w * x * ggx + x ** 2 * ggw
    return ddout, 2 * w * dout * ggx + 2 * x * dout * ggw, np.sum(2 * x * dout * ggx, axis=0)


def test_gradgradcheck_passes_a_correct_double_backward_and_fails_a_wrong_one():
    report = gradgradcheck(square_forward, square_backward, square_double_backward, _square_inputs(),
                           names=['x', 'w'])
    assert report.ok and report.check == 'gradgradcheck'
    assert [r.name for r in report.results] == ['dout', 'x', 'w'] and str(report).startswith('gradgradcheck')

    def forgets_a_term(ggrads, dout, cache):
        ddout, dx, dw = square_double_backward(ggrads, dout, cache)
        return ddout, dx - 2 * cache['x'] * dout * ggrads[1], dw

    with pytest.raises(GradcheckError) as info:
        gradgradcheck(square_forward, square_backward, forgets_a_term, _square_inputs(), names=['x', 'w'])
    assert [r.ok for r in info.value.report.results] == [True, False, True]
    report = gradgradcheck(square_forward, square_backward, forgets_a_term, _square_inputs(),
                           wrt=['w', 'dout'], names=['x', 'w'], mode='jacobian')
    assert report.ok and [r.name for r in report.results] == ['w', 'dout']


def conv_double_backward(ggrads, dout, cache):
    """conv2d is bilinear in (x, w): ddout is the forward's linearisation along ggrads; the x and w
    gradients of <(dx, dw, db), ggrads> are conv2d_backward with the other operand replaced."""
    ggx, ggw, ggb = ggrads
    x, w = cache['x'], cache['weight']
    ddout = _conv(ggx, w, ggb)[0] + _conv(x, ggw, None)[0]
    dx = conv2d_backward(dout, _conv(x, ggw, None)[1])[0]
    dw = conv2d_backward(dout, _conv(ggx, w, None)[1])[1]
    return ddout, dx, dw, np.zeros_like(ggb)


def test_gradgradcheck_conv2d():
    inputs = _conv_inputs(_rng())
    report = gradgradcheck(_conv, conv2d_backward, conv_double_backward, inputs, mode='random')
    assert report.ok and len(report.results) == 4

    def without_bias(ggrads, dout, cache):
        ddout, dx, dw, db = conv_double_backward(ggrads, dout, cache)
        return ddout - ggrads[2][:, None, None], dx, dw, db

    report = gradgradcheck(_conv, conv2d_backward, without_bias, inputs, mode='random', raise_exception=False)
    assert [r.ok for r in report.results] == [False, True, True, True]
    dout = np.ones((2, 6, 3, 3))
    assert gradgradcheck(_conv, conv2d_backward, conv_double_backward, inputs, dout=dout, mode='random').ok


def test_gradgradcheck_double_backward_returning_the_wrong_count():
    def short(ggrads, dout, cache):
        return square_double_backward(ggrads, dout, cache)[:2]
    with pytest.raises(ValueError, match=r'double_backward must return \(ddout, \*dinputs\): 3 entries'):
        gradgradcheck(square_forward, square_backward, short, _square_inputs())


# -- jvpcheck --------------------------------------------------------------------------------------
def square_jvp(tangents, cache):
    tx, tw = tangents
    return 2 * cache['w'] * cache['x'] * tx + cache['x'] ** 2 * tw


def conv_jvp(tangents, cache):
    tx, tw, tb = tangents
    return _conv(tx, cache['weight'], tb)[0] + _conv(cache['x'], tw, None)[0]


@pytest.mark.parametrize('mode', ['full', 'random', 'jacobian'])
def test_jvpcheck_passes_a_correct_jvp_and_fails_a_wrong_one(mode):
    report = jvpcheck(square_forward, square_jvp, _square_inputs(), mode=mode)
    assert report.ok and report.check == 'jvpcheck' and report.checks == {'reentrant': True}
    shapes = [r.numerical_array.shape for r in report.results]
    assert shapes == ([(10, 12), (10, 12)] if mode == 'random' else [(12, 12), (12, 3)])

    def wrong(tangents, cache):                   # drops the tangent of w
        return 2 * cache['w'] * cache['x'] * tangents[0]

    report = jvpcheck(square_forward, wrong, _square_inputs(), mode=mode, raise_exception=False)
    assert [r.ok for r in report.results] == [True, False]


def test_jvpcheck_conv2d_and_tuple_outputs():
    inputs = _conv_inputs(_rng())
    assert jvpcheck(_conv, conv_jvp, inputs, mode='random').ok

    def without_bias(tangents, cache):
        return conv_jvp(tangents[:2] + (np.zeros(6),), cache)
    report = jvpcheck(_conv, without_bias, inputs, mode='random', raise_exception=False)
    assert [r.ok for r in report.results] == [True, True, False]

    def split_forward(x, w):
        return (x * w, None, np.sin(x)), (x, w)

    def split_jvp(tangents, cache):
        (x, w), (tx, tw) = cache, tangents
        return x * tw + tx * w, None, np.cos(x) * tx

    rng = _rng()
    inputs = rng.standard_normal(5), rng.standard_normal(5)
    report = jvpcheck(split_forward, split_jvp, inputs, mode='jacobian')
    assert report.ok and report.results[0].analytical_array.shape == (10, 5)
    report = jvpcheck(split_forward, lambda t, c: split_jvp(t, c)[0], (rng.standard_normal(5),) * 2,
                      raise_exception=False)
    assert not report.ok and 'must return a tuple of 3' in report.results[0].message


def test_jvpcheck_float32_and_reentrancy():
    x, w = (a.astype(np.float32) for a in _square_inputs())
    report = jvpcheck(square_forward, square_jvp, (x, w))
    assert report.ok and report.dtype == 'float32' and report.atol is None

    def consuming(tangents, cache):
        cache.pop('x')
        return square_jvp(tangents, {**cache, 'x': x})
    report = jvpcheck(square_forward, consuming, (x, w), raise_exception=False)
    assert report.checks == {'reentrant': False} and "key 'x' removed" in report.problems[0]
    assert report.results[0].message == "jvp raised KeyError: 'x'" and not report.results[0].ok


# -- options of the additions ----------------------------------------------------------------------
@pytest.mark.parametrize('options, error, match', [
    (dict(mode='fast'), ValueError, "mode must be one of 'auto', 'full', 'random', 'jacobian', got 'fast'"),
    (dict(mode=None), ValueError, 'mode must be one of'),
    (dict(nondet_tol=-1e-9), ValueError, r'nondet_tol must be finite and in \[0, inf\)'),
    (dict(nondet_tol='0'), TypeError, 'nondet_tol must be a real number'),
    (dict(check_reentrant='yes'), TypeError, "check_reentrant must be True or False, got 'yes'"),
    (dict(check_batch=2), ValueError, 'check_batch index 2 is out of range for 2 inputs'),
    (dict(check_batch=(-1,)), ValueError, 'check_batch index -1 is out of range'),
    (dict(check_batch=(0.0,)), TypeError, 'check_batch entries must be input indices'),
    (dict(check_batch=True), TypeError, 'check_batch entries must be input indices'),
    (dict(check_batch='x'), TypeError, 'check_batch must be None, an input index or a non-empty tuple'),
    (dict(check_batch=()), TypeError, 'check_batch must be None'),
    (dict(check_batch=(0, 0)), ValueError, 'check_batch lists an input twice'),
    (dict(check_batch=(0, 1)), ValueError,
     r"disagree on the batch size \(axis 0\): \{'input0': 4, 'input1': 3\}"),
    (dict(jacobian_limit=0), ValueError, 'jacobian_limit must be a positive int'),
    (dict(seed=-1), ValueError, 'seed must be a non-negative int'),
    (dict(seed=1.5), TypeError, 'seed must be a non-negative int'),
    (dict(raise_exception=1), TypeError, 'raise_exception must be True or False'),
    (dict(rtol=-1e-3), ValueError, 'rtol must be finite'),
])
def test_bad_options_of_the_additions_raise(options, error, match):
    with pytest.raises(error, match=match):
        gradcheck(square_forward, square_backward, _square_inputs(), **options)


def test_bad_arguments_of_gradgradcheck_and_jvpcheck_raise():
    inputs = _square_inputs()
    with pytest.raises(TypeError, match='gradgradcheck does not take check_batch'):
        gradgradcheck(square_forward, square_backward, square_double_backward, inputs, check_batch=0)
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['n_direction'\]"):
        gradgradcheck(square_forward, square_backward, square_double_backward, inputs, n_direction=3)
    with pytest.raises(TypeError, match='double_backward must be callable, got NoneType'):
        gradgradcheck(square_forward, square_backward, None, inputs)
    with pytest.raises(ValueError, match='wrt entry 5 is not an input index < 2'):
        gradgradcheck(square_forward, square_backward, square_double_backward, inputs, wrt=[5])
    with pytest.raises(ValueError, match='dout entry 0 must be a float array of shape'):
        gradgradcheck(square_forward, square_backward, square_double_backward, inputs, dout=np.ones(3))
    with pytest.raises(TypeError, match='jvp must be callable'):
        jvpcheck(square_forward, 'jvp', inputs)
    with pytest.raises(ValueError, match='mode must be one of'):
        jvpcheck(square_forward, square_jvp, inputs, mode='fwd')
    with pytest.raises(TypeError, match='forward must be callable'):
        gradcheck(None, square_backward, inputs)
