"""Plain-loop definition of ``deform_conv2d`` (torchvision semantics), slow and obvious.

Bilinear sampling is written in its tent-kernel form (docs/derivations/deformable.md, eq. 1):
``v(h, w) = sum over pixels (a, b) of the image of k(h - a) k(w - b) img[a, b]``, ``k(t) = max(0, 1 - |t|)``.
Pixels outside the image are simply not in the sum, which is the zero-padding rule; a point with
``h <= -1`` or ``h >= H`` (same for w) is at distance >= 1 from every row and gets 0.
"""
import numpy as np


def _tent(t):
    return max(0.0, 1.0 - abs(t))


def bilinear(img, h, w):
    """Value of the ``(H, W)`` image ``img`` at the real point ``(h, w)`` (eq. 1)."""
    height, width = img.shape
    total = 0.0
    for a in range(int(np.floor(h)), int(np.floor(h)) + 2):
        for b in range(int(np.floor(w)), int(np.floor(w)) + 2):
            if 0 <= a < height and 0 <= b < width:
                total += _tent(h - a) * _tent(w - b) * img[a, b]
    return total


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def deform_conv2d(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """``y (N, C_out, Ho, Wo)``, one output value at a time (eq. 3-5)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c_in, _, _ = x.shape
    c_out, c_g, kh, kw = weight.shape
    groups, npts = c_in // c_g, kh * kw
    o_g = c_out // groups
    offset_groups = offset.shape[1] // (2 * npts)
    ho, wo = offset.shape[2:]
    y = np.zeros((n, c_out, ho, wo))
    for b in range(n):
        for o in range(c_out):
            for oy in range(ho):
                for ox in range(wo):
                    total = 0.0 if bias is None else bias[o]
                    for ci in range(c_g):
                        c = (o // o_g) * c_g + ci
                        g = c // (c_in // offset_groups)
                        for i in range(kh):
                            for j in range(kw):
                                p = i * kw + j
                                h = oy * sh - ph + i * dh + offset[b, g * 2 * npts + 2 * p, oy, ox]
                                w = ox * sw - pw + j * dw + offset[b, g * 2 * npts + 2 * p + 1, oy, ox]
                                m = 1.0 if mask is None else mask[b, g * npts + p, oy, ox]
                                total += weight[o, ci, i, j] * m * bilinear(x[b, c], h, w)
                    y[b, o, oy, ox] = total
    return y.astype(x.dtype)
