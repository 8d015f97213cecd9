"""``numpyconv inspect``: each layer kind is recognised from its own state_dict saved as a checkpoint."""
import re

import numpy as np
import pytest

import numpyconv as nc
from numpyconv import cli
from numpyconv.inspection import format_inspection, inspect_state_dict

DATA = __import__('pathlib').Path(__file__).parent / 'data'


def warehouse(**options):
    manager = nc.WarehouseManager(rng=0, **options)
    layers = [manager.reserve(16, 16, 3, padding=1), manager.reserve(16, 32, 3, padding=1)]
    manager.store()
    manager.allocate(layers)
    return manager, layers


LAYERS = [
    ('Conv2d', lambda: nc.Conv2d(4, 8, 3, rng=0)),
    ('Conv2d', lambda: nc.Conv2d(4, 8, (3, 5), groups=2, bias=False, rng=0)),
    ('DepthwiseConv2d', lambda: nc.Conv2d(4, 8, 3, groups=4, rng=0)),
    ('DepthwiseConv2d', lambda: nc.DepthwiseConv2d(4, 3, depth_multiplier=2, rng=0)),
    ('PointwiseConv2d', lambda: nc.PointwiseConv2d(4, 8, rng=0)),
    ('SeparableConv2d', lambda: nc.SeparableConv2d(4, 8, 3, rng=0)),
    ('OctaveConv2d', lambda: nc.OctaveConv2d(8, 8, 3, rng=0)),
    ('OctaveConv2d', lambda: nc.OctaveConv2d(8, 8, 3, alpha_in=0, bias=True, rng=0)),
    ('OctaveConv2d', lambda: nc.OctaveConv2d(8, 8, 3, alpha_out=0, rng=0)),
    ('DynamicConv2d', lambda: nc.DynamicConv2d(8, 8, 3, rng=0)),
    ('DynamicConv2d', lambda: nc.DynamicConv2d(8, 8, 3, bias=False, K=2, rng=0)),
    ('CondConv2d', lambda: nc.CondConv2d(8, 8, 3, rng=0)),
    ('DeformConv2d', lambda: nc.DeformConv2d(8, 8, 3, rng=0)),
    ('DeformConv2d', lambda: nc.DeformConv2d(8, 8, 3, deform_groups=2, rng=0)),
    ('ModulatedDeformConv2d', lambda: nc.ModulatedDeformConv2d(8, 8, 3, rng=0)),
    ('ModulatedDeformConv2d', lambda: nc.ModulatedDeformConv2d(8, 8, (3, 1), deform_groups=4, rng=0)),
    ('ODConv2d', lambda: nc.ODConv2d(8, 8, 3, rng=0)),
    ('ODConv2d', lambda: nc.ODConv2d(8, 8, 1, kernel_num=1, rng=0)),
    ('Involution2d', lambda: nc.Involution2d(16, 3, rng=0)),
    ('Involution2d', lambda: nc.Involution2d(32, 7, stride=2, group_channels=8, rng=0)),
    ('KWConv2d', lambda: warehouse()[1][0]),
    ('KWConv2d', lambda: warehouse(nonlocal_basis_ratio=0.5)[1][1]),
    ('WarehouseManager', lambda: warehouse()[0]),
    ('DCNv3', lambda: nc.DCNv3(16, group=2, rng=0)),
    ('DCNv3', lambda: nc.DCNv3(16, group=2, center_feature_scale=True, dw_kernel_size=5, rng=0)),
    ('DCNv4', lambda: nc.DCNv4(16, group=2, rng=0)),
    ('DCNv4', lambda: nc.DCNv4(16, group=2, without_pointwise=True, rng=0)),
    ('BatchNorm2d', lambda: nc.BatchNorm2d(4, rng=0)),
    ('BatchNorm1d', lambda: nc.BatchNorm1d(4, affine=False, rng=0)),
    ('LayerNorm', lambda: nc.LayerNorm(6, rng=0)),
    ('Linear', lambda: nc.Linear(3, 4, rng=0)),
]


def names(group):
    return re.split(r' / | or ', group.layer or '')


@pytest.mark.parametrize('expected, make', LAYERS)
def test_each_layer_is_recognised_from_its_saved_state_dict(expected, make, tmp_path):
    layer = make()
    nc.save_checkpoint(layer.state_dict(), tmp_path / 'layer.pth')
    state = nc.load_checkpoint(tmp_path / 'layer.pth')
    groups = inspect_state_dict(state)
    assert len(groups) == 1 and groups[0].prefix == '', format_inspection(groups)
    assert expected in names(groups[0]), format_inspection(groups)
    assert [k for k, _, _ in groups[0].entries] == list(layer.state_dict())
    assert groups[0].params == layer.num_params()
    nested = inspect_state_dict({f'features.3.{k}': v for k, v in state.items()})
    assert [g.prefix for g in nested] == ['features.3.'] and nested[0].layer == groups[0].layer


def test_deformable_kinds_told_apart_by_offset_channels():
    deform = inspect_state_dict(nc.DeformConv2d(8, 8, 3, rng=0).state_dict())[0]
    assert deform.layer == 'DeformConv2d' and 'deform_groups=1' in deform.detail
    modulated = inspect_state_dict(nc.ModulatedDeformConv2d(8, 8, 3, deform_groups=2, rng=0).state_dict())[0]
    assert modulated.layer == 'ModulatedDeformConv2d' and 'deform_groups=2' in modulated.detail
    both = inspect_state_dict(nc.DeformConv2d(12, 12, 3, deform_groups=3, rng=0).state_dict())[0]
    assert names(both) == ['DeformConv2d', 'ModulatedDeformConv2d']      # 54 = 2*3*9 = 3*2*9
    assert 'DeformConv2d: deform_groups=3' in both.detail
    assert 'ModulatedDeformConv2d: deform_groups=2' in both.detail


def test_a_network_is_grouped_by_module():
    net = nc.Sequential(nc.Conv2d(3, 8, 3, rng=0), nc.BatchNorm2d(8), nc.ReLU(), nc.ODConv2d(8, 8, 3, rng=0),
                        nc.GlobalAvgPool2d(), nc.Flatten(), nc.Linear(8, 2, rng=0))
    state = dict(net.state_dict())
    state['extra.scale'] = np.ones((2, 2, 2))          # a module no layer matches
    groups = inspect_state_dict(state)
    assert [(g.prefix, names(g)[0]) for g in groups] == [
        ('0.', 'Conv2d'), ('1.', 'BatchNorm2d'), ('3.', 'ODConv2d'), ('6.', 'Linear'), ('extra.', '')]
    assert groups[-1].layer is None and groups[-1].params == 8
    assert sum(g.params for g in groups) == net.num_params() + 8
    text = format_inspection(groups)
    assert 'no numpyconv layer matches' in text and f'total: {net.num_params() + 8:,} parameters' in text


def test_cli_inspect(capsys):
    assert cli.main(['inspect', str(DATA / 'training.pth')]) == 0
    out = capsys.readouterr().out
    assert 'epoch: 90' in out and 'state_dict: the state_dict below' in out
    assert 'conv  Conv2d: 4 out channels, 3 in channels per group, 3x3, bias  [112 parameters]' in out
    assert 'fc  Linear: 4 -> 2, bias  [10 parameters]' in out and 'num_batches_tracked  ()' in out
    assert cli.main(['inspect', str(DATA / 'dataparallel.pth'), '--prefix', 'module']) == 0
    assert '\nbn  BatchNorm2d' in capsys.readouterr().out
    assert cli.main(['inspect', str(DATA / 'bf16.safetensors')]) == 0
    assert 'weight  (3, 4)' in capsys.readouterr().out


def test_cli_inspect_refuses_unknown_globals_unless_stubbed(capsys):
    assert cli.main(['inspect', str(DATA / 'config_stub.pth')]) == 1
    err = capsys.readouterr().err
    assert 'yacs.config.CfgNode is not in the allow-list' in err and '--stub' in err
    assert cli.main(['inspect', str(DATA / 'config_stub.pth'), '--stub']) == 0
    assert "config: Stub('yacs.config.CfgNode')" in capsys.readouterr().out
    assert cli.main(['inspect', str(DATA / 'evil_reduce_zip.pth'), '--stub']) == 1
    assert 'refused global os.system' in capsys.readouterr().err
    assert cli.main(['inspect', str(DATA / 'mmcls.pth'), '--key', 'nope']) == 1
    assert "key 'nope' is not in the checkpoint" in capsys.readouterr().err


def test_cli_inspect_a_model_saved_whole(capsys):
    assert cli.main(['inspect', str(DATA / 'whole_module.pth')]) == 1
    assert '__main__.WholeNet is a class of the script' in capsys.readouterr().err
    assert cli.main(['inspect', str(DATA / 'whole_module.pth'), '--stub']) == 0
    out = capsys.readouterr().out
    assert out.startswith('a model saved whole (__main__.WholeNet)')
    assert 'features.0  Conv2d: 3 out channels, 2 in channels per group, 3x3, bias' in out
    assert 'tied  Linear: 3 -> 4, bias' in out and 'scale' not in out
    assert cli.main(['inspect', str(DATA / 'whole_module_legacy.pth'), '--stub', '--prefix', 'module']) == 0
    out = capsys.readouterr().out
    assert 'model: the state_dict below' in out and 'epoch: 7' in out and '\nhead  Linear' in out


def test_keys_nested_deeper_than_the_limit_form_one_group():
    from numpyconv.inspection import MAX_DEPTH
    key = 'a.' * 5000 + 'w'
    groups = inspect_state_dict({key: np.zeros(1, np.float32), 'b.weight': np.zeros((2, 3), np.float32)})
    assert [g.prefix for g in groups] == ['a.' * MAX_DEPTH, 'b.']
    assert groups[0].entries[0][0] == key[2 * MAX_DEPTH:] and groups[0].layer is None
    format_inspection(groups)


@pytest.mark.parametrize('shape', [(), (0,), (3,), (0, 0, 0, 0), (1, 1, 1, 1, 1)])
def test_odd_shapes_never_break_the_matchers(shape):
    """Every key of every layer's state_dict given an odd shape (a 0-size kernel, too few dimensions)."""
    for _, make in LAYERS:
        state = make().state_dict()
        for key in state:
            format_inspection(inspect_state_dict({**state, key: np.zeros(shape, np.float32)}))
    zero_kernel = {'weight': np.zeros((4, 3, 0, 3)), 'conv_offset.weight': np.zeros((18, 3, 3, 3)),
                   'conv_offset.bias': np.zeros(18)}
    assert inspect_state_dict(zero_kernel)[0].layer != 'DeformConv2d'
