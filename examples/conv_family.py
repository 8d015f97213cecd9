"""Standard convolution from scratch: im2col by hand, one GEMM, the three backward equations, and
depthwise / pointwise / separable convolution as special cases.

Follows docs/derivations/conv.md: the forward sum (eq. 1) and output size (eq. 2), im2col and its
adjoint col2im (eq. 3), the GEMM (eq. 4), the backward pass (eq. 5 bias, eq. 6 weight, eq. 7 input,
eq. 7a the stride-1 transposed convolution), depthwise (eq. 8-10), pointwise (eq. 11-12), separable
(eq. 13-14) and the transposed convolution (eq. 15-16).

1. forward by hand on a 2-channel 4x4 input with integer values, so every printed number is exact;
2. backward by hand: db, dW as the correlation of x with dy, dx as col2im of W^T dy;
3. at stride 1 the input gradient is itself a convolution (flipped, transposed kernel);
4. depthwise, pointwise and separable as special cases, their costs with ``numpyconv.count``;
5. ``numpyconv.gradcheck`` on conv2d with stride, padding, dilation and groups.

Every fast op is compared with its plain-loop definition in ``numpyconv.reference``.

Run (from the repository root):
    PYTHONPATH=. python examples/conv_family.py
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


def windows(a, p, q, stride, dilation, out_hw):
    """``a[..., i*s + p*d, j*s + q*d]`` for every output pixel ``(i, j)``: the strided slice that
    kernel point ``(p, q)`` reads (eq. 1)."""
    (ho, wo), (r, c) = out_hw, (p * dilation, q * dilation)
    return a[..., r:r + stride * (ho - 1) + 1:stride, c:c + stride * (wo - 1) + 1:stride]


def forward_by_hand():
    print('== 1. forward by hand: im2col (eq. 3), then one GEMM (eq. 4)')
    x = np.arange(32, dtype=np.float64).reshape(1, 2, 4, 4)        # (N, C_in, H, W)
    w = np.random.default_rng(0).integers(-1, 2, size=(3, 2, 3, 3)).astype(np.float64)  # (C_out, C_in, k, k)
    b = np.array([1.0, 0.0, -1.0])
    stride, pad, dil = 2, 1, 1
    ho = (4 + 2 * pad - dil * (3 - 1) - 1) // stride + 1            # eq. 2: floor(3 / 2) + 1 = 2
    print(f'x {x.shape}, W {w.shape}, b {b.shape}, stride {stride}, padding {pad} -> Ho = Wo = {ho}')

    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))      # zero padding
    print(f'padded input xp {xp.shape}, channel 0:\n{xp[0, 0].astype(int)}')

    # cols[n, c, p, q, i, j] = xp[n, c, i*s + p*d, j*s + q*d]: one strided slice per kernel point
    cols = np.empty((1, 2, 3, 3, ho, ho))
    for p, q in np.ndindex(3, 3):
        cols[:, :, p, q] = windows(xp, p, q, stride, dil, (ho, ho))
    same('our columns == numpyconv.im2col (it never builds xp)', cols, nc.im2col(x, 3, stride, pad))

    x_cols = cols.reshape(2 * 3 * 3, ho * ho)                      # row c*9 + p*3 + q, column i*Wo + j
    w_rows = w.reshape(3, 2 * 3 * 3)                               # one row per output channel
    print(f'columns X_c {x_cols.shape}, shown transposed: row i*Wo + j holds the 18 values output pixel '
          f'(i, j) reads,\nordered (c, p, q) row-major:\n{x_cols.astype(int).T}')
    print(f'weight matrix W_r {w_rows.shape}:\n{w_rows.astype(int)}')
    y = (w_rows @ x_cols + b[:, None]).reshape(1, 3, ho, ho)        # eq. 4
    print(f'y = W_r X_c + b -> reshape {y.shape}:\n{y[0].astype(int)}')

    y_fast, cache = nc.conv2d_forward(x, w, b, stride=stride, padding=pad)
    same('y == numpyconv.conv2d_forward', y, y_fast)
    same('y == numpyconv.reference.conv2d (the loops of eq. 1)', y, reference.conv2d(x, w, b, stride, pad))
    return x, w, b, xp, cols, cache


def backward_by_hand(x, w, b, xp, cols, cache):
    print('\n== 2. backward by hand: eq. 5 (bias), eq. 6 (weight), eq. 7 (input)')
    stride, pad, ho = 2, 1, cols.shape[-1]
    dy = np.random.default_rng(1).integers(-2, 3, size=(1, 3, ho, ho)).astype(np.float64)
    dy_rows = dy.reshape(3, ho * ho)
    print(f'dy {dy.shape}:\n{dy[0].astype(int)}')

    db = dy.sum(axis=(0, 2, 3))                                    # eq. 5
    print(f'db = sum of dy over n, i, j: {db}')

    dw = (dy_rows @ cols.reshape(18, ho * ho).T).reshape(w.shape)  # eq. 6, GEMM form: dY X_c^T
    dw_corr = np.zeros_like(w)                                     # eq. 6, index form: a correlation
    for p, q in np.ndindex(3, 3):                                  # of xp with dy, point by point
        dw_corr[:, :, p, q] = np.einsum('noij,ncij->oc', dy, windows(xp, p, q, stride, 1, (ho, ho)))
    same('dW: dY X_c^T == correlation of x with dy', dw, dw_corr)

    dcols = (w.reshape(3, 18).T @ dy_rows).reshape(cols.shape)     # eq. 7: W_r^T dY, shaped as cols
    dxp = np.zeros_like(xp)                                        # col2im: add every column entry
    for p, q in np.ndindex(3, 3):                                  # back where im2col read it (+=:
        windows(dxp, p, q, stride, 1, (ho, ho))[...] += dcols[:, :, p, q]  # windows overlap)
    dx = dxp[:, :, pad:-pad, pad:-pad]                             # padding's adjoint: crop
    print(f'dx = crop(col2im(W_r^T dY)) {dx.shape}, channel 0:\n{dx[0, 0].astype(int)}')
    same('dx == numpyconv.col2im(W_r^T dY)', dx, nc.col2im(dcols, (4, 4), stride, pad))
    dx_t, _ = nc.conv_transpose2d_forward(dy, w, stride=stride, padding=pad, output_padding=1)
    same('dx == conv_transpose2d(dy, W) (eq. 15-16, output_padding 1)', dx, dx_t)

    ours = np.concatenate([dx.ravel(), dw.ravel(), db])
    fast = nc.conv2d_backward(dy, cache)                           # (dx, dweight, dbias)
    same('(dx, dW, db) == numpyconv.conv2d_backward', ours, np.concatenate([g.ravel() for g in fast]))
    loops = reference.conv2d_backward(dy, x, w, b, stride=stride, padding=pad)   # same arguments as forward
    same('(dx, dW, db) == numpyconv.reference.conv2d_backward', ours,
         np.concatenate([g.ravel() for g in loops]))


def stride_one_transposed_is_convolution():
    print('\n== 3. stride 1: the transposed convolution is a convolution (eq. 7a)')
    rng = np.random.default_rng(2)
    groups, k, pad, dil = 2, 3, 1, 2
    x, w = rng.standard_normal((2, 4, 7, 7)), rng.standard_normal((6, 2, k, k))   # C_g = 2, O_g = 3
    y, cache = nc.conv2d_forward(x, w, padding=pad, dilation=dil, groups=groups)
    dy = rng.standard_normal(y.shape)
    # W^T[g*C_g + c, o] = W[g*O_g + o, c] flipped in space: (C_in, O_g, kh, kw), still G groups
    w_t = w.reshape(groups, 3, 2, k, k).transpose(0, 2, 1, 3, 4).reshape(4, 3, k, k)[:, :, ::-1, ::-1]
    dx_conv, _ = nc.conv2d_forward(dy, np.ascontiguousarray(w_t), padding=dil * (k - 1) - pad,
                                   dilation=dil, groups=groups)
    print(f'x {x.shape}, W {w.shape}, groups {groups}, dilation {dil}: dy {dy.shape}\n'
          f'-> conv(dy padded by {dil * (k - 1) - pad}, W^T {w_t.shape}) {dx_conv.shape}')
    same('conv(dy, flipped W^T) == conv2d_backward dx', dx_conv, nc.conv2d_backward(dy, cache)[0])


def special_cases():
    print('\n== 4. depthwise (eq. 8), pointwise (eq. 11), separable (eq. 13) as special cases')
    rng = np.random.default_rng(3)
    c, mult, c_out = 4, 2, 5
    x = rng.standard_normal((2, c, 6, 6))
    w_dw, b_dw = rng.standard_normal((c * mult, 1, 3, 3)), rng.standard_normal(c * mult)
    w_pw, b_pw = rng.standard_normal((c_out, c * mult, 1, 1)), rng.standard_normal(c_out)

    m, _ = nc.depthwise_conv2d_forward(x, w_dw, b_dw, padding=1)
    print(f'depthwise: x {x.shape}, W_dw {w_dw.shape} (multiplier {mult}) -> m {m.shape}')
    same('depthwise == conv2d with groups = C_in (C_g = 1)', m,
         nc.conv2d_forward(x, w_dw, b_dw, padding=1, groups=c)[0])

    y = np.einsum('oc,ncij->noij', w_pw[:, :, 0, 0], m) + b_pw[:, None, None]   # eq. 11, per pixel
    print(f'pointwise: m {m.shape}, W_pw {w_pw.shape} -> y {y.shape}')
    same('W_pw[:, :, 0, 0] @ m[n, :, i, j] + b == pointwise_conv2d_forward', y,
         nc.pointwise_conv2d_forward(m, w_pw, b_pw)[0])

    y_sep, _ = nc.separable_conv2d_forward(x, w_dw, w_pw, b_dw, b_pw, padding=1)
    same('separable == pointwise(depthwise(x)) (eq. 13)', y_sep, y)
    # one dense kernel does the same: W_eff[o, c, p, q] = sum_t W_pw[o, c*mult + t] W_dw[c*mult + t, 0, p, q]
    w_eff = np.einsum('oct,ctpq->ocpq', w_pw[:, :, 0, 0].reshape(c_out, c, mult),
                      w_dw[:, 0].reshape(c, mult, 3, 3))
    b_eff = b_pw + w_pw[:, :, 0, 0] @ b_dw
    same('separable == conv2d with W_eff, b_eff', y_sep, nc.conv2d_forward(x, w_eff, b_eff, padding=1)[0])

    print('fast ops against the plain loops (stride 2), forward and backward:')
    cases = {'depthwise_conv2d': ((x, w_dw, b_dw), dict(stride=2, padding=1)),
             'pointwise_conv2d': ((x, rng.standard_normal((c_out, c, 1, 1)), b_pw), dict(stride=2)),
             'separable_conv2d': ((x, w_dw, w_pw, b_dw, b_pw), dict(stride=2, padding=1))}
    for op, (args, kwargs) in cases.items():
        out, cache = getattr(nc, op + '_forward')(*args, **kwargs)
        same(f'{op}_forward == reference.{op}', out, getattr(reference, op)(*args, **kwargs))
        dout = rng.standard_normal(out.shape)
        grads = getattr(nc, op + '_backward')(dout, cache)
        loops = getattr(reference, op + '_backward')(dout, *args, **kwargs)
        same(f'{op}_backward == reference.{op}_backward',
             np.concatenate([g.ravel() for g in grads]), np.concatenate([g.ravel() for g in loops]))

    print('costs on a 56x56 map, 32 -> 64 channels, 3x3 (numpyconv.count):')
    shape, c_in, c_out, hw = (1, 32, 56, 56), 32, 64, 56 * 56
    layers = {'Conv2d': nc.Conv2d(c_in, c_out, 3, padding=1),
              'DepthwiseConv2d': nc.DepthwiseConv2d(c_in, 3, padding=1),
              'PointwiseConv2d': nc.PointwiseConv2d(c_in, c_out),
              'SeparableConv2d': nc.SeparableConv2d(c_in, c_out, 3, padding=1)}
    costs = {name: nc.count(layer, shape) for name, layer in layers.items()}
    for name, (params, macs) in costs.items():
        print(f'  {name:<16} params {params:>6}   multiply-adds {macs:>11,}')
    assert costs['Conv2d'][1] == c_out * hw * c_in * 9                # eq. 1: one MAC per term
    assert costs['DepthwiseConv2d'][1] == c_in * hw * 9               # eq. 8
    assert costs['PointwiseConv2d'][1] == c_out * hw * c_in           # eq. 11
    ratio = costs['SeparableConv2d'][1] / costs['Conv2d'][1]
    print(f'  separable / standard = {ratio:.4f} = 1/C_out + 1/k^2 = {1 / c_out + 1 / 9:.4f}')
    assert abs(ratio - (1 / c_out + 1 / 9)) < 1e-12


def gradient_check():
    print('\n== 5. numpyconv.gradcheck: every element of x, W, b by central differences')
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 2, 3, 2)), rng.standard_normal(6)
    hyper = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    report = nc.gradcheck(lambda *a: nc.conv2d_forward(*a, **hyper), nc.conv2d_backward, (x, w, b),
                          names=['x', 'weight', 'bias'])
    print(f'conv2d {hyper}:\n{report}')
    assert report.ok


if __name__ == '__main__':
    backward_by_hand(*forward_by_hand())
    stride_one_transposed_is_convolution()
    special_cases()
    gradient_check()
