"""ODConv speed: forward and forward+backward against plain conv2d of the same shape and PyTorch.

Shape (default): N=8, 128 -> 128 channels, 28x28, 3x3, padding 1, kernel_num 4, train mode (the
attention BatchNorm uses batch statistics), temperature 30. Compared with numpyconv's plain
``conv2d`` (no bias) of the same shape (target: ODConv forward+backward <= 1.5x of it) and, when
torch is installed, with the re-creation of the official OSVAI/ODConv ``ODConv2d`` kept in
tests/test_odconv.py and ``F.conv2d``, run with NumPy's BLAS thread count. Engines are timed in
interleaved rounds (ours, torch, ours, ...) after one warm-up; the best round is reported.

    python benchmarks/bench_odconv.py [--dtype float32|float64] [--repeat 5] [--batch 8]
"""
import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

from numpyconv.bench import _our_conv, _torch_conv, blas_threads
from numpyconv.conv import Conv2d
from numpyconv.odconv import ODConv2d

CHANNELS, SIZE, KERNEL_NUM, TEMPERATURE = 128, 28, 4, 30.0


def ours(layer, x, dy):
    def forward():
        layer(x)

    def forward_backward():
        layer(x)
        layer.backward(dy)
    return forward, forward_backward


def official_odconv_class(torch):
    """The torch re-creation of OSVAI/ODConv ``ODConv2d`` kept in tests/test_odconv.py."""
    path = Path(__file__).resolve().parents[1] / 'tests' / 'test_odconv.py'
    spec = importlib.util.spec_from_file_location('_test_odconv', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.official_odconv_class(torch)


def torch_odconv(torch, layer, x, dtype):
    official = official_odconv_class(torch)(CHANNELS, CHANNELS, 3, padding=1, kernel_num=KERNEL_NUM)
    official = official.to(getattr(torch, dtype)).train()
    official.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    official.attention.temperature = TEMPERATURE
    t_x = torch.tensor(x, requires_grad=True)

    def forward():
        with torch.no_grad():
            official(t_x)

    def forward_backward():
        official.zero_grad()
        t_x.grad = None
        official(t_x).sum().backward()
    return forward, forward_backward


def interleaved_best(functions, repeat):
    """Best time of each function over ``repeat`` rounds that run every function once, in turn."""
    for fn in functions:
        fn()                                                  # warm-up
    times = [[] for _ in functions]
    for _ in range(repeat):
        for fn, ts in zip(functions, times):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [min(ts) for ts in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dtype', choices=['float32', 'float64'], default='float32')
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--batch', type=int, default=8)
    args = parser.parse_args(argv)
    dtype, n = np.dtype(args.dtype), args.batch
    rng = np.random.default_rng(0)
    layer = ODConv2d(CHANNELS, CHANNELS, 3, padding=1, kernel_num=KERNEL_NUM, dtype=dtype, rng=0)
    layer.update_temperature(TEMPERATURE)
    x = rng.standard_normal((n, CHANNELS, SIZE, SIZE)).astype(dtype)
    dy = np.ones_like(layer(x))
    plain = Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False, dtype=dtype, rng=0)
    od_macs, plain_macs = layer.macs(x.shape)[0], plain.macs(x.shape)[0]

    rows = [('numpyconv ODConv2d (kernel_num 4)', od_macs, ours(layer, x, dy)),
            ('numpyconv conv2d (same shape)', plain_macs, _our_conv(x, plain.params['weight']))]
    threads = blas_threads()
    try:
        import torch
        torch.set_num_threads(threads)
        rows += [('torch ODConv2d (official re-creation)', od_macs,
                  torch_odconv(torch, layer, x, args.dtype)),
                 ('torch F.conv2d (same shape)', plain_macs, _torch_conv(torch, x, plain.params['weight']))]
    except ImportError:
        torch = None

    forward_times = interleaved_best([fns[0] for _, _, fns in rows], args.repeat)
    full_times = interleaved_best([fns[1] for _, _, fns in rows], args.repeat)
    print(f"N={n}, {CHANNELS}->{CHANNELS} channels, {SIZE}x{SIZE}, 3x3, kernel_num {KERNEL_NUM}, train "
          f"mode, {args.dtype}, {threads} thread(s), best of {args.repeat} interleaved rounds\n")
    print('| implementation | MACs (M) | forward (ms) | forward+backward (ms) '
          '| fwd+bwd vs numpyconv conv2d |')
    print('|---|---:|---:|---:|---:|')
    for (name, macs, _), t_f, t_fb in zip(rows, forward_times, full_times):
        print(f'| {name} | {macs / 1e6:.1f} | {t_f * 1e3:.1f} | {t_fb * 1e3:.1f} '
              f'| {t_fb / full_times[1]:.2f}x |')
    if torch is None:
        print('\n(torch not installed: no PyTorch comparison)')


if __name__ == '__main__':
    main()
