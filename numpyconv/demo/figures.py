"""The demo's figures (PNG, matplotlib's Agg backend; matplotlib is imported lazily).

* ``results.png``: test accuracy, multiply-adds and time per epoch of every technique (bars: the
  mean over the seeds; error bars: min-max; dots: the seeds);
* ``training_curves.png``: training loss and test accuracy per epoch, all techniques (lines: the
  mean over the seeds; bands: min-max);
* ``deformable_sampling.png``: where DCNv1-v4 sample, drawn over a test digit;
* ``involution_kernels.png``: the kernels involution generates at a few positions;
* ``octave_maps.png``: the high- and low-frequency maps of the first octave block;
* ``kernel_attention.png``: DY-CNN / CondConv / ODConv weights over their kernels, whole test set.

The four technique figures show the networks trained with the first seed.

Coordinates: the technique layers work on feature grids of the 32x32 input. Block1's 16x16 grid
comes from the stride-2 stem (grid pixel ``r`` is centred on input pixel ``2r``), block2's 8x8 grid
from a further 2x2 average pool (centred on input pixel ``4r + 1``).
"""
import numpy as np

from .models import involution_kernels, kernel_attention, technique_label

DEFORMABLE = ('dcnv1', 'dcnv2', 'dcnv3', 'dcnv4')
ATTENTION = ('dynamic', 'condconv', 'odconv')
GRID_TO_INPUT = ((2.0, 0.0), (4.0, 1.0))   # block1, block2: input = scale * grid + shift
DPI = 110


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    fig.savefig(path, dpi=DPI, bbox_inches='tight')
    _pyplot().close(fig)
    return path


def _colours(n):
    cmap = _pyplot().get_cmap('tab20' if n > 10 else 'tab10')
    return [cmap(i % cmap.N) for i in range(n)]


# -- results ----------------------------------------------------------------------------------------
def results_chart(summary, path):
    """Three bar panels sharing the technique axis: test accuracy, MMACs per image, s per epoch.

    ``summary``: one row per technique (``label``, ``macs`` and, for ``test_acc`` and
    ``seconds_per_epoch``, ``dict(mean, std, min, max, values)`` over the seeds). Bars show the mean;
    with several seeds, error bars the min-max and dots every seed.
    """
    plt = _pyplot()
    labels = [r['label'] for r in summary]
    panels = [('test accuracy (%)', [_scaled(r['test_acc'], 100) for r in summary], '{:.1f}'),
              ('multiply-adds per image (M)', [_constant(r['macs'] / 1e6) for r in summary], '{:.2f}'),
              ('training time per epoch (s)', [r['seconds_per_epoch'] for r in summary], '{:.1f}')]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(summary) + 1.6), sharey=True)
    y = np.arange(len(summary))
    for ax, (title, stats, fmt), colour in zip(axes, panels, ('tab:blue', 'tab:orange', 'tab:green')):
        _spread_bars(ax, y, stats, fmt, colour)
        ax.set_title(title)
        top = max([s['max'] for s in stats] + [1e-9])
        ax.set_xlim(0, 112 if title.startswith('test') else top * 1.3)
        ax.grid(axis='x', alpha=0.3)
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    note = _seeds_note([len(r['test_acc']['values']) for r in summary], 'error bars: min-max, dots: seeds')
    fig.suptitle('numpyconv demo: one template network, the technique swapped in its two blocks' + note)
    fig.tight_layout()
    return _save(fig, path)


def _constant(value):
    return dict(mean=value, std=None, min=value, max=value, values=[value])


def _scaled(stats, factor):
    return dict(mean=factor * stats['mean'], std=None if stats['std'] is None else factor * stats['std'],
                min=factor * stats['min'], max=factor * stats['max'],
                values=[factor * v for v in stats['values']])


def _seeds_note(counts, what):
    """``'; mean of 3 seeds, <what>'`` (``'1-3 seeds'`` when they differ); ``''`` for single runs."""
    low, high = min(counts, default=1), max(counts, default=1)
    if high == 1:
        return ''
    return f"; mean of {low if low == high else f'{low}-{high}'} seeds, {what}"


def _spread_bars(ax, y, stats, fmt, colour):
    """Horizontal bars at the means; min-max error bars and per-seed dots where there are several."""
    means = [s['mean'] for s in stats]
    ax.barh(y, means, color=colour, alpha=0.85)
    several = [i for i, s in enumerate(stats) if len(s['values']) > 1]
    if several:
        low = [max(means[i] - stats[i]['min'], 0.0) for i in several]       # >= 0 despite rounding
        high = [max(stats[i]['max'] - means[i], 0.0) for i in several]
        ax.errorbar([means[i] for i in several], y[several], xerr=[low, high], fmt='none',
                    ecolor='black', elinewidth=1, capsize=3)
        for i in several:
            ax.scatter(stats[i]['values'], np.full(len(stats[i]['values']), y[i]), s=10, color='black',
                       zorder=3)
    for yi, s in zip(y, stats):
        ax.text(s['max'], yi, ' ' + fmt.format(s['mean']), va='center', fontsize=8)


def training_curves(groups, path):
    """Training loss and test accuracy per epoch, every technique on the same two axes.

    ``groups``: ``(label, histories)`` per technique, one history (a list of per-epoch dicts with
    ``epoch``, ``train_loss``, ``test_acc``) per seed. Lines show the mean over the seeds, bands the
    min-max.
    """
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (label, histories), colour in zip(groups, _colours(len(groups))):
        epochs = [h['epoch'] for h in histories[0]]
        for ax, key, scale in ((ax_loss, 'train_loss', 1), (ax_acc, 'test_acc', 100)):
            values = scale * np.array([[h[key] for h in history] for history in histories])  # (seeds, E)
            ax.plot(epochs, values.mean(axis=0), color=colour, marker='o', markersize=3, label=label)
            if len(histories) > 1:
                ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.15,
                                linewidth=0)
    ax_loss.set(xlabel='epoch', ylabel='training loss (cross-entropy)', yscale='log')
    ax_acc.set(xlabel='epoch', ylabel='test accuracy (%)', ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8, loc='lower right', ncol=2)
    note = _seeds_note([len(h) for _, h in groups], 'bands: min-max over the seeds')
    if note:
        fig.suptitle(note[2:].capitalize(), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# -- helpers for the technique figures -----------------------------------------------------------
def _forward_read(model, x, read):
    """Eval-mode forward of the batch ``x``; ``[read(block1 layer), read(block2 layer)]``."""
    model.eval()
    model(x)
    return [read(layer) for layer in model.technique_layers()]


def _forward_collect(model, x, read, batch_size=256):
    """:func:`_forward_read` over ``x`` in batches, each block's arrays concatenated."""
    parts = [_forward_read(model, x[i:i + batch_size], read) for i in range(0, len(x), batch_size)]
    return [np.concatenate(block) for block in zip(*parts)]


def _grid_to_input(block, coords):
    scale, shift = GRID_TO_INPUT[block]
    return scale * np.asarray(coords, dtype=float) + shift


def ink_positions(image, grid, count=3, min_distance=3):
    """``count`` grid positions on the digit's strokes, brightest first, pairwise apart."""
    side = image.shape[0] // grid
    cells = image[:grid * side, :grid * side].reshape(grid, side, grid, side).mean(axis=(1, 3))
    chosen = []
    for flat in np.argsort(cells, axis=None)[::-1]:
        r, c = divmod(int(flat), grid)
        if 1 <= r < grid - 1 and 1 <= c < grid - 1 and \
                all(max(abs(r - a), abs(c - b)) >= min_distance for a, b in chosen):
            chosen.append((r, c))
        if len(chosen) == count:
            break
    return chosen


def _show_digit(ax, image):
    ax.imshow(image, cmap='gray_r', interpolation='nearest')
    ax.set_xticks([])
    ax.set_yticks([])


# -- deformable sampling ------------------------------------------------------------------------
def deformable_sampling(models, image, path):
    """Rows: DCNv1..v4 present in ``models``; columns: block1, block2. At a few positions on the
    digit (one colour each): the regular 3x3 window (hollow squares), the centre (+) and the
    learned sampling points joined to it (one marker shape per group, area proportional to the
    modulation weight; DCNv1 has none, so equal areas)."""
    plt = _pyplot()
    names = [n for n in DEFORMABLE if n in models]
    fig, axes = plt.subplots(len(names), 2, figsize=(7.5, 3.7 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        blocks = sampling_points(models[name], image[None])
        for block, ax in enumerate(row):
            locations, weights = blocks[block]
            _draw_sampling(ax, image[0], block, locations[0], weights[0])
            ax.set_title(f"{technique_label(name)}, block{block + 1} "
                         f"({locations.shape[1]}x{locations.shape[2]} grid)", fontsize=10)
    fig.suptitle('Where the deformable convolutions sample (trained networks, one test digit)',
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def sampling_points(model, x):
    """``[(locations, weights) of block1, (locations, weights) of block2]`` of a deformable
    :class:`~numpyconv.demo.models.DemoNet` on ``x (N, 1, 32, 32)`` in eval mode: each layer's
    ``sampling_locations`` of its block input, i.e. :func:`numpyconv.sampling_locations` for
    ``'deform_conv2d'``, ``'dcnv3'`` or ``'dcnv4'``. ``locations (N, Ho, Wo, G, P, 2)`` are pixel
    ``(x, y)`` on the block's grid, ``weights (N, Ho, Wo, G, P)`` the modulation (ones for DCNv1)."""
    return [layer.sampling_locations(inp) for layer, inp in zip(model.technique_layers(),
                                                                model.block_inputs(x))]


def _draw_sampling(ax, image, block, locations, weights):
    _show_digit(ax, image)
    colours = _colours(10)
    markers = 'o^sDv<>p'
    window = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=float)
    for k, (r, c) in enumerate(ink_positions(image, locations.shape[0], count=3 - block)):
        colour = colours[(k + 3) % 10]
        regular = _grid_to_input(block, np.array([c, r]) + window)           # (9, 2) as (x, y)
        ax.scatter(regular[:, 0], regular[:, 1], marker='s', s=30, facecolors='none',
                   edgecolors=colour, linewidths=0.8, alpha=0.6)
        centre = _grid_to_input(block, (c, r))
        for g in range(locations.shape[2]):
            points = _grid_to_input(block, locations[r, c, g])              # (P, 2) as (x, y)
            for p in points:
                ax.plot([centre[0], p[0]], [centre[1], p[1]], color=colour, linewidth=0.6, alpha=0.5)
            size = 90 * np.abs(weights[r, c, g]) / max(np.abs(weights[r, c, g]).max(), 1e-12)
            ax.scatter(points[:, 0], points[:, 1], s=size + 6, color=colour,
                       marker=markers[g % len(markers)], edgecolors='white', linewidths=0.4,
                       zorder=3)
        ax.plot(centre[0], centre[1], marker='+', color='black', markersize=10, zorder=4)
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)


# -- involution -----------------------------------------------------------------------------------
def involution_figure(model, image, path, count=4):
    """The digit with ``count`` block1 positions marked, and the 3x3 kernel of every group that
    involution generated at each position (one row per position)."""
    plt = _pyplot()
    kernels = _forward_read(model, image[None], involution_kernels)[0][0]   # (G, kh, kw, Ho, Wo)
    groups = kernels.shape[0]
    positions = ink_positions(image[0], kernels.shape[-1], count, min_distance=2)
    fig = plt.figure(figsize=(3.4 + 1.3 * groups, 1.2 * len(positions) + 0.8), layout='constrained')
    grid = fig.add_gridspec(len(positions), groups + 1, width_ratios=[3] + [1] * groups)
    ax_digit = fig.add_subplot(grid[:, 0])
    _show_digit(ax_digit, image[0])
    ax_digit.set_title('test digit (block1 positions)', fontsize=9)
    limit = max(max(np.abs(kernels[..., r, c]).max() for r, c in positions), 1e-12)
    colours = _colours(max(len(positions), 2))
    kernel_axes = []
    for k, (r, c) in enumerate(positions):
        y, x = _grid_to_input(0, (r, c))
        ax_digit.plot(x, y, 'o', color=colours[k], markersize=9, markeredgecolor='white')
        ax_digit.text(x + 1, y - 1, str(k + 1), color=colours[k], fontsize=10, weight='bold')
        for g in range(groups):
            ax = fig.add_subplot(grid[k, 1 + g])
            kernel_axes.append(ax)
            im = ax.imshow(kernels[g, :, :, r, c], cmap='RdBu_r', vmin=-limit, vmax=limit)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(f'group {g + 1}', fontsize=9)
            if g == 0:
                ax.set_ylabel(f'position {k + 1}', color=colours[k], fontsize=9)
    fig.colorbar(im, ax=kernel_axes, shrink=0.8, label='kernel weight')
    fig.suptitle('Involution: a different 3x3 kernel at every position (block1)', fontsize=10)
    return _save(fig, path)


# -- octave -------------------------------------------------------------------------------------------
def octave_figure(model, image, path, channels=6):
    """Block1 of the octave network on one digit: the most active high-frequency maps (16x16)
    and low-frequency maps (8x8)."""
    plt = _pyplot()
    model.eval()
    high, low = model.block1(model.stem(image[None]))
    fig, axes = plt.subplots(2, channels + 1, figsize=(1.6 * (channels + 1), 4.0))
    _show_digit(axes[0, 0], image[0])
    axes[0, 0].set_title('input 32x32', fontsize=9)
    axes[1, 0].axis('off')
    for row, (name, maps) in enumerate((('high', high[0]), ('low', low[0]))):
        strongest = np.argsort(np.abs(maps).mean(axis=(1, 2)))[::-1][:channels]
        for ax, ch in zip(axes[row, 1:], strongest):
            ax.imshow(maps[ch], cmap='magma', interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f'{name} ch {ch} ({maps.shape[1]}x{maps.shape[2]})', fontsize=8)
    fig.suptitle('Octave convolution, block1: high-frequency part at full resolution, '
                 'low-frequency part at half', fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# -- attention over kernels ---------------------------------------------------------------------------
def attention_figure(models, x, y, path):
    """For DY-CNN, CondConv and ODConv (rows) and both blocks: the weight of every kernel for
    every test image, images sorted by class (left), and the mean per class (right)."""
    plt = _pyplot()
    names = [n for n in ATTENTION if n in models]
    order = np.argsort(y, kind='stable')
    fig, axes = plt.subplots(len(names), 4, figsize=(13, 3.2 * len(names)), squeeze=False,
                             gridspec_kw=dict(width_ratios=[1.3, 1, 1.3, 1]))
    for row, name in zip(axes, names):
        blocks = _forward_collect(models[name], x, kernel_attention)       # (N, K) per block
        for block, attention in enumerate(blocks):
            ax_all, ax_mean = row[2 * block], row[2 * block + 1]
            kernels = attention.shape[1]
            im = ax_all.imshow(attention[order], aspect='auto', cmap='viridis',
                               interpolation='nearest')
            boundaries = np.flatnonzero(np.diff(y[order])) + 0.5
            ax_all.hlines(boundaries, -0.5, kernels - 0.5, colors='white', linewidths=0.5)
            ax_all.set(xticks=range(kernels), xlabel='kernel', ylabel='test image (sorted by class)',
                       title=f'{technique_label(name)}, block{block + 1}')
            fig.colorbar(im, ax=ax_all, shrink=0.8)
            means = np.stack([attention[y == c].mean(axis=0) if np.any(y == c)
                              else np.full(kernels, np.nan) for c in range(10)])
            im = ax_mean.imshow(means, aspect='auto', cmap='viridis', interpolation='nearest')
            ax_mean.set(xticks=range(kernels), yticks=range(10), xlabel='kernel', ylabel='class',
                        title='mean per class')
            fig.colorbar(im, ax=ax_mean, shrink=0.8)
    fig.suptitle('Weights over the kernel bank across the test set '
                 '(DY-CNN, ODConv: softmax; CondConv: sigmoid routing)', fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
