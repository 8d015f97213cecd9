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
These functions are Numba-compiled and called from the ops' own jitted loops; they only
compute indices and weights, the loops do the reads and the ``+=`` of the gradients.
"""
import math

from numba import njit


@njit(cache=True, inline='always')
def corners(h, w, height, width):
    """``(h0, w0, w00, w01, w10, w11)``: top-left corner and the four weights (0 if outside)."""
    if not (-1.0 < h < height and -1.0 < w < width):
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
def corner_slopes(h, w, height, width):
    """Derivatives of the four corner weights: ``(dh00, dh01, dh10, dh11, dw00, dw01, dw10, dw11)``.

    Zero for a corner outside the image and everywhere outside ``-1 < h < H``, ``-1 < w < W``.
    """
    if not (-1.0 < h < height and -1.0 < w < width):
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    h0, w0 = int(math.floor(h)), int(math.floor(w))
    lh, lw = h - h0, w - w0
    top, bottom = h0 >= 0, h0 + 1 <= height - 1
    left, right = w0 >= 0, w0 + 1 <= width - 1
    k00, k01, k10, k11 = top and left, top and right, bottom and left, bottom and right
    return (-(1.0 - lw) if k00 else 0.0, -lw if k01 else 0.0,
            (1.0 - lw) if k10 else 0.0, lw if k11 else 0.0,
            -(1.0 - lh) if k00 else 0.0, (1.0 - lh) if k01 else 0.0,
            -lh if k10 else 0.0, lh if k11 else 0.0)
