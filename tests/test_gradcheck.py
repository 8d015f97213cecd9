"""Tests of numpyconv.gradcheck: it must pass correct pairs and catch every kind of wrong one."""
import warnings

import numpy as np
import pytest

from numpyconv import GradcheckError, GradcheckReport, Module, gradcheck, gradcheck_layer
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


def test_float32_inputs_checked_in_float64_without_mutation():
    x, w, b = (a.astype(np.float32) for a in _conv_inputs(_rng()))
    copies = [a.copy() for a in (x, w, b)]
    report = gradcheck(_conv, conv2d_backward, (x, w, b))
    assert report.ok and max(r.max_rel_error for r in report.results) < 1e-6
    for a, c in zip((x, w, b), copies):
        assert a.dtype == np.float32 and np.array_equal(a, c)


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
