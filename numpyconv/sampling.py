r"""Where the deformable ops sample: ``sampling_locations(op, *forward_args, **forward_kwargs)``.

For the arguments of one of the ops ``'deform_conv2d'``, ``'dcnv3'``, ``'dcnv4'`` or
``'ms_deform_attn'`` (given exactly as to ``<op>_forward``), returns ``(locations, weights)``:

* ``locations``: pixel coordinates ``(x, y)`` (column, row) of every point in the map it samples,
  ``(N, Ho, Wo, G, P, 2)`` for the convolutions (``G`` offset groups, ``P`` kernel points in
  row-major order: point ``i*kw + j`` is kernel row ``i``, column ``j``, the centre left out with
  ``remove_center``) and ``(N, Lq, M, L, P, 2)`` for multi-scale deformable attention (each level's
  own pixels);
* ``weights``: the same without the last axis, the factor the op gives the sample: the modulation
  mask (``deform_conv2d`` v2), ones (v1), DCNv3's mask as given to the op (the layer softmaxes it),
  DCNv4's mask (not normalised), the attention weights.

Pixel ``(x, y)`` covers ``[x - 0.5, x + 0.5) x [y - 0.5, y + 0.5)``: integer coordinates are pixel
centres, and a point samples nothing unless ``-1 < x < W`` and ``-1 < y < H``. The coordinates are
computed in float64 with the operations, in the order, of the op's own kernels (so in float64 they are
bitwise the points the op samples) and returned in the inputs' dtype. With the formulas of
docs/derivations/msdeformattn.md eq. 21:

=================  =================================================================================
op                 location of point ``p`` (kernel row ``i``, column ``j``) at output ``(r, s)``
=================  =================================================================================
deform_conv2d      ``y = r*sh - pt + i*dh + dy``, ``x = s*sw - pl + j*dw + dx``
                   (offset channels ``2p``: dy, ``2p+1``: dx, row-major ``p``)
dcnv3, dcnv4       ``y = r*sh - pt + ch - sigma*ch + sigma*(i*dh + dy)``, same for ``x`` with
                   ``cw``, ``j*dw + dx``; ``c = (d*(k-1)) // 2``, ``sigma = offset_scale``
                   (offset pairs ``(dx, dy)``, points stored column-major by the ops, reordered);
                   the grid part rounded as ``dcnv3_core_pytorch`` rounds it (dcnv3.md eq. 2a-2b)
ms_deform_attn     ``x = loc_x * W_l - 0.5``, ``y = loc_y * H_l - 0.5``
=================  =================================================================================

The layers ``DeformConv2d``, ``ModulatedDeformConv2d``, ``DCNv3``, ``DCNv4`` and ``MSDeformAttn``
have ``layer.sampling_locations(*forward_inputs)``: they compute their offsets and masks as their
forward does (inside :func:`without_caching`, so a pending backward pass is not disturbed) and call
:func:`sampling_locations`.
"""
from contextlib import contextmanager

import numpy as np

from ._bilinear import dcn_coordinate, dcn_grids
from ._checks import expect_shape, float_array, positive_int, real, same_dtype
from .conv import conv_geometry
from .msdeformattn import check_inputs, pixel_locations


# -- deform_conv2d (torchvision) ------------------------------------------------------------------
def deform_conv2d_locations(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """``(locations (N, Ho, Wo, og, kh*kw, 2), weights (N, Ho, Wo, og, kh*kw))`` of
    :func:`numpyconv.deform_conv2d_forward`; ``weights`` is ``mask`` or ones."""
    float_array(x, 'x', 4, "(N, C_in, H, W)")
    float_array(offset, 'offset', 4, "(N, 2*offset_groups*kh*kw, Ho, Wo)")
    float_array(weight, 'weight', 4, "(C_out, C_in // groups, kh, kw)")
    n, c_in = x.shape[:2]
    kh, kw = weight.shape[2:]
    if min(weight.shape) == 0:
        raise ValueError(f"weight must have shape (C_out, C_in // groups, kh, kw) with every size >= 1, "
                         f"got {weight.shape}")
    geo = conv_geometry(x.shape[2:], (kh, kw), stride, padding, dilation)
    npts, (ho, wo) = kh * kw, geo.out_hw
    og = offset.shape[1] // (2 * npts)
    if offset.shape[1] % (2 * npts) or og == 0 or c_in % og:
        raise ValueError(f"offset must have shape (N, 2*offset_groups*kh*kw, Ho, Wo) = ({n}, 2*og*{npts}, "
                         f"{ho}, {wo}) with offset_groups og dividing C_in={c_in}, got {offset.shape}")
    expect_shape(offset, (n, 2 * og * npts, ho, wo), 'offset')
    if mask is not None:
        float_array(mask, 'mask', 4, "(N, offset_groups*kh*kw, Ho, Wo)")
        expect_shape(mask, (n, og * npts, ho, wo), 'mask')
    if bias is not None:
        float_array(bias, 'bias', 1, "(C_out,)")
    same_dtype(('x', x), ('offset', offset), ('weight', weight), ('bias', bias), ('mask', mask))
    (sh, sw), (dh, dw), pt, pl = geo.stride, geo.dilation, geo.pads[0], geo.pads[2]
    off = offset.reshape(n, og, npts, 2, ho, wo).transpose(0, 4, 5, 1, 2, 3).astype(np.float64)
    points = np.arange(npts)
    rows = (np.arange(ho) * sh - pt)[:, None, None, None] + (points // kw * dh)        # (Ho, 1, 1, P)
    cols = (np.arange(wo) * sw - pl)[None, :, None, None] + (points % kw * dw)
    locations = np.stack([cols + off[..., 1], rows + off[..., 0]], axis=-1)            # (x, y)
    if mask is None:
        weights = np.ones(locations.shape[:-1], dtype=x.dtype)
    else:
        weights = np.ascontiguousarray(mask.reshape(n, og, npts, ho, wo).transpose(0, 3, 4, 1, 2))
    return locations.astype(x.dtype), weights


# -- dcnv3 / dcnv4 (InternImage, FlashInternImage) ------------------------------------------------
def _dcn_geometry(x, kernel_size, stride, padding, dilation, group, group_channels, offset_scale,
                  remove_center):
    """Validate the DCNv3/DCNv4 hyper-parameters; return ``(geo, group, scale, order)``:
    ``order[r]`` is the op's (column-major) index of row-major point ``r``."""
    float_array(x, 'x', 4, "(N, H, W, group * group_channels) (channels last)")
    group = positive_int(group, 'group')
    group_channels = positive_int(group_channels, 'group_channels')
    if x.shape[3] != group * group_channels:
        raise ValueError(f"x must have shape (N, H, W, {group * group_channels}): channels = group * "
                         f"group_channels = {group} * {group_channels}, got {x.shape}")
    geo = conv_geometry(x.shape[1:3], kernel_size, stride, padding, dilation)
    if not (isinstance(remove_center, (bool, np.bool_)) or remove_center in (0, 1)):
        raise TypeError(f"remove_center must be a bool (or 0/1), got {remove_center!r}")
    scale = real(offset_scale, 'offset_scale')
    kh, kw = geo.kernel
    if remove_center and (kh % 2 == 0 or kw % 2 == 0):
        raise ValueError(f"remove_center is only compatible with an odd kernel size, got kernel_size "
                         f"{geo.kernel}")

    def kept(i, j):
        return not (remove_center and i == kh // 2 and j == kw // 2)
    column_major = [(i, j) for j in range(kw) for i in range(kh) if kept(i, j)]
    row_major = [(i, j) for i in range(kh) for j in range(kw) if kept(i, j)]
    order = np.array([column_major.index(point) for point in row_major], dtype=np.int64)
    return geo, group, scale, order


def _dcn_locations(x, offset, geo, scale, order):
    """Pixel ``(x, y)`` ``(N, Ho, Wo, G, P, 2)`` from DCN offsets ``(N, Ho, Wo, G, P, 2)`` as
    ``(dx, dy)`` in the op's point order (docs/derivations/dcnv3.md eq. 2)."""
    (kh, kw), (dh, dw) = geo.kernel, geo.dilation
    off = offset[..., order, :].astype(np.float64)                                     # row-major points
    taps = np.stack([np.repeat(np.arange(kh), kw) * dh, np.tile(np.arange(kw), kh) * dw], axis=1)
    if len(order) < kh * kw:                                                           # centre removed
        taps = np.delete(taps, (kh // 2) * kw + kw // 2, axis=0)
    base_h, base_w, (top, left, hp, wp) = dcn_grids(x.shape[1:3], geo, taps, scale)   # (Ho, P), (Wo, P)
    rows = dcn_coordinate(base_h[:, None, None, :], off[..., 1], scale, hp, top)      # (dcnv3.md eq. 2b)
    cols = dcn_coordinate(base_w[None, :, None, :], off[..., 0], scale, wp, left)
    return np.stack([cols, rows], axis=-1).astype(x.dtype)


def _point_tensor(t, name, geo, n, group, points, per_point):
    ho, wo = geo.out_hw
    width = group * points * per_point
    float_array(t, name, 4, f"(N, Ho, Wo, {width})")
    if t.shape != (n, ho, wo, width):
        what = 'group*P*2' if per_point == 2 else 'group*P'
        raise ValueError(f"{name} must have shape {(n, ho, wo, width)} (N, Ho, Wo, {what}) with "
                         f"group={group}, P={points} points, got {t.shape}")


def dcnv3_locations(x, offset, mask, kernel_size, stride, padding, dilation, group, group_channels,
                    offset_scale=1.0, remove_center=False):
    """``(locations (N, Ho, Wo, group, P, 2), weights (N, Ho, Wo, group, P))`` of
    :func:`numpyconv.dcnv3_forward`, points row-major; ``weights`` is ``mask`` as given."""
    geo, group, scale, order = _dcn_geometry(x, kernel_size, stride, padding, dilation, group,
                                             group_channels, offset_scale, remove_center)
    n, (ho, wo), points = x.shape[0], geo.out_hw, len(order)
    _point_tensor(offset, 'offset', geo, n, group, points, 2)
    _point_tensor(mask, 'mask', geo, n, group, points, 1)
    same_dtype(('x', x), ('offset', offset), ('mask', mask))
    locations = _dcn_locations(x, offset.reshape(n, ho, wo, group, points, 2), geo, scale, order)
    return locations, np.ascontiguousarray(mask.reshape(n, ho, wo, group, points)[..., order])


def dcnv4_locations(x, offset_mask, kernel_size, stride, padding, dilation, group, group_channels,
                    offset_scale=1.0, remove_center=False):
    """``(locations (N, Ho, Wo, group, P, 2), weights (N, Ho, Wo, group, P))`` of
    :func:`numpyconv.dcnv4_forward`, points row-major; ``weights`` is the packed mask, unnormalised."""
    geo, group, scale, order = _dcn_geometry(x, kernel_size, stride, padding, dilation, group,
                                             group_channels, offset_scale, remove_center)
    n, (ho, wo), points = x.shape[0], geo.out_hw, len(order)
    used = 3 * group * points
    expected = (n, ho, wo, -(-used // 8) * 8)
    float_array(offset_mask, 'offset_mask', 4, f"{expected}")
    width = offset_mask.shape[3]
    if offset_mask.shape[:3] != (n, ho, wo) or width < used or width % 8:
        raise ValueError(f"offset_mask must have shape {expected} (N, Ho, Wo, ceil(3*group*P/8)*8) with "
                         f"group={group}, P={points} points (any multiple of 8 >= {used} channels is "
                         f"accepted), got {offset_mask.shape}")
    same_dtype(('x', x), ('offset_mask', offset_mask))
    blocks = offset_mask[..., :used].reshape(n, ho, wo, group, 3 * points)   # [dx0, dy0, ... | m0, ...]
    offset = blocks[..., :2 * points].reshape(n, ho, wo, group, points, 2)
    locations = _dcn_locations(x, offset, geo, scale, order)
    return locations, np.ascontiguousarray(blocks[..., 2 * points:][..., order])


# -- multi-scale deformable attention -------------------------------------------------------------
def ms_deform_attn_locations(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights):
    """``(locations (N, Lq, M, L, P, 2), weights (N, Lq, M, L, P))`` of
    :func:`numpyconv.ms_deform_attn_forward`: each level's pixels ``loc * (W_l, H_l) - 0.5``."""
    shapes, _ = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights)
    return (pixel_locations(shapes, sampling_locations).astype(value.dtype),
            np.array(attention_weights, copy=True))


_LOCATORS = {'deform_conv2d': deform_conv2d_locations, 'dcnv3': dcnv3_locations,
             'dcnv4': dcnv4_locations, 'ms_deform_attn': ms_deform_attn_locations}


def sampling_locations(op, *forward_args, **forward_kwargs):
    """Where ``op`` samples for these forward arguments (see the module docstring).

    Parameters
    ----------
    op : str
        ``'deform_conv2d'``, ``'dcnv3'``, ``'dcnv4'`` or ``'ms_deform_attn'``.
    *forward_args, **forward_kwargs
        The arguments of ``numpyconv.<op>_forward``, with its names, order and defaults.

    Returns
    -------
    locations : ndarray
        Pixel ``(x, y)``: ``(N, Ho, Wo, G, P, 2)`` (convolutions, points row-major) or
        ``(N, Lq, M, L, P, 2)`` (``ms_deform_attn``).
    weights : ndarray
        ``locations.shape[:-1]``: mask, ones (``deform_conv2d`` without mask) or attention weights.
    """
    if not isinstance(op, str) or op not in _LOCATORS:
        raise ValueError(f"op must be one of {sorted(_LOCATORS)}, got {op!r}")
    return _LOCATORS[op](*forward_args, **forward_kwargs)


@contextmanager
def without_caching(layer):
    """Sub-layer calls of ``layer`` inside this block leave every module of ``layer`` as it was: the
    attributes they keep for a backward pass (names ending in ``cache``) and the buffers are restored
    on exit, so ``layer.backward`` still answers the last ``layer.forward``."""
    modules = [m for _, m in layer.named_modules()]
    caches = [{k: v for k, v in vars(m).items() if k.endswith('cache')} for m in modules]
    buffers = {k: b.copy() for k, b in layer.buffers.items()}
    try:
        yield layer
    finally:
        for module, kept in zip(modules, caches):
            for k in [k for k in vars(module) if k.endswith('cache') and k not in kept]:
                delattr(module, k)
            vars(module).update(kept)
        for k, b in layer.buffers.items():
            np.copyto(b, buffers[k])
