"""DCNv4 core op and layer: reference, gradcheck, packing, bridge to DCNv3, torch re-creation."""
import math

import numpy as np
import pytest

import numpyconv as nc
from numpyconv import dcnv3 as D3
from numpyconv import dcnv4 as D4
from numpyconv.activations import softmax_forward
from numpyconv import reference as ref
from test_dcnv3 import (assert_crosses_every_border, compare_with_torch_module,
                        gradcheck_random_layer, locations, output_geometry, pairs, randomize,
                        torch_dcnv3_core)

RNG = np.random.default_rng(4)

# (N, H, W, kernel, stride, padding, dilation, group, group_channels, offset_scale, remove_center)
GRID = [
    (2, 6, 7, 3, 1, 1, 1, 4, 2, 1.0, False),             # 108 used of 112 channels
    (1, 7, 6, 3, 2, 1, 2, 1, 3, 2.0, True),               # stride 2, dilation 2, 24 of 24
    (2, 6, 6, 5, 1, 2, 1, 2, 2, 1.5, True),               # 5x5 (the official op: 3x3 only)
    (1, 6, 9, (3, 5), (2, 1), (1, 2), (2, 1), 2, 2, 1.0, False),
    (1, 5, 5, 1, 1, 0, 1, 3, 2, 1.0, False),              # 1x1: 9 of 16 channels
    (1, 5, 6, (2, 4), 1, (0, 1), 1, 2, 1, 1.0, False),    # even kernel
]


def operands(n, h, w, kernel, stride, padding, dilation, group, d, remove_center, spread=3.0,
             dtype=np.float64):
    ho, wo, npts = output_geometry(h, w, kernel, stride, padding, dilation, remove_center)
    x = RNG.standard_normal((n, h, w, group * d)).astype(dtype)
    om = RNG.uniform(-spread, spread, (n, ho, wo, D4.packed_channels(group, npts))).astype(dtype)
    return x, om, npts


def run(x, om, case):
    return D4.dcnv4_forward(x, om, *case)


# -- forward, gradients -------------------------------------------------------------------------
@pytest.mark.parametrize('config', GRID)
def test_forward_matches_reference(config):
    n, h, w, *case = config
    x, om, _ = operands(n, h, w, *case[:6], case[7])
    np.testing.assert_allclose(run(x, om, case)[0], ref.dcnv4(x, om, *case), rtol=1e-13,
                               atol=1e-13)


@pytest.mark.parametrize('config', [GRID[0], GRID[1], GRID[3]])
def test_gradcheck_across_borders_padding_gets_zero(config):
    _, h, w, *case = config                          # batch 1: keeps full mode fast
    x, om, npts = operands(1, h, w, *case[:6], case[7])
    offset, _ = D4.unpack_offset_mask(om, case[4], npts)
    rows, cols = locations(offset, h, w, *case[:5], case[6], case[7])
    assert_crosses_every_border(rows, h)
    assert_crosses_every_border(cols, w)
    nc.gradcheck(lambda x, om: run(x, om, case), D4.dcnv4_backward, (x, om), mode='full',
                 names=('x', 'offset_mask'), atol=1e-7, rtol=1e-6)
    _, cache = run(x, om, case)
    dom = D4.dcnv4_backward(RNG.standard_normal(cache['setup']['out_shape']), cache)[1]
    assert not dom[..., 3 * case[4] * npts:].any()


# -- packing, layout, bridge to DCNv3 ----------------------------------------------------------------
def test_packed_width_and_ignored_padding():
    assert D4.packed_channels(4, 9) == 112 and D4.packed_channels(8, 9) == 216
    assert D4.packed_channels(4, 8) == 96
    case = GRID[0][3:]
    x, om, _ = operands(2, 6, 7, *case[:6], case[7])
    assert om.shape[-1] == 112
    noisy = om.copy()
    noisy[..., 108:] = RNG.standard_normal(noisy[..., 108:].shape) * 100
    np.testing.assert_array_equal(run(x, om, case)[0], run(x, noisy, case)[0])
    wider = np.concatenate([om, RNG.standard_normal(om.shape[:3] + (8,))], axis=-1)  # 120: accepted
    np.testing.assert_array_equal(run(x, om, case)[0], run(x, wider, case)[0])


def test_pack_unpack_round_trip():
    offset, mask = RNG.standard_normal((2, 3, 4, 4 * 9 * 2)), RNG.standard_normal((2, 3, 4, 4 * 9))
    om = D4.pack_offset_mask(offset, mask, 4)
    assert om.shape == (2, 3, 4, 112) and not om[..., 108:].any()
    back = D4.unpack_offset_mask(om, 4, 9)
    np.testing.assert_array_equal(back[0], offset)
    np.testing.assert_array_equal(back[1], mask)
    g, p = 2, 5                                       # group 2, point 5: the block starts at g*27
    np.testing.assert_array_equal(om[..., 54 + 2 * p:54 + 2 * p + 2], offset[..., 46:48])
    np.testing.assert_array_equal(om[..., 54 + 18 + p], mask[..., g * 9 + p])
    with pytest.raises(ValueError, match=r"offset must have shape \(2, 3, 4, 72\)"):
        D4.pack_offset_mask(offset[..., :70], mask, 4)
    with pytest.raises(ValueError, match="group=5"):
        D4.pack_offset_mask(offset, mask, 5)


def test_layout_offsets_then_masks_per_group():
    """Channel g*3P + 2P + p scales point p; g*3P + 2p moves it in x, g*3P + 2p + 1 in y."""
    x = RNG.standard_normal((1, 6, 6, 4))               # 2 groups of 2 channels
    om = np.zeros((1, 6, 6, 56))
    g, p = 1, 4                                       # centre point of group 1
    om[..., g * 27 + 18 + p] = 2.0
    y, _ = D4.dcnv4_forward(x, om, 3, 1, 1, 1, 2, 2)
    np.testing.assert_array_equal(y[..., :2], 0.0)
    np.testing.assert_array_equal(y[..., 2:], 2.0 * x[..., 2:])
    om[..., g * 27 + 2 * p] = 1.0
    y, _ = D4.dcnv4_forward(x, om, 3, 1, 1, 1, 2, 2)
    np.testing.assert_array_equal(y[:, :, :5, 2:], 2.0 * x[:, :, 1:, 2:])
    om[..., g * 27 + 2 * p], om[..., g * 27 + 2 * p + 1] = 0.0, 1.0
    y, _ = D4.dcnv4_forward(x, om, 3, 1, 1, 1, 2, 2)
    np.testing.assert_array_equal(y[:, :5, :, 2:], 2.0 * x[:, 1:, :, 2:])


@pytest.mark.parametrize('config', [GRID[0], GRID[2]])
def test_softmaxed_masks_equal_dcnv3(config):
    """InternImage's bridge: DCNv4 on packed DCNv3 offsets and softmaxed masks == DCNv3."""
    n, h, w, *case = config
    x, om, npts = operands(n, h, w, *case[:6], case[7])
    group = case[4]
    offset = RNG.uniform(-3, 3, om.shape[:3] + (group * npts * 2,))
    logits = RNG.standard_normal(om.shape[:3] + (group, npts))
    mask = softmax_forward(logits, axis=-1)[0].reshape(om.shape[:3] + (group * npts,))
    y3, cache3 = D3.dcnv3_forward(x, offset, mask, *case)
    y4, cache4 = D4.dcnv4_forward(x, D4.pack_offset_mask(offset, mask, group), *case)
    np.testing.assert_array_equal(y3, y4)
    dout = RNG.standard_normal(y3.shape)
    dx3, doffset3, dmask3 = D3.dcnv3_backward(dout, cache3)
    dx4, dom4 = D4.dcnv4_backward(dout, cache4)
    np.testing.assert_array_equal(dx3, dx4)
    np.testing.assert_array_equal(D4.pack_offset_mask(doffset3, dmask3, group), dom4)


# -- errors, dtype, batch 0 ----------------------------------------------------------------------
def test_errors_name_the_expected_shape():
    x, om, _ = operands(1, 5, 5, 3, 1, 1, 1, 4, 2, False)
    expected = r"offset_mask must have shape \(1, 5, 5, 112\).*got "
    with pytest.raises(ValueError, match=expected + r"\(1, 5, 5, 108\)"):
        D4.dcnv4_forward(x, om[..., :108], 3, 1, 1, 1, 4, 2)
    with pytest.raises(ValueError, match=expected + r"\(1, 5, 5, 104\)"):
        D4.dcnv4_forward(x, om[..., :104], 3, 1, 1, 1, 4, 2)
    with pytest.raises(ValueError, match=r"offset_mask must have shape \(1, 3, 3, 112\)"):
        D4.dcnv4_forward(x, om, 3, 2, 1, 1, 4, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(N, H, W, 4\)"):
        D4.dcnv4_forward(x, om, 3, 1, 1, 1, 2, 2)
    with pytest.raises(ValueError, match="remove_center is only compatible with an odd kernel"):
        D4.dcnv4_forward(x, om, 2, 1, 1, 1, 4, 2, remove_center=True)
    with pytest.raises(TypeError, match="same float dtype"):
        D4.dcnv4_forward(x, om.astype(np.float32), 3, 1, 1, 1, 4, 2)
    with pytest.raises(TypeError, match="offset_mask must be a numpy.ndarray"):
        D4.dcnv4_forward(x, om.tolist(), 3, 1, 1, 1, 4, 2)


def test_float32_batch_zero_no_mutation():
    case = GRID[2][3:]
    x, om, _ = operands(2, 6, 6, *case[:6], case[7])
    copies = x.copy(), om.copy()
    x.flags.writeable = om.flags.writeable = False                    # read-only inputs work too
    y64, c64 = run(x, om, case)
    y32, c32 = run(x.astype(np.float32), om.astype(np.float32), case)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)
    dout = RNG.standard_normal(y64.shape)
    for g32, g64 in zip(D4.dcnv4_backward(dout.astype(np.float32), c32), D4.dcnv4_backward(dout, c64)):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(x, copies[0])
    np.testing.assert_array_equal(om, copies[1])
    x0, om0, _ = operands(0, 6, 6, *case[:6], case[7])
    y0, c0 = run(x0, om0, case)
    assert y0.shape == (0, 6, 6, 4)
    assert [g.shape for g in D4.dcnv4_backward(y0, c0)] == [x0.shape, om0.shape]


# -- the DCNv4 layer ---------------------------------------------------------------------------------
LAYER_CONFIGS = [
    dict(),
    dict(dw_kernel_size=3, center_feature_scale=True, offset_scale=2.0),
    dict(without_pointwise=True, remove_center=True, center_feature_scale=True),
    dict(output_bias=False, kernel_size=5, pad=2),
]


def make_dcnv4(dtype=np.float64, rng=0, **config):
    return D4.DCNv4(8, group=2, dtype=dtype, rng=rng, **config)


@pytest.mark.parametrize('config, seed', list(zip(LAYER_CONFIGS[:3], [0, 2, 0])))  # seeds: no kink within eps
def test_layer_gradcheck(config, seed):
    gradcheck_random_layer(make_dcnv4, config, seed)


def test_layer_state_dict_keys():
    shapes = {k: v.shape for k, v in make_dcnv4(dw_kernel_size=3, center_feature_scale=True)
              .state_dict().items()}
    assert shapes == {
        'offset_mask_dw.weight': (8, 1, 3, 3), 'offset_mask_dw.bias': (8,),
        'offset_mask.weight': (56, 8), 'offset_mask.bias': (56,),
        'value_proj.weight': (8, 8), 'value_proj.bias': (8,),
        'output_proj.weight': (8, 8), 'output_proj.bias': (8,),
        'center_feature_scale_proj_weight': (2, 8), 'center_feature_scale_proj_bias': (2,)}
    assert set(make_dcnv4(output_bias=False).state_dict()) == {
        'offset_mask.weight', 'offset_mask.bias', 'value_proj.weight', 'value_proj.bias',
        'output_proj.weight'}
    assert set(make_dcnv4(without_pointwise=True).state_dict()) == {
        'offset_mask.weight', 'offset_mask.bias'}
    assert D4.DCNv4(64, rng=0).params['offset_mask.weight'].shape == (112, 64)


def test_layer_round_trip_and_padded_rows_never_learn():
    layer = randomize(make_dcnv4(rng=1), np.random.default_rng(1))
    copy = make_dcnv4(rng=2)
    copy.load_state_dict(layer.state_dict())
    x = RNG.standard_normal((2, 8, 4, 5))
    y = layer(x)
    np.testing.assert_array_equal(y, copy(x))
    layer.zero_grad()
    layer.backward(RNG.standard_normal(y.shape))
    assert not layer.grads['offset_mask.weight'][54:].any()
    assert not layer.grads['offset_mask.bias'][54:].any()


def test_layer_zero_init_output_is_exactly_zero():
    layer = D4.DCNv4(16, group=2, rng=0, dtype=np.float64)
    x = RNG.standard_normal((2, 16, 5, 4))
    np.testing.assert_array_equal(layer(x), 0.0)


def test_layer_errors_float32_batch_zero_and_macs():
    with pytest.raises(ValueError, match="channels must be divisible by group"):
        D4.DCNv4(10, group=4)
    with pytest.raises(ValueError, match="stride=1 and 2\\*pad"):
        D4.DCNv4(8, group=2, stride=2)
    with pytest.raises(ValueError, match="remove_center is only compatible with odd kernel"):
        D4.DCNv4(8, kernel_size=2, pad=1, group=2, remove_center=True)
    layer = randomize(D4.DCNv4(8, group=2, dw_kernel_size=3, center_feature_scale=True, rng=0),
                      np.random.default_rng(2))
    x = RNG.standard_normal((2, 8, 5, 3)).astype(np.float32)
    x_copy = x.copy()
    y = layer(x)
    assert y.dtype == np.float32 and layer.backward(np.ones_like(y)).dtype == np.float32
    np.testing.assert_array_equal(x, x_copy)
    y0 = layer(np.zeros((0, 8, 5, 3), np.float32))
    assert y0.shape == (0, 8, 5, 3) and layer.backward(y0).shape == (0, 8, 5, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 8, H, W\)"):
        layer(x[:, :4])
    _, macs = nc.count(layer, (1, 8, 5, 3))
    assert macs == 15 * (8 * 56 + 5 * 9 * 8 + 2 * 8 * 8 + 9 * 8 + 8 * 2)


# -- torch re-creation of OpenGVLab/DCNv4 DCNv4 with a pure-torch core ------------------------------
def torch_dcnv4_core(torch, x, offset_mask, kernel, stride, pad, dilation, group, d, scale,
                     remove_center):
    """DCNv4 core in torch: split the packed tensor, DCNv3's grid_sample core, no softmax."""
    n, ho, wo, _ = offset_mask.shape
    kh, kw = pairs(kernel)[0]
    npts = kh * kw - int(remove_center)
    blocks = offset_mask[..., :3 * group * npts].reshape(n, ho, wo, group, 3 * npts)
    offset = blocks[..., :2 * npts].reshape(n, ho, wo, -1)
    mask = blocks[..., 2 * npts:].reshape(n, ho, wo, -1)
    return torch_dcnv3_core(torch, x, offset, mask, kernel, stride, pad, dilation, group, d, scale,
                            remove_center)


def make_torch_dcnv4(torch, channels, kernel_size=3, stride=1, pad=1, dilation=1, group=4,
                     offset_scale=1.0, dw_kernel_size=None, center_feature_scale=False,
                     remove_center=False, output_bias=True, without_pointwise=False):
    """A re-creation of OpenGVLab/DCNv4 ``DCNv4`` (input ``(N, L, C)`` plus ``shape``)."""
    nn, F = torch.nn, torch.nn.functional
    points = group * (kernel_size * kernel_size - int(remove_center))

    class Module(nn.Module):
        def __init__(self):
            super().__init__()
            if dw_kernel_size is not None:
                self.offset_mask_dw = nn.Conv2d(channels, channels, dw_kernel_size, 1,
                                                (dw_kernel_size - 1) // 2, groups=channels)
            self.offset_mask = nn.Linear(channels, int(math.ceil(points * 3 / 8) * 8))
            if not without_pointwise:
                self.value_proj = nn.Linear(channels, channels)
                self.output_proj = nn.Linear(channels, channels, bias=output_bias)
            if center_feature_scale:
                self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
                self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))

        def forward(self, inp, shape):
            n, length, c = inp.shape
            h, w = shape
            x = inp if without_pointwise else self.value_proj(inp)
            x = x.reshape(n, h, w, -1)
            om_in = inp
            if dw_kernel_size is not None:
                om_in = self.offset_mask_dw(inp.view(n, h, w, c).permute(0, 3, 1, 2))
                om_in = om_in.permute(0, 2, 3, 1).reshape(n, length, c)
            offset_mask = self.offset_mask(om_in).reshape(n, h, w, -1)
            x_proj = x
            x = torch_dcnv4_core(torch, x, offset_mask, kernel_size, stride, pad, dilation, group,
                                 channels // group, offset_scale, remove_center)
            if center_feature_scale:
                s = F.linear(x, self.center_feature_scale_proj_weight,
                             self.center_feature_scale_proj_bias).sigmoid()
                s = s[..., None].repeat(1, 1, 1, 1, channels // group).flatten(-2)
                x = x * (1 - s) + x_proj * s
            x = x.reshape(n, length, -1)
            return x if without_pointwise else self.output_proj(x)
    return Module().double()


@pytest.mark.parametrize('config', LAYER_CONFIGS)
def test_layer_matches_torch_dcnv4(config):
    torch = pytest.importorskip('torch')
    torch.manual_seed(1)
    theirs = make_torch_dcnv4(torch, 8, group=2, **config)
    ours = make_dcnv4(**config)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    x = RNG.standard_normal((2, 8, 4, 6))                # non-square: the official needs shape=

    def call(module, xt):
        n, h, w, c = xt.shape
        return module(xt.reshape(n, h * w, c), (h, w)).reshape(n, h, w, c)
    compare_with_torch_module(torch, ours, theirs, x, call)


def test_torch_core_matches_op():
    torch = pytest.importorskip('torch')
    for config in GRID[:4]:
        n, h, w, *case = config
        x, om, _ = operands(n, h, w, *case[:6], case[7])
        y, cache = run(x, om, case)
        xt, omt = torch.tensor(x, requires_grad=True), torch.tensor(om, requires_grad=True)
        yt = torch_dcnv4_core(torch, xt, omt, *case)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        dout = RNG.standard_normal(y.shape)
        yt.backward(torch.tensor(dout))
        dx, dom = D4.dcnv4_backward(dout, cache)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dom, omt.grad.numpy(), rtol=1e-10, atol=1e-10)
