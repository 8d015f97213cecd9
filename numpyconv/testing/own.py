"""numpyconv's own ops wrapped as candidates: the calling convention of ``check_against``, by example.

``own.<op>`` is ``numpyconv.<op>_forward`` returning only the output, and ``own.<op>_backward``
runs the forward again and returns ``numpyconv.<op>_backward``'s gradients::

    from numpyconv.testing import check_against, own
    check_against('deform_conv2d', own.deform_conv2d, own.deform_conv2d_backward).ok   # True

On the command line: ``numpyconv conform deform_conv2d numpyconv.testing.own:deform_conv2d
--backward numpyconv.testing.own:deform_conv2d_backward``. A kernel of your own is wrapped the same
way (docs/conformance.md).
"""
import functools

import numpyconv


def forward(op):
    """``forward(*args, **kwargs) -> out`` for numpyconv's ``op``."""
    return _wrapper(op, 'forward')


def backward(op):
    """``backward(dout, *args, **kwargs) -> grads`` for numpyconv's ``op``."""
    return _wrapper(op, 'backward')


@functools.lru_cache(maxsize=None)
def _wrapper(op, role):
    fwd = getattr(numpyconv, op + '_forward')
    bwd = getattr(numpyconv, op + '_backward')
    if role == 'forward':
        def call(*args, **kwargs):
            return fwd(*args, **kwargs)[0]
        call.__qualname__ = call.__name__ = op
    else:
        def call(dout, *args, **kwargs):
            return bwd(dout, fwd(*args, **kwargs)[1])
        call.__qualname__ = call.__name__ = op + '_backward'
    call.__module__ = __name__
    call.__doc__ = f"numpyconv.{op}_{role} wrapped as a conformance candidate."
    return call


def __getattr__(name):
    """``own.<op>`` and ``own.<op>_backward`` for every op numpyconv has."""
    if name.endswith('_backward') and hasattr(numpyconv, name[:-len('_backward')] + '_forward'):
        return backward(name[:-len('_backward')])
    if not name.startswith('_') and hasattr(numpyconv, name + '_forward'):
        return forward(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
