"""The shared core: ``im2col`` / ``col2im`` (an adjoint pair) and the output-size rule.

Shapes (NCHW)::

    xp    (N, C, Hp, Wp)            the input after zero padding
    cols  (N, C, kh, kw, Ho, Wo)    cols[n, c, p, q, i, j] = xp[n, c, i*sh + p*dh, j*sw + q*dw]

``im2col`` loops over the ``kh*kw`` kernel offsets and copies one strided slice of the whole batch
per offset (Chainer's design); ``col2im`` is its exact adjoint, adding each slice back with ``+=``
because overlapping windows read one pixel several times. Within one offset the strided slice has
no repeated index, so slice ``+=`` is exact and no unbuffered scatter-add is needed::

    <im2col(xp), c> == <xp, col2im(c)>        for every xp and c  (docs/derivations/conv.md, eq. 3)

Worked example: ``H = W = 5``, ``k = 3``, stride 2, padding 1, dilation 1 gives
``Ho = floor((5 + 2 - 2 - 1) / 2) + 1 = 3``; ``cols`` is ``(N, C, 3, 3, 3, 3)``.

Memory bound: the column buffer is ``kh*kw`` times the (output-sized) input. conv2d never holds
more than one block of columns, at most ``min(GEMM_BLOCK, column_budget())`` bytes: several whole
samples, or, when one sample's columns are larger, bands of one sample's output rows (one output
row's columns is the smallest block). The GEMM reads the columns im2col has just written while they
are still in cache, and the backward pass recomputes each block's columns instead of keeping the
batch's. The deformable convolutions, whose columns cost more to rebuild, keep the whole batch's
columns while they fit in :func:`column_budget` bytes (default 256 MiB, set with
:func:`set_column_budget`) and otherwise work in chunks of whole samples.
"""
import threading

import numpy as np

_COLUMN_BUDGET = 256 * 2 ** 20
GEMM_BLOCK = 8 * 2 ** 20       # bytes of columns per im2col + GEMM step (cache-sized)
_SCRATCH = threading.local()   # each thread's reusable temporaries: slot name -> memory


def column_budget():
    """Bytes a column buffer may take before the batch is processed in chunks."""
    return _COLUMN_BUDGET


def set_column_budget(nbytes):
    """Set the column-buffer bound in bytes; returns the previous value."""
    global _COLUMN_BUDGET
    if int(nbytes) < 1:
        raise ValueError(f"nbytes must be a positive number of bytes, got {nbytes!r}")
    previous, _COLUMN_BUDGET = _COLUMN_BUDGET, int(nbytes)
    return previous


def batch_chunks(n, bytes_per_sample, budget=None):
    """Slices covering ``range(n)`` whose buffers each stay below ``budget`` (default: the
    column budget) bytes; a slice is never smaller than one sample."""
    budget = _COLUMN_BUDGET if budget is None else budget
    step = max(1, budget // max(1, bytes_per_sample))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)] or [slice(0, 0)]


def scratch(slot, shape, dtype):
    """An uninitialised temporary array, in memory this thread reuses for ``slot`` (conv2d's:
    'columns', 'padded', 'kernel', 'kernel_grad') from call to call, when it takes at most
    ``2 * GEMM_BLOCK`` bytes (a fresh array otherwise). Fresh memory costs a page fault per 4 KiB on
    first touch, about 10% of a small convolution's time. The caller must be done with a slot's
    array before it asks that slot for another, and must not return it."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes > 2 * GEMM_BLOCK:
        return np.empty(shape, dtype=dtype)
    memory = getattr(_SCRATCH, slot, None)
    if memory is None or memory.nbytes < nbytes:
        memory = np.empty(nbytes, dtype=np.uint8)
        setattr(_SCRATCH, slot, memory)
    return memory[:nbytes].view(dtype).reshape(shape)


def conv_output_size(size, kernel, stride, pad_before, pad_after, dilation):
    """``floor((size + pads - dilation*(kernel-1) - 1) / stride) + 1`` (specs README)."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def pad_nchw(x, pads, out=None):
    """Zero-pad the two spatial axes by ``pads = (top, bottom, left, right)``; a negative pad crops
    that many rows or columns instead. A new array, or ``out`` (of the padded shape) when given;
    ``x`` itself when all pads are 0."""
    if pads == (0, 0, 0, 0):
        return x
    top, bottom, left, right = (max(0, p) for p in pads)
    cut_top, cut_bottom, cut_left, cut_right = (max(0, -p) for p in pads)
    kept = x[:, :, cut_top:x.shape[2] - cut_bottom, cut_left:x.shape[3] - cut_right]
    n, c, h, w = kept.shape
    if out is None:
        xp = np.zeros((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
    else:
        xp = out
        xp[:, :, :top], xp[:, :, top + h:] = 0, 0
        xp[:, :, top:top + h, :left], xp[:, :, top:top + h, left + w:] = 0, 0
    xp[:, :, top:top + h, left:left + w] = kept
    return xp


def crop_nchw(xp, pads, h, w):
    """Adjoint of :func:`pad_nchw`: the ``(h, w)`` interior of ``xp``."""
    top, _, left, _ = pads
    return xp[:, :, top:top + h, left:left + w]


def _window(p, q, stride, dilation, out_hw):
    """The strided slice read by kernel offset ``(p, q)``."""
    (sh, sw), (dh, dw), (ho, wo) = stride, dilation, out_hw
    r0, c0 = p * dh, q * dw
    return (slice(r0, r0 + sh * (ho - 1) + 1, sh), slice(c0, c0 + sw * (wo - 1) + 1, sw))


def im2col(xp, kernel_size, stride, dilation, out_hw, out=None):
    """``cols (N, C, kh, kw, Ho, Wo)`` from the padded input ``xp (N, C, Hp, Wp)``.

    ``out``: an optional buffer of that shape to write into (returned).
    """
    n, c = xp.shape[:2]
    kh, kw = kernel_size
    cols = np.empty((n, c, kh, kw) + tuple(out_hw), dtype=xp.dtype) if out is None else out
    for p in range(kh):
        for q in range(kw):
            rows, columns = _window(p, q, stride, dilation, out_hw)
            cols[:, :, p, q] = xp[:, :, rows, columns]
    return cols


def col2im(cols, padded_hw, stride, dilation):
    """Adjoint of :func:`im2col`: ``xp (N, C, Hp, Wp)`` summing every column back."""
    n, c, kh, kw, ho, wo = cols.shape
    xp = np.zeros((n, c) + tuple(padded_hw), dtype=cols.dtype)
    for p in range(kh):
        for q in range(kw):
            rows, columns = _window(p, q, stride, dilation, (ho, wo))
            xp[:, :, rows, columns] += cols[:, :, p, q]
    return xp
