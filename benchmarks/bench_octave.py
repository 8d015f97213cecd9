"""Octave convolution speed: forward and forward+backward against plain conv2d and PyTorch.

Shape (default): N=8, 128 -> 128 channels, 28x28, 3x3, padding 1, alpha_in = alpha_out = 0.5, i.e. a
64-channel 28x28 high part and a 64-channel 14x14 low part. Compared with numpyconv's plain
``conv2d`` of the full shape (128 -> 128 on 28x28) and, when torch is installed, with the
re-creation of the official d-li14 ``OctaveConv`` in tests/test_octave.py and ``F.conv2d``, run with
NumPy's BLAS thread count. Times are the best of ``--repeat`` runs after one warm-up, the runs of all
implementations interleaved so that they see the same machine load.

    python benchmarks/bench_octave.py [--dtype float32|float64] [--repeat 5] [--batch 8]

(from the repository root with numpyconv installed, or with PYTHONPATH=.)
"""
import numpy as np
from _official import load_test_module

from numpyconv import OctaveConv2d
from numpyconv.bench import (arg_parser, compare_with_conv, layer_pair, torch_module_pair,
                             torch_state_dict)


def torch_octave(torch, layer, x, dtype):
    """The re-creation of d-li14 ``OctaveConv`` in tests/test_octave.py, with ``layer``'s weights."""
    official_class = load_test_module('test_octave').official_octave_class(torch)
    official = official_class(128, 128, 3, 0.5, 0.5, padding=1).to(getattr(torch, dtype))
    official.load_state_dict(torch_state_dict(torch, layer))
    return torch_module_pair(torch, official, x)


def main(argv=None):
    args = arg_parser(__doc__, batch=8).parse_args(argv)
    dtype, n, channels, size = np.dtype(args.dtype), args.batch, 128, 28
    rng = np.random.default_rng(0)
    layer = OctaveConv2d(channels, channels, 3, 0.5, 0.5, padding=1, dtype=dtype, rng=0)
    x = (rng.standard_normal((n, 64, size, size)).astype(dtype),
         rng.standard_normal((n, 64, size // 2, size // 2)).astype(dtype))
    x_full = rng.standard_normal((n, channels, size, size)).astype(dtype)
    compare_with_conv(
        ('numpyconv OctaveConv2d', layer.macs(x_full.shape)[0], layer_pair(layer, x)),
        ('torch OctaveConv (official re-creation)', lambda torch: torch_octave(torch, layer, x, args.dtype)),
        x_full, args.repeat, 'alpha 0.5/0.5', digits=2, gflops=True)


if __name__ == '__main__':
    main()
