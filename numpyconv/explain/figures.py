"""Drawing: one function per technique, turning the facts of :mod:`numpyconv.explain.data` into a
matplotlib figure (pyplot-free, Agg), and the caption that goes beside it.

Nothing here computes a convolution: every array drawn is one of the facts, passed through as is
(images, bar heights, marker positions). Artists that show a fact carry a ``gid`` naming it
(``fig.findobj(lambda a: a.get_gid() == 'im2col')``), so the tests can compare what was drawn with
the computation. Layouts are placed in inches on a :data:`~numpyconv.explain.style.WIDTH`-inch
figure (``_axes``), so every figure is 800 pixels wide.
"""
import numpy as np

from . import style

TITLES = {
    'conv2d': 'Standard convolution: the window, im2col and one dot product',
    'conv2d_backward': 'Backward pass of a convolution: dW and dx on the same example',
    'depthwise': 'Depthwise convolution: one filter per channel, channels never mix',
    'pointwise': 'Pointwise (1x1) convolution: one matrix applied at every pixel',
    'separable': 'Depthwise separable convolution: depthwise, then pointwise',
    'octave': 'Octave convolution: high- and low-frequency maps, four paths',
    'dynamic': 'Dynamic convolution (DY-CNN) and CondConv: an input-dependent mix of K kernels',
    'odconv': 'ODConv: four attentions assemble the kernel',
    'kernel_warehouse': 'KernelWarehouse: kernels assembled from cells of a shared warehouse',
    'deformable': 'Deformable convolution v1 / v2 / DCNv3 / DCNv4: where each one samples',
    'involution': 'Involution: a kernel generated at every position',
}


# -- small drawing helpers ----------------------------------------------------------------------------
def _axes(fig, x, y, w, h, gid=None):
    """Axes at ``(x, y)`` inches from the bottom left, ``w`` by ``h`` inches."""
    width, height = fig.get_size_inches()
    ax = fig.add_axes((x / width, y / height, w / width, h / height))
    ax.set_gid(gid)
    return ax


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.6)
        spine.set_color(style.NEUTRAL)


def number_format(values):
    """A format for the numbers written in cells: integers as such, else 0-2 decimals by size."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size and np.all(finite == np.round(finite)):
        return '{:.0f}'
    top = np.max(np.abs(finite)) if finite.size else 0.0
    return '{:.0f}' if top >= 20 else '{:.1f}' if top >= 2 else '{:.2f}'


def _image(ax, values, role, gid, signed=None, numbers=False, fontsize=6.5, vlim=None):
    """``values`` as cells coloured by the role's map (NaN cells blank); numbers written if asked."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    signed = bool(finite.size and finite.min() < 0) if signed is None else signed
    vmin, vmax = vlim if vlim is not None else style.limits(finite, signed)
    cmap = style.colour_map(role, signed).with_extremes(bad='white')
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax)
    image.set_gid(gid)
    if numbers:
        fmt = number_format(values)
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                strong = abs(v) / max(abs(vmin), abs(vmax)) > 0.62
                ax.text(c, r, fmt.format(v).replace('-', '\u2212'), ha='center', va='center',
                        fontsize=fontsize, color='white' if strong else 'black')
    _bare(ax)
    return image


def _box(ax, row, col, colour=style.HIGHLIGHT, width=1, height=1, lw=1.6, ls='-', gid=None):
    from matplotlib.patches import Rectangle
    patch = Rectangle((col - 0.5, row - 0.5), width, height, fill=False, edgecolor=colour, lw=lw, ls=ls)
    patch.set_gid(gid)
    ax.add_patch(patch)
    return patch


def _arrow(fig, start, end, text=None, colour=style.NEUTRAL, rad=0.0, text_offset=(0.0, 0.08)):
    """An arrow between two points given in inches; ``text`` at its middle."""
    from matplotlib.patches import FancyArrowPatch
    width, height = fig.get_size_inches()
    a = (start[0] / width, start[1] / height)
    b = (end[0] / width, end[1] / height)
    fig.add_artist(FancyArrowPatch(a, b, transform=fig.transFigure, arrowstyle='-|>', mutation_scale=9,
                                   lw=1.0, color=colour, connectionstyle=f'arc3,rad={rad}'))
    if text:
        mid = ((start[0] + end[0]) / 2 + text_offset[0], (start[1] + end[1]) / 2 + text_offset[1])
        _text(fig, mid, text, ha='center', va='bottom', fontsize=7.5, color='#444444')


def _text(fig, xy, text, **kwargs):
    width, height = fig.get_size_inches()
    return fig.text(xy[0] / width, xy[1] / height, text, **kwargs)


def _title(ax, text, colour='black', **kwargs):
    ax.set_title(text, fontsize=kwargs.pop('fontsize', 8.5), color=colour, pad=3, **kwargs)


def count_lines(facts):
    """``'name: P parameters, M multiply-adds on (N, C, H, W)'`` per count (numpyconv.count)."""
    lines = []
    for name, (params, macs, shape) in facts['counts'].items():
        line = f"{name}: {params:,} parameters"
        if macs is not None:
            line += f", {macs:,} multiply-adds on input {shape}"
        lines.append(line)
    return lines


def _footer(fig, facts):
    lines = count_lines(facts)
    text = 'numpyconv.count: ' + ';  '.join(lines)
    _text(fig, (0.12, 0.08), text, fontsize=6.8, color='#333333', wrap=True, gid='counts')


def _header(fig, technique):
    fig.suptitle(TITLES[technique], x=0.5, y=0.992, va='top', fontsize=10.5, fontweight='bold')


def _bars(ax, labels, values, colours, gid, fmt='{:,}', hatches=None):
    """Horizontal bars with their values written at the end."""
    y = np.arange(len(values))[::-1]
    bars = ax.barh(y, values, color=colours, height=0.62)
    for k, (bar, value) in enumerate(zip(bars, values)):
        bar.set_gid(f'{gid}{k}')
        if hatches:
            bar.set_hatch(hatches[k])
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, ' ' + fmt.format(value),
                va='center', fontsize=7)
    ax.set_yticks(y, labels, fontsize=7.5)
    ax.set_xlim(0, max(values) * 1.45)
    ax.set_xticks([])
    for side in ('top', 'right', 'bottom'):
        ax.spines[side].set_visible(False)
    return bars


def mosaic(kernels):
    """``(R, C, kh, kw)`` kernels as one ``(R*kh + R-1, C*kw + C-1)`` image, NaN between them."""
    r, c, kh, kw = kernels.shape
    out = np.full((r * (kh + 1) - 1, c * (kw + 1) - 1), np.nan)
    for i in range(r):
        for j in range(c):
            out[i * (kh + 1):i * (kh + 1) + kh, j * (kw + 1):j * (kw + 1) + kw] = kernels[i, j]
    return out


def _label_digit(facts, k=0):
    return f"a handwritten {facts['labels'][k]}"


# -- standard convolution -------------------------------------------------------------------------------
def conv2d(facts, frame=None):
    """Padded input with the window, weight, output, im2col with the column, the dot product.

    ``frame = (position, column_index, window)`` draws another output position (the GIF)."""
    fig = style.new_figure(7.3)
    position, column_index, window = frame or (facts['position'], facts['column_index'], facts['window'])
    i, j = position
    pad, stride, dilation = facts['padding'], facts['stride'], facts['dilation']
    _header(fig, 'conv2d')
    ax = _axes(fig, 0.25, 3.75, 3.2, 3.2)
    _image(ax, facts['padded'], 'input', 'padded', numbers=True, fontsize=6)
    h, w = facts['x'].shape
    _box(ax, pad, pad, style.NEUTRAL, w, h, lw=1.0, ls='--')
    for r, c in window:
        _box(ax, r, c)
    rows, cols = zip(*window)
    taps = ax.scatter(cols, rows, s=0, gid='window')
    taps.set_visible(False)
    _title(ax, f"input x (8x8 digit) zero-padded by {pad}; window of output ({i}, {j})")
    ax.set_xlabel(f"stride {stride}: windows start every {stride} pixels; dilation {dilation}: "
                  f"taps {dilation} apart", fontsize=7.5)
    ax = _axes(fig, 3.85, 5.0, 1.25, 1.25)
    _image(ax, facts['weight'], 'weights', 'weight', signed=True, numbers=True, fontsize=7.5)
    _title(ax, 'weight w (3x3)', style.WEIGHTS)
    ax = _axes(fig, 5.55, 4.45, 2.2, 2.2)
    _image(ax, facts['y'], 'output', 'output', numbers=True, fontsize=7.5)
    _box(ax, i, j)
    _title(ax, f"output y = conv2d(x, w), {facts['y'].shape[0]}x{facts['y'].shape[1]}", style.OUTPUT)
    _im2col_panel(fig, facts, column_index)
    _dot_panel(fig, facts, position, column_index)
    _footer(fig, facts)
    return fig


def _im2col_panel(fig, facts, column_index):
    matrix = facts['matrix']
    ax = _axes(fig, 0.95, 1.55, 6.8, 1.85)
    _image(ax, matrix, 'input', 'im2col', numbers=True, fontsize=6)
    _box(ax, 0, column_index, height=matrix.shape[0], gid='column_highlight')
    wo = facts['y'].shape[1]
    ax.set_xticks(range(matrix.shape[1]), [f'{k // wo},{k % wo}' for k in range(matrix.shape[1])], fontsize=6)
    ax.set_yticks(range(9), [f'w[{p},{q}]' for p in range(3) for q in range(3)], fontsize=6)
    ax.tick_params(length=0, pad=1)
    _title(ax, f"numpyconv.im2col(x): one column per output position (i,j), one row per kernel point; "
               f"y = w.reshape(1, 9) @ this matrix", style.INPUT)


def _dot_panel(fig, facts, position, column_index):
    column = facts['matrix'][:, column_index]
    weight_row = facts['weight'].ravel()
    products = weight_row * column
    rows = [('weight row', weight_row, 'weights', 'dot_weight'), (f'column {column_index}', column, 'input',
                                                                   'dot_column'),
            ('product', products, 'output', 'dot_product')]
    for k, (label, values, role, gid) in enumerate(rows):
        ax = _axes(fig, 0.95, 0.92 - 0.27 * k, 2.45, 0.27)
        _image(ax, values[None], role, gid, signed=role != 'input', numbers=True, fontsize=6.5)
        ax.set_ylabel(label, rotation=0, ha='right', va='center', fontsize=7)
    value = float(products.sum())
    _text(fig, (3.6, 0.55), f"sum of the products = {value:g} = y[{position[0]}, {position[1]}]",
          fontsize=9, color=style.OUTPUT, va='center', gid='dot_sum')


# -- the backward pass ---------------------------------------------------------------------------------
def conv2d_backward(facts):
    fig = style.new_figure(6.7)
    _header(fig, 'conv2d_backward')
    pad, s, d = facts['padding'], facts['stride'], facts['dilation']
    (p, q), (i, j) = facts['tap'], facts['position']
    ax = _axes(fig, 0.25, 4.05, 1.7, 1.7)
    _image(ax, facts['dout'], 'output', 'dout', signed=True, numbers=True, fontsize=7.5)
    _title(ax, 'dout (gradient of y)', style.OUTPUT)
    ax = _axes(fig, 2.35, 3.35, 2.75, 2.75)
    _image(ax, facts['padded'], 'input', 'padded', numbers=True, fontsize=5.8)
    ho, wo = facts['dout'].shape
    rows = [p * d + s * a for a in range(ho) for b in range(wo)]
    cols = [q * d + s * b for a in range(ho) for b in range(wo)]
    for r, c in zip(rows, cols):
        _box(ax, r, c, style.WEIGHTS, lw=1.4)
    marks = ax.scatter(cols, rows, s=0, gid='tap_grid')
    marks.set_visible(False)
    _title(ax, f"x, padded: the pixels kernel point ({p},{q}) read", style.INPUT)
    ax = _axes(fig, 5.6, 4.3, 1.45, 1.45)
    _image(ax, facts['dweight'], 'weights', 'dweight', signed=True, numbers=True, fontsize=7.5)
    _box(ax, p, q)
    _title(ax, 'dW (conv2d_backward)', style.WEIGHTS)
    _text(fig, (5.35, 3.75), f"dW[{p},{q}] = sum(dout \u2299 those pixels)\n= {facts['tap_value']:g}: "
          f"the correlation of x with dout", fontsize=7.5, va='top')
    ax = _axes(fig, 0.25, 0.55, 2.45, 2.45)
    _image(ax, facts['scatter_one'], 'input', 'scatter_one', signed=True, numbers=True, fontsize=5.8)
    _box(ax, i * s, j * s, style.NEUTRAL, 2 * d + 1, 2 * d + 1, lw=1.0, ls='--')
    _title(ax, f"dout[{i},{j}] \u00d7 w, placed on window ({i},{j})", style.OUTPUT)
    ax = _axes(fig, 2.9, 0.55, 2.45, 2.45)
    _image(ax, facts['scatter_all'], 'input', 'scatter_all', signed=True, numbers=True, fontsize=5.8)
    h, w = facts['x'].shape
    _box(ax, pad, pad, style.NEUTRAL, w, h, lw=1.2, ls='--')
    _title(ax, f"all {ho * wo} windows' scatters added", style.OUTPUT)
    ax = _axes(fig, 5.6, 0.75, 2.05, 2.05)
    _image(ax, facts['dx'], 'input', 'dx', signed=True, numbers=True, fontsize=6.5)
    _title(ax, 'dx (conv2d_backward): the inside', style.INPUT)
    _arrow(fig, (5.3, 1.78), (5.55, 1.78))
    _footer(fig, facts)
    return fig


# -- depthwise, pointwise, separable ---------------------------------------------------------------------
def _cost_bars(fig, facts, x, y, names, labels, colours):
    """Two small bar charts (parameters, multiply-adds) of the named counts."""
    for k, (what, index) in enumerate((('parameters', 0), ('multiply-adds', 1))):
        ax = _axes(fig, x, y + (1 - k) * 1.45, 1.25, 0.9)
        _bars(ax, labels, [facts['counts'][n][index] for n in names], colours, f'bars_{what}')
        _title(ax, what, fontsize=8)


def depthwise(facts):
    fig = style.new_figure(5.0)
    _header(fig, 'depthwise')
    x, weight, y = facts['x'], facts['weight'], facts['y']
    vlim = style.limits(y, True)
    for c in range(x.shape[0]):
        top = 3.35 - 1.45 * c
        ax = _axes(fig, 0.3, top, 1.25, 1.25)
        _image(ax, x[c], 'input', f'x{c}')
        _title(ax, f"input channel {c} (a {facts['labels'][c]})" if c == 0 else f"channel {c} (a {facts['labels'][c]})",
               style.INPUT)
        ax = _axes(fig, 2.3, top + 0.2, 0.85, 0.85)
        _image(ax, weight[c], 'weights', f'filter{c}', signed=True, numbers=True, fontsize=6.5)
        _title(ax, f'filter {c}', style.WEIGHTS)
        ax = _axes(fig, 3.9, top, 1.25, 1.25)
        _image(ax, y[c], 'output', f'y{c}', signed=True, vlim=vlim)
        _title(ax, f'output channel {c}', style.OUTPUT)
        _arrow(fig, (1.6, top + 0.62), (2.25, top + 0.62))
        _arrow(fig, (3.2, top + 0.62), (3.85, top + 0.62))
    _text(fig, (0.3, 0.28), "Each output channel is its own input channel convolved with its own filter: "
          "no arrow crosses.", fontsize=7.5)
    _cost_bars(fig, facts, 6.5, 1.15, ['DepthwiseConv2d', 'Conv2d'], ['depthwise', 'standard'],
               [style.WEIGHTS, style.NEUTRAL])
    _footer(fig, facts)
    return fig


def pointwise(facts):
    fig = style.new_figure(4.7)
    _header(fig, 'pointwise')
    x, y, (i, j) = facts['x'], facts['y'], facts['pixel']
    for c in range(x.shape[0]):
        ax = _axes(fig, 0.3, 3.0 - 1.3 * c, 1.1, 1.1)
        _image(ax, x[c], 'input', f'x{c}')
        _box(ax, i, j, lw=1.2)
        _title(ax, f"channel {c} (a {facts['labels'][c]})", style.INPUT, fontsize=7.5)
    ax = _axes(fig, 2.1, 1.85, 1.6, 1.05)
    _image(ax, facts['matrix'], 'weights', 'matrix', signed=True, numbers=True, fontsize=7.5)
    _title(ax, 'weight W (2x3)', style.WEIGHTS)
    ax = _axes(fig, 3.95, 1.6, 0.5, 1.5)
    _image(ax, facts['vector'][:, None], 'input', 'vector', numbers=True, fontsize=7)
    _title(ax, f'x[:, {i}, {j}]', style.INPUT, fontsize=7.5)
    _text(fig, (4.6, 2.35), '=', fontsize=14, va='center')
    ax = _axes(fig, 4.9, 1.85, 0.5, 1.05)
    _image(ax, facts['product'][:, None], 'output', 'product', signed=True, numbers=True, fontsize=7)
    _title(ax, f'y[:, {i}, {j}]', style.OUTPUT, fontsize=7.5)
    vlim = style.limits(y, True)
    for o in range(y.shape[0]):
        ax = _axes(fig, 6.1, 2.55 - 1.55 * o, 1.3, 1.3)
        _image(ax, y[o], 'output', f'y{o}', signed=True, vlim=vlim)
        _box(ax, i, j, lw=1.2)
        _title(ax, f'output channel {o}', style.OUTPUT, fontsize=7.5)
    _arrow(fig, (1.5, 2.4), (3.85, 2.4), rad=0.0)
    _arrow(fig, (5.5, 2.4), (6.0, 2.4))
    _text(fig, (2.0, 1.25), f"The same W at every one of the {x.shape[1] * x.shape[2]} pixels: "
          f"y[:, i, j] = W x[:, i, j].\nEvery output channel mixes all input digits; no neighbour is read.",
          fontsize=7.5, va='top')
    _footer(fig, facts)
    return fig


def separable(facts):
    fig = style.new_figure(6.4)
    _header(fig, 'separable')
    x, middle, y = facts['x'], facts['middle'], facts['y']
    mid_lim = style.limits(middle, True)
    for c in range(x.shape[0]):
        top = 4.75 - 1.2 * c
        ax = _axes(fig, 0.25, top, 0.95, 0.95)
        _image(ax, x[c], 'input', f'x{c}')
        if c == 0:
            _title(ax, 'input channels', style.INPUT, fontsize=7.5)
        ax = _axes(fig, 1.5, top + 0.15, 0.65, 0.65)
        _image(ax, facts['dw_weight'][c], 'weights', f'dw_filter{c}', signed=True, numbers=True, fontsize=5.5)
        if c == 0:
            _title(ax, 'depthwise', style.WEIGHTS, fontsize=7.5)
        ax = _axes(fig, 2.45, top, 0.95, 0.95)
        _image(ax, middle[c], 'output', f'middle{c}', signed=True, vlim=mid_lim)
        if c == 0:
            _title(ax, 'after depthwise', style.OUTPUT, fontsize=7.5)
        _arrow(fig, (1.22, top + 0.47), (1.47, top + 0.47))
        _arrow(fig, (2.18, top + 0.47), (2.42, top + 0.47))
    ax = _axes(fig, 3.85, 3.45, 1.2, 1.6)
    _image(ax, facts['pw_matrix'], 'weights', 'pw_matrix', signed=True, numbers=True, fontsize=7)
    _title(ax, 'pointwise W (4x3)', style.WEIGHTS, fontsize=7.5)
    _arrow(fig, (3.45, 4.25), (3.8, 4.25))
    _arrow(fig, (5.1, 4.25), (5.45, 4.25))
    y_lim = style.limits(y, True)
    for o in range(y.shape[0]):
        ax = _axes(fig, 5.55 + 1.15 * (o % 2), 4.45 - 1.2 * (o // 2), 1.0, 1.0)
        _image(ax, y[o], 'output', f'y{o}', signed=True, vlim=y_lim)
        _title(ax, f'output {o}', style.OUTPUT, fontsize=7.5)
    _separable_bars(fig, facts)
    _footer(fig, facts)
    return fig


def _separable_bars(fig, facts):
    counts = facts['counts']
    typical = [n for n in counts if '->' in n]
    pairs = [('drawn (3 -> 4, 16x16)', 'SeparableConv2d', 'Conv2d'),
             (f"typical ({typical[0].split()[-1]}, {counts[typical[0]][2][2]}x{counts[typical[0]][2][3]})",
              typical[0], typical[1])]
    for k, (what, index) in enumerate((('parameters', 0), ('multiply-adds', 1))):
        ax = _axes(fig, 1.55 + 3.4 * k, 0.5, 2.0, 1.35)
        labels, values, colours = [], [], []
        for label, sep, std in pairs:
            labels += [f'{label}\nseparable', 'standard']
            values += [100.0 * counts[sep][index] / counts[std][index], 100.0]
            colours += [style.WEIGHTS, style.NEUTRAL]
        _bars(ax, labels, values, colours, f'bars_{what}', fmt='{:.1f}%')
        _title(ax, f'{what}, % of the standard convolution', fontsize=8)


# -- octave -----------------------------------------------------------------------------------------
def octave(facts):
    fig = style.new_figure(6.3)
    _header(fig, 'octave')
    paths = facts['paths']
    big, small = 1.3, 0.65
    hi_lim = style.limits(np.concatenate([paths['h2h'].ravel(), paths['l2h'].ravel(), facts['y_h'].ravel()]), True)
    lo_lim = style.limits(np.concatenate([paths['h2l'].ravel(), paths['l2l'].ravel(), facts['y_l'].ravel()]), True)
    ax = _axes(fig, 0.2, 3.0, big, big)
    _image(ax, facts['x'], 'input', 'x')
    _title(ax, f"x ({_label_digit(facts)})", style.INPUT, fontsize=7.5)
    ax = _axes(fig, 2.0, 4.2, big, big)
    _image(ax, facts['x_h'], 'input', 'x_h', signed=True)
    _title(ax, 'x_h = x \u2212 upsample(x_l)\nhigh frequencies, 16x16', style.INPUT, fontsize=7.5)
    ax = _axes(fig, 2.0 + small / 2, 1.55, small, small)
    _image(ax, facts['x_l'], 'input', 'x_l')
    _title(ax, 'x_l = avgpool(x)\nlow, 8x8', style.INPUT, fontsize=7.5)
    _arrow(fig, (1.52, 3.95), (1.95, 4.6))
    _arrow(fig, (1.52, 3.3), (2.28, 2.3))
    spots = {'h2h': (4.35, 4.2, big), 'l2h': (4.35, 2.55, big), 'h2l': (4.35 + small / 2, 1.4, small),
             'l2l': (4.35 + small / 2, 0.35, small)}
    names = {'h2h': 'H\u2192H: conv', 'l2h': 'L\u2192H: conv, upsample x2', 'h2l': 'H\u2192L: pool 2x2, conv',
             'l2l': 'L\u2192L: conv'}
    for name, (px, py, size) in spots.items():
        ax = _axes(fig, px, py, size, size)
        _image(ax, paths[name], 'output', name, signed=True, vlim=hi_lim if name.endswith('h') else lo_lim)
        ax.set_ylabel(names[name], rotation=0, ha='right', va='center', fontsize=7.5, labelpad=4)
    ax = _axes(fig, 6.5, 3.4, big, big)
    _image(ax, facts['y_h'], 'output', 'y_h', signed=True, vlim=hi_lim)
    _title(ax, 'y_h = H\u2192H + L\u2192H', style.OUTPUT, fontsize=7.5)
    ax = _axes(fig, 6.5 + small / 2, 0.9, small, small)
    _image(ax, facts['y_l'], 'output', 'y_l', signed=True, vlim=lo_lim)
    _title(ax, 'y_l = H\u2192L + L\u2192L', style.OUTPUT, fontsize=7.5)
    for name, (px, py, size) in spots.items():
        target = (6.45, 4.05) if name.endswith('h') else (6.78, 1.22)
        _arrow(fig, (px + size + 0.05, py + size / 2), target)
    oct_macs, conv_macs = facts['counts']['OctaveConv2d'][1], facts['counts']['Conv2d'][1]
    _text(fig, (6.2, 2.55), f"multiply-adds\noctave {oct_macs:,}\nConv2d {conv_macs:,}\n"
          f"saves {100 * (1 - oct_macs / conv_macs):.0f}%", fontsize=7.5, va='center', gid='macs')
    _footer(fig, facts)
    return fig


# -- attention over kernels -----------------------------------------------------------------------------
def _attention_bars(ax, attention, gid, names):
    """Grouped vertical bars: ``attention (2, K)`` for input A (solid) and B (hatched)."""
    k = attention.shape[1]
    for n, (offset, hatch) in enumerate(((-0.2, None), (0.2, '////'))):
        bars = ax.bar(np.arange(k) + offset, attention[n], width=0.38, color=style.WEIGHTS if n == 0 else 'white',
                      edgecolor=style.WEIGHTS, hatch=hatch, label=names[n])
        for kk, bar in enumerate(bars):
            bar.set_gid(f'{gid}_{"AB"[n]}{kk}')
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f'{attention[n, kk]:.2f}',
                    ha='center', va='bottom', fontsize=5.5, rotation=90)
    ax.set_xticks(range(k), [f'W{kk + 1}' for kk in range(k)], fontsize=7)
    ax.set_ylim(0, max(1.0, float(attention.max()) * 1.3))
    ax.tick_params(axis='y', labelsize=6.5)
    for side in ('top', 'right'):
        ax.spines[side].set_visible(False)


def dynamic(facts):
    fig = style.new_figure(6.5)
    _header(fig, 'dynamic')
    for n, name in enumerate('AB'):
        ax = _axes(fig, 0.3 + 1.2 * n, 5.0, 1.0, 1.0)
        _image(ax, facts['images'][n], 'input', f'image_{name}')
        _title(ax, f"input {name}: a {facts['labels'][n]}", style.INPUT, fontsize=7.5)
    _text(fig, (2.8, 5.5), "Each input's attention (from its globally pooled features) weights the K kernels;\n"
          "the weighted sum is the kernel that convolves that input.", fontsize=7.5, va='center')
    rows = (('dynamic', 'DY-CNN: softmax over K (temperature 1)', 2.75),
            ('condconv', 'CondConv: sigmoid routing (independent weights)', 0.45))
    for name, label, y0 in rows:
        _dynamic_row(fig, facts, name, label, y0)
    _footer(fig, facts)
    return fig


def _dynamic_row(fig, facts, name, label, y0):
    part = facts[name]
    bank = part['bank'][:, 0]                                              # (K, C_in, 3, 3), C_out = 1
    _text(fig, (0.3, y0 + 1.85), label, fontsize=8.5, fontweight='bold')
    ax = _axes(fig, 0.3, y0, 1.25, 1.65)
    _image(ax, mosaic(bank), 'weights', f'{name}_bank', signed=True)
    ax.set_yticks([1 + 4 * k for k in range(bank.shape[0])], [f'W{k + 1}' for k in range(bank.shape[0])], fontsize=7)
    ax.set_xlabel('input channels 0, 1, 2', fontsize=6.5)
    ax = _axes(fig, 2.1, y0 + 0.15, 2.0, 1.35)
    _attention_bars(ax, part['attention'], f'{name}_attention', ('input A', 'input B'))
    ax.legend(fontsize=6.5, frameon=False, loc='upper right', ncols=2)
    _title(ax, 'attention over the K kernels', style.WEIGHTS, fontsize=7.5)
    kernels = part['kernels'][:, 0]                                        # (2, C_in, 3, 3)
    vlim = style.limits(kernels, True)
    for n, tag in enumerate('AB'):
        ax = _axes(fig, 4.5, y0 + 0.85 - 0.8 * n, 1.55, 0.55)
        _image(ax, mosaic(kernels[n][None]), 'weights', f'{name}_kernel_{tag}', signed=True, vlim=vlim)
        _title(ax, f'aggregated kernel for {tag}', style.WEIGHTS, fontsize=7)
    ax = _axes(fig, 6.3, y0 + 0.45, 1.55, 0.55)
    _image(ax, mosaic((kernels[0] - kernels[1])[None]), 'weights', f'{name}_difference', signed=True)
    diff = np.abs(kernels[0] - kernels[1]).max()
    _title(ax, f'A \u2212 B (own scale;\nlargest |difference| {diff:.3g})', style.WEIGHTS, fontsize=7)


def odconv(facts):
    fig = style.new_figure(6.2)
    _header(fig, 'odconv')
    att = facts['attentions']
    bank = facts['bank']                                                  # (n, C_out, C_in, 3, 3)
    ax = _axes(fig, 0.25, 3.7, 1.3, 1.3)
    _image(ax, facts['image'], 'input', 'image')
    _title(ax, f"input: {_label_digit(facts)}", style.INPUT, fontsize=7.5)
    vlim = style.limits(bank, True)
    for k in range(bank.shape[0]):
        ax = _axes(fig, 2.0 + 1.2 * k, 3.55, 1.05, 1.45)
        _image(ax, mosaic(bank[k]), 'weights', f'bank{k}', signed=True, vlim=vlim)
        _title(ax, f'W{k + 1} (4 out x 3 in)', style.WEIGHTS, fontsize=7)
    ax = _axes(fig, 2.0, 2.55, 4.65, 0.6)
    bars = ax.bar(1.2 * np.arange(len(att['kernel'])) + 0.52, att['kernel'], width=0.5, color=style.WEIGHTS)
    _bar_values(ax, bars, att['kernel'], 'attention_kernel')
    ax.set_xlim(0, 4.65 / 1.0 * 1.0 * (4.8 / 4.65))
    ax.set_xticks([])
    ax.set_ylim(0, 1.3)
    ax.set_ylabel('kernel\nattention', fontsize=7, rotation=0, ha='right', va='center')
    _clean(ax)
    ax = _axes(fig, 0.35, 0.55, 1.05, 1.05)
    _image(ax, att['spatial'], 'weights', 'attention_spatial', numbers=True, fontsize=6.5, signed=False,
           vlim=(0, 1))
    _title(ax, 'spatial attention\n(3x3, every kernel)', style.WEIGHTS, fontsize=7)
    for gid, values, x0, label in (('attention_channel', att['channel'], 1.85, 'input-channel\nattention'),
                                   ('attention_filter', att['filter'], 3.35, 'output-channel\nattention')):
        ax = _axes(fig, x0, 0.55, 1.15, 1.05)
        bars = ax.bar(np.arange(len(values)), values, color=style.WEIGHTS, width=0.6)
        _bar_values(ax, bars, values, gid)
        ax.set_xticks(range(len(values)), [str(v) for v in range(len(values))], fontsize=6.5)
        ax.set_ylim(0, 1.3)
        _title(ax, label, style.WEIGHTS, fontsize=7)
        _clean(ax)
    ax = _axes(fig, 5.2, 0.45, 1.3, 1.75)
    _image(ax, mosaic(facts['kernel']), 'weights', 'kernel', signed=True)
    _title(ax, 'assembled kernel', style.WEIGHTS, fontsize=7.5)
    _text(fig, (6.6, 1.35), "W[o, c] =\n  filter[o]\n\u00d7 channel[c]\n\u00d7 spatial\n\u2299 \u03a3 kernel[i] W_i[o, c]",
          fontsize=7, va='center')
    _text(fig, (0.25, 2.2), "Attentions of one input; the assembled kernel convolved with x gives the layer's output.",
          fontsize=7.5)
    _footer(fig, facts)
    return fig


def _bar_values(ax, bars, values, gid):
    for k, (bar, v) in enumerate(zip(bars, values)):
        bar.set_gid(f'{gid}{k}')
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f'{v:.2f}', ha='center', va='bottom',
                fontsize=6)


def _clean(ax):
    ax.tick_params(axis='y', labelsize=6)
    for side in ('top', 'right'):
        ax.spines[side].set_visible(False)


def kernel_warehouse(facts):
    fig = style.new_figure(5.8)
    _header(fig, 'kernel_warehouse')
    cells, owner, attention = facts['cells'], facts['owner'], facts['attention']
    m, cell_count = attention.shape
    step = 7.2 / cell_count
    vlim = style.limits(cells, True)
    for k in range(cell_count):
        ax = _axes(fig, 0.55 + step * k + 0.08, 3.95, step - 0.16, step - 0.16)
        _image(ax, cells[k], 'weights', f'cell{k}', signed=True, vlim=vlim)
        _title(ax, f'cell {k}', fontsize=7)
        ax.set_xlabel(f'layer {owner[k] + 1}\'s', fontsize=6.5, color=style.NEUTRAL, labelpad=1)
    _text(fig, (0.55, 3.75 + step), f"one warehouse of {cell_count} cells, shared by two KWConv2d layers "
          f"(each starts from its own {cell_count // 2})", fontsize=8)
    ax = _axes(fig, 0.55, 1.75, 7.2, 1.45)
    _image(ax, attention, 'weights', 'attention', signed=True, numbers=True, fontsize=7)
    ax.set_aspect('auto')
    ax.set_yticks(range(m), [f'W[{r // 2},{r % 2}]' for r in range(m)], fontsize=7)
    ax.tick_params(length=0)
    _title(ax, 'layer 1: attention over every cell for this input (one row per kernel slice; '
               'contrasting-driven: signed, normalised)', style.WEIGHTS, fontsize=7.5)
    ax = _axes(fig, 0.7, 0.35, 1.1, 1.1)
    _image(ax, facts['image'], 'input', 'image')
    _title(ax, f'input: {_label_digit(facts)}', style.INPUT, fontsize=7)
    ax = _axes(fig, 2.6, 0.3, 1.2, 1.2)
    _image(ax, mosaic(facts['kernel']), 'weights', 'kernel', signed=True)
    _title(ax, 'layer 1 kernel (2 out x 2 in)', style.WEIGHTS, fontsize=7)
    _text(fig, (4.1, 0.9), "W[o, i] = \u03a3_j attention[row of W[o, i], j] \u00b7 cell j\n"
          "Layer 2 mixes the same cells with its own attention.", fontsize=7.5, va='center')
    _footer(fig, facts)
    return fig


# -- deformable --------------------------------------------------------------------------------------------
VERSIONS = (('v1', 'DCNv1: offsets only (weight 1)'),
            ('v2', 'DCNv2: modulation in (0, 1) = marker area'),
            ('v3', "DCNv3: softmax over each group's 9 points"),
            ('v4', 'DCNv4: unnormalised weights (hollow = negative)'))
GROUP_MARKERS = ('o', '^')


def deformable_points(facts, version):
    """``(points (M, 2) as (x, y), weights (M,), grid (M, 2))`` drawn for a version: for each drawn
    output position, each group, each point (row-major), in that order."""
    part = facts[version]
    points, weights, grid = [], [], []
    for i, j in facts['positions']:
        points.append(part['locations'][0, i, j].reshape(-1, 2))
        weights.append(part['weights'][0, i, j].reshape(-1))
        grid.append(part['grid'][0, i, j].reshape(-1, 2))
    return np.concatenate(points), np.concatenate(weights), np.concatenate(grid)


def marker_area(version, weights):
    """Marker areas (points^2) for the sampling weights of a version."""
    scale = {'v1': 28.0, 'v2': 60.0, 'v3': 9 * 28.0, 'v4': 45.0}[version]
    return scale * np.abs(weights)


def deformable(facts):
    fig = style.new_figure(8.6)
    _header(fig, 'deformable')
    for k, (version, label) in enumerate(VERSIONS):
        ax = _axes(fig, 0.35 + 3.9 * (k % 2), 4.55 - 4.0 * (k // 2), 3.55, 3.55)
        _deformable_panel(ax, facts, version)
        _title(ax, f"{label}\n({facts[version]['layer']}, op '{facts[version]['op']}')", fontsize=8)
    _deformable_legend(fig)
    _footer(fig, facts)
    return fig


def _deformable_panel(ax, facts, version):
    image = facts['image']
    ax.imshow(image, cmap=style.colour_map('input', False), vmin=0, vmax=16, alpha=0.6)
    groups = facts[version]['locations'].shape[3]
    points, weights, grid = deformable_points(facts, version)
    per_group = len(points) // (len(facts['positions']) * groups)
    group = np.tile(np.repeat(np.arange(groups), per_group), len(facts['positions']))
    for (x0, y0), (x1, y1) in zip(grid, points):
        ax.annotate('', (x1, y1), (x0, y0), arrowprops=dict(arrowstyle='-', color=style.NEUTRAL, lw=0.6))
    regular = ax.scatter(grid[:, 0], grid[:, 1], s=14, facecolors='none', edgecolors=style.NEUTRAL, lw=0.8,
                         zorder=3)
    regular.set_gid(f'{version}_grid')
    area = marker_area(version, weights)
    faces = np.array([style.WEIGHTS if w >= 0 else 'none' for w in weights], dtype=object)
    for g in range(groups):
        sel = group == g
        sc = ax.scatter(points[sel, 0], points[sel, 1], s=area[sel], marker=GROUP_MARKERS[g], c=None,
                        facecolors=list(faces[sel]), edgecolors=style.WEIGHTS, lw=0.9, zorder=4, alpha=0.9)
        sc.set_gid(f'{version}_points_group{g}')
    rows, cols = zip(*facts['positions'])
    star = ax.scatter(cols, rows, s=90, marker='*', color=style.OUTPUT, edgecolors='white', lw=0.6, zorder=5)
    star.set_gid(f'{version}_positions')
    everything = np.concatenate([points, grid, [[-0.5, -0.5], [image.shape[1] - 0.5, image.shape[0] - 0.5]]])
    low, high = everything.min(axis=0) - 0.8, everything.max(axis=0) + 0.8
    ax.set_xlim(low[0], high[0])
    ax.set_ylim(high[1], low[1])
    ax.tick_params(labelsize=6.5)
    if groups > 1:
        ax.text(0.02, 0.02, 'groups: \u25cb 0, \u25b3 1', transform=ax.transAxes, fontsize=7, color='#333333')


def _deformable_legend(fig):
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], ls='', marker='*', color=style.OUTPUT, ms=10, label='output pixel'),
               Line2D([], [], ls='', marker='o', mfc='none', mec=style.NEUTRAL, label='regular 3x3 grid'),
               Line2D([], [], color=style.NEUTRAL, lw=0.8, label='learned offset'),
               Line2D([], [], ls='', marker='o', color=style.WEIGHTS, label='sampling point (area ~ weight)')]
    fig.legend(handles=handles, loc='lower center', ncols=4, frameon=False, fontsize=7.5,
               bbox_to_anchor=(0.5, 0.035))


# -- involution --------------------------------------------------------------------------------------------
def involution(facts):
    fig = style.new_figure(5.0)
    _header(fig, 'involution')
    ax = _axes(fig, 0.25, 0.8, 2.7, 2.7)
    _image(ax, facts['image'], 'input', 'image')
    rows, cols = zip(*facts['positions'])
    marks = ax.scatter(cols, rows, s=140, facecolors='none', edgecolors=style.HIGHLIGHT, lw=1.5, gid='positions')
    marks.set_zorder(3)
    for k, (r, c) in enumerate(facts['positions']):
        ax.text(c + 0.9, r - 0.9, str(k + 1), color=style.HIGHLIGHT, fontsize=9, fontweight='bold')
    _title(ax, f"input: {_label_digit(facts)} (its stem features feed the layer)", style.INPUT, fontsize=7.5)
    kernels = facts['kernels']
    vlim = style.limits(kernels, True)
    for k in range(len(kernels)):
        ax = _axes(fig, 3.45 + 1.12 * k, 2.45, 0.98, 0.98)
        _image(ax, kernels[k], 'weights', f'kernel{k}', signed=True, numbers=True, fontsize=6, vlim=vlim)
        _title(ax, f'at {k + 1} {facts["positions"][k]}', fontsize=7)
        ax = _axes(fig, 3.45 + 1.12 * k, 0.75, 0.98, 0.98)
        _image(ax, facts['conv_kernel'], 'weights', f'conv_kernel{k}', signed=True, numbers=True, fontsize=5.5)
        _title(ax, f'at {k + 1}', fontsize=7)
    _text(fig, (3.45, 3.65), 'Involution2d: the kernel generated at each position (one group: '
          'shared by its 8 channels)', fontsize=7.5, color=style.WEIGHTS)
    _text(fig, (3.45, 1.95), "Conv2d: the same kernel everywhere (input 0 \u2192 output 0 of its 8x8)",
          fontsize=7.5, color=style.WEIGHTS)
    _footer(fig, facts)
    return fig


DRAW = {'conv2d': conv2d, 'conv2d_backward': conv2d_backward, 'depthwise': depthwise,
        'pointwise': pointwise, 'separable': separable, 'octave': octave, 'dynamic': dynamic,
        'odconv': odconv, 'kernel_warehouse': kernel_warehouse, 'deformable': deformable,
        'involution': involution}
