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
"forward raised"); the smallest case of each group is shrunk (:class:`Shrinker`) and turned into a
reproducer (:mod:`numpyconv.testing.reproducer`).
"""
import math
import traceback
from dataclasses import dataclass, field

import numpy as np

from . import ops as op_table
from .arrays import StableRandom, dout_like
from .reproducer import reproducer

DEFAULT_TOLERANCES = {'float64': (1e-7, 1e-9), 'float32': (1e-4, 1e-5)}
SHRINK_CALLS = 250       # candidate calls one shrink may make
MAX_FAILURES = 8         # distinct failures shrunk and reported
MAX_DRAWS = 200          # random geometries tried for one case before giving up


class ConformanceError(AssertionError):
    """Raised by ``check_against(..., raise_exception=True)``; ``.report`` is the report."""

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report


# -- settings and cases ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What decides the cases and the verdicts (plain values: it travels to worker processes)."""
    op: str
    dtype: str
    seed: int
    edge_cases: bool
    rtol: float
    atol: float
    backward: bool

    @property
    def spec(self):
        return op_table.get(self.op)

    def label(self, index):
        """``'edge: <label>'`` for the edge cases, ``'random'`` after them."""
        edges = self.spec.edge_cases if self.edge_cases else ()
        return f'edge: {edges[index].label}' if index < len(edges) else 'random'


def make_settings(op, dtype, seed, edge_cases, rtol, atol, backward):
    """Validate the options of :func:`check_against`; return :class:`Settings`."""
    op_table.get(op)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt.name not in DEFAULT_TOLERANCES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    default_rtol, default_atol = DEFAULT_TOLERANCES[dt.name]
    rtol = default_rtol if rtol is None else _tolerance(rtol, 'rtol')
    atol = default_atol if atol is None else _tolerance(atol, 'atol')
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    return Settings(op, dt.name, int(seed), bool(edge_cases), rtol, atol, backward)


def _tolerance(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass
class Case:
    """One set of arguments with numpyconv's answers."""
    index: int
    label: str
    geometry: dict
    kwargs: dict          # the forward's arguments by name, in the forward's order
    dout: object
    expected: object      # numpyconv's output
    expected_grads: tuple = None

    @property
    def size(self):
        """Number of array elements given to the candidate (orders the failing cases)."""
        return sum(np.size(v) for v in self.kwargs.values() if isinstance(v, np.ndarray))


def _cast(value, dtype):
    if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
        return value.astype(dtype)
    return value


def build_case(settings, geometry, index, label=''):
    """The case of ``geometry`` (arrays drawn from the case's seed), or None when numpyconv rejects it."""
    spec = settings.spec
    rng = StableRandom(settings.seed, index)
    try:
        kwargs = {k: _cast(v, settings.dtype) for k, v in spec.build(geometry, rng).items()}
        with np.errstate(all='ignore'):
            out, cache = spec.forward(**kwargs)
    except (ValueError, TypeError):             # no such array (a negative size) or numpyconv refuses it
        return None
    dout = dout_like(out, rng, geometry.get('values'))
    dout = tuple(_cast(d, settings.dtype) for d in dout) if isinstance(dout, tuple) \
        else _cast(dout, settings.dtype)
    grads = None
    if settings.backward:
        with np.errstate(all='ignore'):
            grads = tuple(spec.backward(dout, cache))
    return Case(index, label, dict(geometry), kwargs, dout, out, grads)


def case_at(settings, index):
    """Case ``index``: the edge cases first (when enabled), then random geometries."""
    spec, label = settings.spec, settings.label(index)
    if label != 'random':
        case = build_case(settings, spec.edge_geometry(index), index, label)
        if case is None:
            raise RuntimeError(f"edge case {label!r} of {spec.name} is rejected by numpyconv "
                               f"(geometry {spec.edge_geometry(index)})")
        return case
    draw = op_table.Draw(np.random.default_rng([settings.seed, index, 0]))
    for _ in range(MAX_DRAWS):
        case = build_case(settings, spec.draw(draw), index, label)
        if case is not None:
            return case
    raise RuntimeError(f"no valid {spec.name} geometry in {MAX_DRAWS} draws (case {index})")


# -- the calling convention ---------------------------------------------------------------------------
def split_call(op, kwargs):
    """``(args, kwargs)`` of the candidate call: required parameters positionally, the rest by name."""
    required = op_table.get(op).required()
    return [kwargs[n] for n in required], {k: v for k, v in kwargs.items() if k not in required}


def _copy(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    return value


# -- problems -------------------------------------------------------------------------------------------
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


def _type_name(value):
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
                                         f"None or takes no gradient), got {_type_name(got)}")
    expect = f"a numpy.ndarray of shape {want.shape} and dtype {want.dtype}"
    if got is None:
        return Problem('none', name, f"{name} is None, expected {expect}")
    if not isinstance(got, np.ndarray):
        return Problem('type', name, f"{name} is {_type_name(got)}, expected {expect}")
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
        return [Problem('type', 'forward', f"forward returned {_type_name(got)}, expected a tuple "
                                           f"{spec.outputs} (None for an output numpyconv does not produce)")]
    found = [compare_array(n, g, w, settings) for n, g, w in zip(spec.outputs, got, case.expected)]
    return [p for p in found if p]


def _compare_grads(spec, grads, case, settings):
    want = case.expected_grads
    if not isinstance(grads, (tuple, list)) or len(grads) != len(want):
        return [Problem('type', 'backward', f"backward returned {_type_name(grads)}"
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
    given = {k: _copy(v) for k, v in case.kwargs.items()}
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
    given = {k: _copy(v) for k, v in case.kwargs.items()}
    dout = _copy(case.dout)
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


# -- shrinking -------------------------------------------------------------------------------------------
class Shrinker:
    """Greedy reduction of a failing geometry: the op's moves in order, repeated until none applies
    (or ``budget`` candidate calls are spent). A move is kept when the smaller case still shows a
    problem with the same signature (same kind, same output or gradient)."""

    def __init__(self, settings, case, signature, forward, backward, budget=SHRINK_CALLS):
        self.settings, self.case, self.signature = settings, case, signature
        self.forward, self.backward, self.budget = forward, backward, budget
        self.calls = 0
        self._seen = {}

    def fails(self, geometry):
        key = repr(sorted(geometry.items()))
        if key in self._seen:
            return self._seen[key]
        result = False
        if self.calls < self.budget:
            case = build_case(self.settings, geometry, self.case.index, self.case.label)
            if case is not None:
                self.calls += 1
                problems = examine(self.settings, case, self.forward, self.backward)
                result = any(p.signature == self.signature for p in problems)
        self._seen[key] = result
        return result

    def run(self):
        """The smallest failing geometry found."""
        geometry = dict(self.case.geometry)
        changed = True
        while changed and self.calls < self.budget:
            changed = False
            for move in self.settings.spec.shrink:
                smaller = self._apply(move, geometry)
                if smaller is not None:
                    geometry, changed = smaller, True
        return geometry

    def _apply(self, move, g):
        if isinstance(move, op_table.Toward) and move.field in g:
            return self._toward(g, lambda v: {**g, move.field: v}, g[move.field], move.target)
        if isinstance(move, op_table.Each) and move.field in g:
            for i in range(len(g[move.field])):
                entries = g[move.field]
                found = self._toward(g, lambda v: {**g, move.field: entries[:i] + (v,) + entries[i + 1:]},
                                     entries[i], move.target)
                if found is not None:
                    return found
            return None
        if isinstance(move, op_table.Simpler) and move.field in g:
            value = g[move.field]
            simpler = move.order[:move.order.index(value)] if value in move.order else move.order
            for option in simpler:
                if self.fails({**g, move.field: option}):
                    return {**g, move.field: option}
        return None

    def _toward(self, g, at, value, target):
        """Binary search for the smallest failing value in ``[target, value)`` (``value`` fails)."""
        if value <= target:
            return None
        if self.fails(at(target)):
            return at(target)
        low, high = target, value
        while high - low > 1:
            mid = (low + high) // 2
            if self.fails(at(mid)):
                high = mid
            else:
                low = mid
        return at(high) if high != value else None


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
        raise TypeError(f"forward must be callable, got {_type_name(forward)}")
    if backward is not None and not callable(backward):
        raise TypeError(f"backward must be callable or None, got {_type_name(backward)}")
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 0:
        raise TypeError(f"cases must be a non-negative int, got {cases!r}")
    settings = make_settings(op, dtype, seed, edge_cases, rtol, atol, backward is not None)
    outcomes = run_cases(settings, range(int(cases)), forward, backward)
    report = summarize(settings, outcomes, forward, backward, shrink)
    if raise_exception and not report.ok:
        raise ConformanceError(report)
    return report
