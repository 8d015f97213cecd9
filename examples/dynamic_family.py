"""The dynamic convolutions: one kernel per sample, mixed from several kernels by an attention that
looks at the sample. DY-CNN, CondConv, ODConv and KernelWarehouse, each written out by hand.

Follows docs/derivations/dynamic.md (DY-CNN: attention eq. 1-5, aggregation eq. 6, per-sample
convolution eq. 7, backward eq. 8-15), condconv.md (sigmoid routing eq. 1-5), odconv.md (the four
attentions eq. 1-6, aggregation and convolution eq. 7-11, backward eq. 13-26) and
kernel_warehouse.md (attention eq. 1-9, cell assembly eq. 10-11, convolution eq. 12, backward
eq. 13-27).

1. DY-CNN: softmax attention over K kernels, the aggregated kernel, the per-sample convolution (and
   why it is a grouped convolution);
2. CondConv: the same aggregation with independent sigmoid routing weights;
3. ODConv: the channel, filter, spatial and kernel attentions;
4. KernelWarehouse: cells of a shared warehouse, the signed-L1 attention (CAF), the assembly of a
   kernel from cells;
5. each fast op against its plain-loop reference (forward and backward), and ``numpyconv.gradcheck``
   on DY-CNN.

Run (from the repository root):
    PYTHONPATH=. python examples/dynamic_family.py
"""
import numpy as np

import numpyconv as nc
from numpyconv import reference

np.set_printoptions(linewidth=110, precision=3, suppress=True)
RNG = np.random.default_rng(0)
N, C_IN, C_OUT, HW, PAD = 2, 4, 4, 5, 1          # every op below: (2, 4, 5, 5) -> (2, 4, 5, 5), 3x3


def same(what, a, b, tol=1e-10):
    """Print and assert ``max |a - b| <= tol * max(1, max |b|)``."""
    err = float(np.max(np.abs(a - b), initial=0.0))
    print(f'  {what} '.ljust(80, '.') + f' max |difference| {err:.1e}')
    assert err <= tol * max(1.0, float(np.max(np.abs(b), initial=0.0))), what


def same_grads(what, grads, refs):
    """:func:`same` over a tuple of gradients (None entries must match None)."""
    assert [g is None for g in grads] == [r is None for r in refs], what
    flat = [(g.ravel(), r.ravel()) for g, r in zip(grads, refs) if g is not None]
    same(what, np.concatenate([g for g, _ in flat]), np.concatenate([r for _, r in flat]))


def show(**arrays):
    """``name (shape)`` for each array, lines of at most 100 characters."""
    lines = ['']
    for name, value in arrays.items():
        item = f'{name} {value.shape}'
        if lines[-1] and len(lines[-1]) + len(item) > 96:
            lines.append('')
        lines[-1] += (', ' if lines[-1] else '') + item
    print('\n'.join('  ' + line for line in lines))


def per_sample_conv(x, w_n, b_n=None):
    """``y[n] = conv(x[n]; w_n[n]) + b_n[n]``: conv2d_forward with a per-sample weight (N, C_out, ...)."""
    return nc.conv2d_forward(x, w_n, b_n, padding=PAD)[0]


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def check_against_reference(op, args, kwargs, note=''):
    """Fast forward and backward of ``numpyconv.<op>`` against ``numpyconv.reference.<op>``."""
    y, cache = getattr(nc, op + '_forward')(*args, **kwargs)
    same(f'{op}_forward == reference.{op}{note}', y, getattr(reference, op)(*args, **kwargs))
    dy = RNG.standard_normal(y.shape)
    grads = getattr(nc, op + '_backward')(dy, cache)
    same_grads(f'{op}_backward == reference.{op}_backward{note}', grads,
               getattr(reference, op + '_backward')(dy, *args, **kwargs))


def dy_cnn():
    print('== 1. DY-CNN: attention over K kernels (dynamic.md eq. 1-7)')
    K, D, T = 3, 2, 4.0                           # kernels, hidden width int(4 * 0.25) + 1, temperature
    x = RNG.standard_normal((N, C_IN, HW, HW))
    w, b = RNG.standard_normal((K, C_OUT, C_IN, 3, 3)), RNG.standard_normal((K, C_OUT))
    fc1, fc2, fc2_b = (RNG.standard_normal((D, C_IN, 1, 1)), RNG.standard_normal((K, D, 1, 1)),
                       RNG.standard_normal(K))   # 1x1 convolutions in the official module: 4-D
    show(x=x, weight=w, bias=b, fc1_weight=fc1, fc2_weight=fc2, fc2_bias=fc2_b)

    p = x.mean(axis=(2, 3))                                           # eq. 1: global average pool
    a = p @ fc1[:, :, 0, 0].T                                         # eq. 2
    r = np.maximum(a, 0)                                              # eq. 3
    z = r @ fc2[:, :, 0, 0].T + fc2_b                                 # eq. 4
    pi = softmax(z / T)                                               # eq. 5: one distribution per sample
    print(f'  p {p.shape} -> a {a.shape} -> z {z.shape} -> pi = softmax(z / T) {pi.shape}:\n{pi}')
    w_n = np.einsum('nk,koc...->noc...', pi, w)                       # eq. 6: one kernel per sample
    b_n = pi @ b
    y = per_sample_conv(x, w_n, b_n)                                  # eq. 7
    show(aggregated_kernel=w_n, aggregated_bias=b_n, y=y)

    args = (x, w, b, fc1, fc2, fc2_b)
    y_fast, _ = nc.dynamic_conv2d_forward(*args, temperature=T, padding=PAD)
    same('y == dynamic_conv2d_forward', y, y_fast)
    same('y == aggregated_conv2d_forward(x, pi, W, b) (the shared eq. 6-7)', y,
         nc.aggregated_conv2d_forward(x, pi, w, b, padding=PAD)[0])
    # the official "batch as groups" call: one grouped convolution, group n = sample n with kernel n
    y_groups, _ = nc.conv2d_forward(x.reshape(1, N * C_IN, HW, HW), w_n.reshape(N * C_OUT, C_IN, 3, 3),
                                    b_n.ravel(), padding=PAD, groups=N)
    same('y == conv2d(x as 1 x (N C_in), groups = N)', y, y_groups.reshape(y.shape))
    check_against_reference('aggregated_conv2d', (x, pi, w, b), dict(padding=PAD))
    check_against_reference('dynamic_conv2d', args, dict(temperature=T, padding=PAD))
    return args, T


def condconv():
    print('\n== 2. CondConv: sigmoid routing, no normalisation (condconv.md eq. 1-5)')
    E = 3                                                             # experts
    x = RNG.standard_normal((N, C_IN, HW, HW))
    w, b = RNG.standard_normal((E, C_OUT, C_IN, 3, 3)), RNG.standard_normal((E, C_OUT))
    route_w, route_b = RNG.standard_normal((E, C_IN)), RNG.standard_normal(E)   # a Linear: 2-D
    show(x=x, weight=w, bias=b, route_weight=route_w, route_bias=route_b)
    routing = sigmoid(x.mean(axis=(2, 3)) @ route_w.T + route_b)     # eq. 1-3
    print(f'  routing r {routing.shape}, each in (0, 1), rows sum to {routing.sum(axis=1)} (not 1):')
    print(routing)
    y = per_sample_conv(x, np.einsum('ne,eoc...->noc...', routing, w), routing @ b)   # eq. 4-5
    args = (x, w, b, route_w, route_b)
    same('y == condconv2d_forward', y, nc.condconv2d_forward(*args, padding=PAD)[0])
    check_against_reference('condconv2d', args, dict(padding=PAD))


def odconv():
    print('\n== 3. ODConv: four attentions (odconv.md eq. 1-11), BatchNorm in eval mode')
    n_k, A, T = 3, 16, 2.0                        # kernels, hidden max(int(4 * 0.0625), 16), temperature
    x = RNG.standard_normal((N, C_IN, HW, HW))
    w = RNG.standard_normal((n_k, C_OUT, C_IN, 3, 3))
    fc = RNG.standard_normal((A, C_IN, 1, 1))
    bn = (1 + 0.2 * RNG.standard_normal(A), 0.2 * RNG.standard_normal(A),          # gamma, beta,
          0.1 * RNG.standard_normal(A), 0.5 + RNG.random(A))                       # running mean, var
    widths = {'channel': C_IN, 'filter': C_OUT, 'spatial': 9, 'kernel': n_k}
    heads = {h: (RNG.standard_normal((width, A, 1, 1)), RNG.standard_normal(width))
             for h, width in widths.items()}
    show(x=x, weight=w, fc_weight=fc)
    show(**{f'{h}_fc_weight': hw for h, (hw, _) in heads.items()})

    p = x.mean(axis=(2, 3))                                           # eq. 1
    a = p @ fc[:, :, 0, 0].T                                          # eq. 2
    gamma, beta, mean, var = bn
    h = np.maximum(gamma * (a - mean) / np.sqrt(var + 1e-5) + beta, 0)   # eq. 3-4 (running statistics)
    logits = {name: h @ hw[:, :, 0, 0].T + hb for name, (hw, hb) in heads.items()}
    att_c, att_f, att_s = (sigmoid(logits[name] / T) for name in ('channel', 'filter', 'spatial'))  # eq. 5-6
    att_w = softmax(logits['kernel'] / T)                             # eq. 6
    print('  the four attentions, per sample:')
    show(channel=att_c, filter=att_f, spatial=att_s, kernel=att_w)
    base = np.einsum('ni,ioc...->noc...', att_w, w)                   # eq. 7: mix the n kernels
    w_n = att_s.reshape(N, 1, 1, 3, 3) * base                         # eq. 8: scale each kernel point
    u = per_sample_conv(att_c[:, :, None, None] * x, w_n)             # eq. 9-10: scale the input channels
    y = att_f[:, :, None, None] * u                                   # eq. 11: scale the output channels
    show(aggregated_kernel=w_n, y=y)
    # the paper's form: all four attentions folded into one kernel per sample
    folded = np.einsum('ni,npq,nc,no,iocpq->nocpq', att_w, att_s.reshape(N, 3, 3), att_c, att_f, w)
    same('attention on the features == attention on the kernel', y, per_sample_conv(x, folded))

    args = (x, w, fc, *bn, *(array for pair in heads.values() for array in pair))
    same('y == odconv2d_forward', y,
         nc.odconv2d_forward(*args, padding=PAD, temperature=T, training=False)[0])
    for training in (False, True):                # train mode: BatchNorm couples the samples
        check_against_reference('odconv2d', args, dict(padding=PAD, temperature=T, training=training),
                                f' (training={training})')


def kernel_warehouse():
    print('\n== 4. KernelWarehouse: kernels assembled from warehouse cells (kernel_warehouse.md eq. 1-12)')
    M, cell, D, t = 6, (2, 2, 1, 1), 16, 0.3      # cells, cell shape (c_out, c_in, 1, 1), hidden, temperature
    g_o, g_i, g_s = C_OUT // cell[0], C_IN // cell[1], 9   # a 3x3 kernel is a grid of 2 x 2 x 9 cells
    m, P = g_s * g_o * g_i, M + 1                 # mixtures (one per cell of the kernel), planes (+ zero)
    print(f'  kernel (4, 4, 3, 3) = {g_o} x {g_i} x {g_s} cells of shape {cell}: m = {m} mixtures,\n'
          f'  each a mix of the M = {M} warehouse cells')
    x = RNG.standard_normal((N, C_IN, HW, HW))
    warehouse = RNG.standard_normal((M, *cell))   # shared by every layer of the warehouse
    fc1 = RNG.standard_normal((D, C_IN))          # nn.Linear in the official module: 2-D
    norm = (1 + 0.2 * RNG.standard_normal(D), 0.2 * RNG.standard_normal(D),
            0.1 * RNG.standard_normal(D), 0.5 + RNG.random(D))
    fc2, fc2_b, bias = RNG.standard_normal((m * P, D)), RNG.standard_normal(m * P), RNG.standard_normal(C_OUT)
    temp_bias = np.zeros((m, P))                  # eq. 30: one-hot at mixture j's own cell (here: cell j,
    temp_bias[np.arange(m), np.minimum(np.arange(m), M)] = 1   # or the zero cell M once the cells run out)
    show(x=x, warehouse=warehouse, fc1_weight=fc1, fc2_weight=fc2, temp_bias=temp_bias.ravel())

    gamma, beta, mean, var = norm
    r = np.maximum(gamma * (x.mean(axis=(2, 3)) @ fc1.T - mean) / np.sqrt(var + 1e-5) + beta, 0)  # eq. 1-4
    z = (r @ fc2.T + fc2_b).reshape(N * m, P)                         # eq. 5: one row per (sample, mixture)
    a_hat = z / (np.abs(z).sum(axis=1, keepdims=True) + 1e-3)         # eq. 7: CAF, a signed L1 normalisation
    blend = (1 - t) * a_hat + t * np.tile(temp_bias, (N, 1))          # eq. 8
    attention = blend[:, :M]                                          # eq. 9: the zero cell has no weights
    l1 = np.abs(a_hat).sum(axis=1)                                    # S / (S + 0.001) < 1 in every row
    print(f'  z {z.shape} -> CAF (signed, each row: sum |.| = {l1.min():.5f} ... {l1.max():.5f}) '
          f'-> attention {attention.shape}')
    assert l1.max() < 1 and (a_hat < 0).any()
    mix = attention @ warehouse.reshape(M, -1)                        # eq. 10: (N m, c_out c_in)
    kernels = (mix.reshape(N, g_s, g_o, g_i, *cell)                  # eq. 11: mixture (s, o, i) fills
               .transpose(0, 2, 4, 3, 5, 1, 6, 7)                     # output rows o, input columns i,
               .reshape(N, C_OUT, C_IN, 3, 3))                        # kernel point s
    y = per_sample_conv(x, kernels, np.tile(bias, (N, 1)))            # eq. 12
    show(mix=mix, kernels=kernels, y=y)

    args = (x, warehouse, fc1, *norm, fc2, fc2_b, None, None, bias)   # no fc3 / basis (plain mode)
    hyper = dict(kernel_size=3, padding=PAD, temperature=t, temp_bias=temp_bias.ravel(), training=False)
    att_args, att_hyper = (x, fc1, *norm, fc2, fc2_b), dict(num_cells=M, temperature=t,
                                                            temp_bias=temp_bias.ravel(), training=False)
    same('attention == kw_attention_forward', attention, nc.kw_attention_forward(*att_args, **att_hyper)[0])
    same('y == kw_conv2d_forward', y, nc.kw_conv2d_forward(*args, **hyper)[0])
    check_against_reference('kw_caf', (z,), {})
    check_against_reference('kw_attention', att_args, att_hyper)
    for training in (False, True):
        check_against_reference('kw_conv2d', args, dict(hyper, training=training), f' (training={training})')


def gradient_check(args, temperature):
    print('\n== 5. numpyconv.gradcheck on DY-CNN: every element of every input')
    names = ['x', 'weight', 'bias', 'fc1_weight', 'fc2_weight', 'fc2_bias']
    report = nc.gradcheck(lambda *a: nc.dynamic_conv2d_forward(*a, temperature=temperature, padding=PAD),
                          nc.dynamic_conv2d_backward, args, names=names)
    print(report)
    assert report.ok


if __name__ == '__main__':
    dy_args, dy_temperature = dy_cnn()
    condconv()
    odconv()
    kernel_warehouse()
    gradient_check(dy_args, dy_temperature)
