"""Direct float64 gradchecks of the inner forward/backward pairs the public ops are built from.

The public ops are checked end to end elsewhere; these pin each shared piece on its own, so that a
failure points at the piece (the column GEMM shared by conv2d and the deformable convolutions, the
normalisation core of batch_norm/layer_norm, the octave pooling pyramid, the DCNv3 centre scale).
"""
import numpy as np
import pytest

from numpyconv import blocks, conv as C, dcnv3, gemm, octave
from numpyconv.gradcheck import gradcheck

RNG = np.random.default_rng(7)


@pytest.mark.parametrize('per_sample, groups', [(False, 1), (False, 2), (True, 2)])
def test_cols_matmul_pair(per_sample, groups):
    cols = RNG.standard_normal((3, 4, 3, 2, 4, 5))                       # (n, C, kh, kw, Ho, Wo)
    weight = RNG.standard_normal(((3,) if per_sample else ()) + (6, 4 // groups, 3, 2))

    def forward(cols, weight):
        return gemm.cols_matmul(cols, weight, groups), (cols, weight)

    def backward(dy, cache):
        return gemm.cols_matmul_backward(dy, cache[0], cache[1], groups)
    gradcheck(forward, backward, (cols, weight))


@pytest.mark.parametrize('groups', [1, 2])
def test_cols_matmul_block_layout_equals_per_sample(groups):
    # columns laid out (C, kh, kw, n, Ho, Wo) (conv2d's blocks, the deformable columns): one GEMM
    # over the batch for y, dweight and dcols; same values as the per-sample GEMMs, and dcols comes
    # back in the block layout
    cols = RNG.standard_normal((3, 4, 3, 2, 4, 5))                       # (n, C, kh, kw, Ho, Wo)
    block = np.ascontiguousarray(cols.transpose(1, 2, 3, 0, 4, 5)).transpose(3, 0, 1, 2, 4, 5)
    weight, dy = RNG.standard_normal((6, 4 // groups, 3, 2)), RNG.standard_normal((3, 6, 4, 5))
    assert gemm._batch_inside(block) and not gemm._batch_inside(cols)
    np.testing.assert_allclose(gemm.cols_matmul(block, weight, groups),
                               gemm.cols_matmul(cols, weight, groups), rtol=1e-13, atol=1e-13)
    (dcols_b, dw_b), (dcols, dw) = (gemm.cols_matmul_backward(dy, c, weight, groups) for c in (block, cols))
    assert gemm._batch_inside(dcols_b)
    again, _ = gemm.cols_matmul_backward(2 * dy, block, weight, groups)
    assert not np.shares_memory(again, dcols_b)                          # fresh unless reuse=True
    reused, _ = gemm.cols_matmul_backward(dy, block, weight, groups, reuse=True)
    assert np.shares_memory(reused, gemm.cols_matmul_backward(dy, block, weight, groups, reuse=True)[0])
    np.testing.assert_allclose(dcols_b, dcols, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dw_b, dw, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize('budget', [None, 1])
@pytest.mark.parametrize('stride, padding, per_sample', [((2, 1), 1, False), (1, (2, 1), False),
                                                        (1, 0, True), (3, 2, True)])
def test_conv_gemm_backward_in_blocks(set_budget, budget, stride, padding, per_sample):
    """The blocked GEMM backward: col2im at stride > 1, the transposed convolution at stride 1,
    padding applied on the fly; budget 1 byte gives blocks of one output row."""
    x = RNG.standard_normal((3, 4, 6, 5))
    w = RNG.standard_normal(((3,) if per_sample else ()) + (6, 2, 3, 3))
    if budget:
        set_budget(budget)
    gradcheck(lambda x, w: C.conv2d_forward(x, w, stride=stride, padding=padding, groups=2),
              lambda dy, cache: C.conv2d_backward(dy, cache)[:2], (x, w))


@pytest.mark.parametrize('axes', [(0,), (0, 2, 3), (-1,)])
def test_normalize_and_scale_shift_pairs(axes):
    x = RNG.standard_normal((3, 4, 2, 5))
    shape = [1 if a in [ax % 4 for ax in axes] else n for a, n in enumerate(x.shape)]
    weight, bias = RNG.standard_normal(int(np.prod(shape))), RNG.standard_normal(int(np.prod(shape)))

    def forward(x, weight, bias):
        x_hat, inv_std, _, _ = blocks._normalize(x, axes, 1e-5)
        y = blocks._scale_shift(x_hat, weight, bias, shape)
        return y, dict(weight=weight, x_hat=x_hat, inv_std=inv_std, has_bias=True, shape=shape)

    def backward(dy, cache):
        g, dweight, dbias = blocks._scale_shift_backward(dy, cache, axes)
        dx = blocks._normalize_backward(g, cache['x_hat'], cache['inv_std'], axes)
        return dx, dweight.reshape(weight.shape), dbias.reshape(bias.shape)
    gradcheck(forward, backward, (x, weight, bias))


def test_octave_pyramid_pair():
    x = RNG.standard_normal((2, 3, 8, 8))

    def forward(x):
        levels, caches = octave._pyramid_forward(x, 2)                  # x, P x, P P x
        return tuple(levels), caches

    def backward(dlevels, caches):
        return octave._pyramid_backward(list(dlevels), caches, x.shape, x.dtype)
    gradcheck(forward, backward, (x,))


def test_dcnv3_center_feature_scale_pair():
    query, core, value = (RNG.standard_normal((2, 3, 4, 6)) for _ in range(3))
    weight, bias = RNG.standard_normal((2, 6)), RNG.standard_normal(2)
    gradcheck(lambda q, w, b, c, v: dcnv3.center_feature_scale_forward(q, w, b, c, v, group=2),
              dcnv3.center_feature_scale_backward, (query, weight, bias, core, value))


@pytest.mark.parametrize('per_sample, layout', [(False, 'block'), (False, 'batch'), (True, 'batch')])
@pytest.mark.parametrize('n', [1, 3])
def test_cols_matmul_writes_into_out(per_sample, layout, n):
    # out= receives y itself: the GEMM's own output for one sample on the block layout and for the
    # batch-outside layout, a copy for several samples on the block layout
    cols = RNG.standard_normal((n, 4, 3, 2, 4, 5))
    if layout == 'block':
        cols = np.ascontiguousarray(cols.transpose(1, 2, 3, 0, 4, 5)).transpose(3, 0, 1, 2, 4, 5)
    weight = RNG.standard_normal(((n,) if per_sample else ()) + (6, 2, 3, 2))
    out = np.full((n, 6, 4, 5), np.nan)
    assert gemm.cols_matmul(cols, weight, 2, out=out) is out
    np.testing.assert_array_equal(out, gemm.cols_matmul(cols, weight, 2))


@pytest.mark.parametrize('c, hw, batch, transposed', [(4, 8, 1, True), (64, 3, 1, False), (64, 3, 8, True),
                                                       (64, 9, 1, True)])
def test_stride_one_backward_takes_the_cheaper_equations(monkeypatch, c, hw, batch, transposed):
    """At stride 1, (eq. 7a, 6a) flip the kernel twice; (eq. 6, 7) add the columns back: the
    backward takes the transposed convolution only when the kernel is smaller than x's columns,
    with the same gradients either way."""
    x, w = RNG.standard_normal((batch, c, hw, hw)), RNG.standard_normal((c, c, 3, 3))
    y, cache = C.conv2d_forward(x, w, padding=1)
    dy = RNG.standard_normal(y.shape)
    assert C._transposed_pays(x, w, cache['geo']) == transposed == (c < batch * hw * hw)
    taken = []
    for name in ('_unit_stride_backward', '_strided_backward'):
        monkeypatch.setattr(C, name, lambda *a, _f=getattr(C, name), _n=name: taken.append(_n) or _f(*a))
    dx, dw, _ = C.conv2d_backward(dy, cache)
    assert taken == ['_unit_stride_backward' if transposed else '_strided_backward']
    other = (C._strided_backward if transposed else C._unit_stride_backward)(dy, x, w, 1, cache['geo'])
    np.testing.assert_allclose(dx, other[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, other[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('n', [1, 3])
def test_bank_grad_is_the_transposed_product(n):
    # one sample: the outer product by broadcasting; several: the GEMM; the same numbers either way
    attention, dmixed = RNG.standard_normal((n, 4)), RNG.standard_normal((n, 30))
    np.testing.assert_allclose(gemm.bank_grad(attention, dmixed), attention.T @ dmixed, rtol=1e-14, atol=0)
    assert gemm.bank_grad(attention, dmixed).shape == (4, 30)
