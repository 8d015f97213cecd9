"""Octave ResNets (Chen et al., ICCV 2019) as d-li14/octconv.pytorch ``oct_resnet.py`` builds them.

``OctResNet(Bottleneck, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64)``:
a torchvision-style stem (``conv1``, ``bn1``, ReLU, ``maxpool``), four stages of octave Bottlenecks
carrying pairs ``(x_h, x_l)`` (the low-frequency part at half resolution), global average pooling of
``x_h`` and ``fc``. Each Bottleneck has three ``Conv_BN_ACT`` / ``Conv_BN`` wrappers (keys
``conv1.conv.conv_h2h.weight``, ``conv1.bn_h.weight``, ``conv1.bn_l.running_var``, ...) and a
``downsample`` ``Sequential(Conv_BN)`` (keys ``downsample.0.conv.conv_l2h.weight``, ...)::

    (h, l) = conv3(conv2(conv1(x)));   identity = downsample(x) or x
    y_h = relu(h + identity_h);   y_l = relu(l + identity_l), None when identity_l is None

The ratio ``alpha`` of low-frequency channels is 0.5 inside, ``alpha_in=0`` for the first block's
``conv1`` and ``downsample`` (layer1 takes the plain stem output), ``alpha_out=0`` for layer4's
first ``conv1`` and ``downsample`` and ``alpha = 0`` for all of layer4's ``conv2``/``conv3``
(``output=True``): the network ends with ``x_l = None``. A strided octave convolution average-pools
2x2 and then convolves at stride 1 (:mod:`numpyconv.octave`), so H and W of the input should be
multiples of 32 for the two parts to stay aligned (64 is the smallest input where layer4 still has
a high part of 2x2).

Official quirks: ``oct_resnet26`` is ``[2, 2, 2, 2]`` Bottlenecks (26 = 8 blocks x 3 + 2);
``zero_init_residual=True`` raises ``AttributeError`` in the official code (its Bottleneck has no
``bn3``); here it zeroes the weights of ``conv3.bn_h`` and ``conv3.bn_l``, its intent.

Counts (``numpyconv.count`` at 224x224, 1000 classes; d-li14/octconv.pytorch README):
OctResNet-50 (alpha 0.5) has 25,557,032 parameters (README 25.557M) and 2.367 G multiply-adds
(README: 2.367 GFLOPs).
"""
import numpy as np

from .._stateless import Stateless
from ..activations import ReLU
from ..conv import Conv2d
from ..layers import BatchNorm2d, Flatten, Linear
from ..module import Sequential
from ..octave import OctaveConv2d
from ..pooling import AdaptiveAvgPool2d, MaxPool2d
from ._common import Chain, Residual, init_convs_fan_out, no_download
from .resnet import check_norm_layer


def _add(a, b):
    return a if b is None else b if a is None else a + b


class OctaveConvBN(Chain):
    """Official ``Conv_BN`` (``act=False``) / ``Conv_BN_ACT`` (``act=True``): ``conv`` (an
    OctaveConv2d without bias), then ``bn_h`` on the high part (absent for ``alpha_out == 1``) and
    ``bn_l`` on the low part (absent for ``alpha_out == 0``), each followed by a ReLU with ``act``.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, alpha_in, alpha_out, stride, padding, groups
        As :class:`~numpyconv.OctaveConv2d` (dilation 1, no bias).
    act : bool, keyword-only
        ReLU after each BatchNorm.
    dtype, rng : keyword-only

    ``forward(x or (x_h, x_l)) -> (y_h, y_l)``, ``y_l`` None for ``alpha_out == 0``;
    ``backward((dy_h, dy_l)) -> (dx_h, dx_l)`` (``dx_l`` None for a bare ``x``).
    """

    def __init__(self, in_channels, out_channels, kernel_size, alpha_in=0.5, alpha_out=0.5, stride=1,
                 padding=0, groups=1, *, act, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        conv = OctaveConv2d(in_channels, out_channels, kernel_size, alpha_in, alpha_out, stride, padding, 1,
                            groups, False, dtype=self.dtype, rng=self.rng)
        self.add_module('conv', conv)
        self.parts = {}
        split = (('h', int(out_channels * (1 - alpha_out))), ('l', int(out_channels * alpha_out)))
        for part, channels in split:
            if channels:
                self.add_module(f'bn_{part}', BatchNorm2d(channels, dtype=self.dtype))
                self.parts[part] = [self._modules[f'bn_{part}']] + ([ReLU()] if act else [])
        self.steps = ['conv']

    def forward(self, x):
        outputs = self._modules['conv'](x)
        return tuple(self._part_forward(part, y) for part, y in zip('hl', outputs))

    def _part_forward(self, part, y):
        for layer in self.parts[part] if y is not None else ():
            y = layer(y)
        return y

    def backward(self, dout):
        dys = tuple(self._part_backward(part, dy) for part, dy in zip('hl', dout))
        return self._modules['conv'].backward(dys)

    def _part_backward(self, part, dy):
        for layer in reversed(self.parts[part]) if dy is not None else ():
            dy = layer.backward(dy)
        return dy


class HighPart(Stateless):
    """``(x_h, x_l) -> x_h`` (the official ``avgpool(x_h)``); backward ``dx_h -> (dx_h, None)``."""

    def forward(self, x):
        return x[0]

    def backward(self, dout):
        return dout, None

    def macs(self, input_shape):
        return 0, tuple(input_shape)


class OctaveBottleneck(Residual):
    """Official octave ``Bottleneck``: a :class:`~numpyconv.models._common.Residual` on pairs.

    Parameters
    ----------
    inplanes, planes : int
        Input channels; output channels ``4 planes``.
    stride : int
        1 or 2 (``conv2`` and the ``downsample`` pool 2x2).
    downsample : Sequential(OctaveConvBN) or None
    groups, base_width : int
        Grouped ``conv2`` with ``int(planes * base_width / 64) * groups`` channels.
    alpha_in, alpha_out : float
        Low-frequency ratios of ``conv1``'s input and output.
    output : bool
        The last stage: ``conv2`` and ``conv3`` with alpha 0 (no low part).
    dtype, rng : keyword-only

    ``forward(x (first block) or (x_h, x_l)) -> (y_h, y_l)``; ``backward((dy_h, dy_l))`` returns
    ``dx_h`` for a bare ``x``, else ``(dx_h, dx_l)``.
    """
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, alpha_in=0.5,
                 alpha_out=0.5, output=False, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        width = int(planes * (base_width / 64.0)) * groups
        inner = 0 if output else 0.5
        options = dict(dtype=self.dtype, rng=self.rng)
        self.add_module('conv1', OctaveConvBN(inplanes, width, 1, alpha_in, alpha_out, act=True, **options))
        self.add_module('conv2', OctaveConvBN(width, width, 3, inner, inner, stride, 1, groups, act=True,
                                              **options))
        self.add_module('conv3', OctaveConvBN(width, planes * self.expansion, 1, inner, inner, act=False,
                                              **options))
        if downsample is not None:
            self.add_module('downsample', downsample)
        self.steps = ['conv1', 'conv2', 'conv3']
        self.acts = (self.act, ReLU())

    def forward(self, x):
        self._bare = not isinstance(x, tuple)
        identity = (x, None) if self._bare else tuple(x)
        y_h, y_l = Chain.forward(self, x)
        if 'downsample' in self._modules:
            identity = self._modules['downsample'](x)
        self._low_kept = identity[1] is not None                   # official: else y_l = None
        y_l = y_l + identity[1] if self._low_kept else None
        return tuple(y if y is None else act(y) for act, y in zip(self.acts, (y_h + identity[0], y_l)))

    def backward(self, dout):
        dsum = tuple(dy if dy is None else act.backward(dy) for act, dy in zip(self.acts, dout))
        dx = Chain.backward(self, dsum if self._low_kept else (dsum[0], None))
        if 'downsample' in self._modules:
            didentity = self._modules['downsample'].backward(dsum)
        else:
            didentity = dsum
        dx_h, dx_l = _add(dx[0], didentity[0]), _add(dx[1], didentity[1])
        return dx_h if self._bare else (dx_h, dx_l)


class OctResNet(Chain):
    """Official ``OctResNet``; ``forward(x (N, 3, H, W)) -> (N, num_classes)``.

    Parameters
    ----------
    block : OctaveBottleneck
    layers : sequence of 4 ints
    num_classes : int
    zero_init_residual : bool
        Zero the last BatchNorm weights of every block (see the module docstring).
    groups, width_per_group : int
        Grouped 3x3 convolutions as torchvision's ResNeXt arguments.
    norm_layer : None or BatchNorm2d
    base_channels : int, keyword-only
        Test-size option (:mod:`numpyconv.models.resnet`); 64 officially.
    dtype, rng : keyword-only
    """

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1,
                 width_per_group=64, norm_layer=None, *, base_channels=64, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        check_norm_layer(norm_layer)
        options = dict(dtype=self.dtype, rng=self.rng)
        self.add_module('conv1', Conv2d(3, base_channels, 7, 2, 3, bias=False, **options))
        self.add_module('bn1', BatchNorm2d(base_channels, dtype=self.dtype))
        self.add_module('maxpool', MaxPool2d(3, 2, 1))
        self.inplanes = base_channels
        for stage, blocks in enumerate(layers):
            alphas = dict(alpha_in=0 if stage == 0 else 0.5, alpha_out=0 if stage == 3 else 0.5,
                          output=stage == 3)
            stage_layer = self._make_layer(block, base_channels * 2 ** stage, blocks, 1 if stage == 0 else 2,
                                           groups, width_per_group, **alphas)
            self.add_module(f'layer{stage + 1}', stage_layer)
        self.add_module('avgpool', AdaptiveAvgPool2d((1, 1)))
        self.add_module('fc', Linear(self.inplanes, num_classes, **options))
        self.steps = (['conv1', 'bn1', ReLU(), 'maxpool'] + [f'layer{s + 1}' for s in range(len(layers))]
                      + [HighPart(), 'avgpool', Flatten(), 'fc'])
        init_convs_fan_out(self)
        if zero_init_residual:
            for _, module in self.named_modules():
                if isinstance(module, OctaveBottleneck):
                    for bn in ('bn_h', 'bn_l'):
                        if bn in module._modules['conv3']._modules:
                            module._modules['conv3']._modules[bn].params['weight'][...] = 0

    def _make_layer(self, block, planes, blocks, stride, groups, base_width, alpha_in, alpha_out, output):
        """Official ``_make_layer``: the first block takes ``alpha_in``/``alpha_out``; the others
        0.5 inside (0 with ``output``)."""
        options = dict(dtype=self.dtype, rng=self.rng)
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = Sequential(OctaveConvBN(self.inplanes, planes * block.expansion, 1, alpha_in,
                                                 alpha_out, stride, act=False, **options))
        stage = [block(self.inplanes, planes, stride, downsample, groups, base_width, alpha_in, alpha_out,
                       output, **options)]
        self.inplanes = planes * block.expansion
        inner = 0 if output else 0.5
        stage += [block(self.inplanes, planes, 1, None, groups, base_width, inner, inner, output, **options)
                  for _ in range(1, blocks)]
        return Sequential(*stage)


def oct_resnet26(pretrained=False, *, num_classes=1000, zero_init_residual=False, groups=1,
                 width_per_group=64, norm_layer=None, base_channels=64, dtype=np.float32, rng=None):
    """Official ``oct_resnet26``: OctResNet(Bottleneck, [2, 2, 2, 2]); arguments as :class:`OctResNet`;
    ``pretrained`` must be False (numpyconv downloads nothing: load a checkpoint instead).

    Returns
    -------
    OctResNet
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``.
    """
    no_download(pretrained)
    return OctResNet(OctaveBottleneck, [2, 2, 2, 2], num_classes, zero_init_residual, groups, width_per_group,
                     norm_layer, base_channels=base_channels, dtype=dtype, rng=rng)


def oct_resnet50(pretrained=False, *, num_classes=1000, zero_init_residual=False, groups=1,
                 width_per_group=64, norm_layer=None, base_channels=64, dtype=np.float32, rng=None):
    """Official ``oct_resnet50``: OctResNet(Bottleneck, [3, 4, 6, 3]); arguments as :class:`OctResNet`;
    ``pretrained`` must be False (numpyconv downloads nothing: load a checkpoint instead).

    Returns
    -------
    OctResNet
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``.
    """
    no_download(pretrained)
    return OctResNet(OctaveBottleneck, [3, 4, 6, 3], num_classes, zero_init_residual, groups, width_per_group,
                     norm_layer, base_channels=base_channels, dtype=dtype, rng=rng)
