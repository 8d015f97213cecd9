r"""Numba helpers for loops that read a kernel's taps straight from the unpadded input.

A kernel point ``p = u*kw + v`` of a convolution-like op (geometry as the int tuple
``(kh, kw, sh, sw, dh, dw, top, left, Ho, Wo)`` of :func:`numpyconv.im2col.loop_geo`) has, for output
``(i, j)``, the tap ``x[i*sh + u*dh - top, j*sw + v*dw - left]``. The taps inside ``x`` are those
of one rectangle of outputs, rows ``[i0, i1)`` and columns ``[j0, j1)``
(:func:`point_taps`); outside it the tap reads the zero padding and contributes nothing. A loop
visits only that rectangle, so the padded input is never built and the inner loop has no branch;
one output row segment reads its taps as one strided run of an input row::

    output row i, columns [j0, j1)  <-  x[i*sh + row0, col0 + (j - j0)*sw]

The row helpers are the inner loops of such a kernel (``dense`` is the output-side run, ``row`` the
input row): :func:`gather_row` and its transpose :func:`scatter_row`, with one coefficient per
output (an array, as involution's generated kernel) or one for the whole run (a scalar, as a
depthwise weight). At ``step == 1`` the run is a contiguous slice and the loop vectorises.

Runs. Split the input into its ``sh*sw`` phase planes (:func:`split_phases`; at stride 1 the input
is its one phase plane)::

    phases[a*sw + b, k, j] = x[a + k*sh, b + j*sw]        (ceil(H/sh), ceil(W/sw)) each

Every tap of kernel point ``p`` lies in one phase plane, at a constant offset from its output.
When an output row is exactly as long as a phase-plane row (``Wo == ceil(W/sw)``,
:func:`runs_fit`; at stride 1: ``Wo == W``), the whole rectangle of ``p`` is then one run of the
flattened planes, ``y.flat[out0 + k] <- phases[phase].flat[in0 + k]`` for ``k < length``
(:func:`run_table`): one vectorised loop per kernel point instead of one per output row. Inside a
run lie the positions between the rectangle's rows (the columns outside it, where the point reads
padding or another phase's edge); :func:`copy_outside` saves and restores them, or overwrites them
with zeros.

:func:`numpyconv._parallel.loop_operand` and :func:`numpyconv._parallel.launch` prepare the operands
and the thread budget of such a loop.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload



@njit(cache=True, inline='always')
def valid(offset, stride, size, out):
    """Output indices ``[lo, hi)`` whose tap ``i*stride + offset`` lies in ``[0, size)``."""
    lo = max(0, -(offset // stride))                       # ceil(-offset / stride)
    hi = min(out, (size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@njit(cache=True, inline='always')
def point_taps(p, geo, height, width):
    """For kernel point ``p = u*kw + v``: the output rows ``[i0, i1)`` and columns ``[j0, j1)`` whose
    tap lies inside the ``height x width`` input, the input row ``row0`` of output row 0 (row ``i``
    reads ``i*sh + row0``) and the input column ``col0`` of output column ``j0``."""
    kh, kw, sh, sw, dh, dw, top, left, ho, wo = geo
    row0, col = (p // kw) * dh - top, (p % kw) * dw - left
    i0, i1 = valid(row0, sh, height, ho)
    j0, j1 = valid(col, sw, width, wo)
    return i0, i1, j0, j1, row0, j0 * sw + col


@njit(cache=True, inline='always')
def runs_fit(geo, width):
    """True when each kernel point's taps form one run of a phase plane: ``Wo == ceil(W / sw)`` for
    the input's ``width``."""
    return geo[9] == -(-width // geo[3])


@njit(cache=True)
def run_table(geo, height, width):
    """``(kh*kw, 7)`` ints, for kernel point ``p`` (under :func:`runs_fit`): ``phase, out0, in0,
    length`` of its run (flattened output ``out0 + k`` reads flattened phase plane ``phase`` at
    ``in0 + k``, ``k < length``; length 0 when no tap lies inside), the output columns ``[j0, j1)``
    of its rectangle and the phase-plane column ``c0`` that output column ``j0`` reads."""
    sh, sw, wo = geo[2], geo[3], geo[9]
    table = np.zeros((geo[0] * geo[1], 7), dtype=np.int64)
    for p in range(table.shape[0]):
        i0, i1, j0, j1, row0, col0 = point_taps(p, geo, height, width)
        table[p, 0], table[p, 4:] = (row0 % sh) * sw + col0 % sw, (j0, j1, col0 // sw)
        if i1 > i0 and j1 > j0:
            table[p, 1:4] = i0 * wo + j0, (i0 + row0 // sh) * wo + col0 // sw, (i1 - i0 - 1) * wo + j1 - j0
    return table


@njit(cache=True, inline='always')
def _split_row(row, sw, phases, first, k):
    """``phases[first + b, k, j] = row[b + j*sw]``; at ``sw == 2`` both phases in one loop
    (vectorised)."""
    if sw == 2:
        half = row.shape[0] // 2
        even, odd = phases[first, k], phases[first + 1, k]
        for j in range(half):
            even[j], odd[j] = row[2 * j], row[2 * j + 1]
        if row.shape[0] % 2:
            even[half] = row[row.shape[0] - 1]
    else:
        for b in range(sw):
            part = phases[first + b, k]
            for j in range(-(-(row.shape[0] - b) // sw)):
                part[j] = row[b + j * sw]


@njit(cache=True, inline='always')
def _merge_row(phases, first, k, sw, row):
    """``row[b + j*sw] = phases[first + b, k, j]``: the inverse of :func:`_split_row`."""
    if sw == 2:
        half = row.shape[0] // 2
        even, odd = phases[first, k], phases[first + 1, k]
        for j in range(half):
            row[2 * j], row[2 * j + 1] = even[j], odd[j]
        if row.shape[0] % 2:
            row[row.shape[0] - 1] = even[half]
    else:
        for b in range(sw):
            part = phases[first + b, k]
            for j in range(-(-(row.shape[0] - b) // sw)):
                row[b + j * sw] = part[j]


@njit(cache=True, inline='always')
def split_phases(x, sh, sw, phases):
    """``phases[a*sw + b, k, j] = x[a + k*sh, b + j*sw]`` for ``x (H, W)`` and ``phases (sh*sw, Hp,
    Wp)``, ``Hp, Wp = ceil(H/sh), ceil(W/sw)``; the entries past ``x``'s edge are left as they are."""
    for a in range(sh):
        for k in range(-(-(x.shape[0] - a) // sh)):
            _split_row(x[a + k * sh], sw, phases, a * sw, k)


@njit(cache=True, inline='always')
def merge_phases(phases, sh, sw, x):
    """``x[a + k*sh, b + j*sw] = phases[a*sw + b, k, j]``: the inverse of :func:`split_phases`."""
    for a in range(sh):
        for k in range(-(-(x.shape[0] - a) // sh)):
            _merge_row(phases, a * sw, k, sw, x[a + k * sh])


@njit(cache=True, inline='always')
def copy_outside(src, dst, lo, hi, width):
    """``dst[k] = src[k]`` for the positions ``k`` of a flattened ``(rows, width)`` plane whose column
    lies outside ``[lo, hi)``. They form one segment between consecutive rows (columns ``hi`` to
    ``width - 1``, then ``0`` to ``lo - 1`` of the next row); a scalar walk over them, as they are
    few (a kernel's reach into the padding)."""
    size, gap = src.shape[0], width - (hi - lo)
    k, e = hi - width, 0                          # the segment that ends row -1
    for _ in range((size // width + 1) * gap):
        if 0 <= k < size:
            dst[k] = src[k]
        k, e = k + 1, e + 1
        if e == gap:
            k, e = k + hi - lo, 0


@njit(cache=True, inline='always')
def multiply(out, a, b):
    """``out[j] = a[j] * b[j]``."""
    for j in range(out.shape[0]):
        out[j] = a[j] * b[j]


@njit(cache=True, inline='always')
def _part(a, base, length, t):
    """``a[base + t*length:base + (t + 1)*length]``."""
    return a[base + t * length:base + (t + 1) * length]


@njit(cache=True, inline='always')
def folded_sum(a):
    """The sum of a non-empty ``a`` (overwritten), in an order fixed by its length: while eight or
    more values are left, the last seven parts of ``n // 8`` values are added onto the first part
    (the values between stay); then the upper half onto the lower half until one value is left.
    Each step is one vectorised loop."""
    n = a.shape[0]
    while n >= 8:
        part = n // 8
        first, base = a[:part], n - 7 * part
        p1, p2, p3, p4 = _part(a, base, part, 0), _part(a, base, part, 1), _part(a, base, part, 2), \
            _part(a, base, part, 3)
        p5, p6, p7 = _part(a, base, part, 4), _part(a, base, part, 5), _part(a, base, part, 6)
        for j in range(part):
            first[j] += ((p1[j] + p2[j]) + (p3[j] + p4[j])) + ((p5[j] + p6[j]) + p7[j])
        n = base
    while n > 1:
        half = n // 2
        lower, upper = a[:half], a[n - half:n]    # an odd middle element stays
        for j in range(half):
            lower[j] += upper[j]
        n -= half
    return a[0]


def _at(coeff, j):
    """``coeff[j]`` for an array of coefficients, ``coeff`` itself for a scalar one."""


@overload(_at, inline='always')
def _at_overload(coeff, j):
    """:func:`_at` for Numba: chosen by the type of ``coeff``."""
    if isinstance(coeff, types.Array):
        return lambda coeff, j: coeff[j]
    return lambda coeff, j: coeff


@njit(cache=True, inline='always')
def gather(dense, coeff, taps):
    """``dense[j] += coeff[j] * taps[j]`` (``coeff`` an array, or one scalar for all ``j``)."""
    for j in range(dense.shape[0]):
        dense[j] += _at(coeff, j) * taps[j]


@njit(cache=True, inline='always')
def scatter(taps, coeff, dense):
    """``taps[j] += coeff[j] * dense[j]``, the transpose of :func:`gather`."""
    for j in range(dense.shape[0]):
        taps[j] += _at(coeff, j) * dense[j]


@njit(cache=True, inline='always')
def gather_row(dense, coeff, row, start, step):
    """``dense[j] += coeff[j] * row[start + j*step]``: one output row segment reads its taps, a
    contiguous slice at ``step == 1`` (vectorised), a strided view otherwise. (Each branch makes its
    own call: a slice with a step is an array type of its own, and one variable holding either
    would make both strided; an empty run has no strided slice, its stop would be negative.)"""
    m = dense.shape[0]
    if step == 1:
        gather(dense, coeff, row[start:start + m])
    elif m:
        gather(dense, coeff, row[start:start + (m - 1) * step + 1:step])


@njit(cache=True, inline='always')
def take_row(dense, row, start, step):
    """``dense[j] = row[start + j*step]``: :func:`gather_row` as a copy (im2col's rows)."""
    m = dense.shape[0]
    if step == 1:
        taps = row[start:start + m]
        for j in range(m):
            dense[j] = taps[j]
    elif m:
        taps = row[start:start + (m - 1) * step + 1:step]
        for j in range(m):
            dense[j] = taps[j]


@njit(cache=True, inline='always')
def scatter_row(row, start, step, coeff, dense):
    """``row[start + j*step] += coeff[j] * dense[j]``: the transpose of :func:`gather_row`."""
    m = dense.shape[0]
    if step == 1:
        scatter(row[start:start + m], coeff, dense)
    elif m:
        scatter(row[start:start + (m - 1) * step + 1:step], coeff, dense)
