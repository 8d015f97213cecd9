"""OSVAI/KernelWarehouse ``models/kw_resnet.py`` in PyTorch (written from the official file).

The warehouse manager is the re-creation of ``modules/kernel_warehouse.py`` in test_kernel_warehouse.py;
``reserve(..., enabled=False)`` returns a plain ``nn.Conv2d`` as the official manager does. Blocks
name their warehouses ``stage{s}_layer{l}_conv{c}`` with the cross-stage handover of each stage's first
block; ``DropPath`` is timm's (0.3.2).
"""
import torch
from torch import nn

from test_kernel_warehouse import torch_kernel_warehouse
from torch_models.common import DropPath, MaskDropout

WarehouseManager = torch_kernel_warehouse(torch)


def reserve(manager, in_planes, out_planes, kernel_size, stride=1, warehouse_name=None, enabled=True):
    """``kwconv3x3`` / ``kwconv1x1`` (padding 1 / 0, no bias) with the official ``enabled`` flag."""
    padding = kernel_size // 2
    if not enabled:
        return nn.Conv2d(in_planes, out_planes, kernel_size, stride=stride, padding=padding, bias=False)
    return manager.reserve(in_planes, out_planes, kernel_size, stride, padding, bias=False,
                           warehouse_name=warehouse_name)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, stage_idx=None, layer_idx=None,
                 warehouse_manager=None, warehouse_handover=False, drop_path=0.):
        super().__init__()
        conv1_stage_idx = max(stage_idx - 1 if warehouse_handover else stage_idx, 0)
        self.conv1 = reserve(warehouse_manager, inplanes, planes, 3, stride,
                             f'stage{conv1_stage_idx}_layer{layer_idx}_conv0')
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        layer_idx = 0 if warehouse_handover else layer_idx
        self.conv2 = reserve(warehouse_manager, planes, planes, 3, 1,
                             f'stage{stage_idx}_layer{layer_idx}_conv1')
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(identity + self.drop_path(out))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, stage_idx=None, layer_idx=None,
                 warehouse_manager=None, warehouse_handover=False, drop_path=0.):
        super().__init__()
        conv1_stage_idx = stage_idx - 1 if warehouse_handover else stage_idx
        self.conv1 = reserve(warehouse_manager, inplanes, planes, 1, 1,
                             f'stage{conv1_stage_idx}_layer{layer_idx}_conv0', enabled=conv1_stage_idx >= 0)
        self.bn1 = nn.BatchNorm2d(planes)
        layer_idx = 0 if warehouse_handover else layer_idx
        self.conv2 = reserve(warehouse_manager, planes, planes, 3, stride,
                             f'stage{stage_idx}_layer{layer_idx}_conv1')
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = reserve(warehouse_manager, planes, planes * 4, 1, 1,
                             f'stage{stage_idx}_layer{layer_idx}_conv2')
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(identity + self.drop_path(out))


class KW_ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, dropout=0.1, reduction=0.0625, cell_num_ratio=1,
                 cell_inplane_ratio=1, cell_outplane_ratio=1, sharing_range=('layer', 'conv'),
                 nonlocal_basis_ratio=1, drop_path_rate=0.):
        super().__init__()
        self.warehouse_manager = WarehouseManager(reduction, cell_num_ratio, cell_inplane_ratio,
                                                  cell_outplane_ratio, sharing_range, nonlocal_basis_ratio)
        self.inplanes, self.layer_idx = 64, 0
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for stage, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if stage == 0 else 2
            layer = self._make_layer(block, planes, layers[stage], stride, stage, drop_path_rate)
            setattr(self, f'layer{stage + 1}', layer)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = MaskDropout(p=dropout)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.warehouse_manager.store()
        self.warehouse_manager.allocate([m for m in self.modules() if hasattr(m, 'init_attention')])

    def _make_layer(self, block, planes, blocks, stride, stage_idx, drop_path):
        manager, downsample = self.warehouse_manager, None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                reserve(manager, self.inplanes, planes * block.expansion, 1, stride,
                        f'stage{stage_idx - 1}_layer{self.layer_idx + 1}_conv0', enabled=stride != 1),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, stage_idx=stage_idx,
                        layer_idx=self.layer_idx, warehouse_manager=manager, warehouse_handover=True,
                        drop_path=drop_path)]
        self.layer_idx, self.inplanes = 1, planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, stage_idx=stage_idx, layer_idx=self.layer_idx,
                                warehouse_manager=manager, drop_path=drop_path))
            self.layer_idx += 1
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def kw_resnet18(**kwargs):
    return KW_ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def kw_resnet50(**kwargs):
    return KW_ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)
