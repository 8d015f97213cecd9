"""The compiled and GEMM-only paths of the building blocks, each against its plain-loop reference:

* conv2d's 1x1 path without padding (the GEMM reads x's pixels, no column buffer; eq. 11-12 of
  conv.md) and the batched im2col GEMM it leaves small samples to: every stride, groups,
  per-sample weights, batch 0, float32, and a strided input;
* max_pool2d's Numba loops (eq. 44-46 of blocks.md), including NaN, ties and windows with no
  element inside x, with one and two threads (bitwise equal), and the inference loop without argmax;
* eval-mode BatchNorm as one per-channel affine pass (eq. 21, 22, 22a), float32 sums accumulated in
  float64;
* relu's and relu6's single pass (eq. 5-6, 36-37) on NaN, -0 and infinities;
* GELU's single passes (eq. 12-13), float32 through a rational erf and a polynomial exp;
* softmax over the last axis as one pass per row (eq. 9, 11), and OpenBLAS's sleeping workers;
* layer_norm's rows (eq. 14-15, 23) and their gradients (eq. 18, 24), sums in float64.
"""
import numba
import numpy as np
import pytest

import numpyconv
from numpyconv import reference
from numpyconv.conv import MIN_PIXEL_GEMM, conv2d_backward, conv2d_forward
from numpyconv.pooling import _max_pool2d_indices

RNG = np.random.default_rng(7)


def normal(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300) if b.size else 0.0


def threads(count, fn):
    """``fn()`` with ``count`` Numba threads (at most the machine's)."""
    before = numba.get_num_threads()
    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    try:
        return fn()
    finally:
        numba.set_num_threads(before)


# -- conv2d, 1x1 without padding ----------------------------------------------------------------
POINTWISE = [  # n, c_in, c_out, (h, w), stride, groups, per_sample
    (1, 6, 4, (5, 7), 1, 1, False),
    (3, 6, 4, (5, 7), 2, 2, False),                 # several small samples: im2col's batched GEMM
    (2, 4, 6, (16, 14), 1, 2, False),               # several samples of MIN_PIXEL_GEMM pixels or more
    (2, 4, 6, (31, 25), (2, 1), 1, True),
    (2, 4, 6, (6, 5), (3, 2), 2, True),
    (1, 8, 8, (4, 4), 1, 4, True),
    (0, 4, 4, (3, 3), 1, 1, False),
]


@pytest.mark.parametrize('n, c_in, c_out, hw, stride, groups, per_sample', POINTWISE)
def test_pointwise_path_matches_reference(n, c_in, c_out, hw, stride, groups, per_sample):
    x = normal(n, c_in, *hw)
    weight = normal(*(((n,) if per_sample else ()) + (c_out, c_in // groups, 1, 1)))
    bias = normal(*(((n,) if per_sample else ()) + (c_out,)))
    y, cache = conv2d_forward(x, weight, bias, stride=stride, groups=groups)
    assert cache['pointwise'] == (n <= 1 or y.shape[2] * y.shape[3] >= MIN_PIXEL_GEMM)
    dout = normal(*y.shape)
    grads = conv2d_backward(dout, cache)
    if per_sample:          # the reference has no per-sample weights: one sample at a time
        for i in range(n):
            y_i = reference.conv2d(x[i:i + 1], weight[i], bias[i], stride=stride, groups=groups)
            g_i = reference.conv2d_backward(dout[i:i + 1], x[i:i + 1], weight[i], bias[i], stride=stride,
                                            groups=groups)
            assert rel_err(y[i:i + 1], y_i) < 1e-12
            for fast, ref in zip((grads[0][i:i + 1], grads[1][i], grads[2][i]), g_i):
                assert rel_err(fast, ref) < 1e-12
        return
    assert rel_err(y, reference.conv2d(x, weight, bias, stride=stride, groups=groups)) < 1e-12
    ref = reference.conv2d_backward(dout, x, weight, bias, stride=stride, groups=groups)
    for fast, expected in zip(grads, ref):
        assert fast.shape == expected.shape and rel_err(fast, expected) < 1e-12


def test_pointwise_path_float32_and_strided_input_match_the_column_path():
    x = normal(1, 12, 9, 11, dtype=np.float32)[:, ::2, 1:, ::-1]        # strided, reversed view
    weight = normal(5, 6, 1, 1, dtype=np.float32)
    y, cache = conv2d_forward(x, weight, stride=2)
    assert cache['pointwise'] and y.dtype == np.float32
    # the same convolution through im2col: a 1x1 kernel padded to 3x3 with zeros, padding 1
    w3 = np.zeros((5, 6, 3, 3), np.float32)
    w3[:, :, 1, 1] = weight[:, :, 0, 0]
    y3, cache3 = conv2d_forward(x, w3, stride=2, padding=1)
    assert not cache3['pointwise']
    np.testing.assert_allclose(y, y3, rtol=1e-5, atol=1e-5)
    dout = normal(*y.shape, dtype=np.float32)
    dx, dw, _ = conv2d_backward(dout, cache)
    dx3, dw3, _ = conv2d_backward(dout, cache3)
    np.testing.assert_allclose(dx, dx3, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw[:, :, 0, 0], dw3[:, :, 1, 1], rtol=1e-4, atol=1e-4)


def test_pointwise_path_gradcheck():
    x, weight, bias = normal(1, 4, 3, 5), normal(6, 2, 1, 1), normal(6)
    assert conv2d_forward(x, weight, bias, stride=(1, 2), groups=2)[1]['pointwise']
    numpyconv.gradcheck(lambda a, w, b: conv2d_forward(a, w, b, stride=(1, 2), groups=2),
                        conv2d_backward, (x, weight, bias))


def test_pointwise_path_is_adjoint():
    # <conv(x), dy> = <x, dx> for a linear map of x (bias None)
    x, weight = normal(3, 4, 30, 29), normal(5, 4, 1, 1)
    y, cache = conv2d_forward(x, weight, stride=2)
    assert cache['pointwise']
    dout = normal(*y.shape)
    dx = conv2d_backward(dout, cache)[0]
    assert abs(np.vdot(y, dout) - np.vdot(x, dx)) < 1e-10 * abs(np.vdot(y, dout))


# -- max_pool2d ----------------------------------------------------------------------------------
MAXPOOL = [  # shape, kernel_size, stride, padding, dilation, ceil_mode
    ((2, 3, 9, 8), 3, 2, 1, 1, False),
    ((1, 2, 7, 7), (2, 3), (1, 2), (1, 1), (2, 1), True),
    ((1, 1, 5, 5), 3, 3, 1, 3, True),               # windows with no element inside x
    ((0, 2, 4, 4), 2, None, 0, 1, False),
]


@pytest.mark.parametrize('shape, kernel_size, stride, padding, dilation, ceil_mode', MAXPOOL)
def test_max_pool_loops_match_reference_on_any_thread_count(shape, kernel_size, stride, padding, dilation,
                                                             ceil_mode):
    x = np.round(normal(*shape), 1)                                       # ties
    if x.size:
        x.flat[::7] = np.nan
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    y, cache = numpyconv.max_pool2d_forward(x, *args)
    dout = normal(*y.shape)
    dx, = numpyconv.max_pool2d_backward(dout, cache)
    np.testing.assert_array_equal(y, reference.max_pool2d(x, *args))
    np.testing.assert_allclose(dx, reference.max_pool2d_backward(dout, x, *args)[0], rtol=1e-14)
    y1, cache1 = threads(1, lambda: numpyconv.max_pool2d_forward(x, *args))
    dx2, = threads(2, lambda: numpyconv.max_pool2d_backward(dout, cache1))
    np.testing.assert_array_equal(y1, y)
    np.testing.assert_array_equal(dx2, dx)


MAXPOOL_VALUES = MAXPOOL + [
    ((2, 4, 12, 13), 3, 2, 1, 1, True),
    ((1, 3, 10, 10), (3, 2), (2, 3), (1, 0), (1, 3), False),
    ((1, 2, 6, 6), 2, 1, 0, 1, False),
]


@pytest.mark.parametrize('shape, kernel_size, stride, padding, dilation, ceil_mode', MAXPOOL_VALUES)
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_max_pool_values_loop_matches_reference_on_any_thread_count(shape, kernel_size, stride, padding,
                                                                    dilation, ceil_mode, dtype):
    from numpyconv.pooling import _max_pool2d_values
    x = np.round(normal(*shape), 1).astype(dtype)                          # ties
    if x.size:
        x.flat[::11] = np.nan
        x.flat[3::13] = -np.inf
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    expected = reference.max_pool2d(x.astype(np.float64), *args).astype(dtype)
    for count in (1, 2):
        y = threads(count, lambda: _max_pool2d_values(x, *args))
        assert y.dtype == dtype
        np.testing.assert_array_equal(y, expected)


def test_max_pool_layer_under_no_grad_gives_the_same_output_and_indices_when_asked():
    x = normal(2, 3, 15, 14, dtype=np.float32)
    x[0, 1, 3, 4] = np.nan
    for layer in (numpyconv.MaxPool2d(3, 2, 1), numpyconv.MaxPool2d(3, 2, 1, return_indices=True)):
        expected = layer(x)
        with numpyconv.no_grad():
            got = layer(x)
        for a, b in zip(*((expected, got) if layer.return_indices else ((expected,), (got,)))):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(RuntimeError):
            layer.backward(np.ones_like(got[0] if layer.return_indices else got))


def test_max_pool_matches_torch_indices():
    torch = pytest.importorskip('torch')
    x = normal(2, 3, 11, 10, dtype=np.float32)
    y, cache = numpyconv.max_pool2d_forward(x, 3, 2, 1, 1, True)
    yt, idx = torch.nn.functional.max_pool2d(torch.tensor(x), 3, 2, 1, 1, True, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(_max_pool2d_indices(cache), idx.numpy())


# -- eval-mode BatchNorm -------------------------------------------------------------------------
@pytest.mark.parametrize('shape', [(2, 3, 4, 5), (3, 4), (2, 3, 6), (0, 3, 2, 2)])
@pytest.mark.parametrize('affine', [True, False])
def test_eval_batch_norm_matches_reference(shape, affine):
    c = shape[1]
    x = normal(*shape)
    weight, bias = (normal(c), normal(c)) if affine else (None, None)
    mean, var = normal(c), RNG.random(c) + 0.5
    y, cache = numpyconv.batch_norm_forward(x, weight, bias, mean, var, False)
    assert rel_err(y, reference.batch_norm(x, weight, bias, mean, var, False)) < 1e-13
    dout = normal(*shape)
    fast = numpyconv.batch_norm_backward(dout, cache)
    ref = reference.batch_norm_backward(dout, x, weight, bias, mean, var, False)
    for a, b in zip(fast, ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape == b.shape and rel_err(a, b) < 1e-12


def test_eval_batch_norm_float32_sums_are_accurate():
    # a large plane of float32: the per-channel sums accumulate in float64
    x = normal(2, 3, 128, 128, dtype=np.float32) + 3
    mean, var, w, b = (np.full(3, 3, np.float32), np.ones(3, np.float32), np.ones(3, np.float32),
                       np.zeros(3, np.float32))
    _, cache = numpyconv.batch_norm_forward(x, w, b, mean, var, False)
    dout = normal(*x.shape, dtype=np.float32)
    _, dweight, dbias, _, _ = numpyconv.batch_norm_backward(dout, cache)
    x_hat = (x.astype(np.float64) - 3) / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(dbias, dout.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(dweight, (dout * x_hat).sum(axis=(0, 2, 3)), rtol=1e-4)


def test_eval_batch_norm_is_bitwise_independent_of_threads():
    x, w, b, m, v = normal(2, 8, 30, 30), normal(8), normal(8), normal(8), RNG.random(8) + 1

    def run():
        return numpyconv.batch_norm_backward(np.cos(x), numpyconv.batch_norm_forward(x, w, b, m, v, False)[1])
    for a, b2 in zip(threads(1, run), threads(2, run)):
        np.testing.assert_array_equal(a, b2)


# -- relu ----------------------------------------------------------------------------------------
def test_relu_single_pass_special_values():
    x = np.array([-1.0, -0.0, 0.0, np.nan, 2.0, np.inf, -np.inf], dtype=np.float32)
    y, cache = numpyconv.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert y.dtype == np.float32
    dx, = numpyconv.relu_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(dx, [0, 0, 0, 1, 1, 1, 0])
    xs = normal(4, 6)[:, ::2]                                              # strided input
    np.testing.assert_array_equal(numpyconv.relu_forward(xs)[0], np.maximum(xs, 0))


# -- gelu ----------------------------------------------------------------------------------------
def test_erf_rational_fit_is_within_1e8_everywhere():
    from scipy.special import erf
    from numpyconv.activations import _erf_rational
    u = np.concatenate([np.linspace(-8, 8, 400_001), [0.0, -0.0, 1e-300, 4.5, -4.5, np.inf, -np.inf]])
    approx = np.array([_erf_rational(v) for v in u])
    assert np.abs(approx - erf(u)).max() < 1e-8
    assert np.isnan(_erf_rational(np.nan))


def test_gelu_float32_is_float64_gelu_rounded():
    from scipy.special import erf
    x = np.concatenate([normal(200_000) * 4, [0.0, -0.0, 6.3, -6.3, -6.4, 20.0, -20.0]]).astype(np.float32)
    y, cache = numpyconv.gelu_forward(x)
    x64 = x.astype(np.float64)
    exact = x64 * 0.5 * (1 + erf(x64 / np.sqrt(2)))
    assert y.dtype == np.float32 and cache['x'] is x                     # the backward recomputes Phi
    assert np.all(np.abs(y - exact) <= 1e-8 * np.abs(x64) + np.spacing(np.abs(exact).astype(np.float32)))


def test_gelu_float64_uses_exact_erf_and_any_thread_count():
    from scipy.special import erf
    x = normal(3, 50, 41)[:, ::2]                                             # strided
    y, cache = threads(2, lambda: numpyconv.gelu_forward(x))
    np.testing.assert_allclose(y, x * 0.5 * (1 + erf(x / np.sqrt(2))), rtol=1e-12, atol=1e-300)
    y1, _ = threads(1, lambda: numpyconv.gelu_forward(x))
    np.testing.assert_array_equal(y1, y)
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(threads(1, lambda: numpyconv.gelu_forward(x32))[0],
                                  threads(2, lambda: numpyconv.gelu_forward(x32))[0])


def test_exp_of_nonpositive_argument_is_within_4e9_and_zero_below_float32():
    from numpyconv.activations import _EXP_FLOOR, _exp_nonpositive
    z = np.concatenate([-np.linspace(0, -_EXP_FLOOR, 400_001), [-0.0, -1e-300]])
    approx = np.array([_exp_nonpositive(v) for v in z])
    assert np.abs(approx / np.exp(z) - 1).max() < 4e-9
    for below in (_EXP_FLOOR - 1e-9, -1e4, -np.inf, np.nan):
        assert _exp_nonpositive(below) == 0.0


def _exact_gelu_grad(dout, x):
    from scipy.special import erf
    x = x.astype(np.float64)
    return dout.astype(np.float64) * (0.5 * (1 + erf(x / np.sqrt(2)))
                                      + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi))


def test_gelu_backward_float32_is_the_float64_gradient_rounded():
    x = np.concatenate([normal(200_000) * 4, [0.0, -0.0, 6.3, -6.3, 14.0, -14.0, 20.0, -20.0]])
    x = x.astype(np.float32)
    dout = normal(x.size).astype(np.float32)
    _, cache = numpyconv.gelu_forward(x)
    dx, = numpyconv.gelu_backward(dout, cache)
    exact = _exact_gelu_grad(dout, x)
    assert dx.dtype == np.float32
    # the erf fit (1e-8) and the final rounding
    bound = 1e-8 * np.abs(dout) + np.spacing(np.abs(exact).astype(np.float32))
    assert np.all(np.abs(dx - exact) <= bound)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_gelu_backward_special_values_and_threads(dtype):
    # as PyTorch: at +-inf the term x phi(x) is inf * 0, so the gradient is NaN
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], dtype)
    _, cache = numpyconv.gelu_forward(x)
    dx, = numpyconv.gelu_backward(np.ones_like(x), cache)
    assert np.isnan(dx[:3]).all() and np.all(dx[3:] == 0.5)
    x = normal(3, 50, 41).astype(dtype)[:, ::2]                               # strided
    dout = normal(*x.shape).astype(dtype)
    _, cache = numpyconv.gelu_forward(x)
    dx2, = threads(2, lambda: numpyconv.gelu_backward(dout, cache))
    np.testing.assert_array_equal(threads(1, lambda: numpyconv.gelu_backward(dout, cache))[0], dx2)
    if dtype == np.float64:
        # Phi + x phi cancels near x = -0.75: an absolute bound there
        np.testing.assert_allclose(dx2, _exact_gelu_grad(dout, x), rtol=1e-13, atol=1e-15)


def test_relu6_single_pass_special_values():
    for dtype in (np.float32, np.float64):
        x = np.array([-1.0, -0.0, 0.0, np.nan, 2.0, 6.0, 7.0, np.inf, -np.inf], dtype=dtype)
        y, cache = numpyconv.relu6_forward(x)
        np.testing.assert_array_equal(y, np.minimum(np.maximum(x, 0), 6))
        assert y.dtype == dtype
        np.testing.assert_array_equal(numpyconv.relu6_backward(np.ones_like(x), cache)[0],
                                      [0, 0, 0, 1, 1, 0, 0, 0, 0])


# -- thread pools ----------------------------------------------------------------------------------
@pytest.mark.parametrize('given, expected', [(None, 'PASSIVE'), ('ACTIVE', 'ACTIVE')])
def test_openmp_threads_sleep_between_loops_unless_the_environment_says_otherwise(given, expected):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    if given:
        env['OMP_WAIT_POLICY'] = given
    out = subprocess.run([sys.executable, '-c', "import os, numpyconv; print(os.environ['OMP_WAIT_POLICY'])"],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == expected


def test_wait_policy_as_given_restores_the_environment_for_another_framework():
    import os
    from numpyconv import _parallel
    before = os.environ.get('OMP_WAIT_POLICY')
    with _parallel.wait_policy_as_given():
        inside = os.environ.get('OMP_WAIT_POLICY')
    assert os.environ.get('OMP_WAIT_POLICY') == before
    assert inside == (None if _parallel.SETS_WAIT_POLICY else before)


_BLAS_PROBE = """
import ctypes, os, sys
import numpy as np
a = np.ones((300, 300), np.float32)
a @ a                                          # OpenBLAS's thread server runs before numpyconv loads
import numpyconv
from numpyconv import _parallel
timeouts = [ctypes.CDLL(p).openblas_thread_timeout() for p in _parallel.loaded_openblas()
            if _parallel._pthreads_server(p) is not None]
print(os.environ['OPENBLAS_THREAD_TIMEOUT'], timeouts, float((a @ a)[0, 0]))
"""


@pytest.mark.parametrize('given, expected', [(None, '20'), ('9', '9')])
def test_openblas_threads_sleep_after_each_gemm_unless_the_environment_says_otherwise(given, expected):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != 'OPENBLAS_THREAD_TIMEOUT'}
    if given:
        env['OPENBLAS_THREAD_TIMEOUT'] = given
    out = subprocess.run([sys.executable, '-c', _BLAS_PROBE], capture_output=True, text=True, env=env,
                         check=True).stdout.split(maxsplit=1)
    assert out[0] == expected
    timeouts, product = out[1].rsplit(maxsplit=1)
    # every OpenBLAS on its own threads has read the value (NumPy's was loaded before numpyconv)
    assert set(eval(timeouts)) <= {int(expected)}
    assert eval(timeouts) or not _numpy_uses_openblas_on_linux()
    assert float(product) == 300.0                                       # GEMMs run after the restart


def _numpy_uses_openblas_on_linux():
    import sys
    try:
        blas = np.show_config(mode='dicts')['Build Dependencies']['blas']['name']
    except (TypeError, KeyError):                                       # NumPy < 1.26
        return False
    return sys.platform.startswith('linux') and 'openblas' in blas


def test_quiet_blas_threads_finds_numpys_openblas_on_linux():
    from numpyconv import _parallel
    if not _numpy_uses_openblas_on_linux():
        pytest.skip("NumPy's BLAS here is not OpenBLAS on Linux")
    assert any('openblas' in p.lower() for p in _parallel.loaded_openblas())
    a = normal(64, 64)
    before = a @ a
    _parallel.quiet_blas_threads()
    np.testing.assert_array_equal(a @ a, before)


# -- softmax over the last axis ---------------------------------------------------------------------
def _softmax_numpy(x, t):
    z = x.astype(np.float64) / t
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize('dtype', [np.float64, np.float32])
@pytest.mark.parametrize('shape, t', [((2, 5, 5, 4, 9), 1.0), ((300, 7), 0.3), ((1, 1), 2.0),
                                      ((513, 2), 1.0)])
def test_softmax_rows_loop_matches_the_formula_for_any_thread_count(dtype, shape, t):
    x = (normal(*shape) * 5).astype(dtype)
    p, cache = threads(2, lambda: numpyconv.softmax_forward(x, -1, t))
    assert p.dtype == dtype
    # float32: rounded once, so within one spacing (absolute below float32's normal range)
    rtol, tiny = (1e-14 if dtype == np.float64 else 1e-7), np.finfo(dtype).smallest_normal
    np.testing.assert_allclose(p, _softmax_numpy(x, t), rtol=rtol, atol=tiny)
    np.testing.assert_array_equal(threads(1, lambda: numpyconv.softmax_forward(x, -1, t))[0], p)
    dout = normal(*shape).astype(dtype)
    dx, = threads(2, lambda: numpyconv.softmax_backward(dout, cache))
    p64, d64 = p.astype(np.float64), dout.astype(np.float64)
    expected = p64 / t * (d64 - (p64 * d64).sum(-1, keepdims=True))
    scale = np.abs(p64 / t).max() * np.abs(d64).max()
    assert np.abs(dx - expected).max() <= (1e-14 if dtype == np.float64 else 1e-6) * scale
    np.testing.assert_array_equal(threads(1, lambda: numpyconv.softmax_backward(dout, cache))[0], dx)


def test_softmax_rows_loops_gradcheck_in_float64():
    from numpyconv.activations import _softmax_backward_rows_loop, _softmax_rows_loop
    t = 0.6

    def forward(x):
        p = np.empty_like(x)
        _softmax_rows_loop(x, t, p)
        return p, p

    def backward(dout, p):
        dx = np.empty_like(p)
        _softmax_backward_rows_loop(np.ascontiguousarray(dout), p, t, dx)
        return (dx,)

    report = numpyconv.gradcheck(forward, backward, (normal(7, 9),), mode='full')
    assert report.ok and report.mode == 'full'


def test_softmax_rows_loop_special_values_as_numpy():
    x = np.array([[np.nan, 1, 2], [np.inf, 1, 2], [-np.inf] * 3, [-np.inf, 0, 1], [1e300, -1e300, 0]])
    p, _ = numpyconv.softmax_forward(x, -1)
    np.testing.assert_array_equal(np.isnan(p), [[True] * 3] * 3 + [[False] * 3] * 2)
    np.testing.assert_allclose(p[3:], [[0, 1 / (1 + np.e), np.e / (1 + np.e)], [1, 0, 0]], rtol=1e-15)
    strided = normal(6, 10)[:, ::2]                                          # a strided input is copied
    np.testing.assert_allclose(numpyconv.softmax_forward(strided, 1)[0], _softmax_numpy(strided, 1.0),
                               rtol=1e-14)


# -- layer_norm ------------------------------------------------------------------------------------
@pytest.mark.parametrize('shape', [(2, 3, 4, 13), (5, 64), (3, 1), (0, 4), (2, 7)])
@pytest.mark.parametrize('affine', [True, False])
def test_layer_norm_rows_match_reference_and_threads(shape, affine):
    x = normal(*shape) * 3 + 1
    weight, bias = (normal(shape[-1]), normal(shape[-1])) if affine else (None, None)
    y, cache = threads(2, lambda: numpyconv.layer_norm_forward(x, weight, bias))
    assert rel_err(y, reference.layer_norm(x, weight, bias)) < 1e-13
    np.testing.assert_array_equal(threads(1, lambda: numpyconv.layer_norm_forward(x, weight, bias))[0], y)
    dout = normal(*shape)
    for fast, ref in zip(numpyconv.layer_norm_backward(dout, cache),
                         reference.layer_norm_backward(dout, x, weight, bias)):
        assert (fast is None) == (ref is None)
        if fast is not None:
            assert rel_err(fast, ref) < 1e-12


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('affine', [True, False])
def test_layer_norm_inference_is_the_forward_output_bitwise(dtype, affine):
    x = (normal(3, 7, 40) * 2 + 5).astype(dtype)
    weight, bias = (normal(40).astype(dtype), normal(40).astype(dtype)) if affine else (None, None)
    y, _ = numpyconv.layer_norm_forward(x, weight, bias, 1e-6)
    np.testing.assert_array_equal(numpyconv.blocks.layer_norm_inference(x, weight, bias, 1e-6), y)
    layer = numpyconv.LayerNorm(40, dtype=dtype, rng=0)
    with_cache = layer(x)
    with numpyconv.no_grad():
        np.testing.assert_array_equal(layer(x), with_cache)


def test_layer_norm_inference_checks_its_arguments_as_the_forward():
    with pytest.raises(ValueError, match='eps'):
        numpyconv.blocks.layer_norm_inference(normal(2, 3), None, None, -1.0)
    with pytest.raises(ValueError, match='weight'):
        numpyconv.blocks.layer_norm_inference(normal(2, 3), normal(4), None)


def test_layer_norm_float32_statistics_are_accurate():
    # a large offset: the float64 sums keep float32 inputs' mean and variance exact to rounding
    x = (normal(16, 512) * 0.01 + 1000).astype(np.float32)
    y, _ = numpyconv.layer_norm_forward(x, None, None)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape', [(2, 3, 4, 13), (300, 64), (1, 1), (0, 4)])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_layer_norm_backward_is_bitwise_independent_of_threads(shape, dtype):
    x, dout = normal(*shape).astype(dtype), normal(*shape).astype(dtype)
    weight, bias = normal(shape[-1]).astype(dtype), normal(shape[-1]).astype(dtype)
    _, cache = numpyconv.layer_norm_forward(x, weight, bias)
    two = threads(2, lambda: numpyconv.layer_norm_backward(dout, cache))
    one = threads(1, lambda: numpyconv.layer_norm_backward(dout, cache))
    for a, b in zip(one, two):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)


def test_layer_norm_backward_float32_is_the_float64_gradient_rounded():
    x, dout = normal(4000, 96).astype(np.float32), normal(4000, 96).astype(np.float32)
    weight, bias = normal(96).astype(np.float32), normal(96).astype(np.float32)
    _, cache = numpyconv.layer_norm_forward(x, weight, bias)
    fast = numpyconv.layer_norm_backward(dout, cache)
    exact = reference.layer_norm_backward(*(a.astype(np.float64) for a in (dout, x, weight, bias)))
    for a, b in zip(fast, exact):
        assert rel_err(a, b) < 1e-6


def test_threads_for_leaves_the_thread_count_alone_for_large_work_and_restores_it_after_small():
    from numpyconv._parallel import PARALLEL_MIN_WORK, threads_for
    before = numba.get_num_threads()
    try:
        for count in sorted({1, before}):
            numba.set_num_threads(count)                  # the count the caller set is the one used
            with threads_for(PARALLEL_MIN_WORK):
                assert numba.get_num_threads() == count
            with threads_for(PARALLEL_MIN_WORK - 1):
                assert numba.get_num_threads() == 1
            assert numba.get_num_threads() == count
        with pytest.raises(KeyError), threads_for(0):     # restored when the block raises
            raise KeyError
        assert numba.get_num_threads() == count
    finally:
        numba.set_num_threads(before)


# -- linear: the bias gradient -------------------------------------------------------------------
@pytest.mark.parametrize('shape', [(300, 7), (1, 5), (0, 4), (25, 1)])
def test_linear_bias_gradient_is_the_column_sum(shape):
    from numpyconv.blocks import _column_sums
    rows = normal(*shape)
    np.testing.assert_allclose(_column_sums(rows), rows.sum(axis=0), rtol=1e-13, atol=1e-13)
    strided = normal(shape[0], 2 * shape[1])[:, ::2]
    np.testing.assert_allclose(_column_sums(strided), strided.sum(axis=0), rtol=1e-13, atol=1e-13)
    x, weight, bias = normal(3, shape[0], 6), normal(shape[1], 6), normal(shape[1])
    y, cache = numpyconv.linear_forward(x, weight, bias)
    dout = normal(*y.shape)
    dbias = numpyconv.linear_backward(dout, cache)[2]
    assert dbias.dtype == np.float64
    np.testing.assert_allclose(dbias, dout.reshape(-1, shape[1]).sum(axis=0), rtol=1e-13, atol=1e-13)


def test_linear_backward_into_writes_the_weight_gradient_in_place():
    from numpyconv.blocks import linear_backward_into
    x, weight, bias = normal(2, 5, 6), normal(4, 6), normal(4)
    y, cache = numpyconv.linear_forward(x, weight, bias)
    dout = normal(*y.shape)
    expected = numpyconv.linear_backward(dout, cache)
    into = np.full((4, 6), np.nan)
    got = linear_backward_into(dout, cache, into)
    assert got[1] is into
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-14)
    layer = numpyconv.Linear(6, 4, dtype=np.float64, rng=0)
    held = layer.grads['weight']
    layer.forward(x)
    layer.zero_grad()
    layer.backward(dout)                          # the GEMM writes into the cleared gradient array
    assert layer.grads['weight'] is held
    once = held.copy()
    layer.backward(dout)                          # then adds
    np.testing.assert_allclose(held, 2 * once, rtol=1e-14)
