"""Self-test registry behind ``numpyconv check``.

Each op registers a small random case::

    from .check import CheckCase, register

    @register('conv2d')
    def _conv2d_case(rng):                       # rng: numpy.random.Generator
        x, w = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((6, 2, 3, 2))
        return CheckCase(forward=lambda x, w: conv2d_forward(x, w, groups=2),
                         backward=conv2d_backward,
                         inputs=(x, w),
                         reference=lambda x, w: reference.conv2d(x, w, groups=2))

``forward(*inputs) -> (out, cache)``, ``backward(dout, cache) -> grads``, ``reference(*inputs) -> out``
(the plain-loop definition). ``numpyconv check`` runs every case in float64: the forward error
against the reference and the backward error against central finite differences (``gradcheck``).
"""
from collections import namedtuple

import numpy as np

CheckCase = namedtuple('CheckCase', 'forward backward inputs reference')
_REGISTRY = {}


def register(name):
    """Decorator: register ``make_case(rng) -> CheckCase`` under ``name``."""
    def decorate(make_case):
        _REGISTRY[name] = make_case
        return make_case
    return decorate


def registered():
    """``name -> make_case`` for every registered op.

    Each technique module registers its cases when imported; ``import numpyconv`` imports them all.
    """
    return dict(_REGISTRY)


def _max_rel_error(out, ref):
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    err = 0.0
    for a, b in zip(outs, refs):
        if a is None or b is None or a.size == 0:
            continue
        err = max(err, float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b))))))
    return err


def run_case(name, make_case, seed=0, tol=1e-8):
    """Run one registered case; returns a dict row for the table."""
    from .gradcheck import gradcheck
    case = make_case(np.random.default_rng(seed))
    out, _ = case.forward(*case.inputs)
    forward_error = _max_rel_error(out, case.reference(*case.inputs))
    report = gradcheck(case.forward, case.backward, case.inputs, raise_exception=False)
    backward_error = max((r.max_rel_error for r in report.results), default=0.0)
    ok = forward_error < tol and report.ok
    return dict(op=name, forward_error=forward_error, backward_error=backward_error, ok=ok)


def run_all(names=None, seed=0, stream=None):
    """Run the registered cases (all, or ``names``); print a table; return the rows."""
    import sys
    stream = stream or sys.stdout
    cases = registered()
    names = names or sorted(cases)
    rows = []
    stream.write(f"{'op':<28}{'forward err vs reference':>26}{'backward err vs FD':>22}  result\n")
    for name in names:
        if name not in cases:
            raise ValueError(f"unknown op {name!r}; registered: {sorted(cases)}")
        row = run_case(name, cases[name], seed)
        rows.append(row)
        stream.write(f"{name:<28}{row['forward_error']:>26.2e}{row['backward_error']:>22.2e}  "
                     f"{'pass' if row['ok'] else 'FAIL'}\n")
        stream.flush()
    return rows


# -- activations, pooling, upsampling, transposed convolution, dropout ----------------------------
# The ops and their references are imported when a case is made: importing numpyconv imports no
# reference module. 'relu' ... 'upsample_nearest2d' cover the ops moved out of numpyconv.blocks. (The
# package numpyconv.reference binds the name ``dropout`` to the function: its module is reached as
# numpyconv.reference.dropout in from-imports.)
def _elementwise_case(op, scale=1.0):
    """A check case of the activation ``op`` on standard normal input times ``scale``."""
    def make(rng):
        from . import activations
        from .reference import activations as ref_activations, blocks as ref_blocks
        reference = getattr(ref_activations, op, None) or getattr(ref_blocks, op)
        return CheckCase(getattr(activations, op + '_forward'), getattr(activations, op + '_backward'),
                         (scale * rng.standard_normal((2, 3, 4)),), reference)
    return make


for _op, _scale in (('relu', 1.0), ('gelu', 2.0), ('relu6', 4.0), ('hardsigmoid', 3.0), ('hardswish', 3.0),
                    ('silu', 3.0)):
    register(_op)(_elementwise_case(_op, _scale))


@register('sigmoid')
def _sigmoid_case(rng):
    from .activations import sigmoid_backward, sigmoid_forward
    from .reference import blocks as ref
    return CheckCase(lambda x: sigmoid_forward(x, 2.5), sigmoid_backward, (rng.standard_normal((3, 5)),),
                     lambda x: ref.sigmoid(x, 2.5))


@register('softmax')
def _softmax_case(rng):
    from .activations import softmax_backward, softmax_forward
    from .reference import blocks as ref
    return CheckCase(lambda x: softmax_forward(x, 1, 0.7), softmax_backward,
                     (rng.standard_normal((2, 4, 3)),), lambda x: ref.softmax(x, 1, 0.7))


def _pool_case(op, shape, **hyper):
    """A check case of ``numpyconv.pooling.<op>`` with ``hyper`` on a standard normal ``shape``."""
    def make(rng):
        from . import pooling
        from .reference import pooling as ref
        forward, backward = getattr(pooling, op + '_forward'), getattr(pooling, op + '_backward')
        return CheckCase(lambda x: forward(x, **hyper), backward, (rng.standard_normal(shape),),
                         lambda x: getattr(ref, op)(x, **hyper))
    return make


register('avg_pool2d')(_pool_case('avg_pool2d', (2, 2, 7, 6), kernel_size=(3, 2), stride=(2, 2)))
register('avg_pool2d_ceil_mode')(_pool_case('avg_pool2d', (2, 2, 7, 6), kernel_size=3, stride=2, padding=1,
                                            ceil_mode=True, count_include_pad=False))
register('avg_pool2d_divisor')(_pool_case('avg_pool2d', (1, 2, 6, 7), kernel_size=(2, 3), stride=1,
                                          padding=(1, 0), divisor_override=4))
register('max_pool2d')(_pool_case('max_pool2d', (2, 2, 7, 8), kernel_size=3, stride=2, padding=1,
                                  dilation=(1, 2), ceil_mode=True))
register('adaptive_avg_pool2d')(_pool_case('adaptive_avg_pool2d', (2, 2, 7, 5), output_size=(3, None)))
register('adaptive_max_pool2d')(_pool_case('adaptive_max_pool2d', (2, 2, 7, 5), output_size=(4, 3)))


@register('global_avg_pool2d')
def _global_avg_pool2d_case(rng):
    from .pooling import global_avg_pool2d_backward, global_avg_pool2d_forward
    from .reference import blocks as ref
    return CheckCase(global_avg_pool2d_forward, global_avg_pool2d_backward,
                     (rng.standard_normal((2, 3, 4, 5)),), ref.global_avg_pool2d)


def _upsample_case(op, shape, **hyper):
    """A check case of ``numpyconv.upsample.<op>`` with ``hyper``."""
    def make(rng):
        from . import upsample
        from .reference import upsample as ref
        forward, backward = getattr(upsample, op + '_forward'), getattr(upsample, op + '_backward')
        return CheckCase(lambda x: forward(x, **hyper), backward, (rng.standard_normal(shape),),
                         lambda x: getattr(ref, op)(x, **hyper))
    return make


register('upsample_nearest2d')(_upsample_case('upsample_nearest2d', (2, 2, 3, 2), scale_factor=(2, 3)))
register('upsample_nearest2d_scale')(_upsample_case('upsample_nearest2d', (2, 2, 4, 3),
                                                    scale_factor=(1.7, 0.8)))
register('upsample_bilinear2d')(_upsample_case('upsample_bilinear2d', (2, 2, 4, 3), scale_factor=(1.5, 2.3)))
register('upsample_bilinear2d_aligned')(_upsample_case('upsample_bilinear2d', (2, 2, 4, 3), size=(7, 2),
                                                      align_corners=True))


@register('conv_transpose2d')
def _conv_transpose2d_case(rng):
    from .conv_transpose import conv_transpose2d_backward, conv_transpose2d_forward
    from .reference import conv_transpose as ref
    x, w, b = rng.standard_normal((2, 4, 4, 3)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(6)
    hyper = dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 1), groups=2, dilation=(1, 2))
    return CheckCase(lambda x, w, b: conv_transpose2d_forward(x, w, b, **hyper), conv_transpose2d_backward,
                     (x, w, b), lambda x, w, b: ref.conv_transpose2d(x, w, b, **hyper))


def _dropout_case(op, shape, mask_shape, **hyper):
    """A check case of ``numpyconv.dropout.<op>`` with an explicit random mask (an input, not checked)."""
    def make(rng):
        from . import dropout
        from .reference.dropout import drop_path, dropout as reference_dropout, dropout2d
        forward, backward = getattr(dropout, op + '_forward'), getattr(dropout, op + '_backward')
        mask = rng.random(mask_shape) < 0.6
        reference = {'dropout': reference_dropout, 'dropout2d': dropout2d, 'drop_path': drop_path}[op]
        return CheckCase(lambda x, m: forward(x, mask=m, **hyper), backward,
                         (rng.standard_normal(shape), mask), lambda x, m: reference(x, mask=m, **hyper))
    return make


register('dropout')(_dropout_case('dropout', (3, 4), (3, 4), p=0.4))
register('dropout2d')(_dropout_case('dropout2d', (2, 3, 2, 2), (2, 3, 1, 1), p=0.25))
register('drop_path')(_dropout_case('drop_path', (4, 2, 3), (4, 1, 1), drop_prob=0.3))
