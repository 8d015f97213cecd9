"""Plain-loop definitions of upsample_nearest2d and upsample_bilinear2d, forward and backward,
output pixel by output pixel as PyTorch's CPU kernels define the source indices
(docs/derivations/blocks.md, eq. 29-30, 51-54). Outputs keep the input's dtype; each backward
takes ``(dout, *forward_args)`` and returns ``(dx,)``.
"""
import math

import numpy as np


def _pair_or_none(v):
    return None if v is None else ((v, v) if np.ndim(v) == 0 else tuple(v))


def _resolve(x, size, scale_factor, recompute_scale_factor):
    """``(out_hw, scales)`` as ``F.interpolate``: the output size, and the scale factors the source
    index uses (None: the sizes' ratio)."""
    size, factors = _pair_or_none(size), _pair_or_none(scale_factor)
    if size is not None:
        return tuple(int(s) for s in size), (None, None)
    out_hw = tuple(math.floor(x.shape[2 + a] * float(factors[a])) for a in (0, 1))
    return out_hw, ((None, None) if recompute_scale_factor else tuple(float(f) for f in factors))


def _nearest_src(o, in_size, out_size, scale, legacy, dtype):
    """The input index output ``o`` copies (eq. 29a when ``legacy``, eq. 29b otherwise)."""
    if legacy and out_size == in_size:
        return o
    if legacy and out_size == 2 * in_size:
        return o // 2
    math_type = np.float32 if legacy or dtype == np.float32 else np.float64
    sigma = math_type(1.0 / scale) if scale is not None else math_type(in_size) / math_type(out_size)
    real = np.float32(math_type(o) * sigma)
    return min(int(math.floor(real)), in_size - 1)


def _nearest_maps(x, scale_factor, size, recompute_scale_factor):
    if size is not None and scale_factor == 2:
        scale_factor = None                                  # the default factor steps aside for size
    (oh, ow), (s_h, s_w) = _resolve(x, size, scale_factor, recompute_scale_factor)
    n, c, h, w = x.shape
    legacy = oh + ow <= 128 or (h * w == 1 and c > 3)        # PyTorch's kernel choice
    rows = [_nearest_src(i, h, oh, s_h, legacy, x.dtype) for i in range(oh)]
    cols = [_nearest_src(j, w, ow, s_w, legacy, x.dtype) for j in range(ow)]
    return rows, cols


def upsample_nearest2d(x, scale_factor=2, size=None, recompute_scale_factor=None):
    """``y[n,c,i,j] = x[n, c, src(i), src(j)]`` (eq. 29)."""
    rows, cols = _nearest_maps(x, scale_factor, size, recompute_scale_factor)
    y = np.zeros(x.shape[:2] + (len(rows), len(cols)), dtype=x.dtype)
    for n, c, i, j in np.ndindex(*y.shape):
        y[n, c, i, j] = x[n, c, rows[i], cols[j]]
    return y


def upsample_nearest2d_backward(dout, x, scale_factor=2, size=None, recompute_scale_factor=None):
    """``dx[n, c, src(i), src(j)] += dout[n, c, i, j]`` (eq. 30)."""
    rows, cols = _nearest_maps(x, scale_factor, size, recompute_scale_factor)
    dx = np.zeros_like(x)
    for n, c, i, j in np.ndindex(*dout.shape):
        dx[n, c, rows[i], cols[j]] += dout[n, c, i, j]
    return (dx,)


def _linear_src(o, in_size, out_size, align_corners, scale):
    """``(i0, i1, lam)``: output ``o`` is ``(1 - lam) x[i0] + lam x[i1]`` (eq. 51-52)."""
    if out_size == in_size:
        return o, o, 0.0
    if align_corners:
        real = (in_size - 1) / (out_size - 1) * o if out_size > 1 else 0.0
    else:
        ratio = 1.0 / scale if scale is not None else in_size / out_size
        real = max(ratio * (o + 0.5) - 0.5, 0.0)
    i0 = min(int(math.floor(np.float32(real))), in_size - 1)
    lam = min(max(real - i0, 0.0), 1.0)
    return i0, (i0 + 1 if i0 < in_size - 1 else i0), lam


def _bilinear_taps(x, size, scale_factor, align_corners):
    """Per output pixel ``(i, j)``: the four ``((u, v), weight)`` taps (eq. 53)."""
    (oh, ow), (s_h, s_w) = _resolve(x, size, scale_factor, None)
    h, w = x.shape[2:]
    taps = {}
    for i in range(oh):
        u0, u1, a = _linear_src(i, h, oh, align_corners, s_h)
        for j in range(ow):
            v0, v1, b = _linear_src(j, w, ow, align_corners, s_w)
            taps[i, j] = [((u0, v0), (1 - a) * (1 - b)), ((u0, v1), (1 - a) * b),
                          ((u1, v0), a * (1 - b)), ((u1, v1), a * b)]
    return (oh, ow), taps


def upsample_bilinear2d(x, size=None, scale_factor=None, align_corners=False):
    """``y[n,c,i,j] = sum over the four taps of weight * x[n, c, u, v]`` (eq. 53)."""
    out_hw, taps = _bilinear_taps(x, size, scale_factor, align_corners)
    y = np.zeros(x.shape[:2] + out_hw, dtype=x.dtype)
    for n, c, i, j in np.ndindex(*y.shape):
        y[n, c, i, j] = sum(weight * float(x[n, c, u, v]) for (u, v), weight in taps[i, j])
    return y


def upsample_bilinear2d_backward(dout, x, size=None, scale_factor=None, align_corners=False):
    """``dx[n, c, u, v] += weight * dout[n, c, i, j]`` for each tap (eq. 54)."""
    _, taps = _bilinear_taps(x, size, scale_factor, align_corners)
    dx = np.zeros_like(x)
    for n, c, i, j in np.ndindex(*dout.shape):
        for (u, v), weight in taps[i, j]:
            dx[n, c, u, v] += weight * dout[n, c, i, j]
    return (dx,)
