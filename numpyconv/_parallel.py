"""Thread budget of the Numba loops (depthwise convolution, deformable sampling, DCNv3/v4, involution).

Waking Numba's thread pool costs tens of microseconds, and far more on a loaded machine; below a
few ten thousand multiply-adds one thread is faster. Every kernel's result is independent of the
thread count (each parallel iteration owns the memory it writes), so this changes speed only.
"""
from contextlib import contextmanager

import numba

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
