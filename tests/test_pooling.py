"""Pooling: references on random geometries, gradcheck, identities, PyTorch (ties, NaN, ceil mode,
divisors, indices), layers, errors."""
import numpy as np
import pytest

import numpyconv
from numpyconv import pooling as P
from numpyconv.gradcheck import gradcheck, gradcheck_layer
from numpyconv.module import count
from numpyconv.reference import blocks as ref_blocks, pooling as ref

RNG = np.random.default_rng(31)
F64 = dict(dtype=np.float64, rng=0)


def normal(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def random_window_geometry(rng, dilation=True):
    """Random kwargs of avg_pool2d / max_pool2d (PyTorch's padding rule respected) and a fitting x shape."""
    kernel = tuple(int(k) for k in rng.integers(1, 5, 2))
    stride = None if rng.random() < 0.2 else tuple(int(s) for s in rng.integers(1, 4, 2))
    kwargs = dict(kernel_size=kernel, stride=stride,
                  padding=tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel),
                  ceil_mode=bool(rng.integers(2)))
    span = list(kernel)
    if dilation:
        kwargs['dilation'] = tuple(int(d) for d in rng.integers(1, 3, 2))
        span = [d * (k - 1) + 1 for d, k in zip(kwargs['dilation'], kernel)]
    shape = (int(rng.integers(0, 3)), int(rng.integers(1, 3))) + tuple(
        int(rng.integers(max(1, s - 2 * p), s + 6)) for s, p in zip(span, kwargs['padding']))
    return kwargs, shape


def avg_geometry(rng):
    kwargs, shape = random_window_geometry(rng, dilation=False)
    kwargs['count_include_pad'] = bool(rng.integers(2))
    if rng.random() < 0.3:
        kwargs['divisor_override'] = int(rng.choice([-3, 1, 2, 5]))
    return kwargs, shape


def valid(fn, shape, kwargs):
    """Whether the geometry is valid (the output has at least one row and column)."""
    try:
        fn(np.zeros((1,) + shape[1:]), **kwargs)
    except ValueError:
        return False
    return True


def ties(*shape):
    """Small integers: many ties inside every window."""
    return RNG.integers(-2, 3, shape).astype(np.float64)


# -- references ----------------------------------------------------------------------------------
@pytest.mark.parametrize('seed', range(24))
def test_avg_pool2d_matches_reference(seed):
    rng = np.random.default_rng(seed)
    kwargs, shape = avg_geometry(rng)
    if not valid(P.avg_pool2d_forward, shape, kwargs):
        return
    x = normal(*shape)
    y, cache = P.avg_pool2d_forward(x, **kwargs)
    dout = normal(*y.shape)
    np.testing.assert_allclose(y, ref.avg_pool2d(x, **kwargs), rtol=1e-12, atol=1e-14)
    expected = ref.avg_pool2d_backward(dout, x, **kwargs)[0]
    np.testing.assert_allclose(P.avg_pool2d_backward(dout, cache)[0], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('seed', range(24))
def test_max_pool2d_matches_reference_with_ties(seed):
    rng = np.random.default_rng(100 + seed)
    kwargs, shape = random_window_geometry(rng)
    if not valid(P.max_pool2d_forward, shape, kwargs):
        return
    x = ties(*shape) if seed % 2 else normal(*shape)
    y, cache = P.max_pool2d_forward(x, **kwargs)
    dout = normal(*y.shape)
    np.testing.assert_array_equal(y, ref.max_pool2d(x, **kwargs))
    expected = ref.max_pool2d_backward(dout, x, **kwargs)[0]
    np.testing.assert_allclose(P.max_pool2d_backward(dout, cache)[0], expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize('op', ['adaptive_avg_pool2d', 'adaptive_max_pool2d'])
@pytest.mark.parametrize('shape, output_size', [((2, 2, 7, 5), (3, 4)), ((1, 3, 5, 9), (5, None)),
                                                ((2, 1, 4, 4), 7), ((0, 2, 3, 3), 2), ((1, 2, 6, 6), 1),
                                                ((1, 1, 5, 7), (None, 3)), ((1, 2, 3, 3), (0, 2))])
def test_adaptive_pools_match_reference(op, shape, output_size):
    forward, backward = getattr(P, op + '_forward'), getattr(P, op + '_backward')
    x = ties(*shape) if 'max' in op else normal(*shape)
    y, cache = forward(x, output_size)
    dout = normal(*y.shape)
    np.testing.assert_allclose(y, getattr(ref, op)(x, output_size), rtol=1e-12, atol=1e-14)
    expected = getattr(ref, op + '_backward')(dout, x, output_size)[0]
    np.testing.assert_allclose(backward(dout, cache)[0], expected, rtol=1e-12, atol=1e-14)


# -- gradcheck -----------------------------------------------------------------------------------
GRAD_CASES = {
    'avg': (P.avg_pool2d_forward, P.avg_pool2d_backward, (2, 2, 7, 6),
            dict(kernel_size=3, stride=2, padding=1)),
    'avg_ceil_no_pad_count': (P.avg_pool2d_forward, P.avg_pool2d_backward, (1, 2, 6, 7),
                              dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True,
                                   count_include_pad=False)),
    'avg_divisor': (P.avg_pool2d_forward, P.avg_pool2d_backward, (1, 2, 5, 5),
                    dict(kernel_size=2, stride=1, divisor_override=3)),
    'max': (P.max_pool2d_forward, P.max_pool2d_backward, (2, 2, 7, 6),
            dict(kernel_size=3, stride=2, padding=1)),
    'max_dilated_ceil': (P.max_pool2d_forward, P.max_pool2d_backward, (1, 2, 8, 7),
                         dict(kernel_size=(2, 3), stride=(3, 2), padding=(1, 1), dilation=(2, 1),
                              ceil_mode=True)),
    'adaptive_avg': (P.adaptive_avg_pool2d_forward, P.adaptive_avg_pool2d_backward, (2, 2, 7, 5),
                     dict(output_size=(3, 4))),
    'adaptive_max': (P.adaptive_max_pool2d_forward, P.adaptive_max_pool2d_backward, (2, 2, 7, 5),
                     dict(output_size=(4, 3))),
    'adaptive_max_upsampling': (P.adaptive_max_pool2d_forward, P.adaptive_max_pool2d_backward, (1, 2, 3, 2),
                                dict(output_size=(5, 4))),
    'global': (P.global_avg_pool2d_forward, P.global_avg_pool2d_backward, (2, 3, 4, 5), {}),
}


@pytest.mark.parametrize('name', GRAD_CASES)
def test_gradcheck(name):
    forward, backward, shape, kwargs = GRAD_CASES[name]
    gradcheck(lambda x: forward(x, **kwargs), backward, (normal(*shape),), mode='full')


@pytest.mark.parametrize('name', GRAD_CASES)
def test_float32_preserved_inputs_untouched_backward_twice(name):
    forward, backward, shape, kwargs = GRAD_CASES[name]
    x = normal(*shape, dtype=np.float32)
    copy = x.copy()
    y, cache = forward(x, **kwargs)
    dout = np.ones_like(y)
    first = backward(dout, cache)[0]
    np.testing.assert_array_equal(backward(dout, cache)[0], first)
    assert y.dtype == first.dtype == np.float32
    np.testing.assert_array_equal(x, copy)
    np.testing.assert_allclose(y, forward(x.astype(np.float64), **kwargs)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', GRAD_CASES)
def test_batch_zero_and_one(name):
    forward, backward, shape, kwargs = GRAD_CASES[name]
    x = normal(3, *shape[1:])
    y, _ = forward(x, **kwargs)
    y1, cache = forward(x[1:2], **kwargs)
    np.testing.assert_array_equal(y1, y[1:2])
    with np.errstate(all='raise'):
        y0, cache = forward(x[:0], **kwargs)
        dx0 = backward(np.zeros_like(y0), cache)[0]
    assert y0.shape == (0,) + y.shape[1:] and dx0.shape == (0,) + x.shape[1:]


# -- identities -----------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['avg', 'avg_ceil_no_pad_count', 'avg_divisor', 'adaptive_avg', 'global'])
def test_linear_pools_backward_is_the_adjoint(name):
    forward, backward, shape, kwargs = GRAD_CASES[name]
    x = normal(*shape)
    y, cache = forward(x, **kwargs)
    dy = normal(*y.shape)
    np.testing.assert_allclose(np.vdot(y, dy), np.vdot(x, backward(dy, cache)[0]), rtol=1e-12)


def test_avg_pool_of_a_constant():
    x = np.full((2, 3, 7, 6), 2.5)
    kwargs = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    np.testing.assert_allclose(P.avg_pool2d_forward(x, count_include_pad=False, **kwargs)[0], 2.5, rtol=1e-15)
    y = P.avg_pool2d_forward(x, **kwargs)[0]                    # padded zeros count: border windows smaller
    np.testing.assert_allclose(y[:, :, 1:-1, 1:-1], 2.5, rtol=1e-15)
    assert (y[:, :, 0] < 2.5).all()
    np.testing.assert_allclose(P.avg_pool2d_forward(x, 2, divisor_override=1)[0], 4 * 2.5)
    np.testing.assert_allclose(P.adaptive_avg_pool2d_forward(x, (4, 5))[0], 2.5, rtol=1e-15)


@pytest.mark.parametrize('op, kwargs', [('max_pool2d', dict(kernel_size=3, stride=2, padding=1, dilation=2)),
                                        ('adaptive_max_pool2d', dict(output_size=(3, 2)))])
def test_max_pools_invariant_under_adding_a_constant(op, kwargs):
    forward, backward = getattr(P, op + '_forward'), getattr(P, op + '_backward')
    x = ties(2, 2, 7, 7)
    y, cache = forward(x, **kwargs)
    y_shifted, cache_shifted = forward(x + 10.0, **kwargs)
    np.testing.assert_array_equal(y_shifted, y + 10.0)
    dout = normal(*y.shape)
    np.testing.assert_array_equal(backward(dout, cache_shifted)[0], backward(dout, cache)[0])
    y_scaled, cache_scaled = forward(3.0 * x, **kwargs)            # and commutes with positive scaling
    np.testing.assert_array_equal(y_scaled, 3.0 * y)
    np.testing.assert_array_equal(backward(dout, cache_scaled)[0], backward(dout, cache)[0])


def test_max_pool_gradient_sums_to_dout_and_goes_to_the_first_maximum():
    x = np.zeros((1, 1, 2, 4))                                     # all ties
    y, cache = P.max_pool2d_forward(x, (2, 2), stride=(1, 1))
    dx = P.max_pool2d_backward(np.ones_like(y), cache)[0]
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 1, 0], [0, 0, 0, 0]])    # each window's first element
    x = normal(2, 3, 6, 6)
    y, cache = P.max_pool2d_forward(x, 3, stride=1, padding=1)
    dout = normal(*y.shape)
    np.testing.assert_allclose(P.max_pool2d_backward(dout, cache)[0].sum(), dout.sum(), rtol=1e-12)


def test_max_pool_nan_is_the_maximum_and_gets_the_gradient():
    x = np.array([[[[1.0, np.nan, 3.0, np.nan, 0.0, 2.0]]]])
    y, cache = P.max_pool2d_forward(x, (1, 6))
    assert np.isnan(y).all()
    np.testing.assert_array_equal(P.max_pool2d_backward(np.ones_like(y), cache)[0], [[[[0, 0, 0, 1, 0, 0]]]])
    y, cache = P.adaptive_max_pool2d_forward(x, 1)
    assert np.isnan(y).all()
    np.testing.assert_array_equal(P.adaptive_max_pool2d_backward(np.ones_like(y), cache)[0],
                                  [[[[0, 0, 0, 1, 0, 0]]]])


def test_kernel_one_max_pool_is_strided_slicing_and_adaptive_identity():
    x = normal(2, 3, 7, 5)
    np.testing.assert_array_equal(P.max_pool2d_forward(x, 1, stride=(2, 3))[0], x[:, :, ::2, ::3])
    np.testing.assert_array_equal(P.adaptive_max_pool2d_forward(x, None)[0], x)
    np.testing.assert_allclose(P.adaptive_avg_pool2d_forward(x, (None, None))[0], x, rtol=1e-15)
    np.testing.assert_allclose(P.adaptive_avg_pool2d_forward(x, 1)[0][:, :, 0, 0],
                               P.global_avg_pool2d_forward(x)[0], rtol=1e-14)


def test_window_in_the_padding_alone_gives_minus_inf_and_no_gradient():
    x = normal(1, 1, 1, 3)                       # kernel rows -1 and 1 around row 0: both in the padding
    y, cache = P.max_pool2d_forward(x, (2, 1), stride=1, padding=(1, 0), dilation=(2, 1))
    assert y.shape == (1, 1, 1, 3) and np.isneginf(y).all()
    np.testing.assert_array_equal(P.max_pool2d_backward(np.ones_like(y), cache)[0], 0.0)


def test_global_pool_equals_full_window_avg_pool():
    x = normal(2, 3, 4, 6)
    np.testing.assert_allclose(P.global_avg_pool2d_forward(x)[0],
                               P.avg_pool2d_forward(x, (4, 6))[0][:, :, 0, 0], rtol=1e-14)


def test_avg_pool_trailing_rows_get_zero_gradient_and_equals_block_mean():
    x = normal(1, 2, 7, 5)                                    # kernel 2: row 6 and column 4 unread
    y, cache = P.avg_pool2d_forward(x, 2)
    np.testing.assert_allclose(y, x[:, :, :6, :4].reshape(1, 2, 3, 2, 2, 2).mean(axis=(3, 5)))
    dx = P.avg_pool2d_backward(np.ones_like(y), cache)[0]
    np.testing.assert_array_equal(dx[:, :, 6], 0.0)
    np.testing.assert_array_equal(dx[:, :, :, 4], 0.0)
    np.testing.assert_allclose(dx[:, :, :6, :4], 0.25)


def test_global_pool_matches_its_reference():
    x = normal(2, 3, 4, 5)
    np.testing.assert_allclose(P.global_avg_pool2d_forward(x)[0], ref_blocks.global_avg_pool2d(x), rtol=1e-13)


# -- PyTorch --------------------------------------------------------------------------------------
def _torch_pool(torch, name, x, kwargs, dout):
    xt = torch.tensor(x, requires_grad=True)
    result = getattr(torch.nn.functional, name)(xt, **kwargs)
    yt = result[0] if isinstance(result, tuple) else result
    if yt.numel():
        yt.backward(torch.tensor(dout))
    grad = xt.grad.numpy() if xt.grad is not None else np.zeros_like(x)
    return yt.detach().numpy(), grad, (result[1].numpy() if isinstance(result, tuple) else None)


@pytest.mark.parametrize('seed', range(12))
def test_avg_pool2d_matches_torch(seed):
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(1000 + seed)
    for _ in range(25):
        kwargs, shape = avg_geometry(rng)
        x = normal(*shape)
        try:
            y, cache = P.avg_pool2d_forward(x, **kwargs)
        except ValueError:
            with pytest.raises(RuntimeError):                             # torch refuses the geometry too
                torch.nn.functional.avg_pool2d(torch.tensor(np.zeros((1,) + shape[1:])), **kwargs)
            continue
        dout = normal(*y.shape)
        expected, grad, _ = _torch_pool(torch, 'avg_pool2d', x, kwargs, dout)
        np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(P.avg_pool2d_backward(dout, cache)[0], grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('seed', range(12))
def test_max_pool2d_matches_torch_with_ties_and_nans(seed):
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(2000 + seed)
    for trial in range(25):
        kwargs, shape = random_window_geometry(rng)
        x = ties(*shape) if trial % 2 else normal(*shape)
        if trial % 5 == 0:
            x[rng.random(shape) < 0.15] = np.nan
        try:
            y, cache = P.max_pool2d_forward(x, **kwargs)
        except ValueError:
            with pytest.raises(RuntimeError):
                torch.nn.functional.max_pool2d(torch.tensor(np.zeros((1,) + shape[1:])), **kwargs)
            continue
        if (cache['arg'] < 0).any():      # a window inside the padding: PyTorch's CPU kernel writes its
            continue                      # gradient outside the input (see the test above)
        dout = normal(*y.shape)
        expected, grad, indices = _torch_pool(torch, 'max_pool2d', x, dict(kwargs, return_indices=True), dout)
        np.testing.assert_array_equal(y, expected)
        np.testing.assert_allclose(P.max_pool2d_backward(dout, cache)[0], grad, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(P._max_pool2d_indices(cache), indices)


@pytest.mark.parametrize('op', ['adaptive_avg_pool2d', 'adaptive_max_pool2d'])
def test_adaptive_pools_match_torch_with_ties_and_nans(op):
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(3000)
    forward, backward = getattr(P, op + '_forward'), getattr(P, op + '_backward')
    for trial in range(60):
        shape = (int(rng.integers(1, 3)), 2) + tuple(int(s) for s in rng.integers(1, 10, 2))
        output_size = (int(rng.integers(1, 12)), None if trial % 7 == 0 else int(rng.integers(1, 12)))
        x = ties(*shape) if trial % 2 else normal(*shape)
        if trial % 3 == 0:
            x[rng.random(shape) < 0.15] = np.nan
        y, cache = forward(x, output_size)
        dout = normal(*y.shape)
        kwargs = dict(output_size=output_size)
        if 'max' in op:
            kwargs['return_indices'] = True
        expected, grad, indices = _torch_pool(torch, op, x, kwargs, dout)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(backward(dout, cache)[0], grad, rtol=1e-12, atol=1e-14)
        if indices is not None:
            np.testing.assert_array_equal(P._adaptive_max_pool2d_indices(cache), indices)


def test_torch_adaptive_max_pool_gradient_is_the_first_maximum_in_window_order():
    """PyTorch's adaptive_max_pool2d routes the gradient by its indices: the first maximum of the
    window in row-major order (the last NaN when there are NaNs), the rule of eq. 45."""
    torch = pytest.importorskip('torch')
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 2] = x[0, 0, 2, 1] = x[0, 0, 3, 3] = 5.0                # ties across rows and columns
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.adaptive_max_pool2d(xt, 1).sum().backward()
    np.testing.assert_array_equal(np.argwhere(xt.grad.numpy()[0, 0]), [[1, 2]])
    y, cache = P.adaptive_max_pool2d_forward(x, 1)
    np.testing.assert_array_equal(P.adaptive_max_pool2d_backward(np.ones_like(y), cache)[0], xt.grad.numpy())


# -- layers ----------------------------------------------------------------------------------------
LAYERS = {
    'max': (lambda: P.MaxPool2d(3, 2, 1, **F64), ('MaxPool2d', (3, 2, 1)), (2, 2, 7, 6)),
    'max_dilated_ceil': (lambda: P.MaxPool2d((2, 3), (2, 1), (1, 1), (2, 1), ceil_mode=True, **F64),
                         ('MaxPool2d', ((2, 3), (2, 1), (1, 1), (2, 1), False, True)), (1, 2, 6, 7)),
    'avg': (lambda: P.AvgPool2d(3, 2, **F64), ('AvgPool2d', (3, 2)), (2, 2, 7, 6)),
    'avg_full': (lambda: P.AvgPool2d((3, 2), 2, (1, 1), True, False, **F64),
                 ('AvgPool2d', ((3, 2), 2, (1, 1), True, False)), (1, 2, 6, 7)),
    'avg_divisor': (lambda: P.AvgPool2d(2, 1, divisor_override=3, **F64),
                    ('AvgPool2d', (2, 1, 0, False, True, 3)), (1, 2, 4, 5)),
    'adaptive_avg': (lambda: P.AdaptiveAvgPool2d((3, None), **F64), ('AdaptiveAvgPool2d', ((3, None),)),
                     (2, 2, 7, 5)),
    'adaptive_max': (lambda: P.AdaptiveMaxPool2d(4, **F64), ('AdaptiveMaxPool2d', (4,)), (2, 2, 7, 5)),
}


@pytest.mark.parametrize('name', LAYERS)
def test_layer_matches_torch(name):
    torch = pytest.importorskip('torch')
    make, (cls, args), shape = LAYERS[name]
    tmod, layer = getattr(torch.nn, cls)(*args), make()
    assert layer.state_dict() == {} and list(tmod.state_dict()) == []
    x = normal(*shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = tmod(xt)
    dout = normal(*yt.shape)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert count(layer, shape) == (0, 0) and layer.macs(shape)[1] == tuple(yt.shape)


@pytest.mark.parametrize('name', LAYERS)
def test_layer_gradcheck_and_float32(name):
    make, _, shape = LAYERS[name]
    gradcheck_layer(make(), normal(*shape), mode='full')
    layer = make()
    x = normal(*shape, dtype=np.float32)
    y = layer(x)
    assert y.dtype == layer.backward(np.ones_like(y)).dtype == np.float32


def test_global_avg_pool_layer_matches_torch():
    torch = pytest.importorskip('torch')
    tmod = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    layer = P.GlobalAvgPool2d(**F64)
    x, dout = normal(2, 3, 3, 4), normal(2, 3)
    xt = torch.tensor(x, requires_grad=True)
    yt = tmod(xt)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert layer.state_dict() == {} and count(layer, x.shape) == (0, 0)


def test_return_indices_as_torch():
    torch = pytest.importorskip('torch')
    x = ties(2, 3, 7, 6)
    y, indices = P.MaxPool2d(3, 2, 1, return_indices=True, **F64)(x)
    yt, it = torch.nn.MaxPool2d(3, 2, 1, return_indices=True)(torch.tensor(x))
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(indices, it.numpy())
    assert indices.dtype == np.int64
    y, indices = P.AdaptiveMaxPool2d((3, 4), True, **F64)(x)
    yt, it = torch.nn.AdaptiveMaxPool2d((3, 4), True)(torch.tensor(x))
    np.testing.assert_array_equal(indices, it.numpy())


@pytest.mark.parametrize('layer, shape, out_shape', [
    (P.AvgPool2d(3, 2), (2, 4, 9, 8), (2, 4, 4, 3)),
    (P.AvgPool2d(3, 2, 1, ceil_mode=True), (2, 4, 8, 8), (2, 4, 5, 5)),
    (P.MaxPool2d(3, 2, 1), (2, 4, 9, 8), (2, 4, 5, 4)),
    (P.AdaptiveAvgPool2d((2, None)), (2, 4, 9, 8), (2, 4, 2, 8)),
    (P.AdaptiveMaxPool2d(3), (2, 4, 9, 8), (2, 4, 3, 3)),
    (P.GlobalAvgPool2d(), (2, 4, 9, 8), (2, 4)),
])
def test_layer_costs_are_zero_and_shapes_right(layer, shape, out_shape):
    macs, predicted = layer.macs(shape)
    assert macs == 0 and predicted == out_shape
    assert layer(np.zeros(shape, dtype=np.float32)).shape == out_shape
    y = layer(np.zeros((0,) + shape[1:], dtype=np.float32))
    assert y.shape[0] == 0 and layer.backward(np.zeros_like(y)).shape == (0,) + shape[1:]


def test_layers_are_exported():
    for name in ('MaxPool2d', 'AvgPool2d', 'AdaptiveAvgPool2d', 'AdaptiveMaxPool2d', 'GlobalAvgPool2d',
                 'max_pool2d_forward', 'adaptive_max_pool2d_backward', 'avg_pool2d_forward'):
        assert hasattr(numpyconv, name)
    assert not isinstance(P.AdaptiveMaxPool2d(1), P.AdaptiveAvgPool2d)


# -- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('call, error, match', [
    (lambda: P.max_pool2d_forward(normal(1, 1, 5, 5), 3, padding=2), ValueError,
     r'padding must be at most half the kernel size .* got padding=2'),
    (lambda: P.avg_pool2d_forward(normal(1, 1, 5, 5), (4, 2), padding=(2, 2)), ValueError,
     r'padding must be at most half'),
    (lambda: P.max_pool2d_forward(normal(1, 2, 3, 3), 4), ValueError,
     r'kernel_size \(4, 4\) .* output would be'),
    (lambda: P.max_pool2d_forward(normal(1, 2, 3, 3), 2, dilation=3), ValueError, 'dilation'),
    (lambda: P.max_pool2d_forward(normal(1, 2, 4, 4), 0), ValueError, 'kernel_size must be >= 1'),
    (lambda: P.max_pool2d_forward(normal(1, 2, 4, 4), 2, stride=0), ValueError, 'stride must be >= 1'),
    (lambda: P.max_pool2d_forward(normal(1, 2, 4, 4), 2, padding=-1), ValueError, 'padding must be >= 0'),
    (lambda: P.max_pool2d_forward(normal(1, 2, 4, 4), 2.0), TypeError, 'kernel_size must be an int'),
    (lambda: P.max_pool2d_forward(normal(1, 2, 4, 4), 2, ceil_mode=1), TypeError, 'ceil_mode must be a bool'),
    (lambda: P.avg_pool2d_forward(normal(2, 3, 3), 2), ValueError, r'x must be \(N, C, H, W\)'),
    (lambda: P.avg_pool2d_forward(normal(1, 2, 4, 4), 2, divisor_override=0), ValueError,
     'divisor_override must not be zero'),
    (lambda: P.avg_pool2d_forward(normal(1, 2, 4, 4), 2, divisor_override=2.5), TypeError,
     'divisor_override must be an int'),
    (lambda: P.avg_pool2d_forward(normal(1, 2, 4, 4), 2, count_include_pad='yes'), TypeError,
     'count_include_pad must be a bool'),
    (lambda: P.avg_pool2d_forward(np.ones((1, 2, 4, 4), dtype=int), 2), TypeError, 'x must be float32'),
    (lambda: P.adaptive_avg_pool2d_forward(normal(1, 2, 4, 4), -1), ValueError, 'output_size must be >= 0'),
    (lambda: P.adaptive_max_pool2d_forward(normal(1, 2, 4, 4), (2, 2, 2)), TypeError, 'output_size must be'),
    (lambda: P.adaptive_max_pool2d_forward(normal(1, 2, 4, 4), 2.5), TypeError, 'output_size must be'),
    (lambda: P.adaptive_max_pool2d_forward(np.zeros((1, 2, 0, 4)), 2), ValueError, 'H, W >= 1'),
    (lambda: P.adaptive_avg_pool2d_forward(normal(1, 1, 2, 2), 10 ** 9), ValueError, 'more than the'),
    (lambda: P.global_avg_pool2d_forward(np.zeros((1, 2, 0, 3))), ValueError, 'H, W >= 1'),
    (lambda: P.MaxPool2d(3, padding=2), ValueError, 'padding must be at most half'),
    (lambda: P.AvgPool2d(0), ValueError, 'kernel_size must be >= 1'),
    (lambda: P.AvgPool2d(3)(np.zeros((1, 1, 2, 2), dtype=np.float32)), ValueError, 'output would be'),
    (lambda: P.AdaptiveAvgPool2d('big'), TypeError, 'output_size must be'),
    (lambda: P.max_pool2d_backward(np.ones((1, 1, 2, 2)), P.avg_pool2d_forward(normal(1, 1, 4, 4), 2)[1]),
     TypeError, 'max_pool2d_backward was given the cache of avg_pool2d_forward'),
])
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_torch_refuses_padding_above_half_the_kernel_too():
    torch = pytest.importorskip('torch')
    with pytest.raises(RuntimeError, match='pad should be'):
        torch.nn.functional.max_pool2d(torch.zeros(1, 1, 8, 8), 4, padding=3, dilation=2)
    with pytest.raises(ValueError, match='padding must be at most half'):
        P.max_pool2d_forward(np.zeros((1, 1, 8, 8)), 4, padding=3, dilation=2)


def test_backward_checks_dout():
    _, cache = P.max_pool2d_forward(normal(1, 2, 4, 4), 2)
    with pytest.raises(ValueError, match=r'dout must have shape \(1, 2, 2, 2\), got \(1, 2, 2\)'):
        P.max_pool2d_backward(normal(1, 2, 2), cache)
    assert P.max_pool2d_backward(np.ones((1, 2, 2, 2), dtype=np.float32), cache)[0].dtype == np.float64
