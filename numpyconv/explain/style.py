"""The figures' common style: one colour per role, colour maps, sizes, deterministic saving.

Every figure of :mod:`numpyconv.explain` draws inputs in :data:`INPUT` (blue), weights, kernels,
attentions and sampling weights in :data:`WEIGHTS` (orange) and outputs and gradients arriving
from the output in :data:`OUTPUT` (green); negative values are :data:`NEGATIVE` (purple) in every
signed colour map. Figures are :data:`WIDTH` inches wide at :data:`DPI`: 800 pixels, the width of
a README. matplotlib is imported by the functions that need it, so this module imports without it.
"""
import numpy as np

INPUT = '#2f6db5'
WEIGHTS = '#e07b00'
OUTPUT = '#1e9646'
NEGATIVE = '#7b3294'
NEUTRAL = '#8c8c8c'        # regular grids, padding, guide lines
HIGHLIGHT = '#d62728'      # the one window, column or position a figure follows

WIDTH = 8.0                # inches; at DPI 100: 800 pixels
DPI = 100
RC = {'font.family': 'DejaVu Sans', 'font.size': 9, 'axes.titlesize': 9.5, 'axes.labelsize': 9,
      'xtick.labelsize': 8, 'ytick.labelsize': 8, 'legend.fontsize': 8, 'figure.titlesize': 11,
      'svg.hashsalt': 'numpyconv', 'path.simplify': False, 'image.interpolation': 'nearest',
      'image.resample': False}


def rc_context():
    """A ``matplotlib.rc_context`` with :data:`RC` (global settings are left alone)."""
    import matplotlib
    return matplotlib.rc_context(RC)


def colour_map(role, signed):
    """The colour map of a role (``'input'``, ``'weights'``, ``'output'``): white to the role's
    colour, or, when ``signed``, :data:`NEGATIVE` through white to the role's colour."""
    from matplotlib.colors import LinearSegmentedColormap
    colour = {'input': INPUT, 'weights': WEIGHTS, 'output': OUTPUT}[role]
    stops = [NEGATIVE, '#ffffff', colour] if signed else ['#ffffff', colour]
    return LinearSegmentedColormap.from_list(f'{role}{"_signed" if signed else ""}', stops)


def colour_of(role):
    return {'input': INPUT, 'weights': WEIGHTS, 'output': OUTPUT}[role]


def limits(values, signed):
    """``(vmin, vmax)``: symmetric about 0 when ``signed``, from 0 otherwise (never empty)."""
    values = np.asarray(values, dtype=float)
    top = float(np.max(np.abs(values))) if values.size else 1.0
    top = top if top > 0 else 1.0
    return (-top, top) if signed else (0.0, top)


def new_figure(height, bottom=0.0):
    """A pyplot-free ``matplotlib.figure.Figure`` :data:`WIDTH` wide and ``height + bottom`` inches
    high; ``bottom`` inches at the foot are kept free (for the counts), and ``fig.layout_bottom``
    records them for the placing helpers."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(WIDTH, height + bottom), dpi=DPI)
    fig.layout_bottom = bottom
    return fig


def save(fig, path):
    """Write ``fig`` as PNG without a ``Software`` entry, so equal drawings give equal bytes."""
    fig.savefig(path, dpi=DPI, metadata={'Software': None})
    return path


def rgba_frame(fig):
    """``fig`` rendered by Agg: an ``(H, W, 4)`` uint8 array (a GIF frame)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()
