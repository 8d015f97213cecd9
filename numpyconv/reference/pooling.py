"""Plain-loop definitions of avg_pool2d, max_pool2d, adaptive_avg_pool2d and adaptive_max_pool2d,
forward and backward, window by window as PyTorch's CPU kernels define them
(docs/derivations/blocks.md, eq. 25-26, 44-50). Outputs keep the input's dtype; each backward
takes ``(dout, *forward_args)`` and returns ``(dx,)``.
"""
import math

import numpy as np


def _pair(v):
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def _output_size(size, kernel, stride, pad, dilation, ceil_mode):
    """(eq. 25a)."""
    extra = stride - 1 if ceil_mode else 0
    out = math.floor((size + 2 * pad - dilation * (kernel - 1) - 1 + extra) / stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _window_args(x, kernel_size, stride, padding, dilation, ceil_mode):
    kh, kw = _pair(kernel_size)
    sh, sw = (kh, kw) if stride is None else _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    ho = _output_size(x.shape[2], kh, sh, ph, dh, ceil_mode)
    wo = _output_size(x.shape[3], kw, sw, pw, dw, ceil_mode)
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo)


def _avg_windows(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Yield ``(i, j, positions inside x, divisor)`` per output of avg_pool2d (eq. 25, 25b)."""
    (kh, kw), (sh, sw), (ph, pw), _, (ho, wo) = _window_args(x, kernel_size, stride, padding, 1, ceil_mode)
    h, w = x.shape[2:]
    for i in range(ho):
        for j in range(wo):
            h0, w0 = i * sh - ph, j * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            pool_size = (h1 - h0) * (w1 - w0)
            rows, cols = range(max(h0, 0), min(h1, h)), range(max(w0, 0), min(w1, w))
            if divisor_override is not None:
                divisor = divisor_override
            else:
                divisor = pool_size if count_include_pad else len(rows) * len(cols)
            yield i, j, [(u, v) for u in rows for v in cols], divisor


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """``y[n,c,i,j] = sum of the window's elements inside x / divisor`` (eq. 25)."""
    windows = list(_avg_windows(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                divisor_override))
    ho, wo = windows[-1][0] + 1, windows[-1][1] + 1
    y = np.zeros(x.shape[:2] + (ho, wo), dtype=x.dtype)
    for n, c in np.ndindex(*x.shape[:2]):
        for i, j, positions, divisor in windows:
            y[n, c, i, j] = sum(float(x[n, c, u, v]) for u, v in positions) / divisor
    return y


def avg_pool2d_backward(dout, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    """``dx[n,c,u,v] += dout[n,c,i,j] / divisor`` for every window holding ``(u, v)`` (eq. 26)."""
    dx = np.zeros_like(x)
    for i, j, positions, divisor in _avg_windows(x, kernel_size, stride, padding, ceil_mode,
                                                 count_include_pad, divisor_override):
        for n, c in np.ndindex(*x.shape[:2]):
            for u, v in positions:
                dx[n, c, u, v] += dout[n, c, i, j] / divisor
    return (dx,)


def _first_max(values):
    """Index of the first maximum of ``values`` in order, a NaN counting as the maximum (the last
    NaN when several); None for no values (eq. 45)."""
    best, chosen = -math.inf, None
    for k, value in enumerate(values):
        if chosen is None or value > best or math.isnan(value):
            best, chosen = value, k
    return chosen


def _max_windows(x, kernel_size, stride, padding, dilation, ceil_mode):
    """Yield ``(i, j, positions inside x in window order)`` per output of max_pool2d (eq. 44)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo) = _window_args(x, kernel_size, stride, padding,
                                                                   dilation, ceil_mode)
    h, w = x.shape[2:]
    for i in range(ho):
        for j in range(wo):
            rows = [i * sh - ph + a * dh for a in range(kh)]
            cols = [j * sw - pw + b * dw for b in range(kw)]
            yield i, j, [(u, v) for u in rows for v in cols if 0 <= u < h and 0 <= v < w]


def _pool_max(x, windows, out_hw):
    """``(y, argmax positions)`` of max pooling over ``windows``; -inf and None for empty ones."""
    y = np.full(x.shape[:2] + out_hw, -np.inf, dtype=x.dtype)
    chosen = {}
    for n, c in np.ndindex(*x.shape[:2]):
        for i, j, positions in windows:
            k = _first_max([float(x[n, c, u, v]) for u, v in positions])
            if k is not None:
                chosen[n, c, i, j] = positions[k]
                y[n, c, i, j] = x[(n, c) + positions[k]]
    return y, chosen


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``y[n,c,i,j] = max of the window's elements inside x`` (-inf padding) (eq. 44)."""
    windows = list(_max_windows(x, kernel_size, stride, padding, dilation, ceil_mode))
    return _pool_max(x, windows, (windows[-1][0] + 1, windows[-1][1] + 1))[0]


def max_pool2d_backward(dout, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``dx[argmax of window (i, j)] += dout[n,c,i,j]`` (eq. 46)."""
    windows = list(_max_windows(x, kernel_size, stride, padding, dilation, ceil_mode))
    _, chosen = _pool_max(x, windows, (windows[-1][0] + 1, windows[-1][1] + 1))
    dx = np.zeros_like(x)
    for (n, c, i, j), (u, v) in chosen.items():
        dx[n, c, u, v] += dout[n, c, i, j]
    return (dx,)


def _adaptive_windows(x, output_size):
    """Yield ``(i, j, positions)`` of the adaptive windows, row-major (eq. 47)."""
    h, w = x.shape[2:]
    sizes = (output_size, output_size) if np.ndim(output_size) == 0 else tuple(output_size)
    oh, ow = (h if sizes[0] is None else sizes[0]), (w if sizes[1] is None else sizes[1])
    for i in range(oh):
        for j in range(ow):
            rows = range((i * h) // oh, ((i + 1) * h + oh - 1) // oh)          # floor, ceil
            cols = range((j * w) // ow, ((j + 1) * w + ow - 1) // ow)
            yield i, j, [(u, v) for u in rows for v in cols]


def _adaptive_size(x, output_size):
    sizes = (output_size, output_size) if np.ndim(output_size) == 0 else tuple(output_size)
    return tuple(x.shape[2 + a] if sizes[a] is None else sizes[a] for a in (0, 1))


def adaptive_avg_pool2d(x, output_size):
    """``y[n,c,i,j] = mean of the adaptive window (i, j)`` (eq. 48)."""
    y = np.zeros(x.shape[:2] + _adaptive_size(x, output_size), dtype=x.dtype)
    for n, c in np.ndindex(*x.shape[:2]):
        for i, j, positions in _adaptive_windows(x, output_size):
            y[n, c, i, j] = sum(float(x[n, c, u, v]) for u, v in positions) / len(positions)
    return y


def adaptive_avg_pool2d_backward(dout, x, output_size):
    """``dx[n,c,u,v] += dout[n,c,i,j] / |window|`` for every window holding ``(u, v)`` (eq. 49)."""
    dx = np.zeros_like(x)
    for n, c in np.ndindex(*x.shape[:2]):
        for i, j, positions in _adaptive_windows(x, output_size):
            for u, v in positions:
                dx[n, c, u, v] += dout[n, c, i, j] / len(positions)
    return (dx,)


def adaptive_max_pool2d(x, output_size):
    """``y[n,c,i,j] = max of the adaptive window (i, j)`` (eq. 44, 47)."""
    return _pool_max(x, list(_adaptive_windows(x, output_size)), _adaptive_size(x, output_size))[0]


def adaptive_max_pool2d_backward(dout, x, output_size):
    """``dx[argmax of window (i, j)] += dout[n,c,i,j]`` (eq. 46)."""
    _, chosen = _pool_max(x, list(_adaptive_windows(x, output_size)), _adaptive_size(x, output_size))
    dx = np.zeros_like(x)
    for (n, c, i, j), (u, v) in chosen.items():
        dx[n, c, u, v] += dout[n, c, i, j]
    return (dx,)
