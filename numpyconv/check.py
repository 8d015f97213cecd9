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
