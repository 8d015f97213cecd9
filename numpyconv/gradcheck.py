"""Gradient checking: compare a hand-written backward with finite differences in float64.

Works for any forward/backward pair, numpyconv's or your own (see docs/gradcheck.md)::

    report = gradcheck(forward, backward, (x, w))   # forward(*inputs) -> (out, cache)
                                                    # backward(dout, cache) -> (dx, dw)

The scalar checked is ``L(inputs) = sum_j <out_j, dout_j>`` with a fixed random ``dout`` (seeded),
so ``dL/dx`` is exactly what ``backward(dout, cache)`` must return.

* ``mode='full'``: for every element ``i`` of every checked input, the central difference
  ``num_i = (L(x + eps e_i) - L(x - eps e_i)) / 2 eps`` against ``ana_i = grad[i]``;
* ``mode='random'``: for ``n_directions`` random unit directions ``v`` per checked input, the
  directional derivative ``(L(x + eps v) - L(x - eps v)) / 2 eps`` against ``<grad, v>``
  (cost independent of the input size); ``'auto'`` is ``'full'`` up to ``full_threshold`` elements.

A point passes when ``|num - ana| <= atol + rtol * |num|``. Differences are taken on the outputs
before the inner product with ``dout`` (``<out(x+eps v) - out(x-eps v), dout>``), which keeps the
roundoff per element instead of proportional to the whole loss. A point where the one-sided
differences ``<out(x+eps v) - out(x), dout> / eps`` and ``<out(x) - out(x-eps v), dout> / eps``
disagree by more than ``atol + rtol * max(|forward|, |backward|)`` lies on (or within eps of) a kink
(relu at 0, a max tie, an integer bilinear coordinate): it is listed as non-differentiable, excluded
from pass/fail, and a warning is issued.
"""
import warnings
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ._checks import positive_int, real as _real
from .module import float64_copy


class GradcheckError(AssertionError):
    """Raised by a failed check; ``.report`` is the :class:`GradcheckReport`, the message its table."""

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report


@dataclass
class GradcheckResult:
    """The check of one input (at its worst point: largest ``|num - ana| / (atol + rtol |num|)``)."""
    index: int
    name: str
    shape: tuple
    n_checked: int = 0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0   # |num - ana| / max(|num|, |ana|, atol / rtol)
    worst_index: object = None   # index tuple ('full') or direction number ('random')
    numerical: float = float('nan')
    analytical: float = float('nan')
    nondifferentiable: list = field(default_factory=list)
    n_nondifferentiable_mismatch: int = 0   # flagged points where central difference != analytical
    message: str = ''
    ok: bool = True


@dataclass
class GradcheckReport:
    """``results``: one :class:`GradcheckResult` per checked input; ``problems``: whole-call failures."""
    results: list
    mode: str
    eps: float
    atol: float
    rtol: float
    problems: list = field(default_factory=list)

    @property
    def ok(self):
        return not self.problems and all(r.ok for r in self.results)

    def __str__(self):
        head = (f"gradcheck {'passed' if self.ok else 'FAILED'} (mode={self.mode}, eps={self.eps:g}; "
                f"a point passes if |num - ana| <= {self.atol:g} + {self.rtol:g} * |num|)")
        rows = [('input', 'shape', 'checked', 'max abs err', 'max rel err', 'worst at',
                 'numerical', 'analytical', 'result')]
        for r in self.results:
            at = f'dir {r.worst_index}' if self.mode == 'random' and r.worst_index is not None \
                else str(r.worst_index)
            rows.append((r.name, str(r.shape), str(r.n_checked), f'{r.max_abs_error:.3e}',
                         f'{r.max_rel_error:.3e}', at, f'{r.numerical:.6g}', f'{r.analytical:.6g}',
                         'ok' if r.ok else 'FAIL'))
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        lines = [head] + ['  '.join(s.ljust(w) for s, w in zip(row, widths)).rstrip() for row in rows]
        lines += [f'{r.name}: {r.message}' for r in self.results if r.message]
        lines += [f'problem: {p}' for p in self.problems]
        for r in self.results:
            if r.nondifferentiable:
                lines.append(f'{r.name}: {len(r.nondifferentiable)} non-differentiable point(s) '
                             f'({r.n_nondifferentiable_mismatch} of them disagree with the analytical '
                             f'gradient), e.g. {r.nondifferentiable[:5]}: ' + _NONDIFF_HINT)
        return '\n'.join(lines)


_NONDIFF_HINT = ("one-sided differences disagree (a kink such as relu at 0, a max tie, an integer "
                 "bilinear coordinate); excluded from pass/fail. Move the point away from the kink "
                 "(other random inputs or seed) to check the gradient there.")


def gradcheck(forward, backward, inputs, *, eps=1e-6, atol=1e-5, rtol=1e-3, mode='auto',
              n_directions=10, full_threshold=2000, wrt=None, names=None, seed=0,
              raise_exception=True, returns_cache=True):
    """Check ``backward`` against central finite differences of ``forward``; return a report.

    ``inputs``: tuple of arrays (or None, skipped). Float inputs are checked as float64 copies;
    other dtypes (integer labels) are passed unchanged and never checked. By default
    ``forward(*inputs) -> (out, cache)`` and ``backward(dout, cache) -> grads``; with
    ``returns_cache=False``, ``forward(*inputs) -> out`` and ``backward(dout, *inputs) -> grads``.
    ``out`` is an array or a tuple of arrays/None (then ``dout`` is a matching tuple). ``grads`` has
    one entry per input (None for None inputs; may be None for unchecked ones); a bare array is
    accepted for a single input. ``wrt``: indices or names of the inputs to check (default: every
    float input). ``names``: one name per input for the report (default ``input0``, ...).
    Raises :class:`GradcheckError` on failure unless ``raise_exception=False``; raises
    ``ValueError`` for a wrong number of gradients or bad options.
    """
    if mode not in ('auto', 'full', 'random'):
        raise ValueError(f"mode must be 'auto', 'full' or 'random', got {mode!r}")
    eps, atol, rtol = _real(eps, 'eps', 0, strict_low=True), _real(atol, 'atol', 0), _real(rtol, 'rtol', 0)
    if atol == rtol == 0:
        raise ValueError("atol and rtol cannot both be 0 (no point could pass)")
    n_directions = positive_int(n_directions, 'n_directions')
    full_threshold = _real(full_threshold, 'full_threshold', 0)
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    xs = tuple(None if a is None else _working_copy(a) for a in inputs)
    names = _input_names(names, len(xs))
    wrt = _select(wrt, xs, names)
    rng = np.random.default_rng(seed)

    def call(arrays):
        result = forward(*arrays)
        return result if returns_cache else (result, None)

    problems = []
    dout, grads = _analytical(call, backward, xs, names, rng, returns_cache, problems)
    grads = _grad_tuple(grads, xs, names, wrt, problems)
    probe = _make_probe(call, xs, dout, eps)
    if mode == 'auto':
        mode = 'full' if sum(xs[i].size for i in wrt) <= full_threshold else 'random'
    results = []
    for i in wrt:
        result = GradcheckResult(i, names[i], xs[i].shape)
        if isinstance(grads[i], str):
            result.message, result.ok = grads[i], False
        else:
            pick = _basis if mode == 'full' else _random_directions(rng, n_directions)
            _compare(result, partial(probe, i), xs[i].shape, grads[i], pick, atol, rtol, mode)
        results.append(result)
    report = GradcheckReport(results, mode, eps, atol, rtol, problems)
    flagged = [f'{r.name} ({len(r.nondifferentiable)})' for r in results if r.nondifferentiable]
    if flagged:
        warnings.warn(f"gradcheck: non-differentiable points in {', '.join(flagged)}: " + _NONDIFF_HINT,
                      stacklevel=2)
    if raise_exception and not report.ok:
        raise GradcheckError(report)
    return report


def _analytical(call, backward, xs, names, rng, returns_cache, problems):
    """Run forward and backward once; return ``(dout, raw grads)``; record any mutation."""
    pristine = _copy(xs)
    out, cache = call(xs)
    dout = _random_like(out, rng, problems)
    _check_unchanged(xs, pristine, names, 'forward', problems)
    given = _copy(dout)
    grads = backward(given, cache) if returns_cache else backward(given, *xs)
    _check_unchanged(xs, pristine, names, 'backward', problems)
    if not _same(given, dout):
        problems.append('backward mutated dout')
    return dout, grads


def _make_probe(call, xs, dout, eps):
    """``probe(i, v) -> (central, forward one-sided, backward one-sided)`` derivative of L along v."""
    douts = _outputs(dout)

    def evaluate(arrays):  # fresh copies: a forward that mutates its inputs cannot skew later points
        return [None if d is None else np.asarray(o, dtype=np.float64)
                for o, d in zip(_outputs(call(_copy(arrays))[0]), douts)]

    def slope(a, b, step):  # <a - b, dout> / step; differencing the outputs first limits roundoff
        return sum(float(np.sum((p - q) * d)) for p, q, d in zip(a, b, douts) if d is not None) / step

    base = evaluate(xs)

    def probe(i, v):
        plus = evaluate(xs[:i] + (xs[i] + eps * v,) + xs[i + 1:])
        minus = evaluate(xs[:i] + (xs[i] - eps * v,) + xs[i + 1:])
        return slope(plus, minus, 2 * eps), slope(plus, base, eps), slope(base, minus, eps)
    return probe


def _working_copy(a):
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == 'f' else a.copy()


def _input_names(names, n):
    names = [f'input{i}' for i in range(n)] if names is None else list(names)
    if len(names) != n:
        raise ValueError(f"names must have one entry per input ({n}), got {len(names)}")
    return names


def _select(wrt, xs, names):
    if wrt is None:
        return [i for i, x in enumerate(xs) if x is not None and x.dtype == np.float64]
    wrt = [wrt] if isinstance(wrt, (int, np.integer, str)) else list(wrt)
    picked = []
    for w in wrt:
        i = names.index(w) if isinstance(w, str) and w in names else w
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < len(xs):
            raise ValueError(f"wrt entry {w!r} is neither an input index < {len(xs)} nor one of {names}")
        if xs[i] is None or xs[i].dtype != np.float64:
            raise ValueError(f"wrt: input {names[i]} is {'None' if xs[i] is None else xs[i].dtype} "
                             f"and cannot be checked; only float inputs can")
        picked.append(int(i))
    return picked


def _outputs(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _random_like(out, rng, problems):
    douts = []
    for j, o in enumerate(_outputs(out)):
        o = None if o is None else np.asarray(o)
        if o is not None and o.dtype.kind == 'f' and o.dtype != np.float64:
            problems.append(f'forward returned output {j} as {o.dtype} from float64 inputs; finite '
                            f'differences need float64 throughout')
        douts.append(None if o is None or o.dtype.kind != 'f' else rng.standard_normal(o.shape))
    return tuple(douts) if isinstance(out, (tuple, list)) else douts[0]


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


def _grad_tuple(grads, xs, names, wrt, problems):
    """One entry per input: the gradient array, None, or (checked inputs) an error message string."""
    if not isinstance(grads, (tuple, list)) and len(xs) == 1:
        grads = (grads,)
    if not isinstance(grads, (tuple, list)) or len(grads) != len(xs):
        got = f'{len(grads)} gradients' if isinstance(grads, (tuple, list)) else type(grads).__name__
        raise ValueError(f"backward must return a tuple of {len(xs)} gradients (one per input of "
                         f"forward, None for None inputs), got {got}")
    checked = []
    for i, (g, x) in enumerate(zip(grads, xs)):
        error = _grad_error(g, x, i in wrt)
        if error and i in wrt:
            checked.append(error)
            continue
        if error:
            problems.append(f'gradient of {names[i]}: {error}')
        checked.append(None if g is None else np.asarray(g))
    return checked


def _grad_error(g, x, required):
    if x is None:
        return '' if g is None else 'backward returned a gradient for a None input (expected None)'
    if g is None:
        return 'backward returned None for a checked input' if required else ''
    g = np.asarray(g)
    if g.shape != x.shape:
        return f'gradient has shape {g.shape}, expected the input shape {x.shape}'
    if x.dtype.kind == 'f' and g.dtype != x.dtype:
        return f'gradient has dtype {g.dtype}, expected {x.dtype} (float dtypes are preserved)'
    return ''


def _basis(shape):
    """Yield ``(index tuple, unit vector)`` for every element ('full' mode)."""
    for flat in range(int(np.prod(shape))):
        e = np.zeros(shape)
        e.flat[flat] = 1.0
        yield np.unravel_index(flat, shape), e


def _random_directions(rng, n):
    def pick(shape):
        for k in range(n):
            v = rng.standard_normal(shape)
            yield k, v / max(np.linalg.norm(v), 1e-300)
    return pick


def _compare(result, probe, shape, grad, directions, atol, rtol, mode):
    """Fill ``result`` from central and one-sided differences along ``directions(shape)``."""
    keys, num, ana, jump, slope = [], [], [], [], []
    for key, v in directions(shape):
        central, right, left = probe(v)
        keys.append(tuple(int(k) for k in key) if mode == 'full' else key)
        num.append(central)
        ana.append(float(np.vdot(grad, v)))
        jump.append(abs(right - left))
        slope.append(max(abs(right), abs(left)))
    num, ana, jump = np.array(num), np.array(ana), np.array(jump)
    kink = jump > atol + rtol * np.array(slope)
    smooth = ~kink
    err = np.abs(num - ana)
    result.n_checked = len(keys)
    result.nondifferentiable = [k for k, flagged in zip(keys, kink) if flagged]
    result.n_nondifferentiable_mismatch = int(np.sum(kink & (err > atol + rtol * np.abs(num))))
    if not smooth.any():
        return
    tol = atol + rtol * np.abs(num)
    within = np.divide(err, tol, out=np.where(err > 0, np.inf, 0.0), where=tol > 0)   # err / tol
    ratio = np.where(smooth, within, -1.0)
    worst = int(np.argmax(ratio))
    floor = max(atol / rtol if rtol else 0.0, np.finfo(float).tiny)
    scale = np.maximum(np.maximum(np.abs(num), np.abs(ana)), floor)
    result.max_abs_error = float(err[smooth].max())
    result.max_rel_error = float((err / scale)[smooth].max())
    result.worst_index, result.numerical, result.analytical = keys[worst], num[worst], ana[worst]
    result.ok = bool(ratio[worst] <= 1.0)


def gradcheck_layer(layer, x, *, wrt=None, **options):
    """Check ``dx`` and every parameter gradient of a numpyconv layer.

    A layer of another dtype (float32, the default) is checked through a float64 copy of itself
    (:func:`~numpyconv.module.float64_copy`; finite differences need float64), which checks its math,
    not its float32 rounding; the layer itself is then not touched.

    ``x`` is an array or a tuple of arrays/None (OctaveConv2d's ``(x_h, x_l)``); report names are
    ``'x'`` (or ``'x[0]'``, ``'x[1]'``) and the parameter keys. A KWConv2d's warehouse, which its
    manager holds, is checked too: as ``'warehouse_manager.weights.<id>'`` prefixed by the layer's
    own key, or under the manager's key when ``layer`` holds the manager. The parameters are
    perturbed in place and restored exactly; every buffer (BatchNorm running statistics) is restored
    after every forward, so all evaluations see the same function; ``grads`` are restored at the end.
    ``wrt``: names to check (default all); other options as :func:`gradcheck`.
    """
    if np.dtype(layer.dtype) != np.float64:
        layer = float64_copy(layer)
    is_tuple = isinstance(x, (tuple, list))
    parts = tuple(x) if is_tuple else (x,)
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
