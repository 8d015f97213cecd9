r"""KernelWarehouse (KW): convolution kernels assembled from cells of a warehouse shared across layers.

Li and Yao, ICML 2024. Compatible with OSVAI/KernelWarehouse ``modules/kernel_warehouse.py``
(``Warehouse_Manager``, ``KWConv2d``, ``Attention``). Full derivation with numbered equations:
docs/derivations/kernel_warehouse.md; plain-loop reference: numpyconv/reference/kernel_warehouse.py.

Shapes (one layer; ``G`` groups, ``C_g = C_in / G``)::

    x          (N, C_in, H, W)
    warehouse  E (M, c_out, c_in, ckh, ckw)      M cells; cell 1x1 (spatial partition) or the whole kernel
    layout     go = C_out/c_out, gi = C_g/c_in, gs = kh*kw/(ckh*ckw), m = gs*go*gi mixtures, P = M + 1
    fc1_weight W1 (D, C_in), no bias             D = max(int(C_in * reduction), 16)
    norm1      gamma, beta, running_mean, running_var (D,)       BatchNorm1d
    plain mode fc2_weight W2 (m*P, D), fc2_bias b2 (m*P,)
    basis mode fc2_weight W2 (m*(nl+nb+1), D), fc3_weight W3 (M-nl, nb), basis_bias (m*P,)
    temp_bias  tau (m*P,) one-hot per mixture (not a parameter), temperature t (scalar)
    bias       (C_out,) static
    y          (N, C_out, Ho, Wo)

Forward (equation numbers of the derivation)::

    p_n = mean_{h,w} x_n                                  (eq. 1)   (N, C_in)
    h = W1 p;  b = BN(h) (batch stats in train mode);  r = relu(b)                  (eq. 2-4)
    plain:  l = W2 r + b2                                 (eq. 5)   (N, m*P)
    basis:  u = W2 r, per mixture row [loc (nl) | non (nb) | zero (1)]:
            l_row = [(W3 non)[:s], loc, (W3 non)[s:], zero] + basis_bias           (eq. 6)
    Z = l.reshape(N*m, P);  D_r = sum_k |Z_rk| + 1e-3;  Ahat = Z / D   (CAF)       (eq. 7)
    B = (1 - t) Ahat + t tau                              (eq. 8)   tau broadcast over samples
    A = B[:, :M]                                          (eq. 9)   the zero-cell column dropped
    Mix = A @ E.reshape(M, -1)                            (eq. 10)  (N*m, c_out*c_in*ckh*ckw)
    Wt[n, o*c_out + co, i*c_in + ci, (u, v)] = Mix[n*m + s*go*gi + o*gi + i, (co, ci, ...)]  (eq. 11)
    y_n = conv(x_n; Wt_n, groups=G) + bias                (eq. 12)  per-sample conv2d, one batched GEMM

``s`` is the spatial cell index (row-major ``(u, v)``) for 1x1 cells, 0 for whole-kernel cells.

Backward (given dy)::

    dbias = sum_{n,h,w} dy                                (eq. 13)
    dWt_n = corr(x_n, dy_n);  dx_conv = conv^T(dy; Wt)    (eq. 14)
    dMix  = inverse of the (eq. 11) permutation of dWt    (eq. 15)
    dE   += A^T dMix   (every layer sharing the warehouse adds its term)             (eq. 16)
    dA    = dMix E^T                                      (eq. 17)
    dB    = [dA | 0];  dAhat = (1 - t) dB                 (eq. 18, 19)
    dZ    = dAhat / D - sign(Z) * sum_j(dAhat_j Z_j) / D^2    (sign(0) = 0)           (eq. 20)
    basis: dbasis_bias = sum_n dl_n; dloc = dl[s:s+nl]; dW3 = dv^T non; dnon = dv W3  (eq. 21)
    dW2 = dl^T r;  db2 = sum_n dl_n;  dr = dl W2         (eq. 22)
    db = dr [b > 0]                                       (eq. 23)
    dh = BN backward (train mode couples every sample of the batch; eval mode scales)  (eq. 24)
    dW1 = dh^T p;  dp = dh W1                             (eq. 25)
    dx = dx_conv + dp / (H W)  (broadcast over h, w)      (eq. 26, 27)

Temperature: ``t`` blends the one-hot ``temp_bias`` (each mixture -> the layer's own cell, or the
zero cell) into the learned attention; ``t = 1`` is the static convolution built from the layer's
own cells, inference uses ``t = 0``. The official linear decay is :func:`kw_temperature` (eq. 28).

Warehouses: :class:`WarehouseManager` owns every warehouse (``params``/``grads``/``state_dict``
keyed ``weights.<i>``); :class:`KWConv2d` layers are created by ``manager.reserve(...)``, the
warehouses by ``manager.store()``, and the attention of each layer (with its cell range and
``temp_bias``) by ``manager.allocate(layers)``. A layer's ``state_dict`` holds its ``attention.*``
keys (and ``bias``), never warehouse weights.

Counting (``numpyconv.count``): a :class:`KWConv2d` counts only its own parameters (attention and
bias); the warehouse weights belong to the manager and are counted once, by the manager. Count a
whole network as the paper does by making the manager a child module of the network (as the
official models' ``self.warehouse_manager``), or with :func:`kw_count`.
"""
import math
from collections import namedtuple

import numpy as np

from ._checks import (Cache, check_cache, count_int, expect_shape, flag, float_array, grad_out, pair,
                      positive_int, real, same_dtype)
from .activations import relu_backward, relu_forward
from .blocks import batch_norm_backward, batch_norm_forward, linear_backward, linear_forward
from .pooling import global_avg_pool2d_backward, global_avg_pool2d_forward
from .conv import (Conv2d, check_hyper_parameters, check_layer_channels, conv2d_backward, conv2d_forward,
                   conv_geometry)
from .memory import require_memory
from .module import Module, count, kaiming_normal_fan_out

CAF_EPS = 1e-3  # the constant added to the L1 norm in the official attention (eq. 7)

CellLayout = namedtuple('CellLayout', 'go gi gs m')


def cell_layout(out_planes, in_per_group, kernel_size, cell_shape):
    """``CellLayout(go, gi, gs, m)`` of a ``(out_planes, in_per_group, *kernel_size)`` kernel cut into
    cells of shape ``cell_shape = (c_out, c_in, ckh, ckw)``; raises if the cells do not tile it."""
    c_out, c_in, ckh, ckw = cell_shape
    kh, kw = kernel_size
    if (ckh, ckw) not in ((1, 1), (kh, kw)):
        raise ValueError(f"cell spatial size must be (1, 1) or the kernel size {(kh, kw)}, got cell "
                         f"shape {tuple(cell_shape)}")
    if out_planes % c_out or in_per_group % c_in:
        raise ValueError(f"cell shape {tuple(cell_shape)} does not tile the kernel "
                         f"({out_planes}, {in_per_group}, {kh}, {kw}): c_out must divide "
                         f"{out_planes} and c_in must divide {in_per_group}")
    go, gi, gs = out_planes // c_out, in_per_group // c_in, kh * kw // (ckh * ckw)
    return CellLayout(go, gi, gs, go * gi * gs)


# -- contrasting-driven attention function (eq. 7, 20) ---------------------------------------------
def kw_caf_forward(z):
    """CAF, the signed L1 normalisation of each row: ``z / (sum_k |z_k| + 1e-3)`` (eq. 7).

    Parameters
    ----------
    z : ndarray (R, M + 1)

    Returns
    -------
    out : ndarray (R, M + 1)
    cache : Cache
        ``Cache('kw_caf')`` with ``z`` and ``denom`` ``(R, 1)``; neither None.
    """
    float_array(z, 'z', 2, "(rows, M + 1)")
    denom = np.abs(z).sum(axis=1, keepdims=True) + CAF_EPS                # (R, 1) (eq. 7)
    return z / denom, Cache('kw_caf', z=z, denom=denom)


def kw_caf_backward(dout, cache):
    """``dz = dout/D - sign(z) <dout, z> / D^2`` (eq. 20).

    Parameters
    ----------
    dout : ndarray, (R, M + 1)
        Gradient of the loss with respect to the output of :func:`kw_caf_forward`.
    cache : Cache
        The cache :func:`kw_caf_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dz,)``, ``dz (R, M + 1)``.
    """
    cache = check_cache(cache, 'kw_caf')
    z, denom = cache['z'], cache['denom']
    dout = grad_out(dout, z.shape, z.dtype)
    contrast = (dout * z).sum(axis=1, keepdims=True) / denom ** 2          # (R, 1)
    return (dout / denom - np.sign(z) * contrast,)


# -- attention branch (eq. 1-9, 18-26) ----------------------------------------------------------
AttentionSizes = namedtuple('AttentionSizes', 'm P M nl nb')


def _check_attention(x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var,
                     fc2_weight, fc2_bias, fc3_weight, basis_bias, num_cells, temp_bias):
    """Validate the attention operands; return their :class:`AttentionSizes`."""
    float_array(x, 'x', 4, "(N, C_in, H, W)")
    num_cells = positive_int(num_cells, 'num_cells')
    float_array(fc1_weight, 'fc1_weight', 2, "(D, C_in)")
    hidden = fc1_weight.shape[0]
    expect_shape(fc1_weight, (hidden, x.shape[1]), 'fc1_weight')
    for name, arr in (('norm1_weight', norm1_weight), ('norm1_bias', norm1_bias),
                      ('running_mean', running_mean), ('running_var', running_var)):
        float_array(arr, name, 1, "(D,)")
        expect_shape(arr, (hidden,), name)
    float_array(fc2_weight, 'fc2_weight', 2, "(rows, D)")
    expect_shape(fc2_weight, (fc2_weight.shape[0], hidden), 'fc2_weight')
    rows, per_mixture = fc2_weight.shape[0], num_cells + 1
    if (fc3_weight is None) != (basis_bias is None):
        raise ValueError("fc3_weight and basis_bias go together (basis mode) or are both None")
    if fc3_weight is None:
        m, nl, nb = rows // per_mixture, None, None
        if rows % per_mixture or m == 0:
            raise ValueError(f"fc2_weight must have shape (m * {per_mixture}, {hidden}) for "
                             f"num_cells={num_cells} (m mixtures of M + 1 planes), got {fc2_weight.shape}")
    else:
        float_array(basis_bias, 'basis_bias', 1, "(m * (M + 1),)")
        float_array(fc3_weight, 'fc3_weight', 2, "(M - nl, nb)")
        m, nb = basis_bias.size // per_mixture, fc3_weight.shape[1]
        nl = rows // m - nb - 1 if m else -1
        if basis_bias.size % per_mixture or m == 0 or rows % m or nl < 0 or \
                fc3_weight.shape[0] != num_cells - nl:
            raise ValueError(f"basis mode: basis_bias (m*(M+1),) = {basis_bias.shape}, fc2_weight "
                             f"(m*(nl+nb+1), D) = {fc2_weight.shape} and fc3_weight (M-nl, nb) = "
                             f"{fc3_weight.shape} are inconsistent with num_cells M={num_cells}")
    if fc2_bias is not None:
        float_array(fc2_bias, 'fc2_bias', 1, "(rows,)")
        expect_shape(fc2_bias, (rows,), 'fc2_bias')
    if temp_bias is not None:
        float_array(temp_bias, 'temp_bias', 1, "(m * (M + 1),)")
        expect_shape(temp_bias, (m * per_mixture,), 'temp_bias')
    same_dtype(('x', x), ('fc1_weight', fc1_weight), ('norm1_weight', norm1_weight),
               ('norm1_bias', norm1_bias), ('running_mean', running_mean), ('running_var', running_var),
               ('fc2_weight', fc2_weight), ('fc2_bias', fc2_bias), ('fc3_weight', fc3_weight),
               ('basis_bias', basis_bias))
    return AttentionSizes(m, per_mixture, num_cells, nl, nb)


def _basis_forward(logits, fc3_weight, basis_bias, sizes, start):
    """``map_to_cell_basis`` (eq. 6): ``(N, m*(nl+nb+1))`` -> ``(N, m*P)``."""
    n, nl = logits.shape[0], sizes.nl
    rows = logits.reshape(n * sizes.m, logits.shape[1] // sizes.m)        # (N*m, nl+nb+1)
    mapped, fc3_cache = linear_forward(rows[:, nl:-1], fc3_weight)        # (N*m, M-nl)
    cells = np.concatenate([mapped[:, :start], rows[:, :nl], mapped[:, start:], rows[:, -1:]],
                           axis=1)                                        # (N*m, P)
    return cells.reshape(n, basis_bias.size) + basis_bias, fc3_cache


def _basis_backward(dout, fc3_cache, sizes, start):
    """Gradients ``(dlogits, dfc3_weight, dbasis_bias)`` of :func:`_basis_forward` (eq. 21)."""
    nl, M = sizes.nl, sizes.M
    g = dout.reshape(-1, sizes.P)                                         # (N*m, P)
    dmapped = np.concatenate([g[:, :start], g[:, start + nl:M]], axis=1)  # (N*m, M-nl)
    dnonlocal, dfc3_weight, _ = linear_backward(dmapped, fc3_cache)       # (N*m, nb)
    drows = np.concatenate([g[:, start:start + nl], dnonlocal, g[:, M:]], axis=1)
    return drows.reshape(dout.shape[0], sizes.m * drows.shape[1]), dfc3_weight, dout.sum(axis=0)


def kw_attention_forward(x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var,
                         fc2_weight, fc2_bias=None, fc3_weight=None, basis_bias=None, *, num_cells,
                         start_cell_idx=0, temperature=0.0, temp_bias=None, training=True,
                         momentum=0.1, eps=1e-5):
    """KW ``Attention`` (eq. 1-9): cell weights ``A (N*m, M)`` for the ``M = num_cells`` warehouse cells.

    Plain mode (``fc3_weight`` and ``basis_bias`` None) or basis mode. In training mode BatchNorm uses
    batch statistics; the running statistics after this step are ``cache['running_mean']`` /
    ``cache['running_var']`` (no input is modified; the layer stores them, as ``nn.BatchNorm1d``
    does in place). ``m`` mixtures, ``P = M + 1`` logits per mixture.

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
    fc1_weight : ndarray (A, C_in, 1, 1)
        The attention's first 1x1 convolution (no bias).
    norm1_weight, norm1_bias, running_mean, running_var : ndarray (A,)
        Its BatchNorm1d.
    fc2_weight : ndarray (m*P, A, 1, 1) (plain mode) or (nl*nb, A, 1, 1) (basis mode)
    fc2_bias : ndarray (m*P,) or None
        None in basis mode (officially).
    fc3_weight : ndarray (m*P, nb, 1, 1) or None
    basis_bias : ndarray (m*P,) or None
        Both given in basis mode (``nonlocal_basis_ratio < 1``), both None in plain mode.
    num_cells : int, keyword-only
        ``M``, the warehouse's cells.
    start_cell_idx : int, keyword-only
        The layer's first own cell (basis mode only).
    temperature : float in [0, 1], keyword-only
        Blends ``temp_bias`` into the attention (eq. 8).
    temp_bias : ndarray (m*(M+1),) or None, keyword-only
        None means zeros.
    training : bool, keyword-only
        BatchNorm batch statistics (True) or the running ones (False).
    momentum, eps : float, keyword-only
        The BatchNorm's.

    Returns
    -------
    A : ndarray (N*m, M)
    cache : Cache
        ``Cache('kw_attention')`` with ``gap``, ``fc1``, ``bn``, ``relu``, ``fc2``, ``fc3`` (None in plain
        mode) and ``caf``, the steps' caches; ``sizes``, ``start``, ``temperature``, and ``running_mean``
        / ``running_var`` (the statistics after this step; None where given as None).
    """
    sizes = _check_attention(x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var,
                             fc2_weight, fc2_bias, fc3_weight, basis_bias, num_cells, temp_bias)
    temperature = real(temperature, 'temperature')
    start = min(count_int(start_cell_idx, 'start_cell_idx'), sizes.M - (sizes.nl or 0))  # as slicing clamps
    n = x.shape[0]
    pooled, gap_cache = global_avg_pool2d_forward(x)                       # (N, C_in) (eq. 1)
    hidden, fc1_cache = linear_forward(pooled, fc1_weight)                 # (N, D) (eq. 2)
    normed, bn_cache = batch_norm_forward(hidden, norm1_weight, norm1_bias, running_mean,
                                          running_var, training, momentum, eps)  # (eq. 3)
    active, relu_cache = relu_forward(normed)                              # (eq. 4)
    logits, fc2_cache = linear_forward(active, fc2_weight, fc2_bias)       # (eq. 5)
    fc3_cache = None
    if fc3_weight is not None:
        logits, fc3_cache = _basis_forward(logits, fc3_weight, basis_bias, sizes, start)  # (eq. 6)
    ahat, caf_cache = kw_caf_forward(logits.reshape(n * sizes.m, sizes.P))  # (N*m, P) (eq. 7)
    blend = (1.0 - temperature) * ahat                                     # (N*m, P) (eq. 8)
    if temp_bias is not None:
        blend.reshape(n, sizes.m, sizes.P)[...] += temperature * temp_bias.reshape(sizes.m, sizes.P)
    attention = np.ascontiguousarray(blend[:, :sizes.M])                  # (N*m, M) (eq. 9)
    cache = Cache('kw_attention', gap=gap_cache, fc1=fc1_cache, bn=bn_cache, relu=relu_cache,
                  fc2=fc2_cache, fc3=fc3_cache, caf=caf_cache, sizes=sizes, start=start,
                  temperature=temperature, running_mean=bn_cache['running_mean'],
                  running_var=bn_cache['running_var'])
    return attention, cache


def kw_attention_backward(dout, cache):
    """Gradients of :func:`kw_attention_forward` (eq. 18-26).

    The running statistics get their eval-mode gradient, zeros in training (blocks eq. 22a).

    Parameters
    ----------
    dout : ndarray, (N*m, M)
        Gradient of the loss with respect to the output of :func:`kw_attention_forward`.
    cache : Cache
        The cache :func:`kw_attention_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, dfc1_weight, dnorm1_weight, dnorm1_bias, drunning_mean, drunning_var, dfc2_weight,
        dfc2_bias, dfc3_weight, dbasis_bias)``, one per array input in its positional order, each of its
        input's shape; None for absent inputs.
    """
    cache = check_cache(cache, 'kw_attention')
    sizes, z = cache['sizes'], cache['caf']['z']
    dout = grad_out(dout, (z.shape[0], sizes.M), z.dtype)
    dblend = np.zeros_like(z)                                              # (N*m, P) (eq. 18)
    dblend[:, :sizes.M] = dout
    dlogits, = kw_caf_backward((1.0 - cache['temperature']) * dblend, cache['caf'])  # (eq. 19, 20)
    dlogits = dlogits.reshape(z.shape[0] // sizes.m, sizes.m * sizes.P)   # (N, m*P)
    dfc3_weight = dbasis_bias = None
    if cache['fc3'] is not None:
        dlogits, dfc3_weight, dbasis_bias = _basis_backward(dlogits, cache['fc3'], sizes,
                                                            cache['start'])  # (eq. 21)
    dactive, dfc2_weight, dfc2_bias = linear_backward(dlogits, cache['fc2'])  # (eq. 22)
    dnormed, = relu_backward(dactive, cache['relu'])                       # (eq. 23)
    dhidden, dnorm1_weight, dnorm1_bias, dmean, dvar = batch_norm_backward(dnormed,
                                                                          cache['bn'])  # (eq. 24)
    dpooled, dfc1_weight, _ = linear_backward(dhidden, cache['fc1'])       # (eq. 25)
    dx, = global_avg_pool2d_backward(dpooled, cache['gap'])                # (eq. 26)
    return (dx, dfc1_weight, dnorm1_weight, dnorm1_bias, dmean, dvar, dfc2_weight, dfc2_bias,
            dfc3_weight, dbasis_bias)


# -- kernel assembly (eq. 10, 11, 15-17) ---------------------------------------------------------
def _assemble_forward(attention, warehouse, layout, weight_shape):
    """Per-sample kernels ``(N, C_out, C_g, kh, kw)`` from ``A (N*m, M)`` and ``E`` (eq. 10, 11)."""
    n = attention.shape[0] // layout.m
    mix = attention @ warehouse.reshape(warehouse.shape[0], -1)           # (N*m, cell) (eq. 10)
    mix = mix.reshape((n, layout.gs, layout.go, layout.gi) + warehouse.shape[1:])
    kernels = mix.transpose(0, 2, 4, 3, 5, 1, 6, 7)       # (N, go, c_out, gi, c_in, gs, ckh, ckw)
    return kernels.reshape((n,) + weight_shape)           # (N, C_out, C_g, kh, kw): gs -> (kh, kw) (eq. 11)


def _assemble_backward(dkernels, attention, warehouse, layout):
    """``(dattention, dwarehouse)`` from the per-sample kernel gradient (eq. 15-17)."""
    n = dkernels.shape[0]
    c_out, c_in = warehouse.shape[1:3]
    dmix = dkernels.reshape((n, layout.go, c_out, layout.gi, c_in, layout.gs) + warehouse.shape[3:])
    flat = warehouse.reshape(warehouse.shape[0], -1)                      # (M, cell)
    dmix = dmix.transpose(0, 5, 1, 3, 2, 4, 6, 7).reshape(n * layout.m, flat.shape[1])  # (eq. 15)
    dwarehouse = (attention.T @ dmix).reshape(warehouse.shape)            # (eq. 16)
    return dmix @ flat.T, dwarehouse                                      # (N*m, M) (eq. 17)


# -- the whole layer as one op (eq. 1-27) ---------------------------------------------------------
def _check_warehouse(x, warehouse, bias, kernel_size, groups, sizes):
    """Validate the warehouse and bias against ``x``; return ``(layout, weight_shape)``.

    ``C_out`` follows from the number of mixtures: ``m / (gi * gs)`` output blocks of ``c_out``.
    """
    if x.shape[1] % groups:
        raise ValueError(f"groups={groups} must divide the input channels, got x of shape {x.shape}")
    in_per_group, cell = x.shape[1] // groups, warehouse.shape[1:]
    kernel = pair(kernel_size, 'kernel_size', minimum=1)
    block = cell_layout(cell[0], in_per_group, kernel, cell)              # one output block (go = 1)
    if sizes.m % block.m:
        raise ValueError(f"the attention has {sizes.m} mixtures, which is not a multiple of the "
                         f"{block.m} cells per output block of a kernel ({in_per_group}, {kernel}) "
                         f"cut into cells {tuple(cell)}")
    layout = CellLayout(sizes.m // block.m, block.gi, block.gs, sizes.m)
    out_planes = layout.go * cell[0]
    if out_planes % groups:
        raise ValueError(f"groups={groups} must divide the output channels {out_planes}")
    if bias is not None:
        float_array(bias, 'bias', 1, "(C_out,)")
        expect_shape(bias, (out_planes,), 'bias')
    same_dtype(('x', x), ('warehouse', warehouse), ('bias', bias))
    return layout, (out_planes, in_per_group) + kernel


def kw_conv2d_forward(x, warehouse, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var,
                      fc2_weight, fc2_bias=None, fc3_weight=None, basis_bias=None, bias=None, *,
                      kernel_size, stride=1, padding=0, dilation=1, groups=1, start_cell_idx=0,
                      temperature=0.0, temp_bias=None, training=True, momentum=0.1, eps=1e-5):
    """One KW convolution (eq. 1-12): attention, kernel assembly, per-sample convolution, static bias.

    The number of mixtures ``m`` comes from the attention weights and ``C_out = go * c_out`` from
    ``m``, ``kernel_size`` and ``C_in / groups``. No input is modified.

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
    warehouse : ndarray (M, c_out, c_in, ckh, ckw)
        The shared warehouse of ``M`` cells.
    fc1_weight : ndarray (A, C_in, 1, 1)
        The attention's first 1x1 convolution (no bias).
    norm1_weight, norm1_bias, running_mean, running_var : ndarray (A,)
        Its BatchNorm1d.
    fc2_weight : ndarray (m*P, A, 1, 1) (plain mode) or (nl*nb, A, 1, 1) (basis mode)
    fc2_bias : ndarray (m*P,) or None
        None in basis mode (officially).
    fc3_weight : ndarray (m*P, nb, 1, 1) or None
    basis_bias : ndarray (m*P,) or None
        Both given in basis mode (``nonlocal_basis_ratio < 1``), both None in plain mode.
    bias : ndarray (C_out,) or None
        The static bias.
    kernel_size : int or pair, keyword-only
    stride, padding, dilation, groups : keyword-only
        As :func:`numpyconv.conv2d_forward`.
    start_cell_idx : int, keyword-only
        The layer's first own cell (basis mode only).
    temperature : float in [0, 1], keyword-only
        Blends ``temp_bias`` into the attention (eq. 8).
    temp_bias : ndarray (m*(M+1),) or None, keyword-only
        None means zeros.
    training : bool, keyword-only
        BatchNorm batch statistics (True) or the running ones (False).
    momentum, eps : float, keyword-only
        The BatchNorm's.

    Returns
    -------
    y : ndarray (N, C_out, Ho, Wo)
    cache : Cache
        ``Cache('kw_conv2d')`` with ``attention`` (:func:`kw_attention_forward`'s cache), ``conv``
        (the conv2d cache), ``weights`` (the attention ``A``), ``warehouse``, ``layout`` and
        ``running_mean`` / ``running_var`` (as :func:`kw_attention_forward`'s).
    """
    groups = positive_int(groups, 'groups')
    float_array(warehouse, 'warehouse', 5, "(M, c_out, c_in, ckh, ckw)")
    attention_args = (x, fc1_weight, norm1_weight, norm1_bias, running_mean, running_var, fc2_weight,
                      fc2_bias, fc3_weight, basis_bias)
    sizes = _check_attention(*attention_args, warehouse.shape[0], temp_bias)
    layout, weight_shape = _check_warehouse(x, warehouse, bias, kernel_size, groups, sizes)
    attention, att_cache = kw_attention_forward(
        *attention_args, num_cells=warehouse.shape[0], start_cell_idx=start_cell_idx,
        temperature=temperature, temp_bias=temp_bias, training=training, momentum=momentum, eps=eps)
    require_memory((x.shape[0],) + weight_shape, x.dtype, f"x of shape {x.shape} (batch {x.shape[0]}) "
                   f"with a kernel of shape {weight_shape}", 'the per-sample kernels')
    kernels = _assemble_forward(attention, warehouse, layout, weight_shape)  # (N, C_out, C_g, kh, kw)
    per_sample_bias = None if bias is None else np.broadcast_to(bias, (x.shape[0], bias.size))
    y, conv_cache = conv2d_forward(x, kernels, per_sample_bias, stride, padding, dilation,
                                   groups)                                # (eq. 12)
    return y, Cache('kw_conv2d', attention=att_cache, conv=conv_cache, weights=attention,
                    warehouse=warehouse, layout=layout, running_mean=att_cache['running_mean'],
                    running_var=att_cache['running_var'])


def kw_conv2d_backward(dout, cache):
    """Gradients of :func:`kw_conv2d_forward` in its positional order (eq. 13-27).

    Parameters
    ----------
    dout : ndarray, (N, C_out, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`kw_conv2d_forward`.
    cache : Cache
        The cache :func:`kw_conv2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, dwarehouse, dfc1_weight, dnorm1_weight, dnorm1_bias, drunning_mean, drunning_var,
        dfc2_weight, dfc2_bias, dfc3_weight, dbasis_bias, dbias)``, each of its input's shape; None
        for inputs given as None; the running statistics as in :func:`kw_attention_backward`.
    """
    cache = check_cache(cache, 'kw_conv2d')
    dx, dkernels, dbias = conv2d_backward(dout, cache['conv'])            # (eq. 13, 14)
    dattention, dwarehouse = _assemble_backward(dkernels, cache['weights'], cache['warehouse'],
                                                cache['layout'])          # (eq. 15-17)
    dx_att, *att_grads = kw_attention_backward(dattention, cache['attention'])  # (eq. 18-26)
    dx += dx_att                                                          # (eq. 27)
    return (dx, dwarehouse, *att_grads, None if dbias is None else dbias.sum(axis=0))


# -- temperature schedule (eq. 28) -------------------------------------------------------------------
def kw_temperature(iteration, epoch, iters_per_epoch, temp_epoch=20, temp_init_value=1.0, temp_end=0.0):
    """The official ``get_temperature`` (engine.py): linear decay to ``temp_end`` (eq. 28).

    ``t = temp_end + max(0, (temp_init_value - temp_end) * (total - cur) / max(1, total))`` with
    ``total = iters_per_epoch * temp_epoch`` and ``cur = iters_per_epoch * epoch + iteration``; the
    training loop passes ``iteration = data_iter_step + 1`` and calls ``update_temperature`` on every
    KW layer each iteration. ``temp_init_value`` defaults to 1.0, the value ``main.py`` passes for
    every published model (``get_temperature``'s own default is 30.0); ``temp_epoch`` is 20 (15 in
    the MobileNetV2 configs).

    >>> kw_temperature(0, 0, 100), kw_temperature(1000, 0, 100), kw_temperature(0, 30, 100)
    (1.0, 0.5, 0.0)
    """
    iteration, epoch = count_int(iteration, 'iteration'), count_int(epoch, 'epoch')
    iters_per_epoch = count_int(iters_per_epoch, 'iters_per_epoch')
    temp_epoch = count_int(temp_epoch, 'temp_epoch')
    temp_init_value, temp_end = real(temp_init_value, 'temp_init_value'), real(temp_end, 'temp_end')
    total = iters_per_epoch * temp_epoch
    current = iters_per_epoch * epoch + iteration
    return temp_end + max(0.0, (temp_init_value - temp_end) * (total - current) / max(1.0, total))


# -- the layer --------------------------------------------------------------------------------------
def _own_cells(num_mixtures, cell_num_ratio):
    """``init_temperature``: the cell offset (from the layer's start) each mixture starts on, None for
    the zero cell, and the number of cells the layer owns (eq. 29, 30)."""
    if cell_num_ratio >= 1.0:
        per_mixture = int(cell_num_ratio)
        return [idx * per_mixture for idx in range(num_mixtures)], per_mixture * num_mixtures
    period = int(1.0 / cell_num_ratio)
    offsets, owned = [], 0
    for idx in range(num_mixtures):
        if idx % period == (idx // period) % period:
            offsets.append(owned)
            owned += 1
        else:
            offsets.append(None)
    return offsets, owned


class KWConv2d(Module):
    """KernelWarehouse convolution, official ``KWConv2d``; create it with ``WarehouseManager.reserve``.

    Usable after ``manager.store()`` and ``manager.allocate(layers)``. Keys (official):
    ``attention.fc1.weight``, ``attention.norm1.{weight,bias,running_mean,running_var,
    num_batches_tracked}``, plain mode ``attention.fc2.{weight,bias}``, basis mode
    ``attention.fc2.weight``, ``attention.fc3.weight``, ``attention.basis_bias``; ``bias`` if any
    (initialised to 0). The warehouse lives in the manager, which receives its gradient.
    ``temperature`` (default 0, as official ``temp_value``) and ``temp_bias`` are not saved;
    ``temp_bias`` is rebuilt by ``allocate`` (same layer order gives the same values). The official
    ``temp_bias`` stays float32 in a ``.double()`` model, so there ``t * temp_bias`` is rounded to
    float32; here it is computed in the layer's dtype (identical when ``t`` is exact in float32).

    Parameters
    ----------
    in_planes, out_planes : int
    kernel_size, stride, padding, dilation, groups
        As :func:`numpyconv.conv2d_forward`.
    bias : bool
        A static bias ``(out_planes,)``.
    warehouse_id : int, keyword-only
        Index of its warehouse in the manager.
    warehouse_manager : WarehouseManager, keyword-only
        The manager that owns the warehouse.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=False, *, warehouse_id, warehouse_manager, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        if not isinstance(warehouse_manager, WarehouseManager):
            raise TypeError(f"warehouse_manager must be a WarehouseManager (KWConv2d layers come from "
                            f"manager.reserve), got {type(warehouse_manager).__name__}")
        self.in_planes, self.out_planes, self.groups = check_layer_channels(
            in_planes, out_planes, groups, ('in_planes', 'out_planes'))
        self.kernel_size = check_hyper_parameters(kernel_size, stride, padding, dilation)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.warehouse_id, self._manager = warehouse_id, warehouse_manager
        self.temperature, self.temp_bias, self.start_cell_idx = 0.0, None, None
        if bias:
            self.add_param('bias', np.zeros(self.out_planes))

    # -- set-up by the manager ---------------------------------------------------------------------
    def cell_layout(self, cell_shape):
        """The :class:`CellLayout` of this layer's kernel cut into cells ``(c_out, c_in, ckh, ckw)``."""
        return cell_layout(self.out_planes, self.in_planes // self.groups, self.kernel_size, cell_shape)

    def _init_attention(self, cell_shape, start, reduction, cell_num_ratio, nonlocal_basis_ratio):
        """Official ``init_attention`` + ``init_temperature``; returns the end of the layer's cells."""
        num_cells = cell_shape[0]
        self.layout = self.cell_layout(cell_shape[1:])
        m, per_mixture = self.layout.m, num_cells + 1
        offsets, owned = _own_cells(m, cell_num_ratio)
        if start + owned > num_cells:
            raise ValueError(f"warehouse {self.warehouse_id} has {num_cells} cells but its layers own "
                             f"more (this layer needs cells [{start}, {start + owned})); "
                             f"cell_num_ratio={cell_num_ratio} does not divide the mixtures evenly")
        hidden = max(int(self.in_planes * reduction), 16)
        num_local = int(cell_num_ratio * m)
        self.add_param('attention.fc1.weight', self._kaiming((hidden, self.in_planes)))
        self.add_param('attention.norm1.weight', np.ones(hidden))
        self.add_param('attention.norm1.bias', np.zeros(hidden))
        self.add_buffer('attention.norm1.running_mean', np.zeros(hidden))
        self.add_buffer('attention.norm1.running_var', np.ones(hidden))
        self.add_buffer('attention.norm1.num_batches_tracked', np.array(0, dtype=np.int64))
        if nonlocal_basis_ratio >= 1.0:
            self.add_param('attention.fc2.weight', self._kaiming((per_mixture * m, hidden)))
            self.add_param('attention.fc2.bias', np.zeros(per_mixture * m))
        else:
            num_nonlocal = num_cells - num_local
            num_basis = max(int(num_nonlocal * nonlocal_basis_ratio), 16)
            self.add_param('attention.fc2.weight', self._kaiming(((num_local + num_basis + 1) * m,
                                                                   hidden)))
            self.add_param('attention.fc3.weight', self._kaiming((num_nonlocal, num_basis)))
            self.add_param('attention.basis_bias', np.zeros(per_mixture * m))
        self.temp_bias = np.zeros(per_mixture * m, dtype=self.dtype)                  # (eq. 30)
        for idx, offset in enumerate(offsets):
            self.temp_bias[idx * per_mixture + (num_cells if offset is None else start + offset)] = 1
        self.start_cell_idx = start
        return start + owned

    def _kaiming(self, shape):
        """``kaiming_normal_(mode='fan_out')``; a zero-element weight stays empty (as in PyTorch)."""
        if 0 in shape:
            return np.zeros(shape)
        return kaiming_normal_fan_out(self.rng, shape, self.dtype)

    def _require_allocated(self):
        if self.start_cell_idx is None:
            raise RuntimeError("KWConv2d has no attention yet: call manager.store() and "
                               "manager.allocate(layers) before using the layer")

    # -- computation ---------------------------------------------------------------------------------
    _ARG_KEYS = ('attention.fc1.weight', 'attention.norm1.weight', 'attention.norm1.bias',
                 'attention.norm1.running_mean', 'attention.norm1.running_var', 'attention.fc2.weight',
                 'attention.fc2.bias', 'attention.fc3.weight', 'attention.basis_bias', 'bias')

    @property
    def warehouse(self):
        """The shared warehouse array ``(M, c_out, c_in, ckh, ckw)`` (owned by the manager)."""
        return self._manager.params[f'weights.{self.warehouse_id}']

    def _outside_params(self):
        """The warehouse: this layer's backward adds its gradient into the manager's."""
        key = f'weights.{self.warehouse_id}'
        return {f'warehouse_manager.{key}': (self._manager.params[key], self._manager.grads[key])}

    def update_temperature(self, temperature):
        """Set the blend ``t`` of eq. 8 (official ``update_temperature(temp_value)``)."""
        self.temperature = real(temperature, 'temperature')

    def forward(self, x):
        self._require_allocated()
        self._check_input(x, channels=self.in_planes)
        arrays = {**self._params, **self._buffers}
        y, self._cache = kw_conv2d_forward(
            x, self.warehouse, *(arrays.get(k) for k in self._ARG_KEYS), kernel_size=self.kernel_size,
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
            start_cell_idx=self.start_cell_idx, temperature=self.temperature, temp_bias=self.temp_bias,
            training=self.training)
        if self.training:
            self._track_batch_norm(self._cache, 'attention.norm1.')
        return y

    def backward(self, dout):
        dx, dwarehouse, *grads = kw_conv2d_backward(dout, self._cache)
        self._manager._add_grad(f'weights.{self.warehouse_id}', dwarehouse)
        for key, grad in zip(self._ARG_KEYS, grads):
            if key in self._grads and grad is not None:                   # buffers have no grads
                self._add_grad(key, grad)
        return dx

    def macs(self, input_shape):
        """Multiply-adds (eq. 33): GAP, fc1, fc2 (and fc3), kernel assembly (eq. 10), convolution.

        BatchNorm, ReLU, the CAF and the blend are element-wise and not counted.
        """
        self._require_allocated()
        n, c_in, h, w = self._check_input_shape(input_shape, self.in_planes)
        geo = conv_geometry((h, w), self.kernel_size, self.stride, self.padding, self.dilation)
        out_shape = (n, self.out_planes) + geo.out_hw
        kernel_volume = self.in_planes // self.groups * self.kernel_size[0] * self.kernel_size[1]
        attention = c_in * h * w + sum(int(np.prod(self._params[k].shape)) for k in
                                       ('attention.fc1.weight', 'attention.fc2.weight'))
        if 'attention.fc3.weight' in self._params:
            attention += self.layout.m * int(np.prod(self._params['attention.fc3.weight'].shape))
        assembly = self.warehouse.shape[0] * self.out_planes * kernel_volume
        convolution = int(np.prod(out_shape[1:])) * kernel_volume
        return n * (attention + assembly + convolution), out_shape


# -- the manager ------------------------------------------------------------------------------------
def _per_warehouse(value, n, name):
    """Official ``parse``: a scalar or a length-1 sequence is broadcast, a length-n one kept."""
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return list(value) * n
        if len(value) == n:
            return list(value)
        raise ValueError(f"{name} must be a scalar or a sequence of length 1 or {n} (one per "
                         f"warehouse), got {value!r}")
    return [value] * n


class WarehouseManager(Module):
    """Official ``Warehouse_Manager``: owns the warehouses (keys ``weights.<i>``) of a network.

    Life cycle: ``layer = manager.reserve(...)`` for every KW layer, ``manager.store()`` (creates the
    warehouses), ``manager.allocate(layers)`` (gives each layer its attention, its cells and
    ``temp_bias``, in the order given: pass the layers in the official ``network.modules()`` order,
    or a :class:`Module` whose registration order is that order). Per-warehouse options
    (``reduction``, ``cell_num_ratio``, ``cell_inplane_ratio``, ``cell_outplane_ratio``,
    ``spatial_partition``) take a scalar or one value per warehouse (insertion order);
    ``nonlocal_basis_ratio`` is a scalar. The attention norm is BatchNorm1d.

    ``sharing_range`` fuses warehouse names: each ``_``-separated part of ``warehouse_name`` that
    starts with an entry of ``sharing_range`` becomes that entry (``('layer', 'conv')`` maps
    ``stage2_layer3_conv1`` to ``stage2_layer_conv``). As officially, a string is iterated character
    by character (the configs pass ``"layer_conv"``, which fuses by first letter).

    Parameters
    ----------
    reduction : float or sequence
        Attention width factor, per warehouse.
    cell_num_ratio, cell_inplane_ratio, cell_outplane_ratio : float or sequence
        The official cell-count and cell-size ratios, per warehouse.
    sharing_range : str or sequence of str
        Name prefixes whose warehouses are fused (above).
    nonlocal_basis_ratio : float > 0
        Below 1: the attention's basis mode.
    spatial_partition : bool or sequence
        Partition the kernel spatially into cells (official ``spatial_partition``).
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, reduction=0.0625, cell_num_ratio=1, cell_inplane_ratio=1, cell_outplane_ratio=1,
                 sharing_range=(), nonlocal_basis_ratio=1, spatial_partition=True, *,
                 dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        if isinstance(nonlocal_basis_ratio, (tuple, list)):
            raise TypeError(f"nonlocal_basis_ratio must be a scalar (the official code does not "
                            f"parse it per warehouse), got {nonlocal_basis_ratio!r}")
        self.nonlocal_basis_ratio = real(nonlocal_basis_ratio, 'nonlocal_basis_ratio', 0, strict_low=True)
        if not isinstance(sharing_range, (str, tuple, list)) or \
                not all(isinstance(s, str) for s in sharing_range):
            raise TypeError(f"sharing_range must be a tuple of strings, got {sharing_range!r}")
        self.sharing_range = sharing_range
        self._options = dict(reduction=reduction, cell_num_ratio=cell_num_ratio,
                             cell_inplane_ratio=cell_inplane_ratio,
                             cell_outplane_ratio=cell_outplane_ratio, spatial_partition=spatial_partition)
        for key, value in self._options.items():         # each value, before the warehouses exist
            for v in (value if isinstance(value, (tuple, list)) else (value,)):
                if key == 'spatial_partition':
                    flag(v, key)
                else:
                    real(v, key, 0, strict_low=True)
        self.warehouses = {}   # fused name -> reserved layers, in reserve order
        self.options = None    # per-warehouse options after store()
        self._allocated = False

    def fuse_warehouse_name(self, warehouse_name):
        """Official ``fuse_warehouse_name`` (see the class docstring)."""
        fused = []
        for part in warehouse_name.split('_'):
            for prefix in self.sharing_range:
                if part.startswith(prefix):
                    part = prefix
            fused.append(part)
        return '_'.join(fused)

    def reserve(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                bias=True, warehouse_name='default', enabled=True):
        """A :class:`KWConv2d` whose kernel will come from warehouse ``warehouse_name`` (fused).

        ``enabled=False`` (official flag) returns a plain :class:`~numpyconv.Conv2d` instead (keys
        ``weight``, ``bias``), which reserves nothing in any warehouse.
        """
        if not enabled:
            return Conv2d(in_planes, out_planes, kernel_size, stride, padding, dilation, groups, bias,
                          dtype=self.dtype, rng=self.rng)
        if self.options is not None:
            raise RuntimeError("reserve() after store(): reserve every layer first, then store()")
        if not isinstance(warehouse_name, str):
            raise TypeError(f"warehouse_name must be a str, got {warehouse_name!r}")
        name = self.fuse_warehouse_name(warehouse_name)
        names = list(self.warehouses) + ([] if name in self.warehouses else [name])
        layer = KWConv2d(in_planes, out_planes, kernel_size, stride, padding, dilation, groups, bias,
                         warehouse_id=names.index(name), warehouse_manager=self, dtype=self.dtype,
                         rng=self.rng)
        self.warehouses.setdefault(name, []).append(layer)
        return layer

    def store(self):
        """Create one warehouse per fused name (official ``store``); keys ``weights.<i>``."""
        if self.options is not None:
            raise RuntimeError("store() was already called")
        if not self.warehouses:
            raise RuntimeError("store() needs at least one reserved layer")
        n = len(self.warehouses)
        options = {k: _per_warehouse(v, n, k) for k, v in self._options.items()}
        for key in ('reduction', 'cell_num_ratio', 'cell_inplane_ratio', 'cell_outplane_ratio'):
            options[key] = [real(v, key, 0, strict_low=True) for v in options[key]]
        shapes = []
        for i, layers in enumerate(self.warehouses.values()):
            cell = self._cell_shape(i, layers, options)
            total = sum(layer.cell_layout(cell).m for layer in layers)
            shapes.append((max(int(total * options['cell_num_ratio'][i]), 1),) + cell)   # (eq. 32)
        for i, shape in enumerate(shapes):   # allocate() initialises every cell (official: randn
            self.add_param(f'weights.{i}', np.zeros(shape, dtype=self.dtype))   # then overwritten)
        self.options = options

    @staticmethod
    def _cell_shape(i, layers, options):
        """``(c_out, c_in, ckh, ckw)`` of warehouse ``i`` from the gcds of its layers' channels."""
        out_gcd = math.gcd(*(layer.out_planes for layer in layers))
        in_gcd = math.gcd(*(layer.in_planes // layer.groups for layer in layers))
        kernels = {layer.kernel_size for layer in layers}
        spatial = options['spatial_partition'][i]
        if not spatial and len(kernels) > 1:
            raise ValueError(f"spatial_partition=False needs one kernel size per warehouse; warehouse "
                             f"{i} has {sorted(kernels)}")
        c_in = max(int(in_gcd * options['cell_inplane_ratio'][i]), 1)                 # (eq. 31)
        c_out = max(int(out_gcd * options['cell_outplane_ratio'][i]), 1)
        return (c_out, c_in) + ((1, 1) if spatial else kernels.pop())

    def _layer_list(self, layers):
        if isinstance(layers, Module):
            layers = [m for _, m in layers.named_modules() if isinstance(m, KWConv2d)]
        given = layers
        try:
            layers = list(layers)
        except TypeError:
            layers = None
        if layers is None or not all(isinstance(m, KWConv2d) for m in layers):
            raise TypeError(f"allocate takes the reserved KWConv2d layers (a sequence of them, or a "
                            f"Module holding them), got {type(given).__name__} {given!r:.80}")
        reserved = [layer for group in self.warehouses.values() for layer in group]
        foreign = [layer for layer in layers if not any(layer is r for r in reserved)]
        if foreign:
            raise ValueError(f"allocate: {len(foreign)} of the given layers were not reserved by this "
                             f"manager (got {foreign[0]!r})")
        distinct = len({id(layer) for layer in layers})
        if distinct != len(layers) or distinct != len(reserved):
            raise ValueError(f"allocate needs every reserved layer exactly once: {len(reserved)} "
                             f"reserved, got {len(layers)} ({distinct} distinct)")
        return layers

    def allocate(self, layers):
        """Give each layer its attention and cells, in the order given (official ``allocate``).

        ``layers``: every reserved layer, as a sequence or a :class:`Module` (its KWConv2d layers in
        registration order). Each layer's cells are re-initialised with
        ``kaiming_normal_(mode='fan_out')`` on its slice viewed as ``(cells*c_out, c_in, ckh, ckw)``.
        Raises ``ValueError`` when the layers do not own every cell exactly (official assertion).
        """
        if self.options is None:
            raise RuntimeError("allocate() needs store() first")
        if self._allocated:
            raise RuntimeError("allocate() was already called")
        layers = self._layer_list(layers)
        params = self.params
        ends = [0] * len(self.warehouses)
        for layer in layers:
            i = layer.warehouse_id
            weights = params[f'weights.{i}']
            start = ends[i]
            ends[i] = layer._init_attention(weights.shape, start, self.options['reduction'][i],
                                            self.options['cell_num_ratio'][i], self.nonlocal_basis_ratio)
            if ends[i] > start:                          # fan_out = owned cells * c_out * ckh * ckw
                cells = kaiming_normal_fan_out(self.rng, ((ends[i] - start) * weights.shape[1],)
                                               + weights.shape[2:], self.dtype)
                weights[start:ends[i]] = cells.reshape((ends[i] - start,) + weights.shape[1:])
        for i, end in enumerate(ends):
            if end != params[f'weights.{i}'].shape[0]:
                raise ValueError(f"warehouse {i} has {params[f'weights.{i}'].shape[0]} cells but its "
                                 f"layers own {end}: cell_num_ratio={self.options['cell_num_ratio'][i]} "
                                 f"does not split the mixtures evenly (official assertion)")
        self._allocated = True


def kw_count(network, manager, input_shape):
    """``numpyconv.count`` for a network of KW layers: ``(params, multiply_adds)`` with every warehouse
    counted once, whether or not ``manager`` is a child module of ``network``."""
    if not isinstance(manager, WarehouseManager):
        raise TypeError(f"manager must be the network's WarehouseManager, got {type(manager).__name__}")
    params, macs = count(network, input_shape)
    if not any(m is manager for _, m in network.named_modules()):
        params += manager.num_params()
    return params, macs
