"""``numpyconv bench`` (conv2d speed against this machine's GEMM peak and, if installed, PyTorch) and
the timing pieces shared by the scripts in ``benchmarks/``.

Timing rules: every implementation is timed by closures ``(forward, forward_backward)``; after one
warm-up run of each, rounds run every closure once, in turn (ours, torch, ours, torch, ...), so that
all see the same machine state, and the best round of each is reported (``interleaved_best``).
PyTorch, Numba and BLAS are given the same thread count (NumPy's BLAS count by default).
Throughput is ``2 * multiply_adds / seconds``; the GEMM peak is that of one large ``np.matmul``.
"""
import argparse
import importlib
import math
import os
import time

import numpy as np

from ._parallel import wait_policy_as_given
from .conv import Conv2d, conv2d_backward, conv2d_forward, conv_geometry
from .winograd import winograd_mode, winograd_pays

# (N, C_in, C_out, H, W, k): the three 3x3 stages of a ResNet at batch 8
RESNET_LAYERS = [(8, 64, 64, 56, 56, 3), (8, 128, 128, 28, 28, 3), (8, 256, 256, 14, 14, 3)]


def blas_threads():
    """The thread count of NumPy's BLAS (``threadpoolctl`` when present, else the CPU count)."""
    try:
        from threadpoolctl import threadpool_info
        counts = [i['num_threads'] for i in threadpool_info() if i.get('user_api') == 'blas']
        if counts:
            return max(counts)
    except ImportError:
        pass
    return os.cpu_count() or 1


def set_threads(threads=None):
    """Limit BLAS (through ``threadpoolctl``, when present) and Numba to ``threads``; return the count.

    ``threads=None`` keeps the BLAS count. Numba gets at most ``NUMBA_NUM_THREADS``. Set Numba's
    threading layer, if wanted, before calling this (Numba starts its threads here).
    """
    import numba
    threads = threads or blas_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    except ImportError:
        pass
    return threads


def import_torch(threads):
    """``torch`` with ``threads`` intra-op threads, or ``None`` when it is not installed."""
    try:
        with wait_policy_as_given():               # PyTorch's OpenMP threads keep their default
            torch = importlib.import_module('torch')   # optional: numpyconv never depends on it
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def best_time(fn, repeat):
    """Best time (s) of ``repeat`` runs of ``fn`` after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


SETTLE_S = 0.2   # pause between engines: OpenBLAS / OpenMP worker threads spin-wait after a call


def interleaved_best(functions, repeat, burst=3):
    """Best time (s) of each function over ``repeat`` rounds that run every function in turn.

    In each round a function runs ``burst`` times back to back, after a ``SETTLE_S`` pause: the
    worker threads one library leaves spinning after its last call (OpenBLAS, OpenMP) would
    otherwise steal the cores from the next engine and make both look slower than they are.
    Every function runs once first, untimed (warm-up: Numba compilation, allocator).
    """
    for fn in functions:
        fn()
    best = [math.inf] * len(functions)
    for _ in range(repeat):
        for k, fn in enumerate(functions):
            time.sleep(SETTLE_S)
            for _ in range(burst):
                start = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - start)
    return best


def time_rows(rows, repeat):
    """Rows ``(name, macs, (forward, forward_backward))`` -> ``(name, macs, forward_s, forward_backward_s)``.

    ``rows`` may also be a dict ``{name: (forward, forward_backward)}`` (MACs ``None``). All forwards
    are timed in interleaved rounds, then all forward+backward closures.
    """
    if isinstance(rows, dict):
        rows = [(name, None, pair) for name, pair in rows.items()]
    forward_s = interleaved_best([pair[0] for _, _, pair in rows], repeat)
    both_s = interleaved_best([pair[1] for _, _, pair in rows], repeat)
    return [(name, macs, f, fb) for (name, macs, _), f, fb in zip(rows, forward_s, both_s)]


def gemm_peak(dtype, size=2048, repeat=5):
    """FLOP/s of one ``size x size`` matrix product (the machine's own GEMM throughput)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    return 2 * size ** 3 / best_time(lambda: a @ b, repeat)


def op_pair(forward, backward, inputs, dout=None, **options):
    """``(forward, forward_backward)`` closures of a functional pair of numpyconv ops.

    ``forward(*inputs, **options) -> (y, cache)``; ``backward(dout, cache)``, with ``dout`` all ones
    (like ``y``, made on every call) when not given.
    """
    def run_forward():
        return forward(*inputs, **options)

    def forward_backward():
        y, cache = run_forward()
        backward(np.ones_like(y) if dout is None else dout, cache)
    return run_forward, forward_backward


def layer_pair(layer, x, dy=None):
    """``(forward, forward_backward)`` closures of a numpyconv layer: ``layer(x)``; then
    ``zero_grad`` (as PyTorch's runs clear theirs), ``layer(x)`` and ``layer.backward(dy)``.

    ``dy=None``: ones like the output (a tuple of them for a tuple output), from one forward run now.
    """
    if dy is None:
        y = layer(x)
        dy = tuple(np.ones_like(o) for o in y) if isinstance(y, tuple) else np.ones_like(y)

    def forward():
        return layer(x)

    def forward_backward():
        layer.zero_grad()
        layer(x)
        layer.backward(dy)
    return forward, forward_backward


def conv_pair(x, w, winograd='auto'):
    """Closures of numpyconv ``conv2d`` with padding 1 (no bias), run under ``winograd_mode(winograd)``."""
    def under_mode(fn):
        def run():
            with winograd_mode(winograd):
                return fn()
        return run
    return tuple(under_mode(fn) for fn in op_pair(conv2d_forward, conv2d_backward, (x, w), padding=1))


def conv_path(x, w, winograd='auto'):
    """Which path conv2d takes for :func:`conv_pair`'s operands: ``'Winograd'`` or ``'im2col'``."""
    geo = conv_geometry(x.shape[2:], w.shape[2:], 1, 1, 1)
    with winograd_mode(winograd):
        return 'Winograd' if winograd_pays(x, w, 1, geo) else 'im2col'


def torch_tensors(torch, *arrays):
    """Leaf tensors (``requires_grad``) of NumPy arrays; ``None`` stays ``None``."""
    return tuple(None if a is None else torch.tensor(a, requires_grad=True) for a in arrays)


def torch_pair(torch, fn, tensors, params=()):
    """``(forward, forward_backward)`` closures of ``fn(*tensors)`` in PyTorch.

    The forward runs under ``no_grad``; the forward+backward clears the gradients of ``tensors`` and
    ``params`` and back-propagates ones from the output (every output when ``fn`` returns a tuple).
    """
    leaves = [t for t in list(tensors) + list(params) if t is not None]

    def forward():
        with torch.no_grad():
            fn(*tensors)

    def forward_backward():
        for t in leaves:
            t.grad = None
        y = fn(*tensors)
        outputs = y if isinstance(y, tuple) else (y,)
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
    return forward, forward_backward


def torch_module_pair(torch, module, x, others=()):
    """Closures of a ``torch.nn.Module`` on the NumPy input ``x`` (an array or a tuple of arrays).

    Gradients of the input, of ``module``'s parameters and of those of the modules ``others`` (shared
    parameters the module does not register, e.g. a KernelWarehouse manager) are cleared each run.
    """
    inputs = torch_tensors(torch, *(x if isinstance(x, tuple) else (x,)))
    params = [p for m in (module,) + tuple(others) for p in m.parameters()]
    return torch_pair(torch, lambda *t: module(t if isinstance(x, tuple) else t[0]), inputs, params)


def torch_conv_pair(torch, x, w):
    """Closures of PyTorch ``F.conv2d`` with padding 1 (no bias)."""
    return torch_pair(torch, lambda tx, tw: torch.nn.functional.conv2d(tx, tw, padding=1),
                      torch_tensors(torch, x, w))


def torch_state_dict(torch, layer):
    """A numpyconv layer's ``state_dict`` as PyTorch tensors (same keys)."""
    return {k: torch.tensor(v) for k, v in layer.state_dict().items()}


def speedups(numerator, denominator):
    """``'forward 1.23x, forward+backward 4.56x'``: the ratios of two ``(forward_s, forward_backward_s)``."""
    return (f"forward {numerator[0] / denominator[0]:.2f}x, "
            f"forward+backward {numerator[1] / denominator[1]:.2f}x")


def markdown_table(rows, baseline=None, *, label='implementation', digits=1, gflops=False):
    """A Markdown table of timed rows ``(name, macs, forward_s, forward_backward_s)``.

    Columns: ``label``; ``MACs (M)`` when some row has a count (``macs`` may be ``None``); forward and
    forward+backward times in ms with ``digits`` decimals; ``forward GFLOP/s`` (``2 * macs / forward_s``)
    when ``gflops``; with ``baseline`` (a row index), the forward+backward time as a multiple of that
    row's, headed by the baseline row's name without a trailing ``(...)``.
    """
    with_macs = any(macs is not None for _, macs, _, _ in rows)
    head = [label] + (['MACs (M)'] if with_macs else []) + ['forward (ms)', 'forward+backward (ms)']
    head += ['forward GFLOP/s'] if gflops else []
    if baseline is not None:
        head.append(f"fwd+bwd vs {rows[baseline][0].split(' (')[0]}")
    lines = ['| ' + ' | '.join(head) + ' |', '|---' + '|---:' * (len(head) - 1) + '|']
    for name, macs, f, fb in rows:
        cells = [name] + ([f'{macs / 1e6:.1f}'] if with_macs else [])
        cells += [f'{1e3 * f:.{digits}f}', f'{1e3 * fb:.{digits}f}']
        cells += [f'{2 * macs / f / 1e9:.1f}'] if gflops else []
        if baseline is not None:
            cells.append(f'{fb / rows[baseline][3]:.2f}x')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def arg_parser(description, batch, threads=False):
    """The options every benchmark script has: ``--batch`` (default ``batch``), ``--dtype``
    (float32/float64), ``--repeat`` (timed rounds) and, with ``threads``, ``--threads``."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=batch)
    parser.add_argument('--dtype', choices=['float32', 'float64'], default='float32')
    parser.add_argument('--repeat', type=int, default=5)
    if threads:
        parser.add_argument('--threads', type=int, default=None, help='default: the BLAS thread count')
    return parser


def compare_with_conv(ours, official, x, repeat, detail, **table_options):
    """Time a numpyconv layer against conv2d of the same shape and, when torch is installed, against
    a torch re-creation and ``F.conv2d``; print a heading line, a blank line and the table.

    ``ours``: the layer's row ``(name, macs, closures)``; ``official``: ``(name, make)`` for the torch
    re-creation, ``make(torch)`` returning its closures (its MACs are ours); ``x``: the conv2d input,
    C -> C channels, 3x3, padding 1, no bias, the weight of ``Conv2d(..., rng=0)``; ``detail``: the
    layer's settings for the heading. Rows: ours, numpyconv conv2d, torch re-creation, torch
    ``F.conv2d`` (``baseline=1`` is our conv2d); torch gets the BLAS thread count.
    ``table_options`` go to ``markdown_table``.
    """
    threads = blas_threads()
    torch = import_torch(threads)
    n, channels, h, w = x.shape
    plain = Conv2d(channels, channels, 3, padding=1, bias=False, dtype=x.dtype, rng=0)
    weight, macs = plain.params['weight'], plain.macs(x.shape)[0]
    rows = [ours, ('numpyconv conv2d (same shape)', macs, conv_pair(x, weight))]
    if torch is not None:
        rows += [(official[0], ours[1], official[1](torch)),
                 ('torch F.conv2d (same shape)', macs, torch_conv_pair(torch, x, weight))]
    print(f"N={n}, {channels}->{channels} channels, {h}x{w}, 3x3, {detail}, {x.dtype.name}, "
          f"{threads} thread(s), best of {repeat} interleaved rounds\n")
    print(markdown_table(time_rows(rows, repeat), **table_options))
    if torch is None:
        print('\n(torch not installed: no PyTorch comparison)')


def conv_table(dtype, repeat=5, quick=False, torch=None):
    """Rows ``dict(layer, dtype, path, fwd_ms, fwdbwd_ms, gemm_fraction, torch_fwd_ms, torch_fwdbwd_ms)``.

    A layer conv2d computes by Winograd gets a second row timed on the im2col path (``'never'``).
    ``gemm_fraction`` counts the direct convolution's multiply-adds, so on the Winograd path, which
    does 4/9 of them, it is an effective figure and may pass 100%.

    The rounds of :func:`interleaved_best` run every layer and engine in turn, so each layer's best
    is drawn from the whole run: a stretch of time when the machine is slower (other tenants of a
    shared host) then costs all layers alike instead of spoiling one.
    """
    rng = np.random.default_rng(0)
    peak = gemm_peak(dtype)
    rows, engines = [], []
    for n, c_in, c_out, h, w, k in RESNET_LAYERS:
        n = 2 if quick else n
        x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
        wt = rng.standard_normal((c_out, c_in, k, k)).astype(dtype)
        winograd = conv_path(x, wt) == 'Winograd'
        for mode in ('auto', 'never') if winograd else ('auto',):
            path = conv_path(x, wt, mode) + (' (forced)' if mode == 'never' else '')
            rows.append(dict(layer=f"N={n} {c_in}->{c_out} {h}x{w} {k}x{k}", dtype=np.dtype(dtype).name,
                             path=path, flops=2 * n * c_out * h * w * c_in * k * k))
            engines.append([conv_pair(x, wt, mode)]
                           + ([torch_conv_pair(torch, x, wt)] if torch is not None else []))
    per_layer = len(engines[0])                                           # ours [, torch]
    for label, step in (('fwd', 0), ('fwdbwd', 1)):
        times = interleaved_best([pair[step] for pairs in engines for pair in pairs], repeat)
        for i, row in enumerate(rows):
            row[f'{label}_ms'] = 1e3 * times[i * per_layer]
            row[f'torch_{label}_ms'] = 1e3 * times[i * per_layer + 1] if torch is not None else None
    for row in rows:
        row['gemm_fraction'] = row.pop('flops') / (row['fwd_ms'] / 1e3) / peak
    return rows, peak


def format_rows(rows):
    head = ('| layer | dtype | path | fwd ms | fwd % of GEMM peak | fwd+bwd ms | torch fwd ms '
            '| torch fwd+bwd ms | fwd+bwd ratio (ours/torch) |\n|---|---|---|---|---|---|---|---|---|\n')
    lines = []
    for r in rows:
        t_f, t_fb = r['torch_fwd_ms'], r['torch_fwdbwd_ms']
        ratio = f"{r['fwdbwd_ms'] / t_fb:.2f}" if t_fb else 'n/a'
        fraction = f"{100 * r['gemm_fraction']:.0f}%"                  # effective (in brackets) on Winograd
        fraction = f"({fraction})" if r['path'] == 'Winograd' else fraction
        lines.append(f"| {r['layer']} | {r['dtype']} | {r['path']} | {r['fwd_ms']:.1f} | {fraction} | "
                     f"{r['fwdbwd_ms']:.1f} | {t_f and f'{t_f:.1f}' or 'n/a'} | "
                     f"{t_fb and f'{t_fb:.1f}' or 'n/a'} | {ratio} |")
    return head + '\n'.join(lines)


def main(args):
    torch = import_torch(blas_threads())
    dtypes = ['float32', 'float64'] if args.dtype == 'both' else [args.dtype]
    print(f"threads: {blas_threads()}; PyTorch: {torch.__version__ if torch else 'not installed'}")
    rows = []
    for dtype in dtypes:
        table, peak = conv_table(np.dtype(dtype), args.repeat, args.quick, torch)
        print(f"{dtype} GEMM peak (2048^3 matmul): {peak / 1e9:.1f} GFLOP/s")
        rows += table
    print(format_rows(rows))
    return 0
