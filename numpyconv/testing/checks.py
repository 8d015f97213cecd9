"""The verdict on one case: the candidate called on copies, its answers compared with numpyconv's.

An element passes when ``|candidate - numpyconv| <= max(rtol |numpyconv|, atol s)`` with
``s = max(1, max |numpyconv array|)``; NaN must meet NaN and an infinity the same infinity. Every
other way to fail is a :class:`Problem` too: the candidate raised, returned another type, shape or
dtype, None where numpyconv has a gradient (or an array where it has None), or modified an input.
"""
import math
import traceback
from dataclasses import dataclass

import numpy as np

from .cases import copy_value, split_call


@dataclass
class Problem:
    """One way a case fails. ``where`` names the output or gradient (``'out'``, ``'dmask'``), the call
    that raised (``'forward'``) or the modified input (``'backward:x'``); ``relative`` is the worst
    relative error (inf for problems that are not a numerical mismatch) at ``index``."""
    kind: str
    where: str
    message: str
    index: tuple = None
    candidate: float = None
    expected: float = None
    relative: float = math.inf
    count: int = 0

    @property
    def signature(self):
        return self.kind, self.where

    def __str__(self):
        return self.message


def type_name(value):
    t = type(value)
    return t.__name__ if t.__module__ == 'builtins' else f'{t.__module__}.{t.__name__}'


def _index_text(name, index):
    return f"{name}[{', '.join(str(i) for i in index)}]"


def compare_array(name, got, want, settings):
    """The problem of one output or gradient, or None when it conforms."""
    if want is None:
        if got is None:
            return None
        return Problem('not_none', name, f"{name} must be None (numpyconv returns None there: its input was "
                                         f"None or takes no gradient), got {type_name(got)}")
    expect = f"a numpy.ndarray of shape {want.shape} and dtype {want.dtype}"
    if got is None:
        return Problem('none', name, f"{name} is None, expected {expect}")
    if not isinstance(got, np.ndarray):
        return Problem('type', name, f"{name} is {type_name(got)}, expected {expect}")
    if got.shape != want.shape:
        return Problem('shape', name, f"{name} has shape {got.shape}, expected {want.shape}")
    if got.dtype != want.dtype:
        return Problem('dtype', name, f"{name} has dtype {got.dtype}, expected {want.dtype}")
    return _mismatch(name, got, want, settings.rtol, settings.atol)


def _mismatch(name, got, want, rtol, atol):
    """Elementwise ``|got - want| <= max(rtol |want|, atol s)``; a Problem at the worst element."""
    with np.errstate(all='ignore'):
        g, w = got.astype(np.float64), want.astype(np.float64)
        finite = np.abs(w[np.isfinite(w)])
        scale = max(1.0, float(finite.max())) if finite.size else 1.0
        diff = np.abs(g - w)
        bad = ~(diff <= np.maximum(rtol * np.abs(w), atol * scale))
        bad &= ~((g == w) | (np.isnan(g) & np.isnan(w)))         # equal infinities, NaN meeting NaN
        if not bad.any():
            return None
        floor = atol * scale / rtol if rtol > 0 else scale
        rel = np.where(bad, diff / np.maximum(np.abs(w), floor), 0.0)
    rel[bad & ~np.isfinite(rel)] = np.inf
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(rel)), rel.shape))
    count = int(bad.sum())
    message = (f"{name} differs: relative error {rel[worst]:.3g} at {_index_text(name, worst)} (candidate "
               f"{float(g[worst])!r}, numpyconv {float(w[worst])!r}); {count} of {bad.size} elements outside "
               f"the tolerance")
    return Problem('mismatch', name, message, worst, float(g[worst]), float(w[worst]), float(rel[worst]),
                   count)


def _compare_outputs(spec, got, case, settings):
    if len(spec.outputs) == 1:
        return [p for p in [compare_array(spec.outputs[0], got, case.expected, settings)] if p]
    if not isinstance(got, (tuple, list)) or len(got) != len(spec.outputs):
        return [Problem('type', 'forward', f"forward returned {type_name(got)}, expected a tuple "
                                           f"{spec.outputs} (None for an output numpyconv does not produce)")]
    found = [compare_array(n, g, w, settings) for n, g, w in zip(spec.outputs, got, case.expected)]
    return [p for p in found if p]


def _compare_grads(spec, grads, case, settings):
    want = case.expected_grads
    if not isinstance(grads, (tuple, list)) or len(grads) != len(want):
        return [Problem('type', 'backward', f"backward returned {type_name(grads)}"
                        f"{f' of length {len(grads)}' if isinstance(grads, (tuple, list)) else ''}, "
                        f"expected a tuple of {len(want)} gradients (d{', d'.join(spec.arrays)})")]
    found = [compare_array('d' + n, g, w, settings) for n, g, w in zip(spec.arrays, grads, want)]
    return [p for p in found if p]


def _modified(call, given, originals):
    """A 'mutated' problem per input the candidate changed (compared bitwise with the original)."""
    found = []
    for name, original in originals.items():
        if not isinstance(original, np.ndarray):
            continue
        now = given[name]
        nan = original.dtype.kind == 'f'
        if now.shape == original.shape and np.array_equal(now, original, equal_nan=nan):
            continue
        if now.shape != original.shape:                    # ndarray.resize in place
            found.append(Problem('mutated', f'{call}:{name}', f"{call} changed the shape of its input {name} "
                                                             f"from {original.shape} to {now.shape}"))
            continue
        changed = ~((now == original) | (np.isnan(now) & np.isnan(original))) if nan else now != original
        first = tuple(int(i) for i in np.argwhere(changed)[0])
        found.append(Problem('mutated', f'{call}:{name}', f"{call} modified its input {name}: "
                             f"{int(changed.sum())} element(s) changed, first {_index_text(name, first)} "
                             f"{original[first].item()!r} -> {now[first].item()!r}"))
    return found


def _named_douts(dout):
    """``{'dout': dout}``, or ``{'dout[0]': ..., 'dout[1]': ...}`` for a pair (None entries left out)."""
    if isinstance(dout, tuple):
        return {f'dout[{k}]': d for k, d in enumerate(dout) if d is not None}
    return {'dout': dout}


def _raised(call, exc):
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    where = f" (at {frame.filename}:{frame.lineno} in {frame.name})"
    return Problem('raised', call, f"{call} raised {type(exc).__name__}: {exc}{where}")


def examine(settings, case, forward, backward):
    """Call the candidate on copies of the case's arguments; return its problems (in check order)."""
    spec, problems = settings.spec, []
    given = {k: copy_value(v) for k, v in case.kwargs.items()}
    args, kwargs = split_call(spec.name, given)
    try:
        with np.errstate(all='ignore'):
            got = forward(*args, **kwargs)
    except Exception as exc:                               # a candidate's failure, reported
        problems.append(_raised('forward', exc))
    else:
        problems += _compare_outputs(spec, got, case, settings)
    problems += _modified('forward', given, case.kwargs)
    if backward is None:
        return problems
    given = {k: copy_value(v) for k, v in case.kwargs.items()}
    dout = copy_value(case.dout)
    args, kwargs = split_call(spec.name, given)
    try:
        with np.errstate(all='ignore'):
            grads = backward(dout, *args, **kwargs)
    except Exception as exc:
        problems.append(_raised('backward', exc))
    else:
        problems += _compare_grads(spec, grads, case, settings)
    problems += _modified('backward', _named_douts(dout), _named_douts(case.dout))
    problems += _modified('backward', given, case.kwargs)
    return problems
