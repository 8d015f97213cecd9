"""numpyconv: modern convolutions in pure NumPy, every backward pass derived by hand.

Every op is a pair ``out, cache = <op>_forward(...)`` / ``grads = <op>_backward(dout, cache)``;
every layer has ``forward``/``backward``/``params``/``grads``/``state_dict``. See README.md.
"""
from .im2col import col2im, conv_output_size, im2col
from .memory import column_budget, set_column_budget
from .winograd import set_winograd, winograd_mode
from .module import Module, Sequential, count, no_grad
from .conv import (Conv2d, DepthwiseConv2d, PointwiseConv2d, SeparableConv2d, conv2d_backward,
                   conv2d_forward, conv_geometry, depthwise_conv2d_backward,
                   depthwise_conv2d_forward, pointwise_conv2d_backward, pointwise_conv2d_forward,
                   separable_conv2d_backward, separable_conv2d_forward)

# -- techniques register below, one import line each ------------------------------------------
from .gradcheck import GradcheckError, GradcheckReport, gradcheck, gradcheck_layer, gradgradcheck, jvpcheck
from .octave import OctaveConv2d, octave_conv2d_backward, octave_conv2d_forward
from .dynamic import (DynamicConv2d, aggregated_conv2d_backward, aggregated_conv2d_forward,
                      dynamic_conv2d_backward, dynamic_conv2d_forward, dynamic_temperature)
from .condconv import CondConv2d, condconv2d_backward, condconv2d_forward
from .blocks import (batch_norm_backward, batch_norm_forward, cross_entropy_backward, cross_entropy_forward,
                     layer_norm_backward, layer_norm_forward, linear_backward, linear_forward)
from .layers import BatchNorm1d, BatchNorm2d, Flatten, LayerNorm, Linear
from .activations import (GELU, Hardsigmoid, Hardswish, Identity, ReLU, ReLU6, Sigmoid, SiLU, Softmax,
                          gelu_backward, gelu_forward, hardsigmoid_backward, hardsigmoid_forward,
                          hardswish_backward, hardswish_forward, relu6_backward, relu6_forward, relu_backward,
                          relu_forward, sigmoid_backward, sigmoid_forward, silu_backward, silu_forward,
                          softmax_backward, softmax_forward)
from .pooling import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, GlobalAvgPool2d, MaxPool2d,
                      adaptive_avg_pool2d_backward, adaptive_avg_pool2d_forward, adaptive_max_pool2d_backward,
                      adaptive_max_pool2d_forward, avg_pool2d_backward, avg_pool2d_forward,
                      global_avg_pool2d_backward, global_avg_pool2d_forward, max_pool2d_backward,
                      max_pool2d_forward)
from .upsample import (Upsample, upsample_bilinear2d_backward, upsample_bilinear2d_forward,
                       upsample_nearest2d_backward, upsample_nearest2d_forward)
from .conv_transpose import ConvTranspose2d, conv_transpose2d_backward, conv_transpose2d_forward
from .dropout import (DropPath, Dropout, Dropout2d, drop_path_backward, drop_path_forward, dropout2d_backward,
                      dropout2d_forward, dropout_backward, dropout_forward)
from .optim import SGD, Adam
from .deformable import (DeformConv2d, ModulatedDeformConv2d, deform_conv2d_backward,
                         deform_conv2d_forward)
from .odconv import ODConv2d, odconv2d_backward, odconv2d_forward, odconv_temperature
from .involution import Involution2d, involution_backward, involution_forward
from .kernel_warehouse import (KWConv2d, WarehouseManager, kw_attention_backward, kw_attention_forward,
                               kw_caf_backward, kw_caf_forward, kw_conv2d_backward, kw_conv2d_forward,
                               kw_count, kw_temperature)
from .dcnv3 import DCNv3, dcnv3_backward, dcnv3_forward
from .dcnv4 import DCNv4, dcnv4_backward, dcnv4_forward, pack_offset_mask, unpack_offset_mask
from .checkpoint import UnsafeCheckpointError, load_checkpoint, save_checkpoint, state_dict_of
from .msdeformattn import MSDeformAttn, ms_deform_attn_backward, ms_deform_attn_forward
from .sampling import sampling_locations

__version__ = '0.1.0'
