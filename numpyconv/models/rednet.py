"""RedNets (Li et al., "Involution", CVPR 2021) as d-li14/involution's mmcls configs build them.

``cls/configs/_base_/models/rednet{26,38,50}.py``: an mmcls ``ImageClassifier`` with backbone
``RedNet(depth)`` (``cls/mmcls/models/backbones/rednet.py``), neck ``GlobalAveragePooling`` and head
``LinearClsHead(num_classes, in_channels=2048)``; keys ``backbone.*``, ``head.fc.weight``,
``head.fc.bias``::

    backbone.stem = Sequential(ConvModule(3, 32, 3, s2, p1) [conv, bn, ReLU], involution(32, 3, 1),
                               BatchNorm2d(32), ReLU, ConvModule(32, 64, 3, p1))       stem.0 .. stem.4
    backbone.maxpool 3x3/2, backbone.layer1..layer4: mmcls Bottlenecks whose conv2 is
    involution(mid, 7, stride) (keys conv2.conv1.conv.weight, conv2.conv1.bn.*, conv2.conv2.conv.*);
    norms named bn1, bn2, bn3 (mmcv build_norm_layer), downsample = Sequential(1x1 conv, BN)
    neck: global average pooling;  head.fc: Linear(2048, num_classes)

Depths (``arch_settings``): 26 -> (1, 2, 4, 1), 38 -> (2, 3, 5, 2), 50 -> (3, 4, 6, 3) Bottlenecks.
The Bottleneck is the shared :class:`~numpyconv.models.resnet.Bottleneck` (same children, same
forward) with an involution factory. The involution with stride ``s`` average-pools its input for
the kernel branch, so the input H and W must be multiples of 32.

``stem_channels`` / ``base_channels`` are RedNet's own arguments (64, 64): smaller values give a
test-size network (``base_channels`` a multiple of 16, ``stem_channels`` of 32, for the involution
groups of 16 channels). Initialisation as mmcls ``init_weights``: convolutions
``kaiming_normal_(fan_out)``, BatchNorm 1 / 0, ``zero_init_residual=True`` (every ``bn3`` weight 0);
the head ``normal_(0, 0.01)``. ``norm_eval=True`` keeps the backbone's BatchNorm in eval mode inside
``train()``.

Counts (``numpyconv.count`` at 224x224, 1000 classes; d-li14/involution README): parameters 9.23M,
12.39M, 15.54M as published. numpyconv counts multiply-adds of convolutions, kernel generation,
involution and fc: 1.69G, 2.17G, 2.65G; the README's 1.73 / 2.22 / 2.71 GFLOPs come from mmcv's
counter, which also counts BatchNorm, ReLU, pooling and biases (about 0.05G more for RedNet-50).
"""
import numpy as np

from .._checks import positive_int
from ..activations import ReLU
from ..conv import Conv2d
from ..involution import Involution2d, _ConvModule
from ..layers import BatchNorm2d, Flatten, Linear
from ..module import Sequential
from ..pooling import AdaptiveAvgPool2d, MaxPool2d
from ._common import Chain, init_convs_fan_out, init_normal, official_value
from .resnet import Bottleneck, Convs, make_stages, zero_init_last_norms

ARCH_SETTINGS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}


class InvolutionConvs(Convs):
    """RedNet's Bottleneck convolutions: 1x1 ``Conv2d`` (no bias), ``conv2`` = involution(7, stride)."""

    def __call__(self, place, position, in_planes, out_planes, kernel_size, stride=1, dilation=1, groups=1):
        if position == 'conv2':
            return Involution2d(in_planes, 7, stride, dtype=self.dtype, rng=self.rng)
        return self.conv2d(in_planes, out_planes, kernel_size, stride)


class RedNet(Chain):
    """The official ``RedNet`` backbone (``out_indices=(3,)``, ``style='pytorch'``).

    Parameters
    ----------
    depth : {26, 38, 50}
    stem_channels, base_channels : int
        Official arguments (64, 64); ``base_channels`` a multiple of 16 and ``stem_channels`` of 32
        (the involutions' 16-channel groups).
    norm_eval : bool
        Keep the BatchNorm layers in eval mode inside ``train()``.
    dtype, rng : keyword-only

    ``forward(x (N, 3, H, W)) -> (N, base_channels * 32, H/32, W/32)``, H and W multiples of 32.
    """

    def __init__(self, depth, stem_channels=64, base_channels=64, norm_eval=False, *, dtype=np.float32,
                 rng=None):
        super().__init__(dtype=dtype, rng=rng)
        if depth not in ARCH_SETTINGS:
            raise ValueError(f"depth must be one of {sorted(ARCH_SETTINGS)}, got {depth!r}")
        self.norm_eval = bool(norm_eval)
        options = dict(dtype=self.dtype, rng=self.rng)
        half = stem_channels // 2
        self.add_module('stem', Sequential(
            _ConvModule(Conv2d(3, half, 3, 2, 1, bias=False, **options), BatchNorm2d(half, dtype=self.dtype),
                        ReLU()),
            Involution2d(half, 3, 1, **options), BatchNorm2d(half, dtype=self.dtype), ReLU(),
            _ConvModule(Conv2d(half, stem_channels, 3, 1, 1, bias=False, **options),
                        BatchNorm2d(stem_channels, dtype=self.dtype), ReLU())))
        self.add_module('maxpool', MaxPool2d(3, 2, 1))
        self.out_channels = make_stages(self, Bottleneck, ARCH_SETTINGS[depth], InvolutionConvs(**options),
                                        inplanes=stem_channels, base_channels=base_channels)
        self.steps = ['stem', 'maxpool'] + [f'layer{s + 1}' for s in range(4)]
        init_convs_fan_out(self)
        zero_init_last_norms(self)

class ImageClassifier(Chain):
    """mmcls ``ImageClassifier``: ``backbone``, ``neck`` (global average pooling) and ``head``
    (``LinearClsHead``: ``head.fc``).

    Parameters
    ----------
    backbone : RedNet
    num_classes : int

    ``forward(x (N, 3, H, W)) -> logits (N, num_classes)`` (the head's ``fc`` output, before the
    softmax of mmcls's ``simple_test``); ``backward(dlogits) -> dx``.
    """

    def __init__(self, backbone, num_classes):
        super().__init__(dtype=backbone.dtype, rng=backbone.rng)
        self.add_module('backbone', backbone)
        self.add_module('neck', Sequential(AdaptiveAvgPool2d((1, 1)), Flatten()))
        head = self.add_module('head', Chain(dtype=self.dtype, rng=self.rng))
        fc = head.add_module('fc', Linear(backbone.out_channels, num_classes, dtype=self.dtype, rng=self.rng))
        init_normal(fc, self.rng, 0.01)
        self.steps = ['backbone', 'neck', 'head']


def _rednet(depth, num_classes, stem_channels, base_channels, norm_eval, dtype, rng, num_stages, out_indices,
            style):
    positive_int(num_classes, 'num_classes')           # before the backbone is built
    why = "the classifier's backbone: four stages, the last one's features, the 'pytorch' stride placement"
    official_value('num_stages', num_stages, (4,), why)
    official_value('out_indices', out_indices, ((3,), [3], 3), why)
    official_value('style', style, ('pytorch',), why)
    return ImageClassifier(RedNet(depth, stem_channels, base_channels, norm_eval, dtype=dtype, rng=rng),
                           num_classes)


def rednet26(*, num_classes=1000, stem_channels=64, base_channels=64, norm_eval=False, num_stages=4,
             out_indices=(3,), style='pytorch', dtype=np.float32, rng=None):
    """RedNet-26 classifier (config ``rednet26.py``; module docstring). The config's backbone arguments
    ``num_stages``, ``out_indices`` and ``style`` are accepted at their config values (ValueError
    otherwise); likewise for :func:`rednet38` and :func:`rednet50`.

    Returns
    -------
    ImageClassifier
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``; 9.23M parameters for 1000 classes.
    """
    return _rednet(26, num_classes, stem_channels, base_channels, norm_eval, dtype, rng, num_stages,
                   out_indices, style)


def rednet38(*, num_classes=1000, stem_channels=64, base_channels=64, norm_eval=False, num_stages=4,
             out_indices=(3,), style='pytorch', dtype=np.float32, rng=None):
    """RedNet-38 classifier (config ``rednet38.py``; module docstring).

    Returns
    -------
    ImageClassifier
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``; 12.39M parameters for 1000 classes.
    """
    return _rednet(38, num_classes, stem_channels, base_channels, norm_eval, dtype, rng, num_stages,
                   out_indices, style)


def rednet50(*, num_classes=1000, stem_channels=64, base_channels=64, norm_eval=False, num_stages=4,
             out_indices=(3,), style='pytorch', dtype=np.float32, rng=None):
    """RedNet-50 classifier (config ``rednet50.py``; module docstring).

    Returns
    -------
    ImageClassifier
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``; 15.54M parameters for 1000 classes.
    """
    return _rednet(50, num_classes, stem_channels, base_channels, norm_eval, dtype, rng, num_stages,
                   out_indices, style)
