"""``numpyconv check``: every registered op case, on this machine, in float64.

The cases live in :mod:`numpyconv.selftest_cases` (one small case per op pair; see there how an op
registers its own). For each case the forward is compared with the plain-loop reference and the
backward with central finite differences (:func:`numpyconv.gradcheck`).
"""
import sys

import numpy as np

from .gradcheck import gradcheck
from .selftest_cases import CheckCase, register, registered  # noqa: F401 (the registry's interface)


def _max_rel_error(out, ref):
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    err = 0.0
    for a, b in zip(outs, refs):
        if a is None or b is None or np.size(a) == 0:
            continue
        err = max(err, float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b))))))
    return err


def run_case(name, make_case, seed=0, tol=1e-8):
    """Run one registered case; returns a dict row for the table."""
    case = make_case(np.random.default_rng(seed))
    out, _ = case.forward(*case.inputs)
    forward_error = _max_rel_error(out, case.reference(*case.inputs))
    report = gradcheck(case.forward, case.backward, case.inputs, raise_exception=False)
    backward_error = max((r.max_rel_error for r in report.results), default=0.0)
    ok = forward_error < tol and report.ok
    return dict(op=name, forward_error=forward_error, backward_error=backward_error, ok=ok)


def check_names(names):
    """``names`` (all registered ops when empty or None), each a registered op; ``ValueError``
    naming the first that is not."""
    cases = registered()
    unknown = [name for name in names or () if name not in cases]
    if unknown:
        raise ValueError(f"unknown op {unknown[0]!r}; registered: {', '.join(sorted(cases))}")
    return list(names or sorted(cases))


def run_all(names=None, seed=0, stream=None):
    """Run the registered cases (all, or ``names``); print a table; return the rows."""
    stream = stream or sys.stdout
    cases, names = registered(), check_names(names)
    rows = []
    stream.write(f"{'op':<28}{'forward err vs reference':>26}{'backward err vs FD':>22}  result\n")
    for name in names:
        row = run_case(name, cases[name], seed)
        rows.append(row)
        stream.write(f"{name:<28}{row['forward_error']:>26.2e}{row['backward_error']:>22.2e}  "
                     f"{'pass' if row['ok'] else 'FAIL'}\n")
        stream.flush()
    return rows
