"""The memory policy: geometry that PyTorch computes is computed without padded copies, and what no
machine could hold is refused before anything is allocated (numpyconv/memory.py)."""
import os
import tracemalloc

import numba
import numpy as np
import pytest

import numpyconv as nc
from numpyconv import deformable, memory

RNG = np.random.default_rng(11)
BIG = 10 ** 6
STRIDE = BIG - 1        # a 3x3 output of a 2x2 input padded by BIG


def direct_conv(x, w, stride, padding):
    """conv2d by its definition, one output at a time, reading zero outside ``x`` (no padded copy)."""
    n, c_in, h, wd = x.shape
    c_out, c_g, kh, kw = w.shape
    groups = c_in // c_g
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, c_out, ho, wo))
    for b, o, i, j, c, p, q in np.ndindex(n, c_out, ho, wo, c_g, kh, kw):
        r, s = i * stride + p - padding, j * stride + q - padding
        if 0 <= r < h and 0 <= s < wd:
            y[b, o, i, j] += w[o, c, p, q] * x[b, (o // (c_out // groups)) * c_g + c, r, s]
    return y


@pytest.mark.parametrize('channels, groups, multiplier', [(1, 1, 1), (1, 1, 2), (3, 3, 1)])
def test_depthwise_path_with_huge_padding_and_stride(channels, groups, multiplier):
    """A 3x3 convolution of a 2x2 input padded by 10**6 with a stride that leaves a 3x3 output: the
    depthwise path (groups == C_in, one channel included) computes it like PyTorch, without
    building the 29 TiB padded input."""
    x = RNG.standard_normal((2, channels, 2, 2))
    w = RNG.standard_normal((channels * multiplier, 1, 3, 3))
    b = RNG.standard_normal(channels * multiplier)
    y, cache = nc.conv2d_forward(x, w, b, stride=STRIDE, padding=BIG, groups=groups)
    assert cache['depthwise'] and y.shape == (2, channels * multiplier, 3, 3)
    expected = direct_conv(x, w, STRIDE, BIG) + b[:, None, None]
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)
    assert np.count_nonzero(y - b[:, None, None]) > 0          # the centre output reads x
    nc.gradcheck(lambda x, w, b: nc.conv2d_forward(x, w, b, stride=STRIDE, padding=BIG, groups=groups),
                 nc.conv2d_backward, (x, w, b), mode='full')


def test_depthwise_huge_padding_matches_torch():
    torch = pytest.importorskip('torch')
    x, w = RNG.standard_normal((1, 1, 2, 2)), RNG.standard_normal((1, 1, 3, 3))
    y, _ = nc.depthwise_conv2d_forward(x, w, stride=STRIDE, padding=BIG)
    expected = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), stride=STRIDE, padding=BIG)
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-13, atol=1e-13)


def test_depthwise_cache_keeps_no_padded_copy():
    x, w = RNG.standard_normal((2, 3, 6, 6)), RNG.standard_normal((3, 1, 3, 3))
    _, cache = nc.depthwise_conv2d_forward(x, w, padding=50)
    arrays = [v for v in cache.values() if isinstance(v, np.ndarray)]
    assert max(a.nbytes for a in arrays) <= x.nbytes and any(a is x for a in arrays)


def peak_bytes(run):
    """Peak of the memory NumPy allocates while ``run()`` runs (tracemalloc)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize('ring', [True, False])
def test_deform_conv2d_reads_a_broadcast_input_without_copying_it(monkeypatch, ring):
    """A broadcast input (32 MiB seen, 8 bytes stored) is read where it is: the peak stays far below
    the input's size (a padded copy would take more than the whole input). With ringed planes the
    kernel holds one plane per thread (one thread here); planes read in place need nothing."""
    x = np.broadcast_to(RNG.standard_normal((1, 1, 1, 1)), (1, 16, 512, 512))
    w, stride = RNG.standard_normal((2, 16, 3, 3)), 64
    ho = (512 + 2 - 3) // stride + 1
    offset = RNG.uniform(-3, 3, (1, 18, ho, ho))
    if not ring:
        monkeypatch.setattr(deformable, 'RING_PLANE_BYTES', 0)

    def run():
        return nc.deform_conv2d_forward(x, offset, w, stride=stride, padding=1)
    run()                                                  # compiles the kernels for this layout
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        peak = peak_bytes(run)
    finally:
        numba.set_num_threads(threads)
    assert peak < x.size * x.itemsize / (8 if ring else 64)
    y, cache = run()
    expected, _ = nc.deform_conv2d_forward(np.ascontiguousarray(x), offset, w, stride=stride, padding=1)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    assert cache['x'] is x


@pytest.mark.parametrize('mask', [False, True])
def test_deform_conv2d_large_planes_read_in_place_match_ringed_copies(monkeypatch, mask):
    """Planes larger than RING_PLANE_BYTES are read in place (a test per corner): the same results
    as the ringed copies, forward and backward, offsets crossing every border."""
    x = RNG.standard_normal((2, 4, 5, 6))
    w = RNG.standard_normal((6, 2, 3, 3))
    offset = RNG.uniform(-4, 4, (2, 2 * 2 * 9, 5, 6))
    m = RNG.uniform(0, 1, (2, 2 * 9, 5, 6)) if mask else None
    dy = RNG.standard_normal((2, 6, 5, 6))

    def run():
        y, cache = nc.deform_conv2d_forward(x, offset, w, padding=1, mask=m)
        return (y,) + nc.deform_conv2d_backward(dy, cache)
    ringed = run()
    monkeypatch.setattr(deformable, 'RING_PLANE_BYTES', 0)
    in_place = run()
    for a, b in zip(ringed, in_place):
        if a is not None:
            np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-13)


# -- refusing what no machine holds ---------------------------------------------------------------
def test_require_memory_message(monkeypatch):
    monkeypatch.setattr(memory, 'machine_memory', lambda: 2 ** 30)
    assert memory.require_memory((1024, 1024), np.float64, 'x') == 8 * 2 ** 20
    with pytest.raises(ValueError) as error:
        memory.require_memory((100_001, 100_001), np.float64, 'padding=50000 with x of shape (1, 1, 1, 1)')
    message = str(error.value)
    assert f"{100_001 ** 2 * 8} bytes" in message and '74.5 GiB' in message
    assert '1.0 GiB of memory' in message and 'padding=50000 with x of shape (1, 1, 1, 1)' in message


def test_machine_memory_is_positive_and_at_most_physical():
    assert 0 < memory.machine_memory()


def test_an_output_larger_than_any_machine_is_refused_before_allocating():
    """A 10**7 x 10**7 float64 map (800 TB) is refused with the bytes, the memory and the cause."""
    x, w = np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1))
    with pytest.raises(ValueError, match=r'the output of shape \(1, 1, 10000001, 10000001\).*'
                                         r'800000160000008 bytes.*padding=5000000'):
        nc.conv2d_forward(x, w, padding=5_000_000)


SMALL_MACHINE = 2 ** 20     # 1 MiB: every output below is refused, every input is tiny


def refusals():
    """``(name, call)``: ops whose output (or per-sample kernels) the small machine cannot hold."""
    r = RNG.standard_normal
    x1 = r((1, 1, 2, 2))
    return [
        ('conv2d im2col', lambda: nc.conv2d_forward(r((1, 2, 2, 2)), r((3, 2, 3, 3)), padding=200)),
        ('conv2d depthwise path', lambda: nc.conv2d_forward(x1, r((1, 1, 3, 3)), padding=200)),
        ('depthwise_conv2d', lambda: nc.depthwise_conv2d_forward(x1, r((1, 1, 3, 3)), padding=200)),
        ('separable_conv2d', lambda: nc.separable_conv2d_forward(x1, r((1, 1, 3, 3)), r((1, 1, 1, 1)),
                                                                 padding=200)),
        ('octave_conv2d', lambda: nc.octave_conv2d_forward(r((1, 1, 4, 4)), None, r((1, 1, 3, 3)), None,
                                                           None, None, padding=200)),
        ('aggregated_conv2d', lambda: nc.aggregated_conv2d_forward(x1, r((1, 2)), r((2, 1, 1, 3, 3)),
                                                                   padding=200)),
        ('deform_conv2d', lambda: nc.deform_conv2d_forward(x1, r((1, 18, 400, 400)), r((1, 1, 3, 3)),
                                                           padding=200)),
        ('dcnv3', lambda: nc.dcnv3_forward(r((1, 2, 2, 4)), r((1, 400, 400, 36)), r((1, 400, 400, 18)),
                                           3, 1, 200, 1, 2, 2)),
        ('dcnv4', lambda: nc.dcnv4_forward(r((1, 2, 2, 4)), r((1, 400, 400, 56)), 3, 1, 200, 1, 2, 2)),
        ('linear', lambda: nc.linear_forward(r((400, 1)), r((400, 1)))),
    ]


@pytest.mark.parametrize('name, call', refusals(), ids=[name for name, _ in refusals()])
def test_every_op_refuses_an_output_the_machine_cannot_hold(monkeypatch, name, call):
    monkeypatch.setattr(memory, 'machine_memory', lambda: SMALL_MACHINE)
    with pytest.raises(ValueError, match=r'needs .* bytes\), more than the 1.0 MiB of memory this '
                                         r'machine has; caused by .*'):
        call()


def test_per_sample_kernels_are_refused_before_allocating(monkeypatch):
    """The per-sample kernels of the dynamic family take N times the kernel bank."""
    monkeypatch.setattr(memory, 'machine_memory', lambda: SMALL_MACHINE)
    x = np.zeros((2000, 1, 1, 1))
    with pytest.raises(ValueError, match='the per-sample kernels of shape'):
        nc.aggregated_conv2d_forward(x, np.ones((2000, 1)), np.ones((1, 8, 1, 3, 3)), padding=1)


# -- the column budget setter ------------------------------------------------------------------------
@pytest.mark.parametrize('value, error', [(1.5, TypeError), (2.0, TypeError), ('1024', TypeError),
                                          (True, TypeError), (None, TypeError), (np.float64(8), TypeError),
                                          (0, ValueError), (-1, ValueError)])
def test_set_column_budget_takes_positive_ints_only(set_budget, value, error):
    before = nc.column_budget()
    with pytest.raises(error, match='nbytes must be a positive'):
        set_budget(value)
    assert nc.column_budget() == before


def test_set_column_budget_returns_the_previous_value(set_budget):
    before = nc.column_budget()
    assert set_budget(np.int64(4096)) == before and nc.column_budget() == 4096


def test_im2col_and_col2im_refuse_before_allocating(monkeypatch):
    monkeypatch.setattr(memory, 'machine_memory', lambda: SMALL_MACHINE)
    with pytest.raises(ValueError, match=r'the columns of shape \(1, 1, 3, 3, 402, 402\).*padding=201'):
        nc.im2col(np.ones((1, 1, 2, 2)), 3, padding=201)
    with pytest.raises(ValueError, match=r'the output of shape \(1, 1, 1000, 1000\).*in_hw=\(1000, 1000\)'):
        nc.col2im(np.ones((1, 1, 1, 1, 1000, 1000)), (1000, 1000))


def test_keep_freed_memory_leaves_glibc_as_the_environment_configures_it(monkeypatch):
    import platform
    from numpyconv import memory
    on_glibc = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'
    if 'MALLOC_MMAP_THRESHOLD_' not in os.environ and 'MALLOC_TRIM_THRESHOLD_' not in os.environ:
        assert memory.KEEPS_FREED_MEMORY == on_glibc          # applied at import
        assert memory.keep_freed_memory() == on_glibc         # and again: the same settings
    for variable in ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_'):
        with monkeypatch.context() as patch:
            patch.setenv(variable, '131072')
            assert memory.keep_freed_memory() is False


def test_large_arrays_are_reused_without_page_faults_after_the_first_pass():
    import platform
    import resource
    from numpyconv import memory
    if not memory.KEEPS_FREED_MEMORY or platform.system() != 'Linux':
        pytest.skip('glibc with numpyconv allocator settings only')

    def one_pass():
        a = np.ones(64 * 2 ** 20 // 8)                 # 64 MiB, above glibc's default mmap limit
        b = a * 2
        return float(b[-1])
    one_pass()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    one_pass()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 64 * 2 ** 20 // 4096 // 4          # far fewer than one per page of the arrays


def test_release_freed_memory_returns_kept_memory_to_the_system():
    import platform
    from numpyconv import memory
    if not (platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'):
        assert memory.release_freed_memory() is False
        return

    def resident_mb():
        with open('/proc/self/status') as status:
            return next(int(line.split()[1]) for line in status if line.startswith('VmRSS')) / 1024
    a = np.ones(256 * 2 ** 20 // 8)                     # 256 MiB from the heap, then freed
    del a
    held = resident_mb()
    memory.release_freed_memory()
    assert resident_mb() < held - 128
