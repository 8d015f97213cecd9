r"""Deformable convolution v1 / v2 (``torchvision.ops.deform_conv2d``) and the mmcv Pack layers.

Shapes (``K = kh*kw`` kernel points, ``L = Ho*Wo`` output pixels, ``og`` offset groups, ``G`` groups)::

    x      (N, C_in, H, W)
    offset (N, 2*og*K, Ho, Wo)    channel g*2K + 2p + 0 = dy, g*2K + 2p + 1 = dx of point p = i*kw + j
    mask   (N, og*K, Ho, Wo)      channel g*K + p; None = DCNv1 (m = 1)
    weight (C_out, C_in // G, kh, kw),  bias (C_out,)
    y      (N, C_out, Ho, Wo)     standard output size

Both group counts are inferred from the shapes, as torchvision does: ``G = C_in // weight.shape[1]``,
``og = offset.shape[1] // (2K)``; input channel ``c`` uses offset group ``c // (C_in / og)``.

Forward (docs/derivations/deformable.md): the sampling position of point ``(i, j)`` at output
``(y, x)`` is (eq. 3)::

    h = y*sh - p_top + i*dh + dy,      w = x*sw - p_left + j*dw + dx

the deformable columns are the bilinear samples B (eq. 1, zero outside ``-1 < h < H, -1 < w < W``)
scaled by the mask (eq. 4)::

    cols[n, c, i, j, y, x] = m * B(x[n, c], h, w)

and ``y = W cols + b`` is conv2d's grouped GEMM on these columns (eq. 5, ``conv.cols_matmul``). The
columns are stored as conv2d's blocks, ``(C, kh, kw, n, Ho, Wo)``, so that with a shared weight each
GEMM of (eq. 5, 6) takes the whole batch at once.

Backward, with ``dcols = W^T dy`` per group (eq. 6, ``conv.cols_matmul_backward``, which also gives
``dW = dy cols^T``; ``db = sum dy``):

* ``dx[n, c, hc, wc] += m * k(h - hc) * k(w - wc) * dcols``, the transposed bilinear scatter, with the
  same four corner weights as the forward (eq. 7);
* ``d dy = m * sum_{c in group} dcols * dB/dh``, ``d dx = m * sum_{c in group} dcols * dB/dw`` (eq. 8, 9),
  with ``dB/dh``, ``dB/dw`` from the corner-weight slopes (eq. 2), each corner checked on its own
  as in torchvision's ``get_coordinate_weight`` (so a coordinate of exactly -1 still has a slope);
* ``dmask = sum_{c in group} dcols * B`` (eq. 10).

In this file "kernel" is the convolution's ``kh x kw`` window (``kernel_size``, kernel points);
the compiled Numba functions are *loops* (``_..._loop``), which take the geometry as the int tuple
of :func:`numpyconv.im2col.loop_geo`. The sampling plan (top-left corner index and the four masked
corner weights, computed once per ``(n, offset group, point, pixel)`` and reused by every channel
of the group), the deformable im2col (parallel over ``(n, channel)``) and col2im (parallel over
``(n, channel)``: each iteration owns one input plane, so no write races) are one loop each. The
backward of a chunk (``_chunk_backward``) is one line per equation: ``dcols`` (eq. 6), ``dx``
(eq. 7), then the offset and mask gradients, which are linear in the four corner values: the
channel sum runs first, as ``S_k = sum_{c in group} dcols[c] * v_k[c]`` per corner k (eq. 10a;
parallel over ``(n, offset group, block of points)``, each owning its rows), and the corner slopes
and weights multiply the four sums once per ``(n, group, point, pixel)`` (eq. 8, 9, 10).
Every loop has a fixed order, so results are bitwise reproducible. ``x`` is read where it is (any
strides, e.g. a broadcast array): no padded copy of the input is made. Each iteration reads its
plane through its own copy with a one-pixel zero ring when the plane takes at most
``RING_PLANE_BYTES`` (one plane per thread), so that all four corners of any valid sample are in
bounds and the inner loops have no branch; a larger plane is read in place, each corner outside the
image reading as zero (and receiving no gradient).

Layers (NCHW): :class:`DeformConv2d` = mmcv ``DeformConv2dPack`` (offsets from a zero-initialised
``conv_offset``; eq. 11) and :class:`ModulatedDeformConv2d` = mmcv ``ModulatedDeformConv2dPack``
(``conv_offset`` gives ``[o1 | o2 | mask logits]``, offset = ``[o1 | o2]``, mask = sigmoid(logits); eq. 12).
Their backward adds the offset branch: ``dx = dx_deform + conv_offset^T(du)`` with ``du = doffset`` (v1)
or ``du = [doffset | dmask * mask * (1 - mask)]`` (v2), and ``conv_offset``'s weight/bias gradients
from ``du`` (conv2d backward).

Example::

    >>> x = np.ones((1, 1, 4, 4)); w = np.ones((1, 1, 3, 3)); off = np.zeros((1, 18, 2, 2))
    >>> y, cache = deform_conv2d_forward(x, off, w)
    >>> float(y[0, 0, 0, 0])                  # zero offsets: conv2d, 9 ones
    9.0
"""
import math
from collections.abc import Mapping

import numba
import numpy as np
from numba import njit, prange

from ._bilinear import corner_slopes_per_corner, corners
from ._checks import Cache, check_cache, expect_shape, float_array, grad_out, pair, positive_int, same_dtype
from ._parallel import threads_for
from .activations import sigmoid_backward, sigmoid_forward
from .conv import Conv2d, conv_geometry
from .im2col import loop_geo
from .gemm import cols_matmul, cols_matmul_backward
from .memory import batch_chunks, require_memory
from .module import Module, kaiming_uniform, uniform



# -- Numba loops ------------------------------------------------------------------------------
RING_PLANE_BYTES = 8 * 2 ** 20   # an input plane up to this size is read through a ringed copy

@njit(cache=True, inline='always')
def _point_origin(p, geo):
    """Where kernel point ``p`` samples for output pixel ``(0, 0)`` with a zero offset (eq. 3)."""
    kh, kw, sh, sw, dh, dw, top, left, ho, wo = geo
    return (p // kw) * dh - top, (p % kw) * dw - left


@njit(cache=True, inline='always')
def _position(origin, i, j, geo, dy, dx):
    """Sampling position ``(h, w)`` at output pixel ``(i, j)`` of the kernel point whose
    :func:`_point_origin` is ``origin`` (eq. 3)."""
    return origin[0] + i * geo[2] + dy, origin[1] + j * geo[3] + dx


@njit(cache=True, inline='always')
def _plane_owner(t, channels, og):
    """Sample ``b``, channel ``c`` and offset group ``g`` of the ``t``-th ``(n, channel)`` plane."""
    b, c = t // channels, t % channels
    return b, c, c // (channels // og)


@njit(cache=True, inline='always')
def _ring_buffer(plane, ringed):
    """Zeros for a flat copy of ``plane (H, W)`` with a one-pixel ring: ``((H+2)*(W+2),)`` (an empty
    array when not ``ringed``)."""
    height, width = plane.shape
    return np.zeros((height + 2) * (width + 2) if ringed else 0, dtype=plane.dtype)


@njit(cache=True, inline='always')
def _fill_ring(plane, ring):
    """Copy ``plane (H, W)`` (any strides) into the interior of ``ring``; its border stays zero."""
    height, width = plane.shape
    for i in range(height):
        start = (i + 1) * (width + 2) + 1
        ring[start:start + width] = plane[i]


@njit(cache=True, inline='always')
def _ring_of(plane, ringed):
    """A ringed copy of ``plane`` (see :func:`_ring_buffer`; empty when not ``ringed``)."""
    ring = _ring_buffer(plane, ringed)
    if ringed:
        _fill_ring(plane, ring)
    return ring


@njit(cache=True, inline='always')
def _corner_values(ring, plane, o, ringed):
    """The four corner values of the sample whose top-left corner has the ringed flat index ``o``:
    read from the ringed copy, or from ``plane`` itself with 0 for a corner outside the image."""
    ring_w = plane.shape[1] + 2
    if ringed:
        return ring[o], ring[o + 1], ring[o + ring_w], ring[o + ring_w + 1]
    height, width = plane.shape
    r, c = o // ring_w - 1, o % ring_w - 1
    top, bottom, left, right = 0 <= r, r + 1 < height, 0 <= c, c + 1 < width
    zero = plane.dtype.type(0)
    return (plane[r, c] if top and left else zero, plane[r, c + 1] if top and right else zero,
            plane[r + 1, c] if bottom and left else zero, plane[r + 1, c + 1] if bottom and right else zero)


@njit(cache=True, parallel=True)
def _plan_loop(offset, mask, use_mask, height, width, geo, base, weights):
    """Fill ``base (n, og, K, L)`` (flat index of the top-left corner in the plane with a one-pixel
    ring, ``(h0 + 1) * (W + 2) + w0 + 1``) and ``weights (n, og, K, 4, L)`` (the masked corner
    weights ``m * w00, m * w01, m * w10, m * w11``)."""
    n, og, npts = base.shape[:3]
    ho, wo, ring_w = geo[8], geo[9], width + 2
    for t in prange(n * og * npts):
        b, g, p = t // (og * npts), (t // npts) % og, t % npts
        row, origin = (g * npts + p) * 2, _point_origin(p, geo)
        for i in range(ho):
            for j in range(wo):
                q = i * wo + j
                h, w = _position(origin, i, j, geo, float(offset[b, row, q]), float(offset[b, row + 1, q]))
                m = float(mask[b, g * npts + p, q]) if use_mask else 1.0
                h0, w0, w00, w01, w10, w11 = corners(h, w, height, width)     # (eq. 1)
                base[b, g, p, q] = (h0 + 1) * ring_w + w0 + 1
                weights[b, g, p, 0, q] = m * w00
                weights[b, g, p, 1, q] = m * w01
                weights[b, g, p, 2, q] = m * w10
                weights[b, g, p, 3, q] = m * w11


@njit(cache=True, parallel=True)
def _im2col_loop(x, base, weights, ringed, cols):
    """Deformable columns ``cols (n, C, K, L)`` of ``x (n, C, H, W)`` (any strides) (eq. 4)."""
    n, channels = x.shape[0], x.shape[1]
    for t in prange(n * channels):
        b, c, g = _plane_owner(t, channels, base.shape[1])
        plane = x[b, c]
        ring = _ring_of(plane, ringed)
        for p in range(base.shape[2]):
            wt = weights[b, g, p]
            for q in range(base.shape[3]):
                v00, v01, v10, v11 = _corner_values(ring, plane, base[b, g, p, q], ringed)
                cols[b, c, p, q] = wt[0, q] * v00 + wt[1, q] * v01 + wt[2, q] * v10 + wt[3, q] * v11


@njit(cache=True, parallel=True)
def _col2im_loop(dcols, base, weights, ringed, dx):
    """Input gradient ``dx (n, C, H, W)``: the transposed sampling (eq. 7); the padding's share is
    dropped (added to the ring and discarded, or not added)."""
    n, channels, height, width = dx.shape
    ring_w = width + 2
    for t in prange(n * channels):
        b, c, g = _plane_owner(t, channels, base.shape[1])
        plane = dx[b, c]
        plane[...] = 0.0
        ring = _ring_of(plane, ringed)
        for p in range(base.shape[2]):
            wt, grad = weights[b, g, p], dcols[b, c, p]
            for q in range(base.shape[3]):
                o, v = base[b, g, p, q], grad[q]
                if ringed:
                    ring[o] += wt[0, q] * v
                    ring[o + 1] += wt[1, q] * v
                    ring[o + ring_w] += wt[2, q] * v
                    ring[o + ring_w + 1] += wt[3, q] * v
                else:
                    r, s = o // ring_w - 1, o % ring_w - 1
                    top, bottom, left, right = 0 <= r, r + 1 < height, 0 <= s, s + 1 < width
                    if top and left:
                        plane[r, s] += wt[0, q] * v
                    if top and right:
                        plane[r, s + 1] += wt[1, q] * v
                    if bottom and left:
                        plane[r + 1, s] += wt[2, q] * v
                    if bottom and right:
                        plane[r + 1, s + 1] += wt[3, q] * v
        if ringed:
            for i in range(height):
                start = (i + 1) * ring_w + 1
                plane[i] = ring[start:start + width]


@njit(cache=True, parallel=True)
def _corner_sums_loop(x, base, dcols, ringed, blocks, sums):
    """``sums (n, og, K, 4, L)`` (zero on entry): ``S_k = sum_{c in group} dcols[c] * v_k[c]`` per
    corner k (eq. 10a). Parallel over ``(n, group, block of points)``, ``blocks`` per group: each
    owns its rows of ``sums``, and every sum runs over the channels in order whatever the blocks
    (bitwise the same results)."""
    n, channels = x.shape[0], x.shape[1]
    og, npts, npix = base.shape[1], base.shape[2], base.shape[3]
    per_group = channels // og
    for t in prange(n * og * blocks):
        b, g, k = t // (og * blocks), (t // blocks) % og, t % blocks
        first, stop = k * npts // blocks, (k + 1) * npts // blocks
        ring = _ring_buffer(x[b, 0], ringed)
        for c in range(g * per_group, (g + 1) * per_group):
            plane = x[b, c]
            if ringed:
                _fill_ring(plane, ring)
            for p in range(first, stop):
                grad, point_sums = dcols[b, c, p], sums[b, g, p]
                for q in range(npix):
                    v00, v01, v10, v11 = _corner_values(ring, plane, base[b, g, p, q], ringed)
                    v = grad[q]
                    point_sums[0, q] += v * v00
                    point_sums[1, q] += v * v01
                    point_sums[2, q] += v * v10
                    point_sums[3, q] += v * v11


@njit(cache=True, inline='always')
def _offset_grad_at(h, w, m, s00, s01, s10, s11, height, width):
    """``(d dy, d dx) = (m sum_k dK_k/dh S_k, m sum_k dK_k/dw S_k)`` at one sample (eq. 8, 9), the
    corner slopes (eq. 2) checked per corner."""
    dh00, dh01, dh10, dh11, dw00, dw01, dw10, dw11 = corner_slopes_per_corner(h, w, height, width)
    return (m * (dh00 * s00 + dh01 * s01 + dh10 * s10 + dh11 * s11),
            m * (dw00 * s00 + dw01 * s01 + dw10 * s10 + dw11 * s11))


@njit(cache=True, inline='always')
def _mask_grad_at(h, w, s00, s01, s10, s11, height, width):
    """``d m = sum_k K_k S_k`` at one sample (eq. 10)."""
    _, _, w00, w01, w10, w11 = corners(h, w, height, width)
    return w00 * s00 + w01 * s01 + w10 * s10 + w11 * s11


@njit(cache=True, parallel=True)
def _coordinate_grad_loop(sums, offset, mask, use_mask, geo, height, width, doffset, dmask):
    """``doffset (n, 2*og*K, L)`` (eq. 8, 9) and, when ``use_mask``, ``dmask (n, og*K, L)`` (eq. 10)
    from the corner sums ``S_k`` (eq. 10a), the sampling position computed once per sample.
    Parallel over ``(n, group, point)``: each iteration owns its rows."""
    n, og, npts = sums.shape[:3]
    ho, wo = geo[8], geo[9]
    for t in prange(n * og * npts):
        b, g, p = t // (og * npts), (t // npts) % og, t % npts
        row, origin, point_sums = (g * npts + p) * 2, _point_origin(p, geo), sums[b, g, p]
        for i in range(ho):
            for j in range(wo):
                q = i * wo + j
                s00, s01, s10, s11 = point_sums[0, q], point_sums[1, q], point_sums[2, q], point_sums[3, q]
                h, w = _position(origin, i, j, geo, float(offset[b, row, q]), float(offset[b, row + 1, q]))
                m = float(mask[b, g * npts + p, q]) if use_mask else 1.0
                doffset[b, row, q], doffset[b, row + 1, q] = _offset_grad_at(                 # (eq. 8, 9)
                    h, w, m, s00, s01, s10, s11, height, width)
                if use_mask:                                                                  # (eq. 10)
                    dmask[b, g * npts + p, q] = _mask_grad_at(h, w, s00, s01, s10, s11, height, width)


# -- Python wrappers around the loops -----------------------------------------------------------
def _ringed(x):
    """Whether the loops read ``x``'s planes through ringed copies (a plane of at most
    ``RING_PLANE_BYTES``; larger planes are read where they are, with a test per corner)."""
    return (x.shape[2] + 2) * (x.shape[3] + 2) * x.itemsize <= RING_PLANE_BYTES


def _rows(a):
    """View of ``a (n, ch, Ho, Wo)`` (or ``(n, ch, kh, kw, Ho, Wo)``) as ``(n, ch, ..., L)``, L = Ho*Wo."""
    return a.reshape(a.shape[:-2] + (a.shape[-2] * a.shape[-1],))


def _by_point(cols):
    """View of columns ``(n, C, kh, kw, Ho, Wo)`` as ``(n, C, K, L)``."""
    n, channels, kh, kw, ho, wo = cols.shape
    return cols.reshape(n, channels, kh * kw, ho * wo)


def _flat_input(a, dtype):
    """A read-only operand as a contiguous ``(n, ch, L)`` array; an empty stand-in for None."""
    return np.zeros((0, 0, 0), dtype=dtype) if a is None else _rows(np.ascontiguousarray(a))


def _sampling_plan(offset, mask, geo, dtype):
    """``(base (n, og, K, L) int32, weights (n, og, K, 4, L))`` for a chunk of the batch."""
    n, npts = offset.shape[0], geo.kernel[0] * geo.kernel[1]
    og, npix = offset.shape[1] // (2 * npts), geo.out_hw[0] * geo.out_hw[1]
    base = np.empty((n, og, npts, npix), dtype=np.int32)
    weights = np.empty((n, og, npts, 4, npix), dtype=dtype)
    _plan_loop(_flat_input(offset, dtype), _flat_input(mask, dtype), mask is not None,
                 geo.in_hw[0], geo.in_hw[1], loop_geo(geo), base, weights)
    return base, weights


def _deform_im2col(x, plan, geo):
    """Deformable columns ``(n, C, kh, kw, Ho, Wo)`` of ``x`` (eq. 4), a view of a
    ``(C, kh, kw, n, Ho, Wo)`` array: conv2d's block layout, in which the GEMMs of (eq. 5, 6) take
    the whole batch at once."""
    n, channels = x.shape[:2]
    block = np.empty((channels,) + geo.kernel + (n,) + geo.out_hw, dtype=x.dtype)
    cols = block.transpose(3, 0, 1, 2, 4, 5)                             # (n, C, kh, kw, Ho, Wo)
    _im2col_loop(x, *plan, _ringed(x), _by_point(cols))
    return cols


def _deform_col2im(dcols, plan, dx):
    """Write the input gradient of ``dcols (n, C, kh, kw, Ho, Wo)`` into ``dx (n, C, H, W)`` (eq. 7)."""
    _col2im_loop(_by_point(dcols), *plan, _ringed(dx), dx)


def _corner_sums(x, dcols, plan):
    """``S (n, og, K, 4, L)``: per corner, the channel sum of ``dcols`` times the corner value (eq. 10a)."""
    base = plan[0]
    n, og, npts, npix = base.shape
    sums = np.zeros((n, og, npts, 4, npix), dtype=x.dtype)
    blocks = min(npts, -(-numba.get_num_threads() // max(1, n * og)))   # tasks for every thread
    _corner_sums_loop(x, base, _by_point(dcols), _ringed(x), max(blocks, 1), sums)
    return sums


def _coordinate_grads(sums, offset, mask, geo):
    """``(doffset (n, 2*og*K, Ho, Wo), dmask (n, og*K, Ho, Wo) or None)`` from the corner sums
    (eq. 8, 9, 10)."""
    dtype = sums.dtype
    doffset = np.empty(offset.shape, dtype=dtype)
    dmask = None if mask is None else np.empty(mask.shape, dtype=dtype)
    _coordinate_grad_loop(sums, _flat_input(offset, dtype), _flat_input(mask, dtype), mask is not None,
                          loop_geo(geo), geo.in_hw[0], geo.in_hw[1], _rows(doffset),
                          _flat_input(dmask, dtype))
    return doffset, dmask


# -- the op -------------------------------------------------------------------------------------
def _check_deform(x, offset, weight, bias, mask, stride, padding, dilation):
    """Validate the operands; return ``(groups, geometry)`` (offset groups follow from offset)."""
    float_array(x, 'x', 4, "(N, C_in, H, W)")
    float_array(offset, 'offset', 4, "(N, 2*offset_groups*kh*kw, Ho, Wo)")
    float_array(weight, 'weight', 4, "(C_out, C_in // groups, kh, kw)")
    n, c_in = x.shape[:2]
    c_out, c_g, kh, kw = weight.shape
    if c_g == 0 or kh == 0 or kw == 0 or c_in % c_g or c_out % (c_in // c_g):
        raise ValueError(f"weight must have shape (C_out, C_in // groups, kh, kw) with kh, kw >= 1 and "
                         f"groups dividing C_in={c_in} and C_out, got weight of shape {weight.shape} for "
                         f"x of shape {x.shape}")
    geo = conv_geometry(x.shape[2:], (kh, kw), stride, padding, dilation)
    npts = kh * kw
    og = offset.shape[1] // (2 * npts)
    if offset.shape[1] % (2 * npts) or og == 0 or c_in % og:
        raise ValueError(f"offset must have shape (N, 2*offset_groups*kh*kw, Ho, Wo) = ({n}, 2*og*{npts}, "
                         f"{geo.out_hw[0]}, {geo.out_hw[1]}) with offset_groups og dividing C_in={c_in}, "
                         f"got {offset.shape}")
    expect_shape(offset, (n, 2 * og * npts) + geo.out_hw, 'offset')
    if mask is not None:
        float_array(mask, 'mask', 4, "(N, offset_groups*kh*kw, Ho, Wo)")
        expect_shape(mask, (n, og * npts) + geo.out_hw, 'mask')
    if bias is not None:
        float_array(bias, 'bias')
        expect_shape(bias, (c_out,), 'bias')
    same_dtype(('x', x), ('offset', offset), ('weight', weight), ('bias', bias), ('mask', mask))
    return c_in // c_g, geo


def _work(x, geo):
    """Sampled values ``n * C_in * K * L`` of a chunk (decides whether the loops run in parallel)."""
    return x.shape[0] * x.shape[1] * int(np.prod(geo.kernel)) * int(np.prod(geo.out_hw))


def _bytes_per_sample(x, geo):
    """Column buffer bytes of one sample (``C_in * K * L`` values)."""
    return x.shape[1] * int(np.prod(geo.kernel)) * int(np.prod(geo.out_hw)) * x.itemsize


def _cause(x, offset, stride, padding, dilation):
    return (f"x of shape {x.shape} and offset of shape {offset.shape} with stride={stride!r}, "
            f"padding={padding!r}, dilation={dilation!r}")


def deform_conv2d_forward(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable convolution as ``torchvision.ops.deform_conv2d`` (eq. 3-5).

    Groups and offset groups are inferred from the shapes of ``weight`` and ``offset``. ``x`` is read
    where it is (any strides, e.g. a broadcast array): the padding is a shift of the sampling
    positions (eq. 3) and the bilinear sampling reads zeros outside the image, so no padded copy is made.

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
    offset : ndarray (N, 2*og*kh*kw, Ho, Wo)
        ``(dy, dx)`` pairs per offset group and kernel point (row-major points).
    weight : ndarray (C_out, C_in // groups, kh, kw)
    bias : ndarray (C_out,) or None
    stride, padding, dilation : int or pair
    mask : ndarray (N, og*kh*kw, Ho, Wo) or None
        None is DCNv1 (m = 1), a mask DCNv2.

    Returns
    -------
    y : ndarray (N, C_out, Ho, Wo)
    cache : Cache
        ``Cache('deform_conv2d')`` with ``x``, ``offset``, ``mask`` (None for DCNv1), ``weight``,
        ``has_bias``, ``groups``, ``geo``, and ``plan`` / ``cols`` (the sampling plan and the columns;
        both None when the batch was processed in several chunks, the backward then recomputes them).
    """
    groups, geo = _check_deform(x, offset, weight, bias, mask, stride, padding, dilation)
    cause = _cause(x, offset, stride, padding, dilation)
    require_memory((x.shape[0], weight.shape[0]) + geo.out_hw, x.dtype, cause)
    require_memory(x.shape[1:2] + geo.kernel + geo.out_hw, x.dtype, cause, 'the columns of one sample')
    y = np.empty((x.shape[0], weight.shape[0]) + geo.out_hw, dtype=x.dtype)
    chunks = batch_chunks(x.shape[0], _bytes_per_sample(x, geo))
    for s in chunks:
        plan, cols = _columns(x[s], offset[s], None if mask is None else mask[s], geo)   # (eq. 3, 4)
        cols_matmul(cols, weight, groups, out=y[s])                      # (eq. 5)
    if bias is not None:
        y += bias[:, None, None]
    single = len(chunks) == 1
    cache = Cache('deform_conv2d', x=x, offset=offset, mask=mask, weight=weight,
                  has_bias=bias is not None, groups=groups, geo=geo, plan=plan if single else None,
                  cols=cols if single else None)
    return y, cache


def _columns(x, offset, mask, geo):
    """``(plan, cols)`` of a chunk of samples: the sampling plan (eq. 3, 1) and the deformable columns
    ``(n, C, kh, kw, Ho, Wo)`` (eq. 4)."""
    with threads_for(_work(x, geo)):
        plan = _sampling_plan(offset, mask, geo, x.dtype)
        return plan, _deform_im2col(x, plan, geo)


def _chunk_backward(dout, x, offset, mask, weight, groups, geo, plan, cols, dx):
    """Backward of one chunk of samples, a line an equation of docs/derivations/deformable.md:
    ``dx`` written in place; returns ``(doffset, dmask, dweight)``, ``dmask`` None for DCNv1."""
    dcols, dweight = cols_matmul_backward(dout, cols, weight, groups, reuse=True)    # (eq. 6)
    with threads_for(_work(x, geo)):
        _deform_col2im(dcols, plan, dx)                                               # (eq. 7)
        sums = _corner_sums(x, dcols, plan)                                           # (eq. 10a)
        doffset, dmask = _coordinate_grads(sums, offset, mask, geo)                   # (eq. 8, 9, 10)
    return doffset, dmask, dweight


def deform_conv2d_backward(dout, cache):
    """Gradients of :func:`deform_conv2d_forward` (eq. 6-10).

    Parameters
    ----------
    dout : ndarray, (N, C_out, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`deform_conv2d_forward`.
    cache : Cache
        The cache :func:`deform_conv2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, doffset, dweight, dbias, dmask)``, each of its input's shape, in forward's positional
        order; ``dbias`` / ``dmask`` None when bias / mask were None.
    """
    cache = check_cache(cache, 'deform_conv2d')
    x, offset, mask, weight, geo = (cache[k] for k in ('x', 'offset', 'mask', 'weight', 'geo'))
    n = x.shape[0]
    dout = grad_out(dout, (n, weight.shape[0]) + geo.out_hw, x.dtype)
    require_memory(x.shape, x.dtype, f"x of shape {x.shape}", 'the input gradient')
    dx = np.empty(x.shape, dtype=x.dtype)
    doffset = np.empty(offset.shape, dtype=x.dtype)
    dmask = None if mask is None else np.empty(mask.shape, dtype=x.dtype)
    dweight = np.zeros_like(weight)
    plan, cols = cache['plan'], cache['cols']
    chunks = [slice(0, n)] if cols is not None else batch_chunks(n, _bytes_per_sample(x, geo))
    for s in chunks:
        mask_s = None if mask is None else mask[s]
        if cache['cols'] is None:
            plan, cols = _columns(x[s], offset[s], mask_s, geo)                       # (eq. 3, 4)
        doffset[s], dmask_s, dw = _chunk_backward(dout[s], x[s], offset[s], mask_s, weight,
                                                  cache['groups'], geo, plan, cols, dx[s])
        dweight += dw
        if dmask is not None:
            dmask[s] = dmask_s
    dbias = dout.sum(axis=(0, 2, 3)) if cache['has_bias'] else None                   # (eq. 6)
    return dx, doffset, dweight, dbias, dmask


# -- layers -------------------------------------------------------------------------------------
class _DeformPack(Module):
    """Shared construction of the mmcv Pack layers: main ``weight`` plus a zero-initialised ``conv_offset``
    ``Conv2d(in_channels, deform_groups * values_per_point * kh*kw, kernel_size, stride, padding,
    dilation, bias=True)`` predicting the per-point values at the output resolution."""

    values_per_point = 2
    modulated = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                 deform_groups, *, dtype, rng):
        super().__init__(dtype=dtype, rng=rng)
        self.in_channels = positive_int(in_channels, 'in_channels')
        self.out_channels = positive_int(out_channels, 'out_channels')
        self.groups = positive_int(groups, 'groups')
        self.deform_groups = positive_int(deform_groups, 'deform_groups')
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        if in_channels % deform_groups:
            raise ValueError(f"deform_groups={deform_groups} must divide in_channels={in_channels}")
        kh, kw = pair(kernel_size, 'kernel_size', minimum=1)
        self.conv_offset = self.add_module('conv_offset', Conv2d(
            in_channels, deform_groups * self.values_per_point * kh * kw, (kh, kw), stride, padding,
            dilation, bias=True, dtype=dtype, rng=self.rng))
        for value in self.conv_offset.params.values():                   # mmcv init_offset()
            value.fill(0)
        self.kernel_size = self.conv_offset.kernel_size
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def _weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    def _deform(self, x, offset, mask):
        """The deformable convolution with this layer's weight, bias and geometry."""
        return deform_conv2d_forward(x, offset, self._params['weight'], self._params.get('bias'),
                                     self.stride, self.padding, self.dilation, mask=mask)

    def _accumulate(self, dweight, dbias):
        self._add_grad('weight', dweight)
        if dbias is not None:
            self._add_grad('bias', dbias)

    def load_state_dict(self, state, strict=True):
        """As :meth:`Module.load_state_dict`; also accepts mmcv's legacy (version < 2) key names
        ``_offset.weight`` / ``_offset.bias`` for ``conv_offset.weight`` / ``conv_offset.bias``."""
        if isinstance(state, Mapping):                  # anything else: Module's TypeError
            state = dict(state)
            for name in ('weight', 'bias'):
                legacy, key = f'_offset.{name}', f'conv_offset.{name}'
                if key not in state and legacy in state:
                    state[key] = state.pop(legacy)
        return super().load_state_dict(state, strict)

    def macs(self, input_shape):
        """Multiply-adds: the main convolution on the sampled columns (as ``Conv2d``), the offset
        convolution, and the bilinear sampling (4 per sampled value, plus 1 for the mask in v2)."""
        offset_macs, (n, _, ho, wo) = self.conv_offset.macs(input_shape)
        samples = n * self.in_channels * self.kernel_size[0] * self.kernel_size[1] * ho * wo
        main = n * self.out_channels * ho * wo * int(np.prod(self._weight_shape()[1:]))
        return main + offset_macs + samples * (4 + self.modulated), (n, self.out_channels, ho, wo)


class DeformConv2d(_DeformPack):
    """DCNv1 layer = mmcv ``DeformConv2dPack``: ``y = deform_conv2d(x, conv_offset(x), weight)`` (eq. 11).

    Keys ``weight (out, in//groups, kh, kw)``, ``conv_offset.weight (dg*2*kh*kw, in, kh, kw)``,
    ``conv_offset.bias (dg*2*kh*kw,)``. Weight init ``kaiming_uniform_(nonlinearity='relu')`` =
    U(+-sqrt(6/fan_in)); ``conv_offset`` starts at zero. ``(N, in, H, W) -> (N, out, Ho, Wo)``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation
        Of the main and the offset convolution, as in :func:`deform_conv2d_forward`.
    groups : int
        Weight groups; divides both channel counts.
    deform_groups : int
        Offset groups; divides ``in_channels``.
    bias : bool
        Must be False (mmcv asserts ``not bias``).
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deform_groups=1, bias=False, *, dtype=np.float32, rng=None):
        if bias:
            raise ValueError("DeformConv2d (mmcv DeformConv2dPack, DCNv1) has no bias, got bias=True; "
                             "use ModulatedDeformConv2d for a biased deformable convolution")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deform_groups, dtype=dtype, rng=rng)
        shape = self._weight_shape()
        bound = math.sqrt(6.0 / int(np.prod(shape[1:])))
        self.add_param('weight', uniform(self.rng, bound, shape, self.dtype))

    def forward(self, x):
        self._check_input(x, channels=self.in_channels)
        y, self._cache = self._deform(x, self.conv_offset(x), None)
        return y

    def backward(self, dout):
        dx, doffset, dweight, _, _ = deform_conv2d_backward(dout, self._cache)
        self._accumulate(dweight, None)
        return dx + self.conv_offset.backward(doffset)                   # (eq. 11)

    def sampling_locations(self, x):
        """Pixel ``(x, y)`` ``(N, Ho, Wo, deform_groups, kh*kw, 2)`` where this layer samples ``x``, and
        ones as weights (:func:`numpyconv.sampling_locations`); keeps nothing for a backward pass."""
        from . import sampling
        self._check_input(x, channels=self.in_channels)
        with sampling.without_caching(self):
            offset = self.conv_offset(x)
        return sampling.sampling_locations('deform_conv2d', x, offset, self._params['weight'], None,
                                           self.stride, self.padding, self.dilation)


class ModulatedDeformConv2d(_DeformPack):
    """DCNv2 layer = mmcv ``ModulatedDeformConv2dPack`` (eq. 12)::

        o1, o2, logits = chunk(conv_offset(x), 3)     offset = [o1 | o2],  mask = sigmoid(logits)
        y = deform_conv2d(x, offset, weight, bias, mask=mask)

    Keys ``weight``, ``bias`` (if ``bias``), ``conv_offset.weight (dg*3*kh*kw, in, kh, kw)``,
    ``conv_offset.bias``. Init: weight U(+-1/sqrt(in_channels*kh*kw)) (mmcv does not divide by
    groups), bias 0, ``conv_offset`` 0, so the layer starts as ``0.5 * conv2d(x) + bias``.
    ``(N, in, H, W) -> (N, out, Ho, Wo)``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation
        Of the main and the offset convolution, as in :func:`deform_conv2d_forward`.
    groups : int
        Weight groups; divides both channel counts.
    deform_groups : int
        Offset groups; divides ``in_channels``.
    bias : bool
        Learn ``bias``.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    values_per_point = 3
    modulated = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deform_groups=1, bias=True, *, dtype=np.float32, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deform_groups, dtype=dtype, rng=rng)
        shape = self._weight_shape()
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.add_param('weight', kaiming_uniform(self.rng, shape, self.dtype, fan_in=fan_in))
        if bias:
            self.add_param('bias', np.zeros(self.out_channels))

    def forward(self, x):
        self._check_input(x, channels=self.in_channels)
        out = self.conv_offset(x)                             # (N, 3*dg*K, Ho, Wo): [o1 | o2 | logits]
        n_offsets = 2 * out.shape[1] // 3
        mask, self._mask_cache = sigmoid_forward(out[:, n_offsets:])
        y, self._cache = self._deform(x, out[:, :n_offsets], mask)
        return y

    def backward(self, dout):
        dx, doffset, dweight, dbias, dmask = deform_conv2d_backward(dout, self._cache)
        self._accumulate(dweight, dbias)
        dlogits, = sigmoid_backward(dmask, self._mask_cache)
        dout_offset = np.concatenate([doffset, dlogits], axis=1)         # (N, 3*dg*K, Ho, Wo)
        return dx + self.conv_offset.backward(dout_offset)               # (eq. 12)

    def sampling_locations(self, x):
        """Pixel ``(x, y)`` ``(N, Ho, Wo, deform_groups, kh*kw, 2)`` where this layer samples ``x``, and
        the mask as weights (:func:`numpyconv.sampling_locations`); keeps nothing for a backward pass."""
        from . import sampling
        self._check_input(x, channels=self.in_channels)
        with sampling.without_caching(self):
            out = self.conv_offset(x)
        n_offsets = 2 * out.shape[1] // 3
        mask, _ = sigmoid_forward(out[:, n_offsets:])
        return sampling.sampling_locations('deform_conv2d', x, out[:, :n_offsets], self._params['weight'],
                                           None, self.stride, self.padding, self.dilation, mask=mask)
