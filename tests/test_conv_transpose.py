"""Transposed convolution: reference, gradcheck, adjointness with conv2d, PyTorch (op and layer,
state_dict, output_size, initialisation), memory blocks, errors."""
import math

import numpy as np
import pytest

import numpyconv
from numpyconv.conv import conv2d_forward
from numpyconv.conv_transpose import (ConvTranspose2d, conv_transpose2d_backward, conv_transpose2d_forward,
                                      transpose_geometry)
from numpyconv.gradcheck import gradcheck, gradcheck_layer
from numpyconv.module import count
from numpyconv.reference import conv_transpose as ref

RNG = np.random.default_rng(61)
F64 = dict(dtype=np.float64, rng=0)


def normal(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def random_case(rng, max_batch=2):
    """``(x, weight, bias, kwargs)`` of a random valid transposed convolution."""
    groups = int(rng.integers(1, 4))
    c_in, o_g = groups * int(rng.integers(1, 3)), int(rng.integers(1, 3))
    kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
    stride, dilation = (tuple(int(v) for v in rng.integers(1, 4, 2)) for _ in range(2))
    output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
    hw = tuple(int(v) for v in rng.integers(1, 6, 2))
    padding = tuple(int(rng.integers(0, (h - 1) * s // 2 + d * (k - 1) // 2 + 1))
                    for h, s, d, k in zip(hw, stride, dilation, kernel))
    x = normal(int(rng.integers(0, max_batch + 1)), c_in, *hw)
    weight = normal(c_in, o_g, *kernel)
    bias = normal(o_g * groups) if rng.random() < 0.6 else None
    return x, weight, bias, dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                                 dilation=dilation)


def fits(x, weight, kwargs):
    try:
        transpose_geometry(x.shape[2:], weight.shape[2:], kwargs['stride'], kwargs['padding'],
                           kwargs['output_padding'], kwargs['dilation'])
    except ValueError:
        return False
    return True


@pytest.mark.parametrize('seed', range(30))
def test_matches_reference(seed):
    x, weight, bias, kwargs = random_case(np.random.default_rng(seed))
    if not fits(x, weight, kwargs):
        return
    y, cache = conv_transpose2d_forward(x, weight, bias, **kwargs)
    dout = normal(*y.shape)
    np.testing.assert_allclose(y, ref.conv_transpose2d(x, weight, bias, **kwargs), rtol=1e-12, atol=1e-13)
    expected = ref.conv_transpose2d_backward(dout, x, weight, bias, **kwargs)
    for g, e in zip(conv_transpose2d_backward(dout, cache), expected):
        assert (g is None) == (e is None)
        if g is not None:
            np.testing.assert_allclose(g, e, rtol=1e-11, atol=1e-12)


CASES = {
    'plain': ((2, 3, 4, 3), (3, 2, 3, 3), True, dict()),
    'strided_padded': ((2, 4, 3, 4), (4, 3, 3, 2), True, dict(stride=2, padding=1, output_padding=1)),
    'groups_dilation': ((1, 4, 3, 3), (4, 1, 2, 3), False, dict(stride=(1, 2), padding=(1, 0), groups=2,
                                                               dilation=(2, 1), output_padding=(1, 1))),
    'output_padding_from_dilation': ((2, 2, 3, 2), (2, 2, 2, 2), True, dict(stride=1, dilation=3,
                                                                            output_padding=2)),
}


@pytest.mark.parametrize('name', CASES)
def test_gradcheck(name):
    x_shape, w_shape, has_bias, kwargs = CASES[name]
    bias = normal(w_shape[1] * kwargs.get('groups', 1)) if has_bias else None
    inputs = (normal(*x_shape), normal(*w_shape), bias)
    gradcheck(lambda x, w, b: conv_transpose2d_forward(x, w, b, **kwargs), conv_transpose2d_backward, inputs,
              mode='full')


@pytest.mark.parametrize('name', CASES)
def test_adjoint_of_conv2d(name):
    """<conv2d(z, W), x> == <z, conv_transpose2d(x, W)> for z of the transposed output's shape (eq. 21)."""
    x_shape, w_shape, _, kwargs = CASES[name]
    x, weight = normal(*x_shape), normal(*w_shape)
    y, _ = conv_transpose2d_forward(x, weight, **kwargs)
    z = normal(*y.shape)
    conv_kwargs = {k: v for k, v in kwargs.items() if k != 'output_padding'}
    conv = conv2d_forward(z, weight, **conv_kwargs)[0][:, :, :x.shape[2], :x.shape[3]]
    np.testing.assert_allclose(np.vdot(conv, x), np.vdot(z, y), rtol=1e-12)


def test_input_gradient_is_conv2d_of_dout_and_linearity():
    x, weight, bias = normal(2, 4, 3, 4), normal(4, 3, 3, 3), normal(6)
    y, cache = conv_transpose2d_forward(x, weight, bias, stride=2, padding=1, output_padding=1, groups=2)
    dout = normal(*y.shape)
    dx = conv_transpose2d_backward(dout, cache)[0]
    np.testing.assert_allclose(dx, conv2d_forward(dout, weight, stride=2, padding=1, groups=2)[0], rtol=1e-13)
    y2, _ = conv_transpose2d_forward(2.0 * x, weight, bias, stride=2, padding=1, output_padding=1, groups=2)
    b = bias[:, None, None]
    np.testing.assert_allclose(y2 - b, 2 * (y - b), rtol=1e-12, atol=1e-13)


def test_blocks_of_rows_under_a_small_column_budget(set_budget):
    x, weight, bias = normal(3, 2, 6, 5), normal(2, 3, 3, 2), normal(3)
    kwargs = dict(stride=(2, 1), padding=1, dilation=(1, 2))
    y, cache = conv_transpose2d_forward(x, weight, bias, **kwargs)
    dout = normal(*y.shape)
    grads = conv_transpose2d_backward(dout, cache)
    set_budget(200)                                 # less than one row of columns: one row per block
    y_small, cache_small = conv_transpose2d_forward(x, weight, bias, **kwargs)
    np.testing.assert_allclose(y_small, y, rtol=1e-13, atol=1e-14)
    for g, e in zip(conv_transpose2d_backward(dout, cache_small), grads):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-13)


def test_float32_batch_zero_and_no_mutation():
    x, weight, bias = normal(2, 4, 3, 3, dtype=np.float32), normal(4, 2, 3, 3, dtype=np.float32), normal(
        4, dtype=np.float32)
    copies = x.copy(), weight.copy(), bias.copy()
    y, cache = conv_transpose2d_forward(x, weight, bias, stride=2, groups=2)
    grads = conv_transpose2d_backward(np.ones_like(y), cache)
    assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    for a, c in zip((x, weight, bias), copies):
        np.testing.assert_array_equal(a, c)
    expected = ref.conv_transpose2d(*(a.astype(np.float64) for a in (x, weight, bias)), stride=2, groups=2)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    y0, cache0 = conv_transpose2d_forward(x[:0], weight, bias, stride=2, groups=2)
    dx0, dw0, db0 = conv_transpose2d_backward(y0, cache0)
    assert y0.shape == (0,) + y.shape[1:] and dx0.shape == (0, 4, 3, 3)
    assert not dw0.any() and not db0.any()
    y1, _ = conv_transpose2d_forward(x[1:], weight, bias, stride=2, groups=2)
    np.testing.assert_array_equal(y1, y[1:])


@pytest.mark.parametrize('seed', range(6))
def test_matches_torch(seed):
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(700 + seed)
    for _ in range(30):
        x, weight, bias, kwargs = random_case(rng, max_batch=3)
        if x.shape[0] == 0 or not fits(x, weight, kwargs):
            continue
        ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
        yt = torch.nn.functional.conv_transpose2d(*ts, **kwargs)
        y, cache = conv_transpose2d_forward(x, weight, bias, **kwargs)
        dout = normal(*y.shape)
        yt.backward(torch.tensor(dout))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        for g, t in zip(conv_transpose2d_backward(dout, cache), ts):
            if t is None:
                assert g is None
            else:
                np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_torch_refuses_the_geometries_refused_here():
    torch = pytest.importorskip('torch')
    x, weight = np.zeros((1, 4, 3, 3)), np.zeros((4, 3, 3, 3))
    for kwargs in (dict(stride=2, output_padding=2), dict(stride=1, output_padding=1), dict(padding=3)):
        with pytest.raises(RuntimeError):
            torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(weight), **kwargs)
        with pytest.raises(ValueError):
            conv_transpose2d_forward(x, weight, **kwargs)


# -- layer --------------------------------------------------------------------------------------------
LAYERS = [
    (4, 6, 3, dict()),
    (4, 6, 3, dict(stride=2, padding=1, output_padding=1, groups=2)),
    (2, 3, (2, 3), dict(stride=(2, 1), padding=(0, 1), dilation=(1, 2), bias=False)),
    (3, 3, 2, dict(stride=1, dilation=2, output_padding=1, groups=3)),
]


@pytest.mark.parametrize('in_channels, out_channels, kernel_size, kwargs', LAYERS)
def test_layer_loads_torch_state_dict_and_matches(in_channels, out_channels, kernel_size, kwargs):
    torch = pytest.importorskip('torch')
    tmod = torch.nn.ConvTranspose2d(in_channels, out_channels, kernel_size, **kwargs).double()
    layer = ConvTranspose2d(in_channels, out_channels, kernel_size, **kwargs, **F64)
    assert list(layer.state_dict()) == list(tmod.state_dict())
    for key, value in tmod.state_dict().items():
        assert layer.state_dict()[key].shape == tuple(value.shape)
    layer.load_state_dict({k: v.numpy() for k, v in tmod.state_dict().items()})
    x = normal(2, in_channels, 4, 3)
    xt = torch.tensor(x, requires_grad=True)
    yt = tmod(xt)
    dout = normal(*yt.shape)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for key, p in tmod.named_parameters():
        np.testing.assert_allclose(layer.grads[key], p.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert layer.macs(x.shape)[1] == tuple(yt.shape)


def test_layer_output_size_as_torch():
    torch = pytest.importorskip('torch')
    tmod = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2).double()
    layer = ConvTranspose2d(4, 6, 3, stride=2, groups=2, **F64)
    layer.load_state_dict({k: v.numpy() for k, v in tmod.state_dict().items()})
    x = normal(1, 4, 3, 3)
    for output_size in [(7, 7), (8, 8), [7, 8], (1, 6, 8, 7)]:
        xt = torch.tensor(x, requires_grad=True)
        yt = tmod(xt, output_size=output_size)
        y = layer(x, output_size=output_size)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
        dout = normal(*y.shape)
        yt.backward(torch.tensor(dout))
        np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-12)
    for output_size, match in [((6, 6), r'valid sizes range from \[7, 7\] to \[8, 8\]'),
                               ((9, 9), 'valid sizes range'),
                               ((8,), 'output_size must have 2 or 4 elements')]:
        with pytest.raises(ValueError, match=match):
            layer(x, output_size=output_size)
        with pytest.raises(ValueError):
            tmod(torch.tensor(x), output_size=output_size)


def test_layer_initialisation_bounds_as_torch():
    torch = pytest.importorskip('torch')
    layer = ConvTranspose2d(8, 12, 3, groups=2, rng=3, dtype=np.float64)
    bound = 1 / math.sqrt(12 // 2 * 3 * 3)                  # fan_in of the (C_in, C_out/G, kh, kw) weight
    torch.manual_seed(0)
    tmod = torch.nn.ConvTranspose2d(8, 12, 3, groups=2)
    assert np.abs(layer.params['weight']).max() <= bound < 1.05 * np.abs(layer.params['weight']).max()
    assert np.abs(layer.params['bias']).max() <= bound
    for key in ('weight', 'bias'):
        assert tmod.state_dict()[key].abs().max().item() <= bound
    weights = [ConvTranspose2d(2, 2, 2, rng=5).params['weight'] for _ in range(2)]
    np.testing.assert_array_equal(*weights)


def test_layer_gradcheck_count_float32():
    layer = ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, **F64)
    gradcheck_layer(layer, normal(2, 4, 3, 3), mode='full')
    params, macs = count(layer, (2, 4, 3, 3))
    assert params == 4 * 3 * 9 + 6 and macs == 2 * 4 * 3 * 3 * (6 // 2) * 9
    layer32 = ConvTranspose2d(4, 6, 3)
    y = layer32(normal(1, 4, 3, 3, dtype=np.float32))
    assert y.dtype == layer32.backward(np.ones_like(y)).dtype == np.float32
    assert numpyconv.ConvTranspose2d is ConvTranspose2d


@pytest.mark.parametrize('call, error, match', [
    (lambda: conv_transpose2d_forward(normal(1, 4, 3, 3), normal(4, 2, 3, 3), stride=2, output_padding=2),
     ValueError, 'output_padding must be smaller than either the stride or the dilation'),
    (lambda: conv_transpose2d_forward(normal(1, 4, 3, 3), normal(4, 2, 3, 3), output_padding=(0, 1)),
     ValueError, 'output_padding'),
    (lambda: conv_transpose2d_forward(normal(1, 4, 3, 3), normal(3, 2, 3, 3)), ValueError,
     r'weight must have shape \(4, C_out // groups, kh, kw\)'),
    (lambda: conv_transpose2d_forward(normal(1, 4, 3, 3), normal(4, 2, 3, 3), groups=3), ValueError,
     'groups=3 must divide the input channels'),
    (lambda: conv_transpose2d_forward(normal(1, 4, 3, 3), normal(4, 2, 3, 3), normal(3), groups=2),
     ValueError, r'bias must have shape \(4,\)'),
    (lambda: conv_transpose2d_forward(normal(1, 4, 3, 3), normal(4, 2, 3, 3), padding=3), ValueError,
     'padding .* is too large'),
    (lambda: conv_transpose2d_forward(normal(1, 4, 3, 3), normal(4, 2, 3, 3), padding=-1), ValueError,
     'padding must be >= 0'),
    (lambda: conv_transpose2d_forward(normal(1, 4, 3, 3), normal(4, 2, 3, 3), stride=0), ValueError,
     'stride must be >= 1'),
    (lambda: conv_transpose2d_forward(normal(1, 4, 3, 3), normal(4, 2, 3, 3), padding='same'), TypeError,
     'padding must be an int or a pair'),
    (lambda: conv_transpose2d_forward(normal(4, 3, 3), normal(4, 2, 3, 3)), ValueError,
     r'x must be \(N, C_in, H, W\)'),
    (lambda: conv_transpose2d_forward(np.ones((1, 4, 3, 3), dtype=int), normal(4, 2, 3, 3)), TypeError,
     'x must be float32 or float64'),
    (lambda: conv_transpose2d_forward(normal(1, 4, 3, 3), normal(4, 2, 3, 3, dtype=np.float32)), TypeError,
     'same float dtype'),
    (lambda: conv_transpose2d_forward(normal(1, 1, 2, 2), normal(1, 1, 3, 3), stride=10 ** 6), ValueError,
     'more than the'),
    (lambda: ConvTranspose2d(4, 6, 3, stride=1, output_padding=1), ValueError,
     'output_padding must be smaller'),
    (lambda: ConvTranspose2d(4, 6, 3, groups=4), ValueError, 'groups=4 must divide'),
    (lambda: ConvTranspose2d(4, 6, 3, padding_mode='reflect'), ValueError, "padding_mode must be 'zeros'"),
    (lambda: ConvTranspose2d(4, 6, 3)(np.zeros((1, 3, 4, 4), dtype=np.float32)), ValueError,
     r'x must have shape \(N, 4, H, W\)'),
    (lambda: ConvTranspose2d(4, 6, 3)(np.zeros((1, 4, 4, 4))), TypeError, 'ConvTranspose2d holds float32'),
])
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_backward_checks_its_cache_and_dout():
    y, cache = conv_transpose2d_forward(normal(1, 2, 3, 3), normal(2, 2, 2, 2))
    with pytest.raises(ValueError, match=r'dout must have shape \(1, 2, 4, 4\)'):
        conv_transpose2d_backward(normal(1, 2, 3, 3), cache)
    with pytest.raises(TypeError, match='conv_transpose2d_backward needs the cache'):
        conv_transpose2d_backward(np.ones_like(y), dict(cache))
