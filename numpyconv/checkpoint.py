"""Checkpoints in and out without PyTorch: PyTorch's ``.pth`` (zip and legacy), safetensors, ``.npz``.

:func:`load_checkpoint` returns the file's structure with every tensor as a NumPy array;
:func:`save_checkpoint` writes what ``torch.load(path, weights_only=True)`` reads back;
:func:`state_dict_of` finds the model's state_dict inside a training checkpoint. The formats, as
read and written here, are described in ``docs/checkpoints.md``; in short:

* **PyTorch zip** (``torch.save`` since 1.6): a zip archive whose members sit under one root folder:
  ``<root>/data.pkl`` (the object, pickle protocol 2), ``<root>/data/<key>`` (the raw bytes of
  each storage), ``<root>/byteorder`` (``little``/``big``). A tensor is the pickled call
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` whose storage is the
  persistent id ``('storage', <storage type>, key, location, numel)``; offsets and strides count
  elements. Here the call builds ``as_strided`` views of one array per storage (shared storages stay
  shared), after checking that every element the view reaches lies inside the storage.
* **PyTorch legacy stream** (``_use_new_zipfile_serialization=False``, every release before 1.6):
  pickles one after another: the magic number ``0x1950a86a20f9469cfc6c``, the protocol ``1001``,
  a sys-info dict, the object (persistent ids ``('storage', type, key, location, numel,
  view_metadata)``), the list of storage keys, then per key an 8-byte little-endian element count
  and the raw little-endian bytes. Storages are allocated when the object pickle names them (their
  total checked against the bytes left in the file) and filled when their bytes arrive.
* **safetensors**: an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape,
  data_offsets}}``, the byte buffer; read here (bfloat16 included) with the standard library.
* **npz / npy**: NumPy's own format, object arrays refused (they hold pickles).

Safety: unpickling is :class:`numpyconv._safe_pickle.Unpickler`, which interprets every opcode itself
and resolves only the allow-list below (tensor and storage rebuilding, OrderedDict, Counter,
``argparse.Namespace``, NumPy arrays/scalars/dtypes, ``_codecs.encode``, a few builtins). Any other
global raises :class:`UnsafeCheckpointError` before anything is imported or run; ``allow=`` trusts
named globals (imported and used as pickle would), ``unknown='stub'`` turns unknown classes into
inert :class:`~numpyconv._safe_pickle.Stub` objects. Names from modules that run commands or code
(``os``, ``subprocess``, ``builtins.eval``...) are refused in every mode.

dtypes: float64/32/16, int64/32/16/8, uint8/16/32/64, bool, complex64/128 load as the same NumPy
dtype; **bfloat16 loads as float32 with exactly the same values** (NumPy has no bfloat16: the 16 bits
become the upper half of a float32). Quantized, float8 and complex32 tensors are refused by name.

Memory: each storage is read once, into its own buffer; with ``mmap=True`` the stored (uncompressed)
members of a zip archive, an npz and the buffer of a safetensors file are mapped, not read: the arrays
are read-only views of the file, except where a conversion is needed (bfloat16 widened to float32, a
big-endian archive swapped to native order: read-only copies). Declared sizes are checked against
the file's size before anything is allocated.
"""
import ast
import contextlib
import errno
import io
import json
import mmap as _mmap
import os
import stat
import struct
import sys
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ._safe_pickle import (BASE_GLOBALS, Callable, GlobalRef, Limits, PersistentId,
                           Reduce, Stub, UnsafeCheckpointError, Unpickler, Global, Writer, check_allow,
                           file_source, read_into, source)
from .memory import require_memory
from .module import StateDictError

__all__ = ['load_checkpoint', 'save_checkpoint', 'state_dict_of', 'UnsafeCheckpointError',
           'CheckpointPathError', 'GlobalRef', 'Stub']

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001

# torch dtype name -> (NumPy dtype of the loaded array, NumPy dtype of the raw little-endian bytes)
_DTYPES = {
    'float64': ('f8', '<f8'), 'float32': ('f4', '<f4'), 'float16': ('f2', '<f2'),
    'bfloat16': ('f4', '<u2'),
    'int64': ('i8', '<i8'), 'int32': ('i4', '<i4'), 'int16': ('i2', '<i2'), 'int8': ('i1', 'i1'),
    'uint64': ('u8', '<u8'), 'uint32': ('u4', '<u4'), 'uint16': ('u2', '<u2'), 'uint8': ('u1', 'u1'),
    'bool': ('?', '?'), 'complex64': ('c8', '<c8'), 'complex128': ('c16', '<c16'),
}
_DTYPES = {k: (np.dtype(a), np.dtype(b)) for k, (a, b) in _DTYPES.items()}
_REFUSED_DTYPES = {
    **{q: 'quantized tensors' for q in ('qint8', 'quint8', 'qint32', 'quint4x2', 'quint2x4')},
    **{f: 'float8/float4 tensors' for f in ('float8_e5m2', 'float8_e4m3fn', 'float8_e5m2fnuz',
                                            'float8_e4m3fnuz', 'float8_e8m0fnu', 'float4_e2m1fn_x2')},
    'complex32': 'complex32 tensors', 'bcomplex32': 'bcomplex32 tensors',
    **{b: 'bit-packed tensors' for b in ('bits8', 'bits16', 'bits1x8', 'bits2x4', 'bits4x2')},
    **{f'uint{n}': 'sub-byte integer tensors' for n in range(1, 8)},
    **{f'int{n}': 'sub-byte integer tensors' for n in range(1, 8)},
}
# legacy storage class -> torch dtype name
_STORAGE_TYPES = {
    'DoubleStorage': 'float64', 'FloatStorage': 'float32', 'HalfStorage': 'float16',
    'BFloat16Storage': 'bfloat16', 'LongStorage': 'int64', 'IntStorage': 'int32',
    'ShortStorage': 'int16', 'CharStorage': 'int8', 'ByteStorage': 'uint8', 'BoolStorage': 'bool',
    'ComplexFloatStorage': 'complex64', 'ComplexDoubleStorage': 'complex128',
    'UntypedStorage': 'uint8', 'QInt8Storage': 'qint8', 'QUInt8Storage': 'quint8',
    'QInt32Storage': 'qint32', 'QUInt4x2Storage': 'quint4x2', 'QUInt2x4Storage': 'quint2x4',
}
_SAFETENSORS_DTYPES = {
    'F64': 'float64', 'F32': 'float32', 'F16': 'float16', 'BF16': 'bfloat16', 'I64': 'int64',
    'I32': 'int32', 'I16': 'int16', 'I8': 'int8', 'U64': 'uint64', 'U32': 'uint32',
    'U16': 'uint16', 'U8': 'uint8', 'BOOL': 'bool', 'C64': 'complex64',
}
_SAFETENSORS_HEADER_LIMIT = 100_000_000      # the safetensors library's own bound
_DEFLATE_MAX_RATIO = 1032                    # deflate can not expand one byte into more than ~1032
_MAX_NDIM = 64
_PICKLE_STARTS = {b'(', b'c', b'}', b']', b')'}    # how protocol 0/1 pickles of objects start
_LEGACY_TEXT_MAGIC = b'L%dL\n' % LEGACY_MAGIC      # the magic number in pickle protocol 0/1
_MAX_SAVE_DEPTH = 200                               # containers and key tuples nested in a saved obj


class CheckpointPathError(OSError, ValueError):
    """The path can not be read or written as a checkpoint: missing, a directory, not a regular file
    (a pipe, a device), not accessible. Both an ``OSError`` (as ``torch.load`` raises) and a
    ``ValueError``; a missing path is also a ``FileNotFoundError``, a directory an
    ``IsADirectoryError``, a permission problem a ``PermissionError``."""


class CheckpointNotFoundError(CheckpointPathError, FileNotFoundError):
    """The path does not exist."""


class CheckpointIsADirectoryError(CheckpointPathError, IsADirectoryError):
    """The path is a directory."""


class CheckpointPermissionError(CheckpointPathError, PermissionError):
    """The path may not be read (or written)."""


_PATH_ERRORS = {FileNotFoundError: CheckpointNotFoundError, IsADirectoryError: CheckpointIsADirectoryError,
                PermissionError: CheckpointPermissionError}


def _path_error(exc, path):
    """``exc`` (an ``OSError`` about ``path`` or a file beside it) as a :class:`CheckpointPathError`
    naming ``path``."""
    kind = next((v for k, v in _PATH_ERRORS.items() if isinstance(exc, k)), CheckpointPathError)
    return kind(exc.errno, exc.strerror or str(exc), path)


def _itemsize(dtype):
    return _DTYPES[dtype][1].itemsize


# -- bfloat16 ---------------------------------------------------------------------------------
def bfloat16_to_float32(bits):
    """The float32 values of bfloat16 numbers, exactly (the 16 bits become the upper half).

    Parameters
    ----------
    bits : array of uint16 (any byte order and shape), the bfloat16 bit patterns.

    Returns
    -------
    float32 array of the same shape (a new array).
    """
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def float32_to_bfloat16(x):
    """The bfloat16 bit patterns nearest to ``x``, ties to even, as ``tensor.to(torch.bfloat16)``.

    Parameters
    ----------
    x : float16/32/64 array of any shape (converted to float32 first, as PyTorch does).

    Returns
    -------
    uint16 array of the same shape; NaN becomes PyTorch's quiet NaN ``0x7fc0``, values beyond the
    largest bfloat16 round to infinity.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    return np.where(np.isnan(bits.view(np.float32)), np.uint32(0x7FC0), rounded).astype(np.uint16)


# -- storages and tensor views ----------------------------------------------------------------
class _Storage:
    """One storage: its raw bytes (a 1-D uint8 array, read or mapped) and its typed arrays."""

    def __init__(self, key, raw, dtype, byteorder='little'):
        self.key, self.raw, self.dtype, self.byteorder = key, raw, dtype, byteorder
        self.numel = raw.size // _itemsize(dtype)
        self.views = {}

    def typed(self, dtype):
        """This storage's elements as a 1-D array of the torch dtype ``dtype`` (cached: every
        tensor on the storage views the same array)."""
        if dtype not in self.views:
            self.views[dtype] = _typed(self.raw, dtype, self.byteorder, self.key)
        return self.views[dtype]

    def refresh(self):
        """Recompute the typed arrays that are conversions, not views (after ``raw`` was filled)."""
        for dtype, array in self.views.items():
            if array.size and not np.shares_memory(array, self.raw):
                array[...] = _typed(self.raw, dtype, self.byteorder, self.key)


def _typed(raw, dtype, byteorder, key):
    loaded, stored = _DTYPES[dtype]
    if raw.size % stored.itemsize:
        raise ValueError(f"storage {key} holds {raw.size} bytes, not a whole number of {dtype} "
                         f"elements ({stored.itemsize} bytes each)")
    order = '>' if byteorder == 'big' else '<'
    values = raw.view(stored.newbyteorder(order) if stored.itemsize > 1 else stored)
    if dtype == 'bfloat16' or (byteorder == 'big' and stored.itemsize > 1):
        converted = bfloat16_to_float32(values) if dtype == 'bfloat16' else values.astype(loaded)
        converted.flags.writeable = raw.flags.writeable       # mapped files give read-only arrays
        return converted
    return values


def _int_arg(value, what, minimum=0):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def _int_tuple(values, what):
    if not isinstance(values, (tuple, list)) or len(values) > _MAX_NDIM:
        raise ValueError(f"{what} must be a tuple of at most {_MAX_NDIM} ints, got {values!r}")
    return tuple(_int_arg(v, f"{what} entry") for v in values)


class _Load(Limits):
    """The :class:`Limits` of reading one PyTorch file, with its storages and conversions.

    A storage persistent id loads as the storage's elements, a 1-D array (``value``): that is what a
    storage pickled alone gives; a tensor rebuild finds the storage behind it (``storage``). The
    conversions a tensor needs (the negation and conjugation bits, a dtype change) are made by
    ``convert``: at once, or, while ``deferred`` (a legacy stream's object pickle, read before the
    storage bytes), once the storages are filled (``run_deferred``).
    """

    def __init__(self, data_bytes):
        super().__init__(data_bytes)
        self.by_array, self.deferred = {}, None

    def value(self, storage):
        array = storage.typed(storage.dtype)
        self.by_array[id(array)] = storage
        return array

    def storage(self, value):
        found = self.by_array.get(id(value))
        if found is None:
            raise ValueError(f"a tensor's storage must be a storage persistent id, got "
                             f"{type(value).__name__}")
        return found

    def convert(self, array, dtype, fill, what):
        """A new array of ``array``'s shape and ``dtype`` filled by ``fill(array, out)``."""
        self.copy(array.size * dtype.itemsize, what)
        out = np.empty(array.shape, dtype)
        if self.deferred is None:
            fill(array, out)
        else:
            self.deferred.append((fill, array, out))
        return out

    def run_deferred(self):
        for fill, array, out in self.deferred:
            fill(array, out)
        self.deferred = None


def _tensor_view(load, args, dtype=None):
    """The tensor ``storage[offset + sum(i_k * stride_k)]`` of shape ``size`` as a NumPy view, from
    ``args = (storage, offset, size, stride)``, after checking that every element it reaches lies
    inside the storage (``ValueError``)."""
    storage, offset, size, stride = load.storage(args[0]), *args[1:4]
    offset = _int_arg(offset, 'storage offset')
    size, stride = _int_tuple(size, 'tensor size'), _int_tuple(stride, 'tensor stride')
    if len(size) != len(stride):
        raise ValueError(f"tensor size {size} and stride {stride} differ in length")
    typed = storage.typed(dtype or storage.dtype)
    count = 1
    for n in size:
        count *= n
    itemsize = typed.itemsize
    if count * itemsize >= 2 ** 62 or max(stride, default=0) * itemsize >= 2 ** 62:
        raise ValueError(f"tensor of size {size} and stride {stride} is too large to address")
    if count == 0:                       # nothing is read; PyTorch accepts any offset here
        offset = 0
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= typed.size:
            raise ValueError(f"tensor of size {size} and stride {stride} at offset {offset} reaches "
                             f"element {last} of storage {storage.key}, which holds {typed.size}")
    return np.lib.stride_tricks.as_strided(typed[offset:], shape=size,
                                           strides=tuple(s * itemsize for s in stride),
                                           writeable=typed.flags.writeable)


def _dtype_of(ref, what):
    meaning = ref.meaning if isinstance(ref, GlobalRef) else None
    if not (isinstance(meaning, tuple) and meaning[0] == 'dtype'):
        raise ValueError(f"{what} must be a torch dtype, got {ref!r}")
    return _usable_dtype(meaning[1])


def _usable_dtype(name):
    if name in _REFUSED_DTYPES:
        raise ValueError(f"torch.{name}: {_REFUSED_DTYPES[name]} are not supported (NumPy has no "
                         f"such type)")
    return name


def _copyable(array, what):
    """``array`` if copying it costs no more than the memory it spans: a view whose elements
    overlap (stride 0, an expanded tensor) would turn a small storage into a huge copy."""
    span = 1 + sum((n - 1) * abs(s) for n, s in zip(array.shape, array.strides)) // max(array.itemsize, 1)
    if array.size > span:
        raise ValueError(f"{what}: a tensor of shape {array.shape} over {span} stored elements "
                         f"(an expanded view) would be copied in full; refused")
    return array


def _negative(array, out):
    np.negative(array, out=out)


def _conjugate(array, out):
    np.conjugate(array, out=out)


def _cast(array, out):
    np.copyto(out, array, casting='unsafe')


def _with_metadata(array, metadata, load):
    """PyTorch's tensor metadata: the lazy ``neg`` and ``conj`` bits, applied (a copy; the conj
    bit of a real tensor changes nothing)."""
    if metadata is None or metadata == {}:
        return array
    if not isinstance(metadata, dict) or not set(metadata) <= {'neg', 'conj'}:
        raise ValueError(f"tensor metadata {metadata!r} is not understood")
    if metadata.get('neg'):
        if array.dtype == bool:
            raise ValueError("a bool tensor with the negation bit")
        array = load.convert(_copyable(array, 'neg bit'), array.dtype, _negative, 'the neg bit')
    if metadata.get('conj') and array.dtype.kind == 'c':
        array = load.convert(_copyable(array, 'conj bit'), array.dtype, _conjugate, 'the conj bit')
    return array


def _rebuild_tensor(args, load):
    """``_rebuild_tensor(storage, offset, size, stride)`` (PyTorch before 1.0)."""
    if len(args) != 4:
        raise ValueError(f"_rebuild_tensor takes 4 arguments, got {len(args)}")
    return _tensor_view(load, args)


def _rebuild_tensor_v2(args, load):
    """``(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])``."""
    if len(args) not in (6, 7):
        raise ValueError(f"_rebuild_tensor_v2 takes 6 or 7 arguments, got {len(args)}")
    return _with_metadata(_tensor_view(load, args), args[6] if len(args) == 7 else None, load)


def _rebuild_tensor_v3(args, load):
    """``(untyped storage, offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])``."""
    if len(args) not in (7, 8):
        raise ValueError(f"_rebuild_tensor_v3 takes 7 or 8 arguments, got {len(args)}")
    dtype = _dtype_of(args[6], '_rebuild_tensor_v3 dtype')
    return _with_metadata(_tensor_view(load, args, dtype), args[7] if len(args) == 8 else None, load)


def _array_arg(value, what):
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{what} must be a tensor, got {type(value).__name__}")
    return value


def _rebuild_parameter(args):
    """``(data, requires_grad, backward_hooks[, state])``: a parameter is its data."""
    if len(args) not in (3, 4):
        raise ValueError(f"_rebuild_parameter takes 3 or 4 arguments, got {len(args)}")
    return _array_arg(args[0], 'parameter data')


def _rebuild_from_type_v2(args, load):
    """``(rebuild function, tensor class, its arguments, python state)``: a tensor subclass or a
    tensor with attributes; the data is rebuilt, the class and the attributes are dropped."""
    if len(args) != 4 or not isinstance(args[0], GlobalRef) or not isinstance(args[2], tuple):
        raise ValueError("_rebuild_from_type_v2 takes (function, type, args, state)")
    spec = TORCH_GLOBALS.get(args[0].name)
    if spec is None or spec.call is None or not args[0].name.startswith('torch._utils._rebuild'):
        raise UnsafeCheckpointError(f"_rebuild_from_type_v2 calls {args[0].name}; refused")
    return spec.invoke(args[2], load)


def _rebuild_device_tensor(args, load):
    """``(data, dtype, device, requires_grad)``: a tensor of another device, kept on the CPU."""
    if len(args) != 4:
        raise ValueError(f"device tensor rebuild takes 4 arguments, got {len(args)}")
    data = _array_arg(args[0], 'device tensor data')
    dtype = _DTYPES[_dtype_of(args[1], 'device tensor dtype')][0]
    if data.dtype == dtype:
        return data
    return load.convert(_copyable(data, 'device tensor'), dtype, _cast, 'a device tensor dtype')


def _parameter_new(args, kwargs=None):
    if not args or kwargs:
        raise ValueError("torch.nn.Parameter takes (data, requires_grad)")
    return _array_arg(args[0], 'parameter data')


def _torch_size(args):
    if len(args) != 1:
        raise ValueError("torch.Size takes one tuple")
    return _int_tuple(args[0], 'torch.Size')


def _torch_device(args):
    if not (1 <= len(args) <= 2 and isinstance(args[0], str)
            and (len(args) == 1 or isinstance(args[1], int))):
        raise ValueError(f"torch.device called with {args!r}")
    return args[0] if len(args) == 1 else f'{args[0]}:{args[1]}'


def _refused(what):
    def call(args):
        raise ValueError(f"{what} are not supported")
    return call


TORCH_GLOBALS = dict(BASE_GLOBALS)
TORCH_GLOBALS.update({
    'torch._utils._rebuild_tensor': Callable(call=_rebuild_tensor, limits=True),
    'torch._utils._rebuild_tensor_v2': Callable(call=_rebuild_tensor_v2, limits=True),
    'torch._utils._rebuild_tensor_v3': Callable(call=_rebuild_tensor_v3, limits=True),
    'torch._utils._rebuild_parameter': Callable(call=_rebuild_parameter),
    'torch._utils._rebuild_parameter_with_state': Callable(call=_rebuild_parameter),
    'torch._tensor._rebuild_from_type_v2': Callable(call=_rebuild_from_type_v2, limits=True),
    'torch._utils._rebuild_device_tensor_from_cpu_tensor': Callable(call=_rebuild_device_tensor, limits=True),
    'torch._utils._rebuild_device_tensor_from_numpy': Callable(call=_rebuild_device_tensor, limits=True),
    'torch._utils._rebuild_xla_tensor': Callable(call=_rebuild_device_tensor, limits=True),
    'torch._utils._rebuild_qtensor': Callable(call=_refused('quantized tensors')),
    'torch._utils._rebuild_sparse_tensor': Callable(call=_refused('sparse tensors')),
    'torch._utils._rebuild_sparse_csr_tensor': Callable(call=_refused('sparse tensors')),
    'torch._utils._rebuild_nested_tensor': Callable(call=_refused('nested tensors')),
    'torch._utils._rebuild_meta_tensor_no_storage': Callable(call=_refused('meta tensors (no data)')),
    'torch._utils._rebuild_wrapper_subclass': Callable(call=_refused('tensor wrapper subclasses')),
    'torch.nn.parameter.Parameter': Callable(call=_parameter_new, new=_parameter_new),
    'torch.Tensor': Callable(),
    'torch.Size': Callable(call=_torch_size),
    'torch.device': Callable(call=_torch_device),
})
for _name, _dtype in _STORAGE_TYPES.items():
    for _module in ('torch', 'torch.cuda', 'torch.storage'):
        TORCH_GLOBALS[f'{_module}.{_name}'] = Callable(meaning=('storage', _dtype))
for _name in (*_DTYPES, *_REFUSED_DTYPES):
    TORCH_GLOBALS[f'torch.{_name}'] = Callable(meaning=('dtype', _name))
for _name in ('strided', 'sparse_coo', 'sparse_csr', 'per_tensor_affine', 'per_channel_affine'):
    TORCH_GLOBALS[f'torch.{_name}'] = Callable()


def _storage_dtype(ref):
    meaning = ref.meaning if isinstance(ref, GlobalRef) else None
    if not (isinstance(meaning, tuple) and meaning[0] == 'storage'):
        raise ValueError(f"a storage's type must be a torch storage class, got {ref!r}")
    return _usable_dtype(meaning[1])


def _ascii(value, what):
    if isinstance(value, bytes):
        value = value.decode('ascii')
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _storage_pid(pid, length):
    """Check a storage persistent id; return ``(dtype, key, numel, rest)``."""
    if not isinstance(pid, tuple) or not pid:
        hint = " (pickle protocol 0 writes persistent ids as text: PyTorch can not read such files " \
               "either)" if isinstance(pid, str) else ""
        raise ValueError(f"a persistent id must be a tuple, got {type(pid).__name__}{hint}")
    if _ascii(pid[0], 'persistent id kind') != 'storage':
        raise UnsafeCheckpointError(f"persistent id of kind {pid[0]!r} refused (only storages)")
    if len(pid) != length:
        raise ValueError(f"a storage persistent id has {length} entries, got {len(pid)}")
    dtype = _storage_dtype(pid[1])
    _ascii(pid[3], 'storage location')
    return dtype, _ascii(pid[2], 'storage key'), _int_arg(pid[4], 'storage numel'), pid[5:]


# -- reading files ----------------------------------------------------------------------------
def _new_buffer(nbytes):
    """A writable, zeroed uint8 array of ``nbytes`` for a storage's bytes. Large ones are anonymous
    memory maps rather than NumPy arrays: NumPy advises huge pages for its large arrays, and a
    kernel that compacts memory to provide them on first touch makes filling them from a file slow."""
    if nbytes < 1 << 20:
        return np.zeros(nbytes, dtype=np.uint8)
    return np.frombuffer(_mmap.mmap(-1, nbytes), dtype=np.uint8)


def _read_region(f, mapped, offset, nbytes):
    """``nbytes`` bytes of the file at ``offset``: a read-only view of the map, or a fresh buffer."""
    if mapped is not None:
        return np.frombuffer(mapped, dtype=np.uint8, count=nbytes, offset=offset)
    buffer = _new_buffer(nbytes)
    if read_into(f, offset, buffer) != nbytes:
        raise ValueError(f"file ends before byte {offset + nbytes} (truncated)")
    return buffer


class _Archive:
    """A zip archive's members, checked before use: unique names, not encrypted, data inside the
    file and not overlapping another member (the 'overlapping members' zip bomb)."""

    def __init__(self, f, size, mapped, what):
        self.f, self.size, self.mapped, self.what = f, size, mapped, what
        self.inflated = 0
        try:
            self.zip = zipfile.ZipFile(f)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
                NotImplementedError, struct.error) as exc:
            raise ValueError(f"{what}: not a readable zip archive ({exc})") from None
        self.infos, self.offsets = {}, {}
        for info in infos:
            if info.filename in self.infos:
                raise ValueError(f"{what}: member {info.filename!r} appears twice")
            if info.flag_bits & 0x1:
                raise ValueError(f"{what}: member {info.filename!r} is encrypted")
            self.infos[info.filename] = info
        self._locate(infos)

    def _locate(self, infos):
        spans = []
        for info in infos:
            if not 0 <= info.header_offset <= self.size - 30:
                raise ValueError(f"{self.what}: member {info.filename!r} starts at byte "
                                 f"{info.header_offset}, outside the file")
            self.f.seek(info.header_offset)
            header = self.f.read(30)
            if len(header) != 30 or header[:4] != b'PK\x03\x04':
                raise ValueError(f"{self.what}: member {info.filename!r} has no local header at byte "
                                 f"{info.header_offset}")
            name_length, extra_length = struct.unpack('<HH', header[26:30])
            start = info.header_offset + 30 + name_length + extra_length
            if start + info.compress_size > self.size:
                raise ValueError(f"{self.what}: member {info.filename!r} declares {info.compress_size} "
                                 f"bytes at byte {start}, past the end of the file ({self.size} bytes)")
            self.offsets[info.filename] = start
            spans.append((info.header_offset, start + info.compress_size, info.filename))
        spans.sort()
        for (_, end, name), (begin, _, other) in zip(spans, spans[1:]):
            if begin < end:
                raise ValueError(f"{self.what}: members {name!r} and {other!r} overlap (a zip bomb "
                                 f"or a corrupt archive)")

    def names(self):
        return list(self.infos)

    def nbytes(self, name):
        return self.infos[name].file_size

    def read(self, name):
        """The member's bytes as a 1-D uint8 array, read once (or mapped when stored and mapping)."""
        info = self.infos[name]
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise ValueError(f"{self.what}: stored member {name!r} declares two sizes")
            data = _read_region(self.f, self.mapped, self.offsets[name], info.file_size)
            if self.mapped is None and info.CRC and zlib.crc32(data) != info.CRC:
                raise ValueError(f"{self.what}: member {name!r} fails its CRC-32 check (corrupt)")
            return data
        if info.compress_type != zipfile.ZIP_DEFLATED:
            raise ValueError(f"{self.what}: member {name!r} uses compression method "
                             f"{info.compress_type}; only stored and deflated members are read")
        return self._inflate(info)

    def _inflate(self, info):
        if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024:
            raise ValueError(f"{self.what}: member {info.filename!r} declares {info.file_size} bytes "
                             f"from {info.compress_size} compressed, more than deflate can produce "
                             f"(a zip bomb or a corrupt archive)")
        self.inflated += info.file_size
        require_memory((self.inflated,), np.uint8, f"the compressed members of {self.what}",
                       'the decompressed members together')
        out = _new_buffer(info.file_size)
        view, filled = memoryview(out), 0
        try:
            with self.zip.open(info) as member:
                while filled < info.file_size:
                    chunk = member.read(min(1 << 22, info.file_size - filled))
                    if not chunk:
                        break
                    view[filled:filled + len(chunk)] = chunk
                    filled += len(chunk)
                extra = member.read(1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            raise ValueError(f"{self.what}: member {info.filename!r} is corrupt ({exc})") from None
        if filled != info.file_size or extra:
            raise ValueError(f"{self.what}: member {info.filename!r} does not hold its declared "
                             f"{info.file_size} bytes")
        return out


def _torch_root(archive, what):
    """The archive's root folder (``'<root>/'``): the one holding ``data.pkl``."""
    roots = [n[:-len('data.pkl')] for n in archive.names()
             if n.endswith('data.pkl') and n.count('/') <= 1 and n.rsplit('/', 1)[-1] == 'data.pkl']
    if len(roots) != 1:
        raise ValueError(f"{what}: zip archive with {len(roots)} data.pkl members at its root "
                         f"(a PyTorch checkpoint has exactly one)")
    return roots[0]


def _load_torch_zip(archive, what, allow, unknown):
    root = _torch_root(archive, what)
    byteorder = 'little'
    if root + 'byteorder' in archive.infos:
        byteorder = archive.read(root + 'byteorder').tobytes().decode('ascii', 'replace')
        if byteorder not in ('little', 'big'):
            raise ValueError(f"{what}: byteorder member says {byteorder!r}, not 'little' or 'big'")
    storages = {}
    pickled = archive.read(root + 'data.pkl')
    load = _Load(archive.size + archive.inflated)

    def persistent_load(pid):
        dtype, key, numel, _ = _storage_pid(pid, 5)
        nbytes = numel * _itemsize(dtype)
        if key in storages:
            if storages[key].raw.size != nbytes:
                raise ValueError(f"storage {key} is named with {nbytes} and {storages[key].raw.size} bytes")
            return load.value(storages[key])
        name = f'{root}data/{key}'
        if name not in archive.infos:
            raise ValueError(f"storage {key} has no member {name!r}")
        if archive.nbytes(name) != nbytes:
            raise ValueError(f"storage {key} ({numel} x {dtype}) needs {nbytes} bytes, member "
                             f"{name!r} holds {archive.nbytes(name)}")
        inflated = archive.inflated
        storages[key] = _Storage(key, archive.read(name), dtype, byteorder)
        load.provide(archive.inflated - inflated)
        return load.value(storages[key])

    return Unpickler(source(pickled), TORCH_GLOBALS, allow=allow, unknown=unknown, limits=load,
                     persistent_load=persistent_load, what=f"{what}: {root}data.pkl").load()


class _LegacyStorages(_Load):
    """The storages of a legacy stream: allocated when the object pickle names them (their total
    bounded by the bytes left in the file), filled when their bytes follow the pickle."""

    def __init__(self, src, what):
        super().__init__(src.left())
        self.src, self.what = src, what
        self.roots, self.views, self.all, self.reserved = {}, {}, [], 0

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and pid and pid[0] in ('module', b'module') and len(pid) == 4:
            return pid[1]          # a whole-module pickle names its class here (already resolved)
        dtype, key, numel, (view_metadata,) = _storage_pid(pid, 6)
        nbytes = numel * _itemsize(dtype)
        root = self.roots.get(key)
        if root is None:
            self.reserved += 8 + nbytes
            if self.reserved > self.src.left():
                raise ValueError(f"storages of {self.reserved} bytes are declared but the file has "
                                 f"{self.src.left()} bytes left (truncated or corrupt)")
            root = self.roots[key] = _Storage(key, _new_buffer(nbytes), dtype)
            self.all.append(root)
        elif root.raw.size != nbytes:
            raise ValueError(f"storage {key} is named with {nbytes} and {root.raw.size} bytes")
        return self.value(root if view_metadata is None else self._view(root, dtype, view_metadata))

    def _view(self, root, dtype, view_metadata):
        """Very old files: a storage that is a slice ``(view_key, offset, size)`` of another."""
        if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
            raise ValueError(f"storage view metadata {view_metadata!r} is not (key, offset, size)")
        key = _ascii(view_metadata[0], 'storage view key')
        offset = _int_arg(view_metadata[1], 'storage view offset')
        size = _int_arg(view_metadata[2], 'storage view size')
        if offset + size > root.numel:
            raise ValueError(f"storage view [{offset}, {offset + size}) is outside storage {root.key} "
                             f"of {root.numel} elements")
        if key not in self.views:
            item = _itemsize(dtype)
            self.views[key] = _Storage(key, root.raw[offset * item:(offset + size) * item], dtype)
            self.all.append(self.views[key])
        return self.views[key]

    def fill(self, keys):
        if not isinstance(keys, list):
            raise ValueError(f"{self.what}: the storage key list is a {type(keys).__name__}")
        keys = [_ascii(k, 'storage key') for k in keys]
        if len(set(keys)) != len(keys) or set(keys) != set(self.roots):
            raise ValueError(f"{self.what}: the storage key list does not name each storage of the "
                             f"object pickle once")
        for key in keys:
            root = self.roots[key]
            numel = struct.unpack('<q', self.src.read(8))[0]
            if numel != root.numel:
                raise ValueError(f"{self.what}: storage {key} holds {numel} elements, the object "
                                 f"pickle says {root.numel}")
            self.src.readinto(root.raw)
        for storage in self.all:
            storage.refresh()
        self.run_deferred()


def _load_stream(f, size, what, allow, unknown):
    """A legacy PyTorch stream, or a plain pickle (whose tensors are NumPy arrays)."""
    src = file_source(f, size)
    storages = _LegacyStorages(src, what)

    def unpickle(part, persistent_load=None):
        return Unpickler(src, TORCH_GLOBALS, allow=allow, unknown=unknown, limits=storages,
                         persistent_load=persistent_load, what=f"{what}: {part}").load()

    first = unpickle('first pickle')
    if type(first) is not int or first != LEGACY_MAGIC:
        if src.left() == 0:
            return first
        raise ValueError(f"{what}: a pickle followed by {src.left()} more bytes, and not PyTorch's "
                         f"legacy format (its magic number is missing)")
    if unpickle('protocol version') != LEGACY_PROTOCOL:
        raise ValueError(f"{what}: legacy protocol version is not {LEGACY_PROTOCOL}")
    if not isinstance(unpickle('sys info'), dict):
        raise ValueError(f"{what}: the legacy sys-info pickle is not a dict")
    storages.deferred = []
    obj = unpickle('object pickle', storages.persistent_load)
    storages.fill(unpickle('storage keys'))
    return obj


def _load_safetensors(f, size, mapped, what):
    header_length = struct.unpack('<Q', f.read(8))[0]
    if header_length > min(size - 8, _SAFETENSORS_HEADER_LIMIT):
        raise ValueError(f"{what}: safetensors header of {header_length} bytes declared, the file has "
                         f"{size - 8} bytes after the length")
    try:
        header = json.loads(f.read(header_length).decode('utf-8'), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{what}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{what}: safetensors header is a {type(header).__name__}, not an object")
    metadata = header.pop('__metadata__', None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError(f"{what}: safetensors __metadata__ must map strings to strings")
    entries = [_safetensors_entry(name, spec, what) for name, spec in header.items()]
    buffer_start, buffer_size = 8 + header_length, size - 8 - header_length
    end = 0
    for begin, stop, name in sorted((e[3], e[4], e[0]) for e in entries):
        if begin != end:
            raise ValueError(f"{what}: tensor {name!r} starts at byte {begin} of the buffer, expected "
                             f"{end} (tensors must tile the buffer without gaps or overlaps)")
        end = stop
    if end != buffer_size:
        raise ValueError(f"{what}: tensors cover {end} bytes of a {buffer_size}-byte buffer")
    out = {}
    for name, dtype, shape, begin, stop in entries:
        raw = _read_region(f, mapped, buffer_start + begin, stop - begin)
        out[name] = _shaped(_typed(raw, dtype, 'little', name), shape, 'C', f"{what}: tensor {name!r}")
    return out


def _shaped(flat, shape, order, what):
    """``flat.reshape(shape)``; NumPy's refusals (a dimension beyond its limits) name ``what``."""
    try:
        return flat.reshape(shape, order=order)
    except ValueError as exc:
        raise ValueError(f"{what}: shape {shape} is not possible: {exc}") from None


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys in a JSON object")
    return dict(pairs)


def _safetensors_entry(name, spec, what):
    if not isinstance(spec, dict) or set(spec) != {'dtype', 'shape', 'data_offsets'}:
        raise ValueError(f"{what}: tensor {name!r} must have exactly dtype, shape and data_offsets")
    code = spec['dtype']
    if not isinstance(code, str) or code not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{what}: tensor {name!r} has dtype {code!r}; supported: "
                         f"{', '.join(_SAFETENSORS_DTYPES)}")
    dtype = _SAFETENSORS_DTYPES[code]
    shape = _int_tuple(spec['shape'], f"{what}: tensor {name!r} shape")
    offsets = spec['data_offsets']
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise ValueError(f"{what}: tensor {name!r} data_offsets must be [begin, end]")
    begin, stop = (_int_arg(o, f"{what}: tensor {name!r} offset") for o in offsets)
    count = 1
    for n in shape:
        count *= n
    if stop - begin != count * _itemsize(dtype):
        raise ValueError(f"{what}: tensor {name!r} of shape {shape} ({code}) needs "
                         f"{count * _itemsize(dtype)} bytes, its offsets span {stop - begin}")
    return name, dtype, shape, begin, stop


def _npy_array(raw, what):
    """The array stored in the bytes of an ``.npy`` file (a 1-D uint8 array), without a copy."""
    head = raw[:12].tobytes()
    if len(head) < 10 or head[:6] != b'\x93NUMPY' or head[6] not in (1, 2, 3):
        raise ValueError(f"{what}: not an .npy array (bad magic)")
    if head[6] == 1:
        length, start = struct.unpack('<H', head[8:10])[0], 10
    else:
        if len(head) < 12:
            raise ValueError(f"{what}: truncated .npy header")
        length, start = struct.unpack('<I', head[8:12])[0], 12
    if length > 65536 or start + length > raw.size:
        raise ValueError(f"{what}: .npy header of {length} bytes does not fit the data")
    text = raw[start:start + length].tobytes().decode('utf-8' if head[6] == 3 else 'latin1')
    try:
        header = ast.literal_eval(text)
        dtype = np.lib.format.descr_to_dtype(header['descr'])
        shape, fortran = header['shape'], header['fortran_order']
    except (ValueError, SyntaxError, TypeError, KeyError, RecursionError, MemoryError) as exc:
        raise ValueError(f"{what}: .npy header is not understood ({exc!r})") from None
    if dtype.hasobject or dtype.kind not in 'biufcUSmMV':
        raise ValueError(f"{what}: .npy of dtype {dtype} refused (object arrays hold pickles)")
    if not isinstance(fortran, bool):
        raise ValueError(f"{what}: .npy header's fortran_order must be True or False, got {fortran!r}")
    if dtype.itemsize == 0:
        raise ValueError(f"{what}: .npy dtype {dtype} has no size (NumPy arrays can not hold it)")
    shape = _int_tuple(shape, f"{what}: .npy shape")
    count = 1
    for n in shape:
        count *= n
    data = raw[start + length:]
    if count * dtype.itemsize != data.size:
        raise ValueError(f"{what}: .npy array of shape {shape} ({dtype}) needs "
                         f"{count * dtype.itemsize} bytes, the file holds {data.size}")
    return _shaped(data.view(dtype), shape, 'F' if fortran else 'C', what)


def _load_npz(archive, what):
    out = {}
    for name in archive.names():
        if not name.endswith('.npy'):
            raise ValueError(f"{what}: zip archive with neither data.pkl (PyTorch) nor only .npy "
                             f"members (npz): member {name!r}")
        out[name[:-4]] = _npy_array(archive.read(name), f"{what}: {name}")
    return out


def _check_options(allow, unknown, mmap):
    if unknown not in ('error', 'stub'):
        raise ValueError(f"unknown must be 'error' or 'stub', got {unknown!r}")
    if not isinstance(mmap, bool):
        raise TypeError(f"mmap must be a bool, got {type(mmap).__name__}")
    return check_allow(allow)


def load_checkpoint(path, *, allow=(), unknown='error', mmap=False):
    """Read a checkpoint: PyTorch zip or legacy ``.pth``, safetensors, ``.npz``/``.npy`` (or a
    plain pickle), the format told by the content. Nothing in the file is run.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    allow : sequence of str, optional
        Globals ``"module.name"`` you trust beyond the allow-list: they are imported and called as
        pickle would (never a name from ``os``, ``sys``, ``subprocess``, ``builtins``...).
    unknown : {'error', 'stub'}
        ``'error'``: a global outside the allow-list raises :class:`UnsafeCheckpointError`.
        ``'stub'``: instances of unknown classes become inert ``Stub`` placeholders (class name,
        pickled arguments and state) and unknown globals that are not called become ``GlobalRef``.
    mmap : bool
        Map the file's stored tensor bytes instead of reading them (zip, npz, safetensors): the
        arrays are read-only views of the file.

    Returns
    -------
    The file's structure (dict, OrderedDict, list, tuple, numbers, strings...) with every tensor as a
    ``numpy.ndarray`` of its dtype and shape (views that shared a storage in PyTorch share memory;
    bfloat16 becomes float32, exactly). A storage pickled alone (``torch.save(t.untyped_storage())``)
    is the 1-D array of its elements (uint8 for an untyped storage), sharing memory with the tensors
    on it. safetensors and npz give a dict ``name -> array`` in file order.

    Raises
    ------
    CheckpointPathError
        (an ``OSError`` and a ``ValueError``) ``path`` is missing (also a ``FileNotFoundError``), a
        directory (an ``IsADirectoryError``), not readable (a ``PermissionError``) or not a regular
        file (a pipe or a device: refused before it is opened for reading).
    UnsafeCheckpointError
        (a ``ValueError``) the file names a global outside the allow-list, or a dangerous one.
    ValueError
        truncated, corrupt or unknown formats, sizes or offsets outside the file or storage,
        unsupported dtypes; dict keys or set items holding tuples nested more than 256 deep, or more
        than 16 distinct keys of one dict sharing a hash; copies of the file's data (PyTorch's
        negation bit, NumPy arrays made from bytes...) together larger than 8 times the data read plus
        64 MiB, or than the machine's memory (``numpyconv._safe_pickle.Limits``).
    """
    allow = _check_options(allow, unknown, mmap)
    path = os.fspath(path)
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(512)
        f.seek(0)
        if size == 0:
            raise ValueError(f"{path}: size 0 (an empty file, or a system file such as /proc's), not a "
                             f"checkpoint")
        mapped = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ) if mmap else None
        try:
            return _load(f, size, head, mapped, path, allow, unknown)
        except (zipfile.BadZipFile, zlib.error, EOFError, struct.error, OverflowError,
                UnicodeError) as exc:
            raise ValueError(f"{path}: corrupt or truncated ({type(exc).__name__}: {exc})") from None
        except MemoryError:
            raise ValueError(f"{path}: loading it needs more memory than this process can have") from None


def _open_regular(path):
    """``path`` opened for reading if it is a regular file; else a :class:`CheckpointPathError`,
    raised before anything could block (a pipe, a device)."""
    fd = None
    try:
        _check_regular(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_BINARY', 0) | getattr(os, 'O_NONBLOCK', 0))
        _check_regular(os.fstat(fd).st_mode)            # the same file, not one put there since
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        raise _path_error(exc, path) from None
    return open(fd, 'rb')


def _check_regular(mode):
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file (a pipe, socket or device), not a checkpoint")


def _load(f, size, head, mapped, path, allow, unknown):
    if head[:4] in (b'PK\x03\x04', b'PK\x05\x06'):
        archive = _Archive(f, size, mapped, path)
        if any(n.rsplit('/', 1)[-1] == 'data.pkl' for n in archive.names()):
            return _load_torch_zip(archive, f"{path} (PyTorch zip)", allow, unknown)
        return _load_npz(archive, f"{path} (npz)")
    if head[:6] == b'\x93NUMPY':
        return _npy_array(_read_region(f, mapped, 0, size), f"{path} (npy)")
    if len(head) >= 9 and head[8:9] == b'{' and struct.unpack('<Q', head[:8])[0] <= size - 8:
        return _load_safetensors(f, size, mapped, f"{path} (safetensors)")
    if head[:1] == b'\x80' or head[:1] in _PICKLE_STARTS or head.startswith(_LEGACY_TEXT_MAGIC):
        return _load_stream(f, size, f"{path} (PyTorch legacy stream or pickle)", allow, unknown)
    if head[257:262] == b'ustar':
        raise ValueError(f"{path}: a tar archive: PyTorch's tar format (before 0.4) is not supported")
    raise ValueError(f"{path}: unknown format (not a PyTorch zip or legacy checkpoint, safetensors, "
                     f"npz or npy; first bytes {head[:8]!r})")


# -- the model inside a checkpoint ------------------------------------------------------------
_MODULE_FIELDS = ('_parameters', '_buffers', '_modules')
_MAX_MODULES = 1_000_000        # module visits while reading one pickled module tree


def is_pickled_module(obj):
    """Whether ``obj`` is a whole ``torch.nn.Module`` (``torch.save(model)``) read with
    ``unknown='stub'``: a :class:`Stub` whose state holds ``_parameters``, ``_buffers`` and
    ``_modules``."""
    state = obj.state if isinstance(obj, Stub) else None
    return isinstance(state, Mapping) and all(isinstance(state.get(k), Mapping) for k in _MODULE_FIELDS)


def pickled_module_state(module):
    """The state_dict of a pickled ``torch.nn.Module`` (:func:`is_pickled_module`), as its
    ``state_dict()`` orders it: each module's parameters, then its persistent buffers (entries that
    are None skipped), then its children's under ``'<child>.'``. No code of the module runs: a
    module that adds entries in its own ``get_extra_state`` or in state_dict hooks has them missing.
    A child that is not a module, a module inside itself, or more than 1,000,000 module visits (a
    shared child is visited once per path) raise ``ValueError``."""
    out, visits = {}, [0]
    _module_entries(module, '', (), out, visits)
    return out


def _module_entries(module, prefix, path, out, visits):
    visits[0] += 1
    if visits[0] > _MAX_MODULES:
        raise ValueError(f"pickled module: more than {_MAX_MODULES} module visits (children shared "
                         f"many times over); not a module tree this reader follows")
    if any(m is module for m in path):
        raise ValueError(f"pickled module: {prefix.rstrip('.')!r} contains itself (a module inside "
                         f"itself has no state_dict)")
    state = module.state
    non_persistent = state.get('_non_persistent_buffers_set')
    non_persistent = non_persistent if isinstance(non_persistent, (set, frozenset)) else ()
    for field in ('_parameters', '_buffers'):
        for name, value in state[field].items():
            if value is not None and not (field == '_buffers' and name in non_persistent):
                out[prefix + _entry_name(name, prefix, field)] = value
    for name, child in state['_modules'].items():
        name = _entry_name(name, prefix, '_modules')
        if child is None:
            continue
        if not is_pickled_module(child):
            raise ValueError(f"pickled module: child {prefix + name!r} is {child!r}, not a torch.nn.Module")
        _module_entries(child, prefix + name + '.', path + (module,), out, visits)


def _entry_name(name, prefix, field):
    if not isinstance(name, str):
        raise ValueError(f"pickled module: {field} of {prefix.rstrip('.') or 'the module'} has a key "
                         f"{name!r} of type {type(name).__name__}, not a str")
    return name


def state_dict_key(checkpoint, key=None):
    """The key of ``checkpoint`` that :func:`state_dict_of` reads (None: the checkpoint itself)."""
    if not isinstance(checkpoint, Mapping):
        return None
    if key is not None:
        if key not in checkpoint:
            raise StateDictError(f"state_dict_of: key {key!r} is not in the checkpoint; its keys are "
                                 f"{list(checkpoint)[:20]}")
        return key
    found = [k for k in ('state_dict', 'model', 'model_ema')
             if isinstance(checkpoint.get(k), Mapping) or is_pickled_module(checkpoint.get(k))]
    return found[0] if found else None


def state_dict_of(checkpoint, prefix=None, key=None):
    """The model's state_dict inside a loaded checkpoint.

    Parameters
    ----------
    checkpoint : dict or Stub
        What :func:`load_checkpoint` returned. A whole model saved with ``torch.save(model)`` and
        read with ``unknown='stub'`` (alone, or as an entry below) gives the state_dict its
        ``state_dict()`` would give (:func:`pickled_module_state`).
    prefix : str, optional
        Keep only the keys under this module prefix and strip it (``'module'`` from DataParallel,
        ``'backbone'`` from mmcls/mmdet); a trailing ``'.'`` is added when missing.
    key : str, optional
        The entry holding the state_dict; default: the first of ``'state_dict'``, ``'model'``,
        ``'model_ema'`` holding a dict or a pickled module, else the checkpoint itself.

    Returns
    -------
    dict ``key -> value`` in the checkpoint's order (a new dict; the arrays are not copied).
    """
    if is_pickled_module(checkpoint):
        checkpoint = pickled_module_state(checkpoint)
    if not isinstance(checkpoint, Mapping):
        what = repr(checkpoint) if isinstance(checkpoint, Stub) else type(checkpoint).__name__
        raise TypeError(f"checkpoint must be a dict or a pickled torch.nn.Module (what load_checkpoint "
                        f"returns), got {what}")
    key = state_dict_key(checkpoint, key)
    state, where = (checkpoint, 'checkpoint') if key is None else (checkpoint[key], f"checkpoint[{key!r}]")
    if is_pickled_module(state):
        state = pickled_module_state(state)
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict_of: {where} is a {type(state).__name__}, not a state_dict")
    if prefix is None:
        return dict(state)
    if not isinstance(prefix, str) or not prefix.strip('.'):
        raise ValueError(f"prefix must be a non-empty module name such as 'module.', got {prefix!r}")
    prefix = prefix if prefix.endswith('.') else prefix + '.'
    out = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    if not out:
        heads = sorted({k.split('.', 1)[0] + '.' for k in state if isinstance(k, str)})
        raise StateDictError(f"state_dict_of: no key of {where} starts with {prefix!r}; the keys "
                             f"start with {heads[:20]}")
    return out


# -- writing ----------------------------------------------------------------------------------
# NumPy dtype -> (storage class, torch dtype name); uint16/32/64 are untyped storages (v3)
_SAVE_TYPES = {np.dtype(k): v for k, v in {
    'f8': 'DoubleStorage', 'f4': 'FloatStorage', 'f2': 'HalfStorage', 'i8': 'LongStorage',
    'i4': 'IntStorage', 'i2': 'ShortStorage', 'i1': 'CharStorage', 'u1': 'ByteStorage',
    'b1': 'BoolStorage', 'c8': 'ComplexFloatStorage', 'c16': 'ComplexDoubleStorage',
    'u2': 'uint16', 'u4': 'uint32', 'u8': 'uint64'}.items()}
_SAFETENSORS_CODES = {np.dtype(_DTYPES[v][0]): k for k, v in _SAFETENSORS_DTYPES.items() if k != 'BF16'}
_ALLOWED = "arrays, numbers, strings, bools, None and dict/OrderedDict/list/tuple of them"


def _where(where, key):
    return f"{where}[{key!r}]"


def _join(path, key):
    return f"{path}.{key}" if path else str(key)


class _Tensors:
    """Walks ``obj`` for :func:`save_checkpoint`: checks every value, turns arrays into the
    pickled tensor calls of PyTorch's zip format and collects their storages."""

    def __init__(self, bfloat16):
        self.bfloat16, self.used = bfloat16, set()
        self.storages, self.keys, self.keep = [], {}, []

    def convert(self, obj, where='obj', path='', active=()):
        if obj is None or type(obj) in (bool, int, float, complex, str):
            return obj
        if isinstance(obj, (np.ndarray, np.generic)):
            return self.tensor(_plain_array(obj, where), where, path)
        if type(obj) in (dict, OrderedDict, list, tuple):
            if id(obj) in active:
                raise ValueError(f"save_checkpoint: {where} contains itself")
            _check_depth(len(active) + 1, where)
            active = (*active, id(obj))
            if type(obj) in (list, tuple):
                items = [self.convert(v, f"{where}[{i}]", _join(path, i), active) for i, v in enumerate(obj)]
                return type(obj)(items)
            out = type(obj)()
            for k, v in obj.items():
                _check_key(k, where, len(active))
                out[k] = self.convert(v, _where(where, k), _join(path, k), active)
            return out
        raise TypeError(f"save_checkpoint: {where} is a {type(obj).__module__}.{type(obj).__qualname__}; "
                        f"a checkpoint holds {_ALLOWED}")

    def tensor(self, value, where, path):
        array = np.asarray(value)
        bf16 = path in self.bfloat16
        if bf16:
            if array.dtype.kind != 'f':
                raise ValueError(f"save_checkpoint: bfloat16 names {path!r}, which holds {array.dtype} "
                                 f"values, not floats")
            self.used.add(path)
        elif array.dtype.newbyteorder('=') not in _SAVE_TYPES:
            raise TypeError(f"save_checkpoint: {where} has dtype {array.dtype}; PyTorch tensors take "
                            f"float64/32/16, int64/32/16/8, uint64/32/16/8, bool, complex64/128")
        key = self.keys.get((id(value), bf16))
        if key is None:                      # the same array object twice: one shared storage
            data = float32_to_bfloat16(array) if bf16 else np.ascontiguousarray(
                array, dtype=array.dtype.newbyteorder('='))
            key = self.keys[(id(value), bf16)] = str(len(self.storages))
            self.storages.append((key, data))
            self.keep.append(value)
        return _tensor_call(key, array.shape, 'BFloat16Storage' if bf16 else _SAVE_TYPES[
            array.dtype.newbyteorder('=')], array.size)


def _plain_array(value, where):
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"save_checkpoint: {where} is a masked array; its mask would be lost (save "
                        f"value.filled(...) or the data and the mask as two arrays)")
    return value


def _check_depth(depth, where):
    if depth > _MAX_SAVE_DEPTH:
        raise ValueError(f"save_checkpoint: {where} is nested more than {_MAX_SAVE_DEPTH} containers "
                         f"(and key tuples) deep")


def _check_key(key, where, depth):
    if type(key) in (str, int, float, bool) or key is None:
        return
    if type(key) is tuple:
        _check_depth(depth + 1, f"a key of {where}")
        for k in key:
            _check_key(k, where, depth + 1)
        return
    raise TypeError(f"save_checkpoint: {where} has a key of type {type(key).__name__}; keys must be "
                    f"strings, numbers, bools, None or tuples of them")


def _tensor_call(key, shape, storage, count):
    """The pickled ``_rebuild_tensor_v2``/``_v3`` call of a contiguous tensor on storage ``key``."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    strides = tuple(reversed(strides))
    hooks = Reduce(Global('collections', 'OrderedDict'), ())
    if storage in _DTYPES:                     # uint16/32/64: an untyped storage and a dtype
        nbytes = count * _itemsize(storage)
        pid = PersistentId(('storage', Global('torch.storage', 'UntypedStorage'), key, 'cpu', nbytes))
        return Reduce(Global('torch._utils', '_rebuild_tensor_v3'),
                      (pid, 0, tuple(shape), strides, False, hooks, Global('torch', storage)))
    pid = PersistentId(('storage', Global('torch', storage), key, 'cpu', count))
    return Reduce(Global('torch._utils', '_rebuild_tensor_v2'), (pid, 0, tuple(shape), strides, False, hooks))


@contextlib.contextmanager
def _atomic(path):
    """Write to a temporary file beside ``path`` and move it into place only when complete."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        handle = tempfile.NamedTemporaryFile('wb', dir=directory, prefix=f'.{name}.', suffix='.tmp',
                                             delete=False)
    except OSError as exc:
        raise _path_error(exc, path) from None
    try:
        with handle:
            yield handle
        try:
            os.replace(handle.name, path)
        except OSError as exc:
            raise _path_error(exc, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise


def _member(zf, f, name, data, align=0):
    """Add a stored member; with ``align``, its data starts on a multiple of ``align`` bytes (a
    padding extra field, as PyTorch writes), so that it can be mapped and viewed in place."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    payload = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8)) \
        if isinstance(data, np.ndarray) else memoryview(data)
    zip64 = payload.nbytes >= zipfile.ZIP64_LIMIT
    if align:
        fixed = f.tell() + 30 + len(name.encode('utf-8')) + 4 + (20 if zip64 else 0)
        pad = -fixed % align
        info.extra = struct.pack('<HH', 0x4246, pad) + b'Z' * pad
    with zf.open(info, 'w', force_zip64=zip64) as out:
        out.write(payload)


def _save_torch(obj, path, bfloat16):
    tensors = _Tensors(bfloat16)
    tree = tensors.convert(obj)
    _check_bfloat16_used(bfloat16, tensors.used)
    pickled = Writer().dumps(tree)
    with _atomic(path) as f, zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED, allowZip64=True) as zf:
        _member(zf, f, 'archive/data.pkl', pickled)
        _member(zf, f, 'archive/.storage_alignment', b'64')
        _member(zf, f, 'archive/byteorder', sys.byteorder.encode('ascii'))
        for key, data in tensors.storages:
            _member(zf, f, f'archive/data/{key}', data, align=64)
        _member(zf, f, 'archive/version', b'3\n')


def _flat_arrays(obj, fmt):
    if type(obj) not in (dict, OrderedDict):
        raise TypeError(f"save_checkpoint(format={fmt!r}) takes a flat dict name -> array, got "
                        f"{type(obj).__name__}")
    for k, v in obj.items():
        if not isinstance(k, str) or (fmt == 'safetensors' and k == '__metadata__'):
            raise TypeError(f"save_checkpoint(format={fmt!r}): key {k!r} must be a string (not "
                            f"'__metadata__')")
        if not isinstance(v, np.ndarray):
            raise TypeError(f"save_checkpoint(format={fmt!r}): obj[{k!r}] is a {type(v).__name__}; "
                            f"{fmt} holds only arrays (use format='torch' for nested checkpoints)")
        _plain_array(v, f"obj[{k!r}]")
    return obj


def _save_safetensors(obj, path, bfloat16):
    arrays = _flat_arrays(obj, 'safetensors')
    _check_bfloat16_used(bfloat16, {k for k in bfloat16 if k in arrays})
    header, blobs, offset = {}, [], 0
    for name, array in arrays.items():
        if name in bfloat16:
            if array.dtype.kind != 'f':
                raise ValueError(f"save_checkpoint: bfloat16 names {name!r}, which holds {array.dtype}")
            code, data = 'BF16', float32_to_bfloat16(array)
        else:
            code = _SAFETENSORS_CODES.get(array.dtype.newbyteorder('='))
            if code is None:
                raise TypeError(f"save_checkpoint(format='safetensors'): obj[{name!r}] has dtype "
                                f"{array.dtype}, which safetensors does not hold")
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder('<'))
        header[name] = {'dtype': code, 'shape': list(array.shape),
                        'data_offsets': [offset, offset + data.nbytes]}
        blobs.append(data)
        offset += data.nbytes
    text = json.dumps(header, separators=(',', ':')).encode('utf-8')
    text += b' ' * (-len(text) % 8)
    with _atomic(path) as f:
        f.write(struct.pack('<Q', len(text)) + text)
        for data in blobs:
            f.write(memoryview(data.reshape(-1).view(np.uint8)))


def _save_npz(obj, path, bfloat16):
    arrays = _flat_arrays(obj, 'npz')
    if bfloat16:
        raise ValueError("save_checkpoint(format='npz'): npz has no bfloat16 type")
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise TypeError(f"save_checkpoint(format='npz'): obj[{name!r}] is an object array")
    with _atomic(path) as f, zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            _member(zf, f, name + '.npy', buffer.getbuffer())


def _check_bfloat16_used(requested, used):
    missing = sorted(set(requested) - set(used))
    if missing:
        raise ValueError(f"save_checkpoint: bfloat16 names {missing}, which are not arrays of obj "
                         f"(keys are paths joined by '.', e.g. 'state_dict.conv.weight')")


_WRITERS = {'torch': _save_torch, 'safetensors': _save_safetensors, 'npz': _save_npz}


def save_checkpoint(obj, path, format='torch', bfloat16=()):
    """Write ``obj`` as a checkpoint.

    Parameters
    ----------
    obj : dict, OrderedDict, list or tuple
        ``'torch'``: nested containers of arrays, Python numbers, strings, bools and None (keys:
        strings, numbers, bools, None, tuples); NumPy scalars are written as 0-d tensors (they load
        back as 0-d arrays), arrays as contiguous tensors (the same array object twice shares one
        storage). ``'safetensors'``/``'npz'``: a flat dict ``name -> array``.
    path : str or os.PathLike
        Written atomically (a temporary file beside it, renamed when complete).
    format : {'torch', 'safetensors', 'npz'}
        ``'torch'`` is PyTorch's zip format, read by ``torch.load(path, weights_only=True)`` with the
        same keys, order, dtypes, shapes and values.
    bfloat16 : sequence of str
        Arrays to write as bfloat16 (rounded to nearest even; NaN stays NaN), named by their path:
        the keys from the top joined by ``'.'`` (``'state_dict.conv.weight'``; list items by index).
        Not available for npz.

    Raises
    ------
    TypeError
        a value or key of a type the format does not hold, or a ``numpy.ma.MaskedArray`` (its mask
        would be lost), named with where it sits (``obj['optimizer']['state'][3]``).
    ValueError
        a container that contains itself; containers (and key tuples) nested more than 200 deep;
        a ``bfloat16`` name that is not a float array of ``obj``.
    CheckpointPathError
        (an ``OSError`` and a ``ValueError``) ``path`` is a directory or its folder is missing or
        not writable; the message names ``path``.
    """
    if format not in _WRITERS:
        raise ValueError(f"format must be 'torch', 'safetensors' or 'npz', got {format!r}")
    if isinstance(bfloat16, str):
        bfloat16 = (bfloat16,)
    bfloat16 = frozenset(bfloat16)
    if not all(isinstance(k, str) for k in bfloat16):
        raise TypeError(f"bfloat16 must be a sequence of key names, got {sorted(map(repr, bfloat16))}")
    _WRITERS[format](obj, os.fspath(path), bfloat16)
