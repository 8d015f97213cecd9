"""Benchmark: numpyconv ``deform_conv2d`` vs ``torchvision.ops.deform_conv2d`` (CPU) and our ``conv2d``.

Forward and forward+backward of one deformable convolution (default N=4, 64->64 channels, 32x32,
3x3, padding 1, offsets ``randn``, DCNv2 mask in (0, 1)), in float32. Every engine gets the same
thread count (Numba, BLAS, torch). Best of ``--repeat`` runs after a warm-up, engines interleaved.
Prints a Markdown table; the ratios are against torchvision (speed-up) and against our conv2d of the
same shape (slow-down).

    python benchmarks/bench_deformable.py [--batch 4] [--channels 64] [--size 32] [--repeat 5]
"""
import argparse

import numba
import numpy as np

from numpyconv.bench import best_time, blas_threads
from numpyconv.conv import conv2d_backward, conv2d_forward
from numpyconv.deformable import deform_conv2d_backward, deform_conv2d_forward


def operands(args, rng):
    n, c, s, k = args.batch, args.channels, args.size, 3
    dtype = np.dtype(args.dtype)
    x = rng.standard_normal((n, c, s, s)).astype(dtype)
    weight = (rng.standard_normal((c, c, k, k)) / (3 * np.sqrt(c))).astype(dtype)
    offset = rng.standard_normal((n, 2 * k * k, s, s)).astype(dtype)
    mask = rng.uniform(0, 1, (n, k * k, s, s)).astype(dtype) if args.mask else None
    return x, offset, weight, mask


def ours_deform(x, offset, weight, mask):
    def forward():
        return deform_conv2d_forward(x, offset, weight, padding=1, mask=mask)

    def forward_backward():
        y, cache = forward()
        deform_conv2d_backward(np.ones_like(y), cache)
    return forward, forward_backward


def ours_conv(x, weight):
    def forward():
        return conv2d_forward(x, weight, padding=1)

    def forward_backward():
        y, cache = forward()
        conv2d_backward(np.ones_like(y), cache)
    return forward, forward_backward


def torchvision_deform(torch, deform_conv2d, x, offset, weight, mask):
    tx, to, tw = (torch.tensor(a, requires_grad=True) for a in (x, offset, weight))
    tm = None if mask is None else torch.tensor(mask, requires_grad=True)

    def forward():
        with torch.no_grad():
            deform_conv2d(tx, to, tw, padding=1, mask=tm)

    def forward_backward():
        for t in (tx, to, tw, tm):
            if t is not None:
                t.grad = None
        y = deform_conv2d(tx, to, tw, padding=1, mask=tm)
        y.backward(torch.ones_like(y))
    return forward, forward_backward


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--channels', type=int, default=64)
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--dtype', choices=['float32', 'float64'], default='float32')
    parser.add_argument('--no-mask', dest='mask', action='store_false', help='DCNv1 (no mask)')
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None, help='default: the BLAS thread count')
    parser.add_argument('--threading-layer', choices=['default', 'workqueue', 'omp', 'tbb'],
                        default='default', help="Numba's threading layer (chosen before its first use)")
    args = parser.parse_args(argv)
    if args.threading_layer != 'default':
        numba.config.THREADING_LAYER = args.threading_layer
    threads = args.threads or blas_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    except ImportError:
        pass
    x, offset, weight, mask = operands(args, np.random.default_rng(0))
    engines = {'numpyconv deform_conv2d': ours_deform(x, offset, weight, mask),
               'numpyconv conv2d (same shape)': ours_conv(x, weight)}
    try:
        import torch
        from torchvision.ops import deform_conv2d
        torch.set_num_threads(threads)
        engines['torchvision deform_conv2d (CPU)'] = torchvision_deform(torch, deform_conv2d, x, offset,
                                                                        weight, mask)
    except ImportError:
        pass
    times = {name: [None, None] for name in engines}
    for _ in range(args.repeat):          # interleave engines so all see the same machine state
        for name, fns in engines.items():
            for k, fn in enumerate(fns):
                t = best_time(fn, 1)
                times[name][k] = t if times[name][k] is None else min(times[name][k], t)
    ours = times['numpyconv deform_conv2d']
    conv = times['numpyconv conv2d (same shape)']
    tv = times.get('torchvision deform_conv2d (CPU)')
    print(f"N={args.batch}, {args.channels}->{args.channels}, {args.size}x{args.size}, 3x3, pad 1, "
          f"{args.dtype}, {'DCNv2 (mask)' if args.mask else 'DCNv1'}, {threads} threads, "
          f"Numba threading layer {numba.threading_layer()}\n")
    print("| engine | forward (ms) | forward+backward (ms) |")
    print("|---|---:|---:|")
    for name, (f, fb) in times.items():
        print(f"| {name} | {1e3 * f:.2f} | {1e3 * fb:.2f} |")
    print()
    if tv is not None:
        print(f"speed-up vs torchvision: forward {tv[0] / ours[0]:.2f}x, "
              f"forward+backward {tv[1] / ours[1]:.2f}x")
    print(f"time vs our conv2d: forward {ours[0] / conv[0]:.2f}x, forward+backward {ours[1] / conv[1]:.2f}x")


if __name__ == '__main__':
    main()
