"""``numpyconv conform OP module:forward [--backward module:backward] [--cases N] [--dtype D] [--jobs K]``.

The candidate is named like an entry point, ``module:function`` (the current directory first on
``sys.path``). The cases run in this process (``--jobs 1``) or are spread over ``K`` worker
processes in chunks; either way case ``i`` is the same case (it depends on the seed and ``i`` only)
and the outcomes are gathered in case order, so the report does not depend on ``K``. Failures are
shrunk here, in the parent process. Progress goes to stderr (tqdm when installed), the report and
the reproducers to stdout. Exit status: 0 when every case conforms, 1 on a mismatch, 2 on a usage
error (unknown op, a candidate that cannot be imported).
"""
import importlib
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

from .cases import make_settings
from .conformance import run_cases, summarize
from .ops import available_ops

THREAD_VARIABLES = ('NUMBA_NUM_THREADS', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')


class CommandError(Exception):
    """A usage error: printed as one line, exit status 2."""


def add_arguments(parser):
    """The arguments of ``numpyconv conform``."""
    parser.add_argument('op', help=f"the numpyconv op: one of {', '.join(available_ops())}")
    parser.add_argument('forward', metavar='module:forward',
                        help="the candidate forward, forward(*args, **kwargs) -> out, named like an "
                             "entry point")
    parser.add_argument('--backward', metavar='module:backward',
                        help="the candidate backward, backward(dout, *args, **kwargs) -> gradients")
    parser.add_argument('--cases', type=int, default=200, help='cases to run, edge cases first (default 200)')
    parser.add_argument('--dtype', choices=('float64', 'float32'), default='float64')
    parser.add_argument('--jobs', type=int, default=1, help='worker processes (default 1: this process)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--rtol', type=float, help='relative tolerance (default 1e-7 float64, 1e-4 float32)')
    parser.add_argument('--atol', type=float, help='absolute tolerance, times max(1, max |numpyconv|) '
                                                   '(default 1e-9 float64, 1e-5 float32)')
    parser.add_argument('--no-shrink', action='store_true', help='report failures as found')
    parser.add_argument('--no-edge-cases', action='store_true', help='random cases only')
    parser.add_argument('--reproducers', metavar='DIR',
                        help='also write each reproducer to DIR/<op>_failure_<k>.py')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


def resolve(ref, what):
    """The object ``module:attr`` names (``attr`` may be dotted), the current directory on ``sys.path``."""
    module, sep, attr = ref.partition(':')
    if not sep or not module or not attr:
        raise CommandError(f"{what} must be given as module:function, got {ref!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise CommandError(f"cannot import module {module!r} for {what} {ref!r} (searched the current "
                           f"directory {cwd} and sys.path): {exc}") from None
    except Exception as exc:       # the user's module failed while being imported
        raise CommandError(f"importing module {module!r} for {what} {ref!r} raised "
                           f"{type(exc).__name__}: {exc}") from None
    for part in attr.split('.'):
        if not hasattr(obj, part):
            raise CommandError(f"module {module!r} has no attribute {attr!r} ({what} {ref!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CommandError(f"{what} {ref!r} is not callable (it is {type(obj).__name__})")
    return obj


# -- progress ------------------------------------------------------------------------------------------
class TextBar:
    """A progress bar on stderr for machines without tqdm: ``desc [#####-----] 120/1000``."""

    def __init__(self, total, desc, stream=None, width=30):
        self.total, self.desc, self.width = total, desc, width
        self.stream = stream or sys.stderr
        self.done, self._last = 0, 0.0

    def update(self, k=1):
        self.done += k
        now = time.monotonic()
        if now - self._last > 0.2 or self.done >= self.total:
            self._last = now
            filled = self.width * self.done // max(self.total, 1)
            self.stream.write(f"\r{self.desc} [{'#' * filled}{'-' * (self.width - filled)}] "
                              f"{self.done}/{self.total}")
            self.stream.flush()

    def close(self):
        self.stream.write('\n')
        self.stream.flush()


class _NoBar:
    def update(self, k=1):
        pass

    def close(self):
        pass


def progress_bar(total, desc, enabled=True):
    """tqdm when installed, else :class:`TextBar`; a silent one when not ``enabled``."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return TextBar(total, desc)
    return tqdm(total=total, desc=desc, unit='case', file=sys.stderr)


# -- worker processes --------------------------------------------------------------------------------------
_RESOLVED = {}


def _init_worker(cwd):
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def _run_chunk(settings, refs, indices):
    """In a worker: run the cases ``indices`` with the candidate named by ``refs``."""
    if refs not in _RESOLVED:
        backward = None if refs[1] is None else resolve(refs[1], 'backward')
        _RESOLVED[refs] = (resolve(refs[0], 'forward'), backward)
    forward, backward = _RESOLVED[refs]
    return run_cases(settings, indices, forward, backward)


@contextmanager
def _one_thread_each():
    """Worker processes start with one Numba/BLAS thread each (unless the variables are set)."""
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update({k: '1' for k, v in saved.items() if v is None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def run_parallel(settings, refs, cases, jobs, progress):
    """Outcomes of cases ``0 .. cases-1`` computed by ``jobs`` worker processes, in case order."""
    size = max(1, min(50, cases // (8 * jobs)))
    chunks = [list(range(i, min(cases, i + size))) for i in range(0, cases, size)]
    outcomes = []
    context = multiprocessing.get_context('spawn')
    with _one_thread_each(), ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                                                 initargs=(os.getcwd(),)) as pool:
        futures = [pool.submit(_run_chunk, settings, refs, chunk) for chunk in chunks]
        for future in as_completed(futures):
            done = future.result()
            outcomes.extend(done)
            progress.update(len(done))
    return sorted(outcomes, key=lambda o: o.index)


# -- the command -------------------------------------------------------------------------------------------
def _setup(args):
    if args.op not in available_ops():
        raise CommandError(f"unknown op {args.op!r}; this numpyconv has: {', '.join(available_ops())}")
    if args.cases < 0:
        raise CommandError(f"--cases must be >= 0, got {args.cases}")
    if args.jobs < 1:
        raise CommandError(f"--jobs must be >= 1, got {args.jobs}")
    if args.reproducers and Path(args.reproducers).exists() and not Path(args.reproducers).is_dir():
        raise CommandError(f"--reproducers must be a folder, got the file {args.reproducers!r}")
    forward = resolve(args.forward, 'forward')
    backward = None if args.backward is None else resolve(args.backward, 'backward')
    try:
        settings = make_settings(args.op, args.dtype, args.seed, not args.no_edge_cases, args.rtol, args.atol,
                                 backward is not None)
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    return settings, forward, backward


def run(args):
    """Run ``numpyconv conform``; returns the exit status."""
    try:
        settings, forward, backward = _setup(args)
    except CommandError as exc:
        print(f"numpyconv conform: error: {exc}", file=sys.stderr)
        return 2
    refs = (args.forward, args.backward)
    start = time.perf_counter()
    bar = progress_bar(args.cases, f"conform {args.op}", not args.quiet)
    try:
        if args.jobs == 1:
            outcomes = run_cases(settings, range(args.cases), forward, backward, progress=bar.update)
        else:
            outcomes = run_parallel(settings, refs, args.cases, args.jobs, bar)
    except BrokenProcessPool:
        bar.close()
        print("numpyconv conform: a worker process died (did the candidate crash the interpreter?); run "
              "with --jobs 1 to see where", file=sys.stderr)
        return 1
    bar.close()
    elapsed = time.perf_counter() - start
    if any(o.signature for o in outcomes) and not args.no_shrink and not args.quiet:
        print("shrinking the failures...", file=sys.stderr)
    report = summarize(settings, outcomes, forward, backward, not args.no_shrink, candidate_names=refs)
    print(report)
    for k, failure in enumerate(report.failures, 1):
        print(f"\n# ---- reproducer of failure {k} ----\n{failure.reproducer}", end='')
        if args.reproducers:
            folder = Path(args.reproducers)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{args.op}_failure_{k}.py").write_text(failure.reproducer)
    print(f"{args.cases} cases in {elapsed:.1f} s with {args.jobs} job(s)", file=sys.stderr)
    return 0 if report.ok else 1
