"""ResNet (He et al., CVPR 2016) as torchvision builds it, and the skeleton its technique variants share.

``resnet18`` and ``resnet50`` reproduce ``torchvision/models/resnet.py`` (ResNet v1.5: a Bottleneck
strides in its 3x3 convolution): state_dict keys and order as torchvision's, e.g. ``conv1.weight``,
``bn1.running_mean``, ``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``,
``layer2.0.downsample.1.num_batches_tracked``, ``fc.weight``::

    conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..layer4 -> avgpool (1x1) -> flatten -> fc

    BasicBlock (expansion 1):  relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))
    Bottleneck (expansion 4):  relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))
    shortcut: downsample = Sequential(1x1 conv (stride), BatchNorm2d) when the stride or the channel
    count changes, else the identity

The same :class:`BasicBlock` / :class:`Bottleneck` (children ``conv1, bn1, conv2, bn2[, conv3,
bn3], downsample[, drop_path]``) serve every ResNet of :mod:`numpyconv.models` whose official tree
has these names: the block convolutions come from a *conv factory* ``convs(place, position,
in_planes, out_planes, kernel_size, stride=1, dilation=1, groups=1)``, ``position`` one of
``'conv1'``, ``'conv2'``, ``'conv3'``, ``'downsample'`` and ``place`` the block's :class:`Place`
(plain convolutions here; ODConv, DY-CNN, KernelWarehouse, DCNv2 and involution in the other
files). :func:`make_stages` builds ``layer1..layer4`` as torchvision's ``_make_layer`` does.

Test-size networks: ``base_channels`` (keyword-only, not an argument of the official functions;
default 64, the official network) sets the stem width and the planes of the first stage (stage
``s`` has ``base_channels * 2**s``), so ``resnet50(base_channels=8, num_classes=10)`` is a ResNet-50
of the same structure, 64 times fewer convolution weights.

Counting: ``numpyconv.count(resnet50(), (1, 3, 224, 224))`` gives 25,557,032 parameters and 4.09 G
multiply-adds (convolutions and fc; torchvision's weights metadata: 25,557,032 and 4.089 GFLOPS).
"""
from collections import namedtuple

import numpy as np

from .._checks import positive_int
from ..activations import ReLU
from ..conv import Conv2d
from ..dropout import Dropout, DropPath
from ..layers import BatchNorm2d, Flatten, Linear
from ..module import Sequential
from ..pooling import AdaptiveAvgPool2d, MaxPool2d
from ._common import Chain, Residual, init_convs_fan_out, no_download

Place = namedtuple('Place', 'stage layer_idx handover expansion')
Place.__doc__ = """Where a block sits: its stage (0-3), its official ``layer_idx`` (KernelWarehouse's running
block index: the first block of a stage carries the previous stage's block count, the next ones 1, 2,
...), ``handover`` (first block of its stage) and its block's ``expansion``."""


# -- conv factories -------------------------------------------------------------------------------
class Convs:
    """The conv factory of the plain ResNet: torchvision's ``conv3x3`` / ``conv1x1``, i.e.
    ``Conv2d(in, out, k, stride, padding=dilation * (k // 2), dilation, groups, bias=False)``."""

    def __init__(self, *, dtype=np.float32, rng=None):
        self.dtype, self.rng = dtype, rng

    def conv2d(self, in_planes, out_planes, kernel_size, stride=1, dilation=1, groups=1):
        return Conv2d(in_planes, out_planes, kernel_size, stride, dilation * (kernel_size // 2), dilation,
                      groups, bias=False, dtype=self.dtype, rng=self.rng)

    def __call__(self, place, position, in_planes, out_planes, kernel_size, stride=1, dilation=1, groups=1):
        return self.conv2d(in_planes, out_planes, kernel_size, stride, dilation, groups)


# -- blocks -----------------------------------------------------------------------------------------
class _Block(Residual):
    """Registers the branch ``conv_i, bn_i`` pairs in order, then ``downsample`` and ``drop_path``."""
    expansion = 1
    last_norm = None

    def __init__(self, convs, place, pairs, downsample, drop_path, *, dtype, rng):
        super().__init__(dtype=dtype, rng=rng)
        self.steps = []
        for i, (in_planes, out_planes, kernel_size, stride, dilation, groups) in enumerate(pairs, 1):
            self.add_module(f'conv{i}', convs(place, f'conv{i}', in_planes, out_planes, kernel_size, stride,
                                              dilation, groups))
            self.add_module(f'bn{i}', BatchNorm2d(out_planes, dtype=self.dtype))
            self.steps += [f'conv{i}', f'bn{i}', ReLU()]
        self.steps.pop()                                # the last activation follows the residual sum
        if downsample is not None:
            self.add_module('downsample', downsample)
        if drop_path > 0:
            self.add_module('drop_path', DropPath(drop_path, rng=self.rng))


class BasicBlock(_Block):
    """torchvision ``BasicBlock``: two 3x3 convolutions (the first strided).

    Parameters
    ----------
    inplanes, planes : int
        Input and output channels.
    stride : int
        Stride of ``conv1`` (and of the ``downsample`` the caller builds).
    downsample : Module or None
        The shortcut (``Sequential(conv 1x1, BatchNorm2d)``) or None for the identity.
    groups, base_width, dilation : int
        Only 1, 64, 1 (torchvision's checks).
    convs : callable, keyword-only
        The conv factory (module docstring).
    place : Place, keyword-only
        Passed to the factory.
    drop_path : float, keyword-only
        Stochastic depth of the branch (0: no ``drop_path`` child).
    dtype, rng : keyword-only

    ``forward(x (N, inplanes, H, W)) -> (N, planes, H / stride, W / stride)``.
    """
    expansion = 1
    last_norm = 'bn2'

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1, *,
                 convs, place=None, drop_path=0.0, dtype=np.float32, rng=None):
        if groups != 1 or base_width != 64:
            raise ValueError(f"BasicBlock only supports groups=1 and base_width=64, got groups={groups}, "
                             f"base_width={base_width}")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        pairs = [(inplanes, planes, 3, stride, 1, 1), (planes, planes, 3, 1, 1, 1)]
        super().__init__(convs, place, pairs, downsample, drop_path, dtype=dtype, rng=rng)


class Bottleneck(_Block):
    """torchvision ``Bottleneck`` (v1.5): 1x1 -> 3x3 (strided, grouped, dilated) -> 1x1 (x4).

    Parameters as :class:`BasicBlock`, with ``width = int(planes * base_width / 64) * groups``
    channels inside and ``groups`` / ``dilation`` for the 3x3 convolution (padding = dilation).
    ``forward(x (N, inplanes, H, W)) -> (N, 4 planes, H / stride, W / stride)``.
    """
    expansion = 4
    last_norm = 'bn3'

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1, *,
                 convs, place=None, drop_path=0.0, dtype=np.float32, rng=None):
        width = int(planes * (base_width / 64.0)) * groups
        pairs = [(inplanes, width, 1, 1, 1, 1), (width, width, 3, stride, dilation, groups),
                 (width, planes * self.expansion, 1, 1, 1, 1)]
        super().__init__(convs, place, pairs, downsample, drop_path, dtype=dtype, rng=rng)


def make_stages(owner, block, layers, convs, *, inplanes, base_channels, groups=1, base_width=64,
                dilate=(False, False, False), drop_path=0.0):
    """Register ``layer1..layerN`` on ``owner`` as torchvision's ``_make_layer`` builds them.

    Stage ``s`` has ``layers[s]`` blocks of ``base_channels * 2**s`` planes, stride 2 from the second
    stage on (``dilate[s - 1]``: dilation instead); the first block gets the ``downsample`` shortcut
    (built before the block, as officially, so KernelWarehouse reserves it first).

    Parameters
    ----------
    owner : Module
        Receives the ``layer<s+1>`` children (its dtype and rng are used).
    block : BasicBlock or Bottleneck
    layers : sequence of int
        Blocks per stage.
    convs : callable
        The conv factory.
    inplanes, base_channels : int, keyword-only
        Input channels of the first stage; planes of the first stage.
    groups, base_width : int, keyword-only
        torchvision's ``groups`` / ``width_per_group``.
    dilate : sequence of bool, keyword-only
        ``replace_stride_with_dilation`` of stages 2, 3, 4.
    drop_path : float, keyword-only
        Stochastic depth of every block.

    Returns
    -------
    int
        The output channels of the last stage.
    """
    dilation, layer_idx = 1, 0
    for stage, blocks in enumerate(layers):
        planes, stride, previous_dilation = base_channels * 2 ** stage, 1 if stage == 0 else 2, dilation
        if stage and dilate[stage - 1]:
            dilation, stride = dilation * stride, 1
        out_planes = planes * block.expansion
        place = Place(stage, layer_idx, True, block.expansion)
        downsample = None
        if stride != 1 or inplanes != out_planes:
            downsample = Sequential(convs(place, 'downsample', inplanes, out_planes, 1, stride),
                                    BatchNorm2d(out_planes, dtype=owner.dtype))
        options = dict(convs=convs, drop_path=drop_path, dtype=owner.dtype, rng=owner.rng)
        stage_blocks = [block(inplanes, planes, stride, downsample, groups, base_width, previous_dilation,
                              place=place, **options)]
        layer_idx = 1
        for _ in range(1, blocks):
            stage_blocks.append(block(out_planes, planes, 1, None, groups, base_width, dilation,
                                      place=Place(stage, layer_idx, False, block.expansion), **options))
            layer_idx += 1
        owner.add_module(f'layer{stage + 1}', Sequential(*stage_blocks))
        inplanes = out_planes
    return inplanes


def zero_init_last_norms(network):
    """``zero_init_residual``: the last BatchNorm weight of every residual block set to 0."""
    for _, module in network.named_modules():
        if isinstance(module, _Block):
            module.params[f'{module.last_norm}.weight'][...] = 0


def check_norm_layer(norm_layer):
    """torchvision's ``norm_layer`` argument: None or :class:`~numpyconv.BatchNorm2d` (TypeError else)."""
    if norm_layer not in (None, BatchNorm2d):
        raise TypeError(f"norm_layer must be None or numpyconv.BatchNorm2d (the only normalisation "
                        f"these networks support), got {norm_layer!r}")


def check_dilate(replace_stride_with_dilation):
    """torchvision's check: None or three booleans (stages 2-4)."""
    if replace_stride_with_dilation is None:
        return (False, False, False)
    if len(replace_stride_with_dilation) != 3:
        raise ValueError(f"replace_stride_with_dilation should be None or a 3-element tuple, got "
                         f"{replace_stride_with_dilation}")
    return tuple(bool(d) for d in replace_stride_with_dilation)


# -- the network --------------------------------------------------------------------------------------
class ResNet(Chain):
    """torchvision ``ResNet``: ``forward(x (N, 3, H, W)) -> logits (N, num_classes)``,
    ``backward(dlogits) -> dx (N, 3, H, W)``.

    Parameters
    ----------
    block : BasicBlock or Bottleneck
    layers : sequence of 4 ints
        Blocks per stage.
    num_classes : int
    zero_init_residual : bool
        The last BatchNorm weight of every block starts at 0.
    groups, width_per_group : int
        Grouped 3x3 convolutions (ResNeXt, wide ResNet; Bottleneck only).
    replace_stride_with_dilation : None or 3 bools
        Dilation instead of stride in stages 2-4 (Bottleneck only).
    norm_layer : None or numpyconv.BatchNorm2d
    base_channels : int, keyword-only
        Test-size option (module docstring); 64 officially.
    dtype, rng : keyword-only

    Subclasses (the technique variants) set ``convs_class`` (their conv factory) or call
    :meth:`build` with theirs.
    """
    convs_class = Convs

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1,
                 width_per_group=64, replace_stride_with_dilation=None, norm_layer=None, *, base_channels=64,
                 dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        check_norm_layer(norm_layer)
        self.build(block, layers, self.convs_class(dtype=self.dtype, rng=self.rng), num_classes,
                   base_channels=base_channels, groups=groups, base_width=width_per_group,
                   dilate=check_dilate(replace_stride_with_dilation))
        init_convs_fan_out(self)
        if zero_init_residual:
            zero_init_last_norms(self)

    def build(self, block, layers, convs, num_classes, *, base_channels=64, groups=1, base_width=64,
              dilate=(False, False, False), dropout=None, drop_path=0.0, include_top=True):
        """Stem, stages and (``include_top``) head; ``dropout`` (a probability) adds ``Dropout``
        before ``fc`` as the OD/KW networks do."""
        if include_top:
            positive_int(num_classes, 'num_classes')
        options = dict(dtype=self.dtype, rng=self.rng)
        self.add_module('conv1', Conv2d(3, base_channels, 7, 2, 3, bias=False, **options))
        self.add_module('bn1', BatchNorm2d(base_channels, dtype=self.dtype))
        self.add_module('maxpool', MaxPool2d(3, 2, 1))
        channels = make_stages(self, block, layers, convs, inplanes=base_channels,
                               base_channels=base_channels, groups=groups, base_width=base_width,
                               dilate=dilate, drop_path=drop_path)
        self.steps = ['conv1', 'bn1', ReLU(), 'maxpool'] + [f'layer{s + 1}' for s in range(len(layers))]
        if include_top:
            self.add_module('avgpool', AdaptiveAvgPool2d((1, 1)))
            self.steps += ['avgpool', Flatten()]
            if dropout is not None:
                self.add_module('dropout', Dropout(dropout, rng=self.rng))
                self.steps.append('dropout')
            self.add_module('fc', Linear(channels, num_classes, **options))
            self.steps.append('fc')


def resnet18(*, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
             replace_stride_with_dilation=None, norm_layer=None, base_channels=64, weights=None,
             progress=True, dtype=np.float32, rng=None):
    """torchvision ``resnet18``: ResNet(BasicBlock, [2, 2, 2, 2]) (arguments: :class:`ResNet`;
    torchvision's ``weights`` must be None and ``progress`` is unused: numpyconv downloads nothing).

    Returns
    -------
    ResNet
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``; 11,689,512 parameters for 1000 classes.
    """
    no_download(weights, progress)
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual, groups, width_per_group,
                  replace_stride_with_dilation, norm_layer, base_channels=base_channels, dtype=dtype, rng=rng)


def resnet50(*, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
             replace_stride_with_dilation=None, norm_layer=None, base_channels=64, weights=None,
             progress=True, dtype=np.float32, rng=None):
    """torchvision ``resnet50``: ResNet(Bottleneck, [3, 4, 6, 3]) (arguments as :func:`resnet18`).

    Returns
    -------
    ResNet
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``; 25,557,032 parameters for 1000 classes.
    """
    no_download(weights, progress)
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual, groups, width_per_group,
                  replace_stride_with_dilation, norm_layer, base_channels=base_channels, dtype=dtype, rng=rng)
