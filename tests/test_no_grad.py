"""numpyconv.no_grad(): layers keep nothing for a backward pass (every layer case of
numpyconv.selftest_cases), so a deep network's forward needs memory for its largest activations."""
import copy
import threading
import tracemalloc

import numpy as np
import pytest

import numpyconv as nc
from numpyconv.module import Module, is_grad_enabled
from numpyconv.selftest_cases import call, registered_layers

LAYERS = registered_layers()
NAMES = sorted(LAYERS)


def make_layer(name, dtype=np.float64):
    return LAYERS[name](np.random.default_rng(0), dtype)


def kept_caches(layer):
    """``(module key, attribute)`` of every cache a layer or its children hold."""
    return [(prefix, name) for prefix, module in layer.named_modules() for name in vars(module)
            if name.endswith('cache')]


def ones_like_output(out):
    if isinstance(out, tuple):
        return tuple(None if o is None else np.ones_like(o) for o in out)
    return np.ones_like(out)


def assert_outputs_equal(a, b):
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert (u is None) == (v is None)
        if u is not None:
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize('name', NAMES)
def test_layer_keeps_nothing_under_no_grad_and_backward_says_why(name):
    layer, x = make_layer(name)
    twin = copy.deepcopy(layer)
    expected = call(twin, x)
    with nc.no_grad():
        out = call(layer, x)
    assert_outputs_equal(out, expected)
    assert kept_caches(layer) == []
    with pytest.raises(RuntimeError, match=r'ran under numpyconv\.no_grad\(\)'):
        layer.backward(ones_like_output(out))


@pytest.mark.parametrize('name', NAMES)
def test_a_forward_outside_no_grad_makes_backward_work_again(name):
    layer, x = make_layer(name)
    twin = copy.deepcopy(layer)
    call(layer, x)                              # a cache from before: dropped by the no_grad forward
    with nc.no_grad():
        out = call(layer, x)
    assert kept_caches(layer) == []
    call(layer, x)
    dx = layer.backward(ones_like_output(out))
    call(twin, x)
    call(twin, x)
    call(twin, x)
    assert_outputs_equal(dx, twin.backward(ones_like_output(out)))


def test_batch_norm_running_statistics_still_update_under_no_grad():
    layer, x = nc.BatchNorm2d(3, dtype=np.float64), np.random.default_rng(0).standard_normal((4, 3, 2, 2))
    twin = copy.deepcopy(layer)
    with nc.no_grad():
        layer(x)
    twin(x)
    for key, value in twin.state_dict().items():
        np.testing.assert_array_equal(layer.state_dict()[key], value, err_msg=key)


def test_no_grad_nests_and_is_a_decorator():
    assert is_grad_enabled()
    with nc.no_grad():
        with nc.no_grad():
            assert not is_grad_enabled()
        assert not is_grad_enabled()
    assert is_grad_enabled()

    @nc.no_grad()
    def infer(layer, x):
        assert not is_grad_enabled()
        return layer(x)
    layer = nc.ReLU()
    infer(layer, np.ones(3))
    assert is_grad_enabled() and kept_caches(layer) == []


def test_no_grad_is_restored_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with nc.no_grad():
            1 / 0
    assert is_grad_enabled()


def test_no_grad_belongs_to_the_thread_that_opened_it():
    layer, x = nc.Linear(3, 2, dtype=np.float64, rng=0), np.ones((2, 3))
    other = copy.deepcopy(layer)
    seen = {}

    def run_elsewhere():
        seen['enabled'] = is_grad_enabled()
        other(x)
    with nc.no_grad():
        thread = threading.Thread(target=run_elsewhere)
        thread.start()
        thread.join()
        layer(x)
    assert seen['enabled'] and kept_caches(other) != [] and kept_caches(layer) == []


def test_a_user_defined_layer_gets_no_grad_too():
    class Double(Module):
        def forward(self, x):
            self._cache = x
            return 2 * x

        def backward(self, dout):
            return 2 * np.ones_like(self._cache) * dout

    layer = Double()
    with nc.no_grad():
        layer(np.ones(3))
    assert kept_caches(layer) == []
    with pytest.raises(RuntimeError, match='no_grad'):
        layer.backward(np.ones(3))


def test_a_subclass_calling_super_forward_keeps_its_cache_until_its_forward_returns():
    class Scaled(nc.Linear):
        def forward(self, x):
            y = super().forward(x)
            self.seen = self._cache['x'] is x             # the cache is there inside forward
            return y

    layer = Scaled(3, 2, dtype=np.float64, rng=0)
    with nc.no_grad():
        layer(np.ones((2, 3)))
    assert layer.seen and kept_caches(layer) == []


def peak_bytes(run):
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_deep_network_under_no_grad_needs_memory_for_its_largest_activations_only():
    depth, rng = 12, np.random.default_rng(0)
    layers = []
    for _ in range(depth):
        layers += [nc.Conv2d(8, 8, 3, padding=1, dtype=np.float64, rng=rng), nc.ReLU()]
    model = nc.Sequential(*layers)
    x = rng.standard_normal((4, 8, 32, 32))
    activation = x.nbytes
    model(x)                                          # scratch memory and caches of a first run
    with nc.no_grad():
        model(x)

    def infer():
        with nc.no_grad():
            model(x)
    without = peak_bytes(infer)
    model(x)                                          # caches kept from here on
    with_caches = peak_bytes(lambda: model(x))
    assert without < 4 * activation                   # the input, an output, a temporary
    assert with_caches > (depth - 2) * activation     # every conv keeps its input, every ReLU a mask
    assert without < with_caches / 3
