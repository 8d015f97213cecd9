"""Octave convolution: a high-frequency part at full resolution, a low-frequency part at half
resolution, four convolutions between them, and what that saves.

Follows docs/derivations/octave.md: the channel split (eq. 1) and the four paths (eq. 2), average
pooling P (eq. 3) and nearest upsampling U (eq. 4), the forward at stride 1 and 2 (eq. 5-7), the
adjoints of P and U (eq. 10-11) used by the backward pass (eq. 12-17), and the multiply-add count
(eq. 18).

1. the split of one feature map into (x_h, x_l), and a first layer that creates it;
2. the four paths by hand, with the shape of every intermediate, at stride 1 and at stride 2;
3. the backward pass: P^T and U^T by their inner-product definition, then the fast backward against
   ``numpyconv.reference.octave_conv2d_backward``;
4. the multiply-add saving with ``numpyconv.count``;
5. ``numpyconv.gradcheck`` on the op (both outputs, all six inputs).

Run (from the repository root):
    PYTHONPATH=. python examples/octave.py
"""
import numpy as np

import numpyconv as nc
from numpyconv import reference

np.set_printoptions(linewidth=110)


def same(what, a, b, tol=1e-10):
    """Print and assert ``max |a - b| <= tol * max(1, max |b|)``."""
    err = float(np.max(np.abs(a - b), initial=0.0))
    print(f'  {what} '.ljust(74, '.') + f' max |difference| {err:.1e}')
    assert err <= tol * max(1.0, float(np.max(np.abs(b), initial=0.0))), what


def pool(z):
    """P (eq. 3): the mean of each 2x2 block, ``(N, C, H, W) -> (N, C, H//2, W//2)``."""
    n, c, h, w = z.shape
    return z[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def upsample(z):
    """U (eq. 4): every pixel repeated into a 2x2 block, ``(N, C, H, W) -> (N, C, 2H, 2W)``."""
    return z.repeat(2, axis=2).repeat(2, axis=3)


def conv(z, w):
    """``K_W(z)``: the stride-1 'same' 3x3 convolution every path uses."""
    return nc.conv2d_forward(z, w, padding=1)[0]


RNG = np.random.default_rng(0)
C, ALPHA, H = 8, 0.5, 8
C_L = int(ALPHA * C)                                 # eq. 1: low channels, truncated
C_H = C - C_L


def split():
    print(f'== 1. the split (eq. 1): C = {C}, alpha = {ALPHA} -> C_h = {C_H} high, C_l = {C_L} low channels')
    layer = nc.OctaveConv2d(C, C, 3, alpha_in=ALPHA, alpha_out=ALPHA, padding=1)
    for key, value in layer.state_dict().items():    # the four paths of eq. 2
        print(f'  {key:<16} {value.shape}')
    stored = (C_H * H * H + C_L * (H // 2) ** 2) / (C * H * H)
    print(f'a map of {C} channels at {H}x{H} is stored as x_h ({C_H}, {H}, {H}) + x_l ({C_L}, {H // 2}, '
          f'{H // 2}): {stored:.3f} of the memory')

    # a first layer (no low input) creates the pair: y_h = K_hh(x), y_l = K_hl(P x)
    x = RNG.standard_normal((2, C, H, H))
    w_hh, w_hl = RNG.standard_normal((C_H, C, 3, 3)), RNG.standard_normal((C_L, C, 3, 3))
    (y_h, y_l), _ = nc.octave_conv2d_forward(x, None, w_hh, w_hl, None, None, padding=1)
    print(f'first layer: x {x.shape} -> y_h {y_h.shape}, y_l {y_l.shape}')
    same('y_h == K_hh(x)', y_h, conv(x, w_hh))
    same('y_l == K_hl(P x)', y_l, conv(pool(x), w_hl))


def four_paths():
    print('\n== 2. the four paths of a middle layer (eq. 5-7)')
    x_h, x_l = RNG.standard_normal((2, C_H, H, H)), RNG.standard_normal((2, C_L, H // 2, H // 2))
    w = {path: RNG.standard_normal((C_H if path[-1] == 'h' else C_L, C_H if path[0] == 'h' else C_L, 3, 3))
         for path in ('hh', 'hl', 'lh', 'll')}
    print(f'x_h {x_h.shape}, x_l {x_l.shape}')

    print('stride 1:')
    y_hh = conv(x_h, w['hh'])
    y_hl = conv(pool(x_h), w['hl'])                  # high -> low: pool, then convolve
    y_lh = upsample(conv(x_l, w['lh']))              # low -> high: convolve, then upsample
    y_ll = conv(x_l, w['ll'])
    for name, value in (('Y_hh = K_hh(x_h)', y_hh), ('Y_hl = K_hl(P x_h)', y_hl),
                        ('Y_lh = U K_lh(x_l)', y_lh), ('Y_ll = K_ll(x_l)', y_ll)):
        print(f'  {name:<20} {value.shape}')
    args = (x_h, x_l, w['hh'], w['hl'], w['lh'], w['ll'])
    (y_h, y_l), _ = nc.octave_conv2d_forward(*args, padding=1)
    same('y_h == Y_hh + Y_lh', y_h, y_hh + y_lh)
    same('y_l == Y_hl + Y_ll', y_l, y_hl + y_ll)

    print('stride 2: pool first, then stride-1 convolutions; K_lh reads x_l as it is, no upsampling:')
    y_hh, y_hl = conv(pool(x_h), w['hh']), conv(pool(pool(x_h)), w['hl'])
    y_lh, y_ll = conv(x_l, w['lh']), conv(pool(x_l), w['ll'])
    for name, value in (('Y_hh = K_hh(P x_h)', y_hh), ('Y_hl = K_hl(P P x_h)', y_hl),
                        ('Y_lh = K_lh(x_l)', y_lh), ('Y_ll = K_ll(P x_l)', y_ll)):
        print(f'  {name:<20} {value.shape}')
    (y_h, y_l), _ = nc.octave_conv2d_forward(*args, stride=2, padding=1)
    same('y_h == Y_hh + Y_lh (stride 2)', y_h, y_hh + y_lh)
    same('y_l == Y_hl + Y_ll (stride 2)', y_l, y_hl + y_ll)

    for stride in (1, 2):
        (y_h, y_l), _ = nc.octave_conv2d_forward(*args, stride=stride, padding=1)
        ref_h, ref_l = reference.octave_conv2d(*args, stride=stride, padding=1)
        same(f'octave_conv2d_forward == reference.octave_conv2d (stride {stride})',
             np.concatenate([y_h.ravel(), y_l.ravel()]), np.concatenate([ref_h.ravel(), ref_l.ravel()]))
    return args


def backward(args):
    print('\n== 3. backward: the adjoints of P and U (eq. 10-11), then every gradient (eq. 12-17)')
    z, g = RNG.standard_normal((1, 1, 6, 6)), RNG.standard_normal((1, 1, 3, 3))
    p_t = upsample(g) / 4                            # eq. 10: P^T spreads g/4 over each 2x2 block
    same('<P z, g> == <z, P^T g>', np.vdot(pool(z), g), np.vdot(z, p_t))
    u_t = pool(z) * 4                                # eq. 11: U^T sums each 2x2 block
    same('<U g, z> == <g, U^T z>', np.vdot(upsample(g), z), np.vdot(g, u_t))

    for stride in (1, 2):
        (y_h, y_l), cache = nc.octave_conv2d_forward(*args, stride=stride, padding=1)
        dout = (RNG.standard_normal(y_h.shape), RNG.standard_normal(y_l.shape))   # a pair, like the output
        grads = nc.octave_conv2d_backward(dout, cache)
        loops = reference.octave_conv2d_backward(dout, *args, stride=stride, padding=1)
        print(f'stride {stride}: dout = (dy_h {dout[0].shape}, dy_l {dout[1].shape}) -> '
              f'dx_h {grads[0].shape}, dx_l {grads[1].shape}, 4 x dw')
        same('the six gradients == reference.octave_conv2d_backward',
             np.concatenate([g.ravel() for g in grads]), np.concatenate([g.ravel() for g in loops]))


def cost():
    print('\n== 4. the multiply-add saving (eq. 18), 64 -> 64 channels, 3x3, 56x56, alpha 0.5')
    shape = (1, 64, 56, 56)
    _, octave_macs = nc.count(nc.OctaveConv2d(64, 64, 3, padding=1), shape)
    _, plain_macs = nc.count(nc.Conv2d(64, 64, 3, padding=1, bias=False), shape)
    share = {'hh': (1 - ALPHA) ** 2, 'hl': ALPHA * (1 - ALPHA) / 4, 'lh': ALPHA * (1 - ALPHA) / 4,
             'll': ALPHA ** 2 / 4}                 # each path's fraction of the plain convolution's MACs
    print(f'  Conv2d {plain_macs:,} MACs, OctaveConv2d {octave_macs:,} MACs: '
          f'ratio {octave_macs / plain_macs}')
    print('  per path: ' + ', '.join(f'{path} {value}' for path, value in share.items())
          + f' -> sum {sum(share.values())} = 1 - 3/4 alpha (2 - alpha)')
    assert octave_macs / plain_macs == sum(share.values()) == 1 - 0.75 * ALPHA * (2 - ALPHA)


def gradient_check():
    print('\n== 5. numpyconv.gradcheck: both outputs, all six inputs')
    small = (RNG.standard_normal((1, 2, 4, 4)), RNG.standard_normal((1, 2, 2, 2)),   # x_h, x_l: 2 + 2
             *RNG.standard_normal((4, 2, 2, 3, 3)))      # channels, 4x4 (small: two forwards per element)
    names = ['x_h', 'x_l', 'w_h2h', 'w_h2l', 'w_l2h', 'w_l2l']
    report = nc.gradcheck(lambda *a: nc.octave_conv2d_forward(*a, padding=1), nc.octave_conv2d_backward,
                          small, names=names)
    print(report)
    assert report.ok


if __name__ == '__main__':
    split()
    backward(four_paths())
    cost()
    gradient_check()
