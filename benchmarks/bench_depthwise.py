"""Benchmark: numpyconv depthwise convolution (Numba loops) vs PyTorch ``F.conv2d(groups=C)`` (CPU).

Default rows: 3x3 depthwise layers of MobileNetV2 at batch 1, float32, padding 1, no bias:
``(C, size, stride)`` = (96, 112, 2), (144, 56, 1), (144, 56, 2), (576, 14, 1), (960, 7, 1).
Forward and forward+backward (``dx`` and ``dweight`` from an all-ones output gradient), best of
``--repeat`` runs after a warm-up, engines interleaved; every engine gets the same thread count.

    python benchmarks/bench_depthwise.py [--batch 1] [--threads 1] [--repeat 20] [--dtype float64]
"""
import numpy as np

from numpyconv.bench import (arg_parser, import_torch, markdown_table, op_pair, set_threads, time_rows,
                             torch_pair, torch_tensors)
from numpyconv.conv import depthwise_conv2d_backward, depthwise_conv2d_forward

LAYERS = ((96, 112, 2), (144, 56, 1), (144, 56, 2), (576, 14, 1), (960, 7, 1))


def rows_for(layer, args, torch, rng):
    """The timed rows of one layer: numpyconv, and torch when installed."""
    channels, size, stride = layer
    x = rng.standard_normal((args.batch, channels, size, size)).astype(args.dtype)
    w = rng.standard_normal((channels, 1, 3, 3)).astype(args.dtype)
    name = f"C={channels}, {size}x{size}, stride {stride}"
    macs = args.batch * channels * 9 * (-(-size // stride)) ** 2
    rows = [(f"numpyconv {name}", macs,
             op_pair(depthwise_conv2d_forward, depthwise_conv2d_backward, (x, w), stride=stride, padding=1))]
    if torch is not None:
        conv = torch.nn.functional.conv2d
        rows.append((f"torch {name}", macs, torch_pair(
            torch, lambda tx, tw: conv(tx, tw, stride=stride, padding=1, groups=channels),
            torch_tensors(torch, x, w))))
    return rows


def main(argv=None):
    parser = arg_parser(__doc__.splitlines()[0], batch=1, threads=True)
    parser.set_defaults(repeat=20)
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    torch = import_torch(threads)
    rng = np.random.default_rng(0)
    rows = [row for layer in LAYERS for row in rows_for(layer, args, torch, rng)]
    print(f"batch {args.batch}, 3x3 depthwise, {args.dtype}, {threads} threads\n")
    print(markdown_table(time_rows(rows, args.repeat), label='layer', digits=3))


if __name__ == '__main__':
    main()
