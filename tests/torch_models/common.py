"""Pieces shared by the PyTorch re-creations of the official networks (imported only where torch is).

The layer re-creations themselves live with their layer tests (``official_odconv_class`` in
test_odconv.py, ...) and are imported from there.
"""
import torch
from torch import nn


class MaskDropout(nn.Dropout):
    """``nn.Dropout`` whose keep mask can be given (``mask``, 0/1), as numpyconv's ``Dropout.mask``."""
    mask = None

    def forward(self, x):
        if not self.training or self.mask is None:
            return super().forward(x)
        return x * self.mask.to(x.dtype) / (1 - self.p)


class DropPath(nn.Module):
    """timm's ``DropPath``: ``x / keep_prob * mask`` per sample in training (timm 0.3.2, the
    KernelWarehouse requirement, always scales). The keep mask (``(N, 1, ..., 1)`` or ``(N,)``, 0/1)
    is the next of ``masks`` (consumed one per call: one module used twice in a block), else ``mask``
    (every call), else a random draw."""
    mask = None

    def __init__(self, drop_prob=0.0, scale_by_keep=True):
        super().__init__()
        self.drop_prob, self.scale_by_keep, self.masks = drop_prob, scale_by_keep, []

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = self.masks.pop(0) if self.masks else self.mask
        if mask is None:
            mask = torch.floor(keep_prob + torch.rand(shape, dtype=x.dtype))
        mask = mask.reshape(shape).to(x.dtype)
        return x * (mask / keep_prob if self.scale_by_keep else mask)


def swap_block_convs(model, make):
    """Replace convolutions of a torchvision ResNet's blocks in place: ``make(name, conv, stage)`` returns
    the module for ``layer<stage+1>.<i>.<name>`` (``conv1``, ``conv2``, ``conv3``, ``downsample.0``),
    or None to keep ``conv``. The replacement takes the place of the old module (same key order)."""
    for stage in range(4):
        for block in getattr(model, f'layer{stage + 1}'):
            for name in ('conv1', 'conv2', 'conv3'):
                conv = getattr(block, name, None)
                new = None if conv is None else make(name, conv, stage)
                if new is not None:
                    setattr(block, name, new)
            if block.downsample is not None:
                new = make('downsample', block.downsample[0], stage)
                if new is not None:
                    block.downsample[0] = new
    return model


def conv_args(conv):
    """``(in, out, kernel_size, stride, padding, dilation, groups)`` of a square ``nn.Conv2d``."""
    return (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0],
            conv.dilation[0], conv.groups)
