"""KernelWarehouse speed: forward and forward+backward against plain conv2d of the same shape and PyTorch.

Shape (default): N=8, 128 -> 128 channels, 28x28, 3x3, padding 1, one KWConv2d in its own warehouse
(``cell_num_ratio`` 1: M = 9 cells of 128x128x1x1), train mode (the attention BatchNorm uses batch
statistics), temperature 0.3 (the blend with ``temp_bias`` is active). Forward+backward includes the
warehouse gradient. Compared with numpyconv's plain ``conv2d`` (no bias) of the same shape (target:
KW forward+backward <= 1.5x of it) and, when torch is installed, with the re-creation of the official
OSVAI/KernelWarehouse ``Warehouse_Manager``/``KWConv2d`` kept in tests/test_kernel_warehouse.py and
``F.conv2d``, run with NumPy's BLAS thread count. Engines are timed in interleaved rounds after one
warm-up; the best round is reported.

    python benchmarks/bench_kernel_warehouse.py [--dtype float32|float64] [--repeat 5] [--batch 8]
"""
import argparse
import importlib.util
from pathlib import Path

import numpy as np

from bench_odconv import interleaved_best, ours
from numpyconv.bench import _our_conv, _torch_conv, blas_threads
from numpyconv.conv import Conv2d
from numpyconv.kernel_warehouse import WarehouseManager

CHANNELS, SIZE, TEMPERATURE = 128, 28, 0.3


def torch_manager_class(torch):
    """The torch re-creation of the official ``Warehouse_Manager`` kept in the tests."""
    path = Path(__file__).resolve().parents[1] / 'tests' / 'test_kernel_warehouse.py'
    spec = importlib.util.spec_from_file_location('_test_kernel_warehouse', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.torch_kernel_warehouse(torch)


def torch_kw(torch, manager, layer, x, dtype):
    official = torch_manager_class(torch)()
    t_layer = official.reserve(CHANNELS, CHANNELS, 3, padding=1, bias=False)
    official.store()
    official.allocate([t_layer])
    official.to(getattr(torch, dtype))
    t_layer.to(getattr(torch, dtype)).train()
    official.load_state_dict({k: torch.tensor(v) for k, v in manager.state_dict().items()})
    t_layer.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    t_layer.attention.temp_value = TEMPERATURE
    t_x = torch.tensor(x, requires_grad=True)

    def forward():
        with torch.no_grad():
            t_layer(t_x)

    def forward_backward():
        official.zero_grad()
        t_layer.zero_grad()
        t_x.grad = None
        t_layer(t_x).sum().backward()
    return forward, forward_backward


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dtype', choices=['float32', 'float64'], default='float32')
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--batch', type=int, default=8)
    args = parser.parse_args(argv)
    dtype, n = np.dtype(args.dtype), args.batch
    rng = np.random.default_rng(0)
    manager = WarehouseManager(dtype=dtype, rng=0)
    layer = manager.reserve(CHANNELS, CHANNELS, 3, padding=1, bias=False)
    manager.store()
    manager.allocate([layer])
    layer.update_temperature(TEMPERATURE)
    x = rng.standard_normal((n, CHANNELS, SIZE, SIZE)).astype(dtype)
    dy = np.ones_like(layer(x))
    plain = Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False, dtype=dtype, rng=0)
    kw_macs, plain_macs = layer.macs(x.shape)[0], plain.macs(x.shape)[0]

    rows = [(f'numpyconv KWConv2d (M = {manager.params["weights.0"].shape[0]} cells)', kw_macs,
             ours(layer, x, dy)),
            ('numpyconv conv2d (same shape)', plain_macs, _our_conv(x, plain.params['weight']))]
    threads = blas_threads()
    try:
        import torch
        torch.set_num_threads(threads)
        rows += [('torch KWConv2d (official re-creation)', kw_macs,
                  torch_kw(torch, manager, layer, x, args.dtype)),
                 ('torch F.conv2d (same shape)', plain_macs, _torch_conv(torch, x, plain.params['weight']))]
    except ImportError:
        torch = None

    forward_times = interleaved_best([fns[0] for _, _, fns in rows], args.repeat)
    full_times = interleaved_best([fns[1] for _, _, fns in rows], args.repeat)
    print(f"N={n}, {CHANNELS}->{CHANNELS} channels, {SIZE}x{SIZE}, 3x3, one warehouse, train mode, "
          f"temperature {TEMPERATURE}, {args.dtype}, {threads} thread(s), best of {args.repeat} "
          f"interleaved rounds\n")
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
