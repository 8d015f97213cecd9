"""Plain-loop definition of the DCNv3 core op (InternImage, NHWC), forward and backward.

Transcribes docs/derivations/dcnv3.md eqs. 1-8 (the CUDA kernels ``dcnv3_im2col_gpu_kernel`` and
``dcnv3_col2im_bilinear``) with scalar Python loops. The bilinear value and its slopes are the
tent-kernel definitions of :mod:`numpyconv.reference.deformable` (deformable.md eqs. 1, 2a, zero
outside the image), except that the slopes vanish outside ``-1 < h < H``, ``-1 < w < W`` (eq. 8: the
early exit of the CUDA kernel, also at exactly -1). The sampling core is shared with
:mod:`numpyconv.reference.dcnv4`, which reads the same points from its packed tensor.
"""
import numpy as np

from .._checks import padding4, pair
from .deformable import bilinear, bilinear_slopes, corners, tent


def kernel_points(kh, kw, remove_center):
    """Column-major kernel points ``(i, j)``: x index outer, centre dropped when asked (eq. 1)."""
    return [(i, j) for i in range(kw) for j in range(kh)
            if not (remove_center and i == kw // 2 and j == kh // 2)]


def _geometry(kernel_size, stride, padding, dilation):
    """``((kh, kw), (sh, sw), (dh, dw), (top, bottom, left, right))``."""
    (kh, kw), (sh, sw) = pair(kernel_size, 'kernel_size'), pair(stride, 'stride')
    dh, dw = pair(dilation, 'dilation')
    return (kh, kw), (sh, sw), (dh, dw), padding4(padding, (kh, kw), (sh, sw), (dh, dw))


def out_shape(x, kernel_size, stride, padding, dilation):
    """``(N, Ho, Wo, C)``: the standard output size of the padded input."""
    (kh, kw), (sh, sw), (dh, dw), (top, bottom, left, right) = _geometry(kernel_size, stride, padding,
                                                                         dilation)
    n_batch, height, width, channels = x.shape
    return (n_batch, (height + top + bottom - dh * (kh - 1) - 1) // sh + 1,
            (width + left + right - dw * (kw - 1) - 1) // sw + 1, channels)


def _samples(x, read_point, kernel_size, stride, padding, dilation, group, offset_scale, remove_center):
    """Every sampling point ``(n, r, s, g, p, h, w, m)`` of output pixel ``(n, r, s)``; ``read_point(n,
    r, s, g, p) -> (dx, dy, m)`` reads the op's own layout of the offsets and mask (eq. 2). Only the
    top and left pads move the grid."""
    (kh, kw), (sh, sw), (dh, dw), (top, bottom, left, right) = _geometry(kernel_size, stride, padding,
                                                                         dilation)
    n_batch, ho, wo = out_shape(x, kernel_size, stride, padding, dilation)[:3]
    half_h, half_w = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    hp, wp = x.shape[1] + top + bottom, x.shape[2] + left + right
    for n, r, s, g in np.ndindex(n_batch, ho, wo, group):
        for p, (i, j) in enumerate(kernel_points(kh, kw, remove_center)):
            off_x, off_y, m = read_point(n, r, s, g, p)
            base_h = _base(r * sh + half_h + 0.5, j * dh - half_h, hp, offset_scale)     # (eq. 2a)
            base_w = _base(s * sw + half_w + 0.5, i * dw - half_w, wp, offset_scale)     # (eq. 2a)
            h = (2 * (base_h + off_y * offset_scale / hp) - 1 + 1) * (hp / 2) - 0.5 - top  # (eq. 2b)
            w = (2 * (base_w + off_x * offset_scale / wp) - 1 + 1) * (wp / 2) - 0.5 - left  # (eq. 2b)
            yield n, r, s, g, p, h, w, m


def _base(ref, tap, padded, offset_scale):
    """The grid part of a location in units of the padded size, in float32 (eq. 2a)."""
    f32 = np.float32
    return float(f32(ref) / f32(padded) + f32(tap) / f32(padded) * f32(offset_scale))


def core(x, read_point, kernel_size, stride, padding, dilation, group, group_channels, offset_scale,
         remove_center):
    """``y (N, Ho, Wo, C)``: every point's masked bilinear value added to its channels (eq. 4)."""
    y = np.zeros(out_shape(x, kernel_size, stride, padding, dilation), dtype=x.dtype)
    for n, r, s, g, p, h, w, m in _samples(x, read_point, kernel_size, stride, padding, dilation,
                                           group, offset_scale, remove_center):
        for c in range(g * group_channels, (g + 1) * group_channels):
            y[n, r, s, c] += m * bilinear(x[n, :, :, c], h, w)                           # (eq. 4)
    return y


def core_backward(dout, x, read_point, kernel_size, stride, padding, dilation, group, group_channels,
                  offset_scale, remove_center):
    """``(dx, dpoint)``: ``dx`` (eq. 5) and ``dpoint[n, r, s, g, p] = (d dx, d dy, d m)``, the
    gradients of each point's offset pair and mask (eqs. 6-8), for the op to put in its layout."""
    n_points = len(kernel_points(*pair(kernel_size, 'kernel_size'), remove_center))
    height, width = x.shape[1:3]
    dx = np.zeros_like(x)
    dpoint = np.zeros(dout.shape[:3] + (group, n_points, 3), dtype=x.dtype)
    for n, r, s, g, p, h, w, m in _samples(x, read_point, kernel_size, stride, padding, dilation,
                                           group, offset_scale, remove_center):
        inside = -1.0 < h < height and -1.0 < w < width                  # else no slope (eq. 8)
        for c in range(g * group_channels, (g + 1) * group_channels):
            img, grad = x[n, :, :, c], dout[n, r, s, c]
            for a, b in corners(img, h, w):
                dx[n, a, b, c] += m * tent(h - a) * tent(w - b) * grad                   # (eq. 5)
            slope_h, slope_w = bilinear_slopes(img, h, w) if inside else (0.0, 0.0)      # (eq. 8)
            dpoint[n, r, s, g, p, 0] += offset_scale * m * grad * slope_w                # (eq. 7)
            dpoint[n, r, s, g, p, 1] += offset_scale * m * grad * slope_h                # (eq. 7)
            dpoint[n, r, s, g, p, 2] += grad * bilinear(img, h, w)                       # (eq. 6)
    return dx, dpoint


def _reader(offset, mask, n_points):
    """``read_point`` of the DCNv3 layout: point ``q = g P + p`` has offsets ``(2q, 2q + 1)`` = (dx, dy)
    and mask ``q``."""
    def read_point(n, r, s, g, p):
        q = g * n_points + p
        return offset[n, r, s, 2 * q], offset[n, r, s, 2 * q + 1], mask[n, r, s, q]
    return read_point


def dcnv3(x, offset, mask, kernel_size, stride, padding, dilation, group, group_channels,
          offset_scale=1.0, remove_center=False):
    """DCNv3 core, ``y (N, Ho, Wo, G*D)`` (eq. 4): offsets ``(N, Ho, Wo, G*P*2)`` as (dx, dy), mask
    ``(N, Ho, Wo, G*P)``. Arguments as :func:`numpyconv.dcnv3_forward`."""
    n_points = mask.shape[3] // group
    return core(x, _reader(offset, mask, n_points), kernel_size, stride, padding, dilation, group,
                group_channels, offset_scale, remove_center)


def dcnv3_backward(dout, x, offset, mask, kernel_size, stride, padding, dilation, group, group_channels,
                   offset_scale=1.0, remove_center=False):
    """``(dx, doffset, dmask)`` of :func:`dcnv3` (eqs. 5-8)."""
    n_points = mask.shape[3] // group
    dx, dpoint = core_backward(dout, x, _reader(offset, mask, n_points), kernel_size, stride,
                               padding, dilation, group, group_channels, offset_scale,
                               remove_center)                                            # (eqs. 5-8)
    doffset, dmask = np.zeros_like(offset), np.zeros_like(mask)
    for n, r, s, g, p in np.ndindex(*dpoint.shape[:5]):
        q = g * n_points + p
        doffset[n, r, s, 2 * q], doffset[n, r, s, 2 * q + 1] = dpoint[n, r, s, g, p, :2]     # (eq. 7)
        dmask[n, r, s, q] = dpoint[n, r, s, g, p, 2]                                     # (eq. 6)
    return dx, doffset, dmask
