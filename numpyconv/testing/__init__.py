"""Check another implementation of a numpyconv op (a CUDA, Triton, Metal or C++ port) against numpyconv.

``check_against(op, forward, backward)`` runs edge cases and random valid cases, compares the
output and every gradient with numpyconv's, and shrinks each failure to a small case with a
self-contained reproducer; ``strategies`` gives hypothesis strategies of valid arguments for your
own property tests; ``own`` wraps numpyconv's ops as candidates. The command line does the same:
``numpyconv conform OP module:forward [--backward module:backward] [--jobs K]``.
Guide: docs/conformance.md.

Example::

    >>> import numpy as np
    >>> from numpyconv.testing import check_against
    >>> def my_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    ...     return numpyconv_or_your_kernel(...)                       # doctest: +SKIP
    >>> report = check_against('conv2d', my_conv, cases=50)           # doctest: +SKIP
    >>> print(report)                                                  # doctest: +SKIP
"""
from . import own, strategies
from .cases import DEFAULT_TOLERANCES, Case, case_at, make_settings
from .checks import Problem
from .conformance import ConformanceError, ConformanceReport, Failure, check_against
from .ops import OPS, available_ops

__all__ = ['check_against', 'ConformanceError', 'ConformanceReport', 'Failure', 'Problem', 'Case', 'case_at',
           'make_settings', 'DEFAULT_TOLERANCES', 'OPS', 'available_ops', 'own', 'strategies']
