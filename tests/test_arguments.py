"""Arguments of constructors, builders and helpers: each bad one is refused with a ``TypeError`` or
``ValueError`` naming it, before anything is computed or allocated."""
import numpy as np
import pytest

import numpyconv as nc
from numpyconv import models
from numpyconv.dcnv3 import center_feature_scale_forward
from numpyconv.kernel_warehouse import KWConv2d

HUGE = (2 ** 64, 10 ** 20, 2 ** 31)


def _x(shape=(1, 4, 6, 6)):
    return np.random.default_rng(0).standard_normal(shape)


@pytest.mark.parametrize('huge', HUGE)
@pytest.mark.parametrize('call', [
    lambda v: nc.conv2d_forward(_x(), np.ones((2, 4, 3, 3)), stride=v),
    lambda v: nc.depthwise_conv2d_forward(_x(), np.ones((4, 1, 3, 3)), stride=v),
    lambda v: nc.max_pool2d_forward(_x(), 2, stride=v),
    lambda v: nc.avg_pool2d_forward(_x(), 2, stride=v),
    lambda v: nc.avg_pool2d_forward(_x(), 2, divisor_override=v),
    lambda v: nc.adaptive_avg_pool2d_forward(_x(), (v, 2)),
    lambda v: nc.involution_forward(_x(), np.ones((1, 9, 6, 6)), 3, stride=v),
    lambda v: nc.MaxPool2d(2, stride=v),
    lambda v: nc.Conv2d(4, v, 3),
])
def test_integers_beyond_the_compiled_loops_range_are_value_errors(call, huge):
    with pytest.raises(ValueError, match='at most 2147483647'):
        call(huge)


@pytest.mark.parametrize('make', [lambda: nc.Linear(10 ** 6, 10 ** 6), lambda: nc.Conv2d(10 ** 5, 10 ** 5, 7),
                                  lambda: nc.DeformConv2d(10 ** 5, 10 ** 5, 7)])
def test_a_layer_too_large_for_memory_is_refused_before_its_weights_are_drawn(make):
    with pytest.raises(ValueError, match=r'initial values of a parameter of shape .* more than the'):
        make()


def test_dtype_none_means_the_float32_default():
    assert nc.Conv2d(3, 4, 3, dtype=None).params['weight'].dtype == np.float32
    assert models.resnet18(base_channels=8, num_classes=3, dtype=None).params['fc.weight'].dtype == np.float32
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got 'bogus'"):
        nc.Conv2d(3, 4, 3, dtype='bogus')


@pytest.mark.parametrize('rng, error', [('abc', TypeError), (1.5, TypeError), (True, TypeError),
                                        ([1, 2], TypeError), (-1, ValueError)])
def test_a_bad_rng_is_named(rng, error):
    for make in (lambda: nc.Conv2d(3, 4, 3, rng=rng), lambda: nc.dropout_forward(_x(), 0.0, rng=rng),
                 lambda: models.resnet18(base_channels=8, rng=rng)):
        with pytest.raises(error, match='rng must be None, an int seed >= 0, a numpy.random.Generator, '
                                        'SeedSequence or BitGenerator'):
            make()


def test_seeds_of_numpy_integer_type_generators_and_seed_sequences_are_accepted():
    a = nc.Conv2d(3, 4, 3, rng=np.int64(5)).params['weight']
    b = nc.Conv2d(3, 4, 3, rng=np.random.default_rng(5)).params['weight']
    c = nc.Conv2d(3, 4, 3, rng=np.random.SeedSequence(5)).params['weight']
    d = nc.Conv2d(3, 4, 3, rng=np.random.PCG64(5)).params['weight']
    for other in (b, c, d):
        np.testing.assert_array_equal(a, other)


@pytest.mark.parametrize('make', [lambda v: nc.DCNv3(8, group=2, channels_last=v),
                                  lambda v: nc.DCNv4(16, group=2, channels_last=v),
                                  lambda v: nc.LayerNorm(4, channels_first=v)])
def test_layout_flags_must_be_bools(make):
    with pytest.raises(TypeError, match='must be a bool'):
        make('no')
    make(np.bool_(True))


def test_integer_buffers_refuse_values_they_cannot_hold():
    bn = nc.BatchNorm2d(3)
    state = bn.state_dict()
    for bad in (2.7, 1e30, np.nan):
        with pytest.raises(ValueError, match=r'num_batches_tracked holds integers \(int64\)'):
            bn.load_state_dict({**state, 'num_batches_tracked': np.array(bad)})
    bn.load_state_dict({**state, 'num_batches_tracked': np.array(7.0)})
    assert bn.state_dict()['num_batches_tracked'] == 7


@pytest.mark.parametrize('layer', [nc.DeformConv2d(2, 2, 3), nc.ModulatedDeformConv2d(2, 2, 3)])
@pytest.mark.parametrize('state', [[('weight', np.zeros(1))], 5, 'ab'])
def test_deformable_load_state_dict_takes_a_mapping_only(layer, state):
    with pytest.raises(TypeError, match='state must be a mapping'):
        layer.load_state_dict(state)


@pytest.mark.parametrize('layer', [object(), None, np.sum])
def test_gradcheck_layer_takes_a_module(layer):
    with pytest.raises(TypeError, match='layer must be a numpyconv Module'):
        nc.gradcheck_layer(layer, _x())


@pytest.mark.parametrize('manager', [None, 3, 'x'])
def test_kwconv2d_needs_its_warehouse_manager(manager):
    with pytest.raises(TypeError, match='warehouse_manager must be a WarehouseManager'):
        KWConv2d(4, 4, 3, warehouse_id=0, warehouse_manager=manager)


def test_center_feature_scale_checks_its_arrays():
    q, core = np.ones((1, 2, 2, 8)), np.ones((1, 2, 2, 8))
    w, b = np.ones((2, 8)), np.ones(2)
    z, _ = center_feature_scale_forward(q, w, b, core, 2 * core, 2)
    assert z.shape == core.shape
    for args, error, match in [((q, w, b, core.tolist(), core, 2), TypeError, 'core must be a numpy.ndarray'),
                               ((q, w, b, core, core.astype(complex), 2), TypeError, 'value must be float32'),
                               ((q[None], w, b, core, core, 2), ValueError, 'query must be'),
                               ((q, w, b, core, core[..., :4], 2), ValueError, 'value must have shape'),
                               ((q, w, b, core, core, 3), ValueError, 'group must divide')]:
        with pytest.raises(error, match=match):
            center_feature_scale_forward(*args)


@pytest.mark.parametrize('build, kwargs', [
    (models.internimage_t, dict(channels=16, depths=(1, 1, 1, 1), groups=(1, 2, 2, 4))),
    (models.resnet18, dict(base_channels=8)), (models.rednet26, dict(base_channels=16, stem_channels=16)),
    (models.od_mobilenetv2, dict(width_mult=0.25))])
@pytest.mark.parametrize('value', [2.5, 'a', None, True])
def test_builders_name_num_classes(build, kwargs, value):
    with pytest.raises(TypeError, match='num_classes must be an int'):
        build(num_classes=value, **kwargs)


@pytest.mark.parametrize('value, error', [('a', TypeError), (True, TypeError), (-8, ValueError)])
def test_internimage_names_channels(value, error):
    with pytest.raises(error, match='channels must be'):
        models.internimage_t(channels=value, depths=(1, 1, 1, 1), groups=(1, 2, 2, 4))
