"""The one GEMM core: a convolution's product of columns with its weight, and its two gradients.

Every convolution that builds columns (conv2d through im2col, the deformable convolutions through
bilinear sampling) multiplies them here. Shapes, with ``G`` groups, ``Kg = C_in/G * kh * kw`` and
``L = Ho * Wo``::

    cols    (n, C_in, kh, kw, Ho, Wo)     viewed per group as  Xc (n, G, Kg, L)
    weight  (C_out, C_in/G, kh, kw)       viewed per group as  Wr (G, Og, Kg)   (or per sample (n, ...))
    y       (n, C_out, Ho, Wo)            Y = Wr @ Xc                                (conv.md, eq. 4)

    dweight = sum_n dY[n] @ Xc[n]^T                                                    (eq. 6)
    dcols   = Wr^T @ dY                                                                (eq. 7)

Columns come in two layouts. conv2d's block buffer is laid out ``(C_in, kh, kw, n, Ho, Wo)``, so that
a whole block is one matrix ``(C_in*kh*kw, n*Ho*Wo)`` per group and one GEMM serves the block; the
deformable ops' columns are ``(n, C_in, kh, kw, Ho, Wo)`` (batch outside), one GEMM per sample.
"""
import math

import numpy as np

from .memory import scratch


def _grouped(cols, groups):
    """View of ``cols (n, C_in, kh, kw, Ho, Wo)`` as ``Xc (n, G, Kg, L)``, ``Kg = C_in/G*kh*kw``."""
    n, c_in, kh, kw, ho, wo = cols.shape
    return cols.reshape(n, groups, c_in // groups * kh * kw, ho * wo)


def _grouped_weight(weight, groups):
    """View of ``weight ([n,] C_out, C_in/G, kh, kw)`` as ``Wr ([n,] G, Og, Kg)``."""
    c_out, c_g, kh, kw = weight.shape[-4:]
    return weight.reshape(weight.shape[:-4] + (groups, c_out // groups, c_g * kh * kw))


def _batch_inside(cols):
    """Whether ``cols (n, ...)`` is a view of a ``(C_in, kh, kw, n, Ho, Wo)`` buffer (conv2d's block
    layout), in which the whole block is one matrix ``(C_in*kh*kw, n*Ho*Wo)`` per group."""
    return cols.transpose(1, 2, 3, 0, 4, 5).flags.c_contiguous


def _block_matrix(a, groups):
    """View of ``a (n, ch, ..., Ho, Wo)`` in the block layout as ``(G, ch/G*..., n*Ho*Wo)``; a copy
    when ``a`` is in the batch-outside layout."""
    n, per_group, pixels = a.shape[0], math.prod(a.shape[1:-2]) // groups, a.shape[-2] * a.shape[-1]
    lead = a.reshape(n, groups, per_group, pixels)                          # (n, G, Kg, L)
    return lead.transpose(1, 2, 0, 3).reshape(groups, per_group, n * pixels)   # (G, Kg, n*L)


def cols_matmul(cols, weight, groups, out=None):
    """``y (n, C_out, Ho, Wo)`` from ``cols (n, C_in, kh, kw, Ho, Wo)`` (eq. 4).

    ``weight`` is ``(C_out, C_in//G, kh, kw)`` or per sample ``(n, C_out, C_in//G, kh, kw)``.
    ``cols`` may be a strided view: per-sample matrices are multiplied in place (one batched GEMM),
    and a shared weight on the block layout multiplies the whole block at once (the result is then
    a transposed view). ``out``, a C-contiguous ``(n, C_out, Ho, Wo)`` array, receives ``y`` (and is
    returned): the GEMM writes into it, except for several samples on the block layout (a copy).
    """
    n, ho, wo = cols.shape[0], cols.shape[4], cols.shape[5]
    c_out, wr = weight.shape[-4], _grouped_weight(weight, groups)      # ([n,] G, Og, Kg)
    block = weight.ndim == 4 and _batch_inside(cols)
    columns = _block_matrix(cols, groups) if block else _grouped(cols, groups)  # (G, Kg, n*L) / (n, G, Kg, L)
    if out is not None and (n == 1 or not block):          # out is laid out as the product: no copy
        np.matmul(wr, columns, out=out.reshape(columns.shape[:-2] + (wr.shape[-2], columns.shape[-1])))
        return out
    y = np.matmul(wr, columns)                                            # (G, Og, n*L) / (n, G, Og, L)
    y = y.reshape(c_out, n, ho, wo).swapaxes(0, 1) if block else y.reshape(n, c_out, ho, wo)
    if out is None:
        return y
    out[...] = y
    return out


def cols_weight_grad(dy, cols, weight, groups):
    """``dweight`` of :func:`cols_matmul` (eq. 6): summed over the batch for a shared weight, per
    sample otherwise. On the block layout the batch sum is one GEMM of depth ``n*Ho*Wo``."""
    if weight.ndim == 4 and _batch_inside(cols):
        dw = np.matmul(_block_matrix(dy, groups), _block_matrix(cols, groups).swapaxes(-1, -2))
        return dw.reshape(weight.shape)                                   # (G, Og, Kg)
    xc = _grouped(cols, groups)                                           # (n, G, Kg, L)
    dyr = dy.reshape(xc.shape[:2] + (dy.shape[1] // groups, xc.shape[3]))  # (n, G, Og, L)
    dw = np.matmul(dyr, xc.swapaxes(-1, -2))                              # (n, G, Og, Kg)
    return (dw if weight.ndim == 5 else dw.sum(axis=0)).reshape(weight.shape)


def cols_input_grad(dy, weight, groups, cols_shape, batch_inside=False, reuse=False):
    """``dcols = Wr^T @ dYr`` per group (eq. 7), shaped ``cols_shape (n, C_in, kh, kw, Ho, Wo)``.

    ``batch_inside`` (a shared weight): one GEMM over the whole batch, the result a view of a
    ``(C_in, kh, kw, n, Ho, Wo)`` array (the block layout); otherwise one GEMM per sample.
    ``reuse``: that array is this thread's ``'dcols'`` scratch memory, overwritten by the next such
    call (for a caller done with it by then)."""
    n, pixels = dy.shape[0], cols_shape[4] * cols_shape[5]
    wt = _grouped_weight(weight, groups).swapaxes(-1, -2)                # ([n,] G, Kg, Og)
    if batch_inside and weight.ndim == 4:
        shape = (groups, wt.shape[-2], n * pixels)                       # (G, Kg, n*L)
        out = scratch('dcols', shape, dy.dtype) if reuse else np.empty(shape, dy.dtype)
        dcols = np.matmul(wt, _block_matrix(dy, groups), out=out)
        block = (cols_shape[1:4]) + (n,) + tuple(cols_shape[4:])         # (C_in, kh, kw, n, Ho, Wo)
        return dcols.reshape(block).transpose(3, 0, 1, 2, 4, 5)
    dyr = dy.reshape(n, groups, dy.shape[1] // groups, pixels)      # (n, G, Og, L)
    return np.matmul(wt, dyr).reshape(cols_shape)


def cols_matmul_backward(dy, cols, weight, groups, reuse=False):
    """Gradients of :func:`cols_matmul`: ``(dcols, dweight)`` (eq. 6, 7), ``dcols`` in ``cols``'s
    layout family (one GEMM for the block layout with a shared weight; ``reuse`` as
    :func:`cols_input_grad`)."""
    return (cols_input_grad(dy, weight, groups, cols.shape, _batch_inside(cols), reuse),
            cols_weight_grad(dy, cols, weight, groups))


def bank_grad(attention, dmixed):
    """``attention^T @ dmixed (K, D)``: the gradient of a bank of ``K`` kernels that each sample mixes
    as ``attention (N, K) @ bank (K, D)``, from the mixed kernels' gradient ``dmixed (N, D)``. For one
    sample it is an outer product, one broadcast multiplication (BLAS's GEMM with an inner dimension
    of 1 runs about 3x slower)."""
    if attention.shape[0] == 1:
        return attention[0][:, None] * dmixed[0]
    return attention.T @ dmixed
