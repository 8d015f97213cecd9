"""MobileNetV2 with dynamic convolutions: OD-MobileNetV2 (ODConv) and CondConv-MobileNetV2.

Two builders, each the official module tree (state_dict keys, order, shapes) of

* :func:`od_mobilenetv2`: OSVAI/ODConv ``models/od_mobilenetv2.py`` (``OD_MobileNetV2``). Every
  convolution except the stem is an ``ODConv2d(reduction, kernel_num)``; keys
  ``features.0.0.weight`` (stem ``nn.Conv2d``), ``features.<i>.conv.<j>...`` (``ODConvBNReLU``
  sequences: ``<j>.0`` the ODConv2d, ``<j>.1`` the BatchNorm), ``features.18.0...`` (the last 1x1
  ODConvBNReLU), ``classifier.1.weight/bias`` (``classifier.0`` is the dropout).
* :func:`cond_mobilenetv2`: d-li14/condconv.pytorch ``cond_mobilenetv2.py`` (``CondMobileNetV2``).
  The last six inverted residual blocks (from the second block of the 96-channel stage on) are
  CondConv blocks: one routing ``route.fc.*`` per block, computed from the block's input and fed to
  the block's three convolutions ``pw``, ``dw``, ``pw_linear`` (keys ``weight`` of shape
  ``(E, C_out, C_in // groups, k, k)``); the others use plain convolutions under the same names.
  Head: ``conv.0/1`` (1x1 conv, BatchNorm), average pooling, ``classifier_route.fc.*`` and the
  CondConv classifier ``classifier.weight (E, num_classes, C, 1, 1)``.

Channel counts follow the official ``_make_divisible(v, 8)`` rounding (to the nearest multiple of 8,
never more than 10% below ``v``); activations are ReLU6. Forward returns the logits
``(N, num_classes)``; backward takes their gradient and returns the input gradient, accumulating
every parameter gradient under its state_dict key. The residual additions, pooling and activations
count no multiply-adds (``numpyconv.count``), as the papers count.
"""
import math
from functools import partial

import numpy as np

from .._checks import positive_int
from ..activations import ReLU6, relu6_backward, relu6_forward
from ..condconv import CondConvRouting, RoutedCondConv2d
from ..conv import Conv2d
from ..dropout import Dropout
from ..layers import BatchNorm2d, Linear
from ..module import Module, Sequential, kaiming_normal_fan_out
from ..odconv import ODConv2d
from ..pooling import AdaptiveAvgPool2d, GlobalAvgPool2d
from ._common import official_value

# t (expansion), c (channels), n (blocks), s (stride of the first block): both official files
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _make_divisible(v, divisor, min_value=None):
    """The official channel rounding: nearest multiple of ``divisor`` (halves up), at least
    ``min_value`` (default ``divisor``), raised by ``divisor`` if it fell more than 10% below ``v``.

    >>> _make_divisible(32 * 0.75, 8), _make_divisible(16 * 0.5, 8), _make_divisible(1280 * 1.4, 8)
    (24, 8, 1792)
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _positive_real(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _classes(num_classes):
    return positive_int(num_classes, 'num_classes')


def _check_images(model, x):
    """The network input ``(N, 3, H, W)`` in the model's dtype (the stem convolution checks it)."""
    return model.features[0][0]._check_input(x, channels=3)


# -- OD-MobileNetV2 -----------------------------------------------------------------------------------
class ODInvertedResidual(Module):
    """The official ``InvertedResidual`` of od_mobilenetv2.py: ``conv`` = [1x1 ODConvBNReLU6 when
    ``expand_ratio != 1``], 3x3 depthwise ODConvBNReLU6 (stride), 1x1 ODConv2d, BatchNorm; the
    input is added when ``stride == 1`` and ``inp == oup``."""

    def __init__(self, inp, oup, stride, expand_ratio, reduction=0.0625, kernel_num=1, *,
                 dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        od = partial(ODConv2d, reduction=reduction, kernel_num=kernel_num, dtype=self.dtype, rng=self.rng)
        layers = []
        if expand_ratio != 1:
            layers.append(od_conv_bn_relu(inp, hidden, 1, reduction=reduction, kernel_num=kernel_num,
                                          dtype=self.dtype, rng=self.rng))
        layers += [od_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, reduction=reduction,
                                   kernel_num=kernel_num, dtype=self.dtype, rng=self.rng),
                   od(hidden, oup, 1, 1, 0),
                   BatchNorm2d(oup, dtype=self.dtype)]
        self.conv = self.add_module('conv', Sequential(*layers))

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res_connect else y

    def backward(self, dout):
        dx = self.conv.backward(dout)
        return dx + dout if self.use_res_connect else dx

    def macs(self, input_shape):
        return self.conv.macs(input_shape)


def od_conv_bn_relu(in_planes, out_planes, kernel_size=3, stride=1, groups=1, reduction=0.0625,
                    kernel_num=1, *, dtype=np.float32, rng=None):
    """The official ``ODConvBNReLU``: ``Sequential(ODConv2d (padding (k-1)//2), BatchNorm2d, ReLU6)``."""
    return Sequential(ODConv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2,
                               groups=groups, reduction=reduction, kernel_num=kernel_num, dtype=dtype,
                               rng=rng),
                      BatchNorm2d(out_planes, dtype=dtype), ReLU6(dtype=dtype))


class ODMobileNetV2(Module):
    """OSVAI/ODConv ``OD_MobileNetV2`` (built by :func:`od_mobilenetv2`): ``features``, global
    average pooling, ``classifier`` = (Dropout, Linear)."""

    def __init__(self, num_classes=1000, width_mult=1.0, inverted_residual_setting=None, round_nearest=8,
                 dropout=0.2, reduction=0.0625, kernel_num=1, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        num_classes, width_mult = _classes(num_classes), _positive_real(width_mult, 'width_mult')
        setting = inverted_residual_setting
        setting = INVERTED_RESIDUAL_SETTING if setting is None else setting
        if len(setting) == 0 or any(len(row) != 4 for row in setting):
            raise ValueError(f"inverted_residual_setting must be a non-empty list of (t, c, n, s) rows, "
                             f"got {inverted_residual_setting!r}")
        kw = dict(dtype=self.dtype, rng=self.rng)
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        stem = Sequential(Conv2d(3, input_channel, 3, 2, 1, bias=False, **kw),
                          BatchNorm2d(input_channel, dtype=self.dtype), ReLU6(dtype=self.dtype))
        features = [stem]
        for t, c, n, s in setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(ODInvertedResidual(input_channel, output_channel, s if i == 0 else 1, t,
                                                   reduction, kernel_num, **kw))
                input_channel = output_channel
        features.append(od_conv_bn_relu(input_channel, self.last_channel, 1, reduction=reduction,
                                        kernel_num=kernel_num, **kw))
        self.features = self.add_module('features', Sequential(*features))
        self.pool = GlobalAvgPool2d(dtype=self.dtype)           # the functional pooling: no key
        self.classifier = self.add_module('classifier', Sequential(
            Dropout(dropout, dtype=self.dtype, rng=self.rng), Linear(self.last_channel, num_classes, **kw)))
        self._initialize_weights()

    def _initialize_weights(self):
        """The official loop: ``nn.Conv2d`` (the stem, and the 1x1 convolutions inside every
        ODConv2d attention, already so initialised) kaiming normal fan-out, BatchNorm 1/0, Linear
        N(0, 0.01) with zero bias."""
        stem = self.features[0][0]
        stem.params['weight'][...] = kaiming_normal_fan_out(self.rng, stem.params['weight'].shape, self.dtype)
        head = self.classifier[1]
        head.params['weight'][...] = self.rng.normal(0.0, 0.01, head.params['weight'].shape)
        head.params['bias'][...] = 0

    def net_update_temperature(self, temperature):
        """The official ``net_update_temperature``: the softmax/sigmoid temperature of every ODConv2d."""
        for _, module in self.named_modules():
            if isinstance(module, ODConv2d):
                module.update_temperature(temperature)

    def forward(self, x):
        """``(N, 3, H, W) -> (N, num_classes)`` logits."""
        _check_images(self, x)
        return self.classifier(self.pool(self.features(x)))

    def backward(self, dout):
        """``dlogits (N, num_classes) -> dx (N, 3, H, W)``."""
        return self.features.backward(self.pool.backward(self.classifier.backward(dout)))

    def macs(self, input_shape):
        features, shape = self.features.macs(input_shape)
        head, out_shape = self.classifier.macs(shape[:2])
        return features + head, out_shape


def od_mobilenetv2(num_classes=1000, width_mult=1.0, inverted_residual_setting=None, round_nearest=8,
                   block=None, norm_layer=None, dropout=0.2, reduction=0.0625, kernel_num=1, *,
                   dtype=np.float32, rng=None):
    """OD-MobileNetV2 (ODConv, ICLR 2022), the official ``od_mobilenetv2(**kwargs)``.

    Parameters
    ----------
    num_classes : int
    width_mult : float
        Channel multiplier (the official ``od_mobilenetv2_050/075/100`` use 0.5, 0.75, 1.0).
    inverted_residual_setting : sequence of (t, c, n, s) or None
        None: the standard MobileNetV2 table.
    round_nearest : int
        Channel rounding of ``_make_divisible``.
    block, norm_layer : None
        The official ``InvertedResidual`` and ``nn.BatchNorm2d`` (PyTorch classes): only None, which
        means them, is accepted.
    dropout : float
        Dropout before the classifier (0.2, the official default).
    reduction, kernel_num : float, int
        ODConv2d's attention reduction and number of kernels (the README's "ODConv (1x)" and
        "(4x)").
    dtype, rng : keyword-only
        Parameter dtype; seed or Generator for the initialisation and the dropout masks.

    Returns
    -------
    ODMobileNetV2
        ``forward(x (N, 3, H, W)) -> logits (N, num_classes)``; ``state_dict()`` keys as the official
        module.
    """
    official_value('block', block, (None,), "the official InvertedResidual is built")
    official_value('norm_layer', norm_layer, (None,), "BatchNorm2d is built")
    return ODMobileNetV2(num_classes, width_mult, inverted_residual_setting, round_nearest, dropout,
                         reduction, kernel_num, dtype=dtype, rng=rng)


# -- CondConv-MobileNetV2 ------------------------------------------------------------------------------
class CondInvertedResidual(Module):
    """d-li14 ``InvertedResidual``: ``pw``/``bn_pw`` (when ``expand_ratio != 1``), ``dw``/``bn_dw``,
    ``pw_linear``/``bn_pw_linear``, ReLU6 after the first two, identity shortcut when ``stride == 1``
    and ``inp == oup``. With ``num_experts`` the three convolutions are :class:`RoutedCondConv2d`
    sharing the routing ``route`` (:class:`CondConvRouting` of the block input); without, plain
    ``Conv2d`` (no bias)."""

    def __init__(self, inp, oup, stride, expand_ratio, num_experts=None, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2 (the official block asserts it), got {stride!r}")
        hidden = round(inp * expand_ratio)
        self.identity = stride == 1 and inp == oup
        self.expand_ratio, self.cond = expand_ratio, num_experts is not None
        kw = dict(dtype=self.dtype, rng=self.rng)
        conv = partial(RoutedCondConv2d, num_experts=num_experts, **kw) if self.cond else \
            partial(Conv2d, **kw)
        if expand_ratio != 1:
            self.pw = self.add_module('pw', conv(inp, hidden, 1, 1, 0, bias=False))
            self.bn_pw = self.add_module('bn_pw', BatchNorm2d(hidden, dtype=self.dtype))
        self.dw = self.add_module('dw', conv(hidden, hidden, 3, stride, 1, groups=hidden, bias=False))
        self.bn_dw = self.add_module('bn_dw', BatchNorm2d(hidden, dtype=self.dtype))
        self.pw_linear = self.add_module('pw_linear', conv(hidden, oup, 1, 1, 0, bias=False))
        self.bn_pw_linear = self.add_module('bn_pw_linear', BatchNorm2d(oup, dtype=self.dtype))
        self.add_module('relu', ReLU6(dtype=self.dtype))       # one module, applied twice: functional pair
        if self.cond:
            self.route = self.add_module('route', CondConvRouting(inp, num_experts, **kw))

    def _stages(self):
        """``(conv, bn, relu?)`` in order."""
        stages = [(self.pw, self.bn_pw, True)] if self.expand_ratio != 1 else []
        return stages + [(self.dw, self.bn_dw, True), (self.pw_linear, self.bn_pw_linear, False)]

    def forward(self, x):
        routing = self.route(x) if self.cond else None
        h, self._relu_cache = x, []
        for conv, bn, relu in self._stages():
            h = bn(conv(h, routing) if self.cond else conv(h))
            if relu:
                h, cache = relu6_forward(h)
                self._relu_cache.append(cache)
        return h + x if self.identity else h

    def backward(self, dout):
        dh, drouting, caches = dout, 0, list(self._relu_cache)
        for conv, bn, relu in reversed(self._stages()):
            if relu:
                dh, = relu6_backward(dh, caches.pop())
            dh = bn.backward(dh)
            if self.cond:
                dh, dr = conv.backward(dh)
                drouting = drouting + dr                                    # (condconv.md eq. 12)
            else:
                dh = conv.backward(dh)
        if self.cond:
            dh = dh + self.route.backward(drouting)
        return dh + dout if self.identity else dh

    def macs(self, input_shape):
        total = self.route.macs(input_shape)[0] if self.cond else 0
        shape = tuple(input_shape)
        for conv, _, _ in self._stages():
            m, shape = conv.macs(shape)
            total += m
        return total, shape


class CondMobileNetV2(Module):
    """d-li14 ``CondMobileNetV2`` (built by :func:`cond_mobilenetv2`): ``features``, ``conv``
    (1x1 conv, BN, ReLU6), ``avgpool``, ``classifier_route`` and the CondConv ``classifier``."""

    def __init__(self, num_classes=1000, width_mult=1.0, num_experts=8, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        num_classes, width_mult = _classes(num_classes), _positive_real(width_mult, 'width_mult')
        if isinstance(num_experts, bool) or not isinstance(num_experts, (int, np.integer)) or num_experts < 1:
            raise ValueError(f"num_experts must be a positive int, got {num_experts!r}")
        kw = dict(dtype=self.dtype, rng=self.rng)
        input_channel = _make_divisible(32 * width_mult, 8)
        layers = [Sequential(Conv2d(3, input_channel, 3, 2, 1, bias=False, **kw),
                             BatchNorm2d(input_channel, dtype=self.dtype), ReLU6(dtype=self.dtype))]
        experts = None
        for j, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            output_channel = _make_divisible(c * width_mult, 8)
            for i in range(n):
                layers.append(CondInvertedResidual(input_channel, output_channel, s if i == 0 else 1, t,
                                                   experts, **kw))
                input_channel = output_channel
                if j == 4 and i == 0:      # CondConv in the blocks after the first of the 96-channel stage
                    experts = num_experts
        self.features = self.add_module('features', Sequential(*layers))
        output_channel = _make_divisible(1280 * width_mult, 8) if width_mult > 1.0 else 1280
        self.conv = self.add_module('conv', Sequential(
            Conv2d(input_channel, output_channel, 1, 1, 0, bias=False, **kw),
            BatchNorm2d(output_channel, dtype=self.dtype), ReLU6(dtype=self.dtype)))
        self.avgpool = self.add_module('avgpool', AdaptiveAvgPool2d((1, 1), dtype=self.dtype))
        self.classifier_route = self.add_module('classifier_route',
                                                CondConvRouting(output_channel, num_experts, **kw))
        self.classifier = self.add_module('classifier', RoutedCondConv2d(
            output_channel, num_classes, kernel_size=1, bias=False, num_experts=num_experts, **kw))
        self._initialize_weights()

    def _initialize_weights(self):
        """The official ``_initialize_weights``: ``nn.Conv2d`` N(0, 2 / (k*k*C_out)), BatchNorm 1/0,
        routing Linears N(0, 0.01) with zero bias; the CondConv weights keep their own
        ``kaiming_uniform_(a=sqrt(5))`` on the whole 5-D tensor, U(+-1/sqrt(C_out*C_in/groups*k*k))."""
        for _, module in self.named_modules():
            if isinstance(module, Conv2d):
                module.params['weight'][...] = kaiming_normal_fan_out(
                    self.rng, module.params['weight'].shape, self.dtype)
            elif isinstance(module, RoutedCondConv2d):
                weight = module.params['weight']
                bound = 1.0 / math.sqrt(np.prod(weight.shape[1:]))
                weight[...] = self.rng.uniform(-bound, bound, weight.shape)
            elif isinstance(module, Linear):
                module.params['weight'][...] = self.rng.normal(0.0, 0.01, module.params['weight'].shape)
                module.params['bias'][...] = 0

    def forward(self, x):
        """``(N, 3, H, W) -> (N, num_classes)`` logits (the official ``squeeze_()`` also drops the
        batch axis when ``N == 1``; the batch axis is kept here)."""
        _check_images(self, x)
        pooled = self.avgpool(self.conv(self.features(x)))                 # (N, C, 1, 1)
        y = self.classifier(pooled, self.classifier_route(pooled))         # (N, num_classes, 1, 1)
        return y.reshape(y.shape[:2])

    def backward(self, dout):
        """``dlogits (N, num_classes) -> dx (N, 3, H, W)``."""
        dpooled, drouting = self.classifier.backward(dout.reshape(dout.shape + (1, 1)))
        dpooled = dpooled + self.classifier_route.backward(drouting)
        return self.features.backward(self.conv.backward(self.avgpool.backward(dpooled)))

    def macs(self, input_shape):
        total, shape = self.features.macs(input_shape)
        m, shape = self.conv.macs(shape)
        pooled = shape[:2] + (1, 1)
        route, _ = self.classifier_route.macs(pooled)
        head, out_shape = self.classifier.macs(pooled)
        return total + m + route + head, out_shape[:2]


def cond_mobilenetv2(num_classes=1000, width_mult=1.0, num_experts=8, *, dtype=np.float32, rng=None):
    """CondConv-MobileNetV2 (CondConv, NeurIPS 2019), d-li14's ``cond_mobilenetv2(**kwargs)``.

    Parameters
    ----------
    num_classes : int
    width_mult : float
        Channel multiplier; the last convolution keeps 1280 channels unless ``width_mult > 1``.
    num_experts : int
        Experts per CondConv layer (8, the official default).
    dtype, rng : keyword-only
        Parameter dtype; seed or Generator for the initialisation.

    Returns
    -------
    CondMobileNetV2
        ``forward(x (N, 3, H, W)) -> logits (N, num_classes)``; ``state_dict()`` keys as the official
        module.
    """
    return CondMobileNetV2(num_classes, width_mult, num_experts, dtype=dtype, rng=rng)
