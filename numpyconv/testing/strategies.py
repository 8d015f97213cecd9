"""Hypothesis strategies of valid arguments for every op of :mod:`numpyconv.testing.ops`.

For your own property tests (hypothesis is optional: this module imports without it, and using a
strategy without it raises ``ImportError`` naming the extra, ``pip install 'numpyconv[test]'``)::

    from hypothesis import given
    from numpyconv.testing import strategies

    @given(strategies.arguments('deform_conv2d', dtype=np.float32))
    def test_my_kernel(call):
        args, kwargs = call                      # as check_against passes them to a candidate
        expected, _ = numpyconv.deform_conv2d_forward(*args, **kwargs)
        np.testing.assert_allclose(my_kernel(*args, **kwargs), expected, rtol=1e-4, atol=1e-5)

The geometry (sizes, kernel, stride, groups, value modes) is drawn with hypothesis, so a failure
shrinks towards the first options of each choice and the smallest sizes; the array values come
from a drawn seed (:class:`~numpyconv.testing.arrays.StableRandom`). ``edge_cases=True`` mixes in
the op's edge cases (docs/conformance.md).
"""
import numpy as np

from . import ops as op_table
from .cases import build_case, make_settings, split_call

TRIES = 20       # geometries drawn before a case is rejected as invalid


def _hypothesis():
    try:
        import hypothesis
        import hypothesis.strategies as st
    except ImportError as exc:
        raise ImportError("numpyconv.testing.strategies needs hypothesis, an optional dependency: "
                          "pip install 'numpyconv[test]' (or pip install hypothesis)") from exc
    return hypothesis, st


class HypothesisDraw:
    """The :class:`~numpyconv.testing.ops.Draw` interface on hypothesis's ``draw``: integers shrink
    to their low end, choices to their first option, chances to False."""

    def __init__(self, draw, st):
        self.draw, self.st = draw, st

    def integer(self, low, high):
        return self.draw(self.st.integers(low, high))

    def choice(self, options):
        return self.draw(self.st.sampled_from(options))

    def chance(self, p):
        return self.draw(self.st.integers(0, 999)) >= 1000 - round(1000 * p)


def geometries(op, *, edge_cases=True):
    """A strategy of geometries of ``op`` (the dicts the op's entry builds its arguments from)."""
    _, st = _hypothesis()
    spec = op_table.get(op)

    @st.composite
    def geometry(draw):
        if edge_cases and draw(st.booleans()):
            return spec.edge_geometry(draw(st.integers(0, len(spec.edge_cases) - 1)))
        return spec.draw(HypothesisDraw(draw, st))
    return geometry()


def cases(op, dtype=np.float64, *, backward=True, edge_cases=True):
    """A strategy of :class:`~numpyconv.testing.Case`: ``kwargs`` (the forward's arguments by name),
    ``expected`` (numpyconv's output), ``dout`` and, with ``backward``, ``expected_grads``."""
    hypothesis, st = _hypothesis()
    op_table.get(op)

    @st.composite
    def case(draw):
        for _ in range(TRIES):
            settings = make_settings(op, dtype, draw(st.integers(0, 2 ** 32 - 1)), edge_cases, None, None,
                                     backward)
            found = build_case(settings, draw(geometries(op, edge_cases=edge_cases)), 0, 'hypothesis')
            if found is not None:
                return found
        hypothesis.reject()
    return case()


def arguments(op, dtype=np.float64, *, edge_cases=True):
    """A strategy of ``(args, kwargs)`` for ``numpyconv.<op>_forward(*args, **kwargs)`` (and for a
    candidate): the parameters without a default in ``args``, the others in ``kwargs``."""
    def call(case):
        args, kwargs = split_call(op, case.kwargs)
        return tuple(args), kwargs
    return cases(op, dtype, backward=False, edge_cases=edge_cases).map(call)
