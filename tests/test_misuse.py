"""Misuse of any op pair or layer gets a clear answer: caches that know their op, the dout rule,
backward before forward. Every test runs over every op case and layer case of
numpyconv.selftest_cases, so an op or layer registered there is covered at once."""
import copy
import functools
import inspect

import numpy as np
import pytest

import numpyconv as nc
from numpyconv._checks import Cache
from numpyconv.module import Module
from numpyconv.selftest_cases import call, case_ops, registered, registered_layers

CASES, OPS, LAYERS = registered(), case_ops(), registered_layers()
NAMES, LAYER_NAMES = sorted(CASES), sorted(LAYERS)
DTYPE_PAIRS = [(np.float64, np.float32), (np.float32, np.float64)]     # (forward's, dout's)


def cast(a, dtype):
    """A float array in ``dtype``; anything else (integer labels, None) unchanged."""
    return a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == 'f' else a


def like(out, make):
    """``make(array)`` for every array of an output (a tuple of arrays and None, or one array)."""
    if isinstance(out, tuple):
        return tuple(None if o is None else make(np.asarray(o)) for o in out)
    return make(np.asarray(out))


def first_replaced(dout, make):
    """``dout`` with its first array replaced by ``make(array)``."""
    if isinstance(dout, tuple):
        return (make(dout[0]),) + dout[1:]
    return make(dout)


@functools.lru_cache(maxsize=None)
def run_forward(name, dtype=np.float64):
    """``(case, out, cache)`` of the op case ``name`` with its float inputs in ``dtype`` (shared by
    the tests: none of them may change a cache)."""
    case = CASES[name](np.random.default_rng(0))
    inputs = tuple(cast(a, dtype) for a in case.inputs)
    out, cache = case.forward(*inputs)
    return case, out, cache


def random_dout(out, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return like(out, lambda a: rng.standard_normal(a.shape).astype(dtype))


def with_cache_rule(name):
    """``(case, out, cache)`` of the forward, whose cache must be a :class:`Cache`."""
    case, out, cache = run_forward(name)
    assert isinstance(cache, Cache), f"{OPS[name]}_forward returns a {type(cache).__name__}, not a Cache"
    return case, out, cache


def snapshot(value):
    """A deep copy to compare a cache with after the backward pass."""
    return copy.deepcopy(value)


def assert_same(a, b, where='cache'):
    """``a`` and ``b`` hold the same values (arrays bitwise, NaN equal to NaN)."""
    assert type(a) is type(b), where
    if isinstance(a, np.ndarray):
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        assert getattr(a, 'op', None) == getattr(b, 'op', None), where
        for key in a:
            assert_same(a[key], b[key], f'{where}[{key!r}]')
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for k, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f'{where}[{k}]')
    else:
        assert a == b or (a != a and b != b), where


def assert_grads_equal(grads, expected):
    grads = grads if isinstance(grads, tuple) else (grads,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(grads) == len(expected)
    for g, e in zip(grads, expected):
        assert (g is None) == (e is None)
        if g is not None:
            assert g.dtype == e.dtype
            np.testing.assert_array_equal(g, e)


# -- every public op has a case --------------------------------------------------------------------
def public_ops():
    return sorted(name[:-len('_forward')] for name, value in vars(nc).items()
                  if name.endswith('_forward') and inspect.isfunction(value))


def test_every_public_forward_has_a_case():
    missing = sorted(set(public_ops()) - set(OPS.values()))
    assert not missing, f"no case in numpyconv/selftest_cases.py for {missing}"


def test_every_public_forward_has_its_backward():
    assert [op for op in public_ops() if not callable(getattr(nc, f'{op}_backward', None))] == []


@pytest.mark.parametrize('name', NAMES)
def test_forward_returns_a_cache_of_its_op(name):
    _, _, cache = with_cache_rule(name)
    assert cache.op == OPS[name]


# -- a backward given a cache that is not its own --------------------------------------------------
@pytest.mark.parametrize('name', NAMES)
def test_backward_rejects_the_cache_of_every_other_op(name):
    case, out, _ = with_cache_rule(name)
    dout, op = random_dout(out, np.float64), OPS[name]
    for other in NAMES:
        foreign = run_forward(other)[2]
        if OPS[other] == op:
            continue
        with pytest.raises(TypeError) as error:
            case.backward(dout, foreign)
        message = str(error.value)
        assert f'{op}_backward' in message, (other, message)
        if isinstance(foreign, Cache):
            assert f'{OPS[other]}_forward' in message, (other, message)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('what', ['None', 'empty dict', 'plain dict', 'tuple', 'array'])
def test_backward_rejects_what_is_not_a_cache(name, what):
    case, out, cache = with_cache_rule(name)
    bad = {'None': None, 'empty dict': {}, 'plain dict': dict(cache), 'tuple': tuple(cache.values()),
           'array': np.zeros(3)}[what]
    with pytest.raises(TypeError, match=rf'{OPS[name]}_backward needs the cache returned by '
                                        rf'{OPS[name]}_forward'):
        case.backward(random_dout(out, np.float64), bad)


def test_depthwise_and_conv2d_caches_are_told_apart():
    x, w = np.ones((1, 2, 4, 4)), np.ones((2, 1, 3, 3))
    _, depthwise = nc.depthwise_conv2d_forward(x, w)
    y, conv = nc.conv2d_forward(x, w, groups=2)
    with pytest.raises(TypeError, match='conv2d_backward was given the cache of depthwise_conv2d_forward'):
        nc.conv2d_backward(np.ones_like(y), depthwise)
    with pytest.raises(TypeError, match='depthwise_conv2d_backward was given the cache of conv2d_forward'):
        nc.depthwise_conv2d_backward(np.ones_like(y), conv)


def test_dcnv3_backward_rejects_a_dcnv4_cache():
    _, out, dcnv4_cache = run_forward('dcnv4')
    with pytest.raises(TypeError, match='dcnv3_backward was given the cache of dcnv4_forward'):
        nc.dcnv3_backward(np.ones_like(out), dcnv4_cache)


# -- a backward never modifies its cache ---------------------------------------------------------------
@pytest.mark.parametrize('name', NAMES)
def test_backward_leaves_its_cache_unchanged_and_can_run_again(name):
    case, out, cache = run_forward(name)
    before = snapshot(cache)
    dout = random_dout(out, np.float64)
    first = case.backward(dout, cache)
    assert_same(cache, before)
    assert_grads_equal(case.backward(dout, cache), first)


# -- the dout rule: another float dtype is cast; non-float, complex, wrong shapes raise --------------------
@pytest.mark.parametrize('forward_dtype, dout_dtype', DTYPE_PAIRS)
@pytest.mark.parametrize('name', NAMES)
def test_dout_of_the_other_float_dtype_is_cast_to_the_forward_dtype(name, forward_dtype, dout_dtype):
    case, out, cache = run_forward(name, forward_dtype)
    dout = random_dout(out, dout_dtype)
    grads = case.backward(dout, cache)
    cast_dout = like(dout, lambda a: a.astype(forward_dtype))
    assert_grads_equal(grads, case.backward(cast_dout, cache))
    for g in (grads if isinstance(grads, tuple) else (grads,)):
        assert g is None or g.dtype == forward_dtype


@pytest.mark.parametrize('kind', [np.int64, np.int32, np.bool_, np.complex128])
@pytest.mark.parametrize('name', NAMES)
def test_non_float_dout_raises_type_error(name, kind):
    case, out, cache = run_forward(name)
    dout = first_replaced(random_dout(out, np.float64), lambda a: np.ones(np.shape(a), dtype=kind))
    with pytest.raises(TypeError, match=r'must be a (real floating array|float)'):
        case.backward(dout, cache)


@pytest.mark.parametrize('name', NAMES)
def test_dout_of_the_wrong_shape_raises_value_error(name):
    case, out, cache = run_forward(name)
    dout = first_replaced(random_dout(out, np.float64), lambda a: np.ones(np.shape(a) + (2,)))
    with pytest.raises(ValueError, match='must have shape'):
        case.backward(dout, cache)


@pytest.mark.parametrize('name', NAMES)
def test_dout_that_is_not_an_array_raises_type_error(name):
    case, out, cache = run_forward(name)
    dout = first_replaced(random_dout(out, np.float64), lambda a: a.tolist() if a.ndim else [float(a)])
    with pytest.raises(TypeError):
        case.backward(dout, cache)


# == layers =============================================================================================
def public_layer_classes():
    """Every layer class numpyconv exports that computes something (its own ``forward``)."""
    return sorted(name for name, value in vars(nc).items()
                  if inspect.isclass(value) and issubclass(value, Module) and value is not Module
                  and value.forward is not Module.forward)


def make_layer(name, dtype=np.float64):
    return LAYERS[name](np.random.default_rng(0), dtype)


def test_every_public_layer_class_has_a_case():
    covered = {type(make_layer(name)[0]).__name__ for name in LAYER_NAMES}
    missing = sorted(set(public_layer_classes()) - covered)
    assert not missing, f"no layer case in numpyconv/selftest_cases.py for {missing}"


def layer_grads(layer):
    return {k: g.copy() for k, g in layer.grads.items()}


def forward_backward(layer, x, dout):
    call(layer, x)
    return layer.backward(dout), layer_grads(layer)


@pytest.mark.parametrize('name', LAYER_NAMES)
def test_layer_backward_before_forward_raises(name):
    layer, x = make_layer(name)
    out = call(copy.deepcopy(layer), x)
    with pytest.raises(RuntimeError, match='call forward'):
        layer.backward(random_dout(out, np.float64))


@pytest.mark.parametrize('forward_dtype, dout_dtype', DTYPE_PAIRS)
@pytest.mark.parametrize('name', LAYER_NAMES)
def test_layer_dout_of_the_other_float_dtype_is_cast(name, forward_dtype, dout_dtype):
    layer, x = make_layer(name, forward_dtype)
    twin = copy.deepcopy(layer)
    dout = random_dout(call(layer, x), dout_dtype)
    dx = layer.backward(dout)
    expected_dx, expected_grads = forward_backward(twin, x, like(dout, lambda a: a.astype(forward_dtype)))
    assert_grads_equal(dx, expected_dx)
    for g in (dx if isinstance(dx, tuple) else (dx,)):
        assert g is None or g.dtype == forward_dtype
    grads = layer_grads(layer)
    assert grads.keys() == expected_grads.keys()
    for key in grads:
        np.testing.assert_array_equal(grads[key], expected_grads[key], err_msg=key)


@pytest.mark.parametrize('kind', [np.int64, np.bool_, np.complex128])
@pytest.mark.parametrize('name', LAYER_NAMES)
def test_layer_non_float_dout_raises_type_error(name, kind):
    layer, x = make_layer(name)
    dout = first_replaced(random_dout(call(layer, x), np.float64), lambda a: np.ones(a.shape, dtype=kind))
    with pytest.raises(TypeError, match='must be a real floating array'):
        layer.backward(dout)


@pytest.mark.parametrize('name', LAYER_NAMES)
def test_layer_dout_of_the_wrong_shape_raises_value_error(name):
    layer, x = make_layer(name)
    dout = first_replaced(random_dout(call(layer, x), np.float64), lambda a: np.ones(a.shape + (2,)))
    with pytest.raises(ValueError, match='must have shape'):
        layer.backward(dout)
