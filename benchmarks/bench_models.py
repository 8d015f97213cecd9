"""Whole networks: forward and forward+backward time and peak memory, numpyconv against PyTorch CPU.

Each builder of ``numpyconv.models`` (float32, 1000 classes, 224x224 input, random weights from
``rng=0``) is compared with its official PyTorch network carrying the *same weights* (numpyconv's
state_dict loaded into it): torchvision's ResNets and the re-creations of the official networks in
``tests/torch_models/`` (imported from the source tree; a builder without one is timed alone). The
PyTorch process does not import numpyconv, which sets process-wide things (the OpenMP wait policy,
glibc's allocator): a process of its own writes the weights to a temporary ``.npz`` file.

* **forward**: eval mode, no caches kept (``numpyconv.no_grad()`` / ``torch.no_grad()``): inference.
* **forward+backward**: eval mode by default (BatchNorm with its running statistics, dropout off, so
  that batch 1 runs for the networks whose attention branch normalises 1x1 maps), ``--train`` for
  train mode; gradients of the input and of every parameter, from an all-ones output gradient.
* **time**: the minimum over ``--repeats`` runs after one warm-up run (allocator); before any,
  each pass runs once on a ``WARM_UP_SHAPE`` input, which compiles every Numba loop (compiled per
  array type, not size) with little memory.
* **peak memory**: each (model, batch, framework) runs in its own process; reported is the peak
  resident set size of the forward runs and of the forward+backward runs (Linux ``VmHWM``, reset
  before each kind of run through ``/proc/self/clear_refs``) above the resident size once the network
  and the input exist and the small warm-up has run: imports, weights and compiled code are not
  counted. Before each, the heap's free memory is returned to the system (glibc's ``malloc_trim``),
  since numpyconv keeps freed memory for reuse and the resident size would otherwise count it.
* **threads**: 2 for both frameworks (``torch.set_num_threads(2)``; ``NUMBA_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` set to 2 before the process
  imports NumPy). ``--threads`` changes it.

Run from the repository root::

    python benchmarks/bench_models.py --models resnet18 resnet50 --batch 1 8 --repeats 3 --markdown
"""
import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The environment's OpenMP wait policy before numpyconv is imported (importing it sets PASSIVE for
# its own Numba loops): the PyTorch processes get the environment as the user gave it.
WAIT_POLICY = os.environ.get('OMP_WAIT_POLICY')

ROOT = Path(__file__).resolve().parents[1]
# the T configuration of InternImage's and FlashInternImage's build.py
INTERNIMAGE_T = dict(channels=64, depths=[4, 4, 18, 4], groups=[4, 8, 16, 32], offset_scale=1.0,
                     mlp_ratio=4.0, drop_path_rate=0.1, layer_scale=None, post_norm=False)
TORCH_MODELS = {      # builder -> (module in tests/torch_models or 'torchvision', function, extra kwargs)
    'resnet18': ('torchvision', 'resnet18', {}), 'resnet50': ('torchvision', 'resnet50', {}),
    'od_resnet18': ('od_resnet', 'od_resnet18', {}), 'od_resnet50': ('od_resnet', 'od_resnet50', {}),
    'kw_resnet18': ('kw_resnet', 'kw_resnet18', {}), 'kw_resnet50': ('kw_resnet', 'kw_resnet50', {}),
    'dy_resnet18': ('dy_resnet', 'resnet18', {}),
    'oct_resnet26': ('oct_resnet', 'oct_resnet26', {}), 'oct_resnet50': ('oct_resnet', 'oct_resnet50', {}),
    'resnet50_dcnv2': ('resnet_dcn', 'ResNet50DCN', {}),
    'rednet26': ('rednet', 'ImageClassifier', {'depth': 26}),
    'rednet38': ('rednet', 'ImageClassifier', {'depth': 38}),
    'rednet50': ('rednet', 'ImageClassifier', {'depth': 50}),
    'od_mobilenetv2': ('mobilenetv2', 'OD_MobileNetV2', {}),
    'cond_mobilenetv2': ('mobilenetv2', 'CondMobileNetV2', {}),
    'internimage_t': ('intern_image', 'InternImage', dict(INTERNIMAGE_T, core_op='DCNv3_pytorch')),
    'flash_internimage_t': ('intern_image', 'FlashInternImage',
                            dict(INTERNIMAGE_T, core_op='DCNv4', mlp_fc2_bias=False, dcn_output_bias=False,
                                 dw_kernel_size=None)),
}
THREAD_VARIABLES = ('NUMBA_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')


# -- one measurement, in its own process -------------------------------------------------------------
def rss_mb():
    """The process's current resident set size (MB)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def trim_heap():
    """Return the heap's free memory to the system (glibc's ``malloc_trim``; numpyconv keeps freed
    memory for reuse), so that the resident size counts live memory only."""
    import ctypes
    trim = getattr(ctypes.CDLL(None), 'malloc_trim', None)
    if trim is not None:
        trim(ctypes.c_size_t(0))


def reset_peak():
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM); False if refused."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_mb():
    """The process's peak resident set size (MB) since :func:`reset_peak`, else since it started."""
    with contextlib.suppress(OSError), open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KiB on Linux


WARM_UP_SHAPE = (1, 3, 64, 64)     # an input every network takes (a multiple of 32), small


def best_of(fn, repeats):
    fn()                                            # warm-up
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def numpyconv_passes(name, batch, train):
    import numpy as np
    import numpyconv
    model = getattr(numpyconv.models, name)(rng=0)

    def passes(shape):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

        def forward():
            model.eval()
            with numpyconv.no_grad():
                model.forward(x)

        def forward_backward():
            model.train(train)
            model.zero_grad()
            y = model.forward(x)
            model.backward(np.ones_like(y))
        return forward, forward_backward
    return passes((batch, 3, 224, 224)), passes(WARM_UP_SHAPE)


def numpyconv_weights(name):
    """The builder's weights (``rng=0``) as a dict of arrays, made in a process of their own: importing
    numpyconv sets process-wide things (the OpenMP wait policy, glibc's allocator), and the PyTorch
    process runs as a PyTorch user's would, without them."""
    import numpy as np
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'weights.npz')
        subprocess.run([sys.executable, __file__, '--weights', name, path], check=True)
        with np.load(path) as weights:
            return dict(weights)


def save_weights(name, path):
    import numpy as np
    import numpyconv
    np.savez(path, **getattr(numpyconv.models, name)(rng=0).state_dict())


def torch_passes(name, batch, train, threads):
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    source, function, kwargs = TORCH_MODELS[name]
    if source == 'torchvision':
        import torchvision
        module = getattr(torchvision.models, function)(num_classes=1000)
    else:
        sys.path.insert(0, str(ROOT / 'tests'))
        import importlib
        factory = getattr(importlib.import_module(f'torch_models.{source}'), function)
        module = factory(num_classes=1000, **kwargs)
    state = numpyconv_weights(name)
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    module.float()                       # a re-creation may hold float64 constants
    del state

    def passes(shape):
        x = torch.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32),
                         requires_grad=True)

        def forward():
            module.eval()
            with torch.no_grad():
                module(x)

        def forward_backward():
            module.train(train)
            module.zero_grad(set_to_none=True)
            x.grad = None
            y = module(x)
            y.backward(torch.ones_like(y))
        return forward, forward_backward
    return passes((batch, 3, 224, 224)), passes(WARM_UP_SHAPE)


def measure(name, batch, framework, repeats, train, threads):
    """Time and memory of one (model, batch, framework); a dict."""
    if framework == 'numpyconv':
        (forward, forward_backward), small = numpyconv_passes(name, batch, train)
    else:
        (forward, forward_backward), small = torch_passes(name, batch, train, threads)
    for run in small:             # compiles every Numba loop (types, not sizes): outside the peak
        run()
    trim_heap()
    base = rss_mb()
    reset_peak()
    forward_s = best_of(forward, repeats)
    forward_peak = peak_mb() - base
    trim_heap()
    reset_peak()
    backward_s = best_of(forward_backward, repeats)
    backward_peak = peak_mb() - base
    return {'model': name, 'batch': batch, 'framework': framework, 'forward_s': forward_s,
            'forward_backward_s': backward_s, 'forward_mb': max(forward_peak, 0.0),
            'forward_backward_mb': max(backward_peak, 0.0)}


# -- the driver ------------------------------------------------------------------------------------
def run_child(name, batch, framework, args):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))
    env = dict(os.environ, PYTHONPATH=path, **{v: str(args.threads) for v in THREAD_VARIABLES})
    if WAIT_POLICY is None:
        env.pop('OMP_WAIT_POLICY', None)
    command = [sys.executable, __file__, '--child', name, str(batch), framework, '--repeats',
               str(args.repeats), '--threads', str(args.threads)] + (['--train'] if args.train else [])
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ['no output'])[-1]
        return {'model': name, 'batch': batch, 'framework': framework, 'error': last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_available():
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else '-'


def seconds(row, key):
    return f"{row[key]:.3f}" if row and key in row else ('error' if row else '-')


def megabytes(row, key):
    return f"{row[key]:.0f}" if row and key in row else '-'


def find(results, model, batch, framework):
    return next((r for r in results if (r['model'], r['batch'], r['framework']) == (model, batch, framework)),
                None)


def get(row, key):
    return row.get(key) if row else None


def table(results, markdown):
    """One row per (model, batch): times (s), numpyconv/PyTorch ratios, peak memory above setup (MB)."""
    head = ['model', 'batch', 'fwd numpyconv', 'fwd torch', 'fwd ratio', 'fwd+bwd numpyconv',
            'fwd+bwd torch', 'fwd+bwd ratio', 'MB fwd numpyconv', 'MB fwd torch', 'MB fwd+bwd numpyconv',
            'MB fwd+bwd torch']
    rows = []
    keys = sorted({(r['model'], r['batch']) for r in results}, key=lambda k: (k[0], k[1]))
    for model, batch in keys:
        ours, theirs = (find(results, model, batch, framework) for framework in ('numpyconv', 'torch'))
        rows.append([model, str(batch), seconds(ours, 'forward_s'), seconds(theirs, 'forward_s'),
                     ratio(get(ours, 'forward_s'), get(theirs, 'forward_s')),
                     seconds(ours, 'forward_backward_s'), seconds(theirs, 'forward_backward_s'),
                     ratio(get(ours, 'forward_backward_s'), get(theirs, 'forward_backward_s')),
                     megabytes(ours, 'forward_mb'), megabytes(theirs, 'forward_mb'),
                     megabytes(ours, 'forward_backward_mb'), megabytes(theirs, 'forward_backward_mb')])
    if markdown:
        lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    else:
        widths = [max(len(c) for c in col) for col in zip(head, *rows)]
        lines = ['  '.join(c.rjust(w) for c, w in zip(r, widths)) for r in [head] + rows]
    errors = [f"{r['model']} batch {r['batch']} {r['framework']}: {r['error']}"
              for r in results if 'error' in r]
    return '\n'.join(lines + errors)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=None, help='builders (default: every one)')
    parser.add_argument('--batch', nargs='+', type=int, default=[1, 8])
    parser.add_argument('--repeats', type=int, default=3, help='timed runs after the warm-up (min reported)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--train', action='store_true', help='forward+backward in train mode')
    parser.add_argument('--markdown', action='store_true', help='print a Markdown table')
    parser.add_argument('--no-torch', action='store_true', help='time numpyconv alone')
    parser.add_argument('--child', nargs=3, metavar=('MODEL', 'BATCH', 'FRAMEWORK'), help=argparse.SUPPRESS)
    parser.add_argument('--weights', nargs=2, metavar=('MODEL', 'PATH'), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.weights:
        save_weights(*args.weights)
        return 0
    if args.child:
        name, batch, framework = args.child
        print(json.dumps(measure(name, int(batch), framework, args.repeats, args.train, args.threads)))
        return 0
    sys.path.insert(0, str(ROOT))
    from numpyconv.predict import builders
    names = args.models or builders()
    unknown = sorted(set(names) - set(builders()))
    if unknown:
        sys.exit(f"unknown models {unknown}; numpyconv.models has: {', '.join(builders())}")
    with_torch = not args.no_torch and torch_available()
    results = []
    for name in names:
        for batch in args.batch:
            frameworks = ['numpyconv'] + (['torch'] if with_torch and name in TORCH_MODELS else [])
            for framework in frameworks:
                results.append(run_child(name, batch, framework, args))
                print(f"# {name} batch {batch} {framework}: "
                      f"{json.dumps({k: v for k, v in results[-1].items() if k not in ('model', 'batch')})}",
                      file=sys.stderr, flush=True)
    print(table(results, args.markdown))
    return 0


if __name__ == '__main__':
    sys.exit(main())
