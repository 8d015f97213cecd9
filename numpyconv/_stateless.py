"""The base of the parameter-free layers: one functional pair around a fixed configuration.

A parameter-free layer has no parameters, no buffers and an empty state_dict (as its
``torch.nn`` counterpart); it accepts float32 and float64 input whatever its ``dtype`` (the output
keeps the input's dtype) and counts 0 multiply-adds, as the papers count element-wise work.
"""
import numpy as np

from .module import Module


class Stateless(Module):
    """A layer without parameters around one functional pair.

    Subclasses set ``_forward_fn`` / ``_backward_fn`` (the pair) or override :meth:`_op_forward`
    (to pass the layer's hyper-parameters); :meth:`backward` returns the first gradient.
    """
    _forward_fn = _backward_fn = None

    def _op_forward(self, x):
        return type(self)._forward_fn(x)

    def forward(self, x):
        y, self._cache = self._op_forward(x)
        return y

    def backward(self, dout):
        return type(self)._backward_fn(dout, self._cache)[0]

    def macs(self, input_shape):
        return 0, self._check_input_shape(input_shape, ranks=None, hint="a tuple of sizes >= 0")


def inplace_flag(inplace):
    """Check the ``inplace`` argument of the ``torch.nn`` constructors (ReLU, Dropout, ...).

    numpyconv never modifies an input, so ``inplace=True`` gives the same values in a new array
    (PyTorch's in-place variant only saves memory).
    """
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    return bool(inplace)
