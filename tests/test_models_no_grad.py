"""Every builder of ``numpyconv.models`` under ``numpyconv.no_grad()``: the same logits, no cache kept
anywhere in the network, a backward afterwards refused; then a normal pass backpropagates again."""
import numpy as np
import pytest

import numpyconv as nc
from numpyconv import models
from test_models_internimage import TINY
from test_models_mobilenet import COND_SMALL, OD_SMALL
from test_models_resnet import SMALL

# builder -> (test-size arguments, input size)
CASES = {**SMALL,
         'od_mobilenetv2': (OD_SMALL, 32), 'cond_mobilenetv2': (COND_SMALL, 32),
         'internimage_t': (TINY, 32), 'flash_internimage_t': (TINY, 32)}


def cached(model):
    """``(module key, attribute)`` of every forward cache the network holds."""
    return [(prefix, name) for prefix, module in model.named_modules() for name in vars(module)
            if name.endswith('cache')]


def test_every_builder_has_a_case():
    builders = {name for name in vars(models) if not name.startswith('_') and name != 'set_masks'
                and callable(getattr(models, name)) and not isinstance(getattr(models, name), type)}
    assert builders == set(CASES)


@pytest.mark.parametrize('name, training', [(name, False) for name in sorted(CASES)] + [
    ('kw_resnet18', True), ('od_mobilenetv2', True), ('internimage_t', True)])
def test_no_grad_inference(name, training):
    """Eval mode: the logits equal a normal pass's. Train mode (dropout, drop path, batch
    statistics; one network of each family): the pass keeps nothing either."""
    options, size = CASES[name]
    model = getattr(models, name)(**{**options, 'num_classes': 3}, dtype=np.float64, rng=0).train(training)
    x = np.random.default_rng(1).standard_normal((2, 3, size, size))
    with nc.no_grad():
        y_no_grad = model(x)
    assert cached(model) == []
    with pytest.raises(RuntimeError, match='no_grad'):
        model.backward(np.ones_like(y_no_grad))
    y = model(x)
    if not training:
        np.testing.assert_array_equal(y_no_grad, y)
    assert model.backward(np.ones_like(y)).shape == x.shape


@pytest.mark.parametrize('name', ['resnet18', 'resnet50', 'od_mobilenetv2'])
def test_fused_inference_passes_leave_no_cache_of_an_earlier_pass(name, monkeypatch):
    """Under no_grad an eval-mode BatchNorm and the ReLU (ReLU6) after it run as one pass, and so do
    a residual branch's last BatchNorm, the sum and its ReLU: the same logits, and the layers whose
    work was fused keep no cache of an earlier normal pass (a backward through them is refused, not
    run on stale inputs)."""
    import numpyconv.activations
    import numpyconv.layers
    calls = {'batch_norm': 0, 'sum': 0, 'batch_norm_sum': 0}

    def counting(key, function):
        def wrapper(*args):
            calls[key] += 1
            calls['batch_norm_sum'] += key == 'batch_norm' and len(args) > 8 and args[8] is not None
            return function(*args)
        return wrapper
    monkeypatch.setattr(numpyconv.layers, 'batch_norm_inference',
                        counting('batch_norm', numpyconv.layers.batch_norm_inference))
    common = __import__('numpyconv.models._common', fromlist=['clamped_sum'])
    monkeypatch.setattr(common, 'clamped_sum', counting('sum', numpyconv.activations.clamped_sum))
    options, size = CASES[name]
    model = getattr(models, name)(**{**options, 'num_classes': 3}, dtype=np.float64, rng=0).eval()
    x = np.random.default_rng(2).standard_normal((2, 3, size, size))
    y = model(x)
    assert cached(model)                                         # a normal pass keeps its caches
    with nc.no_grad():
        y_no_grad = model(x)
    np.testing.assert_array_equal(y_no_grad, y)
    blocks = {'resnet18': 8, 'resnet50': 16, 'od_mobilenetv2': 0}[name]   # residual blocks ending in a BN
    assert calls['batch_norm'] > blocks and calls['batch_norm_sum'] == blocks
    assert cached(model) == []
    relus = [m for _, m in model.named_modules() if isinstance(m, (nc.ReLU, nc.ReLU6))]
    for layer in relus[:3]:
        with pytest.raises(RuntimeError, match='no_grad'):
            layer.backward(np.ones((2, 3)))


def test_clamped_sum_and_batch_norm_inference_are_bitwise_the_separate_passes():
    from numpyconv.activations import clamped_sum
    from numpyconv.blocks import batch_norm_inference
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        a, b = (rng.standard_normal((2, 5, 7, 3)).astype(dtype) for _ in range(2))
        a.flat[::9], a.flat[1::17], b.flat[2::13] = np.nan, -0.0, np.inf
        np.testing.assert_array_equal(clamped_sum(a, b, 0.0, np.inf), nc.relu_forward(a + b)[0])
        np.testing.assert_array_equal(clamped_sum(a, b, 0.0, 6.0), nc.relu6_forward(a + b)[0])
        stats = [rng.standard_normal(5).astype(dtype) for _ in range(3)] + [rng.random(5).astype(dtype) + 0.1]
        y, _ = nc.batch_norm_forward(a, *stats, training=False)
        for low, high, relu in ((0.0, np.inf, nc.relu_forward), (0.0, 6.0, nc.relu6_forward)):
            got = batch_norm_inference(a, *stats, 1e-5, low, high)
            numbers = ~np.isnan(got)                                 # -0.0 stays as relu gives it
            assert np.array_equal(np.signbit(got[numbers]), np.signbit(relu(y)[0][numbers]))
            np.testing.assert_array_equal(got, relu(y)[0])
        np.testing.assert_array_equal(batch_norm_inference(a, *stats, 1e-5), y)
        for low, high, relu in ((0.0, np.inf, nc.relu_forward), (-np.inf, np.inf, lambda v: (v,))):
            np.testing.assert_array_equal(batch_norm_inference(a, *stats, 1e-5, low, high, b), relu(y + b)[0])
