r"""Winograd F(2x2, 3x3): conv2d's fast path for 3x3 kernels at stride 1 (Lavin and Gray, 2016).

conv2d (``numpyconv.conv``) takes this path for a shared 3x3 kernel at stride 1, dilation 1 and
groups 1, in float64, when the channels and tiles are many enough that the GEMMs dominate
(:func:`winograd_pays`: about 192 -> 192 channels and up, at least 128 output tiles);
:func:`set_winograd` (process-wide) and :func:`winograd_mode` (one thread, a block) force it (any
float dtype) or turn it off. Its results equal the im2col path's to rounding: relative error
~1e-15 in float64. In float32 its largest errors are like the im2col path's, but an output's error
is not proportional to that output (the transforms mix values of both signs), so small outputs and
weight gradients carry larger relative errors (against PyTorch, ``allclose(rtol=1e-4, atol=1e-4)``
fails where the im2col path passes): 'auto' leaves float32 on im2col.

Each 2x2 output tile ``Y`` is computed from the 4x4 input tile ``d`` around it (input tiles overlap
by 2) as (docs/derivations/winograd.md)::

    Y = A^T [ (G g G^T) * (B^T d B) ] A     * elementwise; per (input, output) channel pair, summed
                                             over input channels                            (eq. 1)

    B^T = [[1, 0,-1, 0],   G = [[ 1,   0,   0 ],   A^T = [[1, 1, 1, 0],
           [0, 1, 1, 0],        [1/2, 1/2, 1/2],          [0, 1,-1,-1]]
           [0,-1, 1, 0],        [1/2,-1/2, 1/2],
           [0, 1, 0,-1]]        [ 0,   0,   1 ]]

The sum over input channels turns the 16 elementwise products into 16 GEMMs, one per tile
position ``xi = (a, b)``, 4 by 4 (eq. 2). Shapes, with ``P = n * Th * Tw`` tiles (``Th = ceil(Ho/2)``)
and the transforms in a channels-last layout so that every slice copies long runs::

    V  (16, P, C_in)      V[xi]  = tiles of x, transformed by B^T . B         (eq. 3)
    U  (16, C_out, C_in)  U[xi]  = G W G^T                                    (eq. 4)
    M  (16, P, C_out)     M[xi]  = V[xi] @ U[xi]^T                            (eq. 2)
    y                     tiles of A^T M A                                    (eq. 5)

Backward: every transform is linear, so its gradient is its transpose (eq. 6-9)::

    dM     = A dY A^T per tile  (the adjoint of eq. 5: gather with A^T's columns)     (eq. 6)
    dU[xi] = dM[xi]^T @ V[xi],   dW = G^T dU G                                        (eq. 7)
    dV[xi] = dM[xi] @ U[xi]                                                           (eq. 8)
    dx     = B dV B^T per tile, overlapping tiles added (the adjoint of eq. 3)        (eq. 9)

Multiplications per output pixel and channel pair: 16/4 = 4 instead of 9. The transforms are
memory passes over ``V`` and ``M``, so the path pays only when ``C_in * C_out / (C_in + C_out)`` is
large (and the tiles many). Batches are cut into blocks whose ``V`` and ``M`` take at most
``min(2 * GEMM_BLOCK, column_budget())`` bytes (conv2d's column bound): chunks of whole samples, or
bands of one sample's tile rows; a layer whose single row of tiles exceeds it uses im2col.
"""
import threading
from contextlib import contextmanager

import numpy as np

from .im2col import _inside
from .memory import GEMM_BLOCK, column_budget, even_steps, scratch

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=float)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=float)
G2 = np.kron(G, G)                  # (16, 9): U[(a,b)] = sum_{p,q} G[a,p] G[b,q] W[p,q]   (eq. 4)
# 'auto' takes the path from these (benchmarks/bench_winograd.py): the GEMMs' share of the work
# grows with C_in*C_out/(C_in+C_out); the kernel transforms (eq. 4, 7) cost the same at any batch,
# and thin GEMMs run slowly, so a few tiles do not pay either
MIN_CHANNELS = 96     # C_in*C_out/(C_in+C_out) at least this: 192 -> 192 channels and up
MIN_TILES = 128       # n * Th * Tw output tiles at least this: 8 samples at 8x8 outputs
MODES = ('auto', 'always', 'never')
_mode = 'auto'                      # set_winograd's, process-wide
_thread = threading.local()         # winograd_mode's, this thread's (None: none in force)


def _check_mode(mode):
    if not isinstance(mode, str):
        raise TypeError(f"mode must be one of the strings {MODES}, got {mode!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def set_winograd(mode):
    """When conv2d takes this path, for every thread: ``'auto'`` (the default: where it applies
    and pays), ``'always'`` (wherever it applies) or ``'never'``. Returns the previous setting.
    A conv2d call's backward pass follows the path its forward pass took."""
    global _mode
    _check_mode(mode)
    previous, _mode = _mode, mode
    return previous


@contextmanager
def winograd_mode(mode):
    """``with winograd_mode('never'): ...``: the mode for this thread's calls in the block (it
    overrides :func:`set_winograd`'s; blocks nest; other threads are not affected)."""
    _check_mode(mode)
    previous, _thread.mode = getattr(_thread, 'mode', None), mode
    try:
        yield
    finally:
        _thread.mode = previous


def _column_bound():
    return min(2 * GEMM_BLOCK, column_budget())


def applies(x, weight, groups, geo):
    """Whether (eq. 1) computes this convolution: a shared 3x3 kernel, stride 1, dilation 1,
    groups 1, a non-empty batch and input, and one tile row's ``V`` and ``M`` within the column bound."""
    return (weight.ndim == 4 and groups == 1 and geo.kernel == (3, 3) and geo.stride == (1, 1)
            and geo.dilation == (1, 1) and min(x.shape[:2]) > 0
            and _tile_row_bytes(x, weight, geo) <= _column_bound())


def winograd_pays(x, weight, groups, geo):
    """conv2d's choice under the mode in force (``'auto'``: it applies, float64, ``C_in*C_out >=
    MIN_CHANNELS * (C_in + C_out)`` and there are at least ``MIN_TILES`` output tiles)."""
    mode = getattr(_thread, 'mode', None) or _mode
    if mode == 'never' or not applies(x, weight, groups, geo):
        return False
    (c_out, c_in), (th, tw) = weight.shape[:2], _tiles(geo)
    return mode == 'always' or (x.dtype == np.float64 and c_in * c_out >= MIN_CHANNELS * (c_in + c_out)
                                and x.shape[0] * th * tw >= MIN_TILES)


def _tiles(geo):
    """``(Th, Tw)``: 2x2 output tiles covering ``Ho x Wo`` (the last row/column may overhang)."""
    return tuple(-(-size // 2) for size in geo.out_hw)


def _tile_row_bytes(x, weight, geo):
    """Bytes of the larger of ``V`` and ``M`` for one row of tiles of one sample."""
    return 16 * _tiles(geo)[1] * max(weight.shape[:2]) * x.itemsize


def _blocks(x, weight, geo):
    """``(s, t)`` pairs, a slice of samples and a slice of tile rows, whose ``V`` and ``M`` each take
    at most ``min(2 * GEMM_BLOCK, column_budget())`` bytes: chunks of whole samples, of equal size,
    when one sample fits; bands of one sample's tile rows otherwise (their input rows overlap by 2)."""
    th, row_bytes, bound = _tiles(geo)[0], _tile_row_bytes(x, weight, geo), _column_bound()
    if th * row_bytes <= bound:
        return [(s, slice(0, th)) for s in even_steps(x.shape[0], bound // (th * row_bytes))]
    bands = even_steps(th, max(1, bound // row_bytes))     # (1: a budget lowered after the forward)
    return [(slice(i, i + 1), t) for i in range(x.shape[0]) for t in bands]


# -- the tile transforms: gather (overlapping tiles in, eq. 3, 6), scatter (tiles out, eq. 5, 9) --
def _combine(terms, coefficients, out, accumulate=False):
    """``out = sum_k coefficients[k] * terms[k]`` (``+=`` with ``accumulate``) for coefficients
    in {-1, 0, 1}: additions only."""
    plus = [t for t, c in zip(terms, coefficients) if c > 0]
    minus = [t for t, c in zip(terms, coefficients) if c < 0]
    if not accumulate:                        # the first one or two terms write out; the rest add
        if plus and minus:
            np.subtract(plus.pop(0), minus.pop(0), out=out)
        elif len(plus) > 1:
            np.add(plus.pop(0), plus.pop(0), out=out)
        elif plus:
            out[...] = plus.pop(0)
        else:
            np.negative(minus.pop(0), out=out)
    for term in plus:
        out += term
    for term in minus:
        out -= term
    return out


def _along(axis, index):
    return (slice(None),) * axis + (index,)


def _gather(src, matrix, axis, out):
    """``out[a][.., i, ..] = sum_k matrix[a, k] * src[.., 2i + k, ..]`` along ``axis``: tiles of
    ``matrix.shape[1]`` entries at step 2 (overlapping when wider than 2), ``T = out.shape[axis+1]``
    of them."""
    tiles = out.shape[axis + 1]
    terms = [src[_along(axis, slice(k, k + 2 * tiles, 2))] for k in range(matrix.shape[1])]
    for a, row in enumerate(matrix):
        _combine(terms, row, out[a])
    return out


def _scatter(stacked, matrix, axis, out):
    """The adjoint of :func:`_gather`: ``out[.., 2i + k, ..] = sum_a matrix[a, k] * stacked[a][.., i, ..]``
    summed over the tiles that overlap there. Offsets 0 and 1 tile ``out`` once (assigned); wider
    tiles add the rest."""
    tiles = stacked.shape[axis + 1]
    out[_along(axis, slice(2 * tiles, None))] = 0
    for k, column in enumerate(matrix.T):
        _combine(stacked, column, out[_along(axis, slice(k, k + 2 * tiles, 2))], accumulate=k >= 2)
    return out


def _tile_gather(src, matrix, slot):
    """``src (H', W', n, ch)`` (channels last) gathered along both spatial axes (eq. 3, 6):
    ``(4, 4, Th, Tw, n, ch)`` in the scratch ``slot``, one ``(n*Th*Tw, ch)`` matrix per tile position."""
    width = matrix.shape[1]
    th, tw = (src.shape[0] - width) // 2 + 1, (src.shape[1] - width) // 2 + 1
    rows = scratch('wino_rows', (len(matrix), th) + src.shape[1:], src.dtype)   # (4a, Th, W', n, ch)
    _gather(src, matrix, 0, rows)
    out = scratch(slot, (len(matrix),) * 2 + (th, tw) + src.shape[2:], src.dtype)  # (4a, 4b, Th, Tw, n, ch)
    _gather(rows, matrix, 2, out.swapaxes(0, 1))
    return out


def _tile_scatter(tiles, matrix, out):
    """The adjoint of :func:`_tile_gather`: ``tiles (4a, 4b, Th, Tw, n, ch)`` -> ``out (H', W', n, ch)``
    (eq. 5, 9)."""
    _, b, th, tw = tiles.shape[:4]
    rows = scratch('wino_rows', (b, out.shape[0], tw) + tiles.shape[4:], tiles.dtype)  # (4b, H', Tw, n, ch)
    _scatter(tiles, matrix, 1, rows)
    return _scatter(rows, matrix, 1, out)


def _channels_last(a, shape, top, left, slot):
    """``a (n, ch, h, w)`` placed with its row 0 at row ``top`` (negative: above the array) and its
    column 0 at ``left`` in a zeroed ``shape (H', W', n, ch)`` scratch array; rows outside are cut."""
    h, w = a.shape[2:]
    rows, src = _inside(-top, 1, shape[0], h)                  # buffer rows, and a's rows there
    out = scratch(slot, shape, a.dtype)
    for border in np.s_[:rows.start], np.s_[rows.stop:], np.s_[rows, :left], np.s_[rows, left + w:]:
        out[border] = 0
    out[rows, left:left + w] = a[:, :, src].transpose(2, 3, 0, 1)
    return out


def _channels_first(a, top, left, out, accumulate=False):
    """``out (n, ch, h, w) = a[top:top+h, left:left+w]`` (``+=`` with ``accumulate``) for
    ``a (H', W', n, ch)``."""
    h, w = out.shape[2:]
    block = a[top:top + h, left:left + w].transpose(2, 3, 0, 1)
    if accumulate:
        out += block
    else:
        out[...] = block
    return out


# -- forward and backward -----------------------------------------------------------------------
def _kernel_transform(weight):
    """``U (16, C_out, C_in)`` of ``weight (C_out, C_in, 3, 3)`` (eq. 4), in scratch memory."""
    c_out, c_in = weight.shape[:2]
    u = scratch('kernel', (16, c_out * c_in), weight.dtype)
    np.matmul(G2.astype(weight.dtype), weight.reshape(c_out * c_in, 9).T, out=u)
    return u.reshape(16, c_out, c_in)


def _input_tiles(x, geo, t):
    """``V (16, n*T*Tw, C_in)`` of the tile rows ``t`` of ``x (n, C_in, H, W)`` zero-padded by
    ``geo.pads`` (eq. 3): padded input rows ``2*t.start`` to ``2*t.stop + 2``."""
    rows, tw = t.stop - t.start, _tiles(geo)[1]
    xt = _channels_last(x, (2 * rows + 2, 2 * tw + 2) + x.shape[:2], geo.pads[0] - 2 * t.start,
                        geo.pads[2], 'padded')
    return _tile_gather(xt, B_T, 'columns').reshape(16, -1, x.shape[1])


def _output_rows(t, geo):
    """The output rows of the tile rows ``t`` (the last tile may overhang ``Ho``)."""
    return slice(2 * t.start, min(2 * t.stop, geo.out_hw[0]))


def _input_grad_rows(dxt, t, geo, dx, accumulate):
    """Write (or add) the padded-input gradient ``dxt (2T+2, W', n, C_in)`` of the tile rows ``t``
    into ``dx (n, C_in, H, W)``: the rows inside ``x``, the padding's share dropped."""
    top = geo.pads[0] - 2 * t.start                                       # x's row 0 in dxt's rows
    rows, src = _inside(-top, 1, dxt.shape[0], geo.in_hw[0])         # dxt's rows, and x's rows there
    _channels_first(dxt, rows.start, geo.pads[2], dx[:, :, src], accumulate)


def winograd_conv2d(x, weight, geo):
    """``y (N, C_out, Ho, Wo)`` (no bias) by (eq. 1-5), block by block (:func:`_blocks`)."""
    u_t = _kernel_transform(weight).transpose(0, 2, 1)                    # (16, C_in, C_out)
    tw, c_out = _tiles(geo)[1], weight.shape[0]
    y = np.empty((x.shape[0], c_out) + geo.out_hw, dtype=x.dtype)
    for s, t in _blocks(x, weight, geo):
        v = _input_tiles(x[s], geo, t)                                    # (16, P, C_in)
        m = np.matmul(v, u_t, out=scratch('dcols', v.shape[:2] + (c_out,), x.dtype))   # (eq. 2)
        m = m.reshape((4, 4, t.stop - t.start, tw, s.stop - s.start, c_out))
        yt = _tile_scatter(m, A_T.T, scratch('padded', (2 * m.shape[2], 2 * tw) + m.shape[-2:], x.dtype))
        _channels_first(yt, 0, 0, y[s, :, _output_rows(t, geo)])          # (eq. 5)
    return y


def winograd_conv2d_backward(dout, x, weight, geo):
    """``(dx, dweight)`` of :func:`winograd_conv2d` (eq. 6-9)."""
    u = _kernel_transform(weight)                                         # (16, C_out, C_in)
    (th, tw), (c_out, c_in) = _tiles(geo), weight.shape[:2]
    du = scratch('kernel_grad', u.shape, u.dtype)
    blocks = _blocks(x, weight, geo)
    overlapping = blocks[0][1] != slice(0, th)         # bands: their input rows overlap, dx adds up
    dx = (np.zeros if overlapping else np.empty)(x.shape, dtype=x.dtype)
    for k, (s, t) in enumerate(blocks):
        n_s, rows = s.stop - s.start, t.stop - t.start
        dyt = _channels_last(dout[s, :, _output_rows(t, geo)], (2 * rows, 2 * tw, n_s, c_out), 0, 0, 'padded')
        dm = _tile_gather(dyt, A_T.T, 'wino_dm').reshape(16, -1, c_out)   # (16, P, C_out)  (eq. 6)
        v = _input_tiles(x[s], geo, t)                                    # (16, P, C_in)
        dm_t = dm.transpose(0, 2, 1)                                      # (16, C_out, P)
        if k == 0:
            np.matmul(dm_t, v, out=du)                                    # (eq. 7): the first block's tiles
        else:
            du += dm_t @ v                                                # the other blocks' tiles add
        dv = np.matmul(dm, u, out=scratch('dcols', v.shape, x.dtype))     # (eq. 8)
        dxt = scratch('padded', (2 * rows + 2, 2 * tw + 2, n_s, c_in), x.dtype)
        _tile_scatter(dv.reshape((4, 4, rows, tw) + dxt.shape[2:]), B_T, dxt)   # (eq. 9)
        _input_grad_rows(dxt, t, geo, dx[s], accumulate=overlapping)
    dw = du.reshape(16, c_out * c_in).T @ G2.astype(x.dtype)              # G^T dU G  (eq. 7)
    return dx, dw.reshape(weight.shape)
