"""deform_conv2d (DCNv1/v2) and the mmcv Pack layers: reference, gradcheck, identities, errors, torch."""
import numba
import numpy as np
import pytest

import numpyconv as nc
import numpyconv._parallel
from numpyconv import deformable as D
from numpyconv.check import registered, run_case
from numpyconv.conv import conv2d_forward
from numpyconv.reference import deformable as ref

RNG = np.random.default_rng(2024)

# (N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups, offset_groups)
GRID = [
    (2, 6, 2, 5, 4, (3, 2), (2, 1), (1, 0), (2, 1), 2, 3),   # the torchvision test geometry
    (1, 4, 6, 6, 5, 3, 1, 1, 1, 1, 1),
    (2, 4, 4, 7, 6, 3, 2, 2, 2, 2, 2),                       # stride 2, dilation 2
    (1, 3, 3, 5, 5, (2, 3), 1, (0, 1), 1, 3, 3),             # offset groups = C, depthwise
    (0, 6, 2, 5, 4, (3, 2), (2, 1), (1, 0), (2, 1), 2, 3),   # batch 0
]


def operands(n, c_in, c_out, h, w, kernel, stride, padding, dilation, groups, og, *, scale=2.5,
             dtype=np.float64, mask=True, bias=True):
    """Random operands; offsets uniform in (-scale, scale): non-integer, crossing the borders."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    geo = nc.conv_geometry((h, w), (kh, kw), stride, padding, dilation)
    x = RNG.standard_normal((n, c_in, h, w)).astype(dtype)
    offset = RNG.uniform(-scale, scale, (n, 2 * og * kh * kw) + geo.out_hw).astype(dtype)
    weight = RNG.standard_normal((c_out, c_in // groups, kh, kw)).astype(dtype)
    b = RNG.standard_normal(c_out).astype(dtype) if bias else None
    m = RNG.uniform(0, 1, (n, og * kh * kw) + geo.out_hw).astype(dtype) if mask else None
    return x, offset, weight, b, m


def hyper(case):
    return dict(stride=case[6], padding=case[7], dilation=case[8])


def forward_of(case):
    return lambda x, o, w, b, m: D.deform_conv2d_forward(x, o, w, b, mask=m, **hyper(case))


@pytest.mark.parametrize('op', ['deform_conv2d', 'dcnv3'])
def test_reference_loops_take_infinite_and_nan_offsets_as_the_ops_do(op):
    """A point at an infinite or NaN coordinate is within 1 of no pixel: value and slopes 0 in the
    reference loops as in the fast ops (no int() of an infinity)."""
    import numpyconv.reference as R
    rng = np.random.default_rng(5)
    if op == 'deform_conv2d':
        x, w = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((3, 2, 3, 3))
        offset, mask = rng.standard_normal((1, 18, 2, 2)), rng.random((1, 9, 2, 2))
        args, kwargs = (x, offset, w), dict(mask=mask)
    else:
        x, offset = rng.standard_normal((1, 3, 3, 2)), rng.standard_normal((1, 3, 3, 18))
        mask = rng.random((1, 3, 3, 9))
        args, kwargs = (x, offset, mask, 3, 1, 1, 1, 1, 2), {}
    offset.flat[[0, 7, 12]] = np.inf, np.nan, -np.inf
    y, cache = getattr(nc, op + '_forward')(*args, **kwargs)
    np.testing.assert_allclose(getattr(R, op)(*args, **kwargs), y, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    for ours, theirs in zip(getattr(nc, op + '_backward')(dout, cache),
                            getattr(R, op + '_backward')(dout, *args, **kwargs)):
        if ours is not None:
            np.testing.assert_allclose(theirs, ours, rtol=1e-12, atol=1e-12)


# -- forward against the loop reference, gradcheck ------------------------------------------------
@pytest.mark.parametrize('case', GRID)
@pytest.mark.parametrize('mask', [True, False])
def test_forward_matches_reference(case, mask):
    x, o, w, b, m = operands(*case, mask=mask)
    y, _ = D.deform_conv2d_forward(x, o, w, b, mask=m, **hyper(case))
    expected = ref.deform_conv2d(x, o, w, b, mask=m, **hyper(case))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('case', GRID[:4])
@pytest.mark.parametrize('mask', [True, False])
def test_gradcheck_every_gradient(case, mask):
    inputs = operands(*case, mask=mask)
    nc.gradcheck(forward_of(case), D.deform_conv2d_backward, inputs)


def test_offsets_cross_every_border():
    """The gradcheck offsets put samples left, right, above and below the image and on all sides of -1."""
    case = GRID[0]
    n, _, _, h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw), _, og = case
    _, o, _, _, _ = operands(*case)
    oy, ox = np.indices(o.shape[2:])
    taps = o.reshape(n, og, kh, kw, 2, *o.shape[2:])
    rows = oy * sh - ph + np.arange(kh)[:, None, None, None] * dh + taps[:, :, :, :, 0]
    cols = ox * sw - pw + np.arange(kw)[None, :, None, None] * dw + taps[:, :, :, :, 1]
    assert rows.min() < -1 and rows.max() > h and cols.min() < -1 and cols.max() > w
    assert ((rows > -1) & (rows < 0)).any() and ((rows > h - 1) & (rows < h)).any()
    assert ((cols > -1) & (cols < 0)).any() and ((cols > w - 1) & (cols < w)).any()


def test_coordinate_gradient_separately():
    """1x1 kernel, one channel, unit weight: y = m * B(x, h, w), so doffset = m * (dB/dh, dB/dw) and
    dmask = B at every sampled point, compared with central differences of the reference bilinear."""
    x = RNG.standard_normal((1, 1, 4, 5))
    offset = RNG.uniform(-2.2, 2.2, (1, 2, 4, 5))
    mask = RNG.uniform(0.2, 1.0, (1, 1, 4, 5))
    y, cache = D.deform_conv2d_forward(x, offset, np.ones((1, 1, 1, 1)), mask=mask)
    _, doffset, _, _, dmask = D.deform_conv2d_backward(np.ones_like(y), cache)
    eps = 1e-6
    for r in range(4):
        for c in range(5):
            h, w = r + offset[0, 0, r, c], c + offset[0, 1, r, c]
            dbdh = (ref.bilinear(x[0, 0], h + eps, w) - ref.bilinear(x[0, 0], h - eps, w)) / (2 * eps)
            dbdw = (ref.bilinear(x[0, 0], h, w + eps) - ref.bilinear(x[0, 0], h, w - eps)) / (2 * eps)
            m = mask[0, 0, r, c]
            np.testing.assert_allclose(doffset[0, :, r, c], [m * dbdh, m * dbdw], atol=1e-8)
            np.testing.assert_allclose(dmask[0, 0, r, c], ref.bilinear(x[0, 0], h, w), atol=1e-12)


def test_coordinate_gradient_at_integer_points_is_right_derivative_including_minus_one():
    """torchvision's ``get_coordinate_weight`` (no ``(-1, H)`` exit): at every integer coordinate, also
    exactly -1 where the sample itself is 0, the offset gradient is the right-hand slope of B.
    B is linear on ``[t, t + 1)``, so a one-sided difference is exact up to rounding."""
    height, width = 3, 4
    img = RNG.standard_normal((height, width))
    rows, cols = np.meshgrid(np.arange(-2.0, height + 1), np.arange(-2.0, width + 1), indexing='ij')
    rows, cols = rows.ravel(), cols.ravel()
    cols = np.concatenate([cols, cols + 0.25])                          # integer rows, inner columns
    rows = np.concatenate([rows, rows])
    x = np.repeat(img[None, None], rows.size, axis=0)                  # one sample per point
    offset = np.zeros((rows.size, 2, height, width))                   # 1x1 kernel: output (0, 0)
    offset[:, 0, 0, 0], offset[:, 1, 0, 0] = rows, cols                # samples at (h, w) itself
    y, cache = D.deform_conv2d_forward(x, offset, np.ones((1, 1, 1, 1)))
    doffset = D.deform_conv2d_backward(np.ones_like(y), cache)[1][:, :, 0, 0]
    eps = 2.0 ** -20
    for q, (h, w) in enumerate(zip(rows, cols)):
        slope_h = (ref.bilinear(img, h + eps, w) - ref.bilinear(img, h, w)) / eps
        slope_w = (ref.bilinear(img, h, w + eps) - ref.bilinear(img, h, w)) / eps
        np.testing.assert_allclose(doffset[q], [slope_h, slope_w], atol=1e-9,
                                   err_msg=f"at (h, w) = ({h}, {w})")
    at_minus_one = (rows == -1) & (cols >= 0) & (cols <= width - 1)
    assert np.abs(doffset[at_minus_one, 0]).min() > 0                  # the torchvision case


@pytest.mark.parametrize('wrt', ['offset', 'mask'])
def test_gradcheck_coordinate_inputs_full(wrt):
    case = GRID[2]
    inputs = operands(*case)
    nc.gradcheck(forward_of(case), D.deform_conv2d_backward, inputs, mode='full', wrt=wrt,
                 names=['x', 'offset', 'weight', 'bias', 'mask'])


def test_input_gradient_is_adjoint_of_sampling():
    """<cols(x), c> == <x, cols^T(c)> for fixed offsets and mask (eq. 7 is the transpose of eq. 4)."""
    x, o, w, b, m = operands(*GRID[0])
    _, cache = D.deform_conv2d_forward(x, o, w, b, mask=m, **hyper(GRID[0]))
    geo, plan = cache['geo'], cache['plan']
    cols = D._deform_im2col(x, plan, geo)
    c = RNG.standard_normal(cols.shape)
    back = np.full(x.shape, np.nan)                                      # every entry is written
    D._deform_col2im(c, plan, back)
    lhs = np.sum(cols * c)
    rhs = np.sum(x * back)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


# -- identities -------------------------------------------------------------------------------------
@pytest.mark.parametrize('case', GRID[:3])
def test_zero_offsets_unit_mask_is_conv2d(case):
    x, o, w, b, m = operands(*case)
    groups = case[1] // w.shape[1]
    expected, _ = conv2d_forward(x, w, b, groups=groups, **hyper(case))
    for mask in (None, np.ones_like(m)):
        y, _ = D.deform_conv2d_forward(x, np.zeros_like(o), w, b, mask=mask, **hyper(case))
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_integer_offset_is_shifted_conv2d():
    """A constant offset (dy, dx) = (a, b) samples x'[h, w] = x[h + a, w + b] (zero outside)."""
    x, o, w, b, _ = operands(2, 4, 3, 7, 6, 3, 1, 0, 1, 1, 2)
    a, bb = 2, -1
    offset = np.zeros_like(o)
    offset[:, 0::2], offset[:, 1::2] = a, bb
    shifted = np.zeros_like(x)
    shifted[:, :, :7 - a, 1:] = x[:, :, a:, :6 - 1]                   # x'[h, w] = x[h + 2, w - 1]
    y, _ = D.deform_conv2d_forward(x, offset, w, b)                     # padding 0: every base point
    expected, _ = conv2d_forward(shifted, w, b)                         # lies inside the image
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_constant_mask_scales_output():
    x, o, w, _, m = operands(*GRID[1])
    y1, _ = D.deform_conv2d_forward(x, o, w, padding=1)
    y2, _ = D.deform_conv2d_forward(x, o, w, padding=1, mask=np.full_like(m, 0.3))
    np.testing.assert_allclose(y2, 0.3 * y1, rtol=1e-12, atol=1e-12)


def test_column_budget_chunks_give_same_result(set_budget):
    case = GRID[2]
    inputs = operands(*case)
    y, cache = forward_of(case)(*inputs)
    dy = RNG.standard_normal(y.shape)
    grads = D.deform_conv2d_backward(dy, cache)
    _, cache3 = forward_of(case)(*inputs)
    set_budget(1)                                                      # one sample per chunk
    y2, cache2 = forward_of(case)(*inputs)
    grads2 = D.deform_conv2d_backward(dy, cache2)
    grads3 = D.deform_conv2d_backward(dy, cache3)                      # budget changed in between
    assert cache2['cols'] is None
    np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
    for g1, g2, g3 in zip(grads, grads2, grads3):
        np.testing.assert_allclose(g2, g1, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(g3, g1)


# -- contract: errors, dtype, mutation, determinism -------------------------------------------------
def test_error_inputs():
    x, o, w, b, m = operands(*GRID[0])
    kw = hyper(GRID[0])
    with pytest.raises(ValueError, match=r"offset must have .*\(2, 2\*og\*6, 2, 3\).*got \(2, 35, 2, 3\)"):
        D.deform_conv2d_forward(x, o[:, :35], w, b, mask=m, **kw)
    with pytest.raises(ValueError, match=r"offset must have shape \(2, 36, 2, 3\), got \(2, 36, 2, 2\)"):
        D.deform_conv2d_forward(x, o[..., :2], w, b, mask=m, **kw)
    with pytest.raises(ValueError, match=r"offset_groups og dividing C_in=6"):   # og = 4 does not divide 6
        D.deform_conv2d_forward(x, np.zeros((2, 48, 2, 3)), w, b, **kw)
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 18, 2, 3\), got \(2, 6, 2, 3\)"):
        D.deform_conv2d_forward(x, o, w, b, mask=m[:, :6], **kw)
    with pytest.raises(ValueError, match=r"groups dividing C_in=6.*\(2, 4, 3, 2\)"):
        D.deform_conv2d_forward(x, o, np.zeros((2, 4, 3, 2)), **kw)
    with pytest.raises(ValueError, match=r"groups dividing C_in=6.*\(4, 2, 3, 2\)"):   # C_out=4, groups=3
        D.deform_conv2d_forward(x, o, np.zeros((4, 2, 3, 2)), **kw)
    with pytest.raises(ValueError, match=r"kh, kw >= 1.*\(2, 3, 0, 2\)"):           # names weight
        D.deform_conv2d_forward(x, o, np.zeros((2, 3, 0, 2)), **kw)
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\), got \(3,\)"):
        D.deform_conv2d_forward(x, o, w, np.zeros(3), **kw)
    with pytest.raises(TypeError, match="same float dtype"):
        D.deform_conv2d_forward(x, o.astype(np.float32), w, b, **kw)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        D.deform_conv2d_forward(x.astype(np.int64), o, w, b, **kw)
    with pytest.raises(ValueError, match="x must be"):
        D.deform_conv2d_forward(x[0], o, w, b, **kw)
    with pytest.raises(ValueError, match="kernel_size"):
        D.deform_conv2d_forward(x[:, :, :1], o, w, b, **kw)
    y, cache = D.deform_conv2d_forward(x, o, w, b, mask=m, **kw)
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 2, 2, 3\)"):
        D.deform_conv2d_backward(y[:, :1], cache)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_dtype_preserved_and_float32_close(dtype):
    case = GRID[0]
    inputs = operands(*case, dtype=dtype)
    y, cache = forward_of(case)(*inputs)
    grads = D.deform_conv2d_backward(np.ones_like(y), cache)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    y64, _ = forward_of(case)(*(a.astype(np.float64) for a in inputs))
    np.testing.assert_allclose(y, y64, rtol=1e-4, atol=1e-4)


def test_inputs_not_mutated():
    case = GRID[0]
    inputs = operands(*case)
    copies = [a.copy() for a in inputs]
    for a in inputs:
        a.flags.writeable = False                                     # read-only inputs work too
    y, cache = forward_of(case)(*inputs)
    dy = RNG.standard_normal(y.shape)
    dy_copy = dy.copy()
    dy.flags.writeable = False
    D.deform_conv2d_backward(dy, cache)
    for a, c in zip(inputs + (dy,), copies + [dy_copy]):
        np.testing.assert_array_equal(a, c)


def test_deterministic_bitwise_and_thread_count_independent():
    case = (2, 16, 8, 16, 16, 3, 1, 1, 1, 2, 2)                        # above PARALLEL_MIN_WORK
    assert 2 * 16 * 9 * 16 * 16 >= numpyconv._parallel.PARALLEL_MIN_WORK
    inputs = operands(*case, dtype=np.float32)
    threads = numba.get_num_threads()
    runs = []
    for count in (threads, threads, 1):
        numba.set_num_threads(count)
        try:
            y, cache = forward_of(case)(*inputs)
            runs.append((y,) + D.deform_conv2d_backward(np.ones_like(y), cache))
        finally:
            numba.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert np.array_equal(a, b)


def test_non_contiguous_inputs():
    x, o, w, b, m = operands(2, 4, 4, 6, 6, 3, 1, 1, 1, 1, 1)
    xs = np.asfortranarray(x)
    os_ = np.concatenate([o, o], axis=1)[:, ::2]                      # strided view, a different offset
    y, cache = D.deform_conv2d_forward(xs, os_, w, b, padding=1, mask=m)
    np.testing.assert_allclose(y, ref.deform_conv2d(x, np.ascontiguousarray(os_), w, b, padding=1, mask=m),
                               rtol=1e-12, atol=1e-12)


def test_registered_check_case_passes():
    assert 'deform_conv2d' in registered()
    row = run_case('deform_conv2d', registered()['deform_conv2d'])
    assert row['ok'], row


# -- layers -----------------------------------------------------------------------------------------
def random_params(layer, scale=0.3):
    """Non-zero parameters (conv_offset too, so that offsets are non-integer)."""
    for value in layer.params.values():
        value[...] = RNG.uniform(-scale, scale, value.shape)


@pytest.mark.parametrize('cls, n_values', [(nc.DeformConv2d, 2), (nc.ModulatedDeformConv2d, 3)])
def test_layer_keys_shapes_and_init(cls, n_values):
    layer = cls(4, 6, (3, 2), stride=2, padding=1, groups=2, deform_groups=2, rng=0)
    shapes = {k: v.shape for k, v in layer.state_dict().items()}
    expected = {'weight': (6, 2, 3, 2), 'conv_offset.weight': (2 * n_values * 6, 4, 3, 2),
                'conv_offset.bias': (2 * n_values * 6,)}
    if cls is nc.ModulatedDeformConv2d:
        expected['bias'] = (6,)
    assert shapes == expected
    assert not layer.params['conv_offset.weight'].any() and not layer.params['conv_offset.bias'].any()
    fan_in = 2 * 6 if cls is nc.DeformConv2d else 4 * 6
    bound = np.sqrt(6 / fan_in) if cls is nc.DeformConv2d else 1 / np.sqrt(fan_in)
    assert np.abs(layer.params['weight']).max() <= bound
    assert layer.params['weight'].dtype == np.float32


def test_modulated_layer_at_init_is_half_conv2d_plus_bias():
    layer = nc.ModulatedDeformConv2d(3, 4, 3, padding=1, dtype=np.float64, rng=1)
    layer.params['bias'][...] = RNG.standard_normal(4)
    x = RNG.standard_normal((2, 3, 5, 6))
    plain, _ = conv2d_forward(x, layer.params['weight'], padding=1)
    np.testing.assert_allclose(layer(x), 0.5 * plain + layer.params['bias'][:, None, None], atol=1e-12)


def test_deform_layer_at_init_is_conv2d():
    layer = nc.DeformConv2d(3, 4, 3, stride=2, padding=1, dtype=np.float64, rng=1)
    x = RNG.standard_normal((2, 3, 5, 6))
    plain, _ = conv2d_forward(x, layer.params['weight'], stride=2, padding=1)
    np.testing.assert_allclose(layer(x), plain, atol=1e-12)


@pytest.mark.parametrize('cls', [nc.DeformConv2d, nc.ModulatedDeformConv2d])
def test_layer_gradcheck(cls):
    layer = cls(4, 4, 3, stride=1, padding=1, groups=2, deform_groups=2, dtype=np.float64, rng=3)
    random_params(layer)
    nc.gradcheck_layer(layer, RNG.standard_normal((1, 4, 4, 4)))


def test_layer_gradients_accumulate():
    layer = nc.ModulatedDeformConv2d(2, 2, 3, padding=1, dtype=np.float64, rng=4)
    random_params(layer)
    x = RNG.standard_normal((1, 2, 4, 4))
    dy = RNG.standard_normal(layer(x).shape)
    layer.backward(dy)
    once = {k: g.copy() for k, g in layer.grads.items()}
    layer(x)
    layer.backward(dy)
    for k, g in layer.grads.items():
        np.testing.assert_allclose(g, 2 * once[k], rtol=1e-12)


def test_layer_errors_and_state_dict_round_trip():
    with pytest.raises(ValueError, match="no bias"):
        nc.DeformConv2d(4, 4, 3, bias=True)
    with pytest.raises(ValueError, match="groups=3 must divide in_channels=4"):
        nc.ModulatedDeformConv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="deform_groups=3 must divide in_channels=4"):
        nc.DeformConv2d(4, 4, 3, deform_groups=3)
    layer = nc.ModulatedDeformConv2d(2, 3, 3, padding=1, bias=False, rng=5)
    assert 'bias' not in layer.state_dict()
    random_params(layer)
    other = nc.ModulatedDeformConv2d(2, 3, 3, padding=1, bias=False, rng=6)
    other.load_state_dict(layer.state_dict())
    x = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(other(x), layer(x))
    with pytest.raises(TypeError, match="dtype"):
        layer(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2, H, W\)"):
        layer(x[:, :1])


def test_legacy_offset_keys_load():
    """mmcv (version < 2) checkpoints name the offset conv ``<name>_offset``: '_offset.*' at top level."""
    layer = nc.DeformConv2d(2, 2, 3, rng=0)
    random_params(layer)
    legacy = {k.replace('conv_offset.', '_offset.'): v for k, v in layer.state_dict().items()}
    other = nc.DeformConv2d(2, 2, 3, rng=1)
    other.load_state_dict(legacy)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)


def test_macs():
    layer = nc.ModulatedDeformConv2d(4, 8, 3, stride=2, padding=1)
    params, macs = nc.count(layer, (2, 4, 8, 8))
    n, hw, k = 2, 16, 9
    expected = n * 8 * hw * 4 * k + n * 27 * hw * 4 * k + n * 4 * k * hw * 5
    assert macs == expected and params == 8 * 4 * 9 + 8 + 27 * 4 * 9 + 27
    assert layer.macs((2, 4, 8, 8))[1] == (2, 8, 4, 4)


# -- DCNv3 layout mapping (docs/derivations/deformable.md, eq. 13) -------------------------------------
def test_dcnv3_offsets_map_to_deform_conv2d():
    dcnv3 = pytest.importorskip('numpyconv.dcnv3')
    if not hasattr(dcnv3, 'dcnv3_forward'):
        pytest.skip('numpyconv.dcnv3.dcnv3_forward not available')
    n, h, w, g, d, kh, kw = 1, 5, 6, 2, 3, 3, 3
    x = RNG.standard_normal((n, h, w, g * d))
    off3 = RNG.uniform(-1.7, 1.7, (n, h, w, g * kh * kw * 2))
    mask3 = RNG.uniform(0, 1, (n, h, w, g * kh * kw))
    y3, _ = dcnv3.dcnv3_forward(x, off3, mask3, 3, 1, 1, 1, g, d)
    offset = (off3.reshape(n, h, w, g, kw, kh, 2)[..., ::-1]          # (dx, dy) -> (dy, dx)
              .transpose(0, 3, 5, 4, 6, 1, 2).reshape(n, g * kh * kw * 2, h, w))
    mask = mask3.reshape(n, h, w, g, kw, kh).transpose(0, 3, 5, 4, 1, 2).reshape(n, g * kh * kw, h, w)
    y, _ = D.deform_conv2d_forward(x.transpose(0, 3, 1, 2), offset, np.ones((g * d, 1, kh, kw)),
                                   padding=1, mask=mask)
    # dcnv3 rounds its grid to float32 as dcnv3_core_pytorch does (dcnv3.md eq. 2a): < 1e-6 pixel
    np.testing.assert_allclose(y.transpose(0, 2, 3, 1), y3, rtol=1e-5, atol=1e-5)


# -- optional cross-checks against torchvision and mmcv-style torch Pack layers -------------------------
def torch_grads(torch, fn, arrays):
    tensors = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    dy = RNG.standard_normal(tuple(out.shape))
    out.backward(torch.tensor(dy))
    return out.detach().numpy(), dy, [None if t is None else t.grad.numpy() for t in tensors]


@pytest.mark.parametrize('case', GRID)
@pytest.mark.parametrize('mask', [True, False])
def test_against_torchvision(case, mask):
    torch = pytest.importorskip('torch')
    ops = pytest.importorskip('torchvision.ops')
    inputs = operands(*case, mask=mask)
    expected, dy, grads = torch_grads(
        torch, lambda x, o, w, b, m: ops.deform_conv2d(x, o, w, b, mask=m, **hyper(case)), inputs)
    y, cache = forward_of(case)(*inputs)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(D.deform_conv2d_backward(dy, cache), grads):
        if theirs is None:
            assert ours is None
        else:
            np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_against_torchvision_float32():
    torch = pytest.importorskip('torch')
    ops = pytest.importorskip('torchvision.ops')
    case = (2, 8, 8, 9, 9, 3, 1, 1, 1, 1, 2)
    inputs = operands(*case, dtype=np.float32)
    expected, dy, grads = torch_grads(
        torch, lambda x, o, w, b, m: ops.deform_conv2d(x, o, w, b, mask=m, **hyper(case)), inputs)
    y, cache = forward_of(case)(*inputs)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(D.deform_conv2d_backward(dy.astype(np.float32), cache), grads):
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)


def assert_layer_matches_module(torch, layer, module, x):
    """Output, input gradient and every parameter gradient of ``layer`` equal the torch module's."""
    tx = torch.tensor(x, requires_grad=True)
    out = module(tx)
    dy = RNG.standard_normal(tuple(out.shape))
    out.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer(x), out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(layer.grads[name], p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def mmcv_pack(torch, ops, modulated, in_c, out_c, kernel, stride, padding, dilation, groups, dg, bias):
    """Torch re-creation of mmcv DeformConv2dPack / ModulatedDeformConv2dPack (same keys, same forward)."""
    kh, kw = kernel

    class Pack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(out_c, in_c // groups, kh, kw, dtype=torch.float64))
            self.bias = torch.nn.Parameter(torch.randn(out_c, dtype=torch.float64)) if bias else None
            self.conv_offset = torch.nn.Conv2d(in_c, dg * (3 if modulated else 2) * kh * kw, kernel, stride,
                                               padding, dilation, bias=True, dtype=torch.float64)
            torch.nn.init.uniform_(self.conv_offset.weight, -0.3, 0.3)
            torch.nn.init.uniform_(self.conv_offset.bias, -0.3, 0.3)

        def forward(self, x):
            out = self.conv_offset(x)
            mask = None
            if modulated:
                o1, o2, logits = torch.chunk(out, 3, dim=1)
                out, mask = torch.cat((o1, o2), dim=1), torch.sigmoid(logits)
            return ops.deform_conv2d(x, out, self.weight, self.bias, stride, padding, dilation, mask)
    return Pack()


@pytest.mark.parametrize('modulated, bias', [(False, False), (True, True), (True, False)])
def test_against_mmcv_style_torch_pack(modulated, bias):
    torch = pytest.importorskip('torch')
    ops = pytest.importorskip('torchvision.ops')
    torch.manual_seed(0)
    geometry = dict(kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2, dg=3)
    module = mmcv_pack(torch, ops, modulated, 6, 4, bias=bias, **geometry)
    cls = nc.ModulatedDeformConv2d if modulated else nc.DeformConv2d
    extra = dict(bias=bias) if modulated else {}
    layer = cls(6, 4, (3, 2), (2, 1), (1, 0), (2, 1), groups=2, deform_groups=3, dtype=np.float64, **extra)
    layer.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})
    x = RNG.standard_normal((2, 6, 7, 5))
    assert_layer_matches_module(torch, layer, module, x)


@pytest.mark.parametrize('modulated', [False, True])
def test_against_mmcv_style_torch_pack_at_init(modulated):
    """mmcv's zero-initialised ``conv_offset`` puts samples exactly on -1 (padding 1): the
    ``conv_offset`` gradients there follow torchvision's coordinate weight."""
    torch = pytest.importorskip('torch')
    ops = pytest.importorskip('torchvision.ops')
    torch.manual_seed(1)
    module = mmcv_pack(torch, ops, modulated, 4, 4, (3, 3), 1, 1, 1, 1, 2, bias=modulated)
    torch.nn.init.zeros_(module.conv_offset.weight)
    torch.nn.init.zeros_(module.conv_offset.bias)
    cls = nc.ModulatedDeformConv2d if modulated else nc.DeformConv2d
    layer = cls(4, 4, 3, padding=1, deform_groups=2, dtype=np.float64)
    layer.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})
    x = RNG.standard_normal((2, 4, 5, 6))
    assert_layer_matches_module(torch, layer, module, x)


def test_against_torchvision_on_integer_and_border_coordinates():
    """Integer offsets, many landing exactly on -1, 0, H-1 and H (and W-side likewise)."""
    torch = pytest.importorskip('torch')
    ops = pytest.importorskip('torchvision.ops')
    case = GRID[0]
    x, o, w, b, m = operands(*case)
    o = RNG.integers(-4, 5, o.shape).astype(np.float64)
    expected, dy, grads = torch_grads(
        torch, lambda x, o, w, b, m: ops.deform_conv2d(x, o, w, b, mask=m, **hyper(case)), (x, o, w, b, m))
    y, cache = forward_of(case)(x, o, w, b, m)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(D.deform_conv2d_backward(dy, cache), grads):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_interleaved_passes_of_two_calls_do_not_share_memory():
    # fwd a, fwd b, bwd b, bwd a (two layers in a network) equals each pair run on its own: the
    # kept columns are per call, and dcols (per-thread scratch) only lives inside one backward
    def operands(seed):
        rng = np.random.default_rng(seed)
        return (rng.standard_normal((2, 4, 5, 6)), 2 * rng.standard_normal((2, 18, 5, 6)),
                rng.standard_normal((6, 4, 3, 3)), None, 1, 1, 1, rng.uniform(0, 1, (2, 9, 5, 6)))
    (ya, ca), (yb, cb) = (D.deform_conv2d_forward(*operands(s)) for s in (1, 2))
    grads_b = D.deform_conv2d_backward(np.ones_like(yb), cb)
    grads_a = D.deform_conv2d_backward(np.ones_like(ya), ca)
    for seed, (y, grads) in ((1, (ya, grads_a)), (2, (yb, grads_b))):
        y_alone, cache = D.deform_conv2d_forward(*operands(seed))
        np.testing.assert_array_equal(y, y_alone)
        for g, g_alone in zip(grads, D.deform_conv2d_backward(np.ones_like(y_alone), cache)):
            np.testing.assert_array_equal(g, g_alone)
