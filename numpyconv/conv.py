r"""Standard, depthwise, pointwise and separable convolution over the im2col/GEMM core.

Shapes (PyTorch conventions, groups as contiguous channel blocks, no kernel flip)::

    x      (N, C_in, H, W)
    weight (C_out, C_in // G, kh, kw)         or per sample (N, C_out, C_in // G, kh, kw)
    bias   (C_out,)                           or per sample (N, C_out)
    y      (N, C_out, Ho, Wo),  Ho = floor((H + p_t + p_b - dh*(kh-1) - 1) / sh) + 1

Forward (docs/derivations/conv.md, eq. 1), with ``g(o) = o // (C_out/G)`` and ``C_g = C_in/G``::

    y[n,o,i,j] = b[o] + sum_{c<C_g, p<kh, q<kw} W[o,c,p,q] * xp[n, g(o)*C_g + c, i*sh + p*dh, j*sw + q*dw]

As a GEMM per group (eq. 4): ``cols = im2col(x)`` (padding applied on the fly, no padded copy)
viewed as ``Xc (N, G, C_g*kh*kw, Ho*Wo)``, ``Wr = W.reshape(G, O_g, C_g*kh*kw)``, ``Y = Wr @ Xc``.

Backward, with ``dYr = dy.reshape(N, G, O_g, Ho*Wo)``:

* ``db[o] = sum_{n,i,j} dy[n,o,i,j]``                                          (eq. 5)
* ``dW = sum_n dYr[n] @ Xc[n]^T``   (correlation of x with dy)                  (eq. 6)
* ``dx = col2im(Wr^T @ dYr)`` straight into x's shape (the transposed convolution)  (eq. 7)
* at stride 1, ``dx = conv(dyp, Wt)`` with ``dyp = pad(dy, d*(k-1) - padding)`` and ``Wt = W``
  flipped and transposed per group (eq. 7a), and ``dW`` is ``Wt``'s weight gradient of that
  convolution for output gradient ``x``, flipped and transposed back (eq. 6a): one im2col of
  ``dyp`` serves both. It is taken when the kernel has fewer entries than the columns of ``x``
  (``C_out/G < N*Ho*Wo``): the two flips cost a kernel's size, col2im a column buffer's.

Per-sample weights drop the sum over ``n`` in (eq. 6): one batched GEMM, no Python loop over samples.
A shared float64 3x3 kernel at stride 1, dilation 1, groups 1, with channels and output tiles many
enough (192 -> 192 and up, at least 128 2x2 tiles), is computed by Winograd F(2x2, 3x3) instead:
16 GEMMs on transformed tiles, 4 multiplications per output instead of 9 (``numpyconv/winograd.py``,
docs/derivations/winograd.md; ``set_winograd``, ``winograd_mode``).
im2col and the GEMM run block by block (``GEMM_BLOCK`` bytes of columns, at most twice that; in a buffer laid
out ``(C_in, kh, kw, n_block, Ho, Wo)`` so a block is one matrix); the cache keeps no columns and
no padded copy, only ``x`` (a reference, so ``x`` must not be modified before the backward pass).
Depthwise convolution (one input channel per group) skips im2col: Numba loops (eq. 8-10), parallel
over planes, add each kernel offset's scaled taps over the rectangle of outputs that read inside
``x`` only (the padding is never built). When ``Wo == ceil(W/sw)`` the rectangle is one run of the
flattened output and of one phase plane of ``x`` (``x[a::sh, b::sw]``; ``x`` itself at stride 1),
one vectorised loop per offset (eq. 8a); otherwise the loops go output row by output row.
Pointwise is a per-pixel matrix product (eq. 11); so is every 1x1 convolution without padding,
whose columns are ``x``'s strided pixels: the GEMM reads ``x`` itself and no column buffer is filled
(eq. 11-12).
An output larger than the machine's memory is refused before anything is allocated
(``numpyconv/memory.py``).

Example::

    >>> x = np.ones((1, 2, 5, 5)); w = np.ones((4, 2, 3, 3))
    >>> y, cache = conv2d_forward(x, w, stride=2, padding=1)
    >>> y.shape, y[0, 0, 1, 1]          # centre window sees 2 channels * 9 ones
    ((1, 4, 3, 3), 18.0)
    >>> dx, dw, db = conv2d_backward(np.ones_like(y), cache)
"""
import math

import numpy as np
from numba import njit, prange

from ._checks import Cache, check_cache, expect_shape, float_array, grad_out, positive_int, same_dtype
from .gemm import cols_matmul, cols_matmul_backward, cols_weight_grad
from .im2col import Geometry, col2im, conv_geometry, im2col, loop_geo  # noqa: F401 (re-exported)
from .memory import GEMM_BLOCK, column_budget, even_steps, require_memory, scratch
from .module import Module, default_bias, kaiming_uniform
from ._parallel import launch, loop_operand
from .taps import (copy_outside, gather, gather_row, folded_sum, merge_phases, multiply, point_taps,
                   run_table, runs_fit, scatter, scatter_row, split_phases)
from .winograd import winograd_conv2d, winograd_conv2d_backward, winograd_pays

MIN_GEMM_COLUMNS = 768   # output pixels per block below which OpenBLAS's GEMM runs ~10% slower
MIN_PIXEL_GEMM = 192     # output pixels per sample below which one GEMM over a batch's copied columns
                         # beats a GEMM per sample on x's pixels (1x1 convolutions)
_ANY_SIZE = 10 ** 6   # an input size every valid kernel fits: checks hyper-parameters alone


def check_hyper_parameters(kernel_size, stride, padding, dilation):
    """Check a layer's convolution hyper-parameters before any input exists; returns the kernel pair."""
    return conv_geometry((_ANY_SIZE, _ANY_SIZE), kernel_size, stride, padding, dilation).kernel


def check_layer_channels(in_channels, out_channels, groups, names=('in_channels', 'out_channels')):
    """Check a conv layer's channel arguments (``names`` as its constructor calls them);
    returns ``(in_channels, out_channels, groups)`` as ints."""
    in_channels = positive_int(in_channels, names[0])
    out_channels = positive_int(out_channels, names[1])
    groups = positive_int(groups, 'groups')
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide {names[0]}={in_channels} and "
                         f"{names[1]}={out_channels}")
    return in_channels, out_channels, groups


def _check_conv(x, weight, bias, groups):
    """Validate conv2d operands; return ``(per_sample, groups)``."""
    float_array(x, 'x', 4, "(N, C_in, H, W)")
    float_array(weight, 'weight', (4, 5), "(C_out, C_in // groups, kh, kw) or "
                "(N, C_out, C_in // groups, kh, kw)")
    groups = positive_int(groups, 'groups')
    n, c_in = x.shape[:2]
    per_sample = weight.ndim == 5
    c_out, c_g = weight.shape[-4], weight.shape[-3]
    if c_out == 0:
        raise ValueError(f"weight must have at least one output channel, got shape {weight.shape}")
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels, got x of shape {x.shape}")
    if c_out % groups:
        raise ValueError(f"groups={groups} must divide the output channels, got weight of shape "
                         f"{weight.shape}")
    if c_g * groups != c_in:
        expected = (c_out, c_in // groups) + weight.shape[-2:]
        raise ValueError(f"weight must have shape {((n,) if per_sample else ()) + expected} for x of "
                         f"shape {x.shape} and groups={groups}, got {weight.shape}")
    if per_sample and weight.shape[0] != n:
        raise ValueError(f"per-sample weight must have shape {(n,) + weight.shape[1:]} for a batch "
                         f"of {n}, got {weight.shape}")
    if bias is not None:
        float_array(bias, 'bias')
        expect_shape(bias, (n, c_out) if per_sample else (c_out,), 'bias')
    same_dtype(('x', x), ('weight', weight), ('bias', bias))
    return per_sample, groups


# -- depthwise: Numba loops over the taps inside x ----------------------------------------------
@njit(cache=True)
def _forward_rows(x, w, geo, y):
    """``y (Ho, Wo) +=`` the taps of one channel ``x (H, W)`` weighted by ``w (kh*kw,)`` (eq. 8),
    output row by output row."""
    sh, sw = geo[2], geo[3]
    for p in range(w.shape[0]):
        i0, i1, j0, j1, row0, col0 = point_taps(p, geo, x.shape[0], x.shape[1])
        for i in range(i0, i1):
            gather_row(y[i, j0:j1], w[p], x[i * sh + row0], col0, sw)


@njit(cache=True)
def _forward_runs(phases, w, geo, table, y):
    """:func:`_forward_rows` from the phase planes ``phases (sh*sw, Hp*Wp)`` of ``x``, one run per
    kernel point (eq. 8a). The outputs outside a kernel column's rectangles are restored after
    that column's runs."""
    kh, kw, wo = geo[0], geo[1], geo[9]
    yf = y.reshape(-1)
    saved = np.empty_like(yf)
    for v in range(kw):
        lo, hi = table[v, 4], table[v, 5]                              # the column's outputs
        if hi > lo:
            copy_outside(yf, saved, lo, hi, wo)
            for p in range(v, kh * kw, kw):
                phase, out0, in0, length = table[p, :4]
                gather(yf[out0:out0 + length], w[p], phases[phase, in0:in0 + length])
            copy_outside(saved, yf, lo, hi, wo)


@njit(cache=True, inline='always')
def _phase_shape(x, geo):
    """``(sh*sw, Hp, Wp)``: the phase planes of ``x (H, W)`` (:func:`split_phases`)."""
    return geo[2] * geo[3], -(-x.shape[0] // geo[2]), -(-x.shape[1] // geo[3])


@njit(cache=True, inline='always')
def _phases_of(x, geo):
    """``x (H, W)``'s phase planes, flattened ``(sh*sw, Hp*Wp)``: ``x`` itself at stride 1, else a
    copy."""
    count, hp, wp = _phase_shape(x, geo)
    if count == 1:
        return x.reshape((1, x.size))
    phases = np.empty((count, hp, wp), dtype=x.dtype)
    split_phases(x, geo[2], geo[3], phases)
    return phases.reshape((count, hp * wp))


@njit(cache=True, inline='always')
def _sample_weight(weight, b):
    """Sample ``b``'s weights ``(C*m, kh*kw)`` of ``weight (N or 1, C*m, kh*kw)``."""
    return weight[b if weight.shape[0] > 1 else 0]


@njit(cache=True, parallel=True)
def _depthwise_forward_loop(x, weight, geo, y):
    """``y (N, C*m, Ho, Wo)`` (any content on entry) from ``x (N, C, H, W)`` and ``weight (N or 1,
    C*m, kh*kw)`` (eq. 8). Parallel over ``(n, o)``: each iteration owns the output plane
    ``y[n, o]``."""
    n, channels, height, width = x.shape
    planes = y.shape[1]
    runs, table = runs_fit(geo, width), run_table(geo, height, width)
    for t in prange(n * planes):
        b, o = t // planes, t % planes
        w, plane = _sample_weight(weight, b)[o], x[b, o // (planes // channels)]
        y[b, o] = 0
        if runs:
            _forward_runs(_phases_of(plane, geo), w, geo, table, y[b, o])
        else:
            _forward_rows(plane, w, geo, y[b, o])


@njit(cache=True)
def _input_grad_rows(dy, w, geo, dx):
    """``dx (H, W) +=`` one output channel's share (eq. 10): the transpose of :func:`_forward_rows`."""
    sh, sw = geo[2], geo[3]
    for p in range(w.shape[0]):
        i0, i1, j0, j1, row0, col0 = point_taps(p, geo, dx.shape[0], dx.shape[1])
        for i in range(i0, i1):
            scatter_row(dx[i * sh + row0], col0, sw, w[p], dy[i, j0:j1])


@njit(cache=True)
def _input_grad_runs(dy, w, geo, table, phases):
    """:func:`_input_grad_rows` into the phase planes ``phases (sh*sw, Hp*Wp)`` of ``dx``, one run
    per kernel point (eq. 8a). A kernel column reads one column phase; the entries of its phase
    planes outside the column's rectangles are restored after its runs."""
    kh, kw, sh, sw, wo = geo[0], geo[1], geo[2], geo[3], geo[9]
    dyf = dy.reshape(-1)
    saved = np.empty((sh, phases.shape[1]), dtype=phases.dtype)
    for v in range(kw):
        lo, hi = table[v, 6], table[v, 6] + table[v, 5] - table[v, 4]  # the phase columns it reads
        column_phase = table[v, 0] % sw
        if hi > lo:
            for a in range(sh):
                copy_outside(phases[a * sw + column_phase], saved[a], lo, hi, wo)
            for p in range(v, kh * kw, kw):
                phase, out0, in0, length = table[p, :4]
                scatter(phases[phase, in0:in0 + length], w[p], dyf[out0:out0 + length])
            for a in range(sh):
                copy_outside(saved[a], phases[a * sw + column_phase], lo, hi, wo)


@njit(cache=True, inline='always')
def _zero_phases(dx, geo):
    """Zero phase planes ``(sh*sw, Hp*Wp)`` for ``dx (H, W)``: ``dx`` itself, zeroed, at stride 1,
    else a new buffer that :func:`merge_phases` writes back."""
    count, hp, wp = _phase_shape(dx, geo)
    if count == 1:
        dx[...] = 0
        return dx.reshape((1, dx.size))
    return np.zeros((count, hp * wp), dtype=dx.dtype)


@njit(cache=True, parallel=True)
def _depthwise_input_grad_loop(dy, weight, geo, dx):
    """``dx (N, C, H, W)`` (any content on entry) from ``dy (N, C*m, Ho, Wo)`` (eq. 10). Parallel
    over ``(n, c)``: each iteration owns the plane ``dx[n, c]`` and sums over its ``m`` output
    channels and the taps, so the scatter never races."""
    n, channels, height, width = dx.shape
    multiplier, sh, sw = dy.shape[1] // channels, geo[2], geo[3]
    runs, table = runs_fit(geo, width), run_table(geo, height, width)
    for t in prange(n * channels):
        b, c = t // channels, t % channels
        if runs:
            phases = _zero_phases(dx[b, c], geo)
            for o in range(c * multiplier, (c + 1) * multiplier):
                _input_grad_runs(dy[b, o], _sample_weight(weight, b)[o], geo, table, phases)
            if sh * sw > 1:
                merge_phases(phases.reshape(_phase_shape(dx[b, c], geo)), sh, sw, dx[b, c])
        else:
            dx[b, c] = 0
            for o in range(c * multiplier, (c + 1) * multiplier):
                _input_grad_rows(dy[b, o], _sample_weight(weight, b)[o], geo, dx[b, c])


@njit(cache=True)
def _weight_grad_rows(x, dy, geo, dw):
    """``dw (kh*kw,)`` of one output channel (eq. 9): each point's products are added elementwise
    into a row of ``Wo`` sums, output row after output row, and that row is summed last."""
    sh, sw = geo[2], geo[3]
    sums = np.empty(dy.shape[1], dtype=dw.dtype)
    for p in range(dw.shape[0]):
        i0, i1, j0, j1, row0, col0 = point_taps(p, geo, x.shape[0], x.shape[1])
        sums[:] = 0
        for i in range(i0, i1):
            gather_row(sums[j0:j1], dy[i, j0:j1], x[i * sh + row0], col0, sw)
        dw[p] = sums.sum()


@njit(cache=True)
def _weight_grad_runs(phases, dy, geo, table, zeros, dw):
    """:func:`_weight_grad_rows` from the phase planes of ``x``: each point's products in one run
    (eq. 8a), those outside its rectangle replaced by ``zeros`` (a zero plane), summed by
    :func:`folded_sum`."""
    dyf = dy.reshape(-1)
    products = np.empty_like(dyf)
    for p in range(dw.shape[0]):
        phase, out0, in0, length, lo, hi = table[p, :6]
        dw[p] = 0
        if length:
            multiply(products[out0:out0 + length], dyf[out0:out0 + length], phases[phase, in0:in0 + length])
            copy_outside(zeros, products, lo, hi, geo[9])
            dw[p] = folded_sum(products[out0:out0 + length])


@njit(cache=True, parallel=True)
def _depthwise_weight_grad_loop(x, dy, geo, dweight):
    """``dweight (N, C*m, kh*kw)``, one gradient per sample (eq. 9). Parallel over ``(n, o)``: each
    iteration owns ``dweight[n, o]``; the sums run in a fixed order."""
    n, channels, height, width = x.shape
    planes = dy.shape[1]
    runs, table = runs_fit(geo, width), run_table(geo, height, width)
    zeros = np.zeros(dy.shape[2] * dy.shape[3], dtype=dy.dtype)
    for t in prange(n * planes):
        b, o = t // planes, t % planes
        plane = x[b, o // (planes // channels)]
        if runs:
            _weight_grad_runs(_phases_of(plane, geo), dy[b, o], geo, table, zeros, dweight[b, o])
        else:
            _weight_grad_rows(plane, dy[b, o], geo, dweight[b, o])


def _loop_weight(weight):
    """``weight ([N,] C*m, 1, kh, kw)`` as the loops read it: ``(N or 1, C*m, kh*kw)``, C-contiguous
    (:func:`_sample_weight` picks a sample's)."""
    lead = weight.shape[:-4] or (1,)
    return loop_operand(weight.reshape(lead + (weight.shape[-4], weight.shape[-2] * weight.shape[-1])))


def _depthwise_work(x, weight, geo):
    """Multiply-adds of one depthwise pass: ``N * C*m * Ho*Wo * kh*kw``, the loops' thread budget."""
    return x.shape[0] * weight.shape[-4] * math.prod(geo.out_hw) * math.prod(geo.kernel)


def _depthwise_forward(x, weight, geo):
    """``y (N, C*m, Ho, Wo)`` for ``weight ([N,] C*m, 1, kh, kw)`` (eq. 8): a Numba loop over the
    taps inside ``x`` (the padding is never built)."""
    y = np.empty((x.shape[0], weight.shape[-4]) + geo.out_hw, dtype=x.dtype)
    launch(_depthwise_forward_loop, _depthwise_work(x, weight, geo), loop_operand(x),
           _loop_weight(weight), loop_geo(geo), y)
    return y


def _depthwise_backward(dy, x, weight, geo):
    """``(dx, dweight)`` of :func:`_depthwise_forward` (eq. 9, 10); the padding's share is never
    formed. A shared weight's gradient is the per-sample gradients summed over ``n``."""
    dy, x, work = loop_operand(dy), loop_operand(x), _depthwise_work(x, weight, geo)
    dx = np.empty(x.shape, dtype=x.dtype)
    launch(_depthwise_input_grad_loop, work, dy, _loop_weight(weight), loop_geo(geo), dx)
    dw = np.zeros((x.shape[0], weight.shape[-4], geo.kernel[0] * geo.kernel[1]), dtype=x.dtype)
    launch(_depthwise_weight_grad_loop, work, x, dy, loop_geo(geo), dw)
    return dx, (dw if weight.ndim == 5 else dw.sum(axis=0)).reshape(weight.shape)


# -- depthwise, channels last -------------------------------------------------------------------
# The same convolution (eq. 8-10, one output channel per input channel, one weight for the batch) on
# (N, H, W, C) arrays, channels innermost: each tap multiplies a row of C contiguous values by the C
# weights of that point, a loop that vectorises. InternImage's DCNv3 layers convolve their
# channels-last input this way, without copying it to (N, C, H, W) and the result back.
@njit(cache=True, inline='always')
def _row_taps(p, i, geo, height, width):
    """For kernel point ``p`` and output row ``i``: ``(h, j0, j1, col0)``, the input row ``h`` its taps
    read, the output columns ``[j0, j1)`` whose taps lie inside the input (empty when none) and the
    input column ``col0`` of output column ``j0`` (column ``j`` reads ``col0 + (j - j0) * sw``)."""
    i0, i1, j0, j1, row0, col0 = point_taps(p, geo, height, width)
    if i0 <= i < i1:
        return i * geo[2] + row0, j0, j1, col0
    return 0, 0, 0, col0


@njit(cache=True, parallel=True)
def _depthwise_nhwc_forward_loop(x, weight, bias, geo, y):
    """``y (N, Ho, Wo, C) = bias + sum_p taps`` from ``x (N, H, W, C)`` and ``weight (kh*kw, C)``
    (eq. 8). Parallel over the output rows ``(n, i)``, each owning ``y[n, i]``."""
    n, height, width, channels = x.shape
    ho, sw = geo[8], geo[3]
    for t in prange(n * ho):
        b, i = t // ho, t % ho
        for j in range(y.shape[2]):
            for k in range(channels):
                y[b, i, j, k] = bias[k]
        for p in range(weight.shape[0]):
            h, j0, j1, col0 = _row_taps(p, i, geo, height, width)
            for j in range(j0, j1):
                w = col0 + (j - j0) * sw
                for k in range(channels):
                    y[b, i, j, k] += x[b, h, w, k] * weight[p, k]


@njit(cache=True, parallel=True)
def _depthwise_nhwc_input_grad_loop(dy, weight, geo, dx):
    """``dx (N, H, W, C)`` from ``dy (N, Ho, Wo, C)`` (eq. 10). Parallel over the input rows
    ``(n, h)``: each owns ``dx[n, h]`` and gathers the output rows whose taps read it."""
    n, height, width, channels = dx.shape
    sh, sw = geo[2], geo[3]
    for t in prange(n * height):
        b, h = t // height, t % height
        dx[b, h] = 0
        for p in range(weight.shape[0]):
            i0, i1, j0, j1, row0, col0 = point_taps(p, geo, height, width)
            if (h - row0) % sh == 0 and i0 <= (h - row0) // sh < i1:
                i = (h - row0) // sh
                for j in range(j0, j1):
                    w = col0 + (j - j0) * sw
                    for k in range(channels):
                        dx[b, h, w, k] += dy[b, i, j, k] * weight[p, k]


@njit(cache=True, parallel=True)
def _depthwise_nhwc_param_grad_loop(x, dy, geo, dweight_parts, dbias_parts):
    """Per chunk ``j`` of the output rows ``(n, i)``: its share of ``dweight (kh*kw, C)`` (eq. 9) and
    of ``dbias (C,)`` summed in float64 into ``dweight_parts[j]`` and ``dbias_parts[j]``. The chunks
    are fixed, so the sums do not depend on the number of threads."""
    n, height, width, channels = x.shape
    ho, sw = dy.shape[1], geo[3]
    rows, chunks = n * ho, dweight_parts.shape[0]
    for c in prange(chunks):
        for t in range(c * rows // chunks, (c + 1) * rows // chunks):
            b, i = t // ho, t % ho
            for j in range(dy.shape[2]):
                for k in range(channels):
                    dbias_parts[c, k] += dy[b, i, j, k]
            for p in range(dweight_parts.shape[1]):
                h, j0, j1, col0 = _row_taps(p, i, geo, height, width)
                for j in range(j0, j1):
                    w = col0 + (j - j0) * sw
                    for k in range(channels):
                        dweight_parts[c, p, k] += np.float64(dy[b, i, j, k]) * x[b, h, w, k]


_NHWC_CHUNKS = 64      # fixed chunks of output rows for the parameter gradients


def _nhwc_weight(weight):
    """``weight (C, 1, kh, kw)`` as the channels-last loops read it: ``(kh*kw, C)``, C-contiguous."""
    return np.ascontiguousarray(weight.reshape(weight.shape[0], -1).T)


def _depthwise_nhwc_forward(x, weight, bias, geo):
    """``y (N, Ho, Wo, C)`` of the depthwise convolution of ``x (N, H, W, C)`` with ``weight (C, 1,
    kh, kw)`` and ``bias (C,)`` or None (eq. 8)."""
    n, _, _, c = x.shape
    y = np.empty((n,) + geo.out_hw + (c,), dtype=x.dtype)
    bias = np.zeros(c, x.dtype) if bias is None else loop_operand(bias)
    launch(_depthwise_nhwc_forward_loop, _depthwise_work(x, weight, geo), loop_operand(x),
           _nhwc_weight(weight), bias, loop_geo(geo), y)
    return y


def _depthwise_nhwc_backward(dy, x, weight, geo):
    """``(dx (N, H, W, C), dweight (C, 1, kh, kw), dbias (C,))`` of :func:`_depthwise_nhwc_forward`
    (eq. 9, 10)."""
    dy, x, work = loop_operand(dy), loop_operand(x), _depthwise_work(x, weight, geo)
    dx = np.empty(x.shape, dtype=x.dtype)
    launch(_depthwise_nhwc_input_grad_loop, work, dy, _nhwc_weight(weight), loop_geo(geo), dx)
    chunks = max(min(dy.shape[0] * dy.shape[1], _NHWC_CHUNKS), 1)
    dweight_parts = np.zeros((chunks, math.prod(geo.kernel), x.shape[3]))
    dbias_parts = np.zeros((chunks, x.shape[3]))
    launch(_depthwise_nhwc_param_grad_loop, work, x, dy, loop_geo(geo), dweight_parts, dbias_parts)
    dweight = dweight_parts.sum(axis=0).T.reshape(weight.shape).astype(x.dtype)
    return dx, dweight, dbias_parts.sum(axis=0).astype(x.dtype)


# -- conv2d ------------------------------------------------------------------------------------
def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Convolution as ``torch.nn.functional.conv2d`` (eq. 1-4).

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
        Input, float32 or float64.
    weight : ndarray (C_out, C_in // groups, kh, kw) or (N, C_out, C_in // groups, kh, kw)
        One kernel for the batch, or one per sample.
    bias : ndarray (C_out,), (N, C_out) with per-sample weights, or None
    stride : int or pair
        ``(sh, sw)``.
    padding : int, pair, 'valid' or 'same'
        Zero padding (``'same'``: stride 1 only).
    dilation : int or pair
        ``(dh, dw)``; 1 means none.
    groups : int
        Divides ``C_in`` and ``C_out``; groups are contiguous channel blocks.

    Returns
    -------
    y : ndarray (N, C_out, Ho, Wo)
        ``Ho = floor((H + pads - dh (kh - 1) - 1) / sh) + 1``, likewise ``Wo``.
    cache : Cache
        ``Cache('conv2d')`` with ``x``, ``weight``, ``has_bias``, ``groups``, ``geo`` (the
        :class:`~numpyconv.im2col.Geometry`) and the path flags ``depthwise``, ``pointwise`` and
        ``winograd``; none of them None. No columns are kept: the backward recomputes them.
    """
    per_sample, groups = _check_conv(x, weight, bias, groups)
    geo = conv_geometry(x.shape[2:], weight.shape[-2:], stride, padding, dilation)
    require_memory((x.shape[0], weight.shape[-4]) + geo.out_hw, x.dtype,
                   _geometry_cause(x, stride, padding, dilation))
    depthwise = weight.shape[-3] == 1 and groups == x.shape[1]
    pointwise = not depthwise and _reads_pixels(x, geo)
    winograd = not (depthwise or pointwise) and winograd_pays(x, weight, groups, geo)
    if depthwise:
        y = _depthwise_forward(x, weight, geo)                            # (eq. 8)
    elif pointwise:
        y = cols_matmul(_pixels(x, geo), weight, groups)                  # (eq. 11)
    elif winograd:
        y = winograd_conv2d(x, weight, geo)                               # (winograd.py, eq. 1)
    else:
        y = _conv_gemm(x, weight, groups, geo, (geo.pads[0], geo.pads[2]))
    if bias is not None:
        y += bias[..., None, None] if per_sample else bias[:, None, None]
    cache = Cache('conv2d', x=x, weight=weight, has_bias=bias is not None, groups=groups, geo=geo,
                  depthwise=depthwise, pointwise=pointwise, winograd=winograd)
    return y, cache


def _reads_pixels(x, geo):
    """Whether the GEMM reads ``x``'s strided pixels as columns: a 1x1 convolution without padding,
    with one sample or at least ``MIN_PIXEL_GEMM`` output pixels per sample."""
    wide = x.shape[0] <= 1 or geo.out_hw[0] * geo.out_hw[1] >= MIN_PIXEL_GEMM
    return geo.kernel == (1, 1) and not any(geo.pads) and wide


def _pixels(x, geo):
    """The columns of a 1x1 convolution without padding, ``(N, C_in, 1, 1, Ho, Wo)``: a view of ``x``
    (strided), so that the GEMM reads ``x`` itself and no column buffer is filled."""
    return x[:, :, None, None, ::geo.stride[0], ::geo.stride[1]]


def _geometry_cause(x, stride, padding, dilation):
    """The arguments that set a convolution's output size, for :func:`require_memory`'s message."""
    return f"x of shape {x.shape} with stride={stride!r}, padding={padding!r}, dilation={dilation!r}"


def _col_bytes(x, geo):
    return x.shape[1] * math.prod(geo.kernel) * math.prod(geo.out_hw) * x.itemsize


def _blocks(x, geo):
    """``(s, r)`` pairs (batch slice, output-row slice), blocks of equal size: several whole samples,
    or, when one sample's columns are larger than a block, bands of one sample's output rows (at
    least one row). The largest block takes ``GEMM_BLOCK`` bytes of columns (sized for the CPU
    cache), or more when that holds fewer than ``MIN_GEMM_COLUMNS`` output pixels, and at most
    ``2 * GEMM_BLOCK`` and the column budget; evening the sizes out can leave blocks narrower than
    that (a batch of 5 at 14x14 float64: 2 + 3 samples rather than 4 + 1)."""
    n, (ho, wo) = x.shape[0], geo.out_hw
    row_bytes = max(1, _col_bytes(x, geo) // ho)                          # one output row's columns
    most = min(2 * GEMM_BLOCK, column_budget()) // row_bytes              # rows the bounds allow
    block_rows, wide = GEMM_BLOCK // row_bytes, -(-MIN_GEMM_COLUMNS // wo)  # rows: GEMM_BLOCK, wide GEMM
    if max(block_rows, wide) >= ho and most >= ho:
        samples = min(most // ho, max(block_rows // ho, -(-wide // ho)))
        return [(s, slice(0, ho)) for s in even_steps(n, samples)]
    bands = even_steps(ho, max(1, min(most, max(block_rows, wide))))
    return [(slice(i, i + 1), r) for i in range(n) for r in bands]


def _band_origin(r, geo, origin):
    """The padding before a band of output rows starting at ``r.start`` (negative inside ``x``)."""
    return (origin[0] - r.start * geo.stride[0], origin[1])


def _column_blocks(x, geo, origin):
    """Yield ``(s, r, cols)`` per block of :func:`_blocks`: the columns
    ``cols (n_s, C, kh, kw, rows, Wo)`` of ``x`` zero-padded by ``origin = (top, left)``. One buffer
    laid out ``(C, kh, kw, n_s, rows, Wo)`` is reused, so that the columns are still in the CPU cache when
    the GEMM reads them and a block of whole samples is also the single matrix
    ``(C*kh*kw, n_s*Ho*Wo)``; a block's columns are overwritten by the next block's."""
    buffer = None
    for s, r in _blocks(x, geo):
        shape = (x.shape[1],) + geo.kernel + (s.stop - s.start, r.stop - r.start, geo.out_hw[1])
        if buffer is None or buffer.shape != shape:
            require_memory(shape, x.dtype, f"kernel_size {geo.kernel} over the {x.shape[1]} channels "
                           f"and {geo.out_hw[1]} output columns of x of shape {x.shape}",
                           'one block of im2col columns')
            buffer = scratch('columns', shape, x.dtype)                  # (C, kh, kw, n_s, rows, Wo)
        cols = buffer.transpose(3, 0, 1, 2, 4, 5)                         # (n_s, C, kh, kw, rows, Wo)
        yield s, r, im2col(x[s], geo.kernel, geo.stride, dilation=geo.dilation, out=cols,
                           out_hw=cols.shape[-2:], origin=_band_origin(r, geo, origin))


def _conv_gemm(x, weight, groups, geo, origin):
    """``y (N, C_out, Ho, Wo)``: im2col and GEMM block by block (eq. 4). No columns are kept:
    the backward pass recomputes them, which costs less than keeping them in memory."""
    y = np.empty((x.shape[0], weight.shape[-4]) + geo.out_hw, dtype=x.dtype)
    for s, r, cols in _column_blocks(x, geo, origin):
        _block_product(y, s, r, cols, weight[s] if weight.ndim == 5 else weight, groups)
    return y


def _block_product(y, s, r, cols, weight, groups):
    """``y[s, :, r] = cols @ weight`` (:func:`~numpyconv.gemm.cols_matmul`) for one block of
    :func:`_column_blocks`; the GEMM writes into ``y`` itself when the block is whole samples."""
    if r.stop - r.start == y.shape[2]:
        cols_matmul(cols, weight, groups, out=y[s])
    else:
        y[s, :, r] = cols_matmul(cols, weight, groups)


def conv2d_backward(dout, cache):
    """Gradients of :func:`conv2d_forward` (eq. 5-7).

    Parameters
    ----------
    dout : ndarray, (N, C_out, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`conv2d_forward`.
    cache : Cache
        The cache :func:`conv2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx (N, C_in, H, W), dweight (weight's shape), dbias (bias's shape))``; ``dbias`` None
        without bias.
    """
    return _conv2d_backward(dout, check_cache(cache, 'conv2d'))


def _conv2d_backward(dout, cache):
    """conv2d's backward on a checked cache (also depthwise_conv2d's)."""
    x, weight, geo = cache['x'], cache['weight'], cache['geo']
    dout = grad_out(dout, (x.shape[0], weight.shape[-4]) + geo.out_hw, x.dtype)
    if cache['depthwise']:
        dx, dw = _depthwise_backward(dout, x, weight, geo)                # (eq. 9, 10)
    elif cache['pointwise']:
        dx, dw = _pointwise_backward(dout, x, weight, cache['groups'], geo)  # (eq. 12)
    elif cache['winograd']:
        dx, dw = winograd_conv2d_backward(dout, x, weight, geo)           # (winograd.py, eq. 6-9)
    elif _transposed_pays(x, weight, geo):
        dx, dw = _unit_stride_backward(dout, x, weight, cache['groups'], geo)
    else:
        dx, dw = _strided_backward(dout, x, weight, cache['groups'], geo)
    db = None
    if cache['has_bias']:
        db = dout.sum(axis=(2, 3)) if weight.ndim == 5 else dout.sum(axis=(0, 2, 3))
    return dx, dw, db


def _transposed_pays(x, weight, geo):
    """Whether the backward pass takes (eq. 7a, 6a), at stride 1 only: it flips and transposes the
    kernel twice where (eq. 7) adds the columns back with col2im, so it pays when the kernel has
    fewer entries than the columns of ``x`` (a shared kernel: ``C_out / G < N * Ho * Wo``; at batch 1
    a 3x3 convolution from 512 to 512 channels on a 7x7 map takes (eq. 6, 7), in half the time)."""
    return geo.stride == (1, 1) and weight.size * x.itemsize < x.shape[0] * _col_bytes(x, geo)


def _pointwise_backward(dout, x, weight, groups, geo):
    """(eq. 12) of a 1x1 convolution without padding: the two GEMMs of (eq. 6, 7) on ``x``'s pixels;
    ``dx`` is zero off the strided pixels."""
    dcols, dw = cols_matmul_backward(dout, _pixels(x, geo), weight, groups)
    if geo.stride == (1, 1):
        return dcols.reshape(x.shape), dw
    dx = np.zeros_like(x)
    dx[:, :, ::geo.stride[0], ::geo.stride[1]] = dcols[:, :, 0, 0]
    return dx, dw


def _strided_backward(dout, x, weight, groups, geo):
    """(eq. 6) on recomputed columns of ``x`` and ``dx`` by col2im of (eq. 7), straight into
    ``x``'s shape (the padding's share is dropped); row bands add into the rows they share."""
    per_sample, origin = weight.ndim == 5, (geo.pads[0], geo.pads[2])
    dw, dx = np.zeros_like(weight), np.zeros_like(x)
    for s, r, cols in _column_blocks(x, geo, origin):
        w_s, dw_s = (weight[s], dw[s]) if per_sample else (weight, dw)
        dcols, dw_block = cols_matmul_backward(dout[s, :, r], cols, w_s, groups, reuse=True)  # (eq. 6, 7)
        dw_s += dw_block
        col2im(dcols, geo.in_hw, geo.stride, dilation=geo.dilation, out=dx[s],
               origin=_band_origin(r, geo, origin))
    return dx, dw


def _flipped_transpose(weight, groups, out=None):
    """``weight ([N,] C_out, C_in/G, kh, kw)`` -> ``([N,] C_in, C_out/G, kh, kw)``, transposed within
    each group and flipped in space: the kernel of the transposed convolution (eq. 7a). Applied
    twice it gives ``weight`` back, so it also maps that kernel's gradient to ``dweight`` (eq. 6a).
    Written into ``out`` (any shape of the same size) when given."""
    lead, (c_out, c_g, kh, kw) = weight.shape[:-4], weight.shape[-4:]
    w = weight.reshape(lead + (groups, c_out // groups, c_g, kh * kw))    # ([N,] G, Og, C_g, kh*kw)
    flipped = w.swapaxes(-3, -2)[..., ::-1]      # ([N,] G, C_g, Og, kh*kw): reversed kh*kw flips both axes
    w_t = np.empty(flipped.shape, dtype=weight.dtype) if out is None else out.reshape(flipped.shape)
    w_t[...] = flipped
    return w_t.reshape(lead + (groups * c_g, c_out // groups, kh, kw))


def _unit_stride_backward(dout, x, weight, groups, geo):
    """Stride 1: one im2col of ``dout`` zero-padded by ``dilation*(k-1) - padding`` before each axis
    (a negative pad crops) serves both gradients. ``dx`` is that padded ``dout`` convolved with the
    flipped, transposed kernel (eq. 7a), the forward's GEMM; ``dweight`` is this convolution's
    weight gradient, with ``x`` as its output gradient, flipped and transposed back (eq. 6a)."""
    (kh, kw), (dil_h, dil_w) = geo.kernel, geo.dilation
    origin = (dil_h * (kh - 1) - geo.pads[0], dil_w * (kw - 1) - geo.pads[2])
    t_geo = geo._replace(out_hw=geo.in_hw)                                # stride 1, output = x's size
    w_t = _flipped_transpose(weight, groups, out=scratch('kernel', weight.shape, weight.dtype))
    dw_t = scratch('kernel_grad', w_t.shape, w_t.dtype)                   # ([N,] C_in, C_out/G, kh, kw)
    dw_t[...] = 0
    dx = np.empty(x.shape, dtype=x.dtype)
    for s, r, cols in _column_blocks(dout, t_geo, origin):                # cols (n, C_out, kh, kw, rows, W)
        w_s, dw_s = (w_t[s], dw_t[s]) if w_t.ndim == 5 else (w_t, dw_t)
        _block_product(dx, s, r, cols, w_s, groups)                                   # (eq. 7a)
        dw_s += cols_weight_grad(x[s, :, r], cols, w_s, groups)                       # (eq. 6a)
    return dx, _flipped_transpose(dw_t, groups)


# -- depthwise, pointwise, separable ---------------------------------------------------------
def _check_depthwise_weight(x, weight, name='weight'):
    float_array(x, 'x', 4, "(N, C, H, W)")
    float_array(weight, name, 4, "(C * multiplier, 1, kh, kw)")
    c = x.shape[1]
    if weight.shape[1] != 1 or weight.shape[0] % max(c, 1) or weight.shape[0] == 0:
        raise ValueError(f"{name} must have shape (C * multiplier, 1, kh, kw) with C={c} "
                         f"(x of shape {x.shape}), got {weight.shape}")


def depthwise_conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """Depthwise convolution: conv2d with ``groups = C`` (eq. 8).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    weight : ndarray (C * multiplier, 1, kh, kw)
    bias : ndarray (C * multiplier,) or None
    stride : int or pair
        ``(sh, sw)``.
    padding : int, pair, 'valid' or 'same'
        Zero padding (``'same'``: stride 1 only).
    dilation : int or pair
        ``(dh, dw)``; 1 means none.

    Returns
    -------
    y : ndarray (N, C * multiplier, Ho, Wo)
    cache : Cache
        ``Cache('depthwise_conv2d')`` with the keys of :func:`conv2d_forward`'s cache.
    """
    _check_depthwise_weight(x, weight)
    y, cache = conv2d_forward(x, weight, bias, stride, padding, dilation, groups=x.shape[1])
    return y, Cache('depthwise_conv2d', **cache)


def depthwise_conv2d_backward(dout, cache):
    """Gradients of :func:`depthwise_conv2d_forward` (eq. 9, 10).

    Parameters
    ----------
    dout : ndarray, (N, C * multiplier, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`depthwise_conv2d_forward`.
    cache : Cache
        The cache :func:`depthwise_conv2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx (N, C, H, W), dweight (C * multiplier, 1, kh, kw), dbias)``; ``dbias`` None without bias.
    """
    return _conv2d_backward(dout, check_cache(cache, 'depthwise_conv2d'))


def _check_pointwise_weight(weight, bias, c_in, input_desc, names=('weight', 'bias')):
    """Check a 1x1 weight ``(C_out, c_in, 1, 1)`` and bias ``(C_out,)``; ``input_desc`` for messages."""
    float_array(weight, names[0], 4, "(C_out, C_in, 1, 1)")
    if weight.shape[0] == 0 or weight.shape[1:] != (c_in, 1, 1):
        c_out = weight.shape[0] or 'C_out >= 1'
        raise ValueError(f"{names[0]} must have shape ({c_out}, {c_in}, 1, 1) for {input_desc}, "
                         f"got {weight.shape}")
    if bias is not None:
        float_array(bias, names[1])
        expect_shape(bias, (weight.shape[0],), names[1])


def pointwise_conv2d_forward(x, weight, bias=None, stride=1):
    """1x1 convolution without im2col: ``y[n,:,i,j] = W x[n,:,i*sh,j*sw] + b`` (eq. 11).

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
    weight : ndarray (C_out, C_in, 1, 1)
    bias : ndarray (C_out,) or None
    stride : int or pair

    Returns
    -------
    y : ndarray (N, C_out, ceil(H / sh), ceil(W / sw))
    cache : Cache
        ``Cache('pointwise_conv2d')`` with ``xs`` (the strided view of ``x`` that was read),
        ``x_shape``, ``weight``, ``stride`` and ``has_bias``; none of them None.
    """
    float_array(x, 'x', 4, "(N, C_in, H, W)")
    _check_pointwise_weight(weight, bias, x.shape[1], f"x of shape {x.shape}")
    same_dtype(('x', x), ('weight', weight), ('bias', bias))
    sh, sw = conv_geometry(x.shape[2:], 1, stride, 0, 1).stride         # checks stride and H, W
    xs = x[:, :, ::sh, ::sw]                                              # (N, C_in, Ho, Wo)
    n, c_in, ho, wo = xs.shape
    y = np.matmul(weight[:, :, 0, 0], xs.reshape(n, c_in, ho * wo))       # (N, C_out, Ho*Wo)
    y = y.reshape(n, weight.shape[0], ho, wo)
    if bias is not None:
        y += bias[:, None, None]
    return y, Cache('pointwise_conv2d', xs=xs, x_shape=x.shape, weight=weight, stride=(sh, sw),
                    has_bias=bias is not None)


def pointwise_conv2d_backward(dout, cache):
    """Gradients of :func:`pointwise_conv2d_forward` (eq. 12).

    Parameters
    ----------
    dout : ndarray, (N, C_out, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`pointwise_conv2d_forward`.
    cache : Cache
        The cache :func:`pointwise_conv2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx (N, C_in, H, W), dweight (C_out, C_in, 1, 1), dbias (C_out,))``; ``dbias`` None without
        bias.
    """
    cache = check_cache(cache, 'pointwise_conv2d')
    xs, weight, (sh, sw) = cache['xs'], cache['weight'], cache['stride']
    dout = grad_out(dout, (xs.shape[0], weight.shape[0]) + xs.shape[2:], xs.dtype)
    n, c_in, ho, wo = xs.shape
    dyr = dout.reshape(n, weight.shape[0], ho * wo)                       # (N, C_out, Ho*Wo)
    xr = xs.reshape(n, c_in, ho * wo)                                     # (N, C_in, Ho*Wo)
    dw = np.matmul(dyr, xr.swapaxes(1, 2)).sum(axis=0)[:, :, None, None]  # (C_out, C_in, 1, 1)
    dx = np.zeros(cache['x_shape'], dtype=xs.dtype)
    dx[:, :, ::sh, ::sw] = np.matmul(weight[:, :, 0, 0].T, dyr).reshape(xs.shape)
    db = dout.sum(axis=(0, 2, 3)) if cache['has_bias'] else None
    return dx, dw, db


def _check_separable(x, dw_weight, pw_weight, dw_bias, pw_bias):
    """Validate the separable operands under their own argument names."""
    _check_depthwise_weight(x, dw_weight, 'dw_weight')
    if dw_bias is not None:
        float_array(dw_bias, 'dw_bias')
        expect_shape(dw_bias, dw_weight.shape[:1], 'dw_bias')
    _check_pointwise_weight(pw_weight, pw_bias, dw_weight.shape[0], f"the {dw_weight.shape[0]} "
                            f"channels of the depthwise output", ('pw_weight', 'pw_bias'))
    same_dtype(('x', x), ('dw_weight', dw_weight), ('pw_weight', pw_weight), ('dw_bias', dw_bias),
               ('pw_bias', pw_bias))


def separable_conv2d_forward(x, dw_weight, pw_weight, dw_bias=None, pw_bias=None, stride=1,
                             padding=0, dilation=1):
    """Depthwise (with stride, padding, dilation) then pointwise 1x1 (MobileNet).

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
    dw_weight : ndarray (C_in * multiplier, 1, kh, kw)
    pw_weight : ndarray (C_out, C_in * multiplier, 1, 1)
    dw_bias : ndarray (C_in * multiplier,) or None
    pw_bias : ndarray (C_out,) or None
    stride : int or pair
        ``(sh, sw)``.
    padding : int, pair, 'valid' or 'same'
        Zero padding (``'same'``: stride 1 only).
    dilation : int or pair
        ``(dh, dw)``; 1 means none.

    Returns
    -------
    y : ndarray (N, C_out, Ho, Wo)
    cache : Cache
        ``Cache('separable_conv2d')`` with ``depthwise`` and ``pointwise``, the two steps' caches.
    """
    _check_separable(x, dw_weight, pw_weight, dw_bias, pw_bias)
    mid, dw_cache = depthwise_conv2d_forward(x, dw_weight, dw_bias, stride, padding, dilation)
    y, pw_cache = pointwise_conv2d_forward(mid, pw_weight, pw_bias)
    return y, Cache('separable_conv2d', depthwise=dw_cache, pointwise=pw_cache)


def separable_conv2d_backward(dout, cache):
    """Gradients of :func:`separable_conv2d_forward` (the chain rule through the two steps).

    Parameters
    ----------
    dout : ndarray, (N, C_out, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`separable_conv2d_forward`.
    cache : Cache
        The cache :func:`separable_conv2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, d_dw_weight, d_pw_weight, d_dw_bias, d_pw_bias)``, each of its input's shape; the biases'
        None when given as None.
    """
    cache = check_cache(cache, 'separable_conv2d')
    dw_cache, pw_cache = cache['depthwise'], cache['pointwise']
    dmid, d_pw_w, d_pw_b = pointwise_conv2d_backward(dout, pw_cache)
    dx, d_dw_w, d_dw_b = depthwise_conv2d_backward(dmid, dw_cache)
    return dx, d_dw_w, d_pw_w, d_dw_b, d_pw_b


# -- layers -------------------------------------------------------------------------------------
class Conv2d(Module):
    """``torch.nn.Conv2d`` (zeros padding); keys ``weight (C_out, C_in // groups, kh, kw)``, ``bias
    (C_out,)``.

    Parameters
    ----------
    in_channels, out_channels : int
        ``C_in`` and ``C_out``.
    kernel_size, stride, padding, dilation, groups
        As in :func:`conv2d_forward` (checked here).
    bias : bool
        Learn ``bias``.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        in_channels, out_channels, groups = check_layer_channels(in_channels, out_channels, groups)
        kh, kw = check_hyper_parameters(kernel_size, stride, padding, dilation)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding, self.dilation = (kh, kw), stride, padding, dilation
        shape = (out_channels, in_channels // groups, kh, kw)
        self.add_param('weight', kaiming_uniform(self.rng, shape, self.dtype))
        if bias:
            self.add_param('bias', default_bias(self.rng, shape[1] * kh * kw, out_channels, self.dtype))

    def forward(self, x):
        self._check_input(x, channels=self.in_channels)
        y, self._cache = self._op_forward(x, self._params['weight'], self._params.get('bias'))
        return y

    def backward(self, dout):
        dx, dw, db = self._op_backward(dout, self._cache)
        self._add_grad('weight', dw)
        if db is not None:
            self._add_grad('bias', db)
        return dx

    def _op_forward(self, x, weight, bias):
        return conv2d_forward(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    _op_backward = staticmethod(conv2d_backward)

    def macs(self, input_shape):
        input_shape = self._check_input_shape(input_shape, self.in_channels)
        geo = conv_geometry(input_shape[2:], self.kernel_size, self.stride, self.padding, self.dilation)
        out_shape = (input_shape[0], self.out_channels) + geo.out_hw
        per_output = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        return int(np.prod(out_shape)) * per_output, out_shape


class DepthwiseConv2d(Conv2d):
    """``torch.nn.Conv2d(C, C*depth_multiplier, k, groups=C)``; keys ``weight``, ``bias``.

    Parameters
    ----------
    channels : int
        ``C``.
    kernel_size, stride, padding, dilation
        As in :func:`conv2d_forward`.
    depth_multiplier : int
        Output channels per input channel.
    bias : bool
        Learn ``bias``.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, channels, kernel_size, stride=1, padding=0, dilation=1, depth_multiplier=1,
                 bias=True, *, dtype=np.float32, rng=None):
        multiplier = positive_int(depth_multiplier, 'depth_multiplier')
        super().__init__(channels, channels * multiplier, kernel_size, stride, padding, dilation,
                         groups=channels, bias=bias, dtype=dtype, rng=rng)

    def forward_channels_last(self, x):
        """The same convolution on a channels-last input, for a layer whose data is ``(N, H, W, C)``
        (InternImage's DCNv3): nothing is kept on this layer, the caller keeps the cache.

        Parameters
        ----------
        x : ndarray (N, H, W, C)
            In the layer's dtype; ``depth_multiplier`` must be 1.

        Returns
        -------
        y : ndarray (N, Ho, Wo, C)
        cache : Cache
            ``Cache('depthwise_nhwc')`` for :meth:`backward_channels_last`.
        """
        if self.out_channels != self.in_channels:
            raise ValueError(f"forward_channels_last needs depth multiplier 1, got {self.in_channels} "
                             f"input and {self.out_channels} output channels")
        self._check_input(x, channels=self.in_channels, channels_last=True)
        geo = conv_geometry(x.shape[1:3], self.kernel_size, self.stride, self.padding, self.dilation)
        weight = self._params['weight']
        y = _depthwise_nhwc_forward(x, weight, self._params.get('bias'), geo)        # (eq. 8)
        return y, Cache('depthwise_nhwc', x=x, geo=geo)

    def backward_channels_last(self, dout, cache):
        """``dx (N, H, W, C)`` of :meth:`forward_channels_last`; the gradients of ``weight`` and
        ``bias`` accumulate into ``grads`` (eq. 9, 10)."""
        cache = check_cache(cache, 'depthwise_nhwc')
        x, geo = cache['x'], cache['geo']
        dy = grad_out(dout, (x.shape[0],) + geo.out_hw + (x.shape[3],), x.dtype)
        dx, dweight, dbias = _depthwise_nhwc_backward(dy, x, self._params['weight'], geo)
        self._add_grad('weight', dweight)
        if 'bias' in self._params:
            self._add_grad('bias', dbias)
        return dx


class PointwiseConv2d(Conv2d):
    """``torch.nn.Conv2d(C_in, C_out, 1, stride)``, computed without im2col.

    Parameters
    ----------
    in_channels, out_channels : int
    stride : int or pair
    bias : bool
        Learn ``bias``.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, in_channels, out_channels, stride=1, bias=True, *, dtype=np.float32, rng=None):
        super().__init__(in_channels, out_channels, 1, stride, 0, 1, 1, bias, dtype=dtype, rng=rng)

    def _op_forward(self, x, weight, bias):
        return pointwise_conv2d_forward(x, weight, bias, self.stride)

    _op_backward = staticmethod(pointwise_conv2d_backward)


class SeparableConv2d(Module):
    """Depthwise then pointwise; keys ``depthwise.weight/bias``, ``pointwise.weight/bias``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation
        Of the depthwise step, as in :func:`conv2d_forward`.
    depth_multiplier : int
        Depthwise output channels per input channel.
    bias : bool
        Both steps learn a bias.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 depth_multiplier=1, bias=True, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.depthwise = self.add_module('depthwise', DepthwiseConv2d(
            in_channels, kernel_size, stride, padding, dilation, depth_multiplier, bias,
            dtype=dtype, rng=self.rng))
        self.pointwise = self.add_module('pointwise', PointwiseConv2d(
            in_channels * depth_multiplier, out_channels, 1, bias, dtype=dtype, rng=self.rng))

    def forward(self, x):
        return self.pointwise(self.depthwise(x))

    def backward(self, dout):
        return self.depthwise.backward(self.pointwise.backward(dout))

    def macs(self, input_shape):
        m1, mid = self.depthwise.macs(input_shape)
        m2, out = self.pointwise.macs(mid)
        return m1 + m2, out
