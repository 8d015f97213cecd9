"""Benchmark: numpyconv DY-CNN and CondConv vs plain ``conv2d`` of the same shape (and PyTorch).

Forward and forward+backward (every gradient: input, kernels, biases, attention/routing) of
``dynamic_conv2d`` and ``condconv2d`` (default N=8, 128->128 channels, 28x28, 3x3, padding 1, K=4
kernels / experts, float32) beside numpyconv ``conv2d`` with one static kernel. When PyTorch is
installed, the same three computations in PyTorch (the "batch as groups" formulation of the unofficial
kaijieshi7 ``Dynamic_conv2d`` and d-li14 ``CondConv2d``) run with the same thread count. Best of
``--repeat`` runs after a warm-up, engines interleaved. Prints a Markdown table.

    python benchmarks/bench_dynamic.py [--batch 8] [--channels 128] [--size 28] [--kernels 4] [--repeat 5]
"""
import numpy as np

from numpyconv.bench import (arg_parser, import_torch, markdown_table, op_pair, set_threads, time_rows,
                             torch_pair, torch_tensors)
from numpyconv.condconv import condconv2d_backward, condconv2d_forward
from numpyconv.conv import conv2d_backward, conv2d_forward
from numpyconv.dynamic import dynamic_conv2d_backward, dynamic_conv2d_forward

TEMPERATURE = 34.0


def operands(args, rng):
    """Arrays of the three ops: the input, K kernels and biases, DY-CNN attention, CondConv routing."""
    n, c, s, k, kernels = args.batch, args.channels, args.size, 3, args.kernels
    hidden = int(c * 0.25) + 1

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(args.dtype)
    return dict(x=normal(n, c, s, s), weight=normal(kernels, c, c, k, k, scale=1 / (3 * np.sqrt(c))),
                bias=normal(kernels, c), fc1=normal(hidden, c, 1, 1), fc2=normal(kernels, hidden, 1, 1),
                fc2_bias=normal(kernels), route_weight=normal(kernels, c), route_bias=normal(kernels))


def ours(a):
    return {
        'numpyconv conv2d (static kernel)': op_pair(
            conv2d_forward, conv2d_backward, (a['x'], a['weight'][0], a['bias'][0]), padding=1),
        'numpyconv dynamic_conv2d': op_pair(
            dynamic_conv2d_forward, dynamic_conv2d_backward,
            (a['x'], a['weight'], a['bias'], a['fc1'], a['fc2'], a['fc2_bias'], TEMPERATURE), padding=1),
        'numpyconv condconv2d': op_pair(
            condconv2d_forward, condconv2d_backward,
            (a['x'], a['weight'], a['bias'], a['route_weight'], a['route_bias']), padding=1),
    }


def _torch_mixture_conv(torch, x, attention, weight, bias):
    """Per-sample kernels ``attention @ weight`` as one grouped conv (the official formulation)."""
    n, c, h, w = x.shape
    kernels = (attention @ weight.flatten(1)).reshape(n * weight.shape[1], *weight.shape[2:])
    y = torch.nn.functional.conv2d(x.reshape(1, n * c, h, w), kernels, (attention @ bias).flatten(),
                                   padding=1, groups=n)
    return y.reshape(n, weight.shape[1], *y.shape[2:])


def pytorch(torch, a):
    t = dict(zip(a, torch_tensors(torch, *a.values())))
    F = torch.nn.functional

    def dynamic(x):
        hidden = F.relu(F.conv2d(F.adaptive_avg_pool2d(x, 1), t['fc1']))
        logits = F.conv2d(hidden, t['fc2'], t['fc2_bias']).flatten(1)
        return _torch_mixture_conv(torch, x, F.softmax(logits / TEMPERATURE, dim=1), t['weight'], t['bias'])

    def condconv(x):
        routing = torch.sigmoid(F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), t['route_weight'],
                                         t['route_bias']))
        return _torch_mixture_conv(torch, x, routing, t['weight'], t['bias'])

    def timed(fn):
        return torch_pair(torch, fn, (t['x'],), t.values())

    return {'PyTorch conv2d (static kernel)': timed(lambda x: F.conv2d(x, t['weight'][0], t['bias'][0],
                                                                       padding=1)),
            'PyTorch Dynamic_conv2d (re-created)': timed(dynamic),
            'PyTorch CondConv2d + routing (re-created)': timed(condconv)}


def main(argv=None):
    parser = arg_parser(__doc__.splitlines()[0], batch=8, threads=True)
    parser.add_argument('--channels', type=int, default=128)
    parser.add_argument('--size', type=int, default=28)
    parser.add_argument('--kernels', type=int, default=4, help='K (DY-CNN) = number of experts (CondConv)')
    parser.add_argument('--no-torch', dest='torch', action='store_false')
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    a = operands(args, np.random.default_rng(0))
    engines = ours(a)
    torch = import_torch(threads) if args.torch else None
    if torch is not None:
        engines.update(pytorch(torch, a))
    timed = time_rows(engines, args.repeat)
    print(f"N={args.batch}, {args.channels}->{args.channels}, {args.size}x{args.size}, 3x3, pad 1, "
          f"K={args.kernels}, {args.dtype}, {threads} threads\n")
    print(markdown_table(timed, baseline=0, label='engine', digits=2))


if __name__ == '__main__':
    main()
