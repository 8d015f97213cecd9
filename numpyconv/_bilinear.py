r"""Bilinear sampling with zero padding: the one rule shared by every deformable op.

A point ``(h, w)`` (float, in input pixels) of an ``H x W`` image has the value
(docs/derivations/deformable.md, eq. 1)::

    v(h, w) = sum over the 4 corners (hc, wc) in {h0, h0+1} x {w0, w0+1}, h0 = floor(h), w0 = floor(w),
              of  K(h - hc) K(w - wc) img[hc, wc],      K(t) = max(0, 1 - |t|)

where a corner outside the image contributes 0 and the whole value is 0 unless
``-1 < h < H`` and ``-1 < w < W`` (torchvision / DCNv3 / DCNv4 rule, each corner checked
separately). The weights, in corner order ``(h0,w0), (h0,w0+1), (h0+1,w0), (h0+1,w0+1)``, are
``(1-lh)(1-lw), (1-lh)lw, lh(1-lw), lh lw`` with ``lh = h - h0``, ``lw = w - w0``.
Their derivatives (eq. 2), used for the offset gradient, are::

    d/dh: -(1-lw), -lw, (1-lw), lw          d/dw: -(1-lh), (1-lh), -lh, lh

At an integer coordinate ``floor`` picks the right-hand derivative, as the official kernels do.
``corner_slopes`` is zero outside ``-1 < h < H``, ``-1 < w < W`` (DCNv3/DCNv4 kernels);
``corner_slopes_per_corner`` checks each corner alone and has no such exit (torchvision's
``get_coordinate_weight``). The two differ only at a coordinate exactly equal to -1, where the
value is 0 but the second still gives the slope towards row / column 0 (eq. 2, boundary note).
These functions are Numba-compiled and called from the ops' own jitted loops; they only
compute indices and weights, the loops do the reads and the ``+=`` of the gradients.
The row helpers (``clamped_corners``, ``corner_dots``, ``axpy``) serve kernels on
channels-last rows (multi-scale deformable attention): they read and update whole channel rows.

The DCNv3/DCNv4 sampling grid ends this file (docs/derivations/dcnv3.md, eq. 2a-2b): where a point
of those ops samples, as InternImage's ``dcnv3_core_pytorch`` computes it, so that the ops, their
reference loops and ``numpyconv.sampling_locations`` share one rule.
"""
import math

import numpy as np
from numba import njit


@njit(cache=True, inline='always')
def corners(h, w, height, width):
    """``(h0, w0, w00, w01, w10, w11)``: top-left corner and the four weights (0 if outside).

    The corner is returned for ``-1 <= h < H``, ``-1 <= w < W`` (at exactly -1 every weight is 0,
    but ``corner_slopes_per_corner`` reads the corners there); ``(0, 0)`` otherwise.
    """
    if not (-1.0 <= h < height and -1.0 <= w < width):
        return 0, 0, 0.0, 0.0, 0.0, 0.0
    h0, w0 = int(math.floor(h)), int(math.floor(w))
    lh, lw = h - h0, w - w0
    top, bottom = h0 >= 0, h0 + 1 <= height - 1
    left, right = w0 >= 0, w0 + 1 <= width - 1
    w00 = (1.0 - lh) * (1.0 - lw) if top and left else 0.0
    w01 = (1.0 - lh) * lw if top and right else 0.0
    w10 = lh * (1.0 - lw) if bottom and left else 0.0
    w11 = lh * lw if bottom and right else 0.0
    return h0, w0, w00, w01, w10, w11


@njit(cache=True, inline='always')
def _slopes(h, w, height, width):
    """The eight slopes with each corner checked on its own (``h``, ``w`` finite)."""
    h0, w0 = int(math.floor(h)), int(math.floor(w))
    lh, lw = h - h0, w - w0
    top, bottom = 0 <= h0 < height, 0 <= h0 + 1 < height
    left, right = 0 <= w0 < width, 0 <= w0 + 1 < width
    k00, k01, k10, k11 = top and left, top and right, bottom and left, bottom and right
    return (-(1.0 - lw) if k00 else 0.0, -lw if k01 else 0.0,
            (1.0 - lw) if k10 else 0.0, lw if k11 else 0.0,
            -(1.0 - lh) if k00 else 0.0, (1.0 - lh) if k01 else 0.0,
            -lh if k10 else 0.0, lh if k11 else 0.0)


@njit(cache=True, inline='always')
def corner_slopes_per_corner(h, w, height, width):
    """Derivatives of the four corner weights: ``(dh00, dh01, dh10, dh11, dw00, dw01, dw10, dw11)``,
    each zero when its corner is outside the image (torchvision's rule: no test on ``(h, w)`` itself;
    outside ``[-1, H) x [-1, W)`` every corner is outside, which the early exit also makes safe for
    huge or non-finite coordinates)."""
    if not (-1.0 <= h < height and -1.0 <= w < width):
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    return _slopes(h, w, height, width)


@njit(cache=True, inline='always')
def corner_slopes(h, w, height, width):
    """As :func:`corner_slopes_per_corner`, and all zero outside ``-1 < h < H``, ``-1 < w < W``."""
    if not (-1.0 < h < height and -1.0 < w < width):
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    return _slopes(h, w, height, width)


# -- row helpers of the channels-last kernels (multi-scale deformable attention) ----------------
@njit(cache=True, inline='always')
def clamped_corners(h0, w0, height, width):
    """In-bounds read indices ``(r0, r1, c0, c1)`` of the four corners of :func:`corners`; a corner
    outside the image has weight 0, so reading its clamped neighbour adds ``0 * pixel``."""
    return max(h0, 0), min(h0 + 1, height - 1), max(w0, 0), min(w0 + 1, width - 1)


@njit(cache=True, fastmath={'reassoc'})
def corner_dots(t, v00, v01, v10, v11):
    """``s_k = sum_c t[c] * v_k[c]`` for four corner rows, accumulated in float64.

    The sums may be reassociated (``fastmath={'reassoc'}``, nothing else), so that they run in SIMD
    lanes; the order is that of the compiled loop, fixed for a given length: the same inputs give
    the same bits whatever the thread count. Not inlined, so the reassociation stays in here.
    """
    s00 = s01 = s10 = s11 = 0.0
    for c in range(t.shape[0]):
        s00 += t[c] * v00[c]
        s01 += t[c] * v01[c]
        s10 += t[c] * v10[c]
        s11 += t[c] * v11[c]
    return s00, s01, s10, s11


@njit(cache=True, inline='always')
def axpy(a, t, y):
    """``y += a * t`` over one row (in place, channel order)."""
    for c in range(t.shape[0]):
        y[c] += a * t[c]


# -- the DCNv3 / DCNv4 sampling grid ------------------------------------------------------------
def dcn_base_grid(out_size, stride, half, taps, padded, scale):
    """``(out_size, P)`` float32: the base location of each output row (or column) and kernel point
    along one axis, in units of the padded size, rounded as ``dcnv3_core_pytorch`` rounds it (its
    grids are float32 whatever the input dtype) (dcnv3.md eq. 2a)::

        base = f32(f32(half + 0.5 + i * stride) / padded) + f32(f32(tap - half) / padded) * f32(scale)

    ``taps`` (P,) are the points' ``j * dilation`` along the axis, ``half = dilation * (k-1) // 2``,
    ``padded`` the padded input size along the axis.
    """
    ref = (half + 0.5 + stride * np.arange(out_size)).astype(np.float32) / np.float32(padded)
    grid = (np.asarray(taps) - half).astype(np.float32) / np.float32(padded)
    return ref[:, None] + grid[None, :] * np.float32(scale)


def dcn_grids(in_hw, geo, taps, scale):
    """``(base_h (Ho, P), base_w (Wo, P))`` float64 (float32 values, eq. 2a) and ``frame = (top,
    left, Hp, Wp)``: the sampling grid of every output row and column before the offsets, ``Hp, Wp``
    the padded input size. ``geo`` a ``Geometry`` (:func:`numpyconv.conv_geometry`), ``taps`` (P, 2)
    the points' ``(j*dh, i*dw)`` in the caller's point order."""
    (kh, kw), (sh, sw), (dh, dw), (top, bottom, left, right) = geo.kernel, geo.stride, geo.dilation, geo.pads
    hp, wp = in_hw[0] + top + bottom, in_hw[1] + left + right
    base_h = dcn_base_grid(geo.out_hw[0], sh, dh * (kh - 1) // 2, taps[:, 0], hp, scale)
    base_w = dcn_base_grid(geo.out_hw[1], sw, dw * (kw - 1) // 2, taps[:, 1], wp, scale)
    frame = (float(top), float(left), float(hp), float(wp))
    return base_h.astype(np.float64), base_w.astype(np.float64), frame


def dcn_coordinate(base, offset, scale, padded, pad_before):
    """The input pixel coordinate sampled (dcnv3.md eq. 2b): the offset added in units of the padded size,
    then ``grid_sample``'s ``align_corners=False`` map back to pixels, minus the leading pad; in
    float64 (``base`` widened). Works on scalars and arrays; ``dcn_coordinate_jit`` is the Numba
    version for the loops."""
    location = base + offset * scale / padded
    return (2 * location - 1 + 1) * (padded / 2) - 0.5 - pad_before


dcn_coordinate_jit = njit(cache=True, inline='always')(dcn_coordinate)
