"""Layer machinery: :class:`Module`, :class:`Sequential` and PyTorch's initialisers.

A layer owns named parameters, buffers and child layers. Keys compose with dots exactly as in
``torch.nn.Module.state_dict()`` (``depthwise.weight``, ``conv1.bn.running_mean``), so an
official module's state_dict loads unchanged::

    layer.load_state_dict({k: v.numpy() for k, v in torch_module.state_dict().items()})

Contract of every layer (API.md):

* ``forward(x)`` / ``__call__`` computes the output and keeps what backward needs;
* ``backward(dout) -> dx`` *accumulates* parameter gradients into ``grads`` (``+=``, through
  :meth:`Module._add_grad`);
* ``params`` / ``grads``: flat dicts ``key -> array`` (the arrays themselves, so optimisers update
  them in place); ``state_dict()`` adds the buffers and returns copies;
* ``train()`` / ``eval()``, ``zero_grad()``.

Subclasses call :meth:`add_param`, :meth:`add_buffer` and :meth:`add_module` in ``__init__`` and
reach their own arrays through ``self._params[name]`` / ``self._grads[name]``; a backward adds a
gradient with ``self._add_grad(name, grad)``. ``zero_grad`` zeroes lazily: it marks the gradients,
the next ``_add_grad`` writes instead of adding, and the gradients that no backward wrote are
filled with zeros when the outermost backward returns or when ``grads`` is read, so a training step
does not pass over every gradient array twice. What a forward pass
keeps for the backward pass goes in attributes whose names end in ``cache`` (``self._cache``,
``self._mask_cache``): under :class:`no_grad` they are dropped when the forward returns, for every
layer, by the one mechanism here (``Module.__init_subclass__`` wraps each ``forward``).
"""
import copy
import functools
import math
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from ._checks import Cache, dtype_arg, float_array, is_int
from .memory import require_memory


def make_rng(rng):
    """A ``numpy.random.Generator`` from a seed (an int >= 0), a Generator, a ``SeedSequence`` or
    ``BitGenerator``, or None (fresh entropy); ``TypeError`` (``ValueError`` for a negative seed)
    naming ``rng`` for anything else."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (np.random.SeedSequence, np.random.BitGenerator)) or (
            is_int(rng) and rng >= 0):
        return np.random.default_rng(rng)
    expected = "None, an int seed >= 0, a numpy.random.Generator, SeedSequence or BitGenerator"
    raise (ValueError if is_int(rng) else TypeError)(f"rng must be {expected}, got {rng!r}")


def fans(shape):
    """PyTorch's ``_calculate_fan_in_and_fan_out`` for a weight of the given shape."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def uniform(rng, bound, shape, dtype):
    """``U(-bound, bound)`` of ``shape`` in ``dtype``, drawn in float64 (PyTorch's ``uniform_`` draws
    in the tensor's dtype; the float64 draw keeps a seed's values the same for both dtypes). A shape
    that cannot fit in memory is refused before anything is drawn."""
    _require_draw(shape)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _require_draw(shape):
    require_memory(shape, np.float64, f"a layer parameter of shape {tuple(shape)}",
                   "the initial values of a parameter")


def kaiming_uniform(rng, shape, dtype, fan_in=None):
    """``kaiming_uniform_(w, a=sqrt(5))``, the Conv2d/Linear default: U(+-1/sqrt(fan_in))."""
    fan_in = fans(shape)[0] if fan_in is None else fan_in
    return uniform(rng, 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0, shape, dtype)


def xavier_uniform(rng, shape, dtype):
    """``xavier_uniform_(w)``: U(+-sqrt(6 / (fan_in + fan_out)))."""
    fan_in, fan_out = fans(shape)
    return uniform(rng, math.sqrt(6.0 / (fan_in + fan_out)), shape, dtype)


def kaiming_normal_fan_out(rng, shape, dtype):
    """``kaiming_normal_(w, mode='fan_out', nonlinearity='relu')``: N(0, 2/fan_out)."""
    _require_draw(shape)
    std = math.sqrt(2.0 / fans(shape)[1])
    return (rng.standard_normal(size=shape) * std).astype(dtype)


def default_bias(rng, fan_in, n, dtype):
    """The Conv2d/Linear default bias: U(+-1/sqrt(fan_in))."""
    return uniform(rng, 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0, (n,), dtype)


def torch_order(items):
    """``(name, array)`` pairs (parameters, then buffers) in ``torch.nn.Module.state_dict`` order.

    Undotted names first, in the given order; then, for each first name component of the dotted
    ones (a sub-module of the official module held flat by its numpyconv layer), in order of first
    appearance, that sub-module's arrays ordered the same way. ODConv's attention keeps
    ``bn.weight``, ``bn.bias`` (parameters) and ``bn.running_mean`` (a buffer): PyTorch lists all of
    ``bn``'s arrays before the next sub-module's (``channel_fc.weight``).
    """
    direct = [(k, v) for k, v in items if '.' not in k]
    nested = {}
    for k, v in items:
        if '.' in k:
            head, rest = k.split('.', 1)
            nested.setdefault(head, []).append((rest, v))
    return direct + [(head + '.' + k, v) for head, sub in nested.items() for k, v in torch_order(sub)]


# -- no_grad: forward passes that keep nothing for a backward pass -------------------------------
_GRAD_MODE = threading.local()      # this thread's count of open no_grad blocks


class no_grad:
    """``with numpyconv.no_grad(): y = model(x)``: layers keep nothing for a backward pass.

    Inside the block every layer drops what its forward pass would keep for ``backward`` (the op
    caches, which hold references to the inputs) as soon as the forward returns, so a deep network's
    forward needs memory for its largest activations rather than for all of them. A ``backward``
    after such a forward raises ``RuntimeError``. Outputs are unchanged; BatchNorm layers in train
    mode still update their running statistics (as in PyTorch). Per thread; blocks nest; also a
    decorator (``@numpyconv.no_grad()``). The functional ops are not affected: their caches are
    whatever the caller keeps.
    """

    def __enter__(self):
        _GRAD_MODE.depth = getattr(_GRAD_MODE, 'depth', 0) + 1
        return self

    def __exit__(self, *exc_info):
        _GRAD_MODE.depth -= 1
        return False

    def __call__(self, function):
        @functools.wraps(function)
        def without_caches(*args, **kwargs):
            with no_grad():
                return function(*args, **kwargs)
        return without_caches


def is_grad_enabled():
    """False inside a :class:`no_grad` block (of this thread)."""
    return not getattr(_GRAD_MODE, 'depth', 0)


def _cache_names(module):
    return [name for name in vars(module) if name.endswith('cache')]


def _forward_of(forward):
    """``forward`` such that under :class:`no_grad` the layer's ``*cache`` attributes are dropped when
    its outermost forward call returns (a subclass's forward may call ``super().forward``)."""
    @functools.wraps(forward)
    def run(self, *args, **kwargs):
        state = self.__dict__
        if is_grad_enabled():
            state['_forward_under_no_grad'] = False
            return forward(self, *args, **kwargs)
        depth = state.get('_no_grad_depth', 0)
        state['_no_grad_depth'] = depth + 1
        try:
            return forward(self, *args, **kwargs)
        finally:
            state['_no_grad_depth'] = depth
            if depth == 0:
                self._forget()
    return run


_BACKWARD = threading.local()       # this thread's count of running backward calls


def _backward_of(backward):
    """``backward`` such that when the outermost backward call returns, the gradients of this layer
    and its children that :meth:`Module.zero_grad` marked and no backward wrote are filled with 0."""
    @functools.wraps(backward)
    def run(self, *args, **kwargs):
        depth = getattr(_BACKWARD, 'depth', 0)
        _BACKWARD.depth = depth + 1
        try:
            return backward(self, *args, **kwargs)
        finally:
            _BACKWARD.depth = depth
            if depth == 0:
                self._fill_zeroed()
    return run


def _check_integral(value, dtype, key):
    """``ValueError`` unless every entry of ``value`` is an integer that ``dtype`` holds (an integer
    buffer such as ``num_batches_tracked``)."""
    if value.dtype.kind == 'f':
        info = np.iinfo(dtype)
        exact = np.isfinite(value) & (value == np.round(value)) & (value >= info.min) & (value <= info.max)
        if not exact.all():
            raise ValueError(f"load_state_dict: {key} holds integers ({dtype}), got the value "
                             f"{value[~exact].ravel()[0]!r}")


def _prefix_hint(state, own):
    """A hint when every key of ``state`` carries one extra leading module name (DataParallel's
    ``module.``, mmcls' ``backbone.``) and the keys under it are this module's."""
    keys = [k for k in state if isinstance(k, str)]
    heads = {k.split('.', 1)[0] for k in keys}
    if len(keys) != len(state) or len(heads) != 1 or not all('.' in k for k in keys):
        return ''
    head = heads.pop()
    if not {k[len(head) + 1:] for k in keys} & set(own):
        return ''
    return (f"; every key starts with '{head}.': numpyconv.state_dict_of(checkpoint, prefix='{head}') "
            f"strips it")


class StateDictError(KeyError, ValueError):
    """Missing or unexpected state_dict keys: a ``KeyError`` that is also a ``ValueError`` (a bad
    argument, as the API contract says), with a plain (unquoted) message."""

    def __str__(self):
        return str(self.args[0])


class Module:
    """Base class of every numpyconv layer (see the module docstring for the contract).

    Parameters
    ----------
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    _zeroed = frozenset()    # names of gradients zero_grad cleared that no backward has written since

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if 'forward' in cls.__dict__:
            cls.forward = _forward_of(cls.__dict__['forward'])
        if 'backward' in cls.__dict__:
            cls.backward = _backward_of(cls.__dict__['backward'])

    def __init__(self, *, dtype=np.float32, rng=None):
        self.dtype = dtype_arg(dtype)
        self.rng = make_rng(rng)
        self.training = True
        self._params, self._grads, self._buffers, self._modules = {}, {}, {}, {}

    # -- registration -------------------------------------------------------------------
    def add_param(self, name, value):
        self._params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        self._grads[name] = np.zeros_like(self._params[name])
        return self._params[name]

    def add_buffer(self, name, value):
        value = np.asarray(value)
        self._buffers[name] = value.astype(self.dtype) if value.dtype.kind == 'f' else value.copy()
        return self._buffers[name]

    def add_module(self, name, module):
        self._modules[name] = module
        return module

    # -- traversal ----------------------------------------------------------------------
    def named_modules(self, prefix=''):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(prefix + name + '.')

    def _collect(self, attr):
        return {prefix + k: v for prefix, m in self.named_modules()
                for k, v in getattr(m, attr).items()}

    @property
    def params(self):
        """``key -> parameter array`` (the arrays themselves, state_dict key names)."""
        return self._collect('_params')

    @property
    def grads(self):
        """``key -> gradient array``, same keys as :attr:`params`."""
        self._fill_zeroed()
        return self._collect('_grads')

    @property
    def buffers(self):
        return self._collect('_buffers')

    # -- state ----------------------------------------------------------------------------
    def state_dict(self):
        """Copies of parameters and buffers, keyed and ordered as the official module's state_dict
        (each layer's parameters, then its buffers, then its children's, as ``torch.nn.Module``; a
        dotted name of a layer's own, ``bn.weight``, is an array of an official sub-module, listed
        with that sub-module's other arrays: see :func:`torch_order`)."""
        return {prefix + k: v.copy() for prefix, m in self.named_modules()
                for k, v in torch_order([*m._params.items(), *m._buffers.items()])}

    def load_state_dict(self, state, strict=True):
        """Copy ``state`` into this layer in place (float values cast to the layer's dtype).

        Raises :class:`StateDictError` (a ``KeyError`` and ``ValueError``) for missing or unexpected
        keys when ``strict``, ``ValueError`` for a value of the wrong shape and ``TypeError`` for a
        value that is not real numbers; nothing is copied then. Returns ``(missing_keys,
        unexpected_keys)``.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping key -> array (a state_dict), got "
                            f"{type(state).__name__}")
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(f"strict must be a bool, got {strict!r}")
        own = {**self.params, **self.buffers}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own), key=str)
        if strict and (missing or unexpected):
            raise StateDictError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                                 f"unexpected keys {unexpected}{_prefix_hint(state, own)}")
        for key in set(own) & set(state):
            value = np.asarray(state[key])
            if value.dtype.kind not in 'biuf':
                raise TypeError(f"load_state_dict: {key} must hold real numbers, got dtype "
                                f"{value.dtype}")
            if value.shape != own[key].shape:
                raise ValueError(f"load_state_dict: {key} must have shape {own[key].shape}, "
                                 f"got {value.shape}")
            if own[key].dtype.kind in 'iu':
                _check_integral(value, own[key].dtype, key)
        for key in set(own) & set(state):
            np.copyto(own[key], np.asarray(state[key]), casting='unsafe')
        return missing, unexpected

    def zero_grad(self):
        """Set the gradients of this layer and its children to zero. The arrays are cleared lazily
        (module docstring): the next backward writes each gradient instead of adding to it, and the
        arrays no backward writes are filled with 0 when the outermost backward returns or when
        :attr:`grads` is read."""
        for _, m in self.named_modules():
            m._zeroed = set(m._grads)

    def _add_grad(self, key, grad):
        """``grads[key] += grad`` (``grad`` broadcast to the gradient's shape); the first gradient
        after :meth:`zero_grad` is written, not added. ``key`` may name a child's parameter
        (``'attention.fc.weight'``)."""
        owner, name = self, key
        while name not in owner._grads:
            head, name = name.split('.', 1)
            owner = owner._modules[head]
        if name in owner._zeroed:
            owner._zeroed.discard(name)
            if grad is not owner._grads[name]:                  # else computed in place
                owner._grads[name][...] = grad
        else:
            owner._grads[name] += grad

    def _cleared_grad(self, name):
        """The gradient array of this layer's ``name`` if :meth:`zero_grad` cleared it and no backward
        has written it since, else None: a backward may compute its gradient straight into it, in
        full, and then pass that array to :meth:`_add_grad`, which only marks it written."""
        return self._grads[name] if name in self._zeroed else None

    def _fill_zeroed(self):
        """Fill with 0 the gradients of this layer and its children that :meth:`zero_grad` marked
        and no backward has written since."""
        for _, m in self.named_modules():
            if m._zeroed:
                for name in m._zeroed:
                    m._grads[name].fill(0)
                m._zeroed = set()

    def _outside_params(self):
        """``name -> (parameter, its gradient)`` held by another module that this one's backward
        adds into (KWConv2d's warehouse, in its manager); :func:`~numpyconv.gradcheck_layer` checks
        them too."""
        return {}

    def _checked_params(self):
        """``name -> (parameter, its gradient)``: every parameter of this module and its children,
        and those outside it that they write gradients into (an outside array already listed, e.g.
        a warehouse whose manager is a child, is not listed again)."""
        grads = self.grads
        checked = {k: (p, grads[k]) for k, p in self.params.items()}
        for prefix, module in self.named_modules():
            for k, (p, g) in module._outside_params().items():
                if not any(p is q for q, _ in checked.values()):
                    checked[prefix + k] = (p, g)
        return checked

    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode on this layer and its children."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be a bool (True: training, False: evaluation), got {mode!r}")
        mode = bool(mode)
        for _, m in self.named_modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    # -- computation ----------------------------------------------------------------------
    def __getattr__(self, name):
        """Only reached for a missing attribute: a forward cache read before any forward pass, or
        after a forward under :class:`no_grad`."""
        if name.endswith('cache') and not name.startswith('__'):
            if self.__dict__.get('_forward_under_no_grad'):
                raise RuntimeError(f"{type(self).__name__}.backward needs the cache of a forward pass, "
                                   f"but the last forward ran under numpyconv.no_grad(), which keeps "
                                   f"nothing for a backward pass: run forward(x) outside no_grad() "
                                   f"before backward(dout)")
            raise RuntimeError(f"{type(self).__name__}.backward needs the cache of a forward pass: "
                               f"call forward(x) before backward(dout)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def _forget(self):
        """Drop this layer's caches and mark its last forward as run under :class:`no_grad` (also for
        a layer whose work a container did in its place, as a fused pass)."""
        for name in _cache_names(self):
            del self.__dict__[name]
        self.__dict__['_forward_under_no_grad'] = True

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    def macs(self, input_shape):
        """``(multiply_adds, output_shape)`` for one forward on ``input_shape`` (see ``count``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define macs")

    def num_params(self):
        return sum(int(v.size) for v in self.params.values())

    def _track_batch_norm(self, cache, prefix=''):
        """After a train-mode BatchNorm step, what ``torch.nn.BatchNorm`` does in place: the new
        running statistics (``cache['running_mean']`` / ``cache['running_var']`` of
        ``batch_norm_forward`` or of an op built on it) into this layer's ``<prefix>running_*``
        buffers, and ``<prefix>num_batches_tracked += 1``."""
        self._buffers[prefix + 'running_mean'][...] = cache['running_mean']
        self._buffers[prefix + 'running_var'][...] = cache['running_var']
        self._buffers[prefix + 'num_batches_tracked'] += 1

    def _check_input_shape(self, input_shape, channels=None, ranks=(4,), axis=1,
                           hint="(N, {c}, H, W)"):
        """Check the ``input_shape`` given to ``macs``: non-negative ints, a rank in ``ranks``
        (None: any rank >= 1) and ``channels`` (if given) at ``axis``; return it as a tuple."""
        input_shape = tuple(input_shape)
        valid = all(is_int(s) and s >= 0 for s in input_shape)
        valid = valid and (len(input_shape) in ranks if ranks else len(input_shape) >= 1)
        if not valid or (channels is not None and input_shape[axis] != channels):
            raise ValueError(f"input_shape must be {hint.format(c=channels)}, got {input_shape}")
        return input_shape

    def _check_input(self, x, name='x', channels=None, channels_last=False):
        """Check an NCHW input (NHWC with ``channels_last``) against this layer's dtype and channel
        count."""
        float_array(x, name, 4, "(N, H, W, C) (channels_last)" if channels_last else "(N, C, H, W)")
        if x.dtype != self.dtype:
            raise TypeError(f"{type(self).__name__} holds {self.dtype} parameters, got {name} of "
                            f"dtype {x.dtype}; build the layer with dtype={x.dtype} or cast {name}")
        if channels is not None and x.shape[3 if channels_last else 1] != channels:
            shape = f"(N, H, W, {channels}) (channels_last)" if channels_last else f"(N, {channels}, H, W)"
            raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
        return x


class Sequential(Module):
    """Layers applied in order; keys ``'0.weight'``, ``'1.running_mean'`` as ``nn.Sequential``.

    Parameters
    ----------
    *layers : Module
        Applied in order; the layers with parameters must share one dtype, which the container takes.
    """

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes numpyconv layers (Module instances), got "
                                f"{type(layer).__name__} at position {i}")
        dtypes = {layer.dtype for layer in layers if layer.params}     # parameter-free layers adapt
        if len(dtypes) > 1:
            raise TypeError(f"Sequential layers must share one dtype, got {sorted(map(str, dtypes))}")
        super().__init__(dtype=dtypes.pop() if dtypes else np.float32)
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def _layers(self):
        """The layers in the order forward runs them (subclasses may run their children differently)."""
        return list(self._modules.values())

    def forward(self, x):
        """The layers in order. Under :class:`no_grad`, a layer with a clamped inference pass (an
        eval-mode BatchNorm) followed by a clamp (a ReLU or ReLU6) runs the pair as one pass, with the
        same output; the pair's layers keep nothing, as under ``no_grad`` anyway."""
        return self._run(self._layers(), x)

    @staticmethod
    def _run(layers, x):
        """``x`` through ``layers`` in order (:meth:`forward`)."""
        i = 0
        while i < len(layers):
            layer, after = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            if not is_grad_enabled() and _fuses(layer, after):
                x = layer._inference_clamped(x, *after._bounds)
                layer._forget()
                after._forget()
                i += 2
            else:
                x = layer(x)
                i += 1
        return x

    def backward(self, dout):
        for layer in reversed(self._layers()):
            dout = layer.backward(dout)
        return dout

    def macs(self, input_shape):
        total = 0
        for layer in self._layers():
            m, input_shape = layer.macs(input_shape)
            total += m
        return total, input_shape


def infers_clamped(layer):
    """Whether ``layer`` offers a clamped inference pass that gives its output now (BatchNorm2d in
    eval mode with running statistics): ``layer._inference_clamped(x, low, high, residual=None)``."""
    clamped = getattr(layer, '_infers_clamped', None)
    return clamped is not None and clamped()


def _fuses(layer, after):
    """Whether ``layer`` then ``after`` run as one inference pass: ``layer`` offers a clamped inference
    pass that gives its output now (BatchNorm2d in eval mode with running statistics) and ``after`` is
    exactly a clamp (``ReLU``, ``ReLU6``: a ``_bounds`` pair)."""
    return infers_clamped(layer) and getattr(type(after), '_bounds', None) is not None


def count(layer, input_shape):
    """``(params, multiply_adds)`` of ``layer`` for one forward pass on ``input_shape``.

    Parameters
    ----------
    layer : Module
        A numpyconv layer or network.
    input_shape : tuple of int
        The shape of its input, non-negative ints (e.g. ``(1, 3, 224, 224)``).

    Returns
    -------
    params, multiply_adds : int
        Multiply-adds count one per multiply-accumulate of the layer's main computation, the way
        the papers of each technique count them (each layer's ``macs`` says what it counts).
    """
    if not isinstance(layer, Module):
        raise TypeError(f"count takes a numpyconv layer (a Module) and an input shape tuple of "
                        f"non-negative ints, got layer of type {type(layer).__name__}")
    input_shape = _shape_arg(input_shape, 'input_shape')
    macs, _ = layer.macs(input_shape)
    return layer.num_params(), int(macs)


def _shape_arg(shape, name):
    """``shape`` as a tuple of non-negative ints (a tuple or list of them)."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"{name} must be a tuple of non-negative ints, got {type(shape).__name__} "
                        f"{shape!r}")
    if not all(is_int(s) for s in shape):
        raise TypeError(f"{name} must be a tuple of non-negative ints, got {tuple(shape)!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"{name} must be a tuple of non-negative ints, got {tuple(shape)!r}")
    return tuple(int(s) for s in shape)


def float64_copy(layer):
    """A deep copy of ``layer`` in float64: every module it reaches (children, a KernelWarehouse
    manager) gets ``dtype`` float64 and every float array it holds a float64 copy (one copy per
    original array, so arrays shared between modules stay shared). The original is untouched."""
    twin = copy.deepcopy(layer)
    memo = {}

    def cast(obj):
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind != 'f':
                return obj
            if id(obj) not in memo:
                memo[id(obj)] = (obj, obj.astype(np.float64))           # keep obj alive: ids stay unique
            return memo[id(obj)][1]
        if isinstance(obj, Module):
            if id(obj) not in memo:
                memo[id(obj)] = (obj, obj)
                obj.dtype = np.dtype(np.float64)
                obj.__dict__.update({k: cast(v) for k, v in vars(obj).items()})
            return obj
        if isinstance(obj, Cache):
            return Cache(obj.op, **{k: cast(v) for k, v in obj.items()})
        if isinstance(obj, dict):
            return {k: cast(v) for k, v in obj.items()}
        if type(obj) in (list, tuple):
            return type(obj)(cast(v) for v in obj)
        return obj
    return cast(twin)
