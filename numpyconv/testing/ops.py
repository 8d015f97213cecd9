"""The op table of the conformance fuzzer: one :class:`OpSpec` entry per numpyconv op.

Everything op-specific lives in an entry, as data; the fuzzer (``conformance.py``), the shrinker and
the hypothesis strategies (``strategies.py``) only read it. A case is described by a *geometry*: a
flat dict of small values (batch ``n``, channels, spatial size ``h``/``w``, kernel ``kh``/``kw``,
stride ``sh``/``sw``, padding ``ph``/``pw``, dilation ``dh``/``dw``, flags and *value modes* such as
``offsets='border'``). An entry gives

* ``base``: a small valid geometry; every edge case is ``base`` updated by a few fields;
* ``draw(d)``: a random geometry, ``d`` a :class:`Draw` (NumPy's generator or hypothesis);
* ``build(geometry, rng)``: the forward's arguments by name (float64 arrays, int64 index arrays),
  the array values drawn from ``rng`` as the value modes say;
* ``edge_cases``: the geometries that break real ports (:class:`EdgeCase`: label, changes, why);
* ``shrink``: the moves of the shrinker, in order (:class:`Toward`: a number towards its simplest
  value; :class:`Each`: every entry of a tuple so; :class:`Simpler`: a mode towards the first
  entries of its list);
* ``params``: the forward's parameters (the API signature; the entry is active when
  ``numpyconv.<name>_forward`` exists and takes them), ``arrays``: its array parameters in
  positional order (one gradient each), ``outputs``: the names of its outputs.

Adding an op is one entry in :data:`OPS` (see docs/conformance.md, "Adding an op"). Whether a
geometry is valid is decided by numpyconv's own forward: the fuzzer drops a geometry it rejects.
"""
import functools
import inspect
from dataclasses import dataclass

import numpy as np

import numpyconv

from .arrays import EXTREMES, border_targets, point_offsets, values, weights

# value modes of a deformable op's sampling positions, simplest first (the shrinker's order)
OFFSET_MODES = ('zero', 'integer', 'half', 'random', 'border', 'huge', 'inf', 'nan')
VALUE_MODES = ('int', 'normal')                        # x, weights, dout: small integers or N(0, 1)
MAX_VALUE_MODES = ('distinct', 'normal', 'ties', 'nan')  # max pooling: no tie, then the edge modes


@dataclass(frozen=True)
class EdgeCase:
    """A named geometry: ``base`` updated by ``changes``; ``why`` says what it breaks."""
    label: str
    changes: dict
    why: str


@dataclass(frozen=True)
class Toward:
    """Shrink move: the number ``geometry[field]`` towards ``target`` (binary search)."""
    field: str
    target: int


@dataclass(frozen=True)
class Simpler:
    """Shrink move: ``geometry[field]`` to an earlier entry of ``order`` (simplest first)."""
    field: str
    order: tuple


@dataclass(frozen=True)
class Each:
    """Shrink move: every entry of the tuple ``geometry[field]`` towards ``target``."""
    field: str
    target: int


@dataclass(frozen=True)
class OpSpec:
    """One op for the fuzzer (see the module docstring)."""
    name: str
    params: tuple
    arrays: tuple
    base: dict
    draw: object
    build: object
    edge_cases: tuple
    shrink: tuple
    outputs: tuple = ('out',)
    layout: str = ''

    @property
    def forward(self):
        return getattr(numpyconv, self.name + '_forward')

    @property
    def backward(self):
        return getattr(numpyconv, self.name + '_backward')

    def available(self):
        """True when this numpyconv has ``<name>_forward`` / ``_backward`` taking ``params``."""
        fn = getattr(numpyconv, self.name + '_forward', None)
        if fn is None or not hasattr(numpyconv, self.name + '_backward'):
            return False
        return set(self.params) <= set(inspect.signature(fn).parameters)

    def required(self):
        """The forward's parameters without a default: a candidate gets them positionally."""
        return _required(self.name)

    def edge_geometry(self, k):
        """The geometry of edge case ``k``."""
        return {**self.base, **self.edge_cases[k].changes}


@functools.lru_cache(maxsize=None)
def _required(op):
    signature = inspect.signature(getattr(numpyconv, op + '_forward'))
    return tuple(n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty)


# -- drawing -------------------------------------------------------------------------------------------
class Draw:
    """Random choices for a geometry, from a ``numpy.random.Generator``."""

    def __init__(self, rng):
        self.rng = rng

    def integer(self, low, high):
        """An int in ``[low, high]``."""
        return int(self.rng.integers(low, high + 1))

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p):
        return bool(self.rng.random() < p)


def _batch(d):
    """Mostly 1-4 samples; sometimes none; rarely above 32 (ports that tile the batch by 32)."""
    if d.chance(0.03):
        return d.integer(33, 40)
    return d.choice((1, 1, 2, 2, 3, 4, 0))


def _values(d):
    return d.choice(('normal',) * 7 + ('int',))


def _input_size(d, out, kernel, stride, pad, dilation):
    """An input size giving ``out`` outputs (or more, never fewer than 1)."""
    return max(1, (out - 1) * stride + dilation * (kernel - 1) + 1 - 2 * pad + d.integer(0, stride - 1))


def _window(d, *, max_pad=3, max_kernel=4):
    """Kernel, stride, dilation, padding and an input size they fit (output 1-4 pixels a side)."""
    g = {}
    for a in 'hw':
        g['k' + a] = d.integer(1, max_kernel)
        g['s' + a] = d.choice((1, 1, 2, 3))
        g['d' + a] = d.choice((1, 1, 2, 3))
        g['p' + a] = d.integer(0, max_pad)
    if d.chance(0.6):                                   # square windows are the common case
        g.update(kw=g['kh'], sw=g['sh'], dw=g['dh'], pw=g['ph'])
    for a in 'hw':
        g[a] = _input_size(d, d.integer(1, 4), g['k' + a], g['s' + a], g['p' + a], g['d' + a])
    return g


def _divisors(c):
    return tuple(k for k in range(1, c + 1) if c % k == 0)


# -- building -----------------------------------------------------------------------------------------
def _hw(a, b):
    """An int when both axes agree, else the pair (the forms PyTorch's callers use)."""
    return int(a) if a == b else (int(a), int(b))


def _padding(g):
    form = g.get('pad', 'pair')
    return form if form in ('same', 'valid') else _hw(g['ph'], g['pw'])


def _out_size(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _conv_out(g):
    """``(Ho, Wo)`` of a convolution with the 'pair' padding of ``g``."""
    return tuple(_out_size(g[a], g['k' + a], g['s' + a], g['p' + a], g['d' + a]) for a in 'hw')


# -- shared edge cases and moves ------------------------------------------------------------------------
def _edge(label, why, **changes):
    return EdgeCase(label, changes, why)


WINDOW_EDGES = {
    'stride+dilation': _edge(
        'stride and dilation together', "a port that indexes x[i*s + k*d - p] with one factor "
        "missing or swapped still passes whenever stride or dilation is 1",
        h=9, w=11, kh=3, kw=3, sh=2, sw=3, dh=2, dw=2, ph=1, pw=1),
    'asymmetric padding': _edge(
        'asymmetric padding (rows != columns)', "ph and pw swapped, or one used for both axes",
        ph=2, pw=0),
    'padding >= kernel': _edge(
        'padding >= kernel', "outputs that read nothing but padding: bound checks written as "
        "0 <= i < H + p, or padding clipped to kernel - 1", kh=2, kw=2, ph=3, pw=2),
    '1x1 stride 2': _edge(
        '1x1 kernel with stride 2', "the degenerate window: special-cased paths that forget the "
        "stride", kh=1, kw=1, sh=2, sw=2, dh=1, dw=1, ph=0, pw=0),
    'even kernel': _edge(
        'even kernel (2x4)', "no centre tap: half = k // 2 versus (k - 1) // 2 conventions",
        kh=2, kw=4, ph=1, pw=1),
    'kernel = input': _edge(
        'kernel as large as the input', "one output pixel; loops bounded by H - k instead of "
        "H - k + 1 produce none", h=4, w=3, kh=4, kw=3, sh=1, sw=1, dh=1, dw=1, ph=0, pw=0),
    'kernel > input': _edge(
        'kernel larger than the input (padding covers it)', "taps outside the image on both "
        "sides at once", h=2, w=1, kh=3, kw=3, sh=1, sw=1, dh=1, dw=1, ph=1, pw=1),
    'stride > kernel': _edge(
        'stride larger than the kernel (skipped pixels)', "input pixels no window reads must get a "
        "zero gradient, not stale memory", h=8, w=5, kh=2, kw=1, sh=3, sw=2, dh=1, dw=1, ph=0, pw=0),
    'single pixel': _edge(
        'single pixel', "H = W = 1: every border at once", h=1, w=1, kh=1, kw=1, sh=1, sw=1,
        dh=1, dw=1, ph=0, pw=0),
    'non-square': _edge(
        'non-square everything', "h/w, kh/kw, stride, dilation or padding axes swapped somewhere",
        h=7, w=4, kh=3, kw=2, sh=2, sw=1, dh=1, dw=2, ph=1, pw=0),
}
BATCH_EDGES = (
    _edge('batch 0', "an empty batch: PyTorch allows it; ports divide by N or launch zero blocks", n=0),
    _edge('batch 1', "squeezed batch axes, broadcasting that only works for N = 1", n=1),
    _edge('batch above 32', "kernels that tile the batch by 32 (im2col step, CUDA grid limits) and "
          "mishandle the last tile", n=40),
)
OFFSET_EDGES = {
    'integer': _edge(
        'sampling points exactly on integer coordinates', "bilinear weights (1, 0): floor and the "
        "one-sided slope convention decide the offset gradient", offsets='integer'),
    'border': _edge(
        'sampling points at -1, H/W and just inside/outside', "the zero-padding rule -1 < h < H is "
        "written <= or < in different places; a corner at -1 still has a slope in torchvision",
        offsets='border'),
    'huge': _edge(
        'huge offsets (1e6, 3e9, 1e30)', "positions far outside must sample 0; 3e9 overflows an "
        "int32 cast done before the bound check", offsets='huge'),
    'inf': _edge(
        'infinite offsets', "+-inf is outside on every side: value 0, gradient 0, no NaN from "
        "inf - inf in the corner weights", offsets='inf'),
    'nan': _edge(
        'NaN offsets', "every comparison with NaN is false: the official kernels sample 0 there",
        offsets='nan'),
    'zero mask': _edge(
        'zero mask', "a zero mask zeroes the output and the offset gradient, never the mask "
        "gradient; ports that skip masked points lose it", mask='zero'),
    'binary mask': _edge(
        'mask of zeros and ones', "per-point masking mixed within one output pixel", mask='binary'),
}

MANY_CHANNELS = _edge('many channels (17 -> 33)', "vectorised loops whose tail (channels mod 8, 16, 32) "
                      "is dropped", cin=17, cout=33)

N_MOVE = (Toward('n', 1),)
WINDOW_MOVES = (Toward('kh', 1), Toward('kw', 1), Toward('dh', 1), Toward('dw', 1), Toward('sh', 1),
                Toward('sw', 1), Toward('ph', 0), Toward('pw', 0), Toward('h', 1), Toward('w', 1))
VALUE_MOVE = (Simpler('values', VALUE_MODES),)
OFFSET_MOVE = (Simpler('offsets', OFFSET_MODES),)


def _pick(table, *keys):
    return tuple(table[k] for k in keys)


ALL_WINDOW_EDGES = tuple(WINDOW_EDGES.values())


# -- conv2d, depthwise, pointwise, separable -------------------------------------------------------------
def _draw_conv2d(d):
    g = dict(n=_batch(d), groups=d.choice((1, 1, 1, 2, 3)), cin=d.integer(1, 3), cout=d.integer(1, 3),
             **_window(d), pad=d.choice(('pair',) * 6 + ('same', 'valid')), bias=d.chance(0.7),
             values=_values(d))
    return _fit_padding_form(g)


def _fit_padding_form(g):
    """'same' needs stride 1; 'valid' needs the kernel to fit without padding."""
    if g['pad'] == 'same':
        g.update(sh=1, sw=1)
    if g['pad'] == 'valid':
        for a in 'hw':
            g[a] = max(g[a], g['d' + a] * (g['k' + a] - 1) + 1)
    return g


def _build_conv2d(g, rng):
    c_in, c_out = g['groups'] * g['cin'], g['groups'] * g['cout']
    return dict(x=values(rng, (g['n'], c_in, g['h'], g['w']), g['values']),
                weight=values(rng, (c_out, g['cin'], g['kh'], g['kw']), g['values']),
                bias=values(rng, (c_out,), g['values']) if g['bias'] else None,
                stride=_hw(g['sh'], g['sw']), padding=_padding(g), dilation=_hw(g['dh'], g['dw']),
                groups=g['groups'])


CONV_BASE = dict(n=2, h=6, w=5, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1, pad='pair', bias=True,
                 values='normal')
PAD_FORM_EDGES = (
    _edge("padding='same' with an even kernel", "PyTorch puts the odd extra row and column at the "
          "bottom/right: 'same' is asymmetric", kh=4, kw=2, pad='same'),
    _edge("padding='valid'", "the string forms of padding", pad='valid', h=5, w=4),
)
PAD_FORM_MOVE = (Simpler('pad', ('pair', 'valid', 'same')),)
BIAS_EDGE = (_edge('no bias', "bias=None: the bias gradient must be None", bias=False),)

CONV2D = OpSpec(
    name='conv2d', params=('x', 'weight', 'bias', 'stride', 'padding', 'dilation', 'groups'),
    arrays=('x', 'weight', 'bias'),
    base=dict(CONV_BASE, groups=1, cin=3, cout=2),
    draw=_draw_conv2d, build=_build_conv2d,
    edge_cases=ALL_WINDOW_EDGES + PAD_FORM_EDGES + (
        _edge('groups', "channel c of group g is g*C_in/G + c: a wrong group offset mixes groups",
              groups=3, cin=2, cout=2),
        _edge('groups = input channels (depthwise through groups)', "the grouped path with one "
              "input channel per group and two outputs each", groups=4, cin=1, cout=2),
        _edge('groups with stride and dilation', "the group offset and the window indexing "
              "together", groups=2, cin=3, cout=2, h=9, w=11, sh=2, sw=3, dh=2, dw=2),
        MANY_CHANNELS,
        _edge('wide rows (35 output columns)', "loops tiled by 8, 16 or 32 output pixels whose last "
              "tile is dropped or overrun", h=3, w=35),
    ) + BATCH_EDGES + BIAS_EDGE,
    shrink=N_MOVE + (Toward('groups', 1), Toward('cin', 1), Toward('cout', 1)) + PAD_FORM_MOVE
    + WINDOW_MOVES + (Simpler('bias', (False, True)),) + VALUE_MOVE,
    layout='x (N, C_in, H, W), weight (C_out, C_in // groups, kh, kw), bias (C_out,) or None')


def _draw_depthwise(d):
    g = dict(n=_batch(d), c=d.integer(1, 4), mult=d.choice((1, 1, 2, 3)), **_window(d),
             pad=d.choice(('pair',) * 6 + ('same', 'valid')), bias=d.chance(0.7), values=_values(d))
    return _fit_padding_form(g)


def _build_depthwise(g, rng):
    c = g['c'] * g['mult']
    return dict(x=values(rng, (g['n'], g['c'], g['h'], g['w']), g['values']),
                weight=values(rng, (c, 1, g['kh'], g['kw']), g['values']),
                bias=values(rng, (c,), g['values']) if g['bias'] else None,
                stride=_hw(g['sh'], g['sw']), padding=_padding(g), dilation=_hw(g['dh'], g['dw']))


DEPTHWISE = OpSpec(
    name='depthwise_conv2d', params=('x', 'weight', 'bias', 'stride', 'padding', 'dilation'),
    arrays=('x', 'weight', 'bias'),
    base=dict(CONV_BASE, c=3, mult=1),
    draw=_draw_depthwise, build=_build_depthwise,
    edge_cases=ALL_WINDOW_EDGES + PAD_FORM_EDGES + (
        _edge('channel multiplier 3', "output channel o reads input channel o // multiplier, not "
              "o % C", c=2, mult=3),
        _edge('one channel', "C = 1: depthwise equals a plain convolution", c=1, mult=1),
    ) + BATCH_EDGES + BIAS_EDGE,
    shrink=N_MOVE + (Toward('c', 1), Toward('mult', 1)) + PAD_FORM_MOVE + WINDOW_MOVES
    + (Simpler('bias', (False, True)),) + VALUE_MOVE,
    layout='x (N, C, H, W), weight (C * multiplier, 1, kh, kw), bias (C * multiplier,) or None')


def _draw_pointwise(d):
    sh = d.choice((1, 1, 2, 3))
    sw = sh if d.chance(0.7) else d.choice((1, 2, 3))
    return dict(n=_batch(d), cin=d.integer(1, 5), cout=d.integer(1, 5), h=d.integer(1, 7),
                w=d.integer(1, 7), sh=sh, sw=sw, bias=d.chance(0.7), values=_values(d))


def _build_pointwise(g, rng):
    return dict(x=values(rng, (g['n'], g['cin'], g['h'], g['w']), g['values']),
                weight=values(rng, (g['cout'], g['cin'], 1, 1), g['values']),
                bias=values(rng, (g['cout'],), g['values']) if g['bias'] else None,
                stride=_hw(g['sh'], g['sw']))


POINTWISE = OpSpec(
    name='pointwise_conv2d', params=('x', 'weight', 'bias', 'stride'), arrays=('x', 'weight', 'bias'),
    base=dict(n=2, cin=3, cout=2, h=5, w=4, sh=1, sw=1, bias=True, values='normal'),
    draw=_draw_pointwise, build=_build_pointwise,
    edge_cases=(
        _edge('stride larger than the input', "one output pixel per axis; the rest of x gets a zero "
              "gradient", h=3, w=2, sh=5, sw=4),
        _edge('stride (2, 3)', "row and column strides swapped", h=7, w=7, sh=2, sw=3),
        _edge('single pixel', "H = W = 1", h=1, w=1),
        MANY_CHANNELS,
    ) + BATCH_EDGES + BIAS_EDGE,
    shrink=N_MOVE + (Toward('cin', 1), Toward('cout', 1), Toward('sh', 1), Toward('sw', 1),
                     Toward('h', 1), Toward('w', 1), Simpler('bias', (False, True))) + VALUE_MOVE,
    layout='x (N, C_in, H, W), weight (C_out, C_in, 1, 1), bias (C_out,) or None')


def _draw_separable(d):
    g = dict(n=_batch(d), c=d.integer(1, 3), mult=d.choice((1, 1, 2)), cout=d.integer(1, 3), **_window(d),
             pad=d.choice(('pair',) * 6 + ('same', 'valid')), dw_bias=d.chance(0.6), pw_bias=d.chance(0.6),
             values=_values(d))
    return _fit_padding_form(g)


def _build_separable(g, rng):
    mid = g['c'] * g['mult']
    v = g['values']
    return dict(x=values(rng, (g['n'], g['c'], g['h'], g['w']), v),
                dw_weight=values(rng, (mid, 1, g['kh'], g['kw']), v),
                pw_weight=values(rng, (g['cout'], mid, 1, 1), v),
                dw_bias=values(rng, (mid,), v) if g['dw_bias'] else None,
                pw_bias=values(rng, (g['cout'],), v) if g['pw_bias'] else None,
                stride=_hw(g['sh'], g['sw']), padding=_padding(g), dilation=_hw(g['dh'], g['dw']))


SEPARABLE = OpSpec(
    name='separable_conv2d',
    params=('x', 'dw_weight', 'pw_weight', 'dw_bias', 'pw_bias', 'stride', 'padding', 'dilation'),
    arrays=('x', 'dw_weight', 'pw_weight', 'dw_bias', 'pw_bias'),
    base=dict(CONV_BASE, c=3, mult=1, cout=2, dw_bias=True, pw_bias=True),
    draw=_draw_separable, build=_build_separable,
    edge_cases=ALL_WINDOW_EDGES + PAD_FORM_EDGES + (
        _edge('channel multiplier 2', "the pointwise weight reads C * multiplier channels", c=2, mult=2),
        _edge('no biases', "both biases None: both gradients None", dw_bias=False, pw_bias=False),
        _edge('pointwise bias only', "the biases are independent", dw_bias=False, pw_bias=True),
    ) + BATCH_EDGES,
    shrink=N_MOVE + (Toward('c', 1), Toward('mult', 1), Toward('cout', 1)) + PAD_FORM_MOVE + WINDOW_MOVES
    + (Simpler('dw_bias', (False, True)), Simpler('pw_bias', (False, True))) + VALUE_MOVE,
    layout='x (N, C, H, W), dw_weight (C*m, 1, kh, kw), pw_weight (C_out, C*m, 1, 1), biases or None')


# -- octave ------------------------------------------------------------------------------------------------
def _draw_octave(d):
    stride = d.choice((1, 1, 2))
    g = dict(n=_batch(d), groups=d.choice((1, 1, 2)), ih=d.integer(1, 2), il=d.choice((0, 1, 1, 2)),
             oh=d.choice((0, 1, 1, 2)), ol=d.choice((0, 1, 1, 2)), hh=d.integer(2 if stride == 2 else 1, 4),
             wh=d.integer(2 if stride == 2 else 1, 4), kh=d.choice((1, 3, 3)), dh=d.choice((1, 1, 2)),
             stride=stride, values=_values(d))
    g.update(kw=g['kh'] if d.chance(0.7) else d.choice((1, 3)), dw=g['dh'])
    if g['oh'] == 0 and g['ol'] == 0:
        g['oh'] = 1
    return g


def _build_octave(g, rng):
    """Channels are ``groups * <per-group count>``; a count of 0 drops x_l or an output's weights."""
    n, k, v = g['n'], (g['kh'], g['kw']), g['values']
    c = {name: g['groups'] * g[name] for name in ('ih', 'il', 'oh', 'ol')}
    x_h = values(rng, (n, c['ih'], 2 * g['hh'], 2 * g['wh']), v)
    x_l = values(rng, (n, c['il'], g['hh'], g['wh']), v) if c['il'] else None
    weights = {}
    paths = dict(h2h=('ih', 'oh'), h2l=('ih', 'ol'), l2h=('il', 'oh'), l2l=('il', 'ol'))
    for path, (cin, cout) in paths.items():
        given = c[cin] and c[cout]
        weights['w_' + path] = values(rng, (c[cout], c[cin] // g['groups']) + k, v) if given else None
    pad = _hw(g['dh'] * (g['kh'] - 1) // 2, g['dw'] * (g['kw'] - 1) // 2)
    return dict(x_h=x_h, x_l=x_l, **weights, stride=g['stride'], padding=pad,
                dilation=_hw(g['dh'], g['dw']), groups=g['groups'])


OCTAVE = OpSpec(
    name='octave_conv2d',
    params=('x_h', 'x_l', 'w_h2h', 'w_h2l', 'w_l2h', 'w_l2l', 'stride', 'padding', 'dilation', 'groups'),
    arrays=('x_h', 'x_l', 'w_h2h', 'w_h2l', 'w_l2h', 'w_l2l'), outputs=('y_h', 'y_l'),
    base=dict(n=2, groups=1, ih=2, il=2, oh=2, ol=1, hh=2, wh=3, kh=3, kw=3, dh=1, dw=1, stride=1,
              values='normal'),
    draw=_draw_octave, build=_build_octave,
    edge_cases=(
        _edge('first layer (x_l None)', "alpha_in = 0: the l2h and l2l paths vanish, dx_l is None",
              il=0),
        _edge('last layer (no low-frequency output)', "alpha_out = 0: y_l is None, w_h2l and w_l2l "
              "are None", ol=0),
        _edge('stride 2', "average pool first, then stride-1 convolutions; l2h reads the un-pooled "
              "x_l", stride=2, hh=2, wh=4),
        _edge('stride 2 with odd halves (floor pooling)', "2x2 pooling of an odd size drops the last "
              "row and column, which then get a zero gradient", stride=2, hh=3, wh=3),
        _edge('groups 2', "every path grouped", groups=2, ih=1, il=1, oh=1, ol=1),
        _edge('dilation 2', "'same' padding is dilation * (k - 1) // 2", dh=2, dw=2),
        _edge('1x1 kernel', "no padding; the up/down-sampling alone", kh=1, kw=1),
        _edge('non-square kernel and map', "axes swapped in pooling or upsampling", hh=2, wh=3, kh=3,
              kw=1),
    ) + BATCH_EDGES,
    shrink=N_MOVE + (Toward('groups', 1), Toward('il', 0), Toward('ol', 0), Toward('ih', 1), Toward('oh', 1),
                     Toward('ol', 1), Toward('il', 1), Toward('stride', 1), Toward('kh', 1), Toward('kw', 1),
                     Toward('dh', 1), Toward('dw', 1), Toward('hh', 1), Toward('wh', 1)) + VALUE_MOVE,
    layout='x_h (N, C_h, H, W), x_l (N, C_l, H/2, W/2) or None, w_ab (C_out_b, C_in_a // groups, k, k) '
           'or None; output (y_h, y_l), dout a pair')


# -- deformable convolution v1/v2 (torchvision layout) -------------------------------------------------
def _draw_deform(d):
    g = dict(n=_batch(d), groups=d.choice((1, 1, 2)), cin=d.integer(1, 3), cout=d.integer(1, 3),
             **_window(d), bias=d.chance(0.6), mask=d.choice(('none', 'random', 'random', 'binary')),
             offsets=d.choice(('random',) * 6 + ('integer', 'border', 'huge')), values=_values(d))
    g['og'] = d.choice(_divisors(g['groups'] * g['cin'])[:3])
    return g


def _build_deform(g, rng):
    c_in, c_out, og = g['groups'] * g['cin'], g['groups'] * g['cout'], g['og']
    (ho, wo), (kh, kw), n = _conv_out(g), (g['kh'], g['kw']), g['n']
    points = kh * kw
    x = values(rng, (n, c_in, g['h'], g['w']), g['values'])
    weight = values(rng, (c_out, c_in // g['groups'], kh, kw), g['values'])
    rows, cols = np.divmod(np.arange(points)[:, None, None], kw)                # point p = i*kw + j
    base_h = (np.arange(ho) * g['sh'] - g['ph'])[None, :, None] + rows * g['dh']               # (P, Ho, 1)
    base_w = (np.arange(wo) * g['sw'] - g['pw'])[None, None, :] + cols * g['dw']               # (P, 1, Wo)
    dy, dx = point_offsets(rng, g['offsets'], (n, og, points, ho, wo), base_h, base_w, (g['h'], g['w']))
    offset = np.stack([dy, dx], axis=3).reshape(n, 2 * og * points, ho, wo)   # (dy, dx) per point
    mask = None if g['mask'] == 'none' else weights(rng, g['mask'], (n, og * points, ho, wo))
    bias = values(rng, (c_out,), g['values']) if g['bias'] else None
    return dict(x=x, offset=offset, weight=weight, bias=bias, stride=_hw(g['sh'], g['sw']),
                padding=_hw(g['ph'], g['pw']), dilation=_hw(g['dh'], g['dw']), mask=mask)


DEFORM = OpSpec(
    name='deform_conv2d',
    params=('x', 'offset', 'weight', 'bias', 'stride', 'padding', 'dilation', 'mask'),
    arrays=('x', 'offset', 'weight', 'bias', 'mask'),
    base=dict(CONV_BASE, h=5, w=4, groups=1, cin=2, cout=2, og=1, mask='random', offsets='random'),
    draw=_draw_deform, build=_build_deform,
    edge_cases=ALL_WINDOW_EDGES + (
        _edge('groups 2', "weight groups are inferred from weight.shape[1]", groups=2, cin=2, cout=1),
        _edge('offset groups 2', "input channel c uses offset group c // (C_in / og)", cin=4, og=2),
        _edge('offset groups = input channels', "one offset field per channel", cin=3, og=3),
        _edge('groups and offset groups together', "two independent channel partitions",
              groups=2, cin=2, og=4),
        _edge('v1 (no mask)', "mask=None: DCNv1, no mask gradient (None)", mask='none'),
    ) + _pick(OFFSET_EDGES, 'integer', 'border', 'huge', 'zero mask', 'binary mask') + BATCH_EDGES
    + BIAS_EDGE,
    shrink=N_MOVE + (Toward('groups', 1), Toward('og', 1), Toward('cin', 1), Toward('cout', 1)) + WINDOW_MOVES
    + (Simpler('bias', (False, True)), Simpler('mask', ('none', 'ones', 'binary', 'zero', 'random')))
    + OFFSET_MOVE + VALUE_MOVE,
    layout="torchvision.ops.deform_conv2d: x (N, C_in, H, W), offset (N, 2*og*kh*kw, Ho, Wo) with "
           "(dy, dx) per point, row-major points, weight (C_out, C_in // groups, kh, kw), mask "
           "(N, og*kh*kw, Ho, Wo) or None")


# -- DCNv3 and DCNv4 (NHWC, the official cores) -------------------------------------------------------------
EXACT_SCALES = (1.0, 1.0, 0.5, 2.0)     # powers of two: border positions stay exact


def _draw_dcn(d):
    g = dict(n=_batch(d), group=d.choice((1, 1, 2, 4)), gc=d.choice((1, 2, 3, 4, 8)), **_window(d),
             offsets=d.choice(('random',) * 6 + ('integer', 'border', 'huge', 'inf', 'nan')),
             mask=d.choice(('random', 'random', 'ones', 'binary')), values=_values(d))
    g['scale'] = d.choice(EXACT_SCALES + ((1.5, 0.75) if g['offsets'] == 'random' else ()))
    g['remove_center'] = g['kh'] % 2 == 1 and g['kw'] % 2 == 1 and g['kh'] * g['kw'] > 1 and d.chance(0.2)
    return g


def _dcn_points(g):
    """Taps ``(j*dh, i*dw)`` of the column-major points (DCNv3's order), centre removed."""
    kh, kw = g['kh'], g['kw']
    return [(j * g['dh'], i * g['dw']) for i in range(kw) for j in range(kh)
            if not (g['remove_center'] and i == kw // 2 and j == kh // 2)]


def _dcn_offsets_mask(g, rng):
    """``offset (N, Ho, Wo, G*P*2)`` with (dx, dy) pairs and ``mask (N, Ho, Wo, G*P)``."""
    (ho, wo), n, s = _conv_out(g), g['n'], g['scale']
    taps = np.array(_dcn_points(g), dtype=np.int64).reshape(-1, 2)
    points = len(taps)
    half_h, half_w = g['dh'] * (g['kh'] - 1) // 2, g['dw'] * (g['kw'] - 1) // 2
    origin_h = np.arange(ho) * g['sh'] - g['ph'] + half_h - s * half_h
    origin_w = np.arange(wo) * g['sw'] - g['pw'] + half_w - s * half_w
    base_h = origin_h[None, :, None] + s * taps[:, 0][:, None, None]
    base_w = origin_w[None, None, :] + s * taps[:, 1][:, None, None]
    dy, dx = point_offsets(rng, g['offsets'], (n, g['group'], points, ho, wo), base_h, base_w,
                            (g['h'], g['w']), scale=s)
    offset = np.stack([dx, dy], axis=-1).transpose(0, 3, 4, 1, 2, 5)       # (N, Ho, Wo, G, P, 2)
    offset = offset.reshape(n, ho, wo, 2 * g['group'] * points)
    mask = weights(rng, g['mask'], (n, ho, wo, g['group'] * points))
    return offset, mask


def _dcn_hyper(g):
    return dict(kernel_size=_hw(g['kh'], g['kw']), stride=_hw(g['sh'], g['sw']),
                padding=_hw(g['ph'], g['pw']), dilation=_hw(g['dh'], g['dw']), group=g['group'],
                group_channels=g['gc'],
                offset_scale=g['scale'], remove_center=g['remove_center'])


def _build_dcnv3(g, rng):
    x = values(rng, (g['n'], g['h'], g['w'], g['group'] * g['gc']), g['values'])
    offset, mask = _dcn_offsets_mask(g, rng)
    return dict(x=x, offset=offset, mask=mask, **_dcn_hyper(g))


DCN_BASE = dict(CONV_BASE, h=5, w=4, group=2, gc=2, scale=1.0, remove_center=False, offsets='random',
                mask='random')
DCN_EDGES = ALL_WINDOW_EDGES + (
    _edge('remove_center', "the centre point skipped: P = k*k - 1 shifts every later point",
          kh=3, kw=3, remove_center=True),
    _edge('offset_scale 0.5', "offset_scale also scales the base grid (around its centre), not only "
          "the offsets", scale=0.5),
    _edge('offset_scale 1.5 with stride and dilation', "the scaled grid with a non-power-of-two "
          "factor", scale=1.5, sh=2, sw=2, dh=2, dw=2, h=9, w=9),
    _edge('4 groups of 1 channel', "group g owns channels g*D .. g*D + D - 1", group=4, gc=1),
    _edge('group_channels 16', "vectorised channel loops (the official kernels read 8 or 16 at a "
          "time)", group=1, gc=16),
    _edge('group_channels 3', "a channel count that is not a multiple of the vector width",
          group=2, gc=3),
    _edge('group_channels 19', "a full vector of 8 or 16 channels and a tail", group=2, gc=19),
) + _pick(OFFSET_EDGES, 'integer', 'border', 'huge', 'inf', 'nan', 'zero mask', 'binary mask') + BATCH_EDGES
DCN_MOVES = N_MOVE + (Toward('group', 1), Toward('gc', 1), Simpler('remove_center', (False, True)),
                      Simpler('scale', (1.0,))) + WINDOW_MOVES + (
    Simpler('mask', ('ones', 'binary', 'zero', 'random')),) + OFFSET_MOVE + VALUE_MOVE

DCNV3 = OpSpec(
    name='dcnv3',
    params=('x', 'offset', 'mask', 'kernel_size', 'stride', 'padding', 'dilation', 'group',
            'group_channels', 'offset_scale', 'remove_center'),
    arrays=('x', 'offset', 'mask'), base=DCN_BASE, draw=_draw_dcn, build=_build_dcnv3,
    edge_cases=DCN_EDGES, shrink=DCN_MOVES,
    layout='InternImage DCNv3Function, NHWC: x (N, H, W, G*D), offset (N, Ho, Wo, G*P*2) with (dx, dy) '
           'per point, column-major points, mask (N, Ho, Wo, G*P) used as given')


def _draw_dcnv4(d):
    g = _draw_dcn(d)
    g['extra'] = d.choice((0, 0, 0, 1))
    return g


def _build_dcnv4(g, rng):
    """The packed ``offset_mask``: per group ``[dx_0, dy_0, ... | m_0, ...]``, then padding channels
    to a multiple of 8 (plus ``extra`` * 8) filled with values the op must ignore."""
    x = values(rng, (g['n'], g['h'], g['w'], g['group'] * g['gc']), g['values'])
    offset, mask = _dcn_offsets_mask(g, rng)
    n, ho, wo, _ = mask.shape
    points = len(_dcn_points(g))
    used = 3 * g['group'] * points
    width = -(-used // 8) * 8 + 8 * g['extra']
    packed = np.concatenate([offset.reshape(n, ho, wo, g['group'], 2 * points),
                             mask.reshape(n, ho, wo, g['group'], points)], axis=-1).reshape(n, ho, wo, used)
    garbage = rng.uniform(-9.0, 9.0, (n, ho, wo, width - used))
    return dict(x=x, offset_mask=np.concatenate([packed, garbage], axis=-1), **_dcn_hyper(g))


DCNV4 = OpSpec(
    name='dcnv4',
    params=('x', 'offset_mask', 'kernel_size', 'stride', 'padding', 'dilation', 'group', 'group_channels',
            'offset_scale', 'remove_center'),
    arrays=('x', 'offset_mask'), base=dict(DCN_BASE, extra=0), draw=_draw_dcnv4, build=_build_dcnv4,
    edge_cases=DCN_EDGES + (
        _edge('wider offset_mask (8 extra channels)', "any multiple of 8 at least 3*G*P is accepted; "
              "the extra channels are ignored and get zero gradient", extra=1),
    ),
    shrink=DCN_MOVES[:1] + (Toward('extra', 0),) + DCN_MOVES[1:],
    layout='OpenGVLab DCNv4Function, NHWC: x (N, H, W, G*D), offset_mask (N, Ho, Wo, ceil(3*G*P/8)*8), '
           'per group [dx_0, dy_0, ..., | m_0, ...], padding channels ignored')


# -- involution ---------------------------------------------------------------------------------------------
def _draw_involution(d):
    g = dict(n=_batch(d), groups=d.choice((1, 1, 2, 3)), cpg=d.integer(1, 3), kh=d.choice((1, 2, 3, 3, 5)),
             sh=d.choice((1, 1, 2, 3)), dh=d.choice((1, 1, 2)), values=_values(d))
    g.update(kw=g['kh'] if d.chance(0.7) else d.choice((1, 3)), sw=g['sh'] if d.chance(0.7) else 1,
             dw=g['dh'], h=d.integer(1, 8), w=d.integer(1, 8))
    return g


def _involution_out(g):
    """``(Ho, Wo)`` with the official padding ``d*(k-1)//2``."""
    return tuple(_out_size(g[a], g['k' + a], g['s' + a], g['d' + a] * (g['k' + a] - 1) // 2, g['d' + a])
                 for a in 'hw')


def _build_involution(g, rng):
    (ho, wo), v = _involution_out(g), g['values']
    return dict(x=values(rng, (g['n'], g['groups'] * g['cpg'], g['h'], g['w']), v),
                kernel=values(rng, (g['n'], g['groups'] * g['kh'] * g['kw'], ho, wo), v),
                kernel_size=_hw(g['kh'], g['kw']), stride=_hw(g['sh'], g['sw']),
                dilation=_hw(g['dh'], g['dw']))


INVOLUTION = OpSpec(
    name='involution', params=('x', 'kernel', 'kernel_size', 'stride', 'dilation'), arrays=('x', 'kernel'),
    base=dict(n=2, groups=2, cpg=2, h=5, w=6, kh=3, kw=3, sh=1, sw=1, dh=1, dw=1, values='normal'),
    draw=_draw_involution, build=_build_involution,
    edge_cases=(
        _edge('stride and dilation together', "the kernel is generated at output resolution; taps at "
              "i*s + k*d - p", h=9, w=8, sh=2, sw=2, dh=2, dw=2),
        _edge('even kernel (one-sided padding)', "padding d*(k-1)//2 pads less than half the window: "
              "the output is smaller than the input", kh=2, kw=2),
        _edge('groups = channels', "one channel per kernel group", groups=3, cpg=1),
        _edge('one group', "every channel shares the kernel", groups=1, cpg=3),
        _edge('kernel larger than the input', "taps outside the image on both sides", h=3, w=3, kh=5, kw=5),
        _edge('non-square kernel (3, 1)', "K*K points for a pair kernel_size", kh=3, kw=1),
        _edge('single pixel', "H = W = 1", h=1, w=1, kh=1, kw=1),
    ) + BATCH_EDGES,
    shrink=N_MOVE + (Toward('groups', 1), Toward('cpg', 1), Toward('kh', 1), Toward('kw', 1), Toward('dh', 1),
                     Toward('dw', 1), Toward('sh', 1), Toward('sw', 1), Toward('h', 1), Toward('w', 1))
    + VALUE_MOVE,
    layout='d-li14 involution: x (N, G*C, H, W), kernel (N, G*kh*kw, Ho, Wo), padding d*(k-1)//2')


# -- pooling (API "More ops and layers") ---------------------------------------------------------------
def _draw_pool(d, *, dilation):
    g = dict(n=_batch(d), c=d.integer(1, 3), kh=d.integer(1, 4), sh=d.choice((1, 2, 2, 3)),
             dh=d.choice((1, 1, 2)) if dilation else 1, ceil=d.chance(0.3), stride_none=d.chance(0.2))
    g.update(kw=g['kh'] if d.chance(0.6) else d.integer(1, 4), dw=g['dh'],
             sw=g['sh'] if d.chance(0.7) else d.choice((1, 2)))
    g.update(ph=d.integer(0, g['kh'] // 2), pw=d.integer(0, g['kw'] // 2))
    if g['stride_none']:
        g.update(sh=g['kh'], sw=g['kw'])
    for a in 'hw':
        g[a] = _input_size(d, d.integer(1, 4), g['k' + a], g['s' + a], g['p' + a], g['d' + a])
    return g


def _pool_args(g):
    return dict(kernel_size=_hw(g['kh'], g['kw']), stride=None if g['stride_none'] else _hw(g['sh'], g['sw']),
                padding=_hw(g['ph'], g['pw']))


def _build_max_pool(g, rng):
    return dict(x=values(rng, (g['n'], g['c'], g['h'], g['w']), g['values']), **_pool_args(g),
                dilation=_hw(g['dh'], g['dw']), ceil_mode=g['ceil'])


def _build_avg_pool(g, rng):
    return dict(x=values(rng, (g['n'], g['c'], g['h'], g['w']), g['values']), **_pool_args(g),
                ceil_mode=g['ceil'], count_include_pad=g['include_pad'],
                divisor_override=g['divisor'] or None)


POOL_BASE = dict(n=2, c=2, h=6, w=5, kh=3, kw=2, sh=2, sw=2, ph=1, pw=1, dh=1, dw=1, ceil=False,
                 stride_none=False)
POOL_EDGES = (
    _edge('stride None (= kernel_size)', "PyTorch's default stride is the kernel, not 1",
          stride_none=True, kh=2, kw=2, sh=2, sw=2),
    _edge('ceil_mode with a partial last window', "the last window hangs over the bottom/right edge",
          h=5, w=5, kh=2, kw=2, sh=2, sw=2, ph=0, pw=0, ceil=True),
    _edge('ceil_mode: last window would start in the padding', "PyTorch drops a last window that "
          "starts in the right padding", h=5, w=5, kh=2, kw=2, sh=2, sw=2, ph=1, pw=1, ceil=True),
    _edge('padding = kernel // 2', "windows that are half padding", kh=3, kw=3, ph=1, pw=1, sh=1, sw=1),
    _edge('stride larger than the kernel', "skipped pixels get zero gradient", h=8, w=7, kh=2, kw=2, sh=3,
          sw=3, ph=0, pw=0),
    _edge('kernel as large as the input', "one window", h=4, w=3, kh=4, kw=3, sh=1, sw=1, ph=0, pw=0),
    _edge('single pixel', "H = W = 1", h=1, w=1, kh=1, kw=1, sh=1, sw=1, ph=0, pw=0),
) + BATCH_EDGES
POOL_MOVES = N_MOVE + (Toward('c', 1), Simpler('stride_none', (False, True)), Simpler('ceil', (False, True)),
                       Toward('kh', 1), Toward('kw', 1), Toward('dh', 1), Toward('dw', 1), Toward('sh', 1),
                       Toward('sw', 1), Toward('ph', 0), Toward('pw', 0), Toward('h', 1), Toward('w', 1))


def _draw_max_pool(d):
    return dict(_draw_pool(d, dilation=True), values=d.choice(('normal',) * 6 + ('ties', 'nan')))


MAX_POOL = OpSpec(
    name='max_pool2d', params=('x', 'kernel_size', 'stride', 'padding', 'dilation', 'ceil_mode'),
    arrays=('x',),
    base=dict(POOL_BASE, values='normal'), draw=_draw_max_pool, build=_build_max_pool,
    edge_cases=POOL_EDGES + (
        _edge('dilation 2', "dilated windows", dh=2, dw=2, h=7, w=7),
        _edge('ties (gradient to the first maximum)', "equal values in a window: the gradient goes to "
              "the first in window order, once", values='ties'),
        _edge('NaN and -inf inputs', "NaN wins a window (max propagates it); -inf is an ordinary "
              "value", values='nan'),
    ),
    shrink=POOL_MOVES + (Simpler('values', MAX_VALUE_MODES),),
    layout='torch.nn.functional.max_pool2d: x (N, C, H, W), padding <= kernel_size // 2')


def _draw_avg_pool(d):
    g = _draw_pool(d, dilation=False)
    return dict(g, include_pad=d.chance(0.7), divisor=d.choice((0,) * 6 + (3, -2)), values=_values(d))


AVG_POOL = OpSpec(
    name='avg_pool2d',
    params=('x', 'kernel_size', 'stride', 'padding', 'ceil_mode', 'count_include_pad', 'divisor_override'),
    arrays=('x',), base=dict(POOL_BASE, include_pad=True, divisor=0, values='normal'),
    draw=_draw_avg_pool, build=_build_avg_pool,
    edge_cases=POOL_EDGES + (
        _edge('count_include_pad=False', "the divisor counts only the pixels inside x", include_pad=False),
        _edge('divisor_override 3', "a fixed divisor instead of the window size", divisor=3),
        _edge('ceil_mode with count_include_pad', "the window part beyond the padding is never counted",
              h=5, w=5, kh=3, kw=3, sh=2, sw=2, ph=1, pw=1, ceil=True),
    ),
    shrink=POOL_MOVES + (Simpler('include_pad', (True, False)), Toward('divisor', 0)) + VALUE_MOVE,
    layout='torch.nn.functional.avg_pool2d: x (N, C, H, W), padding <= kernel_size // 2')


def _draw_adaptive(d, values):
    return dict(n=_batch(d), c=d.integer(1, 3), h=d.integer(1, 8), w=d.integer(1, 8), oh=d.integer(1, 6),
                ow=d.integer(1, 6), keep_h=d.chance(0.1), keep_w=d.chance(0.1), values=d.choice(values))


def _build_adaptive(g, rng):
    size = (None if g['keep_h'] else g['oh'], None if g['keep_w'] else g['ow'])
    return dict(x=values(rng, (g['n'], g['c'], g['h'], g['w']), g['values']),
                output_size=size[0] if size[0] == size[1] else size)


ADAPTIVE_EDGES = (
    _edge('output larger than the input', "overlapping windows of one pixel", h=3, w=2, oh=5, ow=4),
    _edge('output 1x1 (global pooling)', "one window over everything", oh=1, ow=1),
    _edge('sizes not divisible', "windows floor(i*H/Ho) .. ceil((i+1)*H/Ho) overlap and differ in size",
          h=7, w=5, oh=3, ow=2),
    _edge('None keeps the input size', "output_size (None, k)", keep_h=True),
    _edge('single pixel', "H = W = 1", h=1, w=1, oh=1, ow=1),
) + BATCH_EDGES
ADAPTIVE_BASE = dict(n=2, c=2, h=6, w=5, oh=3, ow=2, keep_h=False, keep_w=False)
ADAPTIVE_MOVES = N_MOVE + (Toward('c', 1), Simpler('keep_h', (False, True)), Simpler('keep_w', (False, True)),
                           Toward('oh', 1), Toward('ow', 1), Toward('h', 1), Toward('w', 1))

ADAPTIVE_AVG = OpSpec(
    name='adaptive_avg_pool2d', params=('x', 'output_size'), arrays=('x',),
    base=dict(ADAPTIVE_BASE, values='normal'),
    draw=lambda d: _draw_adaptive(d, ('normal',) * 7 + ('int',)),
    build=_build_adaptive, edge_cases=ADAPTIVE_EDGES, shrink=ADAPTIVE_MOVES + VALUE_MOVE,
    layout='torch.nn.functional.adaptive_avg_pool2d: x (N, C, H, W), output_size int, pair or None entries')

ADAPTIVE_MAX = OpSpec(
    name='adaptive_max_pool2d', params=('x', 'output_size'), arrays=('x',),
    base=dict(ADAPTIVE_BASE, values='normal'),
    draw=lambda d: _draw_adaptive(d, ('normal',) * 6 + ('ties', 'nan')),
    build=_build_adaptive,
    edge_cases=ADAPTIVE_EDGES + (
        _edge('ties (gradient to the first maximum)', "equal values: the first in row-major order wins",
              values='ties'),
        _edge('NaN and -inf inputs', "NaN propagates", values='nan'),
    ),
    shrink=ADAPTIVE_MOVES + (Simpler('values', MAX_VALUE_MODES),),
    layout='torch.nn.functional.adaptive_max_pool2d: x (N, C, H, W), output_size int, pair or None entries')


# -- transposed convolution -----------------------------------------------------------------------------
def _draw_transpose(d):
    g = dict(n=_batch(d), groups=d.choice((1, 1, 2)), cin=d.integer(1, 3), cout=d.integer(1, 3),
             h=d.integer(1, 4), w=d.integer(1, 4), bias=d.chance(0.7), values=_values(d))
    for a in 'hw':
        g.update({'k' + a: d.integer(1, 4), 's' + a: d.choice((1, 1, 2, 3)), 'd' + a: d.choice((1, 1, 2)),
                  'p' + a: d.integer(0, 2)})
        g['op' + a] = d.integer(0, max(g['s' + a], g['d' + a]) - 1)
    return g


def _build_transpose(g, rng):
    c_in, c_out = g['groups'] * g['cin'], g['groups'] * g['cout']
    return dict(x=values(rng, (g['n'], c_in, g['h'], g['w']), g['values']),
                weight=values(rng, (c_in, g['cout'], g['kh'], g['kw']), g['values']),
                bias=values(rng, (c_out,), g['values']) if g['bias'] else None,
                stride=_hw(g['sh'], g['sw']), padding=_hw(g['ph'], g['pw']),
                output_padding=_hw(g['oph'], g['opw']), groups=g['groups'], dilation=_hw(g['dh'], g['dw']))


CONV_TRANSPOSE = OpSpec(
    name='conv_transpose2d',
    params=('x', 'weight', 'bias', 'stride', 'padding', 'output_padding', 'groups', 'dilation'),
    arrays=('x', 'weight', 'bias'),
    base=dict(n=2, groups=1, cin=2, cout=3, h=4, w=3, kh=3, kw=3, sh=2, sw=2, ph=1, pw=1, oph=0, opw=0,
              dh=1, dw=1, bias=True, values='normal'),
    draw=_draw_transpose, build=_build_transpose,
    edge_cases=(
        _edge('output_padding = stride - 1', "the extra bottom/right rows receive only bias and tap "
              "contributions", sh=3, sw=2, oph=2, opw=1),
        _edge('output_padding with dilation > stride', "PyTorch allows output_padding < max(stride, "
              "dilation)", sh=1, sw=1, dh=2, dw=2, oph=1, opw=1),
        _edge('padding larger than the kernel (cropped output)', "padding crops the full output; here "
              "more than one kernel's worth", h=4, w=4, kh=2, kw=2, sh=2, sw=2, ph=2, pw=2),
        _edge('stride larger than the kernel (gaps)', "output pixels no input reaches: only the bias",
              kh=2, kw=1, sh=3, sw=3),
        _edge('stride and dilation together', "taps at i*s + k*d - p", sh=2, sw=3, dh=2, dw=2, ph=1, pw=0),
        _edge('groups', "weight (C_in, C_out // groups, kh, kw): the group of input channel c is "
              "c // (C_in / groups)", groups=2, cin=2, cout=2),
        _edge('1x1 kernel with stride 2', "a scatter with gaps", kh=1, kw=1, ph=0, pw=0),
        _edge('single pixel input', "H = W = 1: the output is the kernel", h=1, w=1, ph=0, pw=0),
    ) + BATCH_EDGES + BIAS_EDGE,
    shrink=N_MOVE + (Toward('groups', 1), Toward('cin', 1), Toward('cout', 1), Toward('oph', 0),
                     Toward('opw', 0)) + WINDOW_MOVES + (Simpler('bias', (False, True)),) + VALUE_MOVE,
    layout='torch.nn.functional.conv_transpose2d: x (N, C_in, H, W), weight (C_in, C_out // groups, kh, kw)')


# -- multi-scale deformable attention ----------------------------------------------------------------
def _draw_msda(d):
    levels = d.integer(1, 3)
    return dict(n=_batch(d), lq=d.integer(1, 4), heads=d.integer(1, 3), d=d.integer(1, 4), levels=levels,
                hs=tuple(d.integer(1, 6) for _ in range(levels)),
                ws=tuple(d.integer(1, 6) for _ in range(levels)),
                points=d.integer(1, 4),
                locations=d.choice(('random',) * 6 + ('integer', 'border', 'huge', 'inf', 'nan')),
                attention=d.choice(('random', 'random', 'ones', 'binary')), values=_values(d))


def _exact_pixels(t, size):
    """Where the pixel coordinate ``t`` survives ``x = (t + 0.5) / size`` and the kernels'
    ``x * size - 0.5`` exactly in float64 and in float32 (else a non-integer stand-in)."""
    x = (t + 0.5) / size
    x32 = x.astype(np.float32)
    exact = ((x * size - 0.5 == t) & (x32.astype(np.float64) * size - 0.5 == t)
             & (x32 * np.float32(size) - np.float32(0.5) == t))
    return np.where(exact, t, np.floor(t) + 0.375)


def _level_pixels(rng, mode, shape, size):
    """Pixel coordinates along an axis of ``size`` pixels for the location modes."""
    if mode == 'zero':
        return np.zeros(shape)
    if mode == 'integer':
        return _exact_pixels(rng.integers(-1, size + 1, shape).astype(np.float64), size)
    if mode == 'half':
        return rng.integers(-2, 2 * size + 1, shape) / 2.0
    if mode == 'border':
        return _exact_pixels(border_targets(rng, size, shape), size)
    return rng.uniform(-0.25, 1.25, shape) * size - 0.5


def _build_msda(g, rng):
    n, lq, m, levels, p = g['n'], g['lq'], g['heads'], g['levels'], g['points']
    shapes = np.array(list(zip(g['hs'][:levels], g['ws'][:levels])), dtype=np.int64).reshape(levels, 2)
    starts = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]]).astype(np.int64)
    value = values(rng, (n, int((shapes[:, 0] * shapes[:, 1]).sum()), m, g['d']), g['values'])
    loc = np.empty((n, lq, m, levels, p, 2))
    for lev, (height, width) in enumerate(shapes):
        for axis, size in ((0, width), (1, height)):                        # (x, y) = (column, row)
            pixels = _level_pixels(rng, g['locations'], (n, lq, m, p), int(size))
            loc[:, :, :, lev, :, axis] = (pixels + 0.5) / size
    extreme = EXTREMES.get(g['locations'])
    if extreme is not None:
        loc = np.where(rng.random(loc.shape) < 0.3, rng.choice(extreme, loc.shape), loc)
    attention = weights(rng, g['attention'], (n, lq, m, levels, p))
    return dict(value=value, spatial_shapes=shapes, level_start_index=starts, sampling_locations=loc,
                attention_weights=attention)


MSDA = OpSpec(
    name='ms_deform_attn',
    params=('value', 'spatial_shapes', 'level_start_index', 'sampling_locations', 'attention_weights'),
    arrays=('value', 'spatial_shapes', 'level_start_index', 'sampling_locations', 'attention_weights'),
    base=dict(n=2, lq=3, heads=2, d=2, levels=2, hs=(4, 2), ws=(3, 2), points=2, locations='random',
              attention='random', values='normal'),
    draw=_draw_msda, build=_build_msda,
    edge_cases=(
        _edge('a single 1x1 level', "every sample is on the border of a one-pixel map", levels=1, hs=(1,),
              ws=(1,)),
        _edge('levels of different sizes', "level l starts at level_start_index[l] and has its own H_l, "
              "W_l: a port that uses level 0's size everywhere", levels=3, hs=(4, 2, 1), ws=(5, 3, 2)),
        _edge('locations on pixel centres', "integer pixel coordinates: one-sided slopes",
              locations='integer'),
        _edge('locations at -1, H/W and just inside/outside', "the CUDA rule -1 < h < H (grid_sample "
              "differs at -1)", locations='border'),
        _edge('huge locations', "far outside: 0, no int32 overflow", locations='huge'),
        _edge('infinite locations', "0 and zero gradient", locations='inf'),
        _edge('NaN locations', "the official kernel samples 0 (every comparison false)", locations='nan'),
        _edge('zero attention', "the location gradient vanishes, the attention gradient does not",
              attention='zero'),
        _edge('one channel per head, many points', "D = 1 and P = 8", d=1, points=8),
    ) + BATCH_EDGES,
    shrink=N_MOVE + (Toward('lq', 1), Toward('heads', 1), Toward('d', 1), Toward('levels', 1),
                     Toward('points', 1), Each('hs', 1), Each('ws', 1),
                     Simpler('attention', ('ones', 'binary', 'zero', 'random')),
                     Simpler('locations', OFFSET_MODES)) + VALUE_MOVE,
    layout='Deformable-DETR MSDeformAttnFunction: value (N, S, M, D), spatial_shapes (L, 2) int64, '
           'level_start_index (L,) int64, sampling_locations (N, Lq, M, L, P, 2) normalised (x, y), '
           'attention_weights (N, Lq, M, L, P)')


OPS = {spec.name: spec for spec in (
    CONV2D, DEPTHWISE, POINTWISE, SEPARABLE, OCTAVE, DEFORM, DCNV3, DCNV4, INVOLUTION,
    MAX_POOL, AVG_POOL, ADAPTIVE_AVG, ADAPTIVE_MAX, CONV_TRANSPOSE, MSDA)}


def available_ops():
    """Names of the ops of :data:`OPS` that this numpyconv provides."""
    return [name for name, spec in OPS.items() if spec.available()]


def get(op):
    """The :class:`OpSpec` of ``op``; ``ValueError`` for an unknown or unavailable op."""
    if op not in OPS:
        raise ValueError(f"op must be one of {available_ops()}, got {op!r}")
    spec = OPS[op]
    if not spec.available():
        raise ValueError(f"this numpyconv has no {op}_forward/{op}_backward taking {spec.params}; "
                         f"available ops: {available_ops()}")
    return spec
