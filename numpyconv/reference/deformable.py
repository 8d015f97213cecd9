"""Plain-loop definition of ``deform_conv2d`` (torchvision semantics), forward and backward.

Bilinear sampling is written in its tent-kernel form (docs/derivations/deformable.md, eq. 1):
``v(h, w) = sum over pixels (a, b) of the image of k(h - a) k(w - b) img[a, b]``, ``k(t) = max(0, 1 - |t|)``.
Pixels outside the image are simply not in the sum, which is the zero-padding rule; a point with
``h <= -1`` or ``h >= H`` (same for w) is at distance >= 1 from every row and gets 0. Its slopes
(eq. 2a) use the right-hand derivative ``k'`` of the tent, corner by corner, which is torchvision's
rule at every coordinate, -1 and H included.
"""
import numpy as np

from .._checks import padding4, pair


def tent(t):
    """``k(t) = max(0, 1 - |t|)`` (eq. 1)."""
    return max(0.0, 1.0 - abs(t))


def _tent_slope(t):
    """The right-hand derivative of the tent: +1 on ``[-1, 0)``, -1 on ``[0, 1)``, else 0 (eq. 2a)."""
    return 1.0 if -1.0 <= t < 0.0 else -1.0 if 0.0 <= t < 1.0 else 0.0


def corners(img, h, w):
    """The image pixels ``(a, b)`` with a non-zero weight or slope at ``(h, w)``: the four corners
    ``{floor(h), floor(h) + 1} x {floor(w), floor(w) + 1}`` that lie inside the image; none for an
    infinite or NaN coordinate (no pixel is within 1 of it: the value and the slopes are 0)."""
    if not (np.isfinite(h) and np.isfinite(w)):
        return []
    height, width = img.shape
    rows, cols = (int(np.floor(h)), int(np.floor(h)) + 1), (int(np.floor(w)), int(np.floor(w)) + 1)
    return [(a, b) for a in rows for b in cols if 0 <= a < height and 0 <= b < width]


def bilinear(img, h, w):
    """Value of the ``(H, W)`` image ``img`` at the real point ``(h, w)`` (eq. 1)."""
    return sum(tent(h - a) * tent(w - b) * img[a, b] for a, b in corners(img, h, w))


def bilinear_slopes(img, h, w):
    """``(dv/dh, dv/dw)`` at ``(h, w)``, right-hand derivatives, corner by corner (eq. 2a)."""
    pixels = corners(img, h, w)
    return (sum(_tent_slope(h - a) * tent(w - b) * img[a, b] for a, b in pixels),
            sum(tent(h - a) * _tent_slope(w - b) * img[a, b] for a, b in pixels))


def _points(x, offset, weight, stride, padding, dilation, mask):
    """Every sampled value: ``(b, o, oy, ox, c, ci, i, j, h, w, m, offset channel of dy, mask
    channel)`` for output ``(b, o, oy, ox)`` and kernel entry ``(ci, i, j)`` (eq. 3)."""
    (sh, sw), (dh, dw) = pair(stride, 'stride'), pair(dilation, 'dilation')
    n, c_in = x.shape[:2]
    c_out, c_g, kh, kw = weight.shape
    top, _, left, _ = padding4(padding, (kh, kw), (sh, sw), (dh, dw))
    groups, npts = c_in // c_g, kh * kw
    o_g, offset_groups = c_out // groups, offset.shape[1] // (2 * npts)
    ho, wo = offset.shape[2:]
    for b, o, oy, ox in np.ndindex(n, c_out, ho, wo):
        for ci, i, j in np.ndindex(c_g, kh, kw):
            c = (o // o_g) * c_g + ci
            g, p = c // (c_in // offset_groups), i * kw + j
            h = oy * sh - top + i * dh + offset[b, g * 2 * npts + 2 * p, oy, ox]         # (eq. 3)
            w = ox * sw - left + j * dw + offset[b, g * 2 * npts + 2 * p + 1, oy, ox]    # (eq. 3)
            m = 1.0 if mask is None else mask[b, g * npts + p, oy, ox]
            yield b, o, oy, ox, c, ci, i, j, h, w, m, g * 2 * npts + 2 * p, g * npts + p


def deform_conv2d(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """``y (N, C_out, Ho, Wo)``, one sampled value at a time (eqs. 3-5). Arguments as
    :func:`numpyconv.deform_conv2d_forward` (v1 when ``mask`` is None, v2 otherwise)."""
    y = np.zeros((x.shape[0], weight.shape[0]) + offset.shape[2:], dtype=x.dtype)
    if bias is not None:
        for b, o, oy, ox in np.ndindex(*y.shape):
            y[b, o, oy, ox] = bias[o]                                                    # (eq. 5)
    for b, o, oy, ox, c, ci, i, j, h, w, m, _, _ in _points(x, offset, weight, stride, padding,
                                                          dilation, mask):
        y[b, o, oy, ox] += weight[o, ci, i, j] * m * bilinear(x[b, c], h, w)             # (eqs. 4, 5)
    return y


def deform_conv2d_backward(dout, x, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                           mask=None):
    """``(dx, doffset, dweight, dbias, dmask)`` of :func:`deform_conv2d`, one sampled value at a time
    (eqs. 6-10); ``dbias`` / ``dmask`` are None when ``bias`` / ``mask`` are."""
    dx, doffset, dweight = np.zeros_like(x), np.zeros_like(offset), np.zeros_like(weight)
    dmask = None if mask is None else np.zeros_like(mask)
    for b, o, oy, ox, c, ci, i, j, h, w, m, dy_channel, m_channel in _points(
            x, offset, weight, stride, padding, dilation, mask):
        value = bilinear(x[b, c], h, w)                                                  # (eq. 1)
        dweight[o, ci, i, j] += dout[b, o, oy, ox] * m * value                           # (eq. 6)
        dcol = weight[o, ci, i, j] * dout[b, o, oy, ox]                                  # (eq. 6)
        for a, bb in corners(x[b, c], h, w):
            dx[b, c, a, bb] += m * tent(h - a) * tent(w - bb) * dcol                     # (eq. 7)
        slope_h, slope_w = bilinear_slopes(x[b, c], h, w)                                # (eq. 2a)
        doffset[b, dy_channel, oy, ox] += m * dcol * slope_h                             # (eq. 8)
        doffset[b, dy_channel + 1, oy, ox] += m * dcol * slope_w                         # (eq. 9)
        if mask is not None:
            dmask[b, m_channel, oy, ox] += dcol * value                                  # (eq. 10)
    dbias = None if bias is None else np.zeros_like(bias)
    if bias is not None:
        for b, o, oy, ox in np.ndindex(*dout.shape):
            dbias[o] += dout[b, o, oy, ox]                                               # (eq. 6)
    return dx, doffset, dweight, dbias, dmask
