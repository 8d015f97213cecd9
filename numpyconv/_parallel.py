"""Thread budget and operands of the Numba loops (depthwise convolution, pooling, normalisation,
activations, sampling, involution).

Waking Numba's thread pool costs tens of microseconds, and far more on a loaded machine; below a
few ten thousand multiply-adds one thread is faster. Every kernel's result is independent of the
thread count (each parallel iteration owns the memory it writes), so this changes speed only.

Numba's OpenMP threads sleep as soon as a loop ends (``OMP_WAIT_POLICY=PASSIVE``, unless the
environment sets it): a network alternates Numba loops with OpenBLAS GEMMs, and OpenMP threads that
spin waiting for the next loop take the cores the GEMM runs on (at 2 threads, ResNet-50's forward
pass is four times slower with spinning threads). This is read when the OpenMP runtime loads, at
the first parallel loop of the process, or when a framework that shares the runtime (PyTorch) is
imported after numpyconv; the benchmarks import PyTorch under :func:`wait_policy_as_given`.

OpenBLAS's worker threads likewise go to sleep soon after a GEMM ends (``OPENBLAS_THREAD_TIMEOUT=20``,
2**20 cycles, about a third of a millisecond, unless the environment sets it). By default they spin
for 2**28 cycles, about a tenth of a second, after every GEMM, and the Numba loop that follows (a
GELU, a LayerNorm, a sampling pass) runs on the cores they hold, up to three times slower. A third
of a millisecond still covers the gap between two GEMMs that follow each other (waking a sleeping
worker costs more than a small GEMM). OpenBLAS reads the variable when its thread server starts, so
:func:`quiet_blas_threads` restarts the servers of the OpenBLAS libraries already loaded (NumPy's,
SciPy's) at import; libraries loaded later read the variable themselves. Elsewhere than Linux, or
with a BLAS that is not OpenBLAS on pthreads (MKL, Accelerate, OpenBLAS on OpenMP), it does nothing.
"""
import ctypes
import os
from contextlib import contextmanager

import numba
import numpy as np

SETS_WAIT_POLICY = 'OMP_WAIT_POLICY' not in os.environ
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')


@contextmanager
def wait_policy_as_given():
    """The environment without the wait policy numpyconv set: for importing another framework whose
    OpenMP runtime should start with its own default (the benchmarks' PyTorch)."""
    if not SETS_WAIT_POLICY or os.environ.get('OMP_WAIT_POLICY') != 'PASSIVE':
        yield
        return
    del os.environ['OMP_WAIT_POLICY']
    try:
        yield
    finally:
        os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'


SETS_BLAS_TIMEOUT = 'OPENBLAS_THREAD_TIMEOUT' not in os.environ
os.environ.setdefault('OPENBLAS_THREAD_TIMEOUT', '20')
_PTHREADS = 1                  # openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP
_GET_PARALLEL = ('openblas_get_parallel', 'scipy_openblas_get_parallel64_', 'scipy_openblas_get_parallel')


def loaded_openblas():
    """Paths of the OpenBLAS shared libraries this process has loaded (Linux; empty elsewhere)."""
    try:
        with open('/proc/self/maps') as maps:
            fields = [line.split() for line in maps]
    except OSError:
        return []
    return sorted({f[-1] for f in fields
                   if len(f) >= 6 and 'openblas' in os.path.basename(f[-1]).lower() and '.so' in f[-1]})


def _pthreads_server(path):
    """The loaded library at ``path`` if it is OpenBLAS on its own pthreads server, else None."""
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    get_parallel = next((getattr(lib, n) for n in _GET_PARALLEL if hasattr(lib, n)), None)
    needed = ('openblas_read_env', 'blas_thread_shutdown_')
    if get_parallel is None or not all(hasattr(lib, n) for n in needed) or get_parallel() != _PTHREADS:
        return None
    return lib


def quiet_blas_threads():
    """Restart the thread server of each loaded OpenBLAS so that it reads ``OPENBLAS_THREAD_TIMEOUT``
    (module docstring); the next GEMM starts the workers again. Returns the paths restarted."""
    restarted = []
    for path in loaded_openblas():
        lib = _pthreads_server(path)
        if lib is not None:
            lib.openblas_read_env()
            lib.blas_thread_shutdown_()
            restarted.append(path)
    return restarted


if SETS_BLAS_TIMEOUT:
    quiet_blas_threads()

PARALLEL_MIN_WORK = 1 << 16   # multiply-adds below which one thread beats waking the pool


@contextmanager
def threads_for(work):
    """Run the enclosed kernels on all Numba threads, or on one when ``work < PARALLEL_MIN_WORK``."""
    if work >= PARALLEL_MIN_WORK:                  # the thread count in force, untouched
        yield
        return
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def loop_operand(a, dtype=None):
    """``a`` as a C-contiguous, writeable array, copied only if it is neither: Numba compiles a loop
    once per array type, and a read-only or strided array is a type of its own."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


def launch(loop, work, *args):
    """Run a Numba loop, problems below ``work`` multiply-adds on one thread (:func:`threads_for`)."""
    with threads_for(work):
        loop(*args)
