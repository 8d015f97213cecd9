"""DY-CNN ResNet-18 (Chen et al., CVPR 2020) as kaijieshi7/Dynamic-convolution-Pytorch builds it.

The paper has no official code: this follows the unofficial re-implementation
``dynamic_models/dy_resnet.py`` (its ``resnet18``) with ``dynamic_conv.py``'s ``Dynamic_conv2d``
(the version with a hidden width ``int(C_in * ratio) + 1`` and a biased ``fc2``; keys
``weight``, ``attention.fc1.weight``, ``attention.fc2.weight``, ``attention.fc2.bias``). Its tree is
torchvision's ResNet (:mod:`numpyconv.models.resnet`, same arguments) in which every block
convolution *and* the ``downsample`` 1x1 convolution are ``Dynamic_conv2d(..., bias=False)``
(``K=4``, ``ratio=0.25``); the stem and ``fc`` stay plain.

Every ``Dynamic_conv2d`` starts at temperature 34 (set at construction, not in the state_dict);
training lowers it by 3 per epoch to 1 with :meth:`DYResNet.update_temperature` (official name):
after loading a checkpoint trained to the end, set ``layer.temperature = 1`` on every
:class:`~numpyconv.DynamicConv2d` (or call ``update_temperature()`` 11 times).
"""
import numpy as np

from ..dynamic import DynamicConv2d
from ._common import no_download
from .resnet import BasicBlock, Convs, ResNet


class DynamicConvs(Convs):
    """``conv3x3`` / ``conv1x1`` of dy_resnet.py: ``Dynamic_conv2d(in, out, k, stride=stride,
    padding=dilation (3x3) or 0, dilation, groups, bias=False)`` everywhere, downsample included."""

    def __call__(self, place, position, in_planes, out_planes, kernel_size, stride=1, dilation=1, groups=1):
        return DynamicConv2d(in_planes, out_planes, kernel_size, stride=stride,
                             padding=dilation * (kernel_size // 2), dilation=dilation, groups=groups,
                             bias=False, dtype=self.dtype, rng=self.rng)


class DYResNet(ResNet):
    """dy_resnet.py ``ResNet``: the arguments of :class:`~numpyconv.models.resnet.ResNet`."""
    convs_class = DynamicConvs

    def update_temperature(self):
        """Every DynamicConv2d's official epoch step ``T -= 3`` (unless ``T == 1``)."""
        for _, module in self.named_modules():
            if isinstance(module, DynamicConv2d):
                module.update_temperature()


def dy_resnet18(pretrained=False, progress=True, *, num_classes=1000, zero_init_residual=False, groups=1,
                width_per_group=64, replace_stride_with_dilation=None, norm_layer=None, base_channels=64,
                dtype=np.float32, rng=None):
    """``resnet18`` of kaijieshi7 dy_resnet.py: DYResNet(BasicBlock, [2, 2, 2, 2]); ``pretrained``
    must be False (numpyconv downloads nothing: load a checkpoint instead), ``progress`` is unused.

    Returns
    -------
    DYResNet
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``.
    """
    no_download(pretrained, progress)
    return DYResNet(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual, groups, width_per_group,
                    replace_stride_with_dilation, norm_layer, base_channels=base_channels, dtype=dtype,
                    rng=rng)
