"""The shared core: ``im2col`` / ``col2im`` (an adjoint pair) and the output-size rule
(:func:`conv_geometry`).

``im2col(x, kernel_size, stride=1, padding=0, dilation=1)`` takes conv2d's hyper-parameters
(``padding`` an int, a pair, ``'valid'`` or ``'same'``). Shapes (NCHW), with ``origin = (top,
left)`` the zero padding before each spatial axis::

    x     (N, C, H, W)
    cols  (N, C, kh, kw, Ho, Wo)    cols[n, c, p, q, i, j] = x[n, c, i*sh + p*dh - top, j*sw + q*dw - left]
                                    (zero where that index falls outside x: the padding)

``im2col`` loops over the ``kh*kw`` kernel offsets and copies one strided slice of the whole batch
per offset (Chainer's design), padding on the fly: for each offset, the output rows and columns
whose input index lies inside ``x`` form one rectangle, copied as a slice, and the rest of that
offset's columns is zero. No padded copy of ``x`` is made. At stride 1 with ``Wo == W`` (``'same'``
padding) an offset is one shift of each flattened ``(H*W)`` plane, copied as one run per ``(N, C)``
instead of one per row (eq. 3a). When the output planes are large (``Ho*Wo >= LOOP_MIN_PLANE``) and
``cols`` is laid out as im2col allocates it or as conv2d's block buffer, one compiled loop
(:func:`_im2col_loop`) makes the same copies, parallel over the ``(n, c, offset)`` planes: a
network's stem at 224x224 in half the time of the slices, a batch of 8 in a fifth; on smaller
planes its per-plane work costs more than the slices' per-offset calls. ``col2im`` is its exact
adjoint, adding each rectangle back into ``x``'s shape with ``+=`` because overlapping windows read one pixel
several times (entries that came from the padding are dropped: padding's adjoint is cropping).
Within one offset the strided slice has no repeated index, so slice ``+=`` is exact and no
unbuffered scatter-add is needed::

    <im2col(x), c> == <x, col2im(c)>        for every x and c  (docs/derivations/conv.md, eq. 3)

Worked example: ``H = W = 5``, ``k = 3``, stride 2, padding 1, dilation 1 gives
``Ho = floor((5 + 2 - 2 - 1) / 2) + 1 = 3``; ``cols`` is ``(N, C, 3, 3, 3, 3)``, and for the kernel
offset ``p = 0`` the output row ``i = 0`` reads input row ``-1``: zero.

Geometry in a Numba loop: the compiled loops of depthwise convolution and of the sampling ops
(involution, deformable v1/v2, DCNv3/DCNv4) take a :class:`Geometry` in one form, the int tuple of
:func:`loop_geo`::

    geo = (kh, kw, sh, sw, dh, dw, top, left, Ho, Wo)

kernel size, stride, dilation, the padding before each axis and the output size; a loop unpacks
all ten in this order (``kh, kw, sh, sw, dh, dw, top, left, ho, wo = geo``).

Memory: the column buffer is ``kh*kw`` times the (output-sized) input; how much of it a caller
holds at once is the memory policy's (``numpyconv/memory.py``): conv2d works block by block,
the deformable convolutions keep at most :func:`~numpyconv.memory.column_budget` bytes.
"""
from collections import namedtuple

import numpy as np
from numba import njit, prange

from ._checks import expect_shape, float_array, is_int, padding4, pair
from ._parallel import launch, loop_operand
from .memory import require_memory
from .taps import point_taps, take_row


def conv_output_size(size, kernel, stride, pad_before, pad_after, dilation):
    """``floor((size + pads - dilation*(kernel-1) - 1) / stride) + 1`` (docs/derivations/conv.md).

    All ints: ``size``, ``pad_before``, ``pad_after`` >= 0, ``kernel``, ``stride``, ``dilation`` >= 1.
    The result is < 1 when the dilated kernel does not fit (:func:`conv_geometry` raises then).
    """
    for name, value, low in (('size', size, 0), ('kernel', kernel, 1), ('stride', stride, 1),
                             ('pad_before', pad_before, 0), ('pad_after', pad_after, 0),
                             ('dilation', dilation, 1)):
        if not is_int(value):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    return (int(size) + int(pad_before) + int(pad_after) - int(dilation) * (int(kernel) - 1) - 1) \
        // int(stride) + 1


Geometry = namedtuple('Geometry', 'kernel stride dilation pads out_hw in_hw')


def loop_geo(geo):
    """A :class:`Geometry` as a Numba loop takes it: ``(kh, kw, sh, sw, dh, dw, top, left, Ho, Wo)``,
    ten Python ints (module docstring)."""
    return geo.kernel + geo.stride + geo.dilation + (geo.pads[0], geo.pads[2]) + geo.out_hw


def conv_geometry(in_hw, kernel_size, stride, padding, dilation):
    """Resolve and check the hyper-parameters of a 2-D convolution-like op.

    Returns a :class:`Geometry` (all pairs; ``pads = (top, bottom, left, right)``). Raises when the
    input has no rows or columns (as PyTorch) or the dilated kernel does not fit in the padded input
    (``Ho < 1`` or ``Wo < 1``).
    """
    kernel = pair(kernel_size, 'kernel_size', minimum=1)
    stride = pair(stride, 'stride', minimum=1)
    dilation = pair(dilation, 'dilation', minimum=1)
    pads = padding4(padding, kernel, stride, dilation)
    if min(in_hw) < 1:
        raise ValueError(f"the input must have H, W >= 1 (only the batch may be empty), got spatial "
                         f"size {tuple(in_hw)}")
    out_hw = tuple(conv_output_size(in_hw[a], kernel[a], stride[a], pads[2 * a], pads[2 * a + 1],
                                    dilation[a]) for a in (0, 1))
    if min(out_hw) < 1:
        span = tuple(dilation[a] * (kernel[a] - 1) + 1 for a in (0, 1))
        padded = (in_hw[0] + pads[0] + pads[1], in_hw[1] + pads[2] + pads[3])
        raise ValueError(f"kernel_size {kernel} with dilation {dilation} spans {span}, larger than "
                         f"the padded input {padded} (input {tuple(in_hw)}, padding {pads[::2]}); "
                         f"the output would be {out_hw}")
    return Geometry(kernel, stride, dilation, pads, out_hw, tuple(in_hw))


def pad_nchw(x, pads):
    """Zero-pad the two spatial axes by ``pads = (top, bottom, left, right)`` (a new array; ``x``
    itself when all pads are 0)."""
    if pads == (0, 0, 0, 0):
        return x
    top, bottom, left, right = pads
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
    xp[:, :, top:top + h, left:left + w] = x
    return xp


def crop_nchw(xp, pads, h, w):
    """Adjoint of :func:`pad_nchw`: the ``(h, w)`` interior of ``xp``."""
    top, _, left, _ = pads
    return xp[:, :, top:top + h, left:left + w]


def _inside(offset, step, n_out, n_in):
    """``(out, src)``: the output indices ``i < n_out`` whose input index ``i*step + offset`` lies in
    ``[0, n_in)`` (a range), and those input indices (a strided slice)."""
    first = max(0, -(offset // step))                  # ceil(-offset / step)
    stop = max(first, min(n_out, -((offset - n_in) // step)))   # ceil((n_in - offset) / step)
    if stop == first:
        return slice(0, 0), slice(0, 0)
    return slice(first, stop), slice(first * step + offset, (stop - 1) * step + offset + 1, step)


def _window(p, q, geo):
    """The strided slices of a padded input that kernel offset ``(p, q)`` reads for every output of
    the :class:`Geometry` ``geo``: ``(rows, columns)``."""
    (sh, sw), (dh, dw), (ho, wo) = geo.stride, geo.dilation, geo.out_hw
    return (slice(p * dh, p * dh + sh * (ho - 1) + 1, sh), slice(q * dw, q * dw + sw * (wo - 1) + 1, sw))


def _offset_slices(p, q, x_hw, stride, dilation, out_hw, origin):
    """For kernel offset ``(p, q)``: ``(rows_out, cols_out, rows_in, cols_in)``, the rectangle of
    output positions that read inside ``x`` and the strided input slices they read."""
    (sh, sw), (dh, dw), (top, left) = stride, dilation, origin
    rows_out, rows_in = _inside(p * dh - top, sh, out_hw[0], x_hw[0])
    cols_out, cols_in = _inside(q * dw - left, sw, out_hw[1], x_hw[1])
    return rows_out, cols_out, rows_in, cols_in


def _zero_outside(block, rows, columns):
    """Zero ``block (N, C, Ho, Wo)`` outside the rectangle ``[rows, columns]``."""
    ho, wo = block.shape[2:]
    if rows.stop == rows.start or columns.stop == columns.start:
        block[...] = 0
        return
    if rows.start > 0:
        block[:, :, :rows.start] = 0
    if rows.stop < ho:
        block[:, :, rows.stop:] = 0
    if columns.start > 0:
        block[:, :, rows, :columns.start] = 0
    if columns.stop < wo:
        block[:, :, rows, columns.stop:] = 0


def _rows_align(x, cols, stride, out_hw):
    """Whether an offset's columns are one shift of ``x``'s flattened ``(H*W)`` plane: stride 1,
    ``Wo == W``, and rows of ``x`` and of ``cols`` contiguous (``'same'`` padding, the common case)."""
    w, item = x.shape[3], x.itemsize
    return (tuple(stride) == (1, 1) and out_hw[1] == w and x.strides[3] == cols.strides[5] == item
            and x.strides[2] == cols.strides[4] == w * item)


def _shifted_copy(block, x, rows, shift):
    """``block[n, c, i, j] = x[n, c].flat[i*W + j + shift]`` for the rows ``i`` in ``rows`` (source
    indices clipped to the plane): one copy of ``len(rows)*W`` elements per ``(n, c)`` instead of
    one per row (eq. 3a). Columns that wrapped into a neighbouring row read the padding: the caller zeroes
    them (:func:`_zero_outside`)."""
    n, c, h, w = x.shape
    lo, hi = max(rows.start * w, -shift), min(rows.stop * w, h * w - shift)
    plane = block.reshape(n, c, block.shape[2] * w)                       # (N, C, Ho*W), a view
    plane[:, :, lo:hi] = x.reshape(n, c, h * w)[:, :, lo + shift:hi + shift]


LOOP_MIN_PLANE = 28 * 28   # output pixels per (Ho, Wo) plane from which im2col's compiled loop copies
#                            faster than its per-offset NumPy slices (smaller planes: the slices)


def _plane_stack(cols):
    """``(planes, plane_strides)``: the ``(Ho, Wo)`` planes of ``cols (N, C, kh, kw, Ho, Wo)`` as one
    ``(R, Ho, Wo)`` view and the plane index steps ``(ss, sc, sp)`` of sample, channel and kernel
    point, when ``cols`` is laid out as im2col allocates it or as conv2d's block buffer
    ``(C, kh, kw, N, Ho, Wo)``; None for any other layout of ``out``."""
    n, c, kh, kw, ho, wo = cols.shape
    if cols.flags.c_contiguous:
        return cols.reshape(-1, ho, wo), (c * kh * kw, kh * kw, 1)
    block = cols.transpose(1, 2, 3, 0, 4, 5)
    if block.flags.c_contiguous:
        return block.reshape(-1, ho, wo), (1, kh * kw * n, n)
    return None


@njit(cache=True, parallel=True)
def _im2col_loop(x, geo, planes, plane_strides):
    """``planes[s*ss + c*sc + p*sp] = cols[s, c, p // kw, p % kw]`` (eq. 3) for ``x (N, C, H, W)``:
    per plane, the rows and columns outside the rectangle of taps inside ``x`` are zeroed
    (:func:`~numpyconv.taps.point_taps`) and the rectangle copied row by row, or, at stride 1 with
    ``Wo == W``, as one run of the flattened planes (eq. 3a; the wrapped entries are zeroed after).
    Parallel over the planes, each iteration owning the plane it writes."""
    n, channels, h, w = x.shape
    points, sh, sw, ho, wo = geo[0] * geo[1], geo[2], geo[3], geo[8], geo[9]
    ss, sc, sp = plane_strides
    for t in prange(n * channels * points):
        s, c, p = t // (channels * points), (t // points) % channels, t % points
        i0, i1, j0, j1, row0, col0 = point_taps(p, geo, h, w)
        plane = planes[s * ss + c * sc + p * sp]
        if sh == 1 and sw == 1 and wo == w and i1 > i0 and j1 > j0:
            flat, out0 = plane.reshape(ho * wo), i0 * w + j0
            length = (i1 - i0 - 1) * w + j1 - j0
            flat[:out0] = 0
            take_row(flat[out0:out0 + length], x[s, c].reshape(h * w), (i0 + row0) * w + col0, 1)
            flat[out0 + length:] = 0
            for i in range(i0, i1):                          # the entries that wrapped into a row
                plane[i, :j0] = 0
                plane[i, j1:] = 0
            continue
        plane[:i0] = 0
        plane[i1:] = 0
        for i in range(i0, i1):
            plane[i, :j0] = 0
            plane[i, j1:] = 0
            take_row(plane[i, j0:j1], x[s, c, i * sh + row0], col0, sw)


def _placement(in_hw, kernel_size, stride, padding, dilation, out_hw, origin):
    """``(kernel, stride, dilation, out_hw, origin)``, all pairs: from ``padding`` by the output-size
    rule, or, when ``out_hw`` and ``origin`` are both given, those (a block of output rows)."""
    padded = not (isinstance(padding, int) and padding == 0)
    if (out_hw is None) != (origin is None) or (origin is not None and padded):
        raise TypeError(f"give either padding or both origin and out_hw, got padding={padding!r}, "
                        f"origin={origin!r}, out_hw={out_hw!r}")
    if out_hw is None:
        geo = conv_geometry(in_hw, kernel_size, stride, padding, dilation)
        return geo.kernel, geo.stride, geo.dilation, geo.out_hw, (geo.pads[0], geo.pads[2])
    return (pair(kernel_size, 'kernel_size', minimum=1), pair(stride, 'stride', minimum=1),
            pair(dilation, 'dilation', minimum=1), pair(out_hw, 'out_hw', minimum=0), pair(origin, 'origin'))


def _writeable(out):
    if not out.flags.writeable:
        raise ValueError("out must be a writeable array, got a read-only one")


def im2col(x, kernel_size, stride=1, padding=0, dilation=1, *, out=None, out_hw=None, origin=None):
    """``cols (N, C, kh, kw, Ho, Wo)`` from ``x (N, C, H, W)`` zero-padded by ``padding`` (an int, a
    pair, ``'valid'`` or ``'same'``, as conv2d), without a padded copy: what
    ``torch.nn.functional.unfold`` returns, before its reshape to ``(N, C*kh*kw, Ho*Wo)``.

    ``origin = (top, left)`` and ``out_hw`` together place the windows instead of ``padding``: the
    padding before each axis (negative: rows or columns cropped), the padding after following from
    ``out_hw`` (conv2d's bands of output rows use this). ``out``: an array of the columns' shape (any
    strides) to write into (returned).
    """
    float_array(x, 'x', 4, "(N, C, H, W)")
    kernel_size, stride, dilation, out_hw, origin = _placement(x.shape[2:], kernel_size, stride, padding,
                                                              dilation, out_hw, origin)
    shape = x.shape[:2] + kernel_size + out_hw                            # (N, C, kh, kw, Ho, Wo)
    if out is None:
        require_memory(shape, x.dtype, f"x of shape {x.shape} with kernel_size={kernel_size}, stride="
                       f"{stride}, padding={padding!r}, dilation={dilation}", 'the columns')
        cols = np.empty(shape, dtype=x.dtype)
    else:
        cols = float_array(out, 'out', 6, "(N, C, kh, kw, Ho, Wo)")
        expect_shape(cols, shape, 'out')
        if cols.dtype != x.dtype:
            raise TypeError(f"out must have x's dtype {x.dtype}, got {cols.dtype}")
        _writeable(cols)
    stack = _plane_stack(cols) if out_hw[0] * out_hw[1] >= LOOP_MIN_PLANE else None
    if stack is not None:
        geo = kernel_size + stride + dilation + origin + out_hw               # loop_geo's order
        launch(_im2col_loop, cols.size, loop_operand(x), geo, *stack)
        return cols
    kh, kw = kernel_size
    flat = _rows_align(x, cols, stride, out_hw)
    for p in range(kh):
        for q in range(kw):
            rows_out, cols_out, rows_in, cols_in = _offset_slices(p, q, x.shape[2:], stride, dilation,
                                                                  out_hw, origin)
            block = cols[:, :, p, q]                                       # (N, C, Ho, Wo)
            if flat and rows_out.stop > rows_out.start and cols_out.stop > cols_out.start:
                shift = (rows_in.start - rows_out.start) * x.shape[3] + cols_in.start - cols_out.start
                _shifted_copy(block, x, rows_out, shift)
            else:
                block[:, :, rows_out, cols_out] = x[:, :, rows_in, cols_in]
            _zero_outside(block, rows_out, cols_out)
    return cols


def col2im(cols, in_hw, stride=1, padding=0, dilation=1, *, out=None, origin=None):
    """Adjoint of :func:`im2col` (``torch.nn.functional.fold`` of the reshaped columns): the
    ``x``-shaped ``(N, C) + in_hw`` array in which every entry of ``cols (N, C, kh, kw, Ho, Wo)`` is
    added back at the input position it was read from (entries read from the padding are dropped).

    ``padding`` as :func:`im2col` (``Ho, Wo`` must be the output size it gives), or ``origin = (top,
    left)`` instead. Added into ``out`` when given (returned), into zeros otherwise.
    """
    float_array(cols, 'cols', 6, "(N, C, kh, kw, Ho, Wo)")
    n, c, kh, kw, ho, wo = cols.shape
    if min(kh, kw) < 1:
        raise ValueError(f"cols must have shape (N, C, kh, kw, Ho, Wo) with kh, kw >= 1, got {cols.shape}")
    in_hw = pair(in_hw, 'in_hw', minimum=1)
    _, stride, dilation, out_hw, origin = _placement(in_hw, (kh, kw), stride, padding, dilation,
                                                     None if origin is None else (ho, wo), origin)
    if out_hw != (ho, wo):
        raise ValueError(f"cols must have shape (N, C, {kh}, {kw}) + {out_hw}, the output size of "
                         f"in_hw {in_hw} with this stride, padding and dilation; got {cols.shape}")
    if out is None:
        require_memory((n, c) + tuple(in_hw), cols.dtype, f"in_hw={in_hw}")
        x = np.zeros((n, c) + tuple(in_hw), dtype=cols.dtype)
    else:
        x = float_array(out, 'out', 4, "(N, C, H, W)")
        expect_shape(x, (n, c) + tuple(in_hw), 'out')
        if x.dtype != cols.dtype:
            raise TypeError(f"out must have cols's dtype {cols.dtype}, got {x.dtype}")
        _writeable(x)
    for p in range(kh):
        for q in range(kw):
            rows_out, cols_out, rows_in, cols_in = _offset_slices(p, q, in_hw, stride, dilation,
                                                                  (ho, wo), origin)
            x[:, :, rows_in, cols_in] += cols[:, :, p, q, rows_out, cols_out]
    return x
