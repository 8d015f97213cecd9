"""numpyconv.sampling_locations and layer.sampling_locations: the points are where the ops sample.

Three checks per op: (1) the coordinates equal those of a plain loop over every point written as the
reference loops write them (bitwise, float64); (2) the op itself, run with a one-hot mask / weight /
attention on a linear ramp image (value = column in one channel, row in another), returns each
point's coordinate; (3) the layers give what the op gives for the offsets their forward computes.
"""
import inspect

import numpy as np
import pytest

import numpyconv as nc
from numpyconv import sampling

RNG = np.random.default_rng(3)


def ramp(n, h, w, extra_channels=0):
    """``(n, 2 + extra, h, w)``: channel 0 = column index, channel 1 = row index, then zeros."""
    rows, cols = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing='ij')
    x = np.zeros((n, 2 + extra_channels, h, w))
    x[:, 0], x[:, 1] = cols, rows
    return x


def interior(loc, h, w):
    """Points whose four corners are all inside (the bilinear ramp is exact there)."""
    return (loc[..., 0] >= 0) & (loc[..., 0] <= w - 1) & (loc[..., 1] >= 0) & (loc[..., 1] <= h - 1)


def outside(loc, h, w):
    return (loc[..., 0] <= -1) | (loc[..., 0] >= w) | (loc[..., 1] <= -1) | (loc[..., 1] >= h)


# -- deform_conv2d ------------------------------------------------------------------------------------
DEFORM = [  # (H, W, kernel, stride, padding, dilation, offset groups)
    (6, 7, (3, 3), 1, 1, 1, 1),
    (7, 6, (2, 3), (2, 1), (1, 0), (2, 1), 2),
]


def deform_operands(h, w, kernel, stride, padding, dilation, og, n=2, channels=2):
    kh, kw = kernel
    geo = nc.conv_geometry((h, w), kernel, stride, padding, dilation)
    ho, wo = geo.out_hw
    x = ramp(n, h, w, channels - 2)
    offset = RNG.uniform(-2.5, 2.5, (n, 2 * og * kh * kw, ho, wo))
    mask = RNG.uniform(0.2, 1.0, (n, og * kh * kw, ho, wo))
    return x, offset, mask, geo


def deform_loop(offset, geo, og):
    """Plain loop: ``h = r*sh - pt + i*dh + dy``, ``w = s*sw - pl + j*dw + dx`` (reference order)."""
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    pt, pl = geo.pads[0], geo.pads[2]
    n, _, ho, wo = offset.shape
    out = np.zeros((n, ho, wo, og, kh * kw, 2))
    for b in range(n):
        for r in range(ho):
            for s in range(wo):
                for g in range(og):
                    for i in range(kh):
                        for j in range(kw):
                            p = i * kw + j
                            dy = offset[b, g * 2 * kh * kw + 2 * p, r, s]
                            dx = offset[b, g * 2 * kh * kw + 2 * p + 1, r, s]
                            out[b, r, s, g, p] = (s * sw - pl + j * dw + dx, r * sh - pt + i * dh + dy)
    return out


@pytest.mark.parametrize('config', DEFORM)
def test_deform_conv2d_locations_equal_the_loop(config):
    h, w, kernel, stride, padding, dilation, og = config
    x, offset, mask, geo = deform_operands(*config, channels=2 * og)
    weight = np.ones((3, 2 * og) + kernel)
    loc, weights = nc.sampling_locations('deform_conv2d', x, offset, weight, None, stride, padding,
                                         dilation, mask=mask)
    assert np.array_equal(loc, deform_loop(offset, geo, og))
    np.testing.assert_array_equal(weights, mask.reshape(2, og, -1, *geo.out_hw).transpose(0, 3, 4, 1, 2))
    loc1, ones = nc.sampling_locations('deform_conv2d', x, offset, weight, stride=stride, padding=padding,
                                       dilation=dilation)
    assert np.array_equal(loc1, loc) and np.all(ones == 1) and ones.shape == loc.shape[:-1]


@pytest.mark.parametrize('config', DEFORM)
def test_deform_conv2d_samples_there(config):
    """One kernel point at a time (weight one-hot): the output of the ramp is the coordinate."""
    h, w, kernel, stride, padding, dilation, og = config
    x, offset, _, geo = deform_operands(*config, channels=2 * og)
    loc, _ = nc.sampling_locations('deform_conv2d', x, offset, np.ones((1, 2 * og) + kernel), None,
                                   stride, padding, dilation)
    kh, kw = kernel
    for g in range(og):
        for p in range(kh * kw):
            weight = np.zeros((2, 2 * og, kh, kw))
            weight[0, 2 * g, p // kw, p % kw] = 1                 # group g's first channel: columns
            weight[1, 2 * g + 1, p // kw, p % kw] = 1             # its second: rows
            xg = np.zeros_like(x)
            xg[:, 2 * g:2 * g + 2] = x[:, :2]
            y, _ = nc.deform_conv2d_forward(xg, offset, weight, None, stride, padding, dilation)
            sampled = y.transpose(0, 2, 3, 1)                      # (N, Ho, Wo, 2)
            at = loc[:, :, :, g, p]
            inside = interior(at, h, w)
            np.testing.assert_allclose(sampled[inside], at[inside], rtol=0, atol=1e-12)
            assert np.all(sampled[outside(at, h, w)] == 0)
            assert inside.any()


# -- dcnv3 / dcnv4 --------------------------------------------------------------------------------------
DCN = [  # (H, W, kernel, stride, padding, dilation, group, offset_scale, remove_center)
    (6, 7, 3, 1, 1, 1, 2, 1.0, False),
    (7, 6, (3, 5), (2, 1), (1, 2), (2, 1), 2, 1.5, True),
    (5, 6, (2, 3), 1, (0, 1), 1, 1, 2.0, False),
]


def dcn_operands(h, w, kernel, stride, padding, dilation, group, scale, remove_center, n=2):
    geo = nc.conv_geometry((h, w), kernel, stride, padding, dilation)
    ho, wo = geo.out_hw
    points = geo.kernel[0] * geo.kernel[1] - int(remove_center)
    x = ramp(n, h, w).transpose(0, 2, 3, 1)                       # (N, H, W, 2): D = 2 per group
    x = np.ascontiguousarray(np.tile(x, (1, 1, 1, group)))
    offset = RNG.uniform(-2.5, 2.5, (n, ho, wo, group * points * 2))
    mask = RNG.uniform(0.2, 1.0, (n, ho, wo, group * points))
    hyper = (kernel, stride, padding, dilation, group, 2, scale, remove_center)
    return x, offset, mask, hyper, geo, points


def dcn_loop(offset, geo, group, scale, remove_center):
    """Plain loop as numpyconv/reference/dcnv3.py writes it: column-major points ``(i, j)`` (i the
    kernel column), ``h = top + (j*dh + dy)*scale``; returned with points row-major."""
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    pt, pl = geo.pads[0], geo.pads[2]
    half_h, half_w = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    column_major = [(i, j) for i in range(kw) for j in range(kh)
                    if not (remove_center and i == kw // 2 and j == kh // 2)]
    row_major = sorted(column_major, key=lambda ij: (ij[1], ij[0]))
    n, ho, wo, _ = offset.shape
    npts = len(column_major)
    out = np.zeros((n, ho, wo, group, npts, 2))
    for b in range(n):
        for r in range(ho):
            for s in range(wo):
                top = r * sh - pt + half_h - half_h * scale
                left = s * sw - pl + half_w - half_w * scale
                for g in range(group):
                    for k, (i, j) in enumerate(row_major):
                        q = g * npts + column_major.index((i, j))
                        h = top + (j * dh + offset[b, r, s, 2 * q + 1]) * scale
                        w = left + (i * dw + offset[b, r, s, 2 * q]) * scale
                        out[b, r, s, g, k] = (w, h)
    return out


@pytest.mark.parametrize('config', DCN)
def test_dcnv3_and_dcnv4_locations_equal_the_loop(config):
    x, offset, mask, hyper, geo, points = dcn_operands(*config)
    group, scale, remove_center = config[6], config[7], config[8]
    loc, weights = nc.sampling_locations('dcnv3', x, offset, mask, *hyper)
    # the exact grid; the op's is rounded to float32 as dcnv3_core_pytorch's (< 1e-6 pixel)
    np.testing.assert_allclose(loc, dcn_loop(offset, geo, group, scale, remove_center), rtol=0, atol=1e-5)
    om = nc.pack_offset_mask(offset, mask, group)
    loc4, weights4 = nc.sampling_locations('dcnv4', x, om, *hyper)
    assert np.array_equal(loc4, loc) and np.array_equal(weights4, weights)
    # weights: the mask, reordered like the points
    column_major = sampling._dcn_geometry(x, *hyper)[3]
    n, ho, wo = mask.shape[:3]
    np.testing.assert_array_equal(weights, mask.reshape(n, ho, wo, group, points)[..., column_major])


def test_dcn_point_order_is_row_major():
    """Zero offsets, 3x3, stride 1, pad 1: the points of output (0, 0) are the kernel grid read row
    by row, (x, y) = (-1, -1), (0, -1), (1, -1), (-1, 0), ..."""
    x = np.zeros((1, 4, 4, 2))
    offset, mask = np.zeros((1, 4, 4, 18)), np.zeros((1, 4, 4, 9))
    loc, _ = nc.sampling_locations('dcnv3', x, offset, mask, 3, 1, 1, 1, 1, 2)
    expected = [(j, i) for i in (-1, 0, 1) for j in (-1, 0, 1)]
    np.testing.assert_allclose(loc[0, 0, 0, 0], expected, rtol=0, atol=1e-6)     # float32 grid
    loc, _ = nc.sampling_locations('dcnv3', x, offset[..., :16], mask[..., :8], 3, 1, 1, 1, 1, 2,
                                   remove_center=True)
    np.testing.assert_allclose(loc[0, 1, 2, 0], [(x + 2, y + 1) for x, y in expected if (x, y) != (0, 0)],
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize('config', DCN)
def test_dcnv3_and_dcnv4_sample_there(config):
    """Mask one-hot on one point: DCNv3's (and DCNv4's) output of the ramp is its coordinate."""
    h, w = config[:2]
    x, offset, mask, hyper, geo, points = dcn_operands(*config)
    group = config[6]
    loc, _ = nc.sampling_locations('dcnv3', x, offset, mask, *hyper)
    order = sampling._dcn_geometry(x, *hyper)[3]                   # op index of row-major point
    n, ho, wo = mask.shape[:3]
    for g in range(group):
        for k in range(points):
            one_hot = np.zeros((n, ho, wo, group, points))
            one_hot[..., g, order[k]] = 1
            one_hot = one_hot.reshape(n, ho, wo, group * points)
            y3, _ = nc.dcnv3_forward(x, offset, one_hot, *hyper)
            y4, _ = nc.dcnv4_forward(x, nc.pack_offset_mask(offset, one_hot, group), *hyper)
            at = loc[..., g, k, :]
            inside = interior(at, h, w)
            for y in (y3, y4):
                sampled = y[..., 2 * g:2 * g + 2]
                np.testing.assert_allclose(sampled[inside], at[inside], rtol=0, atol=1e-12)
                assert np.all(sampled[outside(at, h, w)] == 0)
            assert inside.any()


# -- ms_deform_attn --------------------------------------------------------------------------------------
def msda_operands(n=2, lq=5, heads=2, points=3, shapes=((4, 5), (3, 2), (2, 2))):
    shapes = np.array(shapes)
    sizes = shapes.prod(axis=1)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    value = np.zeros((n, int(sizes.sum()), heads, 2))
    for lvl, (h, w) in enumerate(shapes):                              # ramp on every level
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
        value[:, starts[lvl]:starts[lvl] + h * w, :, 0] = cols.reshape(-1, 1)
        value[:, starts[lvl]:starts[lvl] + h * w, :, 1] = rows.reshape(-1, 1)
    loc = RNG.uniform(-0.5, 1.5, (n, lq, heads, len(shapes), points, 2))
    attn = RNG.uniform(0.2, 1.0, (n, lq, heads, len(shapes), points))
    return value, shapes, starts, loc, attn


def test_ms_deform_attn_locations_equal_the_loop():
    value, shapes, starts, loc, attn = msda_operands()
    pixels, weights = nc.sampling_locations('ms_deform_attn', value, shapes, starts, loc, attn)
    expected = np.zeros_like(loc)
    for index in np.ndindex(loc.shape[:-1]):
        h, w = shapes[index[3]]
        x, y = loc[index]
        expected[index] = (float(x) * int(w) - 0.5, float(y) * int(h) - 0.5)
    assert np.array_equal(pixels, expected)
    np.testing.assert_array_equal(weights, attn)
    assert weights is not attn


def test_ms_deform_attn_samples_there():
    value, shapes, starts, loc, attn = msda_operands()
    pixels, _ = nc.sampling_locations('ms_deform_attn', value, shapes, starts, loc, attn)
    n, lq, heads, levels, points = attn.shape
    for lvl in range(levels):
        for p in range(points):
            one_hot = np.zeros_like(attn)
            one_hot[:, :, :, lvl, p] = 1
            out, _ = nc.ms_deform_attn_forward(value, shapes, starts, loc, one_hot)
            sampled = out.reshape(n, lq, heads, 2)
            at = pixels[:, :, :, lvl, p]
            h, w = shapes[lvl]
            inside = interior(at, h, w)
            np.testing.assert_allclose(sampled[inside], at[inside], rtol=0, atol=1e-12)
            assert np.all(sampled[outside(at, h, w)] == 0)


# -- API: names, signatures, dtypes, errors ---------------------------------------------------------------
@pytest.mark.parametrize('op', ['deform_conv2d', 'dcnv3', 'dcnv4', 'ms_deform_attn'])
def test_signatures_are_the_ops(op):
    forward = getattr(nc, f'{op}_forward')
    locator = getattr(sampling, f'{op}_locations')
    assert list(inspect.signature(locator).parameters.values()) == \
        list(inspect.signature(forward).parameters.values())


def test_float32_preserved_and_inputs_untouched():
    x, offset, mask, hyper, _, _ = dcn_operands(*DCN[1])
    x, offset, mask = (a.astype(np.float32) for a in (x, offset, mask))
    copies = [a.copy() for a in (x, offset, mask)]
    loc, weights = nc.sampling_locations('dcnv3', x, offset, mask, *hyper)
    assert loc.dtype == weights.dtype == np.float32
    for a, c in zip((x, offset, mask), copies):
        np.testing.assert_array_equal(a, c)
    value, shapes, starts, pts, attn = (a.astype(np.float32) if a.dtype.kind == 'f' else a
                                        for a in msda_operands())
    loc, weights = nc.sampling_locations('ms_deform_attn', value, shapes, starts, pts, attn)
    assert loc.dtype == weights.dtype == np.float32


def test_errors():
    with pytest.raises(ValueError, match="op must be one of"):
        nc.sampling_locations('conv2d', np.zeros((1, 1, 3, 3)))
    x, offset, mask, hyper, _, _ = dcn_operands(*DCN[0])
    with pytest.raises(TypeError):
        nc.sampling_locations('dcnv3', x, offset)                       # missing arguments
    with pytest.raises(ValueError, match=r'offset must have shape'):
        nc.sampling_locations('dcnv3', x, offset[..., :-2], mask, *hyper)
    with pytest.raises(ValueError, match='offset_mask must have shape'):
        nc.sampling_locations('dcnv4', x, offset, *hyper)
    with pytest.raises(TypeError, match='same float dtype'):
        nc.sampling_locations('dcnv3', x, offset.astype(np.float32), mask, *hyper)
    with pytest.raises(ValueError, match='remove_center is only compatible'):
        nc.sampling_locations('dcnv3', x, offset, mask, 2, 1, 0, 1, 2, 2, 1.0, True)
    xd, off, _, _ = deform_operands(*DEFORM[0])
    with pytest.raises(ValueError, match='offset must have shape'):
        nc.sampling_locations('deform_conv2d', xd, off[:, :-1], np.ones((1, 2, 3, 3)), padding=1)
    with pytest.raises(ValueError, match='mask must have shape'):
        nc.sampling_locations('deform_conv2d', xd, off, np.ones((1, 2, 3, 3)), padding=1,
                              mask=np.ones((2, 8, 6, 7)))
    value, shapes, starts, loc, attn = msda_operands()
    with pytest.raises(ValueError, match='level_start_index must be'):
        nc.sampling_locations('ms_deform_attn', value, shapes, starts + 1, loc, attn)


# -- layers against the ops ---------------------------------------------------------------------------
def randomized(layer, scale=0.3):
    for p in layer.params.values():
        p += scale * RNG.standard_normal(p.shape)
    return layer


def layer_cases():
    """``(layer, forward inputs, op name, op arguments of the layer's last forward)``."""
    f64 = dict(dtype=np.float64, rng=0)

    def deform_args(layer):
        c = layer._cache
        return ('deform_conv2d', (c['x'], c['offset'], layer.params['weight'], None,
                                  layer.stride, layer.padding, layer.dilation, c['mask']))

    def dcnv3_args(layer):
        c = layer._cache['core']
        return 'dcnv3', (c['x'], c['offset'], c['mask']) + layer._core_args()

    def dcnv4_args(layer):
        c = layer._cache['core']
        om = nc.pack_offset_mask(c['offset'], c['mask'], layer.group, c['channels'])
        return 'dcnv4', (c['x'], om) + layer._core_args()

    def msda_args(layer):
        c = layer._cache['core']
        return 'ms_deform_attn', (c['value'], c['shapes'], c['starts'], c['loc'], c['attn'])

    x = RNG.standard_normal((2, 8, 5, 6))
    msda = randomized(nc.MSDeformAttn(8, n_levels=2, n_heads=2, n_points=3, **f64))
    shapes = np.array([[4, 5], [2, 3]])
    msda_inputs = (RNG.standard_normal((2, 7, 8)), RNG.uniform(0.1, 0.9, (2, 7, 2, 4)),
                   RNG.standard_normal((2, 26, 8)), shapes, np.array([0, 20]),
                   RNG.uniform(size=(2, 26)) < 0.2)
    return [
        (randomized(nc.DeformConv2d(8, 4, 3, padding=1, deform_groups=2, **f64)), (x,), deform_args),
        (randomized(nc.ModulatedDeformConv2d(8, 4, (3, 2), stride=2, padding=1, **f64)), (x,), deform_args),
        (randomized(nc.DCNv3(8, group=2, offset_scale=1.5, **f64)), (x,), dcnv3_args),
        (randomized(nc.DCNv4(8, group=2, dw_kernel_size=3, remove_center=True, pad=1, **f64)), (x,),
         dcnv4_args),
        (msda, msda_inputs, msda_args),
    ]


@pytest.mark.parametrize('case', range(5))
def test_layers_sample_where_their_op_samples(case):
    layer, inputs, op_args = layer_cases()[case]
    layer.forward(*inputs)
    op, args = op_args(layer)
    expected = nc.sampling_locations(op, *args)
    got = layer.sampling_locations(*inputs)
    for a, b in zip(got, expected):
        assert a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize('case', range(5))
def test_layer_sampling_locations_keep_no_cache(case):
    """forward(x1), sampling_locations(x2), backward: the gradients of forward(x1) alone."""
    layer, inputs, _ = layer_cases()[case]
    other = tuple(a + 0.5 * RNG.standard_normal(a.shape) if isinstance(a, np.ndarray) and a.dtype == float
                  else a for a in inputs)
    out = layer.forward(*inputs)
    dout = RNG.standard_normal(out.shape)
    layer.zero_grad()
    first = layer.backward(dout)
    grads = {k: g.copy() for k, g in layer.grads.items()}
    layer.forward(*inputs)
    layer.sampling_locations(*other)
    layer.zero_grad()
    second = layer.backward(dout)
    for a, b in zip(first if isinstance(first, tuple) else (first,),
                    second if isinstance(second, tuple) else (second,)):
        np.testing.assert_array_equal(a, b)
    for k, g in layer.grads.items():
        np.testing.assert_array_equal(g, grads[k])


def test_layer_float32_and_weights():
    layer = nc.ModulatedDeformConv2d(4, 4, 3, padding=1, rng=0)
    loc, weights = layer.sampling_locations(RNG.standard_normal((1, 4, 5, 5)).astype(np.float32))
    assert loc.dtype == np.float32 and loc.shape == (1, 5, 5, 1, 9, 2)
    np.testing.assert_array_equal(weights, 0.5)                       # zero-initialised offset conv
    layer = nc.DCNv3(8, group=2, rng=0)
    _, weights = layer.sampling_locations(RNG.standard_normal((1, 8, 4, 4)).astype(np.float32))
    np.testing.assert_allclose(weights, 1 / 9, rtol=1e-6)               # softmax of zeros
    layer = nc.MSDeformAttn(8, n_levels=1, n_heads=2, n_points=2, rng=0)
    q = RNG.standard_normal((1, 3, 8)).astype(np.float32)
    ref_pts = np.full((1, 3, 1, 2), 0.5, np.float32)
    loc, weights = layer.sampling_locations(q, ref_pts, np.zeros((1, 12, 8), np.float32), np.array([[3, 4]]),
                                            np.array([0]))
    np.testing.assert_allclose(weights, 0.5)
    # initial ring: head 0 points along +x, one pixel per point index, around the reference point
    np.testing.assert_allclose(loc[0, :, 0, 0, :, 0], [[2.5, 3.5]] * 3, rtol=1e-6)
    np.testing.assert_allclose(loc[0, :, 0, 0, :, 1], [[1.0, 1.0]] * 3, rtol=1e-6)
