"""Benchmark: numpyconv ``involution`` (Numba, no unfold) vs the unfold-based PyTorch formulation (CPU).

Default: N=8, 64 channels, 56x56, K=7, stride 1, float32 (G = 4 groups of 16 channels, as RedNet).
Rows: the op alone (``involution_forward`` / ``_backward`` against ``nn.Unfold`` -> view -> multiply ->
sum, the official ``involution_naive.py`` formula) and the whole ``Involution2d`` layer in train mode
(against the same kernel generation written with ``torch.nn.functional`` on the same weights).
Every engine gets the same thread count (Numba, BLAS, torch). Best of ``--repeat`` runs after a
warm-up, engines interleaved. Peak memory of our forward+backward is measured with ``tracemalloc``
(NumPy reports its buffers to it) and compared with the size of the unfolded tensor
``(N, C*K*K, Ho*Wo)`` that the PyTorch formulation materialises (its product with the kernel is a
second tensor of that size).

    python benchmarks/bench_involution.py [--batch 8] [--channels 64] [--size 56] [--kernel 7]
"""
import tracemalloc

import numpy as np

from numpyconv.bench import (arg_parser, import_torch, layer_pair, markdown_table, op_pair, set_threads,
                             speedups, time_rows, torch_pair, torch_state_dict, torch_tensors)
from numpyconv.involution import Involution2d, involution_backward, involution_forward


def torch_involution(torch, x, kernel, k, stride, groups):
    """The official unfold formula: unfold, view per group, multiply by the kernel, sum the points."""
    n, c, h, w = x.shape[0], x.shape[1], kernel.shape[2], kernel.shape[3]
    patches = torch.nn.functional.unfold(x, k, 1, (k - 1) // 2, stride)      # (N, C*K*K, Ho*Wo)
    patches = patches.view(n, groups, c // groups, k * k, h, w)
    return (kernel.view(n, groups, 1, k * k, h, w) * patches).sum(dim=3).view(n, c, h, w)


def torch_op(torch, x, kernel, args, groups):
    return torch_pair(torch, lambda tx, tk: torch_involution(torch, tx, tk, args.kernel, args.stride, groups),
                      torch_tensors(torch, x, kernel))


def torch_layer(torch, layer, x, args):
    """Kernel generation (avgpool, conv1 -> BN (train) -> ReLU -> conv2) + unfold, same weights as ours."""
    fn = torch.nn.functional
    state = torch_state_dict(torch, layer)
    params = [state[k].requires_grad_() for k in layer.params]

    def run(tx):
        z = tx if args.stride == 1 else fn.avg_pool2d(tx, args.stride, args.stride)
        z = fn.conv2d(z, state['conv1.conv.weight'])
        z = fn.relu(fn.batch_norm(z, state['conv1.bn.running_mean'], state['conv1.bn.running_var'],
                                  state['conv1.bn.weight'], state['conv1.bn.bias'], training=True))
        kernel = fn.conv2d(z, state['conv2.conv.weight'], state['conv2.conv.bias'])
        return torch_involution(torch, tx, kernel, args.kernel, args.stride, layer.groups)

    return torch_pair(torch, run, torch_tensors(torch, x), params)


def peak_bytes(fn):
    """Peak of the NumPy allocations made while ``fn`` runs (inputs already allocated are not counted)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def parse(argv):
    parser = arg_parser(__doc__.splitlines()[0], batch=8, threads=True)
    parser.add_argument('--channels', type=int, default=64)
    parser.add_argument('--size', type=int, default=56)
    parser.add_argument('--kernel', type=int, default=7)
    parser.add_argument('--stride', type=int, default=1)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    threads = set_threads(args.threads)
    rng = np.random.default_rng(0)
    dtype = np.dtype(args.dtype)
    layer = Involution2d(args.channels, args.kernel, args.stride, dtype=dtype, rng=0)
    x = rng.standard_normal((args.batch, args.channels, args.size, args.size)).astype(dtype)
    out_hw = (-(-args.size // args.stride),) * 2
    kernel = rng.standard_normal((args.batch, layer.groups * args.kernel ** 2) + out_hw).astype(dtype)
    engines = {'numpyconv involution op': op_pair(involution_forward, involution_backward,
                                                  (x, kernel, args.kernel, args.stride)),
               'numpyconv Involution2d (train)': layer_pair(layer, x)}
    torch = import_torch(threads)
    if torch is not None:
        engines['torch unfold op'] = torch_op(torch, x, kernel, args, layer.groups)
        engines['torch unfold Involution2d (train)'] = torch_layer(torch, layer, x, args)
    timed = time_rows(engines, args.repeat)
    times = {name: (f, fb) for name, _, f, fb in timed}
    unfolded = args.batch * args.channels * args.kernel ** 2 * out_hw[0] * out_hw[1] * dtype.itemsize
    print(f"N={args.batch}, C={args.channels}, {args.size}x{args.size}, K={args.kernel}, "
          f"stride {args.stride}, G={layer.groups}, {args.dtype}, {threads} threads\n")
    print(markdown_table(timed, label='engine'))
    print()
    for ours, theirs in (('numpyconv involution op', 'torch unfold op'),
                         ('numpyconv Involution2d (train)', 'torch unfold Involution2d (train)')):
        if theirs in times:
            print(f"speed-up {ours} vs {theirs}: {speedups(times[theirs], times[ours])}")
    mib = 2.0 ** 20
    print(f"\nunfolded tensor (N, C*K*K, Ho*Wo): {unfolded / mib:.1f} MiB")
    for name in ('numpyconv involution op', 'numpyconv Involution2d (train)'):
        print(f"peak NumPy memory of {name} forward+backward (tracemalloc): "
              f"{peak_bytes(engines[name][1]) / mib:.1f} MiB")


if __name__ == '__main__':
    main()
