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
"""
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

PARALLEL_MIN_WORK = 1 << 16   # multiply-adds below which one thread beats waking the pool


@contextmanager
def threads_for(work):
    """Run the enclosed kernels on all Numba threads, or on one when ``work < PARALLEL_MIN_WORK``."""
    threads = numba.get_num_threads()
    numba.set_num_threads(threads if work >= PARALLEL_MIN_WORK else 1)
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
