"""Involution (RedNet): the kernel is generated from the input at every output position and shared
by the channels of a group, where a convolution shares one kernel over all positions and mixes the
channels.

Follows docs/derivations/involution.md: the geometry (eq. 1), the op (eq. 2), its two gradients
(eq. 3 for the kernel, eq. 4 for the input), the special case of a kernel constant over positions
(a depthwise convolution), the layer's kernel generation (eq. 6-7) and the cost (eq. 10).

1. kernel generation: a small per-pixel network turns the input at (i, j) into a KxK kernel per
   group, so every position and every sample has its own;
2. the forward by hand, with im2col (the official unfold formula), against the fast op and
   ``numpyconv.reference.involution``;
3. with one kernel shared by every position, involution is a depthwise convolution;
4. the backward by hand (eq. 3-4), and the fast backward against
   ``numpyconv.reference.involution_backward`` (stride 2, dilation 2);
5. parameters and multiply-adds of an involution layer next to a convolution (``numpyconv.count``);
6. ``numpyconv.gradcheck`` on the op.

Run (from the repository root):
    PYTHONPATH=. python examples/involution.py
"""
import numpy as np

import numpyconv as nc
from numpyconv import reference

np.set_printoptions(linewidth=110, precision=3, suppress=True)
RNG = np.random.default_rng(0)
N, C, HW, K, G = 2, 4, 6, 3, 2                    # 4 channels in 2 groups of C_g = 2, 3x3 kernels
C_G = C // G


def same(what, a, b, tol=1e-10):
    """Print and assert ``max |a - b| <= tol * max(1, max |b|)``."""
    err = float(np.max(np.abs(a - b), initial=0.0))
    print(f'  {what} '.ljust(74, '.') + f' max |difference| {err:.1e}')
    assert err <= tol * max(1.0, float(np.max(np.abs(b), initial=0.0))), what


def generate_kernel(x, w1, w2, b2):
    """``kernel[n, :, i, j] = W2 relu(W1 x[n, :, i, j]) + b2``: two 1x1 convolutions (eq. 7; the
    layer also has a BatchNorm after W1, left out here)."""
    hidden = np.maximum(np.einsum('rc,ncij->nrij', w1, x), 0)
    return np.einsum('kr,nrij->nkij', w2, hidden) + b2[None, :, None, None]


def involution_by_hand(x, kernel, stride=1, dilation=1):
    """Eq. 2 with im2col: ``y[n, c, i, j] = sum_p kernel[n, g(c)*K*K + p, i, j] * cols[n, c, p, i, j]``."""
    pad = dilation * (K - 1) // 2                 # eq. 1: the official nn.Unfold padding
    cols = nc.im2col(x, K, stride, pad, dilation)                 # (N, C, K, K, Ho, Wo)
    n, _, _, _, ho, wo = cols.shape
    cols = cols.reshape(n, G, C_G, K * K, ho, wo)                 # channel c = g*C_g + c' (contiguous groups)
    return (kernel.reshape(n, G, 1, K * K, ho, wo) * cols).sum(axis=3).reshape(n, C, ho, wo), cols


def generated_kernels():
    print('== 1. a kernel generated at every position (eq. 7)')
    x = RNG.standard_normal((N, C, HW, HW))
    w1, w2 = RNG.standard_normal((C // 2, C)), RNG.standard_normal((G * K * K, C // 2))   # reduction 2
    kernel = generate_kernel(x, w1, w2, RNG.standard_normal(G * K * K))
    print(f'  x {x.shape} -> W1 {w1.shape} -> relu -> W2 {w2.shape} -> kernel {kernel.shape} '
          '= (N, G*K*K, Ho, Wo)')
    print(f'  group 0 at position (0, 0):\n{kernel[0, :K * K, 0, 0].reshape(K, K)}')
    print(f'  group 0 at position (3, 4):\n{kernel[0, :K * K, 3, 4].reshape(K, K)}')
    assert not np.allclose(kernel[0, :K * K, 0, 0], kernel[0, :K * K, 3, 4])       # positions differ
    assert not np.allclose(kernel[0, :, 3, 4], kernel[1, :, 3, 4])                 # and so do samples
    print(f'  a 3x3 convolution {C} -> {C} holds one kernel per (output, input) channel pair, '
          f'{C * C * K * K} weights,\n  shared by every position; involution mixes no channels: '
          f'y has the {C} channels of x')
    return x, kernel


def forward(x, kernel):
    print('\n== 2. the forward by hand (eq. 2)')
    y, cols = involution_by_hand(x, kernel)
    print(f'  im2col(x) {(N, C, K, K, HW, HW)} -> per group {cols.shape}; kernel -> '
          f'{(N, G, 1, K * K, HW, HW)};\n  y = sum over the K*K points {y.shape}')
    y_fast, cache = nc.involution_forward(x, kernel, K)
    same('y == involution_forward', y, y_fast)
    same('y == reference.involution', y, reference.involution(x, kernel, K))
    return y_fast, cache, cols


def shared_kernel(x):
    print('\n== 3. one kernel per group shared by every position: a depthwise convolution')
    w_group = RNG.standard_normal((G, K * K))
    kernel = np.broadcast_to(w_group.reshape(1, G * K * K, 1, 1), (N, G * K * K, HW, HW)).copy()
    w_dw = np.repeat(w_group.reshape(G, 1, K, K), C_G, axis=0)   # channel c gets its group's kernel
    print(f'  kernel {kernel.shape}, constant over n, i, j -> depthwise weight {w_dw.shape}')
    same('involution == depthwise_conv2d(padding 1)', nc.involution_forward(x, kernel, K)[0],
         nc.depthwise_conv2d_forward(x, w_dw, padding=1)[0])


def backward(x, kernel, y, cache, cols):
    print('\n== 4. the backward: eq. 3 (kernel), eq. 4 (input)')
    dy = RNG.standard_normal(y.shape)
    dy_groups = dy.reshape(N, G, C_G, 1, HW, HW)
    dkernel = (dy_groups * cols).sum(axis=2).reshape(kernel.shape)          # eq. 3: sum over the group
    dcols = kernel.reshape(N, G, 1, K * K, HW, HW) * dy_groups              # eq. 4: kernel * dy, then
    dx = nc.col2im(dcols.reshape(N, C, K, K, HW, HW), (HW, HW), 1, 1)      # add back where im2col read
    dx_fast, dkernel_fast = nc.involution_backward(dy, cache)
    same('dkernel (eq. 3) == involution_backward', dkernel, dkernel_fast)
    same('dx = col2im(kernel * dy) (eq. 4) == involution_backward', dx, dx_fast)
    ip = np.vdot(y, dy)                           # y is linear in x and in the kernel separately
    same('<y, dy> == <x, dx> == <kernel, dkernel>', np.array([np.vdot(x, dx), np.vdot(kernel, dkernel)]),
         np.array([ip, ip]))

    stride, dilation = 2, 2
    pad = dilation * (K - 1) // 2
    ho = (HW + 2 * pad - dilation * (K - 1) - 1) // stride + 1       # eq. 1: 3
    kernel = RNG.standard_normal((N, G * K * K, ho, ho))
    y, cache = nc.involution_forward(x, kernel, K, stride, dilation)
    print(f'  stride {stride}, dilation {dilation}: x {x.shape}, kernel {kernel.shape} -> y {y.shape}')
    same('by hand == involution_forward', involution_by_hand(x, kernel, stride, dilation)[0], y)
    same('involution_forward == reference.involution', y,
         reference.involution(x, kernel, K, stride, dilation))
    dy = RNG.standard_normal(y.shape)
    grads = np.concatenate([g.ravel() for g in nc.involution_backward(dy, cache)])
    loops = reference.involution_backward(dy, x, kernel, K, stride, dilation)
    same('involution_backward == reference.involution_backward', grads,
         np.concatenate([g.ravel() for g in loops]))


def cost():
    print('\n== 5. cost at 56x56, 64 channels, 7x7 (numpyconv.count; eq. 10)')
    shape = (1, 64, 56, 56)
    inv_params, inv_macs = nc.count(nc.Involution2d(64, 7), shape)   # reduction 4, groups of 16 channels
    conv_params, conv_macs = nc.count(nc.Conv2d(64, 64, 7, padding=3, bias=False), shape)
    print(f'  Involution2d(64, 7): params {inv_params:>7,}  multiply-adds {inv_macs:>12,}')
    print(f'  Conv2d(64, 64, 7):   params {conv_params:>7,}  multiply-adds {conv_macs:>12,}')
    c, c_r, g, k2, hw = 64, 64 // 4, 64 // 16, 49, 56 * 56
    assert inv_macs == hw * (c * c_r + c_r * g * k2) + hw * c * k2    # generation + eq. 2
    assert conv_macs == hw * c * c * k2


def gradient_check():
    print('\n== 6. numpyconv.gradcheck (stride 2, dilation 2): every element of x and kernel')
    x = RNG.standard_normal((N, C, HW, HW))
    kernel = RNG.standard_normal((N, G * K * K, 3, 3))
    report = nc.gradcheck(lambda a, b: nc.involution_forward(a, b, K, 2, 2), nc.involution_backward,
                          (x, kernel), names=['x', 'kernel'])
    print(report)
    assert report.ok


if __name__ == '__main__':
    x0, kernel0 = generated_kernels()
    forward_results = forward(x0, kernel0)
    shared_kernel(x0)
    backward(x0, kernel0, *forward_results)
    cost()
    gradient_check()
