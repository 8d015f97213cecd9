"""A pickle interpreter that runs no code from the file, and a small protocol-2 pickle writer.

Reading. Pickle is a little stack machine whose program is the file; a handful of its opcodes
call things: ``GLOBAL``/``STACK_GLOBAL``/``INST`` name a Python object by ``module.name``
(importing the module), ``REDUCE``/``OBJ``/``INST`` call it, ``NEWOBJ``/``NEWOBJ_EX`` call
``cls.__new__``, ``BUILD`` calls ``__setstate__`` or fills ``__dict__``, ``PERSID``/``BINPERSID``
hand an id to the loader, ``EXT1/2/4`` name globals through ``copyreg``'s registry. The standard
unpickler runs all of these for real. :class:`Unpickler` interprets every opcode itself instead:

* a name resolves to a :class:`GlobalRef` when it is in the allow-list table the caller gives
  (each entry says what calling it means, in numpyconv's own code: ``collections.OrderedDict``
  builds an OrderedDict, ``torch._utils._rebuild_tensor_v2`` builds a NumPy view...); nothing is
  imported and the real object is never touched;
* a name the user trusts (``allow=``) is imported and used as pickle would use it;
* any other name raises :class:`UnsafeCheckpointError` before anything else happens, unless
  ``unknown='stub'``: then calling it or creating an instance of it gives an inert :class:`Stub`
  recording the name and the pickled arguments and state;
* names from modules that run commands or code (``os``, ``subprocess``, ``builtins.eval``...) are
  refused in every mode, and can not be allowed; a class of the script that wrote the file
  (``__main__.Net``) can not be allowed either, but is stubbed like any unknown class;
* ``BUILD`` fills only objects this module made (OrderedDict attributes such as PyTorch's
  ``_metadata``, ``argparse.Namespace``, stubs, NumPy arrays and dtypes) or instances of trusted
  classes; ``EXT1/2/4`` and out-of-band buffers are refused.

Every length read from the file is checked against the bytes left before anything is
allocated; a malformed program (a pop from an empty stack, an unknown memo index, an unknown
opcode) raises ``ValueError`` naming the byte offset and the opcode.

Writing. :class:`Writer` emits protocol 2 for a tree of None, bools, ints, floats, complex
numbers, strings, tuples, lists, dicts and the nodes :class:`Global`, :class:`Reduce` and
:class:`PersistentId`, the subset ``torch.load(weights_only=True)`` reads.
"""
import _compat_pickle
import argparse
import codecs
import importlib
import io
import os
import pickle
import re
import struct
from collections import Counter, OrderedDict
from types import SimpleNamespace

import numpy as np

from .memory import require_memory


class UnsafeCheckpointError(ValueError):
    """A checkpoint names a Python object that loading would have to import or call and that is
    not in the allow-list (a ``ValueError``); the message names it as ``module.name``."""


class GlobalRef:
    """A global the file names (``module.name``) and does not call: e.g. a ``torch.float32`` or a
    class stored as a value. Returned in the loaded structure as is; nothing is imported."""

    __slots__ = ('name', 'meaning')

    def __init__(self, name, meaning=None):
        self.name, self.meaning = name, meaning

    def __repr__(self):
        return f"GlobalRef({self.name!r})"


class Stub:
    """An inert placeholder for an object of a class the allow-list does not know
    (``unknown='stub'``). Nothing of the class was imported or called.

    Attributes: ``name`` (``module.name`` of the class or function), ``args`` and ``kwargs`` (the
    pickled arguments of the call or ``__new__``), ``state`` (what ``BUILD`` would have passed to
    ``__setstate__``, usually the instance ``__dict__``; None if none), ``dictitems`` and
    ``listitems`` (items a dict or list subclass received, e.g. a yacs ``CfgNode``'s entries).
    """

    def __init__(self, name, args=(), kwargs=None):
        self.name, self.args, self.kwargs = name, tuple(args), dict(kwargs or {})
        self.state, self.dictitems, self.listitems = None, {}, []

    def __repr__(self):
        return f"Stub({self.name!r})"


class Callable:
    """An allow-list entry: what calling (``call(args)``), creating (``new(args, kwargs)``) a
    global means, in numpyconv's code; ``meaning`` is kept on the :class:`GlobalRef` (e.g. the
    dtype of a storage type). An entry without ``call``/``new`` may only appear as a value. With
    ``limits``, both also receive the load's :class:`Limits` as their last argument."""

    def __init__(self, call=None, new=None, meaning=None, limits=False):
        self.call, self.new, self.meaning, self.limits = call, new, meaning, limits

    def invoke(self, args, limits):
        """``call(args)``, given ``limits`` when the entry takes them."""
        return self.call(args, limits) if self.limits else self.call(args)

    def create(self, args, kwargs, limits):
        """``new(args, kwargs)``, given ``limits`` when the entry takes them."""
        return self.new(args, kwargs, limits) if self.limits else self.new(args, kwargs)


# Modules and names whose objects run commands or code, read or write files, or reach into
# interpreter internals: refused in every mode, never stubbed, never allowed.
DANGEROUS_MODULES = frozenset(
    'os posix nt posixpath ntpath sys subprocess pty shutil importlib imp zipimport runpy code '
    'codeop ctypes _ctypes socket ssl select signal webbrowser multiprocessing threading _thread '
    'asyncio concurrent pickle _pickle cPickle copy_reg marshal shelve dbm sqlite3 pdb bdb '
    'timeit trace inspect gc types operator _operator io _io pathlib tempfile glob '
    'fileinput platform sysconfig site ensurepip pip setuptools distutils urllib http ftplib '
    'smtplib telnetlib xmlrpc commands popen2 builtins __builtin__ __main__'.split())
DANGEROUS_NAMES = frozenset(
    'eval exec execfile compile system popen spawnl spawnv spawnve execv execve check_call '
    'check_output Popen getoutput __import__ import_module getattr setattr delattr globals open '
    'load loads attrgetter methodcaller runstring run_path run_module'.split())
# Harmless builtins: the constructors below are interpreted here; the types may appear as values.
_BUILTIN_VALUES = frozenset('int float str bool bytes tuple list dict set frozenset complex bytearray '
                            'object slice range NoneType'.split())

_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z')
_MAX_DIGITS = 4300      # Python's own limit on int('...') lengths; also bounds protocol-0 numbers


def dangerous(full_name):
    """True when ``full_name`` (``module.name``) is in a module, or has a name, that runs code."""
    parts = full_name.split('.')
    return parts[0] in DANGEROUS_MODULES or parts[-1] in DANGEROUS_NAMES


def saving_script(full_name):
    """True for a class of the script that wrote the file (``__main__.Net``, a model saved whole
    by its training script): never imported or allowed, but an inert placeholder with
    ``unknown='stub'`` like any unknown class (unless its name is dangerous)."""
    parts = full_name.split('.')
    return parts[0] == '__main__' and parts[-1] not in DANGEROUS_NAMES


def _not_allowed(full):
    """The message for a global outside the allow-list, in ``unknown='error'`` mode."""
    stub = ("unknown='stub' (keeps an inert placeholder; numpyconv.state_dict_of reads the weights of "
            "a model saved whole)")
    if saving_script(full):
        return (f"global {full} is a class of the script that saved the file; nothing was imported or "
                f"run. It can not be imported here: pass {stub}")
    hint = (" (a TorchScript archive: load it with torch.jit.load, or with unknown='stub')"
            if full.startswith('__torch__') else '')
    return (f"global {full} is not in the allow-list{hint}; nothing was imported or run. If you trust "
            f"this file, pass allow=('{full}',) (imports and runs it as pickle would) or {stub}")


def check_allow(allow):
    """``allow`` as a frozenset of ``"module.name"`` strings; ``ValueError``/``TypeError`` otherwise."""
    if isinstance(allow, str):
        allow = (allow,)
    try:
        names = list(allow)
    except TypeError:
        raise TypeError(f"allow must be a sequence of 'module.name' strings, got "
                        f"{type(allow).__name__}") from None
    for name in names:
        if not isinstance(name, str) or '.' not in name or not _NAME.match(name):
            raise ValueError(f"allow entries must be 'module.name' strings, got {name!r}")
        if dangerous(name):
            raise ValueError(f"allow: {name} is never allowed (its module runs commands or code)")
    return frozenset(names)


class _Source:
    """Bounded reading over a binary file object between its current position and ``end``."""

    def __init__(self, f, end):
        self.f, self.end = f, end

    def tell(self):
        return self.f.tell()

    def left(self):
        return self.end - self.f.tell()

    def read(self, n):
        if n < 0 or n > self.left():
            raise ValueError(f"needs {n} bytes at byte {self.tell()} but the data ends at byte "
                             f"{self.end} (truncated or corrupt)")
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError(f"file ends at byte {self.tell()}, {n} bytes expected (truncated)")
        return data

    def readinto(self, buffer):
        start, n = self.tell(), memoryview(buffer).nbytes
        if n > self.left() or read_into(self.f, start, buffer) != n:
            raise ValueError(f"needs {n} bytes at byte {start} but the data ends at byte "
                             f"{self.end} (truncated)")
        self.f.seek(start + n)

    def readline(self):
        line = self.f.readline(max(self.left(), 0))
        if not line.endswith(b'\n'):
            raise ValueError(f"unterminated line at byte {self.tell() - len(line)} (truncated or corrupt)")
        return line[:-1]


def read_into(f, offset, buffer):
    """Fill ``buffer`` with the bytes of file ``f`` at ``offset``; returns how many were read. Large
    reads go straight to the file (positional reads) rather than through Python's buffered reader,
    several times faster into freshly allocated memory."""
    view = memoryview(buffer).cast('B')
    if not hasattr(os, 'preadv'):
        f.seek(offset)
        return f.readinto(view) or 0
    done = 0
    while done < len(view):
        n = os.preadv(f.fileno(), [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


class _Buffer:
    """A read-only binary file over a bytes-like object (bytes, a uint8 array, a map), not copied."""

    _NEWLINE = re.compile(b'\n')

    def __init__(self, data):
        self.data, self.pos = memoryview(data).cast('B'), 0

    def tell(self):
        return self.pos

    def seek(self, pos):
        self.pos = pos

    def read(self, n):
        data = bytes(self.data[self.pos:self.pos + n])
        self.pos += len(data)
        return data

    def readline(self, limit):
        found = self._NEWLINE.search(self.data, self.pos, self.pos + limit)
        return self.read(found.end() - self.pos if found else limit)


def source(data):
    """A :class:`_Source` over a bytes-like object (read in place, not copied)."""
    return _Source(_Buffer(data), memoryview(data).nbytes)


def file_source(f, size):
    """A :class:`_Source` over an open binary file of ``size`` bytes, from its current position."""
    return _Source(f, size)


class _Pending:
    """An object completed by the ``BUILD`` that follows it (a NumPy dtype or array): ``BUILD``
    replaces it on the stack and in every memo slot that holds it, and sets ``value``. Put into a
    container or a call, it is its ``value`` (a dtype before ``BUILD`` is the dtype created, as in
    pickle; an array before ``BUILD`` has no data: ``ValueError``); a ``BUILD`` after that is
    refused, since the value used would differ from the one built."""

    def __init__(self, value=None):
        self.value, self.memo_keys, self.used = value, [], False


MAX_KEY_DEPTH = 256          # tuples nested deeper are refused as dict keys and set items
MAX_SHARED_HASH = 16         # distinct keys of one dict or set that may share a hash
COPY_FACTOR = 8              # the copies a load makes: at most this many times the data read...
COPY_SLACK = 64 * 2 ** 20    # ...plus this many bytes
ITEM_BYTES = 64              # what one item of a copied container is counted as
_HASH_MODULUS = 2 ** 61 - 1  # ints of smaller magnitude hash to themselves (no collisions)
_UNIQUE_HASHES = (str, bytes, bool, type(None))   # str/bytes hashes are randomized per process


class Limits:
    """What loading one file may cost beyond reading it, checked as the file is interpreted.

    * **Copies.** Calls that copy data the file holds once but may name many times through the memo
      (``_codecs.encode``, ``bytearray``, NumPy arrays from bytes, containers built from a list,
      PyTorch's negation bit...) are counted before they are made: together at most
      :data:`COPY_FACTOR` times the bytes read (``data_bytes``, grown by :meth:`provide`) plus
      :data:`COPY_SLACK`, and within the machine's memory.
    * **Dict keys and set items** are checked before they are hashed: a tuple nested more than
      :data:`MAX_KEY_DEPTH` deep is refused (CPython hashes nested tuples recursively, without a
      depth guard), the hashing of tuples is bounded by the data read (a memo-shared tuple is hashed
      in full each time it is used), and at most :data:`MAX_SHARED_HASH` distinct keys of one
      container may share a hash (more makes inserting quadratic). Strings, bytes and small ints
      pass without a check.

    Each refusal is a ``ValueError``.
    """

    def __init__(self, data_bytes):
        self.data_bytes, self.copied, self.hashed = data_bytes, 0, 0
        self.tuples = {}          # id -> (tuple, nesting depth, elements hashed to hash it)
        self.hashes = {}          # id(container) -> (container, {hash: distinct keys})

    def provide(self, nbytes):
        """Count ``nbytes`` more bytes of data read (e.g. a decompressed member)."""
        self.data_bytes += nbytes

    def copy(self, nbytes, what):
        """Count a copy of ``nbytes`` bytes made by ``what``, before it is made."""
        self.copied += nbytes
        allowed = COPY_FACTOR * self.data_bytes + COPY_SLACK
        if self.copied > allowed:
            raise ValueError(f"{what}: the copies made while loading would take {self.copied} bytes, "
                             f"more than {COPY_FACTOR} times the {self.data_bytes} bytes of data "
                             f"read (the same data copied over and over)")
        require_memory((self.copied,), np.uint8, what, 'the copies made while loading')

    def check_key(self, container, key):
        """Check ``key`` before it is hashed into ``container`` (a dict or set being built)."""
        kind = type(key)
        if kind in _UNIQUE_HASHES or (kind is int and -_HASH_MODULUS < key < _HASH_MODULUS):
            return
        if isinstance(key, tuple):
            self._measure(key)
        try:
            value = hash(key)
        except TypeError as exc:
            raise ValueError(f"a {kind.__name__} key or set item is not hashable: {exc}") from None
        counts = self.hashes.setdefault(id(container), (container, {}))[1]
        if key not in container:            # a bounded probe: few keys share a hash so far
            counts[value] = counts.get(value, 0) + 1
            if counts[value] > MAX_SHARED_HASH:
                raise ValueError(f"more than {MAX_SHARED_HASH} distinct keys of one dict or set share "
                                 f"the hash {value} (a hash-collision attack)")

    def _measure(self, key):
        """Check the nesting depth of tuple ``key`` and count the elements hashing it visits; each
        tuple is measured once (iteratively), its depth and size kept."""
        tuples = self.tuples
        stack = [] if id(key) in tuples else [(key, iter(key))]
        while stack:
            node, items = stack[-1]
            for item in items:
                if isinstance(item, tuple) and id(item) not in tuples:
                    if len(stack) >= MAX_KEY_DEPTH:
                        raise ValueError(f"a dict key or set item holds tuples nested more than "
                                         f"{MAX_KEY_DEPTH} deep")
                    stack.append((item, iter(item)))
                    break
            else:
                stack.pop()
                depth, size = 1, len(node)
                for item in node:
                    if isinstance(item, tuple):
                        depth, size = max(depth, tuples[id(item)][1] + 1), size + tuples[id(item)][2]
                if depth > MAX_KEY_DEPTH:
                    raise ValueError(f"a dict key or set item holds tuples nested more than "
                                     f"{MAX_KEY_DEPTH} deep")
                tuples[id(node)] = (node, depth, size)
        self.hashed += tuples[id(key)][2]
        if self.hashed > max(2 ** 24, 2 * self.data_bytes):
            raise ValueError(f"hashing the tuple keys and set items visits {self.hashed} elements, "
                             f"far more than the data read holds (memo-shared tuples hashed over "
                             f"and over)")


def _to_bytes(data, what, limits):
    """Protocol-2 bytes arrive as latin-1 strings (``_codecs.encode`` or Python 2 ``str``)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (str, bytearray)):
        limits.copy(len(data), what)
        return data.encode('latin1') if isinstance(data, str) else bytes(data)
    raise ValueError(f"{what} must be bytes, got {type(data).__name__}")


def _int(value, what, minimum=None):
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


# -- NumPy values: dtypes, arrays and scalars, built here (object arrays refused) --------------
_NUMPY_KINDS = 'biufcUSmM'


def _numpy_dtype(value, what='dtype'):
    if not isinstance(value, np.dtype):
        raise ValueError(f"{what} must be a NumPy dtype, got {type(value).__name__}")
    if value.kind not in _NUMPY_KINDS or value.fields is not None or value.subdtype is not None:
        raise UnsafeCheckpointError(f"NumPy dtype {value} is refused: only numbers, booleans, "
                                    f"strings and dates are read (object arrays hold pickles)")
    return value


def _np_dtype_call(args):
    if len(args) not in (1, 3) or not isinstance(args[0], str) or len(args[0]) > 16:
        raise ValueError(f"numpy.dtype called with {args!r}")
    try:
        dtype = np.dtype(args[0])
    except TypeError as exc:
        raise ValueError(f"numpy.dtype({args[0]!r}): {exc}") from None
    return _Pending(_numpy_dtype(dtype))


def _np_dtype_build(pending, state):
    """NumPy's dtype state ``(version, byteorder, subdtype, names, fields, elsize, alignment,
    flags)``: only the byte order matters for the simple dtypes read here."""
    if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ('<', '>', '|', '='):
        raise ValueError(f"numpy dtype state {state!r} is not understood")
    if any(s is not None for s in state[2:5]):
        raise UnsafeCheckpointError("structured NumPy dtypes are refused")
    dtype = pending.value
    return dtype.newbyteorder(state[1]) if state[1] in '<>' and dtype.itemsize > 1 else dtype


def numpy_array(rawdata, dtype, shape, fortran, limits):
    """A writable array of ``dtype`` and ``shape`` from its raw bytes, sizes checked first (the
    copy counted by ``limits``)."""
    dtype = _numpy_dtype(dtype)
    if not isinstance(shape, tuple) or len(shape) > 64:
        raise ValueError(f"array shape must be a tuple of at most 64 ints, got {shape!r}")
    count = 1
    for s in shape:
        count *= _int(s, 'array shape entry', 0)
    data = _to_bytes(rawdata, 'array data', limits) if not isinstance(rawdata, memoryview) else rawdata
    if count * dtype.itemsize != len(data):
        raise ValueError(f"array of shape {shape} ({dtype}) needs {count * dtype.itemsize} bytes, "
                         f"the file holds {len(data)}")
    limits.copy(len(data), 'a NumPy array')
    flat = np.frombuffer(data, dtype=dtype, count=count)
    return flat.reshape(shape, order='F' if fortran else 'C').copy(order='K')


def _np_reconstruct(args):
    if len(args) != 3 or not isinstance(args[0], GlobalRef) or args[0].name != 'numpy.ndarray':
        raise UnsafeCheckpointError("numpy _reconstruct is read for plain numpy.ndarray only")
    return _Pending()


def _np_array_build(pending, state, limits):
    if not isinstance(state, tuple) or len(state) != 5:
        raise ValueError("numpy array state must be (version, shape, dtype, is_fortran, data)")
    _, shape, dtype, fortran, rawdata = state
    if isinstance(rawdata, list):
        raise UnsafeCheckpointError("NumPy object arrays are refused (their items are pickles)")
    return numpy_array(rawdata, dtype, tuple(shape) if isinstance(shape, list) else shape, bool(fortran),
                       limits)


def _np_scalar(args, limits):
    if len(args) != 2:
        raise ValueError(f"numpy scalar called with {len(args)} arguments")
    dtype = _numpy_dtype(args[0])
    data = _to_bytes(args[1], 'numpy scalar data', limits)
    if len(data) != dtype.itemsize:
        raise ValueError(f"numpy scalar of {dtype} needs {dtype.itemsize} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype)[0]


def _np_frombuffer(args, limits):
    if len(args) != 4 or args[3] not in ('C', 'F'):
        raise ValueError("numpy _frombuffer takes (buffer, dtype, shape, order)")
    return numpy_array(args[0], args[1], tuple(args[2]), args[3] == 'F', limits)


# -- Python values -----------------------------------------------------------------------------
def _ordered_dict(args, limits, kind=OrderedDict):
    if args == ():
        return kind()
    if len(args) == 1 and isinstance(args[0], (list, tuple, dict)):
        items = args[0].items() if isinstance(args[0], dict) else args[0]
        limits.copy(len(items) * ITEM_BYTES, kind.__name__)
        out = kind()
        for item in items:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ValueError(f"{kind.__name__} items must be pairs, got {item!r}")
            _setitem(out, item[0], item[1], limits)
        return out
    raise ValueError(f"{kind.__name__} called with {args!r}")


def _namespace(kind):
    def make(args, kwargs=None):
        if args or kwargs:
            raise ValueError(f"{kind.__name__} is rebuilt from its state, not from arguments")
        return kind()
    return make


def _codecs_encode(args, limits):
    if (len(args) != 2 or not isinstance(args[0], str)
            or args[1] not in ('latin1', 'latin-1', 'utf-8', 'utf8', 'ascii')):
        raise ValueError(f"_codecs.encode called with {args!r}")
    limits.copy(len(args[0]), '_codecs.encode')
    return codecs.encode(args[0], args[1])


def _bytes(args):
    if args == ():
        return b''
    raise ValueError("bytes(...) with arguments is refused (protocol 2 writes bytes with _codecs.encode)")


def _bytearray(args, limits):
    if args == ():
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        limits.copy(len(args[0]), 'bytearray')
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ('latin1', 'latin-1'):
        limits.copy(len(args[0]), 'bytearray')
        return bytearray(args[0], 'latin1')
    raise ValueError(f"bytearray called with {args!r}")


def _set(args, limits, kind=set):
    if args == ():
        return kind()
    if len(args) == 1 and isinstance(args[0], (list, tuple, set, frozenset)):
        limits.copy(len(args[0]) * ITEM_BYTES, kind.__name__)
        out = set()
        _add_items(out, args[0], limits)
        return out if kind is set else frozenset(out)
    raise ValueError(f"{kind.__name__} called with {args!r}")


def _complex(args):
    if len(args) in (1, 2) and all(isinstance(a, (int, float)) for a in args):
        return complex(*args)
    raise ValueError(f"complex called with {args!r}")


def _slice_or_range(kind):
    def call(args):
        if 1 <= len(args) <= 3 and all(a is None or (isinstance(a, int) and not isinstance(a, bool))
                                       for a in args):
            try:
                return kind(*args)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{kind.__name__}{args!r}: {exc}") from None
        raise ValueError(f"{kind.__name__} called with {args!r}")
    return call


def _reconstructor(args):
    """``copyreg._reconstructor(cls, object, None)``: protocol 0/1's way of making an instance."""
    if len(args) != 3 or not isinstance(args[1], GlobalRef) or args[1].name != 'builtins.object' \
            or args[2] is not None:
        raise UnsafeCheckpointError("copyreg._reconstructor is read only for plain objects "
                                    "(base class builtins.object, no state)")
    return _NEW_INSTANCE, args[0]


_NEW_INSTANCE = object()   # marker: the caller creates an instance of args[0] as NEWOBJ would

BASE_GLOBALS = {
    'collections.OrderedDict': Callable(call=_ordered_dict, new=lambda a, k, limits: _ordered_dict(a, limits),
                                        limits=True),
    'collections.Counter': Callable(call=lambda a, limits: _ordered_dict(a, limits, Counter),
                                    new=lambda a, k, limits: _ordered_dict(a, limits, Counter), limits=True),
    'argparse.Namespace': Callable(call=_namespace(argparse.Namespace), new=_namespace(argparse.Namespace)),
    'types.SimpleNamespace': Callable(call=_namespace(SimpleNamespace), new=_namespace(SimpleNamespace)),
    '_codecs.encode': Callable(call=_codecs_encode, limits=True),
    'copyreg._reconstructor': Callable(call=_reconstructor),
    'builtins.set': Callable(call=_set, limits=True),
    'builtins.frozenset': Callable(call=lambda a, limits: _set(a, limits, frozenset), limits=True),
    'builtins.bytes': Callable(call=_bytes),
    'builtins.bytearray': Callable(call=_bytearray, limits=True),
    'builtins.complex': Callable(call=_complex),
    'builtins.slice': Callable(call=_slice_or_range(slice)),
    'builtins.range': Callable(call=_slice_or_range(range)),
    'numpy.dtype': Callable(call=_np_dtype_call),
    'numpy.ndarray': Callable(),
}
for _name in _BUILTIN_VALUES:
    BASE_GLOBALS.setdefault(f'builtins.{_name}', Callable())
for _core in ('numpy.core', 'numpy._core'):
    BASE_GLOBALS[f'{_core}.multiarray._reconstruct'] = Callable(call=_np_reconstruct)
    BASE_GLOBALS[f'{_core}.multiarray.scalar'] = Callable(call=_np_scalar, limits=True)
    BASE_GLOBALS[f'{_core}.numeric._frombuffer'] = Callable(call=_np_frombuffer, limits=True)


def _setitem(target, key, value, limits):
    limits.check_key(target, key)
    try:
        target[key] = value
    except TypeError as exc:       # an unhashable key
        raise ValueError(f"dict key {type(key).__name__} is not hashable: {exc}") from None


def _add_items(target, items, limits):
    for item in items:
        limits.check_key(target, item)
        try:
            target.add(item)
        except TypeError as exc:       # an unhashable item
            raise ValueError(f"set item {type(item).__name__} is not hashable: {exc}") from None


class Unpickler:
    """Interpret one pickle from ``src`` (a :func:`source`) without running code from it.

    Parameters
    ----------
    src : the bounded byte source.
    table : dict ``'module.name' -> Callable``: the allow-list (see :data:`BASE_GLOBALS`).
    allow : frozenset of trusted ``'module.name'`` strings (from :func:`check_allow`).
    unknown : ``'error'`` or ``'stub'``.
    persistent_load : function ``pid -> object``, or None (a persistent id is then refused).
    what : how messages name the data (e.g. ``"ck.pth: archive/data.pkl"``).
    limits : the load's :class:`Limits` (shared by the pickles of one file); default: new ones
        counting the bytes of ``src``.
    """

    def __init__(self, src, table, *, allow=frozenset(), unknown='error', persistent_load=None,
                 what='pickle', limits=None):
        self.src, self.table, self.allow, self.unknown = src, table, allow, unknown
        self.persistent_load, self.what = persistent_load, what
        self.limits = Limits(src.left()) if limits is None else limits
        self.refs, self.trusted = {}, {}

    # -- the interpreter loop --------------------------------------------------------------------
    def load(self):
        """The unpickled object; ``ValueError`` (or :class:`UnsafeCheckpointError`) otherwise."""
        self.stack, self.metastack, self.memo, self.pendings = [], [], {}, 0
        while True:
            start = self.src.tell()
            code = self.src.read(1)[0] if self.src.left() > 0 else None
            if code is None:
                raise ValueError(f"{self.what}: ends at byte {start} before its STOP opcode (truncated)")
            handler, self.opcode = _DISPATCH.get(code), code
            if handler is None:
                raise ValueError(f"{self.what}: byte {start}: unknown pickle opcode 0x{code:02x} "
                                 f"(corrupt, or not a pickle)")
            try:
                if handler(self) is _STOP:
                    return self.result
            except UnsafeCheckpointError as exc:
                raise UnsafeCheckpointError(f"{self.what}: {exc}") from None
            except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
                    RecursionError, struct.error, UnicodeError) as exc:
                name = _OPNAMES.get(code, hex(code))
                message = f"{exc}" if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
                raise ValueError(f"{self.what}: byte {start} ({name}): {message}") from exc

    def _pop_mark(self):
        if not self.metastack:
            raise ValueError("no MARK before this opcode")
        items, self.stack = self.stack, self.metastack.pop()
        return self.taken(items)

    def taken(self, items):
        """The list ``items``, leaving the stack for a container, a call or the result, with each
        :class:`_Pending` replaced by its value."""
        for i, item in enumerate(items if self.pendings else ()):
            if isinstance(item, _Pending):
                if item.value is None:
                    raise ValueError("a NumPy array is used before its data (BUILD) was read")
                item.used, items[i] = True, item.value
        return items

    def _replace_top(self, pending, value):
        if pending.used:
            raise ValueError("BUILD gives a NumPy dtype or array its state after its value was used")
        self.stack[-1] = pending.value = value
        for key in pending.memo_keys:
            if self.memo.get(key) is pending:
                self.memo[key] = value

    # -- globals ----------------------------------------------------------------------------------
    def find_global(self, module, name):
        """Resolve ``module.name`` under the rules of the module docstring (imports only a name
        in ``allow``)."""
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if not (isinstance(module, str) and isinstance(name, str) and _NAME.match(module)
                and _NAME.match(name)):
            raise ValueError(f"malformed global name {module!r} {name!r}")
        full = f'{module}.{name}'
        if full in self.refs:
            return self.refs[full]
        if full in self.table:
            spec = self.table[full]
            ref = self.refs[full] = GlobalRef(full, spec.meaning)
            return ref
        if dangerous(full) and not saving_script(full):
            raise UnsafeCheckpointError(f"refused global {full}: its module runs commands or code; "
                                        f"nothing was imported or run")
        if full in self.allow:
            return self._import_trusted(module, name, full)
        if self.unknown == 'stub':
            ref = self.refs[full] = GlobalRef(full)
            return ref
        raise UnsafeCheckpointError(_not_allowed(full))

    def _import_trusted(self, module, name, full):
        try:
            obj = importlib.import_module(module)
            for part in name.split('.'):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"allowed global {full} can not be imported: {exc}") from None
        self.trusted[id(obj)] = obj
        self.refs[full] = obj
        return obj

    def _is_trusted(self, obj):
        return self.trusted.get(id(obj)) is obj

    # -- calls ------------------------------------------------------------------------------------
    def _spec(self, ref):
        return self.table.get(ref.name) if isinstance(ref, GlobalRef) else None

    def call(self, func, args):
        """What ``REDUCE``/``OBJ``/``INST`` do with ``func(*args)``."""
        if not isinstance(args, tuple):
            raise ValueError(f"call arguments must be a tuple, got {type(args).__name__}")
        spec = self._spec(func)
        if spec is not None:
            if spec.call is None:
                raise UnsafeCheckpointError(f"{func.name} may appear as a value but is not called "
                                            f"by the files numpyconv reads")
            result = spec.invoke(args, self.limits)
            if isinstance(result, tuple) and len(result) == 2 and result[0] is _NEW_INSTANCE:
                return self.new(result[1], (), {})
            self.pendings += isinstance(result, _Pending)
            return result
        if isinstance(func, GlobalRef):          # unknown='stub'
            return Stub(func.name, args)
        if self._is_trusted(func):
            return func(*args)
        raise UnsafeCheckpointError(f"the pickle calls a {type(func).__name__} object, which is not "
                                    f"a global it named; refused")

    def new(self, cls, args, kwargs):
        """What ``NEWOBJ``/``NEWOBJ_EX`` do: ``cls.__new__(cls, *args, **kwargs)``."""
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise ValueError("NEWOBJ arguments must be a tuple (and a dict)")
        spec = self._spec(cls)
        if spec is not None:
            if spec.new is None:
                raise UnsafeCheckpointError(f"{cls.name} is not a class numpyconv creates instances of")
            return spec.create(args, kwargs, self.limits)
        if isinstance(cls, GlobalRef):
            self.limits.copy(len(kwargs) * ITEM_BYTES, 'keyword arguments')
            return Stub(cls.name, args, kwargs)
        if self._is_trusted(cls) and isinstance(cls, type):
            return cls.__new__(cls, *args, **kwargs)
        raise UnsafeCheckpointError(f"the pickle creates an instance of a {type(cls).__name__} "
                                    f"object, which is not a class it named; refused")

    def instantiate(self, cls, args):
        """``OBJ``/``INST`` (protocols 0 and 1): a call, or ``__new__`` without arguments."""
        if not args and self._is_trusted(cls) and isinstance(cls, type) \
                and not hasattr(cls, '__getinitargs__'):
            return cls.__new__(cls)
        return self.call(cls, tuple(args))

    def build(self, inst, state):
        """``BUILD``: fill ``inst`` (on the stack top) with ``state``."""
        if isinstance(inst, _Pending):
            built = _np_dtype_build(inst, state) if isinstance(inst.value, np.dtype) \
                else _np_array_build(inst, state, self.limits)
            self._replace_top(inst, built)
        elif isinstance(inst, Stub):
            inst.state = state
        elif type(inst) in (OrderedDict, Counter, argparse.Namespace, SimpleNamespace):
            self.limits.copy(len(state) * ITEM_BYTES if isinstance(state, dict) else 0, 'BUILD')
            _set_attributes(inst, state, dunders=False)
        elif self._is_trusted(type(inst)):           # pickle's own BUILD
            setstate = getattr(inst, '__setstate__', None)
            if setstate is not None:
                setstate(state)
            else:
                _set_attributes(inst, state, slots=True)
        else:
            raise UnsafeCheckpointError(f"BUILD on a {type(inst).__name__} is refused (only "
                                        f"OrderedDict, Namespace, NumPy values, stubs and allowed "
                                        f"classes are filled)")

    def persistent(self, pid):
        if self.persistent_load is None:
            raise UnsafeCheckpointError("persistent ids are read only inside PyTorch checkpoints")
        return self.persistent_load(pid)


def _set_attributes(inst, state, slots=False, dunders=True):
    """pickle's default ``BUILD``: ``__dict__`` from a dict, slots from ``(dict, slots)``. Without
    ``dunders``, names such as ``__setstate__`` or ``__reduce_ex__`` are refused (the objects this
    module makes never have them)."""
    slotstate = None
    if slots and isinstance(state, tuple) and len(state) == 2:
        state, slotstate = state
    for part in (state, slotstate):
        if part is not None and (not isinstance(part, dict) or not all(isinstance(k, str) for k in part)):
            raise ValueError(f"the state of a {type(inst).__name__} must be a dict of attributes, "
                             f"got {type(part).__name__}")
        special = [k for k in part or () if k.startswith('__') and k.endswith('__')]
        if special and not dunders:
            raise UnsafeCheckpointError(f"attribute {special[0]!r} of a {type(inst).__name__} refused "
                                        f"(special names are never set from a file)")
    if state:
        inst.__dict__.update(state)
    for key, value in (slotstate or {}).items():
        setattr(inst, key, value)


# -- opcodes --------------------------------------------------------------------------------------
_STOP = object()
_DISPATCH = {}
_OPNAMES = {}


def _op(*names):
    def register(fn):
        for name in names:
            code = getattr(pickle, name)[0]
            _DISPATCH[code] = fn
            _OPNAMES[code] = name
        return fn
    return register


def _u(src, fmt):
    return struct.unpack(fmt, src.read(struct.calcsize(fmt)))[0]


def _line_int(line, what):
    text = line.decode('ascii').rstrip('L')
    if len(text) > _MAX_DIGITS:
        raise ValueError(f"{what} of {len(text)} digits")
    return int(text)


def _py2_string(data):
    """Python 2 ``str`` (STRING opcodes): latin-1, the lossless reading (NumPy's choice)."""
    return data.decode('latin1')


@_op('PROTO')
def _proto(u):
    version = u.src.read(1)[0]
    if version > 5:
        raise ValueError(f"pickle protocol {version} is not supported (at most 5)")


@_op('FRAME')
def _frame(u):
    if _u(u.src, '<Q') > u.src.left():
        raise ValueError("frame longer than the data left")


@_op('STOP')
def _stop(u):
    u.result = u.taken([u.stack.pop()])[0]
    return _STOP


@_op('POP')
def _pop(u):
    if u.stack:
        u.stack.pop()
    else:
        u._pop_mark()


@_op('POP_MARK')
def _pop_mark(u):
    u._pop_mark()


@_op('DUP')
def _dup(u):
    u.stack.append(u.stack[-1])


@_op('MARK')
def _mark(u):
    u.metastack.append(u.stack)
    u.stack = []


@_op('NONE')
def _none(u):
    u.stack.append(None)


@_op('NEWTRUE', 'NEWFALSE')
def _bool(u):
    u.stack.append(u.opcode == pickle.NEWTRUE[0])


@_op('INT')
def _int_line(u):
    line = u.src.readline()
    booleans = {b'00': False, b'01': True}           # protocol 0 writes True and False as INT
    u.stack.append(booleans[line] if line in booleans else _line_int(line, 'INT'))


@_op('LONG')
def _long_line(u):
    u.stack.append(_line_int(u.src.readline(), 'LONG'))


@_op('BININT')
def _binint(u):
    u.stack.append(_u(u.src, '<i'))


@_op('BININT1')
def _binint1(u):
    u.stack.append(u.src.read(1)[0])


@_op('BININT2')
def _binint2(u):
    u.stack.append(_u(u.src, '<H'))


@_op('LONG1', 'LONG4')
def _long(u):
    n = u.src.read(1)[0] if u.opcode == pickle.LONG1[0] else _u(u.src, '<i')
    u.stack.append(int.from_bytes(u.src.read(n), 'little', signed=True))


@_op('FLOAT')
def _float_line(u):
    line = u.src.readline()
    if len(line) > 64:
        raise ValueError("FLOAT longer than 64 characters")
    u.stack.append(float(line.decode('ascii')))


@_op('BINFLOAT')
def _binfloat(u):
    u.stack.append(_u(u.src, '>d'))


@_op('STRING')
def _string(u):
    line = u.src.readline()
    if len(line) < 2 or line[:1] != line[-1:] or line[:1] not in (b'"', b"'"):
        raise ValueError("STRING argument is not quoted")
    u.stack.append(_py2_string(codecs.escape_decode(line[1:-1])[0]))


@_op('BINSTRING', 'SHORT_BINSTRING')
def _binstring(u):
    n = _u(u.src, '<i') if u.opcode == pickle.BINSTRING[0] else u.src.read(1)[0]
    u.stack.append(_py2_string(u.src.read(n)))


@_op('BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8', 'BYTEARRAY8')
def _binbytes(u):
    fmt = {pickle.BINBYTES[0]: '<I', pickle.SHORT_BINBYTES[0]: '<B'}.get(u.opcode, '<Q')
    data = u.src.read(_u(u.src, fmt))
    u.stack.append(bytearray(data) if u.opcode == pickle.BYTEARRAY8[0] else data)


@_op('UNICODE')
def _unicode(u):
    u.stack.append(str(u.src.readline(), 'raw-unicode-escape'))


@_op('SHORT_BINUNICODE', 'BINUNICODE', 'BINUNICODE8')
def _binunicode(u):
    fmt = {pickle.SHORT_BINUNICODE[0]: '<B', pickle.BINUNICODE[0]: '<I'}.get(u.opcode, '<Q')
    u.stack.append(str(u.src.read(_u(u.src, fmt)), 'utf-8', 'surrogatepass'))


@_op('EMPTY_TUPLE')
def _empty_tuple(u):
    u.stack.append(())


@_op('TUPLE')
def _tuple(u):
    items = u._pop_mark()              # (pops the inner stack: evaluate before u.stack)
    u.stack.append(tuple(items))


@_op('TUPLE1', 'TUPLE2', 'TUPLE3')
def _tuple_n(u):
    n = u.opcode - pickle.TUPLE1[0] + 1
    if len(u.stack) < n:
        raise ValueError(f"TUPLE{n} with {len(u.stack)} items on the stack")
    items = tuple(u.taken(u.stack[-n:]))
    del u.stack[-n:]
    u.stack.append(items)


@_op('EMPTY_LIST')
def _empty_list(u):
    u.stack.append([])


@_op('LIST')
def _list(u):
    items = u._pop_mark()
    u.stack.append(items)


def _append_to(u, target, items):
    if type(target) is list:
        target.extend(items)
    elif isinstance(target, Stub):
        target.listitems.extend(items)
    elif u._is_trusted(type(target)):
        for item in items:
            target.append(item)
    else:
        raise ValueError(f"APPEND to a {type(target).__name__} (only lists take items)")


@_op('APPEND')
def _append(u):
    items = u.taken([u.stack.pop()])
    _append_to(u, u.stack[-1], items)


@_op('APPENDS')
def _appends(u):
    items = u._pop_mark()
    _append_to(u, u.stack[-1], items)


@_op('EMPTY_DICT')
def _empty_dict(u):
    u.stack.append({})


def _set_items(u, target, items):
    if len(items) % 2:
        raise ValueError("odd number of items for SETITEMS")
    if isinstance(target, Stub):
        target = target.dictitems
    elif not isinstance(target, dict) or (type(target) not in (dict, OrderedDict, Counter)
                                          and not u._is_trusted(type(target))):
        raise ValueError(f"SETITEM on a {type(target).__name__} (only dicts take items)")
    for i in range(0, len(items), 2):
        _setitem(target, items[i], items[i + 1], u.limits)


@_op('DICT')
def _dict(u):
    d, items = {}, u._pop_mark()
    _set_items(u, d, items)
    u.stack.append(d)


@_op('SETITEM')
def _setitem_op(u):
    value, key = u.stack.pop(), u.stack.pop()
    _set_items(u, u.stack[-1], u.taken([key, value]))


@_op('SETITEMS')
def _setitems(u):
    items = u._pop_mark()
    _set_items(u, u.stack[-1], items)


@_op('EMPTY_SET')
def _empty_set(u):
    u.stack.append(set())


@_op('ADDITEMS')
def _additems(u):
    items = u._pop_mark()
    if type(u.stack[-1]) is not set:
        raise ValueError(f"ADDITEMS to a {type(u.stack[-1]).__name__}")
    _add_items(u.stack[-1], items, u.limits)


@_op('FROZENSET')
def _frozenset(u):
    items = u._pop_mark()
    u.stack.append(_set((items,), u.limits, frozenset))


def _memo_get(u, key):
    if key not in u.memo:
        raise ValueError(f"memo slot {key} was never written")
    u.stack.append(u.memo[key])


def _memo_put(u, key):
    if not u.stack:
        raise ValueError("PUT with an empty stack")
    u.memo[key] = u.stack[-1]
    if isinstance(u.stack[-1], _Pending):
        u.stack[-1].memo_keys.append(key)


@_op('GET')
def _get(u):
    _memo_get(u, _line_int(u.src.readline(), 'GET'))


@_op('BINGET')
def _binget(u):
    _memo_get(u, u.src.read(1)[0])


@_op('LONG_BINGET')
def _long_binget(u):
    _memo_get(u, _u(u.src, '<I'))


@_op('PUT')
def _put(u):
    _memo_put(u, _line_int(u.src.readline(), 'PUT'))


@_op('BINPUT')
def _binput(u):
    _memo_put(u, u.src.read(1)[0])


@_op('LONG_BINPUT')
def _long_binput(u):
    _memo_put(u, _u(u.src, '<I'))


@_op('MEMOIZE')
def _memoize(u):
    _memo_put(u, len(u.memo))


def _names(u):
    return u.src.readline().decode('utf-8'), u.src.readline().decode('utf-8')


@_op('GLOBAL')
def _global(u):
    u.stack.append(u.find_global(*_names(u)))


@_op('STACK_GLOBAL')
def _stack_global(u):
    name, module = u.stack.pop(), u.stack.pop()
    if not isinstance(module, str) or not isinstance(name, str):
        raise ValueError("STACK_GLOBAL needs two strings")
    u.stack.append(u.find_global(module, name))


@_op('REDUCE')
def _reduce(u):
    args = u.stack.pop()
    u.stack[-1] = u.call(u.stack[-1], args)


@_op('NEWOBJ')
def _newobj(u):
    args = u.stack.pop()
    cls = u.stack.pop()
    u.stack.append(u.new(cls, args, {}))


@_op('NEWOBJ_EX')
def _newobj_ex(u):
    kwargs, args = u.stack.pop(), u.stack.pop()
    cls = u.stack.pop()
    u.stack.append(u.new(cls, args, kwargs))


@_op('OBJ')
def _obj(u):
    items = u._pop_mark()
    if not items:
        raise ValueError("OBJ without a class")
    u.stack.append(u.instantiate(items[0], items[1:]))


@_op('INST')
def _inst(u):
    cls = u.find_global(*_names(u))
    items = u._pop_mark()
    u.stack.append(u.instantiate(cls, items))


@_op('BUILD')
def _build(u):
    state = u.taken([u.stack.pop()])[0]
    u.build(u.stack[-1], state)


@_op('PERSID')
def _persid(u):
    u.stack.append(u.persistent(u.src.readline().decode('ascii')))


@_op('BINPERSID')
def _binpersid(u):
    u.stack.append(u.persistent(u.taken([u.stack.pop()])[0]))


@_op('EXT1', 'EXT2', 'EXT4')
def _ext(u):
    raise UnsafeCheckpointError("extension codes (EXT1/EXT2/EXT4) name globals through copyreg's "
                                "registry; refused")


@_op('NEXT_BUFFER')
def _next_buffer(u):
    raise ValueError("out-of-band buffers (NEXT_BUFFER) are not part of a checkpoint")


@_op('READONLY_BUFFER')
def _readonly_buffer(u):
    if not isinstance(u.stack[-1], (bytes, bytearray)):
        raise ValueError("READONLY_BUFFER on a non-buffer")
    u.limits.copy(len(u.stack[-1]), 'READONLY_BUFFER')
    u.stack[-1] = bytes(u.stack[-1])


# -- writing ----------------------------------------------------------------------------------
class Global:
    """A reference to ``module.name`` in a pickle being written (the ``GLOBAL`` opcode)."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Reduce:
    """``func(*args)`` in a pickle being written (``REDUCE``); ``func`` is a :class:`Global`."""

    def __init__(self, func, args):
        self.func, self.args = func, tuple(args)


class PersistentId:
    """A persistent id (``BINPERSID``): the pickled ``value`` is handed to the loader."""

    def __init__(self, value):
        self.value = value


class Writer:
    """Protocol-2 pickle of a tree of None, bool, int, float, complex, str, tuple, list, dict,
    OrderedDict, :class:`Global`, :class:`Reduce` and :class:`PersistentId`."""

    _BATCH = 1000

    def __init__(self):
        self.out = io.BytesIO()
        self.memo = {}

    def dumps(self, obj):
        self.out.write(pickle.PROTO + b'\x02')
        self.write(obj)
        self.out.write(pickle.STOP)
        return self.out.getvalue()

    def write(self, obj):
        w = self.out.write
        if obj is None:
            w(pickle.NONE)
        elif obj is True or obj is False:
            w(pickle.NEWTRUE if obj else pickle.NEWFALSE)
        elif type(obj) is int:
            self._int(obj)
        elif type(obj) is float:
            w(pickle.BINFLOAT + struct.pack('>d', obj))
        elif type(obj) is complex:
            self.write(Reduce(Global('builtins', 'complex'), (obj.real, obj.imag)))
        elif type(obj) is str:
            data = obj.encode('utf-8', 'surrogatepass')
            w(pickle.BINUNICODE + struct.pack('<I', len(data)) + data)
        elif type(obj) is tuple:
            self._tuple(obj)
        elif type(obj) is list:
            w(pickle.EMPTY_LIST)
            self._batches(obj, pickle.APPENDS)
        elif type(obj) is OrderedDict:
            self.write(Reduce(Global('collections', 'OrderedDict'), ()))
            self._batches([x for kv in obj.items() for x in kv], pickle.SETITEMS)
        elif type(obj) is dict:
            w(pickle.EMPTY_DICT)
            self._batches([x for kv in obj.items() for x in kv], pickle.SETITEMS)
        elif isinstance(obj, Global):
            self._global(obj)
        elif isinstance(obj, Reduce):
            self.write(obj.func)
            self._tuple(obj.args)
            w(pickle.REDUCE)
        elif isinstance(obj, PersistentId):
            self.write(obj.value)
            w(pickle.BINPERSID)
        else:
            raise TypeError(f"can not write a {type(obj).__name__} into a pickle")

    def _int(self, x):
        w = self.out.write
        if 0 <= x < 256:
            w(pickle.BININT1 + bytes([x]))
        elif 0 <= x < 65536:
            w(pickle.BININT2 + struct.pack('<H', x))
        elif -2 ** 31 <= x < 2 ** 31:
            w(pickle.BININT + struct.pack('<i', x))
        else:
            data = x.to_bytes((x.bit_length() + 8) // 8, 'little', signed=True)
            if len(data) < 256:
                w(pickle.LONG1 + bytes([len(data)]) + data)
            else:
                w(pickle.LONG4 + struct.pack('<i', len(data)) + data)

    def _tuple(self, items):
        if not items:
            self.out.write(pickle.EMPTY_TUPLE)
            return
        if len(items) <= 3:
            for item in items:
                self.write(item)
            self.out.write((pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)[len(items) - 1])
            return
        self.out.write(pickle.MARK)
        for item in items:
            self.write(item)
        self.out.write(pickle.TUPLE)

    def _batches(self, items, opcode):
        step = 2 * self._BATCH if opcode == pickle.SETITEMS else self._BATCH
        for i in range(0, len(items), step):
            self.out.write(pickle.MARK)
            for item in items[i:i + step]:
                self.write(item)
            self.out.write(opcode)

    def _global(self, ref):
        key = (ref.module, ref.name)
        if key in self.memo:
            index = self.memo[key]
            self.out.write(pickle.BINGET + bytes([index]) if index < 256
                           else pickle.LONG_BINGET + struct.pack('<I', index))
            return
        self.out.write(pickle.GLOBAL + f'{ref.module}\n{ref.name}\n'.encode('utf-8'))
        index = self.memo[key] = len(self.memo)
        self.out.write(pickle.BINPUT + bytes([index]) if index < 256
                       else pickle.LONG_BINPUT + struct.pack('<I', index))
