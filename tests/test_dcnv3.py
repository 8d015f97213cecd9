"""DCNv3 core op and layer: reference, gradcheck, identities, errors, torch re-creations."""
import numpy as np
import pytest

import numpyconv as nc
import numpyconv._parallel
from numpyconv import dcnv3 as D3
from numpyconv.conv import depthwise_conv2d_forward
from numpyconv import reference as ref

RNG = np.random.default_rng(2024)

# (N, H, W, kernel, stride, padding, dilation, group, group_channels, offset_scale, remove_center)
GRID = [
    (2, 6, 7, 3, 1, 1, 1, 4, 2, 1.0, False),
    (2, 8, 8, 3, 1, 1, 1, 4, 16, 2.0, False),           # the repository's test config (smaller D)
    (1, 7, 6, 3, 2, 1, 2, 1, 1, 2.0, True),              # stride 2, dilation 2, group 1, D 1
    (2, 7, 7, 5, 1, 2, 1, 4, 1, 1.0, True),              # kernel 5 without centre
    (1, 6, 9, (3, 5), (2, 1), (1, 2), (2, 1), 2, 3, 1.5, True),   # non-square everything
    (1, 5, 6, (2, 3), 1, (0, 1), 1, 2, 2, 1.0, False),   # even kernel height
]


def pairs(*values):
    return [(v, v) if isinstance(v, int) else tuple(v) for v in values]


def output_geometry(h, w, kernel, stride, padding, dilation, remove_center):
    """``(Ho, Wo, P)`` for symmetric padding."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pairs(kernel, stride, padding, dilation)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return ho, wo, kh * kw - int(remove_center)


def operands(n, h, w, kernel, stride, padding, dilation, group, d, remove_center,
             spread=3.0, dtype=np.float64):
    """x, offset, mask with offsets uniform in (-spread, spread): they cross every border."""
    ho, wo, npts = output_geometry(h, w, kernel, stride, padding, dilation, remove_center)
    x = RNG.standard_normal((n, h, w, group * d)).astype(dtype)
    offset = RNG.uniform(-spread, spread, (n, ho, wo, group * npts * 2)).astype(dtype)
    mask = RNG.standard_normal((n, ho, wo, group * npts)).astype(dtype)
    return x, offset, mask


# The identities below hold exactly for the exact grid; the ops round the grid to float32 as
# dcnv3_core_pytorch does (eq. 2a), which moves each point by less than 1e-6 pixel.
GRID_TOL = 1e-5


def locations(offset, h, w, kernel, stride, padding, dilation, group, scale, remove_center):
    """Sampling rows and columns (eq. 2), written independently of the op, for coverage checks."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pairs(kernel, stride, padding, dilation)
    taps = [(i, j) for i in range(kw) for j in range(kh)
            if not (remove_center and i == kw // 2 and j == kh // 2)]
    n, ho, wo, _ = offset.shape
    off = offset.reshape(n, ho, wo, group, len(taps), 2)
    ci = np.array([i for i, _ in taps]) * dw - dw * (kw - 1) // 2
    cj = np.array([j for _, j in taps]) * dh - dh * (kh - 1) // 2
    rows = (np.arange(ho) * sh - ph + dh * (kh - 1) // 2)[:, None, None, None]
    cols = (np.arange(wo) * sw - pw + dw * (kw - 1) // 2)[None, :, None, None]
    return (rows + scale * (cj + off[..., 1]), cols + scale * (ci + off[..., 0]))


def assert_crosses_every_border(loc, size):
    """Some samples fall outside (-1, size), in each border band, and inside."""
    assert (loc <= -1).any() and (loc >= size).any()
    assert ((loc > -1) & (loc < 0)).any() and ((loc > size - 1) & (loc < size)).any()
    assert ((loc > 0) & (loc < size - 1)).any()


def run(x, offset, mask, case):
    return D3.dcnv3_forward(x, offset, mask, *case)


# -- forward vs the plain-loop reference --------------------------------------------------------
@pytest.mark.parametrize('config', GRID)
def test_forward_matches_reference(config):
    n, h, w, *case = config
    x, offset, mask = operands(n, h, w, *case[:6], case[7])
    y, _ = run(x, offset, mask, case)
    np.testing.assert_allclose(y, ref.dcnv3(x, offset, mask, *case), rtol=1e-13, atol=1e-13)


# -- gradients ----------------------------------------------------------------------------------
@pytest.mark.parametrize('config', [GRID[0], GRID[2], GRID[4], GRID[5]])
def test_gradcheck_all_inputs_across_borders(config):
    _, h, w, *case = config                          # batch 1: keeps full mode fast
    x, offset, mask = operands(1, h, w, *case[:6], case[7])
    rows, cols = locations(offset, h, w, *case[:5], case[6], case[7])
    assert_crosses_every_border(rows, h)
    assert_crosses_every_border(cols, w)
    report = nc.gradcheck(lambda x, o, m: run(x, o, m, case), D3.dcnv3_backward,
                          (x, offset, mask), mode='full', names=('x', 'offset', 'mask'),
                          atol=1e-7, rtol=1e-6)
    assert all(r.n_checked == a.size for r, a in zip(report.results, (x, offset, mask)))


@pytest.mark.parametrize('scale', [1.0, 2.0, 0.7])
def test_coordinate_gradient_alone(scale):
    """The offset gradient on its own (eq. 7), the scale factor included, near every border."""
    case = (3, 1, 1, 1, 2, 3, scale, False)
    x, offset, mask = operands(2, 5, 6, *case[:6], case[7], spread=2.5)
    nc.gradcheck(lambda o: run(x, o, mask, case), lambda d, c: (D3.dcnv3_backward(d, c)[1],),
                 (offset,), mode='full', atol=1e-7, rtol=1e-6)


def test_coordinate_gradient_matches_bilinear_slope():
    """One point, one channel: d y / d dx = scale * m * dB/dw with B the textbook bilinear."""
    x = RNG.standard_normal((1, 4, 5, 1))
    offset, mask = np.zeros((1, 4, 5, 2)), np.full((1, 4, 5, 1), 0.75)
    offset[0, 1, 2] = (0.3, -0.6)                    # kernel 1: location (1 - 0.6*2, 2 + 0.3*2)
    y, cache = D3.dcnv3_forward(x, offset, mask, 1, 1, 0, 1, 1, 1, 2.0)
    dout = np.zeros_like(y)
    dout[0, 1, 2, 0] = 1.0
    doffset = D3.dcnv3_backward(dout, cache)[1]
    img = x[0, :, :, 0]                              # (h, w) = (-0.2, 2.6): lh = 0.8, lw = 0.6
    dbdw = 0.8 * (img[0, 3] - img[0, 2])             # only the bottom corners are inside
    dbdh = 0.6 * img[0, 3] + 0.4 * img[0, 2]
    assert y[0, 1, 2, 0] == pytest.approx(0.75 * (0.8 * (0.4 * img[0, 2] + 0.6 * img[0, 3])))
    assert doffset[0, 1, 2, 0] == pytest.approx(2.0 * 0.75 * dbdw)
    assert doffset[0, 1, 2, 1] == pytest.approx(2.0 * 0.75 * dbdh)


def test_coordinate_gradient_is_zero_at_exactly_minus_one():
    """The CUDA kernels skip a point unless ``loc > -1``: at exactly -1 the offset gradient is 0,
    unlike torchvision's deform_conv2d (shared ``corners``, different slope rule). A 4x4 input keeps
    the float32 grid exact (eq. 2a), so the coordinates below are exactly -1."""
    x = RNG.standard_normal((1, 4, 4, 1))
    offset, mask = np.zeros((1, 4, 4, 2)), np.ones((1, 4, 4, 1))
    offset[0, 0, 2] = (0.25, -1.0)                   # output (0, 2) samples (h, w) = (-1, 2.25)
    offset[0, 1, 0] = (-1.0, 0.5)                    # output (1, 0) samples (h, w) = (1.5, -1)
    y, cache = D3.dcnv3_forward(x, offset, mask, 1, 1, 0, 1, 1, 1)
    doffset = D3.dcnv3_backward(np.ones_like(y), cache)[1]
    assert y[0, 0, 2, 0] == y[0, 1, 0, 0] == 0
    assert not doffset[0, 0, 2].any() and not doffset[0, 1, 0].any()


# -- identities ------------------------------------------------------------------------------
@pytest.mark.parametrize('point', range(9))
def test_one_hot_mask_shifts_by_the_column_major_point(point):
    x = RNG.standard_normal((1, 5, 6, 2))
    offset, mask = np.zeros((1, 5, 6, 18)), np.zeros((1, 5, 6, 9))
    mask[..., point] = 1.0
    y, _ = D3.dcnv3_forward(x, offset, mask, 3, 1, 1, 1, 1, 2)
    i, j = divmod(point, 3)                          # p = i*kh + j: i along x, j along y
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_allclose(y, xp[:, j:j + 5, i:i + 6], rtol=0, atol=GRID_TOL)


def test_offset_channels_are_dx_then_dy():
    """An even channel moves its point along x, the odd one along y."""
    x = RNG.standard_normal((1, 6, 6, 1))
    offset, mask = np.zeros((1, 6, 6, 18)), np.zeros((1, 6, 6, 9))
    mask[..., 4] = 1.0                               # centre point
    offset[..., 8] = 1.0                             # dx of point 4
    y, _ = D3.dcnv3_forward(x, offset, mask, 3, 1, 1, 1, 1, 1)
    np.testing.assert_array_equal(y[:, :, :5], x[:, :, 1:])
    offset[..., 8], offset[..., 9] = 0.0, 1.0        # dy of point 4
    y, _ = D3.dcnv3_forward(x, offset, mask, 3, 1, 1, 1, 1, 1)
    np.testing.assert_array_equal(y[:, :5], x[:, 1:])


@pytest.mark.parametrize('config', GRID)
def test_zero_offsets_uniform_mask_is_a_depthwise_box_filter(config):
    """offset_scale 1: a depthwise conv with weight 1/P (0 at a removed centre)."""
    n, h, w, kernel, stride, padding, dilation, group, d, _, remove_center = config
    x, offset, _ = operands(n, h, w, kernel, stride, padding, dilation, group, d, remove_center)
    (kh, kw), = pairs(kernel)
    npts = kh * kw - int(remove_center)
    mask = np.full(offset.shape[:3] + (group * npts,), 1.0 / npts)
    y, _ = D3.dcnv3_forward(x, np.zeros_like(offset), mask, kernel, stride, padding, dilation,
                            group, d, 1.0, remove_center)
    weight = np.full((group * d, 1, kh, kw), 1.0 / npts)
    if remove_center:
        weight[:, :, kh // 2, kw // 2] = 0.0
    yc, _ = depthwise_conv2d_forward(x.transpose(0, 3, 1, 2), weight, None, stride, padding, dilation)
    np.testing.assert_allclose(y, yc.transpose(0, 2, 3, 1), rtol=GRID_TOL, atol=GRID_TOL)


@pytest.mark.parametrize('scale', [2, 3])
def test_integer_offset_scale_dilates_the_grid(scale):
    """Zero offsets, offset_scale s: the grid of a conv with dilation s*d, re-centred (eq. 2)."""
    x = RNG.standard_normal((1, 9, 8, 2))
    mask = RNG.standard_normal((1, 9, 8, 9))
    y, _ = D3.dcnv3_forward(x, np.zeros((1, 9, 8, 18)), mask, 3, 1, 1, 1, 1, 2, float(scale))
    expected = 0.0
    for p in range(9):
        one_hot = np.zeros_like(mask)
        one_hot[..., p] = mask[..., p]
        i, j = divmod(p, 3)
        pad = 1 + (scale - 1)                        # pw + (s - 1) * half_w
        xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        expected = expected + one_hot[..., p:p + 1] * xp[:, j * scale:j * scale + 9,
                                                         i * scale:i * scale + 8]
    np.testing.assert_allclose(y, expected, rtol=GRID_TOL, atol=GRID_TOL)


def to_torchvision_layout(offset, mask, kernel, group, remove_center):
    """DCNv3 (dx, dy) column-major NHWC -> torchvision (dy, dx) row-major NCHW (derivation eq. 9)."""
    kh, kw = kernel
    n, ho, wo, _ = offset.shape
    taps = [(i, j) for i in range(kw) for j in range(kh)
            if not (remove_center and i == kw // 2 and j == kh // 2)]
    tv_offset = np.zeros((n, group, kh * kw, 2, ho, wo))
    tv_mask = np.zeros((n, group, kh * kw, ho, wo))
    off = offset.reshape(n, ho, wo, group, len(taps), 2).transpose(0, 3, 4, 5, 1, 2)
    msk = mask.reshape(n, ho, wo, group, len(taps)).transpose(0, 3, 4, 1, 2)
    for p, (i, j) in enumerate(taps):
        k = j * kw + i                               # row-major point of (row j, column i)
        tv_offset[:, :, k, 0] = off[:, :, p, 1]      # dy
        tv_offset[:, :, k, 1] = off[:, :, p, 0]      # dx
        tv_mask[:, :, k] = msk[:, :, p]
    return tv_offset.reshape(n, -1, ho, wo), tv_mask.reshape(n, -1, ho, wo)


@pytest.mark.parametrize('config', [GRID[0], GRID[2], GRID[4]])
def test_equals_deform_conv2d_with_depthwise_ones(config):
    deformable = pytest.importorskip('numpyconv.deformable', reason='numpyconv.deformable absent')
    n, h, w, kernel, stride, padding, dilation, group, d, _, remove_center = config
    x, offset, mask = operands(n, h, w, kernel, stride, padding, dilation, group, d, remove_center)
    y, cache = D3.dcnv3_forward(x, offset, mask, kernel, stride, padding, dilation, group, d, 1.0,
                                remove_center)
    (kh, kw), = pairs(kernel)
    tv_offset, tv_mask = to_torchvision_layout(offset, mask, (kh, kw), group, remove_center)
    xt, ones = x.transpose(0, 3, 1, 2), np.ones((group * d, 1, kh, kw))
    yt, tcache = deformable.deform_conv2d_forward(xt, tv_offset, ones, None, stride, padding,
                                                  dilation, tv_mask)
    np.testing.assert_allclose(y, yt.transpose(0, 2, 3, 1), rtol=GRID_TOL, atol=GRID_TOL)
    dout = RNG.standard_normal(y.shape)
    dx, doffset, dmask = D3.dcnv3_backward(dout, cache)
    tdx, tdoffset, _, _, tdmask = deformable.deform_conv2d_backward(dout.transpose(0, 3, 1, 2),
                                                                    tcache)
    np.testing.assert_allclose(dx, tdx.transpose(0, 2, 3, 1), rtol=GRID_TOL, atol=GRID_TOL)
    expect_offset, expect_mask = to_torchvision_layout(doffset, dmask, (kh, kw), group,
                                                       remove_center)
    if remove_center:                                # torchvision still differentiates the centre
        centre = np.zeros((group, kh * kw), bool)
        centre[:, kh // 2 * kw + kw // 2] = True
        tdmask = np.where(centre.reshape(1, -1, 1, 1), 0.0, tdmask)
        tdoffset = np.where(np.repeat(centre, 2, axis=1).reshape(1, -1, 1, 1), 0.0, tdoffset)
    np.testing.assert_allclose(expect_offset, tdoffset, rtol=GRID_TOL, atol=GRID_TOL)
    np.testing.assert_allclose(expect_mask, tdmask, rtol=GRID_TOL, atol=GRID_TOL)


def test_linear_in_mask_and_in_input():
    case = GRID[0][3:]
    x, offset, mask = operands(2, 6, 7, *case[:6], case[7])
    x2, mask2 = RNG.standard_normal(x.shape), RNG.standard_normal(mask.shape)
    y = run(x, offset, mask, case)[0]
    np.testing.assert_allclose(run(x + 2 * x2, offset, mask, case)[0],
                               y + 2 * run(x2, offset, mask, case)[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run(x, offset, mask - mask2, case)[0],
                               y - run(x, offset, mask2, case)[0], rtol=1e-12, atol=1e-12)


# -- errors, dtype, determinism, batch 0 ------------------------------------------------------
def test_errors_name_the_expected_shape():
    x, offset, mask = operands(1, 5, 5, 3, 1, 1, 1, 2, 2, False)
    with pytest.raises(ValueError, match=r"offset must have shape \(1, 5, 5, 36\).*got \(1, 5, 5, 35\)"):
        D3.dcnv3_forward(x, offset[..., :35], mask, 3, 1, 1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"mask must have shape \(1, 5, 5, 18\).*got \(1, 4, 5, 18\)"):
        D3.dcnv3_forward(x, offset, mask[:, :4], 3, 1, 1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"mask must have shape \(1, 5, 5, 16\)"):
        D3.dcnv3_forward(x, offset[..., :32], mask, 3, 1, 1, 1, 2, 2, remove_center=True)
    with pytest.raises(ValueError, match=r"x must have shape \(N, H, W, 6\).*group \* group_channels"):
        D3.dcnv3_forward(x, offset, mask, 3, 1, 1, 1, 2, 3)
    with pytest.raises(ValueError, match="remove_center is only compatible with an odd kernel"):
        D3.dcnv3_forward(x, offset, mask, (3, 2), 1, 1, 1, 2, 2, remove_center=True)
    with pytest.raises(ValueError, match=r"x must be \(N, H, W, group \* group_channels\)"):
        D3.dcnv3_forward(x[0], offset, mask, 3, 1, 1, 1, 2, 2)
    with pytest.raises(TypeError, match="same float dtype"):
        D3.dcnv3_forward(x, offset.astype(np.float32), mask, 3, 1, 1, 1, 2, 2)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        D3.dcnv3_forward(x.astype(int), offset, mask, 3, 1, 1, 1, 2, 2)
    with pytest.raises(ValueError, match="group must be a positive int"):
        D3.dcnv3_forward(x, offset, mask, 3, 1, 1, 1, 0, 2)
    with pytest.raises(TypeError, match="offset_scale"):
        D3.dcnv3_forward(x, offset, mask, 3, 1, 1, 1, 2, 2, offset_scale='2')
    with pytest.raises(ValueError, match="kernel_size"):
        D3.dcnv3_forward(x, offset, mask, 9, 1, 1, 1, 2, 2)
    y, cache = D3.dcnv3_forward(x, offset, mask, 3, 1, 1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"dout must have shape \(1, 5, 5, 4\)"):
        D3.dcnv3_backward(y[:, :4], cache)


def test_float32_in_float32_out_and_no_mutation():
    case = GRID[1][3:]
    x, offset, mask = operands(2, 8, 8, *case[:6], case[7])
    copies = [a.copy() for a in (x, offset, mask)]
    for a in (x, offset, mask):
        a.flags.writeable = False                                     # read-only inputs work too
    y64, cache64 = run(x, offset, mask, case)
    y32, cache32 = run(*(a.astype(np.float32) for a in (x, offset, mask)), case)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)
    dout = RNG.standard_normal(y64.shape)
    for g32, g64 in zip(D3.dcnv3_backward(dout.astype(np.float32), cache32),
                        D3.dcnv3_backward(dout, cache64)):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-3)
    for a, b in zip((x, offset, mask), copies):
        np.testing.assert_array_equal(a, b)


def test_deterministic_across_thread_counts(monkeypatch):
    numba = pytest.importorskip('numba')
    monkeypatch.setattr(numpyconv._parallel, 'PARALLEL_MIN_WORK', 0)   # the thread pool even when tiny
    case = GRID[0][3:]
    x, offset, mask = operands(2, 6, 7, *case[:6], case[7])
    dout = RNG.standard_normal((2, 6, 7, 8))
    threads = numba.get_num_threads()
    results = []
    try:
        for t in sorted({1, threads}):
            numba.set_num_threads(t)
            y, cache = run(x, offset, mask, case)
            results.append((y,) + D3.dcnv3_backward(dout, cache))
    finally:
        numba.set_num_threads(threads)
    y, cache = run(x, offset, mask, case)
    results.append((y,) + D3.dcnv3_backward(dout, cache))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_batch_zero_and_non_contiguous_inputs():
    x, offset, mask = operands(0, 5, 5, 3, 1, 1, 1, 2, 2, False)
    y, cache = D3.dcnv3_forward(x, offset, mask, 3, 1, 1, 1, 2, 2)
    assert y.shape == (0, 5, 5, 4)
    assert [g.shape for g in D3.dcnv3_backward(y, cache)] == [x.shape, offset.shape, mask.shape]
    x, offset, mask = operands(1, 5, 5, 3, 1, 1, 1, 2, 2, False)
    xt = np.asfortranarray(x)
    np.testing.assert_array_equal(D3.dcnv3_forward(xt, offset, mask, 3, 1, 1, 1, 2, 2)[0],
                                  D3.dcnv3_forward(x, offset, mask, 3, 1, 1, 1, 2, 2)[0])


def test_same_padding_string():
    x, offset, mask = operands(1, 5, 6, 3, 1, 2, 2, 2, 2, False)
    y_same, _ = D3.dcnv3_forward(x, offset, mask, 3, 1, 'same', 2, 2, 2)
    y_int, _ = D3.dcnv3_forward(x, offset, mask, 3, 1, 2, 2, 2, 2)
    np.testing.assert_array_equal(y_same, y_int)


# -- torch re-creation of dcnv3_core_pytorch (grid_sample), grids in float64 -----------------
def torch_dcnv3_core(torch, x, offset, mask, kernel, stride, pad, dilation, group, d, scale,
                     remove_center):
    """InternImage ``dcnv3_core_pytorch`` re-created (square pads), its reference grids in float32 as
    the official core builds them."""
    F = torch.nn.functional
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pairs(kernel, stride, pad, dilation)
    x = F.pad(x, [0, 0, pw, pw, ph, ph])                      # NHWC: W by pw, H by ph
    n, hp, wp, _ = x.shape
    _, ho, wo, _ = offset.shape
    f64, f32 = dict(dtype=torch.float64), dict(dtype=torch.float32)
    ref_y = (dh * (kh - 1)) // 2 + 0.5 + torch.arange(ho, **f32) * sh
    ref_x = (dw * (kw - 1)) // 2 + 0.5 + torch.arange(wo, **f32) * sw
    ry, rx = torch.meshgrid(ref_y / hp, ref_x / wp, indexing='ij')
    centre = torch.stack((rx, ry), -1).reshape(1, ho, wo, 1, 2)
    gx, gy = torch.meshgrid(-((dw * (kw - 1)) // 2) + torch.arange(kw, **f32) * dw,
                            -((dh * (kh - 1)) // 2) + torch.arange(kh, **f32) * dh, indexing='ij')
    grid = torch.stack((gx / wp, gy / hp), -1).reshape(-1, 2)          # column-major points
    if remove_center:
        grid = torch.cat((grid[:kh * kw // 2], grid[kh * kw // 2 + 1:]))
    npts = grid.shape[0]
    grid = grid.repeat(group, 1).reshape(1, 1, 1, group * npts, 2)
    norm = torch.tensor([wp, hp], **f64)
    loc = (centre + grid * scale).reshape(1, ho, wo, group * npts, 2)
    loc = loc + offset.reshape(n, ho, wo, group * npts, 2) * scale / norm
    grids = (2 * loc - 1).reshape(n, ho * wo, group, npts, 2).transpose(1, 2).flatten(0, 1)
    value = x.reshape(n, hp * wp, group * d).transpose(1, 2).reshape(n * group, d, hp, wp)
    sampled = F.grid_sample(value, grids, mode='bilinear', padding_mode='zeros',
                            align_corners=False)                     # (N*G, D, Ho*Wo, P)
    m = mask.reshape(n, ho * wo, group, npts).transpose(1, 2).reshape(n * group, 1, ho * wo, npts)
    out = (sampled * m).sum(-1).reshape(n, group * d, ho * wo)
    return out.transpose(1, 2).reshape(n, ho, wo, -1)


@pytest.mark.parametrize('config', GRID)
def test_matches_torch_grid_sample_core(config):
    torch = pytest.importorskip('torch')
    n, h, w, *case = config
    x, offset, mask = operands(n, h, w, *case[:6], case[7])
    y, cache = run(x, offset, mask, case)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, offset, mask)]
    yt = torch_dcnv3_core(torch, *tensors, *case)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    dout = RNG.standard_normal(y.shape)
    yt.backward(torch.tensor(dout))
    for ours, theirs in zip(D3.dcnv3_backward(dout, cache), tensors):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-10)



@pytest.mark.parametrize('config', [c for c in GRID if c[-1] and c[3] in (3, 5)])
def test_remove_center_matches_the_official_core_structure(config):
    """The whole-network re-creation's core drops each group's centre point from the sampling grid
    as the official ``remove_center_sampling_locations`` does; numpyconv gives the same values."""
    torch = pytest.importorskip('torch')
    from torch_models.intern_image import dcnv3_core_pytorch
    n, h, w, kernel, stride, padding, dilation, group, d, scale, _ = config
    x, offset, mask = operands(n, h, w, *config[3:9], True)
    y, cache = run(x, offset, mask, config[3:])
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, offset, mask)]
    yt = dcnv3_core_pytorch(*tensors, kernel, kernel, stride, stride, padding, padding, dilation, dilation,
                            group, d, scale, 1)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    dout = RNG.standard_normal(y.shape)
    yt.backward(torch.tensor(dout))
    for ours, theirs in zip(D3.dcnv3_backward(dout, cache), tensors):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-10)

# -- the DCNv3 layer ------------------------------------------------------------------------------
LAYER_CONFIGS = [
    dict(),
    dict(center_feature_scale=True, offset_scale=2.0),
    dict(dw_kernel_size=5, remove_center=True),
    dict(kernel_size=5, pad=4, dilation=2, center_feature_scale=True),
]


def randomize(layer, rng, scale=0.5):
    """Random parameters (the official init zeroes offsets and masks, a trivial point)."""
    for key, value in layer.params.items():
        value[...] = rng.standard_normal(value.shape) * scale
        if key.endswith('norm.weight') or key == 'dw_conv.1.1.weight':
            value += 1.0
    return layer


def make_dcnv3(dtype=np.float64, rng=0, **config):
    return D3.DCNv3(8, group=2, dtype=dtype, rng=rng, **config)


def gradcheck_random_layer(make, config, seed):
    """float64 gradcheck of dx and every parameter at random parameters (seeded)."""
    rng = np.random.default_rng(seed)
    layer = randomize(make(**config), rng)
    nc.gradcheck_layer(layer, rng.standard_normal((1, 8, 4, 5)))


@pytest.mark.parametrize('config, seed', list(zip(LAYER_CONFIGS[:3], [0, 0, 0])))  # seeds: no kink within eps
def test_layer_gradcheck(config, seed):
    gradcheck_random_layer(make_dcnv3, config, seed)


def test_layer_state_dict_keys_and_round_trip():
    layer = make_dcnv3(center_feature_scale=True, dw_kernel_size=5)
    shapes = {k: v.shape for k, v in layer.state_dict().items()}
    assert shapes == {
        'dw_conv.0.weight': (8, 1, 5, 5), 'dw_conv.0.bias': (8,),
        'dw_conv.1.1.weight': (8,), 'dw_conv.1.1.bias': (8,),
        'offset.weight': (36, 8), 'offset.bias': (36,), 'mask.weight': (18, 8), 'mask.bias': (18,),
        'input_proj.weight': (8, 8), 'input_proj.bias': (8,),
        'output_proj.weight': (8, 8), 'output_proj.bias': (8,),
        'center_feature_scale_proj_weight': (2, 8), 'center_feature_scale_proj_bias': (2,)}
    other = randomize(make_dcnv3(center_feature_scale=True, dw_kernel_size=5, rng=1),
                      np.random.default_rng(1))
    x = RNG.standard_normal((1, 8, 4, 5))
    layer.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(layer(x), other(x))
    with pytest.raises(KeyError, match='center_feature_scale_proj_weight'):
        make_dcnv3().load_state_dict(other.state_dict())


def test_layer_init_is_a_box_average_of_input_proj():
    """Zero offset/mask parameters: softmax of zeros = 1/P per point at the base grid."""
    for config in (dict(), dict(remove_center=True)):
        layer = make_dcnv3(**config)
        assert not layer.params['offset.weight'].any() and not layer.params['mask.bias'].any()
        x = RNG.standard_normal((2, 8, 5, 6))
        npts = 9 - int(config.get('remove_center', False))
        weight = np.full((8, 1, 3, 3), 1.0 / npts)
        if config:
            weight[:, :, 1, 1] = 0.0
        w_in, b_in = layer.params['input_proj.weight'], layer.params['input_proj.bias']
        w_out, b_out = layer.params['output_proj.weight'], layer.params['output_proj.bias']
        value = np.einsum('nchw,oc->nohw', x, w_in) + b_in[:, None, None]
        box, _ = depthwise_conv2d_forward(value, weight, None, 1, 1)
        expected = np.einsum('nchw,oc->nohw', box, w_out) + b_out[:, None, None]
        np.testing.assert_allclose(layer(x), expected, rtol=GRID_TOL, atol=GRID_TOL)


def test_layer_xavier_init_bounds():
    layer = D3.DCNv3(64, rng=0)
    bound = np.sqrt(6.0 / 128)
    w = layer.params['input_proj.weight']
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert not layer.params['output_proj.bias'].any()


def test_layer_errors():
    with pytest.raises(ValueError, match="channels must be divisible by group"):
        D3.DCNv3(10, group=4)
    with pytest.raises(ValueError, match="remove_center is only compatible with odd kernel"):
        D3.DCNv3(8, kernel_size=4, pad=1, group=2, remove_center=True)
    with pytest.raises(ValueError, match="stride=1 and 2\\*pad"):
        D3.DCNv3(8, group=2, stride=2)
    with pytest.raises(ValueError, match="stride=1 and 2\\*pad"):
        D3.DCNv3(8, group=2, pad=0)
    with pytest.raises(ValueError, match="dw_kernel_size must be odd"):
        D3.DCNv3(8, group=2, dw_kernel_size=4)
    layer = make_dcnv3()
    with pytest.raises(ValueError, match=r"x must have shape \(N, 8, H, W\)"):
        layer(RNG.standard_normal((1, 6, 4, 4)))
    with pytest.raises(TypeError, match="dtype"):
        layer(RNG.standard_normal((1, 8, 4, 4)).astype(np.float32))
    layer(RNG.standard_normal((1, 8, 4, 4)))
    with pytest.raises(ValueError, match=r"dout must have shape \(1, 8, 4, 4\)"):
        layer.backward(RNG.standard_normal((1, 8, 4, 3)))


def test_layer_float32_batch_zero_and_macs():
    layer = randomize(D3.DCNv3(8, group=2, center_feature_scale=True, rng=0),
                      np.random.default_rng(3))
    x = RNG.standard_normal((2, 8, 5, 4)).astype(np.float32)
    x_copy = x.copy()
    y = layer(x)
    assert y.dtype == np.float32 and layer.backward(np.ones_like(y)).dtype == np.float32
    np.testing.assert_array_equal(x, x_copy)
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    y0 = layer(np.zeros((0, 8, 5, 4), np.float32))
    assert y0.shape == (0, 8, 5, 4) and layer.backward(y0).shape == (0, 8, 5, 4)
    params, macs = nc.count(layer, (1, 8, 5, 4))
    pixels = 20
    expected = pixels * (8 * 8 * 2 + 8 * 36 + 8 * 18 + 8 * 9 + 5 * 9 * 8 + 8 * 2)
    assert macs == expected and params == sum(v.size for v in layer.params.values())


# -- torch re-creation of InternImage DCNv3_pytorch ----------------------------------------------
def make_torch_dcnv3(torch, channels, kernel_size=3, dw_kernel_size=None, stride=1, pad=1,
                     dilation=1, group=4, offset_scale=1.0, center_feature_scale=False,
                     remove_center=False):
    """A re-creation of ``DCNv3_pytorch`` (LN, GELU) on :func:`torch_dcnv3_core`; NHWC in/out."""
    nn, F = torch.nn, torch.nn.functional
    dwk = dw_kernel_size or kernel_size
    npts = kernel_size * kernel_size - int(remove_center)

    class ChannelsLast(nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1)

    class Module(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw_conv = nn.Sequential(
                nn.Conv2d(channels, channels, dwk, 1, (dwk - 1) // 2, groups=channels),
                nn.Sequential(ChannelsLast(), nn.LayerNorm(channels, eps=1e-6)), nn.GELU())
            self.offset = nn.Linear(channels, group * npts * 2)
            self.mask = nn.Linear(channels, group * npts)
            self.input_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels)
            if center_feature_scale:
                self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
                self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))

        def forward(self, inp):
            n, h, w, _ = inp.shape
            x = self.input_proj(inp)
            x_proj = x
            x1 = self.dw_conv(inp.permute(0, 3, 1, 2))
            offset = self.offset(x1)
            mask = F.softmax(self.mask(x1).reshape(n, h, w, group, -1), -1).reshape(n, h, w, -1)
            x = torch_dcnv3_core(torch, x, offset, mask, kernel_size, stride, pad, dilation, group,
                                 channels // group, offset_scale, remove_center)
            if center_feature_scale:
                s = F.linear(x1, self.center_feature_scale_proj_weight,
                             self.center_feature_scale_proj_bias).sigmoid()
                s = s[..., None].repeat(1, 1, 1, 1, channels // group).flatten(-2)
                x = x * (1 - s) + x_proj * s
            return self.output_proj(x)
    return Module().double()


def compare_with_torch_module(torch, ours, theirs, x, call=None):
    """Load theirs into ours; forward (NCHW vs NHWC) and every gradient at 1e-10.

    ``call(theirs, x_nhwc) -> y_nhwc`` adapts the official calling convention (default: direct).
    """
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64) * 0.5)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    xt = torch.tensor(x.transpose(0, 2, 3, 1), requires_grad=True)
    yt = theirs(xt) if call is None else call(theirs, xt)
    y = ours(x)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 3, 1, 2), rtol=1e-10, atol=1e-10)
    dout = RNG.standard_normal(y.shape)
    yt.backward(torch.tensor(dout.transpose(0, 2, 3, 1)))
    ours.zero_grad()
    dx = ours.backward(dout)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 3, 1, 2), rtol=1e-10, atol=1e-10)
    grads = ours.grads
    for key, p in theirs.named_parameters():
        np.testing.assert_allclose(grads[key], p.grad.numpy(), rtol=1e-10, atol=1e-10, err_msg=key)


@pytest.mark.parametrize('config', LAYER_CONFIGS)
def test_layer_matches_torch_dcnv3_pytorch(config):
    torch = pytest.importorskip('torch')
    torch.manual_seed(0)
    theirs = make_torch_dcnv3(torch, 8, group=2, **config)
    ours = make_dcnv3(**config)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    compare_with_torch_module(torch, ours, theirs, RNG.standard_normal((2, 8, 5, 6)))
