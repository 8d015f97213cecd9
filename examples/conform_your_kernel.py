"""Check a deformable-convolution kernel of your own against numpyconv with numpyconv.testing.

Run (numpyconv installed, or from the repository root):
    PYTHONPATH=. python examples/conform_your_kernel.py

The kernel below stands for yours: a NumPy port of ``torchvision.ops.deform_conv2d``'s forward,
written the way CUDA ports are (one bilinear sample per sample, channel, kernel point and output
pixel, then a grouped matrix product). ``check_against`` calls it exactly as it calls
``numpyconv.deform_conv2d_forward``: the same arguments, names and layouts. A CUDA, Triton or C++
kernel is wrapped the same way, as a function of NumPy arrays (docs/conformance.md shows wrappers
through PyTorch and ctypes); a backward, ``backward(dout, *args, **kwargs) -> gradients``, is
passed as the third argument.

1. the port is checked on 150 cases (the edge cases that break ports first): all conform;
2. the same port with a classic bug planted, the zero-padding rule written ``0 <= h <= H - 1``
   instead of ``-1 < h < H`` (a point less than a pixel above or left of the image then samples
   nothing, instead of a fraction of the border pixels): the check fails, shrinks the failure to a
   case of a few pixels and prints the report and the reproducer, a script that needs only NumPy and
   numpyconv.
"""
import numpy as np

from numpyconv.testing import check_against


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _inside(h, w, height, width):
    """torchvision's rule: a point is sampled when -1 < h < H and -1 < w < W."""
    return (h > -1) & (h < height) & (w > -1) & (w < width)


def _inside_pixels(h, w, height, width):
    """The planted bug: only points within the pixel centres' box are sampled."""
    return (h >= 0) & (h <= height - 1) & (w >= 0) & (w <= width - 1)


def bilinear(x, h, w, inside=_inside):
    """Samples of ``x (N, C, H, W)`` at ``h, w (N, C, P, Ho, Wo)``; corners outside the image count 0."""
    n, c, height, width = x.shape
    sampled = inside(h, w, height, width)
    h0, w0 = np.floor(h), np.floor(w)
    batch, channel = np.arange(n)[:, None, None, None, None], np.arange(c)[None, :, None, None, None]
    out = np.zeros(h.shape)
    for hc in (h0, h0 + 1):
        for wc in (w0, w0 + 1):
            ok = sampled & (hc >= 0) & (hc < height) & (wc >= 0) & (wc < width)
            row, col = np.where(ok, hc, 0).astype(np.int64), np.where(ok, wc, 0).astype(np.int64)
            corner = x[batch, channel, row, col]
            out += np.where(ok, (1 - np.abs(h - hc)) * (1 - np.abs(w - wc)) * corner, 0.0)
    return out


def deform_conv2d(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None, inside=_inside):
    """Deformable convolution v1/v2 in torchvision's layout: ``offset (N, 2*og*kh*kw, Ho, Wo)`` holds
    ``(dy, dx)`` per kernel point (row-major), ``mask (N, og*kh*kw, Ho, Wo)`` or None."""
    n, c_in = x.shape[:2]
    c_out, c_g, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho, wo = offset.shape[2:]
    points = kh * kw
    og = offset.shape[1] // (2 * points)
    rows, cols = np.divmod(np.arange(points), kw)
    off = offset.reshape(n, og, points, 2, ho, wo).astype(np.float64)
    h = (np.arange(ho) * sh - ph)[None, :, None] + (rows * dh)[:, None, None] + off[:, :, :, 0]   # (N, og, P,
    w = (np.arange(wo) * sw - pw)[None, None, :] + (cols * dw)[:, None, None] + off[:, :, :, 1]   #  Ho, Wo)
    group = np.arange(c_in) // (c_in // og)                  # the offset group of each input channel
    samples = bilinear(x.astype(np.float64), h[:, group], w[:, group], inside)       # (N, C, P, Ho, Wo)
    if mask is not None:
        samples *= mask.reshape(n, og, points, ho, wo)[:, group]
    groups = c_in // c_g
    y = np.einsum('gok,ngkl->ngol', weight.reshape(groups, c_out // groups, c_g * points),
                  samples.reshape(n, groups, c_g * points, ho * wo)).reshape(n, c_out, ho, wo)
    if bias is not None:
        y += bias[:, None, None]
    return y.astype(x.dtype)


def deform_conv2d_with_border_bug(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """The same port with the planted bug in its zero-padding rule."""
    return deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask, inside=_inside_pixels)


def main():
    report = check_against('deform_conv2d', deform_conv2d, cases=150)
    print(report)

    report = check_against('deform_conv2d', deform_conv2d_with_border_bug, cases=150)
    print('\n' + str(report))
    failure = report.failures[0]
    print(f"\nsmallest failing case: {failure.shapes()}")
    print(f"worst element: {failure.error.where}{list(failure.error.index)}, relative error "
          f"{failure.error.relative:.3g}")
    print("\nreproducer (save it as a file and run it):\n")
    print(failure.reproducer)


if __name__ == '__main__':
    main()
