# multi-scale deformable attention
from .msdeformattn import ms_deform_attn, ms_deform_attn_backward  # noqa: F401
