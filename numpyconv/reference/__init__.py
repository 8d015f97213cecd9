# -- pooling, upsampling, transposed convolution, dropout, activations (the newer layers) ----------
# avg_pool2d and upsample_nearest2d here take the full PyTorch signatures (a superset of the
# minimal ones of .blocks), so they are imported after any import of those from .blocks.
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
