"""Argument validation shared by every op and layer.

Every public function checks its inputs here first, so that bad input fails early with a
message naming the argument, the shape received and the shape expected (API contract).
Nothing in this module copies or mutates an array it is given.
"""
import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)
# The largest size, stride, padding or count an argument may take: the compiled loops index in 64-bit
# integers, and products of two such values must not overflow them.
MAX_INT = 2 ** 31 - 1


def is_int(value):
    """Whether ``value`` is an integer (Python or NumPy), not a bool (a plain ``int`` is checked first:
    the ABC check of ``numbers.Integral`` costs a microsecond, and layers check ints on every call)."""
    return type(value) is int or (isinstance(value, (numbers.Integral, np.integer))
                                  and not isinstance(value, (bool, np.bool_)))


def pair(value, name, *, minimum=None):
    """Return ``value`` as an ``(h, w)`` tuple of ints; ``value`` is an int or a pair.

    >>> pair(3, 'stride')
    (3, 3)
    """
    if is_int(value):
        out = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and is_int(value[0]) and is_int(value[1]):
        out = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if minimum is not None and min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if max(abs(out[0]), abs(out[1])) > MAX_INT:
        raise ValueError(f"{name} must be at most {MAX_INT} in magnitude, got {value!r}")
    return out


def padding4(padding, kernel_size, stride, dilation):
    """Resolve ``padding`` to ``(top, bottom, left, right)`` with PyTorch's rules.

    ``padding`` is an int, a pair ``(p_h, p_w)`` (symmetric), ``'valid'`` (0) or ``'same'``
    (stride 1 only; total ``d*(k-1)`` per axis, the odd extra row/column at the bottom/right).
    """
    if isinstance(padding, str):
        if padding == 'valid':
            return (0, 0, 0, 0)
        if padding == 'same':
            if stride != (1, 1):
                raise ValueError(f"padding='same' is not supported for strided convolutions "
                                 f"(stride={stride}); use stride 1 or explicit padding")
            (kh, kw), (dh, dw) = kernel_size, dilation
            th, tw = dh * (kh - 1), dw * (kw - 1)
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = pair(padding, 'padding')
    if min(ph, pw) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return (ph, ph, pw, pw)


def float_array(x, name, ndim=None, shape_hint=None):
    """Check that ``x`` is a float32/float64 ndarray of rank ``ndim``; return it unchanged."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    if ndim is not None and x.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        hint = shape_hint or f"{ndim}-D"
        raise ValueError(f"{name} must be {hint}, got shape {x.shape}")
    return x


def same_dtype(*named):
    """Check that all given ``(name, array)`` pairs (None skipped) share one float dtype."""
    arrays = [(n, a) for n, a in named if a is not None]
    dtypes = {a.dtype for _, a in arrays}
    if len(dtypes) > 1:
        desc = ', '.join(f"{n}: {a.dtype}" for n, a in arrays)
        raise TypeError(f"all arrays must have the same float dtype, got {desc}")
    return arrays[0][1].dtype


def expect_shape(x, expected, name):
    """Raise ``ValueError`` unless ``x.shape == expected``."""
    if x.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {x.shape}")
    return x


def positive_int(value, name):
    """``value`` as an int >= 1: ``TypeError`` for a non-int (a float, a bool), ``ValueError`` below 1."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    if value > MAX_INT:
        raise ValueError(f"{name} must be at most {MAX_INT}, got {value}")
    return int(value)


def count_int(value, name):
    """``value`` as an int >= 0 (a count such as an epoch or an iteration)."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value}")
    return int(value)


def flag(value, name):
    """``value`` as a bool; ``TypeError`` for anything but a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def dtype_arg(dtype):
    """Check a layer's ``dtype`` argument: float32 or float64; None means float32, the default (as
    PyTorch's ``dtype=None``)."""
    try:
        dt = np.dtype(np.float32 if dtype is None else dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def real(value, name, low=-math.inf, high=math.inf, strict_low=False):
    """``value`` as a float, checked to be finite and in ``[low, high]`` (``(low, high]`` if strict)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    above = value > low if strict_low else value >= low
    if not (math.isfinite(value) and above and value <= high):
        if low == -math.inf and high == math.inf:
            raise ValueError(f"{name} must be a finite real number, got {value!r}")
        interval = f"{'(' if strict_low else '['}{low}, {high}{']' if high < math.inf else ')'}"
        raise ValueError(f"{name} must be finite and in {interval}, got {value!r}")
    return float(value)


# -- caches and output gradients: what every backward checks first ------------------------------
class Cache(dict):
    """What a forward pass keeps for its backward pass: a dict of arrays and hyper-parameters that
    knows which op made it (``cache.op``, e.g. ``'conv2d'``). A backward never modifies its cache,
    so it may be called again on the same cache."""

    def __init__(self, op, **fields):
        super().__init__(**fields)
        self.op = op

    def __repr__(self):
        return f"Cache(op={self.op!r}, keys={sorted(self)})"

    def __reduce__(self):                                  # copy / deepcopy / pickle keep the op
        return (_rebuild_cache, (self.op, dict(self)))


def _rebuild_cache(op, fields):
    return Cache(op, **fields)


def check_cache(cache, op):
    """Return ``cache`` if ``op``'s forward made it; otherwise a ``TypeError`` naming both ops.

    >>> check_cache(Cache('relu', positive=None), 'relu').op
    'relu'
    """
    if isinstance(cache, Cache) and cache.op == op:
        return cache
    if isinstance(cache, Cache):
        raise TypeError(f"{op}_backward was given the cache of {cache.op}_forward; pass the cache "
                        f"that {op}_forward returned")
    raise TypeError(f"{op}_backward needs the cache returned by {op}_forward, got "
                    f"{type(cache).__name__} {_short(cache)}")


def _short(obj):
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + '...'


def grad_out(dout, shape, dtype, name='dout'):
    """Check an output gradient and return it in the forward's ``dtype``.

    ``dout`` must be a real floating array (float16, float32 or float64) of the output's ``shape``;
    one of another float dtype than the forward's is cast to the forward's, as PyTorch's autograd
    casts a gradient to its tensor's dtype. Integer, bool and complex gradients raise ``TypeError``.
    """
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of shape {tuple(shape)}, got "
                        f"{type(dout).__name__}")
    if dout.dtype.kind != 'f':
        raise TypeError(f"{name} must be a real floating array (float32 or float64, cast to the "
                        f"forward's {np.dtype(dtype)}), got dtype {dout.dtype}")
    expect_shape(dout, shape, name)
    return dout.astype(dtype, copy=False)
