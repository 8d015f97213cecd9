"""Plain-loop reference backward passes (numpyconv.reference) of the building blocks, the conv family,
octave convolution and involution.

* every fast op (reached as ``numpyconv.<op>_forward`` / ``numpyconv.<op>_backward``) against its
  reference forward and backward in float64, relative error below 1e-10, on small geometries with
  stride > 1, dilation, groups, asymmetric padding, 'same' with an even kernel, batch 0, 1 and 3 and
  optional inputs None (a table of cases, then seeded random conv geometries);
* every reference backward against central differences of its reference forward (``gradcheck``), so
  the references stand on their own;
* the reference signatures equal the fast ones, and the reference modules import no fast op.
"""
import ast
import inspect
import pathlib

import numpy as np
import pytest

import numpyconv
from numpyconv import reference

OPS = ('linear', 'relu', 'sigmoid', 'softmax', 'gelu', 'batch_norm', 'layer_norm', 'avg_pool2d',
       'global_avg_pool2d', 'upsample_nearest2d', 'cross_entropy', 'conv2d', 'depthwise_conv2d',
       'pointwise_conv2d', 'separable_conv2d', 'octave_conv2d', 'involution')
RTOL = 1e-10
RNG = np.random.default_rng(20240611)


def normal(*shape):
    return RNG.standard_normal(shape)


def labels(n, classes):
    return RNG.integers(0, classes, size=n)


# -- comparison ----------------------------------------------------------------------------------
def assert_close(fast, ref, what):
    """Same structure (tuples, None in the same places, shapes, dtypes) and, array by array,
    ``max |fast - ref| <= RTOL * max |ref|`` (NaN where the other has NaN)."""
    if isinstance(fast, tuple) or isinstance(ref, tuple):
        assert isinstance(fast, tuple) and isinstance(ref, tuple) and len(fast) == len(ref), what
        for k, (a, b) in enumerate(zip(fast, ref)):
            assert_close(a, b, f"{what}[{k}]")
        return
    assert (fast is None) == (ref is None), f"{what}: {fast!r} against {ref!r}"
    if fast is None:
        return
    fast, ref = np.asarray(fast), np.asarray(ref)
    assert fast.shape == ref.shape and fast.dtype == ref.dtype, (what, fast.shape, ref.shape)
    assert np.array_equal(np.isnan(fast), np.isnan(ref)), what
    finite = ~np.isnan(ref)
    error = np.max(np.abs(fast - ref)[finite], initial=0.0)
    assert error <= RTOL * np.max(np.abs(ref[finite]), initial=0.0), f"{what}: max abs error {error:.3g}"


def random_dout(rng, out):
    """An output gradient shaped like ``out``: an array, a scalar (a loss) or a tuple with None."""
    if isinstance(out, tuple):
        return tuple(None if y is None else random_dout(rng, y) for y in out)
    return float(rng.standard_normal()) if np.ndim(out) == 0 else rng.standard_normal(out.shape)


def check(op, args, kwargs=(), dout=None, seed=0):
    """The fast op against the reference: forward output, then the gradient tuple for ``dout``
    (random by default); neither may modify its inputs."""
    kwargs = dict(kwargs)
    copies = [None if a is None else a.copy() for a in args]
    out, cache = getattr(numpyconv, f'{op}_forward')(*args, **kwargs)
    assert_close(out, getattr(reference, op)(*args, **kwargs), f'{op} forward')
    dout = random_dout(np.random.default_rng(seed), out) if dout is None else dout
    fast = getattr(numpyconv, f'{op}_backward')(dout, cache)
    ref = getattr(reference, f'{op}_backward')(dout, *args, **kwargs)
    assert_close(tuple(fast), ref, f'{op} backward')
    for a, c in zip(args, copies):
        assert (a is None and c is None) or np.array_equal(a, c), f'{op} modified an input'


# -- signatures and imports ------------------------------------------------------------------------
@pytest.mark.parametrize('op', OPS)
def test_reference_has_the_signature_of_the_fast_op(op):
    fast = inspect.signature(getattr(numpyconv, f'{op}_forward'))
    assert inspect.signature(getattr(reference, op)) == fast
    backward = inspect.signature(getattr(reference, f'{op}_backward'))
    dout, *rest = backward.parameters.values()
    assert dout.name == 'dout' and dout.default is inspect.Parameter.empty
    assert dout.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert backward.replace(parameters=rest) == fast


@pytest.mark.parametrize('module', ['blocks', 'conv', 'octave', 'involution'])
def test_reference_module_imports_numpy_and_other_references_only(module):
    """No fast op inside reference/: NumPy, math, sibling reference modules, argument parsing."""
    path = pathlib.Path(reference.__file__).with_name(f'{module}.py')
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= {'math', 'itertools', 'numpy'}, ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            sibling = node.level == 1
            assert sibling or (node.level == 2 and node.module == '_checks'), ast.dump(node)


# -- building blocks -------------------------------------------------------------------------------
RM, RV = np.array([0.3, -0.2, 0.1]), np.array([0.5, 2.0, 1.3])
BLOCK_CASES = {
    'linear': ('linear', (normal(3, 4), normal(5, 4), normal(5)), {}),
    'linear_3d_no_bias': ('linear', (normal(2, 3, 4), normal(2, 4), None), {}),
    'linear_1d': ('linear', (normal(4), normal(3, 4), normal(3)), {}),
    'linear_batch0': ('linear', (normal(0, 4), normal(3, 4), normal(3)), {}),
    'relu_with_zeros': ('relu', (np.where(normal(2, 3, 4) > 0.5, 0.0, normal(2, 3, 4)),), {}),
    'relu_batch0': ('relu', (normal(0, 3),), {}),
    'sigmoid': ('sigmoid', (normal(3, 5),), {}),
    'sigmoid_temperature': ('sigmoid', (normal(2, 2, 3),), dict(temperature=2.5)),
    'softmax': ('softmax', (normal(3, 5),), {}),
    'softmax_axis1_temperature': ('softmax', (normal(2, 4, 3),), dict(axis=1, temperature=0.7)),
    'softmax_axis_minus3': ('softmax', (normal(3, 2, 2),), dict(axis=-3, temperature=3.0)),
    'softmax_batch0': ('softmax', (normal(0, 4),), dict(axis=-1)),
    'gelu': ('gelu', (3 * normal(4, 5),), {}),
    'bn_train_2d': ('batch_norm', (normal(4, 3), normal(3), normal(3), RM, RV), dict(training=True)),
    'bn_train_3d_no_stats': ('batch_norm', (normal(2, 3, 4), normal(3), normal(3), None, None),
                             dict(training=True, eps=1e-3)),
    'bn_train_4d_batch3': ('batch_norm', (normal(3, 3, 2, 2), normal(3), normal(3), RM, RV),
                           dict(training=True, momentum=0.3)),
    'bn_train_4d_batch1': ('batch_norm', (normal(1, 3, 2, 3), normal(3), None, RM, RV),
                           dict(training=True)),
    'bn_train_no_affine': ('batch_norm', (normal(3, 3, 2, 2), None, None, None, None),
                           dict(training=True)),
    'bn_train_batch0': ('batch_norm', (normal(0, 3, 2, 2), normal(3), normal(3), RM, RV),
                        dict(training=True)),
    'bn_eval_4d': ('batch_norm', (normal(3, 3, 2, 3), normal(3), normal(3), RM, RV), dict(training=False)),
    'bn_eval_no_affine': ('batch_norm', (normal(3, 3, 2), None, None, RM, RV),
                          dict(training=False, eps=1e-3)),
    'bn_eval_batch0': ('batch_norm', (normal(0, 3), normal(3), normal(3), RM, RV), dict(training=False)),
    'layer_norm': ('layer_norm', (normal(4, 5), normal(5), normal(5)), {}),
    'layer_norm_3d_no_bias': ('layer_norm', (normal(2, 3, 4), normal(4), None), dict(eps=1e-6)),
    'layer_norm_1d_no_weight': ('layer_norm', (normal(6), None, normal(6)), {}),
    'layer_norm_batch0': ('layer_norm', (normal(0, 3), normal(3), normal(3)), {}),
    'avg_pool2d': ('avg_pool2d', (normal(3, 2, 4, 6),), dict(kernel_size=2)),
    'avg_pool2d_overlap': ('avg_pool2d', (normal(1, 2, 8, 5),), dict(kernel_size=(3, 2), stride=(2, 1))),
    'avg_pool2d_gaps': ('avg_pool2d', (normal(1, 1, 7, 6),), dict(kernel_size=2, stride=3)),
    'avg_pool2d_batch0': ('avg_pool2d', (normal(0, 2, 4, 4),), dict(kernel_size=2)),
    'global_avg_pool2d': ('global_avg_pool2d', (normal(3, 3, 4, 5),), {}),
    'global_avg_pool2d_1x1': ('global_avg_pool2d', (normal(1, 2, 1, 1),), {}),
    'global_avg_pool2d_batch0': ('global_avg_pool2d', (normal(0, 2, 3, 3),), {}),
    'upsample': ('upsample_nearest2d', (normal(3, 2, 3, 2),), {}),
    'upsample_pair': ('upsample_nearest2d', (normal(1, 2, 2, 3),), dict(scale_factor=(3, 2))),
    'upsample_float': ('upsample_nearest2d', (normal(1, 1, 2, 2),), dict(scale_factor=2.0)),
    'upsample_batch0': ('upsample_nearest2d', (normal(0, 1, 2, 2),), dict(scale_factor=3)),
    'cross_entropy': ('cross_entropy', (normal(5, 4), labels(5, 4)), {}),
    'cross_entropy_batch1': ('cross_entropy', (normal(1, 3), labels(1, 3)), {}),
    'cross_entropy_batch0': ('cross_entropy', (normal(0, 4), labels(0, 4)), {}),
}


@pytest.mark.parametrize('name', BLOCK_CASES)
def test_block_backward_matches_reference(name):
    check(*BLOCK_CASES[name])


# -- conv family -----------------------------------------------------------------------------------
CONV_CASES = {
    'conv2d_stride_groups_pad_pair': (
        'conv2d', (normal(3, 4, 7, 6), normal(6, 2, 3, 2), normal(6)),
        dict(stride=2, padding=(1, 2), dilation=(1, 2), groups=2)),
    'conv2d_same_even_kernel': (
        'conv2d', (normal(1, 3, 5, 6), normal(4, 3, 2, 4), None), dict(padding='same', dilation=(2, 1))),
    'conv2d_same_even_kernel_groups3': (
        'conv2d', (normal(3, 6, 4, 5), normal(3, 2, 4, 2), normal(3)), dict(padding='same', groups=3)),
    'conv2d_valid_batch0': (
        'conv2d', (normal(0, 2, 5, 5), normal(3, 2, 3, 3), normal(3)), dict(stride=(1, 2), padding='valid')),
    'conv2d_padding_wider_than_kernel': (
        'conv2d', (normal(1, 2, 3, 4), normal(2, 2, 2, 2), normal(2)), dict(padding=(3, 1), stride=(3, 2))),
    'conv2d_per_sample': (
        'conv2d', (normal(3, 4, 5, 5), normal(3, 6, 2, 3, 3), normal(3, 6)),
        dict(stride=2, padding=1, groups=2)),
    'conv2d_per_sample_no_bias_batch1': (
        'conv2d', (normal(1, 3, 6, 5), normal(1, 2, 3, 2, 3), None), dict(padding=(0, 2), dilation=2)),
    'conv2d_per_sample_batch0': (
        'conv2d', (normal(0, 2, 4, 4), normal(0, 2, 2, 3, 3), normal(0, 2)), dict(padding=1)),
    'conv2d_depthwise_groups': (
        'conv2d', (normal(3, 3, 6, 5), normal(6, 1, 3, 3), normal(6)),
        dict(stride=2, padding=(0, 1), groups=3)),
    'conv2d_per_sample_depthwise': (
        'conv2d', (normal(2, 3, 5, 5), normal(2, 3, 1, 3, 3), normal(2, 3)), dict(padding='same', groups=3)),
    'depthwise': (
        'depthwise_conv2d', (normal(3, 2, 6, 5), normal(4, 1, 3, 2), normal(4)),
        dict(stride=2, padding=(1, 0), dilation=(1, 2))),
    'depthwise_same_even_kernel_batch1': (
        'depthwise_conv2d', (normal(1, 3, 5, 5), normal(9, 1, 2, 2), None), dict(padding='same')),
    'depthwise_batch0': ('depthwise_conv2d', (normal(0, 2, 4, 4), normal(2, 1, 3, 3), normal(2)), {}),
    'pointwise_stride2': ('pointwise_conv2d', (normal(3, 3, 5, 4), normal(4, 3, 1, 1), normal(4)),
                          dict(stride=2)),
    'pointwise_stride_pair_no_bias': ('pointwise_conv2d', (normal(1, 2, 4, 7), normal(3, 2, 1, 1), None),
                                      dict(stride=(1, 3))),
    'pointwise_batch0': ('pointwise_conv2d', (normal(0, 2, 3, 3), normal(2, 2, 1, 1), normal(2)), {}),
    'separable_same_dilated': (
        'separable_conv2d',
        (normal(3, 3, 6, 6), normal(6, 1, 3, 3), normal(4, 6, 1, 1), normal(6), normal(4)),
        dict(padding='same', dilation=2)),
    'separable_stride_pad_pair': (
        'separable_conv2d', (normal(1, 2, 7, 6), normal(2, 1, 2, 3), normal(3, 2, 1, 1), None, normal(3)),
        dict(stride=2, padding=(1, 0))),
    'separable_batch0_no_bias': (
        'separable_conv2d', (normal(0, 2, 5, 5), normal(4, 1, 3, 3), normal(2, 4, 1, 1), None, None),
        dict(stride=(2, 1))),
}


@pytest.mark.parametrize('name', CONV_CASES)
def test_conv_backward_matches_reference(name):
    check(*CONV_CASES[name])


def random_conv_case(rng):
    """A small conv2d geometry: batch 0, 1 or 3, groups, stride, dilation, an int, a pair, 'same' or
    'valid' padding, shared or per-sample weight, bias or None; output at least 1x1."""
    n, groups = int(rng.choice([0, 1, 3])), int(rng.integers(1, 4))
    c_g, o_g = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    kernel, stride, dilation = rng.integers(1, 4, 2), rng.integers(1, 4, 2), rng.integers(1, 3, 2)
    kind = str(rng.choice(['int', 'pair', 'same', 'valid']))
    if kind == 'same':
        stride[:] = 1
    pad_hw = rng.integers(0, 3, 2)
    padding = {'int': int(pad_hw[0]), 'pair': (int(pad_hw[0]), int(pad_hw[1])), 'same': 'same',
               'valid': 'valid'}[kind]
    total_pad = {'int': 2 * pad_hw[[0, 0]], 'pair': 2 * pad_hw, 'same': dilation * (kernel - 1),
                 'valid': 0}[kind]
    span = dilation * (kernel - 1) + 1
    h, w = np.maximum(span - total_pad, 1) + rng.integers(0, 4, 2)
    per_sample = bool(rng.integers(0, 2))
    lead = (n,) if per_sample else ()
    x = rng.standard_normal((n, groups * c_g, h, w))
    weight = rng.standard_normal(lead + (groups * o_g, c_g) + tuple(kernel))
    bias = rng.standard_normal(lead + (groups * o_g,)) if rng.integers(0, 2) else None
    hyper = dict(stride=tuple(int(s) for s in stride), padding=padding,
                 dilation=tuple(int(d) for d in dilation), groups=groups)
    return (x, weight, bias), hyper


@pytest.mark.parametrize('seed', range(24))
def test_conv2d_backward_matches_reference_on_random_geometry(seed):
    args, hyper = random_conv_case(np.random.default_rng(seed))
    check('conv2d', args, hyper, seed=seed)


def test_conv2d_winograd_backward_matches_reference():
    """The Winograd F(2x2, 3x3) path (forced on small channels) and its backward."""
    args = (normal(2, 3, 7, 6), normal(4, 3, 3, 3), normal(4))
    with numpyconv.winograd_mode('always'):
        check('conv2d', args, dict(padding=(1, 2)))


@pytest.mark.parametrize('stride', [1, 2])
def test_conv2d_row_bands_backward_matches_reference(set_budget, stride):
    """Bands of one or two output rows per column block (a tiny column budget): their gradients add."""
    set_budget(2000)
    check('conv2d', (normal(2, 2, 7, 6), normal(3, 2, 3, 3), normal(3)), dict(stride=stride, padding=(1, 2)))


# -- octave ----------------------------------------------------------------------------------------
def octave_weights(c_h, c_l, o_h, o_l, k=(3, 3), groups=(1, 1, 1, 1), absent=()):
    shapes = dict(h2h=(o_h, c_h), h2l=(o_l, c_h), l2h=(o_h, c_l), l2l=(o_l, c_l))
    return tuple(None if name in absent else normal(o, c // g, *k)
                 for (name, (o, c)), g in zip(shapes.items(), groups))


OCTAVE_CASES = {
    'stride1': ((normal(3, 4, 6, 6), normal(3, 2, 3, 3)) + octave_weights(4, 2, 2, 4), dict(padding=1), None),
    'stride2_dilated_groups': ((normal(1, 4, 8, 8), normal(1, 2, 4, 4))
                               + octave_weights(4, 2, 4, 2, groups=2 * (2,) + (1, 2)),
                               dict(stride=2, padding=2, dilation=2, groups=(2, 2, 1, 2)), None),
    'stride2_odd_pooled_size': ((normal(1, 2, 6, 6), normal(1, 2, 3, 3)) + octave_weights(2, 2, 2, 2),
                                dict(stride=(2, 2), padding=1), None),
    'first_layer_no_x_l': ((normal(3, 3, 4, 6), None) + octave_weights(3, 2, 2, 2), dict(padding=1), None),
    'last_layer_no_y_l': ((normal(1, 2, 4, 4), normal(1, 2, 2, 2))
                          + octave_weights(2, 2, 3, 1, absent=('h2l', 'l2l')), dict(padding=1), None),
    'kernel_3x1_pad_pair': ((normal(1, 2, 4, 6), normal(1, 2, 2, 3)) + octave_weights(2, 2, 2, 2, k=(3, 1)),
                            dict(padding=(1, 0)), None),
    'dy_l_none': ((normal(1, 2, 4, 4), normal(1, 2, 2, 2)) + octave_weights(2, 2, 2, 2), dict(padding=1),
                  'h only'),
    'batch0': ((normal(0, 2, 4, 4), normal(0, 2, 2, 2)) + octave_weights(2, 2, 2, 2), dict(padding=1), None),
}


@pytest.mark.parametrize('name', OCTAVE_CASES)
def test_octave_backward_matches_reference(name):
    args, hyper, only = OCTAVE_CASES[name]
    dout = None
    if only:
        (y_h, _), _ = numpyconv.octave_conv2d_forward(*args, **hyper)
        dout = (normal(*y_h.shape), None)
    check('octave_conv2d', args, hyper, dout=dout)


# -- involution ------------------------------------------------------------------------------------
def involution_args(n, channels, groups, kernel_size, stride=1, dilation=1, hw=(5, 6)):
    (kh, kw), (sh, sw), (dh, dw) = (np.broadcast_to(v, 2) for v in (kernel_size, stride, dilation))
    ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    ho = (hw[0] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (hw[1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return ((normal(n, channels, *hw), normal(n, groups * kh * kw, ho, wo)),
            dict(kernel_size=kernel_size, stride=stride, dilation=dilation))


INVOLUTION_CASES = {
    'stride_dilation_groups': involution_args(3, 6, 2, 3, stride=(2, 1), dilation=(1, 2)),
    'even_kernel_short_padding': involution_args(1, 2, 1, (3, 2)),
    'stride2_dilation2_depthwise': involution_args(1, 4, 4, 3, stride=2, dilation=2, hw=(6, 7)),
    'batch0': involution_args(0, 4, 2, 3),
}


@pytest.mark.parametrize('name', INVOLUTION_CASES)
def test_involution_backward_matches_reference(name):
    check('involution', *INVOLUTION_CASES[name])


# -- the references on their own: finite differences of the reference forward --------------------
GRADCHECK_CASES = {
    'linear': ('linear', (normal(2, 3), normal(2, 3), normal(2)), {}),
    'relu': ('relu', (np.array([[0.7, -0.4, 1.3], [-1.1, 0.2, -0.6]]),), {}),
    'sigmoid': ('sigmoid', (normal(2, 3),), dict(temperature=1.7)),
    'softmax': ('softmax', (normal(3, 2),), dict(axis=0, temperature=0.5)),
    'gelu': ('gelu', (normal(2, 3),), {}),
    'batch_norm_train': ('batch_norm', (normal(3, 2, 2), normal(2), normal(2), RM[:2], RV[:2]),
                         dict(training=True)),
    'batch_norm_eval': ('batch_norm', (normal(3, 2, 2), normal(2), normal(2), RM[:2], RV[:2]),
                        dict(training=False)),
    'layer_norm': ('layer_norm', (normal(2, 4), normal(4), normal(4)), {}),
    'avg_pool2d': ('avg_pool2d', (normal(1, 1, 5, 4),), dict(kernel_size=(3, 2), stride=(2, 1))),
    'global_avg_pool2d': ('global_avg_pool2d', (normal(1, 2, 2, 3),), {}),
    'upsample_nearest2d': ('upsample_nearest2d', (normal(1, 1, 2, 2),), dict(scale_factor=(2, 3))),
    'cross_entropy': ('cross_entropy', (normal(3, 4), labels(3, 4)), {}),
    'conv2d': ('conv2d', (normal(2, 2, 4, 5), normal(2, 1, 2, 3), normal(2)),
               dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    'conv2d_per_sample': ('conv2d', (normal(2, 1, 3, 3), normal(2, 2, 1, 2, 2), normal(2, 2)),
                          dict(padding='same')),
    'depthwise_conv2d': ('depthwise_conv2d', (normal(1, 2, 4, 4), normal(4, 1, 2, 2), normal(4)),
                         dict(stride=2, padding=(1, 0))),
    'pointwise_conv2d': ('pointwise_conv2d', (normal(1, 2, 3, 4), normal(3, 2, 1, 1), normal(3)),
                         dict(stride=(2, 1))),
    'separable_conv2d': ('separable_conv2d', (normal(1, 2, 4, 4), normal(2, 1, 3, 3), normal(2, 2, 1, 1),
                                              normal(2), normal(2)), dict(padding=1)),
    'octave_stride1': ('octave_conv2d', (normal(1, 2, 4, 4), normal(1, 1, 2, 2))
                       + octave_weights(2, 1, 1, 1), dict(padding=1)),
    'octave_stride2': ('octave_conv2d', (normal(1, 1, 4, 4), normal(1, 1, 2, 2))
                       + octave_weights(1, 1, 1, 1, k=(1, 1)), dict(stride=2)),
    'involution': ('involution',) + involution_args(1, 2, 1, 3, stride=2, dilation=(1, 2), hw=(4, 5)),
}


@pytest.mark.parametrize('name', GRADCHECK_CASES)
def test_reference_backward_gradcheck_against_reference_forward(name):
    op, args, hyper = GRADCHECK_CASES[name]
    forward, backward = getattr(reference, op), getattr(reference, f'{op}_backward')
    numpyconv.gradcheck(lambda *a: forward(*a, **hyper), lambda d, *a: backward(d, *a, **hyper), args,
                        mode='full', returns_cache=False)
