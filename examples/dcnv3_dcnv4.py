"""DCNv3 and DCNv4, the sampling cores of InternImage and FlashInternImage: channels-last tensors,
channel groups that each sample their own points, a softmax over the points (DCNv3's layer) or
unnormalised weights (DCNv4), and DCNv4's packed ``offset_mask``.

Follows docs/derivations/dcnv3.md: the column-major point order (eq. 1), the sampling location
(eq. 2), bilinear sampling (eq. 3), the forward (eq. 4), the backward (eq. 5-7), the relation to
``deform_conv2d`` (eq. 9) and the layer's softmax (eq. 10); and docs/derivations/dcnv4.md: the packed
layout (eq. 1), the forward without softmax (eq. 2) and the backward into the packed channels (eq. 3).

1. the NHWC layout, the groups, the point order and the offsets' (dx, dy) pairs;
2. the sampling points of one output pixel, against ``numpyconv.sampling_locations``;
3. the forward by hand with a softmax over each group's points; DCNv3 as a depthwise
   ``deform_conv2d``; fast op against ``numpyconv.reference.dcnv3`` / ``dcnv3_backward``;
4. DCNv4: packing by hand against ``numpyconv.pack_offset_mask``; unnormalised weights; DCNv3 =
   DCNv4 on a softmaxed mask; fast op against ``numpyconv.reference.dcnv4`` / ``dcnv4_backward``;
5. ``numpyconv.gradcheck`` on both ops.

Run (from the repository root):
    PYTHONPATH=. python examples/dcnv3_dcnv4.py
"""
import math

import numpy as np

import numpyconv as nc
from numpyconv import reference

np.set_printoptions(linewidth=110, precision=3, suppress=True)
RNG = np.random.default_rng(0)

N, H, W, G, D, K = 1, 5, 5, 2, 3, 3               # 2 groups of 3 channels, 3x3 kernel
P = K * K                                         # points per group
GEOMETRY = dict(kernel_size=K, stride=1, padding=1, dilation=1, group=G, group_channels=D)


def same(what, a, b, tol=1e-10):
    """Print and assert ``max |a - b| <= tol * max(1, max |b|)``."""
    err = float(np.max(np.abs(np.asarray(a) - b), initial=0.0))
    print(f'  {what} '.ljust(74, '.') + f' max |difference| {err:.1e}')
    assert err <= tol * max(1.0, float(np.max(np.abs(b), initial=0.0))), what


def flat(arrays):
    return np.concatenate([a.ravel() for a in arrays])


def bilinear(v, h, w):
    """B(v; h, w) of a 2-D map, zero outside (deformable.md eq. 1, dcnv3.md eq. 3)."""
    h0, w0 = math.floor(h), math.floor(w)
    lh, lw = h - h0, w - w0
    total = 0.0
    for a, b, k in ((h0, w0, (1 - lh) * (1 - lw)), (h0, w0 + 1, (1 - lh) * lw),
                    (h0 + 1, w0, lh * (1 - lw)), (h0 + 1, w0 + 1, lh * lw)):
        if 0 <= a < v.shape[0] and 0 <= b < v.shape[1]:
            total += k * v[a, b]
    return total


def softmax_over_points(logits):
    """The DCNv3 layer's mask (eq. 10): softmax over the P points of each group, per pixel."""
    z = logits.reshape(*logits.shape[:-1], G, P)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).reshape(logits.shape)


X = RNG.standard_normal((N, H, W, G * D))                     # channels last; group g: channels gD .. gD+D-1
OFFSET = 0.8 * RNG.standard_normal((N, H, W, G * P * 2))      # point q = gP + p: [2q] = dx, [2q + 1] = dy
MASK = softmax_over_points(RNG.standard_normal((N, H, W, G * P)))


def column_major(p):
    """Point ``p`` of a group is kernel column ``i = p // K``, kernel row ``j = p % K`` (eq. 1)."""
    return p // K, p % K


def location(u, v, g, p, stride=1, pad=1, dilation=1, offset_scale=1.0):
    """``(h, w)`` where point ``p`` of group ``g`` samples for output pixel ``(u, v)`` (eq. 2).

    In exact arithmetic ``h = u*stride - pad + c - offset_scale*c + offset_scale*(j*dilation + dy)``
    (likewise ``w``). It is computed here as InternImage's pure-PyTorch core computes it (eq. 2a-2b):
    the grid part in float32 and in units of the padded size, which moves the point by < 1e-6 pixel.
    """
    i, j = column_major(p)
    q = g * P + p                                 # the point's index in the offset and mask channels
    dx, dy = OFFSET[0, u, v, 2 * q], OFFSET[0, u, v, 2 * q + 1]
    c = dilation * (K - 1) // 2                   # offset_scale scales the grid about its centre
    hp, wp = H + 2 * pad, W + 2 * pad             # the padded size
    f32 = np.float32
    base_h = float(f32(u * stride + c + 0.5) / f32(hp) + f32(j * dilation - c) / f32(hp) * f32(offset_scale))
    base_w = float(f32(v * stride + c + 0.5) / f32(wp) + f32(i * dilation - c) / f32(wp) * f32(offset_scale))
    h = (2 * (base_h + dy * offset_scale / hp) - 1 + 1) * (hp / 2) - 0.5 - pad   # (eq. 2a-2b)
    w = (2 * (base_w + dx * offset_scale / wp) - 1 + 1) * (wp / 2) - 0.5 - pad
    return h, w


def layout():
    print('== 1. layout: NHWC, groups, points in column-major order (dcnv3.md eq. 1)')
    print(f'  x {X.shape} = (N, H, W, G*D) with G = {G} groups of D = {D} channels')
    print(f'  offset {OFFSET.shape} = (N, Ho, Wo, G*P*2), mask {MASK.shape} = (N, Ho, Wo, G*P), P = {P}')
    grid = np.zeros((K, K), dtype=int)
    for p in range(P):
        i, j = column_major(p)
        grid[j, i] = p
    print(f'  point numbers on the kernel (rows down, columns across):\n{grid}')
    print(f'  the softmax makes each group\'s {P} mask values sum to 1: '
          f'{MASK[0, 0, 0].reshape(G, P).sum(axis=1)} at pixel (0, 0)')


def sampling_points(u=2, v=1, g=1):
    print(f'\n== 2. the sampling points of group {g} at output pixel (row {u}, column {v}) (eq. 2)')
    print('   p  col i  row j    (dx, dy)            sampled (h, w)')
    ours = np.array([location(u, v, g, p) for p in range(P)])
    for p, (h, w) in enumerate(ours):
        (i, j), q = column_major(p), g * P + p
        dx, dy = OFFSET[0, u, v, 2 * q], OFFSET[0, u, v, 2 * q + 1]
        print(f'  {p:>2}    {i}      {j}     ({dx:>6.3f}, {dy:>6.3f})    ({h:>6.3f}, {w:>6.3f})')
    locations, weights = nc.sampling_locations('dcnv3', X, OFFSET, MASK, **GEOMETRY)
    print(f'  numpyconv.sampling_locations: {locations.shape}, points in ROW-major order, (x, y) pairs')
    row_major = [j * K + i for i, j in map(column_major, range(P))]   # where each of our points lands
    same('our (h, w) == locations[0, u, v, g, row-major index, ::-1]', ours,
         locations[0, u, v, g, row_major, ::-1])
    same('mask == weights (reordered the same way)', MASK[0, u, v, g * P:(g + 1) * P],
         weights[0, u, v, g, row_major])


def dcnv3():
    print('\n== 3. DCNv3 forward by hand: y[n,u,v,gD+c] = sum_p mask * B(x[..., gD+c]; h, w) (eq. 4)')
    y = np.zeros((N, H, W, G * D))
    for u, v, g, p in np.ndindex(H, W, G, P):
        h, w = location(u, v, g, p)
        for c in range(g * D, (g + 1) * D):       # the group's channels share the point and its weight
            y[0, u, v, c] += MASK[0, u, v, g * P + p] * bilinear(X[0, :, :, c], h, w)
    args = (X, OFFSET, MASK)
    y_fast, cache = nc.dcnv3_forward(*args, **GEOMETRY)
    print(f'  y {y.shape}: no weights inside the op (depthwise per group); the layer\'s linears mix channels')
    same('y == dcnv3_forward', y, y_fast)

    # the same sampling in torchvision's layout (eq. 9): NCHW, row-major points, (dy, dx) pairs
    offset_tv = (OFFSET.reshape(N, H, W, G, K, K, 2)[..., ::-1]        # (dx, dy) -> (dy, dx)
                 .transpose(0, 3, 5, 4, 6, 1, 2).reshape(N, 2 * G * P, H, W))   # column- -> row-major
    mask_tv = MASK.reshape(N, H, W, G, K, K).transpose(0, 3, 5, 4, 1, 2).reshape(N, G * P, H, W)
    ones = np.ones((G * D, 1, K, K))              # depthwise (groups = G*D), all-ones weight, G offset groups
    y_tv, _ = nc.deform_conv2d_forward(X.transpose(0, 3, 1, 2), offset_tv, ones, padding=1, mask=mask_tv)
    # deform_conv2d samples at the exact eq. 2; DCNv3's float32 grid part moves points < 1e-6 pixel
    same('y == deform_conv2d (depthwise, weight 1, offsets re-ordered)', y, y_tv.transpose(0, 2, 3, 1),
         tol=1e-5)

    same('dcnv3_forward == reference.dcnv3', y_fast, reference.dcnv3(*args, **GEOMETRY))
    dy = RNG.standard_normal(y.shape)
    grads = nc.dcnv3_backward(dy, cache)
    print(f'  backward: dx {grads[0].shape}, doffset {grads[1].shape}, dmask {grads[2].shape}')
    same('dcnv3_backward == reference.dcnv3_backward', flat(grads),
         flat(reference.dcnv3_backward(dy, *args, **GEOMETRY)))
    return y_fast


def dcnv4(y3):
    channels = math.ceil(3 * G * P / 8) * 8        # dcnv4.md eq. 1: 3GP = 54 used, padded to 56
    print(f'\n== 4. DCNv4: one packed offset_mask (N, Ho, Wo, {channels}) (dcnv4.md eq. 1)')
    om = np.zeros((N, H, W, channels))
    for g in range(G):                             # group g: [2P offsets (dx, dy) | P mask] at channel 3gP
        om[..., 3 * g * P:3 * g * P + 2 * P] = OFFSET[..., 2 * g * P:2 * (g + 1) * P]
        om[..., 3 * g * P + 2 * P:3 * (g + 1) * P] = MASK[..., g * P:(g + 1) * P]
    print(f'  group 0: channels 0-{2 * P - 1} offsets, {2 * P}-{3 * P - 1} mask; group 1: {3 * P}-'
          f'{5 * P - 1} offsets, {5 * P}-{6 * P - 1} mask;\n  {6 * P}-{channels - 1}: padding, never read')
    same('our packing == numpyconv.pack_offset_mask', om, nc.pack_offset_mask(OFFSET, MASK, G))
    off_back, mask_back = nc.unpack_offset_mask(om, G, P)
    same('unpack_offset_mask gives offset and mask back', flat([off_back, mask_back]), flat([OFFSET, MASK]))

    y4, cache = nc.dcnv4_forward(X, om, **GEOMETRY)
    same('DCNv4 on the softmaxed mask == DCNv3 (the bridge)', y4, y3)
    # DCNv4 never normalises: the mask is any real weight, and y is linear in it
    raw = om.copy()
    for g in range(G):
        raw[..., 3 * g * P + 2 * P:3 * (g + 1) * P] = RNG.standard_normal((N, H, W, P))
    _, weights = nc.sampling_locations('dcnv4', X, raw, **GEOMETRY)
    print(f'  an unnormalised mask: the weights of pixel (0, 0) sum to {weights[0, 0, 0].sum(axis=-1)} '
          'per group')
    scaled = raw.copy()
    for g in range(G):
        scaled[..., 3 * g * P + 2 * P:3 * (g + 1) * P] *= 3
    same('3 x mask -> 3 x y (no softmax anywhere)', nc.dcnv4_forward(X, scaled, **GEOMETRY)[0],
         3 * nc.dcnv4_forward(X, raw, **GEOMETRY)[0])

    same('dcnv4_forward == reference.dcnv4', y4, reference.dcnv4(X, om, **GEOMETRY))
    dy = RNG.standard_normal(y4.shape)
    dx, dom = nc.dcnv4_backward(dy, cache)
    print(f'  backward: dx {dx.shape}, doffset_mask {dom.shape}')
    same('dcnv4_backward == reference.dcnv4_backward', flat([dx, dom]),
         flat(reference.dcnv4_backward(dy, X, om, **GEOMETRY)))
    assert not dom[..., 3 * G * P:].any()         # eq. 3: the padding channels get exactly 0
    print('  the padding channels of doffset_mask are exactly 0 (eq. 3)')
    return om


def gradient_check(om):
    print('\n== 5. numpyconv.gradcheck on both ops (every element)')
    locations, _ = nc.sampling_locations('dcnv3', X, OFFSET, MASK, **GEOMETRY)
    distance = np.abs(locations - np.round(locations)).min()
    print(f'  closest sampling coordinate to an integer (a kink of B): {distance:.1e}; the step is 1e-6')
    assert distance > 1e-5
    names = ['x', 'offset', 'mask']
    report = nc.gradcheck(lambda *a: nc.dcnv3_forward(*a, **GEOMETRY), nc.dcnv3_backward, (X, OFFSET, MASK),
                          names=names)
    print('dcnv3:', report, sep='\n')
    assert report.ok
    report = nc.gradcheck(lambda *a: nc.dcnv4_forward(*a, **GEOMETRY), nc.dcnv4_backward, (X, om),
                          names=['x', 'offset_mask'])
    print('dcnv4:', report, sep='\n')
    assert report.ok


if __name__ == '__main__':
    layout()
    sampling_points()
    gradient_check(dcnv4(dcnv3()))
