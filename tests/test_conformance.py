"""numpyconv.testing: numpyconv's own ops conform; planted bugs of every kind are found, shrunk to a
few pixels and reproduced by a script that needs NumPy and numpyconv only; strategies; torch clients."""
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import numpyconv
from numpyconv.testing import (OPS, ConformanceError, available_ops, case_at, check_against, make_settings,
                               own, strategies)
from numpyconv.testing.arrays import StableRandom
from numpyconv.testing.reproducer import array_source

ROOT = Path(__file__).resolve().parents[1]
PLANNED = ('conv2d', 'depthwise_conv2d', 'pointwise_conv2d', 'separable_conv2d', 'octave_conv2d',
           'deform_conv2d', 'dcnv3', 'dcnv4', 'involution', 'max_pool2d', 'avg_pool2d', 'adaptive_avg_pool2d',
           'adaptive_max_pool2d', 'conv_transpose2d', 'ms_deform_attn')
PRESENT = [op for op in PLANNED if op in available_ops()]


def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return numpyconv.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)[0]


def conv_backward(dout, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    _, cache = numpyconv.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)
    return numpyconv.conv2d_backward(dout, cache)


def deform(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    return numpyconv.deform_conv2d_forward(x, offset, weight, bias, stride, padding, dilation, mask)[0]


def deform_backward(dout, x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    _, cache = numpyconv.deform_conv2d_forward(x, offset, weight, bias, stride, padding, dilation, mask)
    return numpyconv.deform_conv2d_backward(dout, cache)


# -- planted bugs: module-level, so that the reproducers import them by name ---------------------------
def conv_padding_off_by_one(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Pads one row too many at the top (and one too few at the bottom) whenever there is padding."""
    if padding not in (0, (0, 0), 'valid'):
        x = np.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]
    return conv(x, weight, bias, stride, padding, dilation, groups)


def conv_wrong_groups(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Output channel o reads input group o % groups instead of o // (C_out / groups)."""
    c_g = x.shape[1] // groups
    outs = []
    for o in range(weight.shape[0]):
        g = o % groups
        b = None if bias is None else bias[o:o + 1]
        outs.append(conv(x[:, g * c_g:(g + 1) * c_g], weight[o:o + 1], b, stride, padding, dilation))
    return np.concatenate(outs, axis=1)


def conv_no_bias_grad(dout, *args, **kwargs):
    dx, dw, _ = conv_backward(dout, *args, **kwargs)
    return dx, dw, None


def conv_mutating(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Correct output, then clamps its input in place (a reused scratch buffer)."""
    y = conv(x, weight, bias, stride, padding, dilation, groups)
    np.maximum(x, 0, out=x)
    return y


def conv_float64(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Always returns float64 (accumulates in double and forgets to cast back)."""
    return conv(x, weight, bias, stride, padding, dilation, groups).astype(np.float64)


def conv_strided_shape(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Drops the last output column when the column stride is above 1 (floor vs ceil)."""
    y = conv(x, weight, bias, stride, padding, dilation, groups)
    sw = stride if isinstance(stride, int) else stride[1]
    return y[..., :-1] if sw > 1 else y


def _swap_pairs(offset):
    n, c, h, w = offset.shape
    return np.ascontiguousarray(offset.reshape(n, c // 2, 2, h, w)[:, :, ::-1].reshape(n, c, h, w))


def deform_swapped(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Reads the offset pairs as (dx, dy) instead of torchvision's (dy, dx)."""
    return deform(x, _swap_pairs(offset), weight, bias, stride, padding, dilation, mask)


def deform_swapped_backward(dout, x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    dx, doff, dw, db, dm = deform_backward(dout, x, _swap_pairs(offset), weight, bias, stride, padding,
                                           dilation, mask)
    return dx, _swap_pairs(doff), dw, db, dm


def deform_no_mask_grad(dout, *args, **kwargs):
    """DCNv2 backward that returns zeros for the mask gradient."""
    dx, doff, dw, db, dm = deform_backward(dout, *args, **kwargs)
    return dx, doff, dw, db, None if dm is None else np.zeros_like(dm)


def conv_channel_tail(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Vectorised by 16 input channels: the tail past the last full vector of 16 is dropped."""
    keep = x.shape[1] // groups // 16 * 16
    if keep == 0:
        return conv(x, weight, bias, stride, padding, dilation, groups)
    c_g = x.shape[1] // groups
    mask = (np.arange(c_g) < keep).astype(x.dtype)
    return conv(x, weight * mask[:, None, None], bias, stride, padding, dilation, groups)


def conv_row_tiles(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Tiles output rows by 32 pixels and leaves the last partial tile of a longer row unwritten."""
    out = conv(x, weight, bias, stride, padding, dilation, groups)
    if out.shape[3] > 32:
        out[..., 32:] = 0
    return out


def deform_batch_tiles(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Tiles the batch by 32 samples but indexes the offsets from the start in every tile."""
    outs = []
    for s in range(0, x.shape[0], 32):
        k = min(32, x.shape[0] - s)
        outs.append(deform(x[s:s + k], offset[:k], weight, bias, stride, padding, dilation,
                           None if mask is None else mask[s:s + k]))
    return np.concatenate(outs) if outs else deform(x, offset, weight, bias, stride, padding, dilation, mask)


def deform_no_dilation(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """A port that only implements dilation 1."""
    if dilation not in (1, (1, 1)):
        raise NotImplementedError(f"dilation {dilation} is not supported")
    return deform(x, offset, weight, bias, stride, padding, dilation, mask)


# -- numpyconv's own ops conform -------------------------------------------------------------------------
@pytest.mark.parametrize('dtype', [np.float64, np.float32])
@pytest.mark.parametrize('op', PLANNED)
def test_own_ops_conform(op, dtype):
    if op not in available_ops():
        pytest.skip(f"this numpyconv has no {op} yet")
    report = check_against(op, own.forward(op), own.backward(op), cases=len(OPS[op].edge_cases) + 40,
                           dtype=dtype, raise_exception=True)
    assert report.ok and report.cases == len(OPS[op].edge_cases) + 40
    assert report.edge_cases == len(OPS[op].edge_cases)
    assert 'PASSED' in str(report)


@pytest.mark.parametrize('op', PRESENT)
def test_every_edge_case_is_valid_and_documented(op):
    """Each edge case is accepted by numpyconv (case_at raises otherwise) and listed in the guide."""
    guide = (ROOT / 'docs' / 'conformance.md').read_text()
    settings = make_settings(op, np.float64, 0, True, None, None, True)
    for k, edge in enumerate(OPS[op].edge_cases):
        case = case_at(settings, k)
        assert case.label == f'edge: {edge.label}'
        assert edge.label in guide, edge.label


def test_cases_are_deterministic_and_seeded():
    settings = make_settings('deform_conv2d', np.float64, 3, True, None, None, True)
    a, b = case_at(settings, 57), case_at(settings, 57)
    other = case_at(make_settings('deform_conv2d', np.float64, 4, True, None, None, True), 57)
    assert a.geometry == b.geometry and all(np.array_equal(a.kwargs[k], b.kwargs[k], equal_nan=True)
                                            for k in a.kwargs if isinstance(a.kwargs[k], np.ndarray))
    assert a.geometry != other.geometry or not np.array_equal(a.kwargs['x'], other.kwargs['x'])


def test_stable_random_keeps_values_when_the_shape_shrinks():
    big, small = StableRandom(1, 2).standard_normal((3, 4, 5)), StableRandom(1, 2).standard_normal((2, 4, 3))
    np.testing.assert_array_equal(big[:2, :, :3], small)
    assert abs(big.mean()) < 0.5 and 0.5 < big.std() < 1.5


def test_array_source_round_trips_exactly():
    a = np.array([[0.1, -np.inf], [np.nan, 1e-300]], dtype=np.float32)
    back = eval(array_source(a), {'np': np})
    assert back.dtype == a.dtype and np.array_equal(back, a, equal_nan=True)
    b = np.array([3, -4], dtype=np.int64)
    assert np.array_equal(eval(array_source(b), {'np': np}), b)


# -- planted bugs ------------------------------------------------------------------------------------------
def _pixels(failure, name='x'):
    return int(np.prod(failure.kwargs[name].shape[2:]))


def _only_failure(report, kind, where):
    assert not report.ok and report.failures, str(report)
    failure = next((f for f in report.failures if f.error.signature == (kind, where)), None)
    assert failure is not None, str(report)
    return failure


def _run_reproducer(script, tmp_path, name='repro.py'):
    path = tmp_path / name
    path.write_text(script)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / 'tests')]))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300)


def _with_own_candidate(script, op):
    """The reproducer with numpyconv's own op put in place of the candidate."""
    script = re.sub(r'^from \S+ import \S+ as forward$', f'from numpyconv.testing.own import {op} as forward',
                    script, flags=re.M)
    return re.sub(r'^from \S+ import \S+ as backward$',
                  f'from numpyconv.testing.own import {op}_backward as backward', script, flags=re.M)


def _reproduces(failure, tmp_path, op, expect):
    """The reproducer fails with ``expect`` in its stderr, and passes with the correct op swapped in."""
    assert 'from test_conformance import' in failure.reproducer
    bad = _run_reproducer(failure.reproducer, tmp_path)
    assert bad.returncode != 0 and expect in bad.stderr, bad.stderr
    good = _run_reproducer(_with_own_candidate(failure.reproducer, op), tmp_path, 'fixed.py')
    assert good.returncode == 0, good.stderr
    assert 'agrees with numpyconv' in good.stdout


PLANTED = {
    'padding off by one': ('conv2d', conv_padding_off_by_one, None, np.float64, ('mismatch', 'out')),
    'wrong group mapping': ('conv2d', conv_wrong_groups, None, np.float64, ('mismatch', 'out')),
    'missing bias gradient': ('conv2d', conv, conv_no_bias_grad, np.float64, ('none', 'dbias')),
    'mutates its input': ('conv2d', conv_mutating, None, np.float64, ('mutated', 'forward:x')),
    'wrong dtype': ('conv2d', conv_float64, None, np.float32, ('dtype', 'out')),
    'wrong shape': ('conv2d', conv_strided_shape, None, np.float64, ('shape', 'out')),
    'swapped offset pair': ('deform_conv2d', deform_swapped, deform_swapped_backward, np.float64,
                            ('mismatch', 'out')),
    'dropped mask gradient': ('deform_conv2d', deform, deform_no_mask_grad, np.float64,
                              ('mismatch', 'dmask')),
    'raises': ('deform_conv2d', deform_no_dilation, None, np.float64, ('raised', 'forward')),
}


@pytest.mark.parametrize('bug', sorted(PLANTED))
def test_planted_bug_is_found_and_shrunk(bug, tmp_path):
    op, forward, backward, dtype, signature = PLANTED[bug]
    report = check_against(op, forward, backward, cases=40, dtype=dtype)
    failure = _only_failure(report, *signature)
    assert _pixels(failure) <= 9 and failure.kwargs['x'].shape[0] <= 2, failure.shapes()
    assert failure.kwargs['x'].shape[1] <= 4 and failure.shrink_calls > 0
    assert failure.error.message in str(report)
    expect = {'mismatch': 'AssertionError', 'none': 'AssertionError', 'mutated': 'modified its input',
              'dtype': 'float64', 'shape': 'AssertionError', 'raised': 'NotImplementedError'}[signature[0]]
    _reproduces(failure, tmp_path, op, expect)


@pytest.mark.parametrize('candidate', [conv_channel_tail, conv_row_tiles])
def test_tail_bugs_of_vectorised_loops_are_found_by_the_edge_cases(candidate):
    """Random cases keep channels and rows small; the edge cases with 17 channels and 35 output
    columns find the dropped tails."""
    report = check_against('conv2d', candidate, cases=len(OPS['conv2d'].edge_cases), shrink=False)
    found = [f for f in report.failures if f.error.signature == ('mismatch', 'out')]
    assert not report.ok and found, str(report)


def test_batch_tiling_bug_shrinks_to_33_samples(tmp_path):
    report = check_against('deform_conv2d', deform_batch_tiles, cases=40)
    failure = _only_failure(report, 'mismatch', 'out')
    assert failure.kwargs['x'].shape[0] == 33 and _pixels(failure) <= 4, failure.shapes()
    assert failure.error.index[0] == 32                   # the first sample of the second tile
    _reproduces(failure, tmp_path, 'deform_conv2d', 'AssertionError')


def test_mismatch_error_points_at_the_worst_element():
    def off(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        y = conv(x, weight, bias, stride, padding, dilation, groups)
        if y.size:
            y.flat[-1] += 0.5
        return y
    failure = check_against('conv2d', off, cases=5, shrink=False).failures[0]
    error = failure.error
    assert error.kind == 'mismatch' and error.where == 'out' and error.count == 1
    assert error.index == tuple(s - 1 for s in conv(**failure.kwargs).shape)
    assert error.candidate - error.expected == pytest.approx(0.5) and error.relative > 1e-7


def test_tolerances_default_by_dtype_and_can_be_set():
    def noisy(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        y = conv(x, weight, bias, stride, padding, dilation, groups)
        return (y * (1 + 1e-6)).astype(y.dtype)
    assert not check_against('conv2d', noisy, cases=20, shrink=False).ok           # float64: rtol 1e-7
    assert check_against('conv2d', noisy, cases=20, dtype=np.float32).ok           # float32: rtol 1e-4
    report = check_against('conv2d', noisy, cases=20, rtol=1e-5)
    assert report.ok and report.rtol == 1e-5 and '1e-05' in str(report)


def test_candidate_problems_are_reported_never_raised():
    def returns_cache(*args, **kwargs):
        return numpyconv.conv2d_forward(*args, **kwargs)
    def backward_returns_array(dout, *args, **kwargs):
        return conv_backward(dout, *args, **kwargs)[0]
    def grad_for_none(dout, *args, **kwargs):
        dx, dw, db = conv_backward(dout, *args, **kwargs)
        return dx, dw, np.zeros(dw.shape[0]) if db is None else db
    report = check_against('conv2d', returns_cache, backward_returns_array, cases=20)
    kinds = {p.signature for f in report.failures for p in f.problems}
    assert ('type', 'out') in kinds and ('type', 'backward') in kinds
    report = check_against('conv2d', conv, grad_for_none, cases=30)
    assert {f.error.signature for f in report.failures} == {('not_none', 'dbias')}


def test_raise_exception_carries_the_report():
    with pytest.raises(ConformanceError) as info:
        check_against('conv2d', conv_padding_off_by_one, cases=30, raise_exception=True)
    assert isinstance(info.value, AssertionError)
    assert not info.value.report.ok and str(info.value) == str(info.value.report)


def test_mutating_backward_and_dout_are_detected():
    def mutating_backward(dout, x, *args, **kwargs):
        grads = conv_backward(dout, x, *args, **kwargs)
        dout *= 2
        return grads
    report = check_against('conv2d', conv, mutating_backward, cases=20)
    assert ('mutated', 'backward:dout') in {f.error.signature for f in report.failures}


def test_report_counts_and_unshrunk_failures():
    report = check_against('conv2d', conv_padding_off_by_one, cases=30, shrink=False, edge_cases=False)
    assert report.cases == 30 and report.edge_cases == 0 and report.failed == len(report.failing)
    assert all(label == 'random' for _, label, _ in report.failing)
    assert report.failures[0].shrink_calls == 0


def octave_low_shifted(*args, **kwargs):
    """Adds 1 to the low-frequency output."""
    y_h, y_l = numpyconv.octave_conv2d_forward(*args, **kwargs)[0]
    return y_h, None if y_l is None else y_l + 1.0


def octave_backward(dout, *args, **kwargs):
    return numpyconv.octave_conv2d_backward(dout, numpyconv.octave_conv2d_forward(*args, **kwargs)[1])


def test_octave_pairs_none_outputs_and_reproducer(tmp_path):
    report = check_against('octave_conv2d', octave_low_shifted, octave_backward, cases=40)
    failure = _only_failure(report, 'mismatch', 'y_l')
    assert failure.kwargs['x_l'] is None and failure.kwargs['w_l2l'] is None      # the low input dropped
    assert failure.kwargs['x_h'].shape[0] == 1 and _pixels(failure, 'x_h') <= 16, failure.shapes()
    assert isinstance(failure.dout, tuple) and len(failure.dout) == 2
    _reproduces(failure, tmp_path, 'octave_conv2d', 'AssertionError')


@pytest.mark.parametrize('op', PRESENT)
def test_reproducers_of_every_op_compile_and_stub_an_unimportable_candidate(op):
    def shifted(*args, **kwargs):
        out = own.forward(op)(*args, **kwargs)
        return tuple(None if o is None else o + 1 for o in out) if isinstance(out, tuple) else out + 1
    report = check_against(op, shifted, own.backward(op), cases=3, edge_cases=False, shrink=False)
    script = report.failures[0].reproducer
    compile(script, 'reproducer.py', 'exec')
    assert 'def forward(*args, **kwargs):' in script
    assert f'from numpyconv.testing.own import {op}_backward as backward' in script


@pytest.mark.parametrize('bad, message', [
    (dict(op='conv3d'), 'op must be one of'),
    (dict(dtype=np.int32), 'float32 or float64'),
    (dict(rtol=-1.0), 'rtol'),
    (dict(cases=-1), 'cases'),
    (dict(forward=None), 'forward must be callable'),
])
def test_bad_arguments(bad, message):
    call = dict(op='conv2d', forward=conv, cases=1) | bad
    with pytest.raises((TypeError, ValueError), match=message):
        check_against(call.pop('op'), call.pop('forward'), **call)


# -- strategies ---------------------------------------------------------------------------------------------
def test_strategies_draw_valid_arguments():
    hypothesis = pytest.importorskip('hypothesis')
    seen = set()

    @hypothesis.settings(max_examples=25, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(strategies.arguments('deform_conv2d', dtype=np.float32))
    def property_test(call):
        args, kwargs = call
        out = numpyconv.deform_conv2d_forward(*args, **kwargs)[0]
        np.testing.assert_array_equal(deform(*args, **kwargs), out)
        assert out.dtype == np.float32 and len(args) == 3
        seen.add(args[0].shape)
    property_test()
    assert len(seen) > 3


def test_strategies_cases_carry_expected_output_and_gradients():
    hypothesis = pytest.importorskip('hypothesis')

    @hypothesis.settings(max_examples=15, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(strategies.cases('dcnv3'))
    def property_test(case):
        np.testing.assert_array_equal(own.dcnv3(**case.kwargs), case.expected)
        assert len(case.expected_grads) == 3 and case.expected_grads[0].shape == case.kwargs['x'].shape
    property_test()


def test_strategies_without_hypothesis_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, 'hypothesis', None)
    monkeypatch.setitem(sys.modules, 'hypothesis.strategies', None)
    with pytest.raises(ImportError, match=r"numpyconv\[test\]"):
        strategies.arguments('conv2d')


def test_importing_numpyconv_testing_needs_no_hypothesis():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import numpyconv.testing as t; print(t.check_against('conv2d', t.own.conv2d, cases=3).ok)")
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0 and run.stdout.strip() == 'True', run.stderr


# -- clients no one here wrote: PyTorch and torchvision ------------------------------------------------------
def _tensor(torch, a, grad=False):
    return None if a is None else torch.tensor(a, requires_grad=grad)


def _autograd(torch, fn, dout, arrays):
    """Gradients of ``fn(*tensors)`` for ``dout``; None for None inputs, zeros where torch gives None."""
    tensors = [_tensor(torch, a, True) for a in arrays]
    fn(*tensors).backward(torch.tensor(dout))
    return tuple(None if t is None else t.grad.numpy() if t.grad is not None else np.zeros_like(a)
                 for t, a in zip(tensors, arrays))


def torch_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    import torch
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')                 # padding='same' with an even kernel
        return torch.nn.functional.conv2d(*(_tensor(torch, a) for a in (x, weight, bias)), stride, padding,
                                          dilation, groups).numpy()


def torch_conv2d_backward(dout, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return _autograd(torch, lambda *t: torch.nn.functional.conv2d(*t, stride, padding, dilation, groups),
                         dout, (x, weight, bias))


def torch_conv2d_padding_bug(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """PyTorch's conv2d behind a wrapper that pads the top by one row too many."""
    if padding not in (0, (0, 0), 'valid'):
        x = np.ascontiguousarray(np.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1])
    return torch_conv2d(x, weight, bias, stride, padding, dilation, groups)


def torch_conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    import torch
    with torch.no_grad():
        return torch.nn.functional.conv_transpose2d(*(_tensor(torch, a) for a in (x, weight, bias)), stride,
                                                    padding, output_padding, groups, dilation).numpy()


def torch_conv_transpose2d_backward(dout, x, weight, bias=None, stride=1, padding=0, output_padding=0,
                                    groups=1, dilation=1):
    import torch

    def op(*t):
        return torch.nn.functional.conv_transpose2d(*t, stride, padding, output_padding, groups, dilation)
    return _autograd(torch, op, dout, (x, weight, bias))


def torchvision_deform(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    import torch
    from torchvision.ops import deform_conv2d
    with torch.no_grad():
        t = [_tensor(torch, a) for a in (x, offset, weight, bias, mask)]
        return deform_conv2d(t[0], t[1], t[2], t[3], stride, padding, dilation, t[4]).numpy()


def torchvision_deform_backward(dout, x, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                                mask=None):
    import torch
    from torchvision.ops import deform_conv2d

    def op(x, o, w, b, m):
        return deform_conv2d(x, o, w, b, stride, padding, dilation, m)
    return _autograd(torch, op, dout, (x, offset, weight, bias, mask))


def torchvision_deform_swapped(x, offset, *args, **kwargs):
    return torchvision_deform(x, _swap_pairs(offset), *args, **kwargs)


def torchvision_deform_no_mask_grad(dout, *args, **kwargs):
    grads = torchvision_deform_backward(dout, *args, **kwargs)
    return grads[:4] + (None if grads[4] is None else np.zeros_like(grads[4]),)


@pytest.mark.parametrize('dtype', [np.float64, np.float32])
@pytest.mark.parametrize('op', ['conv2d', 'conv_transpose2d', 'deform_conv2d'])
def test_torch_clients_conform(op, dtype):
    pytest.importorskip('torch')
    if op == 'deform_conv2d':
        pytest.importorskip('torchvision')
    if op not in available_ops():
        pytest.skip(f"this numpyconv has no {op} yet")
    forward, backward = {'conv2d': (torch_conv2d, torch_conv2d_backward),
                         'conv_transpose2d': (torch_conv_transpose2d, torch_conv_transpose2d_backward),
                         'deform_conv2d': (torchvision_deform, torchvision_deform_backward)}[op]
    report = check_against(op, forward, backward, cases=len(OPS[op].edge_cases) + 40, dtype=dtype)
    assert report.ok, str(report)


@pytest.mark.parametrize('bug', ['conv2d padding', 'swapped offsets', 'dropped mask gradient'])
def test_torch_clients_with_planted_bugs_shrink(bug, tmp_path):
    pytest.importorskip('torch')
    pytest.importorskip('torchvision')
    op, forward, backward, where = {
        'conv2d padding': ('conv2d', torch_conv2d_padding_bug, None, 'out'),
        'swapped offsets': ('deform_conv2d', torchvision_deform_swapped, None, 'out'),
        'dropped mask gradient': ('deform_conv2d', torchvision_deform, torchvision_deform_no_mask_grad,
                                  'dmask'),
    }[bug]
    report = check_against(op, forward, backward, cases=30)
    failure = _only_failure(report, 'mismatch', where)
    n, c = failure.kwargs['x'].shape[:2]
    assert _pixels(failure) <= 9 and n <= 2 and c <= 4, failure.shapes()
    bad = _run_reproducer(failure.reproducer, tmp_path)
    assert bad.returncode != 0 and 'AssertionError' in bad.stderr, bad.stderr
