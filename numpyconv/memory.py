"""The memory policy, in one place: how much temporary memory an op may take, and what it refuses.

Three rules serve every op:

* **Column budget.** A buffer of columns (im2col's, the deformable sampling's) takes at most
  :func:`column_budget` bytes (default 256 MiB, set with :func:`set_column_budget`); a batch whose
  columns are larger is processed in chunks of whole samples (:func:`batch_chunks`) or, for conv2d,
  in blocks of equal size (:func:`even_steps`).
* **Scratch memory.** Temporaries of at most ``2 * GEMM_BLOCK`` bytes live in per-thread memory
  reused from call to call (:func:`scratch`): fresh memory costs a page fault per 4 KiB on first
  touch, about 10% of a small convolution's time.
* **Freed memory is kept for reuse** (Linux, glibc). By default glibc maps every array above a
  threshold (at most 32 MiB) afresh and unmaps it when it is freed, so each forward pass of a
  network at batch 8 page-faults its large activations in again: OD-MobileNetV2's batch-8
  inference spends 0.04-0.18 s of system time on 4,300 page faults per pass, out of 0.2-0.36 s.
  :func:`keep_freed_memory`, called at import, serves arrays up to 1 GiB from the heap and keeps
  what is freed there (``mallopt``), so a pass reuses the previous pass's memory. The process keeps
  its peak memory instead of returning it to the system (:func:`release_freed_memory` returns it).
  Setting ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in the environment (glibc's own
  variables) leaves glibc as configured.
* **Impossible sizes are refused before anything is allocated.** An array that alone is larger than
  the machine's memory raises a ``ValueError`` naming the bytes needed, the memory there is and the
  argument that asked for it (:func:`require_memory`), instead of NumPy's ``MemoryError`` half-way.
"""
import ctypes
import functools
import math
import numbers
import os
import platform
import threading

import numpy as np

GEMM_BLOCK = 8 * 2 ** 20       # bytes of columns per im2col + GEMM step (cache-sized)
_COLUMN_BUDGET = 256 * 2 ** 20
_SCRATCH = threading.local()   # each thread's reusable temporaries: slot name -> memory


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3      # glibc's mallopt parameters
HEAP_LIMIT = 2 ** 30           # arrays up to this many bytes come from the reused heap


def keep_freed_memory():
    """Make glibc serve allocations up to :data:`HEAP_LIMIT` bytes from its heap and keep freed
    memory there (module docstring). Does nothing elsewhere than glibc, or when the environment sets
    ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``. Returns whether it changed glibc's
    settings."""
    mallopt = _glibc('mallopt')
    if mallopt is None or {'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_'} & set(os.environ):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(HEAP_LIMIT))
                and mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(HEAP_LIMIT)))


def _glibc(name):
    """glibc's function ``name`` when this process runs on glibc (Linux), else None."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return None
    return getattr(ctypes.CDLL(None), name, None)


KEEPS_FREED_MEMORY = keep_freed_memory()


def release_freed_memory():
    """Return the freed memory glibc keeps (:func:`keep_freed_memory`) to the system
    (``malloc_trim(0)``); a later pass page-faults its memory in again. Returns whether glibc
    released any. Does nothing (False) elsewhere than glibc."""
    trim = _glibc('malloc_trim')
    return bool(trim(ctypes.c_size_t(0))) if trim is not None else False


def column_budget():
    """Bytes a column buffer may take before the batch is processed in chunks."""
    return _COLUMN_BUDGET


def set_column_budget(nbytes):
    """Set the column-buffer bound to ``nbytes`` (a positive int) bytes; returns the previous value.

    Raises ``TypeError`` for anything but an integer (a float such as ``1.5``, a bool, a string) and
    ``ValueError`` for zero or a negative number.
    """
    global _COLUMN_BUDGET
    if isinstance(nbytes, bool) or not isinstance(nbytes, (numbers.Integral, np.integer)):
        raise TypeError(f"nbytes must be a positive int (a number of bytes), got {nbytes!r}")
    if nbytes < 1:
        raise ValueError(f"nbytes must be a positive number of bytes, got {nbytes!r}")
    previous, _COLUMN_BUDGET = _COLUMN_BUDGET, int(nbytes)
    return previous


def batch_chunks(n, bytes_per_sample, budget=None):
    """Slices covering ``range(n)`` whose buffers each stay below ``budget`` (default: the
    column budget) bytes; a slice is never smaller than one sample."""
    budget = _COLUMN_BUDGET if budget is None else budget
    step = max(1, budget // max(1, bytes_per_sample))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)] or [slice(0, 0)]


def even_steps(total, most):
    """``range(total)`` cut into the fewest slices of at most ``most`` (>= 1) items, their sizes
    differing by at most one (no small last block)."""
    pieces = -(-total // most)
    return [slice(k * total // pieces, (k + 1) * total // pieces) for k in range(pieces)]


def scratch(slot, shape, dtype):
    """An uninitialised temporary array, in memory this thread reuses for ``slot`` (conv2d's:
    'columns', 'kernel', 'kernel_grad', 'dcols'; its Winograd path also 'padded', 'wino_rows',
    'wino_dm') from call to call, when it takes at most ``2 * GEMM_BLOCK`` bytes (a fresh array
    otherwise). The caller must be done with a slot's array before it asks that slot for another,
    and must not return it."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > 2 * GEMM_BLOCK:
        return np.empty(shape, dtype=dtype)
    memory = getattr(_SCRATCH, slot, None)
    if memory is None or memory.nbytes < nbytes:
        memory = np.empty(nbytes, dtype=np.uint8)
        setattr(_SCRATCH, slot, memory)
    return memory[:nbytes].view(dtype).reshape(shape)


@functools.lru_cache(maxsize=None)
def machine_memory():
    """Bytes of memory this process can have: the physical memory, or a smaller cgroup limit (read
    once per process)."""
    try:
        total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):        # not a POSIX system: no bound known
        total = 2 ** 63
    for path in ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'):
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


def _human(nbytes):
    for unit in ('bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'):
        if nbytes < 1024 or unit == 'PiB':
            return f"{nbytes:.0f} {unit}" if unit == 'bytes' else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes} bytes"


def require_memory(shape, dtype, argument, what='the output'):
    """Raise ``ValueError`` before allocating an array of ``shape`` and ``dtype`` that alone would
    be larger than the machine's memory; ``argument`` names what caused it (e.g. ``"padding=1000000
    with x of shape (1, 1, 2, 2)"``). Returns the number of bytes."""
    nbytes = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    available = machine_memory()
    if nbytes > available:
        raise ValueError(f"{what} of shape {tuple(int(s) for s in shape)} ({np.dtype(dtype)}) needs "
                         f"{_human(nbytes)} ({nbytes} bytes), more than the {_human(available)} of "
                         f"memory this machine has; caused by {argument}")
    return nbytes
