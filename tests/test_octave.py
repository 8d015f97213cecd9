"""Octave convolution: reference, gradcheck, identities, errors, state_dict, torch re-creation."""
import math

import numpy as np
import pytest

import numpyconv as nc
from numpyconv import octave as O
from numpyconv.pooling import avg_pool2d_forward
from numpyconv.conv import Conv2d, conv2d_forward
from numpyconv.module import Sequential
from numpyconv.reference import octave as ref

RNG = np.random.default_rng(2019)


def randn(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


# -- the official module, re-created for the cross-check ---------------------------------------------
def official_octave_class(torch):
    """d-li14/octconv.pytorch ``OctaveConv`` at commit d639428, re-written for this test."""
    nn = torch.nn

    class OfficialOctaveConv(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, alpha_in=0.5, alpha_out=0.5,
                     stride=1, padding=0, dilation=1, groups=1, bias=False):
            super().__init__()
            assert stride in (1, 2) and 0 <= alpha_in <= 1 and 0 <= alpha_out <= 1
            self.downsample = nn.AvgPool2d(kernel_size=(2, 2), stride=2)
            self.upsample = nn.Upsample(scale_factor=2, mode='nearest')
            self.stride, self.alpha_in, self.alpha_out = stride, alpha_in, alpha_out
            self.is_dw = groups == in_channels
            low_in, low_out = int(alpha_in * in_channels), int(alpha_out * out_channels)
            high_in, high_out = in_channels - low_in, out_channels - low_out

            def conv(c_in, c_out, g):
                return nn.Conv2d(c_in, c_out, kernel_size, 1, padding, dilation, g, bias)
            self.conv_l2l = None if alpha_in == 0 or alpha_out == 0 else \
                conv(low_in, low_out, math.ceil(alpha_in * groups))
            self.conv_l2h = None if alpha_in == 0 or alpha_out == 1 or self.is_dw else \
                conv(low_in, high_out, groups)
            self.conv_h2l = None if alpha_in == 1 or alpha_out == 0 or self.is_dw else \
                conv(high_in, low_out, groups)
            self.conv_h2h = None if alpha_in == 1 or alpha_out == 1 else \
                conv(high_in, high_out, math.ceil(groups - alpha_in * groups))

        def forward(self, x):
            x_h, x_l = x if type(x) is tuple else (x, None)
            if self.stride == 2:
                x_h = self.downsample(x_h)
            y_h2h = self.conv_h2h(x_h)
            y_h2l = self.conv_h2l(self.downsample(x_h)) if self.alpha_out > 0 and not self.is_dw else None
            if x_l is None:
                return y_h2h, y_h2l
            y_l2l = self.downsample(x_l) if self.stride == 2 else x_l
            y_l2l = self.conv_l2l(y_l2l) if self.alpha_out > 0 else None
            if self.is_dw:
                return y_h2h, y_l2l
            y_l2h = self.conv_l2h(x_l)
            if self.stride == 1:
                y_l2h = self.upsample(y_l2h)
            y_l = y_h2l + y_l2l if y_h2l is not None and y_l2l is not None else None
            return y_l2h + y_h2h, y_l

    return OfficialOctaveConv


# (in, out, kernel, alpha_in, alpha_out, stride, padding, dilation, groups, bias, N, H)
CONFIGS = {
    'middle': (4, 6, 3, 0.5, 0.5, 1, 1, 1, 1, False, 2, 4),
    'middle_stride2': (4, 4, 3, 0.5, 0.5, 2, 1, 1, 1, False, 1, 8),
    'first': (3, 4, 3, 0.0, 0.5, 1, 1, 1, 1, False, 2, 4),
    'first_stride2': (3, 4, 3, 0.0, 0.5, 2, 1, 1, 1, True, 1, 8),
    'last': (4, 3, 3, 0.5, 0.0, 1, 1, 1, 1, False, 2, 4),
    'last_stride2': (4, 3, 1, 0.5, 0.0, 2, 0, 1, 1, False, 1, 8),
    'plain': (3, 4, 3, 0.0, 0.0, 1, 1, 1, 1, True, 2, 4),
    'plain_stride2': (3, 4, 3, 0.0, 0.0, 2, 1, 1, 1, False, 1, 8),
    'uneven_alpha': (8, 8, 3, 0.25, 0.75, 1, 1, 1, 1, False, 1, 4),
    'grouped': (8, 8, 3, 0.5, 0.5, 1, 1, 1, 2, False, 1, 4),
    'depthwise': (4, 4, 3, 0.5, 0.5, 1, 1, 1, 4, False, 2, 4),
    'depthwise_stride2': (4, 4, 3, 0.5, 0.5, 2, 1, 1, 4, True, 1, 8),
    'depthwise_first': (4, 8, 3, 0.0, 0.5, 1, 1, 1, 4, False, 2, 4),
    'bias_dilated': (4, 4, 3, 0.5, 0.5, 1, 2, 2, 1, True, 1, 8),
    'pointwise_bias': (4, 6, 1, 0.5, 0.5, 1, 0, 1, 1, True, 2, 4),
    'float_rounding': (90, 10, 1, 0.7, 0.8, 1, 0, 1, 1, False, 1, 4),   # 62 / 28 and 8 / 2 channels
}


def make_layer(cfg, dtype=np.float64, seed=0):
    c_in, c_out, k, a_in, a_out, s, p, d, g, bias = cfg[:10]
    return O.OctaveConv2d(c_in, c_out, k, a_in, a_out, s, p, d, g, bias, dtype=dtype, rng=seed)


def make_input(layer, n, h, dtype=np.float64):
    x_h = randn(n, layer.in_split['h'], h, h, dtype=dtype)
    if layer.alpha_in == 0:
        return x_h
    return x_h, randn(n, layer.in_split['l'], h // 2, h // 2, dtype=dtype)


def op_args(layer, x):
    x_h, x_l = x if isinstance(x, tuple) else (x, None)
    weights = [layer.params.get(f'conv_{n}.weight') for n in O.PATH_NAMES]
    return (x_h, x_l, *weights), dict(stride=layer.stride, padding=layer.padding,
                                      dilation=layer.dilation, groups=layer.op_groups)


# -- channel rules ------------------------------------------------------------------------------------
def test_channel_split_uses_float_truncation():
    assert O.octave_channels(90, 0.7) == (28, 62)          # 0.7 * 90 = 62.99999...
    assert O.octave_channels(170, 0.7) == (52, 118)
    assert O.octave_channels(10, 0.8) == (2, 8)
    assert O.octave_channels(64, 0.0) == (64, 0)
    layer = O.OctaveConv2d(90, 10, 1, 0.7, 0.8, rng=0)
    assert layer.params['conv_l2l.weight'].shape == (8, 62, 1, 1)
    assert layer.params['conv_h2h.weight'].shape == (2, 28, 1, 1)


def test_official_path_groups():
    assert O.official_path_groups(4, 0.25) == dict(h2h=3, h2l=4, l2h=4, l2l=1)
    assert O.official_path_groups(2, 0.5) == dict(h2h=1, h2l=2, l2h=2, l2l=1)
    assert O.official_path_groups(3, 0.1) == dict(h2h=3, h2l=3, l2h=3, l2l=1)   # ceil of floats


# -- op: reference and gradcheck -----------------------------------------------------------------------
@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_op_matches_reference(name):
    cfg = CONFIGS[name]
    layer = make_layer(cfg, seed=1)
    args, kw = op_args(layer, make_input(layer, cfg[10], cfg[11]))
    (y_h, y_l), _ = O.octave_conv2d_forward(*args, **kw)
    r_h, r_l = ref.octave_conv2d(*args, **kw)
    np.testing.assert_allclose(y_h, r_h, rtol=1e-12, atol=1e-12)
    assert (y_l is None) == (r_l is None)
    if y_l is not None:
        np.testing.assert_allclose(y_l, r_l, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('name', ['middle', 'middle_stride2', 'first_stride2', 'last',
                                  'last_stride2', 'grouped', 'depthwise_stride2'])
def test_op_gradcheck(name):
    cfg = CONFIGS[name]
    layer = make_layer(cfg, seed=2)
    args, kw = op_args(layer, make_input(layer, 1, cfg[11]))
    report = nc.gradcheck(lambda *a: O.octave_conv2d_forward(*a, **kw), O.octave_conv2d_backward, args,
                          names=['x_h', 'x_l', 'w_h2h', 'w_h2l', 'w_l2h', 'w_l2l'])
    assert report.ok and len(report.results) == sum(a is not None for a in args)


def test_op_unused_low_weights_get_zero_gradient():
    x_h, w_h2h, w_h2l = randn(1, 2, 4, 4), randn(3, 2, 3, 3), randn(2, 2, 3, 3)
    w_l2h, w_l2l = randn(3, 2, 3, 3), randn(2, 2, 3, 3)
    (y_h, y_l), cache = O.octave_conv2d_forward(x_h, None, w_h2h, w_h2l, w_l2h, w_l2l, padding=1)
    grads = O.octave_conv2d_backward((np.ones_like(y_h), np.ones_like(y_l)), cache)
    assert grads[1] is None
    assert not grads[4].any() and not grads[5].any()
    assert grads[4].shape == w_l2h.shape


def test_op_none_output_gradient_is_zero():
    x_h, x_l = randn(1, 2, 4, 4), randn(1, 2, 2, 2)
    ws = randn(3, 2, 3, 3), randn(2, 2, 3, 3), randn(3, 2, 3, 3), randn(2, 2, 3, 3)
    (y_h, y_l), cache = O.octave_conv2d_forward(x_h, x_l, *ws, padding=1)
    with_zero = O.octave_conv2d_backward((np.ones_like(y_h), np.zeros_like(y_l)), cache)
    with_none = O.octave_conv2d_backward((np.ones_like(y_h), None), cache)
    for a, b in zip(with_zero, with_none):
        np.testing.assert_allclose(a, b, atol=1e-14)


# -- identities ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('stride', [1, 2])
def test_alpha_zero_zero_is_plain_convolution(stride):
    layer = O.OctaveConv2d(3, 5, 3, 0, 0, stride, padding=1, bias=True, dtype=np.float64, rng=3)
    assert list(layer.params) == ['conv_h2h.weight', 'conv_h2h.bias']
    x = randn(2, 3, 8, 8)
    y_h, y_l = layer(x)
    z = avg_pool2d_forward(x, 2)[0] if stride == 2 else x
    expected, _ = conv2d_forward(z, layer.params['conv_h2h.weight'], layer.params['conv_h2h.bias'],
                                 padding=1)
    assert y_l is None
    np.testing.assert_allclose(y_h, expected, rtol=1e-13, atol=1e-13)
    if stride == 1:
        plain = Conv2d(3, 5, 3, padding=1, dtype=np.float64)
        plain.load_state_dict({k.split('.', 1)[1]: v for k, v in layer.state_dict().items()})
        np.testing.assert_allclose(y_h, plain(x), rtol=1e-13, atol=1e-13)
        assert nc.count(layer, x.shape) == nc.count(plain, x.shape)


@pytest.mark.parametrize('name', ['middle', 'middle_stride2', 'grouped', 'depthwise'])
def test_bilinearity_euler_identity(name):
    """The op is linear in the inputs and linear in the weights: <y, dy> = <x, dx> = <w, dw>."""
    cfg = CONFIGS[name]
    layer = make_layer(cfg, seed=4)
    args, kw = op_args(layer, make_input(layer, 2, cfg[11]))
    (y_h, y_l), cache = O.octave_conv2d_forward(*args, **kw)
    dy = (randn(*y_h.shape), None if y_l is None else randn(*y_l.shape))
    grads = O.octave_conv2d_backward(dy, cache)
    out = sum(np.vdot(y, g) for y, g in zip((y_h, y_l), dy) if y is not None)
    via_inputs = sum(np.vdot(a, g) for a, g in zip(args[:2], grads[:2]) if a is not None)
    via_weights = sum(np.vdot(a, g) for a, g in zip(args[2:], grads[2:]) if a is not None)
    assert via_inputs == pytest.approx(out, rel=1e-12)
    assert via_weights == pytest.approx(out, rel=1e-12)


def test_bias_is_one_constant_per_output():
    """y_h gets b_h2h + b_l2h and y_l gets b_h2l + b_l2l, each once per channel (eq. 8)."""
    layer = make_layer(CONFIGS['bias_dilated'], seed=5)
    x = make_input(layer, 1, 8)
    b = {key: v.copy() for key, v in layer.params.items() if key.endswith('bias')}
    y_h, y_l = layer(x)
    for key in b:
        layer.params[key][...] = 0
    z_h, z_l = layer(x)
    shift_h = (b['conv_h2h.bias'] + b['conv_l2h.bias'])[None, :, None, None]
    shift_l = (b['conv_h2l.bias'] + b['conv_l2l.bias'])[None, :, None, None]
    np.testing.assert_allclose(y_h - z_h, np.broadcast_to(shift_h, y_h.shape), atol=1e-13)
    np.testing.assert_allclose(y_l - z_l, np.broadcast_to(shift_l, y_l.shape), atol=1e-13)


# -- layer: gradcheck ----------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['middle', 'middle_stride2', 'first', 'first_stride2', 'last',
                                  'last_stride2', 'plain_stride2', 'uneven_alpha', 'grouped',
                                  'depthwise', 'depthwise_stride2', 'bias_dilated', 'pointwise_bias'])
def test_layer_gradcheck(name):
    cfg = CONFIGS[name]
    layer = make_layer(cfg, seed=6)
    x = make_input(layer, 1, cfg[11])
    # a bare input goes in as (x, None): backward always returns the pair (dx_h, dx_l)
    report = nc.gradcheck_layer(layer, x if isinstance(x, tuple) else (x, None))
    assert report.ok
    assert {r.name for r in report.results} >= set(layer.params)


def test_layer_gradcheck_bare_tensor_on_middle_layer():
    """A bare tensor of Ci_h channels runs as the official module: (h2h(x), h2l(P x)), no x_l."""
    layer = make_layer(CONFIGS['middle'], seed=7)
    x = randn(1, layer.in_split['h'], 4, 4)
    y_h, y_l = layer(x)
    _, dx_l = layer.backward((np.ones_like(y_h), np.ones_like(y_l)))
    assert dx_l is None
    assert not layer.grads['conv_l2h.weight'].any()
    nc.gradcheck_layer(layer, (x, None))


def test_sequential_first_middle_last_gradcheck():
    net = Sequential(O.OctaveConv2d(3, 4, 3, 0, 0.5, padding=1, dtype=np.float64, rng=0),
                     O.OctaveConv2d(4, 4, 3, 0.5, 0.5, 2, padding=1, bias=True, dtype=np.float64, rng=1),
                     O.OctaveConv2d(4, 2, 3, 0.5, 0, padding=1, dtype=np.float64, rng=2))
    x = randn(1, 3, 8, 8)
    y_h, y_l = net(x)
    assert y_h.shape == (1, 2, 4, 4) and y_l is None
    nc.gradcheck_layer(net, (x, None), mode='random')
    params, macs = nc.count(net, x.shape)
    assert params == net.num_params() and macs > 0
    assert net.macs(x.shape)[1] == (1, 2, 4, 4)


def test_depthwise_first_layer_has_no_low_output():
    layer = O.OctaveConv2d(4, 8, 3, 0, 0.5, padding=1, groups=4, dtype=np.float64, rng=0)
    assert list(layer.params) == ['conv_h2h.weight']       # is_dw: no h2l path, groups 4
    y_h, y_l = layer(randn(1, 4, 4, 4))
    assert y_h.shape == (1, 4, 4, 4) and y_l is None
    dx_h, dx_l = layer.backward((np.ones_like(y_h), None))
    assert dx_h.shape == (1, 4, 4, 4) and dx_l is None
    assert layer.macs((1, 4, 4, 4)) == (4 * 16 * 9, (1, 4, 4, 4))


# -- state_dict -------------------------------------------------------------------------------------------
W3 = (64, 32, 3, 3)


@pytest.mark.parametrize('args, kwargs, expected', [
    ((64, 128, 3, .5, .5), dict(padding=1),
     {'conv_l2l.weight': W3, 'conv_l2h.weight': W3, 'conv_h2l.weight': W3, 'conv_h2h.weight': W3}),
    ((3, 64, 3, 0, .5), {}, {'conv_h2l.weight': (32, 3, 3, 3), 'conv_h2h.weight': (32, 3, 3, 3)}),
    ((64, 10, 3, .5, 0), {}, {'conv_l2h.weight': (10, 32, 3, 3), 'conv_h2h.weight': (10, 32, 3, 3)}),
    ((64, 64, 3, .5, .5), dict(groups=64),
     {'conv_l2l.weight': (32, 1, 3, 3), 'conv_h2h.weight': (32, 1, 3, 3)}),
    ((4, 4, 1, .5, .5), dict(bias=True),
     {f'conv_{p}.{k}': (2, 2, 1, 1) if k == 'weight' else (2,)
      for p in ('l2l', 'l2h', 'h2l', 'h2h') for k in ('weight', 'bias')}),
])
def test_state_dict_keys_in_official_order(args, kwargs, expected):
    layer = O.OctaveConv2d(*args, **kwargs, rng=0)
    state = layer.state_dict()
    assert list(state) == list(expected)
    assert {k: v.shape for k, v in state.items()} == expected


def test_state_dict_round_trip():
    cfg = CONFIGS['bias_dilated']
    a, b = make_layer(cfg, seed=8), make_layer(cfg, seed=9)
    x = make_input(a, 1, 8)
    b.load_state_dict(a.state_dict())
    for u, v in zip(a(x), b(x)):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(KeyError, match='conv_l2h.weight'):
        make_layer(CONFIGS['first']).load_state_dict(a.state_dict())


# -- dtype, mutation, batch 0 -----------------------------------------------------------------------------
def test_float32_preserved():
    layer = make_layer(CONFIGS['middle_stride2'], dtype=np.float32, seed=10)
    x_h, x_l = make_input(layer, 2, 8, dtype=np.float32)
    y_h, y_l = layer((x_h, x_l))
    assert y_h.dtype == y_l.dtype == np.float32
    dx_h, dx_l = layer.backward((np.ones_like(y_h), np.ones_like(y_l)))
    assert dx_h.dtype == dx_l.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    ref_layer = make_layer(CONFIGS['middle_stride2'], seed=10)
    ref_layer.load_state_dict(layer.state_dict())
    r_h, r_l = ref_layer((x_h.astype(np.float64), x_l.astype(np.float64)))
    np.testing.assert_allclose(y_h, r_h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y_l, r_l, rtol=1e-4, atol=1e-5)


def test_inputs_not_mutated():
    layer = make_layer(CONFIGS['bias_dilated'], seed=11)
    x_h, x_l = make_input(layer, 1, 8)
    copies = [a.copy() for a in (x_h, x_l)]
    y_h, y_l = layer((x_h, x_l))
    dy = (randn(*y_h.shape), randn(*y_l.shape))
    dy_copies = [g.copy() for g in dy]
    layer.backward(dy)
    for a, c in zip((x_h, x_l) + dy, copies + dy_copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize('name', ['middle', 'middle_stride2', 'first', 'last'])
def test_batch_zero(name):
    cfg = CONFIGS[name]
    layer = make_layer(cfg, seed=12)
    x = make_input(layer, 0, cfg[11])
    y_h, y_l = layer(x)
    assert y_h.shape[0] == 0 and (y_l is None or y_l.shape[0] == 0)
    dx_h, dx_l = layer.backward((y_h, y_l))
    assert dx_h.shape == (x[0] if isinstance(x, tuple) else x).shape
    assert not any(g.any() for g in layer.grads.values())


# -- cost -----------------------------------------------------------------------------------------------
def test_macs_match_paper_ratio():
    layer = O.OctaveConv2d(64, 64, 3, 0.5, 0.5, padding=1, rng=0)
    plain = Conv2d(64, 64, 3, padding=1, bias=False)
    macs, out_shape = layer.macs((2, 64, 16, 16))
    assert out_shape == (2, 64, 16, 16)
    assert macs == pytest.approx((1 - 0.75 * 0.5 * 1.5) * plain.macs((2, 64, 16, 16))[0], rel=1e-12)
    first = O.OctaveConv2d(3, 64, 3, 0, 0.5, 2, padding=1, rng=0)
    # h2h on the pooled 8x8 map, h2l on the 4x4 map: 32 outputs each, 3 inputs x 9 taps
    assert first.macs((1, 3, 16, 16)) == (32 * 27 * (64 + 16), (1, 64, 8, 8))


# -- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs, exc, match', [
    (dict(alpha_in=1.0), ValueError, r'alpha_in must be in \[0, 1\)'),
    (dict(alpha_out=-0.1), ValueError, r'alpha_out must be in \[0, 1\)'),
    (dict(alpha_in='half'), TypeError, 'alpha_in must be a real number'),
    (dict(stride=3), ValueError, 'stride must be 1 or 2'),
    (dict(groups=4, in_channels=6, out_channels=6), ValueError, 'conv_l2l has groups=2'),
    (dict(in_channels=10, out_channels=10, groups=10, alpha_in=.25, alpha_out=.25), ValueError,
     'conv_l2l has groups=3'),
    (dict(in_channels=1), ValueError, 'conv_l2l would have 0 input'),
    (dict(out_channels=1), ValueError, 'conv_l2l would have 2 input and 0 output'),
    (dict(padding=-1), ValueError, 'padding must be non-negative'),
])
def test_constructor_errors(kwargs, exc, match):
    args = dict(in_channels=4, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        O.OctaveConv2d(**args)


def test_forward_errors():
    layer = O.OctaveConv2d(4, 4, 3, padding=1, dtype=np.float64, rng=0)
    x_h, x_l = randn(2, 2, 8, 8), randn(2, 2, 4, 4)
    with pytest.raises(ValueError, match=r'y_h: the h2h path gives \(7, 7\) but the l2h path gives \(6, 6\)'):
        layer((randn(2, 2, 7, 7), randn(2, 2, 3, 3)))
    with pytest.raises(ValueError, match=r'x_l must have shape \(N, 2, H, W\).*got \(2, 3, 4, 4\)'):
        layer((x_h, randn(2, 3, 4, 4)))
    with pytest.raises(ValueError, match='x_l must have the batch size of x_h'):
        layer((x_h, randn(1, 2, 4, 4)))
    with pytest.raises(ValueError, match=r'the l2h path gives \(10, 10\)'):
        layer((x_h, randn(2, 2, 5, 5)))
    with pytest.raises(ValueError, match=r'x_h must have shape \(N, 2, H, W\).*got \(2, 4, 8, 8\)'):
        layer(randn(2, 4, 8, 8))
    with pytest.raises(TypeError, match='float64 parameters, got x_h of dtype float32'):
        layer((x_h.astype(np.float32), x_l))
    with pytest.raises(ValueError, match='a pair'):
        layer((x_h, x_l, x_l))
    with pytest.raises(ValueError, match='x_l must be None for alpha_in=0'):
        O.OctaveConv2d(4, 4, 3, 0, .5, dtype=np.float64)((randn(1, 4, 8, 8), x_l))
    with pytest.raises(ValueError, match='x_h is too small'):
        O.OctaveConv2d(4, 4, 1, .5, .5, 2, dtype=np.float64)((randn(1, 2, 2, 2), randn(1, 2, 1, 1)))
    with pytest.raises(ValueError, match=r'y_h.*odd|y_h: the h2h'):
        layer.macs((1, 4, 7, 7))


def test_backward_errors():
    layer = O.OctaveConv2d(4, 4, 3, 0.5, 0, padding=1, dtype=np.float64, rng=0)
    y_h, y_l = layer((randn(1, 2, 4, 4), randn(1, 2, 2, 2)))
    with pytest.raises(ValueError, match='dy_l must be None'):
        layer.backward((np.ones_like(y_h), np.ones((1, 2, 2, 2))))
    with pytest.raises(ValueError, match=r'dy_h must have shape \(1, 4, 4, 4\)'):
        layer.backward((np.ones((1, 4, 4, 5)), None))
    with pytest.raises(TypeError, match='dout must be a pair'):
        layer.backward(np.ones_like(y_h))


def test_op_errors():
    x_h, w = randn(1, 2, 4, 4), randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match='no path can be evaluated'):
        O.octave_conv2d_forward(x_h, None, None, None, w, w)
    with pytest.raises(ValueError, match=r'w_h2l must have shape \(2, 1, kh, kw\)'):
        O.octave_conv2d_forward(x_h, None, w, w, None, None, groups=(1, 2, 1, 1))
    with pytest.raises(ValueError, match='groups must be an int or 4 ints'):
        O.octave_conv2d_forward(x_h, None, w, None, None, None, groups=(1, 1))
    with pytest.raises(TypeError, match='same float dtype'):
        O.octave_conv2d_forward(x_h, None, w.astype(np.float32), None, None, None)
    with pytest.raises(TypeError, match='x_h must be a numpy.ndarray'):
        O.octave_conv2d_forward(None, x_h, None, None, w, w)
    with pytest.raises(ValueError, match='groups=2 of the h2h path must divide the channels of x_h'):
        O.octave_conv2d_forward(randn(1, 3, 4, 4), None, randn(2, 1, 3, 3), None, None, None, groups=2)


def test_op_paths_into_one_output_must_agree_on_channels():
    """Regression: weights giving one output two channel counts used to fail with a raw numpy
    broadcasting error when the terms were summed (eq. 7)."""
    x_h, x_l = randn(1, 3, 8, 8), randn(1, 2, 4, 4)
    w_h2h, w_h2l, w_l2l = randn(4, 3, 3, 3), randn(2, 3, 3, 3), randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match=r'w_l2h must have shape \(4, 2, 3, 3\): y_h has the 4 output '
                                         r'channels of w_h2h; got \(3, 2, 3, 3\)'):
        O.octave_conv2d_forward(x_h, x_l, w_h2h, w_h2l, randn(3, 2, 3, 3), w_l2l, padding=1)
    with pytest.raises(ValueError, match=r'w_l2l must have shape \(2, 2, 3, 3\): y_l'):
        O.octave_conv2d_forward(x_h, x_l, w_h2h, w_h2l, None, randn(5, 2, 3, 3), padding=1)


# -- optional: the official module in torch --------------------------------------------------------------
TORCH_CONFIGS = ['middle', 'middle_stride2', 'first', 'first_stride2', 'last', 'last_stride2',
                 'plain_stride2', 'uneven_alpha', 'grouped', 'depthwise', 'depthwise_stride2',
                 'depthwise_first', 'bias_dilated', 'pointwise_bias', 'float_rounding']


@pytest.mark.parametrize('name', TORCH_CONFIGS)
def test_matches_official_torch_module(name):
    torch = pytest.importorskip('torch')
    cfg = CONFIGS[name]
    c_in, c_out, k, a_in, a_out, s, p, d, g, bias, n, h = cfg
    torch.manual_seed(0)
    official = official_octave_class(torch)(c_in, c_out, k, a_in, a_out, s, p, d, g, bias).double()
    layer = make_layer(cfg, seed=0)
    layer.load_state_dict({key: v.detach().numpy() for key, v in official.state_dict().items()})
    x = make_input(layer, n, h)
    parts = x if isinstance(x, tuple) else (x,)
    t_parts = [torch.tensor(a, requires_grad=True) for a in parts]
    t_out = official(tuple(t_parts) if len(t_parts) == 2 else t_parts[0])
    ours = layer(x)
    dys = tuple(None if y is None else randn(*y.shape) for y in ours)
    loss = sum((t * torch.tensor(dy)).sum() for t, dy in zip(t_out, dys) if t is not None)
    loss.backward()
    dx = layer.backward(dys)

    def close(a, b):
        assert a.shape == b.shape
        assert np.max(np.abs(a - b)) <= 1e-10 * max(1.0, np.max(np.abs(b)))
    for y, t in zip(ours, t_out):
        assert (y is None) == (t is None)
        if y is not None:
            close(y, t.detach().numpy())
    for dpart, t in zip(dx, t_parts):
        close(dpart, t.grad.numpy())
    torch_grads = {key: prm.grad for key, prm in official.named_parameters()}
    assert set(torch_grads) == set(layer.grads)
    for key, grad in layer.grads.items():
        close(grad, torch_grads[key].numpy())


def test_gradcheck_layer_accepts_a_bare_tensor_for_a_pair_layer():
    layer = nc.OctaveConv2d(4, 4, 3, alpha_in=0.0, alpha_out=0.5, padding=1, dtype=np.float64, rng=0)
    nc.gradcheck_layer(layer, np.random.default_rng(0).standard_normal((2, 4, 6, 6)))
