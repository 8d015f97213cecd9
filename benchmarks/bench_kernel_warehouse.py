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
import numpy as np
from _official import load_test_module

from numpyconv.bench import (arg_parser, compare_with_conv, layer_pair, torch_module_pair,
                             torch_state_dict)
from numpyconv.kernel_warehouse import WarehouseManager

CHANNELS, SIZE, TEMPERATURE = 128, 28, 0.3


def torch_kw(torch, manager, layer, x, dtype):
    """The re-creation of the official ``Warehouse_Manager``/``KWConv2d`` in
    tests/test_kernel_warehouse.py, with the weights of ``manager`` and ``layer``."""
    official = load_test_module('test_kernel_warehouse').torch_kernel_warehouse(torch)()
    t_layer = official.reserve(CHANNELS, CHANNELS, 3, padding=1, bias=False)
    official.store()
    official.allocate([t_layer])
    official.to(getattr(torch, dtype))
    t_layer.to(getattr(torch, dtype)).train()
    official.load_state_dict(torch_state_dict(torch, manager))
    t_layer.load_state_dict(torch_state_dict(torch, layer))
    t_layer.attention.temp_value = TEMPERATURE
    return torch_module_pair(torch, t_layer, x, others=(official,))


def main(argv=None):
    args = arg_parser(__doc__, batch=8).parse_args(argv)
    dtype, n = np.dtype(args.dtype), args.batch
    rng = np.random.default_rng(0)
    manager = WarehouseManager(dtype=dtype, rng=0)
    layer = manager.reserve(CHANNELS, CHANNELS, 3, padding=1, bias=False)
    manager.store()
    manager.allocate([layer])
    layer.update_temperature(TEMPERATURE)
    x = rng.standard_normal((n, CHANNELS, SIZE, SIZE)).astype(dtype)
    cells = manager.params['weights.0'].shape[0]
    compare_with_conv(
        (f'numpyconv KWConv2d (M = {cells} cells)', layer.macs(x.shape)[0], layer_pair(layer, x)),
        ('torch KWConv2d (official re-creation)',
         lambda torch: torch_kw(torch, manager, layer, x, args.dtype)),
        x, args.repeat, f'one warehouse, train mode, temperature {TEMPERATURE}', baseline=1)


if __name__ == '__main__':
    main()
