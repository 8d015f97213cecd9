"""conv2d, depthwise, pointwise, separable: reference, gradcheck, identities, errors."""
import sys
import threading
from contextlib import contextmanager

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numpyconv as nc
from numpyconv import conv as C
from numpyconv.im2col import col2im, im2col, pad_nchw
from numpyconv.memory import GEMM_BLOCK, scratch, set_column_budget
from numpyconv.reference import conv as ref

RNG = np.random.default_rng(1234)
IM2COL = sys.modules['numpyconv.im2col']


@contextmanager
def im2col_copies(path):
    """im2col on one of its two copy paths for every plane size: ``'loop'`` (the compiled loop) or
    ``'slices'`` (NumPy's per-offset slices)."""
    saved = IM2COL.LOOP_MIN_PLANE
    IM2COL.LOOP_MIN_PLANE = 0 if path == 'loop' else 1 << 62
    try:
        yield
    finally:
        IM2COL.LOOP_MIN_PLANE = saved


@pytest.fixture(params=['loop', 'slices'])
def im2col_path(request):
    with im2col_copies(request.param):
        yield request.param

# (N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups)
GRID = [
    (1, 4, 6, 7, 6, (3, 2), 2, (1, 2), 1, 2),     # stride 2, asymmetric pair padding, non-square
    (3, 3, 3, 9, 8, 3, 3, 1, 1, 3),                # stride 3, groups = C
    (3, 4, 4, 8, 9, 3, 1, 'same', 2, 1),           # dilation 2, 'same'
    (1, 2, 4, 6, 7, (2, 3), 1, 'same', 1, 1),      # even kernel 'same': extra pad bottom/right
    (3, 4, 8, 7, 7, 3, (2, 3), 'valid', (2, 1), 4),  # multiplier 2 (depthwise via groups)
    (1, 6, 4, 5, 4, (1, 3), (3, 2), (0, 1), (1, 2), 2),
    (0, 4, 6, 5, 5, 3, 1, 1, 1, 2),                # batch 0
    (2, 4, 6, 6, 5, 3, 1, 3, 1, 2),                # stride 1, padding > kernel span: dy is cropped
    (2, 3, 4, 7, 8, (3, 1), 1, (0, 2), (2, 1), 1),  # stride 1, (2,1) dilation, columns of pure padding
]


def operands(n, c_in, c_out, h, w, kernel, groups, dtype=np.float64, bias=True):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = RNG.standard_normal((n, c_in, h, w)).astype(dtype)
    wt = RNG.standard_normal((c_out, c_in // groups, kh, kw)).astype(dtype)
    b = RNG.standard_normal(c_out).astype(dtype) if bias else None
    return x, wt, b


@pytest.mark.parametrize('case', GRID)
@pytest.mark.parametrize('bias', [True, False])
def test_conv2d_matches_reference_and_gradcheck(case, bias):
    n, c_in, c_out, h, w, k, s, p, d, g = case
    x, wt, b = operands(n, c_in, c_out, h, w, k, g, bias=bias)
    y, _ = C.conv2d_forward(x, wt, b, s, p, d, g)
    np.testing.assert_allclose(y, ref.conv2d(x, wt, b, s, p, d, g), rtol=1e-12, atol=1e-12)
    nc.gradcheck(lambda x, wt, b: C.conv2d_forward(x, wt, b, s, p, d, g), C.conv2d_backward, (x, wt, b))


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_dtype_preserved_and_float32_close(dtype):
    x, wt, b = operands(2, 4, 6, 6, 5, 3, 2, dtype=dtype)
    y, cache = C.conv2d_forward(x, wt, b, 1, 1, 1, 2)
    grads = C.conv2d_backward(np.ones_like(y), cache)
    assert y.dtype == dtype and all(gr.dtype == dtype for gr in grads)
    y64 = ref.conv2d(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), 1, 1, 1, 2)
    np.testing.assert_allclose(y, y64, rtol=1e-4, atol=1e-4)


def test_non_contiguous_inputs():
    base, wt, b = operands(2, 8, 6, 9, 12, 3, 2)
    x = base[:, ::2, :, ::2]                          # strided view (2, 4, 9, 6)
    wt = np.asfortranarray(wt[:, :2])                 # (6, 2, 3, 3), Fortran order
    y, cache = C.conv2d_forward(x, wt, b, 2, 1, 1, 2)
    expected = ref.conv2d(np.ascontiguousarray(x), np.ascontiguousarray(wt), b, 2, 1, 1, 2)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    nc.gradcheck(lambda x, wt, b: C.conv2d_forward(x, wt, b, 2, 1, 1, 2), C.conv2d_backward, (x, wt, b))


def test_inputs_not_mutated():
    x, wt, b = operands(2, 4, 4, 5, 5, 3, 1)
    copies = [a.copy() for a in (x, wt, b)]
    y, cache = C.conv2d_forward(x, wt, b, 1, 1)
    dy = np.ones_like(y)
    C.conv2d_backward(dy, cache)
    for a, c in zip((x, wt, b, dy), copies + [np.ones_like(y)]):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize('padding, dilation, groups, per_sample',
                         [(1, 1, 1, False), ((0, 3), (2, 1), 2, False), ('same', 2, 2, True)])
def test_unit_stride_gradients_from_the_transposed_convolution(padding, dilation, groups, per_sample):
    # stride 1: dx = conv(pad(dy), flipped W^T) (eq. 7a) and dW from the same columns (eq. 6a)
    # equal crop(col2im(W^T dy)) (eq. 7) and the correlation of x with dy (eq. 6)
    x = RNG.standard_normal((3, 4, 7, 6))
    wt = RNG.standard_normal(((3,) if per_sample else ()) + (6, 4 // groups, 3, 2))
    y, cache = C.conv2d_forward(x, wt, None, 1, padding, dilation, groups)
    dy = RNG.standard_normal(y.shape)
    operands = (dy, x, wt, groups, cache['geo'])
    for a, b in zip(C._unit_stride_backward(*operands), C._strided_backward(*operands)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(C._flipped_transpose(C._flipped_transpose(wt, groups), groups), wt)


# -- depthwise, pointwise, separable -------------------------------------------------------------
@pytest.mark.parametrize('mult, stride, padding, dilation',
                         [(1, 1, 1, 1), (2, 2, (1, 0), 2), (2, 3, 'valid', 1)])
def test_depthwise_equals_grouped_conv_and_gradcheck(mult, stride, padding, dilation):
    x = RNG.standard_normal((3, 3, 8, 7))
    wt, b = RNG.standard_normal((3 * mult, 1, 3, 2)), RNG.standard_normal(3 * mult)
    y, _ = C.depthwise_conv2d_forward(x, wt, b, stride, padding, dilation)
    np.testing.assert_allclose(y, ref.conv2d(x, wt, b, stride, padding, dilation, groups=3), atol=1e-12)
    nc.gradcheck(lambda x, wt, b: C.depthwise_conv2d_forward(x, wt, b, stride, padding, dilation),
                 C.depthwise_conv2d_backward, (x, wt, b))


@pytest.mark.parametrize('stride', [1, 2, (3, 2)])
def test_pointwise_equals_1x1_conv_and_gradcheck(stride):
    x, wt, b = operands(3, 4, 5, 7, 6, 1, 1)
    y, _ = C.pointwise_conv2d_forward(x, wt, b, stride)
    np.testing.assert_allclose(y, ref.pointwise_conv2d(x, wt, b, stride), atol=1e-12)
    np.testing.assert_allclose(y, C.conv2d_forward(x, wt, b, stride)[0], atol=1e-12)
    nc.gradcheck(lambda x, wt, b: C.pointwise_conv2d_forward(x, wt, b, stride), C.pointwise_conv2d_backward,
                 (x, wt, b))


@pytest.mark.parametrize('op, weight', [(C.pointwise_conv2d_forward, np.zeros((5, 4, 1, 1))),
                                        (C.depthwise_conv2d_forward, np.zeros((8, 1, 3, 3)))])
def test_depthwise_and_pointwise_batch_zero(op, weight):
    y, cache = op(np.zeros((0, 4, 6, 6)), weight, None, 2)
    grads = (C.pointwise_conv2d_backward if weight.shape[2] == 1 else C.depthwise_conv2d_backward)(y, cache)
    assert y.shape[0] == 0 and grads[0].shape == (0, 4, 6, 6) and grads[1].shape == weight.shape


def test_separable_equals_depthwise_then_pointwise_and_dense_kernel():
    x = RNG.standard_normal((2, 3, 7, 7))
    wdw, bdw = RNG.standard_normal((6, 1, 3, 3)), RNG.standard_normal(6)
    wpw, bpw = RNG.standard_normal((4, 6, 1, 1)), RNG.standard_normal(4)
    y, _ = C.separable_conv2d_forward(x, wdw, wpw, bdw, bpw, 2, 1)
    mid, _ = C.depthwise_conv2d_forward(x, wdw, bdw, 2, 1)
    np.testing.assert_allclose(y, C.pointwise_conv2d_forward(mid, wpw, bpw)[0], atol=1e-12)
    w_eff = np.einsum('ocm,cmpq->ocpq', wpw[:, :, 0, 0].reshape(4, 3, 2), wdw[:, 0].reshape(3, 2, 3, 3))
    b_eff = bpw + wpw[:, :, 0, 0] @ bdw                                 # docs/derivations/conv.md section 7
    np.testing.assert_allclose(y, ref.conv2d(x, w_eff, b_eff, 2, 1), atol=1e-12)
    nc.gradcheck(lambda *a: C.separable_conv2d_forward(*a, 2, 1), C.separable_conv2d_backward,
                 (x, wdw, wpw, bdw, bpw))
    y2, cache2 = C.separable_conv2d_forward(x, wdw, wpw)
    grads = C.separable_conv2d_backward(np.ones_like(y2), cache2)
    assert grads[3] is None and grads[4] is None


# -- per-sample weights ----------------------------------------------------------------------------
@pytest.mark.parametrize('groups, c_g', [(1, 4), (2, 2), (4, 1)])
def test_per_sample_weights_equal_a_loop_of_convs(groups, c_g):
    x = RNG.standard_normal((3, 4, 6, 5))
    wt, b = RNG.standard_normal((3, 8, c_g, 3, 3)), RNG.standard_normal((3, 8))
    y, cache = C.conv2d_forward(x, wt, b, 2, 1, 1, groups)
    dy = RNG.standard_normal(y.shape)
    dx, dw, db = C.conv2d_backward(dy, cache)
    for n in range(3):
        y_n, cache_n = C.conv2d_forward(x[n:n + 1], wt[n], b[n], 2, 1, 1, groups)
        np.testing.assert_allclose(y[n:n + 1], y_n, atol=1e-12)
        dx_n, dw_n, db_n = C.conv2d_backward(dy[n:n + 1], cache_n)
        np.testing.assert_allclose(dx[n:n + 1], dx_n, atol=1e-12)
        np.testing.assert_allclose(dw[n], dw_n, atol=1e-12)
        np.testing.assert_allclose(db[n], db_n, atol=1e-12)
    np.testing.assert_allclose(y, ref.conv2d(x, wt, b, 2, 1, 1, groups), atol=1e-12)
    nc.gradcheck(lambda x, wt, b: C.conv2d_forward(x, wt, b, 2, 1, 1, groups), C.conv2d_backward, (x, wt, b))


@pytest.mark.parametrize('c_g', [2, 1])
def test_per_sample_batch_zero(c_g):
    x, wt, b = np.zeros((0, 4, 5, 5)), np.zeros((0, 8, c_g, 3, 3)), np.zeros((0, 8))
    y, cache = C.conv2d_forward(x, wt, b, 1, 1, 1, 4 // c_g)
    dx, dw, db = C.conv2d_backward(y, cache)
    assert y.shape == (0, 8, 5, 5) and dx.shape == x.shape and dw.shape == wt.shape and db.shape == b.shape


def test_per_sample_with_shared_weight_equals_plain_conv():
    x, wt, b = operands(3, 4, 6, 5, 5, 3, 2)
    shared = np.broadcast_to(wt, (3,) + wt.shape)
    y, _ = C.conv2d_forward(x, shared, np.broadcast_to(b, (3, 6)), 1, 1, 1, 2)
    np.testing.assert_allclose(y, C.conv2d_forward(x, wt, b, 1, 1, 1, 2)[0], atol=1e-12)


# -- adjoint identities ---------------------------------------------------------------------------------
@pytest.mark.parametrize('stride, dilation', [((1, 1), (1, 1)), ((2, 3), (2, 1)), ((3, 2), (3, 2))])
@pytest.mark.parametrize('pads', [(0, 0, 0, 0), (2, 1, 0, 3), (-1, 2, 1, -2)])
def test_im2col_col2im_adjoint_and_reference(stride, dilation, pads, im2col_path):
    # padding on the fly (origin = (top, left); negative crops) == im2col of the padded copy
    x = RNG.standard_normal((2, 3, 11, 10))
    top, bottom, left, right = pads
    cropped = x[:, :, max(0, -top):11 - max(0, -bottom), max(0, -left):10 - max(0, -right)]
    kernel, xp = (3, 2), pad_nchw(cropped, tuple(max(0, p) for p in pads))
    out_hw = tuple((xp.shape[2 + a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1 for a in (0, 1))
    cols = im2col(x, kernel, stride, dilation=dilation, out_hw=out_hw, origin=(pads[0], pads[2]))
    np.testing.assert_array_equal(cols, ref.im2col(xp, kernel, stride, dilation, out_hw))
    stale = np.full(cols.shape, np.nan)                  # every entry written, padding included
    np.testing.assert_array_equal(im2col(x, kernel, stride, dilation=dilation, out=stale, out_hw=out_hw,
                                         origin=(pads[0], pads[2])), cols)
    c = RNG.standard_normal(cols.shape)
    back = col2im(c, x.shape[2:], stride, dilation=dilation, origin=(pads[0], pads[2]))
    lhs, rhs = np.vdot(cols, c), np.vdot(x, back)
    assert abs(lhs - rhs) < 1e-12 * max(1.0, abs(lhs))


@pytest.mark.parametrize('kernel, stride, padding, dilation', [
    (3, 1, 1, 1), ((3, 2), (2, 3), (1, 2), (2, 1)), (2, 1, 'same', 2), ((2, 3), 1, 'same', 1),
    (3, 2, 'valid', 1), ((1, 3), (3, 1), 0, (1, 2)),
])
def test_im2col_col2im_take_padding_as_conv2d(kernel, stride, padding, dilation, im2col_path):
    # the public pair takes conv2d's hyper-parameters; same as the padded reference, adjoint
    x = RNG.standard_normal((2, 3, 7, 8))
    geo = C.conv_geometry(x.shape[2:], kernel, stride, padding, dilation)
    cols = im2col(x, kernel, stride, padding, dilation)
    assert cols.shape == (2, 3) + geo.kernel + geo.out_hw
    np.testing.assert_array_equal(cols, ref.im2col(pad_nchw(x, geo.pads), geo.kernel, geo.stride,
                                                   geo.dilation, geo.out_hw))
    c = RNG.standard_normal(cols.shape)
    back = col2im(c, (7, 8), stride, padding, dilation)
    assert abs(np.vdot(cols, c) - np.vdot(x, back)) < 1e-12 * abs(np.vdot(cols, c))


def test_im2col_col2im_match_torch_unfold_and_fold():
    torch = pytest.importorskip('torch')
    F = torch.nn.functional
    x = RNG.standard_normal((2, 3, 7, 8))
    cols = im2col(x, (3, 2), (2, 1), (1, 2), (1, 2))
    n, c, kh, kw, ho, wo = cols.shape
    unfolded = F.unfold(torch.tensor(x), (3, 2), dilation=(1, 2), padding=(1, 2), stride=(2, 1))
    np.testing.assert_array_equal(cols.reshape(n, c * kh * kw, ho * wo), unfolded.numpy())
    folded = F.fold(torch.tensor(cols.reshape(n, c * kh * kw, ho * wo)), (7, 8), (3, 2), dilation=(1, 2),
                    padding=(1, 2), stride=(2, 1))
    np.testing.assert_allclose(col2im(cols, (7, 8), (2, 1), (1, 2), (1, 2)), folded.numpy(), rtol=1e-14)


def _read_only(shape):
    a = np.zeros(shape)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize('call, error, match', [
    (lambda: im2col(np.zeros((2, 3, 4)), 3), ValueError, r'x must be \(N, C, H, W\)'),
    (lambda: im2col(np.zeros((1, 1, 4, 4), np.int64), 3), TypeError, 'x must be float32 or float64'),
    (lambda: im2col(np.zeros((1, 1, 2, 2)), 3), ValueError, 'larger than the padded input'),
    (lambda: im2col(np.zeros((1, 1, 4, 4)), 3, 2, 'same'), ValueError, "padding='same' is not supported"),
    (lambda: col2im(np.zeros((1, 1, 3, 3, 2, 2)), (4, 4), padding=1), ValueError,
     r'cols must have shape \(N, C, 3, 3\) \+ \(4, 4\)'),
    (lambda: col2im(np.zeros((1, 1, 0, 3, 2, 2)), (4, 4)), ValueError, 'cols must have shape .* kh, kw >= 1'),
    # placement: padding, or origin together with out_hw (the lone one is refused, not ignored)
    (lambda: im2col(np.zeros((1, 1, 4, 4)), 3, origin=(1, 1)), TypeError, 'both origin and out_hw'),
    (lambda: im2col(np.zeros((1, 1, 4, 4)), 3, out_hw=(4, 4)), TypeError, 'both origin and out_hw'),
    (lambda: im2col(np.zeros((1, 1, 4, 4)), 3, padding=1, origin=(1, 1), out_hw=(4, 4)), TypeError,
     'give either padding or both'),
    (lambda: col2im(np.zeros((1, 1, 3, 3, 2, 2)), (4, 4), padding=5, origin=(0, 0)), TypeError,
     'give either padding or both'),
    # out is checked before anything is written into it
    (lambda: im2col(np.zeros((1, 1, 4, 4)), 3, out=np.empty((1, 1, 3, 3, 4, 4))), ValueError,
     r'out must have shape \(1, 1, 3, 3, 2, 2\)'),
    (lambda: im2col(np.zeros((1, 1, 4, 4)), 3, out=np.empty((1, 1, 3, 3, 2, 2), np.float32)), TypeError,
     "out must have x's dtype float64"),
    (lambda: im2col(np.zeros((1, 1, 30, 30)), 3, padding=1, out=_read_only((1, 1, 3, 3, 30, 30))), ValueError,
     'out must be a writeable array, got a read-only one'),
    (lambda: im2col(np.zeros((1, 1, 4, 4)), 3, out=_read_only((1, 1, 3, 3, 2, 2))), ValueError,
     'out must be a writeable array'),
    (lambda: col2im(np.zeros((1, 1, 3, 3, 2, 2)), (4, 4), out=_read_only((1, 1, 4, 4))), ValueError,
     'out must be a writeable array'),
])
def test_im2col_col2im_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize('kernel, dilation, pads, width', [
    ((3, 3), (1, 1), (1, 1, 1, 1), 10),     # 'same' 3x3
    ((3, 2), (2, 3), (2, 2, 1, 2), 10),     # dilated, asymmetric
    ((5, 3), (1, 1), (-2, 4, 0, 2), 10),    # top cropped (a band's origin), all left-right pad on the right
    ((1, 3), (1, 1), (0, 0, 2, 0), 10),     # all on the left
    ((2, 4), (1, 1), (0, 1, 3, 0), 10),
    ((3, 1), (1, 1), (1, 1, 0, 0), 1),      # W = 1
])
def test_im2col_same_width_shifted_plane_path(kernel, dilation, pads, width, im2col_path):
    # stride 1 and Wo == W: each offset is one shift of the flattened plane (wrapped columns
    # zeroed); equal to the padded reference and to the per-rectangle copy into a strided buffer
    x = RNG.standard_normal((2, 3, 9, width))
    top, bottom, left, right = pads
    xp = pad_nchw(x[:, :, max(0, -top):9 - max(0, -bottom)], (max(0, top), max(0, bottom), left, right))
    out_hw = (xp.shape[2] - dilation[0] * (kernel[0] - 1), xp.shape[3] - dilation[1] * (kernel[1] - 1))
    assert out_hw[1] == width
    expected = ref.im2col(xp, kernel, (1, 1), dilation, out_hw)
    block_layout = np.full((3,) + kernel + (2,) + out_hw, np.nan).transpose(3, 0, 1, 2, 4, 5)
    strided = np.full((2, 3) + kernel + (out_hw[0], 2 * width), np.nan)[..., ::2]  # rows not contiguous
    for out in (None, block_layout, strided):
        cols = im2col(x, kernel, dilation=dilation, out=out, out_hw=out_hw, origin=(top, left))
        np.testing.assert_array_equal(cols, expected)


@pytest.mark.parametrize('shape, kernel, stride, padding, dilation', [
    ((2, 3, 61, 60), 7, 2, 3, 1),          # a network's stem
    ((1, 4, 30, 29), 3, 1, 1, 1),          # 'same': one run per plane
    ((2, 2, 31, 61), (3, 2), (1, 2), (2, 0), (2, 1)),
    ((1, 3, 33, 32), 3, 1, 0, 2),          # 'valid', dilated: Wo < W
])
def test_im2col_compiled_loop_on_large_planes(shape, kernel, stride, padding, dilation):
    # planes of at least LOOP_MIN_PLANE outputs take the compiled loop by default: the same columns
    # as the padded reference, in both layouts it writes (and a strided out through the slices),
    # float32 and float64, a non-contiguous x, and the same on one thread as on several
    x = RNG.standard_normal(shape)[..., ::-1]
    geo = C.conv_geometry(x.shape[2:], kernel, stride, padding, dilation)
    assert geo.out_hw[0] * geo.out_hw[1] >= IM2COL.LOOP_MIN_PLANE
    expected = ref.im2col(pad_nchw(np.ascontiguousarray(x), geo.pads), geo.kernel, geo.stride,
                          geo.dilation, geo.out_hw)
    n, c = x.shape[:2]
    for dtype in (np.float32, np.float64):
        block = np.full((c,) + geo.kernel + (n,) + geo.out_hw, np.nan, dtype).transpose(3, 0, 1, 2, 4, 5)
        strided = np.full((n, c) + geo.kernel + (geo.out_hw[0], 2 * geo.out_hw[1]), np.nan, dtype)[..., ::2]
        for out in (None, block, strided):
            cols = im2col(x.astype(dtype), kernel, stride, padding, dilation, out=out)
            np.testing.assert_array_equal(cols, expected.astype(dtype))
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        np.testing.assert_array_equal(im2col(x, kernel, stride, padding, dilation), expected)
    finally:
        numba.set_num_threads(threads)


def test_conv2d_adjoint_dot_product():
    x, wt, _ = operands(2, 4, 6, 9, 8, 3, 2)
    y, cache = C.conv2d_forward(x, wt, None, 2, 1, 2, 2)
    v = RNG.standard_normal(y.shape)
    dx, dw, _ = C.conv2d_backward(v, cache)
    assert np.isclose(np.vdot(y, v), np.vdot(x, dx), rtol=1e-12)   # <conv(x;W), v> = <x, conv^T(v;W)>
    assert np.isclose(np.vdot(y, v), np.vdot(wt, dw), rtol=1e-12)  # <conv(x;W), v> = <W, dW(x, v)>


def test_column_budget_chunks_give_identical_results(set_budget):
    x, wt, b = operands(5, 4, 6, 8, 8, 3, 2)
    y, cache = C.conv2d_forward(x, wt, b, 1, 1, 1, 2)
    grads = C.conv2d_backward(np.ones_like(y), cache)
    set_budget(2 * 4 * 9 * 64 * 8)                         # two samples' columns per chunk
    assert nc.column_budget() == 2 * 4 * 9 * 64 * 8
    y2, cache2 = C.conv2d_forward(x, wt, b, 1, 1, 1, 2)
    kept = max(v.nbytes for v in cache2.values() if isinstance(v, np.ndarray))
    assert kept <= x.nbytes                                # no columns, no padded copy: only x
    grads2 = C.conv2d_backward(np.ones_like(y), cache2)
    np.testing.assert_allclose(y, y2, atol=1e-12)
    for a, c in zip(grads, grads2):
        np.testing.assert_allclose(a, c, atol=1e-12)
    with pytest.raises(ValueError, match='nbytes'):
        set_column_budget(0)


@pytest.mark.parametrize('stride, dilation, per_sample', [(1, 1, False), (1, 2, True), (2, 2, False),
                                                         ((3, 1), 1, True)])
def test_one_sample_larger_than_the_budget_runs_in_row_bands(monkeypatch, set_budget, stride, dilation,
                                                            per_sample):
    x, wt, b = operands(2, 4, 6, 11, 9, 3, 2)
    if per_sample:
        wt, b = np.stack([wt, 2 * wt]), np.stack([b, -b])
    y, cache = C.conv2d_forward(x, wt, b, stride, 2, dilation, 2)
    dy = RNG.standard_normal(y.shape)
    grads = C.conv2d_backward(dy, cache)
    row_bytes = 4 * 9 * y.shape[3] * 8                                   # one output row's columns
    sizes = []

    def recording_im2col(x, *args, **options):
        sizes.append(options['out'].nbytes)
        return im2col(x, *args, **options)
    monkeypatch.setattr(C, 'im2col', recording_im2col)
    set_budget(3 * row_bytes)                                            # bands of three rows
    y2, cache2 = C.conv2d_forward(x, wt, b, stride, 2, dilation, 2)
    grads2 = C.conv2d_backward(dy, cache2)
    assert max(sizes) <= 3 * row_bytes and len(sizes) >= 2 * 2 * -(-y.shape[2] // 3)
    np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
    for a, c in zip(grads2, grads):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


def block_sizes(shape, dtype):
    """conv2d's blocks (3x3, padding 1) as (samples, rows), and one output row's column bytes."""
    blocks = C._blocks(np.empty(shape, dtype), C.conv_geometry(shape[2:], (3, 3), 1, 1, 1))
    covered = sorted((i, j) for s, r in blocks for i in range(s.start, s.stop)
                     for j in range(r.start, r.stop))
    assert covered == [(i, j) for i in range(shape[0]) for j in range(shape[2])]   # each (sample, row) once
    row_bytes = shape[1] * 9 * shape[3] * np.dtype(dtype).itemsize
    return [(s.stop - s.start, r.stop - r.start) for s, r in blocks], row_bytes


@pytest.mark.parametrize('shape, dtype, expected', [
    ((8, 256, 14, 14), np.float64, [(4, 14)] * 2),   # 8 MiB holds 2 samples (392 pixels): widened to 4
    ((7, 256, 14, 14), np.float64, [(3, 14), (4, 14)]),  # equal sizes, no small last block
    ((5, 256, 14, 14), np.float64, [(2, 14), (3, 14)]),  # not 4 + 1: evening out can go below 768 px
    ((8, 256, 14, 14), np.float32, [(4, 14)] * 2),   # 8 MiB: 4 samples, 784 pixels
    ((8, 128, 28, 28), np.float64, [(1, 28)] * 8),
    ((2, 64, 56, 56), np.float64, [(1, 28)] * 4),    # a sample is 14.4 MB: two bands of 28 rows
    ((1, 16, 3, 1), np.float64, [(1, 3)]),
    ((0, 4, 5, 5), np.float64, []),
])
def test_blocks_are_even_wide_and_bounded(set_budget, shape, dtype, expected):
    sizes, row_bytes = block_sizes(shape, dtype)
    assert sizes == expected
    assert max((n * rows * row_bytes for n, rows in sizes), default=0) <= 2 * GEMM_BLOCK
    set_budget(5 * row_bytes)                                            # the budget bounds every block
    sizes, _ = block_sizes(shape, dtype)
    assert max((n * rows for n, rows in sizes), default=0) <= 5


@pytest.mark.parametrize('stride', [1, 2])      # stride 2: dcols of the column GEMM in scratch too
def test_scratch_is_reused_per_thread_and_slot_and_stale_contents_do_not_leak(stride):
    first = scratch('columns', (4, 5), np.float64)
    assert np.shares_memory(first, scratch('columns', (2, 3), np.float32))  # reused call after call
    assert not np.shares_memory(first, scratch('kernel', (2, 3), np.float32))  # one memory per slot
    assert not np.shares_memory(first, scratch('columns', (GEMM_BLOCK,), np.float64))  # too big: fresh
    other = []
    worker = threading.Thread(target=lambda: other.append(scratch('columns', (4, 5), np.float64)))
    worker.start()
    worker.join()
    assert not np.shares_memory(first, other[0])                         # one per thread
    x, wt, b = operands(3, 4, 6, 8, 7, 3, 2)
    y, cache = C.conv2d_forward(x, wt, b, stride, 1, 1, 2)
    dy = RNG.standard_normal(y.shape)
    grads = C.conv2d_backward(dy, cache)
    slots = ('columns', 'kernel', 'kernel_grad', 'dcols')
    for _ in range(2):                                                   # NaN left in the scratch
        for slot in slots:
            scratch(slot, (2 * GEMM_BLOCK // 8,), np.float64)[...] = np.nan
        y2, cache2 = C.conv2d_forward(x, wt, b, stride, 1, 1, 2)
        for slot in slots:
            scratch(slot, (2 * GEMM_BLOCK // 8,), np.float64)[...] = np.nan
        np.testing.assert_array_equal(y2, y)
        for a, c in zip(C.conv2d_backward(dy, cache2), grads):
            np.testing.assert_array_equal(a, c)


def test_concurrent_calls_from_threads_match_sequential_results(concurrently):
    cases = [operands(3, 4, 6, 9, 8, 3, 2) for _ in range(4)]

    def run(case):
        x, wt, b = case
        return C.conv2d_backward(np.ones((3, 6, 9, 8)), C.conv2d_forward(x, wt, b, 1, 1, 1, 2)[1])
    expected = [run(case) for case in cases]
    for e, g in zip(expected, concurrently(run, cases, repeats=20)):   # interleaved with the other threads
        for a, c in zip(e, g):
            np.testing.assert_array_equal(a, c)


# -- property tests -------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_geometry_matches_reference(data):
    d = data.draw
    groups = d(st.sampled_from([1, 2, 3]))
    c_in, c_out = groups * d(st.integers(1, 2)), groups * d(st.integers(1, 2))
    kh, kw, sh, sw = d(st.integers(1, 3)), d(st.integers(1, 3)), d(st.integers(1, 3)), d(st.integers(1, 3))
    dh, dw, ph, pw = d(st.integers(1, 2)), d(st.integers(1, 2)), d(st.integers(0, 2)), d(st.integers(0, 2))
    h = d(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 8))
    w = d(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 8))
    x, wt, b = operands(d(st.integers(0, 2)), c_in, c_out, h, w, (kh, kw), groups)
    args = ((sh, sw), (ph, pw), (dh, dw), groups)
    y, cache = C.conv2d_forward(x, wt, b, *args)
    np.testing.assert_allclose(y, ref.conv2d(x, wt, b, *args), rtol=1e-11, atol=1e-11)
    span, ho = dh * (kh - 1) + 1, y.shape[2]
    assert ho >= 1 and (ho - 1) * sh + span <= h + 2 * ph < ho * sh + span     # output-size property


# -- layers ----------------------------------------------------------------------------------------------
def test_conv_layers_gradcheck_and_state_dict():
    layers = [nc.Conv2d(4, 6, (3, 2), 2, 1, 1, 2, dtype=np.float64, rng=0),
              nc.DepthwiseConv2d(4, 3, 1, 1, depth_multiplier=2, dtype=np.float64, rng=1),
              nc.PointwiseConv2d(4, 3, 2, dtype=np.float64, rng=2),
              nc.SeparableConv2d(4, 5, 3, 1, 1, dtype=np.float64, rng=3)]
    x = RNG.standard_normal((2, 4, 6, 6))
    for layer in layers:
        nc.gradcheck_layer(layer, x)
    sep = layers[3]
    assert set(sep.state_dict()) == {'depthwise.weight', 'depthwise.bias',
                                     'pointwise.weight', 'pointwise.bias'}
    other = nc.SeparableConv2d(4, 5, 3, 1, 1, dtype=np.float32, rng=9)
    other.load_state_dict(sep.state_dict())
    np.testing.assert_allclose(other(x.astype(np.float32)), sep(x), rtol=1e-5, atol=1e-5)


def test_layer_init_bounds_and_count():
    layer = nc.Conv2d(8, 16, 3, groups=2, rng=0)
    bound = 1 / np.sqrt(4 * 9)
    assert layer.params['weight'].shape == (16, 4, 3, 3) and np.abs(layer.params['weight']).max() <= bound
    assert np.abs(layer.params['bias']).max() <= bound and layer.params['weight'].dtype == np.float32
    params, macs = nc.count(layer, (1, 8, 10, 10))
    assert params == 16 * 4 * 9 + 16 and macs == 16 * 64 * 4 * 9   # 8x8 output
    sep = nc.SeparableConv2d(8, 16, 3, padding=1, bias=False)
    assert nc.count(sep, (1, 8, 10, 10)) == (8 * 9 + 16 * 8, 8 * 100 * 9 + 16 * 100 * 8)


def test_layer_rejects_wrong_input():
    layer = nc.Conv2d(4, 6, 3)
    with pytest.raises(ValueError, match=r'x must have shape \(N, 4, H, W\), got \(1, 3, 5, 5\)'):
        layer(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(TypeError, match='dtype=float64'):
        layer(np.zeros((1, 4, 5, 5)))
    with pytest.raises(KeyError, match='missing keys'):
        layer.load_state_dict({'weight': np.zeros((6, 4, 3, 3))})
    with pytest.raises(ValueError, match=r'weight must have shape \(6, 4, 3, 3\)'):
        layer.load_state_dict({'weight': np.zeros((6, 4, 3, 2)), 'bias': np.zeros(6)})


# -- errors --------------------------------------------------------------------------------------------------
X, W = np.zeros((2, 4, 5, 5)), np.zeros((6, 2, 3, 3))


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(x=np.zeros((4, 5, 5))), ValueError, r'x must be \(N, C_in, H, W\), got shape \(4, 5, 5\)'),
    (dict(weight=np.zeros((6, 3, 3, 3))), ValueError,
     r'weight must have shape \(6, 2, 3, 3\).*got \(6, 3, 3, 3\)'),
    (dict(groups=3), ValueError, 'groups=3 must divide the input channels'),
    (dict(weight=np.zeros((5, 2, 3, 3))), ValueError, 'groups=2 must divide the output channels'),
    (dict(stride=0), ValueError, 'stride must be >= 1'),
    (dict(dilation=(1, 0)), ValueError, 'dilation must be >= 1'),
    (dict(padding=-1), ValueError, 'padding must be non-negative'),
    (dict(padding='same', stride=2), ValueError, "padding='same' is not supported for strided"),
    (dict(padding='full'), ValueError, "padding must be an int, a pair, 'valid' or 'same'"),
    (dict(weight=np.zeros((6, 2, 7, 3))), ValueError,
     r'kernel_size \(7, 3\).*larger than the padded input \(5, 5\)'),
    (dict(x=np.zeros((2, 4, 5, 5), dtype=np.int64)), TypeError,
     'x must be float32 or float64, got dtype int64'),
    (dict(x=np.zeros((2, 4, 5, 5), dtype=complex)), TypeError, 'x must be float32 or float64'),
    (dict(bias=np.zeros(5)), ValueError, r'bias must have shape \(6,\), got \(5,\)'),
    (dict(x=np.zeros((2, 4, 5, 5), np.float32)), TypeError, 'same float dtype'),
    (dict(weight=np.zeros((3, 6, 2, 3, 3))), ValueError,
     r'per-sample weight must have shape \(2, 6, 2, 3, 3\)'),
    (dict(x=[[1.0]]), TypeError, 'x must be a numpy.ndarray'),
    (dict(groups=0), ValueError, 'groups must be a positive int'),
    (dict(stride=1.5), TypeError, 'stride must be an int or a pair of ints'),
])
def test_conv2d_errors(kwargs, error, match):
    args = dict(x=X, weight=W, bias=None, stride=1, padding=0, dilation=1, groups=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        C.conv2d_forward(**args)


def test_backward_rejects_wrong_dout():
    y, cache = C.conv2d_forward(X, W, None, 1, 1, 1, 2)
    with pytest.raises(ValueError, match=r'dout must have shape \(2, 6, 5, 5\), got \(2, 6, 4, 5\)'):
        C.conv2d_backward(np.zeros((2, 6, 4, 5)), cache)


def test_depthwise_and_pointwise_errors():
    with pytest.raises(ValueError, match=r'weight must have shape \(C \* multiplier, 1, kh, kw\) with C=4'):
        C.depthwise_conv2d_forward(X, np.zeros((6, 1, 3, 3)))
    with pytest.raises(ValueError, match=r'weight must have shape \(3, 4, 1, 1\)'):
        C.pointwise_conv2d_forward(X, np.zeros((3, 4, 3, 3)))


@pytest.mark.parametrize('call, error, match', [      # torch raises on these, and so does numpyconv
    (lambda: C.conv2d_forward(X, np.zeros((0, 2, 3, 3)), groups=2), ValueError,
     r'at least one output channel, got shape \(0, 2, 3, 3\)'),
    (lambda: C.conv2d_forward(np.zeros((2, 4, 0, 5)), W, padding=2, groups=2), ValueError,
     r'H, W >= 1.*got spatial size \(0, 5\)'),
    (lambda: C.pointwise_conv2d_forward(X, np.zeros((0, 4, 1, 1))), ValueError,
     r'weight must have shape \(C_out >= 1, 4, 1, 1\)'),
    (lambda: C.pointwise_conv2d_forward(np.zeros((2, 4, 5, 0)), np.zeros((3, 4, 1, 1))), ValueError,
     r'got spatial size \(5, 0\)'),
])
def test_empty_output_channels_and_spatial_size_rejected(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize('dout, error, match', [      # a list: TypeError naming dout
    ([[0.0]], TypeError, r'dout must be a numpy.ndarray of shape \(2, 3, 5, 5\), got list'),
    (np.zeros((2, 3, 5, 5), dtype=np.int64), TypeError, 'dout must be a real floating array.*int64'),
    (np.zeros((2, 3, 5, 5), dtype=complex), TypeError, 'dout must be a real floating array.*complex'),
    (np.zeros((3, 5, 5)), ValueError, r'dout must have shape \(2, 3, 5, 5\), got \(3, 5, 5\)'),
])
def test_pointwise_backward_rejects_bad_dout(dout, error, match):
    _, cache = C.pointwise_conv2d_forward(X, np.zeros((3, 4, 1, 1)))
    with pytest.raises(error, match=match):
        C.pointwise_conv2d_backward(dout, cache)


@pytest.mark.parametrize('kwargs, error, match', [     # messages name dw_weight / pw_weight
    (dict(dw_weight=np.zeros((6, 1, 3, 3))), ValueError, r'dw_weight must have shape \(C \* multiplier'),
    (dict(pw_weight=np.zeros((5, 4, 1, 1))), ValueError,
     r'pw_weight must have shape \(5, 8, 1, 1\) for the 8 channels of the depthwise output, got \(5, 4'),
    (dict(dw_bias=np.zeros(4)), ValueError, r'dw_bias must have shape \(8,\), got \(4,\)'),
    (dict(pw_bias=np.zeros(4)), ValueError, r'pw_bias must have shape \(5,\), got \(4,\)'),
    (dict(pw_weight=np.zeros((5, 8, 1, 1), np.float32)), TypeError, 'pw_weight: float32'),
    (dict(dw_bias=[0.0] * 8), TypeError, 'dw_bias must be a numpy.ndarray'),
])
def test_separable_errors_name_the_argument(kwargs, error, match):
    args = dict(x=X, dw_weight=np.zeros((8, 1, 3, 3)), pw_weight=np.zeros((5, 8, 1, 1)), dw_bias=None,
                pw_bias=None)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        C.separable_conv2d_forward(**args)


# -- optional cross-check against PyTorch ------------------------------------------------------------------
@pytest.mark.parametrize('case', GRID)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")   # torch's own notice
def test_against_torch(case):
    torch = pytest.importorskip('torch')
    n, c_in, c_out, h, w, k, s, p, d, g = case
    x, wt, b = operands(n, c_in, c_out, h, w, k, g)
    y, cache = C.conv2d_forward(x, wt, b, s, p, d, g)
    dy = RNG.standard_normal(y.shape)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, s, p, d, g)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(C.conv2d_backward(dy, cache), (tx, tw, tb)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_conv2d_layer_loads_torch_state_dict():
    torch = pytest.importorskip('torch')
    module = torch.nn.Conv2d(4, 6, (3, 2), (2, 1), (1, 0), (1, 2), groups=2).double()
    layer = nc.Conv2d(4, 6, (3, 2), (2, 1), (1, 0), (1, 2), groups=2, dtype=np.float64)
    layer.load_state_dict({k: v.numpy() for k, v in module.state_dict().items()})
    x = RNG.standard_normal((2, 4, 7, 8))
    np.testing.assert_allclose(layer(x), module(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_column_budget_changed_between_forward_and_backward(set_budget):
    x, wt, b = operands(4, 4, 6, 8, 8, 3, 2)
    y, cache = C.conv2d_forward(x, wt, b, 1, 1, 1, 2)          # two-sample blocks in the forward
    expected = C.conv2d_backward(np.ones_like(y), cache)
    set_budget(4 * 9 * 64 * 8)                                   # one sample's columns per block
    got = C.conv2d_backward(np.ones_like(y), cache)
    for a, c in zip(expected, got):
        np.testing.assert_allclose(a, c, atol=1e-12)


@pytest.mark.parametrize('layer', [nc.Conv2d(4, 6, 3), nc.SeparableConv2d(4, 6, 3), nc.Involution2d(16, 3),
                                   nc.DCNv3(16, group=2), nc.DCNv4(16, group=2), nc.DeformConv2d(4, 6, 3)])
def test_count_rejects_a_wrong_input_shape(layer):
    with pytest.raises(ValueError, match=r'input_shape must be \(N, \d+, H, W\), got \(2, 3, 8, 8\)'):
        nc.count(layer, (2, 3, 8, 8))
    with pytest.raises(ValueError, match=r'input_shape must be \(N, \d+, H, W\), got \(3, 8, 8\)'):
        nc.count(layer, (3, 8, 8))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_geometry_im2col_matches_reference_and_col2im_is_its_adjoint(data):
    d = data.draw
    kh, kw, sh, sw = d(st.integers(1, 3)), d(st.integers(1, 3)), d(st.integers(1, 3)), d(st.integers(1, 3))
    dh, dw = d(st.integers(1, 2)), d(st.integers(1, 2))
    padding = d(st.sampled_from(['same', 'valid', 0, 1, 2, (0, 2), (2, 1)])) if (sh, sw) == (1, 1) \
        else d(st.sampled_from(['valid', 0, 1, (0, 2)]))
    geo0 = C.conv_geometry((50, 50), (kh, kw), (sh, sw), padding, (dh, dw))      # the pads it resolves to
    h = d(st.integers(max(1, dh * (kh - 1) + 1 - geo0.pads[0] - geo0.pads[1]), 8))
    w = d(st.integers(max(1, dw * (kw - 1) + 1 - geo0.pads[2] - geo0.pads[3]), 8))
    x = RNG.standard_normal((d(st.integers(0, 2)), d(st.integers(1, 3)), h, w))
    geo = C.conv_geometry((h, w), (kh, kw), (sh, sw), padding, (dh, dw))
    expected = ref.im2col(pad_nchw(x, geo.pads), geo.kernel, geo.stride, geo.dilation, geo.out_hw)
    for path in ('loop', 'slices'):
        with im2col_copies(path):
            cols = im2col(x, (kh, kw), (sh, sw), padding, (dh, dw))
        np.testing.assert_array_equal(cols, expected)
    c = RNG.standard_normal(cols.shape)
    back = col2im(c, (h, w), (sh, sw), padding, (dh, dw))
    assert abs(np.vdot(cols, c) - np.vdot(x, back)) <= 1e-12 * max(1.0, abs(np.vdot(cols, c)))


@pytest.mark.parametrize('stride', [2, np.int64(2), (2, np.int32(2)), [2, 2]])
def test_hyper_parameters_take_any_integer_kind(stride):
    x, w = RNG.standard_normal((1, 2, 6, 6)), RNG.standard_normal((3, 2, 3, 3))
    np.testing.assert_array_equal(C.conv2d_forward(x, w, stride=stride, padding=np.int64(1))[0],
                                  C.conv2d_forward(x, w, stride=2, padding=1)[0])


@pytest.mark.parametrize('name', ['stride', 'padding', 'dilation'])
@pytest.mark.parametrize('value', [True, np.bool_(True), 1.0, (1, True), (1, 1.0), (1, 1, 1), '1'])
def test_hyper_parameters_reject_bools_floats_and_other_values(name, value):
    x, w = RNG.standard_normal((1, 2, 6, 6)), RNG.standard_normal((3, 2, 3, 3))
    with pytest.raises((TypeError, ValueError), match=name):
        C.conv2d_forward(x, w, **{name: value})
