"""Gradient checking: compare hand-written derivatives with finite differences of the forward.

Works for any pair, numpyconv's or your own (see docs/gradcheck.md)::

    gradcheck(forward, backward, (x, w))        # forward(*inputs) -> (out, cache)
                                                # backward(dout, cache) -> (dx, dw)
    gradgradcheck(forward, backward, double_backward, (x, w))
                                                # double_backward(ggrads, dout, cache) -> (ddout, dx, dw)
    jvpcheck(forward, jvp, (x, w))              # jvp((tx, tw), cache) -> output tangent

gradcheck's scalar is ``L(inputs) = sum_j <out_j, dout_j>`` with a fixed random ``dout`` (seeded), so
``dL/dx`` is exactly what ``backward(dout, cache)`` must return.

* ``mode='full'``: for every element ``i`` of every checked input, the central difference
  ``num_i = (L(x + eps e_i) - L(x - eps e_i)) / 2 eps`` against ``ana_i = grad[i]``;
* ``mode='random'``: for ``n_directions`` random unit directions ``v`` per checked input, the
  directional derivative ``(L(x + eps v) - L(x - eps v)) / 2 eps`` against ``<grad, v>``
  (cost independent of the input size); ``'auto'`` is ``'full'`` up to ``full_threshold`` elements;
* ``mode='jacobian'``: the whole Jacobian ``J (out.size, x.size)`` of each checked input: row ``k`` is
  ``backward`` of a one-hot ``dout = e_k``, column ``i`` the central difference of every output
  element along ``e_i``.

A point passes when ``|num - ana| <= atol + rtol * |num|``. Differences are taken on the outputs
before the inner product with ``dout`` (roundoff stays per element), over the step actually taken
(``x + eps`` rounded to ``x``'s dtype). A point where the one-sided differences
``<out(x+eps v) - out(x), dout> / eps`` and ``<out(x) - out(x-eps v), dout> / eps`` disagree by more than
the kink tolerance lies on (or within eps of) a kink (relu at 0, a max tie, an integer bilinear
coordinate): it is listed as non-differentiable, excluded from pass/fail, and a warning is issued.

Precision. With float64 inputs everything runs in float64: ``eps = 1e-6, atol = 1e-5, rtol = 1e-3``.
With float32 (or float16) inputs the implementation runs in its own dtype, and it is compared with
differences in float64 when its forward accepts float64 inputs: ``rtol = 10 sqrt(n) u`` (``u`` the
dtype's machine epsilon, ``n`` the number of elements of the float inputs and outputs: a sum of ``n``
rounded terms is off by about ``sqrt(n) u``); otherwise with differences in the dtype itself,
``eps = u^(1/3)`` and ``rtol = 10 (sqrt(n) u / eps + eps^2)`` (the outputs' rounding over the step,
plus the truncation error). ``atol`` is then ``rtol`` times the largest ``|num|`` of each input.

Around the comparison, ``check_reentrant`` calls ``backward`` a second time on the same cache: the
gradients must agree within ``nondet_tol`` and the cache must equal a deep snapshot taken before
the first call. ``check_batch`` runs every sample alone: its output and its gradients must equal
the batched ones, and the per-sample gradients of the shared inputs must sum to the batched ones.
"""
import dataclasses
import math
import numbers
import types
import warnings
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ._checks import is_int, positive_int, real
from .module import Module, float64_copy

_MODES = ('auto', 'full', 'random', 'jacobian')
_FLOAT64_EPS = 1e-6
_FLOAT64_TOL = (1e-5, 1e-3)          # (atol, rtol) of a float64 check, as torch.autograd.gradcheck
_MARGIN = 10                          # safety factor of the tolerances derived from machine epsilon
_KINK_STEPS = 20                      # differences in float32: a kink when slopes differ by 20 eps
_BATCH_MARGIN = 100                   # check_batch: agreement within 100 sqrt(n) u of the largest value


class GradcheckError(AssertionError):
    """Raised by a failed check; ``.report`` is the :class:`GradcheckReport`, the message its table."""

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report


@dataclass
class GradcheckResult:
    """The check of one input (at its worst point: largest ``|num - ana| / (atol + rtol |num|)``).

    ``numerical_array`` / ``analytical_array``: everything compared, as float64 arrays: the gradient
    (input's shape) in mode 'full', the directional derivatives ``(n_directions,)`` in mode 'random',
    the Jacobian ``(out.size, input.size)`` in mode 'jacobian' (jvpcheck's 'full' as well; its
    'random': the output tangents ``(n_directions, out.size)``). The float outputs are flattened and
    concatenated in order. ``atol``, ``rtol``: the tolerances this input was judged with.
    """
    index: int
    name: str
    shape: tuple
    n_checked: int = 0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0   # |num - ana| / max(|num|, |ana|, atol / rtol)
    worst_index: object = None   # index tuple ('full'), direction number ('random'), (output, input) index
    numerical: float = float('nan')
    analytical: float = float('nan')
    nondifferentiable: list = field(default_factory=list)
    n_nondifferentiable_mismatch: int = 0   # flagged points where central difference != analytical
    message: str = ''
    ok: bool = True
    numerical_array: np.ndarray = None
    analytical_array: np.ndarray = None
    atol: float = None
    rtol: float = None


@dataclass
class GradcheckReport:
    """``results``: one :class:`GradcheckResult` per checked input; ``problems``: whole-call failures.

    ``atol`` is None when it is set per input (float32 implementations: see each result's ``atol``);
    ``dtype``: the precision the implementation was run in; ``differences``: the precision of the
    finite differences; ``tolerances``: which tolerances were used and why; ``checks``: the extra
    checks run (``'reentrant'``, ``'batch'``) and whether they passed (details in ``problems``).
    """
    results: list
    mode: str
    eps: float
    atol: object
    rtol: float
    problems: list = field(default_factory=list)
    check: str = 'gradcheck'
    dtype: str = 'float64'
    differences: str = 'float64'
    tolerances: str = ''
    checks: dict = field(default_factory=dict)

    @property
    def ok(self):
        return not self.problems and all(r.ok for r in self.results)

    def __str__(self):
        rule = (f'|num - ana| <= {self.atol:g} + {self.rtol:g} * |num|' if self.atol is not None else
                f'|num - ana| <= atol + {self.rtol:g} * |num|, atol per input')
        head = (f"{self.check} {'passed' if self.ok else 'FAILED'} (mode={self.mode}, eps={self.eps:g}; "
                f"a point passes if {rule})")
        per_input = self.atol is None
        rows = [('input', 'shape', 'checked', 'max abs err', 'max rel err', 'worst at', 'numerical',
                 'analytical') + (('atol',) if per_input else ()) + ('result',)]
        for r in self.results:
            rows.append((r.name, str(r.shape), str(r.n_checked), f'{r.max_abs_error:.3e}',
                         f'{r.max_rel_error:.3e}', _where(r.worst_index, self.mode), f'{r.numerical:.6g}',
                         f'{r.analytical:.6g}') + ((f'{r.atol or 0:.3g}',) if per_input else ())
                        + ('ok' if r.ok else 'FAIL',))
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        lines = [head] + ['  '.join(s.ljust(w) for s, w in zip(row, widths)).rstrip() for row in rows]
        lines.append(f'tolerances: {self.tolerances}')
        if self.checks:
            lines.append('checks: ' + ', '.join(f"{k} {'ok' if v else 'FAILED'}"
                                                for k, v in self.checks.items()))
        lines += [f'{r.name}: {r.message}' for r in self.results if r.message]
        lines += [f'problem: {p}' for p in self.problems]
        for r in self.results:
            if r.nondifferentiable:
                lines.append(f'{r.name}: {len(r.nondifferentiable)} non-differentiable point(s) '
                             f'({r.n_nondifferentiable_mismatch} of them disagree with the analytical '
                             f'value), e.g. {r.nondifferentiable[:5]}: ' + _NONDIFF_HINT)
        return '\n'.join(lines)


def _where(key, mode):
    if key is None:
        return 'None'
    if mode == 'random' and isinstance(key, (int, np.integer)):
        return f'dir {key}'
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], tuple):
        return f"out {key[0]} {'dir' if isinstance(key[1], int) else 'in'} {key[1]}"
    return str(key)


_NONDIFF_HINT = ("one-sided differences disagree (a kink such as relu at 0, a max tie, an integer "
                 "bilinear coordinate); excluded from pass/fail. Move the point away from the kink "
                 "(other random inputs or seed) to check the gradient there.")


# -- the three checks ----------------------------------------------------------------------------
def gradcheck(forward, backward, inputs, *, eps=None, atol=None, rtol=None, mode='auto', n_directions=10,
              full_threshold=2000, jacobian_limit=1_000_000, wrt=None, names=None, seed=0,
              raise_exception=True, returns_cache=True, check_reentrant=True, nondet_tol=0.0,
              check_batch=None):
    """Check ``backward`` against central finite differences of ``forward``; return a report.

    Parameters
    ----------
    forward : callable
        ``forward(*inputs) -> (out, cache)`` (``-> out`` with ``returns_cache=False``). ``out`` is an
        array or a tuple of arrays/None.
    backward : callable
        ``backward(dout, cache) -> grads`` (``backward(dout, *inputs)`` with ``returns_cache=False``):
        one gradient per input (None for None inputs; may be None for unchecked ones); a bare array
        is accepted for a single input. ``dout`` matches ``out`` (a tuple for a tuple).
    inputs : tuple of arrays (or None, passed as None)
        Float inputs are checked; other dtypes (integer labels) are passed unchanged. float64 (and
        Python floats) run in float64; float32 inputs run the implementation in float32 with
        tolerances derived from float32's epsilon (module docstring, docs/gradcheck.md).
    eps, atol, rtol : float or None
        Finite-difference step and pass criterion ``|num - ana| <= atol + rtol |num|``; None: the
        defaults of the inputs' precision (float64: 1e-6, 1e-5, 1e-3).
    mode : {'auto', 'full', 'random', 'jacobian'}
        'full': every element; 'random': ``n_directions`` random directions per input; 'auto':
        'full' up to ``full_threshold`` checked elements in total; 'jacobian': the whole Jacobian,
        refused above ``jacobian_limit`` entries (out.size times the checked elements).
    wrt : int, str or sequence of them, optional
        Indices or names of the inputs to check (default: every float input).
    names : sequence of str, optional
        One name per input for the report (default ``input0``, ...).
    seed : int
        Seed of ``dout`` and of the random directions.
    raise_exception : bool
        Raise :class:`GradcheckError` on failure (default) or only return the report.
    returns_cache : bool
        Calling convention above.
    check_reentrant : bool
        Call ``backward`` twice on the same cache: gradients equal within ``nondet_tol`` (max abs
        difference; exact by default) and the cache unchanged (compared by value with a deep
        snapshot: arrays modified in place, keys removed or added, entries replaced).
    nondet_tol : float
        Tolerance of the reentrancy (and batch) comparisons for a nondeterministic backward.
    check_batch : int or tuple of int, optional
        The inputs that carry the batch on axis 0 (the outputs must carry it on axis 0 too). Each
        sample alone must give that sample's outputs and input gradients, and the per-sample
        gradients of the other (shared) checked inputs must sum to the batched ones.

    Returns
    -------
    GradcheckReport
        One :class:`GradcheckResult` per checked input, ``problems`` and ``checks``.

    Raises
    ------
    GradcheckError
        On failure, unless ``raise_exception=False``.
    TypeError, ValueError
        Bad options, a wrong number of gradients, a Jacobian above ``jacobian_limit``.
    """
    opts = _options(locals())
    report = _gradcheck(forward, backward, inputs, opts, returns_cache=returns_cache)
    return _finish(report, opts)


def gradgradcheck(forward, backward, double_backward, inputs, *, dout=None, **options):
    """Check a double backward against central differences of ``backward`` (in ``dout`` and inputs).

    The checked function is ``(dout, *inputs) -> backward(dout, forward(*inputs)[1])``, whose
    backward is ``double_backward``: gradcheck of that pair, with a random ``ggrads`` (seeded).

    Parameters
    ----------
    forward, backward : callable
        The first-order pair as for :func:`gradcheck` (``returns_cache=True`` convention).
    double_backward : callable
        ``double_backward(ggrads, dout, cache) -> (ddout, *dinputs)``: ``ggrads`` is a tuple with
        one cotangent per input of ``forward`` (the shape of its gradient; None where backward
        returns None); ``ddout`` matches ``dout`` (a tuple for tuple outputs, None for a None
        output) and ``dinputs`` has one entry per input (None for None inputs).
    inputs : tuple of arrays
        As for :func:`gradcheck`.
    dout : array or tuple, optional
        The output gradient at which ``backward`` is differentiated (default: random, from
        ``seed``); it is checked like an input (report row ``dout``, or ``dout[j]``).
    **options
        :func:`gradcheck`'s options except ``returns_cache`` and ``check_batch``; ``wrt`` and
        ``names`` refer to ``inputs`` (``wrt`` may also name ``'dout'``).

    Returns
    -------
    GradcheckReport
        As :func:`gradcheck` (``report.check == 'gradgradcheck'``).
    """
    for name in ('returns_cache', 'check_batch'):
        if name in options:
            raise TypeError(f"gradgradcheck does not take {name} (gradcheck does)")
    _callable(double_backward, 'double_backward')
    opts = _options(dict(options, forward=forward, backward=backward, inputs=inputs))
    return _finish(_second_order(forward, backward, double_backward, inputs, dout, opts), opts)


def jvpcheck(forward, jvp, inputs, *, eps=None, atol=None, rtol=None, mode='auto', n_directions=10,
             full_threshold=2000, jacobian_limit=1_000_000, wrt=None, names=None, seed=0,
             raise_exception=True, check_reentrant=True, nondet_tol=0.0):
    """Check a Jacobian-vector product against central differences of ``forward`` along the tangents.

    Parameters
    ----------
    forward : callable
        ``forward(*inputs) -> (out, cache)``.
    jvp : callable
        ``jvp(tangents, cache) -> output tangent`` (shaped as ``out``: an array, or a tuple with an
        array per float output and None elsewhere). ``tangents`` has one entry per input: an array
        of the input's shape and dtype for float inputs (zeros for the unchecked ones), None for
        None and integer inputs.
    inputs : tuple of arrays
        As for :func:`gradcheck`.
    mode : {'auto', 'full', 'random', 'jacobian'}
        'full' and 'jacobian': one tangent per input element (the whole Jacobian, refused above
        ``jacobian_limit`` entries); 'random': ``n_directions`` random unit tangents per input;
        'auto': 'full' when the checked inputs have at most ``full_threshold`` elements and the
        Jacobian at most ``jacobian_limit`` entries. Every output element is compared.
    **other options
        As for :func:`gradcheck` (``check_reentrant`` calls ``jvp`` twice on the same cache).

    Returns
    -------
    GradcheckReport
        As :func:`gradcheck` (``report.check == 'jvpcheck'``).
    """
    opts = _options(dict(locals(), backward=jvp))
    return _finish(_jvpcheck(forward, jvp, inputs, opts), opts)


def _finish(report, opts):
    flagged = [f'{r.name} ({len(r.nondifferentiable)})' for r in report.results if r.nondifferentiable]
    if flagged:
        warnings.warn(f"{report.check}: non-differentiable points in {', '.join(flagged)}: "
                      + _NONDIFF_HINT, stacklevel=3)
    if opts['raise_exception'] and not report.ok:
        raise GradcheckError(report)
    return report


# -- options -------------------------------------------------------------------------------------
def _options(given):
    """The validated options (a dict) of a check; ``given`` holds the arguments by name."""
    _callable(given['forward'], 'forward')
    _callable(given['backward'], 'jvp' if 'jvp' in given else 'backward')
    unknown = set(given) - _OPTION_NAMES
    if unknown:
        raise TypeError(f"unexpected option(s) {sorted(unknown)}; the options are {sorted(_DEFAULTS)}")
    o = dict(_DEFAULTS, **given)
    mode = o['mode']
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
    o['eps'] = None if o['eps'] is None else real(o['eps'], 'eps', 0, strict_low=True)
    for name in ('atol', 'rtol'):
        o[name] = None if o[name] is None else real(o[name], name, 0)
    if o['atol'] == 0 and o['rtol'] == 0:
        raise ValueError("atol and rtol cannot both be 0 (no point could pass)")
    o['n_directions'] = positive_int(o['n_directions'], 'n_directions')
    o['full_threshold'] = real(o['full_threshold'], 'full_threshold', 0)
    o['jacobian_limit'] = positive_int(o['jacobian_limit'], 'jacobian_limit')
    o['nondet_tol'] = real(o['nondet_tol'], 'nondet_tol', 0)
    for name in ('raise_exception', 'returns_cache', 'check_reentrant'):
        if not isinstance(o[name], (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {o[name]!r}")
    seed = o['seed']
    if not is_int(seed):
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return o


_DEFAULTS = dict(eps=None, atol=None, rtol=None, mode='auto', n_directions=10, full_threshold=2000,
                 jacobian_limit=1_000_000, wrt=None, names=None, seed=0, raise_exception=True,
                 returns_cache=True, check_reentrant=True, nondet_tol=0.0, check_batch=None)
_OPTION_NAMES = set(_DEFAULTS) | {'forward', 'backward', 'inputs', 'jvp'}


def _callable(f, name):
    if not callable(f):
        raise TypeError(f"{name} must be callable, got {type(f).__name__}")


# -- gradcheck -------------------------------------------------------------------------------------
def _gradcheck(forward, backward, inputs, opts, *, returns_cache, check='gradcheck',
               who=('forward', 'backward')):
    """The report of gradcheck (``who`` names the two functions in problem messages)."""
    call, back = _convention(forward, backward, returns_cache)
    impl, dtype = _implementation(inputs)
    names = _input_names(opts['names'], len(impl))
    wrt = _select(opts['wrt'], impl, names)
    batch = _batch_inputs(opts['check_batch'], impl, names)
    rng = np.random.default_rng(opts['seed'])
    problems, checks = [], {}

    out, cache = _forward_once(call, impl, names, who[0], problems)
    _output_dtypes(out, dtype, problems)
    dout, dout64 = _random_douts(out, rng, dtype)
    layout = _Layout(out, dout)
    mode = _gradcheck_mode(opts, impl, wrt, layout)
    grads = _backward_once(back, cache, dout, impl, names, wrt, opts, who[1], problems, checks)
    jacobians = _analytical_jacobians(back, cache, layout, impl, wrt, grads) if mode == 'jacobian' else {}
    diffs, tol = _numerical_side(call, impl, dtype, layout, dout64, opts, names)
    results = []
    for i in wrt:
        result = GradcheckResult(i, names[i], impl[i].shape)
        if isinstance(grads[i], str) or isinstance(jacobians.get(i), str):
            result.message, result.ok = grads[i] if isinstance(grads[i], str) else jacobians[i], False
        else:
            _check_gradient(result, diffs, mode, grads[i], jacobians.get(i), rng, opts['n_directions'], tol)
        results.append(result)
    if batch:
        size = _problem_size(impl, layout)
        found = _batch_consistency(call, back, impl, names, wrt, batch, out, dout, grads,
                                   _batch_tolerance(dtype, size), opts['nondet_tol'])
        checks['batch'] = not found
        problems += found
        tol.note += f'; check_batch: {_batch_note(dtype, size)}'
    return GradcheckReport(results, mode, diffs.eps, tol.atol, tol.rtol, problems, check=check,
                           dtype=str(dtype), differences=diffs.dtype, tolerances=tol.note, checks=checks)


def _backward_once(back, cache, dout, impl, names, wrt, opts, who, problems, checks):
    """Run ``back(dout, cache)`` (twice with check_reentrant); return the checked gradient tuple."""
    snapshot = _freeze(cache) if opts['check_reentrant'] else None
    given, pristine = _copy(dout), _copy(impl)
    raw = back(given, cache)
    changed = _changes(snapshot, _freeze(cache), 'cache') if opts['check_reentrant'] else []
    _check_unchanged(impl, pristine, names, who, problems)
    if not _same(given, dout):
        problems.append(f'{who} mutated dout')
    grads = _grad_tuple(raw, impl, names, wrt, problems, who)
    if opts['check_reentrant']:
        checks['reentrant'] = _reentrant(lambda: back(_copy(dout), cache), cache, raw, snapshot, changed,
                                         names, opts['nondet_tol'], who, problems)
    return grads


def _numerical_side(call, impl, dtype, layout, dout64, opts, names):
    """The finite differences (:class:`_Differences`, in float64 when the forward accepts it) and
    the tolerances they are judged with."""
    xs, differences, why = _difference_inputs(call, impl, dtype)
    eps = opts['eps'] or _default_eps(differences)
    tol = _tolerances(dtype, differences, why, eps, opts['atol'], opts['rtol'], _problem_size(impl, layout))
    return _Differences(call, xs, layout, dout64, eps, names, differences), tol


def _problem_size(impl, layout):
    """``n`` of the float32 tolerances: the elements of the float inputs and outputs."""
    return sum(a.size for a in impl if _is_float(a)) + layout.size


def _convention(forward, backward, returns_cache):
    """``call(arrays) -> (out, cache)`` and ``back(dout, cache) -> grads`` for either convention
    (without a cache, the cache is the tuple of inputs)."""
    if returns_cache:
        return (lambda arrays: forward(*arrays)), backward
    return (lambda arrays: (forward(*arrays), arrays)), (lambda dout, arrays: backward(dout, *arrays))


def _forward_once(call, impl, names, who, problems):
    pristine = _copy(impl)
    out, cache = call(impl)
    _check_unchanged(impl, pristine, names, who, problems)
    return out, cache


def _gradcheck_mode(opts, impl, wrt, layout):
    total = sum(impl[i].size for i in wrt)
    if opts['mode'] == 'auto':
        return 'full' if total <= opts['full_threshold'] else 'random'
    if opts['mode'] == 'jacobian':
        _jacobian_fits(layout.size, total, opts['jacobian_limit'], 'backward')
    return opts['mode']


def _jacobian_fits(rows, columns, limit, who):
    if rows * columns > limit:
        raise ValueError(f"the Jacobian is {rows} x {columns} ({rows * columns} entries: {rows} "
                         f"output elements times {columns} checked input elements), more than "
                         f"jacobian_limit={limit}; use mode='full' or 'random', smaller inputs, or a "
                         f"larger jacobian_limit (it costs one {who} call per "
                         f"{'output' if who == 'backward' else 'input'} element)")


def _analytical_jacobians(back, cache, layout, impl, wrt, grads):
    """``{i: J (out.size, x_i.size)}``, row ``k`` from ``back`` of the one-hot ``dout = e_k``; a
    message string instead when backward fails on a one-hot dout."""
    checked = [i for i in wrt if not isinstance(grads[i], str)]
    jac = {i: np.empty((layout.size, impl[i].size)) for i in checked}
    for k in range(layout.size):
        try:
            g = _as_grads(back(layout.one_hot(k), cache), len(impl))
            for i in checked:
                jac[i][k] = np.asarray(g[i], dtype=np.float64).reshape(-1)
        except Exception as e:  # noqa: BLE001 -- the user's backward: reported, not raised
            return {i: f'backward failed on the one-hot dout of output element {layout.index(k)}: '
                       f'{type(e).__name__}: {e}' for i in checked}
    return jac


def _check_gradient(result, diffs, mode, grad, jacobian, rng, n_directions, tol):
    """Fill ``result`` for input ``result.index`` in ``mode`` (see the module docstring)."""
    i, shape = result.index, result.shape
    g = np.asarray(grad, dtype=np.float64)
    if mode == 'full':
        num, right, left = diffs.elements(i, diffs.scalar)
        ana = g.reshape(-1, 1)
        _judge(result, num, ana, right, left, lambda p, k: _unravel(p, shape), tol)
        result.numerical_array, result.analytical_array = num.reshape(shape), g.copy()
    elif mode == 'random':
        rows, ana = [], []
        for v in _directions(rng, shape, n_directions):
            central, r, l_, v_eff = diffs.direction(i, v, diffs.scalar)
            rows.append((central, r, l_))
            ana.append(float(np.vdot(g, v_eff)))
        num, right, left = (np.array([row[c] for row in rows], dtype=np.float64).reshape(-1, 1)
                            for c in range(3))
        ana = np.array(ana).reshape(-1, 1)
        _judge(result, num, ana, right, left, lambda p, k: p, tol)
        result.numerical_array, result.analytical_array = num[:, 0], ana[:, 0]
    else:
        num, right, left = diffs.elements(i, diffs.vector)              # (x.size, out.size)
        _judge(result, num, jacobian.T, right, left,
               lambda p, k: (diffs.layout.index(k), _unravel(p, shape)), tol)
        result.numerical_array, result.analytical_array = num.T.copy(), jacobian


def _directions(rng, shape, n):
    for _ in range(n):
        v = rng.standard_normal(shape)
        yield v / max(np.linalg.norm(v), 1e-300)


def _unravel(flat, shape):
    return tuple(int(k) for k in np.unravel_index(flat, shape))


# -- gradgradcheck ---------------------------------------------------------------------------------
def _second_order(forward, backward, double_backward, inputs, dout, opts):
    """gradcheck of ``(dout, *inputs) -> backward(dout, cache)`` with ``double_backward`` as its backward."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    impl, _ = _implementation(inputs)
    names = _input_names(opts['names'], len(impl))
    out, _ = forward(*_copy(impl))
    many = isinstance(out, (tuple, list))
    parts = _dout_parts(dout, out, opts['seed'])
    n_d, n_x = len(parts), len(impl)

    def first_order(*arrays):
        d = tuple(arrays[:n_d]) if many else arrays[0]
        _, cache = forward(*arrays[n_d:])
        return _as_grads(backward(d, cache), n_x), (d, cache)

    def second_order(ggrads, state):
        d, cache = state
        result = double_backward(ggrads, d, cache)
        if not isinstance(result, (tuple, list)) or len(result) != 1 + n_x:
            got = f'{len(result)} entries' if isinstance(result, (tuple, list)) else type(result).__name__
            raise ValueError(f"double_backward must return (ddout, *dinputs): {1 + n_x} entries, got {got}")
        ddout = tuple(result[0]) if many and result[0] is not None else (result[0],)
        if len(ddout) != n_d:
            raise ValueError(f"double_backward's ddout must have one entry per output ({n_d}), "
                             f"got {len(ddout)}")
        return ddout + tuple(result[1:])

    d_names = [f'dout[{j}]' for j in range(n_d)] if many else ['dout']
    wrt = _shift_wrt(opts['wrt'], n_x, n_d)
    inner = dict(opts, names=d_names + names, wrt=wrt)
    return _gradcheck(first_order, second_order, parts + impl, inner, returns_cache=True,
                      check='gradgradcheck', who=('forward and backward', 'double_backward'))


def _dout_parts(dout, out, seed):
    """The output gradient as a tuple with one entry per output (random ones from ``seed``)."""
    outs = _outputs(out)
    if dout is None:
        rng = np.random.default_rng((seed, 1))
        return tuple(rng.standard_normal(np.shape(o)).astype(np.asarray(o).dtype) if _is_float(o) else None
                     for o in outs)
    parts = _outputs(dout)
    if len(parts) != len(outs) or isinstance(dout, (tuple, list)) != isinstance(out, (tuple, list)):
        raise ValueError(f"dout must match forward's output: "
                         f"{f'a tuple of {len(outs)}' if isinstance(out, (tuple, list)) else 'an array'}")
    checked = []
    for j, (d, o) in enumerate(zip(parts, outs)):
        if d is None or not _is_float(o):
            checked.append(None)
            continue
        d = np.asarray(d)
        if d.dtype.kind != 'f' or d.shape != np.shape(o):
            raise ValueError(f"dout entry {j} must be a float array of shape {np.shape(o)}, got "
                             f"{d.dtype} {d.shape}")
        checked.append(d.copy())
    return tuple(checked)


def _shift_wrt(wrt, n_x, n_d):
    """gradgradcheck's ``wrt`` (indices into inputs, names) as indices into ``(*dout, *inputs)``."""
    if wrt is None:
        return None
    items = [wrt] if isinstance(wrt, (int, np.integer, str)) else list(wrt)
    shifted = []
    for w in items:
        if isinstance(w, (int, np.integer)) and not isinstance(w, bool):
            if not 0 <= w < n_x:
                raise ValueError(f"wrt entry {w!r} is not an input index < {n_x}")
            w = int(w) + n_d
        shifted.append(w)
    return shifted


# -- jvpcheck --------------------------------------------------------------------------------------
def _jvpcheck(forward, jvp, inputs, opts):
    call, _ = _convention(forward, None, True)
    impl, dtype = _implementation(inputs)
    names = _input_names(opts['names'], len(impl))
    wrt = _select(opts['wrt'], impl, names)
    rng = np.random.default_rng(opts['seed'])
    problems, checks = [], {}

    out, cache = _forward_once(call, impl, names, 'forward', problems)
    _output_dtypes(out, dtype, problems)
    layout = _Layout(out, tuple(o if _is_float(o) else None for o in _outputs(out)))
    mode, total = opts['mode'], sum(impl[i].size for i in wrt)
    if mode == 'auto':
        mode = 'full' if total <= opts['full_threshold'] and layout.size * total <= opts['jacobian_limit'] \
            else 'random'
    elif mode in ('full', 'jacobian'):
        _jacobian_fits(layout.size, total, opts['jacobian_limit'], 'jvp')

    def tangent_out(i, t):
        tangents = tuple(None if not _is_float(a) else t if k == i else np.zeros_like(a)
                         for k, a in enumerate(impl))
        return layout.vector(jvp(tangents, cache), 'jvp')

    first = _first_jvp(jvp, cache, impl, names, wrt, rng, layout, opts, problems, checks)
    diffs, tol = _numerical_side(call, impl, dtype, layout, None, opts, names)
    results = []
    for i in wrt:
        result = GradcheckResult(i, names[i], impl[i].shape)
        if first:
            result.message, result.ok = first, False
        else:
            try:
                _check_tangents(result, diffs, mode, impl[i], partial(tangent_out, i), rng,
                                opts['n_directions'], tol)
            except _BadTangent as e:
                result.message, result.ok = str(e), False
            except Exception as e:  # noqa: BLE001 -- the user's jvp: reported, not raised
                result.message, result.ok = f'jvp raised {type(e).__name__}: {e}', False
        results.append(result)
    return GradcheckReport(results, mode, diffs.eps, tol.atol, tol.rtol, problems, check='jvpcheck',
                           dtype=str(dtype), differences=diffs.dtype, tolerances=tol.note, checks=checks)


def _first_jvp(jvp, cache, impl, names, wrt, rng, layout, opts, problems, checks):
    """Run ``jvp`` on random tangents (twice with check_reentrant); return an error message or ''."""
    tangents = tuple(None if not _is_float(a) else
                     (rng.standard_normal(a.shape).astype(a.dtype) if k in wrt else np.zeros_like(a))
                     for k, a in enumerate(impl))
    snapshot = _freeze(cache) if opts['check_reentrant'] else None
    given, pristine = _copy(tangents), _copy(impl)
    raw = jvp(given, cache)
    changed = _changes(snapshot, _freeze(cache), 'cache') if opts['check_reentrant'] else []
    _check_unchanged(impl, pristine, names, 'jvp', problems)
    if not _same(given, tangents):
        problems.append('jvp mutated its tangents')
    try:
        layout.vector(raw, 'jvp')
    except _BadTangent as e:
        return str(e)
    if opts['check_reentrant']:
        names = [f'output tangent {j}' for j in range(layout.n_outputs)] if layout.many else \
            ['output tangent']
        checks['reentrant'] = _reentrant(lambda: jvp(_copy(tangents), cache), cache, raw, snapshot,
                                         changed, names, opts['nondet_tol'], 'jvp', problems)
    return ''


def _check_tangents(result, diffs, mode, x, tangent_out, rng, n_directions, tol):
    i, shape = result.index, result.shape
    if mode == 'random':
        num, right, left, ana = [], [], [], []
        for v in _directions(rng, shape, n_directions):
            central, r, l_, v_eff = diffs.direction(i, v, diffs.vector)
            num.append(central)
            right.append(r)
            left.append(l_)
            ana.append(tangent_out(v_eff.astype(x.dtype)))
        num, right, left, ana = (np.array(a, dtype=np.float64).reshape(len(a), diffs.layout.size)
                                 for a in (num, right, left, ana))
        _judge(result, num, ana, right, left, lambda p, k: (diffs.layout.index(k), p), tol)
        result.numerical_array, result.analytical_array = num, ana
        return
    num, right, left = diffs.elements(i, diffs.vector)                  # (x.size, out.size)
    ana = np.empty_like(num)
    for p in range(x.size):
        e = np.zeros_like(x)
        e.flat[p] = 1
        ana[p] = tangent_out(e)
    _judge(result, num, ana, right, left, lambda p, k: (diffs.layout.index(k), _unravel(p, shape)), tol)
    result.numerical_array, result.analytical_array = num.T.copy(), ana.T.copy()


class _BadTangent(ValueError):
    """An output tangent of the wrong structure, shape or dtype."""


# -- inputs, outputs and precision -----------------------------------------------------------------
def _implementation(inputs):
    """The inputs as the implementation is run with (copies) and that precision's dtype.

    If every float input is float64 (or wider), every float input becomes a float64 copy (Python
    floats too): float64 check. Otherwise the float inputs keep their dtypes and the check's
    precision is the least precise of them (float32, float16)."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    arrays = tuple(None if a is None else np.array(a) for a in inputs)
    floats = [a.dtype for a in arrays if _is_float(a)]
    low = max(floats, key=lambda d: np.finfo(d).eps, default=np.dtype(np.float64))
    if np.finfo(low).eps <= np.finfo(np.float64).eps:
        return tuple(a.astype(np.float64) if _is_float(a) else a for a in arrays), np.dtype(np.float64)
    return arrays, np.dtype(low)


def _is_float(a):
    return a is not None and np.asarray(a).dtype.kind == 'f'


def _difference_inputs(call, impl, dtype):
    """``(inputs of the finite differences, their precision, why)``: float64 when the forward accepts
    float64 inputs, else the implementation's own dtype."""
    if dtype == np.float64:
        return impl, 'float64', ''
    xs64 = tuple(a.astype(np.float64) if _is_float(a) else a for a in impl)
    try:
        out = call(_copy(xs64))[0]
    except Exception as e:  # noqa: BLE001 -- any refusal of float64 inputs means: difference in dtype
        return _copy(impl), str(dtype), f'the forward raised {type(e).__name__} on float64 inputs'
    narrow = [np.asarray(o).dtype for o in _outputs(out)
              if _is_float(o) and np.asarray(o).dtype != np.float64]
    if narrow:
        return _copy(impl), str(dtype), f'the forward returned {narrow[0]} outputs from float64 inputs'
    return xs64, 'float64', 'the forward accepts float64 inputs'


def _default_eps(differences):
    if differences == 'float64':
        return _FLOAT64_EPS
    return float(np.finfo(np.dtype(differences)).eps ** (1 / 3))


@dataclass
class _Tolerance:
    """The pass and kink tolerances; an ``atol`` of None is ``rtol`` times the largest ``|num|``."""
    atol: object
    rtol: float
    kink_atol: object
    kink_rtol: float
    note: str

    def for_input(self, num):
        finite = np.abs(num[np.isfinite(num)])
        scale = float(finite.max()) if finite.size else 0.0
        atol = self.rtol * scale if self.atol is None else self.atol
        kink_atol = self.kink_rtol * scale if self.kink_atol is None else self.kink_atol
        return atol, self.rtol, kink_atol, self.kink_rtol


def _tolerances(dtype, differences, why, eps, atol, rtol, n):
    """The tolerances of a check in ``dtype`` with differences in ``differences`` (module docstring);
    ``why``: why the differences are in that precision; ``n``: the problem size."""
    if dtype == np.float64:
        a = _FLOAT64_TOL[0] if atol is None else atol
        r = _FLOAT64_TOL[1] if rtol is None else rtol
        source = 'float64 defaults' if atol is None and rtol is None and eps == _FLOAT64_EPS else 'as given'
        return _Tolerance(a, r, a, r, f'float64 implementation, differences in float64, {source} '
                                      f'(eps {eps:g}, atol {a:g}, rtol {r:g})')
    derived, explained = _derived_rtol(dtype, differences, eps, n)
    r = derived if rtol is None else rtol
    if differences == 'float64':        # accurate differences: kinks are judged as in a float64 check
        kink_atol, kink_rtol = _FLOAT64_TOL
        kinks = 'kinks judged with the float64 defaults'
    else:                               # a smooth function's one-sided slopes differ by about eps |f''|
        kink_atol, kink_rtol = None, max(r, _KINK_STEPS * eps)
        kinks = f'a kink when the one-sided slopes differ by more than {_KINK_STEPS} eps of the largest |num|'
    scaled = 'atol = rtol * the largest |num| of each input' if atol is None else f'atol {atol:g} as given'
    note = (f'{dtype} implementation: {explained if rtol is None else f"rtol {r:g} as given"}; '
            f'differences in {differences} ({why}; eps {eps:g}), {kinks}; {scaled}')
    return _Tolerance(atol, r, kink_atol, kink_rtol, note)


def _derived_rtol(dtype, differences, eps, n):
    """``(rtol, its explanation)`` for an implementation in ``dtype`` (machine epsilon ``u``): a sum
    of ``n`` rounded terms is off by about ``sqrt(n) u``; differences in ``dtype`` add the outputs'
    rounding over the step, ``sqrt(n) u / eps``, and the truncation error ``eps^2``."""
    u = float(np.finfo(dtype).eps)
    size = f'n = {n} elements of the float inputs and outputs'
    if differences == 'float64':
        r = _MARGIN * math.sqrt(n) * u
        return r, (f'rtol = {_MARGIN} sqrt(n) eps({dtype}) = {r:.3g}, {size} (a {dtype} sum of n terms '
                   f'is off by about sqrt(n) eps)')
    r = _MARGIN * (math.sqrt(n) * u / eps + eps ** 2)
    return r, (f'rtol = {_MARGIN} (sqrt(n) eps({dtype}) / eps + eps^2) = {r:.3g}, {size} (the {dtype} '
               f'outputs\' rounding over the step plus the truncation error)')


def _batch_tolerance(dtype, n):
    return _BATCH_MARGIN * math.sqrt(n) * float(np.finfo(dtype).eps)


def _batch_note(dtype, n):
    return (f'samples alone agree within {_BATCH_MARGIN} sqrt(n) eps({dtype}) = '
            f'{_batch_tolerance(dtype, n):.3g} of the largest value (plus nondet_tol)')


def _input_names(names, n):
    names = [f'input{i}' for i in range(n)] if names is None else list(names)
    if len(names) != n:
        raise ValueError(f"names must have one entry per input ({n}), got {len(names)}")
    return names


def _select(wrt, xs, names):
    if wrt is None:
        return [i for i, x in enumerate(xs) if _is_float(x)]
    wrt = [wrt] if isinstance(wrt, (int, np.integer, str)) else list(wrt)
    picked = []
    for w in wrt:
        i = names.index(w) if isinstance(w, str) and w in names else w
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < len(xs):
            raise ValueError(f"wrt entry {w!r} is neither an input index < {len(xs)} nor one of {names}")
        if not _is_float(xs[i]):
            raise ValueError(f"wrt: input {names[i]} is {'None' if xs[i] is None else xs[i].dtype} "
                             f"and cannot be checked; only float inputs can")
        picked.append(int(i))
    return picked


def _batch_inputs(check_batch, xs, names):
    """``check_batch`` as a sorted list of input indices, checked (None: no batch check)."""
    if check_batch is None:
        return None
    items = [check_batch] if isinstance(check_batch, (numbers.Integral, np.integer)) else check_batch
    if not isinstance(items, (tuple, list)) or not items:
        raise TypeError(f"check_batch must be None, an input index or a non-empty tuple of input "
                        f"indices, got {check_batch!r}")
    for i in items:
        if not is_int(i):
            raise TypeError(f"check_batch entries must be input indices (ints), got {i!r}")
        if not 0 <= i < len(xs):
            raise ValueError(f"check_batch index {i} is out of range for {len(xs)} inputs")
        if xs[i] is None or xs[i].ndim == 0:
            raise ValueError(f"check_batch: input {names[i]} is {'None' if xs[i] is None else '0-d'} "
                             f"and cannot carry a batch on axis 0")
    if len(set(int(i) for i in items)) != len(items):
        raise ValueError(f"check_batch lists an input twice: {check_batch!r}")
    sizes = {names[i]: xs[i].shape[0] for i in items}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"check_batch: the batched inputs disagree on the batch size (axis 0): {sizes}")
    return sorted(int(i) for i in items)


def _outputs(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _output_dtypes(out, dtype, problems):
    if dtype != np.float64:
        return
    for j, o in enumerate(_outputs(out)):
        if _is_float(o) and np.asarray(o).dtype != np.float64:
            problems.append(f'forward returned output {j} as {np.asarray(o).dtype} from float64 inputs; '
                            f'finite differences need float64 throughout')


def _random_douts(out, rng, dtype):
    """``(dout as given to backward, its float64 parts)``: a random array per float output (in the
    output's dtype for a float32 check, float64 otherwise), None elsewhere."""
    given, exact = [], []
    for o in _outputs(out):
        if not _is_float(o):
            given.append(None)
            exact.append(None)
            continue
        d = rng.standard_normal(np.shape(o))
        d = d if dtype == np.float64 else d.astype(np.asarray(o).dtype)
        given.append(d)
        exact.append(d.astype(np.float64))
    return (tuple(given) if isinstance(out, (tuple, list)) else given[0]), exact


class _Layout:
    """The differentiated outputs (those with a ``dout``) flattened and concatenated: a flat index
    ``k`` into that vector, the output index it stands for, the one-hot ``dout`` of ``k``."""

    def __init__(self, out, dout):
        outs, douts = _outputs(out), _outputs(dout)
        self.many, self.n_outputs = isinstance(out, (tuple, list)), len(outs)
        self.positions = [j for j, d in enumerate(douts) if d is not None]
        self.shapes = [np.shape(outs[j]) for j in self.positions]
        self.dtypes = [np.asarray(douts[j]).dtype for j in self.positions]
        self.offsets = np.cumsum([0] + [int(np.prod(s)) for s in self.shapes])
        self.size = int(self.offsets[-1])

    def index(self, k):
        m = int(np.searchsorted(self.offsets, k, side='right')) - 1
        local = _unravel(k - self.offsets[m], self.shapes[m])
        return (self.positions[m],) + local if self.many else local

    def one_hot(self, k):
        parts = [None] * self.n_outputs
        for m, (j, shape, dtype) in enumerate(zip(self.positions, self.shapes, self.dtypes)):
            parts[j] = np.zeros(shape, dtype)
            if self.offsets[m] <= k < self.offsets[m + 1]:
                parts[j].flat[k - self.offsets[m]] = 1
        return tuple(parts) if self.many else parts[0]

    def vector(self, tangent, who):
        """An output tangent (the structure of ``out``) as the float64 vector of this layout."""
        parts = _outputs(tangent)
        if self.many != isinstance(tangent, (tuple, list)) or len(parts) != self.n_outputs:
            expected = f'a tuple of {self.n_outputs}' if self.many else 'an array'
            raise _BadTangent(f"{who} must return {expected} (the structure of forward's output), got "
                              f"{type(tangent).__name__}")
        pieces = []
        for j, shape, dtype in zip(self.positions, self.shapes, self.dtypes):
            t = parts[j]
            if t is None or np.shape(t) != shape or np.asarray(t).dtype != dtype:
                got = 'None' if t is None else f'{np.asarray(t).dtype} {np.shape(t)}'
                raise _BadTangent(f"{who} returned {got} for output {j}, expected {dtype} {shape}")
            pieces.append(np.asarray(t, dtype=np.float64).ravel())
        return np.concatenate(pieces) if pieces else np.zeros(0)


# -- finite differences ----------------------------------------------------------------------------
class _Differences:
    """Central and one-sided differences of the outputs around ``xs`` (``(central, right, left)``),
    reduced to a scalar with ``dout`` (``scalar``) or kept as the output vector (``vector``)."""

    def __init__(self, call, xs, layout, douts, eps, names, dtype):
        self.call, self.xs, self.layout, self.eps, self.names = call, xs, layout, eps, names
        self.dtype = dtype                                        # 'float64' or the implementation's
        self.douts = None if douts is None else [douts[j] for j in layout.positions]
        self.base = self._outputs(xs)

    def _outputs(self, arrays):   # fresh copies: a forward that mutates its inputs cannot skew later points
        outs = _outputs(self.call(_copy(arrays))[0])
        return [np.asarray(outs[j], dtype=np.float64) for j in self.layout.positions]

    def _at(self, i, xi):
        return self._outputs(self.xs[:i] + (xi,) + self.xs[i + 1:])

    def scalar(self, a, b):       # <a - b, dout>: differencing the outputs first limits roundoff
        return sum(float(np.sum((p - q) * d)) for p, q, d in zip(a, b, self.douts))

    def vector(self, a, b):
        return np.concatenate([(p - q).ravel() for p, q in zip(a, b)]) if a else np.zeros(0)

    def elements(self, i, reduce):
        """Differences along every element of input ``i``: three arrays ``(x.size, entries)``."""
        x = self.xs[i]
        rows = []
        for flat in range(x.size):
            plus, minus = x.copy(), x.copy()
            plus.flat[flat] = x.flat[flat] + self.eps                 # rounded to x's dtype
            minus.flat[flat] = x.flat[flat] - self.eps
            up = float(plus.flat[flat]) - float(x.flat[flat])         # the steps actually taken
            down = float(x.flat[flat]) - float(minus.flat[flat])
            if up <= 0 or down <= 0:
                raise ValueError(f"eps={self.eps:g} is below the resolution of {x.dtype} at "
                                 f"{self.names[i]}{_unravel(flat, x.shape)} = {x.flat[flat]}; "
                                 f"pass a larger eps")
            p, m = self._at(i, plus), self._at(i, minus)
            rows.append((reduce(p, m) / (up + down), reduce(p, self.base) / up, reduce(self.base, m) / down))
        entries = 1 if reduce == self.scalar else self.layout.size
        return tuple(np.array([row[c] for row in rows], dtype=np.float64).reshape(x.size, entries)
                     for c in range(3))

    def direction(self, i, v, reduce):
        """``(central, right, left, v_eff)`` along the unit direction ``v``; ``v_eff`` is the
        direction actually taken (``x +- eps v`` rounded to ``x``'s dtype, over ``2 eps``)."""
        x = self.xs[i]
        plus = np.asarray(x + self.eps * v, dtype=x.dtype)
        minus = np.asarray(x - self.eps * v, dtype=x.dtype)
        v_eff = (plus.astype(np.float64) - minus.astype(np.float64)) / (2 * self.eps)
        p, m = self._at(i, plus), self._at(i, minus)
        e = self.eps
        return reduce(p, m) / (2 * e), reduce(p, self.base) / e, reduce(self.base, m) / e, v_eff


def _judge(result, num, ana, right, left, key, tol):
    """Compare ``num`` with ``ana`` (float64, ``(points, entries)``) and fill ``result``.

    ``key(p, k)`` names entry ``k`` of point ``p`` in the report; ``tol`` is a :class:`_Tolerance`."""
    atol, rtol, kink_atol, kink_rtol = tol.for_input(num)
    result.atol, result.rtol = atol, rtol
    kink = np.abs(right - left) > kink_atol + kink_rtol * np.maximum(np.abs(right), np.abs(left))
    err = np.abs(num - ana)
    bound = atol + rtol * np.abs(num)
    result.n_checked = num.size
    result.nondifferentiable = [key(int(p), int(k)) for p, k in np.argwhere(kink)]
    result.n_nondifferentiable_mismatch = int(np.sum(kink & (err > bound)))
    smooth = ~kink
    if not smooth.any():
        return
    within = np.divide(err, bound, out=np.where(err > 0, np.inf, 0.0), where=bound > 0)   # err / bound
    ratio = np.where(smooth, np.where(np.isnan(err), np.inf, within), -1.0)
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    floor = max(atol / rtol if rtol else 0.0, np.finfo(float).tiny)
    scale = np.maximum(np.maximum(np.abs(num), np.abs(ana)), floor)
    result.max_abs_error = float(err[smooth].max())
    result.max_rel_error = float((err / scale)[smooth].max())
    result.worst_index = key(int(worst[0]), int(worst[1]))
    result.numerical, result.analytical = float(num[worst]), float(ana[worst])
    result.ok = bool(ratio[worst] <= 1.0)


# -- gradients -------------------------------------------------------------------------------------
def _as_grads(grads, n):
    if not isinstance(grads, (tuple, list)) and n == 1:
        return (grads,)
    if not isinstance(grads, (tuple, list)) or len(grads) != n:
        got = f'{len(grads)} gradients' if isinstance(grads, (tuple, list)) else type(grads).__name__
        raise ValueError(f"backward must return a tuple of {n} gradients (one per input of "
                         f"forward, None for None inputs), got {got}")
    return tuple(grads)


def _grad_tuple(grads, xs, names, wrt, problems, who='backward'):
    """One entry per input: the gradient array, None, or (checked inputs) an error message string."""
    try:
        grads = _as_grads(grads, len(xs))
    except ValueError as e:
        raise ValueError(str(e).replace('backward', who, 1)) from None
    checked = []
    for i, (g, x) in enumerate(zip(grads, xs)):
        error = _grad_error(g, x, i in wrt, who)
        if error and i in wrt:
            checked.append(error)
            continue
        if error:
            problems.append(f'gradient of {names[i]}: {error}')
        checked.append(None if g is None else np.asarray(g))
    return checked


def _grad_error(g, x, required, who):
    if x is None:
        return '' if g is None else f'{who} returned a gradient for a None input (expected None)'
    if g is None:
        return f'{who} returned None for a checked input' if required else ''
    g = np.asarray(g)
    if g.shape != x.shape:
        return f'gradient has shape {g.shape}, expected the input shape {x.shape}'
    if x.dtype.kind == 'f' and g.dtype != x.dtype:
        return f'gradient has dtype {g.dtype}, expected {x.dtype} (float dtypes are preserved)'
    return ''


def _copy(tree):
    return tuple(_copy(t) for t in tree) if isinstance(tree, tuple) else \
        (None if tree is None else tree.copy())


def _same(a, b):
    if isinstance(a, tuple):
        return all(_same(p, q) for p, q in zip(a, b))
    return a is None or np.array_equal(a, b, equal_nan=a.dtype.kind == 'f')


def _check_unchanged(xs, pristine, names, who, problems):
    for x, p, name in zip(xs, pristine, names):
        if x is not None and not _same(x, p):
            problems.append(f'{who} mutated its input {name}')
            x[...] = p


# -- reentrancy: a second call on the same cache -------------------------------------------------
def _reentrant(again, cache, first, snapshot, changed, names, nondet_tol, who, problems):
    """Call ``again()`` (the same backward on the same cache, which the first call changed as
    listed in ``changed``); record what differs; return ok."""
    found = []
    if changed:
        found.append(f'{who} modified its cache: ' + _listing(changed))
    try:
        second = again()
    except Exception as e:  # noqa: BLE001 -- the user's function: reported, not raised
        found.append(f'a second {who} on the same cache raised {type(e).__name__}: {e} (a {who} must '
                     f'not consume or modify its cache)')
    else:
        differ = _differences(_outputs(first), _outputs(second), names, nondet_tol)
        if differ:
            cause = 'after the first call modified the cache' if changed else \
                'a nondeterministic result, or state kept outside the cache'
            found.append(f'a second {who} on the same cache returned different values: '
                         f'{_listing(differ)} (max abs difference > nondet_tol={nondet_tol:g}; {cause})')
        if not changed:
            later = _changes(snapshot, _freeze(cache), 'cache')
            if later:
                found.append(f'the second {who} modified its cache: ' + _listing(later))
    problems += [f'check_reentrant: {m}' for m in found]
    return not found


def _listing(items, most=5):
    more = f' (and {len(items) - most} more)' if len(items) > most else ''
    return '; '.join(items[:most]) + more


def _differences(first, second, names, tol):
    """Names (and max abs difference) of the entries of two gradient tuples that differ by > tol."""
    if len(first) != len(second):
        return [f'{len(first)} entries, then {len(second)}']
    found = []
    for k, (a, b) in enumerate(zip(first, second)):
        name = names[k] if k < len(names) else f'entry {k}'
        if a is None or b is None:
            if (a is None) != (b is None):
                found.append(f'{name} (None once, an array once)')
            continue
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            found.append(f'{name} (shape {a.shape}, then {b.shape})')
            continue
        d = _max_change(a, b)
        if d > tol:
            found.append(f'{name} ({d:.3g})')
    return found


def _max_change(a, b):
    """``max |a - b|``, 0 for equal arrays (NaN where both are NaN counts as equal), inf for NaN."""
    if a.size == 0 or np.array_equal(a, b, equal_nan=a.dtype.kind in 'fc' and b.dtype.kind in 'fc'):
        return 0.0
    if a.dtype.kind not in 'fciub' or b.dtype.kind not in 'fciub':
        return math.inf
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(np.max(np.where(np.isnan(d), np.inf, d)))


class _Frozen:
    """A snapshot of one object: ``kind`` ('array', 'value', 'mapping', 'sequence', 'object', 'opaque'),
    the object itself (``ref``) and its contents (arrays copied, containers frozen recursively)."""
    __slots__ = ('kind', 'ref', 'contents')

    def __init__(self, kind, ref, contents):
        self.kind, self.ref, self.contents = kind, ref, contents


_NOT_CONTAINERS = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def _freeze(obj, seen=()):
    """A deep snapshot of ``obj`` to compare by value later (:func:`_changes`)."""
    if isinstance(obj, np.ndarray):
        return _Frozen('array', obj, obj.copy())
    if obj is None or isinstance(obj, (str, bytes, numbers.Number, np.generic)):
        return _Frozen('value', obj, obj)
    if id(obj) in seen or len(seen) > 50 or isinstance(obj, _NOT_CONTAINERS):
        return _Frozen('opaque', obj, None)
    seen = seen + (id(obj),)
    if isinstance(obj, dict):
        return _Frozen('mapping', obj, ({k: _freeze(v, seen) for k, v in obj.items()}, _fields(obj, seen)))
    if isinstance(obj, (list, tuple)):
        return _Frozen('sequence', obj, [_freeze(v, seen) for v in obj])
    attributes = _fields(obj, seen)
    return _Frozen('object', obj, attributes) if attributes else _Frozen('opaque', obj, None)


def _fields(obj, seen):
    """The attributes of a plain object (``vars``, or a dataclass's fields), frozen."""
    if hasattr(obj, '__dict__'):
        items = vars(obj).items()
    elif dataclasses.is_dataclass(obj):
        items = ((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))
    else:
        return {}
    return {k: _freeze(v, seen) for k, v in items}


def _changes(before, after, path):
    """What differs between two snapshots of the same object, as readable lines."""
    if before.kind != after.kind or type(before.ref) is not type(after.ref):
        return [f'{path} replaced by a {type(after.ref).__name__}']
    kind, a, b = before.kind, before.contents, after.contents
    if kind == 'array':
        how = 'modified in place' if before.ref is after.ref else 'replaced'
        if a.shape != b.shape or a.dtype != b.dtype:
            return [f'{path} {how}: {a.dtype} {a.shape} became {b.dtype} {b.shape}']
        d = _max_change(a, b)
        return [f'{path} {how} (max abs change {d:.3g})'] if d > 0 else []
    if kind == 'value':
        same = a is b or (a != a and b != b) or bool(np.all(a == b))
        return [] if same else [f'{path} changed from {a!r} to {b!r}']
    if kind == 'opaque':
        return [] if before.ref is after.ref else [f'{path} replaced']
    if kind == 'sequence':
        if len(a) != len(b):
            return [f'{path} changed length from {len(a)} to {len(b)}']
        return [line for k, (p, q) in enumerate(zip(a, b)) for line in _changes(p, q, f'{path}[{k}]')]
    if kind == 'mapping':
        (items_a, attrs_a), (items_b, attrs_b) = a, b
        return (_keyed(items_a, items_b, path, lambda k: f'{path}[{k!r}]', 'key')
                + _keyed(attrs_a, attrs_b, path, lambda k: f'{path}.{k}', 'attribute'))
    return _keyed(a, b, path, lambda k: f'{path}.{k}', 'attribute')


def _keyed(a, b, path, name, what):
    lines = [f'{path}: {what} {k!r} removed' for k in a if k not in b]
    lines += [f'{path}: {what} {k!r} added' for k in b if k not in a]
    return lines + [line for k in a if k in b for line in _changes(a[k], b[k], name(k))]


# -- batch consistency -----------------------------------------------------------------------------
def _batch_consistency(call, back, xs, names, wrt, batch, out, dout, grads, rel_tol, nondet_tol):
    """Problems found running every sample alone (an empty list: consistent)."""
    n = xs[batch[0]].shape[0]
    outs, douts = _outputs(out), _outputs(dout)
    for j, o in enumerate(outs):
        if _is_float(o) and (np.ndim(o) == 0 or np.shape(o)[0] != n):
            return [f'check_batch: every output must carry the batch ({n} samples) on axis 0; output {j} '
                    f'has shape {np.shape(o)}']
    quantities = [(f'output {j}', None, j) for j, o in enumerate(outs) if _is_float(o)]
    quantities += [(f'gradient of {names[i]}', i, None) for i in wrt if i in batch and _is_array(grads[i])]
    shared = [i for i in wrt if i not in batch and _is_array(grads[i])]
    sums = {i: np.zeros(grads[i].shape) for i in shared}
    worst = {}                                           # quantity -> (excess, difference, bound, sample)
    for s in range(n):
        alone = tuple(None if a is None else (a[s:s + 1] if k in batch else a).copy()
                      for k, a in enumerate(xs))
        try:
            out_s, cache_s = call(alone)
            d_s = tuple(None if d is None else d[s:s + 1] for d in douts)
            grads_s = _as_grads(back(d_s if isinstance(dout, tuple) else d_s[0], cache_s), len(xs))
        except Exception as e:  # noqa: BLE001 -- the user's functions: reported, not raised
            return [f'check_batch: sample {s} alone raised {type(e).__name__}: {e}']
        outs_s = _outputs(out_s)
        for label, i, j in quantities:
            if i is None:
                got, ref = (outs_s[j] if j < len(outs_s) else None), outs[j]
            else:
                got, ref = grads_s[i], grads[i]
            _worst(worst, label, s, got, np.asarray(ref)[s:s + 1], rel_tol, nondet_tol)
        for i in shared:
            if _is_array(grads_s[i]) and np.shape(grads_s[i]) == sums[i].shape:
                sums[i] += np.asarray(grads_s[i], dtype=np.float64)
    found = [f'check_batch: sample {s} alone gives a different {label} than the batch (max abs '
             f'difference {d:.3g}, tolerance {b:.3g})' for label, (_, d, b, s) in worst.items() if d > b]
    for i in shared:
        d, b = _max_change(sums[i], grads[i]), _bound(grads[i], rel_tol, nondet_tol, sums[i])
        if d > b:
            found.append(f'check_batch: the per-sample gradients of {names[i]} do not sum to its batched '
                         f'gradient (max abs difference {d:.3g}, tolerance {b:.3g})')
    if found:
        found.append('check_batch: the implementation couples the samples of a batch (a statistic over '
                     'the batch, an index that crosses samples, a shared accumulator)')
    return found


def _is_array(g):
    return g is not None and not isinstance(g, str)


def _bound(ref, rel_tol, nondet_tol, other):
    scale = max(float(np.max(np.abs(ref), initial=0.0)), float(np.max(np.abs(other), initial=0.0)))
    return rel_tol * scale + nondet_tol


def _worst(worst, label, s, got, ref, rel_tol, nondet_tol):
    if got is None or np.shape(got) != ref.shape:
        d, b = math.inf, 0.0
    else:
        got = np.asarray(got)
        d, b = _max_change(got, ref), _bound(ref, rel_tol, nondet_tol, got)
    excess = d - b
    if label not in worst or excess > worst[label][0]:
        worst[label] = (excess, d, b, s)


# -- layers ----------------------------------------------------------------------------------------
def _as_float64(part):
    """A layer input as checked: float arrays in float64; integer and bool arrays (indices, masks,
    shapes) and None unchanged."""
    if part is None or np.asarray(part).dtype.kind in 'biu':
        return part
    return np.asarray(part, dtype=np.float64)


def gradcheck_layer(layer, x, *, wrt=None, **options):
    """Check ``dx`` and every parameter gradient of a numpyconv layer.

    A layer of another dtype (float32, the default) is checked through a float64 copy of itself
    (:func:`~numpyconv.module.float64_copy`; finite differences need float64), which checks its math,
    not its float32 rounding; the layer itself is then not touched. ``x`` is checked as float64 too.

    The parameters are perturbed in place and restored exactly; every buffer (BatchNorm running
    statistics) is restored after every forward, so all evaluations see the same function; ``grads``
    are restored at the end.

    Parameters
    ----------
    layer : numpyconv.Module
        The layer (or network).
    x : array or tuple of arrays/None
        Its input (OctaveConv2d's ``(x_h, x_l)``).
    wrt : sequence of str, optional
        Report names to check (default all): ``'x'`` (or ``'x[0]'``, ``'x[1]'``) and the parameter
        keys. A KWConv2d's warehouse, which its manager holds, is checked too: as
        ``'warehouse_manager.weights.<id>'`` prefixed by the layer's own key, or under the manager's
        key when ``layer`` holds the manager.
    **options
        As :func:`gradcheck` (``check_batch=(0,)`` checks the batch of a single ``x``).

    Returns
    -------
    GradcheckReport
    """
    if not isinstance(layer, Module):
        raise TypeError(f"layer must be a numpyconv Module (a layer or a network), got "
                        f"{type(layer).__name__}")
    if np.dtype(layer.dtype) != np.float64:
        layer = float64_copy(layer)
    is_tuple = isinstance(x, (tuple, list))
    parts = tuple(_as_float64(p) for p in (x if is_tuple else (x,)))
    x_names = [f'x[{k}]' for k in range(len(parts))] if is_tuple else ['x']
    checked = layer._checked_params()                 # name -> (parameter, gradient)
    keys = list(checked)
    live = {k: p for k, (p, _) in checked.items()}
    live_grads = {k: g for k, (_, g) in checked.items()}
    saved = {k: v.copy() for k, v in live.items()}
    saved_grads = {k: g.copy() for k, g in live_grads.items()}
    saved_buffers = {k: b.copy() for k, b in layer.buffers.items()}

    def restore(arrays, values):
        for k, v in values.items():
            np.copyto(arrays[k], v)

    def forward(*arrays):
        for k, v in zip(keys, arrays[len(parts):]):
            np.copyto(live[k], v)
        try:
            x_in = arrays[:len(parts)]
            return layer.forward(tuple(x_in) if is_tuple else x_in[0]), None
        finally:
            restore(layer.buffers, saved_buffers)

    def backward(dout, _cache):
        for g in live_grads.values():
            g.fill(0)
        dx = layer.backward(dout)
        if is_tuple:
            dx = tuple(dx)
        else:   # a pair layer (OctaveConv2d) given a bare x returns (dx, None)
            dx = dx[:1] if isinstance(dx, tuple) else (dx,)
        return dx + tuple(live_grads[k].copy() for k in keys)

    try:
        return gradcheck(forward, backward, parts + tuple(saved[k] for k in keys),
                         names=x_names + keys, wrt=wrt, **options)
    finally:
        restore(live, saved)
        restore(live_grads, saved_grads)
        restore(layer.buffers, saved_buffers)
