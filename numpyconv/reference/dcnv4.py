"""Plain-loop definition of the DCNv4 core op (FlashInternImage), forward and backward.

DCNv3's sampling core (:mod:`numpyconv.reference.dcnv3`, dcnv3.md eqs. 1-8) read straight from the
packed ``offset_mask`` (docs/derivations/dcnv4.md eq. 1): group ``g``'s block starts at channel
``3 g P`` and holds its ``2P`` offsets as (dx, dy) pairs, then its ``P`` mask values, used as given
(no softmax). Channels ``[3 G P, L)`` are never read and get a zero gradient (eq. 3).
"""
import numpy as np

from .._checks import pair
from .dcnv3 import core, core_backward, kernel_points


def _reader(offset_mask, n_points):
    """``read_point`` of the packed layout (eq. 1)."""
    def read_point(n, r, s, g, p):
        start = 3 * g * n_points
        return (offset_mask[n, r, s, start + 2 * p], offset_mask[n, r, s, start + 2 * p + 1],
                offset_mask[n, r, s, start + 2 * n_points + p])
    return read_point


def dcnv4(x, offset_mask, kernel_size, stride, padding, dilation, group, group_channels,
          offset_scale=1.0, remove_center=False):
    """DCNv4 core, ``y (N, Ho, Wo, G*D)`` (eq. 2): packed ``offset_mask (N, Ho, Wo, L)``, per group
    ``[2P offsets (dx, dy) | P mask]``. Arguments as :func:`numpyconv.dcnv4_forward`."""
    n_points = len(kernel_points(*pair(kernel_size, 'kernel_size'), remove_center))
    return core(x, _reader(offset_mask, n_points), kernel_size, stride, padding, dilation, group,
                group_channels, offset_scale, remove_center)


def dcnv4_backward(dout, x, offset_mask, kernel_size, stride, padding, dilation, group, group_channels,
                   offset_scale=1.0, remove_center=False):
    """``(dx, doffset_mask)`` of :func:`dcnv4`: DCNv3's gradients put back in the packed places (eq. 3)."""
    n_points = len(kernel_points(*pair(kernel_size, 'kernel_size'), remove_center))
    dx, dpoint = core_backward(dout, x, _reader(offset_mask, n_points), kernel_size, stride, padding,
                               dilation, group, group_channels, offset_scale, remove_center)
    doffset_mask = np.zeros_like(offset_mask)                 # the padding channels stay 0 (eq. 3)
    for n, r, s, g, p in np.ndindex(*dpoint.shape[:5]):
        start = 3 * g * n_points
        (doffset_mask[n, r, s, start + 2 * p], doffset_mask[n, r, s, start + 2 * p + 1],
         doffset_mask[n, r, s, start + 2 * n_points + p]) = dpoint[n, r, s, g, p]        # (eq. 3)
    return dx, doffset_mask
