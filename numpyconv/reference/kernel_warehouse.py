"""Plain-loop definitions of KernelWarehouse: the attention row by row, the kernel cell by cell.

For each sample and each mixture: map the fc2 outputs to the ``M + 1`` cell planes, normalise them
with the CAF, blend with ``temp_bias``; then build the sample's kernel explicitly, one warehouse
entry at a time, as the attention-weighted sum of the warehouse cells, and convolve it with the
plain-loop :func:`numpyconv.reference.conv.conv2d`. The backward runs the same loops in reverse,
one equation a line. Equation numbers: docs/derivations/kernel_warehouse.md.
"""
import math
from itertools import product

import numpy as np

from .._checks import pair
from .conv import conv2d
from .dynamic import affine, per_sample_conv2d_backward, pool, pool_backward

CAF_EPS = 1e-3


def kw_caf(z):
    """``z[r, k] / (sum_j |z[r, j]| + 1e-3)`` for every row ``r`` of ``z (rows, M + 1)`` (eq. 7)."""
    out = np.zeros_like(z)
    for r in range(z.shape[0]):
        denom = sum(abs(z[r, j]) for j in range(z.shape[1])) + CAF_EPS                 # (eq. 7)
        for k in range(z.shape[1]):
            out[r, k] = z[r, k] / denom                                                  # (eq. 7)
    return out


def kw_caf_backward(dout, z):
    """``(dz,)`` of :func:`kw_caf`: ``dz_k = dout_k / D - sign(z_k) sum_j dout_j z_j / D^2`` (eq. 20)."""
    dz = np.zeros_like(z)
    for r in range(z.shape[0]):
        denom = sum(abs(z[r, j]) for j in range(z.shape[1])) + CAF_EPS                 # (eq. 7)
        contrast = sum(dout[r, j] * z[r, j] for j in range(z.shape[1]))
        for k in range(z.shape[1]):
            sign = 1.0 if z[r, k] > 0 else -1.0 if z[r, k] < 0 else 0.0         # sign(0) = 0
            dz[r, k] = dout[r, k] / denom - sign * contrast / denom ** 2                # (eq. 20)
    return (dz,)


def _mean(values):
    """The average of a list of numbers; 0.0 for an empty batch (nothing to normalise)."""
    return sum(values) / len(values) if values else 0.0


def _plane_source(k, num_cells, num_local, start):
    """Where plane ``k`` of a basis-mode row comes from (eq. 6): ``('v', index)`` into ``v = W3 nu``,
    ``('local', index)`` into the local logits, or ``('zero', 0)`` for the zero cell ``k = M``."""
    if k == num_cells:
        return 'zero', 0
    if k < start:
        return 'v', k
    if k < start + num_local:
        return 'local', k - start
    return 'v', k - num_local


def _mixtures(fc2_weight, basis_bias, num_cells):
    """The number of mixtures ``m``: the attention rows per sample (``m (M + 1)`` planes)."""
    return (fc2_weight.shape[0] if basis_bias is None else basis_bias.size) // (num_cells + 1)


def _attention(x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var, fc2_weight,
               fc2_bias, fc3_weight, basis_bias, num_cells, start_cell_idx, temperature, temp_bias,
               training, eps):
    """Every value of the attention (eqs. 1-9), as a dict (``A`` is the result, ``(N*m, M)``)."""
    p = pool(x)                                                                          # (eq. 1)
    h = affine(fc1_weight, p)                                                            # (eq. 2)
    n_batch, width = h.shape
    h_tilde, h_hat, inv_std = np.zeros_like(h), np.zeros_like(h), np.zeros(width, dtype=h.dtype)
    for d in range(width):
        if training:                                                 # batch statistics (eq. 3)
            mean = _mean([h[n, d] for n in range(n_batch)])
            var = _mean([(h[n, d] - mean) ** 2 for n in range(n_batch)])
        else:                                                        # running statistics (eq. 3)
            mean, var = running_mean[d], running_var[d]
        inv_std[d] = 1.0 / math.sqrt(var + eps)
        for n in range(n_batch):
            h_tilde[n, d] = (h[n, d] - mean) * inv_std[d]                                # (eq. 3)
            h_hat[n, d] = norm1_weight[d] * h_tilde[n, d] + norm1_bias[d]                # (eq. 3)
    r = np.maximum(h_hat, 0)                                                             # (eq. 4)
    logits = affine(fc2_weight, r, fc2_bias)                                             # (eq. 5)
    planes = num_cells + 1                                                               # P
    basis = fc3_weight is not None
    m = _mixtures(fc2_weight, basis_bias, num_cells)
    row_width = fc2_weight.shape[0] // m
    num_local = row_width - fc3_weight.shape[1] - 1 if basis else 0
    start = min(start_cell_idx, num_cells - num_local)        # clamped as Python slicing does
    z = np.zeros((n_batch * m, planes), dtype=x.dtype)
    for n, j in product(range(n_batch), range(m)):
        row = logits[n, j * row_width:(j + 1) * row_width]
        if not basis:
            z[n * m + j] = row                                                           # (eq. 7)
            continue
        nu = row[num_local:-1]
        v = [sum(fc3_weight[k, b] * nu[b] for b in range(len(nu))) for k in range(fc3_weight.shape[0])]
        for k in range(planes):
            source, index = _plane_source(k, num_cells, num_local, start)
            value = v[index] if source == 'v' else row[index] if source == 'local' else row[-1]
            z[n * m + j, k] = value + basis_bias[j * planes + k]                         # (eq. 6)
    a_hat = kw_caf(z)                                                                    # (eq. 7)
    attention = np.zeros((n_batch * m, num_cells), dtype=x.dtype)
    for n, j, k in product(range(n_batch), range(m), range(num_cells)):
        tau = 0.0 if temp_bias is None else temp_bias[j * planes + k]
        attention[n * m + j, k] = (1 - temperature) * a_hat[n * m + j, k] + temperature * tau  # (eqs. 8, 9)
    return dict(p=p, h=h, h_tilde=h_tilde, h_hat=h_hat, inv_std=inv_std, r=r, logits=logits, z=z,
                A=attention, m=m, row_width=row_width, num_local=num_local, start=start)


def kw_attention(x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var, fc2_weight,
                 fc2_bias=None, fc3_weight=None, basis_bias=None, *, num_cells, start_cell_idx=0,
                 temperature=0.0, temp_bias=None, training=True, momentum=0.1, eps=1e-5):
    """Cell weights ``A (N*m, M)``, row ``n*m + mix`` (eqs. 1-9). Arguments as
    :func:`numpyconv.kw_attention_forward`; the running statistics are read (eval mode), never
    updated, so ``momentum`` does not enter."""
    return _attention(x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var, fc2_weight,
                      fc2_bias, fc3_weight, basis_bias, num_cells, start_cell_idx, temperature,
                      temp_bias, training, eps)['A']


def _logits_backward(dz, t, fc3_weight, basis_bias, num_cells):
    """``(dlogits (N, rows of W2), dfc3_weight, dbasis_bias)`` from ``dz (N*m, M + 1)``: the reshape
    of eq. 7 in plain mode, the map to the cell basis in basis mode (eq. 21)."""
    m, row_width, num_local, start = t['m'], t['row_width'], t['num_local'], t['start']
    n_batch, planes = t['logits'].shape[0], num_cells + 1
    dlogits = np.zeros_like(t['logits'])
    if fc3_weight is None:
        for n, j, k in product(range(n_batch), range(m), range(planes)):
            dlogits[n, j * planes + k] = dz[n * m + j, k]                                # (eq. 7)
        return dlogits, None, None
    dfc3_weight, dbasis_bias = np.zeros_like(fc3_weight), np.zeros_like(basis_bias)
    for n, j in product(range(n_batch), range(m)):
        first = j * row_width                                 # the row: [local | nu | zero] (eq. 6)
        dv = np.zeros(fc3_weight.shape[0], dtype=dz.dtype)
        for k in range(planes):
            dbasis_bias[j * planes + k] += dz[n * m + j, k]                              # (eq. 21)
            source, index = _plane_source(k, num_cells, num_local, start)
            if source == 'v':
                dv[index] = dz[n * m + j, k]                                             # (eq. 21)
            elif source == 'local':
                dlogits[n, first + index] = dz[n * m + j, k]                             # (eq. 21)
            else:
                dlogits[n, first + row_width - 1] = dz[n * m + j, k]                     # (eq. 21)
        for k, b in np.ndindex(*fc3_weight.shape):
            dfc3_weight[k, b] += dv[k] * t['logits'][n, first + num_local + b]           # (eq. 21)
            dlogits[n, first + num_local + b] += dv[k] * fc3_weight[k, b]                # (eq. 21)
    return dlogits, dfc3_weight, dbasis_bias


def _trunk_backward(dlogits, x, t, fc1_weight, norm1_weight, fc2_weight, fc2_bias, training):
    """``(dx, dfc1_weight, dnorm1_weight, dnorm1_bias, drunning_mean, drunning_var, dfc2_weight,
    dfc2_bias)`` from the logits' gradient (eqs. 22-26)."""
    n_batch = x.shape[0]
    dfc2_weight, dr = np.zeros_like(fc2_weight), np.zeros_like(t['r'])
    for n, k, d in product(range(n_batch), *map(range, fc2_weight.shape)):
        dfc2_weight[k, d] += dlogits[n, k] * t['r'][n, d]                                # (eq. 22)
        dr[n, d] += fc2_weight[k, d] * dlogits[n, k]                                     # (eq. 22)
    dfc2_bias = None if fc2_bias is None else np.zeros_like(fc2_bias)
    if fc2_bias is not None:
        for n, k in np.ndindex(*dlogits.shape):
            dfc2_bias[k] += dlogits[n, k]                                                # (eq. 22)
    dh_hat = dr * (t['h_hat'] > 0)                                                       # (eq. 23)
    h_tilde, inv_std = t['h_tilde'], t['inv_std']
    dh = np.zeros_like(t['h'])
    dgamma, dbeta, dmean, dvar = (np.zeros_like(norm1_weight) for _ in range(4))
    for d in range(dh.shape[1]):
        g = [norm1_weight[d] * dh_hat[n, d] for n in range(n_batch)]             # g = gamma dh_hat
        for n in range(n_batch):
            dgamma[d] += dh_hat[n, d] * h_tilde[n, d]                                    # (eq. 24)
            dbeta[d] += dh_hat[n, d]                                                     # (eq. 24)
        if training:
            mean_g = _mean(g)
            mean_g_h = _mean([g[n] * h_tilde[n, d] for n in range(n_batch)])
            for n in range(n_batch):
                dh[n, d] = inv_std[d] * (g[n] - mean_g - h_tilde[n, d] * mean_g_h)       # (eq. 24)
            continue                                         # the buffers do not enter (eq. 24a)
        for n in range(n_batch):
            dh[n, d] = inv_std[d] * g[n]                                                 # (eq. 24)
            dmean[d] += -inv_std[d] * g[n]                                               # (eq. 24a)
            dvar[d] += -0.5 * inv_std[d] ** 2 * g[n] * h_tilde[n, d]                     # (eq. 24a)
    dfc1_weight, dp = np.zeros_like(fc1_weight), np.zeros_like(t['p'])
    for n, d, c in product(range(n_batch), *map(range, fc1_weight.shape)):
        dfc1_weight[d, c] += dh[n, d] * t['p'][n, c]                                     # (eq. 25)
        dp[n, c] += fc1_weight[d, c] * dh[n, d]                                          # (eq. 25)
    dx = pool_backward(dp, x.shape)                                                      # (eq. 26)
    return dx, dfc1_weight, dgamma, dbeta, dmean, dvar, dfc2_weight, dfc2_bias


def kw_attention_backward(dout, x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var,
                          fc2_weight, fc2_bias=None, fc3_weight=None, basis_bias=None, *, num_cells,
                          start_cell_idx=0, temperature=0.0, temp_bias=None, training=True,
                          momentum=0.1, eps=1e-5):
    """Gradients of :func:`kw_attention` in its positional order (eqs. 18-26)::

        (dx, dfc1_weight, dnorm1_weight, dnorm1_bias, drunning_mean, drunning_var, dfc2_weight,
         dfc2_bias, dfc3_weight, dbasis_bias)

    None for inputs given as None; the running statistics get zeros in train mode (eq. 24a).
    """
    t = _attention(x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var, fc2_weight,
                   fc2_bias, fc3_weight, basis_bias, num_cells, start_cell_idx, temperature, temp_bias,
                   training, eps)
    da_hat = np.zeros_like(t['z'])                      # (N*m, M + 1): the zero cell gets 0 (eq. 18)
    for row, k in np.ndindex(*dout.shape):
        da_hat[row, k] = (1 - temperature) * dout[row, k]                                # (eqs. 18, 19)
    dz, = kw_caf_backward(da_hat, t['z'])                                                # (eq. 20)
    dlogits, dfc3_weight, dbasis_bias = _logits_backward(dz, t, fc3_weight, basis_bias,
                                                         num_cells)                      # (eq. 21)
    dx, dfc1_weight, dgamma, dbeta, dmean, dvar, dfc2_weight, dfc2_bias = _trunk_backward(
        dlogits, x, t, fc1_weight, norm1_weight, fc2_weight, fc2_bias, training)         # (eqs. 22-26)
    return (dx, dfc1_weight, dgamma, dbeta, dmean, dvar, dfc2_weight, dfc2_bias, dfc3_weight,
            dbasis_bias)


def _layout(m, in_per_group, warehouse_shape, kernel_size):
    """``(go, gi, gs)``: cells along the output channels, the input channels, the kernel's points."""
    c_in, ckh, ckw = warehouse_shape[2:]
    gi, gs = in_per_group // c_in, kernel_size[0] * kernel_size[1] // (ckh * ckw)
    return m // (gi * gs), gi, gs


def _cell_entries(n_batch, m, in_per_group, warehouse_shape, kernel_size):
    """Every ``(row, j, cell index, kernel index)`` of eqs. 10-11: entry ``E[cell index]`` of cell
    ``j``, weighted by ``A[row, j]``, adds to the per-sample kernel entry ``Wt[kernel index]``."""
    num_cells, c_out, c_in, ckh, ckw = warehouse_shape
    go, gi, gs = _layout(m, in_per_group, warehouse_shape, kernel_size)
    for n, s, o, i in product(range(n_batch), range(gs), range(go), range(gi)):
        row = n * m + s * go * gi + o * gi + i                        # the mixture of cell (o, i, s)
        for j, co, ci, u, v in product(range(num_cells), range(c_out), range(c_in), range(ckh),
                                       range(ckw)):
            ku, kv = (s // kernel_size[1], s % kernel_size[1]) if (ckh, ckw) == (1, 1) else (u, v)
            yield row, j, (j, co, ci, u, v), (n, o * c_out + co, i * c_in + ci, ku, kv)


def _assemble(attention, warehouse, n_batch, m, in_per_group, kernel_size):
    """The per-sample kernels ``Wt (N, C_out, C_g, kh, kw)``, entry by entry (eqs. 10, 11)."""
    go = _layout(m, in_per_group, warehouse.shape, kernel_size)[0]
    kernels = np.zeros((n_batch, go * warehouse.shape[1], in_per_group) + kernel_size,
                       dtype=warehouse.dtype)
    for row, j, cell, target in _cell_entries(n_batch, m, in_per_group, warehouse.shape, kernel_size):
        kernels[target] += attention[row, j] * warehouse[cell]                           # (eqs. 10, 11)
    return kernels


def kw_conv2d(x, warehouse, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var,
              fc2_weight, fc2_bias=None, fc3_weight=None, basis_bias=None, bias=None, *, kernel_size,
              stride=1, padding=0, dilation=1, groups=1, start_cell_idx=0, temperature=0.0,
              temp_bias=None, training=True, momentum=0.1, eps=1e-5):
    """``y (N, C_out, Ho, Wo)``: per sample, the kernel assembled entry by entry (eqs. 10, 11), then the
    plain convolution (eq. 12). Arguments as :func:`numpyconv.kw_conv2d_forward`."""
    attention = kw_attention(x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var,
                             fc2_weight, fc2_bias, fc3_weight, basis_bias, num_cells=warehouse.shape[0],
                             start_cell_idx=start_cell_idx, temperature=temperature,
                             temp_bias=temp_bias, training=training, momentum=momentum, eps=eps)
    m = _mixtures(fc2_weight, basis_bias, warehouse.shape[0])
    kernels = _assemble(attention, warehouse, x.shape[0], m, x.shape[1] // groups,
                        pair(kernel_size, 'kernel_size'))                                # (eqs. 10, 11)
    return conv2d(x, kernels, bias, stride, padding, dilation, groups)                   # (eq. 12)


def kw_conv2d_backward(dout, x, warehouse, fc1_weight, norm1_weight, norm1_bias, running_mean,
                       running_var, fc2_weight, fc2_bias=None, fc3_weight=None, basis_bias=None,
                       bias=None, *, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                       start_cell_idx=0, temperature=0.0, temp_bias=None, training=True,
                       momentum=0.1, eps=1e-5):
    """Gradients of :func:`kw_conv2d` in its positional order (eqs. 13-27)::

        (dx, dwarehouse, dfc1_weight, dnorm1_weight, dnorm1_bias, drunning_mean, drunning_var,
         dfc2_weight, dfc2_bias, dfc3_weight, dbasis_bias, dbias)

    None for inputs given as None; the running statistics as in :func:`kw_attention_backward`.
    """
    attention_args = (x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var, fc2_weight,
                      fc2_bias, fc3_weight, basis_bias)
    options = dict(num_cells=warehouse.shape[0], start_cell_idx=start_cell_idx,
                   temperature=temperature, temp_bias=temp_bias, training=training,
                   momentum=momentum, eps=eps)
    attention = kw_attention(*attention_args, **options)
    m, in_per_group = _mixtures(fc2_weight, basis_bias, warehouse.shape[0]), x.shape[1] // groups
    kernel_size = pair(kernel_size, 'kernel_size')
    kernels = _assemble(attention, warehouse, x.shape[0], m, in_per_group, kernel_size)
    dx, dkernels, dbiases = per_sample_conv2d_backward(dout, x, kernels, stride, padding, dilation,
                                                       groups)                           # (eq. 14)
    dbias = None if bias is None else np.zeros_like(bias)
    if bias is not None:
        for n, o in np.ndindex(*dbiases.shape):
            dbias[o] += dbiases[n, o]                                                    # (eq. 13)
    dattention, dwarehouse = np.zeros_like(attention), np.zeros_like(warehouse)
    for row, j, cell, target in _cell_entries(x.shape[0], m, in_per_group, warehouse.shape,
                                              kernel_size):
        dwarehouse[cell] += attention[row, j] * dkernels[target]                         # (eqs. 15, 16)
        dattention[row, j] += warehouse[cell] * dkernels[target]                         # (eqs. 15, 17)
    dx_attention, *attention_grads = kw_attention_backward(dattention, *attention_args,
                                                           **options)                    # (eqs. 18-26)
    dx = dx + dx_attention                                                               # (eq. 27)
    return (dx, dwarehouse, *attention_grads, dbias)
