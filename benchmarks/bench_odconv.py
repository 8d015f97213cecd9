"""ODConv speed: forward and forward+backward against plain conv2d of the same shape and PyTorch.

Shape (default): N=8, 128 -> 128 channels, 28x28, 3x3, padding 1, kernel_num 4, train mode (the
attention BatchNorm uses batch statistics), temperature 30. Compared with numpyconv's plain
``conv2d`` (no bias) of the same shape (target: ODConv forward+backward <= 1.5x of it) and, when
torch is installed, with the re-creation of the official OSVAI/ODConv ``ODConv2d`` kept in
tests/test_odconv.py and ``F.conv2d``, run with NumPy's BLAS thread count. Engines are timed in
interleaved rounds (ours, torch, ours, ...) after one warm-up; the best round is reported.

    python benchmarks/bench_odconv.py [--dtype float32|float64] [--repeat 5] [--batch 8]
"""
import numpy as np
from _official import load_test_module

from numpyconv.bench import (arg_parser, compare_with_conv, layer_pair, torch_module_pair,
                             torch_state_dict)
from numpyconv.odconv import ODConv2d

CHANNELS, SIZE, KERNEL_NUM, TEMPERATURE = 128, 28, 4, 30.0


def torch_odconv(torch, layer, x, dtype):
    """The re-creation of OSVAI/ODConv ``ODConv2d`` in tests/test_odconv.py, with ``layer``'s weights."""
    official_class = load_test_module('test_odconv').official_odconv_class(torch)
    official = official_class(CHANNELS, CHANNELS, 3, padding=1, kernel_num=KERNEL_NUM)
    official = official.to(getattr(torch, dtype)).train()
    official.load_state_dict(torch_state_dict(torch, layer))
    official.attention.temperature = TEMPERATURE
    return torch_module_pair(torch, official, x)


def main(argv=None):
    args = arg_parser(__doc__, batch=8).parse_args(argv)
    dtype, n = np.dtype(args.dtype), args.batch
    rng = np.random.default_rng(0)
    layer = ODConv2d(CHANNELS, CHANNELS, 3, padding=1, kernel_num=KERNEL_NUM, dtype=dtype, rng=0)
    layer.update_temperature(TEMPERATURE)
    x = rng.standard_normal((n, CHANNELS, SIZE, SIZE)).astype(dtype)
    compare_with_conv(
        ('numpyconv ODConv2d (kernel_num 4)', layer.macs(x.shape)[0], layer_pair(layer, x)),
        ('torch ODConv2d (official re-creation)', lambda torch: torch_odconv(torch, layer, x, args.dtype)),
        x, args.repeat, f'kernel_num {KERNEL_NUM}, train mode', baseline=1)


if __name__ == '__main__':
    main()
