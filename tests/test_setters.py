"""Every public setter, schedule and helper answers nonsense with a TypeError (wrong type) or a
ValueError (wrong value) that names the argument, and changes nothing when it refuses."""
import math

import numpy as np
import pytest

import numpyconv as nc
from numpyconv import col2im, conv_output_size, im2col
from numpyconv.demo import data, models, train
from numpyconv.kernel_warehouse import kw_temperature

NAN, INF = float('nan'), float('inf')


def raises(error, match, call, *args, **kwargs):
    with pytest.raises(error, match=match):
        call(*args, **kwargs)


# -- Winograd modes -----------------------------------------------------------------------------------
@pytest.mark.parametrize('mode, error', [(1, TypeError), (None, TypeError), (True, TypeError),
                                         (['auto'], TypeError), ('sometimes', ValueError), ('', ValueError)])
def test_winograd_modes_take_their_three_strings_only(mode, error):
    previous = nc.set_winograd('auto')
    try:
        raises(error, 'mode must be one of', nc.set_winograd, mode)
        assert nc.set_winograd('auto') == 'auto'                   # unchanged by the refusal
        with pytest.raises(error, match='mode must be one of'):
            with nc.winograd_mode(mode):
                pass
    finally:
        nc.set_winograd(previous)


# -- temperature schedules and update_temperature -------------------------------------------------------
@pytest.mark.parametrize('args, error, match', [
    ((1.0,), TypeError, 'epoch must be an int'), (('3',), TypeError, 'epoch must be an int'),
    ((True,), TypeError, 'epoch must be an int'), ((-1,), ValueError, 'epoch must be an int >= 0'),
    ((1, 'a'), TypeError, 'temperature must be a real'), ((1, 5), ValueError, r'temperature % 3 == 1'),
    ((1, NAN), ValueError, 'temperature must be >= 1'), ((1, 0.5), ValueError, 'temperature must be >= 1')])
def test_dynamic_temperature(args, error, match):
    raises(error, match, nc.dynamic_temperature, *args)


@pytest.mark.parametrize('args, kwargs, error, match', [
    ((1.5, 0, 10), {}, TypeError, 'iteration must be an int'), ((0, '1', 10), {}, TypeError, 'epoch must be'),
    ((0, -1, 10), {}, ValueError, 'epoch must be an int >= 0'),
    ((0, 0, 0), {}, ValueError, 'iters_per_epoch must be a positive int'),
    ((0, 0, 10.0), {}, TypeError, 'iters_per_epoch must be an int'),
    ((0, 0, 10), dict(temp_epoch=0), ValueError, 'temp_epoch'),
    ((0, 0, 10), dict(temp_init=0.5), ValueError, 'temp_init must be'),
    ((0, 0, 10), dict(temp_init='30'), TypeError, 'temp_init must be a real')])
def test_odconv_temperature(args, kwargs, error, match):
    raises(error, match, nc.odconv_temperature, *args, **kwargs)


@pytest.mark.parametrize('args, kwargs, error, match', [
    (('a', 0, 10), {}, TypeError, 'iteration must be an int'), ((0, 0.5, 10), {}, TypeError, 'epoch must be'),
    ((-1, 0, 10), {}, ValueError, 'iteration must be an int >= 0'),
    ((0, 0, False), {}, TypeError, 'iters_per_epoch must be an int'),
    ((0, 0, 10), dict(temp_init_value=NAN), ValueError, 'temp_init_value must be a finite real'),
    ((0, 0, 10), dict(temp_end='0'), TypeError, 'temp_end must be a real')])
def test_kw_temperature(args, kwargs, error, match):
    raises(error, match, kw_temperature, *args, **kwargs)


@pytest.mark.parametrize('value, error', [('hot', TypeError), (None, TypeError), (True, TypeError),
                                          (0, ValueError), (-1.0, ValueError), (INF, ValueError),
                                          (NAN, ValueError)])
def test_odconv_update_temperature(value, error):
    layer = nc.ODConv2d(4, 4, 3)
    raises(error, 'temperature must be', layer.update_temperature, value)
    assert layer.temperature == 1.0


@pytest.mark.parametrize('value, error', [('hot', TypeError), (None, TypeError), (True, TypeError),
                                          (INF, ValueError), (NAN, ValueError)])
def test_kw_update_temperature(value, error):
    manager = nc.WarehouseManager()
    layer = manager.reserve(4, 4, 3)
    raises(error, 'temperature must be', layer.update_temperature, value)
    assert layer.temperature == 0.0
    layer.update_temperature(np.float32(0.5))
    assert layer.temperature == 0.5


@pytest.mark.parametrize('value, error', [('4', TypeError), (None, TypeError), (True, TypeError),
                                          (5, ValueError), (0, ValueError), (INF, ValueError)])
def test_dynamic_temperature_setter(value, error):
    layer = nc.DynamicConv2d(4, 4, 3)
    with pytest.raises(error, match='temperature must be'):
        layer.temperature = value
    assert layer.temperature == 34 and layer.update_temperature() == 31


# -- optimisers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs, error, match', [
    (dict(lr='a'), TypeError, 'lr must be a real'), (dict(lr=-1), ValueError, 'lr must be finite'),
    (dict(lr=NAN), ValueError, 'lr must be finite'), (dict(lr=0.1, momentum=-0.5), ValueError, 'momentum'),
    (dict(lr=0.1, momentum='0.9'), TypeError, 'momentum'),
    (dict(lr=0.1, weight_decay=INF), ValueError, 'weight_decay'),
    (dict(lr=0.1, nesterov='yes'), TypeError, 'nesterov must be a bool'),
    (dict(lr=0.1, nesterov=True), ValueError, 'Nesterov momentum requires'),
    (dict(lr=0.1, dampening=None), TypeError, 'dampening')])
def test_sgd_arguments(kwargs, error, match):
    raises(error, match, nc.SGD, nc.Linear(2, 2), **kwargs)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(lr=None), TypeError, 'lr must be a real'), (dict(betas=(0.9,)), TypeError, 'betas must be a pair'),
    (dict(betas=0.9), TypeError, 'betas must be a pair'),
    (dict(betas=(1.0, 0.9)), ValueError, 'betas must lie'),
    (dict(betas=(0.9, 'a')), TypeError, r'betas\[1\]'), (dict(eps=-1), ValueError, 'eps must be'),
    (dict(weight_decay=-0.1), ValueError, 'weight_decay')])
def test_adam_arguments(kwargs, error, match):
    raises(error, match, nc.Adam, nc.Linear(2, 2), **kwargs)


@pytest.mark.parametrize('module', ['model', [], [3], None, 3])
def test_optimisers_say_what_they_update(module):
    for cls in (nc.SGD, nc.Adam):
        raises(TypeError, 'module must be a numpyconv Module', cls, module, lr=0.1)


@pytest.mark.parametrize('value, error', [(-3, ValueError), ('0.1', TypeError), (NAN, ValueError)])
def test_learning_rate_is_checked_when_set(value, error):
    for optimiser in (nc.SGD(nc.Linear(2, 2), lr=0.1), nc.Adam(nc.Linear(2, 2), lr=0.1)):
        with pytest.raises(error, match='lr must be'):
            optimiser.lr = value
        assert optimiser.lr == 0.1
        optimiser.lr = np.float32(0.5)
        assert optimiser.lr == 0.5


# -- Module, Sequential, count ----------------------------------------------------------------------------
@pytest.mark.parametrize('mode', ['yes', 1, 0, None, 'eval'])
def test_train_takes_a_bool(mode):
    layer = nc.Sequential(nc.BatchNorm2d(2))
    raises(TypeError, 'mode must be a bool', layer.train, mode)
    assert layer.training and layer[0].training
    assert not layer.train(np.bool_(False))[0].training


@pytest.mark.parametrize('state, strict, error, match', [
    ([1], True, TypeError, 'state must be a mapping'), (None, True, TypeError, 'state must be a mapping'),
    ({}, 'no', TypeError, 'strict must be a bool'), ({'weight': np.ones((3, 3))}, False, ValueError, 'shape'),
    ({'weight': 'abc'}, False, TypeError, 'real numbers'),
    ({'weight': np.ones(4)}, True, ValueError, 'missing'),
    ({'weight': np.ones((2, 2)), 'bias': np.ones(2), 'x': np.ones(1)}, True, KeyError, 'unexpected')])
def test_load_state_dict_arguments(state, strict, error, match):
    layer = nc.Linear(2, 2)
    before = layer.state_dict()
    raises(error, match, layer.load_state_dict, state, strict)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize('layers', [(nc.ReLU(), 3), (np.ones(2),), ('conv',), (nc.Linear,)])
def test_sequential_takes_layers(layers):
    raises(TypeError, 'Sequential takes numpyconv layers', nc.Sequential, *layers)


@pytest.mark.parametrize('layer, shape, error, match', [
    (object(), (1, 2), TypeError, 'count takes a numpyconv layer'),
    ('Linear', (1, 2), TypeError, 'count takes a numpyconv layer'),
    (nc.Linear(2, 2), 'ab', TypeError, 'input_shape must be a tuple'),
    (nc.Linear(2, 2), 2, TypeError, 'input_shape must be a tuple'),
    (nc.Linear(2, 2), (1, 2.0), TypeError, 'input_shape must be a tuple of non-negative ints'),
    (nc.Linear(2, 2), (1, True), TypeError, 'input_shape must be a tuple of non-negative ints'),
    (nc.Linear(2, 2), (1, -2), ValueError, 'input_shape must be a tuple of non-negative ints'),
    (nc.Linear(2, 2), (1, 3), ValueError, r'input_shape must be \(\.\.\., 2\)')])
def test_count_says_what_it_accepts(layer, shape, error, match):
    raises(error, match, nc.count, layer, shape)


def test_count_accepts_lists_and_numpy_ints():
    assert nc.count(nc.Linear(2, 3), [np.int64(4), 2]) == nc.count(nc.Linear(2, 3), (4, 2))


def test_kw_count_needs_the_manager():
    manager = nc.WarehouseManager()
    layer = manager.reserve(4, 4, 3)
    manager.store()
    manager.allocate([layer])
    raises(TypeError, 'manager must be', nc.kw_count, layer, layer, (1, 4, 5, 5))
    shape = (1, 4, 5, 5)
    assert nc.kw_count(layer, manager, shape)[0] == nc.count(layer, shape)[0] + manager.num_params()


# -- WarehouseManager ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs, error, match', [
    (dict(reduction=0), ValueError, 'reduction must be'), (dict(reduction='a'), TypeError, 'reduction'),
    (dict(cell_num_ratio=(1, -1)), ValueError, 'cell_num_ratio'),
    (dict(cell_num_ratio=None), TypeError, 'cell_num'),
    (dict(cell_inplane_ratio=NAN), ValueError, 'cell_inplane_ratio'),
    (dict(cell_outplane_ratio=[1, '2']), TypeError, 'cell_outplane_ratio'),
    (dict(spatial_partition=1), TypeError, 'spatial_partition must be a bool'),
    (dict(spatial_partition=(True, 'no')), TypeError, 'spatial_partition must be a bool'),
    (dict(sharing_range=5), TypeError, 'sharing_range'),
    (dict(sharing_range=('layer', 3)), TypeError, 'sharing'),
    (dict(nonlocal_basis_ratio=(0.5,)), TypeError, 'nonlocal_basis_ratio must be a scalar'),
    (dict(nonlocal_basis_ratio=0), ValueError, 'nonlocal_basis_ratio')])
def test_warehouse_manager_arguments(kwargs, error, match):
    raises(error, match, nc.WarehouseManager, **kwargs)


def test_warehouse_manager_methods():
    manager = nc.WarehouseManager()
    raises(TypeError, 'warehouse_name must be a str', manager.reserve, 4, 4, 3, warehouse_name=3)
    raises(TypeError, 'in_planes must be an int', manager.reserve, 4.0, 4, 3)
    raises(ValueError, 'kernel_size must be >= 1', manager.reserve, 4, 4, 0)
    raises(RuntimeError, 'store\\(\\) needs at least one reserved layer', manager.store)
    layer = manager.reserve(4, 4, 3)
    raises(RuntimeError, 'allocate\\(\\) needs store\\(\\) first', manager.allocate, [layer])
    manager.store()
    raises(TypeError, 'allocate takes the reserved KWConv2d layers', manager.allocate, 5)
    raises(TypeError, 'allocate takes the reserved KWConv2d layers', manager.allocate, [layer, 'conv'])
    raises(ValueError, 'exactly once', manager.allocate, [layer, layer])
    manager.allocate((layer for layer in [layer]))
    raises(RuntimeError, 'already called', manager.allocate, [layer])


# -- DCNv4 packing -------------------------------------------------------------------------------------
def test_pack_and_unpack_offset_mask_arguments():
    offset, mask = np.ones((1, 2, 2, 36)), np.ones((1, 2, 2, 18))
    raises(TypeError, 'channels must be an int', nc.pack_offset_mask, offset, mask, 2, channels=2.5)
    raises(ValueError, 'channels must be >= 3', nc.pack_offset_mask, offset, mask, 2, channels=8)
    raises(ValueError, 'group must be a positive int', nc.pack_offset_mask, offset, mask, 0)
    raises(TypeError, 'group must be an int', nc.pack_offset_mask, offset, mask, '2')
    raises(ValueError, r'offset must have shape \(1, 2, 2, 36\)', nc.pack_offset_mask, offset[..., :30],
           mask, 2)
    raises(TypeError, 'same float dtype', nc.pack_offset_mask, offset.astype(np.float32), mask, 2)
    raises(TypeError, 'mask must be a numpy.ndarray', nc.pack_offset_mask, offset, mask.tolist(), 2)
    packed = nc.pack_offset_mask(offset, mask, 2)
    raises(TypeError, 'offset_mask must be a numpy.ndarray', nc.unpack_offset_mask, packed.tolist(), 2, 9)
    raises(TypeError, 'group must be an int', nc.unpack_offset_mask, packed, 2.0, 9)
    raises(ValueError, 'points must be a positive int', nc.unpack_offset_mask, packed, 2, 0)
    raises(ValueError, r'L >= 3 \* group \* points = 54', nc.unpack_offset_mask, packed[..., :50], 2, 9)
    raises(ValueError, r'offset_mask must be \(N, Ho, Wo, L\)', nc.unpack_offset_mask, packed[0], 2, 9)
    back = nc.unpack_offset_mask(packed, 2, 9)
    np.testing.assert_array_equal(back[0], offset)
    np.testing.assert_array_equal(back[1], mask)


# -- the geometry helpers ------------------------------------------------------------------------------
@pytest.mark.parametrize('args, error, match', [
    ((5.0, 3, 1, 0, 0, 1), TypeError, 'size must be an int'), ((5, '3', 1, 0, 0, 1), TypeError, 'kernel'),
    ((5, 3, 1, 0, 0, True), TypeError, 'dilation must be an int'),
    ((5, 0, 1, 0, 0, 1), ValueError, 'kernel must be'),
    ((5, 3, 0, 0, 0, 1), ValueError, 'stride must be >= 1'), ((5, 3, 1, -1, 0, 1), ValueError, 'pad_before'),
    ((-1, 3, 1, 0, 0, 1), ValueError, 'size must be >= 0')])
def test_conv_output_size_arguments(args, error, match):
    raises(error, match, conv_output_size, *args)


def test_conv_output_size_values():
    assert conv_output_size(5, 3, 2, 1, 1, 1) == 3 and conv_output_size(np.int64(7), 3, 1, 0, 0, 2) == 3


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(kernel_size=3.0), TypeError, 'kernel_size'), (dict(kernel_size=3, stride=0), ValueError, 'stride'),
    (dict(kernel_size=3, padding='full'), ValueError, 'padding'),
    (dict(kernel_size=3, padding=-1), ValueError, 'padding'),
    (dict(kernel_size=3, out_hw=(2, 2), origin='a'), TypeError, 'origin must be'),
    (dict(kernel_size=3, out_hw=(2,), origin=(0, 0)), TypeError, 'out_hw must be'),
    (dict(kernel_size=3, out_hw=(2, -1), origin=(0, 0)), ValueError, 'out_hw must be >= 0'),
    (dict(kernel_size=3, out_hw=(2, 2)), TypeError, 'give either padding or both'),
    (dict(kernel_size=3, out=np.ones((1, 1, 3, 3, 3, 3))), ValueError, 'out must have shape'),
    (dict(kernel_size=3, out=np.ones((1, 1, 3, 3, 2, 2), np.float32)), TypeError, "out must have x's dtype")])
def test_im2col_arguments(kwargs, error, match):
    raises(error, match, im2col, np.ones((1, 1, 4, 4)), **kwargs)


COLS = np.ones((1, 1, 3, 3, 2, 2))


@pytest.mark.parametrize('args, kwargs, error, match', [
    ((np.ones((1, 1, 3, 3, 2, 2)).tolist(), (4, 4)), {}, TypeError, 'cols must be a numpy.ndarray'),
    ((np.ones((1, 1, 3, 3, 2, 2)), (4, 4.0)), {}, TypeError, 'in_hw'),
    ((np.ones((1, 1, 3, 3, 2, 2)), (4, 0)), {}, ValueError, 'in_hw'),
    ((np.ones((1, 1, 3, 3, 3, 3)), (4, 4)), {}, ValueError, 'cols must have shape'),
    ((COLS, (4, 4)), dict(out=np.ones((1, 1, 3, 3))), ValueError, 'out must have shape'),
    ((COLS, (4, 4)), dict(out=np.ones((1, 1, 4, 4), np.float32)), TypeError, 'out must have'),
    ((COLS, (4, 4)), dict(out=[0]), TypeError, 'out must be a numpy.ndarray')])
def test_col2im_arguments(args, kwargs, error, match):
    raises(error, match, col2im, *args, **kwargs)


def test_col2im_adds_into_out():
    out = np.ones((1, 1, 4, 4))
    assert col2im(np.ones((1, 1, 3, 3, 2, 2)), (4, 4), out=out) is out and out[0, 0, 1, 1] == 5


# -- the demo's helpers --------------------------------------------------------------------------------
@pytest.mark.parametrize('schedule', [models.dynamic_schedule, models.odconv_schedule, models.kw_schedule])
@pytest.mark.parametrize('args, error, match', [((1.5, 10), TypeError, 'step must be an int'),
                                                ((-1, 10), ValueError, 'step must be an int >= 0'),
                                                ((1, 0), ValueError, 'total_steps must be a positive int'),
                                                (('a', 10), TypeError, 'step'),
                                                ((1, None), TypeError, 'total_steps')])
def test_demo_schedules(schedule, args, error, match):
    raises(error, match, schedule, *args)


def test_demo_helpers():
    raises(ValueError, 'technique must be one of', models.build_model, 'nope')
    raises(ValueError, 'technique must be one of', models.technique_label, 3)
    raises(TypeError, 'out_channels must be an int', models.build_model, 'conv', 2.5)
    raises(TypeError, 'base_lr must be a real', train.cosine_lr, 'a', 1, 2)
    raises(ValueError, 'step must be an int >= 0', train.cosine_lr, 0.1, -1, 2)
    raises(ValueError, 'batch_size must be a positive int', train.batches_per_epoch, 10, 0)
    raises(TypeError, 'n_train must be an int', train.batches_per_epoch, 10.0, 2)
    raises(TypeError, 'dataset must be a Dataset', data.limit, None, 5)
    raises(ValueError, 'n_test must be an int >= 0', data.limit, data.Dataset(*[np.zeros(3)] * 4), None, -1)
    raises(ValueError, 'n must be a positive int', data.segment_digits, 0)
    assert math.isclose(train.cosine_lr(0.1, 1, 2), 0.05) and models.technique_label('conv')
