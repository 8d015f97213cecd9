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
import argparse
import importlib.util
import math
import time
from pathlib import Path

import numpy as np

from numpyconv import OctaveConv2d
# the plain-conv2d runners of ``numpyconv bench`` (padding 1), ours and torch's
from numpyconv.bench import _our_conv, _torch_conv, blas_threads
from numpyconv.conv import Conv2d


def ours(layer, x, y_grads):
    def forward():
        layer(x)

    def forward_backward():
        layer(x)
        layer.backward(y_grads)
    return forward, forward_backward


def interleaved_best(fns, repeat):
    """Best time of each function over ``repeat`` rounds; each round runs every function once."""
    for fn in fns:
        fn()
    best = [math.inf] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def official_octave_class(torch):
    """The torch re-creation of d-li14 ``OctaveConv`` kept in tests/test_octave.py."""
    path = Path(__file__).resolve().parents[1] / 'tests' / 'test_octave.py'
    spec = importlib.util.spec_from_file_location('_test_octave', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.official_octave_class(torch)


def torch_octave(torch, layer, x, dtype):
    official = official_octave_class(torch)(128, 128, 3, 0.5, 0.5, padding=1).to(getattr(torch, dtype))
    official.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    t_x = tuple(torch.tensor(a, requires_grad=True) for a in x)

    def forward():
        with torch.no_grad():
            official(t_x)

    def forward_backward():
        official.zero_grad()
        y_h, y_l = official(t_x)
        (y_h.sum() + y_l.sum()).backward()
    return forward, forward_backward


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dtype', choices=['float32', 'float64'], default='float32')
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--batch', type=int, default=8)
    args = parser.parse_args(argv)
    dtype, n, channels, size = np.dtype(args.dtype), args.batch, 128, 28
    rng = np.random.default_rng(0)
    layer = OctaveConv2d(channels, channels, 3, 0.5, 0.5, padding=1, dtype=dtype, rng=0)
    x = (rng.standard_normal((n, 64, size, size)).astype(dtype),
         rng.standard_normal((n, 64, size // 2, size // 2)).astype(dtype))
    y_grads = tuple(np.ones_like(y) for y in layer(x))
    plain = Conv2d(channels, channels, 3, padding=1, bias=False, dtype=dtype, rng=0)
    w = plain.params['weight']
    x_full = rng.standard_normal((n, channels, size, size)).astype(dtype)
    octave_macs = layer.macs((n, channels, size, size))[0]
    plain_macs = plain.macs(x_full.shape)[0]

    rows = [('numpyconv OctaveConv2d', octave_macs, ours(layer, x, y_grads)),
            ('numpyconv conv2d (same shape)', plain_macs, _our_conv(x_full, w))]
    threads = blas_threads()
    try:
        import torch
        torch.set_num_threads(threads)
        rows += [('torch OctaveConv (official re-creation)', octave_macs,
                  torch_octave(torch, layer, x, args.dtype)),
                 ('torch F.conv2d (same shape)', plain_macs, _torch_conv(torch, x_full, w))]
    except ImportError:
        torch = None

    print(f"N={n}, {channels}->{channels} channels, {size}x{size}, 3x3, alpha 0.5/0.5, {args.dtype}, "
          f"{threads} thread(s), best of {args.repeat}\n")
    print('| implementation | MACs (M) | forward (ms) | forward+backward (ms) | forward GFLOP/s |')
    print('|---|---:|---:|---:|---:|')
    forward_times = interleaved_best([fns[0] for _, _, fns in rows], args.repeat)
    both_times = interleaved_best([fns[1] for _, _, fns in rows], args.repeat)
    for (name, macs, _), t_f, t_fb in zip(rows, forward_times, both_times):
        print(f'| {name} | {macs / 1e6:.1f} | {t_f * 1e3:.2f} | {t_fb * 1e3:.2f} '
              f'| {2 * macs / t_f / 1e9:.1f} |')
    if torch is None:
        print('\n(torch not installed: no PyTorch comparison)')


if __name__ == '__main__':
    main()
