"""Conformance of another implementation (a CUDA, Triton or C++ port) with numpyconv's ops.

:func:`check_against` draws valid arguments for an op (edge cases first, then random ones, both
from the op's entry in :mod:`numpyconv.testing.ops`), computes numpyconv's output and gradients,
calls the candidate on copies of the same arguments and compares. The candidate is called as
numpyconv's plain-loop references are::

    forward(*required, **optional) -> out                 # out: the output (a pair for octave)
    backward(dout, *required, **optional) -> grads        # the tuple numpyconv.<op>_backward returns

``required`` are the forward's parameters without a default (positionally, in order), ``optional``
those with one (by name), all of them given. An element passes when::

    |candidate - numpyconv| <= max(rtol * |numpyconv|, atol * s),   s = max(1, max |numpyconv array|)

NaN must meet NaN and an infinity the same infinity. Default ``(rtol, atol)``: ``(1e-7, 1e-9)``
in float64, ``(1e-4, 1e-5)`` in float32. A candidate that raises, returns another type, shape or
dtype, returns None for a gradient (or an array where numpyconv has None) or modifies its inputs
fails the case like a mismatch. Failing cases are grouped by their first problem ("dmask differs",
"forward raised"); the smallest case of each group is shrunk and turned into a reproducer. The
pieces: :mod:`~numpyconv.testing.cases` (settings, cases), :mod:`~numpyconv.testing.checks` (one
case's verdict), :mod:`~numpyconv.testing.shrink`, :mod:`~numpyconv.testing.reproducer`.
"""
from dataclasses import dataclass, field

import numpy as np

from .cases import build_case, case_at, make_settings
from .checks import Problem, examine, type_name
from .reproducer import reproducer
from .shrink import Shrinker

MAX_FAILURES = 8         # distinct failures shrunk and reported


class ConformanceError(AssertionError):
    """Raised by ``check_against(..., raise_exception=True)``; ``.report`` is the report."""

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report



# -- running --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """The verdict on one case (small: it travels back from worker processes)."""
    index: int
    label: str
    signature: tuple = None     # of the first problem; None when the case passes
    size: int = 0


def run_cases(settings, indices, forward, backward, progress=None):
    """Run the cases ``indices``; one :class:`Outcome` each. ``progress(k)`` after each case."""
    outcomes = []
    for index in indices:
        case = case_at(settings, index)
        problems = examine(settings, case, forward, backward)
        outcomes.append(Outcome(index, case.label, problems[0].signature if problems else None, case.size))
        if progress is not None:
            progress(1)
    return outcomes


# -- reports ---------------------------------------------------------------------------------------------
@dataclass
class Failure:
    """One distinct failure, shrunk from ``case`` (the smallest of the ``failing_cases`` cases whose first
    problem is the same). ``kwargs``: the forward's arguments (arrays and hyper-parameters)
    of the smallest failing case; ``dout``: its output gradient; ``error``: the :class:`Problem`
    followed (worst relative error and where); ``problems``: all problems of that case;
    ``reproducer``: a Python script reproducing it with NumPy and numpyconv alone."""
    op: str
    dtype: str
    case: int
    label: str
    failing_cases: int
    geometry: dict
    original_geometry: dict
    kwargs: dict
    dout: object
    error: Problem
    problems: list
    shrink_calls: int
    reproducer: str

    def shapes(self):
        """``name (shape)`` of each array argument, ``name=value`` of each hyper-parameter."""
        parts = []
        for name, value in self.kwargs.items():
            parts.append(f"{name} {value.shape}" if isinstance(value, np.ndarray) else f"{name}={value!r}")
        return ', '.join(parts)

    def __str__(self):
        first = (f"from case {self.case} ({self.label}), the smallest of {self.failing_cases} failing "
                 f"case(s) like it")
        shrunk = f"shrunk in {self.shrink_calls} candidate calls to" if self.shrink_calls else "case"
        lines = [self.error.message, f"  {first}", f"  {shrunk}: {self.shapes()}"]
        lines += [f"  also: {p.message}" for p in self.problems if p is not self.error][:4]
        lines.append(f"  reproducer: failure.reproducer ({len(self.reproducer.splitlines())} lines)")
        return '\n'.join(lines)


@dataclass
class ConformanceReport:
    """The result of :func:`check_against`. ``ok``: every case conformed; ``cases``: the number run;
    ``failed``: how many failed; ``failures``: one :class:`Failure` per distinct problem (shrunk);
    ``failing``: ``(index, label, (kind, where))`` of every failing case."""
    op: str
    dtype: str
    seed: int
    rtol: float
    atol: float
    cases: int
    edge_cases: int
    backward: bool
    failures: list = field(default_factory=list)
    failing: list = field(default_factory=list)
    unreported: int = 0

    @property
    def ok(self):
        return not self.failing

    @property
    def failed(self):
        return len(self.failing)

    def __str__(self):
        checked = 'output and gradients' if self.backward else 'output (no backward given)'
        head = [f"numpyconv conformance of {self.op} ({self.dtype}, {checked}): "
                f"{self.cases} cases ({self.edge_cases} edge, {self.cases - self.edge_cases} random), "
                f"seed {self.seed}",
                f"an element passes when |candidate - numpyconv| <= max({self.rtol:g} * |numpyconv|, "
                f"{self.atol:g} * max(1, max |numpyconv|))"]
        if self.ok:
            return '\n'.join(head + [f"PASSED: all {self.cases} cases conform"])
        head.append(f"FAILED: {self.failed} of {self.cases} cases; {len(self.failures)} distinct failure(s)"
                    + (f" shown, {self.unreported} more not shown" if self.unreported else ''))
        for k, failure in enumerate(self.failures, 1):
            head.append(f"\nfailure {k}: {failure}")
        return '\n'.join(head)


def summarize(settings, outcomes, forward, backward, shrink=True, candidate_names=None):
    """The report of ``outcomes``: each distinct failure re-run from its smallest case and shrunk."""
    spec = settings.spec
    n_edge = min(len(spec.edge_cases), len(outcomes)) if settings.edge_cases else 0
    report = ConformanceReport(settings.op, settings.dtype, settings.seed, settings.rtol, settings.atol,
                               len(outcomes), n_edge, settings.backward)
    groups = {}
    for o in outcomes:
        if o.signature is not None:
            report.failing.append((o.index, o.label, o.signature))
            groups.setdefault(o.signature, []).append(o)
    for signature, group in list(groups.items())[:MAX_FAILURES]:
        start = min(group, key=lambda o: (o.size, o.index))
        report.failures.append(_failure(settings, start, signature, len(group), forward, backward, shrink,
                                        candidate_names))
    report.unreported = max(0, len(groups) - MAX_FAILURES)
    return report


def _failure(settings, start, signature, count, forward, backward, shrink, candidate_names):
    case = case_at(settings, start.index)
    original, calls = case.geometry, 0
    if shrink:
        shrinker = Shrinker(settings, case, signature, forward, backward)
        geometry = shrinker.run()
        calls = shrinker.calls
        case = build_case(settings, geometry, start.index, start.label)
    problems = examine(settings, case, forward, backward)
    error = next((p for p in problems if p.signature == signature), None)
    if error is None:      # the candidate passed this time
        error = Problem('flaky', signature[1], f"{signature[1]}: '{signature[0]}' in the run, but the case "
                                               f"passed when run again (a non-deterministic candidate?)")
    failure = Failure(settings.op, settings.dtype, start.index, start.label, count, case.geometry, original,
                      case.kwargs, case.dout, error, problems, calls, '')
    failure.reproducer = reproducer(settings, failure, forward, backward, candidate_names)
    return failure


# -- the entry point ---------------------------------------------------------------------------------------
def check_against(op, forward, backward=None, *, cases=200, dtype=np.float64, rtol=None, atol=None, seed=0,
                  shrink=True, edge_cases=True, raise_exception=False):
    """Check a candidate implementation of a numpyconv op against numpyconv.

    Parameters
    ----------
    op : str
        A numpyconv op: ``'conv2d'``, ``'depthwise_conv2d'``, ``'pointwise_conv2d'``,
        ``'separable_conv2d'``, ``'octave_conv2d'``, ``'deform_conv2d'``, ``'dcnv3'``, ``'dcnv4'``,
        ``'involution'`` and, where this numpyconv has them, ``'max_pool2d'``, ``'avg_pool2d'``,
        ``'adaptive_avg_pool2d'``, ``'adaptive_max_pool2d'``, ``'conv_transpose2d'``,
        ``'ms_deform_attn'`` (:func:`numpyconv.testing.available_ops`).
    forward : callable
        ``forward(*required, **optional) -> out``, with ``numpyconv.<op>_forward``'s arguments
        (names, order, layouts): the parameters without a default positionally, the others by
        name. ``out`` as numpyconv's (a pair ``(y_h, y_l)`` for octave).
    backward : callable, optional
        ``backward(dout, *required, **optional) -> tuple``, the tuple ``numpyconv.<op>_backward``
        returns (one gradient per array input, None where numpyconv has None). Without it only
        the output is checked.
    cases : int
        Number of cases run: the op's edge cases first (when ``edge_cases``), then random ones.
    dtype : float32 or float64
        Of every float array given to the candidate and expected back.
    rtol, atol : float, optional
        An element passes when ``|candidate - numpyconv| <= max(rtol |numpyconv|, atol s)`` with
        ``s = max(1, max |numpyconv array|)``. Defaults: ``1e-7, 1e-9`` (float64), ``1e-4, 1e-5``
        (float32).
    seed : int
        Decides the random cases and all array values.
    shrink : bool
        Reduce each distinct failure to a smallest failing case.
    edge_cases : bool
        Run the op's edge cases first.
    raise_exception : bool
        Raise :class:`ConformanceError` (an ``AssertionError`` carrying the report) on a failure.

    Returns
    -------
    ConformanceReport
        ``.ok``, ``.cases``, ``.failed``, ``.failures`` (each with ``.kwargs``, ``.error``,
        ``.reproducer``) and a readable ``str()``.
    """
    if not callable(forward):
        raise TypeError(f"forward must be callable, got {type_name(forward)}")
    if backward is not None and not callable(backward):
        raise TypeError(f"backward must be callable or None, got {type_name(backward)}")
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 0:
        raise TypeError(f"cases must be a non-negative int, got {cases!r}")
    settings = make_settings(op, dtype, seed, edge_cases, rtol, atol, backward is not None)
    outcomes = run_cases(settings, range(int(cases)), forward, backward)
    report = summarize(settings, outcomes, forward, backward, shrink)
    if raise_exception and not report.ok:
        raise ConformanceError(report)
    return report
