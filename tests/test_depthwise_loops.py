"""The depthwise Numba loops of numpyconv.conv (docs/derivations/conv.md eq. 8-10, 8a): the plain-loop
reference on random geometries (both the one-run-per-offset path and the row-by-row path), float64
gradients, thread-count independence, adjointness, PyTorch, and the taps helpers they use."""
import numba
import numpy as np
import pytest

import numpyconv as nc
from numpyconv import conv, taps
from numpyconv import reference as ref
from numpyconv._checks import Cache
from numpyconv.im2col import Geometry, conv_output_size, loop_geo

RNG = np.random.default_rng(8)


def geometry(hw, kernel, stride=(1, 1), dilation=(1, 1), pads=(0, 0, 0, 0)):
    """A :class:`Geometry` with any ``pads = (top, bottom, left, right)``."""
    out = tuple(conv_output_size(hw[a], kernel[a], stride[a], pads[2 * a], pads[2 * a + 1], dilation[a])
                for a in (0, 1))
    return Geometry(tuple(kernel), tuple(stride), tuple(dilation), tuple(pads), out, tuple(hw))


def reference(x, weight, geo, dy):
    """``(y, dx, dweight)`` by the plain loops on ``x`` zero-padded by ``geo.pads`` (a shared weight)."""
    top, bottom, left, right = geo.pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    args = (None, geo.stride, 0, geo.dilation)
    dxp, dw, _ = ref.depthwise_conv2d_backward(dy, xp, weight, *args)
    dx = dxp[:, :, top:top + x.shape[2], left:left + x.shape[3]]
    return ref.depthwise_conv2d(xp, weight, *args), dx, dw


def reference_per_sample(x, weight, geo, dy):
    """:func:`reference` sample by sample for ``weight (N, C*m, 1, kh, kw)``."""
    parts = [reference(x[i:i + 1], weight[i], geo, dy[i:i + 1]) for i in range(x.shape[0])]
    return tuple(np.concatenate([p[k] for p in parts]) if k < 2 else np.stack([p[2] for p in parts])
                 for k in range(3))


def runs(geo):
    return bool(taps.runs_fit(loop_geo(geo), geo.in_hw[1]))


# (hw, kernel, stride, dilation, pads): the first ones take one run per offset, the rest row by row
CASES = [
    ((7, 7), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),        # 'same', MobileNet's stride 1
    ((8, 8), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),        # MobileNet's stride 2, even size
    ((7, 9), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),        # odd sizes: phases of unequal length
    ((6, 7), (5, 3), (2, 1), (2, 1), (3, 5, 1, 1)),        # asymmetric padding
    ((5, 9), (2, 4), (1, 3), (1, 2), (0, 2, 4, 0)),
    ((3, 4), (3, 3), (1, 1), (2, 2), (6, 6, 2, 2)),        # padding larger than the input
    ((4, 4), (3, 3), (2, 2), (1, 1), (0, 0, 0, 0)),        # 'valid', strided
    ((6, 5), (3, 2), (3, 2), (2, 1), (5, 1, 0, 3)),
    ((3, 4), (3, 3), (1, 1), (1, 1), (9, 2, 7, 8)),        # padding larger than the input
    ((5, 6), (1, 1), (2, 3), (1, 1), (0, 1, 2, 0)),
]


def test_the_cases_take_both_paths():
    paths = [runs(geometry(*case)) for case in CASES]
    assert paths[:6] == [True] * 6 and not any(paths[6:])


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('multiplier', [1, 3])
def test_matches_the_reference_loops(case, multiplier):
    geo = geometry(*case)
    x = RNG.standard_normal((2, 3) + geo.in_hw)
    w = RNG.standard_normal((3 * multiplier, 1) + geo.kernel)
    y = conv._depthwise_forward(x, w, geo)
    dy = RNG.standard_normal(y.shape)
    dx, dw = conv._depthwise_backward(dy, x, w, geo)
    for ours, theirs in zip((y, dx, dw), reference(x, w, geo, dy)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_random_geometries_match_the_reference_loops():
    """Sizes, kernels, strides, dilations, paddings, multipliers and batches drawn at random, shared
    and per-sample weights; the right padding is drawn so that about half take one run per offset."""
    rng, paths = np.random.default_rng(3), []
    for _ in range(80):
        hw, k = tuple(rng.integers(1, 9, 2)), tuple(rng.integers(1, 4, 2))
        stride, dilation = tuple(rng.integers(1, 4, 2)), tuple(rng.integers(1, 3, 2))
        pads = [int(p) for p in rng.integers(0, 5, 4)]
        if rng.random() < 0.5:          # Wo == ceil(W / sw) when it is >= 0
            reach = dilation[1] * (k[1] - 1) + 1 - hw[1] - pads[2]
            pads[3] = (-(-hw[1] // stride[1]) - 1) * stride[1] + reach
        if pads[3] < 0 or min(conv_output_size(hw[a], k[a], stride[a], pads[2 * a], pads[2 * a + 1],
                                               dilation[a]) for a in (0, 1)) < 1:
            continue
        geo = geometry(hw, k, stride, dilation, pads)
        paths.append(runs(geo))
        n, c, m = (int(v) for v in rng.integers((0, 1, 1), (3, 4, 4)))
        x = rng.standard_normal((n, c) + hw)
        w = rng.standard_normal(((n,) if rng.random() < 0.3 else ()) + (c * m, 1) + k)
        y = conv._depthwise_forward(x, w, geo)
        dy = rng.standard_normal(y.shape)
        dx, dw = conv._depthwise_backward(dy, x, w, geo)
        expected = (reference_per_sample if w.ndim == 5 else reference)(x, w, geo, dy) if n else \
            (np.zeros(y.shape), np.zeros(x.shape), np.zeros(w.shape))
        for ours, theirs in zip((y, dx, dw), expected):
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    assert sum(paths) > 10 and len(paths) - sum(paths) > 10


@pytest.mark.parametrize('case', [CASES[1], CASES[6]])
def test_per_sample_weights(case):
    geo = geometry(*case)
    x, w = RNG.standard_normal((3, 2) + geo.in_hw), RNG.standard_normal((3, 4, 1) + geo.kernel)
    y = conv._depthwise_forward(x, w, geo)
    dy = RNG.standard_normal(y.shape)
    dx, dw = conv._depthwise_backward(dy, x, w, geo)
    for ours, theirs in zip((y, dx, dw), reference_per_sample(x, w, geo, dy)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('per_sample', [False, True])
def test_float32_keeps_its_dtype_and_matches_float64(stride, per_sample):
    x = RNG.standard_normal((2, 4, 9, 8))
    w = RNG.standard_normal(((2,) if per_sample else ()) + (8, 1, 3, 3))
    y64, cache64 = nc.conv2d_forward(x, w, stride=stride, padding=1, groups=4)
    y32, cache32 = nc.conv2d_forward(x.astype(np.float32), w.astype(np.float32), stride=stride, padding=1,
                                     groups=4)
    dy = RNG.standard_normal(y64.shape)
    grads64 = nc.conv2d_backward(dy, cache64)[:2]
    grads32 = nc.conv2d_backward(dy.astype(np.float32), cache32)[:2]
    for a32, a64 in zip((y32,) + grads32, (y64,) + grads64):
        assert a32.dtype == np.float32
        np.testing.assert_allclose(a32, a64, rtol=1e-4, atol=1e-4)


def test_batch_zero():
    for case in (CASES[1], CASES[6]):
        geo = geometry(*case)
        x = np.zeros((0, 3) + geo.in_hw, np.float32)
        w = RNG.standard_normal((6, 1) + geo.kernel).astype(np.float32)
        y = conv._depthwise_forward(x, w, geo)
        dx, dw = conv._depthwise_backward(np.zeros_like(y), x, w, geo)
        assert y.shape == (0, 6) + geo.out_hw and dx.shape == x.shape and dw.shape == w.shape
        assert y.dtype == dx.dtype == dw.dtype == np.float32 and not dw.any()


@pytest.mark.parametrize('stride', [1, 2])
def test_strided_read_only_and_broadcast_inputs_are_read_unchanged(stride):
    """A strided view, a read-only array and a broadcast array give what their contiguous copy gives,
    and are not modified."""
    base = RNG.standard_normal((2, 7, 3, 10))
    strided = base.transpose(0, 2, 3, 1)[..., ::2, 1:]           # (2, 3, 10, 6), not contiguous
    readonly = np.array(strided)
    readonly.flags.writeable = False
    broadcast = np.broadcast_to(RNG.standard_normal((1, 3, 1, 1)), (2, 3, 10, 6))
    w, before = RNG.standard_normal((6, 1, 3, 3)), base.copy()
    for x in (strided, readonly, broadcast):
        dense = np.array(x)
        y, cache = nc.depthwise_conv2d_forward(x, w, stride=stride, padding=1)
        y_dense, cache_dense = nc.depthwise_conv2d_forward(dense, w, stride=stride, padding=1)
        np.testing.assert_array_equal(y, y_dense)
        dy = np.broadcast_to(RNG.standard_normal((1, 6, 1, 1)), y.shape)      # read-only, broadcast
        for ours, theirs in zip(nc.depthwise_conv2d_backward(dy, cache),
                                nc.depthwise_conv2d_backward(np.array(dy), cache_dense)):
            np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(base, before)


@pytest.mark.parametrize('stride, padding, dilation', [(1, 1, 1), (2, 1, 1), (2, 0, 2), ((1, 3), 'valid', 1)])
def test_gradcheck(stride, padding, dilation):
    x = RNG.standard_normal((2, 2, 6, 7))
    w, b = RNG.standard_normal((4, 1, 3, 2)), RNG.standard_normal(4)
    nc.gradcheck(lambda x, w, b: nc.depthwise_conv2d_forward(x, w, b, stride, padding, dilation),
                 nc.depthwise_conv2d_backward, (x, w, b))


def test_gradcheck_per_sample_weight():
    x, w = RNG.standard_normal((2, 2, 6, 6)), RNG.standard_normal((2, 4, 1, 3, 3))
    nc.gradcheck(lambda x, w, b: nc.conv2d_forward(x, w, b, stride=2, padding=1, groups=2),
                 nc.conv2d_backward, (x, w, RNG.standard_normal((2, 4))))


@pytest.mark.parametrize('case', [CASES[0], CASES[2], CASES[7]])
def test_results_do_not_depend_on_the_thread_count(monkeypatch, case):
    monkeypatch.setattr(nc._parallel, 'PARALLEL_MIN_WORK', 0)        # the thread pool even when tiny
    geo = geometry(*case)
    x = RNG.standard_normal((3, 5) + geo.in_hw).astype(np.float32)
    w = RNG.standard_normal((10, 1) + geo.kernel).astype(np.float32)
    dy = RNG.standard_normal((3, 10) + geo.out_hw).astype(np.float32)
    threads, results = numba.get_num_threads(), []
    try:
        for count in sorted({1, 2, threads} & set(range(1, numba.config.NUMBA_NUM_THREADS + 1))):
            numba.set_num_threads(count)
            results.append((conv._depthwise_forward(x, w, geo),) + conv._depthwise_backward(dy, x, w, geo))
    finally:
        numba.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('case', [CASES[1], CASES[3], CASES[8]])
def test_adjointness(case):
    """Linear in ``x`` and in the weight: ``<y(x), dy> = <x, dx>`` and ``<y(w), dy> = <w, dw>``."""
    geo = geometry(*case)
    x, w = RNG.standard_normal((2, 3) + geo.in_hw), RNG.standard_normal((6, 1) + geo.kernel)
    y = conv._depthwise_forward(x, w, geo)
    dy = RNG.standard_normal(y.shape)
    dx, dw = conv._depthwise_backward(dy, x, w, geo)
    assert np.vdot(y, dy) == pytest.approx(np.vdot(x, dx), rel=1e-12)
    assert np.vdot(y, dy) == pytest.approx(np.vdot(w, dw), rel=1e-12)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('case', [CASES[0], CASES[2], CASES[3], CASES[7]])
def test_matches_torch(dtype, case):
    torch = pytest.importorskip('torch')
    geo = geometry(*case)
    x = RNG.standard_normal((2, 4) + geo.in_hw).astype(dtype)
    w = RNG.standard_normal((8, 1) + geo.kernel).astype(dtype)
    y = conv._depthwise_forward(x, w, geo)
    dy = RNG.standard_normal(y.shape).astype(dtype)
    dx, dw = conv._depthwise_backward(dy, x, w, geo)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    top, bottom, left, right = geo.pads
    ty = torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (left, right, top, bottom)), tw,
                                    stride=geo.stride, dilation=geo.dilation, groups=4)
    ty.backward(torch.tensor(dy))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for ours, theirs in ((y, ty), (dx, tx.grad), (dw, tw.grad)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=tol, atol=tol)


# -- the taps helpers ----------------------------------------------------------------------------
@pytest.mark.parametrize('height, width, sh, sw', [(7, 9, 2, 2), (6, 5, 3, 1), (5, 8, 1, 3), (4, 4, 1, 1)])
def test_split_and_merge_phases(height, width, sh, sw):
    x = RNG.standard_normal((height, width))
    phases = np.full((sh * sw, -(-height // sh), -(-width // sw)), np.nan)
    taps.split_phases(x, sh, sw, phases)
    for a in range(sh):
        for b in range(sw):
            part = x[a::sh, b::sw]
            np.testing.assert_array_equal(phases[a * sw + b, :part.shape[0], :part.shape[1]], part)
    back = np.zeros_like(x)
    taps.merge_phases(phases, sh, sw, back)
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize('lo, hi', [(1, 5), (0, 4), (2, 6), (0, 6), (3, 3)])
def test_copy_outside(lo, hi):
    src, dst = RNG.standard_normal(4 * 6), np.zeros(4 * 6)
    taps.copy_outside(src, dst, lo, hi, 6)
    outside = (np.arange(24) % 6 < lo) | (np.arange(24) % 6 >= hi)
    np.testing.assert_array_equal(dst, np.where(outside, src, 0))


@pytest.mark.parametrize('size', [1, 2, 7, 64, 1001])
def test_folded_sum(size):
    a = RNG.standard_normal(size)
    assert taps.folded_sum(a.copy()) == pytest.approx(a.sum(), rel=1e-12, abs=1e-12)


# -- channels last (DepthwiseConv2d.forward_channels_last, DCNv3 / DCNv4 with channels_last) ----------
CHANNELS_LAST_CASES = [  # (kernel_size, stride, padding, dilation, bias)
    (3, 1, 1, 1, True), (3, 2, 1, 1, False), ((2, 3), (1, 2), (0, 1), 1, True), (5, 1, 2, 2, True),
    (3, 1, 0, 1, False), (1, 1, 0, 1, True), (3, 3, (2, 0), (1, 2), True)]


def channels_last_pair(case, dtype=np.float64, channels=6, hw=(7, 9), batch=2):
    kernel, stride, padding, dilation, bias = case
    layer = nc.DepthwiseConv2d(channels, kernel, stride, padding, dilation, bias=bias, dtype=dtype, rng=3)
    x = RNG.standard_normal((batch,) + hw + (channels,)).astype(dtype)            # (N, H, W, C)
    return layer, x


@pytest.mark.parametrize('case', CHANNELS_LAST_CASES)
def test_channels_last_equals_the_nchw_convolution(case):
    layer, x = channels_last_pair(case)
    y, cache = layer.forward_channels_last(x)
    expected = layer.forward(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, expected.transpose(0, 2, 3, 1), rtol=1e-13, atol=1e-13)
    dy = RNG.standard_normal(y.shape)
    layer.zero_grad()
    dx_nchw = layer.backward(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
    expected_grads = {k: g.copy() for k, g in layer.grads.items()}
    layer.zero_grad()
    dx = layer.backward_channels_last(dy, cache)
    np.testing.assert_allclose(dx, dx_nchw.transpose(0, 2, 3, 1), rtol=1e-13, atol=1e-13)
    for k, g in layer.grads.items():
        np.testing.assert_allclose(g, expected_grads[k], rtol=1e-13, atol=1e-13)
    layer.backward_channels_last(dy, cache)                                   # accumulates
    for k, g in layer.grads.items():
        np.testing.assert_allclose(g, 2 * expected_grads[k], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize('case', CHANNELS_LAST_CASES[:4])
def test_channels_last_gradcheck(case):
    layer, x = channels_last_pair(case, channels=3, hw=(5, 6))
    weight, bias = layer.params['weight'], layer.params.get('bias')

    def forward(x, w, b):
        weight[...] = w
        if bias is not None:
            bias[...] = b
        return layer.forward_channels_last(x)

    def backward(dout, cache):
        layer.zero_grad()
        dx = layer.backward_channels_last(dout, cache)
        grads = layer.grads
        return dx, grads['weight'].copy(), grads['bias'].copy() if bias is not None else None

    b = RNG.standard_normal(3) if bias is not None else None
    nc.gradcheck(forward, backward, (x, RNG.standard_normal(weight.shape), b))


def test_channels_last_results_do_not_depend_on_the_thread_count(monkeypatch):
    monkeypatch.setattr(nc._parallel, 'PARALLEL_MIN_WORK', 0)
    geo = geometry((9, 8), (3, 3), pads=(1, 1, 1, 1))
    x = RNG.standard_normal((3, 9, 8, 16)).astype(np.float32)
    w = RNG.standard_normal((16, 1, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(16).astype(np.float32)
    dy = RNG.standard_normal((3, 9, 8, 16)).astype(np.float32)
    threads, results = numba.get_num_threads(), []
    try:
        for count in sorted({1, 2, threads} & set(range(1, numba.config.NUMBA_NUM_THREADS + 1))):
            numba.set_num_threads(count)
            results.append((conv._depthwise_nhwc_forward(x, w, b, geo),)
                           + conv._depthwise_nhwc_backward(dy, x, w, geo))
    finally:
        numba.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    assert all(r.dtype == np.float32 for r in results[0])


def test_channels_last_batch_zero_and_strided_input_left_unchanged():
    layer, x = channels_last_pair(CHANNELS_LAST_CASES[0], batch=0)
    y, cache = layer.forward_channels_last(x)
    assert y.shape == (0, 7, 9, 6)
    assert layer.backward_channels_last(y, cache).shape == x.shape
    layer, x = channels_last_pair(CHANNELS_LAST_CASES[1], hw=(7, 18))
    strided, before = x[:, :, ::2], x.copy()
    y, cache = layer.forward_channels_last(strided)
    np.testing.assert_array_equal(y, layer.forward_channels_last(strided.copy())[0])
    layer.backward_channels_last(np.ones_like(y), cache)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize('call, error, match', [
    (lambda layer, x: layer.forward_channels_last(x[..., :4]), ValueError, r'\(N, H, W, 6\)'),
    (lambda layer, x: layer.forward_channels_last(x.astype(np.float32)), TypeError, 'float32'),
    (lambda layer, x: layer.forward_channels_last(x[0]), ValueError, r'\(7, 9, 6\)'),
    (lambda layer, x: layer.backward_channels_last(x, Cache('conv2d')), TypeError, 'depthwise_nhwc'),
    (lambda layer, x: layer.backward_channels_last(x[:, :3], layer.forward_channels_last(x)[1]),
     ValueError, 'dout'),
])
def test_channels_last_misuse_is_named(call, error, match):
    layer, x = channels_last_pair(CHANNELS_LAST_CASES[0])
    with pytest.raises(error, match=match):
        call(layer, x)


def test_channels_last_needs_depth_multiplier_one():
    layer = nc.DepthwiseConv2d(3, 3, padding=1, depth_multiplier=2, dtype=np.float64)
    with pytest.raises(ValueError, match='depth multiplier 1'):
        layer.forward_channels_last(RNG.standard_normal((1, 4, 4, 3)))


@pytest.mark.parametrize('layer_name', ['DCNv3', 'DCNv4'])
def test_dcn_layers_channels_last_equal_nchw_with_the_channels_last_convolution(layer_name):
    kwargs = dict(channels=16, group=2, dtype=np.float64)
    if layer_name == 'DCNv4':
        kwargs['dw_kernel_size'] = 3
    nchw = getattr(nc, layer_name)(**kwargs, rng=5)
    nhwc = getattr(nc, layer_name)(**kwargs, channels_last=True, rng=5)
    for layer in (nchw, nhwc):                              # offsets that move the samples
        for key, p in layer.params.items():
            p[...] = np.random.default_rng(abs(hash(key)) % 2**32).standard_normal(p.shape) * 0.3
    x = RNG.standard_normal((2, 16, 5, 6))
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y, y_last = nchw.forward(x), nhwc.forward(x_last)
    np.testing.assert_allclose(y_last, y.transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    dy = RNG.standard_normal(y.shape)
    nchw.zero_grad()
    nhwc.zero_grad()
    dx = nchw.backward(dy)
    dx_last = nhwc.backward(np.ascontiguousarray(dy.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(dx_last, dx.transpose(0, 2, 3, 1), rtol=1e-11, atol=1e-12)
    for key, g in nchw.grads.items():
        np.testing.assert_allclose(nhwc.grads[key], g, rtol=1e-11, atol=1e-12, err_msg=key)


@pytest.mark.parametrize('layer_name', ['DCNv3', 'DCNv4'])
def test_dcn_channels_last_offset_features_backward_gradcheck(layer_name):
    # DCNv3._offset_features_backward / DCNv4's channels-last branch, through the whole layer
    kwargs = dict(channels=8, group=2, channels_last=True, dtype=np.float64, rng=2)
    if layer_name == 'DCNv4':
        kwargs['dw_kernel_size'] = 3
    layer = getattr(nc, layer_name)(**kwargs)
    for key, p in layer.params.items():
        p[...] = np.random.default_rng(len(key)).standard_normal(p.shape) * 0.3
    report = nc.gradcheck_layer(layer, RNG.standard_normal((2, 4, 5, 8)))
    assert report.ok
