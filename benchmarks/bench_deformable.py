"""Benchmark: numpyconv ``deform_conv2d`` vs ``torchvision.ops.deform_conv2d`` (CPU) and our ``conv2d``.

Forward and forward+backward of one deformable convolution (default N=4, 64->64 channels, 32x32,
3x3, padding 1, offsets ``randn``, DCNv2 mask in (0, 1)), in float32. Every engine gets the same
thread count (Numba, BLAS, torch). Best of ``--repeat`` runs after a warm-up, engines interleaved.
Prints a Markdown table; the ratios are against torchvision (speed-up) and against our conv2d of the
same shape (slow-down).

    python benchmarks/bench_deformable.py [--batch 4] [--channels 64] [--size 32] [--repeat 5]
"""
import numba
import numpy as np

from numpyconv.bench import (arg_parser, conv_pair, import_torch, markdown_table, op_pair, set_threads,
                             speedups, time_rows, torch_pair, torch_tensors)
from numpyconv.deformable import deform_conv2d_backward, deform_conv2d_forward


def operands(args, rng):
    n, c, s, k = args.batch, args.channels, args.size, 3
    dtype = np.dtype(args.dtype)
    x = rng.standard_normal((n, c, s, s)).astype(dtype)
    weight = (rng.standard_normal((c, c, k, k)) / (3 * np.sqrt(c))).astype(dtype)
    offset = rng.standard_normal((n, 2 * k * k, s, s)).astype(dtype)
    mask = rng.uniform(0, 1, (n, k * k, s, s)).astype(dtype) if args.mask else None
    return x, offset, weight, mask


def torchvision_deform(torch, deform_conv2d, x, offset, weight, mask):
    return torch_pair(torch, lambda tx, to, tw, tm: deform_conv2d(tx, to, tw, padding=1, mask=tm),
                      torch_tensors(torch, x, offset, weight, mask))


def main(argv=None):
    parser = arg_parser(__doc__.splitlines()[0], batch=4, threads=True)
    parser.add_argument('--channels', type=int, default=64)
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--no-mask', dest='mask', action='store_false', help='DCNv1 (no mask)')
    parser.add_argument('--threading-layer', choices=['default', 'workqueue', 'omp', 'tbb'],
                        default='default', help="Numba's threading layer (chosen before its first use)")
    args = parser.parse_args(argv)
    if args.threading_layer != 'default':
        numba.config.THREADING_LAYER = args.threading_layer
    threads = set_threads(args.threads)
    x, offset, weight, mask = operands(args, np.random.default_rng(0))
    engines = {'numpyconv deform_conv2d': op_pair(deform_conv2d_forward, deform_conv2d_backward,
                                                  (x, offset, weight), padding=1, mask=mask),
               'numpyconv conv2d (same shape)': conv_pair(x, weight)}
    try:
        from torchvision.ops import deform_conv2d
        engines['torchvision deform_conv2d (CPU)'] = torchvision_deform(import_torch(threads), deform_conv2d,
                                                                        x, offset, weight, mask)
    except ImportError:
        pass
    timed = time_rows(engines, args.repeat)
    times = {name: (f, fb) for name, _, f, fb in timed}
    ours = times['numpyconv deform_conv2d']
    conv = times['numpyconv conv2d (same shape)']
    tv = times.get('torchvision deform_conv2d (CPU)')
    print(f"N={args.batch}, {args.channels}->{args.channels}, {args.size}x{args.size}, 3x3, pad 1, "
          f"{args.dtype}, {'DCNv2 (mask)' if args.mask else 'DCNv1'}, {threads} threads, "
          f"Numba threading layer {numba.threading_layer()}\n")
    print(markdown_table(timed, label='engine', digits=2))
    print()
    if tv is not None:
        print(f"speed-up vs torchvision: {speedups(tv, ours)}")
    print(f"time vs our conv2d: {speedups(ours, conv)}")


if __name__ == '__main__':
    main()
