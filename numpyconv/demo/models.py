"""The demo network: one small CNN template whose two middle blocks use the technique under test.

::

    input   (N, 1, 32, 32)
    stem    Conv2d(1, C, 3, stride 2, padding 1) - BatchNorm2d - ReLU      -> (N, C, 16, 16)
    block1  relu(x + BN(<technique>(x)))    C -> C, 3x3, stride 1          -> (N, C, 16, 16)
    pool    AvgPool2d(2)                                                   -> (N, C, 8, 8)
    block2  relu(x + BN(<technique>(x)))                                   -> (N, C, 8, 8)
    head    GlobalAvgPool2d - Linear(C, 10)                                -> (N, 10)

The blocks are residual, as in every architecture these techniques were published in (ResNets,
RedNet, InternImage): DCNv4's zero-initialised mask makes its output exactly 0 at the start, which
behind a plain BN-ReLU would kill every gradient; with the identity path the block starts as the
identity. Every technique keeps the channel count, so one template serves all twelve.
Involution mixes no channels (one kernel per group of 16), so as RedNet, which sandwiches it
between 1x1 convolutions, and as the depthwise-separable pair, it is followed by a pointwise
convolution. Octave convolution splits the feature map: block1 is OctResNet's first octave layer
(``alpha_in = 0``, ``alpha_out = 0.5``), block2 the last (``alpha_in = 0.5``, ``alpha_out = 0``),
each with OctResNet's 1x1 octave projection shortcut; BN, ReLU and the pool act on each part.
KernelWarehouse's two layers share one warehouse (sharing range ``layer``, as KW's ResNets), owned
by the network as ``warehouse_manager``.

Temperature schedules (:meth:`DemoNet.schedule`) come from the code each technique module follows,
with our run mapped onto the training run of that code (``step / total_steps = epoch / epochs``):

* DY-CNN (:func:`numpyconv.dynamic.dynamic_temperature`): the paper has no official code; the
  module follows kaijieshi7/Dynamic-convolution-Pytorch, an unofficial re-implementation, whose
  ``main.py`` trains 160 epochs (its default) and calls ``update_temperature()`` after each:
  ``T = 34 - 3 * epoch`` down to 1, reached after 11 of the 160 epochs;
* ODConv (:func:`numpyconv.odconv.odconv_temperature`): OSVAI/ODConv's ``main.py`` with the README's
  ResNet command (100 epochs, ``temp_epoch`` 10): 30 -> 1 linearly over the first 10 of the 100
  epochs, set every iteration;
* KernelWarehouse (:func:`numpyconv.kernel_warehouse.kw_temperature`): OSVAI/KernelWarehouse's
  ``main.py`` with its defaults for the ResNet and ConvNeXt configs (300 epochs, ``temp_epoch`` 20,
  ``temp_init_value`` 1.0): the blend ``t`` from 1 (each layer its own static cells) to 0 over the
  first 20 of the 300 epochs, set every iteration;
* CondConv has no temperature (sigmoid routing).

A trained model is evaluated at the end values (``T = 1``, ``t = 0``): :meth:`DemoNet.finish_schedule`.
"""
from collections import namedtuple

import numpy as np

from ..conv import Conv2d, PointwiseConv2d, SeparableConv2d
from ..condconv import CondConv2d
from ..dcnv3 import DCNv3
from ..dcnv4 import DCNv4
from ..deformable import DeformConv2d, ModulatedDeformConv2d
from ..dynamic import DynamicConv2d, dynamic_temperature
from ..involution import Involution2d
from ..kernel_warehouse import KWConv2d, WarehouseManager, kw_temperature
from .. import AvgPool2d, GlobalAvgPool2d, ReLU
from .._checks import count_int, positive_int
from ..layers import BatchNorm2d, Linear
from ..module import Module, Sequential, make_rng, no_grad
from ..octave import OctaveConv2d
from ..odconv import ODConv2d, odconv_temperature

NUM_CLASSES = 10
INPUT_SHAPE = (1, 32, 32)
# the training runs our schedules are mapped onto: (epochs of the run, epochs annealed)
DYNAMIC_RUN = (160, 11)    # kaijieshi7's main.py default; T reaches 1 after 11 updates
ODCONV_RUN = (100, 10)     # OSVAI/ODConv README's ResNet command, main.py's temp_epoch
KW_RUN = (300, 20)         # OSVAI/KernelWarehouse main.py defaults (epochs, temp_epoch)

Technique = namedtuple('Technique', 'label make_layer')


# -- temperature schedules, our run mapped onto the run of each technique's code --------------------
def _annealed_steps(total_steps, run):
    """The number of our steps that stands for the annealed epochs of ``run = (epochs, annealed)``."""
    epochs, annealed = run
    return max(1, round(total_steps * annealed / epochs))


def _steps(step, total_steps):
    """Check a schedule's arguments: ``step`` an int >= 0, ``total_steps`` an int >= 1."""
    return count_int(step, 'step'), positive_int(total_steps, 'total_steps')


def dynamic_schedule(step, total_steps):
    """DY-CNN temperature at 0-based ``step``: one ``update_temperature()`` per epoch of kaijieshi7's 160."""
    step, total_steps = _steps(step, total_steps)
    return dynamic_temperature(step * DYNAMIC_RUN[0] // total_steps)


def odconv_schedule(step, total_steps):
    """ODConv temperature at ``step``: the official iteration ``step + 1`` of a 10-of-100-epoch anneal."""
    step, total_steps = _steps(step, total_steps)
    return odconv_temperature(step + 1, 0, 1, temp_epoch=_annealed_steps(total_steps, ODCONV_RUN))


def kw_schedule(step, total_steps):
    """KernelWarehouse blend ``t`` at ``step``: the official iteration ``step + 1`` of a 20-of-300-epoch
    anneal."""
    step, total_steps = _steps(step, total_steps)
    return kw_temperature(step + 1, 0, 1, temp_epoch=_annealed_steps(total_steps, KW_RUN))


def _set_dynamic(layer, value):
    layer.temperature = value


def _set_by_update(layer, value):
    layer.update_temperature(value)


# layer class -> (schedule, setter)
SCHEDULES = {DynamicConv2d: (dynamic_schedule, _set_dynamic),
             ODConv2d: (odconv_schedule, _set_by_update),
             KWConv2d: (kw_schedule, _set_by_update)}


# -- the technique layers (C -> C, 3x3, stride 1, 'same' size): make_layer(C, dtype/rng kwargs) -------
TECHNIQUES = {
    'conv': Technique('Conv', lambda c, kw: Conv2d(c, c, 3, padding=1, bias=False, **kw)),
    'separable': Technique('Depthwise-separable',
                           lambda c, kw: SeparableConv2d(c, c, 3, padding=1, bias=False, **kw)),
    'octave': Technique('Octave (alpha 0.5)', None),            # OctaveBlock, see DemoNet._block
    'dynamic': Technique('DY-CNN (K=4)',
                         lambda c, kw: DynamicConv2d(c, c, 3, padding=1, bias=False, K=4, **kw)),
    'condconv': Technique('CondConv (4 experts)',
                          lambda c, kw: CondConv2d(c, c, 3, padding=1, bias=False, num_experts=4,
                                                      **kw)),
    'odconv': Technique('ODConv (4 kernels)',
                        lambda c, kw: ODConv2d(c, c, 3, padding=1, kernel_num=4, **kw)),
    'kw': Technique('KernelWarehouse (1x)', None),              # reserved from the manager
    'dcnv1': Technique('Deformable v1',
                       lambda c, kw: DeformConv2d(c, c, 3, padding=1, **kw)),
    'dcnv2': Technique('Deformable v2',
                       lambda c, kw: ModulatedDeformConv2d(c, c, 3, padding=1, bias=False, **kw)),
    'dcnv3': Technique('DCNv3', lambda c, kw: DCNv3(c, 3, pad=1, group=max(c // 16, 1), **kw)),
    'dcnv4': Technique('DCNv4', lambda c, kw: DCNv4(c, 3, pad=1, group=max(c // 16, 1),
                                                       dw_kernel_size=3, output_bias=False, **kw)),
    'involution': Technique('Involution (+1x1)', lambda c, kw: Sequential(
        Involution2d(c, 3, **kw), PointwiseConv2d(c, c, bias=False, **kw))),
}


def technique_label(name):
    """The display name of a technique key (``'dcnv2'`` -> ``'Deformable v2'``)."""
    if not isinstance(name, str) or name not in TECHNIQUES:
        raise ValueError(f"technique must be one of {', '.join(TECHNIQUES)}, got {name!r}")
    return TECHNIQUES[name].label


# -- blocks ------------------------------------------------------------------------------------------
class ResidualBlock(Module):
    """``y = relu(x + BN(layer(x)))``: the technique layer in a basic residual block.

    The identity path lets a branch that starts at exactly 0 (DCNv4's zero mask) start as the
    identity, as in the architectures the techniques were published with.
    """

    def __init__(self, layer, channels, *, dtype):
        super().__init__(dtype=dtype)
        self.layer = self.add_module('layer', layer)
        self.bn = self.add_module('bn', BatchNorm2d(channels, dtype=dtype))
        self.relu = self.add_module('relu', ReLU(dtype=dtype))

    def forward(self, x):
        return self.relu(x + self.bn(self.layer(x)))

    def backward(self, dout):
        dsum = self.relu.backward(dout)
        return dsum + self.layer.backward(self.bn.backward(dsum))

    def macs(self, input_shape):
        return self.layer.macs(input_shape)


class OctaveConvBN(Module):
    """``OctaveConv2d`` then a BatchNorm2d on each output part; pairs in, pairs out."""

    def __init__(self, channels, kernel_size, alpha_in, alpha_out, *, dtype, rng):
        super().__init__(dtype=dtype, rng=rng)
        self.conv = self.add_module('conv', OctaveConv2d(
            channels, channels, kernel_size, alpha_in, alpha_out, padding=kernel_size // 2,
            dtype=dtype, rng=self.rng))
        self.parts = [p for p in 'hl' if self.conv.out_split[p]]
        for p in self.parts:
            self.add_module(f'bn_{p}', BatchNorm2d(self.conv.out_split[p], dtype=dtype))

    def forward(self, x):
        y = dict(zip('hl', self.conv(x)))                          # y_l None when alpha_out = 0
        return tuple(self._modules[f'bn_{p}'](y[p]) if p in self.parts else None for p in 'hl')

    def backward(self, dout):
        dy = tuple(self._modules[f'bn_{p}'].backward(d) if p in self.parts else None
                   for p, d in zip('hl', dout))
        return self.conv.backward(dy)                              # (dx_h, dx_l)

    def macs(self, input_shape):
        return self.conv.macs(input_shape)


def _add(a, b):
    return None if a is None else a + b


class OctaveBlock(Module):
    """The residual block of d-li14's OctResNet with one 3x3 octave convolution.

    ``y_p = relu(BN(conv(x))_p + BN(shortcut(x))_p)`` per part ``p``; as in OctResNet the shortcut
    is a 1x1 octave convolution + BN wherever ``alpha`` changes (always here: block1 is the first
    octave layer, ``alpha_in = 0``; block2 the last, ``alpha_out = 0``). Takes a tensor or a pair,
    returns a pair, or the high part alone when ``alpha_out = 0``.
    """

    def __init__(self, channels, alpha_in, alpha_out, *, dtype, rng):
        super().__init__(dtype=dtype, rng=rng)
        kw = dict(dtype=dtype, rng=self.rng)
        self.main = self.add_module('main', OctaveConvBN(channels, 3, alpha_in, alpha_out, **kw))
        self.shortcut = self.add_module('shortcut', OctaveConvBN(channels, 1, alpha_in, alpha_out,
                                                                 **kw))
        self.conv = self.main.conv
        for p in self.main.parts:
            self.add_module(f'relu_{p}', ReLU(dtype=dtype))

    def forward(self, x):
        self._pair_input = isinstance(x, tuple)
        out = tuple(self._modules[f'relu_{p}'](a + b) if a is not None else None
                    for p, a, b in zip('hl', self.main(x), self.shortcut(x)))
        return out if 'l' in self.main.parts else out[0]

    def backward(self, dout):
        dout = dout if isinstance(dout, tuple) else (dout, None)
        dsum = tuple(self._modules[f'relu_{p}'].backward(d) if d is not None else None
                     for p, d in zip('hl', dout))
        dx = tuple(map(_add, self.main.backward(dsum), self.shortcut.backward(dsum)))
        return dx if self._pair_input else dx[0]

    def macs(self, input_shape):
        main, output_shape = self.main.macs(input_shape)
        return main + self.shortcut.macs(input_shape)[0], output_shape


class PerPart(Module):
    """Applies ``high`` to the high-frequency and ``low`` to the low-frequency part of a pair."""

    def __init__(self, high, low):
        super().__init__(dtype=high.dtype)
        self.add_module('high', high)
        self.add_module('low', low)

    def forward(self, x):
        return self._modules['high'](x[0]), self._modules['low'](x[1])

    def backward(self, dout):
        return self._modules['high'].backward(dout[0]), self._modules['low'].backward(dout[1])

    def macs(self, input_shape):
        return self._modules['high'].macs(input_shape)


# -- the network -------------------------------------------------------------------------------------
class DemoNet(Module):
    """The template network (module docstring) with ``technique`` in block1 and block2.

    ``state_dict`` keys: ``stem.*``, ``block1.*``, ``block2.*``, ``head.1.*`` and, for
    KernelWarehouse, ``warehouse_manager.weights.0``.
    """

    def __init__(self, technique, width=32, *, dtype=np.float32, rng=None):
        if technique not in TECHNIQUES:
            raise ValueError(f"technique must be one of {', '.join(TECHNIQUES)}, got {technique!r}")
        super().__init__(dtype=dtype, rng=make_rng(rng))
        self.technique, self.width = technique, width
        kw = dict(dtype=self.dtype, rng=self.rng)
        if technique == 'kw':
            self.warehouse_manager = self.add_module('warehouse_manager', WarehouseManager(
                reduction=0.0625, cell_num_ratio=1, sharing_range=('layer',), **kw))
        self.stem = self.add_module('stem', Sequential(
            Conv2d(INPUT_SHAPE[0], width, 3, stride=2, padding=1, bias=False, **kw),
            BatchNorm2d(width, **kw), ReLU(**kw)))
        self.block1 = self.add_module('block1', self._block(0))
        pool = AvgPool2d(2, **kw)
        self.pool = self.add_module('pool', PerPart(pool, AvgPool2d(2, **kw)) if technique == 'octave'
                                    else pool)
        self.block2 = self.add_module('block2', self._block(1))
        self.head = self.add_module('head', Sequential(GlobalAvgPool2d(**kw),
                                                       Linear(width, NUM_CLASSES, **kw)))
        if technique == 'kw':
            self.warehouse_manager.store()
            self.warehouse_manager.allocate(self.technique_layers())

    def _block(self, position):
        kw = dict(dtype=self.dtype, rng=self.rng)
        if self.technique == 'octave':
            alphas = (0.0, 0.5) if position == 0 else (0.5, 0.0)     # first / last octave layer
            return OctaveBlock(self.width, *alphas, **kw)
        if self.technique == 'kw':                       # one warehouse for both (name fused)
            layer = self.warehouse_manager.reserve(self.width, self.width, 3, padding=1, bias=False,
                                                   warehouse_name=f'stage1_layer{position + 1}_conv1')
        else:
            layer = TECHNIQUES[self.technique].make_layer(self.width, kw)
        return ResidualBlock(layer, self.width, dtype=self.dtype)

    def technique_layers(self):
        """The two layers of the technique under test (block1's, block2's)."""
        layers = [b.conv if isinstance(b, OctaveBlock) else b.layer for b in (self.block1, self.block2)]
        return [layer[0] if isinstance(layer, Sequential) else layer for layer in layers]

    # -- temperature schedules --------------------------------------------------------------------
    def schedule(self, step, total_steps):
        """Set every scheduled layer's temperature for the 0-based training ``step``."""
        for layer in self.technique_layers():
            if type(layer) in SCHEDULES:
                rule, setter = SCHEDULES[type(layer)]
                setter(layer, rule(step, total_steps))

    def finish_schedule(self):
        """The end-of-training temperatures, used for inference (``T = 1``, KW ``t = 0``)."""
        self.schedule(1, 1)

    # -- computation ------------------------------------------------------------------------------
    def forward(self, x):
        self._check_input(x, channels=INPUT_SHAPE[0])
        for name in ('stem', 'block1', 'pool', 'block2', 'head'):
            x = self._modules[name](x)
        return x

    def backward(self, dout):
        for name in ('head', 'block2', 'pool', 'block1', 'stem'):
            dout = self._modules[name].backward(dout)
        return dout

    def macs(self, input_shape):
        total = 0
        for name in ('stem', 'block1', 'pool', 'block2', 'head'):
            m, input_shape = self._modules[name].macs(input_shape)
            total += m
        return total, input_shape

    def block_inputs(self, x):
        """``[input of block1 (N, C, 16, 16), input of block2 (N, C, 8, 8)]`` for ``x (N, 1, 32, 32)``
        (block2's a (high, low) pair for octave), in eval mode, keeping nothing for a backward pass."""
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                first = self.stem(x)
                return [first, self.pool(self.block1(first))]
        finally:
            self.train(was_training)

    def predict(self, x, batch_size=256):
        """Class scores ``(N, 10)`` in eval mode, computed in batches."""
        was_training = self.training
        self.eval()
        try:
            return np.concatenate([self(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
                                  or [np.zeros((0, NUM_CLASSES), self.dtype)])
        finally:
            self.train(was_training)


def build_model(technique, width=32, seed=0, dtype=np.float32):
    """A fresh :class:`DemoNet`; the same ``seed`` gives the same initial weights."""
    return DemoNet(technique, width, dtype=dtype, rng=seed)


# -- what the figures read from a layer after a forward pass ------------------------------------------
def kernel_attention(layer):
    """``(N, K)`` per-sample weights over the kernel bank of the last forward (DY-CNN softmax,
    CondConv sigmoid routing, ODConv kernel-wise softmax)."""
    if isinstance(layer, ODConv2d):
        return layer._cache['att']['kernel']
    return layer._cache['conv']['attention']


def involution_kernels(layer):
    """``(N, G, kh, kw, Ho, Wo)``: the kernels an Involution2d generated in its last forward."""
    kernel = layer._cache['kernel']                       # (N, G*kh*kw, Ho, Wo)
    n, _, ho, wo = kernel.shape
    return kernel.reshape(n, layer.groups, *layer.kernel_size, ho, wo)
