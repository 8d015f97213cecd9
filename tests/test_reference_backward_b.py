"""Plain-loop reference backward passes of the dynamic family, deformable convolution, DCNv3, DCNv4.

Every fast backward (``numpyconv.<op>_backward``) against ``numpyconv.reference.<op>_backward`` in
float64 on small random geometries; every reference backward against finite differences of its own
reference forward (so the references are proven independently of the fast ops); the signatures;
the bilinear border rules (torchvision's for deform_conv2d, the CUDA early exit for DCNv3/DCNv4).
"""
import inspect

import numpy as np
import pytest

import numpyconv as nc
from numpyconv import reference as ref
from numpyconv.reference import deformable as ref_deformable

OPS = ('aggregated_conv2d', 'dynamic_conv2d', 'condconv2d', 'odconv2d', 'kw_caf', 'kw_attention',
       'kw_conv2d', 'deform_conv2d', 'dcnv3', 'dcnv4')


def assert_same_grads(mine, fast, rtol=1e-10):
    """Same tuple: None at the same places, same shapes, relative error below ``rtol``."""
    assert len(mine) == len(fast)
    for k, (a, b) in enumerate(zip(mine, fast)):
        assert (a is None) == (b is None), f"gradient {k}: reference {a is None}, fast {b is None}"
        if a is None:
            continue
        assert a.shape == b.shape, f"gradient {k}: shape {a.shape} != {b.shape}"
        scale = max(np.abs(b).max(initial=0.0), 1e-300)
        assert np.abs(a - b).max(initial=0.0) <= rtol * scale, f"gradient {k}: {np.abs(a - b).max()}"


def check_op(op, args, kwargs, rng):
    """Forward output and every gradient of the fast op against the reference loops."""
    y, cache = getattr(nc, op + '_forward')(*args, **kwargs)
    np.testing.assert_allclose(getattr(ref, op)(*args, **kwargs), y, rtol=1e-10, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    assert_same_grads(getattr(ref, op + '_backward')(dout, *args, **kwargs),
                      getattr(nc, op + '_backward')(dout, cache))


def gradcheck_reference(op, args, kwargs):
    """The reference backward against central differences of the reference forward."""
    nc.gradcheck(lambda *a: getattr(ref, op)(*a, **kwargs),
                 lambda dout, *a: getattr(ref, op + '_backward')(dout, *a, **kwargs), args,
                 returns_cache=False, mode='random', n_directions=4)


# -- signatures ---------------------------------------------------------------------------------
@pytest.mark.parametrize('op', OPS)
def test_signatures_are_the_ops(op):
    forward = inspect.signature(getattr(nc, op + '_forward'))
    assert inspect.signature(getattr(ref, op)) == forward
    dout = inspect.Parameter('dout', inspect.Parameter.POSITIONAL_OR_KEYWORD)
    expected = forward.replace(parameters=[dout, *forward.parameters.values()])
    assert inspect.signature(getattr(ref, op + '_backward')) == expected


# -- DY-CNN, CondConv (shared convolution geometries) -------------------------------------------
CONV_CASES = [  # batch, kernel, stride, padding, dilation, groups
    (0, (3, 3), 1, 0, 1, 1),
    (1, (3, 2), 2, 1, (1, 2), 2),
    (3, (2, 2), 1, 'same', 1, 2),               # asymmetric padding: top 0, bottom 1, left 0, right 1
    (3, (3, 3), (2, 1), (1, 0), 2, 1),
]


def conv_operands(rng, case, bias, experts=3, c_in=4, c_out=6):
    n, kernel, stride, padding, dilation, groups = case
    x = rng.standard_normal((n, c_in, 6, 5))
    weight = rng.standard_normal((experts, c_out, c_in // groups) + kernel)
    b = rng.standard_normal((experts, c_out)) if bias else None
    return x, weight, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize('case', CONV_CASES)
@pytest.mark.parametrize('bias', [True, False])
def test_aggregated_conv2d(case, bias):
    rng = np.random.default_rng(1)
    x, weight, b, hyper = conv_operands(rng, case, bias)
    check_op('aggregated_conv2d', (x, rng.random((x.shape[0], 3)), weight, b), hyper, rng)


@pytest.mark.parametrize('case', CONV_CASES)
@pytest.mark.parametrize('bias', [True, False])
def test_dynamic_conv2d(case, bias):
    rng = np.random.default_rng(2)
    x, weight, b, hyper = conv_operands(rng, case, bias)
    args = (x, weight, b, rng.standard_normal((5, 4, 1, 1)), rng.standard_normal((3, 5, 1, 1)),
            rng.standard_normal(3) if bias else None)
    check_op('dynamic_conv2d', args, dict(hyper, temperature=0.7), rng)


@pytest.mark.parametrize('case', CONV_CASES)
@pytest.mark.parametrize('bias', [True, False])
def test_condconv2d(case, bias):
    rng = np.random.default_rng(3)
    x, weight, b, hyper = conv_operands(rng, case, bias)
    args = (x, weight, b, rng.standard_normal((3, 4)), rng.standard_normal(3) if bias else None)
    check_op('condconv2d', args, hyper, rng)


# -- ODConv ---------------------------------------------------------------------------------------
def odconv_operands(rng, n, k, kernel_num, c_out, groups, skip=(), c_in=4, hidden=5, hw=(5, 6)):
    args = [rng.standard_normal((n, c_in) + hw),
            rng.standard_normal((kernel_num, c_out, c_in // groups, k, k)),
            rng.standard_normal((hidden, c_in, 1, 1)), rng.random(hidden) + 0.5,
            rng.standard_normal(hidden), rng.standard_normal(hidden), rng.random(hidden) + 0.5]
    for head, width in (('channel', c_in), ('filter', c_out), ('spatial', k * k), ('kernel', kernel_num)):
        args += ([None, None] if head in skip else
                 [rng.standard_normal((width, hidden, 1, 1)), rng.standard_normal(width)])
    return args


ODCONV_CASES = [  # batch, training, k, kernel_num, C_out, groups, skipped heads, geometry
    (3, True, 3, 3, 6, 2, (), dict(stride=2, padding=1)),
    (1, False, 3, 3, 6, 2, (), dict(dilation=2, padding=(2, 1))),
    (3, False, 2, 2, 6, 1, (), dict(padding='same')),                  # asymmetric padding
    (0, False, 3, 3, 6, 2, (), dict(padding=1)),
    (0, True, 3, 2, 6, 1, (), dict(padding=1)),
    (3, True, 3, 2, 4, 4, ('filter',), dict(padding=1)),               # depthwise: no filter head
    (3, True, 1, 1, 6, 2, ('spatial', 'kernel'), dict(stride=2)),      # the pw1x path
    (3, False, 3, 1, 6, 1, ('kernel',), dict(stride=(1, 2), padding=1)),
]


@pytest.mark.parametrize('case', ODCONV_CASES)
def test_odconv2d(case):
    n, training, k, kernel_num, c_out, groups, skip, geometry = case
    rng = np.random.default_rng(4)
    args = odconv_operands(rng, n, k, kernel_num, c_out, groups, skip)
    hyper = dict(geometry, groups=groups, temperature=1.7, training=training, momentum=0.3)
    check_op('odconv2d', args, hyper, rng)


# -- KernelWarehouse --------------------------------------------------------------------------------
@pytest.mark.parametrize('rows', [6, 0])
def test_kw_caf(rows):
    rng = np.random.default_rng(5)
    z = rng.standard_normal((rows, 5))
    if rows:
        z[1, 2] = 0.0                                          # sign(0) = 0 in the gradient (eq. 20)
    check_op('kw_caf', (z,), {}, rng)


def kw_attention_operands(rng, n, num_cells, m, basis, hidden=6, c_in=4, num_local=2, num_basis=3,
                          hw=(4, 3)):
    """``(args, temp_bias)`` of a KW attention with ``m`` mixtures of ``num_cells + 1`` planes."""
    planes = num_cells + 1
    rows = m * (num_local + num_basis + 1) if basis else m * planes
    args = (rng.standard_normal((n, c_in) + hw), rng.standard_normal((hidden, c_in)),
            1 + 0.1 * rng.standard_normal(hidden), 0.1 * rng.standard_normal(hidden),
            rng.standard_normal(hidden), rng.random(hidden) + 0.5, rng.standard_normal((rows, hidden)),
            None if basis else rng.standard_normal(rows),
            rng.standard_normal((num_cells - num_local, num_basis)) if basis else None,
            0.1 * rng.standard_normal(m * planes) if basis else None)
    temp_bias = np.zeros(m * planes)
    temp_bias[np.arange(m) * planes + np.arange(m) % planes] = 1.0
    return args, temp_bias


KW_ATTENTION_CASES = [  # batch, training, basis, start_cell_idx, temp_bias
    (3, True, False, 0, True),
    (1, False, True, 1, True),
    (3, True, True, 9, False),                        # start clamped to M - nl, as slicing does
    (0, False, True, 2, True),
]


@pytest.mark.parametrize('case', KW_ATTENTION_CASES)
def test_kw_attention(case):
    n, training, basis, start, use_temp_bias = case
    rng = np.random.default_rng(6)
    args, temp_bias = kw_attention_operands(rng, n, num_cells=5, m=2, basis=basis)
    hyper = dict(num_cells=5, start_cell_idx=start, temperature=0.3, training=training,
                 temp_bias=temp_bias if use_temp_bias else None, momentum=0.2)
    check_op('kw_attention', args, hyper, rng)


KW_CONV_CASES = [  # batch, training, cell shape, kernel, groups, basis, bias, geometry
    (3, True, (7, 2, 1, 1, 1), 3, 2, False, True, dict(stride=2, padding=1)),
    (1, False, (3, 2, 2, 3, 3), 3, 1, False, False, dict(dilation=2, padding=2)),   # whole-kernel cells
    (3, False, (6, 1, 2, 1, 1), (2, 2), 1, True, True, dict(padding='same')),      # asymmetric, basis
    (0, False, (7, 2, 1, 1, 1), 3, 2, False, True, dict(padding=1)),
]


@pytest.mark.parametrize('case', KW_CONV_CASES)
def test_kw_conv2d(case):
    n, training, cells, kernel, groups, basis, bias, geometry = case
    rng = np.random.default_rng(7)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    go, gi, gs = 2, 4 // groups // cells[2], kh * kw // (cells[3] * cells[4])
    attention_args, temp_bias = kw_attention_operands(rng, n, cells[0], go * gi * gs, basis, hw=(5, 6))
    args = (attention_args[0], rng.standard_normal(cells), *attention_args[1:],
            rng.standard_normal(go * cells[1]) if bias else None)
    hyper = dict(geometry, kernel_size=kernel, groups=groups, start_cell_idx=1, temperature=0.4,
                 temp_bias=temp_bias, training=training)
    check_op('kw_conv2d', args, hyper, rng)


# -- deformable convolution ----------------------------------------------------------------------------
DEFORM_CASES = [  # batch, kernel, stride, padding, dilation, groups, offset groups, mask, bias
    (3, (3, 2), (2, 1), 1, (1, 2), 2, 2, True, True),
    (1, (2, 2), 1, 'same', 1, 1, 1, False, True),              # v1, asymmetric padding
    (0, (3, 3), 1, 1, 1, 1, 2, True, False),
    (2, (1, 3), 2, (0, 1), 1, 2, 4, True, False),
]


def out_hw(hw, kernel, stride, padding, dilation):
    y, _ = nc.conv2d_forward(np.zeros((1, 1) + hw), np.zeros((1, 1) + kernel), None, stride, padding,
                             dilation)
    return y.shape[2:]


@pytest.mark.parametrize('case', DEFORM_CASES)
def test_deform_conv2d(case):
    n, kernel, stride, padding, dilation, groups, offset_groups, with_mask, bias = case
    rng = np.random.default_rng(8)
    points = kernel[0] * kernel[1]
    ho, wo = out_hw((5, 4), kernel, stride, padding, dilation)
    args = (rng.standard_normal((n, 4, 5, 4)),
            rng.uniform(-2.5, 2.5, (n, 2 * offset_groups * points, ho, wo)),
            rng.standard_normal((4, 4 // groups) + kernel), rng.standard_normal(4) if bias else None,
            stride, padding, dilation,
            rng.random((n, offset_groups * points, ho, wo)) if with_mask else None)
    check_op('deform_conv2d', args, {}, rng)


# -- DCNv3, DCNv4 ----------------------------------------------------------------------------------------
DCN_CASES = [  # batch, kernel, stride, padding, dilation, group, group_channels, offset_scale, remove_center
    (3, 3, 2, 1, 1, 2, 2, 1.0, False),
    (1, (3, 5), 1, (1, 2), (2, 1), 1, 3, 1.5, True),
    (0, 3, 1, 1, 1, 2, 1, 1.0, True),
    (2, (2, 2), 1, 'same', 1, 2, 2, 0.5, False),               # asymmetric padding
]


def dcn_operands(rng, case, packed):
    n, kernel, stride, padding, dilation, group, group_channels, scale, remove_center = case
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    points = kh * kw - int(remove_center)
    ho, wo = out_hw((5, 4), (kh, kw), stride, padding, dilation)
    x = rng.standard_normal((n, 5, 4, group * group_channels))
    hyper = (kernel, stride, padding, dilation, group, group_channels, scale, remove_center)
    if packed:
        channels = -(-3 * group * points // 8) * 8
        return (x, rng.uniform(-2.5, 2.5, (n, ho, wo, channels))) + hyper
    return (x, rng.uniform(-2.5, 2.5, (n, ho, wo, 2 * group * points)),
            rng.standard_normal((n, ho, wo, group * points))) + hyper


@pytest.mark.parametrize('case', DCN_CASES)
def test_dcnv3(case):
    rng = np.random.default_rng(9)
    check_op('dcnv3', dcn_operands(rng, case, packed=False), {}, rng)


@pytest.mark.parametrize('case', DCN_CASES)
def test_dcnv4(case):
    rng = np.random.default_rng(10)
    check_op('dcnv4', dcn_operands(rng, case, packed=True), {}, rng)


# -- bilinear border rules ------------------------------------------------------------------------------
# Sampling coordinates on integers, at -1, at H (or W), between -1 and 0, and outside the image.
BORDER = (-2.0, -1.5, -1.0, -0.5, 0.0, 1.0, 1.25, 2.0, 3.0, 3.5, 4.0, 4.5, 6.0)   # H = 4, W = 4


def border_offsets(rng, n, ho, wo, pairs):
    """Offsets ``(n, ho, wo, pairs, 2)`` that move a 1x1 kernel point at ``(r, s)`` to border
    coordinates ``(h, w)`` drawn from BORDER (exactly: all values are dyadic)."""
    targets = rng.choice(BORDER, size=(n, ho, wo, pairs, 2))
    base = np.stack(np.meshgrid(np.arange(ho), np.arange(wo), indexing='ij'), axis=-1)  # (ho, wo, 2)
    return targets - base[None, :, :, None, :].astype(float)


def test_deform_conv2d_border_points():
    """torchvision's rule: each corner checked alone, so a coordinate of exactly -1 keeps its slope."""
    rng = np.random.default_rng(11)
    n, c_in, og = 2, 4, 2
    moves = border_offsets(rng, n, 4, 4, og)                                    # (dh, dw) per group
    offset = np.ascontiguousarray(moves.reshape(n, 4, 4, 2 * og).transpose(0, 3, 1, 2))
    args = (rng.standard_normal((n, c_in, 4, 4)), offset, rng.standard_normal((3, c_in, 1, 1)), None,
            1, 0, 1, rng.random((n, og, 4, 4)))
    check_op('deform_conv2d', args, {}, rng)
    img = rng.standard_normal((4, 4))
    assert ref_deformable.bilinear(img, -1.0, 1.25) == 0.0
    slope_h = ref_deformable.bilinear_slopes(img, -1.0, 1.25)[0]                # towards row 0 (eq. 2a)
    assert slope_h == pytest.approx(0.75 * img[0, 1] + 0.25 * img[0, 2])
    assert ref_deformable.bilinear_slopes(img, 4.0, 1.25) == (0.0, 0.0)


@pytest.mark.parametrize('op', ['dcnv3', 'dcnv4'])
def test_dcn_border_points(op):
    """The CUDA early exit: no slope outside -1 < h < H, -1 < w < W, also at exactly -1."""
    rng = np.random.default_rng(12)
    n, group = 2, 2
    moves = border_offsets(rng, n, 4, 4, group)[..., ::-1]                      # (dx, dy) per group
    mask = rng.standard_normal((n, 4, 4, group))
    x = rng.standard_normal((n, 4, 4, 2 * group))
    hyper = (1, 1, 0, 1, group, 2)
    if op == 'dcnv3':
        args = (x, np.ascontiguousarray(moves.reshape(n, 4, 4, 2 * group)), mask) + hyper
    else:
        packed = np.concatenate([moves, mask[..., None]], axis=-1).reshape(n, 4, 4, 3 * group)
        args = (x, np.concatenate([packed, np.zeros((n, 4, 4, 2))], axis=-1)) + hyper
    check_op(op, args, {}, rng)


def test_dcnv3_and_deform_conv2d_differ_at_minus_one():
    """Every point at h = -1, w = 0.25: the same sampling in both layouts, the same value (0) and
    input gradient, but an offset gradient only where each corner is checked alone."""
    rng = np.random.default_rng(13)
    x, dout = rng.standard_normal((1, 4, 4, 1)), rng.standard_normal((1, 4, 4, 1))
    rows, cols = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing='ij')
    moves = np.stack([-1.0 - rows, 0.25 - cols])                                # (dh, dw) (2, 4, 4)
    dx3, doffset3, _ = ref.dcnv3_backward(dout, x, moves[::-1].transpose(1, 2, 0)[None],
                                          np.ones((1, 4, 4, 1)), 1, 1, 0, 1, 1, 1)
    dxt, doffset_t, *_ = ref.deform_conv2d_backward(dout.transpose(0, 3, 1, 2), x.transpose(0, 3, 1, 2),
                                                    moves[None], np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(dx3, 0.0)
    np.testing.assert_array_equal(dxt, 0.0)
    np.testing.assert_array_equal(doffset3, 0.0)
    slope = 0.75 * x[0, 0, 0, 0] + 0.25 * x[0, 0, 1, 0]                         # towards row 0 (eq. 2a)
    np.testing.assert_allclose(doffset_t[0, 0], dout[0, :, :, 0] * slope, rtol=1e-14)


# -- the references proven on their own: gradcheck against their own forward -----------------------
def test_gradcheck_reference_dynamic_family():
    rng = np.random.default_rng(13)
    x, weight, b, hyper = conv_operands(rng, (2, (2, 3), (2, 1), 1, (1, 2), 2), bias=True, experts=2,
                                        c_out=2)
    gradcheck_reference('aggregated_conv2d', (x, rng.random((2, 2)), weight, b), hyper)
    dynamic = (x, weight, b, rng.standard_normal((3, 4, 1, 1)), rng.standard_normal((2, 3, 1, 1)),
               rng.standard_normal(2))
    gradcheck_reference('dynamic_conv2d', dynamic, dict(hyper, temperature=0.7))
    gradcheck_reference('condconv2d', (x, weight, b, rng.standard_normal((2, 4)), rng.standard_normal(2)),
                        hyper)


@pytest.mark.parametrize('training', [True, False])
def test_gradcheck_reference_odconv2d(training):
    rng = np.random.default_rng(14)
    args = odconv_operands(rng, 3, 2, 2, 2, 2, hidden=3, hw=(4, 4))
    hyper = dict(stride=2, padding=1, groups=2, temperature=1.7, training=training)
    gradcheck_reference('odconv2d', tuple(args), hyper)


def test_gradcheck_reference_kernel_warehouse():
    rng = np.random.default_rng(15)
    gradcheck_reference('kw_caf', (rng.standard_normal((4, 5)),), {})
    args, temp_bias = kw_attention_operands(rng, 3, num_cells=5, m=2, basis=True)
    gradcheck_reference('kw_attention', args, dict(num_cells=5, start_cell_idx=1, temperature=0.3,
                                                   temp_bias=temp_bias, training=True))
    attention_args, temp_bias = kw_attention_operands(rng, 2, 3, 2 * 2 * 2, False, hidden=3)
    args = (attention_args[0], rng.standard_normal((3, 1, 1, 2, 2)), *attention_args[1:],
            rng.standard_normal(2))
    gradcheck_reference('kw_conv2d', args, dict(kernel_size=2, padding=1, groups=1, temperature=0.4,
                                                temp_bias=temp_bias, training=False))


def test_gradcheck_reference_deformable():
    rng = np.random.default_rng(16)
    arrays = (rng.standard_normal((1, 2, 4, 4)), rng.uniform(-1.5, 1.5, (1, 16, 3, 3)),
              rng.standard_normal((2, 1, 2, 2)), rng.standard_normal(2), rng.random((1, 8, 3, 3)))
    nc.gradcheck(lambda x, offset, weight, bias, mask: ref.deform_conv2d(x, offset, weight, bias,
                                                                         mask=mask),
                 lambda dout, x, offset, weight, bias, mask: ref.deform_conv2d_backward(
                     dout, x, offset, weight, bias, mask=mask),
                 arrays, returns_cache=False, mode='random', n_directions=4)


def test_gradcheck_reference_dcn():
    rng = np.random.default_rng(17)
    case = (1, 3, 1, 1, 1, 2, 1, 1.5, True)
    gradcheck_reference('dcnv3', dcn_operands(rng, case, packed=False)[:3], dict(zip(
        ('kernel_size', 'stride', 'padding', 'dilation', 'group', 'group_channels', 'offset_scale',
         'remove_center'), case[1:])))
    gradcheck_reference('dcnv4', dcn_operands(rng, case, packed=True)[:2], dict(zip(
        ('kernel_size', 'stride', 'padding', 'dilation', 'group', 'group_channels', 'offset_scale',
         'remove_center'), case[1:])))
