r"""DCNv3 (InternImage): the core sampling op on NHWC tensors and the ``DCNv3`` layer.

Core op shapes (the official ``DCNv3Function`` / ``dcnv3_core_pytorch`` layout)::

    x      (N, H, W, G*D)          G = group, D = group_channels, channel g*D + c
    offset (N, Ho, Wo, G*P*2)      (dx, dy) pairs: offset[..., 2q] = dx, offset[..., 2q + 1] = dy
    mask   (N, Ho, Wo, G*P)        one weight per point, used as given (the layer softmaxes it)
    y      (N, Ho, Wo, G*D)        Ho, Wo: the standard convolution output size

with ``P = kh*kw - remove_center`` points per group and ``q = g*P + p``. Points are
**column-major**: ``for i in range(kw): for j in range(kh)``, the centre skipped when
``remove_center`` (docs/derivations/dcnv3.md, eq. 1). Sampling location of point ``p`` at output
``(r, s)`` with scale ``sigma = offset_scale`` and ``half = (dilation*(k-1)) // 2`` (eq. 2)::

    h = r*sh - pt + half_h - sigma*half_h + sigma*(j_p*dh + dy)
    w = s*sw - pl + half_w - sigma*half_w + sigma*(i_p*dw + dx)

(``offset_scale`` scales the base grid as well as the offsets), rounded as InternImage's
``dcnv3_core_pytorch`` rounds it: the grid part in float32, in units of the padded size, the offset
added in the input's dtype (eq. 2a-2b, :func:`numpyconv._bilinear.dcn_base_grid`). Forward
(eq. 4), with ``B`` the zero-padding bilinear rule of :mod:`numpyconv._bilinear` (eq. 3)::

    y[n, r, s, g*D + c] = sum_p  mask[n, r, s, q] * B(x[n, :, :, g*D + c], h, w)

Backward, ``t_c = dy[n, r, s, g*D + c]``, ``m = mask[n, r, s, q]``, ``K_k`` the four corner weights
and ``dK_k/dh``, ``dK_k/dw`` their slopes (eq. 8):

* ``dx[n, h_k, w_k, g*D + c] += m * t_c * K_k``  for the four corners k          (eq. 5)
* ``dmask[n, r, s, q] = sum_c t_c * B_c``                                         (eq. 6)
* ``doffset[n, r, s, 2q] = sigma * m * sum_c t_c dB_c/dw``,
  ``doffset[n, r, s, 2q + 1] = sigma * m * sum_c t_c dB_c/dh``                    (eq. 7)

Kernels: the forward runs in parallel over output rows ``(n, r)``; the backward over ``(n, g)``
pairs, which own disjoint channel slices of ``dx`` (no race, fixed summation order: results do not
depend on the thread count). Corner weights are computed once per ``(n, r, s, g, p)``; the group's
``D`` channels are the innermost, contiguous loop; the backward reads each corner row once, as the
dot products ``s_k = sum_c t_c v_k[c]`` that give the mask and both offset gradients (eq. 6-7).

Layer ``DCNv3`` (InternImage ``DCNv3_pytorch``, LayerNorm + GELU), NCHW in and out (eq. 10)::

    v  = input_proj(x)                      x1 = GELU(LN(dwconv(x)))  (LN eps 1e-6, channels last)
    o  = core(v, offset(x1), softmax_P(mask(x1)))
    z  = o*(1 - s) + v*s,  s = sigmoid(x1 W_cfs^T + b_cfs)  (only with center_feature_scale)
    y  = output_proj(z)

Its backward runs the chain in reverse (eq. 11-13). MACs (eq. 14): linears and the depthwise conv
as usual, the core ``5 * Ho*Wo * P * C`` as InternImage's ``get_flops.py`` counts it.
"""
import math
import numbers

import numpy as np
from numba import njit, prange

from ._bilinear import corner_slopes, corners, dcn_coordinate_jit, dcn_grids
from ._checks import Cache, check_cache, expect_shape, flag, float_array, grad_out, positive_int, same_dtype
from ._parallel import threads_for
from .activations import GELU, sigmoid_backward, sigmoid_forward, softmax_backward, softmax_forward
from .blocks import linear_backward, linear_forward
from .conv import DepthwiseConv2d, conv_geometry
from .layers import LayerNorm, Linear
from .memory import require_memory
from .module import Module, Sequential, xavier_uniform


# -- geometry ----------------------------------------------------------------------------------
def sampling_points(kernel, dilation, remove_center):
    """``(P, 2)`` int array of ``(j*dh, i*dw)`` per point, column-major, centre removed (eq. 1)."""
    (kh, kw), (dh, dw) = kernel, dilation
    return np.array([(j * dh, i * dw) for i in range(kw) for j in range(kh)
                     if not (remove_center and i == kw // 2 and j == kh // 2)],
                    dtype=np.int64).reshape(-1, 2)


def _check_flag(value, name):
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral)
                                               and value in (0, 1)):
        return int(value)
    raise TypeError(f"{name} must be a bool (or 0/1), got {value!r}")


def check_offset_scale(offset_scale):
    """``offset_scale`` as a float (it scales the base grid and the offsets, eq. 2)."""
    if not isinstance(offset_scale, numbers.Real) or not math.isfinite(offset_scale):
        raise TypeError(f"offset_scale must be a finite real number, got {offset_scale!r}")
    return float(offset_scale)


def core_setup(x, kernel_size, stride, padding, dilation, group, group_channels, offset_scale,
               remove_center):
    """Validate ``x`` and the hyper-parameters shared by dcnv3 and dcnv4; return a setup dict.

    Keys: ``geo`` (the ``Geometry`` of :func:`numpyconv.conv_geometry`), ``points`` (``P``),
    ``group``, ``scale``, ``out_shape`` ``(N, Ho, Wo, C)`` and ``grids`` (the column-major points'
    :func:`numpyconv._bilinear.dcn_grids`, as the Numba loops take them).
    """
    float_array(x, 'x', 4, "(N, H, W, group * group_channels) (channels last)")
    group = positive_int(group, 'group')
    group_channels = positive_int(group_channels, 'group_channels')
    n, height, width, channels = x.shape
    if channels != group * group_channels:
        raise ValueError(f"x must have shape (N, H, W, {group * group_channels}): channels = "
                         f"group * group_channels = {group} * {group_channels}, got {x.shape}")
    geo = conv_geometry((height, width), kernel_size, stride, padding, dilation)
    require_memory((n, *geo.out_hw, channels), x.dtype, f"x of shape {x.shape} with kernel_size="
                   f"{kernel_size!r}, stride={stride!r}, padding={padding!r}, dilation={dilation!r}")
    remove_center = _check_flag(remove_center, 'remove_center')
    kh, kw = geo.kernel
    if remove_center and (kh % 2 == 0 or kw % 2 == 0):
        raise ValueError(f"remove_center is only compatible with an odd kernel size, got "
                         f"kernel_size {geo.kernel}")
    taps = sampling_points(geo.kernel, geo.dilation, remove_center)
    scale = check_offset_scale(offset_scale)
    return dict(geo=geo, points=taps.shape[0], group=group, scale=scale,
                grids=dcn_grids((height, width), geo, taps, scale), out_shape=(n, *geo.out_hw, channels))


# -- Numba loops (shared with numpyconv.dcnv4) -------------------------------------------------


@njit(cache=True, inline='always')
def _clamped(h0, w0, height, width):
    """In-bounds read indices of the four corners; an out-of-image corner has weight 0 anyway."""
    return max(h0, 0), min(h0 + 1, height - 1), max(w0, 0), min(w0 + 1, width - 1)


@njit(cache=True, inline='always')
def _location(base_h, base_w, frame, offset, b, row, col, q, p, scale):
    """Sampling ``(h, w)`` of point ``p`` (group point ``q``) of output ``(b, row, col)`` (eq. 2b);
    ``base_h``, ``base_w``, ``frame`` as :func:`numpyconv._bilinear.dcn_grids` returns them."""
    top, left, hp, wp = frame
    return (dcn_coordinate_jit(base_h[row, p], offset[b, row, col, 2 * q + 1], scale, hp, top),
            dcn_coordinate_jit(base_w[col, p], offset[b, row, col, 2 * q], scale, wp, left))


@njit(cache=True, inline='always')
def _corner_dots(t, v00, v01, v10, v11):
    """``s_k = sum_c t[c] * v_k[c]`` for the four corner rows (eq. 6-7), summed in order."""
    s00 = s01 = s10 = s11 = 0.0
    for c in range(t.shape[0]):
        s00 += t[c] * v00[c]
        s01 += t[c] * v01[c]
        s10 += t[c] * v10[c]
        s11 += t[c] * v11[c]
    return s00, s01, s10, s11


@njit(cache=True, inline='always')
def _modulated(buffer, m, k00, k01, k10, k11):
    """``m * K_k`` rounded to the array dtype (float32 data keeps float32 SIMD lanes)."""
    buffer[0], buffer[1], buffer[2], buffer[3] = m * k00, m * k01, m * k10, m * k11
    return buffer[0], buffer[1], buffer[2], buffer[3]


@njit(cache=True, inline='always')
def _axpy(a, t, y):
    """``y += a * t`` over one corner row (a loop of its own vectorises; four in one do not)."""
    for c in range(t.shape[0]):
        y[c] += a * t[c]


@njit(cache=True, parallel=True)
def _sample_forward_loop(x, offset, mask, base_h, base_w, frame, scale, group, out):
    """``out += sum_p mask * B(x, h, w)`` (eq. 4); ``out`` is ``(N, Ho, Wo, C)`` zeros.

    Channel slices (views) keep the innermost loop free of index wrap-around checks.
    """
    n, height, width, channels = x.shape
    ho, wo = out.shape[1], out.shape[2]
    d, npts = channels // group, base_h.shape[1]
    for task in prange(n * ho):
        b, row = task // ho, task % ho
        buffer = np.empty(4, dtype=x.dtype)
        for col in range(wo):
            for g in range(group):
                lo, hi = g * d, g * d + d
                y = out[b, row, col, lo:hi]                               # (D,) view
                for p in range(npts):
                    q = g * npts + p
                    h, w = _location(base_h, base_w, frame, offset, b, row, col, q, p, scale)
                    h0, w0, k00, k01, k10, k11 = corners(h, w, height, width)
                    r0, r1, c0, c1 = _clamped(h0, w0, height, width)
                    m = mask[b, row, col, q]
                    m00, m01, m10, m11 = _modulated(buffer, m, k00, k01, k10, k11)
                    v00, v01 = x[b, r0, c0, lo:hi], x[b, r0, c1, lo:hi]
                    v10, v11 = x[b, r1, c0, lo:hi], x[b, r1, c1, lo:hi]
                    for c in range(d):
                        y[c] += m00 * v00[c] + m01 * v01[c] + m10 * v10[c] + m11 * v11[c]


@njit(cache=True, parallel=True)
def _sample_backward_loop(dout, x, offset, mask, base_h, base_w, frame, scale, group, dx, doffset, dmask):
    """Gradients (eq. 5-7) into zeroed ``dx``, ``doffset``, ``dmask``; one task per ``(n, g)``.

    With ``s_k = sum_c t_c v_k[c]`` (the four corner dot products): ``dmask = sum_k K_k s_k``,
    ``doffset = sigma m sum_k dK_k s_k`` and ``dx[corner k] += m K_k t``.
    """
    n, height, width, channels = x.shape
    ho, wo = dout.shape[1], dout.shape[2]
    d, npts = channels // group, base_h.shape[1]
    for task in prange(n * group):
        b, g = task // group, task % group
        lo, hi = g * d, g * d + d
        buffer = np.empty(4, dtype=x.dtype)
        for row in range(ho):
            for col in range(wo):
                t = dout[b, row, col, lo:hi]                              # (D,) view
                for p in range(npts):
                    q = g * npts + p
                    h, w = _location(base_h, base_w, frame, offset, b, row, col, q, p, scale)
                    h0, w0, k00, k01, k10, k11 = corners(h, w, height, width)
                    a00, a01, a10, a11, e00, e01, e10, e11 = corner_slopes(h, w, height, width)
                    r0, r1, c0, c1 = _clamped(h0, w0, height, width)
                    m = mask[b, row, col, q]
                    s00, s01, s10, s11 = _corner_dots(t, x[b, r0, c0, lo:hi], x[b, r0, c1, lo:hi],
                                                      x[b, r1, c0, lo:hi], x[b, r1, c1, lo:hi])
                    dmask[b, row, col, q] = k00 * s00 + k01 * s01 + k10 * s10 + k11 * s11  # (eq. 6)
                    doffset[b, row, col, 2 * q] = scale * m * (                          # (eq. 7)
                        e00 * s00 + e01 * s01 + e10 * s10 + e11 * s11)
                    doffset[b, row, col, 2 * q + 1] = scale * m * (
                        a00 * s00 + a01 * s01 + a10 * s10 + a11 * s11)
                    m00, m01, m10, m11 = _modulated(buffer, m, k00, k01, k10, k11)
                    g00, g01 = dx[b, r0, c0, lo:hi], dx[b, r0, c1, lo:hi]
                    g10, g11 = dx[b, r1, c0, lo:hi], dx[b, r1, c1, lo:hi]
                    _axpy(m00, t, g00)                                               # (eq. 5)
                    _axpy(m01, t, g01)
                    _axpy(m10, t, g10)
                    _axpy(m11, t, g11)


def _thread_budget(setup):
    """One Numba thread for tiny problems (``N*Ho*Wo*P*C`` channel-samples)."""
    return threads_for(math.prod(setup['out_shape']) * setup['points'])


def core_forward(x, offset, mask, setup):
    """Run the forward loop on validated contiguous arrays; ``y (N, Ho, Wo, C)``."""
    out = np.zeros(setup['out_shape'], dtype=x.dtype)
    with _thread_budget(setup):
        _sample_forward_loop(x, offset, mask, *setup['grids'], setup['scale'], setup['group'], out)
    return out


def core_backward(dout, x, offset, mask, setup):
    """Run the backward loop; ``(dx, doffset, dmask)`` in the DCNv3 layout."""
    dout = np.ascontiguousarray(grad_out(dout, setup['out_shape'], x.dtype))
    dx, doffset, dmask = np.zeros_like(x), np.zeros_like(offset), np.zeros_like(mask)
    with _thread_budget(setup):
        _sample_backward_loop(dout, x, offset, mask, *setup['grids'], setup['scale'], setup['group'],
                              dx, doffset, dmask)
    return dx, doffset, dmask


# -- the public op ------------------------------------------------------------------------------
def _check_point_tensor(t, name, setup, per_point):
    n, ho, wo, _ = setup['out_shape']
    width = setup['group'] * setup['points'] * per_point
    float_array(t, name, 4, f"(N, Ho, Wo, {width})")
    if t.shape != (n, ho, wo, width):
        what = 'group*P*2' if per_point == 2 else 'group*P'
        raise ValueError(f"{name} must have shape {(n, ho, wo, width)} (N, Ho, Wo, {what}) with "
                         f"group={setup['group']}, P={setup['points']} points, got {t.shape}")
    return np.ascontiguousarray(t)


def dcnv3_forward(x, offset, mask, kernel_size, stride, padding, dilation, group, group_channels,
                  offset_scale=1.0, remove_center=False):
    """DCNv3 core op (``DCNv3Function``), channels last (eq. 1-4).

    Parameters
    ----------
    x : ndarray (N, H, W, G*D)
    offset : ndarray (N, Ho, Wo, G*P*2)
        ``(dx, dy)`` pairs, column-major points.
    mask : ndarray (N, Ho, Wo, G*P)
        One weight per point, used as given (the layer softmaxes it).
    kernel_size, stride, dilation : int or pair
    padding : int, pair, 'same' or 'valid'
        Only the top/left pads move the sampling grid (eq. 2); the bottom/right pads set ``Ho``, ``Wo``.
    group, group_channels : int
        ``G`` and ``D``; ``C = G*D``.
    offset_scale : float
        Scales the offsets and the base grid (eq. 2).
    remove_center : bool
        Drop the kernel's centre point (odd kernels only): ``P = kh*kw - 1``.

    Returns
    -------
    y : ndarray (N, Ho, Wo, G*D)
    cache : Cache
        ``Cache('dcnv3')`` with ``x``, ``offset``, ``mask`` (contiguous) and ``setup`` (the
        geometry of :func:`core_setup`); none of them None.
    """
    setup = core_setup(x, kernel_size, stride, padding, dilation, group, group_channels,
                       offset_scale, remove_center)
    offset = _check_point_tensor(offset, 'offset', setup, 2)
    mask = _check_point_tensor(mask, 'mask', setup, 1)
    same_dtype(('x', x), ('offset', offset), ('mask', mask))
    x = np.ascontiguousarray(x)
    y = core_forward(x, offset, mask, setup)
    return y, Cache('dcnv3', x=x, offset=offset, mask=mask, setup=setup)


def dcnv3_backward(dout, cache):
    """Gradients of :func:`dcnv3_forward` (eq. 5-7).

    Parameters
    ----------
    dout : ndarray, (N, Ho, Wo, G*D)
        Gradient of the loss with respect to the output of :func:`dcnv3_forward`.
    cache : Cache
        The cache :func:`dcnv3_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, doffset, dmask)``, each of its input's shape.
    """
    cache = check_cache(cache, 'dcnv3')
    return core_backward(dout, cache['x'], cache['offset'], cache['mask'], cache['setup'])


# -- pieces shared by the DCNv3 and DCNv4 layers --------------------------------------------------
class ToChannelsLast(Module):
    """InternImage's ``to_channels_last``: ``(N, C, H, W) -> (N, H, W, C)``; no parameters."""

    def forward(self, x):
        float_array(x, 'x', 4, "(N, C, H, W)")
        self._cache = (x.shape, x.dtype)
        return x.transpose(0, 2, 3, 1)

    def backward(self, dout):
        (n, c, h, w), dtype = self._cache
        return np.ascontiguousarray(grad_out(dout, (n, h, w, c), dtype).transpose(0, 3, 1, 2))

    def macs(self, input_shape):
        n, c, h, w = input_shape
        return 0, (n, h, w, c)


def check_layer_geometry(channels, kernel_size, stride, pad, dilation, group, remove_center):
    """Validate a DCN layer's hyper-parameters; return ``(channels, group, points)``.

    The layers predict offsets at the input resolution, so the core must keep ``H x W``:
    ``stride == 1`` and ``2*pad == dilation*(kernel_size - 1)`` (the official modules fail later
    with a shape error otherwise).
    """
    channels, group = positive_int(channels, 'channels'), positive_int(group, 'group')
    if channels % group:
        raise ValueError(f"channels must be divisible by group, got channels={channels} and "
                         f"group={group}")
    kernel_size, stride = positive_int(kernel_size, 'kernel_size'), positive_int(stride, 'stride')
    dilation = positive_int(dilation, 'dilation')
    if isinstance(pad, bool) or not isinstance(pad, numbers.Integral) or pad < 0:
        raise TypeError(f"pad must be a non-negative int, got {pad!r}")
    if _check_flag(remove_center, 'remove_center') and kernel_size % 2 == 0:
        raise ValueError(f"remove_center is only compatible with odd kernel size, got "
                         f"kernel_size={kernel_size}")
    if stride != 1 or 2 * pad != dilation * (kernel_size - 1):
        raise ValueError(f"offsets are predicted at the input resolution, so the output must keep "
                         f"the input size: stride=1 and 2*pad = dilation*(kernel_size-1) = "
                         f"{dilation * (kernel_size - 1)}; got stride={stride}, pad={pad}")
    return channels, group, kernel_size * kernel_size - int(remove_center)


def odd_kernel(value, name):
    """A depthwise kernel size with 'same' padding ``(k - 1) // 2``: must be odd."""
    value = positive_int(value, name)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd (padding (k-1)//2 keeps the size), got {value}")
    return value


def center_feature_scale_forward(query, weight, bias, core, value, group):
    """``z = core*(1 - s) + value*s``, ``s = sigmoid(query W^T + b)`` per group (eq. 10).

    ``query (N, H, W, C_q)``, ``weight (G, C_q)``, ``bias (G,)``, ``core`` and ``value (N, H, W, C)``
    with ``G = group`` dividing ``C``; returns ``z (N, H, W, C)`` and the cache."""
    _check_blend(query, core, value, group)
    logits, linear_cache = linear_forward(query, weight, bias)        # (N, H, W, G)
    scale, sigmoid_cache = sigmoid_forward(logits)
    s = np.repeat(scale, core.shape[-1] // group, axis=-1)            # (N, H, W, G*D)
    z = core * (1 - s) + value * s
    return z, Cache('center_feature_scale', linear=linear_cache, sigmoid=sigmoid_cache, s=s, core=core,
                    value=value, group=group)


def _check_blend(query, core, value, group):
    float_array(query, 'query', 4, "(N, H, W, C_q)")
    float_array(core, 'core', 4, "(N, H, W, C)")
    float_array(value, 'value', 4, "(N, H, W, C)")
    same_dtype(('query', query), ('core', core), ('value', value))
    expect_shape(value, core.shape, 'value')
    if query.shape[:3] != core.shape[:3]:
        raise ValueError(f"query must have the (N, H, W) of core {core.shape[:3]}, got shape {query.shape}")
    if core.shape[-1] % positive_int(group, 'group'):
        raise ValueError(f"group must divide the channels of core ({core.shape[-1]}), got {group}")


def center_feature_scale_backward(dz, cache):
    """``(dquery, dweight, dbias, dcore, dvalue)`` of the blend (eq. 12)."""
    cache = check_cache(cache, 'center_feature_scale')
    s, core, value = cache['s'], cache['core'], cache['value']
    dz = grad_out(dz, core.shape, core.dtype, 'dz')
    group = cache['group']
    per_group = dz.shape[:-1] + (group, dz.shape[-1] // group)        # (N, H, W, G, D)
    ds = (dz * (value - core)).reshape(per_group).sum(-1)
    dlogits, = sigmoid_backward(ds, cache['sigmoid'])
    dquery, dweight, dbias = linear_backward(dlogits, cache['linear'])
    return dquery, dweight, dbias, dz * (1 - s), dz * s


def nchw_to_nhwc(x):
    return x.transpose(0, 2, 3, 1)


def nhwc_to_nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def layer_input(layer, x, nchw=True):
    """``(x_nhwc, x_nchw)`` from a DCN layer's input: NCHW, or NHWC when ``layer.channels_last``
    (the official modules' layout); checks the dtype and the channel count. ``nchw=False``: the
    NCHW view is not needed (None when the input is NHWC)."""
    if not layer.channels_last:
        layer._check_input(x, channels=layer.channels)
        return nchw_to_nhwc(x), x
    layer._check_input(x, channels=layer.channels, channels_last=True)
    return x, (nhwc_to_nchw(x) if nchw else None)


def layer_dout(layer, dout):
    """The output gradient of a DCN layer, checked (``_checks.grad_out``), as NHWC."""
    dout = grad_out(dout, layer._cache['shape'], layer.dtype)
    return dout if layer.channels_last else nchw_to_nhwc(dout)


def layer_macs_shape(layer, input_shape):
    """``(n, c, h, w)`` of a DCN layer's ``macs`` input shape (NHWC with ``channels_last``)."""
    if not layer.channels_last:
        return layer._check_input_shape(input_shape, layer.channels)
    n, h, w, c = layer._check_input_shape(input_shape, layer.channels, axis=3, hint="(N, H, W, {c})")
    return n, c, h, w


def core_macs(input_shape, points):
    """InternImage's count for the sampling core: 5 multiply-adds per channel and point (eq. 14)."""
    n, c, h, w = input_shape
    return 5 * n * h * w * points * c


# -- the layer ----------------------------------------------------------------------------------
class DCNv3(Module):
    """InternImage ``DCNv3`` / ``DCNv3_pytorch`` (LayerNorm, GELU), NCHW in and out by default.

    ``(N, C, H, W) -> (N, C, Ho, Wo)``. Keys: ``dw_conv.0.weight/bias``, ``dw_conv.1.1.weight/bias``
    (LayerNorm), ``offset.*``, ``mask.*``, ``input_proj.*``, ``output_proj.*`` and, with
    ``center_feature_scale``, ``center_feature_scale_proj_weight (G, C)`` / ``_bias (G,)``.
    ``channels_last=True`` takes and returns ``(N, H, W, C)``, as the official module
    (InternImage's blocks are channels-last).

    Parameters
    ----------
    channels : int
        ``C``, input and output channels; a multiple of ``group``.
    kernel_size : int
        The sampling grid's size (odd).
    dw_kernel_size : int or None
        The depthwise convolution before the offsets and mask (None: ``kernel_size``).
    stride, pad, dilation : int
        Of the sampling grid (as :func:`dcnv3_forward`'s stride, padding, dilation).
    group : int
        ``G``; ``D = channels // group`` channels per group.
    offset_scale : float
        Scales offsets and base grid.
    center_feature_scale : bool
        Blend the core's output with the input projection (eq. 10).
    remove_center : bool
        Drop the kernel's centre point.
    channels_last : bool
        True: ``x`` and the output are ``(N, H, W, C)``, as the official module's.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, channels=64, kernel_size=3, dw_kernel_size=None, stride=1, pad=1, dilation=1,
                 group=4, offset_scale=1.0, center_feature_scale=False, remove_center=False,
                 channels_last=False, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.channels_last = flag(channels_last, 'channels_last')
        channels, group, points = check_layer_geometry(channels, kernel_size, stride, pad,
                                                       dilation, group, remove_center)
        dw_kernel_size = odd_kernel(kernel_size if dw_kernel_size is None else dw_kernel_size,
                                    'dw_kernel_size')
        self.channels, self.group, self.group_channels = channels, group, channels // group
        self.kernel_size, self.dw_kernel_size, self.stride = kernel_size, dw_kernel_size, stride
        self.pad, self.dilation, self.points = pad, dilation, points
        self.offset_scale = check_offset_scale(offset_scale)
        self.center_feature_scale, self.remove_center = bool(center_feature_scale), bool(remove_center)
        kw = dict(dtype=self.dtype, rng=self.rng)
        self.dw_conv = self.add_module('dw_conv', Sequential(
            DepthwiseConv2d(channels, dw_kernel_size, padding=(dw_kernel_size - 1) // 2, **kw),
            Sequential(ToChannelsLast(**kw), LayerNorm(channels, eps=1e-6, **kw)),
            GELU(**kw)))
        self.offset = self.add_module('offset', Linear(channels, group * points * 2, **kw))
        self.mask = self.add_module('mask', Linear(channels, group * points, **kw))
        self.input_proj = self.add_module('input_proj', Linear(channels, channels, **kw))
        self.output_proj = self.add_module('output_proj', Linear(channels, channels, **kw))
        self._reset_parameters()
        if self.center_feature_scale:
            self.add_param('center_feature_scale_proj_weight', np.zeros((group, channels)))
            self.add_param('center_feature_scale_proj_bias', np.zeros(group))

    def _reset_parameters(self):
        for linear in (self.offset, self.mask):
            linear.params['weight'][...] = 0
            linear.params['bias'][...] = 0
        for linear in (self.input_proj, self.output_proj):
            weight = linear.params['weight']
            weight[...] = xavier_uniform(self.rng, weight.shape, self.dtype)
            linear.params['bias'][...] = 0

    def _core_args(self):
        return (self.kernel_size, self.stride, self.pad, self.dilation, self.group,
                self.group_channels, self.offset_scale, self.remove_center)

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, H, W)``, NHWC with ``channels_last`` (eq. 10)."""
        inp, x_first = layer_input(self, x, nchw=not self.channels_last)
        n, h, w, _ = inp.shape
        value = self.input_proj(inp)                                      # (N, H, W, C)
        x1, dw_cache = self._offset_features(inp, x_first)                # (N, H, W, C)
        offset = self.offset(x1)                                          # (N, H, W, G*P*2)
        logits = self.mask(x1).reshape(n, h, w, self.group, self.points)  # (N, H, W, G, P)
        mask, softmax_cache = softmax_forward(logits, axis=-1)
        core, core_cache = dcnv3_forward(value, offset, mask.reshape(n, h, w, self.group * self.points),
                                         *self._core_args())
        z, blend_cache = core, None
        if self.center_feature_scale:
            z, blend_cache = center_feature_scale_forward(
                x1, self._params['center_feature_scale_proj_weight'],
                self._params['center_feature_scale_proj_bias'], core, value, self.group)
        self._cache = dict(softmax=softmax_cache, core=core_cache, blend=blend_cache, dw=dw_cache,
                           shape=x.shape)
        y = self.output_proj(z)
        return y if self.channels_last else nhwc_to_nchw(y)

    def _dw_modules(self):
        """The depthwise convolution, the LayerNorm and the GELU of ``dw_conv``."""
        return (self.dw_conv._modules['0'], self.dw_conv._modules['1']._modules['1'],
                self.dw_conv._modules['2'])

    def _offset_features(self, inp, x_first):
        """``(x1, dw_cache)``: ``x1 = GELU(LayerNorm(dwconv(x)))`` ``(N, H, W, C)``, the input of the
        offset and mask projections. An NCHW input runs through ``dw_conv`` (dw_cache None); a
        channels-last one is convolved as it is (``forward_channels_last``), whose cache this layer
        keeps, and the LayerNorm and GELU take the channels-last result."""
        if x_first is not None:
            return self.dw_conv(x_first), None
        conv, norm, act = self._dw_modules()
        y, dw_cache = conv.forward_channels_last(inp)
        return act(norm(y)), dw_cache

    def _offset_features_backward(self, dx1):
        """``dx`` of :meth:`_offset_features`: NCHW for an NCHW input, else ``(N, H, W, C)``."""
        if self._cache['dw'] is None:
            return self.dw_conv.backward(dx1)
        conv, norm, act = self._dw_modules()
        return conv.backward_channels_last(norm.backward(act.backward(dx1)), self._cache['dw'])

    def backward(self, dout):
        """``dx``; parameter gradients accumulate into ``grads`` (eq. 11-13)."""
        dz = self.output_proj.backward(layer_dout(self, dout))
        dcore, dvalue, dx1 = dz, 0.0, 0.0
        if self.center_feature_scale:
            dx1, dweight, dbias, dcore, dvalue = center_feature_scale_backward(
                dz, self._cache['blend'])
            self._add_grad('center_feature_scale_proj_weight', dweight)
            self._add_grad('center_feature_scale_proj_bias', dbias)
        dvalue_core, doffset, dmask = dcnv3_backward(dcore, self._cache['core'])
        dlogits, = softmax_backward(dmask.reshape(dmask.shape[:3] + (self.group, self.points)),
                                    self._cache['softmax'])                     # (eq. 11)
        dx1 = dx1 + self.offset.backward(doffset) + self.mask.backward(
            dlogits.reshape(dmask.shape))
        dx = self._offset_features_backward(dx1)                                # (eq. 13)
        dinp = self.input_proj.backward(dvalue_core + dvalue)
        return dx + dinp if self.channels_last else dx + nhwc_to_nchw(dinp)

    def macs(self, input_shape):
        """Linears, depthwise conv, the core (``5*H*W*P*C``) and the centre-scale linear."""
        n, c, h, w = layer_macs_shape(self, input_shape)
        rows = (n, h, w, c)
        total = sum(m.macs(rows)[0] for m in (self.input_proj, self.offset, self.mask,
                                               self.output_proj))
        total += self.dw_conv.macs((n, c, h, w))[0] + core_macs((n, c, h, w), self.points)
        if self.center_feature_scale:
            total += n * h * w * c * self.group
        return total, tuple(input_shape)

    def sampling_locations(self, x):
        """Pixel ``(x, y)`` ``(N, H, W, group, P, 2)`` (points row-major) where this layer samples its
        projected input, and the softmaxed mask ``(N, H, W, group, P)`` as weights
        (:func:`numpyconv.sampling_locations`); keeps nothing for a backward pass."""
        from . import sampling
        self._check_input(x, channels=self.channels)
        n, _, h, w = x.shape
        with sampling.without_caching(self):
            x1 = self.dw_conv(x)
            offset, logits = self.offset(x1), self.mask(x1)
        mask, _ = softmax_forward(logits.reshape(n, h, w, self.group, self.points), axis=-1)
        return sampling.sampling_locations('dcnv3', nchw_to_nhwc(x), offset, mask.reshape(n, h, w, -1),
                                           *self._core_args())
