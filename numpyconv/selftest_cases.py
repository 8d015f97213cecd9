"""One small float64 case of every op pair and of every layer: the home of "a valid call of X".

``numpyconv check`` runs the op cases (:mod:`numpyconv.check`); the test suite reuses both tables
for the tests that every op and every layer must pass (misuse of caches and output gradients,
``no_grad``, the dtype rule), and fails when a public ``<op>_forward`` or layer class has no case
here. An op added to numpyconv registers its case here, importing the op from the ``numpyconv``
top level::

    @register('my_op')
    def _my_op(rng):                             # rng: numpy.random.Generator
        x = rng.standard_normal((2, 3, 5, 5))
        return CheckCase(forward=lambda x: numpyconv.my_op_forward(x, stride=2),
                         backward=numpyconv.my_op_backward,
                         inputs=(x,),
                         reference=lambda x: reference.my_op(x, stride=2))

``forward(*inputs) -> (out, cache)`` must return the cache of ``numpyconv.<op>_forward`` itself;
``backward(dout, cache) -> grads`` (it may drop the gradients of inputs that are not checked, e.g.
running statistics); ``reference(*inputs) -> out`` is the plain-loop definition. A second case of
the same op registers under another name with ``op=`` (``@register('conv2d_winograd', op='conv2d')``).

A layer registers ``make(rng, dtype) -> (layer, x)``, a small layer and a valid input of ``dtype``
(a pair for ``OctaveConv2d``; :class:`Inputs` for a forward that takes several arguments, called
``layer(*x)``: :func:`call` runs either)::

    @register_layer('MyLayer')
    def _my_layer(rng, dtype):
        return numpyconv.MyLayer(3, 4, dtype=dtype, rng=rng), rng.standard_normal((2, 3, 5, 5)).astype(dtype)
"""
from collections import namedtuple

import numpy as np

import numpyconv as nc
from . import reference
from .dcnv3 import center_feature_scale_backward, center_feature_scale_forward

CheckCase = namedtuple('CheckCase', 'forward backward inputs reference')


class Inputs(tuple):
    """The positional arguments of one forward call, ``layer(*inputs)`` (MSDeformAttn's query,
    reference points, ...), where a plain tuple is one input (OctaveConv2d's ``(x_h, x_l)``)."""


def call(layer, x):
    """``layer(*x)`` for :class:`Inputs`, ``layer(x)`` otherwise."""
    return layer(*x) if isinstance(x, Inputs) else layer(x)

_OP_CASES = {}       # name -> (make_case, op)
_LAYER_CASES = {}    # name -> make(rng, dtype)


def register(name, op=None):
    """Decorator: register ``make_case(rng) -> CheckCase`` under ``name``, a case of the op ``op``
    (default: ``name``), whose pair is ``numpyconv.<op>_forward`` / ``numpyconv.<op>_backward``."""
    def decorate(make_case):
        _OP_CASES[name] = (make_case, op or name)
        return make_case
    return decorate


def registered():
    """``name -> make_case`` of every registered op case."""
    return {name: make for name, (make, _) in _OP_CASES.items()}


def case_ops():
    """``name -> op`` of every registered op case."""
    return {name: op for name, (_, op) in _OP_CASES.items()}


def register_layer(name):
    """Decorator: register ``make(rng, dtype) -> (layer, x)`` under ``name``."""
    def decorate(make):
        _LAYER_CASES[name] = make
        return make
    return decorate


def registered_layers():
    """``name -> make(rng, dtype)`` of every registered layer case."""
    return dict(_LAYER_CASES)


# == op cases ====================================================================================
# -- convolutions (numpyconv/conv.py) -------------------------------------------------------------
@register('conv2d')
def _conv2d(rng):
    x, w, b = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 2, 3, 2)), rng.standard_normal(6)
    hyper = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    return CheckCase(lambda x, w, b: nc.conv2d_forward(x, w, b, **hyper), nc.conv2d_backward,
                     (x, w, b), lambda x, w, b: reference.conv2d(x, w, b, **hyper))


@register('conv2d_winograd', op='conv2d')
def _conv2d_winograd(rng):
    x, w, b = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)

    def forward(x, w, b):
        with nc.winograd_mode('always'):                                 # F(2x2, 3x3) on small channels
            return nc.conv2d_forward(x, w, b, padding=(1, 2))
    return CheckCase(forward, nc.conv2d_backward, (x, w, b),
                     lambda x, w, b: reference.conv2d(x, w, b, padding=(1, 2)))


@register('conv2d_per_sample', op='conv2d')
def _conv2d_per_sample(rng):
    x, w, b = (rng.standard_normal((2, 4, 5, 5)), rng.standard_normal((2, 6, 2, 3, 3)),
               rng.standard_normal((2, 6)))
    return CheckCase(lambda x, w, b: nc.conv2d_forward(x, w, b, padding=1, groups=2), nc.conv2d_backward,
                     (x, w, b), lambda x, w, b: reference.conv2d(x, w, b, padding=1, groups=2))


@register('depthwise_conv2d')
def _depthwise(rng):
    x, w, b = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((6, 1, 3, 3)), rng.standard_normal(6)
    return CheckCase(lambda x, w, b: nc.depthwise_conv2d_forward(x, w, b, 2, (1, 0), 1),
                     nc.depthwise_conv2d_backward, (x, w, b),
                     lambda x, w, b: reference.depthwise_conv2d(x, w, b, 2, (1, 0), 1))


@register('pointwise_conv2d')
def _pointwise(rng):
    x, w, b = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((4, 3, 1, 1)), rng.standard_normal(4)
    return CheckCase(lambda x, w, b: nc.pointwise_conv2d_forward(x, w, b, 2), nc.pointwise_conv2d_backward,
                     (x, w, b), lambda x, w, b: reference.pointwise_conv2d(x, w, b, 2))


@register('separable_conv2d')
def _separable(rng):
    args = (rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((6, 1, 3, 3)),
            rng.standard_normal((4, 6, 1, 1)), rng.standard_normal(6), rng.standard_normal(4))
    return CheckCase(lambda *a: nc.separable_conv2d_forward(*a, padding='same', dilation=2),
                     nc.separable_conv2d_backward, args,
                     lambda *a: reference.separable_conv2d(*a, padding='same', dilation=2))


# -- building blocks ------------------------------------------------------------------------------
@register('linear')
def _linear(rng):
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    return CheckCase(nc.linear_forward, nc.linear_backward, (x, w, b), reference.linear)


def _batch_norm_case(training):
    """Every input checked, the running statistics included (their eval-mode gradient)."""
    def case(rng):
        x, w, b = rng.standard_normal((3, 2, 3, 2)), rng.standard_normal(2), rng.standard_normal(2)
        stats = rng.standard_normal(2), 0.5 + rng.random(2)
        return CheckCase(lambda *a: nc.batch_norm_forward(*a, training), nc.batch_norm_backward,
                         (x, w, b) + stats, lambda *a: reference.batch_norm(*a, training))
    return case


register('batch_norm')(_batch_norm_case(True))
register('batch_norm_eval', op='batch_norm')(_batch_norm_case(False))


@register('layer_norm')
def _layer_norm(rng):
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal(5), rng.standard_normal(5)
    return CheckCase(nc.layer_norm_forward, nc.layer_norm_backward, (x, w, b), reference.layer_norm)


@register('cross_entropy')
def _cross_entropy(rng):
    labels = rng.integers(0, 4, size=5)
    return CheckCase(nc.cross_entropy_forward, nc.cross_entropy_backward,
                     (rng.standard_normal((5, 4)), labels), reference.cross_entropy)


# -- octave -------------------------------------------------------------------------------------
@register('octave_conv2d')
def _octave(rng):
    x_h, x_l = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((2, 2, 4, 4))
    weights = tuple(rng.standard_normal(s) for s in ((4, 3, 3, 3), (2, 3, 3, 3), (4, 2, 3, 3), (2, 2, 3, 3)))
    return CheckCase(forward=lambda *a: nc.octave_conv2d_forward(*a, stride=2, padding=1),
                     backward=nc.octave_conv2d_backward,
                     inputs=(x_h, x_l) + weights,
                     reference=lambda *a: reference.octave_conv2d(*a, stride=2, padding=1))


# -- the dynamic family ----------------------------------------------------------------------------
@register('aggregated_conv2d')
def _aggregated(rng):
    args = (rng.standard_normal((2, 4, 5, 5)), rng.random((2, 3)),
            rng.standard_normal((3, 6, 2, 3, 3)), rng.standard_normal((3, 6)))
    hyper = dict(stride=2, padding=1, groups=2)
    return CheckCase(lambda *a: nc.aggregated_conv2d_forward(*a, **hyper), nc.aggregated_conv2d_backward,
                     args, lambda *a: reference.aggregated_conv2d(*a, **hyper))


@register('dynamic_conv2d')
def _dynamic(rng):
    args = (rng.standard_normal((2, 4, 5, 5)), rng.standard_normal((3, 6, 2, 3, 3)),
            rng.standard_normal((3, 6)), rng.standard_normal((2, 4, 1, 1)),
            rng.standard_normal((3, 2, 1, 1)), rng.standard_normal(3))
    hyper = dict(temperature=0.7, padding=1, dilation=(1, 2), groups=2)
    return CheckCase(lambda *a: nc.dynamic_conv2d_forward(*a, **hyper), nc.dynamic_conv2d_backward,
                     args, lambda *a: reference.dynamic_conv2d(*a, **hyper))


@register('condconv2d')
def _condconv(rng):
    args = (rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((3, 4, 2, 3, 3)),
            rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3))
    hyper = dict(stride=(1, 2), padding=1, groups=2)
    return CheckCase(lambda *a: nc.condconv2d_forward(*a, **hyper), nc.condconv2d_backward, args,
                     lambda *a: reference.condconv2d(*a, **hyper))


@register('odconv2d')
def _odconv(rng):
    """Train mode (BatchNorm couples the 3 samples), all four heads, T = 1.7, groups 2."""
    hidden = 5
    running = (rng.standard_normal(hidden), rng.random(hidden) + 0.5)
    args = (rng.standard_normal((3, 4, 5, 5)), rng.standard_normal((3, 6, 2, 3, 3)),
            rng.standard_normal((hidden, 4, 1, 1)), rng.random(hidden) + 0.5,
            rng.standard_normal(hidden), rng.standard_normal((4, hidden, 1, 1)),
            rng.standard_normal(4), rng.standard_normal((6, hidden, 1, 1)),
            rng.standard_normal(6), rng.standard_normal((9, hidden, 1, 1)),
            rng.standard_normal(9), rng.standard_normal((3, hidden, 1, 1)),
            rng.standard_normal(3))
    hyper = dict(stride=2, padding=1, groups=2, temperature=1.7, training=True)

    def forward(x, weight, fc, gamma, beta, *heads):
        stats = (r.astype(x.dtype) for r in running)                     # running statistics not checked
        return nc.odconv2d_forward(x, weight, fc, gamma, beta, *stats, *heads, **hyper)

    def backward(dout, cache):
        grads = nc.odconv2d_backward(dout, cache)
        return grads[:5] + grads[7:]                                      # drop the buffers

    def loops(x, weight, fc, gamma, beta, *heads):
        return reference.odconv2d(x, weight, fc, gamma, beta, *running, *heads, **hyper)
    return CheckCase(forward, backward, args, loops)


# -- KernelWarehouse -----------------------------------------------------------------------------------
@register('kw_caf')
def _kw_caf(rng):
    return CheckCase(nc.kw_caf_forward, nc.kw_caf_backward, (rng.standard_normal((6, 5)),), reference.kw_caf)


@register('kw_attention')
def _kw_attention(rng):
    """Basis-mode attention in train mode: m = 2 mixtures, M = 5 cells, nl = 2, nb = 3."""
    x = rng.standard_normal((3, 4, 3, 3))
    params = (rng.standard_normal((6, 4)), 1 + 0.1 * rng.standard_normal(6), 0.1 * rng.standard_normal(6),
              rng.standard_normal((12, 6)), rng.standard_normal((3, 3)), 0.1 * rng.standard_normal(12))
    hyper = dict(num_cells=5, start_cell_idx=1, temperature=0.3, training=True)
    temp_bias = np.eye(6)[[1, 4]].ravel()

    def forward(x, w1, g, b, w2, w3, bb):
        return nc.kw_attention_forward(x, w1, g, b, np.zeros(6, x.dtype), np.ones(6, x.dtype), w2, None,
                                       w3, bb, temp_bias=temp_bias.astype(x.dtype), **hyper)

    def backward(dout, cache):
        dx, dw1, dg, db, _, _, dw2, _, dw3, dbb = nc.kw_attention_backward(dout, cache)
        return dx, dw1, dg, db, dw2, dw3, dbb

    def loops(x, w1, g, b, w2, w3, bb):
        return reference.kw_attention(x, w1, g, b, np.zeros(6), np.ones(6), w2, None, w3, bb,
                                      temp_bias=temp_bias, **hyper)
    return CheckCase(forward, backward, (x,) + params, loops)


@register('kw_conv2d')
def _kw_conv2d(rng):
    """Plain mode, 1x1 cells, groups 2: C_in 4 -> C_out 4, 3x3 kernel, cells (2, 1, 1, 1)."""
    x = rng.standard_normal((2, 4, 5, 5))
    warehouse = rng.standard_normal((7, 2, 1, 1, 1))
    m, planes = 2 * 2 * 9, 8
    params = (rng.standard_normal((16, 4)), 1 + 0.1 * rng.standard_normal(16), 0.1 * rng.standard_normal(16),
              rng.standard_normal((m * planes, 16)), rng.standard_normal(m * planes), rng.standard_normal(4))
    temp_bias = np.zeros(m * planes)
    temp_bias[np.arange(m) * planes + np.arange(m) % 7] = 1
    hyper = dict(kernel_size=3, stride=2, padding=1, groups=2, temperature=0.4, training=True)

    def forward(x, e, w1, g, b, w2, b2, bias):
        return nc.kw_conv2d_forward(x, e, w1, g, b, np.zeros(16, x.dtype), np.ones(16, x.dtype), w2, b2,
                                    None, None, bias, temp_bias=temp_bias.astype(x.dtype), **hyper)

    def backward(dout, cache):
        dx, de, dw1, dg, db, _, _, dw2, db2, _, _, dbias = nc.kw_conv2d_backward(dout, cache)
        return dx, de, dw1, dg, db, dw2, db2, dbias

    def loops(x, e, w1, g, b, w2, b2, bias):
        return reference.kw_conv2d(x, e, w1, g, b, np.zeros(16), np.ones(16), w2, b2, None, None, bias,
                                   temp_bias=temp_bias, **hyper)
    return CheckCase(forward, backward, (x, warehouse) + params, loops)


# -- deformable family ----------------------------------------------------------------------------------
@register('deform_conv2d')
def _deform_conv2d(rng):
    """DCNv2 with groups 2, offset groups 2, stride/padding/dilation pairs, offsets crossing borders."""
    hyper = dict(stride=(2, 1), padding=(1, 0), dilation=(2, 1))
    x = rng.standard_normal((2, 4, 5, 4))
    weight, bias = rng.standard_normal((6, 2, 3, 2)), rng.standard_normal(6)
    offset = rng.uniform(-2.5, 2.5, (2, 2 * 2 * 6, 2, 3))              # og = 2, K = 6, Ho, Wo = 2, 3
    mask = rng.uniform(0.0, 1.0, (2, 2 * 6, 2, 3))
    return CheckCase(
        forward=lambda x, o, w, b, m: nc.deform_conv2d_forward(x, o, w, b, mask=m, **hyper),
        backward=nc.deform_conv2d_backward,
        inputs=(x, offset, weight, bias, mask),
        reference=lambda x, o, w, b, m: reference.deform_conv2d(x, o, w, b, mask=m, **hyper))


@register('dcnv3')
def _dcnv3(rng):
    """Stride 2, dilation 2, offset_scale 1.5, 2 groups, offsets crossing every border."""
    hyper = (3, 2, 1, 2, 2, 3, 1.5)      # kernel, stride, padding, dilation, group, D, scale
    x = rng.standard_normal((2, 6, 7, 6))
    offset = rng.uniform(-4, 4, (2, 2, 3, 2 * 9 * 2))
    mask = rng.standard_normal((2, 2, 3, 2 * 9))
    return CheckCase(forward=lambda x, o, m: nc.dcnv3_forward(x, o, m, *hyper),
                     backward=nc.dcnv3_backward, inputs=(x, offset, mask),
                     reference=lambda x, o, m: reference.dcnv3(x, o, m, *hyper))


@register('dcnv4')
def _dcnv4(rng):
    """5x3 kernel without centre (P = 14, 2 groups: 84 used of 88 channels), offset_scale 2."""
    hyper = ((5, 3), 1, (2, 1), 1, 2, 3, 2.0, True)
    x = rng.standard_normal((2, 5, 4, 6))
    offset_mask = rng.uniform(-3, 3, (2, 5, 4, 88))
    return CheckCase(forward=lambda x, om: nc.dcnv4_forward(x, om, *hyper),
                     backward=nc.dcnv4_backward, inputs=(x, offset_mask),
                     reference=lambda x, om: reference.dcnv4(x, om, *hyper))


def _center_feature_scale_reference(query, weight, bias, core, value, group):
    """``core (1 - s) + value s``, ``s = sigmoid(query W^T + b)`` repeated over each group's channels."""
    s = 1 / (1 + np.exp(-(query @ weight.T + bias)))
    s = np.repeat(s, core.shape[-1] // group, axis=-1)
    return core * (1 - s) + value * s


@register('center_feature_scale')
def _center_feature_scale(rng):
    query, core, value = (rng.standard_normal((2, 3, 4, 6)) for _ in range(3))
    weight, bias = rng.standard_normal((2, 6)), rng.standard_normal(2)
    return CheckCase(lambda *a: center_feature_scale_forward(*a, group=2),
                     center_feature_scale_backward, (query, weight, bias, core, value),
                     lambda *a: _center_feature_scale_reference(*a, group=2))


# -- involution ----------------------------------------------------------------------------------------
@register('involution')
def _involution(rng):
    """Two groups of 3 channels, 3x3 kernel, stride (2, 1), dilation (1, 2): taps cross the borders."""
    hyper = dict(kernel_size=3, stride=(2, 1), dilation=(1, 2))
    x = rng.standard_normal((2, 6, 5, 6))
    kernel = rng.standard_normal((2, 2 * 9, 3, 6))
    return CheckCase(forward=lambda x, k: nc.involution_forward(x, k, **hyper),
                     backward=nc.involution_backward, inputs=(x, kernel),
                     reference=lambda x, k: reference.involution(x, k, **hyper))


# -- activations (numpyconv/activations.py) --------------------------------------------------------
def _elementwise(op, scale):
    """An activation ``op`` on standard normal input times ``scale`` (its kinks are crossed)."""
    def make(rng):
        reference_loop = getattr(reference, op)
        return CheckCase(getattr(nc, op + '_forward'), getattr(nc, op + '_backward'),
                         (scale * rng.standard_normal((2, 3, 4)),), reference_loop)
    return make


for _op, _scale in (('relu', 1.0), ('gelu', 2.0), ('relu6', 4.0), ('hardsigmoid', 3.0), ('hardswish', 3.0),
                    ('silu', 3.0)):
    register(_op)(_elementwise(_op, _scale))


@register('sigmoid')
def _sigmoid(rng):
    return CheckCase(lambda x: nc.sigmoid_forward(x, 2.5), nc.sigmoid_backward,
                     (rng.standard_normal((3, 5)),), lambda x: reference.sigmoid(x, 2.5))


@register('softmax')
def _softmax(rng):
    return CheckCase(lambda x: nc.softmax_forward(x, 1, 0.7), nc.softmax_backward,
                     (rng.standard_normal((2, 4, 3)),), lambda x: reference.softmax(x, 1, 0.7))


# -- pooling (numpyconv/pooling.py) and upsampling (numpyconv/upsample.py) ------------------------
def _resampling(op, shape, **hyper):
    """``numpyconv.<op>`` with ``hyper`` on a standard normal array of ``shape``."""
    def make(rng):
        forward = getattr(nc, op + '_forward')
        return CheckCase(lambda x: forward(x, **hyper), getattr(nc, op + '_backward'),
                         (rng.standard_normal(shape),), lambda x: getattr(reference, op)(x, **hyper))
    return make


register('avg_pool2d')(_resampling('avg_pool2d', (2, 2, 7, 6), kernel_size=(3, 2),
                                   stride=(2, 2)))
register('avg_pool2d_ceil_mode', op='avg_pool2d')(_resampling(
    'avg_pool2d', (2, 2, 7, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True,
    count_include_pad=False))
register('avg_pool2d_divisor', op='avg_pool2d')(_resampling(
    'avg_pool2d', (1, 2, 6, 7), kernel_size=(2, 3), stride=1, padding=(1, 0),
    divisor_override=4))
register('max_pool2d')(_resampling('max_pool2d', (2, 2, 7, 8), kernel_size=3, stride=2,
                                   padding=1, dilation=(1, 2), ceil_mode=True))
register('adaptive_avg_pool2d')(_resampling('adaptive_avg_pool2d', (2, 2, 7, 5),
                                            output_size=(3, None)))
register('adaptive_max_pool2d')(_resampling('adaptive_max_pool2d', (2, 2, 7, 5),
                                            output_size=(4, 3)))
register('upsample_nearest2d')(_resampling('upsample_nearest2d', (2, 2, 3, 2),
                                           scale_factor=(2, 3)))
register('upsample_nearest2d_scale', op='upsample_nearest2d')(_resampling(
    'upsample_nearest2d', (2, 2, 4, 3), scale_factor=(1.7, 0.8)))
register('upsample_bilinear2d')(_resampling('upsample_bilinear2d', (2, 2, 4, 3),
                                            scale_factor=(1.5, 2.3)))
register('upsample_bilinear2d_aligned', op='upsample_bilinear2d')(_resampling(
    'upsample_bilinear2d', (2, 2, 4, 3), size=(7, 2), align_corners=True))


@register('global_avg_pool2d')
def _global_avg_pool2d(rng):
    return CheckCase(nc.global_avg_pool2d_forward, nc.global_avg_pool2d_backward,
                     (rng.standard_normal((2, 3, 4, 5)),), reference.global_avg_pool2d)


# -- transposed convolution (numpyconv/conv_transpose.py) -------------------------------------------
@register('conv_transpose2d')
def _conv_transpose2d(rng):
    x, w, b = rng.standard_normal((2, 4, 4, 3)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(6)
    hyper = dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 1), groups=2, dilation=(1, 2))
    return CheckCase(lambda x, w, b: nc.conv_transpose2d_forward(x, w, b, **hyper),
                     nc.conv_transpose2d_backward, (x, w, b),
                     lambda x, w, b: reference.conv_transpose2d(x, w, b, **hyper))


# -- dropout (numpyconv/dropout.py): an explicit random mask, an input that is not differentiated --
def _dropout(op, reference, shape, mask_shape, **hyper):
    def make(rng):
        forward = getattr(nc, op + '_forward')
        mask = rng.random(mask_shape) < 0.6
        return CheckCase(lambda x, m: forward(x, mask=m, **hyper), getattr(nc, op + '_backward'),
                         (rng.standard_normal(shape), mask), lambda x, m: reference(x, mask=m, **hyper))
    return make


register('dropout')(_dropout('dropout', reference.dropout, (3, 4), (3, 4), p=0.4))
register('dropout2d')(_dropout('dropout2d', reference.dropout2d, (2, 3, 2, 2), (2, 3, 1, 1), p=0.25))
register('drop_path')(_dropout('drop_path', reference.drop_path, (4, 2, 3), (4, 1, 1), drop_prob=0.3))


# -- multi-scale deformable attention (numpyconv/msdeformattn.py) -----------------------------------
@register('ms_deform_attn')
def _ms_deform_attn(rng):
    """Three levels of different sizes, 2 heads, 3 points, locations crossing every border."""
    shapes = np.array([[4, 5], [2, 3], [1, 2]])
    starts = np.array([0, 20, 26])
    value = rng.standard_normal((2, 28, 2, 3))
    loc = rng.uniform(-0.3, 1.3, (2, 4, 2, 3, 3, 2))
    attn = rng.uniform(0.0, 1.0, (2, 4, 2, 3, 3))
    return CheckCase(nc.ms_deform_attn_forward, nc.ms_deform_attn_backward,
                     (value, shapes, starts, loc, attn), reference.ms_deform_attn)



# == layer cases ====================================================================================
def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@register_layer('Conv2d')
def _conv2d_layer(rng, dtype):
    layer = nc.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, dtype=dtype, rng=rng)
    return layer, _normal(rng, (2, 4, 5, 5), dtype)


@register_layer('DepthwiseConv2d')
def _depthwise_layer(rng, dtype):
    layer = nc.DepthwiseConv2d(3, 3, padding=1, depth_multiplier=2, dtype=dtype, rng=rng)
    return layer, _normal(rng, (2, 3, 5, 4), dtype)


@register_layer('PointwiseConv2d')
def _pointwise_layer(rng, dtype):
    return nc.PointwiseConv2d(3, 4, stride=2, dtype=dtype, rng=rng), _normal(rng, (2, 3, 5, 4), dtype)


@register_layer('SeparableConv2d')
def _separable_layer(rng, dtype):
    return nc.SeparableConv2d(3, 4, 3, padding=1, dtype=dtype, rng=rng), _normal(rng, (2, 3, 5, 5), dtype)


@register_layer('OctaveConv2d')
def _octave_layer(rng, dtype):
    layer = nc.OctaveConv2d(4, 6, 3, padding=1, bias=True, dtype=dtype, rng=rng)
    return layer, (_normal(rng, (2, 2, 6, 6), dtype), _normal(rng, (2, 2, 3, 3), dtype))


@register_layer('OctaveConv2d_first')
def _octave_first_layer(rng, dtype):
    layer = nc.OctaveConv2d(3, 4, 3, alpha_in=0, padding=1, stride=2, dtype=dtype, rng=rng)
    return layer, _normal(rng, (2, 3, 8, 8), dtype)


@register_layer('DynamicConv2d')
def _dynamic_layer(rng, dtype):
    layer = nc.DynamicConv2d(4, 6, 3, padding=1, K=3, temperature=4, dtype=dtype, rng=rng)
    return layer, _normal(rng, (2, 4, 5, 5), dtype)


@register_layer('CondConv2d')
def _condconv_layer(rng, dtype):
    layer = nc.CondConv2d(4, 6, 3, padding=1, groups=2, num_experts=3, dtype=dtype, rng=rng)
    return layer, _normal(rng, (2, 4, 5, 5), dtype)


@register_layer('ODConv2d')
def _odconv_layer(rng, dtype):
    layer = nc.ODConv2d(4, 6, 3, padding=1, kernel_num=3, dtype=dtype, rng=rng)
    layer.update_temperature(2.0)
    return layer, _normal(rng, (3, 4, 5, 5), dtype)


@register_layer('ODConv2d_eval')
def _odconv_eval_layer(rng, dtype):
    return _odconv_layer(rng, dtype)[0].eval(), _normal(rng, (1, 4, 5, 5), dtype)


@register_layer('KWConv2d')
def _kw_layer(rng, dtype):
    manager = nc.WarehouseManager(nonlocal_basis_ratio=0.5, dtype=dtype, rng=rng)
    layers = [manager.reserve(4, 4, 3, padding=1), manager.reserve(4, 4, 3, stride=2, padding=1)]
    manager.store()
    manager.allocate(layers)
    layers[1].update_temperature(0.3)
    return layers[1], _normal(rng, (2, 4, 5, 5), dtype)


@register_layer('DeformConv2d')
def _deform_layer(rng, dtype):
    layer = nc.DeformConv2d(4, 6, 3, padding=1, groups=2, deform_groups=2, dtype=dtype, rng=rng)
    layer.conv_offset.params['weight'][...] = _normal(rng, layer.conv_offset.params['weight'].shape, dtype)
    return layer, _normal(rng, (2, 4, 5, 5), dtype)


@register_layer('ModulatedDeformConv2d')
def _modulated_layer(rng, dtype):
    layer = nc.ModulatedDeformConv2d(4, 6, 3, stride=2, padding=1, dtype=dtype, rng=rng)
    layer.conv_offset.params['weight'][...] = _normal(rng, layer.conv_offset.params['weight'].shape, dtype)
    return layer, _normal(rng, (2, 4, 5, 5), dtype)


@register_layer('DCNv3')
def _dcnv3_layer(rng, dtype):
    layer = nc.DCNv3(8, group=2, center_feature_scale=True, dtype=dtype, rng=rng)
    for linear in (layer.offset, layer.mask):
        linear.params['weight'][...] = _normal(rng, linear.params['weight'].shape, dtype)
    return layer, _normal(rng, (2, 8, 4, 5), dtype)


@register_layer('DCNv4')
def _dcnv4_layer(rng, dtype):
    layer = nc.DCNv4(8, group=2, dw_kernel_size=3, center_feature_scale=True, dtype=dtype, rng=rng)
    layer.offset_mask.params['weight'][...] = _normal(rng, layer.offset_mask.params['weight'].shape, dtype)
    return layer, _normal(rng, (2, 8, 4, 5), dtype)


@register_layer('Involution2d')
def _involution_layer(rng, dtype):
    layer = nc.Involution2d(8, 3, stride=2, reduction_ratio=2, group_channels=4, dtype=dtype, rng=rng)
    return layer, _normal(rng, (2, 8, 6, 6), dtype)


@register_layer('Linear')
def _linear_layer(rng, dtype):
    return nc.Linear(4, 3, dtype=dtype, rng=rng), _normal(rng, (2, 5, 4), dtype)


@register_layer('BatchNorm1d')
def _batch_norm1d_layer(rng, dtype):
    return nc.BatchNorm1d(3, dtype=dtype, rng=rng), _normal(rng, (4, 3, 5), dtype)


@register_layer('BatchNorm2d')
def _batch_norm2d_layer(rng, dtype):
    return nc.BatchNorm2d(3, dtype=dtype, rng=rng), _normal(rng, (2, 3, 4, 5), dtype)


@register_layer('BatchNorm2d_eval')
def _batch_norm2d_eval_layer(rng, dtype):
    return nc.BatchNorm2d(3, dtype=dtype, rng=rng).eval(), _normal(rng, (2, 3, 4, 5), dtype)


@register_layer('LayerNorm')
def _layer_norm_layer(rng, dtype):
    return nc.LayerNorm((3, 4), dtype=dtype, rng=rng), _normal(rng, (2, 5, 3, 4), dtype)


@register_layer('LayerNorm_channels_first')
def _layer_norm_channels_first_layer(rng, dtype):
    return nc.LayerNorm(3, channels_first=True, dtype=dtype, rng=rng), _normal(rng, (2, 3, 4, 5), dtype)


@register_layer('ReLU')
def _relu_layer(rng, dtype):
    return nc.ReLU(dtype=dtype), _normal(rng, (2, 3, 4), dtype)


@register_layer('Sigmoid')
def _sigmoid_layer(rng, dtype):
    return nc.Sigmoid(dtype=dtype), _normal(rng, (2, 3, 4), dtype)


@register_layer('GELU')
def _gelu_layer(rng, dtype):
    return nc.GELU(dtype=dtype), _normal(rng, (2, 3, 4), dtype)


@register_layer('AvgPool2d')
def _avg_pool_layer(rng, dtype):
    return nc.AvgPool2d(2, dtype=dtype), _normal(rng, (2, 3, 5, 4), dtype)


@register_layer('GlobalAvgPool2d')
def _global_avg_pool_layer(rng, dtype):
    return nc.GlobalAvgPool2d(dtype=dtype), _normal(rng, (2, 3, 5, 4), dtype)


@register_layer('Upsample')
def _upsample_layer(rng, dtype):
    return nc.Upsample(2, dtype=dtype), _normal(rng, (2, 3, 2, 3), dtype)


@register_layer('Flatten')
def _flatten_layer(rng, dtype):
    return nc.Flatten(dtype=dtype), _normal(rng, (2, 3, 2, 3), dtype)


@register_layer('Sequential')
def _sequential_layer(rng, dtype):
    layer = nc.Sequential(nc.Conv2d(3, 4, 3, padding=1, dtype=dtype, rng=rng), nc.BatchNorm2d(4, dtype=dtype),
                          nc.ReLU(dtype=dtype), nc.GlobalAvgPool2d(dtype=dtype),
                          nc.Linear(4, 2, dtype=dtype, rng=rng))
    return layer, _normal(rng, (2, 3, 5, 5), dtype)


# -- the newer layers: pooling, transposed convolution, dropout, activations, attention -------------
@register_layer('MaxPool2d')
def _max_pool_layer(rng, dtype):
    return nc.MaxPool2d(3, 2, padding=1, ceil_mode=True), _normal(rng, (2, 3, 6, 5), dtype)


@register_layer('AdaptiveAvgPool2d')
def _adaptive_avg_pool_layer(rng, dtype):
    return nc.AdaptiveAvgPool2d((3, None)), _normal(rng, (2, 3, 7, 5), dtype)


@register_layer('AdaptiveMaxPool2d')
def _adaptive_max_pool_layer(rng, dtype):
    return nc.AdaptiveMaxPool2d(2), _normal(rng, (2, 3, 5, 4), dtype)


@register_layer('ConvTranspose2d')
def _conv_transpose_layer(rng, dtype):
    layer = nc.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dtype=dtype, rng=rng)
    return layer, _normal(rng, (2, 4, 3, 4), dtype)


@register_layer('Dropout')
def _dropout_layer(rng, dtype):
    return nc.Dropout(0.3, rng=rng), _normal(rng, (2, 3, 4), dtype)


@register_layer('Dropout2d')
def _dropout2d_layer(rng, dtype):
    return nc.Dropout2d(0.3, rng=rng), _normal(rng, (2, 3, 4, 4), dtype)


@register_layer('DropPath')
def _drop_path_layer(rng, dtype):
    return nc.DropPath(0.3, rng=rng), _normal(rng, (4, 3, 2, 2), dtype)


def _elementwise_layer(name):
    def make(rng, dtype):
        return getattr(nc, name)(), 3 * _normal(rng, (2, 3, 4), dtype)
    return make


for _name in ('ReLU6', 'SiLU', 'Hardswish', 'Hardsigmoid', 'Identity'):
    register_layer(_name)(_elementwise_layer(_name))


@register_layer('Softmax')
def _softmax_layer(rng, dtype):
    return nc.Softmax(dim=1), _normal(rng, (2, 3, 4), dtype)


@register_layer('MSDeformAttn')
def _ms_deform_attn_layer(rng, dtype):
    """Two levels, 2 heads, 2 points; 2-d reference points and a padding mask."""
    layer = nc.MSDeformAttn(8, n_levels=2, n_heads=2, n_points=2, dtype=dtype, rng=rng)
    shapes, starts = np.array([[3, 4], [2, 2]]), np.array([0, 12])
    query, flat = _normal(rng, (2, 3, 8), dtype), _normal(rng, (2, 16, 8), dtype)
    points = rng.uniform(0.1, 0.9, (2, 3, 2, 2)).astype(dtype)
    mask = rng.random((2, 16)) < 0.2
    return layer, Inputs((query, points, flat, shapes, starts, mask))

