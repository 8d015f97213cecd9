"""Containers shared by the network builders: named children run in an explicit order.

An official network is a tree of modules whose registration order fixes its state_dict order
(``torch.nn.Module`` lists each module's parameters, then its buffers, then its children's, in the
order they were assigned), while its ``forward`` may run them in another order and add residuals.
Two containers reproduce both:

* :class:`Chain`: children registered under the official names, run in the order of
  ``self.steps`` (child names, or unregistered parameter-free layers such as a ReLU used several
  times: each use keeps its own cache), or in registration order when ``steps`` is None;
* :class:`Residual`: a :class:`Chain` whose steps are the residual branch, with the shortcut
  (``downsample`` child or the identity), an optional ``drop_path`` child on the branch and a final
  activation::

      y = act(shortcut(x) + drop_path(branch(x)))
      d branch = drop_path^T(act^T(dy)),   dx = branch^T(d branch) + shortcut^T(act^T(dy))

Both give ``forward``, ``backward`` (accumulating every parameter gradient) and ``macs``
(``numpyconv.count``) from their steps, as :class:`~numpyconv.Sequential` does (which, under
:class:`~numpyconv.no_grad`, runs an eval-mode BatchNorm and the ReLU after it as one pass). Under
``no_grad`` a :class:`Residual` adds the shortcut and applies its activation in one pass too, together
with the branch's last BatchNorm when it is in eval mode; the output is the same to the bit.
"""
import math

import numpy as np

from ..activations import ReLU, clamped_sum
from ..conv import Conv2d
from ..layers import BatchNorm2d
from ..module import Module, Sequential, fans, infers_clamped, is_grad_enabled


class Chain(Sequential):
    """Children under official names (``add_module``), run in the order of ``self.steps``.

    A step is the name of a child or a parameter-free layer that is not registered (it has no
    state_dict entry and ignores train/eval). ``steps`` None (the default): every child, in the
    order of registration (a :class:`~numpyconv.Sequential` with named children).
    """

    def __init__(self, *, dtype=np.float32, rng=None):
        Module.__init__(self, dtype=dtype, rng=rng)
        self.steps = None

    def _layers(self):
        if self.steps is None:
            return list(self._modules.values())
        return [self._modules[step] if isinstance(step, str) else step for step in self.steps]

    def train(self, mode=True):
        """As ``Module.train``; inside every module with a true ``norm_eval`` attribute (mmcv's
        option), the BatchNorm layers stay in eval mode: running statistics used and frozen."""
        super().train(mode)
        if mode:
            for _, module in self.named_modules():
                if getattr(module, 'norm_eval', False):
                    for _, norm in module.named_modules():
                        if isinstance(norm, BatchNorm2d):
                            norm.training = False
        return self


class Residual(Chain):
    """A residual block: ``act(shortcut(x) + drop_path(branch(x)))`` (module docstring).

    The steps are the branch; the children ``downsample`` (the shortcut; absent: the identity) and
    ``drop_path`` (absent: none) are used when registered; ``act`` is a ReLU.
    """

    def __init__(self, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.act = ReLU()

    def forward(self, x):
        if not is_grad_enabled():
            return self._infer(x)
        out = super().forward(x)
        if 'drop_path' in self._modules:
            out = self._modules['drop_path'](out)
        identity = self._modules['downsample'](x) if 'downsample' in self._modules else x
        return self.act(out + identity)

    def _infer(self, x):
        """The forward pass under ``no_grad``: the branch's last BatchNorm (eval mode; a drop path
        after it is then the identity), the sum and the ReLU in one pass, or the sum and the ReLU in
        one pass; the output is the same to the bit."""
        self.act._forget()
        layers, drop_path = self._layers(), self._modules.get('drop_path')
        fuse = bool(layers) and infers_clamped(layers[-1]) and (drop_path is None or not drop_path.training)
        out = self._run(layers[:-1] if fuse else layers, x)
        identity = self._modules['downsample'](x) if 'downsample' in self._modules else x
        if fuse and out.shape == identity.shape and out.dtype == identity.dtype:
            layers[-1]._forget()
            return layers[-1]._inference_clamped(out, *self.act._bounds, residual=identity)
        if fuse:
            out = layers[-1](out)
        elif drop_path is not None:
            out = drop_path(out)
        if out.shape == identity.shape and out.dtype == identity.dtype:
            return clamped_sum(out, identity, *self.act._bounds)          # sum and ReLU: one pass
        return self.act(out + identity)

    def backward(self, dout):
        dsum = self.act.backward(dout)
        dbranch = self._modules['drop_path'].backward(dsum) if 'drop_path' in self._modules else dsum
        dx = super().backward(dbranch)
        return dx + (self._modules['downsample'].backward(dsum) if 'downsample' in self._modules else dsum)

    def macs(self, input_shape):
        total, out_shape = super().macs(input_shape)
        if 'downsample' in self._modules:
            total += self._modules['downsample'].macs(input_shape)[0]
        return total, out_shape


def init_convs_fan_out(network, layer_type=Conv2d):
    """The official constructors' ``kaiming_normal_(w, mode='fan_out', nonlinearity='relu')`` on the
    weight of every ``layer_type`` module of ``network`` (in registration order, from its rng)."""
    for _, module in network.named_modules():
        if type(module) is layer_type:
            weight = module.params['weight']
            std = math.sqrt(2.0 / fans(weight.shape)[1])
            weight[...] = network.rng.standard_normal(weight.shape, dtype=weight.dtype) * std


def init_normal(layer, rng, std):
    """``normal_(weight, 0, std)`` and a zero bias (the official heads' ``Linear`` initialisation)."""
    layer.params['weight'][...] = std * rng.standard_normal(layer.params['weight'].shape)
    layer.params['bias'][...] = 0


def set_masks(network, masks):
    """Give dropout / drop-path layers of ``network`` explicit keep masks: ``masks`` maps a module
    key (``'dropout'``, ``'layer1.0.drop_path'``) to a boolean mask, or None to draw again."""
    modules = {name[:-1]: module for name, module in network.named_modules()}
    for key, mask in masks.items():
        if key not in modules or not hasattr(type(modules[key]), 'mask'):
            raise KeyError(f"set_masks: {key!r} is not a dropout or drop-path layer of the network")
        modules[key].mask = mask


def no_download(pretrained=False, progress=True):
    """The official builders' download switches: ``pretrained`` (or torchvision's ``weights``) must
    be False or None, since numpyconv downloads nothing; ``progress`` only concerns a download."""
    if pretrained not in (False, None):
        raise ValueError(f"pretrained/weights={pretrained!r}: numpyconv downloads no weights; build the "
                         f"network, then model.load_state_dict(numpyconv.state_dict_of("
                         f"numpyconv.load_checkpoint(path)))")
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be a bool, got {progress!r}")


def official_value(name, value, allowed, why):
    """An official constructor argument numpyconv builds only at the values ``allowed`` (a tuple)."""
    if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
        raise ValueError(f"{name}={value!r} is not supported ({why}); accepted: "
                         f"{', '.join(map(repr, allowed))}")
