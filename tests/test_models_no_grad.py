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
