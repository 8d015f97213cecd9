"""Plain-loop definitions of the DCNv3 and DCNv4 core ops (slow and obvious, for tests only).

Transcribes docs/derivations/dcnv3.md eq. 1-4 (the CUDA kernel ``dcnv3_im2col_gpu_kernel``) with
scalar Python loops; ``dcnv4`` reads the packed ``offset_mask`` directly (dcnv4.md eq. 1).
``padding`` is an int or a pair (symmetric). The bilinear value is the tent-kernel definition of
:func:`numpyconv.reference.deformable.bilinear` (deformable.md eq. 1, zero outside the image).
"""
import numpy as np

from .deformable import _pair, bilinear


def _points(kh, kw, remove_center):
    """Column-major kernel points ``(i, j)``: x index outer, centre dropped when asked."""
    return [(i, j) for i in range(kw) for j in range(kh)
            if not (remove_center and i == kw // 2 and j == kh // 2)]


def _core(x, read_point, kernel_size, stride, padding, dilation, group, group_channels,
          offset_scale, remove_center):
    """``read_point(n, r, s, g, p) -> (dx, dy, m)``; the loop of the CUDA forward kernel."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel_size, stride, padding, dilation))
    n_batch, height, width, channels = x.shape
    ho = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    half_h, half_w = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    points = _points(kh, kw, remove_center)
    y = np.zeros((n_batch, ho, wo, channels), dtype=np.float64)
    for n in range(n_batch):
        for r in range(ho):
            for s in range(wo):
                top = r * sh - ph + half_h - half_h * offset_scale
                left = s * sw - pw + half_w - half_w * offset_scale
                for g in range(group):
                    for p, (i, j) in enumerate(points):
                        off_x, off_y, m = read_point(n, r, s, g, p)
                        h = top + (j * dh + off_y) * offset_scale
                        w = left + (i * dw + off_x) * offset_scale
                        for c in range(g * group_channels, (g + 1) * group_channels):
                            y[n, r, s, c] += m * bilinear(x[n, :, :, c], h, w)
    return y.astype(x.dtype)


def dcnv3(x, offset, mask, kernel_size, stride, padding, dilation, group, group_channels,
          offset_scale=1.0, remove_center=False):
    """DCNv3 core: offsets ``(N, Ho, Wo, G*P*2)`` as (dx, dy), mask ``(N, Ho, Wo, G*P)``."""
    kh, kw = _pair(kernel_size)
    npts = kh * kw - int(remove_center)

    def read_point(n, r, s, g, p):
        q = g * npts + p
        return offset[n, r, s, 2 * q], offset[n, r, s, 2 * q + 1], mask[n, r, s, q]
    return _core(x, read_point, kernel_size, stride, padding, dilation, group, group_channels,
                 offset_scale, remove_center)


def dcnv4(x, offset_mask, kernel_size, stride, padding, dilation, group, group_channels,
          offset_scale=1.0, remove_center=False):
    """DCNv4 core: packed ``offset_mask``, per group ``[2P offsets (dx, dy) | P mask]``."""
    kh, kw = _pair(kernel_size)
    npts = kh * kw - int(remove_center)

    def read_point(n, r, s, g, p):
        start = g * 3 * npts
        return (offset_mask[n, r, s, start + 2 * p], offset_mask[n, r, s, start + 2 * p + 1],
                offset_mask[n, r, s, start + 2 * npts + p])
    return _core(x, read_point, kernel_size, stride, padding, dilation, group, group_channels,
                 offset_scale, remove_center)
