"""ODConv: reference, gradcheck (train and eval, every skip case), identities, errors, PyTorch."""
import numpy as np
import pytest

import numpyconv as nc
from numpyconv import odconv as od
from numpyconv.conv import conv2d_forward
from numpyconv.reference import blocks as ref_blocks
from numpyconv.reference import pooling as ref_pooling
from numpyconv.reference import odconv as ref

RNG = np.random.default_rng(2022)

# (C_in, C_out, k, kernel_num, groups, stride, padding, dilation): the official skip cases
CONFIGS = {
    'general': (4, 6, 3, 3, 1, 1, 1, 1),          # every head
    'grouped': (4, 6, 3, 2, 2, 2, 1, 1),          # groups 2, stride 2
    'depthwise': (4, 4, 3, 2, 4, 1, 1, 1),        # no filter attention
    'pw1x': (4, 6, 1, 1, 1, 1, 0, 1),             # 1x1, kernel_num 1: _forward_impl_pw1x
    'pointwise': (4, 6, 1, 3, 1, 2, 0, 1),        # 1x1, kernel_num 3: no spatial attention
    'single_kernel': (4, 6, 3, 1, 1, 1, 2, 2),    # no kernel attention, dilation 2
}


def make_arrays(c_in, c_out, k, kernel_num, groups, hidden=3, dtype=np.float64, rng=RNG):
    """Random arrays in odconv2d_forward order after ``x``; None for the heads the config skips."""
    widths = od.head_widths(c_in, c_out, k, groups, kernel_num)
    arrays = [rng.standard_normal((kernel_num, c_out, c_in // groups, k, k)),
              rng.standard_normal((hidden, c_in, 1, 1)), rng.random(hidden) + 0.5,
              rng.standard_normal(hidden), 0.3 * rng.standard_normal(hidden), rng.random(hidden) + 0.5]
    for head in od.HEADS:
        width = widths[head]
        arrays += [None, None] if width is None else [rng.standard_normal((width, hidden, 1, 1)),
                                                      rng.standard_normal(width)]
    return [None if a is None else a.astype(dtype) for a in arrays]


def hyper(config, temperature=2.5, training=False):
    *_, groups, stride, padding, dilation = config
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                temperature=temperature, training=training)


def case(name, n=3, hw=5, dtype=np.float64):
    config = CONFIGS[name]
    x = RNG.standard_normal((n, config[0], hw, hw)).astype(dtype)
    return config, x, make_arrays(*config[:5], dtype=dtype)


def random_layer(c_in, c_out, k, kernel_num=4, groups=1, stride=1, padding=0, dilation=1,
                 dtype=np.float64, seed=0):
    """An ODConv2d whose every parameter and buffer is random (not the zero-bias initial state)."""
    layer = od.ODConv2d(c_in, c_out, k, stride, padding, dilation, groups, kernel_num=kernel_num,
                        dtype=dtype, rng=seed)
    rng = np.random.default_rng(seed + 1)
    state = {key: (rng.random(v.shape) + 0.5 if key.endswith('running_var') else
                   0.5 * rng.standard_normal(v.shape)) if v.dtype.kind == 'f' else v
             for key, v in layer.state_dict().items()}
    layer.load_state_dict(state)
    return layer


# -- forward against the plain-loop reference -----------------------------------------------------
@pytest.mark.parametrize('name', sorted(CONFIGS))
@pytest.mark.parametrize('training', [False, True])
def test_forward_matches_reference(name, training):
    config, x, arrays = case(name)
    h = hyper(config, 1.7, training)
    expected = ref.odconv2d(x, *arrays, **h)
    y, _ = od.odconv2d_forward(x, *[None if a is None else a.copy() for a in arrays], **h)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


# -- gradcheck: every input and parameter, train and eval, temperature != 1 ---------------------------
@pytest.mark.parametrize('name', sorted(CONFIGS))
@pytest.mark.parametrize('training', [False, True])
def test_functional_gradcheck(name, training):
    config, x, arrays = case(name)
    h = hyper(config, 2.5, training)
    # the running statistics too: zero gradient in train mode, eq. 24 in eval; gradcheck also
    # fails if the forward modifies an input
    nc.gradcheck(lambda *a: od.odconv2d_forward(*a, **h), od.odconv2d_backward, [x] + arrays,
                 mode='random', n_directions=6)


def test_functional_gradcheck_full_every_element():
    """Element-by-element check of the general case in train mode (the cross-batch BN terms)."""
    config = (3, 4, 3, 2, 1, 1, 1, 1)
    x = RNG.standard_normal((3, 3, 4, 4))
    report = nc.gradcheck(lambda *a: od.odconv2d_forward(*a, **hyper(config, 0.6, True)),
                          od.odconv2d_backward, [x] + make_arrays(*config[:5], hidden=2), mode='full')
    assert report.mode == 'full' and max(r.max_rel_error for r in report.results) < 1e-5


@pytest.mark.parametrize('name', sorted(CONFIGS))
@pytest.mark.parametrize('training', [False, True])
def test_layer_gradcheck(name, training):
    c_in, c_out, k, kernel_num, groups, stride, padding, dilation = CONFIGS[name]
    layer = random_layer(c_in, c_out, k, kernel_num, groups, stride, padding, dilation)
    layer.train(training)
    layer.update_temperature(3.0)
    x = RNG.standard_normal((3, c_in, 5, 5))
    report = nc.gradcheck_layer(layer, x, mode='random', n_directions=6)
    assert {r.name for r in report.results} == {'x'} | set(layer.params)


# -- metamorphic identities ----------------------------------------------------------------------------
def saturated_heads(arrays, bias=60.0):
    """Zero head weights and large biases: every sigmoid attention is exactly 1.0 in float64."""
    out = list(arrays)
    for i in range(6, 14, 2):
        if out[i] is not None:
            out[i], out[i + 1] = np.zeros_like(out[i]), np.full_like(out[i + 1], bias)
    return out


@pytest.mark.parametrize('name', ['pw1x', 'single_kernel'])
def test_neutral_attention_single_kernel_is_plain_conv(name):
    config, x, arrays = case(name)
    h = hyper(config, 1.0, False)
    y, _ = od.odconv2d_forward(x, *saturated_heads(arrays), **h)
    plain, _ = conv2d_forward(x, arrays[0][0], None, h['stride'], h['padding'], h['dilation'], h['groups'])
    np.testing.assert_allclose(y, plain, rtol=1e-12, atol=1e-12)


def test_identical_kernels_equal_one_kernel():
    """softmax weights sum to 1: n copies of one kernel give the kernel_num = 1 layer, any attention."""
    config, x, arrays = case('single_kernel')
    h = hyper(config, 1.3, True)
    many = list(arrays)
    many[0] = np.repeat(arrays[0], 4, axis=0)
    many[12], many[13] = RNG.standard_normal((4, 3, 1, 1)), RNG.standard_normal(4)
    y_one, _ = od.odconv2d_forward(x, *[None if a is None else a.copy() for a in arrays], **h)
    y_many, _ = od.odconv2d_forward(x, *[None if a is None else a.copy() for a in many], **h)
    np.testing.assert_allclose(y_many, y_one, rtol=1e-12, atol=1e-12)


def test_temperature_scales_logits():
    """Every head divides its logits by T: scaling head weights, biases and T together is a no-op."""
    config, x, arrays = case('general')
    scaled = [a * 7.0 if i >= 6 and a is not None else a for i, a in enumerate(arrays)]
    y1, _ = od.odconv2d_forward(x, *arrays, **hyper(config, 1.5))
    y7, _ = od.odconv2d_forward(x, *scaled, **hyper(config, 10.5))
    np.testing.assert_allclose(y7, y1, rtol=1e-12, atol=1e-12)


def test_temperature_changes_every_head():
    config, x, arrays = case('general')
    _, c1 = od.odconv2d_forward(x, *arrays, **hyper(config, 1.0))
    _, c30 = od.odconv2d_forward(x, *arrays, **hyper(config, 30.0))
    for head in od.HEADS:
        assert not np.allclose(c1['att'][head], c30['att'][head]), head


def test_batch_coupling_train_only():
    config, x, arrays = case('general')
    x2 = x.copy()
    x2[1] += 1.0
    for training, coupled in ((True, True), (False, False)):
        h = hyper(config, 2.0, training)
        dy = RNG.standard_normal((3, 6, 5, 5))
        out = []
        for xi in (x, x2):
            y, cache = od.odconv2d_forward(xi, *[None if a is None else a.copy() for a in arrays], **h)
            out.append((y[0], od.odconv2d_backward(dy, cache)[0][0]))
        assert np.allclose(out[0][0], out[1][0]) != coupled
        assert np.allclose(out[0][1], out[1][1]) != coupled


def test_train_mode_updates_running_stats_like_batch_norm():
    layer = random_layer(4, 6, 3, padding=1)
    state = layer.state_dict()
    x = RNG.standard_normal((5, 4, 6, 6))
    hidden = ref_blocks.linear(ref_pooling.global_avg_pool2d(x), state['attention.fc.weight'][:, :, 0, 0])
    mean, var = ref_blocks.batch_norm_running_stats(hidden, state['attention.bn.running_mean'],
                                                    state['attention.bn.running_var'])
    layer.train()(x)
    new = layer.state_dict()
    np.testing.assert_allclose(new['attention.bn.running_mean'], mean, rtol=1e-12)
    np.testing.assert_allclose(new['attention.bn.running_var'], var, rtol=1e-12)
    assert new['attention.bn.num_batches_tracked'] == state['attention.bn.num_batches_tracked'] + 1
    layer.eval()(x)
    assert layer.state_dict()['attention.bn.num_batches_tracked'] == new['attention.bn.num_batches_tracked']


# -- layer: construction, state_dict, counting ---------------------------------------------------------
ALL_HEADS = ('channel', 'filter', 'spatial', 'kernel')


@pytest.mark.parametrize('args, kwargs, heads, weight_shape', [
    ((64, 128, 3), dict(padding=1, kernel_num=4), ALL_HEADS, (4, 128, 64, 3, 3)),
    ((64, 64, 3), dict(padding=1, groups=64), ('channel', 'spatial', 'kernel'), (4, 64, 1, 3, 3)),
    ((32, 64, 1), dict(kernel_num=1), ('channel', 'filter'), (1, 64, 32, 1, 1)),
    ((32, 64, 1), dict(kernel_num=4), ('channel', 'filter', 'kernel'), (4, 64, 32, 1, 1)),
    ((32, 64, 3), dict(kernel_num=1), ('channel', 'filter', 'spatial'), (1, 64, 32, 3, 3)),
    ((32, 64, 3), dict(groups=32), ALL_HEADS, (4, 64, 1, 3, 3)),
])
def test_state_dict_keys_shapes_and_round_trip(args, kwargs, heads, weight_shape):
    layer = od.ODConv2d(*args, **kwargs, rng=0)
    c_in, c_out, k = args
    widths = dict(channel=c_in, filter=c_out, spatial=k * k, kernel=kwargs.get('kernel_num', 4))
    expected = {'weight': weight_shape, 'attention.fc.weight': (16, c_in, 1, 1),
                'attention.bn.num_batches_tracked': ()}
    expected.update({f'attention.bn.{b}': (16,) for b in ('weight', 'bias', 'running_mean', 'running_var')})
    for h in heads:
        expected[f'attention.{h}_fc.weight'] = (widths[h], 16, 1, 1)
        expected[f'attention.{h}_fc.bias'] = (widths[h],)
    state = layer.state_dict()
    assert {k: v.shape for k, v in state.items()} == expected
    assert state['attention.bn.num_batches_tracked'].dtype == np.int64
    other = od.ODConv2d(*args, **kwargs, rng=1).eval()
    other.load_state_dict(state)
    x = RNG.standard_normal((2, c_in, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(other(x), layer.eval()(x))


def test_attention_width_rule():
    assert [od.odconv_attention_channels(c) for c in (3, 64, 256, 512)] == [16, 16, 16, 32]
    assert od.odconv_attention_channels(128, reduction=0.25) == 32
    assert od.ODConv2d(512, 8, 1, rng=0).params['attention.fc.weight'].shape == (32, 512, 1, 1)


def test_initialisation_follows_official_fan_out():
    layer = od.ODConv2d(64, 128, 3, kernel_num=2, rng=0, dtype=np.float64)
    p = layer.params
    for i in range(2):                                    # kaiming_normal_(weight[i], fan_out = 128*9)
        assert abs(p['weight'][i].std() / np.sqrt(2 / (128 * 9)) - 1) < 0.05
    assert abs(p['attention.channel_fc.weight'].std() / np.sqrt(2 / 64) - 1) < 0.1
    assert not p['attention.filter_fc.bias'].any() and (p['attention.bn.weight'] == 1).all()
    assert layer.temperature == 1.0


def test_macs_formula():
    n, c_in, c_out, k, kernels, h = 2, 32, 64, 3, 4, 10
    layer = od.ODConv2d(c_in, c_out, k, stride=2, padding=1, kernel_num=kernels, rng=0)
    params, macs = nc.count(layer, (n, c_in, h, h))
    p = c_out * c_in * k * k
    expected = n * (25 * p + c_in * 16 + 16 * (c_in + c_out + k * k + kernels) + kernels * p
                    + c_in * h * h + c_out * 25)
    assert macs == expected and params == sum(v.size for v in layer.params.values())
    pw1x = od.ODConv2d(c_in, c_out, 1, kernel_num=1, rng=0)           # no aggregation term
    assert nc.count(pw1x, (1, c_in, h, h))[1] == (100 * c_out * c_in + c_in * 16 + 16 * (c_in + c_out)
                                                 + c_in * 100 + c_out * 100)
    dw = od.ODConv2d(c_in, c_in, 3, padding=1, groups=c_in, kernel_num=1, rng=0)  # no filter scaling
    assert nc.count(dw, (1, c_in, h, h))[1] == (100 * c_in * 9 + c_in * 16 + 16 * (c_in + 9)
                                               + c_in * 9 + c_in * 100)


def test_temperature_schedule_official_formula():
    # 100 iterations per epoch, 10 warm-up epochs: T(cur) = 1 + 29 (1000 - cur) / 1000
    assert od.odconv_temperature(0, 0, 100) == 30.0
    assert od.odconv_temperature(1, 0, 100) == pytest.approx(1 + 29 * 999 / 1000)
    assert od.odconv_temperature(0, 5, 100) == pytest.approx(15.5)
    assert od.odconv_temperature(0, 10, 100) == 1.0 and od.odconv_temperature(50, 12, 100) == 1.0
    assert od.odconv_temperature(10, 0, 10, temp_epoch=2, temp_init=5.0) == pytest.approx(3.0)
    layer = od.ODConv2d(4, 4, 3, rng=0)
    layer.update_temperature(od.odconv_temperature(0, 0, 100))
    assert layer.temperature == 30.0 and 'temperature' not in ' '.join(layer.state_dict())


# -- dtypes, mutation, batch 0 ---------------------------------------------------------------------------
def test_float32_preserved_and_close_to_float64():
    layer64 = random_layer(4, 6, 3, padding=1)
    layer32 = od.ODConv2d(4, 6, 3, padding=1, dtype=np.float32, rng=0)
    layer32.load_state_dict(layer64.state_dict())
    x = RNG.standard_normal((3, 4, 6, 6))
    y32, y64 = layer32(x.astype(np.float32)), layer64(x)
    dy = RNG.standard_normal(y64.shape)
    dx32, dx64 = layer32.backward(dy.astype(np.float32)), layer64.backward(dy)
    assert y32.dtype == dx32.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer32.grads.values())
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize('training', [False, True])
def test_inputs_not_mutated(training):
    config, x, arrays = case('general')
    before = [None if a is None else a.copy() for a in [x] + arrays]
    y, cache = od.odconv2d_forward(x, *arrays, **hyper(config, 2.0, training))
    dy = RNG.standard_normal(y.shape)
    dy_before = dy.copy()
    od.odconv2d_backward(dy, cache)
    buffers = (5, 6)                                   # running stats: updated in train mode only
    for i, (a, b) in enumerate(zip([x] + arrays, before)):
        if a is not None and not (training and i in buffers):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dy, dy_before)


@pytest.mark.parametrize('training', [False, True])
def test_batch_zero(training):
    layer = random_layer(4, 6, 3, stride=2, padding=1).train(training)
    y = layer(np.zeros((0, 4, 7, 7)))
    assert y.shape == (0, 6, 4, 4)
    assert layer.backward(np.zeros_like(y)).shape == (0, 4, 7, 7)


# -- errors ---------------------------------------------------------------------------------------------
def test_batch_one_in_train_mode_raises_like_pytorch():
    layer = od.ODConv2d(4, 6, 3, padding=1, rng=0)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, "
                                         r"got input size \[1, 16, 1, 1\]"):
        layer(np.ones((1, 4, 5, 5), np.float32))
    assert layer.eval()(np.ones((1, 4, 5, 5), np.float32)).shape == (1, 6, 5, 5)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match='groups=3 must divide in_planes=4'):
        od.ODConv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match='kernel_size must be square'):
        od.ODConv2d(4, 6, (3, 1))
    with pytest.raises(ValueError, match='kernel_num must be a positive int'):
        od.ODConv2d(4, 6, 3, kernel_num=0)
    with pytest.raises(ValueError, match='reduction must be'):
        od.ODConv2d(4, 6, 3, reduction=-1.0)
    with pytest.raises(ValueError, match='temperature must be finite and in'):
        od.ODConv2d(4, 6, 3).update_temperature(0.0)
    layer = od.ODConv2d(4, 6, 3, rng=0)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4, H, W\), got \(2, 5, 6, 6\)"):
        layer(np.ones((2, 5, 6, 6), np.float32))
    with pytest.raises(TypeError, match='float32 parameters, got x of dtype float64'):
        layer(np.ones((2, 4, 6, 6)))
    # count() refuses a wrong channel number and a 3-D shape
    for shape in ((2, 5, 6, 6), (4, 6, 6)):
        with pytest.raises(ValueError, match=r'input_shape must be \(N, 4, H, W\), got'):
            nc.count(layer, shape)


def test_functional_argument_errors():
    config, x, arrays = case('general')
    h = hyper(config)

    def call(x=x, arrays=arrays, **changes):
        return od.odconv2d_forward(x, *arrays, **{**h, **changes})
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 6, 2, 3, 3\)"):
        call(groups=2, arrays=[arrays[0][:, :, :3]] + arrays[1:])
    with pytest.raises(ValueError, match=r"fc_weight must have shape \(3, 4, 1, 1\), got \(3, 5, 1, 1\)"):
        call(arrays=[arrays[0], RNG.standard_normal((3, 5, 1, 1))] + arrays[2:])
    with pytest.raises(ValueError, match=r"spatial_fc_weight \(9, 3, 1, 1\) and spatial_fc_bias \(9,\) are "
                                         r"required"):
        call(arrays=arrays[:10] + [None, None] + arrays[12:])
    pw = [arrays[0][:, :, :, :1, :1]] + arrays[1:]
    with pytest.raises(ValueError, match='no spatial attention when kernel_size == 1'):
        call(arrays=pw, padding=0)
    with pytest.raises(ValueError, match=r"kernel_fc_weight must have shape \(3, 3, 1, 1\)"):
        call(arrays=arrays[:12] + [RNG.standard_normal((4, 3, 1, 1)), arrays[13]])
    with pytest.raises(TypeError, match='same float dtype'):
        call(x=x.astype(np.float32))
    with pytest.raises(TypeError, match='training must be a bool'):
        call(training='yes')
    with pytest.raises(ValueError, match='temperature must be finite and in'):
        call(temperature=-1.0)
    with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
        call(x=x[:1], training=True)
    y, cache = call()
    with pytest.raises(ValueError, match=r"dout must have shape \(3, 6, 5, 5\)"):
        od.odconv2d_backward(y[:, :, 1:], cache)


# -- PyTorch: a re-creation of the official module (OSVAI/ODConv modules/odconv.py) -----------------------
def official_odconv_class(torch):
    """``ODConv2d`` re-created in PyTorch (also used by benchmarks/bench_odconv.py)."""
    nn, F = torch.nn, torch.nn.functional

    class Attention(nn.Module):
        """Same structure, keys and skip rules as the official ``Attention``."""

        def __init__(self, in_planes, out_planes, kernel_size, groups, reduction, kernel_num, min_channel=16):
            super().__init__()
            hidden = max(int(in_planes * reduction), min_channel)
            self.kernel_size, self.temperature = kernel_size, 1.0
            self.fc = nn.Conv2d(in_planes, hidden, 1, bias=False)
            self.bn = nn.BatchNorm2d(hidden)
            self.channel_fc = nn.Conv2d(hidden, in_planes, 1)
            depthwise = in_planes == groups and in_planes == out_planes
            self.filter_fc = None if depthwise else nn.Conv2d(hidden, out_planes, 1)
            self.spatial_fc = None if kernel_size == 1 else nn.Conv2d(hidden, kernel_size ** 2, 1)
            self.kernel_fc = None if kernel_num == 1 else nn.Conv2d(hidden, kernel_num, 1)

        def forward(self, x):
            n, t, k = x.size(0), self.temperature, self.kernel_size
            h = F.relu(self.bn(self.fc(F.adaptive_avg_pool2d(x, 1))))
            ca = torch.sigmoid(self.channel_fc(h).view(n, -1, 1, 1) / t)
            fa = 1.0 if self.filter_fc is None else torch.sigmoid(self.filter_fc(h).view(n, -1, 1, 1) / t)
            sa = 1.0 if self.spatial_fc is None else torch.sigmoid(
                self.spatial_fc(h).view(n, 1, 1, 1, k, k) / t)
            ka = 1.0 if self.kernel_fc is None else F.softmax(
                self.kernel_fc(h).view(n, -1, 1, 1, 1, 1) / t, dim=1)
            return ca, fa, sa, ka

    class ODConv2d(nn.Module):
        """Batch-as-groups forward of ``_forward_impl_common`` and the ``_forward_impl_pw1x`` path."""

        def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     reduction=0.0625, kernel_num=4):
            super().__init__()
            self.shape = (in_planes, out_planes, kernel_size)
            self.conv = dict(stride=stride, padding=padding, dilation=dilation)
            self.groups = groups
            self.attention = Attention(in_planes, out_planes, kernel_size, groups, reduction, kernel_num)
            self.weight = nn.Parameter(torch.randn(kernel_num, out_planes, in_planes // groups,
                                                   kernel_size, kernel_size))

        def forward(self, x):
            in_planes, out_planes, k = self.shape
            ca, fa, sa, ka = self.attention(x)
            n, _, h, w = x.shape
            x = x * ca
            if k == 1 and self.weight.shape[0] == 1:
                return F.conv2d(x, self.weight.squeeze(0), None, groups=self.groups, **self.conv) * fa
            kernels = torch.sum(sa * ka * self.weight.unsqueeze(0), dim=1)
            kernels = kernels.view(-1, in_planes // self.groups, k, k)
            y = F.conv2d(x.reshape(1, -1, h, w), kernels, None, groups=self.groups * n, **self.conv)
            return y.view(n, out_planes, y.size(-2), y.size(-1)) * fa
    return ODConv2d


@pytest.mark.parametrize('name', sorted(CONFIGS))
@pytest.mark.parametrize('training, temperature', [(False, 1.0), (False, 30.0), (True, 30.0)])
def test_matches_torch_recreation(name, training, temperature):
    torch = pytest.importorskip('torch')
    c_in, c_out, k, kernel_num, groups, stride, padding, dilation = CONFIGS[name]
    args = (c_in, c_out, k, stride, padding, dilation, groups)
    torch.manual_seed(0)
    module = official_odconv_class(torch)(*args, kernel_num=kernel_num).double().train(training)
    ours = random_layer(*args[:3], kernel_num, groups, stride, padding, dilation).train(training)
    module.load_state_dict({key: torch.from_numpy(v.copy()) for key, v in ours.state_dict().items()})
    module.attention.temperature = temperature
    ours.update_temperature(temperature)
    x = RNG.standard_normal((3, c_in, 6, 6))
    tx = torch.tensor(x, requires_grad=True)
    ty = module(tx)
    dy = RNG.standard_normal(tuple(ty.shape))
    ty.backward(torch.from_numpy(dy))
    y = ours(x)
    dx = ours.backward(dy)

    def close(a, b):
        assert np.abs(a - b).max() <= 1e-10 * max(np.abs(b).max(), 1e-30)
    close(y, ty.detach().numpy())
    close(dx, tx.grad.numpy())
    grads = ours.grads
    for key, p in module.named_parameters():
        close(grads[key], p.grad.numpy())
    for key, v in module.state_dict().items():
        close(ours.state_dict()[key], v.numpy())          # running stats and num_batches_tracked
