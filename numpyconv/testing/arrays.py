"""The arrays of a conformance case: values drawn by mode, stable under shrinking.

* :class:`StableRandom`: random arrays whose element ``[i, j, ...]`` does not depend on the shape,
  so that a shrunk case keeps the values of the samples, channels and pixels it still has;
* :func:`values` (x, weights, biases, dout), :func:`weights` (masks, attention weights),
  :func:`point_offsets` (the sampling offsets of the deformable ops) by *mode*: the value modes of
  a geometry (``values='int'``, ``offsets='border'``, ``mask='zero'``, ...), listed in
  docs/conformance.md.
"""
import math

import numpy as np
from scipy import special

DELTA = 2.0 ** -8    # "just inside / just outside" a border; exact in float32 and float64
HUGE = (1e6, -1e6, 3e9, -3e9, 1e30, -1e30)    # beyond any image; 3e9 overflows an int32 index
EXTREMES = {'huge': HUGE, 'inf': (np.inf, -np.inf), 'nan': (np.nan,)}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z):
    """SplitMix64's finaliser on a uint64 array (a bijection that scrambles every bit)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class StableRandom:
    """Random arrays whose element ``[i, j, ...]`` depends on the key, on which draw it is (the
    k-th call) and on ``(i, j, ...)`` only, not on the shape: when the shrinker removes a sample, a
    channel or a row, every remaining element keeps its value. The methods follow
    ``numpy.random.Generator``'s (a shape is always given)."""

    def __init__(self, *key):
        self.key = np.uint64(0)
        with np.errstate(over='ignore'):
            for k in key:
                self.key = _mix(np.array([self.key ^ np.uint64(k)], dtype=np.uint64))[0]
        self.draws = 0

    def _bits(self, shape):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.draws += 1
        with np.errstate(over='ignore'):
            z = np.full(shape, self.key + np.uint64(self.draws) * _GOLDEN, dtype=np.uint64)
            for axis, size in enumerate(shape):
                index = np.arange(size, dtype=np.uint64).reshape((-1,) + (1,) * (len(shape) - axis - 1))
                z = _mix(z + (index + np.uint64(1)) * _GOLDEN)
        return z

    def random(self, shape):
        """U[0, 1) (53 bits), never exactly 0."""
        return ((self._bits(shape) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53

    def uniform(self, low, high, shape):
        return low + (high - low) * self.random(shape)

    def standard_normal(self, shape):
        return special.ndtri(self.random(shape))

    def integers(self, low, high, shape):
        """Integers in ``[low, high)``."""
        return low + (self._bits(shape) % np.uint64(high - low)).astype(np.int64)

    def choice(self, options, size):
        return np.asarray(options)[self.integers(0, len(options), size)]

    def permutation(self, n):
        return np.argsort(self._bits(n), kind='stable')


def values(rng, shape, mode):
    """Values of x, weights, biases and dout: N(0, 1) or small integers (exact arithmetic)."""
    if mode == 'int':
        return rng.integers(-3, 4, shape).astype(np.float64)
    if mode == 'distinct':                                  # integers, no two equal (no max tie)
        size = math.prod(shape)
        return (rng.permutation(size) - size // 2).astype(np.float64).reshape(shape)
    if mode == 'ties':
        return rng.integers(0, 2, shape).astype(np.float64)
    x = rng.standard_normal(shape)
    if mode == 'nan':                                       # NaN and -inf among normal values
        x[rng.random(shape) < 0.15] = np.nan
        x[rng.random(shape) < 0.1] = -np.inf
    return x


def dout_like(out, rng, mode):
    """An output gradient for ``out`` (an array, or a tuple with None entries for octave)."""
    mode = 'int' if mode == 'int' else 'normal'
    if isinstance(out, tuple):
        return tuple(None if o is None else values(rng, o.shape, mode) for o in out)
    return values(rng, out.shape, mode)


def border_targets(rng, size, shape):
    """Sampling coordinates on a border of an axis of ``size`` pixels: -1 and ``size`` (the last
    positions with a defined slope / the first without), just inside and outside each, the first and
    last pixel, and some interior points."""
    border = np.array([-1 - DELTA, -1.0, -1 + DELTA, -DELTA, 0.0, size - 1.0, size - 1 + DELTA,
                       size - DELTA, float(size), size + DELTA])
    t = rng.choice(border, shape)
    return np.where(rng.random(shape) < 0.25, rng.uniform(0, max(size - 1, 0), shape), t)


def point_offsets(rng, mode, shape, base_h, base_w, size, scale=1.0):
    """Offsets ``(dy, dx)``, each of ``shape`` ``(N, G, P, Ho, Wo)``, for the sampling positions
    ``base + scale * offset``; ``base_h``/``base_w`` broadcast to ``(P, Ho, Wo)``."""
    if mode == 'zero':
        return np.zeros(shape), np.zeros(shape)
    if mode == 'integer':                                   # positions on integer coordinates
        return (rng.integers(-2, 3, shape).astype(np.float64) for _ in 'yx')
    if mode == 'half':
        return (rng.integers(-4, 5, shape) / 2.0 for _ in 'yx')
    if mode == 'border':
        return ((border_targets(rng, size[0], shape) - base_h) / scale,
                (border_targets(rng, size[1], shape) - base_w) / scale)
    dy, dx = rng.uniform(-2.5, 2.5, shape), rng.uniform(-2.5, 2.5, shape)
    extreme = EXTREMES.get(mode)
    if extreme is not None:
        dy, dx = (np.where(rng.random(shape) < 0.3, rng.choice(extreme, shape), a) for a in (dy, dx))
    return dy, dx


def weights(rng, mode, shape):
    """Masks and attention weights: ones, 0/1, zeros or U(-0.5, 1.5)."""
    if mode == 'ones':
        return np.ones(shape)
    if mode == 'binary':
        return rng.integers(0, 2, shape).astype(np.float64)
    if mode == 'zero':
        return np.zeros(shape)
    return rng.uniform(-0.5, 1.5, shape)
