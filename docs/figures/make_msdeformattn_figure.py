"""Draw docs/figures/msdeformattn_sampling.png: where MSDeformAttn samples, level by level.

A real ``numpyconv.MSDeformAttn`` (d_model 64, 4 levels, 8 heads, 4 points) with the official
initialisation, its offset weights then perturbed (so that the offsets depend on the query, as after
training), attends from two queries; ``layer.sampling_locations`` gives every point in the pixels of
its level. One panel per level of the feature pyramid of a 256x256 image (strides 8, 16, 32, 64):
pixel grid, the queries' reference point (cross), the points of each head (one colour per head,
area proportional to the attention weight), the initial ring of offsets (grey dots).

    python docs/figures/make_msdeformattn_figure.py
"""
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import numpyconv as nc  # noqa: E402

OUT = Path(__file__).resolve().parent / 'msdeformattn_sampling.png'
SHAPES = np.array([[32, 32], [16, 16], [8, 8], [4, 4]])                 # 256x256 at strides 8..64
REFERENCE = [(0.30, 0.35), (0.72, 0.68)]                                 # two queries, normalised (x, y)


def main():
    rng = np.random.default_rng(0)
    layer = nc.MSDeformAttn(64, n_levels=4, n_heads=8, n_points=4, dtype=np.float64, rng=0)
    initial = nc.MSDeformAttn(64, n_levels=4, n_heads=8, n_points=4, dtype=np.float64, rng=0)
    layer.params['sampling_offsets.weight'][...] = 0.25 * rng.standard_normal((256, 64))
    layer.params['attention_weights.weight'][...] = 0.3 * rng.standard_normal((128, 64))
    n_q = len(REFERENCE)
    query = rng.standard_normal((1, n_q, 64))
    ref = np.broadcast_to(np.array(REFERENCE)[None, :, None, :], (1, n_q, 4, 2)).copy()
    sizes = SHAPES.prod(axis=1)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = rng.standard_normal((1, int(sizes.sum()), 64))
    loc, attn = layer.sampling_locations(query, ref, flat, SHAPES, starts)   # (1, Lq, M, L, P, 2)
    ring, _ = initial.sampling_locations(query, ref, flat, SHAPES, starts)
    colours = plt.cm.tab10([0, 1, 2, 3, 4, 5, 6, 8])                       # no grey: the ring is grey
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for lvl, ax in enumerate(axes):
        h, w = SHAPES[lvl]
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_aspect('equal')
        ax.set_xticks(np.arange(-0.5, w, max(1, w // 8)), minor=False)
        ax.set_yticks(np.arange(-0.5, h, max(1, h // 8)), minor=False)
        ax.tick_params(labelbottom=False, labelleft=False, length=0)
        ax.grid(True, color='0.85', linewidth=0.6)
        for q in range(n_q):
            ax.scatter(ring[0, q, :, lvl, :, 0], ring[0, q, :, lvl, :, 1], s=6, color='0.55', zorder=2)
            for m in range(8):
                ax.scatter(loc[0, q, m, lvl, :, 0], loc[0, q, m, lvl, :, 1],
                           s=600 * attn[0, q, m, lvl], color=colours[m], alpha=0.75, linewidths=0,
                           zorder=3)
            rx, ry = REFERENCE[q][0] * w - 0.5, REFERENCE[q][1] * h - 0.5
            ax.plot(rx, ry, 'k+', markersize=14, markeredgewidth=2, zorder=4)
        ax.set_title(f'level {lvl}: {h}x{w} (stride {8 * 2 ** lvl})')
    fig.suptitle('MSDeformAttn sampling points of two queries on the 4 levels (colour: head, '
                 'area: attention weight; grey: initial ring of offsets; +: reference point)',
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(OUT, dpi=110)
    print(f'wrote {OUT}')


if __name__ == '__main__':
    main()
