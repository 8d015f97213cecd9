"""``numpyconv explain``: every figure is written and not blank, and every fact it claims is checked
against the computation it shows (computed again here, independently where possible: plain loops,
numpyconv.reference, the definitions in docs/derivations).

The facts (numpyconv.explain.data) need no matplotlib; the figure tests run with the Agg backend.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import numpyconv as nc
from numpyconv import reference
from numpyconv.explain import TECHNIQUES, data

SEED = 0


@pytest.fixture(scope='module')
def facts():
    """The facts of every technique for SEED, computed once."""
    return {t: data.TECHNIQUES[t](SEED) for t in TECHNIQUES}


@pytest.fixture(scope='module')
def figures(facts):
    """``technique -> (fig, facts)``: every figure drawn from the facts above."""
    pytest.importorskip('matplotlib')
    from numpyconv.explain import figures as draw, style
    with style.rc_context():
        return {t: draw.DRAW[t](facts[t]) for t in TECHNIQUES}


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    """Every technique drawn into one folder with ``numpyconv.explain.draw`` (conv2d with its GIF)."""
    pytest.importorskip('matplotlib')
    from numpyconv.explain import draw
    out = tmp_path_factory.mktemp('explain')
    return out, {t: draw(t, out, seed=SEED, gif=t == 'conv2d') for t in TECHNIQUES}


def drawn(fig, gid):
    """The artists of ``fig`` carrying ``gid``."""
    found = fig.findobj(lambda a: a.get_gid() == gid)
    assert found, f"nothing drawn with gid {gid!r}"
    return found


def image_of(fig, gid):
    (artist,) = drawn(fig, gid)
    return np.ma.filled(artist.get_array().astype(float), np.nan)


def bar_heights(fig, prefix, count, horizontal=False):
    return np.array([drawn(fig, f'{prefix}{k}')[0].get_width() if horizontal else
                     drawn(fig, f'{prefix}{k}')[0].get_height() for k in range(count)])


def close(a, b, tol=1e-12):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


GRID_TOL = 1e-5     # DCNv3/DCNv4 round their grid to float32 as dcnv3_core_pytorch (< 1e-6 pixel)


# -- files ------------------------------------------------------------------------------------------------
def test_every_figure_is_written_800_pixels_wide_and_not_blank(written):
    from PIL import Image
    out, paths = written
    for technique in TECHNIQUES:
        png, txt = os.path.join(out, f'{technique}.png'), os.path.join(out, f'{technique}.txt')
        assert paths[technique][:2] == [png, txt]
        with Image.open(png) as im:
            pixels = np.asarray(im.convert('L'), dtype=float)
        assert pixels.shape[1] == 800 and 350 <= pixels.shape[0] <= 1000, (technique, pixels.shape)
        assert pixels.std() > 20, technique                                  # not blank
        assert (pixels < 128).mean() > 0.01, technique                        # ink on the page
        caption = open(txt, encoding='utf-8').read()
        assert len(caption) > 200 and 'numpyconv.count' in caption, technique


def test_conv2d_gif_slides_over_every_output_position(written, facts):
    from PIL import Image
    out, paths = written
    gif = os.path.join(out, 'conv2d.gif')
    assert paths['conv2d'][2] == gif
    ho, wo = facts['conv2d']['y'].shape
    with Image.open(gif) as im:
        assert im.n_frames == ho * wo and im.size[0] == 800
        frames = []
        for k in range(im.n_frames):
            im.seek(k)
            frames.append(np.asarray(im.convert('RGB')))
    assert all(not np.array_equal(frames[k], frames[k + 1]) for k in range(len(frames) - 1))
    frames_facts = data.conv2d_frames(facts['conv2d'])
    assert [f[0] for f in frames_facts] == [(i, j) for i in range(ho) for j in range(wo)]
    for (i, j), column, window in frames_facts:
        assert column == i * wo + j
        assert window == [(i * 2 + 2 * p, j * 2 + 2 * q) for p in range(3) for q in range(3)]


def test_drawing_is_deterministic_for_a_seed(tmp_path):
    pytest.importorskip('matplotlib')
    from numpyconv.explain import draw
    for technique in ('separable', 'deformable'):
        a = draw(technique, tmp_path / 'a', seed=3)
        b = draw(technique, tmp_path / 'b', seed=3)
        for pa, pb in zip(a, b):
            assert open(pa, 'rb').read() == open(pb, 'rb').read(), pa
    other = draw('separable', tmp_path / 'c', seed=4)
    assert open(other[0], 'rb').read() != open(tmp_path / 'a' / 'separable.png', 'rb').read()


def test_facts_depend_on_the_seed_only():
    a, b, c = data.conv2d(5), data.conv2d(5), data.conv2d(6)
    for key in ('x', 'weight', 'matrix', 'y'):
        np.testing.assert_array_equal(a[key], b[key])
    assert not all(np.array_equal(a[k], c[k]) for k in ('x', 'weight'))


def test_draw_rejects_an_unknown_technique_or_seed(tmp_path):
    from numpyconv.explain import draw
    with pytest.raises(ValueError, match="technique must be one of conv2d, .*got 'conv3d'"):
        draw('conv3d', tmp_path)
    with pytest.raises(ValueError, match='seed must be a non-negative int'):
        draw('conv2d', tmp_path, seed=-1)


def test_figures_use_only_the_three_role_colour_maps(figures):
    from matplotlib.image import AxesImage
    for technique, fig in figures.items():
        for image in fig.findobj(AxesImage):
            assert image.get_cmap().name.split('_')[0] in ('input', 'weights', 'output'), technique


# -- standard convolution ---------------------------------------------------------------------------------
def test_conv2d_column_is_the_window_and_its_dot_product_is_the_output(facts, figures):
    f, fig = facts['conv2d'], figures['conv2d']
    s, p, d = f['stride'], f['padding'], f['dilation']
    x = f['x']
    xp = np.zeros((x.shape[0] + 2 * p, x.shape[1] + 2 * p))
    xp[p:-p, p:-p] = x
    i, j = f['position']
    window = np.array([xp[i * s + a * d, j * s + b * d] for a in range(3) for b in range(3)])
    np.testing.assert_array_equal(f['column'], window)                     # highlighted column = window
    np.testing.assert_array_equal(f['matrix'][:, f['column_index']], window)
    y = reference.conv2d(x[None, None], f['weight'][None, None], stride=s, padding=p, dilation=d)[0, 0]
    close(f['y'], y)
    assert f['value'] == pytest.approx(y[i, j]) == pytest.approx(f['weight'].ravel() @ window)
    ho, wo = y.shape
    for k in range(ho * wo):                                               # every column is its window
        a, b = divmod(k, wo)
        np.testing.assert_array_equal(
            f['matrix'][:, k], [xp[a * s + u * d, b * s + v * d] for u in range(3) for v in range(3)])
    np.testing.assert_array_equal(image_of(fig, 'padded'), xp)
    np.testing.assert_array_equal(image_of(fig, 'im2col'), f['matrix'])
    np.testing.assert_array_equal(image_of(fig, 'output'), f['y'])
    np.testing.assert_array_equal(image_of(fig, 'dot_column')[0], window)
    np.testing.assert_array_equal(image_of(fig, 'dot_product')[0], f['weight'].ravel() * window)
    (column_box,) = drawn(fig, 'column_highlight')
    assert column_box.get_x() == f['column_index'] - 0.5 and column_box.get_height() == 9
    (taps,) = drawn(fig, 'window')
    np.testing.assert_array_equal(taps.get_offsets(), [(c, r) for r, c in f['window']])
    assert f"= {f['value']:g} = y[{i}, {j}]" in drawn(fig, 'dot_sum')[0].get_text()


def test_conv2d_backward_shows_conv2d_backward(facts, figures):
    f, fig = facts['conv2d_backward'], figures['conv2d_backward']
    geometry = dict(stride=f['stride'], padding=f['padding'], dilation=f['dilation'])
    x, w, dout = f['x'][None, None], f['weight'][None, None], f['dout'][None, None]
    dx, dw, _ = reference.conv2d_backward(dout, x, w, **geometry)
    close(f['dx'], dx[0, 0])
    close(f['dweight'], dw[0, 0])
    _, cache = nc.conv2d_forward(x, w, None, **geometry)
    dx_fast, dw_fast, _ = nc.conv2d_backward(dout, cache)
    np.testing.assert_array_equal(f['dx'], dx_fast[0, 0])
    np.testing.assert_array_equal(f['dweight'], dw_fast[0, 0])
    (p, q), (i, j), s, d, pad = f['tap'], f['position'], f['stride'], f['dilation'], f['padding']
    assert f['tap_value'] == pytest.approx(f['dweight'][p, q])             # dW[p, q]: the correlation
    ho, wo = f['dout'].shape
    close(f['tap_samples'],
          [[f['padded'][p * d + a * s, q * d + b * s] for b in range(wo)] for a in range(ho)])
    one = np.zeros_like(f['padded'])
    for a in range(3):
        for b in range(3):
            one[i * s + a * d, j * s + b * d] = f['dout'][i, j] * f['weight'][a, b]
    close(f['scatter_one'], one)
    close(f['scatter_all'][pad:-pad, pad:-pad], f['dx'])                   # the scatters, cropped, are dx
    for gid in ('dout', 'dweight', 'dx', 'scatter_one', 'scatter_all', 'padded'):
        np.testing.assert_array_equal(image_of(fig, gid), f[gid])
    (grid,) = drawn(fig, 'tap_grid')
    read = sorted((q * d + b * s, p * d + a * s) for a in range(ho) for b in range(wo))
    np.testing.assert_array_equal(sorted(map(tuple, grid.get_offsets())), read)


# -- depthwise, pointwise, separable ---------------------------------------------------------------------
def test_depthwise_channels_never_mix(facts, figures):
    f, fig = facts['depthwise'], figures['depthwise']
    x, w = f['x'][None], f['weight'][:, None]
    close(f['y'], reference.depthwise_conv2d(x, w, padding=1)[0])
    for c in range(x.shape[1]):
        only = reference.conv2d(x[:, c:c + 1], w[c:c + 1], padding=1)[0, 0]
        close(f['y'][c], only)
        close(f['alone'][c], only)
        np.testing.assert_array_equal(image_of(fig, f'filter{c}'), f['weight'][c])
        np.testing.assert_array_equal(image_of(fig, f'y{c}'), f['y'][c])
    counts = f['counts']
    np.testing.assert_array_equal(bar_heights(fig, 'bars_parameters_', 2, horizontal=True),
                                  [counts['DepthwiseConv2d'][0], counts['Conv2d'][0]])
    np.testing.assert_array_equal(bar_heights(fig, 'bars_multiply-adds_', 2, horizontal=True),
                                  [counts['DepthwiseConv2d'][1], counts['Conv2d'][1]])


def test_pointwise_is_one_matrix_at_every_pixel(facts, figures):
    f, fig = facts['pointwise'], figures['pointwise']
    close(f['y'], np.einsum('oc,chw->ohw', f['matrix'], f['x']))
    i, j = f['pixel']
    np.testing.assert_array_equal(f['vector'], f['x'][:, i, j])
    close(f['product'], f['y'][:, i, j])
    close(f['y'], reference.pointwise_conv2d(f['x'][None], f['matrix'][:, :, None, None])[0])
    for gid in ('matrix', 'product'):
        np.testing.assert_array_equal(image_of(fig, gid).ravel(), f[gid].ravel())
    np.testing.assert_array_equal(image_of(fig, 'vector')[:, 0], f['vector'])


def test_separable_is_depthwise_then_pointwise(facts, figures):
    f, fig = facts['separable'], figures['separable']
    dw = f['dw_weight'][:, None]
    pw = f['pw_matrix'][:, :, None, None]
    close(f['middle'], reference.depthwise_conv2d(f['x'][None], dw, padding=1)[0])
    close(f['y'], reference.separable_conv2d(f['x'][None], dw, pw, padding=1)[0])
    counts = f['counts']
    names = list(counts)
    percent = [100 * counts[names[0]][1] / counts[names[1]][1], 100,
               100 * counts[names[2]][1] / counts[names[3]][1], 100]
    close(bar_heights(fig, 'bars_multiply-adds_', 4, horizontal=True), percent)
    for c in range(3):
        np.testing.assert_array_equal(image_of(fig, f'dw_filter{c}'), f['dw_weight'][c])


# -- octave ------------------------------------------------------------------------------------------------
def test_octave_paths_add_up_to_the_layer_outputs(facts, figures):
    f, fig = facts['octave'], figures['octave']
    paths, w = f['paths'], f['weights']
    close(f['y_h'], paths['h2h'] + paths['l2h'])
    close(f['y_l'], paths['h2l'] + paths['l2l'])
    weights = [w[k][None, None] for k in ('h2h', 'h2l', 'l2h', 'l2l')]
    y_h, y_l = reference.octave_conv2d(f['x_h'][None, None], f['x_l'][None, None], *weights, padding=1)
    close(f['y_h'], y_h[0, 0])
    close(f['y_l'], y_l[0, 0])
    close(paths['l2l'], reference.conv2d(f['x_l'][None, None], weights[3], padding=1)[0, 0])
    assert f['x_h'].shape == (16, 16) and f['x_l'].shape == (8, 8)
    for name in ('h2h', 'h2l', 'l2h', 'l2l'):
        np.testing.assert_array_equal(image_of(fig, name), paths[name])
    (macs,) = drawn(fig, 'macs')
    assert f"{f['counts']['OctaveConv2d'][1]:,}" in macs.get_text()


# -- attention over kernels ---------------------------------------------------------------------------
def _gap_features(x):
    return x.mean(axis=(2, 3))


def test_dynamic_kernels_are_the_attention_weighted_sums(facts, figures):
    f, fig = facts['dynamic'], figures['dynamic']
    x = f['x']
    for name in ('dynamic', 'condconv'):
        part = f[name]
        bank, attention, kernels = part['bank'], part['attention'], part['kernels']
        close(kernels, np.einsum('nk,koc...->noc...', attention, bank))   # the aggregated kernel
        bias = attention @ part['biases']
        for n in range(2):                                                # and it convolves that input
            close(part['y'][n], reference.conv2d(x[n:n + 1], kernels[n], bias[n], padding=1)[0])
        close(bar_heights(fig, f'{name}_attention_A', 4), attention[0])
        close(bar_heights(fig, f'{name}_attention_B', 4), attention[1])
        from numpyconv.explain.figures import mosaic
        for n, tag in enumerate('AB'):
            np.testing.assert_array_equal(image_of(fig, f'{name}_kernel_{tag}'), mosaic(kernels[n, 0][None]))
    close(f['dynamic']['attention'].sum(axis=1), 1.0)                    # softmax over the K kernels


def test_dynamic_attention_and_output_from_the_definitions(facts):
    """DY-CNN: softmax(fc2(relu(fc1(GAP x))) / T); CondConv: sigmoid(fc(GAP x));
    y = conv(x; kernel) + bias."""
    f = facts['dynamic']
    x = f['x']
    dy = nc.DynamicConv2d(3, 1, 3, padding=1, K=4, dtype=np.float64, rng=data._rng(SEED, 11))
    dy.temperature = 1
    p = dy.params
    hidden = np.maximum(_gap_features(x) @ p['attention.fc1.weight'][:, :, 0, 0].T, 0)
    logits = hidden @ p['attention.fc2.weight'][:, :, 0, 0].T + p['attention.fc2.bias']
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    close(f['dynamic']['attention'], soft / soft.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(f['dynamic']['bank'], p['weight'])
    bias = f['dynamic']['attention'] @ p['bias']
    for n in range(2):
        y = reference.conv2d(x[n:n + 1], f['dynamic']['kernels'][n], bias[n], padding=1)[0]
        close(f['dynamic']['y'][n], y)
    close(dy(x), f['dynamic']['y'])                                       # the layer computes the same
    cc = nc.CondConv2d(3, 1, 3, padding=1, num_experts=4, dtype=np.float64, rng=data._rng(SEED, 12))
    q = cc.params
    routing = 1 / (1 + np.exp(-(_gap_features(x) @ q['route.fc.weight'].T + q['route.fc.bias'])))
    close(f['condconv']['attention'], routing)
    close(cc(x), f['condconv']['y'])


def test_odconv_kernel_is_assembled_by_its_four_attentions(facts, figures):
    f, fig = facts['odconv'], figures['odconv']
    att, bank = f['attentions'], f['bank']
    assembled = (att['filter'][:, None, None, None] * att['channel'][None, :, None, None]
                 * att['spatial'][None, None] * np.einsum('i,ioc...->oc...', att['kernel'], bank))
    close(f['kernel'], assembled)
    close(att['kernel'].sum(), 1.0)
    close(reference.conv2d(f['x'], f['kernel'], padding=1), f['y'])      # the kernel gives the output
    layer = nc.ODConv2d(3, 4, 3, padding=1, kernel_num=4, dtype=np.float64, rng=data._rng(SEED, 13)).eval()
    close(layer(f['x']), f['y'])
    for head in ('kernel', 'channel', 'filter'):
        close(bar_heights(fig, f'attention_{head}', len(att[head])), att[head])
    np.testing.assert_array_equal(image_of(fig, 'attention_spatial'), att['spatial'])
    from numpyconv.explain.figures import mosaic
    np.testing.assert_array_equal(image_of(fig, 'kernel'), mosaic(f['kernel']))


def test_kernel_warehouse_kernel_is_the_attention_weighted_sum_of_cells(facts, figures):
    f, fig = facts['kernel_warehouse'], figures['kernel_warehouse']
    cells, attention, rows = f['cells'], f['attention'], f['rows']
    m, count = attention.shape
    assert (m, count) == (4, 8) and cells.shape == (8, 3, 3)
    for o in range(2):
        for i in range(2):
            close(f['kernel'][o, i], np.einsum('j,jab->ab', attention[rows[o, i]], cells))
    assert np.all(np.abs(attention).sum(axis=1) < 1)                      # CAF: z / (sum |z| + 1e-3)
    close(reference.conv2d(f['x'], f['kernel'], padding=1), f['y'])
    assert sorted(f['owner'].tolist()) == [0] * 4 + [1] * 4
    np.testing.assert_array_equal(image_of(fig, 'attention'), attention)
    for k in range(count):
        np.testing.assert_array_equal(image_of(fig, f'cell{k}'), cells[k])


def test_kernel_warehouse_attention_from_the_caf_definition(facts):
    f = facts['kernel_warehouse']
    manager = nc.WarehouseManager(cell_inplane_ratio=0.5, cell_outplane_ratio=0.5, spatial_partition=False,
                                  dtype=np.float64, rng=data._rng(SEED, 14))
    layers = [manager.reserve(2, 2, 3, padding=1, bias=False, warehouse_name='stage1_conv') for _ in range(2)]
    manager.store()
    manager.allocate(layers)
    layer = layers[0].eval()
    s = {**layer.params, **layer.buffers}
    h = _gap_features(f['x']) @ s['attention.fc1.weight'].T
    h = (h - s['attention.norm1.running_mean']) / np.sqrt(s['attention.norm1.running_var'] + 1e-5)
    h = np.maximum(h * s['attention.norm1.weight'] + s['attention.norm1.bias'], 0)
    z = (h @ s['attention.fc2.weight'].T + s['attention.fc2.bias']).reshape(4, 9)
    ahat = z / (np.abs(z).sum(axis=1, keepdims=True) + 1e-3)
    close(f['attention'], ahat[:, :8])                                    # temperature 0: no blend
    close(layer(f['x']), f['y'])
    np.testing.assert_array_equal(f['cells'], manager.params['weights.0'][:, 0, 0])


# -- deformable ---------------------------------------------------------------------------------------------
def _bilinear(image, h, w):
    """Zero-padded bilinear value of ``image (H, W)`` at row ``h``, column ``w`` (deformable.md eq. 1)."""
    total = 0.0
    for a in (int(np.floor(h)), int(np.floor(h)) + 1):
        for b in (int(np.floor(w)), int(np.floor(w)) + 1):
            if 0 <= a < image.shape[0] and 0 <= b < image.shape[1]:
                total += max(0.0, 1 - abs(h - a)) * max(0.0, 1 - abs(w - b)) * image[a, b]
    return total


def _torchvision_locations(offset, stride, pad, dilation, k=3):
    """deformable.md eq. 3 by loops: ``(N, Ho, Wo, G, P, (x, y))``, P row-major."""
    n, channels, ho, wo = offset.shape
    groups = channels // (2 * k * k)
    out = np.zeros((n, ho, wo, groups, k * k, 2))
    for b, y, x, g, i, j in np.ndindex(n, ho, wo, groups, k, k):
        p = i * k + j
        out[b, y, x, g, p] = (x * stride - pad + j * dilation + offset[b, 2 * (g * k * k + p) + 1, y, x],
                              y * stride - pad + i * dilation + offset[b, 2 * (g * k * k + p), y, x])
    return out


def _dcnv3_locations(offset, stride, pad, dilation, group, scale=1.0, remove_center=False, k=3):
    """dcnv3.md eq. 1-2 by loops (points column-major there), returned row-major: ``(..., G, P, (x, y))``."""
    n, ho, wo, _ = offset.shape
    half = dilation * (k - 1) // 2
    column_major = [(i, j) for i in range(k) for j in range(k) if not (remove_center and i == j == k // 2)]
    row_major = sorted(column_major, key=lambda ij: (ij[1], ij[0]))       # (i: column, j: row)
    points = len(column_major)
    out = np.zeros((n, ho, wo, group, points, 2))
    for b, u, v, g in np.ndindex(n, ho, wo, group):
        for r, (i, j) in enumerate(row_major):
            q = g * points + column_major.index((i, j))
            h = u * stride - pad + half - scale * half + scale * (j * dilation + offset[b, u, v, 2 * q + 1])
            w = v * stride - pad + half - scale * half + scale * (i * dilation + offset[b, u, v, 2 * q])
            out[b, u, v, g, r] = (w, h)
    return out


def test_deformable_locations_follow_the_offsets_definitions(facts):
    f = facts['deformable']
    for version in ('v1', 'v2'):
        part = f[version]
        offset = part['args'][1]
        close(part['locations'], _torchvision_locations(offset, 1, 1, 1))
        close(part['grid'], _torchvision_locations(np.zeros_like(offset), 1, 1, 1))
    np.testing.assert_array_equal(f['v1']['weights'], 1.0)
    close(f['v2']['weights'][0, :, :, 0], f['v2']['kwargs']['mask'][0].transpose(1, 2, 0))
    assert 0 < f['v2']['weights'].min() and f['v2']['weights'].max() < 1
    offset3 = f['v3']['args'][1]
    close(f['v3']['locations'], _dcnv3_locations(offset3, 1, 1, 1, 2), GRID_TOL)
    close(f['v3']['weights'].sum(axis=-1), 1.0)                           # softmax over each group's points
    offset4, mask4 = nc.unpack_offset_mask(f['v4']['args'][1], 2, 9)
    close(f['v4']['locations'], _dcnv3_locations(offset4, 1, 1, 1, 2), GRID_TOL)
    assert f['v4']['weights'].min() < 0                                   # unnormalised (seed 0)
    for version in ('v3', 'v4'):                                          # the regular grid: zero offsets
        close(f[version]['grid'], _dcnv3_locations(np.zeros_like(offset3), 1, 1, 1, 2), GRID_TOL)


def test_deformable_ops_sample_the_plotted_points(facts):
    """Each op, with a one-hot weight (v1/v2) or mask (DCNv3/v4), returns the bilinear value of the
    map at the location plotted for that point."""
    f = facts['deformable']
    (i, j) = f['positions'][0]
    for version in ('v1', 'v2'):
        x, offset, weight = f[version]['args'][:3]
        for p in range(9):
            one_hot = np.zeros_like(weight)
            one_hot[0, 0].flat[p] = 1.0
            y, _ = nc.deform_conv2d_forward(x, offset, one_hot, None, 1, 1, 1, mask=None)
            px, py = f[version]['locations'][0, i, j, 0, p]
            assert y[0, 0, i, j] == pytest.approx(_bilinear(x[0, 0], py, px), abs=1e-12)
    row_major = [(a, b) for a in range(3) for b in range(3)]             # (row, column)
    for version in ('v3', 'v4'):
        args = list(f[version]['args'])
        value = args[0]
        offset, _ = (args[1], None) if version == 'v3' else nc.unpack_offset_mask(args[1], 2, 9)
        for g in range(2):
            for q_col in range(9):                                        # column-major point q_col
                mask = np.zeros(offset.shape[:3] + (18,))
                mask[..., g * 9 + q_col] = 1.0
                if version == 'v3':
                    y, _ = nc.dcnv3_forward(value, offset, mask, *args[3:])
                else:
                    y, _ = nc.dcnv4_forward(value, nc.pack_offset_mask(offset, mask, 2, args[1].shape[-1]),
                                            *args[2:])
                column, row = divmod(q_col, 3)
                px, py = f[version]['locations'][0, i, j, g, row_major.index((row, column))]
                channel = g * 2
                expected = _bilinear(value[0, :, :, channel], py, px)
                assert y[0, i, j, channel] == pytest.approx(expected, abs=1e-12)


def test_deformable_arguments_reproduce_the_layers(facts):
    f = facts['deformable']
    for version in ('v1', 'v2'):
        y, _ = nc.deform_conv2d_forward(*f[version]['args'], **f[version]['kwargs'])
        close(y, f[version]['y'])
        close(reference.deform_conv2d(*f[version]['args'], **f[version]['kwargs']), f[version]['y'])


def test_sampling_locations_match_the_ops_definitions():
    """numpyconv.sampling_locations, on arguments the figure does not use (strides, dilation, padding pairs,
    offset_scale, remove_center), against the loops of the derivations."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 7, 7))
    weight = rng.standard_normal((3, 2, 3, 3))
    offset = rng.uniform(-2, 2, (2, 2 * 2 * 9, 3, 3))
    mask = rng.uniform(0, 1, (2, 2 * 9, 3, 3))
    locations, weights = nc.sampling_locations('deform_conv2d', x, offset, weight, None, 2, 1, 2, mask=mask)
    close(locations, _torchvision_locations(offset, 2, 1, 2))
    close(weights, mask.reshape(2, 2, 9, 3, 3).transpose(0, 3, 4, 1, 2))
    xs = rng.standard_normal((1, 7, 7, 6))                                # Ho = Wo = 4
    for remove_center in (False, True):
        points = 9 - remove_center
        off = rng.uniform(-2, 2, (1, 4, 4, 3 * points * 2))
        msk = rng.uniform(0, 1, (1, 4, 4, 3 * points))
        hyper = (3, 2, 2, 2, 3, 2, 1.5, remove_center)
        loc, w = nc.sampling_locations('dcnv3', xs, off, msk, *hyper)
        close(loc, _dcnv3_locations(off, 2, 2, 2, 3, 1.5, remove_center), GRID_TOL)
        packed = nc.pack_offset_mask(off, msk, 3)
        loc4, w4 = nc.sampling_locations('dcnv4', xs, packed, *hyper)
        close(loc4, loc)
        close(w4, w)
        column_major = [(i, j) for i in range(3) for j in range(3) if not (remove_center and i == j == 1)]
        order = sorted(range(points), key=lambda p: (column_major[p][1], column_major[p][0]))   # by row
        close(w, msk.reshape(1, 4, 4, 3, points)[..., order])


def test_deformable_figure_plots_the_sampling_locations(facts, figures):
    from numpyconv.explain.figures import deformable_points, marker_area
    f, fig = facts['deformable'], figures['deformable']
    for version in ('v1', 'v2', 'v3', 'v4'):
        points, weights, grid, group = deformable_points(f, version)
        expected = np.concatenate([f[version]['locations'][0, i, j].reshape(-1, 2)
                                   for i, j in f['positions']])
        np.testing.assert_array_equal(points, expected)
        groups = f[version]['locations'].shape[3]
        for g in range(groups):
            (scatter,) = drawn(fig, f'{version}_points_group{g}')
            np.testing.assert_array_equal(scatter.get_offsets(), points[group == g])
            np.testing.assert_array_equal(scatter.get_sizes(), marker_area(version, weights[group == g]))
        (regular,) = drawn(fig, f'{version}_grid')
        np.testing.assert_array_equal(regular.get_offsets(), grid)


# -- involution ------------------------------------------------------------------------------------------
def test_involution_kernels_are_the_generated_kernels(facts, figures):
    f, fig = facts['involution'], figures['involution']
    x = f['x']
    layer = nc.Involution2d(8, 3, group_channels=8, reduction_ratio=2, dtype=np.float64,
                            rng=data._rng(SEED, 16)).eval()
    s = layer.state_dict()
    column = (slice(None), None, None)
    z = np.einsum('rc,nchw->nrhw', s['conv1.conv.weight'][:, :, 0, 0], x)      # the generation, by definition
    z = (z - s['conv1.bn.running_mean'][column]) / np.sqrt(s['conv1.bn.running_var'][column] + 1e-5)
    z = np.maximum(z * s['conv1.bn.weight'][column] + s['conv1.bn.bias'][column], 0)
    generated = (np.einsum('kr,nrhw->nkhw', s['conv2.conv.weight'][:, :, 0, 0], z)
                 + s['conv2.conv.bias'][column])
    close(f['generated'], generated)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for k, (i, j) in enumerate(f['positions']):
        close(f['kernels'][k], generated[0, :, i, j].reshape(3, 3))
        for c in range(8):                                                # the output there uses that kernel
            assert f['y'][0, c, i, j] == pytest.approx((f['kernels'][k] * xp[0, c, i:i + 3, j:j + 3]).sum())
        np.testing.assert_array_equal(image_of(fig, f'kernel{k}'), f['kernels'][k])
        np.testing.assert_array_equal(image_of(fig, f'conv_kernel{k}'), f['conv_kernel'])
    close(reference.involution(x, generated, 3), f['y'])
    (marks,) = drawn(fig, 'positions')
    np.testing.assert_array_equal(marks.get_offsets(), [(c, r) for r, c in f['positions']])


# -- counts ------------------------------------------------------------------------------------------------
def _count_layers():
    """The layers each figure counts, built here from their documented configuration."""
    f64 = dict(dtype=np.float64)
    manager = nc.WarehouseManager(cell_inplane_ratio=0.5, cell_outplane_ratio=0.5, spatial_partition=False,
                                  **f64)
    kw = [manager.reserve(2, 2, 3, padding=1, bias=False, warehouse_name='stage1_conv') for _ in range(2)]
    manager.store()
    manager.allocate(kw)
    small, shape3 = (1, 3, 16, 16), (1, 3, 16, 16)
    return {
        'conv2d': {'Conv2d': (nc.Conv2d(1, 1, 3, stride=2, padding=2, dilation=2, bias=False), (1, 1, 8, 8))},
        'depthwise': {'DepthwiseConv2d': (nc.DepthwiseConv2d(3, 3, padding=1, bias=False), small),
                      'Conv2d': (nc.Conv2d(3, 3, 3, padding=1, bias=False), small)},
        'pointwise': {'PointwiseConv2d': (nc.PointwiseConv2d(3, 2, bias=False), small)},
        'separable': {'SeparableConv2d': (nc.SeparableConv2d(3, 4, 3, padding=1, bias=False), small),
                      'Conv2d': (nc.Conv2d(3, 4, 3, padding=1, bias=False), small),
                      'SeparableConv2d 64->128': (nc.SeparableConv2d(64, 128, 3, padding=1, bias=False),
                                                  (1, 64, 56, 56)),
                      'Conv2d 64->128': (nc.Conv2d(64, 128, 3, padding=1, bias=False), (1, 64, 56, 56))},
        'octave': {'OctaveConv2d': (nc.OctaveConv2d(2, 2, 3, padding=1), (1, 2, 16, 16)),
                   'Conv2d': (nc.Conv2d(2, 2, 3, padding=1, bias=False), (1, 2, 16, 16))},
        'dynamic': {'DynamicConv2d': (nc.DynamicConv2d(3, 1, 3, padding=1, K=4), shape3),
                    'CondConv2d': (nc.CondConv2d(3, 1, 3, padding=1, num_experts=4), shape3),
                    'Conv2d': (nc.Conv2d(3, 1, 3, padding=1), shape3)},
        'odconv': {'ODConv2d': (nc.ODConv2d(3, 4, 3, padding=1, kernel_num=4), shape3),
                   'Conv2d': (nc.Conv2d(3, 4, 3, padding=1), shape3)},
        'kernel_warehouse': {'KWConv2d (own parameters)': (kw[0], (1, 2, 16, 16)),
                             'Conv2d': (nc.Conv2d(2, 2, 3, padding=1, bias=False), (1, 2, 16, 16))},
        'deformable': {'DeformConv2d': (nc.DeformConv2d(4, 4, 3, padding=1), (1, 4, 16, 16)),
                       'ModulatedDeformConv2d': (nc.ModulatedDeformConv2d(4, 4, 3, padding=1),
                                                 (1, 4, 16, 16)),
                       'DCNv3': (nc.DCNv3(4, 3, pad=1, group=2), (1, 4, 16, 16)),
                       'DCNv4': (nc.DCNv4(4, 3, pad=1, group=2, dw_kernel_size=3), (1, 4, 16, 16))},
        'involution': {'Involution2d': (nc.Involution2d(8, 3, group_channels=8, reduction_ratio=2),
                                        (1, 8, 16, 16)),
                       'Conv2d': (nc.Conv2d(8, 8, 3, padding=1), (1, 8, 16, 16))},
    }, manager


def test_counts_are_numpyconv_count_and_are_shown(facts, figures):
    layers, manager = _count_layers()
    from numpyconv.explain import captions
    for technique, expected in layers.items():
        counts = facts[technique]['counts']
        for name, (layer, shape) in expected.items():
            params, macs = nc.count(layer, shape)
            assert counts[name] == (params, macs, shape), (technique, name)
            footer = drawn(figures[technique], 'counts')[0].get_text().replace('\n    ', ' ')
            assert f"{name} {params:,} parameters, {macs:,} multiply-adds" in footer, (technique, name)
            assert f"{name}: {params:,} parameters, {macs:,} multiply-adds on an input of shape {shape}" in \
                captions.caption(technique, facts[technique])
    assert facts['kernel_warehouse']['counts']['WarehouseManager (shared cells)'][0] == manager.num_params()
    assert facts['conv2d_backward']['counts'] == facts['conv2d']['counts']


# -- inputs ------------------------------------------------------------------------------------------------
def test_digits_fall_back_to_drawn_stand_ins_without_scikit_learn():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "from numpyconv.explain import data\n"
            "f = data.conv2d(0)\n"
            "print(f['source']); print(f['x'].shape, f['labels'])")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert 'stand-in' in out.stdout and '(8, 8)' in out.stdout


# -- command line ------------------------------------------------------------------------------------------
def test_cli_draws_one_technique_and_prints_its_caption(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    from numpyconv.cli import main
    assert main(['explain', 'pointwise', '--out', str(tmp_path), '--seed', '2']) == 0
    printed = capsys.readouterr().out
    caption = (tmp_path / 'pointwise.txt').read_text()
    assert caption.strip() in printed and (tmp_path / 'pointwise.png').exists()
    assert not (tmp_path / 'pointwise.gif').exists()


def test_cli_needs_one_technique_or_all(capsys):
    from numpyconv.cli import main
    assert main(['explain']) == 2
    assert main(['explain', 'conv2d', '--all']) == 2
    assert 'give one TECHNIQUE or --all' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['explain', 'conv3d'])
    with pytest.raises(SystemExit):
        main(['explain', 'conv2d', '--seed', '-1'])


def test_cli_without_matplotlib_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from numpyconv.cli import main\n"
            f"sys.exit(main(['explain', 'conv2d', '--out', {str(tmp_path)!r}]))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "pip install 'numpyconv[demo]'" in out.stderr and 'Traceback' not in out.stderr
    assert not list(tmp_path.iterdir())


def test_importing_explain_and_computing_facts_needs_no_matplotlib():
    code = ("import sys; import numpyconv.explain as e, numpyconv.explain.data as d; d.pointwise(0);\n"
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'
