"""The official networks, whole: builders named as the official functions (see each module)."""
from .mobilenetv2 import cond_mobilenetv2, od_mobilenetv2  # noqa: F401
from .intern_image import flash_internimage_t, internimage_t  # noqa: F401
