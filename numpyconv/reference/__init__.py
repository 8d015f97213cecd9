"""Plain-loop definitions of every op and its gradients: slow, obvious, the thing to read first.

``numpyconv.reference.<op>(*forward_args, **forward_kwargs)`` is the definition of the output of
``numpyconv.<op>_forward`` (its first element); ``numpyconv.reference.<op>_backward(dout,
*forward_args, **forward_kwargs)`` returns the tuple ``numpyconv.<op>_backward(dout, cache)``
returns: one gradient per array input of forward, in forward's order, each of its input's shape and
dtype (None for an input given as None, and for cross_entropy's integer labels). Both take the fast
op's arguments, with its names, order and defaults; ``dout`` has the shape of the output (a pair for
octave, a scalar for cross_entropy). A forward's docstring names its equation; the backward loops
cite, line by line, the equation of docs/derivations/<technique>.md each line implements. NumPy
arrays, Python loops and ``math`` only: no module here calls a fast op, so the two are independent
definitions.

Example::

    >>> import numpy as np
    >>> from numpyconv import reference
    >>> x, w = np.ones((1, 2, 4, 4)), np.ones((2, 1, 3, 3))
    >>> y = reference.conv2d(x, w, stride=2, groups=2)
    >>> dx, dw, db = reference.conv2d_backward(np.ones_like(y), x, w, stride=2, groups=2)
    >>> y.shape, float(dw[0, 0, 0, 0]), db
    ((1, 2, 1, 1), 1.0, None)
"""
# -- building blocks (reference/blocks.py) -----------------------------------------------------
from .blocks import (  # noqa: F401 (re-exported)
    batch_norm, batch_norm_backward, cross_entropy, cross_entropy_backward, gelu, gelu_backward,
    global_avg_pool2d, global_avg_pool2d_backward, layer_norm, layer_norm_backward, linear,
    linear_backward, relu, relu_backward, sigmoid, sigmoid_backward, softmax, softmax_backward)

# -- conv family (reference/conv.py) -------------------------------------------------------------
from .conv import (  # noqa: F401 (re-exported)
    conv2d, conv2d_backward, depthwise_conv2d, depthwise_conv2d_backward, pointwise_conv2d,
    pointwise_conv2d_backward, separable_conv2d, separable_conv2d_backward)

# -- octave convolution (reference/octave.py) ----------------------------------------------------
from .octave import octave_conv2d, octave_conv2d_backward  # noqa: F401 (re-exported)

# -- involution (reference/involution.py) --------------------------------------------------------
from .involution import involution, involution_backward  # noqa: F401 (re-exported)

# -- the dynamic family: DY-CNN, CondConv, ODConv, KernelWarehouse -------------------------------
from .condconv import condconv2d, condconv2d_backward  # noqa: F401
from .dynamic import aggregated_conv2d, aggregated_conv2d_backward  # noqa: F401
from .dynamic import dynamic_conv2d, dynamic_conv2d_backward  # noqa: F401
from .kernel_warehouse import kw_attention, kw_attention_backward, kw_caf, kw_caf_backward  # noqa: F401
from .kernel_warehouse import kw_conv2d, kw_conv2d_backward  # noqa: F401
from .odconv import odconv2d, odconv2d_backward  # noqa: F401

# -- deformable convolution v1/v2, DCNv3, DCNv4 --------------------------------------------------
from .deformable import deform_conv2d, deform_conv2d_backward  # noqa: F401
from .dcnv3 import dcnv3, dcnv3_backward  # noqa: F401
from .dcnv4 import dcnv4, dcnv4_backward  # noqa: F401

# -- pooling, upsampling, transposed convolution, dropout, activations (the newer layers) ----------
from .activations import (hardsigmoid, hardsigmoid_backward, hardswish, hardswish_backward, relu6,  # noqa: F401
                          relu6_backward, silu, silu_backward)  # noqa: F401
from .conv_transpose import conv_transpose2d, conv_transpose2d_backward  # noqa: F401
from .dropout import (drop_path, drop_path_backward, dropout, dropout2d, dropout2d_backward,  # noqa: F401
                      dropout_backward)  # noqa: F401
from .pooling import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, adaptive_max_pool2d,  # noqa: F401
                      adaptive_max_pool2d_backward, avg_pool2d, avg_pool2d_backward, max_pool2d,  # noqa: F401
                      max_pool2d_backward)  # noqa: F401
from .upsample import (upsample_bilinear2d, upsample_bilinear2d_backward, upsample_nearest2d,  # noqa: F401
                       upsample_nearest2d_backward)  # noqa: F401

# -- multi-scale deformable attention (reference/msdeformattn.py) -------------------------------
from .msdeformattn import ms_deform_attn, ms_deform_attn_backward  # noqa: F401
