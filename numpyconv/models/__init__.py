"""The official networks of the techniques, whole: builders named as the official functions (see each
module and docs/models.md)."""
from .resnet import resnet18, resnet50  # noqa: F401
from .od_resnet import od_resnet18, od_resnet50  # noqa: F401
from .kw_resnet import kw_resnet18, kw_resnet50  # noqa: F401
from .dy_resnet import dy_resnet18  # noqa: F401
from .oct_resnet import oct_resnet26, oct_resnet50  # noqa: F401
from .resnet_dcn import resnet50_dcnv2  # noqa: F401
from .rednet import rednet26, rednet38, rednet50  # noqa: F401
from .mobilenetv2 import cond_mobilenetv2, od_mobilenetv2  # noqa: F401
from .intern_image import flash_internimage_t, internimage_t  # noqa: F401
from ._common import set_masks  # noqa: F401
