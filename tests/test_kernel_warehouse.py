"""KernelWarehouse: gradcheck (incl. warehouse weights), reference, identities, sharing, errors, torch."""
import numpy as np
import pytest

import numpyconv as nc
from numpyconv import kernel_warehouse as kw
from numpyconv.conv import conv2d_forward
from numpyconv.module import Module, count
from numpyconv.reference import kernel_warehouse as ref

RNG = np.random.default_rng(2024)


# -- helpers ---------------------------------------------------------------------------------------
class Chain(Module):
    """A network holding the manager (as the official models do; None: held elsewhere) and KW layers
    applied in order."""

    def __init__(self, manager, layers):
        super().__init__(dtype=layers[0].dtype)
        if manager is not None:
            self.add_module('warehouse_manager', manager)
        self.layers = layers
        for i, layer in enumerate(layers):
            self.add_module(f'l{i}', layer)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dout):
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def macs(self, input_shape):
        total = 0
        for layer in self.layers:
            m, input_shape = layer.macs(input_shape)
            total += m
        return total, input_shape


# Chain-compatible layers: (in, out, kernel, keyword arguments of reserve)
SHARED = [(4, 4, 3, dict(padding=1, warehouse_name='stage0_layer1_conv1')),
          (4, 4, 3, dict(stride=2, padding=1, groups=2, warehouse_name='stage0_layer2_conv1')),
          (4, 6, 1, dict(bias=True, warehouse_name='stage1_layer1_conv0')),
          (6, 2, 1, dict(warehouse_name='stage0_layer3_conv2', bias=True)),
          (2, 2, 3, dict(padding=1, warehouse_name='stage1_layer2_conv1'))]


def build(specs=SHARED, order=None, dtype=np.float64, seed=0, randomize=True, **options):
    """Manager + layers reserved from ``specs``, stored and allocated in ``order`` (default: reserve)."""
    options.setdefault('sharing_range', ('layer', 'conv'))
    wm = kw.WarehouseManager(dtype=dtype, rng=seed, **options)
    layers = [wm.reserve(i, o, k, **kwargs) for i, o, k, kwargs in specs]
    wm.store()
    wm.allocate([layers[i] for i in order] if order is not None else layers)
    if randomize:
        randomize_state(layers, np.random.default_rng(seed + 1))
    return wm, layers


def randomize_state(layers, rng):
    """Non-trivial BatchNorm statistics and affine, fc2/basis biases and layer biases."""
    for layer in layers:
        state = layer.state_dict()
        for key, value in state.items():
            if key.endswith(('norm1.weight', 'norm1.running_var')):
                state[key] = 0.5 + rng.random(value.shape)
            elif key.endswith(('norm1.bias', 'norm1.running_mean', 'fc2.bias', 'basis_bias')) \
                    or key == 'bias':
                state[key] = 0.3 * rng.standard_normal(value.shape)
        layer.load_state_dict(state)


def set_temperature(layers, t):
    for layer in layers:
        layer.update_temperature(t)


def layer_args(layer, x):
    """The positional arrays and keywords :func:`kw.kw_conv2d_forward` gets from ``layer``."""
    state = {**layer.params, **layer.buffers}
    arrays = (x, layer.warehouse) + tuple(state.get(k) for k in kw.KWConv2d._ARG_KEYS)
    hyper = dict(kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                 dilation=layer.dilation, groups=layer.groups, start_cell_idx=layer.start_cell_idx,
                 temperature=layer.temperature, temp_bias=layer.temp_bias, training=layer.training)
    return arrays, hyper


def own_cell(layer, idx, ratio):
    """The spec's ownership rule (section 5.2), written independently of the library."""
    if ratio >= 1:
        return layer.start_cell_idx + idx * int(ratio)
    period = int(1 / ratio)
    owners = [k for k in range(idx + 1) if k % period == (k // period) % period]
    return layer.start_cell_idx + len(owners) - 1 if idx in owners else None


def static_kernel(layer, ratio):
    """The static kernel built from the layer's own cells (spec section 12, t = 1)."""
    e = layer.warehouse
    c_out, c_in, ckh, ckw = e.shape[1:]
    (kh, kw_), (go, gi, _, m) = layer.kernel_size, layer.layout
    kernel = np.zeros((layer.out_planes, layer.in_planes // layer.groups, kh, kw_))
    for mix in range(m):
        s, rest = divmod(mix, go * gi)
        o, i = divmod(rest, gi)
        cell = own_cell(layer, mix, ratio)
        value = np.zeros(e.shape[1:]) if cell is None else e[cell]
        rows, cols = slice(o * c_out, (o + 1) * c_out), slice(i * c_in, (i + 1) * c_in)
        if (ckh, ckw) == (1, 1):
            kernel[rows, cols, s // kw_, s % kw_] = value[:, :, 0, 0]
        else:
            kernel[rows, cols] = value
    return kernel


def gradcheck_arrays(forward_fn, backward_fn, args, hyper, **options):
    """Gradcheck every array argument, the running statistics included (zero gradient in train
    mode, blocks eq. 22a in eval); gradcheck also fails if the forward modifies any of them."""
    return nc.gradcheck(lambda *a: forward_fn(*a, **hyper), backward_fn, args, **options)


# -- CAF ----------------------------------------------------------------------------------------------
def test_caf_matches_reference_and_gradcheck():
    z = RNG.standard_normal((5, 7))
    out, _ = kw.kw_caf_forward(z)
    np.testing.assert_allclose(out, ref.kw_caf(z), rtol=1e-14)
    nc.gradcheck(kw.kw_caf_forward, kw.kw_caf_backward, (z,), mode='full')


def test_caf_row_with_zero_entry_uses_sign_zero():
    z = RNG.standard_normal((3, 5))
    z[1, 2] = 0.0
    with pytest.warns(UserWarning, match='non-differentiable'):
        report = nc.gradcheck(kw.kw_caf_forward, kw.kw_caf_backward, (z,), mode='full',
                              raise_exception=False)
    assert report.ok and report.results[0].nondifferentiable == [(1, 2)]
    _, cache = kw.kw_caf_forward(z)
    dout = RNG.standard_normal(z.shape)
    dz, = kw.kw_caf_backward(dout, cache)
    denom = np.abs(z[1]).sum() + 1e-3
    assert dz[1, 2] == pytest.approx(dout[1, 2] / denom)      # sign(0) = 0: only the direct term


def test_caf_backward_checks_dout():
    """Regression: a list or an integer array as dout used to fail with a raw AttributeError."""
    _, cache = kw.kw_caf_forward(np.arange(6.0).reshape(2, 3) - 2)
    with pytest.raises(TypeError, match='dout must be a numpy.ndarray'):
        kw.kw_caf_backward([[1.0, 2.0, 3.0]] * 2, cache)
    with pytest.raises(TypeError, match='dout must be a real floating array.*int64'):
        kw.kw_caf_backward(np.ones((2, 3), dtype=np.int64), cache)
    with pytest.raises(ValueError, match=r'dout must have shape \(2, 3\), got \(3,\)'):
        kw.kw_caf_backward(np.ones(3), cache)


def test_caf_is_signed_and_not_softmax():
    out, _ = kw.kw_caf_forward(np.array([[2.0, -1.0, 1.0]]))
    np.testing.assert_allclose(out, [[2 / 4.001, -1 / 4.001, 1 / 4.001]])
    assert np.abs(out).sum() < 1


# -- attention and whole op: reference and gradcheck ------------------------------------------------
def attention_operands(basis, n=3, c=5, num_cells=6, m=3, hidden=4, nl=2, nb=3):
    p = num_cells + 1
    x = RNG.standard_normal((n, c, 4, 3))
    trunk = (RNG.standard_normal((hidden, c)), 0.5 + RNG.random(hidden), 0.3 * RNG.standard_normal(hidden),
             0.2 * RNG.standard_normal(hidden), 0.5 + RNG.random(hidden))
    if basis:
        head = (RNG.standard_normal((m * (nl + nb + 1), hidden)), None,
                RNG.standard_normal((num_cells - nl, nb)), 0.3 * RNG.standard_normal(m * p))
    else:
        head = (RNG.standard_normal((m * p, hidden)), 0.3 * RNG.standard_normal(m * p), None, None)
    temp_bias = np.zeros(m * p)
    temp_bias[np.arange(m) * p + [0, 3, num_cells][:m]] = 1
    return (x,) + trunk + head, temp_bias


@pytest.mark.parametrize('basis', [False, True])
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('temperature', [0.0, 0.3, 1.7])
def test_attention_reference_and_gradcheck(basis, training, temperature):
    args, temp_bias = attention_operands(basis)
    hyper = dict(num_cells=6, start_cell_idx=3, temperature=temperature, temp_bias=temp_bias,
                 training=training)
    a, _ = kw.kw_attention_forward(*args, **hyper)
    np.testing.assert_allclose(a, ref.kw_attention(*args, **hyper), rtol=1e-11, atol=1e-12)
    gradcheck_arrays(kw.kw_attention_forward, kw.kw_attention_backward, args, hyper)


def test_basis_map_gradcheck():
    """map_to_cell_basis alone (eq. 6, 21), with the start clamped as Python slicing does."""
    sizes = kw.AttentionSizes(m=2, P=6, M=5, nl=2, nb=3)
    logits, w3, bb = RNG.standard_normal((3, 12)), RNG.standard_normal((3, 3)), RNG.standard_normal(12)
    for start in (0, 2, 3):
        nc.gradcheck(lambda a, b, c: kw._basis_forward(a, b, c, sizes, start),
                     lambda d, cache: kw._basis_backward(d, cache, sizes, start), (logits, w3, bb))


def test_assembly_backward_is_the_adjoint():
    """<assemble(A, E), G> = <A, dA> = <E, dE> (eq. 10-11 bilinear, eq. 15-17 its adjoints)."""
    for cell, kernel in (((2, 3, 1, 1), (3, 2)), ((2, 3, 3, 2), (3, 2))):
        layout = kw.cell_layout(4, 6, kernel, cell)
        a, e = RNG.standard_normal((3 * layout.m, 5)), RNG.standard_normal((5,) + cell)
        kernels = kw._assemble_forward(a, e, layout, (4, 6) + kernel)
        g = RNG.standard_normal(kernels.shape)
        da, de = kw._assemble_backward(g, a, e, layout)
        assert np.vdot(kernels, g) == pytest.approx(np.vdot(a, da)) == pytest.approx(np.vdot(e, de))


OP_CASES = {  # x shape, warehouse shape, kernel, stride, padding, dilation, groups, bias
    'plain_1x1_cells': ((2, 4, 4, 4), (4, 2, 2, 1, 1), 3, 1, 1, 1, 1, True),
    'grouped_strided': ((3, 4, 6, 5), (5, 2, 1, 1, 1), (3, 2), 2, (1, 0), (1, 2), 2, False),
    'whole_kernel_cells': ((2, 2, 5, 5), (3, 2, 1, 3, 3), 3, 1, 'same', 1, 2, True),
}


def op_operands(case, basis, hidden=4):
    xs, ws, kernel, stride, padding, dilation, groups, bias = OP_CASES[case]
    x, warehouse = RNG.standard_normal(xs), RNG.standard_normal(ws)
    kh, kw_ = (kernel, kernel) if isinstance(kernel, int) else kernel
    num_cells, c_out, c_in, ckh, ckw = ws
    gi, gs = xs[1] // groups // c_in, kh * kw_ // (ckh * ckw)
    m, p = 2 * gi * gs, num_cells + 1                              # go = 2 output blocks
    trunk = (RNG.standard_normal((hidden, xs[1])), 0.5 + RNG.random(hidden),
             0.3 * RNG.standard_normal(hidden), 0.2 * RNG.standard_normal(hidden),
             0.5 + RNG.random(hidden))
    if basis:
        nl, nb = 1, 3
        head = (RNG.standard_normal((m * (nl + nb + 1), hidden)), None,
                RNG.standard_normal((num_cells - nl, nb)), 0.3 * RNG.standard_normal(m * p))
    else:
        head = (RNG.standard_normal((m * p, hidden)), 0.3 * RNG.standard_normal(m * p), None, None)
    temp_bias = np.zeros(m * p)
    temp_bias[np.arange(m) * p + np.arange(m) % p] = 1
    args = (x, warehouse) + trunk + head + ((RNG.standard_normal(2 * c_out) if bias else None),)
    hyper = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
                 groups=groups, start_cell_idx=1, temp_bias=temp_bias)
    return args, hyper


MODES = [(True, 0.0), (True, 0.6), (False, 0.25)]   # (training, temperature)


@pytest.mark.parametrize('case', sorted(OP_CASES))
@pytest.mark.parametrize('basis', [False, True])
@pytest.mark.parametrize('training, temperature', MODES)
def test_kw_conv2d_matches_reference(case, basis, training, temperature):
    args, hyper = op_operands(case, basis)
    hyper.update(training=training, temperature=temperature)
    y, _ = kw.kw_conv2d_forward(*args, **hyper)
    np.testing.assert_allclose(y, ref.kw_conv2d(*args, **hyper), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize('case, basis, mode', [(case, basis, MODES[(i + basis) % 3])
                                               for i, case in enumerate(sorted(OP_CASES))
                                               for basis in (False, True)])
def test_kw_conv2d_gradcheck(case, basis, mode):
    args, hyper = op_operands(case, basis)
    hyper.update(training=mode[0], temperature=mode[1])
    # full (every element) where small, random directions where the attention head is large
    gradcheck_arrays(kw.kw_conv2d_forward, kw.kw_conv2d_backward, args, hyper,
                     mode='full' if case == 'whole_kernel_cells' else 'random')


# -- layers with the manager ------------------------------------------------------------------------
@pytest.mark.parametrize('training, temperature, options', [
    (True, 0.4, dict()), (False, 0.0, dict()), (True, 0.0, dict(nonlocal_basis_ratio=0.5)),
    (False, 0.4, dict(nonlocal_basis_ratio=0.5)),
    (True, 0.4, dict(cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5,
                     spatial_partition=False))])
def test_layers_gradcheck_including_warehouses(training, temperature, options):
    specs = SHARED if options.get('spatial_partition', True) else \
        [(4, 4, 3, dict(padding=1, warehouse_name='a')), (4, 4, 3, dict(padding=1, groups=2,
                                                                          warehouse_name='a'))]
    wm, layers = build(specs, **options)
    net = Chain(wm, layers).train(training)
    set_temperature(layers, temperature)
    x = RNG.standard_normal((3, 4, 5, 5))
    report = nc.gradcheck_layer(net, x, mode='random', n_directions=3)
    names = [r.name for r in report.results]
    assert 'warehouse_manager.weights.0' in names and 'l0.attention.fc1.weight' in names


@pytest.mark.parametrize('training', [True, False])
def test_layers_match_reference(training):
    wm, layers = build(nonlocal_basis_ratio=0.5)
    set_temperature(layers, 0.35)
    x = RNG.standard_normal((2, 4, 5, 5))
    for layer in layers:
        layer.train(training)
        arrays, hyper = layer_args(layer, x)
        expected = ref.kw_conv2d(*arrays, **hyper)
        x = layer(x)
        np.testing.assert_allclose(x, expected, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize('ratio, options', [(1, dict()), (2, dict(cell_num_ratio=2)),
                                            (0.5, dict(cell_num_ratio=0.5, cell_inplane_ratio=0.5,
                                                       cell_outplane_ratio=0.5))])
def test_temperature_one_is_static_conv_of_own_cells(ratio, options):
    wm, layers = build(**options)
    set_temperature(layers, 1.0)
    x = RNG.standard_normal((2, 4, 5, 5))
    for layer in layers:
        y = layer(x)
        bias = layer.params.get('bias')
        expected, _ = conv2d_forward(x, static_kernel(layer, ratio), bias, layer.stride,
                                     layer.padding, layer.dilation, layer.groups)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
        layer.zero_grad()
        layer.backward(RNG.standard_normal(y.shape))
        assert all(not g.any() for k, g in layer.grads.items() if k.startswith('attention.'))
        x = y


def test_temp_bias_points_at_own_cells_and_zero_cell():
    wm, layers = build(cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5)
    for layer in layers:
        p = layer.warehouse.shape[0] + 1
        rows = layer.temp_bias.reshape(-1, p)
        assert (rows.sum(axis=1) == 1).all()
        for idx, row in enumerate(rows):
            cell = own_cell(layer, idx, 0.5)
            assert row[p - 1 if cell is None else cell] == 1


def test_shared_warehouse_gradients_accumulate():
    wm, layers = build()
    pair = layers[:2]
    assert pair[0].warehouse_id == pair[1].warehouse_id == 0
    xs = [RNG.standard_normal((2, 4, 5, 5)) for _ in pair]
    douts, contributions = [], []
    for layer, x in zip(pair, xs):                               # each layer's own dE (eq. 16)
        arrays, hyper = layer_args(layer, x)
        y, cache = kw.kw_conv2d_forward(*arrays, **hyper)
        douts.append(RNG.standard_normal(y.shape))
        contributions.append(kw.kw_conv2d_backward(douts[-1], cache)[1])
    wm.zero_grad()
    for layer, x in zip(pair, xs):
        layer(x)
    for layer, dout in zip(pair, douts):
        layer.backward(dout)
    np.testing.assert_allclose(wm.grads['weights.0'], contributions[0] + contributions[1], rtol=1e-12)
    assert not wm.grads['weights.1'].any()
    assert not any('weights' in k for k in pair[0].grads)


def test_allocation_order_sets_start_and_cells():
    specs = [(4, 8, 3, dict(warehouse_name='w')), (8, 8, 3, dict(warehouse_name='w')),
             (4, 8, 1, dict(warehouse_name='w'))]
    wm, layers = build(specs, order=[0, 1, 2], randomize=False)
    assert [layer.start_cell_idx for layer in layers] == [0, 9, 27]
    assert wm.params['weights.0'].shape == (28, 8, 4, 1, 1)
    wm2, layers2 = build(specs, order=[2, 0, 1], randomize=False)
    assert [layer.start_cell_idx for layer in layers2] == [1, 10, 0]
    assert [layer.layout.m for layer in layers2] == [9, 18, 1]


def test_warehouse_shapes_and_names_fuse():
    wm = kw.WarehouseManager(sharing_range=('layer', 'conv'), rng=0)
    names = ['stage0_layer1_conv0', 'stage0_layer2_conv1', 'stage1_layer1_conv0', 'stage0_layer3_conv1']
    layers = [wm.reserve(64, 64, 3, padding=1, warehouse_name=n) for n in names]
    assert [layer.warehouse_id for layer in layers] == [0, 0, 1, 0]
    assert list(wm.warehouses) == ['stage0_layer_conv', 'stage1_layer_conv']
    string_wm = kw.WarehouseManager(sharing_range='layer_conv')
    assert string_wm.fuse_warehouse_name('stage2_layer3_conv1') == 'stage2_l_c'


def test_per_warehouse_options_and_basis_keys():
    specs = [(16, 32, 3, dict(warehouse_name='a')), (32, 32, 3, dict(warehouse_name='b'))]
    wm, layers = build(specs, reduction=(0.5, 1.0), cell_num_ratio=[1, 2], nonlocal_basis_ratio=0.5,
                       randomize=False)
    assert wm.params['weights.0'].shape == (9, 32, 16, 1, 1)
    assert wm.params['weights.1'].shape == (18, 32, 32, 1, 1)
    keys = set(layers[1].state_dict())
    assert keys == {'attention.fc1.weight', 'attention.norm1.weight', 'attention.norm1.bias',
                    'attention.norm1.running_mean', 'attention.norm1.running_var',
                    'attention.norm1.num_batches_tracked', 'attention.fc2.weight',
                    'attention.fc3.weight', 'attention.basis_bias', 'bias'}
    # hidden = max(int(32 * 1.0), 16); nl = 2 * 9 = 18 = M: no nonlocal cells, nb = 16
    assert layers[1].params['attention.fc1.weight'].shape == (32, 32)
    assert layers[1].params['attention.fc2.weight'].shape == ((18 + 16 + 1) * 9, 32)
    assert layers[1].params['attention.fc3.weight'].shape == (0, 16)


def test_basis_mode_warehouse_of_one_layer_has_no_nonlocal_cells():
    """A lone layer owns every cell: fc3 is (0, 16) and the attention is all local (as officially)."""
    wm, (layer,) = build([(4, 4, 3, dict(padding=1))], nonlocal_basis_ratio=0.5)
    assert layer.params['attention.fc3.weight'].shape == (0, 16)
    layer.update_temperature(0.2)
    nc.gradcheck_layer(Chain(wm, [layer]), RNG.standard_normal((2, 4, 4, 4)), mode='random',
                       n_directions=3)


def test_initialisation_statistics():
    wm, (layer,) = build([(64, 128, 3, dict())], randomize=False, seed=3)
    e = wm.params['weights.0']                                  # (9, 128, 64, 1, 1): 9 cells owned
    assert e.shape == (9, 128, 64, 1, 1)
    assert e.std() == pytest.approx(np.sqrt(2 / (9 * 128)), rel=0.05)   # fan_out = cells * c_out
    assert layer.params['attention.fc2.weight'].shape == (9 * 10, 16)
    assert layer.params['attention.fc2.weight'].std() == pytest.approx(np.sqrt(2 / 90), rel=0.1)
    assert not layer.params['attention.fc2.bias'].any()
    assert (layer.params['attention.norm1.weight'] == 1).all()
    assert not layer.params.get('bias', np.zeros(1)).any()


def test_num_batches_tracked_and_running_stats_update_in_train_only():
    wm, (layer,) = build([(4, 4, 3, dict(padding=1))])
    before = layer.state_dict()
    x = RNG.standard_normal((3, 4, 5, 5))
    layer.eval()(x)
    after = layer.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    layer.train()(x)
    after = layer.state_dict()
    assert after['attention.norm1.num_batches_tracked'] == before['attention.norm1.num_batches_tracked'] + 1
    assert not np.allclose(after['attention.norm1.running_mean'], before['attention.norm1.running_mean'])


# -- state, dtypes, batch 0, counting, schedule -------------------------------------------------------
def test_state_dict_round_trip_rebuilds_temp_bias():
    wm, layers = build(order=[3, 1, 4, 0, 2], nonlocal_basis_ratio=0.5)
    wm2, layers2 = build(order=[3, 1, 4, 0, 2], nonlocal_basis_ratio=0.5, seed=9, randomize=False)
    wm2.load_state_dict(wm.state_dict())
    for a, b in zip(layers, layers2):
        b.load_state_dict(a.state_dict())
        np.testing.assert_array_equal(a.temp_bias, b.temp_bias)
    set_temperature(layers + layers2, 0.5)
    x = RNG.standard_normal((2, 4, 5, 5))
    net, net2 = Chain(wm, layers).eval(), Chain(wm2, layers2).eval()
    np.testing.assert_array_equal(net(x), net2(x))
    assert set(net.state_dict()) >= {'warehouse_manager.weights.0', 'warehouse_manager.weights.1',
                                     'l2.bias', 'l0.attention.basis_bias'}


def test_float32_preserved_and_inputs_untouched():
    wm, layers = build(dtype=np.float32)
    net = Chain(wm, layers)
    set_temperature(layers, 0.2)
    x = RNG.standard_normal((2, 4, 5, 5)).astype(np.float32)
    x_copy, state = x.copy(), {k: v.copy() for k, v in wm.state_dict().items()}
    y = net(x)
    dy = np.ones_like(y)
    dx = net.backward(dy)
    assert y.dtype == dx.dtype == np.float32 and wm.grads['weights.0'].dtype == np.float32
    assert np.array_equal(x, x_copy) and (dy == 1).all()
    assert all(np.array_equal(v, state[k]) for k, v in wm.state_dict().items())
    wm64, layers64 = build(dtype=np.float64)
    net64 = Chain(wm64, layers64)
    net64.load_state_dict(net.state_dict())
    set_temperature(layers64, 0.2)
    np.testing.assert_allclose(y, net64(x.astype(np.float64)), rtol=1e-4, atol=1e-4)


def test_functional_does_not_mutate_parameters():
    args, hyper = op_operands('grouped_strided', basis=True)
    copies = [None if a is None else a.copy() for a in args]
    y, cache = kw.kw_conv2d_forward(*args, **hyper)
    kw.kw_conv2d_backward(np.ones_like(y), cache)
    for i, (a, c) in enumerate(zip(args, copies)):
        if a is not None and i not in (5, 6):                  # running stats update in train mode
            assert np.array_equal(a, c)


def test_batch_zero_in_eval_mode():
    wm, layers = build()
    net = Chain(wm, layers).eval()
    y = net(np.zeros((0, 4, 5, 5)))
    assert y.shape == (0, 2, 3, 3)
    assert net.backward(y).shape == (0, 4, 5, 5) and not wm.grads['weights.0'].any()


def test_count_treats_warehouses_once():
    wm, layers = build(randomize=False)
    own = sum(layer.num_params() for layer in layers)
    assert all(not any('weights' in k for k in layer.params) for layer in layers)
    params, macs = count(Chain(wm, layers), (1, 4, 8, 8))
    assert params == own + wm.num_params()
    assert kw.kw_count(Chain(wm, layers), wm, (1, 4, 8, 8)) == (params, macs)
    assert kw.kw_count(Chain(None, layers), wm, (1, 4, 8, 8)) == (params, macs)
    layer = layers[0]                        # 4 -> 4, 3x3, pad 1: conv + GAP + fc1 + fc2 + assembly
    conv = 4 * 8 * 8 * 4 * 9
    attention = 4 * 64 + 16 * 4 + 16 * layer.params['attention.fc2.weight'].shape[0]
    assert layer.macs((2, 4, 8, 8)) == (2 * (conv + attention + wm.params['weights.0'].shape[0] * 4 * 36),
                                        (2, 4, 8, 8))


def test_temperature_schedule():
    assert kw.kw_temperature(0, 0, 100) == 1.0
    assert kw.kw_temperature(1, 0, 100) == pytest.approx(1 - 1 / 2000)
    assert kw.kw_temperature(500, 5, 100, temp_init_value=30.0) == pytest.approx(30 * 0.5)
    assert kw.kw_temperature(0, 25, 100) == 0.0
    assert kw.kw_temperature(0, 0, 0, temp_init_value=2.0, temp_end=0.5) == 0.5
    with pytest.raises(ValueError, match='epoch'):
        kw.kw_temperature(0, -1, 10)


# -- errors -----------------------------------------------------------------------------------------------
def test_lifecycle_errors():
    wm = kw.WarehouseManager()
    layer = wm.reserve(4, 4, 3)
    with pytest.raises(RuntimeError, match='allocate'):
        layer(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(RuntimeError, match='store'):
        wm.allocate([layer])
    wm.store()
    with pytest.raises(RuntimeError, match='reserve'):
        wm.reserve(4, 4, 3)
    with pytest.raises(ValueError, match='reserved'):
        wm.allocate([])
    other = kw.WarehouseManager().reserve(4, 4, 3)
    with pytest.raises(ValueError, match='not reserved'):
        wm.allocate([layer, other])
    wm.allocate([layer])
    with pytest.raises(RuntimeError, match='already'):
        wm.allocate([layer])
    with pytest.raises(RuntimeError, match='already'):
        wm.store()
    with pytest.raises(RuntimeError, match='at least one'):
        kw.WarehouseManager().store()


def test_allocate_uneven_ratio_raises():
    wm = kw.WarehouseManager(cell_num_ratio=0.5)   # m = 9: each layer owns 5 cells, M = int(9) = 9
    layers = [wm.reserve(4, 4, 3), wm.reserve(4, 4, 3)]
    wm.store()
    with pytest.raises(ValueError, match=r'has 9 cells .* \[5, 10\)'):
        wm.allocate(layers)
    wm = kw.WarehouseManager(cell_num_ratio=1.5)
    layers = [wm.reserve(4, 4, 3)]
    wm.store()
    with pytest.raises(ValueError, match='own 9'):
        wm.allocate(layers)


def test_argument_errors():
    with pytest.raises(TypeError, match='nonlocal_basis_ratio must be a scalar'):
        kw.WarehouseManager(nonlocal_basis_ratio=(0.5,))
    with pytest.raises(TypeError, match='sharing_range'):
        kw.WarehouseManager(sharing_range=(1, 2))
    with pytest.raises(ValueError, match='groups=3'):
        kw.WarehouseManager().reserve(4, 4, 3, groups=3)
    with pytest.raises(TypeError, match='kernel_size'):
        kw.WarehouseManager().reserve(4, 4, 'a')
    with pytest.raises(TypeError, match='warehouse_name'):
        kw.WarehouseManager().reserve(4, 4, 3, warehouse_name=3)
    wm = kw.WarehouseManager(reduction=(0.1, 0.2, 0.3))
    wm.reserve(4, 4, 3, warehouse_name='a')
    wm.reserve(4, 4, 3, warehouse_name='b')
    with pytest.raises(ValueError, match=r'reduction must be a scalar or a sequence of length 1 or 2'):
        wm.store()
    wm = kw.WarehouseManager(spatial_partition=False)
    wm.reserve(4, 4, 3)
    wm.reserve(4, 4, 1)
    with pytest.raises(ValueError, match='one kernel size per warehouse'):
        wm.store()
    wm = kw.WarehouseManager(cell_inplane_ratio=0.3)
    wm.reserve(10, 10, 3)
    with pytest.raises(ValueError, match='does not tile'):
        wm.store()


def test_input_errors():
    wm, (layer,) = build([(4, 4, 3, dict(padding=1))])
    with pytest.raises(ValueError, match=r'\(N, 4, H, W\)'):
        layer(np.zeros((2, 3, 5, 5)))
    with pytest.raises(TypeError, match='dtype'):
        layer(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match='Expected more than 1 value'):
        layer(np.zeros((1, 4, 5, 5)))
    for shape in ((2, 3, 5, 5), (4, 5, 5)):   # regression: wrong channels were counted silently
        with pytest.raises(ValueError, match=r'input_shape must be \(N, 4, H, W\), got'):
            count(layer, shape)
    with pytest.raises(TypeError, match='temperature'):
        layer.update_temperature('hot')
    args, hyper = op_operands('plain_1x1_cells', basis=False)
    with pytest.raises(ValueError, match='warehouse must be'):
        kw.kw_conv2d_forward(args[0], args[1][0], *args[2:], **hyper)
    with pytest.raises(ValueError, match='fc2_weight must have shape'):
        kw.kw_conv2d_forward(*args[:7], args[7][:-1], *args[8:], **hyper)
    with pytest.raises(ValueError, match='mixtures'):
        kw.kw_conv2d_forward(*args, **{**hyper, 'kernel_size': 2})
    with pytest.raises(ValueError, match='does not tile'):
        kw.kw_conv2d_forward(args[0], RNG.standard_normal((4, 2, 3, 1, 1)), *args[2:], **hyper)
    with pytest.raises(ValueError, match='bias must have shape'):
        kw.kw_conv2d_forward(*args[:-1], args[-1][:3], **hyper)
    with pytest.raises(TypeError, match='same float dtype'):
        kw.kw_conv2d_forward(args[0].astype(np.float32), *args[1:], **hyper)
    with pytest.raises(ValueError, match='temp_bias must have shape'):
        kw.kw_conv2d_forward(*args, **{**hyper, 'temp_bias': np.zeros(3)})
    with pytest.raises(ValueError, match='start_cell_idx'):
        kw.kw_conv2d_forward(*args, **{**hyper, 'start_cell_idx': -1})
    with pytest.raises(ValueError, match='go together'):
        kw.kw_attention_forward(*args[:1], *args[2:9], None, RNG.standard_normal(3), num_cells=4)
    y, cache = kw.kw_conv2d_forward(*args, **hyper)
    with pytest.raises(ValueError, match='dout must have shape'):
        kw.kw_conv2d_backward(y[:, :1], cache)


# -- torch re-creation of the official modules ---------------------------------------------------------
@pytest.fixture
def torch():
    """torch with one thread during the test (tiny tensors; several threads only contend)."""
    torch = pytest.importorskip('torch')
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(previous)


def torch_kernel_warehouse(torch):
    """A re-creation of OSVAI/KernelWarehouse ``Warehouse_Manager``/``KWConv2d``/``Attention``
    (modules/kernel_warehouse.py), written from the spec; state_dict keys as the official ones."""
    nn, F = torch.nn, torch.nn.functional

    class Attention(nn.Module):
        def __init__(self, in_planes, reduction, num_cells, m, cell_num_ratio, basis_ratio, start):
            super().__init__()
            hidden = max(int(in_planes * reduction), 16)
            self.P, self.m, self.start = num_cells + 1, m, start
            self.nl = int(cell_num_ratio * m)
            self.fc1 = nn.Linear(in_planes, hidden, bias=False)
            self.norm1 = nn.BatchNorm1d(hidden)
            self.basis = basis_ratio < 1
            if self.basis:
                nb = max(int((num_cells - self.nl) * basis_ratio), 16)
                self.fc2 = nn.Linear(hidden, (self.nl + nb + 1) * m, bias=False)
                self.fc3 = nn.Linear(nb, num_cells - self.nl, bias=False)
                self.basis_bias = nn.Parameter(torch.zeros(self.P * m))
            else:
                self.fc2 = nn.Linear(hidden, self.P * m)
            self.temp_bias = torch.zeros(self.P * m)          # float32, as officially
            self.temp_value = 0.0

        def forward(self, x):
            z = self.fc2(torch.relu(self.norm1(self.fc1(x.flatten(2).mean(-1)))))
            if self.basis:
                z = z.reshape(-1, z.shape[1] // self.m)
                own, other, zero = z[:, :self.nl], self.fc3(z[:, self.nl:-1]), z[:, -1:]
                z = torch.cat([other[:, :self.start], own, other[:, self.start:], zero], dim=1)
                z = z.reshape(-1, self.P * self.m) + self.basis_bias
            z = z.reshape(-1, self.P)
            z = z / (z.abs().sum(dim=1, keepdim=True) + 1e-3)
            z = (1 - self.temp_value) * z.reshape(-1, self.P * self.m) + self.temp_value * self.temp_bias
            return z.reshape(-1, self.P)[:, :-1]

    class KWConv2d(nn.Module):
        def __init__(self, cin, cout, k, stride, padding, dilation, groups, bias, wid, manager):
            super().__init__()
            self.cin, self.cout, self.groups, self.wid = cin, cout, groups, wid
            self.k = (k, k) if isinstance(k, int) else tuple(k)
            self.conv_args = (stride, padding, dilation)
            self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
            self.manager = [manager]

        def init_attention(self, cells, start, reduction, ratio, basis_ratio):
            num_cells, c_out, c_in, ckh, ckw = cells.shape
            self.go, self.gi = self.cout // c_out, self.cin // self.groups // c_in
            self.gs = self.k[0] * self.k[1] // (ckh * ckw)
            m = self.go * self.gi * self.gs
            self.attention = Attention(self.cin, reduction, num_cells, m, ratio, basis_ratio, start)
            tb, p = self.attention.temp_bias, num_cells + 1
            for idx in range(m):
                if ratio >= 1:
                    tb[idx * p + start] = 1
                    start += int(ratio)
                elif idx % int(1 / ratio) == (idx // int(1 / ratio)) % int(1 / ratio):
                    tb[idx * p + start] = 1
                    start += 1
                else:
                    tb[idx * p + p - 1] = 1
            return start

        def forward(self, x):
            n = x.shape[0]
            cells = self.manager[0].weights[self.wid]
            w = self.attention(x) @ cells.reshape(cells.shape[0], -1)
            w = w.reshape(n, self.gs, self.go, self.gi, *cells.shape[1:]).permute(0, 2, 4, 3, 5, 1, 6, 7)
            w = w.reshape(-1, self.cin // self.groups, *self.k)
            y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), w, None, *self.conv_args, groups=self.groups * n)
            y = y.reshape(n, self.cout, *y.shape[2:])
            return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)

    class Manager(nn.Module):
        def __init__(self, reduction=0.0625, cell_num_ratio=1, cell_inplane_ratio=1, cell_outplane_ratio=1,
                     sharing_range=(), nonlocal_basis_ratio=1, spatial_partition=True):
            super().__init__()
            self.opts = dict(reduction=reduction, cell_num_ratio=cell_num_ratio, inr=cell_inplane_ratio,
                             outr=cell_outplane_ratio, spatial=spatial_partition)
            self.sharing_range, self.basis_ratio, self.groups_of = sharing_range, nonlocal_basis_ratio, {}

        def reserve(self, cin, cout, k, stride=1, padding=0, dilation=1, groups=1, bias=True,
                    warehouse_name='default'):
            parts = []
            for part in warehouse_name.split('_'):
                for prefix in self.sharing_range:
                    part = prefix if part.startswith(prefix) else part
                parts.append(part)
            name = '_'.join(parts)
            kk = (k, k) if isinstance(k, int) else tuple(k)
            self.groups_of.setdefault(name, []).append((cout, cin // groups, kk))
            return KWConv2d(cin, cout, k, stride, padding, dilation, groups, bias,
                            list(self.groups_of).index(name), self)

        def store(self):
            n = len(self.groups_of)
            self.opts = {k: list(v) * (n if len(v) == 1 else 1) if isinstance(v, (tuple, list)) else [v] * n
                         for k, v in self.opts.items()}
            self.weights = nn.ParameterList()
            for i, shapes in enumerate(self.groups_of.values()):
                out_gcd, in_gcd = np.gcd.reduce([s[0] for s in shapes]), np.gcd.reduce([s[1] for s in shapes])
                c_in = max(int(in_gcd * self.opts['inr'][i]), 1)
                c_out = max(int(out_gcd * self.opts['outr'][i]), 1)
                ck = (1, 1) if self.opts['spatial'][i] else shapes[0][2]
                total = sum(int(o // c_out * ci // c_in) * (kk[0] // ck[0]) * (kk[1] // ck[1])
                            for o, ci, kk in shapes)
                self.weights.append(nn.Parameter(torch.randn(
                    max(int(total * self.opts['cell_num_ratio'][i]), 1), c_out, c_in, *ck)))

        def allocate(self, layers):
            ends = [0] * len(self.weights)
            for layer in layers:
                i = layer.wid
                ends[i] = layer.init_attention(self.weights[i], ends[i], self.opts['reduction'][i],
                                               self.opts['cell_num_ratio'][i], self.basis_ratio)
            assert ends == [w.shape[0] for w in self.weights]

    return Manager


TORCH_CONFIGS = {
    'plain': dict(),
    'ratio2': dict(cell_num_ratio=2, reduction=(0.0625, 1.0)),
    'half': dict(cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5),
    'basis': dict(nonlocal_basis_ratio=0.5),
    'whole_kernel': dict(spatial_partition=False),
}


# Temperatures exact in float32: the official temp_bias is a plain float32 tensor that .double() does not
# convert, so the official float64 module computes temp_value * temp_bias in float32 (numpyconv: float64).
@pytest.mark.parametrize('config, training, temperature', [
    ('plain', True, 0.375), ('plain', False, 1.0), ('ratio2', True, 0.0), ('ratio2', False, 0.25),
    ('half', True, 0.375), ('half', False, 0.0), ('basis', True, 0.25), ('basis', False, 0.0),
    ('whole_kernel', True, 1.0), ('whole_kernel', False, 0.375)])
def test_matches_torch_recreation(torch, config, training, temperature):
    TorchManager = torch_kernel_warehouse(torch)
    options = dict(TORCH_CONFIGS[config], sharing_range=('layer', 'conv'))
    specs = SHARED if config != 'whole_kernel' else \
        [(4, 4, 3, dict(padding=1, warehouse_name='w')),
         (4, 6, 3, dict(stride=2, groups=2, warehouse_name='w')),
         (6, 2, 3, dict(padding=(1, 2), dilation=(1, 2), bias=True, warehouse_name='v'))]
    order = [1, 3, 0, 4, 2] if specs is SHARED else [2, 0, 1]
    wm, layers = build(specs, order=order, **options)
    net = Chain(wm, layers).train(training)
    tm = TorchManager(**options)
    tlayers = [tm.reserve(i, o, k, **kwargs) for i, o, k, kwargs in specs]
    tm.store()
    tm.allocate([tlayers[i] for i in order])
    tm.double()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in wm.state_dict().items()})
    for layer, tlayer in zip(layers, tlayers):
        tlayer.double().train(training)
        tlayer.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
        np.testing.assert_array_equal(layer.temp_bias, tlayer.attention.temp_bias.numpy())
        layer.update_temperature(temperature)
        tlayer.attention.temp_value = temperature
    x = RNG.standard_normal((3, 4, 6, 6))
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = xt
    for tlayer in tlayers:
        yt = tlayer(yt)
    y = net(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = RNG.standard_normal(y.shape)
    net.zero_grad()
    dx = net.backward(g)
    (yt * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for i, w in enumerate(tm.weights):
        np.testing.assert_allclose(wm.grads[f'weights.{i}'], w.grad.numpy(), rtol=1e-10, atol=1e-12)
    for layer, tlayer in zip(layers, tlayers):
        tgrads = {k: p.grad for k, p in tlayer.named_parameters()}
        for key, grad in layer.grads.items():
            expected = tgrads[key].numpy() if tgrads[key] is not None else np.zeros_like(grad)
            np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12, err_msg=key)
        tstate = tlayer.state_dict()
        for key, value in layer.state_dict().items():
            np.testing.assert_allclose(value, tstate[key].numpy(), rtol=1e-12, err_msg=key)


def test_caf_gradient_at_zero_matches_torch(torch):
    z = RNG.standard_normal((2, 4))
    z[0, 1] = 0.0
    zt = torch.from_numpy(z.copy()).requires_grad_(True)
    g = RNG.standard_normal(z.shape)
    (zt / (zt.abs().sum(1, keepdim=True) + 1e-3) * torch.from_numpy(g)).sum().backward()
    _, cache = kw.kw_caf_forward(z)
    expected = zt.grad.numpy()
    np.testing.assert_allclose(kw.kw_caf_backward(g, cache)[0], expected, rtol=1e-12,
                               atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize('holder', ['layer', 'chain without manager', 'chain with manager'])
def test_gradcheck_layer_checks_the_warehouse_held_by_the_manager(holder):
    # the warehouse lives in the manager; gradcheck_layer on the layer alone (or on a network that
    # does not hold the manager) must still check its gradient, once, and fail when it is dropped
    wm, (layer,) = build([(4, 4, 3, dict(padding=1))])
    target = {'layer': layer, 'chain without manager': Chain(None, [layer]),
              'chain with manager': Chain(wm, [layer])}[holder]
    report = nc.gradcheck_layer(target, RNG.standard_normal((2, 4, 5, 5)), mode='random', n_directions=3)
    names = [r.name for r in report.results]
    assert [n for n in names if n.endswith('weights.0')] in (['warehouse_manager.weights.0'],
                                                              ['l0.warehouse_manager.weights.0']), names
    wm.grads['weights.0'][...] = 7.0                                     # restored afterwards
    broken = type(layer).backward

    def backward_dropping_the_warehouse(self, dout):
        saved = self._manager.grads['weights.0'].copy()
        dx = broken(self, dout)
        self._manager.grads['weights.0'][...] = saved
        return dx
    type(layer).backward = backward_dropping_the_warehouse
    try:
        with pytest.raises(nc.GradcheckError, match='weights.0'):
            nc.gradcheck_layer(target, RNG.standard_normal((2, 4, 5, 5)), mode='random', n_directions=3)
    finally:
        type(layer).backward = broken
    assert (wm.grads['weights.0'] == 7.0).all()
