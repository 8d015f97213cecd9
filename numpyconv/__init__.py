"""numpyconv: modern convolutions in pure NumPy, every backward pass derived by hand.

Every op is a pair ``out, cache = <op>_forward(...)`` / ``grads = <op>_backward(dout, cache)``;
every layer has ``forward``/``backward``/``params``/``grads``/``state_dict``. See README.md.
"""
from .im2col import (col2im, column_budget, conv_output_size, im2col, set_column_budget)
from .module import Module, Sequential, count
from .conv import (Conv2d, DepthwiseConv2d, PointwiseConv2d, SeparableConv2d, conv2d_backward,
                   conv2d_forward, conv_geometry, depthwise_conv2d_backward,
                   depthwise_conv2d_forward, pointwise_conv2d_backward, pointwise_conv2d_forward,
                   separable_conv2d_backward, separable_conv2d_forward)

# -- techniques register below, one import line each ------------------------------------------
from .gradcheck import GradcheckError, GradcheckReport, gradcheck, gradcheck_layer

__version__ = '0.1.0'
