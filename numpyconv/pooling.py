r"""Pooling as PyTorch computes it: average, max, adaptive average / max and global average pooling,
each a forward / hand-derived backward pair, and their layers (``torch.nn`` names and arguments).

Shapes: ``x (N, C, H, W) -> y (N, C, Ho, Wo)``. Equations: docs/derivations/blocks.md.

Windows (avg_pool2d, max_pool2d): kernel ``k``, stride ``s`` (default ``k``), padding ``p`` (at most
``k // 2``, PyTorch's rule), dilation ``d`` (max only); window ``(i, j)`` reads rows
``i s - p + a d`` (``a < k_h``) and columns likewise. The output size (eq. 25a) is::

    Ho = floor((H + 2 p - d (k - 1) - 1 + (s - 1 if ceil_mode else 0)) / s) + 1,
    minus 1 if ceil_mode and (Ho - 1) s >= H + p     (the last window starts inside x or the left padding)

    avg_pool2d       y = (sum of the window's elements inside x) / D                    (eq. 25)
                     D = divisor_override, or the window's size clipped to the padded input
                     (count_include_pad), or its number of elements inside x              (eq. 25b)
                     dx[u, v] = sum over the windows (i, j) holding (u, v) of dy[i, j] / D[i, j]  (eq. 26)
    max_pool2d       y = max of the window's elements inside x (padding is -inf)           (eq. 44)
                     the window's argmax: its first maximal element in window order (rows, then
                     columns), a NaN counting as the maximum (the last NaN when several)    (eq. 45)
                     dx[u, v] = sum of dy[i, j] over the windows whose argmax is (u, v)     (eq. 46)
    adaptive pools   window i covers rows [floor(i H / Ho), ceil((i + 1) H / Ho))         (eq. 47)
                     avg: y = window sum along W, then along H, / window size; i.e.
                     y = A_h x A_w^T with A (Ho, H) the averaging matrix;  dx = A_h^T dy A_w  (eq. 48-49)
                     max: (eq. 44-46) over these windows, computed along W then along H    (eq. 50)
    global_avg_pool2d  (N, C, H, W) -> (N, C);  dx = dz / (H W)                          (eq. 27-28)

The argmax rule is PyTorch's CPU kernel (``val > max or isnan(val)`` in window order), so ties
and NaNs route the gradient to the element PyTorch picks. A max window with no element inside x
(possible with dilation) gives ``-inf`` and no gradient, as in PyTorch.

avg_pool2d loops over the ``kh*kw`` kernel offsets: each offset reads one strided slice of the
whole batch (``_offset_slices`` of numpyconv/im2col.py), keeping a running sum; the backward adds
each offset's share back with one slice ``+=`` (within one offset the slice has no repeated index).
max_pool2d is two Numba loops, parallel over the ``(n, c)`` planes: the forward scans each window in
window order (eq. 44-45), the backward adds each output's gradient at its argmax (eq. 46). The
adaptive pools work window by window along W, then along H (one slice per window; overlapping
windows add one after the other).
Batch 0 works; inputs are never modified; float32 stays float32.

Example::

    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> y, cache = max_pool2d_forward(x, 2)
    >>> y[0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    >>> max_pool2d_backward(np.ones_like(y), cache)[0][0, 0]
    array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]])
"""

import numpy as np
from numba import njit, prange

from ._checks import MAX_INT, Cache, check_cache, float_array, grad_out, is_int, pair
from ._parallel import loop_operand, threads_for
from ._stateless import Stateless
from .im2col import Geometry, _offset_slices, loop_geo
from .memory import require_memory
from .module import is_grad_enabled

_ANY_SIZE = 10 ** 6   # an input size every valid window fits: checks a layer's arguments alone


# -- geometry ------------------------------------------------------------------------------------
def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _pool_output_size(size, kernel, stride, pad, dilation, ceil_mode):
    """PyTorch's ``pooling_output_shape`` (eq. 25a)."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1                                   # the last window must start inside x or the left padding
    return out


def pool_geometry(in_hw, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Resolve and check the window arguments of avg_pool2d / max_pool2d as PyTorch does.

    Parameters
    ----------
    in_hw : pair of int
        The input's ``(H, W)``.
    kernel_size, stride, padding, dilation : int or pair
        ``stride`` None (or ``()``) means ``kernel_size``; ``padding`` at most ``kernel_size // 2``.
    ceil_mode : bool

    Returns
    -------
    Geometry
        ``kernel, stride, dilation, pads (top, bottom, left, right), out_hw, in_hw``.
    """
    kernel = pair(kernel_size, 'kernel_size', minimum=1)
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else pair(stride, 'stride', minimum=1)
    dilation = pair(dilation, 'dilation', minimum=1)
    pad = pair(padding, 'padding', minimum=0)
    ceil_mode = _flag(ceil_mode, 'ceil_mode')
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"padding must be at most half the kernel size (PyTorch's rule: padding <= "
                         f"kernel_size // 2), got padding={padding!r} for kernel_size {kernel}")
    if min(in_hw) < 1:
        raise ValueError(f"the input must have H, W >= 1 (only the batch may be empty), got spatial "
                         f"size {tuple(in_hw)}")
    out_hw = tuple(_pool_output_size(in_hw[a], kernel[a], stride[a], pad[a], dilation[a], ceil_mode)
                   for a in (0, 1))
    if min(out_hw) < 1:
        raise ValueError(f"kernel_size {kernel} with dilation {dilation} does not fit the input of "
                         f"spatial size {tuple(in_hw)} with padding {pad}: the output would be {out_hw}")
    return Geometry(kernel, stride, dilation, (pad[0], pad[0], pad[1], pad[1]), out_hw, tuple(in_hw))


def _offsets(geo):
    """Yield ``(k, rows_out, cols_out, rows_in, cols_in)`` for each kernel offset ``k = a*kw + b`` in
    window order whose rectangle of outputs reading inside x is not empty (im2col's slices)."""
    origin = (geo.pads[0], geo.pads[2])
    for k, (a, b) in enumerate(np.ndindex(*geo.kernel)):
        rows_out, cols_out, rows_in, cols_in = _offset_slices(a, b, geo.in_hw, geo.stride, geo.dilation,
                                                              geo.out_hw, origin)
        if rows_out.stop > rows_out.start and cols_out.stop > cols_out.start:
            yield k, rows_out, cols_out, rows_in, cols_in


def _check_x(x):
    return float_array(x, 'x', 4, "(N, C, H, W)")


# -- avg_pool2d ----------------------------------------------------------------------------------
def _divisor_override(value):
    if value is None:
        return None
    if not is_int(value):
        raise TypeError(f"divisor_override must be an int or None, got {value!r}")
    if value == 0:
        raise ValueError("divisor_override must not be zero, got 0")
    if abs(value) > MAX_INT:
        raise ValueError(f"divisor_override must be at most {MAX_INT} in magnitude, got {value}")
    return int(value)


def _window_counts(size, out, kernel, stride, pad, include_pad):
    """Per output index along one axis: the window's length clipped to the padded input
    (``include_pad``) or to the input itself (eq. 25b)."""
    start = np.arange(out) * stride - pad
    end = np.minimum(start + kernel, size + pad)
    if include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def _avg_divisor(geo, count_include_pad, divisor_override):
    """``D (Ho, Wo)`` of (eq. 25b), float64."""
    if divisor_override is not None:
        return np.full(geo.out_hw, float(divisor_override))
    rows, cols = (_window_counts(geo.in_hw[a], geo.out_hw[a], geo.kernel[a], geo.stride[a], geo.pads[2 * a],
                                 count_include_pad) for a in (0, 1))
    return np.outer(rows, cols).astype(np.float64)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                       divisor_override=None):
    """Average pooling as ``torch.nn.functional.avg_pool2d`` (eq. 25, 25a, 25b).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    kernel_size : int or pair
    stride : int, pair or None
        Default ``kernel_size``.
    padding : int or pair
        Zero padding, at most ``kernel_size // 2``.
    ceil_mode : bool
        Round the output size up (eq. 25a).
    count_include_pad : bool
        Divide by the window's size within the padded input rather than by its elements inside x.
    divisor_override : int or None
        A fixed divisor (non-zero).

    Returns
    -------
    y : ndarray (N, C, Ho, Wo)
    cache : Cache
        ``Cache('avg_pool2d')`` with ``geo`` (the pooling geometry), ``divisor`` (``D (Ho, Wo)`` float64,
        eq. 25b), ``x_shape`` and ``dtype``; none of them None.
    """
    _check_x(x)
    geo = pool_geometry(x.shape[2:], kernel_size, stride, padding, 1, ceil_mode)
    divisor = _avg_divisor(geo, _flag(count_include_pad, 'count_include_pad'),
                           _divisor_override(divisor_override))
    y = np.zeros(x.shape[:2] + geo.out_hw, dtype=x.dtype)
    for _, rows_out, cols_out, rows_in, cols_in in _offsets(geo):
        y[:, :, rows_out, cols_out] += x[:, :, rows_in, cols_in]        # offset (a, b) of every window
    y /= divisor                                                                   # (eq. 25)
    return y, Cache('avg_pool2d', geo=geo, divisor=divisor, x_shape=x.shape, dtype=x.dtype)


def avg_pool2d_backward(dout, cache):
    """Each window spreads ``dy / D`` over its elements inside x (eq. 26).

    Parameters
    ----------
    dout : ndarray, (N, C, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`avg_pool2d_forward`.
    cache : Cache
        The cache :func:`avg_pool2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx (N, C, H, W)``, ``x``'s dtype.
    """
    cache = check_cache(cache, 'avg_pool2d')
    geo, x_shape = cache['geo'], cache['x_shape']
    dout = grad_out(dout, x_shape[:2] + geo.out_hw, cache['dtype'])
    share = (dout / cache['divisor']).astype(cache['dtype'], copy=False)
    dx = np.zeros(x_shape, dtype=cache['dtype'])
    for _, rows_out, cols_out, rows_in, cols_in in _offsets(geo):
        dx[:, :, rows_in, cols_in] += share[:, :, rows_out, cols_out]             # no repeated index
    return (dx,)


# -- max_pool2d ------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _max_forward_loop(x, geo, best, arg):
    """``best``, ``arg (N, C, Ho, Wo)`` (eq. 44, 45): each window's maximum inside x and its kernel
    offset ``a*kw + b`` (-inf and -1 for a window with no element inside x). Parallel over the
    ``(n, c)`` planes, each iteration owning its output plane."""
    kh, kw, sh, sw, dh, dw, top, left, ho, wo = geo
    n, channels, height, width = x.shape
    for t in prange(n * channels):
        plane = x[t // channels, t % channels]
        for i in range(ho):
            for j in range(wo):
                value, offset = -np.inf, -1
                for a in range(kh):
                    row = i * sh - top + a * dh
                    if row < 0 or row >= height:
                        continue
                    for b in range(kw):
                        col = j * sw - left + b * dw
                        if 0 <= col < width:
                            v = plane[row, col]
                            if offset < 0 or v > value or np.isnan(v):               # (eq. 45)
                                value, offset = v, a * kw + b
                best[t // channels, t % channels, i, j] = value
                arg[t // channels, t % channels, i, j] = offset


@njit(cache=True, parallel=True)
def _max_backward_loop(dy, arg, geo, dx):
    """``dx (N, C, H, W)`` (zero on entry) += each output's ``dy`` at its window's argmax (eq. 46).
    Parallel over the ``(n, c)`` planes: each iteration owns its plane of ``dx``."""
    kh, kw, sh, sw, dh, dw, top, left, ho, wo = geo
    channels = dx.shape[1]
    for t in prange(dx.shape[0] * channels):
        n, c = t // channels, t % channels
        for i in range(ho):
            for j in range(wo):
                offset = arg[n, c, i, j]
                if offset >= 0:
                    row, col = i * sh - top + (offset // kw) * dh, j * sw - left + (offset % kw) * dw
                    dx[n, c, row, col] += dy[n, c, i, j]


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling as ``torch.nn.functional.max_pool2d`` (eq. 44, 45).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    kernel_size : int or pair
    stride : int, pair or None
        Default ``kernel_size``.
    padding : int or pair
        ``-inf`` padding, at most ``kernel_size // 2``.
    dilation : int or pair
    ceil_mode : bool

    Returns
    -------
    y : ndarray (N, C, Ho, Wo)
    cache : Cache
        ``Cache('max_pool2d')`` with ``geo``, ``arg`` (``(N, C, Ho, Wo)`` int32: each output's kernel
        offset of its maximum, -1 for none), ``x_shape`` and ``dtype``; none of them None.
    """
    geo, shape = _max_pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    best, arg = np.empty(shape, dtype=x.dtype), np.empty(shape, dtype=np.int32)
    with threads_for(best.size * geo.kernel[0] * geo.kernel[1]):
        _max_forward_loop(loop_operand(x), loop_geo(geo), best, arg)                   # (eq. 44, 45)
    return best, Cache('max_pool2d', geo=geo, arg=arg, x_shape=x.shape, dtype=x.dtype)


def _max_pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode):
    """Check ``x`` and the arguments; ``(geo, output shape)``."""
    _check_x(x)
    geo = pool_geometry(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    shape = x.shape[:2] + geo.out_hw
    require_memory(shape, x.dtype, f"x of shape {x.shape} with kernel_size={kernel_size!r}, "
                   f"stride={stride!r}, padding={padding!r}, dilation={dilation!r}")
    return geo, shape


def _max_pool2d_values(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The ``y`` of :func:`max_pool2d_forward` alone (eq. 44), for inference: no argmax is tracked.

    Arguments and ``y`` as :func:`max_pool2d_forward`; a window holding a NaN gives NaN.
    """
    geo, shape = _max_pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    best = np.empty(shape, dtype=x.dtype)
    with threads_for(best.size * geo.kernel[0] * geo.kernel[1]):
        _max_values_loop(loop_operand(x), loop_geo(geo), best)                          # (eq. 44)
    return best


@njit(cache=True, parallel=True)
def _max_values_loop(x, geo, best):
    """``best (N, C, Ho, Wo)`` = each window's maximum inside x, NaN if it holds one, -inf if it holds
    no element. Output row by output row: for each kernel offset ``(a, b)``, one pass along the row
    over the windows whose element ``(a, b)`` is inside x (no per-element bounds test, no argmax to
    carry, so the passes are short independent loops). Parallel over the ``(n, c)`` planes."""
    kh, kw, sh, sw, dh, dw, top, left, ho, wo = geo
    n, channels, height, width = x.shape
    for t in prange(n * channels):
        plane, out = x[t // channels, t % channels], best[t // channels, t % channels]
        for i in range(ho):
            row_max = out[i]
            row_max[:] = -np.inf
            for a in range(kh):
                row = i * sh - top + a * dh
                if 0 <= row < height:
                    line = plane[row]
                    for b in range(kw):
                        shift = b * dw - left                                  # column j * sw + shift
                        first = 0
                        while first < wo and first * sw + shift < 0:
                            first += 1
                        for j in range(first, min(wo, (width - 1 - shift) // sw + 1)):
                            v = line[j * sw + shift]
                            row_max[j] = v if (v > row_max[j]) | (v != v) else row_max[j]


def max_pool2d_backward(dout, cache):
    """Each output's gradient goes to its window's argmax; overlaps add (eq. 46).

    Parameters
    ----------
    dout : ndarray, (N, C, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`max_pool2d_forward`.
    cache : Cache
        The cache :func:`max_pool2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx (N, C, H, W)``, ``x``'s dtype.
    """
    cache = check_cache(cache, 'max_pool2d')
    geo, arg, x_shape = cache['geo'], cache['arg'], cache['x_shape']
    dout = grad_out(dout, arg.shape, cache['dtype'])
    dx = np.zeros(x_shape, dtype=cache['dtype'])
    with threads_for(dout.size):
        _max_backward_loop(loop_operand(dout), arg, loop_geo(geo), dx)                  # (eq. 46)
    return (dx,)


def _max_pool2d_indices(cache):
    """The argmax of each output as PyTorch's ``return_indices``: ``row * W + column`` (int64) in
    its ``(n, c)`` plane (a window with no element inside x: its first position at or after the
    padding, as PyTorch)."""
    geo, arg, w = cache['geo'], cache['arg'], cache['x_shape'][3]
    kw = geo.kernel[1]
    start = [np.arange(geo.out_hw[a]) * geo.stride[a] - geo.pads[2 * a] for a in (0, 1)]
    first = [s + np.maximum(0, -(s // geo.dilation[a])) * geo.dilation[a]      # first position >= 0
             for a, s in enumerate(start)]
    a_off, b_off = np.divmod(np.maximum(arg, 0).astype(np.int64), kw)
    rows = start[0][:, None] + a_off * geo.dilation[0]
    cols = start[1][None, :] + b_off * geo.dilation[1]
    rows = np.where(arg < 0, first[0][:, None], rows)
    cols = np.where(arg < 0, first[1][None, :], cols)
    return rows * w + cols


# -- adaptive pooling -----------------------------------------------------------------------------
def _adaptive_size(output_size, in_hw):
    """``(Ho, Wo)`` from an int, a pair, or None entries (keep the input's size)."""
    entries = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(entries) != 2:
        raise TypeError(f"output_size must be an int or a pair (entries int or None), got {output_size!r}")
    out = []
    for entry, size in zip(entries, in_hw):
        if entry is None:
            out.append(int(size))
            continue
        if not is_int(entry):
            raise TypeError(f"output_size must be an int or a pair (entries int or None), got "
                            f"{output_size!r}")
        if entry < 0:
            raise ValueError(f"output_size must be >= 0, got {output_size!r}")
        if entry > MAX_INT:
            raise ValueError(f"output_size entries must be at most {MAX_INT}, got {output_size!r}")
        out.append(int(entry))
    return tuple(out)


def adaptive_bounds(size, out):
    """PyTorch's adaptive windows along one axis: ``start = floor(i size / out)``,
    ``end = ceil((i + 1) size / out)`` for ``i < out`` (eq. 47); integer arrays."""
    i = np.arange(out, dtype=np.int64)
    return (i * size) // out, -((-(i + 1) * size) // out)


def _check_adaptive(x, output_size):
    _check_x(x)
    if min(x.shape[2:]) < 1:
        raise ValueError(f"x must have H, W >= 1 (only the batch may be empty), got shape {x.shape}")
    out_hw = _adaptive_size(output_size, x.shape[2:])
    require_memory(x.shape[:2] + out_hw, x.dtype, f"output_size={output_size!r}")
    return out_hw


def _window_sums(a, bounds, axis):
    """Sum of ``a`` over each window ``[start_i, end_i)`` along ``axis`` (``-1`` or ``-2``), one slice
    per window (a NaN or an inf stays inside its windows)."""
    start, end = bounds
    shape = list(a.shape)
    shape[axis] = len(start)
    out = np.empty(shape, dtype=a.dtype)
    for i, (s, e) in enumerate(zip(start, end)):
        window = a[..., s:e] if axis == -1 else a[..., s:e, :]
        if axis == -1:
            out[..., i] = window.sum(axis=-1)
        else:
            out[..., i, :] = window.sum(axis=-2)
    return out


def _window_spread(d, bounds, size, axis):
    """Adjoint of :func:`_window_sums`: each window's entry of ``d`` added to all its positions."""
    start, end = bounds
    shape = list(d.shape)
    shape[axis] = size
    out = np.zeros(shape, dtype=d.dtype)
    for i, (s, e) in enumerate(zip(start, end)):
        if axis == -1:
            out[..., s:e] += d[..., i, None]
        else:
            out[..., s:e, :] += d[..., i, None, :]
    return out


def _window_sizes(bounds_h, bounds_w):
    """``(Ho, Wo)`` float64 number of elements of each adaptive window (eq. 48)."""
    return np.outer(bounds_h[1] - bounds_h[0], bounds_w[1] - bounds_w[0]).astype(np.float64)


def adaptive_avg_pool2d_forward(x, output_size):
    """Adaptive average pooling as ``torch.nn.functional.adaptive_avg_pool2d`` (eq. 47-48).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    output_size : int, pair or None entries
        ``(Ho, Wo)``; a None entry keeps the input's size.

    Returns
    -------
    y : ndarray (N, C, Ho, Wo)
    cache : Cache
        ``Cache('adaptive_avg_pool2d')`` with ``bounds`` (the window starts and ends per axis, eq. 47),
        ``x_shape`` and ``dtype``; none of them None.
    """
    oh, ow = _check_adaptive(x, output_size)
    bounds = adaptive_bounds(x.shape[2], oh), adaptive_bounds(x.shape[3], ow)
    y = _window_sums(_window_sums(x, bounds[1], -1), bounds[0], -2)               # along W, then H
    y /= _window_sizes(*bounds)                                                   # (eq. 48)
    return y, Cache('adaptive_avg_pool2d', bounds=bounds, x_shape=x.shape, dtype=x.dtype)


def adaptive_avg_pool2d_backward(dout, cache):
    """Each adaptive window spreads ``dy / |window|`` over its elements (eq. 49).

    Parameters
    ----------
    dout : ndarray, (N, C, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`adaptive_avg_pool2d_forward`.
    cache : Cache
        The cache :func:`adaptive_avg_pool2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx (N, C, H, W)``, ``x``'s dtype.
    """
    cache = check_cache(cache, 'adaptive_avg_pool2d')
    (b_h, b_w), x_shape, dtype = cache['bounds'], cache['x_shape'], cache['dtype']
    dout = grad_out(dout, x_shape[:2] + (len(b_h[0]), len(b_w[0])), dtype)
    share = (dout / _window_sizes(b_h, b_w)).astype(dtype, copy=False)
    return (_window_spread(_window_spread(share, b_h, x_shape[2], -2), b_w, x_shape[3], -1),)


def _first_max(window, axis):
    """``(value, index)`` of each line of ``window`` along ``axis``: the first maximum, or the last
    NaN when the line holds one (eq. 45)."""
    index = np.argmax(window, axis=axis)                    # the first maximum (the first NaN if any)
    nan = np.isnan(window)
    has_nan = nan.any(axis=axis)
    if has_nan.any():
        last_nan = window.shape[axis] - 1 - np.argmax(np.flip(nan, axis=axis), axis=axis)
        index = np.where(has_nan, last_nan, index)
    value = np.take_along_axis(window, np.expand_dims(index, axis), axis=axis)
    return np.squeeze(value, axis=axis), index


def adaptive_max_pool2d_forward(x, output_size):
    """Adaptive max pooling as ``torch.nn.functional.adaptive_max_pool2d`` (eq. 47, 50).

    The window maximum is taken along W (per row), then along H over those row maxima: the same
    element as PyTorch's row-major scan, ties and NaNs included (eq. 50).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    output_size : int, pair or None entries

    Returns
    -------
    y : ndarray (N, C, Ho, Wo)
    cache : Cache
        ``Cache('adaptive_max_pool2d')`` with ``bounds`` ``(hs, he, ws, we)`` (eq. 47), ``row_arg`` ``(N,
        C, Ho, Wo)`` and ``col_arg`` ``(N, C, H, Wo)`` (the argmax's row and column within its window,
        int32), ``x_shape`` and ``dtype``; none of them None.
    """
    oh, ow = _check_adaptive(x, output_size)
    n, c, h, w = x.shape
    (hs, he), (ws, we) = adaptive_bounds(h, oh), adaptive_bounds(w, ow)
    row_max = np.empty((n, c, h, ow), dtype=x.dtype)            # max of row h within column window j
    col_arg = np.empty((n, c, h, ow), dtype=np.int32)           # its column, from ws[j]
    for j in range(ow):
        row_max[..., j], col_arg[..., j] = _first_max(x[:, :, :, ws[j]:we[j]], axis=3)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    row_arg = np.empty((n, c, oh, ow), dtype=np.int32)          # the window's row, from hs[i]
    for i in range(oh):
        y[:, :, i], row_arg[:, :, i] = _first_max(row_max[:, :, hs[i]:he[i]], axis=2)
    return y, Cache('adaptive_max_pool2d', bounds=(hs, he, ws, we), row_arg=row_arg, col_arg=col_arg,
                    x_shape=x.shape, dtype=x.dtype)


def adaptive_max_pool2d_backward(dout, cache):
    """Each output's gradient goes to its adaptive window's argmax (eq. 46, 50).

    Parameters
    ----------
    dout : ndarray, (N, C, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`adaptive_max_pool2d_forward`.
    cache : Cache
        The cache :func:`adaptive_max_pool2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx (N, C, H, W)``, ``x``'s dtype.
    """
    cache = check_cache(cache, 'adaptive_max_pool2d')
    (hs, he, ws, we), row_arg, col_arg = cache['bounds'], cache['row_arg'], cache['col_arg']
    dtype, x_shape = cache['dtype'], cache['x_shape']
    dout = grad_out(dout, row_arg.shape, dtype)
    d_row_max = np.zeros(col_arg.shape, dtype=dtype)            # (N, C, H, Wo)
    for i in range(len(hs)):
        rows = np.arange(he[i] - hs[i])[:, None]                # (K, 1) against (N, C, 1, Wo)
        d_row_max[:, :, hs[i]:he[i]] += np.where(row_arg[:, :, i, None] == rows, dout[:, :, i, None], 0)
    dx = np.zeros(x_shape, dtype=dtype)
    for j in range(len(ws)):
        cols = np.arange(we[j] - ws[j])
        dx[:, :, :, ws[j]:we[j]] += np.where(col_arg[..., j, None] == cols, d_row_max[..., j, None], 0)
    return (dx,)


def _adaptive_max_pool2d_indices(cache):
    """``row * W + column`` (int64) of each output's argmax, PyTorch's ``return_indices``."""
    (hs, _, ws, _), row_arg, col_arg = cache['bounds'], cache['row_arg'], cache['col_arg']
    rows = hs[:, None] + row_arg                                                  # (N, C, Ho, Wo)
    picked = np.take_along_axis(col_arg, rows.astype(np.intp), axis=2)            # column offset at that row
    return rows * cache['x_shape'][3] + ws[None, :] + picked


# -- global average pooling -------------------------------------------------------------------------
def global_avg_pool2d_forward(x):
    """``z[n, c] = mean_{h,w} x[n, c, h, w]``: ``(N, C, H, W) -> (N, C)`` (eq. 27).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
        Input, float32 or float64, ``H, W >= 1``.

    Returns
    -------
    z : ndarray (N, C)
        The channel means, ``x``'s dtype.
    cache : Cache
        ``Cache('global_avg_pool2d')`` with ``x_shape`` and ``dtype``; never None.
    """
    _check_x(x)
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"x must have H, W >= 1, got shape {x.shape}")
    return x.mean(axis=(2, 3)), Cache('global_avg_pool2d', x_shape=x.shape, dtype=x.dtype)


def global_avg_pool2d_backward(dout, cache):
    """``dx[n, c, h, w] = dz[n, c] / (H W)`` (eq. 28).

    Parameters
    ----------
    dout : ndarray, (N, C)
        Gradient of the loss with respect to the output of :func:`global_avg_pool2d_forward`.
    cache : Cache
        The cache :func:`global_avg_pool2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx,)``: ``dx (N, C, H, W)``, ``x``'s dtype.
    """
    cache = check_cache(cache, 'global_avg_pool2d')
    n, c, h, w = cache['x_shape']
    dout = grad_out(dout, (n, c), cache['dtype'])
    return (np.broadcast_to(dout[:, :, None, None] / (h * w), (n, c, h, w)).copy(),)


# -- layers ------------------------------------------------------------------------------------------
class _Pool(Stateless):
    """A pooling layer: input ``(N, C, H, W)``, output size from :meth:`_out_hw`."""

    def _out_hw(self, in_hw):
        raise NotImplementedError

    def macs(self, input_shape):
        input_shape = self._check_input_shape(input_shape, hint="(N, C, H, W)")
        return 0, tuple(input_shape[:2]) + tuple(self._out_hw(input_shape[2:]))


class AvgPool2d(_Pool):
    """``torch.nn.AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False,
    count_include_pad=True, divisor_override=None)``: ``(N, C, H, W) -> (N, C, Ho, Wo)``.

    Parameters
    ----------
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        As in :func:`avg_pool2d_forward`.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _backward_fn = avg_pool2d_backward

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        pool_geometry((_ANY_SIZE, _ANY_SIZE), kernel_size, stride, padding, 1, ceil_mode)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = _flag(count_include_pad, 'count_include_pad')
        self.divisor_override = _divisor_override(divisor_override)

    def _op_forward(self, x):
        return avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                  self.count_include_pad, self.divisor_override)

    def _out_hw(self, in_hw):
        return pool_geometry(in_hw, self.kernel_size, self.stride, self.padding, 1, self.ceil_mode).out_hw


class MaxPool2d(_Pool):
    """``torch.nn.MaxPool2d(kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
    ceil_mode=False)``: ``(N, C, H, W) -> (N, C, Ho, Wo)``.

    Parameters
    ----------
    kernel_size, stride, padding, dilation, ceil_mode
        As in :func:`max_pool2d_forward`.
    return_indices : bool
        The forward returns ``(y, indices)``, ``indices`` PyTorch's (``row * W + column`` in each
        plane, int64, ``(N, C, Ho, Wo)``); ``backward`` takes ``dout`` alone.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _backward_fn = max_pool2d_backward

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        pool_geometry((_ANY_SIZE, _ANY_SIZE), kernel_size, stride, padding, dilation, ceil_mode)
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.return_indices, self.ceil_mode = _flag(return_indices, 'return_indices'), ceil_mode

    def _op_forward(self, x):
        args = (x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        if is_grad_enabled() or self.return_indices:
            return max_pool2d_forward(*args)
        return _max_pool2d_values(*args), None                     # inference: no argmax to keep

    def forward(self, x):
        y = super().forward(x)
        return (y, _max_pool2d_indices(self._cache)) if self.return_indices else y

    def _out_hw(self, in_hw):
        return pool_geometry(in_hw, self.kernel_size, self.stride, self.padding, self.dilation,
                             self.ceil_mode).out_hw


class _AdaptivePool(_Pool):
    """An adaptive pooling layer: ``output_size`` an int, a pair, or None entries (keep the input's size)."""

    def __init__(self, output_size, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        _adaptive_size(output_size, (1, 1))
        self.output_size = output_size

    def _out_hw(self, in_hw):
        return _adaptive_size(self.output_size, in_hw)


class AdaptiveAvgPool2d(_AdaptivePool):
    """``torch.nn.AdaptiveAvgPool2d(output_size)``: ``(N, C, H, W) -> (N, C, Ho, Wo)``.

    Parameters
    ----------
    output_size : int, pair or None entries
        ``(Ho, Wo)``; a None entry keeps the input's size (:func:`adaptive_avg_pool2d_forward`).
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _backward_fn = adaptive_avg_pool2d_backward

    def _op_forward(self, x):
        return adaptive_avg_pool2d_forward(x, self.output_size)


class AdaptiveMaxPool2d(_AdaptivePool):
    """``torch.nn.AdaptiveMaxPool2d(output_size, return_indices=False)``: ``(N, C, H, W) -> (N, C, Ho,
    Wo)``.

    Parameters
    ----------
    output_size : int, pair or None entries
        ``(Ho, Wo)``; a None entry keeps the input's size (:func:`adaptive_max_pool2d_forward`).
    return_indices : bool
        The forward returns ``(y, indices)`` as :class:`MaxPool2d`.
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _backward_fn = adaptive_max_pool2d_backward

    def __init__(self, output_size, return_indices=False, *, dtype=np.float32, rng=None):
        super().__init__(output_size, dtype=dtype, rng=rng)
        self.return_indices = _flag(return_indices, 'return_indices')

    def _op_forward(self, x):
        return adaptive_max_pool2d_forward(x, self.output_size)

    def forward(self, x):
        y = super().forward(x)
        return (y, _adaptive_max_pool2d_indices(self._cache)) if self.return_indices else y


class GlobalAvgPool2d(Stateless):
    """``nn.AdaptiveAvgPool2d(1)`` followed by flatten: ``(N, C, H, W) -> (N, C)``.

    Parameters
    ----------
    dtype : float32 or float64, keyword-only
        The layer's dtype (no parameters: the output keeps the input's dtype).
    rng : numpy.random.Generator, int or None, keyword-only
        Unused (no parameters); accepted as by every layer.
    """
    _forward_fn, _backward_fn = global_avg_pool2d_forward, global_avg_pool2d_backward

    def macs(self, input_shape):
        return 0, self._check_input_shape(input_shape, hint="(N, C, H, W)")[:2]
