r"""Multi-scale deformable attention (Deformable DETR): the op and the ``MSDeformAttn`` layer.

Op shapes (Deformable-DETR ``MSDeformAttnFunction`` / ``ms_deform_attn_core_pytorch``)::

    value               (N, S, M, D)          S = sum_l H_l * W_l, levels one after another,
                                              each row-major (docs/derivations/msdeformattn.md eq. 1)
    spatial_shapes      (L, 2)  integers      (H_l, W_l)
    level_start_index   (L,)    integers      start_l = sum_{l' < l} H_l' W_l'
    sampling_locations  (N, Lq, M, L, P, 2)   normalised (x, y): 0 = left / top edge of the level,
                                              1 = right / bottom edge
    attention_weights   (N, Lq, M, L, P)      used as given (the layer softmaxes them)
    out                 (N, Lq, M*D)

Each location is a point of its level in pixels (eq. 2)::

    w = x * W_l - 0.5,      h = y * H_l - 0.5

sampled bilinearly with zero padding by :mod:`numpyconv._bilinear` (eq. 3): nothing is sampled
unless ``-1 < h < H_l`` and ``-1 < w < W_l`` (the official CUDA kernel's rule), and a corner outside
the level contributes 0. The output of head ``m`` is the attention-weighted sum (eq. 4)::

    out[n, q, m*D + d] = sum_{l, p}  a[n, q, m, l, p] * B_l(value[n, :, m, d]; h, w)

Backward, with ``t_d = dout[n, q, m*D + d]``, ``a`` the attention weight, ``K_k`` the four corner
weights and ``s_k = sum_d t_d v_k[d]`` the dot products with the four corner rows (eq. 5-8):

* ``dvalue[n, corner k, m, :] += a * K_k * t``                                       (eq. 5)
* ``dattention[n, q, m, l, p] = sum_k K_k s_k``                                      (eq. 6)
* ``dlocation[..., 0] = W_l * a * sum_k dK_k/dw s_k``, ``[..., 1] = H_l * a * sum_k dK_k/dh s_k`` (eq. 7)

and nothing for a point outside ``-1 < h < H_l``, ``-1 < w < W_l``: exactly at ``h = -1`` (or
``w = -1``) the value is 0 and so is the location gradient, where ``grid_sample`` (the PyTorch path)
still has a slope towards row 0 (eq. 9). ``spatial_shapes`` and ``level_start_index`` get None.

In this file "kernel" is the official CUDA kernel only; the compiled Numba functions are *loops*
(``_forward_loop``, ``_backward_loop``). Their geometry is per level, not a convolution's: the
validated ``spatial_shapes`` and ``level_start_index`` as int64 arrays ``shapes (L, 2)`` and
``starts (L,)`` (``level_geometry``). The forward loop runs in parallel over queries ``(n, q)``,
each owning its output row; the backward loop over heads ``(n, m)``, each owning the ``value``
slice ``dvalue[n, :, m, :]`` and its queries' location and attention gradients, visited in a fixed
order, so the scatter into ``dvalue`` has no race and the results are bitwise equal at any thread
count. The ``D`` channels of a head are the innermost contiguous loop; corner weights and slopes
are computed in float64.

Layer ``MSDeformAttn`` (Deformable-DETR ``models/ops/modules/ms_deform_attn.py``), eq. 10-14::

    v   = value_proj(input_flatten)          rows where input_padding_mask is True set to 0
    o   = sampling_offsets(query)            (N, Lq, M, L, P, 2)
    a   = softmax over L*P of attention_weights(query)
    loc = ref[:, :, None, :, None, :] + o / (W_l, H_l)                   2-d reference points
    loc = ref[..., :2] + o / P * ref[..., 2:] * 0.5                       4-d reference boxes
    y   = output_proj(op(v, spatial_shapes, level_start_index, loc, a))

Its backward (eq. 15-19) returns ``(dquery, dreference_points, dinput_flatten)``.
"""
import math

import numpy as np
from numba import njit, prange

from ._bilinear import axpy, clamped_corners, corner_dots, corner_slopes, corners
from ._checks import Cache, check_cache, float_array, grad_out, positive_int, same_dtype
from ._parallel import threads_for
from .activations import softmax_backward, softmax_forward
from .blocks import linear_forward
from .layers import Linear
from .memory import require_memory
from .module import Module, xavier_uniform


# -- Numba loops -------------------------------------------------------------------------------
@njit(cache=True, inline='always')
def _pixel(loc, height, width):
    """``(h, w)`` in pixels of the level of a normalised location ``loc = (x, y)`` (eq. 2)."""
    return float(loc[1]) * height - 0.5, float(loc[0]) * width - 0.5


@njit(cache=True, inline='always')
def _inside(h, w, height, width):
    """The CUDA kernel's test: only ``-1 < h < H``, ``-1 < w < W`` is sampled (eq. 3)."""
    return -1.0 < h < height and -1.0 < w < width


@njit(cache=True, parallel=True)
def _forward_loop(value, shapes, starts, loc, attn, out):
    """``out (N, Lq, M, D)`` (zeros) ``+= a * B(value, h, w)`` (eq. 4); one task per query ``(n, q)``."""
    n, lq, heads, levels, points = attn.shape
    for task in prange(n * lq):
        b, q = task // lq, task % lq
        weights = np.empty(4, dtype=value.dtype)
        for m in range(heads):
            y = out[b, q, m]                                              # (D,) view
            for lvl in range(levels):
                height, width, start = shapes[lvl, 0], shapes[lvl, 1], starts[lvl]
                for p in range(points):
                    h, w = _pixel(loc[b, q, m, lvl, p], height, width)    # (eq. 2)
                    if not _inside(h, w, height, width):                  # (eq. 3)
                        continue
                    h0, w0, k00, k01, k10, k11 = corners(h, w, height, width)
                    r0, r1, c0, c1 = clamped_corners(h0, w0, height, width)
                    a = attn[b, q, m, lvl, p]
                    weights[0], weights[1], weights[2], weights[3] = a * k00, a * k01, a * k10, a * k11
                    v00, v01 = value[b, start + r0 * width + c0, m], value[b, start + r0 * width + c1, m]
                    v10, v11 = value[b, start + r1 * width + c0, m], value[b, start + r1 * width + c1, m]
                    a00, a01, a10, a11 = weights[0], weights[1], weights[2], weights[3]
                    for d in range(y.shape[0]):                           # (eq. 4)
                        y[d] += a00 * v00[d] + a01 * v01[d] + a10 * v10[d] + a11 * v11[d]


@njit(cache=True, parallel=True)
def _backward_loop(dout, value, shapes, starts, loc, attn, dvalue, dloc, dattn):
    """Gradients (eq. 5-7) into zeroed ``dvalue``, ``dloc``, ``dattn``; one task per head ``(n, m)``,
    which alone writes ``dvalue[n, :, m]`` and visits its queries in order (no race, fixed sums)."""
    n, lq, heads, levels, points = attn.shape
    for task in prange(n * heads):
        b, m = task // heads, task % heads
        weights = np.empty(4, dtype=value.dtype)
        for q in range(lq):
            t = dout[b, q, m]                                             # (D,) view
            for lvl in range(levels):
                height, width, start = shapes[lvl, 0], shapes[lvl, 1], starts[lvl]
                for p in range(points):
                    h, w = _pixel(loc[b, q, m, lvl, p], height, width)    # (eq. 2)
                    if not _inside(h, w, height, width):                  # (eq. 3, 9)
                        continue
                    h0, w0, k00, k01, k10, k11 = corners(h, w, height, width)
                    e00, e01, e10, e11, f00, f01, f10, f11 = corner_slopes(h, w, height, width)  # (eq. 8)
                    r0, r1, c0, c1 = clamped_corners(h0, w0, height, width)
                    i00, i01 = start + r0 * width + c0, start + r0 * width + c1
                    i10, i11 = start + r1 * width + c0, start + r1 * width + c1
                    s00, s01, s10, s11 = corner_dots(t, value[b, i00, m], value[b, i01, m],
                                                     value[b, i10, m], value[b, i11, m])
                    a = float(attn[b, q, m, lvl, p])
                    dattn[b, q, m, lvl, p] = k00 * s00 + k01 * s01 + k10 * s10 + k11 * s11     # (eq. 6)
                    dloc[b, q, m, lvl, p, 0] = width * a * (f00 * s00 + f01 * s01 + f10 * s10 + f11 * s11)
                    dloc[b, q, m, lvl, p, 1] = height * a * (e00 * s00 + e01 * s01 + e10 * s10
                                                             + e11 * s11)                       # (eq. 7)
                    weights[0], weights[1], weights[2], weights[3] = a * k00, a * k01, a * k10, a * k11
                    axpy(weights[0], t, dvalue[b, i00, m])                                      # (eq. 5)
                    axpy(weights[1], t, dvalue[b, i01, m])
                    axpy(weights[2], t, dvalue[b, i10, m])
                    axpy(weights[3], t, dvalue[b, i11, m])


# -- validation -----------------------------------------------------------------------------------
def _integers(a, name, hint):
    """``a`` as an int64 array; ``TypeError`` unless it holds integers."""
    arr = np.asarray(a)
    if arr.dtype.kind not in 'iu':
        raise TypeError(f"{name} must be an integer array {hint}, got dtype {arr.dtype}"
                        + (f" ({a!r})" if arr.size <= 8 else ''))
    return np.ascontiguousarray(arr, dtype=np.int64)


def level_geometry(spatial_shapes, level_start_index=None):
    """Validated ``(shapes (L, 2), starts (L,))`` int64 arrays (eq. 1).

    ``spatial_shapes`` holds positive integers ``(H_l, W_l)``, ``L >= 1``; ``level_start_index``,
    when given, must be their exclusive running sum of ``H_l * W_l``.
    """
    shapes = _integers(spatial_shapes, 'spatial_shapes', '(L, 2) of (H_l, W_l)')
    if shapes.ndim != 2 or shapes.shape[0] < 1 or shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must have shape (L, 2) with L >= 1 levels (H_l, W_l), got "
                         f"shape {shapes.shape}")
    if (shapes < 1).any():
        raise ValueError(f"spatial_shapes must be positive (H_l, W_l >= 1), got {shapes.tolist()}")
    sizes = [int(h) * int(w) for h, w in shapes]
    expected = np.array([sum(sizes[:k]) for k in range(len(sizes))], dtype=np.int64)
    if level_start_index is not None:
        starts = _integers(level_start_index, 'level_start_index', '(L,)')
        if starts.shape != expected.shape or not np.array_equal(starts, expected):
            raise ValueError(f"level_start_index must be the start of each level in value, "
                             f"{expected.tolist()} for spatial_shapes {shapes.tolist()}, got "
                             f"{starts.tolist() if starts.size <= 16 else f'shape {starts.shape}'}")
    return shapes, expected


def check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Validate the op's operands; return ``(shapes, starts)`` (see :func:`ms_deform_attn_forward`)."""
    float_array(value, 'value', 4, "(N, S, M, D)")
    shapes, starts = level_geometry(spatial_shapes, level_start_index)
    n, s, heads, _ = value.shape
    total = int(shapes.prod(axis=1).sum())
    if s != total:
        raise ValueError(f"value must have shape (N, S, M, D) with S = sum of H_l * W_l = {total} for "
                         f"spatial_shapes {shapes.tolist()}, got {value.shape}")
    levels = shapes.shape[0]
    float_array(sampling_locations, 'sampling_locations', 6, "(N, Lq, M, L, P, 2)")
    lq, points = sampling_locations.shape[1], sampling_locations.shape[4]
    expected = (n, lq, heads, levels, points, 2)
    if sampling_locations.shape != expected:
        raise ValueError(f"sampling_locations must have shape (N, Lq, M, L, P, 2) = {expected} for "
                         f"value {value.shape} and L = {levels} levels, got {sampling_locations.shape}")
    float_array(attention_weights, 'attention_weights', 5, "(N, Lq, M, L, P)")
    if attention_weights.shape != expected[:5]:
        raise ValueError(f"attention_weights must have shape (N, Lq, M, L, P) = {expected[:5]} (as "
                         f"sampling_locations without its last axis), got {attention_weights.shape}")
    same_dtype(('value', value), ('sampling_locations', sampling_locations),
               ('attention_weights', attention_weights))
    return shapes, starts


def pixel_locations(spatial_shapes, sampling_locations):
    """``(N, Lq, M, L, P, 2)`` float64 pixel coordinates ``(w, h) = (x W_l - 0.5, y H_l - 0.5)``
    of each level (eq. 2), computed as the loops compute them; ``spatial_shapes`` validated."""
    sizes = np.asarray(spatial_shapes, dtype=np.float64)[:, ::-1]        # (L, 2): (W_l, H_l)
    return sampling_locations.astype(np.float64) * sizes[:, None, :] - 0.5


def _contiguous(a, name):
    require_memory(a.shape, a.dtype, f"{name} of shape {a.shape}", what=f"a contiguous copy of {name}")
    return np.ascontiguousarray(a)


def _work(attn, d):
    """Multiply-adds of one pass: 4 corners per channel per sampled point."""
    return 4 * attn.size * d


# -- the op -------------------------------------------------------------------------------------
def ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations,
                           attention_weights):
    """Multi-scale deformable attention (``MSDeformAttnFunction``); returns ``(out, cache)``.

    Parameters
    ----------
    value : ndarray (N, S, M, D), float32 or float64
        ``M`` heads of ``D`` channels at the ``S = sum_l H_l W_l`` pixels of every level.
    spatial_shapes : int array (L, 2)
        ``(H_l, W_l)`` of each level, positive.
    level_start_index : int array (L,)
        First row of each level in ``value``: ``[0, H_0 W_0, H_0 W_0 + H_1 W_1, ...]``.
    sampling_locations : ndarray (N, Lq, M, L, P, 2), value's dtype
        Normalised ``(x, y)`` of each point: 0 is the left / top edge of the level, 1 the right /
        bottom edge (eq. 2).
    attention_weights : ndarray (N, Lq, M, L, P), value's dtype
        Weight of each point (used as given).

    Returns
    -------
    out : ndarray (N, Lq, M*D)
        Head ``m`` in channels ``[m*D, (m+1)*D)`` (eq. 4).
    cache : Cache
        ``Cache('ms_deform_attn')`` with ``value``, ``shapes`` / ``starts`` (the validated level geometry,
        int64), ``loc`` and ``attn`` (contiguous copies of the locations and weights); none of them None.
    """
    shapes, starts = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights)
    n, _, heads, d = value.shape
    lq = sampling_locations.shape[1]
    require_memory((n, lq, heads * d), value.dtype,
                   f"value of shape {value.shape} and sampling_locations of shape "
                   f"{sampling_locations.shape}")
    value = _contiguous(value, 'value')
    loc = _contiguous(sampling_locations, 'sampling_locations')
    attn = _contiguous(attention_weights, 'attention_weights')
    out = np.zeros((n, lq, heads, d), dtype=value.dtype)
    with threads_for(_work(attn, d)):
        _forward_loop(value, shapes, starts, loc, attn, out)
    cache = Cache('ms_deform_attn', value=value, shapes=shapes, starts=starts, loc=loc, attn=attn)
    return out.reshape(n, lq, heads * d), cache


def ms_deform_attn_backward(dout, cache):
    """Gradients ``(dvalue, None, None, dsampling_locations, dattention_weights)`` (eq. 5-7).

    Parameters
    ----------
    dout : ndarray (N, Lq, M*D)
        Gradient of the output (cast to the forward's dtype).
    cache : Cache
        From :func:`ms_deform_attn_forward` (not modified).

    Returns
    -------
    tuple
        ``dvalue (N, S, M, D)``, None (``spatial_shapes``), None (``level_start_index``),
        ``dsampling_locations (N, Lq, M, L, P, 2)``, ``dattention_weights (N, Lq, M, L, P)``.
    """
    cache = check_cache(cache, 'ms_deform_attn')
    value, loc, attn = cache['value'], cache['loc'], cache['attn']
    n, _, heads, d = value.shape
    lq = attn.shape[1]
    dout = grad_out(dout, (n, lq, heads * d), value.dtype)
    dout = np.ascontiguousarray(dout).reshape(n, lq, heads, d)
    dvalue, dloc, dattn = np.zeros_like(value), np.zeros_like(loc), np.zeros_like(attn)
    with threads_for(_work(attn, d)):
        _backward_loop(dout, value, cache['shapes'], cache['starts'], loc, attn, dvalue, dloc, dattn)
    return dvalue, None, None, dloc, dattn


# -- the layer ----------------------------------------------------------------------------------
def initial_offsets(n_heads, n_levels, n_points):
    """The official ``sampling_offsets`` bias ``(n_heads, n_levels, n_points, 2)`` (eq. 20): head ``h``
    points along angle ``2 pi h / n_heads``, ``(cos, sin)`` scaled so that its larger component is
    +-1, and point ``i`` at ``i + 1`` times that step: a ring per point index, growing outwards."""
    theta = np.arange(n_heads) * (2.0 * math.pi / n_heads)
    grid = np.stack([np.cos(theta), np.sin(theta)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)                     # (n_heads, 2)
    scale = np.arange(1, n_points + 1, dtype=np.float64)[None, None, :, None]
    return np.broadcast_to(grid[:, None, None, :], (n_heads, n_levels, n_points, 2)) * scale


class MSDeformAttn(Module):
    """Multi-scale deformable attention, Deformable-DETR ``MSDeformAttn`` (eq. 10-20).

    Keys: ``sampling_offsets.weight (M*L*P*2, d_model)`` / ``.bias``, ``attention_weights.weight
    (M*L*P, d_model)`` / ``.bias``, ``value_proj.weight (d_model, d_model)`` / ``.bias``,
    ``output_proj.weight`` / ``.bias``. Initialisation as the official ``_reset_parameters``: zero
    offset weights and the ring of :func:`initial_offsets` as their bias, zero attention weights and
    bias (uniform attention), Xavier-uniform projections with zero biases. The official module's
    warning for a head dimension that is not a power of two (about its CUDA kernel's speed) does
    not apply here.

    Parameters
    ----------
    d_model : int
        Channels of queries, input and output; divisible by ``n_heads``.
    n_levels, n_heads, n_points : int
        Feature levels ``L``, heads ``M`` and points per head and level ``P``.
    dtype, rng : keyword-only
        Parameter dtype (float32 or float64) and seed / Generator for the initialisation.
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.d_model = positive_int(d_model, 'd_model')
        self.n_levels = positive_int(n_levels, 'n_levels')
        self.n_heads = positive_int(n_heads, 'n_heads')
        self.n_points = positive_int(n_points, 'n_points')
        if d_model % n_heads:
            raise ValueError(f"d_model must be divisible by n_heads, got d_model={d_model} and "
                             f"n_heads={n_heads}")
        self.head_dim = d_model // n_heads
        kw = dict(dtype=self.dtype, rng=self.rng)
        per_query = n_heads * n_levels * n_points
        self.sampling_offsets = self.add_module('sampling_offsets', Linear(d_model, per_query * 2, **kw))
        self.attention_weights = self.add_module('attention_weights', Linear(d_model, per_query, **kw))
        self.value_proj = self.add_module('value_proj', Linear(d_model, d_model, **kw))
        self.output_proj = self.add_module('output_proj', Linear(d_model, d_model, **kw))
        self._reset_parameters()

    def _reset_parameters(self):
        offsets = self.sampling_offsets.params
        offsets['weight'][...] = 0
        offsets['bias'][...] = initial_offsets(self.n_heads, self.n_levels, self.n_points).reshape(-1)
        self.attention_weights.params['weight'][...] = 0
        self.attention_weights.params['bias'][...] = 0
        for linear in (self.value_proj, self.output_proj):
            weight = linear.params['weight']
            weight[...] = xavier_uniform(self.rng, weight.shape, self.dtype)
            linear.params['bias'][...] = 0

    # -- checks ---------------------------------------------------------------------------------
    def _check_array(self, a, name, ndim, hint):
        float_array(a, name, ndim, hint)
        if a.dtype != self.dtype:
            raise TypeError(f"MSDeformAttn holds {self.dtype} parameters, got {name} of dtype {a.dtype}; "
                            f"build the layer with dtype={a.dtype} or cast {name}")
        return a

    def _check_inputs(self, query, reference_points, input_flatten, input_spatial_shapes,
                      input_level_start_index, input_padding_mask):
        """Validate the forward's inputs; return ``(shapes, starts)``."""
        c = self.d_model
        self._check_array(query, 'query', 3, f"(N, Lq, {c})")
        n, lq = query.shape[:2]
        if query.shape[2] != c:
            raise ValueError(f"query must have shape (N, Lq, d_model={c}), got {query.shape}")
        self._check_array(input_flatten, 'input_flatten', 3, f"(N, S, {c})")
        if input_flatten.shape[0] != n or input_flatten.shape[2] != c:
            raise ValueError(f"input_flatten must have shape ({n}, S, {c}) (N of query, d_model), got "
                             f"{input_flatten.shape}")
        shapes, starts = level_geometry(input_spatial_shapes, input_level_start_index)
        if shapes.shape[0] != self.n_levels:
            raise ValueError(f"input_spatial_shapes must have n_levels={self.n_levels} rows, got "
                             f"{shapes.shape[0]}")
        total = int(shapes.prod(axis=1).sum())
        if input_flatten.shape[1] != total:
            raise ValueError(f"input_flatten must have S = sum of H_l * W_l = {total} rows for "
                             f"input_spatial_shapes {shapes.tolist()}, got {input_flatten.shape}")
        self._check_array(reference_points, 'reference_points', 4, f"(N, Lq, {self.n_levels}, 2 or 4)")
        if reference_points.shape[:3] != (n, lq, self.n_levels) or reference_points.shape[3] not in (2, 4):
            raise ValueError(f"reference_points must have shape ({n}, {lq}, {self.n_levels}, 2) (points) "
                             f"or ({n}, {lq}, {self.n_levels}, 4) (boxes), got {reference_points.shape}")
        if input_padding_mask is not None:
            mask = np.asarray(input_padding_mask)
            if mask.dtype != np.bool_:
                raise TypeError(f"input_padding_mask must be a bool array (True for padding), got "
                                f"dtype {mask.dtype}")
            if mask.shape != (n, total):
                raise ValueError(f"input_padding_mask must have shape (N, S) = {(n, total)}, got "
                                 f"{mask.shape}")
        return shapes, starts

    # -- forward ----------------------------------------------------------------------------------
    def _heads(self, query, reference_points, shapes, keep):
        """Sampling locations (eq. 12-13) and softmaxed attention (eq. 11) of every query.

        With ``keep`` the linear layers keep their caches for :meth:`backward`; without it nothing
        is kept. Returns ``(locations, attention, offsets, softmax_cache)``.
        """
        n, lq = query.shape[:2]
        heads, levels, points = self.n_heads, self.n_levels, self.n_points

        def project(linear):
            if keep:
                return linear(query)
            return linear_forward(query, linear.params['weight'], linear.params['bias'])[0]
        offsets = project(self.sampling_offsets).reshape(n, lq, heads, levels, points, 2)
        logits = project(self.attention_weights).reshape(n, lq, heads, levels * points)
        attention, softmax_cache = softmax_forward(logits, axis=-1)               # (eq. 11)
        attention = attention.reshape(n, lq, heads, levels, points)
        ref = reference_points[:, :, None, :, None, :]                           # (N, Lq, 1, L, 1, 2|4)
        if reference_points.shape[-1] == 2:
            normalizer = shapes[:, ::-1].astype(self.dtype)[None, None, None, :, None, :]   # (W_l, H_l)
            locations = ref + offsets / normalizer                               # (eq. 12)
        else:
            locations = ref[..., :2] + offsets / points * ref[..., 2:] * 0.5     # (eq. 13)
        return locations, attention, offsets, softmax_cache

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes,
                input_level_start_index, input_padding_mask=None):
        """The attended output (eq. 10-14).

        Parameters
        ----------
        query : ndarray (N, Lq, d_model)
        reference_points : ndarray (N, Lq, n_levels, 2) or (N, Lq, n_levels, 4)
            Normalised ``(x, y)`` per level in [0, 1] (top-left 0, bottom-right 1), or reference
            boxes ``(x, y, w, h)``.
        input_flatten : ndarray (N, S, d_model)
            The levels' pixels, level after level, each row-major; ``S = sum_l H_l W_l``.
        input_spatial_shapes : int array (n_levels, 2)
            ``(H_l, W_l)``.
        input_level_start_index : int array (n_levels,)
            ``[0, H_0 W_0, ...]``.
        input_padding_mask : bool array (N, S), optional
            True for padding pixels (their values are set to 0).

        Returns
        -------
        ndarray (N, Lq, d_model)
        """
        shapes, starts = self._check_inputs(query, reference_points, input_flatten, input_spatial_shapes,
                                            input_level_start_index, input_padding_mask)
        n, s = input_flatten.shape[:2]
        value = self.value_proj(input_flatten)                                   # (eq. 10)
        mask = None if input_padding_mask is None else np.asarray(input_padding_mask)
        if mask is not None:
            value[mask] = 0
        locations, attention, offsets, softmax_cache = self._heads(query, reference_points, shapes,
                                                                   keep=True)
        core, core_cache = ms_deform_attn_forward(value.reshape(n, s, self.n_heads, self.head_dim),
                                                  shapes, starts, locations, attention)
        self._cache = dict(core=core_cache, softmax=softmax_cache, offsets=offsets, mask=mask,
                           reference_points=reference_points, shapes=shapes)
        return self.output_proj(core)                                            # (eq. 14)

    def backward(self, dout):
        """``(dquery, dreference_points, dinput_flatten)``; every parameter gradient accumulates
        into ``grads`` (eq. 15-19).

        Parameters
        ----------
        dout : ndarray (N, Lq, d_model)

        Returns
        -------
        tuple of ndarrays
            ``dquery (N, Lq, d_model)``, ``dreference_points`` (shape of ``reference_points``),
            ``dinput_flatten (N, S, d_model)``.
        """
        cache = self._cache
        ref, offsets = cache['reference_points'], cache['offsets']
        n, lq = ref.shape[:2]
        dout = grad_out(dout, (n, lq, self.d_model), self.dtype)
        dcore = self.output_proj.backward(dout)
        dvalue, _, _, dloc, dattention = ms_deform_attn_backward(dcore, cache['core'])
        per_head = self.n_levels * self.n_points
        dlogits, = softmax_backward(dattention.reshape(n, lq, self.n_heads, per_head), cache['softmax'])
        dquery = self.attention_weights.backward(dlogits.reshape(n, lq, self.n_heads * per_head))  # (eq. 15)
        dref = np.empty_like(ref)
        dref[..., :2] = dloc.sum(axis=(2, 4))                                    # (eq. 16, 17)
        if ref.shape[-1] == 2:
            normalizer = cache['shapes'][:, ::-1].astype(self.dtype)[None, None, None, :, None, :]
            doffsets = dloc / normalizer                                         # (eq. 16)
        else:
            wh = ref[:, :, None, :, None, 2:]
            dref[..., 2:] = (dloc * offsets / self.n_points * 0.5).sum(axis=(2, 4))   # (eq. 17)
            doffsets = dloc * wh / self.n_points * 0.5
        dquery = dquery + self.sampling_offsets.backward(doffsets.reshape(n, lq, 2 * self.n_heads * per_head))
        dvalue = dvalue.reshape(n, dvalue.shape[1], self.d_model)                # (eq. 19)
        if cache['mask'] is not None:
            dvalue[cache['mask']] = 0                                            # (eq. 18)
        return dquery, dref, self.value_proj.backward(dvalue)

    def sampling_locations(self, query, reference_points, input_flatten, input_spatial_shapes,
                           input_level_start_index, input_padding_mask=None):
        """Where this layer samples, for the forward's inputs; nothing is kept for a backward pass.

        Returns
        -------
        locations : ndarray (N, Lq, n_heads, n_levels, n_points, 2)
            Pixel coordinates ``(x, y)`` (column, row) of each point in its own level,
            ``loc * (W_l, H_l) - 0.5`` (eq. 2, 21).
        weights : ndarray (N, Lq, n_heads, n_levels, n_points)
            The softmaxed attention weight of each point.
        """
        shapes, _ = self._check_inputs(query, reference_points, input_flatten, input_spatial_shapes,
                                       input_level_start_index, input_padding_mask)
        locations, attention, _, _ = self._heads(query, reference_points, shapes, keep=False)
        return pixel_locations(shapes, locations).astype(self.dtype), attention
