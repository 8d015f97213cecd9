# The dynamic family (DY-CNN, CondConv, ODConv, KernelWarehouse), deformable convolution, DCNv3, DCNv4.
from .condconv import condconv2d, condconv2d_backward  # noqa: F401
from .dcnv3 import dcnv3, dcnv3_backward  # noqa: F401
from .dcnv4 import dcnv4, dcnv4_backward  # noqa: F401
from .deformable import deform_conv2d, deform_conv2d_backward  # noqa: F401
from .dynamic import aggregated_conv2d, aggregated_conv2d_backward  # noqa: F401
from .dynamic import dynamic_conv2d, dynamic_conv2d_backward  # noqa: F401
from .kernel_warehouse import kw_attention, kw_attention_backward, kw_caf, kw_caf_backward  # noqa: F401
from .kernel_warehouse import kw_conv2d, kw_conv2d_backward  # noqa: F401
from .odconv import odconv2d, odconv2d_backward  # noqa: F401
