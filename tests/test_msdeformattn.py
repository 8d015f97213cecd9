"""Multi-scale deformable attention: the op against its plain-loop reference, gradcheck, the border
rule, identities, errors, determinism, and (with torch) the official pure-PyTorch path and module."""
import math

import numba
import numpy as np
import pytest

import numpyconv as nc
from numpyconv._checks import Cache
from numpyconv.module import Module
from numpyconv.msdeformattn import initial_offsets
from numpyconv.reference import msdeformattn as ref

RNG = np.random.default_rng(17)

# (spatial_shapes, Lq, heads M, channels D, points P)
GRID = [
    ([[4, 5], [2, 3], [1, 2]], 4, 2, 3, 3),     # three levels of different sizes
    ([[5, 4]], 3, 3, 2, 2),                     # one level
    ([[3, 6], [6, 3]], 5, 1, 4, 1),             # P = 1, one head
    ([[7, 7], [4, 4], [2, 2], [1, 1]], 2, 2, 2, 2),   # four levels, a 1x1 level
]


def starts_of(shapes):
    sizes = [h * w for h, w in shapes]
    return np.array([sum(sizes[:k]) for k in range(len(sizes))], dtype=np.int64)


def operands(shapes, lq, heads, d, points, n=2, low=-0.7, high=1.7, dtype=np.float64, rng=RNG):
    """value, spatial_shapes, level_start_index, locations uniform in (low, high) (they cross every
    border of every level), attention weights."""
    shapes = np.array(shapes, dtype=np.int64)
    s = int(shapes.prod(axis=1).sum())
    levels = len(shapes)
    value = rng.standard_normal((n, s, heads, d)).astype(dtype)
    loc = rng.uniform(low, high, (n, lq, heads, levels, points, 2)).astype(dtype)
    attn = rng.uniform(0.1, 1.0, (n, lq, heads, levels, points)).astype(dtype)
    return value, shapes, starts_of(shapes.tolist()), loc, attn


def rel(a, b):
    """Largest difference relative to the largest reference value."""
    scale = max(float(np.max(np.abs(b))), 1e-300) if b.size else 1.0
    return float(np.max(np.abs(a - b))) / scale if a.size else 0.0


def run(args):
    return nc.ms_deform_attn_forward(*args)


# -- forward and backward against the plain loops -------------------------------------------------
@pytest.mark.parametrize('config', GRID)
def test_forward_matches_reference(config):
    args = operands(*config)
    out, _ = run(args)
    assert out.shape == args[3].shape[:2] + (args[0].shape[2] * args[0].shape[3],)
    assert rel(out, ref.ms_deform_attn(*args)) < 1e-10


@pytest.mark.parametrize('config', GRID)
def test_backward_matches_reference(config):
    args = operands(*config)
    out, cache = run(args)
    dout = RNG.standard_normal(out.shape)
    grads = nc.ms_deform_attn_backward(dout, cache)
    expected = ref.ms_deform_attn_backward(dout, *args)
    assert grads[1] is None and grads[2] is None
    for k in (0, 3, 4):
        assert grads[k].shape == args[k].shape
        assert rel(grads[k], expected[k]) < 1e-10, k


def test_locations_cross_every_border():
    """The operands above really exercise the border rule: points outside, in the border band
    (-1, 0) and (H-1, H), and inside, on every level."""
    value, shapes, _, loc, _ = operands(*GRID[0])
    for lvl, (h, w) in enumerate(shapes):
        for coord, size in ((loc[..., lvl, :, 1] * h - 0.5, h), (loc[..., lvl, :, 0] * w - 0.5, w)):
            assert (coord <= -1).any() and (coord >= size).any()
            assert ((coord > -1) & (coord < 0)).any() and ((coord > size - 1) & (coord < size)).any()


# -- gradcheck --------------------------------------------------------------------------------------
def op_with_grads(shapes, starts):
    """``(forward, backward)`` of (value, locations, attention) for numpyconv.gradcheck."""
    def forward(value, loc, attn):
        return nc.ms_deform_attn_forward(value, shapes, starts, loc, attn)

    def backward(dout, cache):
        dvalue, _, _, dloc, dattn = nc.ms_deform_attn_backward(dout, cache)
        return dvalue, dloc, dattn
    return forward, backward


@pytest.mark.parametrize('config', GRID)
def test_gradcheck(config):
    """Random locations (no integer pixel coordinate, no point on h, w = -1 or H, W): smooth."""
    value, shapes, starts, loc, attn = operands(*config)
    report = nc.gradcheck(*op_with_grads(shapes, starts), (value, loc, attn), mode='full',
                          atol=1e-7, rtol=1e-6)
    assert report.ok and not any(r.nondifferentiable for r in report.results)


def test_gradcheck_marks_integer_coordinates_as_kinks():
    """Points on pixel centres (integer h, w) are kinks of the bilinear sample: gradcheck lists them
    as non-differentiable, and the analytical gradient is the right-hand derivative (floor rule)."""
    shapes, starts = np.array([[4, 8]]), np.array([0])
    value = RNG.standard_normal((1, 32, 1, 2))
    loc = np.array([[[[[[(3 + 0.5) / 8, (1 + 0.5) / 4]]]]]])        # (x, y) = pixel (3, 1) exactly
    attn = np.array([[[[[0.7]]]]])
    forward, backward = op_with_grads(shapes, starts)
    with pytest.warns(UserWarning, match='non-differentiable'):
        report = nc.gradcheck(forward, backward, (value, loc, attn), mode='full', raise_exception=False)
    flagged = report.results[1].nondifferentiable
    assert sorted(flagged) == [(0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 1)]
    out, cache = forward(value, loc, attn)
    dout = RNG.standard_normal(out.shape)
    dloc = backward(dout, cache)[1]
    eps = 1e-7
    for axis in (0, 1):
        step = np.zeros_like(loc)
        step[..., axis] = eps
        right = np.sum((forward(value, loc + step, attn)[0] - out) * dout) / eps
        assert dloc[..., axis].item() == pytest.approx(right, rel=1e-5, abs=1e-9)


# -- the border rule --------------------------------------------------------------------------------
def border_locations():
    """Locations on a 4x8 level (powers of two: exact pixel coordinates) at the notable coordinates:
    -1, inside the band (-1, 0), 0, integer and fractional interior points, H-1 / W-1, the band
    (H-1, H), exactly H / W and beyond, in every combination of x and y."""
    h, w = 4, 8
    ys = [-1.5, -1.0, -0.75, 0.0, 1.0, 1.25, 3.0, 3.5, 4.0, 5.0]
    xs = [-1.5, -1.0, -0.25, 0.0, 2.0, 6.5, 7.0, 7.75, 8.0, 9.5]
    pts = [((x + 0.5) / w, (y + 0.5) / h) for y in ys for x in xs]
    return np.array(pts).reshape(1, len(pts), 1, 1, 1, 2), (h, w)


def test_border_cases_match_reference():
    loc, (h, w) = border_locations()
    shapes, starts = np.array([[h, w]]), np.array([0])
    value = RNG.standard_normal((1, h * w, 1, 3))
    attn = RNG.uniform(0.5, 1.0, loc.shape[:-1])
    pixel = loc[..., 0] * w - 0.5, loc[..., 1] * h - 0.5
    assert {-1.0, 4.0}.issubset(set(pixel[1].ravel())) and {-1.0, 8.0}.issubset(set(pixel[0].ravel()))
    args = (value, shapes, starts, loc, attn)
    out, cache = run(args)
    dout = RNG.standard_normal(out.shape)
    grads = nc.ms_deform_attn_backward(dout, cache)
    expected = ref.ms_deform_attn_backward(dout, *args)
    assert rel(out, ref.ms_deform_attn(*args)) < 1e-12
    for k in (0, 3, 4):
        assert rel(grads[k], expected[k]) < 1e-12
    dloc = grads[3][0, :, 0, 0, 0]                                    # (points, 2)
    x, y = pixel[0].ravel(), pixel[1].ravel()
    outside = (x <= -1) | (x >= w) | (y <= -1) | (y >= h)
    assert np.all(out[0][outside] == 0) and np.all(dloc[outside] == 0)           # nothing sampled
    assert np.all(grads[4].ravel()[outside] == 0)
    inside_band = (x > -1) & (x < w) & (y > -1) & (y < h) & ((y < 0) | (x < 0))
    assert np.all(np.abs(out[0][inside_band]).sum(-1) > 0)                          # partly sampled


def test_exactly_minus_one_samples_nothing():
    """At h = -1 the sample is 0 and so is its location gradient (the CUDA kernel's rule); just
    inside, the y-gradient points towards row 0."""
    shapes, starts = np.array([[4, 4]]), np.array([0])
    value = np.ones((1, 16, 1, 1))
    loc = np.array([[[[[[0.5, -0.125]]]], [[[[0.5, -0.125 + 1e-6]]]]]])   # h = -1, h = -1 + 4e-6
    loc = loc.reshape(1, 2, 1, 1, 1, 2)
    attn = np.ones((1, 2, 1, 1, 1))
    out, cache = nc.ms_deform_attn_forward(value, shapes, starts, loc, attn)
    _, _, _, dloc, _ = nc.ms_deform_attn_backward(np.ones_like(out), cache)
    assert out[0, 0, 0] == 0 and np.all(dloc[0, 0] == 0)
    assert out[0, 1, 0] > 0 and dloc[0, 1, 0, 0, 0, 1] == pytest.approx(4.0)     # d/dy of 4*(h+1)


# -- shapes: levels, one level, P = 1, batch 0, no queries -------------------------------------------
@pytest.mark.parametrize('n, lq', [(0, 3), (2, 0), (0, 0)])
def test_empty_batch_and_queries(n, lq):
    value, shapes, starts, loc, attn = operands([[3, 4], [2, 2]], lq, 2, 3, 2, n=n)
    out, cache = nc.ms_deform_attn_forward(value, shapes, starts, loc, attn)
    assert out.shape == (n, lq, 6)
    dvalue, _, _, dloc, dattn = nc.ms_deform_attn_backward(np.zeros(out.shape), cache)
    assert dvalue.shape == value.shape and not dvalue.any()
    assert dloc.shape == loc.shape and dattn.shape == attn.shape


def test_levels_do_not_mix():
    """A location on level l reads only level l's rows of value (eq. 1)."""
    value, shapes, starts, loc, attn = operands([[3, 4], [2, 5], [4, 2]], 3, 2, 2, 2, low=0.0, high=1.0)
    out, cache = nc.ms_deform_attn_forward(value, shapes, starts, loc, attn)
    dvalue = nc.ms_deform_attn_backward(np.ones_like(out), cache)[0]
    for lvl in range(3):
        only = np.zeros_like(attn)
        only[:, :, :, lvl] = attn[:, :, :, lvl]
        _, c = nc.ms_deform_attn_forward(value, shapes, starts, loc, only)
        dv = nc.ms_deform_attn_backward(np.ones_like(out), c)[0]
        rows = np.zeros(value.shape[1], dtype=bool)
        rows[starts[lvl]:starts[lvl] + shapes[lvl].prod()] = True
        assert not dv[:, ~rows].any() and dv[:, rows].any()
        np.testing.assert_allclose(dv[:, rows], dvalue[:, rows], rtol=1e-12, atol=1e-12)


# -- identities -------------------------------------------------------------------------------------
def test_linear_in_value_and_adjoint():
    """The op is linear in value: f(a v1 + b v2) = a f(v1) + b f(v2), and the value gradient is its
    adjoint: <dout, f(v)> = <dvalue(dout), v>."""
    v1, shapes, starts, loc, attn = operands(*GRID[0])
    v2 = RNG.standard_normal(v1.shape)
    f = lambda v: nc.ms_deform_attn_forward(v, shapes, starts, loc, attn)[0]   # noqa: E731
    np.testing.assert_allclose(f(2.5 * v1 - 1.5 * v2), 2.5 * f(v1) - 1.5 * f(v2), rtol=1e-12, atol=1e-12)
    out, cache = nc.ms_deform_attn_forward(v1, shapes, starts, loc, attn)
    dout = RNG.standard_normal(out.shape)
    dvalue = nc.ms_deform_attn_backward(dout, cache)[0]
    assert np.sum(dout * out) == pytest.approx(np.sum(dvalue * v1), rel=1e-12)


def test_attention_gradient_is_the_sampled_value():
    """Linear in the attention weights too: <dattn, attn> = <dout, out>."""
    value, shapes, starts, loc, attn = operands(*GRID[3])
    out, cache = nc.ms_deform_attn_forward(value, shapes, starts, loc, attn)
    dout = RNG.standard_normal(out.shape)
    dattn = nc.ms_deform_attn_backward(dout, cache)[4]
    assert np.sum(dattn * attn) == pytest.approx(np.sum(dout * out), rel=1e-12)


def test_translation_by_whole_pixels():
    """Moving every location by one pixel of a level equals shifting that level's value map."""
    h, w = 5, 6
    shapes, starts = np.array([[h, w]]), np.array([0])
    value = RNG.standard_normal((1, h * w, 2, 3))
    loc = RNG.uniform(0.1, 0.7, (1, 4, 2, 1, 3, 2))
    attn = RNG.uniform(0.1, 1.0, (1, 4, 2, 1, 3))
    shifted = np.zeros_like(value).reshape(1, h, w, 2, 3)
    shifted[:, :, :-1] = value.reshape(1, h, w, 2, 3)[:, :, 1:]          # shifted[j] = value[j + 1]
    moved = loc.copy()
    moved[..., 0] += 1.0 / w
    a = nc.ms_deform_attn_forward(value, shapes, starts, moved, attn)[0]
    b = nc.ms_deform_attn_forward(shifted.reshape(value.shape), shapes, starts, loc, attn)[0]
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# -- dtypes, mutation, re-entrance, determinism ----------------------------------------------------
def test_float32_preserved_inputs_untouched_backward_twice():
    args = operands(*GRID[0], dtype=np.float32)
    pristine = [a.copy() for a in args]
    out, cache = run(args)
    assert out.dtype == np.float32
    dout = RNG.standard_normal(out.shape)                                # float64 dout is cast
    first = nc.ms_deform_attn_backward(dout, cache)
    second = nc.ms_deform_attn_backward(dout, cache)
    for g1, g2, a in zip(first, second, args):
        if g1 is not None:
            assert g1.dtype == np.float32 and g1.shape == a.shape
            np.testing.assert_array_equal(g1, g2)
    for a, p in zip(args, pristine):
        np.testing.assert_array_equal(a, p)
    expected = ref.ms_deform_attn(*[a.astype(np.float64) if a.dtype.kind == 'f' else a for a in args])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs():
    value, shapes, starts, loc, attn = operands(*GRID[0])
    strided = np.asfortranarray(value)
    out, _ = nc.ms_deform_attn_forward(strided, shapes, list(starts), loc[..., ::-1][..., ::-1], attn)
    np.testing.assert_array_equal(out, nc.ms_deform_attn_forward(value, shapes, starts, loc, attn)[0])


def test_bitwise_deterministic_across_thread_counts():
    """Same bits with 1 and 2 Numba threads (a problem above the one-thread threshold)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    value, shapes, starts, loc, attn = operands([[16, 12], [8, 6], [4, 3]], 96, 4, 16, 4,
                                                low=0.0, high=1.0, dtype=np.float32)
    dout = RNG.standard_normal((2, 96, 64)).astype(np.float32)
    assert 4 * attn.size * 16 >= nc._parallel.PARALLEL_MIN_WORK
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2, 1, 2):
            numba.set_num_threads(threads)
            out, cache = nc.ms_deform_attn_forward(value, shapes, starts, loc, attn)
            results.append((out,) + nc.ms_deform_attn_backward(dout, cache))
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            if a is not None:
                assert np.array_equal(a, b)


# -- errors -----------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    value, shapes, starts, loc, attn = operands(*GRID[0])
    f = nc.ms_deform_attn_forward
    cases = [
        ((value, shapes.astype(float), starts, loc, attn), TypeError, 'spatial_shapes must be an integer'),
        ((value, np.array([[4, 5], [0, 3], [1, 2]]), starts, loc, attn), ValueError, 'positive'),
        ((value, shapes[:, :1], starts, loc, attn), ValueError, r'spatial_shapes must have shape \(L, 2\)'),
        ((value, shapes, np.array([0, 20, 25]), loc, attn), ValueError,
         r'level_start_index must be .*\[0, 20, 26\]'),
        ((value, shapes, starts[:2], loc, attn), ValueError, 'level_start_index'),
        ((value, shapes, np.array([0.0, 20.0, 26.0]), loc, attn), TypeError,
         'level_start_index must be an integer'),
        ((value[:, :27], shapes, starts, loc, attn), ValueError, 'S = sum of H_l [*] W_l = 28'),
        ((value, shapes, starts, np.concatenate([loc, loc[..., :1]], -1), attn), ValueError,
         'sampling_locations must have shape'),
        ((value, shapes, starts, loc[:1], attn), ValueError, 'sampling_locations must have shape'),
        ((value, shapes, starts, loc[:, :, :1], attn), ValueError, 'sampling_locations'),
        ((value, shapes, starts, loc[:, :, :, :2], attn), ValueError, 'L = 3 levels'),
        ((value, shapes, starts, loc, attn[..., :2]), ValueError, 'attention_weights must have shape'),
        ((value, shapes, starts, loc, attn[..., None]), ValueError, 'attention_weights must be'),
        ((value.astype(np.int64), shapes, starts, loc, attn), TypeError, 'value must be float32 or float64'),
        ((value, shapes, starts, loc.astype(np.float32), attn), TypeError, 'same float dtype'),
        ((value[0], shapes, starts, loc, attn), ValueError, r'value must be \(N, S, M, D\)'),
        ((value.tolist(), shapes, starts, loc, attn), TypeError, 'value must be a numpy.ndarray'),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            f(*args)
    out, cache = f(value, shapes, starts, loc, attn)
    with pytest.raises(ValueError, match='dout must have shape'):
        nc.ms_deform_attn_backward(out[:, :1], cache)
    with pytest.raises(TypeError, match='dout must be a real floating'):
        nc.ms_deform_attn_backward(out.astype(int), cache)
    with pytest.raises(TypeError, match='cache of relu_forward'):
        nc.ms_deform_attn_backward(out, Cache('relu', positive=None))
    with pytest.raises(TypeError, match='needs the cache returned by ms_deform_attn_forward'):
        nc.ms_deform_attn_backward(out, dict(cache))


def test_impossible_output_is_refused():
    value, shapes, starts, loc, attn = operands([[2, 2]], 1, 1, 1, 1, n=1)
    big_loc = np.broadcast_to(loc, (1, 10 ** 7, 1, 1, 1, 2))
    big_attn = np.broadcast_to(attn, (1, 10 ** 7, 1, 1, 1))
    huge = np.broadcast_to(value, (1, 4, 1, 10 ** 12))
    with pytest.raises(ValueError, match='more than the .* of memory'):
        nc.ms_deform_attn_forward(huge, shapes, starts, big_loc, big_attn)


# -- the layer --------------------------------------------------------------------------------------
def layer_inputs(layer, n=2, lq=5, shapes=((4, 5), (2, 3)), width=2, mask=False, rng=RNG):
    """query, reference points (width 2 or 4), input_flatten, spatial shapes, level starts, mask."""
    shapes = np.array(shapes, dtype=np.int64)
    s = int(shapes.prod(axis=1).sum())
    dtype = layer.dtype
    query = rng.standard_normal((n, lq, layer.d_model)).astype(dtype)
    ref_pts = rng.uniform(0.1, 0.9, (n, lq, len(shapes), width)).astype(dtype)
    if width == 4:
        ref_pts[..., 2:] = rng.uniform(0.2, 0.6, ref_pts[..., 2:].shape)
    flat = rng.standard_normal((n, s, layer.d_model)).astype(dtype)
    padding = rng.uniform(size=(n, s)) < 0.3 if mask else None
    return query, ref_pts, flat, shapes, starts_of(shapes.tolist()), padding


def randomized(layer, scale=0.3, rng=RNG):
    """Non-zero offset and attention weights (the initialisation has zeros there)."""
    for p in layer.params.values():
        p += scale * rng.standard_normal(p.shape).astype(p.dtype)
    return layer


def test_layer_keys_and_initialisation():
    layer = nc.MSDeformAttn(16, n_levels=3, n_heads=4, n_points=2, rng=0)
    keys = {'sampling_offsets.weight': (48, 16), 'sampling_offsets.bias': (48,),
            'attention_weights.weight': (24, 16), 'attention_weights.bias': (24,),
            'value_proj.weight': (16, 16), 'value_proj.bias': (16,),
            'output_proj.weight': (16, 16), 'output_proj.bias': (16,)}
    state = layer.state_dict()
    assert list(state) == list(keys) and {k: v.shape for k, v in state.items()} == keys
    assert all(v.dtype == np.float32 for v in state.values())
    assert not state['sampling_offsets.weight'].any() and not state['attention_weights.weight'].any()
    assert not state['attention_weights.bias'].any() and not state['value_proj.bias'].any()
    ring = state['sampling_offsets.bias'].reshape(4, 3, 2, 2)
    np.testing.assert_allclose(ring[:, :, 1], 2 * ring[:, :, 0])          # point i at (i + 1) steps
    np.testing.assert_allclose(ring[:, 0, 0], [[1, 0], [0, 1], [-1, 0], [0, -1]], atol=1e-7)
    bound = math.sqrt(6 / 32)
    assert np.abs(state['value_proj.weight']).max() <= bound
    assert np.abs(state['value_proj.weight']).max() > 0.8 * bound
    same = nc.MSDeformAttn(16, n_levels=3, n_heads=4, n_points=2, rng=0).state_dict()
    assert all(np.array_equal(state[k], same[k]) for k in state)


def test_initial_offsets_ring():
    ring = initial_offsets(8, 1, 3)[:, 0]                                  # (heads, points, 2)
    np.testing.assert_allclose(np.abs(ring[:, 0]).max(-1), 1.0)           # larger component +-1
    np.testing.assert_allclose(ring[1, 0], [1.0, 1.0])                     # 45 degrees
    np.testing.assert_allclose(ring[:, 2], 3 * ring[:, 0])


class Attending(Module):
    """gradcheck_layer calls ``layer.forward(x)`` with one argument; this wraps MSDeformAttn so that
    ``x = (query, reference_points, input_flatten, spatial_shapes, level_start_index, mask)``."""

    def __init__(self, layer):
        super().__init__(dtype=layer.dtype)
        self.attn = self.add_module('attn', layer)

    def forward(self, x):
        return self.attn(*x)

    def backward(self, dout):
        return self.attn.backward(dout) + (None, None, None)


@pytest.mark.parametrize('width, mask', [(2, False), (4, True)])
def test_layer_gradcheck(width, mask):
    layer = randomized(nc.MSDeformAttn(8, n_levels=2, n_heads=2, n_points=2, dtype=np.float64, rng=1))
    x = layer_inputs(layer, n=1, lq=3, shapes=((3, 4), (2, 2)), width=width, mask=mask)
    report = nc.gradcheck_layer(Attending(layer), x, mode='random', n_directions=6)
    names = {r.name for r in report.results}
    assert {'x[0]', 'x[1]', 'x[2]', 'attn.sampling_offsets.weight', 'attn.value_proj.bias'} <= names


def test_layer_backward_against_closure_gradcheck():
    """Each input of the layer (through a closure over the others) in full mode."""
    layer = randomized(nc.MSDeformAttn(4, n_levels=2, n_heads=2, n_points=2, dtype=np.float64, rng=2))
    query, ref_pts, flat, shapes, starts, mask = layer_inputs(layer, n=2, lq=2, shapes=((2, 3), (1, 2)),
                                                              width=4, mask=True)

    def forward(q, r, f):
        return layer.forward(q, r, f, shapes, starts, mask), None

    def backward(dout, _):
        layer.zero_grad()
        return layer.backward(dout)
    report = nc.gradcheck(forward, backward, (query, ref_pts, flat), mode='full')
    assert report.ok


def test_layer_float32_batch_zero_and_sampling_locations():
    layer = nc.MSDeformAttn(8, n_levels=2, n_heads=2, n_points=3, rng=3)
    q, r, f, shapes, starts, _ = layer_inputs(layer, n=0, lq=4)
    out = layer.forward(q, r, f, shapes, starts)
    assert out.shape == (0, 4, 8) and out.dtype == np.float32
    grads = layer.backward(np.zeros_like(out))
    assert [g.shape for g in grads] == [q.shape, r.shape, f.shape]
    q, r, f, shapes, starts, mask = layer_inputs(layer, width=4, mask=True)
    out = layer.forward(q, r, f, shapes, starts, mask)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in layer.backward(out))


def test_layer_padding_mask_zeroes_value_rows():
    layer = randomized(nc.MSDeformAttn(8, n_levels=2, n_heads=2, n_points=2, dtype=np.float64, rng=4))
    q, r, f, shapes, starts, mask = layer_inputs(layer, mask=True)
    out = layer.forward(q, r, f, shapes, starts, mask)
    changed = f.copy()
    changed[mask] = RNG.standard_normal(changed[mask].shape)               # padded rows: ignored
    np.testing.assert_array_equal(layer.forward(q, r, changed, shapes, starts, mask), out)
    dflat = layer.backward(np.ones_like(out))[2]
    assert not dflat[mask].any() and dflat[~mask].any()


def test_layer_errors():
    with pytest.raises(ValueError, match='d_model must be divisible by n_heads'):
        nc.MSDeformAttn(10, n_heads=4)
    with pytest.raises(TypeError, match='n_points must be an int'):
        nc.MSDeformAttn(8, n_heads=2, n_points=2.0)
    layer = nc.MSDeformAttn(8, n_levels=2, n_heads=2, n_points=2, dtype=np.float64, rng=0)
    q, r, f, shapes, starts, mask = layer_inputs(layer, mask=True)
    with pytest.raises(ValueError, match=r'reference_points must have shape .* \(points\) or .* \(boxes\)'):
        layer.forward(q, np.concatenate([r, r[..., :1]], -1), f, shapes, starts)
    with pytest.raises(ValueError, match='n_levels=2 rows'):
        layer.forward(q, r, f, shapes[:1], starts[:1])
    with pytest.raises(ValueError, match='input_flatten must have S'):
        layer.forward(q, r, f[:, 1:], shapes, starts)
    with pytest.raises(ValueError, match='query must have shape'):
        layer.forward(q[..., :4], r, f, shapes, starts)
    with pytest.raises(TypeError, match='holds float64 parameters'):
        layer.forward(q.astype(np.float32), r, f, shapes, starts)
    with pytest.raises(TypeError, match='input_padding_mask must be a bool'):
        layer.forward(q, r, f, shapes, starts, mask.astype(np.int64))
    with pytest.raises(ValueError, match='level_start_index must be'):
        layer.forward(q, r, f, shapes, starts + 1)
    with pytest.raises(RuntimeError, match='call forward'):
        nc.MSDeformAttn(8, n_heads=2).backward(np.zeros((1, 1, 8), np.float32))


# -- PyTorch: the official pure-PyTorch path and module ------------------------------------------
def ms_deform_attn_core_pytorch(torch, value, value_spatial_shapes, sampling_locations, attention_weights):
    """Deformable-DETR ``ms_deform_attn_core_pytorch`` (models/ops/functions/ms_deform_attn_func.py),
    re-written for the tests and the benchmark: grid_sample per level, align_corners=False, zeros."""
    F = torch.nn.functional
    n, _, heads, d = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    value_list = value.split([int(h) * int(w) for h, w in value_spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(value_spatial_shapes):
        value_l = value_list[lvl].flatten(2).transpose(1, 2).reshape(n * heads, d, int(h), int(w))
        grid_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)             # (N*M, Lq, P, 2)
        sampled.append(F.grid_sample(value_l, grid_l, mode='bilinear', padding_mode='zeros',
                                     align_corners=False))                        # (N*M, D, Lq, P)
    attn = attention_weights.transpose(1, 2).reshape(n * heads, 1, lq, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * attn).sum(-1).view(n, heads * d, lq)
    return out.transpose(1, 2).contiguous()


def official_msdeformattn_class(torch):
    """Deformable-DETR ``MSDeformAttn`` (models/ops/modules/ms_deform_attn.py), re-written for the
    tests with its CUDA ``MSDeformAttnFunction`` replaced by :func:`ms_deform_attn_core_pytorch`."""
    nn, F = torch.nn, torch.nn.functional

    class OfficialMSDeformAttn(nn.Module):
        def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
            super().__init__()
            if d_model % n_heads != 0:
                raise ValueError('d_model must be divisible by n_heads')
            self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
            self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
            self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
            self.value_proj = nn.Linear(d_model, d_model)
            self.output_proj = nn.Linear(d_model, d_model)
            self._reset_parameters()

        def _reset_parameters(self):
            nn.init.constant_(self.sampling_offsets.weight.data, 0.)
            thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
            grid_init = torch.stack([thetas.cos(), thetas.sin()], -1)
            grid_init = (grid_init / grid_init.abs().max(-1, keepdim=True)[0]).view(
                self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
            for i in range(self.n_points):
                grid_init[:, :, i, :] *= i + 1
            with torch.no_grad():
                self.sampling_offsets.bias = nn.Parameter(grid_init.view(-1))
            nn.init.constant_(self.attention_weights.weight.data, 0.)
            nn.init.constant_(self.attention_weights.bias.data, 0.)
            nn.init.xavier_uniform_(self.value_proj.weight.data)
            nn.init.constant_(self.value_proj.bias.data, 0.)
            nn.init.xavier_uniform_(self.output_proj.weight.data)
            nn.init.constant_(self.output_proj.bias.data, 0.)

        def forward(self, query, reference_points, input_flatten, input_spatial_shapes,
                    input_level_start_index, input_padding_mask=None):
            n, len_q, _ = query.shape
            n, len_in, _ = input_flatten.shape
            assert (input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).sum() == len_in
            value = self.value_proj(input_flatten)
            if input_padding_mask is not None:
                value = value.masked_fill(input_padding_mask[..., None], float(0))
            value = value.view(n, len_in, self.n_heads, self.d_model // self.n_heads)
            offsets = self.sampling_offsets(query).view(n, len_q, self.n_heads, self.n_levels,
                                                        self.n_points, 2)
            attn = self.attention_weights(query).view(n, len_q, self.n_heads, self.n_levels * self.n_points)
            attn = F.softmax(attn, -1).view(n, len_q, self.n_heads, self.n_levels, self.n_points)
            if reference_points.shape[-1] == 2:
                normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
                loc = reference_points[:, :, None, :, None, :] \
                    + offsets / normalizer[None, None, None, :, None, :]
            elif reference_points.shape[-1] == 4:
                loc = reference_points[:, :, None, :, None, :2] \
                    + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            else:
                raise ValueError('Last dim of reference_points must be 2 or 4')
            output = ms_deform_attn_core_pytorch(torch, value, input_spatial_shapes, loc, attn)
            return self.output_proj(output)

    return OfficialMSDeformAttn


@pytest.mark.parametrize('config', GRID)
def test_op_matches_pytorch_path(config):
    """Outputs and every gradient equal ``ms_deform_attn_core_pytorch`` (no point on the rule's
    boundary: random locations), float64, relative error below 1e-10."""
    torch = pytest.importorskip('torch')
    value, shapes, starts, loc, attn = operands(*config)
    out, cache = nc.ms_deform_attn_forward(value, shapes, starts, loc, attn)
    dout = RNG.standard_normal(out.shape)
    dvalue, _, _, dloc, dattn = nc.ms_deform_attn_backward(dout, cache)
    tv, tl, ta = (torch.tensor(a, requires_grad=True) for a in (value, loc, attn))
    t_out = ms_deform_attn_core_pytorch(torch, tv, torch.tensor(shapes), tl, ta)
    t_out.backward(torch.tensor(dout))
    assert rel(out, t_out.detach().numpy()) < 1e-10
    for ours, theirs in ((dvalue, tv), (dloc, tl), (dattn, ta)):
        assert rel(ours, theirs.grad.numpy()) < 1e-10


def test_pytorch_path_differs_only_at_minus_one():
    """At h = -1 exactly grid_sample still has a y-gradient towards row 0; the CUDA kernel (and
    this op) samples nothing there. At h = H both give nothing."""
    torch = pytest.importorskip('torch')
    shapes, starts = np.array([[4, 4]]), np.array([0])
    value = RNG.standard_normal((1, 16, 1, 2))
    loc = np.array([0.4, -0.125, 0.4, 1.125]).reshape(1, 2, 1, 1, 1, 2)   # h = -1 and h = 4
    attn = np.ones((1, 2, 1, 1, 1))
    out, cache = nc.ms_deform_attn_forward(value, shapes, starts, loc, attn)
    dloc = nc.ms_deform_attn_backward(np.ones_like(out), cache)[3]
    tl = torch.tensor(loc, requires_grad=True)
    t_out = ms_deform_attn_core_pytorch(torch, torch.tensor(value), torch.tensor(shapes), tl,
                                        torch.tensor(attn))
    t_out.backward(torch.ones_like(t_out))
    np.testing.assert_array_equal(out, 0)
    assert np.all(dloc == 0)
    assert tl.grad[0, 0, 0, 0, 0, 1] != 0 and tl.grad[0, 1].abs().sum() == 0


def official_and_ours(torch, d_model=8, n_levels=2, n_heads=2, n_points=3):
    torch.manual_seed(0)
    official = official_msdeformattn_class(torch)(d_model, n_levels, n_heads, n_points).double()
    with torch.no_grad():
        for p in official.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ours = nc.MSDeformAttn(d_model, n_levels, n_heads, n_points, dtype=np.float64)
    ours.load_state_dict({k: v.numpy() for k, v in official.state_dict().items()})
    return official, ours


@pytest.mark.parametrize('width, mask', [(2, False), (2, True), (4, False), (4, True)])
def test_layer_matches_official_module(width, mask):
    torch = pytest.importorskip('torch')
    official, ours = official_and_ours(torch)
    q, r, f, shapes, starts, padding = layer_inputs(ours, n=2, lq=6, shapes=((5, 4), (3, 2)),
                                                    width=width, mask=mask)
    out = ours.forward(q, r, f, shapes, starts, padding)
    dout = RNG.standard_normal(out.shape)
    ours.zero_grad()
    dq, dr, df = ours.backward(dout)
    tq, tr, tf = (torch.tensor(a, requires_grad=True) for a in (q, r, f))
    t_out = official(tq, tr, tf, torch.tensor(shapes), torch.tensor(starts),
                     None if padding is None else torch.tensor(padding))
    t_out.backward(torch.tensor(dout))
    assert rel(out, t_out.detach().numpy()) < 1e-10
    for g, t in ((dq, tq), (dr, tr), (df, tf)):
        assert rel(g, t.grad.numpy()) < 1e-10
    grads = ours.grads
    for name, p in official.named_parameters():
        assert rel(grads[name], p.grad.numpy()) < 1e-10, name


def test_initialisation_matches_official():
    torch = pytest.importorskip('torch')
    official = official_msdeformattn_class(torch)(32, 4, 8, 4)
    ours = nc.MSDeformAttn(32, 4, 8, 4).state_dict()
    for key in ('sampling_offsets.weight', 'sampling_offsets.bias', 'attention_weights.weight',
                'attention_weights.bias', 'value_proj.bias', 'output_proj.bias'):
        np.testing.assert_allclose(ours[key], official.state_dict()[key].numpy(), rtol=1e-6, atol=1e-6)
    for key in ('value_proj.weight', 'output_proj.weight'):            # same distribution
        theirs = official.state_dict()[key].numpy()
        assert abs(np.abs(ours[key]).max() - np.abs(theirs).max()) < 0.05
