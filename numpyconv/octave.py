r"""Octave Convolution (OctConv), compatible with d-li14/octconv.pytorch ``OctaveConv`` (d639428).

Chen et al., "Drop an Octave", ICCV 2019. A feature map is a pair: high-frequency part ``x_h`` at
full resolution and low-frequency part ``x_l`` at half resolution. Equations:
docs/derivations/octave.md. Shapes (``G_ab`` = groups of path ``ab``)::

    x_h    (N, Ci_h, H, W)            x_l    (N, Ci_l, H/2, W/2) or None
    w_h2h  (Co_h, Ci_h / G_h2h, kh, kw)    w_h2l  (Co_l, Ci_h / G_h2l, kh, kw)
    w_l2h  (Co_h, Ci_l / G_l2h, kh, kw)    w_l2l  (Co_l, Ci_l / G_l2l, kh, kw)      (any may be None)
    y_h    (N, Co_h, Ho, Wo)          y_l    (N, Co_l, Ho/2, Wo/2) or None
    Ci_l = int(alpha_in * C_in), Ci_h = C_in - Ci_l; the same for the outputs          (eq. 1)

Forward, with ``K_ab(z)`` = conv2d(z, w_ab, stride=1, padding, dilation, G_ab), ``P`` = 2x2 average
pool (floor mode), ``U`` = nearest upsampling x2 and ``s = 1`` for stride 2, ``0`` for stride 1::

    xt_h = P^s x_h,  xt_l = P^s x_l                           (eq. 5: stride 2 pools, convs stay stride 1)
    y_h = K_h2h(xt_h) + U^(1-s) K_l2h(x_l)                    (eq. 6, 7: l2h reads the UN-pooled x_l)
    y_l = K_h2l(P xt_h) + K_l2l(xt_l)

A term is dropped when its weight is None, and the two ``x_l`` terms when ``x_l`` is None (first
layer, or a bare tensor given to the official module); an output with no term is None.
``OctaveConv2d`` adds each path's bias: ``y_h += b_h2h + b_l2h``, ``y_l += b_h2l + b_l2l`` (eq. 8).

Backward (``K^T`` = transposed convolution, ``corr`` = weight gradient of conv2d; docs eq. 10-17)::

    P^T g: spreads g/4 over each 2x2 window (0 on a dropped odd row/column)   (eq. 10)
    U^T g: sums each 2x2 block                                                  (eq. 11)
    g_l2h = U^T(dy_h) if stride 1 else dy_h                                     (eq. 13)
    dw_h2h = corr(xt_h, dy_h)      dw_h2l = corr(P xt_h, dy_l)                  (eq. 14)
    dw_l2h = corr(x_l, g_l2h)      dw_l2l = corr(xt_l, dy_l)
    db_h2h = db_l2h = sum(dy_h),   db_h2l = db_l2l = sum(dy_l)                  (eq. 15)
    dxt_h = K_h2h^T(dy_h) + P^T K_h2l^T(dy_l),   dx_h = (P^T)^s dxt_h           (eq. 16)
    dx_l  = K_l2h^T(g_l2h) + (P^T)^s K_l2l^T(dy_l)                              (eq. 17)

The sizes of the terms of one output must agree (eq. 9): with 'same'-style padding this needs
``x_l`` of size ``(H//2, W//2)`` and, at stride 1, even ``H, W``; otherwise a ValueError (the official
code fails with a broadcast error, d-li14/octconv.pytorch#7).

Example::

    >>> layer = OctaveConv2d(8, 8, 3, alpha_in=0.5, alpha_out=0.5, padding=1, rng=0)
    >>> x_h = np.ones((1, 4, 8, 8), np.float32); x_l = np.ones((1, 4, 4, 4), np.float32)
    >>> y_h, y_l = layer((x_h, x_l))
    >>> y_h.shape, y_l.shape
    ((1, 4, 8, 8), (1, 4, 4, 4))
    >>> dx_h, dx_l = layer.backward((np.ones_like(y_h), np.ones_like(y_l)))
"""
import math
import numbers
from collections import namedtuple

import numpy as np

from ._checks import Cache, check_cache, float_array, grad_out, pair, positive_int, same_dtype
from .pooling import avg_pool2d_backward, avg_pool2d_forward
from .upsample import upsample_nearest2d_backward, upsample_nearest2d_forward
from .conv import Conv2d, check_hyper_parameters, conv2d_backward, conv2d_forward, conv_geometry
from .module import Module

PATH_NAMES = ('h2h', 'h2l', 'l2h', 'l2l')        # the order of the op's weight arguments
PART_NAMES = {'h': 'x_h', 'l': 'x_l'}

# source/target part, number of 2x2 pools applied to the source before the conv, upsample after
Path = namedtuple('Path', 'name source target pools upsample')


def octave_paths(stride):
    """The four paths of (eq. 6) at ``stride`` 1 or 2."""
    s = 1 if stride == 2 else 0
    return (Path('h2h', 'h', 'h', s, False), Path('h2l', 'h', 'l', s + 1, False),
            Path('l2h', 'l', 'h', 0, s == 0), Path('l2l', 'l', 'l', s, False))


def octave_channels(channels, alpha):
    """``(high, low)`` split of ``channels`` with the official rule ``low = int(alpha * C)`` (eq. 1).

    >>> octave_channels(90, 0.7)        # float product 62.99999..., truncated
    (28, 62)
    """
    low = int(float(alpha) * channels)
    return channels - low, low


def official_path_groups(groups, alpha_in):
    """Groups of each path in d-li14 ``OctaveConv`` (eq. 2): ceilings of the float products."""
    return dict(h2h=math.ceil(groups - alpha_in * groups), h2l=groups, l2h=groups,
                l2l=math.ceil(alpha_in * groups))


def octave_stride(stride):
    """Return 1 or 2: the official module pools for stride 2 and allows nothing else."""
    sh, sw = pair(stride, 'stride', minimum=1)
    if sh != sw or sh not in (1, 2):
        raise ValueError(f"stride must be 1 or 2 (the official OctaveConv average-pools for stride "
                         f"2 and runs stride-1 convolutions), got {stride!r}")
    return sh


# -- argument checks ---------------------------------------------------------------------------------
def _path_groups(groups):
    """``groups``: one int for every path, or a 4-tuple in the order h2h, h2l, l2h, l2l."""
    if isinstance(groups, (tuple, list)):
        if len(groups) != 4:
            raise ValueError(f"groups must be an int or 4 ints (h2h, h2l, l2h, l2l), got {groups!r}")
        return {name: positive_int(g, f'groups[{k}]') for k, (name, g) in enumerate(zip(PATH_NAMES, groups))}
    g = positive_int(groups, 'groups')
    return dict.fromkeys(PATH_NAMES, g)


def _check_operands(parts, weights, groups, paths):
    """Types, ranks, dtypes, batch and channel counts of the operands of the evaluated paths."""
    float_array(parts['h'], 'x_h', 4, "(N, C_h, H, W)")
    if parts['l'] is not None:
        float_array(parts['l'], 'x_l', 4, "(N, C_l, H/2, W/2)")
        if parts['l'].shape[0] != parts['h'].shape[0]:
            raise ValueError(f"x_l must have the batch size of x_h ({parts['h'].shape[0]}), got x_l "
                             f"of shape {parts['l'].shape}")
    for name, w in weights.items():
        if w is not None:
            float_array(w, f'w_{name}', 4, "(C_out, C_in // groups, kh, kw)")
    same_dtype(*[(PART_NAMES[k], v) for k, v in parts.items()],
               *[(f'w_{k}', v) for k, v in weights.items()])
    for path in paths:
        _check_path_channels(path, parts[path.source], weights[path.name], groups[path.name])
    if not paths:
        raise ValueError("no path can be evaluated: give w_h2h or w_h2l (or w_l2h / w_l2l together "
                         "with x_l)")
    _check_output_channels(weights, paths)


def _check_path_channels(path, x, w, groups):
    c_in, c_out = x.shape[1], w.shape[0]
    if c_in % groups:
        raise ValueError(f"groups={groups} of the {path.name} path must divide the channels of "
                         f"{PART_NAMES[path.source]}, got {PART_NAMES[path.source]} of shape {x.shape}")
    if c_out % groups or w.shape[1] * groups != c_in:
        raise ValueError(f"w_{path.name} must have shape ({c_out}, {c_in // groups}, kh, kw) with "
                         f"{c_out} divisible by groups={groups}, for {PART_NAMES[path.source]} of "
                         f"shape {x.shape}; got {w.shape}")


def _check_output_channels(weights, paths):
    """The paths summed into one output (eq. 7) must give it the same number of channels."""
    first = {}
    for path in paths:
        w, ref = weights[path.name], first.setdefault(path.target, path.name)
        c_out = weights[ref].shape[0]
        if w.shape[0] != c_out:
            raise ValueError(f"w_{path.name} must have shape {(c_out,) + w.shape[1:]}: y_{path.target} "
                             f"has the {c_out} output channels of w_{ref}; got {w.shape}")


def _pooled_hw(hw, times):
    return (hw[0] >> times, hw[1] >> times)


def _plan_shapes(in_hw, kernels, paths, padding, dilation, shapes_text):
    """Conv output size of every path; ValueError when two terms of one output differ (eq. 9)."""
    conv_hw, target_hw = {}, {}
    for path in paths:
        hw = _pooled_hw(in_hw[path.source], path.pools)
        if min(hw) < 1:
            raise ValueError(f"{PART_NAMES[path.source]} is too small: the {path.name} path pools its "
                             f"spatial size {in_hw[path.source]} {path.pools} time(s) to {hw} "
                             f"({shapes_text})")
        conv_hw[path.name] = conv_geometry(hw, kernels[path.name], 1, padding, dilation).out_hw
        scale = 2 if path.upsample else 1
        target_hw[path.name] = (conv_hw[path.name][0] * scale, conv_hw[path.name][1] * scale)
    for target in 'hl':
        sizes = {p.name: target_hw[p.name] for p in paths if p.target == target}
        if len(set(sizes.values())) > 1:
            detail = ' but '.join(f"the {name} path gives {hw}" for name, hw in sizes.items())
            raise ValueError(f"y_{target}: {detail} for {shapes_text}. The terms of one output must "
                             f"have the same size: use x_l of size (H//2, W//2), 'same'-style padding "
                             f"and, at stride 1, even H and W")
    return conv_hw, target_hw


def _evaluated_paths(parts, weights, stride):
    return [p for p in octave_paths(stride)
            if weights[p.name] is not None and parts[p.source] is not None]


def _add(total, term):
    """None-aware sum of two arrays (None = no term yet)."""
    if total is None:
        return term
    return total if term is None else total + term


# -- the functional op ---------------------------------------------------------------------------------
def _pyramid_forward(x, depth):
    """Levels ``[x, P x, P P x, ...]`` (``depth + 1`` of them) and the pooling caches (eq. 3, 5)."""
    levels, caches = [x], []
    for _ in range(depth):
        pooled, cache = avg_pool2d_forward(levels[-1], 2)
        levels.append(pooled)
        caches.append(cache)
    return levels, caches


def _pyramid_backward(level_grads, caches, shape, dtype):
    """Gradient of the base from the gradients arriving at each level (eq. 10, 16, 17)."""
    grad = level_grads[-1]
    for k in reversed(range(len(caches))):
        pushed = None if grad is None else avg_pool2d_backward(grad, caches[k])[0]   # P^T (eq. 10)
        grad = _add(level_grads[k], pushed)
    return np.zeros(shape, dtype=dtype) if grad is None else grad


def octave_conv2d_forward(x_h, x_l, w_h2h, w_h2l, w_l2h, w_l2l, stride=1, padding=0, dilation=1,
                          groups=1):
    """Octave convolution as d-li14 ``OctaveConv.forward`` (eq. 3-7).

    No bias: see ``OctaveConv2d``. ``y_l`` (or ``y_h``) is None when no evaluated path feeds it.

    Parameters
    ----------
    x_h : ndarray (N, C_h, H, W)
        The high-frequency part.
    x_l : ndarray (N, C_l, H/2, W/2) or None
        The low-frequency part; None skips the l2h and l2l paths (first layer).
    w_h2h, w_h2l, w_l2h, w_l2l : ndarray (C_target, C_source // groups, kh, kw) or None
        The four paths' weights; None is an absent path.
    stride : 1 or 2
        2 = average pool, then stride-1 convolutions.
    padding, dilation : int or pair
        Of every path.
    groups : int or 4-tuple
        One int for every path or ``(h2h, h2l, l2h, l2l)`` (``OctaveConv2d`` passes the official
        per-path groups).

    Returns
    -------
    out : tuple
        ``(y_h (N, C_out_h, Ho, Wo), y_l (N, C_out_l, Ho/2, Wo/2))``, either None when no path feeds it.
    cache : Cache
        ``Cache('octave_conv2d')`` with ``records`` (per evaluated path: the path, its conv2d cache
        and its upsampling cache or None), ``pool_caches`` (per part), ``in_shapes``,
        ``weight_shapes`` and ``out_shapes`` (dicts; None entries for absent inputs / outputs) and
        ``dtype``.
    """
    parts = {'h': x_h, 'l': x_l}
    weights = dict(zip(PATH_NAMES, (w_h2h, w_h2l, w_l2h, w_l2l)))
    stride = octave_stride(stride)
    groups = _path_groups(groups)
    paths = _evaluated_paths(parts, weights, stride)
    _check_operands(parts, weights, groups, paths)
    in_hw = {k: None if v is None else v.shape[2:] for k, v in parts.items()}
    _plan_shapes(in_hw, {p.name: weights[p.name].shape[2:] for p in paths}, paths, padding, dilation,
                 _shapes_text(parts, stride))                           # raises on mismatch (eq. 9)
    pyramids = {k: _pyramid_forward(v, max([p.pools for p in paths if p.source == k], default=0))
                for k, v in parts.items() if v is not None}
    outputs, records = {'h': None, 'l': None}, []
    for path in paths:
        z = pyramids[path.source][0][path.pools]                       # P^pools x (eq. 5)
        y, conv_cache = conv2d_forward(z, weights[path.name], None, 1, padding, dilation,
                                       groups[path.name])
        up_cache = None
        if path.upsample:
            y, up_cache = upsample_nearest2d_forward(y, 2)              # U (eq. 4, 6)
        outputs[path.target] = _add(outputs[path.target], y)            # (eq. 7)
        records.append((path, conv_cache, up_cache))
    cache = Cache('octave_conv2d', records=records, pool_caches={k: v[1] for k, v in pyramids.items()},
                 in_shapes={k: None if v is None else v.shape for k, v in parts.items()},
                 weight_shapes={k: None if v is None else v.shape for k, v in weights.items()},
                 out_shapes={k: None if v is None else v.shape for k, v in outputs.items()},
                 dtype=x_h.dtype)
    return (outputs['h'], outputs['l']), cache


def _shapes_text(parts, stride):
    shapes = ', '.join(f"{PART_NAMES[k]} of shape {None if v is None else v.shape}" for k, v in parts.items())
    return f"{shapes}, stride {stride}"


def _output_grads(dout, cache):
    """``{'h': dy_h, 'l': dy_l}`` checked against the forward outputs (None = zero gradient)."""
    if not isinstance(dout, (tuple, list)) or len(dout) != 2:
        raise TypeError(f"dout must be a pair (dy_h, dy_l), got {type(dout).__name__}")
    grads = {}
    for target, dy in zip('hl', dout):
        name, shape = f'dy_{target}', cache['out_shapes'][target]
        if dy is not None:
            if shape is None:
                raise ValueError(f"{name} must be None: the forward produced no y_{target}, got an "
                                 f"array of shape {np.shape(dy)}")
            dy = grad_out(dy, shape, cache['dtype'], name)
        grads[target] = dy
    return grads


def octave_conv2d_backward(dout, cache):
    """Gradients of :func:`octave_conv2d_forward`.

    Parameters
    ----------
    dout : pair
        ``(dy_h, dy_l)``, each of its output's shape; a None entry is a zero gradient.
    cache : Cache
        The cache :func:`octave_conv2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx_h, dx_l, dw_h2h, dw_h2l, dw_l2h, dw_l2l)``, each of its input's shape; None for inputs
        given as None and zero for inputs given but not used (``w_l2h``/``w_l2l`` without ``x_l``).
    """
    cache = check_cache(cache, 'octave_conv2d')
    dys = _output_grads(dout, cache)
    pool_caches, dtype = cache['pool_caches'], cache['dtype']
    level_grads = {k: [None] * (len(c) + 1) for k, c in pool_caches.items()}
    dweights = {}
    for path, conv_cache, up_cache in cache['records']:
        grad = dys[path.target]
        if grad is None:
            continue
        if path.upsample:
            grad = upsample_nearest2d_backward(grad, up_cache)[0]         # U^T (eq. 11, 13)
        dz, dweights[path.name], _ = conv2d_backward(grad, conv_cache)    # K^T, corr (eq. 12, 14)
        levels = level_grads[path.source]
        levels[path.pools] = _add(levels[path.pools], dz)
    dparts = {k: None if shape is None else
              _pyramid_backward(level_grads[k], pool_caches[k], shape, dtype)     # (eq. 16, 17)
              for k, shape in cache['in_shapes'].items()}
    dws = tuple(None if shape is None else dweights.get(name, np.zeros(shape, dtype=dtype))
                for name, shape in cache['weight_shapes'].items())
    return (dparts['h'], dparts['l']) + dws


# -- the layer ---------------------------------------------------------------------------------------
def _alpha(value, name):
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number in [0, 1), got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r} (the official OctaveConv accepts 1 "
                         f"at construction but its forward then calls the missing conv_h2h path)")
    return float(value)


class OctaveConv2d(Module):
    """d-li14 ``OctaveConv``; keys ``conv_{h2h,h2l,l2h,l2l}.weight`` (and ``.bias``) of present paths.

    ``forward(x)`` takes ``x`` (high part only: the first layer) or ``(x_h, x_l)`` and returns
    ``(y_h, y_l)`` (``y_l`` None when ``alpha_out == 0``, or in the depthwise first layer);
    ``backward((dy_h, dy_l))`` returns ``(dx_h, dx_l)``, ``dx_l`` None when there was no ``x_l``.
    Paths (eq. 2): h2l and l2h are absent for ``groups == in_channels`` (depthwise: no exchange),
    l2l and l2h for ``alpha_in == 0``, h2l and l2l for ``alpha_out == 0``.

    Parameters
    ----------
    in_channels, out_channels : int
        Split into low ``int(alpha * C)`` and high ``C - int(alpha * C)`` parts (eq. 1).
    kernel_size : int or pair
    alpha_in, alpha_out : float in [0, 1)
        The low-frequency share of the input and output channels.
    stride : 1 or 2
    padding, dilation : int or pair
    groups : int
        As the official module (per-path groups, eq. 2).
    bias : bool
        Learn a bias per path.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, in_channels, out_channels, kernel_size, alpha_in=0.5, alpha_out=0.5, stride=1,
                 padding=0, dilation=1, groups=1, bias=False, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.in_channels = positive_int(in_channels, 'in_channels')
        self.out_channels = positive_int(out_channels, 'out_channels')
        self.groups = positive_int(groups, 'groups')
        self.alpha_in, self.alpha_out = _alpha(alpha_in, 'alpha_in'), _alpha(alpha_out, 'alpha_out')
        self.stride = octave_stride(stride)
        self.kernel_size = check_hyper_parameters(kernel_size, 1, padding, dilation)
        self.padding, self.dilation = padding, dilation
        self.in_split = dict(zip('hl', octave_channels(self.in_channels, self.alpha_in)))    # (eq. 1)
        self.out_split = dict(zip('hl', octave_channels(self.out_channels, self.alpha_out)))
        self.depthwise = self.groups == self.in_channels
        self.path_groups = official_path_groups(self.groups, self.alpha_in)                # (eq. 2)
        self.paths = {}
        for path in sorted(octave_paths(self.stride), key=lambda p: -PATH_NAMES.index(p.name)):
            if self._path_exists(path):      # registered l2l, l2h, h2l, h2h as the official module
                self.paths[path.name] = self.add_module(f'conv_{path.name}', self._make_path(path, bias))
        # the op's groups argument (h2h, h2l, l2h, l2l); 1 stands in for an absent path
        self.op_groups = tuple(self.path_groups[n] if n in self.paths else 1 for n in PATH_NAMES)

    def _path_exists(self, path):
        if path.source == 'l' and self.alpha_in == 0 or path.target == 'l' and self.alpha_out == 0:
            return False
        return path.source == path.target or not self.depthwise

    def _make_path(self, path, bias):
        c_in, c_out = self.in_split[path.source], self.out_split[path.target]
        groups = self.path_groups[path.name]
        split = (f"in_channels={self.in_channels} with alpha_in={self.alpha_in} gives "
                 f"{self.in_split['h']} high / {self.in_split['l']} low input channels, "
                 f"out_channels={self.out_channels} with alpha_out={self.alpha_out} gives "
                 f"{self.out_split['h']} high / {self.out_split['l']} low output channels")
        if c_in == 0 or c_out == 0:
            raise ValueError(f"conv_{path.name} would have {c_in} input and {c_out} output channels: "
                             f"{split}")
        if c_in % groups or c_out % groups:
            raise ValueError(f"conv_{path.name} has groups={groups} (official rule for groups="
                             f"{self.groups}), which must divide its {c_in} input and {c_out} output "
                             f"channels: {split}")
        return Conv2d(c_in, c_out, self.kernel_size, 1, self.padding, self.dilation, groups, bias,
                      dtype=self.dtype, rng=self.rng)

    def _weights(self):
        return [self.paths[n]._params['weight'] if n in self.paths else None for n in PATH_NAMES]

    def _split_input(self, x):
        if isinstance(x, (tuple, list)):
            if len(x) != 2:
                raise ValueError(f"x must be an array or a pair (x_h, x_l), got a "
                                 f"{type(x).__name__} of length {len(x)}")
            x_h, x_l = x
        else:
            x_h, x_l = x, None
        self._check_part(x_h, 'h')
        if x_l is not None:
            if self.alpha_in == 0:
                raise ValueError(f"x_l must be None for alpha_in=0 (the layer has no low-frequency "
                                 f"input), got an array of shape {np.shape(x_l)}")
            self._check_part(x_l, 'l')
        return x_h, x_l

    def _check_part(self, x, part):
        name, channels = PART_NAMES[part], self.in_split[part]
        self._check_input(x, name)
        if x.shape[1] != channels:
            raise ValueError(f"{name} must have shape (N, {channels}, H, W): in_channels="
                             f"{self.in_channels} with alpha_in={self.alpha_in} splits into "
                             f"{self.in_split['h']} high and {self.in_split['l']} low channels; got "
                             f"{x.shape}")

    def forward(self, x):
        x_h, x_l = self._split_input(x)
        (y_h, y_l), self._cache = octave_conv2d_forward(x_h, x_l, *self._weights(), self.stride,
                                                        self.padding, self.dilation, self.op_groups)
        self._evaluated = [n for n in self.paths if x_l is not None or n[0] == 'h']
        outputs = {'h': y_h, 'l': y_l}
        for name in self._evaluated:
            if 'bias' in self.paths[name]._params:
                outputs[name[2]] += self.paths[name]._params['bias'][:, None, None]     # (eq. 8)
        return outputs['h'], outputs['l']

    def backward(self, dout):
        dys = _output_grads(dout, self._cache)                 # checked, in the layer's dtype
        grads = octave_conv2d_backward((dys['h'], dys['l']), self._cache)
        for name, dw in zip(PATH_NAMES, grads[2:]):
            if name in self.paths:
                self.paths[name]._add_grad('weight', dw)                              # (eq. 14)
        for name in self._evaluated:
            dy = dys[name[2]]
            if 'bias' in self.paths[name]._grads and dy is not None:
                self.paths[name]._add_grad('bias', dy.sum(axis=(0, 2, 3)))           # (eq. 15)
        return grads[0], grads[1]

    def macs(self, input_shape):
        """Multiply-adds of the evaluated convolutions at their own resolutions, as the paper (eq. 18).

        ``input_shape`` is the full layer input ``(N, in_channels, H, W)`` at the high resolution;
        the low part, present when ``alpha_in > 0``, is ``(N, Ci_l, H//2, W//2)``. Returns the output
        shape in the same convention: ``(N, produced channels, Ho, Wo)``, ``Ho, Wo`` of ``y_h``.
        """
        input_shape = self._check_input_shape(input_shape, self.in_channels)
        n, _, h, w = input_shape
        in_hw = {'h': (h, w), 'l': (h // 2, w // 2) if self.alpha_in > 0 else None}
        paths = [p for p in octave_paths(self.stride) if p.name in self.paths and in_hw[p.source]]
        conv_hw, target_hw = _plan_shapes(in_hw, dict.fromkeys(self.paths, self.kernel_size), paths,
                                          self.padding, self.dilation, f"input_shape {input_shape}")
        total = 0
        for p in paths:
            per_output = self.in_split[p.source] // self.path_groups[p.name] * math.prod(self.kernel_size)
            total += n * self.out_split[p.target] * math.prod(conv_hw[p.name]) * per_output
        produced = sum(self.out_split[t] for t in 'hl' if any(p.target == t for p in paths))
        return total, (n, produced) + target_hw['h2h']
