r"""Transposed convolution (``torch.nn.functional.conv_transpose2d``) over the im2col/GEMM core, and
the ``ConvTranspose2d`` layer.

Shapes (PyTorch's layout, groups as contiguous channel blocks)::

    x      (N, C_in, H, W)
    weight (C_in, C_out // G, kh, kw)
    bias   (C_out,)
    y      (N, C_out, Ho, Wo),  Ho = (H - 1) sh - 2 ph + dh (kh - 1) + oph + 1               (eq. 16)

``output_padding`` (``oph``) adds rows at the bottom (columns at the right); it must be smaller than
the stride or the dilation (PyTorch's rule). Equations: docs/derivations/conv.md, section 9.

The transposed convolution is the input gradient of the convolution ``conv2d(., weight)`` that maps
``y``-shaped arrays to ``x``-shaped ones (same stride, padding, dilation, groups):

* forward: ``dcols = Wr^T x`` per group, then ``y = col2im(dcols) + b``: every input pixel scatters its
  channels, weighted by the kernel, onto the window it would have been read from   (eq. 15, 17)
* ``dx = conv2d(dy, weight)`` (cropped to ``H x W`` when ``oph >= sh``): the convolution's forward  (eq. 18)
* ``dweight = sum_n x[n] cols(dy)[n]^T`` per group: the convolution's weight gradient with ``x`` as
  its output gradient, on the columns ``im2col(dy)``                                (eq. 19)
* ``dbias[o] = sum_{n,u,v} dy[n, o, u, v]``                                          (eq. 20)

Columns ``(n, C_out, kh, kw, rows, W)`` exist for one block at a time (several whole samples, or a
band of input rows of one sample; about ``GEMM_BLOCK`` bytes, at most the column budget), laid out
so that a block is one GEMM, in reused scratch memory (numpyconv/memory.py). The cache
keeps ``x`` (a reference: do not modify it before the backward pass) and the weight.

Example::

    >>> x = np.ones((1, 1, 2, 2)); w = np.ones((1, 1, 3, 3))
    >>> y, cache = conv_transpose2d_forward(x, w, stride=2)
    >>> y.shape, float(y[0, 0, 2, 2])    # the four windows overlap at the centre
    ((1, 1, 5, 5), 4.0)
"""
import math
from collections import namedtuple

import numpy as np

from ._checks import Cache, check_cache, expect_shape, float_array, grad_out, pair, positive_int, same_dtype
from .conv import check_layer_channels, conv2d_forward
from .gemm import cols_input_grad, cols_weight_grad
from .im2col import col2im, im2col
from .memory import GEMM_BLOCK, column_budget, even_steps, require_memory, scratch
from .module import Module, default_bias, kaiming_uniform


TransposeGeometry = namedtuple('TransposeGeometry',
                               'kernel stride padding output_padding dilation in_hw out_hw')
TransposeGeometry.__doc__ = """All pairs: ``in_hw`` is x's ``(H, W)``, ``out_hw`` the output size (eq. 16)."""


def _transpose_args(stride, padding, output_padding, dilation):
    """Check the hyper-parameters (PyTorch's rules); returns them as pairs."""
    stride = pair(stride, 'stride', minimum=1)
    padding = pair(padding, 'padding', minimum=0)
    output_padding = pair(output_padding, 'output_padding', minimum=0)
    dilation = pair(dilation, 'dilation', minimum=1)
    for a in (0, 1):
        if not (output_padding[a] < stride[a] or output_padding[a] < dilation[a]):
            raise ValueError(f"output_padding must be smaller than either the stride or the dilation "
                             f"(PyTorch's rule), got output_padding={output_padding}, stride={stride}, "
                             f"dilation={dilation}")
    return stride, padding, output_padding, dilation


def _base_size(size, kernel, stride, pad, dilation):
    """The output size without output_padding: ``(H - 1) s - 2 p + d (k - 1) + 1`` (eq. 16)."""
    return (size - 1) * stride - 2 * pad + dilation * (kernel - 1) + 1


def transpose_geometry(in_hw, kernel_size, stride=1, padding=0, output_padding=0, dilation=1):
    """Resolve and check a transposed convolution's geometry.

    Parameters
    ----------
    in_hw : pair of int
        x's ``(H, W)``.
    kernel_size, stride, padding, output_padding, dilation : int or pair

    Returns
    -------
    TransposeGeometry
        ``out_hw`` from (eq. 16); ``ValueError`` when it is below 1.
    """
    kernel = pair(kernel_size, 'kernel_size', minimum=1)
    stride, padding, output_padding, dilation = _transpose_args(stride, padding, output_padding, dilation)
    if min(in_hw) < 1:
        raise ValueError(f"the input must have H, W >= 1 (only the batch may be empty), got spatial "
                         f"size {tuple(in_hw)}")
    out_hw = tuple(_base_size(in_hw[a], kernel[a], stride[a], padding[a], dilation[a]) + output_padding[a]
                   for a in (0, 1))
    if min(out_hw) < 1:
        raise ValueError(f"padding {padding} is too large for the input of spatial size {tuple(in_hw)} "
                         f"with kernel_size {kernel}, stride {stride} and dilation {dilation}: the "
                         f"output would be {out_hw}")
    return TransposeGeometry(kernel, stride, padding, output_padding, dilation, tuple(in_hw), out_hw)


def _check_operands(x, weight, bias, groups):
    """Validate the operands; return ``groups`` as an int."""
    float_array(x, 'x', 4, "(N, C_in, H, W)")
    float_array(weight, 'weight', 4, "(C_in, C_out // groups, kh, kw)")
    groups = positive_int(groups, 'groups')
    c_in = x.shape[1]
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels, got x of shape {x.shape}")
    if weight.shape[0] != c_in or weight.shape[1] == 0 or min(weight.shape[2:]) < 1:
        raise ValueError(f"weight must have shape ({c_in}, C_out // groups, kh, kw) with C_out // groups, "
                         f"kh, kw >= 1 for x of shape {x.shape}, got {weight.shape}")
    if bias is not None:
        float_array(bias, 'bias', 1, "(C_out,)")
        expect_shape(bias, (weight.shape[1] * groups,), 'bias')
    same_dtype(('x', x), ('weight', weight), ('bias', bias))
    return groups


def _blocks(x, geo, c_out):
    """``(s, r)`` pairs (batch slice, slice of x's rows) of equal-sized blocks whose columns
    ``(n_s, C_out, kh, kw, rows, W)`` take about ``GEMM_BLOCK`` bytes (cache-sized, as conv2d's), at
    most twice that and the column budget: several whole samples, or bands of one sample's rows."""
    n, (h, w) = x.shape[0], geo.in_hw
    row_bytes = max(1, c_out * geo.kernel[0] * geo.kernel[1] * w * x.itemsize)
    rows = max(1, min(GEMM_BLOCK, column_budget()) // row_bytes)
    if rows >= h:
        return [(s, slice(0, h)) for s in even_steps(n, max(1, rows // h))] if n else []
    bands = even_steps(h, rows)
    return [(slice(i, i + 1), r) for i in range(n) for r in bands]


def _block_columns(n, c_out, geo, rows, dtype):
    """Scratch columns ``(n, C_out, kh, kw, rows, W)``, a view of a ``(C_out, kh, kw, n, rows, W)``
    buffer: the block layout in which the whole block is one GEMM (numpyconv/gemm.py)."""
    buffer = scratch('columns', (c_out,) + geo.kernel + (n, rows, geo.in_hw[1]), dtype)
    return buffer.transpose(3, 0, 1, 2, 4, 5)


def _origin(r, geo):
    """The padding before a band of x's rows starting at ``r.start``: ``y`` row ``u`` is read by x row
    ``i`` and kernel row ``a`` when ``u = i sh - ph + a dh``."""
    return (geo.padding[0] - r.start * geo.stride[0], geo.padding[1])


def conv_transpose2d_forward(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                             dilation=1):
    """Transposed convolution as ``torch.nn.functional.conv_transpose2d`` (eq. 15-17).

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
    weight : ndarray (C_in, C_out // groups, kh, kw)
    bias : ndarray (C_out,) or None
    stride, padding, dilation : int or pair
    output_padding : int or pair
        Extra rows / columns at the bottom / right, smaller than the stride or the dilation.
    groups : int

    Returns
    -------
    y : ndarray (N, C_out, Ho, Wo)
        ``Ho = (H - 1) sh - 2 ph + dh (kh - 1) + oph + 1``.
    cache : Cache
        ``Cache('conv_transpose2d')`` with ``x``, ``weight``, ``has_bias``, ``groups`` and ``geo`` (the
        transposed geometry); none of them None.
    """
    groups = _check_operands(x, weight, bias, groups)
    geo = transpose_geometry(x.shape[2:], weight.shape[2:], stride, padding, output_padding, dilation)
    c_out = weight.shape[1] * groups
    require_memory((x.shape[0], c_out) + geo.out_hw, x.dtype,
                   f"stride={stride}, dilation={dilation} with x of shape {x.shape}")
    y = np.zeros((x.shape[0], c_out) + geo.out_hw, dtype=x.dtype)
    for s, r in _blocks(x, geo, c_out):
        block = x[s, :, r]                                                        # (n_s, C_in, rows, W)
        cols_shape = (block.shape[0], c_out) + geo.kernel + block.shape[2:]
        dcols = cols_input_grad(block, weight, groups, cols_shape, batch_inside=True, reuse=True)  # (eq. 17)
        col2im(dcols, geo.out_hw, geo.stride, dilation=geo.dilation, out=y[s], origin=_origin(r, geo))
    if bias is not None:
        y += bias[:, None, None]
    return y, Cache('conv_transpose2d', x=x, weight=weight, has_bias=bias is not None, groups=groups,
                    geo=geo)


def conv_transpose2d_backward(dout, cache):
    """Gradients of :func:`conv_transpose2d_forward` (eq. 18-20).

    Parameters
    ----------
    dout : ndarray, (N, C_out, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`conv_transpose2d_forward`.
    cache : Cache
        The cache :func:`conv_transpose2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx (N, C_in, H, W), dweight (C_in, C_out // groups, kh, kw), dbias (C_out,))``; ``dbias``
        None without bias.
    """
    cache = check_cache(cache, 'conv_transpose2d')
    x, weight, groups, geo = cache['x'], cache['weight'], cache['groups'], cache['geo']
    c_out = weight.shape[1] * groups
    dout = grad_out(dout, (x.shape[0], c_out) + geo.out_hw, x.dtype)
    h, w = geo.in_hw
    dx = np.empty(x.shape, dtype=x.dtype)
    if x.shape[0]:
        full, _ = conv2d_forward(dout, weight, None, geo.stride, geo.padding, geo.dilation, groups)
        dx[...] = full[:, :, :h, :w]              # (eq. 18); rows beyond H when output_padding >= stride
    dweight = np.zeros_like(weight)
    for s, r in _blocks(x, geo, c_out):
        cols = _block_columns(s.stop - s.start, c_out, geo, r.stop - r.start, x.dtype)
        im2col(dout[s], geo.kernel, geo.stride, dilation=geo.dilation, out=cols,
               out_hw=cols.shape[-2:], origin=_origin(r, geo))      # (n_s, C_out, kh, kw, rows, W)
        dweight += cols_weight_grad(x[s, :, r], cols, weight, groups)            # (eq. 19)
    dbias = dout.sum(axis=(0, 2, 3)) if cache['has_bias'] else None               # (eq. 20)
    return dx, dweight, dbias


# -- layer ---------------------------------------------------------------------------------------
class ConvTranspose2d(Module):
    """``torch.nn.ConvTranspose2d`` (zeros padding); keys ``weight (C_in, C_out // groups, kh, kw)``,
    ``bias (C_out,)``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, output_padding, dilation : int or pair
        As :func:`conv_transpose2d_forward` (checked here).
    groups : int
    bias : bool
    padding_mode : {'zeros'}
        The only mode PyTorch allows for transposed convolutions.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).

    Initialisation as PyTorch: weight and bias ``U(+-1/sqrt(fan_in))``, ``fan_in = C_out // groups *
    kh * kw`` (PyTorch computes the fans on the weight's own layout). ``forward(x, output_size=None)``:
    ``output_size`` (``(Ho, Wo)`` or ``(N, C_out, Ho, Wo)``) chooses the output_padding, as PyTorch.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, bias=True, dilation=1, padding_mode='zeros', *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        if padding_mode != 'zeros':
            raise ValueError(f"padding_mode must be 'zeros' (the only mode of ConvTranspose2d), got "
                             f"{padding_mode!r}")
        in_channels, out_channels, groups = check_layer_channels(in_channels, out_channels, groups)
        self.kernel_size = pair(kernel_size, 'kernel_size', minimum=1)
        self.stride, self.padding, self.output_padding, self.dilation = _transpose_args(
            stride, padding, output_padding, dilation)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        shape = (in_channels, out_channels // groups) + self.kernel_size
        self.add_param('weight', kaiming_uniform(self.rng, shape, self.dtype))
        if bias:
            self.add_param('bias', default_bias(self.rng, math.prod(shape[1:]), out_channels, self.dtype))

    def _output_padding(self, x_hw, output_size):
        """PyTorch's ``_output_padding``: the output_padding giving ``output_size``."""
        if output_size is None:
            return self.output_padding
        sizes = list(output_size) if isinstance(output_size, (tuple, list)) else None
        if sizes is None or len(sizes) not in (2, 4):
            raise ValueError(f"output_size must have 2 or 4 elements ((Ho, Wo) or (N, C_out, Ho, Wo)), got "
                             f"{output_size!r}")
        sizes = pair(tuple(sizes[-2:]), 'output_size')
        low = tuple(_base_size(x_hw[a], self.kernel_size[a], self.stride[a], self.padding[a],
                               self.dilation[a]) for a in (0, 1))
        high = tuple(low[a] + self.stride[a] - 1 for a in (0, 1))
        if any(not low[a] <= sizes[a] <= high[a] for a in (0, 1)):
            raise ValueError(f"requested an output size of {tuple(output_size)}, but valid sizes range from "
                             f"{list(low)} to {list(high)} (for an input of {tuple(x_hw)})")
        return tuple(sizes[a] - low[a] for a in (0, 1))

    def forward(self, x, output_size=None):
        self._check_input(x, channels=self.in_channels)
        y, self._cache = conv_transpose2d_forward(
            x, self._params['weight'], self._params.get('bias'), self.stride, self.padding,
            self._output_padding(x.shape[2:], output_size), self.groups, self.dilation)
        return y

    def backward(self, dout):
        dx, dweight, dbias = conv_transpose2d_backward(dout, self._cache)
        self._add_grad('weight', dweight)
        if dbias is not None:
            self._add_grad('bias', dbias)
        return dx

    def macs(self, input_shape):
        """Each input element multiplies ``C_out // groups * kh * kw`` weights."""
        n, c, h, w = self._check_input_shape(input_shape, self.in_channels)
        geo = transpose_geometry((h, w), self.kernel_size, self.stride, self.padding, self.output_padding,
                                 self.dilation)
        per_input = self.out_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        return n * c * h * w * per_input, (n, self.out_channels) + geo.out_hw
