"""Upsampling: references, gradcheck, adjointness, PyTorch's scale rules (non-integer factors,
recompute_scale_factor, size, align_corners), the Upsample layer, errors."""
import numpy as np
import pytest

import numpyconv
from numpyconv import upsample as U
from numpyconv.gradcheck import gradcheck, gradcheck_layer
from numpyconv.module import count
from numpyconv.pooling import avg_pool2d_forward
from numpyconv.reference import upsample as ref

RNG = np.random.default_rng(47)
F64 = dict(dtype=np.float64, rng=0)
SCALES = [0.3, 0.5, 2 / 3, 0.75, 1.0, 1.2, 1.5, 1.7, 2.0, 2.1, 2.5, 3.0, 1 / 3, 4 / 3]


def normal(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def random_resize(rng, mode):
    """Random (shape, kwargs of the op) for ``mode``."""
    shape = (int(rng.integers(0, 3)), int(rng.integers(1, 3))) + tuple(int(s) for s in rng.integers(1, 9, 2))
    if rng.random() < 0.3:
        kwargs = dict(size=tuple(int(s) for s in rng.integers(1, 14, 2)))
    else:
        kwargs = dict(scale_factor=tuple(float(s) for s in rng.choice(SCALES, 2)) if rng.random() < 0.7
                      else float(rng.uniform(0.4, 3.5)))
        if mode == 'nearest' and rng.random() < 0.4:
            kwargs['recompute_scale_factor'] = bool(rng.integers(2))
    if mode == 'bilinear':
        kwargs['align_corners'] = bool(rng.integers(2))
    return shape, kwargs


def op(mode):
    return {'nearest': (U.upsample_nearest2d_forward, U.upsample_nearest2d_backward, ref.upsample_nearest2d,
                        ref.upsample_nearest2d_backward),
            'bilinear': (U.upsample_bilinear2d_forward, U.upsample_bilinear2d_backward,
                         ref.upsample_bilinear2d, ref.upsample_bilinear2d_backward)}[mode]


def resizable(shape, kwargs):
    try:
        U.output_size_and_scales(shape[2:], kwargs.get('size'), kwargs.get('scale_factor'),
                                 kwargs.get('recompute_scale_factor'))
    except ValueError:
        return False
    return True


# -- references -------------------------------------------------------------------------------------
@pytest.mark.parametrize('mode', ['nearest', 'bilinear'])
@pytest.mark.parametrize('seed', range(16))
def test_matches_reference(mode, seed):
    rng = np.random.default_rng(seed)
    shape, kwargs = random_resize(rng, mode)
    if not resizable(shape, kwargs):
        return
    forward, backward, reference, reference_backward = op(mode)
    x = normal(*shape)
    y, cache = forward(x, **kwargs)
    dout = normal(*y.shape)
    np.testing.assert_allclose(y, reference(x, **kwargs), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backward(dout, cache)[0], reference_backward(dout, x, **kwargs)[0],
                               rtol=1e-12, atol=1e-14)


GRAD_CASES = {
    'nearest_2': (U.upsample_nearest2d_forward, U.upsample_nearest2d_backward, (2, 2, 3, 2), {}),
    'nearest_pair': (U.upsample_nearest2d_forward, U.upsample_nearest2d_backward, (1, 2, 2, 3),
                     dict(scale_factor=(3, 2))),
    'nearest_fraction': (U.upsample_nearest2d_forward, U.upsample_nearest2d_backward, (1, 2, 5, 4),
                         dict(scale_factor=(1.7, 0.6))),
    'nearest_size': (U.upsample_nearest2d_forward, U.upsample_nearest2d_backward, (2, 1, 4, 3),
                     dict(size=(7, 2))),
    'bilinear': (U.upsample_bilinear2d_forward, U.upsample_bilinear2d_backward, (2, 2, 4, 3),
                 dict(scale_factor=(1.5, 2.3))),
    'bilinear_down': (U.upsample_bilinear2d_forward, U.upsample_bilinear2d_backward, (1, 2, 7, 6),
                      dict(scale_factor=0.6)),
    'bilinear_corners': (U.upsample_bilinear2d_forward, U.upsample_bilinear2d_backward, (1, 2, 3, 4),
                         dict(size=(7, 2), align_corners=True)),
}


@pytest.mark.parametrize('name', GRAD_CASES)
def test_gradcheck_adjoint_float32_and_no_mutation(name):
    forward, backward, shape, kwargs = GRAD_CASES[name]
    x = normal(*shape)
    gradcheck(lambda x: forward(x, **kwargs), backward, (x,), mode='full')
    y, cache = forward(x, **kwargs)
    dy = normal(*y.shape)
    dy_copy, x_copy = dy.copy(), x.copy()
    dx = backward(dy, cache)[0]
    np.testing.assert_allclose(np.vdot(y, dy), np.vdot(x, dx), rtol=1e-12)      # <Ux, v> = <x, U^T v>
    np.testing.assert_array_equal(dy, dy_copy)
    np.testing.assert_array_equal(x, x_copy)
    y32, cache32 = forward(x.astype(np.float32), **kwargs)
    assert y32.dtype == backward(dy.astype(np.float32), cache32)[0].dtype == np.float32
    np.testing.assert_allclose(y32, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', GRAD_CASES)
def test_batch_zero_and_one(name):
    forward, backward, shape, kwargs = GRAD_CASES[name]
    x = normal(3, *shape[1:])
    y = forward(x, **kwargs)[0]
    np.testing.assert_array_equal(forward(x[1:2], **kwargs)[0], y[1:2])
    y0, cache = forward(x[:0], **kwargs)
    assert y0.shape == (0,) + y.shape[1:] and backward(y0, cache)[0].shape == (0,) + x.shape[1:]


# -- identities -------------------------------------------------------------------------------------
def test_integer_nearest_is_repeat_and_avg_pool_undoes_it():
    x = normal(2, 3, 4, 6)
    up, _ = U.upsample_nearest2d_forward(x, 3)
    np.testing.assert_array_equal(up, x.repeat(3, axis=2).repeat(3, axis=3))
    np.testing.assert_allclose(avg_pool2d_forward(up, 3)[0], x, rtol=1e-14)
    twice = U.upsample_nearest2d_forward(x, 2)[0]
    np.testing.assert_array_equal(U.upsample_nearest2d_forward(x, 2.0)[0], twice)
    np.testing.assert_array_equal(U.upsample_nearest2d_forward(x, size=(8, 12))[0], twice)


def test_bilinear_keeps_corners_constants_and_linear_ramps():
    x = normal(2, 2, 4, 5)
    y = U.upsample_bilinear2d_forward(x, size=(7, 9), align_corners=True)[0]
    corners = ([0, 0, -1, -1], [0, -1, 0, -1])
    np.testing.assert_allclose(y[:, :, corners[0], corners[1]], x[:, :, corners[0], corners[1]], rtol=1e-14)
    constant = U.upsample_bilinear2d_forward(np.full((1, 1, 3, 4), 1.5), scale_factor=2.7)[0]
    np.testing.assert_allclose(constant, 1.5, rtol=1e-14)
    ramp = np.arange(5.0)[None, None, None, :] * np.ones((1, 1, 3, 1))        # linear in the column
    y = U.upsample_bilinear2d_forward(ramp, size=(3, 9), align_corners=True)[0]
    np.testing.assert_allclose(y[0, 0, 0], np.linspace(0, 4, 9), rtol=1e-14)
    same = U.upsample_bilinear2d_forward(x, scale_factor=1.1)[0]               # floor(H * 1.1) = H: a copy
    np.testing.assert_array_equal(same, x)


# -- PyTorch ------------------------------------------------------------------------------------------
def _torch_resize(torch, x, mode, kwargs, dout):
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.interpolate(xt, mode=mode, **kwargs)
    if yt.numel():
        yt.backward(torch.tensor(dout))
    return yt.detach().numpy(), (xt.grad.numpy() if xt.grad is not None else np.zeros_like(x))


def torch_backward_is_its_adjoint(x_shape, out_hw, kwargs):
    """False where PyTorch's nearest backward (always ``nearest_idx``) differs from the adjoint of its
    forward: a larger output (Ho + Wo > 128, generic kernel) and an axis resized by a factor that is not
    exactly 1 or 2 to exactly H or 2 H."""
    if out_hw[0] + out_hw[1] <= 128 or kwargs.get('size') is not None or kwargs.get('recompute_scale_factor'):
        return True
    factors = kwargs['scale_factor']
    factors = factors if isinstance(factors, tuple) else (factors, factors)
    for a in (0, 1):
        special = out_hw[a] in (x_shape[2 + a], 2 * x_shape[2 + a])
        if special and factors[a] not in (1.0, 2.0):
            return False
    return True


@pytest.mark.parametrize('mode', ['nearest', 'bilinear'])
@pytest.mark.parametrize('seed', range(8))
def test_matches_torch(mode, seed):
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(500 + seed)
    forward, backward, _, _ = op(mode)
    for trial in range(40):
        shape, kwargs = random_resize(rng, mode)
        if trial % 4 == 0:                                     # large outputs: PyTorch's generic kernel
            shape = shape[:2] + (int(rng.integers(60, 90)), shape[3])
        x = normal(*shape)
        try:
            y, cache = forward(x, **kwargs)
        except ValueError:
            with pytest.raises(RuntimeError, match='sizes should be greater than 0'):
                torch.nn.functional.interpolate(torch.tensor(np.zeros((1,) + shape[1:])), mode=mode, **kwargs)
            continue
        dout = normal(*y.shape)
        expected, grad = _torch_resize(torch, x, mode, kwargs, dout)
        np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
        if mode == 'bilinear' or torch_backward_is_its_adjoint(shape, y.shape[2:], kwargs):
            np.testing.assert_allclose(backward(dout, cache)[0], grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_nearest_source_index_rounds_as_torch(dtype):
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(9)
    for _ in range(200):
        h, c = int(rng.integers(1, 300)), int(rng.integers(1, 6))
        scale = float(rng.choice([1 / 3, 2 / 3, 0.1, 0.7, 1.1, 1 / 7, 3 / 7, 2.9, 1.00001, 0.999999, 2.01,
                                  rng.uniform(0.05, 5)]))
        recompute = bool(rng.integers(2))
        x = np.arange(h * 2 * c, dtype=dtype).reshape(1, c, h, 2)       # each value names its position
        try:
            expected = torch.nn.functional.interpolate(torch.tensor(x), scale_factor=(scale, 1.3),
                                                       recompute_scale_factor=recompute).numpy()
        except RuntimeError:
            continue
        y, _ = U.upsample_nearest2d_forward(x, (scale, 1.3), recompute_scale_factor=recompute)
        np.testing.assert_array_equal(y, expected)


def test_torchs_nearest_backward_is_not_its_forward_adjoint_where_its_kernels_differ():
    """Ho + Wo > 128, factor 2.01 on 60 rows (120 = 2 H): PyTorch's forward reads row floor(o / 2.01), its
    backward adds to row o // 2. This backward is the adjoint of the forward (= PyTorch's output)."""
    torch = pytest.importorskip('torch')
    x, dout = normal(1, 1, 60, 60), normal(1, 1, 120, 120)
    y, cache = U.upsample_nearest2d_forward(x, 2.01)
    expected, grad = _torch_resize(torch, x, 'nearest', dict(scale_factor=2.01), dout)
    np.testing.assert_array_equal(y, expected)
    dx = U.upsample_nearest2d_backward(dout, cache)[0]
    np.testing.assert_allclose(np.vdot(y, dout), np.vdot(x, dx), rtol=1e-12)
    assert np.abs(dx - grad).max() > 1e-3                                # PyTorch's is not the adjoint here


# -- layer ---------------------------------------------------------------------------------------------
LAYERS = [
    dict(scale_factor=2), dict(scale_factor=(2, 3)), dict(scale_factor=1.5), dict(size=(5, 7)), dict(size=4),
    dict(scale_factor=0.7, recompute_scale_factor=True), dict(scale_factor=(1.3, 2.2), mode='bilinear'),
    dict(size=(9, 4), mode='bilinear', align_corners=True),
    dict(scale_factor=1.7, mode='bilinear', recompute_scale_factor=True),
    dict(scale_factor=1.7, mode='bilinear', align_corners=False, recompute_scale_factor=False),
]


@pytest.mark.parametrize('kwargs', LAYERS)
def test_layer_matches_torch(kwargs):
    torch = pytest.importorskip('torch')
    tmod, layer = torch.nn.Upsample(**kwargs), U.Upsample(**kwargs, **F64)
    assert layer.state_dict() == {} and list(tmod.state_dict()) == []
    x = normal(2, 3, 4, 5)
    xt = torch.tensor(x, requires_grad=True)
    yt = tmod(xt)
    dout = normal(*yt.shape)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert count(layer, x.shape) == (0, 0) and layer.macs(x.shape)[1] == tuple(yt.shape)


@pytest.mark.parametrize('kwargs', LAYERS[:4] + LAYERS[6:8])
def test_layer_gradcheck(kwargs):
    gradcheck_layer(U.Upsample(**kwargs, **F64), normal(1, 2, 3, 4), mode='full')


def test_layer_is_exported_and_keeps_float32():
    assert numpyconv.Upsample is U.Upsample
    assert numpyconv.upsample_bilinear2d_forward is U.upsample_bilinear2d_forward
    layer = U.Upsample(scale_factor=2)
    y = layer(normal(1, 2, 3, 3, dtype=np.float32))
    assert y.dtype == layer.backward(np.ones_like(y)).dtype == np.float32
    y = layer(np.zeros((0, 1, 2, 2), dtype=np.float32))
    assert y.shape == (0, 1, 4, 4) and layer.backward(y).shape == (0, 1, 2, 2)


# -- errors ----------------------------------------------------------------------------------------------
NEAREST, BILINEAR, X33 = U.upsample_nearest2d_forward, U.upsample_bilinear2d_forward, normal(1, 2, 3, 3)


@pytest.mark.parametrize('call, error, match', [
    (lambda: NEAREST(X33, 0), ValueError, 'scale_factor must be finite and > 0'),
    (lambda: NEAREST(X33, -2.0), ValueError, 'scale_factor must be'),
    (lambda: NEAREST(X33, float('inf')), ValueError, 'scale_factor must be'),
    (lambda: NEAREST(X33, 'x2'), TypeError, 'scale_factor must be a positive'),
    (lambda: NEAREST(X33, (2, 2, 2)), TypeError, 'scale_factor must be'),
    (lambda: NEAREST(X33, 0.1), ValueError,
     r'output sizes should be greater than 0, got input \(H: 3, W: 3\) and output \(H: 0, W: 0\)'),
    (lambda: NEAREST(X33, 2, size=4), ValueError,
     'only one of size or scale_factor'),
    (lambda: NEAREST(X33, size=4, recompute_scale_factor=True), ValueError,
     'recompute_scale_factor is not meaningful with an explicit size'),
    (lambda: NEAREST(X33, size=(0, 3)), ValueError, 'size must be >= 1'),
    (lambda: NEAREST(X33, size=2.5), TypeError, 'size must be an int'),
    (lambda: U.upsample_nearest2d_forward(normal(2, 3, 3), 2), ValueError, r'x must be \(N, C, H, W\)'),
    (lambda: NEAREST(X33, 2, recompute_scale_factor=1), TypeError,
     'recompute_scale_factor must be None or a bool'),
    (lambda: BILINEAR(X33), ValueError, 'either size or scale_factor'),
    (lambda: BILINEAR(X33, 4, align_corners=None), TypeError,
     'align_corners must be a bool'),
    (lambda: U.upsample_bilinear2d_forward(normal(1, 1, 2, 2), size=10 ** 6), ValueError, 'more than the'),
    (lambda: U.Upsample(), ValueError, 'either size or scale_factor'),
    (lambda: U.Upsample(scale_factor=2, mode='bicubic'), ValueError, "mode must be 'nearest' or 'bilinear'"),
    (lambda: U.Upsample(scale_factor=2, align_corners=True), ValueError,
     'align_corners option can only be set'),
    (lambda: U.Upsample(4, 2), ValueError, 'only one of size or scale_factor'),
    (lambda: U.Upsample(2)(normal(1, 2, 3)), ValueError, r'x must be \(N, C, H, W\)'),
    (lambda: U.Upsample(scale_factor=2).macs((2, 3)), ValueError, r'input_shape must be \(N, C, H, W\)'),
])
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_torch_raises_for_the_same_arguments():
    torch = pytest.importorskip('torch')
    x = torch.zeros(1, 2, 3, 3)
    for kwargs, match in [(dict(scale_factor=0.1), 'sizes should be greater than 0'),
                          (dict(size=4, scale_factor=2), 'only one of size or scale_factor'),
                          (dict(size=4, recompute_scale_factor=True),
                           'recompute_scale_factor is not meaningful'),
                          (dict(scale_factor=2, align_corners=True), 'align_corners option can only be set')]:
        with pytest.raises((ValueError, RuntimeError), match=match):
            torch.nn.functional.interpolate(x, **kwargs)
