"""KernelWarehouse ResNets (Li and Yao, ICML 2024) as OSVAI/KernelWarehouse ``models/kw_resnet.py``.

``KW_ResNet(block, layers, num_classes=1000, dropout=0.1, reduction=0.0625, cell_num_ratio=1,
cell_inplane_ratio=1, cell_outplane_ratio=1, sharing_range=('layer', 'conv'), nonlocal_basis_ratio=1,
drop_path_rate=0.)``: the torchvision ResNet tree (:mod:`numpyconv.models.resnet`) whose block and
downsample convolutions come from one :class:`~numpyconv.WarehouseManager`, registered first as
``warehouse_manager`` (keys ``warehouse_manager.weights.<i>``, before ``conv1.weight``).

Warehouse names (official, ``sharing_range`` then fuses ``layer<l>`` / ``conv<c>``), for a block at
stage ``s`` with the running ``layer_idx`` ``l`` (:class:`~numpyconv.models.resnet.Place`):

* conv1 ``stage{s'}_layer{l}_conv0``: the first block of a stage (``warehouse_handover``) hands its
  first convolution over to the previous stage's warehouse, ``s' = s - 1``; in stage 0 a
  BasicBlock keeps it (``s' = max(s - 1, 0)``) while a Bottleneck's becomes a plain ``Conv2d``
  (official ``enabled=(s' >= 0)``);
* conv2 / conv3 ``stage{s}_layer{l'}_conv1`` / ``..._conv2``, ``l' = 0`` for the handover block;
* the downsample 1x1 ``stage{s - 1}_layer{l + 1}_conv0``, reserved before the block's convolutions
  but registered after them, and a plain ``Conv2d`` where it does not stride (``enabled=(stride !=
  1)``: ResNet-50's layer1).

The warehouses are created after the whole tree (``store()``) and the attentions allocated in
registration order (``allocate(network)``), as officially. ``drop_path_rate`` gives every block a
``DropPath`` of that probability on its residual branch (``identity + drop_path(branch)``), the
official constant rate; ``Dropout(dropout)`` precedes ``fc``. Temperatures start at 0 (official
``temp_value``) and are not saved; :meth:`KWResNet.net_update_temperature` sets them all.

Configurations (``configs/resnet*/kw*.json``): ``cell_num_ratio, cell_inplane_ratio,
cell_outplane_ratio`` = 1, 1, 1 (KW 1x), 2, 1, 1 (2x), 4, 1, 1 (4x), 0.5, 0.5, 0.5 (1/2x; ResNet-50
adds ``nonlocal_basis_ratio=0.0625``), 0.25, 0.5, 0.5 (ResNet-18 1/4x); :data:`KW_CONFIGS`. The
configs pass ``sharing_range="layer_conv"``, a string the official manager iterates letter by
letter: for these names it fuses the same warehouses as the default ``('layer', 'conv')``.

Parameter counts (``numpyconv.count``, 1000 classes; OSVAI/KernelWarehouse README): KW-ResNet-18
11.93M (1x), 23.24M (2x), 45.86M (4x), 7.43M (1/2x), and 4.03M for 1/4x where the README gives
4.08M; KW-ResNet-50 28.05M (1x), 102.02M (4x), 17.64M (1/2x).
"""
import numpy as np

from ..kernel_warehouse import KWConv2d, WarehouseManager
from ._common import Chain, init_convs_fan_out, no_download
from .resnet import BasicBlock, Bottleneck, Convs, ResNet

KW_CONFIGS = {
    'kw1x': dict(cell_num_ratio=1, cell_inplane_ratio=1, cell_outplane_ratio=1),
    'kw2x': dict(cell_num_ratio=2, cell_inplane_ratio=1, cell_outplane_ratio=1),
    'kw4x': dict(cell_num_ratio=4, cell_inplane_ratio=1, cell_outplane_ratio=1),
    'kw1d2x_resnet18': dict(cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5),
    'kw1d2x_resnet50': dict(cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5,
                            nonlocal_basis_ratio=0.0625),
    'kw1d4x_resnet18': dict(cell_num_ratio=0.25, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5),
}
"""The cell ratios of the official ``configs/resnet18/kw*.json`` and ``configs/resnet50/kw*.json``
(``reduction`` 0.0625 in all; the configs' ``drop_path`` / ``dropout`` are training options)."""


def warehouse_name(place, position):
    """``(warehouse_name, enabled)`` of a block convolution (module docstring)."""
    stage, layer, handover, expansion = place
    if position == 'downsample':
        return f'stage{stage - 1}_layer{layer + 1}_conv0', None
    if position == 'conv1':
        conv1_stage = stage - 1 if handover else stage
        if expansion == 1:                               # BasicBlock: kept in stage 0
            return f'stage{max(conv1_stage, 0)}_layer{layer}_conv0', True
        return f'stage{conv1_stage}_layer{layer}_conv0', conv1_stage >= 0
    index = int(position[-1]) - 1                        # conv2 -> conv1, conv3 -> conv2
    return f'stage{stage}_layer{0 if handover else layer}_conv{index}', True


class KWConvs(Convs):
    """Block convolutions reserved in a :class:`~numpyconv.WarehouseManager` (``kwconv3x3`` /
    ``kwconv1x1``: padding 1 / 0, no bias), named by :func:`warehouse_name`."""

    def __init__(self, manager):
        super().__init__(dtype=manager.dtype, rng=manager.rng)
        self.manager = manager

    def __call__(self, place, position, in_planes, out_planes, kernel_size, stride=1, dilation=1, groups=1):
        name, enabled = warehouse_name(place, position)
        if enabled is None:
            enabled = stride != 1
        return self.manager.reserve(in_planes, out_planes, kernel_size, stride, kernel_size // 2, bias=False,
                                    warehouse_name=name, enabled=enabled)


class KWResNet(ResNet):
    """Official ``KW_ResNet``; ``forward(x (N, 3, H, W)) -> (N, num_classes)``.

    Parameters
    ----------
    block : BasicBlock or Bottleneck
    layers : sequence of 4 ints
    num_classes : int
    dropout : float
        Dropout probability before ``fc``.
    reduction, cell_num_ratio, cell_inplane_ratio, cell_outplane_ratio, sharing_range, nonlocal_basis_ratio
        The :class:`~numpyconv.WarehouseManager` options (per-warehouse values as sequences).
    drop_path_rate : float
        Stochastic depth probability of every block.
    base_channels : int, keyword-only
        Test-size option (:mod:`numpyconv.models.resnet`); 64 officially.
    dtype, rng : keyword-only
    """

    def __init__(self, block, layers, num_classes=1000, dropout=0.1, reduction=0.0625, cell_num_ratio=1,
                 cell_inplane_ratio=1, cell_outplane_ratio=1, sharing_range=('layer', 'conv'),
                 nonlocal_basis_ratio=1, drop_path_rate=0.0, *, base_channels=64, dtype=np.float32, rng=None):
        Chain.__init__(self, dtype=dtype, rng=rng)
        manager = self.add_module('warehouse_manager', WarehouseManager(
            reduction, cell_num_ratio, cell_inplane_ratio, cell_outplane_ratio, sharing_range,
            nonlocal_basis_ratio, dtype=self.dtype, rng=self.rng))
        self.build(block, layers, KWConvs(manager), num_classes, base_channels=base_channels, dropout=dropout,
                   drop_path=drop_path_rate)
        init_convs_fan_out(self)                         # the plain convolutions
        manager.store()
        manager.allocate(self)

    def net_update_temperature(self, temperature):
        """Set the temperature of every KWConv2d (official ``net_update_temperature``)."""
        for _, module in self.named_modules():
            if isinstance(module, KWConv2d):
                module.update_temperature(temperature)


def kw_resnet18(*, num_classes=1000, dropout=0.1, reduction=0.0625, cell_num_ratio=1, cell_inplane_ratio=1,
                cell_outplane_ratio=1, sharing_range=('layer', 'conv'), nonlocal_basis_ratio=1,
                drop_path_rate=0.0, base_channels=64, pretrained=False, layer_scale_init_value=None,
                head_init_scale=None, dtype=np.float32, rng=None):
    """Official ``kw_resnet18``: KWResNet(BasicBlock, [2, 2, 2, 2]); arguments as :class:`KWResNet`
    (the constructor's defaults: KW 1x; ``**KW_CONFIGS[name]`` for the other configs).
    ``layer_scale_init_value`` and ``head_init_scale``, which KernelWarehouse's ``main.py`` passes to
    every model, are accepted and unused, as the official ``KW_ResNet`` leaves them in ``**kwargs``;
    ``pretrained`` must be False (numpyconv downloads nothing).

    Returns
    -------
    KWResNet
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``.
    """
    no_download(pretrained)
    return KWResNet(BasicBlock, [2, 2, 2, 2], num_classes, dropout, reduction, cell_num_ratio,
                    cell_inplane_ratio, cell_outplane_ratio, sharing_range, nonlocal_basis_ratio,
                    drop_path_rate, base_channels=base_channels, dtype=dtype, rng=rng)


def kw_resnet50(*, num_classes=1000, dropout=0.1, reduction=0.0625, cell_num_ratio=1, cell_inplane_ratio=1,
                cell_outplane_ratio=1, sharing_range=('layer', 'conv'), nonlocal_basis_ratio=1,
                drop_path_rate=0.0, base_channels=64, pretrained=False, layer_scale_init_value=None,
                head_init_scale=None, dtype=np.float32, rng=None):
    """Official ``kw_resnet50``: KWResNet(Bottleneck, [3, 4, 6, 3]); arguments as :func:`kw_resnet18`.

    Returns
    -------
    KWResNet
        ``forward(x (N, 3, H, W)) -> (N, num_classes)``.
    """
    no_download(pretrained)
    return KWResNet(Bottleneck, [3, 4, 6, 3], num_classes, dropout, reduction, cell_num_ratio,
                    cell_inplane_ratio, cell_outplane_ratio, sharing_range, nonlocal_basis_ratio,
                    drop_path_rate, base_channels=base_channels, dtype=dtype, rng=rng)
