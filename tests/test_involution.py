"""Involution (numpyconv.involution): gradients, loop reference, identities, errors, torch re-creation."""
import numpy as np
import pytest

from numpyconv import count
from numpyconv.conv import conv2d_backward, conv2d_forward, conv_geometry
from numpyconv.gradcheck import gradcheck, gradcheck_layer
from numpyconv.involution import (Involution2d, involution_backward, involution_forward,
                                  involution_padding)
from numpyconv import reference as ref


def _out_hw(hw, kernel_size, stride=1, dilation=1):
    return conv_geometry(hw, kernel_size, stride, involution_padding(kernel_size, dilation),
                         dilation).out_hw


def _operands(rng, n=2, c=8, hw=(5, 6), kernel_size=3, stride=1, dilation=1, groups=2,
              dtype=np.float64):
    kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
    x = rng.standard_normal((n, c) + hw).astype(dtype)
    kernel = rng.standard_normal((n, groups * kh * kw) + _out_hw(hw, kernel_size, stride, dilation))
    return x, kernel.astype(dtype)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# -- the op -------------------------------------------------------------------------------------
OP_CONFIGS = [
    dict(kernel_size=3, stride=1, dilation=1, groups=1),
    dict(kernel_size=3, stride=2, dilation=1, groups=2),
    dict(kernel_size=7, stride=1, dilation=1, groups=4),
    dict(kernel_size=7, stride=2, dilation=2, groups=2),
    dict(kernel_size=5, stride=(2, 1), dilation=(1, 2), groups=8),
    dict(kernel_size=(3, 5), stride=(1, 3), dilation=(2, 1), groups=4),
    dict(kernel_size=2, stride=1, dilation=1, groups=1),          # even K: unfold formula, shrinks
    dict(kernel_size=4, stride=2, dilation=3, groups=2),
    dict(kernel_size=1, stride=3, dilation=1, groups=8),
]


def _split(config):
    hyper = {k: config[k] for k in ('kernel_size', 'stride', 'dilation')}
    return hyper, config['groups']


@pytest.mark.parametrize('config', OP_CONFIGS)
def test_op_matches_plain_loop_reference(config):
    hyper, groups = _split(config)
    x, kernel = _operands(np.random.default_rng(0), hw=(7, 6), groups=groups, **hyper)
    y, _ = involution_forward(x, kernel, **hyper)
    np.testing.assert_allclose(y, ref.involution(x, kernel, **hyper), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('config', OP_CONFIGS)
def test_op_gradcheck_x_and_kernel(config):
    hyper, groups = _split(config)
    x, kernel = _operands(np.random.default_rng(1), hw=(6, 5), groups=groups, **hyper)
    report = gradcheck(lambda x, k: involution_forward(x, k, **hyper), involution_backward,
                       (x, kernel), names=['x', 'kernel'])
    assert report.ok and len(report.results) == 2


@pytest.mark.parametrize('config', OP_CONFIGS[:6])
def test_constant_kernel_is_depthwise_conv(config):
    """kernel[n, g*K + k, i, j] = w[g, k] everywhere: depthwise conv2d with w[g] on group g's channels."""
    hyper, groups = _split(config)
    rng = np.random.default_rng(2)
    n, c = 2, 8
    kh, kw = (hyper['kernel_size'],) * 2 if np.isscalar(hyper['kernel_size']) else hyper['kernel_size']
    x = rng.standard_normal((n, c, 7, 6))
    w = rng.standard_normal((groups, kh * kw))
    out_hw = _out_hw((7, 6), **hyper)
    kernel = np.broadcast_to(w.reshape(1, -1, 1, 1), (n, groups * kh * kw) + out_hw).copy()
    depthwise_w = np.repeat(w.reshape(groups, 1, kh, kw), c // groups, axis=0)   # (C, 1, kh, kw)
    pad = involution_padding(hyper['kernel_size'], hyper['dilation'])
    y, cache = involution_forward(x, kernel, **hyper)
    y_conv, conv_cache = conv2d_forward(x, depthwise_w, None, hyper['stride'], pad, hyper['dilation'],
                                        groups=c)
    np.testing.assert_allclose(y, y_conv, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, dkernel = involution_backward(dy, cache)
    dx_conv, dw_conv, _ = conv2d_backward(dy, conv_cache)
    np.testing.assert_allclose(dx, dx_conv, rtol=1e-12, atol=1e-12)
    dw_shared = dkernel.sum(axis=(0, 2, 3)).reshape(groups, kh * kw)          # chain rule over (n, i, j)
    np.testing.assert_allclose(dw_shared, dw_conv.reshape(groups, c // groups, kh * kw).sum(axis=1),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('stride, dilation', [(1, 1), (1, 3), (2, 1), (3, 2)])
def test_one_hot_centre_kernel_samples_the_input(stride, dilation):
    x = np.random.default_rng(3).standard_normal((2, 4, 6, 9))
    out_hw = _out_hw((6, 9), 5, stride, dilation)
    kernel = np.zeros((2, 2 * 25) + out_hw)
    kernel[:, [12, 37]] = 1.0                          # centre point of both groups
    y, _ = involution_forward(x, kernel, 5, stride, dilation)
    np.testing.assert_array_equal(y, x[:, :, ::stride, ::stride])


def test_op_is_bilinear_adjoint_identity():
    """<y, dy> = <dx, x> = <dkernel, kernel>: y is linear in x and in kernel separately."""
    rng = np.random.default_rng(4)
    x, kernel = _operands(rng, hw=(9, 8), kernel_size=5, stride=2, dilation=2, groups=4)
    y, cache = involution_forward(x, kernel, 5, 2, 2)
    dy = rng.standard_normal(y.shape)
    dx, dkernel = involution_backward(dy, cache)
    inner = np.vdot(y, dy)
    assert np.isclose(np.vdot(dx, x), inner, rtol=1e-12)
    assert np.isclose(np.vdot(dkernel, kernel), inner, rtol=1e-12)


def test_op_batch_zero_and_no_mutation():
    x, kernel = _operands(np.random.default_rng(5), n=0)
    y, cache = involution_forward(x, kernel, 3)
    dx, dkernel = involution_backward(np.zeros_like(y), cache)
    assert y.shape == (0, 8, 5, 6) and dx.shape == x.shape and dkernel.shape == kernel.shape
    x, kernel = _operands(np.random.default_rng(5))
    x_copy, kernel_copy = x.copy(), kernel.copy()
    y, cache = involution_forward(x, kernel, 3)
    dy = np.ones_like(y)
    involution_backward(dy, cache)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(kernel, kernel_copy)
    np.testing.assert_array_equal(dy, 1.0)


def test_op_and_layer_accept_read_only_inputs():
    """Read-only arrays (``writeable=False``, read-only memory maps) are valid inputs: the shared
    gather/scatter loop once made Numba reject them with a typing error."""
    x, kernel = _operands(np.random.default_rng(11))
    expected, cache = involution_forward(x, kernel, 3)
    dy = np.random.default_rng(12).standard_normal(expected.shape)
    grads = involution_backward(dy, cache)
    for a in (x, kernel, dy):
        a.flags.writeable = False
    y, cache = involution_forward(x, kernel, 3)
    np.testing.assert_array_equal(y, expected)
    for ours, theirs in zip(involution_backward(dy, cache), grads):
        np.testing.assert_array_equal(ours, theirs)
    layer = _layer(16, 3, 2)
    x16 = np.random.default_rng(13).standard_normal((2, 16, 4, 6))
    x16.flags.writeable = False
    assert layer.backward(layer(x16)).shape == x16.shape


def test_op_float32_preserved_and_close_to_float64():
    x, kernel = _operands(np.random.default_rng(6), kernel_size=7, groups=4)
    y64, cache64 = involution_forward(x, kernel, 7)
    y32, cache32 = involution_forward(x.astype(np.float32), kernel.astype(np.float32), 7)
    dy = np.random.default_rng(7).standard_normal(y64.shape)
    grads32 = involution_backward(dy.astype(np.float32), cache32)
    grads64 = involution_backward(dy, cache64)
    assert y32.dtype == np.float32 and all(g.dtype == np.float32 for g in grads32)
    assert _rel(y32, y64) < 1e-5
    for g32, g64 in zip(grads32, grads64):
        assert _rel(g32, g64) < 1e-5


def test_op_non_contiguous_inputs():
    x, kernel = _operands(np.random.default_rng(8), hw=(10, 12), stride=2)
    x_view = np.asfortranarray(x)
    y, cache = involution_forward(x_view, kernel, 3, 2)
    np.testing.assert_array_equal(y, involution_forward(x, kernel, 3, 2)[0])
    dy = np.random.default_rng(9).standard_normal(y.shape + (2,))[..., 0]     # strided view
    dx, dkernel = involution_backward(dy, cache)
    dx_c, dkernel_c = involution_backward(np.ascontiguousarray(dy), cache)
    np.testing.assert_array_equal(dx, dx_c)
    np.testing.assert_array_equal(dkernel, dkernel_c)


def test_op_deterministic():
    rng = np.random.default_rng(10)
    x, kernel = _operands(rng, n=3, c=32, hw=(12, 11), kernel_size=7, stride=2, groups=2,
                          dtype=np.float32)
    runs = []
    for _ in range(2):
        y, cache = involution_forward(x, kernel, 7, 2)
        runs.append((y,) + involution_backward(np.ones_like(y), cache))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_op_errors():
    x, kernel = _operands(np.random.default_rng(11))
    with pytest.raises(ValueError, match=r"kernel must have shape \(N, G\*K\*K, Ho, Wo\) = "
                                         r"\(2, G\*9, 5, 6\).*got \(2, 10, 5, 6\)"):
        involution_forward(x, kernel[:, :10], 3)
    with pytest.raises(ValueError, match=r"G dividing the 8 channels.*got \(2, 27, 5, 6\)"):
        involution_forward(x, np.zeros((2, 27, 5, 6)), 3)
    with pytest.raises(ValueError, match=r"kernel must have shape \(2, 18, 5, 6\), got \(2, 18, 4, 6\)"):
        involution_forward(x, kernel[:, :, :4], 3)
    with pytest.raises(ValueError, match=r"kernel must have shape \(2, 18, 3, 3\), got \(2, 18, 5, 6\)"):
        involution_forward(x, kernel, 3, stride=2)
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\), got shape \(8, 5, 6\)"):
        involution_forward(x[0], kernel, 3)
    with pytest.raises(TypeError, match="same float dtype"):
        involution_forward(x.astype(np.float32), kernel, 3)
    with pytest.raises(TypeError, match="float32 or float64"):
        involution_forward(x.astype(np.int64), kernel, 3)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        involution_forward(x, kernel, 3, stride=0)
    with pytest.raises(ValueError, match="padded input"):                 # even K shrinks to 0
        involution_forward(x[:, :, :1, :1], np.zeros((2, 4, 0, 0)), 2)
    _, cache = involution_forward(x, kernel, 3)
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 8, 5, 6\), got \(2, 8, 5, 5\)"):
        involution_backward(np.zeros((2, 8, 5, 5)), cache)


# -- the layer --------------------------------------------------------------------------------------
def _layer(channels=16, kernel_size=3, stride=1, dilation=1, dtype=np.float64, seed=0, **kw):
    layer = Involution2d(channels, kernel_size, stride, dilation=dilation, dtype=dtype, rng=seed, **kw)
    rng = np.random.default_rng(seed + 100)
    # non-trivial BatchNorm state, so eval mode differs from train mode
    for key in ('conv1.bn.weight', 'conv1.bn.bias', 'conv1.bn.running_mean'):
        layer.params.get(key, layer.buffers.get(key))[...] = rng.normal(0.5, 0.3, channels // 4)
    layer.buffers['conv1.bn.running_var'][...] = rng.uniform(0.5, 2.0, channels // 4)
    layer.params['conv2.conv.bias'][...] = rng.normal(0, 0.1, layer.params['conv2.conv.bias'].shape)
    return layer


LAYER_CONFIGS = [(16, 3, 1), (16, 7, 2), (32, 3, 2), (32, 7, 1), (64, 3, 1), (64, 7, 2)]


@pytest.mark.parametrize('channels, kernel_size, stride', LAYER_CONFIGS)
@pytest.mark.parametrize('training', [True, False])
def test_layer_gradcheck_every_parameter(channels, kernel_size, stride, training):
    layer = _layer(channels, kernel_size, stride).train(training)
    x = np.random.default_rng(12).standard_normal((2, channels, 4, 6))
    report = gradcheck_layer(layer, x, mode='random', n_directions=20)
    assert report.ok, report
    assert {r.name for r in report.results} == {'x'} | set(layer.params)


def test_layer_even_kernel_with_even_dilation():
    """d*(K-1) even keeps the unfold output at ceil(H/s), so K = 4, d = 2 is a valid layer."""
    layer = _layer(16, 4, 2, dilation=2)
    x = np.random.default_rng(24).standard_normal((2, 16, 4, 6))
    assert layer(x).shape == (2, 16, 2, 3)
    assert gradcheck_layer(layer, x, mode='random').ok


@pytest.mark.parametrize('training', [True, False])
def test_layer_gradcheck_full_small(training):
    layer = _layer(16, 3, 2, dilation=2).train(training)
    x = np.random.default_rng(13).standard_normal((2, 16, 4, 4))
    assert gradcheck_layer(layer, x, mode='full').ok


def test_layer_state_dict_keys_and_round_trip():
    layer = _layer(64, 7, 2)
    expected = {'conv1.conv.weight': (16, 64, 1, 1), 'conv1.bn.weight': (16,), 'conv1.bn.bias': (16,),
                'conv1.bn.running_mean': (16,), 'conv1.bn.running_var': (16,),
                'conv1.bn.num_batches_tracked': (), 'conv2.conv.weight': (196, 16, 1, 1),
                'conv2.conv.bias': (196,)}
    state = layer.state_dict()
    assert {k: v.shape for k, v in state.items()} == expected
    assert set(layer.grads) == set(layer.params) == set(expected) - {
        'conv1.bn.running_mean', 'conv1.bn.running_var', 'conv1.bn.num_batches_tracked'}
    other = Involution2d(64, 7, 2, dtype=np.float64, rng=99)
    other.load_state_dict(state)
    x = np.random.default_rng(14).standard_normal((2, 64, 4, 4))
    np.testing.assert_array_equal(other.eval()(x), layer.eval()(x))


def test_layer_initialisation_as_conv_module():
    """mmcv ConvModule.init_weights: kaiming_normal fan_out (relu), bias 0; BatchNorm 1 / 0."""
    layer = Involution2d(256, 7, dtype=np.float64, rng=0)
    params = layer.params
    assert np.isclose(params['conv1.conv.weight'].std(), np.sqrt(2 / 64), rtol=0.05)
    assert np.isclose(params['conv2.conv.weight'].std(), np.sqrt(2 / (49 * 16)), rtol=0.05)
    np.testing.assert_array_equal(params['conv2.conv.bias'], 0)
    np.testing.assert_array_equal(params['conv1.bn.weight'], 1)
    np.testing.assert_array_equal(params['conv1.bn.bias'], 0)


def test_layer_eval_batch_zero_and_one():
    layer = _layer(32, 7, 2).eval()
    x = np.random.default_rng(15).standard_normal((3, 32, 4, 6))
    y = layer(x)
    dy = np.random.default_rng(16).standard_normal(y.shape)
    dx = layer.backward(dy)
    for n in range(3):                                 # eval mode: each sample on its own
        np.testing.assert_allclose(layer(x[n:n + 1]), y[n:n + 1], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.backward(dy[n:n + 1]), dx[n:n + 1], rtol=1e-12, atol=1e-12)
    empty = layer(x[:0])
    assert empty.shape == (0, 32, 2, 3) and layer.backward(empty).shape == (0, 32, 4, 6)


def test_layer_train_mode_couples_the_batch_and_updates_buffers():
    layer = _layer(16, 3)
    x = np.random.default_rng(17).standard_normal((2, 16, 4, 4))
    y_pair = layer(x)
    assert int(layer.buffers['conv1.bn.num_batches_tracked']) == 1
    assert not np.allclose(layer(x[:1]), y_pair[:1])   # batch statistics differ


def test_layer_dtype_preserved_and_no_mutation():
    layer = _layer(16, 3, 2, dtype=np.float32)
    x = np.random.default_rng(18).standard_normal((2, 16, 4, 6)).astype(np.float32)
    x_copy = x.copy()
    y = layer(x)
    dy = np.ones_like(y)
    dx = layer.backward(dy)
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(dy, 1.0)


def test_layer_deterministic():
    layer = _layer(32, 7, 2, dtype=np.float32)
    state = layer.state_dict()
    x = np.random.default_rng(19).standard_normal((4, 32, 8, 8)).astype(np.float32)
    runs = []
    for _ in range(2):
        layer.load_state_dict(state)
        layer.zero_grad()
        y = layer(x)
        runs.append([y, layer.backward(np.ones_like(y))] + [g.copy() for g in layer.grads.values()])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_layer_errors():
    with pytest.raises(ValueError, match="channels=24 must be a multiple of group_channels=16"):
        Involution2d(24, 3)
    with pytest.raises(ValueError, match=r"dilation\*\(kernel_size-1\) must be even"):
        Involution2d(16, 4)
    with pytest.raises(ValueError, match=r"kernel_size \(3, 2\) with dilation \(1, 3\)"):
        Involution2d(16, (3, 2), dilation=(1, 3))
    with pytest.raises(ValueError, match="reduction_ratio"):
        Involution2d(4, 3, reduction_ratio=8, group_channels=4)
    layer = Involution2d(16, 3, 2, dtype=np.float64, rng=0)
    with pytest.raises(ValueError, match=r"divisible by the stride.*\(2, 2\) but the unfold gives "
                                         r"\(3, 2\), got x of shape \(2, 16, 5, 4\)"):
        layer(np.zeros((2, 16, 5, 4)))
    with pytest.raises(ValueError, match="divisible by the stride"):
        count(layer, (1, 16, 7, 7))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 16, H, W\), got \(2, 8, 4, 4\)"):
        layer(np.zeros((2, 8, 4, 4)))
    with pytest.raises(TypeError, match="dtype"):
        layer(np.zeros((2, 16, 4, 4), dtype=np.float32))


def test_group_channels_and_reduction_ratio_are_exposed():
    layer = Involution2d(24, 5, reduction_ratio=3, group_channels=8, dtype=np.float64, rng=0)
    assert layer.params['conv1.conv.weight'].shape == (8, 24, 1, 1)
    assert layer.params['conv2.conv.weight'].shape == (25 * 3, 8, 1, 1)
    x = np.random.default_rng(20).standard_normal((2, 24, 5, 5))
    assert gradcheck_layer(layer, x, mode='random').ok


def test_count_macs():
    """Kernel generation (two 1x1 convs at the kernel resolution) + Ho*Wo*C*K*K (eq. 10)."""
    layer = Involution2d(64, 7, 2)
    params, macs = count(layer, (1, 64, 56, 56))
    assert params == 64 * 16 + 2 * 16 + 16 * 196 + 196
    assert macs == 28 * 28 * (64 * 16 + 16 * 196) + 28 * 28 * 64 * 49
    assert layer.macs((1, 64, 56, 56))[1] == (1, 64, 28, 28)


# -- torch re-creation of the official naive module (float64) ---------------------------------------
def _torch_modules(torch):
    nn = torch.nn

    class ConvModuleStandIn(nn.Module):
        """mmcv ConvModule with kernel 1: conv (bias only without norm) -> bn -> relu."""

        def __init__(self, cin, cout, with_norm):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 1, bias=not with_norm)
            self.bn = nn.BatchNorm2d(cout) if with_norm else None
            self.activate = nn.ReLU() if with_norm else None

        def forward(self, x):
            x = self.conv(x)
            return x if self.bn is None else self.activate(self.bn(x))

    class NaiveInvolution(nn.Module):
        """The unfold formulation of d-li14/involution involution_naive.py (dilated variant)."""

        def __init__(self, channels, kernel_size, stride, dilation=1):
            super().__init__()
            self.k, self.stride, self.channels = kernel_size, stride, channels
            self.groups = channels // 16
            self.conv1 = ConvModuleStandIn(channels, channels // 4, True)
            self.conv2 = ConvModuleStandIn(channels // 4, kernel_size ** 2 * self.groups, False)
            self.avgpool = nn.AvgPool2d(stride, stride) if stride > 1 else None
            self.unfold = nn.Unfold(kernel_size, dilation, dilation * (kernel_size - 1) // 2, stride)

        def forward(self, x):
            kernel = self.conv2(self.conv1(x if self.avgpool is None else self.avgpool(x)))
            n, _, h, w = kernel.shape
            kernel = kernel.view(n, self.groups, 1, self.k ** 2, h, w)
            patches = self.unfold(x).view(n, self.groups, 16, self.k ** 2, h, w)
            return (kernel * patches).sum(dim=3).view(n, self.channels, h, w)

    return NaiveInvolution


@pytest.mark.parametrize('channels, kernel_size, stride, dilation',
                         [(16, 3, 1, 1), (16, 7, 2, 1), (64, 3, 2, 1), (64, 7, 1, 1), (32, 3, 1, 2),
                          (32, 5, 2, 3), (16, 4, 2, 2)])
@pytest.mark.parametrize('training', [True, False])
def test_matches_torch_naive_module(channels, kernel_size, stride, dilation, training):
    torch = pytest.importorskip('torch')
    torch.manual_seed(0)
    module = _torch_modules(torch)(channels, kernel_size, stride, dilation).double()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
        module.conv1.bn.running_mean.normal_()
        module.conv1.bn.running_var.uniform_(0.5, 2.0)
    module.train(training)
    layer = Involution2d(channels, kernel_size, stride, dilation=dilation, dtype=np.float64)
    layer.load_state_dict({k: v.numpy() for k, v in module.state_dict().items()})
    layer.train(training)
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, channels, 6, 4))
    xt = torch.tensor(x, requires_grad=True)
    yt = module(xt)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    dx = layer.backward(dy)
    assert _rel(y, yt.detach().numpy()) < 1e-10
    assert _rel(dx, xt.grad.numpy()) < 1e-10
    for name, p in module.named_parameters():
        assert _rel(layer.grads[name], p.grad.numpy()) < 1e-10, name
    for name, b in module.named_buffers():
        np.testing.assert_allclose(layer.buffers[name], b.numpy(), rtol=1e-12)


@pytest.mark.parametrize('config', OP_CONFIGS)
def test_op_matches_torch_unfold_formula(config):
    torch = pytest.importorskip('torch')
    hyper, groups = _split(config)
    x, kernel = _operands(np.random.default_rng(22), hw=(7, 6), groups=groups, **hyper)
    points = kernel.shape[1] // groups
    unfold = torch.nn.Unfold(hyper['kernel_size'], hyper['dilation'],
                             involution_padding(hyper['kernel_size'], hyper['dilation']), hyper['stride'])
    xt, kt = torch.tensor(x, requires_grad=True), torch.tensor(kernel, requires_grad=True)
    n, c, ho, wo = (2, 8) + kernel.shape[2:]
    patches = unfold(xt).view(n, groups, c // groups, points, ho, wo)
    yt = (kt.view(n, groups, 1, points, ho, wo) * patches).sum(dim=3).view(n, c, ho, wo)
    y, cache = involution_forward(x, kernel, **hyper)
    dy = np.random.default_rng(23).standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    dx, dkernel = involution_backward(dy, cache)
    assert _rel(y, yt.detach().numpy()) < 1e-12
    assert _rel(dx, xt.grad.numpy()) < 1e-12
    assert _rel(dkernel, kt.grad.numpy()) < 1e-12
