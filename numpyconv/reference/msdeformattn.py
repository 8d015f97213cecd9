"""Plain-loop definition of multi-scale deformable attention (slow and obvious, for tests only).

Transcribes docs/derivations/msdeformattn.md eq. 1-8, one equation a line: the bilinear sample of
the official CUDA kernel (``ms_deform_attn_im2col_bilinear`` / ``ms_deform_attn_col2im_bilinear``)
written corner by corner, each corner inside the level or skipped (zero padding), and no sample at
all unless ``-1 < h < H_l`` and ``-1 < w < W_l``. Same arguments as
:func:`numpyconv.ms_deform_attn_forward`; the backward returns the same tuple as
:func:`numpyconv.ms_deform_attn_backward`.
"""
import math

import numpy as np


def _corners(h, w):
    """``((row, column), K, dK/dh, dK/dw)`` of the four corners around ``(h, w)`` (eq. 3, 8)."""
    h0, w0 = math.floor(h), math.floor(w)
    lh, lw = h - h0, w - w0
    return [((h0, w0), (1 - lh) * (1 - lw), -(1 - lw), -(1 - lh)),
            ((h0, w0 + 1), (1 - lh) * lw, -lw, 1 - lh),
            ((h0 + 1, w0), lh * (1 - lw), 1 - lw, -lh),
            ((h0 + 1, w0 + 1), lh * lw, lw, lh)]


def _samples(spatial_shapes, level_start_index, sampling_locations):
    """Yield ``(n, q, m, l, p, H, W, [(row in value, K, dK/dh, dK/dw), ...])`` for every point
    that samples its level (eq. 1-3), the corners outside the level left out."""
    n_batch, lq, heads, levels, points, _ = sampling_locations.shape
    for n in range(n_batch):
        for q in range(lq):
            for m in range(heads):
                for lvl in range(levels):
                    height, width = int(spatial_shapes[lvl][0]), int(spatial_shapes[lvl][1])
                    start = int(level_start_index[lvl])
                    for p in range(points):
                        x, y = sampling_locations[n, q, m, lvl, p]
                        w = float(x) * width - 0.5                                   # (eq. 2)
                        h = float(y) * height - 0.5                                  # (eq. 2)
                        if not (-1 < h < height and -1 < w < width):                 # (eq. 3)
                            continue
                        inside = [(start + i * width + j, k, dk_dh, dk_dw)           # (eq. 1)
                                  for (i, j), k, dk_dh, dk_dw in _corners(h, w)
                                  if 0 <= i < height and 0 <= j < width]             # (eq. 3)
                        yield n, q, m, lvl, p, height, width, inside


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """``out (N, Lq, M*D)``, one corner of one point at a time (eq. 4)."""
    depth = value.shape[3]
    out = np.zeros(sampling_locations.shape[:2] + (value.shape[2] * depth,))
    for n, q, m, lvl, p, _, _, inside in _samples(spatial_shapes, level_start_index, sampling_locations):
        a = attention_weights[n, q, m, lvl, p]
        for s, k, _, _ in inside:
            for d in range(depth):
                out[n, q, m * depth + d] += a * k * value[n, s, m, d]                # (eq. 4)
    return out.astype(value.dtype)


def ms_deform_attn_backward(dout, value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights):
    """``(dvalue, None, None, dsampling_locations, dattention_weights)`` (eq. 5-7)."""
    depth = value.shape[3]
    dvalue = np.zeros(value.shape)
    dloc = np.zeros(sampling_locations.shape)
    dattn = np.zeros(attention_weights.shape)
    for n, q, m, lvl, p, height, width, inside in _samples(spatial_shapes, level_start_index,
                                                           sampling_locations):
        a = attention_weights[n, q, m, lvl, p]
        for s, k, dk_dh, dk_dw in inside:
            for d in range(depth):
                t, v = dout[n, q, m * depth + d], value[n, s, m, d]
                dvalue[n, s, m, d] += a * k * t                                      # (eq. 5)
                dattn[n, q, m, lvl, p] += k * t * v                                  # (eq. 6)
                dloc[n, q, m, lvl, p, 0] += width * a * dk_dw * t * v                # (eq. 7)
                dloc[n, q, m, lvl, p, 1] += height * a * dk_dh * t * v               # (eq. 7)
    dtype = value.dtype
    return dvalue.astype(dtype), None, None, dloc.astype(dtype), dattn.astype(dtype)
