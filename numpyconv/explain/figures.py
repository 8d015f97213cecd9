"""Drawing: one function per technique, turning the facts of :mod:`numpyconv.explain.data` into a
matplotlib figure (pyplot-free, Agg).

Nothing here computes a convolution: every array drawn is one of the facts, passed through as is
(images, bar heights, marker positions). Artists that show a fact carry a ``gid`` naming it
(``fig.findobj(lambda a: a.get_gid() == 'im2col')``), so the tests can compare what was drawn with
the computation. Layouts are placed in inches from the bottom left of a
:data:`~numpyconv.explain.style.WIDTH`-inch figure (800 pixels), above a footer with the counts.
"""
import textwrap

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
FOOTER_LINE = 0.15          # inches per line of counts
FOOTER_CHARACTERS = 150     # characters per footer line


# -- figure, placement, text -------------------------------------------------------------------------
def count_lines(facts):
    """The footer: the counts of ``facts`` (numpyconv.count), grouped by input shape, wrapped."""
    by_shape = {}
    for name, (params, macs, shape) in facts['counts'].items():
        item = f"{name} {params:,} parameters" + ('' if macs is None else f", {macs:,} multiply-adds")
        by_shape.setdefault(shape, []).append(item)
    lines = []
    for shape, items in by_shape.items():
        head = 'numpyconv.count' + ('' if shape is None else f" on input {shape}") + ': '
        lines += textwrap.wrap(head + ';  '.join(items), FOOTER_CHARACTERS, subsequent_indent='    ')
    return lines


def _figure(technique, facts, height):
    """The figure with its title and the counts at its foot; ``height`` inches above the footer."""
    lines = count_lines(facts)
    fig = style.new_figure(height, bottom=0.1 + FOOTER_LINE * len(lines))
    fig.suptitle(TITLES[technique], x=0.5, y=1 - 0.06 / fig.get_size_inches()[1], va='top', fontsize=10.5,
                 fontweight='bold')
    fig.text(0.12 / style.WIDTH, 0.06 / fig.get_size_inches()[1], '\n'.join(lines), fontsize=6.8,
             color='#333333', va='bottom', linespacing=1.25, gid='counts')
    return fig


def _inches(fig, x, y):
    """Figure fractions of the point ``(x, y)`` inches above the footer."""
    width, height = fig.get_size_inches()
    return x / width, (y + fig.layout_bottom) / height


def _axes(fig, x, y, w, h, gid=None):
    """Axes at ``(x, y)`` inches (above the footer), ``w`` by ``h`` inches."""
    width, height = fig.get_size_inches()
    ax = fig.add_axes((*_inches(fig, x, y), w / width, h / height))
    ax.set_gid(gid)
    return ax


def _text(fig, xy, text, **kwargs):
    kwargs.setdefault('fontsize', 7.5)
    return fig.text(*_inches(fig, *xy), text, **kwargs)


def _arrow(fig, start, end, text=None, colour=style.NEUTRAL, rad=0.0):
    """An arrow between two points given in inches; ``text`` above its middle."""
    from matplotlib.patches import FancyArrowPatch
    fig.add_artist(FancyArrowPatch(_inches(fig, *start), _inches(fig, *end), transform=fig.transFigure,
                                   arrowstyle='-|>', mutation_scale=9, lw=1.0, color=colour,
                                   connectionstyle=f'arc3,rad={rad}'))
    if text:
        _text(fig, ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.06), text, ha='center',
              va='bottom', color='#444444')


def _title(ax, text, colour='black', size=8):
    ax.set_title(text, fontsize=size, color=colour, pad=3)


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.6)
        spine.set_color(style.NEUTRAL)


def _plain(ax):
    ax.tick_params(axis='both', labelsize=6.5, length=2)
    for side in ('top', 'right'):
        ax.spines[side].set_visible(False)


# -- cells, boxes, bars ------------------------------------------------------------------------------
def number_format(values):
    """A format for the numbers written in cells: integers as such, else 0-2 decimals by size."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size and np.all(finite == np.round(finite)):
        return '{:.0f}'
    top = np.max(np.abs(finite)) if finite.size else 0.0
    return '{:.0f}' if top >= 20 else '{:.1f}' if top >= 2 else '{:.2f}'


def _number(fmt, value):
    return fmt.format(value + 0.0).replace('-', '\u2212')            # + 0.0: no "-0"


def _image(ax, values, role, gid, signed=None, numbers=False, size=6.5, vlim=None, fmt=None,
           animated=False):
    """``values`` as cells coloured by the role's map (NaN cells blank); numbers written if asked.
    Returns the artists made (the image, then the numbers)."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    signed = bool(finite.size and finite.min() < 0) if signed is None else signed
    vmin, vmax = vlim if vlim is not None else style.limits(finite, signed)
    cmap = style.colour_map(role, signed).with_extremes(bad='white')
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, animated=animated)
    image.set_gid(gid)
    artists = [image]
    if numbers:
        fmt = fmt or number_format(values)
        top = max(abs(vmin), abs(vmax))
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                colour = 'white' if abs(v) / top > 0.62 else 'black'
                artists.append(ax.text(c, r, _number(fmt, v), ha='center', va='center', fontsize=size,
                                       color=colour, animated=animated))
    _bare(ax)
    return artists


def _box(ax, row, col, colour=style.HIGHLIGHT, width=1, height=1, lw=1.6, ls='-', gid=None, animated=False):
    """A rectangle around the cells ``[row, row + height) x [col, col + width)``."""
    from matplotlib.patches import Rectangle
    patch = Rectangle((col - 0.5, row - 0.5), width, height, fill=False, edgecolor=colour, lw=lw, ls=ls,
                      animated=animated)
    patch.set_gid(gid)
    ax.add_patch(patch)
    return patch


def _hbars(ax, labels, values, colours, gid, fmt='{:,}'):
    """Horizontal bars, top to bottom, with their values written at the end."""
    y = np.arange(len(values))[::-1]
    bars = ax.barh(y, values, color=colours, height=0.62)
    for k, (bar, value) in enumerate(zip(bars, values)):
        bar.set_gid(f'{gid}{k}')
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, ' ' + fmt.format(value), va='center',
                fontsize=7)
    ax.set_yticks(y, labels, fontsize=7.5)
    ax.set_xlim(0, max(values) * 1.5)
    ax.set_xticks([])
    for side in ('top', 'right', 'bottom'):
        ax.spines[side].set_visible(False)
    ax.tick_params(length=0)


def _vbars(ax, values, gid, labels, ymax=1.3):
    """Vertical bars in the weights' colour, each value written on top."""
    bars = ax.bar(np.arange(len(values)), values, color=style.WEIGHTS, width=0.6)
    for k, (bar, v) in enumerate(zip(bars, values)):
        bar.set_gid(f'{gid}{k}')
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f'{v:.2f}', ha='center', va='bottom',
                fontsize=6)
    ax.set_xticks(range(len(values)), labels, fontsize=6.5)
    ax.set_ylim(0, ymax)
    _plain(ax)


def mosaic(kernels):
    """``(R, C, kh, kw)`` kernels as one ``(R*kh + R-1, C*kw + C-1)`` image, NaN between them."""
    r, c, kh, kw = kernels.shape
    out = np.full((r * (kh + 1) - 1, c * (kw + 1) - 1), np.nan)
    for i in range(r):
        for j in range(c):
            out[i * (kh + 1):i * (kh + 1) + kh, j * (kw + 1):j * (kw + 1) + kw] = kernels[i, j]
    return out


def _digit(facts, k=0):
    return f"a handwritten {facts['labels'][k]}"


# -- standard convolution -------------------------------------------------------------------------------
def conv2d(facts):
    """Padded input with the window, weight, output, im2col with the column, the dot product."""
    fig, parts = conv2d_static(facts)
    frame = (facts['position'], facts['column_index'], facts['window'])
    conv2d_moving(parts, facts, frame, animated=False)
    return fig


def conv2d_static(facts):
    """Everything of the conv2d figure that does not depend on the output position followed:
    ``(fig, axes by name)``."""
    fig = _figure('conv2d', facts, 7.3)
    pad, stride, dilation = facts['padding'], facts['stride'], facts['dilation']
    parts = {}
    ax = parts['padded'] = _axes(fig, 0.3, 4.0, 2.75, 2.75)
    _image(ax, facts['padded'], 'input', 'padded', numbers=True, size=6)
    h, w = facts['x'].shape
    _box(ax, pad, pad, style.NEUTRAL, w, h, lw=1.0, ls='--')
    _title(ax, f"input x: an 8x8 digit, zero-padded by {pad}", style.INPUT)
    ax.set_xlabel(f"stride {stride}: a window every {stride} pixels\ndilation {dilation}: taps {dilation} "
                  f"pixels apart", fontsize=7.5)
    ax = _axes(fig, 3.85, 5.35, 1.2, 1.2)
    _image(ax, facts['weight'], 'weights', 'weight', signed=True, numbers=True, size=7.5)
    _title(ax, 'weight w (3x3)', style.WEIGHTS)
    ax = parts['output'] = _axes(fig, 5.55, 4.55, 2.2, 2.2)
    ho, wo = facts['y'].shape
    _image(ax, facts['y'], 'output', 'output', numbers=True, size=7.5)
    _title(ax, f"output y = conv2d(x, w), {ho}x{wo}", style.OUTPUT)
    matrix = facts['matrix']
    ax = parts['im2col'] = _axes(fig, 0.85, 1.12, 6.95, 2.25)
    _image(ax, matrix, 'input', 'im2col', numbers=True, size=6)
    ax.set_xticks(range(matrix.shape[1]), [f'{k // wo},{k % wo}' for k in range(matrix.shape[1])], fontsize=6)
    ax.set_yticks(range(9), [f'w[{p},{q}]' for p in range(3) for q in range(3)], fontsize=6)
    ax.tick_params(length=0, pad=1)
    _title(ax, "numpyconv.im2col(x): a column per output position (i,j), a row per kernel point; "
               "y = w.reshape(1, 9) @ columns", style.INPUT)
    labels = ('weight row', 'column', 'product')
    parts['dot'] = [_axes(fig, 1.1, 0.6 - 0.26 * k, 2.4, 0.26) for k in range(3)]
    for ax, label in zip(parts['dot'], labels):
        _bare(ax)
        ax.set_ylabel(label, rotation=0, ha='right', va='center', fontsize=7)
    parts['fig'] = fig
    return fig, parts


def conv2d_moving(parts, facts, frame, animated):
    """The artists of one output position ``frame = (position, column_index, window)``: the window,
    the column, the output cell, the dot product. Returns them (drawn by blitting for the GIF)."""
    (i, j), column_index, window = frame
    artists = [_box(parts['padded'], r, c, animated=animated) for r, c in window]
    rows, cols = zip(*window)
    taps = parts['padded'].scatter(cols, rows, s=0, gid='window', animated=animated)
    artists.append(taps)
    parts['padded'].set_xlim(-0.5, facts['padded'].shape[1] - 0.5)
    parts['padded'].set_ylim(facts['padded'].shape[0] - 0.5, -0.5)
    artists.append(_box(parts['output'], i, j, animated=animated))
    artists.append(_box(parts['im2col'], 0, column_index, height=facts['matrix'].shape[0],
                        gid='column_highlight', animated=animated))
    column = facts['matrix'][:, column_index]
    weight_row = facts['weight'].ravel()
    products = weight_row * column
    rows = ((weight_row, 'weights', 'dot_weight'), (column, 'input', 'dot_column'),
            (products, 'output', 'dot_product'))
    for ax, (values, role, gid) in zip(parts['dot'], rows):
        artists += _image(ax, values[None], role, gid, signed=role != 'input', numbers=True,
                          animated=animated)
    value = float(products.sum())
    artists.append(_text(parts['fig'], (3.75, 0.34), f"column {column_index}: the window of output "
                         f"({i}, {j})\nsum of the products = {value:g} = y[{i}, {j}]", fontsize=9,
                         color=style.OUTPUT, va='center', gid='dot_sum', animated=animated))
    return artists


def conv2d_gif_frames(facts, frames):
    """RGBA frames of the conv2d figure, one per ``(position, column_index, window)``: the static
    part is rendered once and each position's artists are blitted onto it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig, parts = conv2d_static(facts)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    images = []
    for frame in frames:
        canvas.restore_region(background)
        artists = conv2d_moving(parts, facts, frame, animated=True)
        for artist in artists:
            fig.draw_artist(artist)
        images.append(np.asarray(canvas.buffer_rgba()).copy())
        for artist in artists:
            artist.remove()
    return images


# -- the backward pass ---------------------------------------------------------------------------------
def conv2d_backward(facts):
    fig = _figure('conv2d_backward', facts, 6.75)
    pad, s, d = facts['padding'], facts['stride'], facts['dilation']
    (p, q), (i, j) = facts['tap'], facts['position']
    ho, wo = facts['dout'].shape
    ax = _axes(fig, 0.3, 3.85, 1.65, 1.65)
    _image(ax, facts['dout'], 'output', 'dout', signed=True, numbers=True, size=7.5)
    _title(ax, 'dout, the gradient of y', style.OUTPUT)
    ax = _axes(fig, 2.35, 3.32, 2.7, 2.7)
    _image(ax, facts['padded'], 'input', 'padded', numbers=True, size=5.8)
    rows = [p * d + s * a for a in range(ho) for _ in range(wo)]
    cols = [q * d + s * b for _ in range(ho) for b in range(wo)]
    for r, c in zip(rows, cols):
        _box(ax, r, c, style.WEIGHTS, lw=1.4)
    ax.scatter(cols, rows, s=0, gid='tap_grid')
    _title(ax, f"x padded: the {ho * wo} pixels kernel point ({p},{q}) reads", style.INPUT)
    ax = _axes(fig, 5.75, 4.05, 1.45, 1.45)
    _image(ax, facts['dweight'], 'weights', 'dweight', signed=True, numbers=True, size=7.5)
    _box(ax, p, q)
    _title(ax, 'dW', style.WEIGHTS)
    _text(fig, (5.45, 3.75), f"dW[{p},{q}] = \u03a3 dout \u2299 (those pixels)\n= {facts['tap_value']:g}",
          va='top')
    ax = _axes(fig, 0.3, 0.45, 2.45, 2.45)
    _image(ax, facts['scatter_one'], 'input', 'scatter_one', signed=True, numbers=True, size=5.8)
    _box(ax, i * s, j * s, style.NEUTRAL, 2 * d + 1, 2 * d + 1, lw=1.0, ls='--')
    _title(ax, f"dout[{i},{j}] \u00d7 w, placed on window ({i},{j})", style.OUTPUT)
    ax = _axes(fig, 2.95, 0.45, 2.45, 2.45)
    _image(ax, facts['scatter_all'], 'input', 'scatter_all', signed=True, numbers=True, size=5.8)
    h, w = facts['x'].shape
    _box(ax, pad, pad, style.NEUTRAL, w, h, lw=1.2, ls='--')
    _title(ax, f"all {ho * wo} windows' scatters, added", style.OUTPUT)
    ax = _axes(fig, 5.75, 0.65, 2.0, 2.0)
    _image(ax, facts['dx'], 'input', 'dx', signed=True, numbers=True, size=6.5)
    _title(ax, 'dx: the part inside the padding', style.INPUT)
    _arrow(fig, (5.42, 1.67), (5.7, 1.67))
    _text(fig, (0.3, 3.12), "dx: the transposed convolution, each output's gradient scattered back over "
          "its window", fontsize=8, color='#333333')
    _text(fig, (0.3, 6.32), "dW: the correlation of x with dout", fontsize=8, color='#333333')
    _text(fig, (7.7, 0.05), "dW and dx are numpyconv.conv2d_backward's for this dout; the other panels show "
          "how they arise.", ha='right', color='#333333')
    return fig


# -- depthwise, pointwise, separable ---------------------------------------------------------------------
def _cost_bars(fig, facts, x, y, names, labels):
    """Two small bar charts (parameters, multiply-adds) of the named counts."""
    colours = [style.WEIGHTS, style.NEUTRAL]
    for k, (what, index) in enumerate((('parameters', 0), ('multiply-adds', 1))):
        ax = _axes(fig, x, y + (1 - k) * 1.5, 1.2, 0.85)
        _hbars(ax, labels, [facts['counts'][n][index] for n in names], colours, f'bars_{what}_')
        _title(ax, what)


def depthwise(facts):
    fig = _figure('depthwise', facts, 5.05)
    x, weight, y = facts['x'], facts['weight'], facts['y']
    vlim = style.limits(y, True)
    fmt = number_format(weight)
    for c in range(x.shape[0]):
        top = 3.25 - 1.45 * c
        ax = _axes(fig, 0.3, top, 1.25, 1.25)
        _image(ax, x[c], 'input', f'x{c}')
        _title(ax, f"input channel {c}: a {facts['labels'][c]}", style.INPUT)
        ax = _axes(fig, 2.3, top + 0.15, 0.95, 0.95)
        _image(ax, weight[c], 'weights', f'filter{c}', signed=True, numbers=True, size=6.5, fmt=fmt)
        _title(ax, f'filter {c}', style.WEIGHTS)
        ax = _axes(fig, 4.0, top, 1.25, 1.25)
        _image(ax, y[c], 'output', f'y{c}', signed=True, vlim=vlim)
        _title(ax, f'output channel {c}', style.OUTPUT)
        _arrow(fig, (1.62, top + 0.62), (2.25, top + 0.62))
        _arrow(fig, (3.3, top + 0.62), (3.95, top + 0.62))
    _text(fig, (0.3, 0.1), "Output channel c is input channel c convolved with filter c alone: "
          "no arrow crosses, no digit leaks into another channel.")
    _cost_bars(fig, facts, 6.55, 0.95, ['DepthwiseConv2d', 'Conv2d'], ['depthwise', 'standard'])
    _text(fig, (5.75, 4.2), f"cost beside a Conv2d({x.shape[0]}, {x.shape[0]}, 3)", fontsize=8)
    return fig


def pointwise(facts):
    fig = _figure('pointwise', facts, 4.6)
    x, y, (i, j) = facts['x'], facts['y'], facts['pixel']
    for c in range(x.shape[0]):
        ax = _axes(fig, 0.3, 3.0 - 1.35 * c, 1.1, 1.1)
        _image(ax, x[c], 'input', f'x{c}')
        _box(ax, i, j, lw=1.2)
        _title(ax, f"channel {c}: a {facts['labels'][c]}", style.INPUT, size=7.5)
    ax = _axes(fig, 2.05, 1.9, 1.65, 1.1)
    _image(ax, facts['matrix'], 'weights', 'matrix', signed=True, numbers=True, size=7.5)
    _title(ax, f'weight W ({y.shape[0]}x{x.shape[0]})', style.WEIGHTS)
    ax = _axes(fig, 3.95, 1.7, 0.5, 1.5)
    _image(ax, facts['vector'][:, None], 'input', 'vector', numbers=True, size=7)
    _title(ax, f'x[:, {i}, {j}]', style.INPUT, size=7.5)
    _text(fig, (4.63, 2.45), '=', fontsize=14, va='center')
    ax = _axes(fig, 4.9, 1.9, 0.5, 1.1)
    _image(ax, facts['product'][:, None], 'output', 'product', signed=True, numbers=True, size=7)
    _title(ax, f'y[:, {i}, {j}]', style.OUTPUT, size=7.5)
    vlim = style.limits(y, True)
    for o in range(y.shape[0]):
        ax = _axes(fig, 6.15, 2.6 - 1.65 * o, 1.3, 1.3)
        _image(ax, y[o], 'output', f'y{o}', signed=True, vlim=vlim)
        _box(ax, i, j, lw=1.2)
        _title(ax, f'output channel {o}', style.OUTPUT, size=7.5)
    _arrow(fig, (1.5, 2.45), (3.9, 2.45))
    _arrow(fig, (5.5, 2.45), (6.05, 2.45))
    _text(fig, (1.95, 1.3), f"The same W at each of the {x.shape[1] * x.shape[2]} pixels: y[:, i, j] = "
          f"W x[:, i, j].\nEvery output channel mixes all input channels; no neighbour is read.", va='top')
    return fig


def separable(facts):
    fig = _figure('separable', facts, 6.2)
    x, middle, y = facts['x'], facts['middle'], facts['y']
    mid_lim, y_lim = style.limits(middle, True), style.limits(y, True)
    fmt = number_format(facts['dw_weight'])
    for c in range(x.shape[0]):
        top = 4.65 - 1.2 * c
        ax = _axes(fig, 0.3, top, 0.95, 0.95)
        _image(ax, x[c], 'input', f'x{c}')
        ax = _axes(fig, 1.55, top + 0.03, 0.9, 0.9)
        _image(ax, facts['dw_weight'][c], 'weights', f'dw_filter{c}', signed=True, numbers=True, size=5.5,
               fmt=fmt)
        ax = _axes(fig, 2.75, top, 0.95, 0.95)
        _image(ax, middle[c], 'output', f'middle{c}', signed=True, vlim=mid_lim)
        _arrow(fig, (1.27, top + 0.47), (1.52, top + 0.47))
        _arrow(fig, (2.47, top + 0.47), (2.72, top + 0.47))
    for x0, label, colour in ((0.3, 'input channels', style.INPUT), (1.55, 'depthwise 3x3', style.WEIGHTS),
                              (2.75, 'after depthwise', style.OUTPUT)):
        _text(fig, (x0 + 0.47, 5.7), label, ha='center', color=colour)
    ax = _axes(fig, 4.05, 3.35, 1.25, 1.65)
    _image(ax, facts['pw_matrix'], 'weights', 'pw_matrix', signed=True, numbers=True, size=7)
    _title(ax, f'pointwise W ({y.shape[0]}x{x.shape[0]})', style.WEIGHTS)
    _arrow(fig, (3.75, 4.15), (4.0, 4.15))
    _arrow(fig, (5.35, 4.15), (5.6, 4.15))
    for o in range(y.shape[0]):
        ax = _axes(fig, 5.7 + 1.12 * (o % 2), 4.3 - 1.2 * (o // 2), 0.95, 0.95)
        _image(ax, y[o], 'output', f'y{o}', signed=True, vlim=y_lim)
        _title(ax, f'output {o}', style.OUTPUT, size=7.5)
    _separable_bars(fig, facts)
    return fig


def _separable_bars(fig, facts):
    counts = facts['counts']
    typical = [n for n in counts if '->' in n]
    shape = counts[typical[0]][2]
    arrow = '\u2192'
    pairs = [(f"drawn: {facts['x'].shape[0]}{arrow}{facts['y'].shape[0]}, 16x16", 'SeparableConv2d',
              'Conv2d'),
             (f"typical: {typical[0].split()[-1].replace('->', arrow)}, {shape[2]}x{shape[3]}",
              typical[0], typical[1])]
    for k, (what, index) in enumerate((('parameters', 0), ('multiply-adds', 1))):
        ax = _axes(fig, 1.75 + 3.75 * k, 0.25, 1.9, 1.45)
        labels, values = [], []
        for label, sep, std in pairs:
            labels += [f'{label}\nseparable', 'standard']
            values += [100.0 * counts[sep][index] / counts[std][index], 100.0]
        _hbars(ax, labels, values, [style.WEIGHTS, style.NEUTRAL] * 2, f'bars_{what}_', fmt='{:.1f}%')
        _title(ax, f'{what}, % of the standard convolution')


# -- octave -----------------------------------------------------------------------------------------
def octave(facts):
    fig = _figure('octave', facts, 5.95)
    paths = facts['paths']
    big, small = 1.2, 0.6
    high = np.concatenate([paths['h2h'].ravel(), paths['l2h'].ravel(), facts['y_h'].ravel()])
    low = np.concatenate([paths['h2l'].ravel(), paths['l2l'].ravel(), facts['y_l'].ravel()])
    lims = {'h': style.limits(high, True), 'l': style.limits(low, True)}
    ax = _axes(fig, 0.25, 2.45, big, big)
    _image(ax, facts['x'], 'input', 'x')
    _title(ax, f"x: {_digit(facts)}", style.INPUT)
    ax = _axes(fig, 2.0, 3.95, big, big)
    _image(ax, facts['x_h'], 'input', 'x_h', signed=True)
    _title(ax, 'x_h = x \u2212 blur(x), 16x16', style.INPUT)
    ax = _axes(fig, 2.0 + small / 2, 0.85, small, small)
    _image(ax, facts['x_l'], 'input', 'x_l')
    _title(ax, 'x_l = avgpool(blur(x))\n8x8', style.INPUT)
    _arrow(fig, (1.5, 3.35), (1.95, 4.3), 'high', rad=-0.1)
    _arrow(fig, (1.5, 2.75), (2.25, 1.75), 'low', rad=0.1)
    spots = {'h2h': (4.2, 3.95, big, 'H\u2192H: conv'),
             'l2h': (4.2, 2.15, big, 'L\u2192H: conv, upsample x2'),
             'h2l': (4.2 + small / 2, 0.95, small, 'H\u2192L: avgpool, conv'),
             'l2l': (4.2 + small / 2, 0.0, small, 'L\u2192L: conv')}
    sources = {'h': (3.25, 4.55), 'l': (2.95, 1.15)}
    for name, (px, py, size, label) in spots.items():
        ax = _axes(fig, px, py, size, size)
        _image(ax, paths[name], 'output', name, signed=True, vlim=lims[name[-1]])
        _title(ax, label, size=7.5)
        _arrow(fig, sources[name[0]], (px - 0.05, py + size / 2))
    ax = _axes(fig, 6.6, 3.05, big, big)
    _image(ax, facts['y_h'], 'output', 'y_h', signed=True, vlim=lims['h'])
    _title(ax, 'y_h = H\u2192H + L\u2192H', style.OUTPUT)
    ax = _axes(fig, 6.6 + small / 2, 0.5, small, small)
    _image(ax, facts['y_l'], 'output', 'y_l', signed=True, vlim=lims['l'])
    _title(ax, 'y_l = H\u2192L + L\u2192L', style.OUTPUT)
    _arrow(fig, (5.45, 4.55), (6.55, 3.85))
    _arrow(fig, (5.45, 2.75), (6.55, 3.45))
    _arrow(fig, (4.85, 1.25), (6.85, 0.95), rad=0.0)
    _arrow(fig, (4.85, 0.3), (6.85, 0.65), rad=0.0)
    counts = facts['counts']
    oct_macs, conv_macs = counts['OctaveConv2d'][1], counts['Conv2d'][1]
    _text(fig, (0.25, 0.7), f"multiply-adds:\nOctaveConv2d {oct_macs:,}\nConv2d(2, 2, 3) {conv_macs:,}\n"
          f"saved: {100 * (1 - oct_macs / conv_macs):.0f}%", va='center', gid='macs')
    _text(fig, (0.25, 5.5), "Each output adds two paths; the paths into and out of the low part run at half "
          "resolution (a quarter of the positions).")
    return fig


# -- attention over kernels -----------------------------------------------------------------------------
def _attention_bars(ax, attention, gid):
    """Grouped vertical bars: ``attention (2, K)`` for input A (solid) and B (hatched)."""
    k = attention.shape[1]
    for n, (offset, hatch) in enumerate(((-0.2, None), (0.2, '////'))):
        bars = ax.bar(np.arange(k) + offset, attention[n], width=0.38, edgecolor=style.WEIGHTS, hatch=hatch,
                      color=style.WEIGHTS if n == 0 else 'white', label=f'input {"AB"[n]}')
        for kk, bar in enumerate(bars):
            bar.set_gid(f'{gid}_{"AB"[n]}{kk}')
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, f'{attention[n, kk]:.2f}',
                    ha='center', va='bottom', fontsize=5.5, rotation=90)
    ax.set_xticks(range(k), [f'W{kk + 1}' for kk in range(k)], fontsize=7)
    ax.set_ylim(0, 1.25)
    _plain(ax)


def dynamic(facts):
    fig = _figure('dynamic', facts, 6.6)
    for n, name in enumerate('AB'):
        ax = _axes(fig, 0.3 + 1.2 * n, 5.05, 1.0, 1.0)
        _image(ax, facts['images'][n], 'input', f'image_{name}')
        _title(ax, f"input {name}: a {facts['labels'][n]}", style.INPUT)
    _text(fig, (2.8, 5.55), "Each input's attention (from its globally pooled features) weights the K\n"
          "kernels; their weighted sum is the kernel that convolves that input.", va='center')
    rows = (('dynamic', 'DY-CNN: softmax over the K kernels (temperature 1)', 2.55),
            ('condconv', 'CondConv: independent sigmoid routing weights', 0.05))
    for name, label, y0 in rows:
        _dynamic_row(fig, facts, name, label, y0)
    return fig


def _dynamic_row(fig, facts, name, label, y0):
    part = facts[name]
    bank = part['bank'][:, 0]                                              # (K, C_in, 3, 3), C_out = 1
    _text(fig, (0.3, y0 + 2.1), label, fontsize=8.5, fontweight='bold')
    ax = _axes(fig, 0.35, y0, 1.25, 1.7)
    _image(ax, mosaic(bank), 'weights', f'{name}_bank', signed=True)
    ax.set_yticks([1 + 4 * k for k in range(bank.shape[0])], [f'W{k + 1}' for k in range(bank.shape[0])],
                  fontsize=7)
    _title(ax, f'K = {bank.shape[0]} kernels\n(3 input channels each)', style.WEIGHTS, size=7)
    ax = _axes(fig, 2.2, y0 + 0.3, 1.9, 1.35)
    _attention_bars(ax, part['attention'], f'{name}_attention')
    ax.legend(fontsize=6.5, frameon=False, loc='upper right', ncol=2)
    _title(ax, 'attention over the K kernels', style.WEIGHTS)
    kernels = part['kernels'][:, 0]                                        # (2, C_in, 3, 3)
    vlim = style.limits(kernels, True)
    for n, tag in enumerate('AB'):
        ax = _axes(fig, 4.45, y0 + 1.0 - 0.8 * n, 1.5, 0.5)
        _image(ax, mosaic(kernels[n][None]), 'weights', f'{name}_kernel_{tag}', signed=True, vlim=vlim)
        _title(ax, f'aggregated kernel for {tag}', style.WEIGHTS, size=7)
    ax = _axes(fig, 6.3, y0 + 0.6, 1.5, 0.5)
    _image(ax, mosaic((kernels[0] - kernels[1])[None]), 'weights', f'{name}_difference', signed=True)
    diff = np.abs(kernels[0] - kernels[1]).max()
    _title(ax, f'A \u2212 B, own scale\n(largest |difference| {diff:.2g})', style.WEIGHTS, size=7)


def odconv(facts):
    fig = _figure('odconv', facts, 5.35)
    att, bank = facts['attentions'], facts['bank']                        # bank (n, C_out, C_in, 3, 3)
    ax = _axes(fig, 0.3, 3.35, 1.3, 1.3)
    _image(ax, facts['image'], 'input', 'image')
    _title(ax, f"input: {_digit(facts)}", style.INPUT)
    vlim = style.limits(bank, True)
    for k in range(bank.shape[0]):
        ax = _axes(fig, 2.1 + 1.45 * k, 3.3, 1.0, 1.4)
        _image(ax, mosaic(bank[k]), 'weights', f'bank{k}', signed=True, vlim=vlim)
        _title(ax, f'W{k + 1}', style.WEIGHTS)
    _text(fig, (2.1, 4.95), f"the {bank.shape[0]} kernels (rows: {bank.shape[1]} output channels, columns: "
          f"{bank.shape[2]} input channels)", color=style.WEIGHTS)
    ax = _axes(fig, 2.1, 2.45, 5.35, 0.55)
    bars = ax.bar(1.45 * np.arange(bank.shape[0]) + 0.5, att['kernel'], width=0.6, color=style.WEIGHTS)
    for k, bar in enumerate(bars):
        bar.set_gid(f'attention_kernel{k}')
        ax.text(bar.get_x() + 0.3, bar.get_height(), f"{att['kernel'][k]:.2f}", ha='center', va='bottom',
                fontsize=6.5)
    ax.set_xlim(0, 5.35)
    ax.set_ylim(0, 1.3)
    ax.set_xticks([])
    ax.set_ylabel('kernel attention\n(softmax)', fontsize=7, rotation=0, ha='right', va='center')
    _plain(ax)
    ax = _axes(fig, 0.35, 0.3, 1.05, 1.05)
    _image(ax, att['spatial'], 'weights', 'attention_spatial', numbers=True, size=6.5, signed=False,
           vlim=(0, 1))
    _title(ax, 'spatial attention\n(one per kernel position)', style.WEIGHTS, size=7)
    for gid, values, x0, label in (('attention_channel', att['channel'], 1.95, 'input-channel attention'),
                                   ('attention_filter', att['filter'], 3.55, 'output-channel attention')):
        ax = _axes(fig, x0, 0.3, 1.2, 1.05)
        _vbars(ax, values, gid, [str(v) for v in range(len(values))])
        _title(ax, label, style.WEIGHTS, size=7)
    ax = _axes(fig, 5.15, 0.15, 1.15, 1.5)
    _image(ax, mosaic(facts['kernel']), 'weights', 'kernel', signed=True)
    _title(ax, 'assembled kernel', style.WEIGHTS)
    _text(fig, (6.45, 0.9), "W[o, c] = filter[o]\n \u00d7 channel[c]\n \u00d7 spatial\n"
          " \u2299 \u03a3\u1d62 kernel[i] W\u1d62[o, c]", fontsize=7, va='center')
    _text(fig, (0.3, 1.95), "The attentions of this one input, all from its pooled features (sigmoids, "
          "but a softmax over the kernels);\nx convolved with the assembled kernel is the layer's output.",
          va='bottom')
    return fig


def kernel_warehouse(facts):
    fig = _figure('kernel_warehouse', facts, 5.3)
    cells, owner, attention = facts['cells'], facts['owner'], facts['attention']
    m, cell_count = attention.shape
    step = 7.2 / cell_count
    vlim = style.limits(cells, True)
    _text(fig, (0.6, 4.85), f"One warehouse of {cell_count} cells (3x3 kernels, 1 input x 1 output channel), "
          f"shared by two KWConv2d(2, 2, 3) layers", fontsize=8)
    for k in range(cell_count):
        ax = _axes(fig, 0.6 + step * k + 0.12, 3.68, step - 0.24, step - 0.24)
        _image(ax, cells[k], 'weights', f'cell{k}', signed=True, vlim=vlim)
        _title(ax, f'cell {k}', size=7.5)
        ax.set_xlabel(f'layer {owner[k] + 1} starts here', fontsize=6, color=style.NEUTRAL, labelpad=2)
    ax = _axes(fig, 0.6, 1.75, 7.2, 1.5)
    _image(ax, attention, 'weights', 'attention', signed=True, numbers=True, size=7)
    ax.set_aspect('auto')
    ax.set_yticks(range(m), [f'W[{r // 2},{r % 2}]' for r in range(m)], fontsize=7)
    ax.tick_params(length=0)
    _title(ax, "layer 1's attention for this input: a row per kernel slice, a column per cell "
               "(signed, normalised by the sum of |values|)", style.WEIGHTS)
    ax = _axes(fig, 0.6, 0.2, 1.1, 1.1)
    _image(ax, facts['image'], 'input', 'image')
    _title(ax, f'input: {_digit(facts)}', style.INPUT, size=7.5)
    ax = _axes(fig, 2.45, 0.15, 1.2, 1.2)
    _image(ax, mosaic(facts['kernel']), 'weights', 'kernel', signed=True)
    _title(ax, 'layer 1 kernel (2 out x 2 in)', style.WEIGHTS, size=7.5)
    _text(fig, (3.95, 0.75), "W[o, i] = \u03a3\u2c7c attention[W[o, i], j] \u00b7 cell j\n"
          "Layer 2 mixes the same cells with its own attention.", va='center')
    return fig


# -- deformable --------------------------------------------------------------------------------------------
VERSIONS = (('v1', 'DCNv1: offsets only, every weight 1'),
            ('v2', 'DCNv2: modulation in (0, 1) = marker area'),
            ('v3', "DCNv3: softmax over each group's 9 points"),
            ('v4', 'DCNv4: unnormalised weights (hollow: negative)'))
GROUP_MARKERS = ('o', '^')


def deformable_points(facts, version):
    """``(points (M, 2) as (x, y), weights (M,), grid (M, 2), group (M,))`` drawn for a version: for
    each drawn output position, each group, each point (row-major), in that order."""
    part = facts[version]
    groups, points = part['locations'].shape[3:5]
    sampled = np.concatenate([part['locations'][0, i, j].reshape(-1, 2) for i, j in facts['positions']])
    weights = np.concatenate([part['weights'][0, i, j].reshape(-1) for i, j in facts['positions']])
    grid = np.concatenate([part['grid'][0, i, j].reshape(-1, 2) for i, j in facts['positions']])
    group = np.tile(np.repeat(np.arange(groups), points), len(facts['positions']))
    return sampled, weights, grid, group


def marker_area(version, weights):
    """Marker areas (points^2) for the sampling weights of a version."""
    scale = {'v1': 26.0, 'v2': 60.0, 'v3': 9 * 26.0, 'v4': 45.0}[version]
    return scale * np.abs(weights)


def deformable(facts):
    fig = _figure('deformable', facts, 8.3)
    drawn = np.concatenate([deformable_points(facts, v)[0] for v, _ in VERSIONS] +
                           [deformable_points(facts, v)[2] for v, _ in VERSIONS])
    view = (drawn.min(axis=0) - 1.2, drawn.max(axis=0) + 1.2)            # one region for all four
    for k, (version, label) in enumerate(VERSIONS):
        ax = _axes(fig, 0.3 + 3.95 * (k % 2), 4.2 - 3.95 * (k // 2), 3.5, 3.5)
        _deformable_panel(ax, facts, version, view)
        _title(ax, f"{label}\n{facts[version]['layer']}, op '{facts[version]['op']}'")
    _deformable_legend(fig)
    return fig


def _deformable_panel(ax, facts, version, view):
    image = facts['image']
    ax.imshow(image, cmap=style.colour_map('input', False), vmin=0, vmax=16, alpha=0.55)
    points, weights, grid, group = deformable_points(facts, version)
    for (x0, y0), (x1, y1) in zip(grid, points):
        ax.plot([x0, x1], [y0, y1], color=style.NEUTRAL, lw=0.6, zorder=2)
    ax.scatter(grid[:, 0], grid[:, 1], s=14, facecolors='none', edgecolors=style.NEUTRAL, lw=0.8, zorder=3,
               gid=f'{version}_grid')
    area = marker_area(version, weights)
    for g in np.unique(group):
        sel = group == g
        faces = [style.WEIGHTS if w >= 0 else (1.0, 1.0, 1.0, 0.0) for w in weights[sel]]
        ax.scatter(points[sel, 0], points[sel, 1], s=area[sel], marker=GROUP_MARKERS[g], facecolors=faces,
                   edgecolors=style.WEIGHTS, lw=0.9, zorder=4, alpha=0.9, gid=f'{version}_points_group{g}')
    rows, cols = zip(*facts['positions'])
    ax.scatter(cols, rows, s=110, marker='*', color=style.OUTPUT, edgecolors='white', lw=0.6, zorder=5,
               gid=f'{version}_positions')
    (x0, y0), (x1, y1) = view
    side = max(x1 - x0, y1 - y0)                                          # a square region
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ax.set_xlim(cx - side / 2, cx + side / 2)
    ax.set_ylim(cy + side / 2, cy - side / 2)
    ax.tick_params(labelsize=6, length=2)
    if group.max() > 0:
        ax.text(0.02, 0.02, 'group 0: \u25cb   group 1: \u25b3', transform=ax.transAxes, fontsize=7,
                color='#333333')


def _deformable_legend(fig):
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], ls='', marker='*', color=style.OUTPUT, ms=10, label='output pixel'),
               Line2D([], [], ls='', marker='o', mfc='none', mec=style.NEUTRAL, label='regular 3x3 grid'),
               Line2D([], [], color=style.NEUTRAL, lw=0.8, label='offset'),
               Line2D([], [], ls='', marker='o', color=style.WEIGHTS,
                      label='sampling point (area ~ |weight|)')]
    fig.legend(handles=handles, loc='center', ncol=4, frameon=False, fontsize=7.5,
               bbox_to_anchor=(0.5, _inches(fig, 0, 0.05)[1]))


# -- involution --------------------------------------------------------------------------------------------
def involution(facts):
    fig = _figure('involution', facts, 4.1)
    ax = _axes(fig, 0.3, 0.3, 2.7, 2.7)
    _image(ax, facts['image'], 'input', 'image')
    rows, cols = zip(*facts['positions'])
    ax.scatter(cols, rows, s=150, facecolors='none', edgecolors=style.HIGHLIGHT, lw=1.5, gid='positions',
               zorder=3)
    for k, (r, c) in enumerate(facts['positions']):
        ax.text(c + 0.9, r - 0.9, str(k + 1), color=style.HIGHLIGHT, fontsize=9, fontweight='bold')
    _title(ax, f"input: {_digit(facts)}\n(its stem features feed the layer)", style.INPUT)
    kernels = facts['kernels']
    vlim, fmt = style.limits(kernels, True), number_format(kernels)
    for k in range(len(kernels)):
        ax = _axes(fig, 3.45 + 1.15 * k, 2.0, 1.0, 1.0)
        _image(ax, kernels[k], 'weights', f'kernel{k}', signed=True, numbers=True, size=6, vlim=vlim, fmt=fmt)
        _title(ax, f'at {k + 1}: {facts["positions"][k]}', size=7)
        ax = _axes(fig, 3.45 + 1.15 * k, 0.3, 1.0, 1.0)
        _image(ax, facts['conv_kernel'], 'weights', f'conv_kernel{k}', signed=True, numbers=True, size=5.5)
        _title(ax, f'at {k + 1}', size=7)
    _text(fig, (3.45, 3.35), "Involution2d: the kernel generated at each position\n(one group: shared by "
          "its 8 channels; same colour scale)", color=style.WEIGHTS, va='bottom')
    _text(fig, (3.45, 1.5), "Conv2d: one kernel everywhere (input 0 \u2192 output 0 of its 8x8)",
          color=style.WEIGHTS)
    return fig


DRAW = {'conv2d': conv2d, 'conv2d_backward': conv2d_backward, 'depthwise': depthwise,
        'pointwise': pointwise, 'separable': separable, 'octave': octave, 'dynamic': dynamic,
        'odconv': odconv, 'kernel_warehouse': kernel_warehouse, 'deformable': deformable,
        'involution': involution}
