"""``numpyconv bench``: conv2d speed against this machine's GEMM peak and, if installed, PyTorch.

Timing rules: best of ``repeat`` runs after one warm-up; ours and PyTorch's runs interleaved
(ours, torch, ours, torch, ...) so that both see the same machine state; PyTorch is given the
thread count NumPy's BLAS uses (``threadpoolctl`` when present, else the CPU count).
Throughput is ``2 * multiply_adds / seconds``; the GEMM peak is that of one large ``np.matmul``.
"""
import os
import time

import numpy as np

from .conv import conv2d_backward, conv2d_forward

# (N, C_in, C_out, H, W, k): the three 3x3 stages of a ResNet at batch 8
RESNET_LAYERS = [(8, 64, 64, 56, 56, 3), (8, 128, 128, 28, 28, 3), (8, 256, 256, 14, 14, 3)]


def blas_threads():
    try:
        from threadpoolctl import threadpool_info
        counts = [i['num_threads'] for i in threadpool_info() if i.get('user_api') == 'blas']
        if counts:
            return max(counts)
    except ImportError:
        pass
    return os.cpu_count() or 1


def best_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def gemm_peak(dtype, size=2048, repeat=5):
    """FLOP/s of one ``size x size`` matrix product (the machine's own GEMM throughput)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    return 2 * size ** 3 / best_time(lambda: a @ b, repeat)


def _torch_conv(torch, x, w):
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)

    def forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tw, padding=1)

    def forward_backward():
        tx.grad = tw.grad = None
        y = torch.nn.functional.conv2d(tx, tw, padding=1)
        y.backward(torch.ones_like(y))
    return forward, forward_backward


def _our_conv(x, w):
    def forward():
        conv2d_forward(x, w, padding=1)

    def forward_backward():
        y, cache = conv2d_forward(x, w, padding=1)
        conv2d_backward(np.ones_like(y), cache)
    return forward, forward_backward


def conv_table(dtype, repeat=5, quick=False, torch=None):
    """Rows ``dict(layer, dtype, fwd_ms, fwdbwd_ms, gemm_fraction, torch_fwd_ms, torch_fwdbwd_ms)``."""
    rng = np.random.default_rng(0)
    peak = gemm_peak(dtype)
    rows = []
    for n, c_in, c_out, h, w, k in RESNET_LAYERS:
        n = 2 if quick else n
        x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
        wt = rng.standard_normal((c_out, c_in, k, k)).astype(dtype)
        flops = 2 * n * c_out * h * w * c_in * k * k
        ours = _our_conv(x, wt)
        theirs = _torch_conv(torch, x, wt) if torch is not None else (None, None)
        row = dict(layer=f"N={n} {c_in}->{c_out} {h}x{w} {k}x{k}", dtype=np.dtype(dtype).name)
        for label, ours_fn, theirs_fn in (('fwd', ours[0], theirs[0]), ('fwdbwd', ours[1], theirs[1])):
            ours_t, theirs_t = [], []
            for _ in range(repeat):                       # interleaved
                ours_t.append(best_time(ours_fn, 1))
                if theirs_fn is not None:
                    theirs_t.append(best_time(theirs_fn, 1))
            row[f'{label}_ms'] = 1e3 * min(ours_t)
            row[f'torch_{label}_ms'] = 1e3 * min(theirs_t) if theirs_t else None
        row['gemm_fraction'] = flops / (row['fwd_ms'] / 1e3) / peak
        rows.append(row)
    return rows, peak


def format_rows(rows):
    head = ('| layer | dtype | fwd ms | fwd % of GEMM peak | fwd+bwd ms | torch fwd ms | torch fwd+bwd ms '
            '| fwd+bwd ratio (ours/torch) |\n|---|---|---|---|---|---|---|---|\n')
    lines = []
    for r in rows:
        t_f, t_fb = r['torch_fwd_ms'], r['torch_fwdbwd_ms']
        ratio = f"{r['fwdbwd_ms'] / t_fb:.2f}" if t_fb else 'n/a'
        lines.append(f"| {r['layer']} | {r['dtype']} | {r['fwd_ms']:.1f} | {100 * r['gemm_fraction']:.0f}% | "
                     f"{r['fwdbwd_ms']:.1f} | {t_f and f'{t_f:.1f}' or 'n/a'} | "
                     f"{t_fb and f'{t_fb:.1f}' or 'n/a'} | {ratio} |")
    return head + '\n'.join(lines)


def main(args):
    try:
        import torch
        torch.set_num_threads(blas_threads())
    except ImportError:
        torch = None
    dtypes = ['float32', 'float64'] if args.dtype == 'both' else [args.dtype]
    print(f"threads: {blas_threads()}; PyTorch: {torch.__version__ if torch else 'not installed'}")
    rows = []
    for dtype in dtypes:
        table, peak = conv_table(np.dtype(dtype), args.repeat, args.quick, torch)
        print(f"{dtype} GEMM peak (2048^3 matmul): {peak / 1e9:.1f} GFLOP/s")
        rows += table
    print(format_rows(rows))
    return 0
