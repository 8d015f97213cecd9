"""Where conv2d's Winograd F(2x2, 3x3) path pays: both paths of conv2d timed on one shape per row.

For each ResNet-like shape (3x3, padding 1, no bias) the im2col path (``winograd_mode('never')``) and
the Winograd path (``'always'``) are timed forward and forward+backward, interleaved, best of
``--repeat`` rounds. ``MIN_CHANNELS`` in numpyconv/winograd.py (the rule ``C_in*C_out >=
MIN_CHANNELS * (C_in + C_out)``, i.e. from 192 -> 192 channels) comes from this table.

    python benchmarks/bench_winograd.py [--dtype float32|float64] [--repeat 5] [--batch 8]

(from the repository root with numpyconv installed, or with PYTHONPATH=.)
"""
import numpy as np

from numpyconv.bench import arg_parser, blas_threads, conv_pair, markdown_table, time_rows

# (C, H): channels (C -> C) and spatial size
SHAPES = [(64, 56), (96, 28), (128, 28), (160, 14), (192, 14), (256, 14), (512, 7)]


def main(argv=None):
    args = arg_parser(__doc__, batch=8).parse_args(argv)
    rng, dtype, n = np.random.default_rng(0), np.dtype(args.dtype), args.batch
    print(f"N={n}, 3x3, padding 1, {dtype.name}, {blas_threads()} thread(s), best of {args.repeat} "
          f"interleaved rounds; the last column is the fwd+bwd time over the im2col path's\n")
    for channels, size in SHAPES:
        x = rng.standard_normal((n, channels, size, size)).astype(dtype)
        w = rng.standard_normal((channels, channels, 3, 3)).astype(dtype)
        macs = n * channels * channels * 9 * size * size
        rows = [(f'{channels}->{channels} {size}x{size} {path}', macs, conv_pair(x, w, mode))
                for path, mode in (('im2col', 'never'), ('Winograd', 'always'))]
        print(markdown_table(time_rows(rows, args.repeat), baseline=0, label='shape, path', gflops=True))
        print()


if __name__ == '__main__':
    main()
