"""Winograd F(2x2, 3x3), conv2d's fast path: reference, gradcheck, identities, dispatch, bounds."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numpyconv as nc
from numpyconv import conv as C
from numpyconv import winograd as W
from numpyconv.memory import GEMM_BLOCK, scratch
from numpyconv.reference import conv as ref

RNG = np.random.default_rng(77)


def operands(n, c_in, c_out, h, w, dtype=np.float64):
    return (RNG.standard_normal((n, c_in, h, w)).astype(dtype),
            RNG.standard_normal((c_out, c_in, 3, 3)).astype(dtype), RNG.standard_normal(c_out).astype(dtype))


def winograd_conv(padding):
    """conv2d forced onto the Winograd path (the backward follows the forward's path)."""
    def forward(x, wt, b):
        with W.winograd_mode('always'):
            y, cache = C.conv2d_forward(x, wt, b, 1, padding)
        assert cache['winograd']
        return y, cache
    return forward


# (N, C_in, C_out, H, W, padding): odd and even outputs (a tile overhangs), asymmetric padding,
# 'same', 'valid', a 1x1 output, batch 1 and 3, non-square
GRID = [(1, 3, 4, 5, 7, 1), (3, 2, 5, 6, 6, 0), (1, 4, 3, 9, 4, (2, 1)), (2, 5, 5, 1, 1, 1),
        (3, 3, 2, 4, 5, 'same'), (2, 3, 2, 3, 3, 'valid'), (1, 2, 2, 8, 8, (0, 3))]


@pytest.mark.parametrize('case', GRID)
def test_matches_reference_and_gradcheck(case):
    n, c_in, c_out, h, w, padding = case
    x, wt, b = operands(n, c_in, c_out, h, w)
    forward = winograd_conv(padding)
    np.testing.assert_allclose(forward(x, wt, b)[0], ref.conv2d(x, wt, b, 1, padding), rtol=1e-12, atol=1e-12)
    nc.gradcheck(forward, C.conv2d_backward, (x, wt, b))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c_in=st.integers(2, 5), c_out=st.integers(1, 5), h=st.integers(1, 9),
       w=st.integers(1, 9), pads=st.tuples(*[st.integers(0, 3)] * 4), seed=st.integers(0, 2 ** 16))
def test_property_equals_im2col_path_forward_and_backward(n, c_in, c_out, h, w, pads, seed):
    # the metamorphic identity: the two algorithms compute the same convolution (c_in = 1 would
    # be depthwise, which conv2d computes by shifted copies)
    rng = np.random.default_rng(seed)
    x, wt = rng.standard_normal((n, c_in, h, w)), rng.standard_normal((c_out, c_in, 3, 3))
    if h + pads[0] + pads[1] < 3 or w + pads[2] + pads[3] < 3:
        return                                                  # the kernel does not fit
    padded = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))   # asymmetric padding, any of 4 sides
    with W.winograd_mode('always'):
        y, cache = C.conv2d_forward(padded, wt)
    with W.winograd_mode('never'):
        y_ref, cache_ref = C.conv2d_forward(padded, wt)
    dy = rng.standard_normal(y.shape)
    assert cache['winograd'] and not cache_ref['winograd']
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(C.conv2d_backward(dy, cache)[:2], C.conv2d_backward(dy, cache_ref)[:2]):
        np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('h, w, padding', [(5, 7, (1, 1, 1, 1)), (6, 4, (2, 0, 0, 3))])
def test_winograd_kernels_gradcheck_directly(h, w, padding):
    # the two kernels themselves, float64, without conv2d's dispatch: (eq. 1-5) and (eq. 6-9)
    x, wt, _ = operands(2, 3, 4, h, w)
    out_hw = (h + padding[0] + padding[1] - 2, w + padding[2] + padding[3] - 2)
    geo = C.Geometry((3, 3), (1, 1), (1, 1), padding, out_hw, (h, w))   # asymmetric pads, set directly
    np.testing.assert_allclose(W.winograd_conv2d(x, wt, geo),
                               ref.conv2d(np.pad(x, ((0, 0), (0, 0), padding[:2], padding[2:])), wt),
                               rtol=1e-12, atol=1e-12)
    nc.gradcheck(lambda x, wt: W.winograd_conv2d(x, wt, geo),
                 lambda dy, x, wt: W.winograd_conv2d_backward(dy, x, wt, geo), (x, wt), returns_cache=False)


def test_adjoint_dot_products():
    # <conv(x), dy> == <x, dx(dy)> (the input transform's adjoint, eq. 9) and <conv(x; w), dy> ==
    # <w, dw(dy)> (eq. 7): the convolution is linear in x and in w
    x, wt, _ = operands(2, 4, 3, 7, 6)
    y, cache = winograd_conv((1, 2))(x, wt, None)
    dy = RNG.standard_normal(y.shape)
    dx, dw, _ = C.conv2d_backward(dy, cache)
    lhs = np.vdot(y, dy)
    assert np.isclose(lhs, np.vdot(x, dx), rtol=1e-12) and np.isclose(lhs, np.vdot(wt, dw), rtol=1e-12)


def test_tile_transforms_are_adjoint_pairs():
    # <gather(s), t> == <s, scatter(t)> for both matrices: eq. 3 / 9 and eq. 6 / 5
    for matrix, width in ((W.B_T, 4), (W.A_T.T, 2)):
        src = RNG.standard_normal((2 * 3 + width - 2, 2 * 2 + width - 2, 2, 3))   # (H', W', n, ch), 3x2 tiles
        tiles = W._tile_gather(src, matrix, 'columns').copy()                    # (4, 4, 3, 2, n, ch)
        t = RNG.standard_normal(tiles.shape)
        back = W._tile_scatter(t, matrix, np.empty(src.shape))
        assert np.isclose(np.vdot(tiles, t), np.vdot(src, back), rtol=1e-12)


def test_kernel_transform_matches_the_formula():
    wt = RNG.standard_normal((3, 2, 3, 3))
    u = W._kernel_transform(wt)                                                 # (16, C_out, C_in)
    expected = np.einsum('ap,ocpq,bq->aboc', W.G, wt, W.G).reshape(16, 3, 2)
    np.testing.assert_allclose(u, expected, rtol=1e-14)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_dtype_preserved_and_float32_close(dtype):
    x, wt, b = operands(2, 6, 5, 8, 7, dtype)
    y, cache = winograd_conv(1)(x, wt, b)
    grads = C.conv2d_backward(np.ones_like(y), cache)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    expected = ref.conv2d(*(a.astype(np.float64) for a in (x, wt, b)), 1, 1)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_non_contiguous_inputs_and_no_mutation():
    base, wt, b = operands(2, 8, 4, 9, 12)
    x, dy = base[:, ::2, :, ::2], RNG.standard_normal((4, 2, 9, 6)).transpose(1, 0, 2, 3)
    wt = np.asfortranarray(wt[:, :4])
    copies = [a.copy() for a in (x, wt, b, dy)]
    y, cache = winograd_conv(1)(x, wt, b)
    np.testing.assert_allclose(y, ref.conv2d(np.ascontiguousarray(x), np.ascontiguousarray(wt), b, 1, 1),
                               rtol=1e-12, atol=1e-12)
    C.conv2d_backward(dy, cache)
    for a, c in zip((x, wt, b, dy), copies):
        np.testing.assert_array_equal(a, c)
    nc.gradcheck(winograd_conv(1), C.conv2d_backward, (x, wt, b))


def test_chunks_of_samples_give_the_unchunked_result(monkeypatch):
    x, wt, b = operands(5, 6, 7, 6, 5)
    y, cache = winograd_conv(1)(x, wt, b)
    dy = RNG.standard_normal(y.shape)
    grads = C.conv2d_backward(dy, cache)
    one_sample = 3 * W._tile_row_bytes(x, wt, cache['geo'])            # 3 rows of 2x2 tiles
    monkeypatch.setattr(W, 'GEMM_BLOCK', one_sample * 3 // 2)   # 3 samples per chunk: 2 + 3 of 5
    assert [(s.stop - s.start, t) for s, t in W._blocks(x, wt, cache['geo'])] == [(2, slice(0, 3)),
                                                                                 (3, slice(0, 3))]
    y2, cache2 = winograd_conv(1)(x, wt, b)
    np.testing.assert_allclose(y2, y, rtol=1e-13, atol=1e-13)
    for g2, g in zip(C.conv2d_backward(dy, cache2), grads):
        np.testing.assert_allclose(g2, g, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize('bands', [False, True])
def test_stale_scratch_contents_do_not_leak(set_budget, bands):
    # every slot the path uses filled with NaN before the forward and before the backward pass:
    # zero borders, overhanging tiles and the overlapping scatter must all be written, not assumed
    x, wt, b = operands(3, 5, 4, 7, 6)
    if bands:                                                            # 2 tile rows per block
        set_budget(2 * W._tile_row_bytes(x, wt, C.conv_geometry((7, 6), 3, 1, (2, 1), 1)))
    y, cache = winograd_conv((2, 1))(x, wt, b)
    dy = RNG.standard_normal(y.shape)
    grads = C.conv2d_backward(dy, cache)
    slots = ('columns', 'kernel', 'kernel_grad', 'dcols', 'padded', 'wino_rows', 'wino_dm')

    def poison():
        for slot in slots:
            scratch(slot, (2 * GEMM_BLOCK // 8,), np.float64)[...] = np.nan
    poison()
    y2, cache2 = winograd_conv((2, 1))(x, wt, b)
    poison()
    np.testing.assert_array_equal(y2, y)
    for a, c in zip(C.conv2d_backward(dy, cache2), grads):
        np.testing.assert_array_equal(a, c)


def test_dispatch_rule():
    geo = C.conv_geometry((14, 14), 3, 1, 1, 1)
    big, small = (np.zeros((8, c, 14, 14)) for c in (256, 64))                  # 8 * 7 * 7 = 392 tiles
    w_big, w_small = np.zeros((256, 256, 3, 3)), np.zeros((64, 64, 3, 3))
    assert W.winograd_pays(big, w_big, 1, geo) and not W.winograd_pays(small, w_small, 1, geo)
    assert W.winograd_pays(big[:3], w_big, 1, geo) and not W.winograd_pays(big[:2], w_big, 1, geo)  # 147, 98
    # float32: the im2col path (its rounding is proportional to each output), unless forced
    assert not W.winograd_pays(big.astype(np.float32), w_big.astype(np.float32), 1, geo)
    with W.winograd_mode('always'):
        assert W.winograd_pays(big.astype(np.float32), w_big.astype(np.float32), 1, geo)
    # C_in * 256 >= 96 * (C_in + 256) from C_in = 154 on
    assert not W.winograd_pays(big[:, :153], np.zeros((256, 153, 3, 3)), 1, geo)
    assert W.winograd_pays(big[:, :154], np.zeros((256, 154, 3, 3)), 1, geo)
    with W.winograd_mode('always'):
        assert W.winograd_pays(small, w_small, 1, geo)
    with W.winograd_mode('never'):
        assert not W.winograd_pays(big, w_big, 1, geo)
    # where F(2x2, 3x3) does not compute the convolution, conv2d stays on im2col
    for x, wt, hyper in [(small, w_small, dict(stride=2, padding=1)),
                         (small, w_small, dict(padding=2, dilation=2)),
                         (small, np.zeros((64, 32, 3, 3)), dict(padding=1, groups=2)),
                         (small, np.zeros((64, 64, 3, 2)), dict(padding=1)),
                         (small, np.zeros((8, 64, 64, 3, 3)), dict(padding=1)),
                         (np.zeros((0, 64, 14, 14)), w_small, dict(padding=1)),
                         (np.zeros((2, 0, 14, 14)), np.zeros((3, 0, 3, 3)), dict(padding=1))]:
        with W.winograd_mode('always'):
            assert not C.conv2d_forward(x, wt, **hyper)[1]['winograd']


def test_chunks_keep_the_column_budget(set_budget):
    x, wt, b = operands(5, 6, 4, 9, 7)
    geo = C.conv_geometry((9, 7), 3, 1, (2, 1), 1)                     # 11x7 output: 6 tile rows
    set_budget(2 * 6 * W._tile_row_bytes(x, wt, geo))
    assert [s.stop - s.start for s, _ in W._blocks(x, wt, geo)] == [1, 2, 2]
    np.testing.assert_allclose(winograd_conv((2, 1))(x, wt, b)[0], ref.conv2d(x, wt, b, 1, (2, 1)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('h, padding, rows_per_band', [(9, (2, 1), 2), (10, 1, 1), (3, (4, 2), 1), (2, 5, 2)])
def test_bands_of_tile_rows_when_one_sample_exceeds_the_budget(set_budget, h, padding, rows_per_band):
    # a sample larger than the bound is cut into bands of tile rows; neighbouring bands read 2 shared
    # input rows, whose gradients add. Padding 4-5 puts whole bands in the padding (no input row).
    x, wt, b = operands(2, 3, 4, h, 7)
    geo = C.conv_geometry((h, 7), 3, 1, padding, 1)
    set_budget(rows_per_band * W._tile_row_bytes(x, wt, geo))
    blocks = W._blocks(x, wt, geo)
    assert all(s.stop - s.start == 1 and t.stop - t.start <= rows_per_band for s, t in blocks)
    assert len(blocks) == 2 * -(-W._tiles(geo)[0] // rows_per_band)
    forward = winograd_conv(padding)
    np.testing.assert_allclose(forward(x, wt, b)[0], ref.conv2d(x, wt, b, 1, padding), rtol=1e-12, atol=1e-12)
    nc.gradcheck(forward, C.conv2d_backward, (x, wt, b))


def test_budget_lowered_between_forward_and_backward(set_budget):
    # the backward recomputes the blocks under the budget of the moment: one tile row at the least
    x, wt, b = operands(2, 4, 4, 10, 10)
    y, cache = winograd_conv(1)(x, wt, b)
    dy = RNG.standard_normal(y.shape)
    grads = C.conv2d_backward(dy, cache)
    set_budget(64)                                                       # below one row of tiles
    for g2, g in zip(C.conv2d_backward(dy, cache), grads):
        np.testing.assert_allclose(g2, g, rtol=1e-12, atol=1e-12)


def test_one_tile_row_beyond_the_column_bound_uses_im2col(set_budget):
    x, wt, b = operands(2, 4, 4, 10, 10)
    set_budget(W._tile_row_bytes(x, wt, C.conv_geometry((10, 10), 3, 1, 1, 1)) - 1)
    with W.winograd_mode('always'):
        y, cache = C.conv2d_forward(x, wt, b, 1, 1)
    assert not cache['winograd']
    np.testing.assert_allclose(y, ref.conv2d(x, wt, b, 1, 1), rtol=1e-12, atol=1e-12)


def test_set_winograd_checks_and_returns_the_previous_mode():
    assert W.set_winograd('never') == 'auto'
    assert W.set_winograd('auto') == 'never'
    for bad in (W.set_winograd, W.winograd_mode):
        with pytest.raises(TypeError, match="mode must be one of the strings"):
            with bad(True):
                pass
        with pytest.raises(ValueError, match="mode must be one of"):
            with bad('sometimes'):
                pass


def test_winograd_mode_is_per_thread_and_nests_and_set_winograd_is_process_wide(concurrently):
    x, wt = np.zeros((1, 4, 6, 6)), np.zeros((4, 4, 3, 3))

    def path(_):
        return C.conv2d_forward(x, wt, padding=1)[1]['winograd']
    with W.winograd_mode('always'):
        assert path(None) and concurrently(path, [None], repeats=1) == [False]   # not in other threads
        with W.winograd_mode('never'):
            assert not path(None)
        assert path(None)                                                        # restored
    previous = W.set_winograd('always')
    try:
        assert concurrently(path, [None], repeats=1) == [True]                   # every thread
        with W.winograd_mode('never'):
            assert not path(None)                                                # the block overrides it
    finally:
        W.set_winograd(previous)
    assert not path(None)


def test_concurrent_calls_from_threads_match_sequential_results(concurrently):
    cases = [operands(2, 4 + k, 3 + k, 6 + k, 7) for k in range(4)]

    def run(case):
        y, cache = winograd_conv(1)(*case)            # each thread's own winograd_mode block
        return [y] + list(C.conv2d_backward(np.ones_like(y), cache))
    expected = [run(case) for case in cases]
    results = concurrently(run, cases, repeats=5)
    for got, want in zip(results, expected):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_layer_at_a_winograd_size_matches_torch():
    torch = pytest.importorskip('torch')
    module = torch.nn.Conv2d(192, 192, 3, padding=1).double()
    layer = nc.Conv2d(192, 192, 3, padding=1, dtype=np.float64)
    layer.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})
    x = RNG.standard_normal((8, 192, 9, 8))                  # 8 * 5 * 4 = 160 tiles: 'auto' takes it
    y = layer(x)
    assert layer._cache['winograd']
    tx = torch.tensor(x, requires_grad=True)
    ty = module(tx)
    dy = RNG.standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.grads['weight'], module.weight.grad.numpy(), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(layer.grads['bias'], module.bias.grad.numpy(), rtol=1e-10, atol=1e-9)
