"""Benchmark: numpyconv multi-scale deformable attention vs Deformable-DETR's ms_deform_attn_core_pytorch.

The official op is CUDA only; on a CPU the module can only run its pure-PyTorch path
``ms_deform_attn_core_pytorch`` (``grid_sample`` per level), re-created in tests/test_msdeformattn.py.
Shapes of Deformable DETR (d_model 256: 8 heads of 32 channels, 4 levels of a 512x512 image at strides
8, 16, 32, 64, i.e. 64x64, 32x32, 16x16, 8x8, 4 points): the encoder (every pixel a query,
Lq = 5440) and a decoder (300 queries), batch ``--batch`` (2). Locations as a Deformable DETR layer
at initialisation draws them: reference points at the pixel centres (encoder) or uniform (decoder),
plus the official ring of initial offsets and N(0, 1) pixels of noise on each level; attention the
softmax over L*P of N(0, 1) logits. Times: forward and forward+backward (gradients of value,
locations and attention weights; dout all ones), best of ``--repeat`` interleaved rounds, same thread
count for Numba and torch. ``--memory``: each engine runs one forward+backward in a fresh process;
reported is the growth of its peak resident memory over what the inputs already take (and, for
numpyconv, the peak of NumPy's allocations by ``tracemalloc``). ``--cpu-time``: one thread, timed by
the process's CPU time instead of the wall clock (little affected by other processes sharing the
cores). Prints Markdown tables.

    python benchmarks/bench_msdeformattn.py [--batch 2] [--repeat 5] [--threads 2] [--memory] [--cpu-time]
"""
import argparse
import ctypes
import gc
import json
import os
import re
import math
import subprocess
import sys
import time
import tracemalloc

import numba
import numpy as np

from numpyconv import ms_deform_attn_backward, ms_deform_attn_forward
from numpyconv.bench import (arg_parser, blas_threads, import_torch, load_test_module, op_pair,
                             time_rows, torch_pair, torch_tensors)
from numpyconv.msdeformattn import initial_offsets

SHAPES = np.array([[64, 64], [32, 32], [16, 16], [8, 8]])       # 512x512 at strides 8, 16, 32, 64
HEADS, CHANNELS, POINTS = 8, 32, 4
CASES = {'encoder': None, 'decoder': 300}                         # Lq: every pixel, or 300 queries
ENGINES = ('numpyconv', 'ms_deform_attn_core_pytorch')


def starts_of(shapes):
    sizes = shapes.prod(axis=1)
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def operands(case, n, dtype, seed=0, queries=None):
    """``(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)``; only
    the first ``queries`` queries if given."""
    rng = np.random.default_rng(seed)
    s, levels = int(SHAPES.prod(axis=1).sum()), len(SHAPES)
    if CASES[case] is None:                                       # pixel centres of every level
        centres = [np.stack(np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h), -1)
                   for h, w in SHAPES]
        ref = np.broadcast_to(np.concatenate([c.reshape(-1, 2) for c in centres]), (n, s, 2))
    else:
        ref = rng.uniform(0.0, 1.0, (n, CASES[case], 2))
    ref = ref[:, :queries]
    lq = ref.shape[1]
    offsets = initial_offsets(HEADS, levels, POINTS) + rng.standard_normal((n, lq, HEADS, levels, POINTS, 2))
    loc = ref[:, :, None, None, None, :] + offsets / SHAPES[:, ::-1][:, None, :]
    logits = rng.standard_normal((n, lq, HEADS, levels * POINTS))
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    value = rng.standard_normal((n, s, HEADS, CHANNELS))
    return (value.astype(dtype), SHAPES, starts_of(SHAPES), loc.astype(dtype),
            attn.reshape(n, lq, HEADS, levels, POINTS).astype(dtype))


def engine_pair(engine, args, torch):
    """``(forward, forward_backward)`` closures of an engine on the operands ``args``."""
    value, shapes, starts, loc, attn = args
    if engine == 'numpyconv':
        return op_pair(ms_deform_attn_forward, ms_deform_attn_backward, args)
    core = load_test_module('test_msdeformattn').ms_deform_attn_core_pytorch
    shapes_t = torch.tensor(shapes)
    return torch_pair(torch, lambda v, lo, a: core(torch, v, shapes_t, lo, a),
                      torch_tensors(torch, value, loc, attn))


def cpu_time_rows(engines, repeat):
    """As :func:`numpyconv.bench.time_rows`, timed by ``time.process_time`` (one thread)."""
    functions = [f for pair in engines.values() for f in pair]
    for f in functions:
        f()
    best = [math.inf] * len(functions)
    for _ in range(repeat):
        for k, f in enumerate(functions):
            start = time.process_time()
            f()
            best[k] = min(best[k], time.process_time() - start)
    return [(name, None, best[2 * k], best[2 * k + 1]) for k, name in enumerate(engines)]


# -- memory: one forward+backward in a fresh process ---------------------------------------------
def _status(field):
    with open('/proc/self/status') as f:
        return 1024 * int(re.search(fr'{field}:\s+(\d+)', f.read()).group(1))


def measure_memory(engine, case, batch, dtype, threads):
    """Run in a child process: the growth of the peak RSS (and tracemalloc's peak for numpyconv)
    during one forward+backward, the inputs already in memory and every kernel already loaded."""
    numba.set_num_threads(threads)
    torch = import_torch(threads) if engine != 'numpyconv' else None
    engine_pair(engine, operands(case, 1, dtype, queries=2), torch)[1]()   # load the kernels
    args = operands(case, batch, dtype)
    forward_backward = engine_pair(engine, args, torch)[1]
    gc.collect()
    try:                                     # hand freed heap memory back, so that reusing it counts
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open('/proc/self/clear_refs', 'w') as f:                 # reset the peak to the current RSS
        f.write('5')
    base = _status('VmRSS')
    traced = None
    if engine == 'numpyconv':
        tracemalloc.start()
        forward_backward()
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        forward_backward()
    return dict(rss=_status('VmHWM') - base, traced=traced)


def memory_rows(engines, batch, dtype, threads):
    rows = {}
    for case in CASES:
        for engine in engines:
            command = [sys.executable, __file__, '--child', engine, case, '--batch', str(batch),
                       '--dtype', dtype, '--threads', str(threads)]
            done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
            if done.returncode:
                raise RuntimeError(f"memory run {engine} {case} failed:\n{done.stderr}")
            rows[case, engine] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows


def main(argv=None):
    parser = arg_parser(__doc__.splitlines()[0], batch=2, threads=True)
    parser.add_argument('--memory', action='store_true', help='also measure the peak memory')
    parser.add_argument('--cpu-time', action='store_true', help='one thread, timed by CPU time')
    parser.add_argument('--child', nargs=2, metavar=('ENGINE', 'CASE'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = 1 if args.cpu_time else min(args.threads or blas_threads(), numba.config.NUMBA_NUM_THREADS)
    if args.child:
        print(json.dumps(measure_memory(*args.child, args.batch, args.dtype, threads)))
        return
    numba.set_num_threads(threads)
    torch = import_torch(threads)
    print(f"Multi-scale deformable attention, N={args.batch}, M={HEADS}, D={CHANNELS}, L={len(SHAPES)} "
          f"({', '.join(f'{h}x{w}' for h, w in SHAPES)}), P={POINTS}, {args.dtype}, {threads} threads, "
          f"{'CPU time' if args.cpu_time else 'wall clock'}\n")
    print("| shape | engine | forward (ms) | forward+backward (ms) | speed-up fwd | speed-up fwd+bwd |")
    print("|---|---|---:|---:|---:|---:|")
    for case in CASES:
        operand = operands(case, args.batch, args.dtype)
        label = f"{case} (Lq = {operand[3].shape[1]})"
        engines = {'numpyconv': engine_pair('numpyconv', operand, torch)}
        if torch is not None:
            engines[ENGINES[1] + ' (torch CPU)'] = engine_pair(ENGINES[1], operand, torch)
        timed = cpu_time_rows(engines, args.repeat) if args.cpu_time else time_rows(engines, args.repeat)
        times = {name: (f, fb) for name, _, f, fb in timed}
        reference = times.get(ENGINES[1] + ' (torch CPU)')
        for name, (f, fb) in times.items():
            ratio = f"{reference[0] / f:.2f}x | {reference[1] / fb:.2f}x" if reference else "- | -"
            print(f"| {label} | {name} | {1e3 * f:.1f} | {1e3 * fb:.1f} | {ratio} |")
    if args.memory:
        engines = ENGINES if torch is not None else ENGINES[:1]
        rows = memory_rows(engines, args.batch, args.dtype, threads)
        print("\nPeak memory of one forward+backward above the inputs (MiB)\n")
        print("| shape | engine | peak RSS growth | NumPy allocations (tracemalloc peak) |")
        print("|---|---|---:|---:|")
        for case in CASES:
            for engine in engines:
                row = rows[case, engine]
                traced = '-' if row['traced'] is None else f"{row['traced'] / 2 ** 20:.1f}"
                print(f"| {case} | {engine} | {row['rss'] / 2 ** 20:.1f} | {traced} |")


if __name__ == '__main__':
    main()
