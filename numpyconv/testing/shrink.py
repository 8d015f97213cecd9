"""Shrinking a failing case: greedy moves of the op's entry, each re-checked on the candidate.

The moves (:mod:`numpyconv.testing.ops`: ``Toward``, ``Each``, ``Simpler``) run in the entry's
order and repeat until none applies or the budget of candidate calls is spent. A move is kept when
the smaller case still shows a problem with the same signature (kind and place: "dmask differs",
"forward raised"); a number moves by binary search between its simplest value and its current one.
Since array values are index-stable (:class:`~numpyconv.testing.arrays.StableRandom`), a smaller
case keeps the values of what it still has.
"""
from . import ops as op_table
from .cases import build_case
from .checks import examine

SHRINK_CALLS = 250       # candidate calls one shrink may make


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
