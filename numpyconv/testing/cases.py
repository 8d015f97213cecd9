"""The cases of a conformance run: settings, geometries, arrays and numpyconv's answers.

Case ``i`` of a run depends on the settings (op, dtype, seed, edge cases on or off) and on ``i``
only: the edge cases of the op come first, then random geometries drawn from
``numpy.random.default_rng([seed, i, 0])``; the arrays of a geometry come from
:class:`~numpyconv.testing.arrays.StableRandom` keyed by ``(seed, i)``. A geometry numpyconv's
forward rejects is no case (:func:`build_case` returns None).
"""
import math
from dataclasses import dataclass

import numpy as np

from . import ops as op_table
from .arrays import StableRandom, dout_like

DEFAULT_TOLERANCES = {'float64': (1e-7, 1e-9), 'float32': (1e-4, 1e-5)}
MAX_DRAWS = 200          # random geometries tried for one case before giving up


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


def copy_value(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, tuple):
        return tuple(copy_value(v) for v in value)
    return value
