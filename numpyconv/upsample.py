r"""Upsampling (any resize) as ``torch.nn.functional.interpolate``: nearest and bilinear, each a
forward / hand-derived backward pair, and the ``Upsample`` layer.

Shapes: ``x (N, C, H, W) -> y (N, C, Ho, Wo)``. Equations: docs/derivations/blocks.md. Both modes are
separable: one 1-D map per spatial axis, applied along W and along H.

Output size: ``size``, or ``floor(H * scale_factor)`` (the same for W). The source coordinate of
output index ``o`` uses ``sigma = 1 / scale_factor`` when a scale factor is given (and not
``recompute_scale_factor=True``), ``sigma = H / Ho`` otherwise (PyTorch's rule)::

    nearest     y[i, j] = x[src(i), src(j)]                                                 (eq. 29)
                small outputs (Ho + Wo <= 128; PyTorch's channels-last kernel):
                src(o) = o if Ho = H;  o // 2 if Ho = 2 H;
                         min(floor(fl(fl(sigma) o)), H - 1) otherwise, fl = float32 rounding  (eq. 29a)
                larger outputs (PyTorch's generic kernel):
                src(o) = min(floor(fl(sigma o)), H - 1), sigma o in the input's precision    (eq. 29b)
                dx[u, v] = sum of dy[i, j] over src(i) = u, src(j) = v                          (eq. 30)
    bilinear    r(o) = sigma_c o with sigma_c = (H - 1) / (Ho - 1) (align_corners),
                r(o) = max(sigma (o + 1/2) - 1/2, 0) otherwise                                (eq. 51)
                i0 = min(floor(fl(r)), H - 1), lam = clip(r - i0, 0, 1), i1 = i0 + [i0 < H - 1];
                Ho = H copies (i0 = i1 = o, lam = 0)                                          (eq. 52)
                y = (1 - lam_h) t[i0_h] + lam_h t[i1_h],
                t = (1 - lam_w) x[:, i0_w] + lam_w x[:, i1_w]                                (eq. 53)
                dx: the same weights, each output's share added back to i0 and i1             (eq. 54)

The source index never decreases with ``o``, so each backward is a segment sum
(``np.add.reduceat``) per axis: exact, no scatter. The two nearest rules of (eq. 29a, 29b) differ
only for a non-integer scale factor whose output size is exactly H or 2H; PyTorch's backward
always uses (eq. 29a), so there, with Ho + Wo > 128, its gradient is not the adjoint of its own
output, while this backward is (eq. 30 with the forward's map). Nearest upsampling by an integer factor ``s``
(``src(o) = o // s``) uses ``repeat`` and a reshaped sum. Batch 0 works; inputs are never
modified; float32 stays float32.

Example::

    >>> x = np.array([[[[1.0, 2.0]]]])
    >>> upsample_bilinear2d_forward(x, size=(1, 4))[0]
    array([[[[1.  , 1.25, 1.75, 2.  ]]]])
"""
import math
import numbers

import numpy as np

from ._checks import Cache, check_cache, float_array, grad_out, pair
from ._stateless import Stateless
from .memory import require_memory


class _DefaultScale(int):
    """``upsample_nearest2d_forward``'s default ``scale_factor`` (2): given ``size``, it steps aside."""


_TWO = _DefaultScale(2)


# -- output size and scales ------------------------------------------------------------------------
def _scale_pair(scale_factor):
    values = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
    real = (numbers.Real, np.floating, np.integer)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, real) for v in values):
        raise TypeError(f"scale_factor must be a positive number or a pair of them, got {scale_factor!r}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"scale_factor must be finite and > 0, got {scale_factor!r}")
    return tuple(float(v) for v in values)


def _recompute(value):
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"recompute_scale_factor must be None or a bool, got {value!r}")
    return bool(value)


def _resize_args(size, scale_factor, recompute_scale_factor):
    """Check the resize arguments as ``F.interpolate`` does: ``(size pair or None, scale factors or
    None, recompute)``."""
    if size is not None and scale_factor is not None:
        raise ValueError(f"only one of size or scale_factor should be defined, got size={size!r} and "
                         f"scale_factor={scale_factor!r}")
    recompute = _recompute(recompute_scale_factor)
    if size is not None:
        if recompute:
            raise ValueError("recompute_scale_factor is not meaningful with an explicit size")
        return pair(size, 'size', minimum=1), None, recompute
    if scale_factor is None:
        raise ValueError("either size or scale_factor should be defined, got neither")
    return None, _scale_pair(scale_factor), recompute


def output_size_and_scales(in_hw, size=None, scale_factor=None, recompute_scale_factor=None):
    """``(out_hw, scales)`` as ``F.interpolate`` resolves them: ``scales`` are the scale factors the
    source index uses (None entries: ``in / out``).

    Parameters
    ----------
    in_hw : pair of int
    size : int, pair or None
    scale_factor : positive number, pair or None
        Exactly one of ``size`` and ``scale_factor``.
    recompute_scale_factor : bool or None
        True: the output size from ``scale_factor``, the source index from the sizes.

    Returns
    -------
    out_hw : pair of int
    scales : pair of (float or None)
    """
    out_hw, factors, recompute = _resize_args(size, scale_factor, recompute_scale_factor)
    scales = (None, None)
    if out_hw is None:
        out_hw = tuple(math.floor(in_hw[a] * factors[a]) for a in (0, 1))
        scales = (None, None) if recompute else factors
    if min(in_hw) < 1 or min(out_hw) < 1:
        raise ValueError(f"input and output sizes should be greater than 0, got input (H: {in_hw[0]}, "
                         f"W: {in_hw[1]}) and output (H: {out_hw[0]}, W: {out_hw[1]})")
    return out_hw, scales


def _check_x_and_size(x, size, scale_factor, recompute_scale_factor):
    float_array(x, 'x', 4, "(N, C, H, W)")
    out_hw, scales = output_size_and_scales(x.shape[2:], size, scale_factor, recompute_scale_factor)
    require_memory(x.shape[:2] + out_hw, x.dtype, f"size={size!r}, scale_factor={scale_factor!r} with x of "
                   f"shape {x.shape}")
    return out_hw, scales


# -- 1-D maps and their adjoints ------------------------------------------------------------------
def _legacy_kernel(x_shape, out_hw):
    """Whether PyTorch's CPU forward takes its channels-last kernel (source index ``nearest_idx``,
    eq. 29a) rather than its generic one (eq. 29b) for an NCHW input of ``x_shape``: small outputs
    (``Ho + Wo <= 128``), or more than 3 channels on a 1x1 map (channels-last contiguous too)."""
    n, c, h, w = x_shape
    return out_hw[0] + out_hw[1] <= 128 or (h * w == 1 and c > 3)


def nearest_source(in_size, out_size, scale=None, legacy=True, dtype=np.float64):
    """``src (out_size,)``, the input index output ``o`` copies, as PyTorch's CPU forward.

    ``legacy``: ``nearest_idx`` (eq. 29a): ``o`` if the sizes are equal, ``o // 2`` if the output is
    twice the input, else ``floor(fl(fl(sigma) o))`` in float32. Otherwise the generic rule
    (eq. 29b): ``floor(fl(sigma o))`` with ``sigma o`` in ``dtype``'s precision. ``sigma`` is
    ``1 / scale``, or ``in_size / out_size`` when ``scale`` is None.
    """
    o = np.arange(out_size)
    if legacy:
        if out_size == in_size:
            return o
        if out_size == 2 * in_size:
            return o >> 1
        sigma = np.float32(1.0 / scale) if scale is not None else np.float32(in_size) / np.float32(out_size)
        real = o.astype(np.float32) * sigma
    else:
        math_type = np.float32 if np.dtype(dtype) == np.float32 else np.float64
        sigma = math_type(1.0 / scale) if scale is not None else math_type(in_size) / math_type(out_size)
        real = (o.astype(math_type) * sigma).astype(np.float32)
    return np.minimum(np.floor(real).astype(np.int64), in_size - 1)


def linear_source(in_size, out_size, align_corners, scale=None):
    """``(i0, i1, lam)`` of (eq. 51-52): output ``o`` is ``(1 - lam) x[i0] + lam x[i1]`` (float64 lam)."""
    o = np.arange(out_size)
    if out_size == in_size:
        return o, o, np.zeros(out_size)
    if align_corners:
        ratio = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        real = ratio * o
    else:
        ratio = 1.0 / scale if scale is not None else in_size / out_size
        real = np.maximum(ratio * (o + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(real.astype(np.float32)).astype(np.int64), in_size - 1)
    lam = np.clip(real - i0, 0.0, 1.0)
    return i0, i0 + (i0 < in_size - 1), lam


def _take(a, index, axis):
    return np.take(a, index, axis=axis)


def _segment_sum(d, index, size, axis):
    """``out[..., u, ...] = sum of d[..., o, ...] over index[o] = u`` along ``axis`` for a
    non-decreasing ``index``: one ``np.add.reduceat`` (eq. 30, 54)."""
    first = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    shape = list(d.shape)
    shape[axis] = size
    out = np.zeros(shape, dtype=d.dtype)
    sums = np.add.reduceat(d, first, axis=axis) if d.size else np.zeros(
        shape[:axis] + [len(first)] + shape[axis + 1:], dtype=d.dtype)
    target = [slice(None)] * d.ndim
    target[axis] = index[first]
    out[tuple(target)] = sums
    return out


def _integer_factor(src, in_size):
    """``s`` when ``src(o) = o // s`` for every output (an integer upscale), else None."""
    s = len(src) // in_size
    if s >= 1 and len(src) == s * in_size and np.array_equal(src, np.arange(len(src)) // s):
        return s
    return None


# -- nearest ------------------------------------------------------------------------------------
def upsample_nearest2d_forward(x, scale_factor=_TWO, size=None, recompute_scale_factor=None):
    """Nearest resize as ``F.interpolate(x, size, scale_factor, mode='nearest',
    recompute_scale_factor=...)`` (eq. 29, 29a).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    scale_factor : positive number or pair
        Default 2 (not used when ``size`` is given).
    size : int, pair or None
        The output size ``(Ho, Wo)`` instead of a scale factor.
    recompute_scale_factor : bool or None

    Returns
    -------
    y : ndarray (N, C, Ho, Wo)
    cache : Cache
    """
    if size is not None and scale_factor is _TWO:
        scale_factor = None
    (oh, ow), (s_h, s_w) = _check_x_and_size(x, size, scale_factor, recompute_scale_factor)
    legacy = _legacy_kernel(x.shape, (oh, ow))
    src_h = nearest_source(x.shape[2], oh, s_h, legacy, x.dtype)
    src_w = nearest_source(x.shape[3], ow, s_w, legacy, x.dtype)
    f_h, f_w = _integer_factor(src_h, x.shape[2]), _integer_factor(src_w, x.shape[3])
    if f_h and f_w:
        y = x.repeat(f_h, axis=2).repeat(f_w, axis=3)                       # (N, C, H*f_h, W*f_w)
    else:
        y = _take(_take(x, src_h, 2), src_w, 3)
    return y, Cache('upsample_nearest2d', src=(src_h, src_w), factors=(f_h, f_w), x_shape=x.shape,
                    dtype=x.dtype)


def upsample_nearest2d_backward(dout, cache):
    """``(dx,)``: each input pixel sums the output pixels that copy it (eq. 30)."""
    cache = check_cache(cache, 'upsample_nearest2d')
    (src_h, src_w), (f_h, f_w), (n, c, h, w) = cache['src'], cache['factors'], cache['x_shape']
    dout = grad_out(dout, (n, c, len(src_h), len(src_w)), cache['dtype'])
    if f_h and f_w:
        return (dout.reshape(n, c, h, f_h, w, f_w).sum(axis=(3, 5)),)      # (N, C, H, f_h, W, f_w)
    return (_segment_sum(_segment_sum(dout, src_w, w, 3), src_h, h, 2),)


# -- bilinear -------------------------------------------------------------------------------------
def _align_corners(value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"align_corners must be a bool, got {value!r}")
    return bool(value)


def _lerp(a, weights, axis):
    """``(1 - lam) a[i0] + lam a[i1]`` along ``axis`` (eq. 53)."""
    i0, i1, lam = weights
    shape = [1] * a.ndim
    shape[axis] = len(lam)
    lam = lam.reshape(shape).astype(a.dtype)
    return (1 - lam) * _take(a, i0, axis) + lam * _take(a, i1, axis)


def _lerp_adjoint(d, weights, size, axis):
    """Adjoint of :func:`_lerp`: the weighted shares added back to ``i0`` and ``i1`` (eq. 54)."""
    i0, i1, lam = weights
    shape = [1] * d.ndim
    shape[axis] = len(lam)
    lam = lam.reshape(shape).astype(d.dtype)
    return _segment_sum((1 - lam) * d, i0, size, axis) + _segment_sum(lam * d, i1, size, axis)


def upsample_bilinear2d_forward(x, size=None, scale_factor=None, align_corners=False):
    """Bilinear resize as ``F.interpolate(x, size, scale_factor, mode='bilinear', align_corners)``
    (eq. 51-53); the source coordinate uses ``1 / scale_factor`` when a scale factor is given.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    size : int, pair or None
    scale_factor : positive number, pair or None
        Exactly one of ``size`` and ``scale_factor``.
    align_corners : bool
        Corner pixels of input and output aligned (the scale factor is then not used).

    Returns
    -------
    y : ndarray (N, C, Ho, Wo)
    cache : Cache
    """
    align_corners = _align_corners(align_corners)
    (oh, ow), (s_h, s_w) = _check_x_and_size(x, size, scale_factor, None)
    w_h = linear_source(x.shape[2], oh, align_corners, s_h)
    w_w = linear_source(x.shape[3], ow, align_corners, s_w)
    y = _lerp(_lerp(x, w_w, 3), w_h, 2)                                          # along W, then H
    return y, Cache('upsample_bilinear2d', weights=(w_h, w_w), x_shape=x.shape, dtype=x.dtype)


def upsample_bilinear2d_backward(dout, cache):
    """``(dx,)``: the forward's weights transposed, along H then along W (eq. 54)."""
    cache = check_cache(cache, 'upsample_bilinear2d')
    (w_h, w_w), (n, c, h, w) = cache['weights'], cache['x_shape']
    dout = grad_out(dout, (n, c, len(w_h[2]), len(w_w[2])), cache['dtype'])
    return (_lerp_adjoint(_lerp_adjoint(dout, w_h, h, 2), w_w, w, 3),)


# -- layer ----------------------------------------------------------------------------------------
class Upsample(Stateless):
    """``torch.nn.Upsample(size=None, scale_factor=None, mode='nearest', align_corners=None,
    recompute_scale_factor=None)`` for ``mode`` ``'nearest'`` and ``'bilinear'``.

    Parameters
    ----------
    size : int, pair or None
        The output size; exactly one of ``size`` and ``scale_factor``.
    scale_factor : positive number, pair or None
    mode : {'nearest', 'bilinear'}
    align_corners : bool or None
        Bilinear only (None means False).
    recompute_scale_factor : bool or None
        True: the source index uses ``in / out`` instead of ``1 / scale_factor``.
    """

    def __init__(self, size=None, scale_factor=None, mode='nearest', align_corners=None,
                 recompute_scale_factor=None, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        if mode not in ('nearest', 'bilinear'):
            raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
        if mode == 'nearest' and align_corners is not None:
            raise ValueError(f"align_corners option can only be set with the interpolating modes "
                             f"('bilinear'), got align_corners={align_corners!r} with mode='nearest'")
        self.align_corners = None if align_corners is None else _align_corners(align_corners)
        _resize_args(size, scale_factor, recompute_scale_factor)
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.recompute_scale_factor = recompute_scale_factor

    def _op_forward(self, x):
        if self.mode == 'nearest':
            return upsample_nearest2d_forward(x, self.scale_factor, self.size, self.recompute_scale_factor)
        size = self.size
        if self.recompute_scale_factor:                       # the sizes' ratio instead of the factor
            float_array(x, 'x', 4, "(N, C, H, W)")
            size = output_size_and_scales(x.shape[2:], None, self.scale_factor, True)[0]
        return upsample_bilinear2d_forward(x, size, None if size is not None else self.scale_factor,
                                           bool(self.align_corners))

    def backward(self, dout):
        backward = upsample_nearest2d_backward if self.mode == 'nearest' else upsample_bilinear2d_backward
        return backward(dout, self._cache)[0]

    def macs(self, input_shape):
        n, c, h, w = self._check_input_shape(input_shape, hint="(N, C, H, W)")
        out_hw, _ = output_size_and_scales((h, w), self.size, self.scale_factor, self.recompute_scale_factor)
        return 0, (n, c) + tuple(out_hw)

