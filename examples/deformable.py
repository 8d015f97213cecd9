"""Deformable convolution v1 / v2: every kernel point is moved by a learned offset, sampled by
bilinear interpolation, and (v2) scaled by a learned mask; then the usual GEMM.

Follows docs/derivations/deformable.md: bilinear sampling with zero padding (eq. 1), its slopes
(eq. 2), the sampling position (eq. 3), the deformable columns (eq. 4), the GEMM (eq. 5) and the
backward pass (eq. 6-10); the layout is torchvision's ``deform_conv2d``.

1. the offsets and the nine sampling points of one output pixel, against
   ``numpyconv.sampling_locations``;
2. bilinear interpolation by hand for one point, as four corners and as the tent-kernel sum (eq. 1),
   and its derivative (eq. 2) next to finite differences;
3. the whole forward by hand: deformable columns, modulation, one GEMM; v1 as v2 with mask 1, and
   zero offsets give conv2d;
4. the fast op against ``numpyconv.reference.deform_conv2d`` and ``deform_conv2d_backward`` (groups,
   offset groups, stride, dilation);
5. ``numpyconv.gradcheck``, with every sampling coordinate away from an integer (a kink of eq. 1).

Run (from the repository root):
    PYTHONPATH=. python examples/deformable.py
"""
import math

import numpy as np

import numpyconv as nc
from numpyconv import reference

np.set_printoptions(linewidth=110, precision=3, suppress=True)
RNG = np.random.default_rng(0)


def same(what, a, b, tol=1e-10):
    """Print and assert ``max |a - b| <= tol * max(1, max |b|)``."""
    err = float(np.max(np.abs(np.asarray(a) - b), initial=0.0))
    print(f'  {what} '.ljust(74, '.') + f' max |difference| {err:.1e}')
    assert err <= tol * max(1.0, float(np.max(np.abs(b), initial=0.0))), what


def corners(h, w):
    """The four corners of real point ``(h, w)`` and their weights (the table under eq. 1)."""
    h0, w0 = math.floor(h), math.floor(w)
    lh, lw = h - h0, w - w0
    return [(h0, w0, (1 - lh) * (1 - lw)), (h0, w0 + 1, (1 - lh) * lw),
            (h0 + 1, w0, lh * (1 - lw)), (h0 + 1, w0 + 1, lh * lw)]


def bilinear(v, h, w):
    """B(v; h, w): the weighted corners; a corner outside the image is zero padding (eq. 1)."""
    height, width = v.shape
    return sum(k * v[a, b] for a, b, k in corners(h, w) if 0 <= a < height and 0 <= b < width)


# x (N, C_in, H, W), weight (C_out, C_in, 3, 3), 'same' padding: offsets (N, 2*9, Ho, Wo), mask (N, 9, Ho, Wo)
X = RNG.standard_normal((1, 2, 5, 5))
WEIGHT, BIAS = RNG.standard_normal((3, 2, 3, 3)), RNG.standard_normal(3)
STRIDE, PAD, DIL = 1, 1, 1
OFFSET = 0.8 * RNG.standard_normal((1, 18, 5, 5))
MASK = 1 / (1 + np.exp(-RNG.standard_normal((1, 9, 5, 5))))        # v2: a sigmoid per point, in (0, 1)
R, S = 2, 1                                                       # the output pixel of sections 1 and 2


def sampling_points(r=R, s=S):
    print(f'== 1. the sampling points of output pixel (row {r}, column {s}) (eq. 3)')
    print(f'x {X.shape}, weight {WEIGHT.shape}, mask {MASK.shape},\n'
          f'offset {OFFSET.shape}: channel 2p holds dh, channel 2p+1 holds dw of point p')
    print('   p  (i, j)   base (h, w)     offset (dh, dw)     sampled (h, w)     mask')
    points = []
    for p in range(9):
        i, j = divmod(p, 3)                                          # kernel row i, column j (row-major)
        base = (r * STRIDE - PAD + i * DIL, s * STRIDE - PAD + j * DIL)   # where conv2d would read
        delta = (OFFSET[0, 2 * p, r, s], OFFSET[0, 2 * p + 1, r, s])
        h, w = base[0] + delta[0], base[1] + delta[1]
        points.append((h, w))
        print(f'  {p:>2}  ({i}, {j})   ({base[0]:>2}, {base[1]:>2})    ({delta[0]:>6.3f}, {delta[1]:>6.3f})'
              f'    ({h:>6.3f}, {w:>6.3f})    {MASK[0, p, r, s]:.3f}')
    locations, weights = nc.sampling_locations('deform_conv2d', X, OFFSET, WEIGHT, BIAS, STRIDE, PAD, DIL,
                                               MASK)
    print(f'numpyconv.sampling_locations: locations {locations.shape} (N, Ho, Wo, groups, points, (x, y)),\n'
          f'weights {weights.shape}')
    same('our (h, w) == locations[0, r, s, 0, :, ::-1] (it returns (x, y))', points,
         locations[0, r, s, 0, :, ::-1])
    same('mask == weights[0, r, s, 0]', MASK[0, :, r, s], weights[0, r, s, 0])
    return points


def one_point(points, p=4):
    h, w = points[p]
    v = X[0, 0]
    print(f'\n== 2. bilinear interpolation of channel 0 at point {p}: (h, w) = ({h:.3f}, {w:.3f}) (eq. 1)')
    for a, b, k in corners(h, w):
        inside = 0 <= a < v.shape[0] and 0 <= b < v.shape[1]
        print(f'  corner ({a}, {b}): weight {k:.3f}, value {v[a, b] if inside else 0.0:>6.3f}'
              + ('' if inside else ' (outside: zero padding)'))
    value = bilinear(v, h, w)
    tent = sum(max(0, 1 - abs(h - a)) * max(0, 1 - abs(w - b)) * v[a, b] for a, b in np.ndindex(*v.shape))
    print(f'  B = sum of weight * value = {value:.6f}; times the mask {MASK[0, p, R, S]:.3f} '
          f'= {MASK[0, p, R, S] * value:.6f} (eq. 4)')
    same('four corners == tent-kernel sum over every pixel (eq. 1)', value, tent)

    c00, c01, c10, c11 = (v[a, b] if 0 <= a < v.shape[0] and 0 <= b < v.shape[1] else 0.0
                          for a, b, _ in corners(h, w))
    lh, lw = h - math.floor(h), w - math.floor(w)
    slope_h = (1 - lw) * (c10 - c00) + lw * (c11 - c01)              # eq. 2
    slope_w = (1 - lh) * (c01 - c00) + lh * (c11 - c10)
    eps = 1e-6
    same('dB/dh (eq. 2) == central difference', slope_h,
         (bilinear(v, h + eps, w) - bilinear(v, h - eps, w)) / (2 * eps), tol=1e-8)
    same('dB/dw (eq. 2) == central difference', slope_w,
         (bilinear(v, h, w + eps) - bilinear(v, h, w - eps)) / (2 * eps), tol=1e-8)
    left = (bilinear(v, 2.0, w) - bilinear(v, 2.0 - eps, w)) / eps
    right = (bilinear(v, 2.0 + eps, w) - bilinear(v, 2.0, w)) / eps
    print(f'  at the integer h = 2 the slopes differ: left {left:.4f}, right {right:.4f} (a kink; '
          'the ops take the right one)')


def forward_by_hand():
    print('\n== 3. the forward by hand: deformable columns (eq. 4), then the GEMM (eq. 5)')
    n, c_in, _, _ = X.shape
    ho = wo = 5
    cols = np.zeros((n, c_in, 3, 3, ho, wo))                        # conv2d's column layout
    for c, i, j, r, s in np.ndindex(c_in, 3, 3, ho, wo):
        p = i * 3 + j
        h = r * STRIDE - PAD + i * DIL + OFFSET[0, 2 * p, r, s]      # eq. 3
        w = s * STRIDE - PAD + j * DIL + OFFSET[0, 2 * p + 1, r, s]
        cols[0, c, i, j, r, s] = MASK[0, p, r, s] * bilinear(X[0, c], h, w)   # eq. 4
    y = (WEIGHT.reshape(3, -1) @ cols.reshape(c_in * 9, ho * wo) + BIAS[:, None]).reshape(1, 3, ho, wo)
    print(f'  cols {cols.shape} -> X_c {(c_in * 9, ho * wo)}; W_r {(3, c_in * 9)}; y = W_r X_c + b {y.shape}')
    same('v2: y == deform_conv2d_forward(x, offset, W, b, mask=mask)', y,
         nc.deform_conv2d_forward(X, OFFSET, WEIGHT, BIAS, STRIDE, PAD, DIL, MASK)[0])
    same('v1 (mask None) == v2 with a mask of ones',
         nc.deform_conv2d_forward(X, OFFSET, WEIGHT, BIAS, padding=1)[0],
         nc.deform_conv2d_forward(X, OFFSET, WEIGHT, BIAS, padding=1, mask=np.ones_like(MASK))[0])
    same('zero offsets, v1 == conv2d', nc.deform_conv2d_forward(X, 0 * OFFSET, WEIGHT, BIAS, padding=1)[0],
         nc.conv2d_forward(X, WEIGHT, BIAS, padding=1)[0])


def random_geometry(stride=2, dilation=2, groups=2, offset_groups=2):
    """Arrays for a strided, dilated layer with weight groups and offset groups."""
    x = RNG.standard_normal((2, 4, 7, 6))
    weight, bias = RNG.standard_normal((6, 4 // groups, 3, 3)), RNG.standard_normal(6)
    ho = (7 + 2 - dilation * 2 - 1) // stride + 1                  # conv.md eq. 2: 3 rows
    wo = (6 + 2 - dilation * 2 - 1) // stride + 1                  # 2 columns
    offset = 0.8 * RNG.standard_normal((2, 2 * offset_groups * 9, ho, wo))
    mask = RNG.random((2, offset_groups * 9, ho, wo))
    return (x, offset, weight, bias), dict(stride=stride, padding=1, dilation=dilation), mask


def against_reference():
    print('\n== 4. fast op against the plain loops (stride 2, dilation 2, groups 2, offset groups 2)')
    args, hyper, mask = random_geometry()
    print(f'  x {args[0].shape}, offset {args[1].shape}, weight {args[2].shape}, mask {mask.shape}')
    for version, m in (('v1', None), ('v2', mask)):
        y, cache = nc.deform_conv2d_forward(*args, **hyper, mask=m)
        same(f'{version}: deform_conv2d_forward == reference.deform_conv2d', y,
             reference.deform_conv2d(*args, **hyper, mask=m))
        dy = RNG.standard_normal(y.shape)
        grads = nc.deform_conv2d_backward(dy, cache)                 # (dx, doffset, dweight, dbias, dmask)
        loops = reference.deform_conv2d_backward(dy, *args, **hyper, mask=m)
        if m is None:
            assert grads[4] is None and loops[4] is None             # v1: no mask, no gradient
            grads, loops = grads[:4], loops[:4]
        same(f'{version}: {len(grads)} gradients == reference.deform_conv2d_backward',
             np.concatenate([g.ravel() for g in grads]), np.concatenate([g.ravel() for g in loops]))


def gradient_check():
    print('\n== 5. numpyconv.gradcheck (v2), sampling points away from integer coordinates')
    args, hyper, mask = random_geometry()
    locations, _ = nc.sampling_locations('deform_conv2d', *args, **hyper, mask=mask)
    distance = np.abs(locations - np.round(locations)).min()
    print(f'  closest sampling coordinate to an integer: {distance:.2e} (the step is 1e-6)')
    assert distance > 1e-5
    names = ['x', 'offset', 'weight', 'bias', 'mask']
    report = nc.gradcheck(lambda x, o, w, b, m: nc.deform_conv2d_forward(x, o, w, b, **hyper, mask=m),
                          nc.deform_conv2d_backward, (*args, mask), names=names)
    print(report)
    assert report.ok


if __name__ == '__main__':
    one_point(sampling_points())
    forward_by_hand()
    against_reference()
    gradient_check()
