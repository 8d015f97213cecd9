"""Plain-loop definitions of KernelWarehouse: the attention row by row, the kernel cell by cell.

For each sample and each mixture: map the fc2 outputs to the ``M + 1`` cell planes, normalise them
with the CAF, blend with ``temp_bias``; then build the sample's kernel explicitly, one cell position
``(s, o, i)`` at a time, as the attention-weighted sum of the warehouse cells, and convolve it with
the plain-loop :func:`numpyconv.reference.conv.conv2d`. The trunk (pool, fc1, BatchNorm, ReLU, fc2)
uses the plain-loop blocks of :mod:`numpyconv.reference.blocks`. Equation numbers:
docs/derivations/kernel_warehouse.md.
"""
import numpy as np

from .._checks import pair
from .blocks import batch_norm, global_avg_pool2d, linear, relu
from .conv import conv2d


def kw_caf(z):
    """``z[r, k] / (sum_j |z[r, j]| + 1e-3)`` for every row ``r`` (eq. 7)."""
    out = np.zeros_like(z)
    for r in range(z.shape[0]):
        denom = sum(abs(float(v)) for v in z[r]) + 1e-3
        for k in range(z.shape[1]):
            out[r, k] = z[r, k] / denom
    return out


def _cell_planes(row, fc3_weight, num_cells, num_local, start):
    """Basis mode (eq. 6): ``[loc | non | zero]`` -> the ``M + 1`` planes, cell ``j`` by cell ``j``."""
    local, nonlocal_ = row[:num_local], row[num_local:-1]
    mapped = [sum(fc3_weight[k, b] * nonlocal_[b] for b in range(len(nonlocal_)))
              for k in range(fc3_weight.shape[0])]
    start = min(start, len(mapped))
    planes = []
    for j in range(num_cells):
        if j < start:
            planes.append(mapped[j])
        elif j < start + num_local:
            planes.append(local[j - start])
        else:
            planes.append(mapped[j - num_local])
    return np.array(planes + [row[-1]])


def kw_attention(x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var, fc2_weight,
                 fc2_bias=None, fc3_weight=None, basis_bias=None, *, num_cells, start_cell_idx=0,
                 temperature=0.0, temp_bias=None, training=True, momentum=0.1, eps=1e-5):
    """Cell weights ``A (N*m, M)``, row ``n*m + mix`` (eq. 1-9). Running statistics are not updated."""
    hidden = relu(batch_norm(linear(global_avg_pool2d(x), fc1_weight), norm1_weight, norm1_bias,
                             running_mean, running_var, training, momentum, eps))   # (eq. 1-4)
    logits = linear(hidden, fc2_weight, fc2_bias)                                   # (eq. 5)
    per_mixture = num_cells + 1
    basis = fc3_weight is not None
    m = (basis_bias.size if basis else logits.shape[1]) // per_mixture
    width = logits.shape[1] // m
    num_local = width - fc3_weight.shape[1] - 1 if basis else 0
    attention = np.zeros((x.shape[0] * m, num_cells), dtype=x.dtype)
    for n in range(x.shape[0]):
        for mix in range(m):
            row = logits[n, mix * width:(mix + 1) * width]
            planes = row
            if basis:
                planes = _cell_planes(row, fc3_weight, num_cells, num_local, start_cell_idx) \
                    + basis_bias[mix * per_mixture:(mix + 1) * per_mixture]             # (eq. 6)
            normalised = kw_caf(planes[None, :])[0]                                      # (eq. 7)
            for j in range(num_cells):                                                   # (eq. 8, 9)
                tau = 0.0 if temp_bias is None else temp_bias[mix * per_mixture + j]
                attention[n * m + mix, j] = (1 - temperature) * normalised[j] + temperature * tau
    return attention


def kw_conv2d(x, warehouse, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var,
              fc2_weight, fc2_bias=None, fc3_weight=None, basis_bias=None, bias=None, *, kernel_size,
              stride=1, padding=0, dilation=1, groups=1, start_cell_idx=0, temperature=0.0,
              temp_bias=None, training=True, momentum=0.1, eps=1e-5):
    """Per sample: the kernel assembled cell by cell (eq. 10, 11), then the plain convolution (eq. 12)."""
    attention = kw_attention(x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var,
                             fc2_weight, fc2_bias, fc3_weight, basis_bias, num_cells=warehouse.shape[0],
                             start_cell_idx=start_cell_idx, temperature=temperature,
                             temp_bias=temp_bias, training=training, momentum=momentum, eps=eps)
    num_cells, c_out, c_in, ckh, ckw = warehouse.shape
    kh, kw = pair(kernel_size, 'kernel_size')
    n_batch = x.shape[0]
    m = attention.shape[0] // n_batch
    gi, gs = x.shape[1] // groups // c_in, kh * kw // (ckh * ckw)
    go = m // (gi * gs)
    outputs = []
    for n in range(n_batch):
        kernel = np.zeros((go * c_out, gi * c_in, kh, kw), dtype=x.dtype)
        for s in range(gs):
            for o in range(go):
                for i in range(gi):
                    row = attention[n * m + s * go * gi + o * gi + i]
                    cell = sum(row[j] * warehouse[j] for j in range(num_cells))  # (c_out, c_in, ckh, ckw)
                    rows, cols = slice(o * c_out, (o + 1) * c_out), slice(i * c_in, (i + 1) * c_in)
                    if (ckh, ckw) == (1, 1):
                        kernel[rows, cols, s // kw, s % kw] = cell[:, :, 0, 0]
                    else:
                        kernel[rows, cols] = cell
        outputs.append(conv2d(x[n:n + 1], kernel, bias, stride, padding, dilation, groups)[0])
    return np.stack(outputs)
