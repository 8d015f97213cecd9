"""The ``numpyconv demo`` run: output folder rules, the loop over techniques, tables and figures.

Output folder (``--out``)::

    config.json                 the settings (``--resume`` refuses different ones)
    results.json / .csv / .md   the table (json also holds every epoch's numbers)
    models/<technique>.npz      trained state_dict (load with :func:`load_model`)
    figures/*.png               results chart, training curves, technique figures

The folder is created if absent. A non-empty folder is refused unless ``--force`` (deletes the
demo's own files listed above, nothing else) or ``--resume`` (keeps them and skips the finished
techniques). Everything is rewritten after each technique, so Ctrl-C loses at most the technique
in progress; the run then prints the table of what finished and exits with status 130.
"""
import contextlib
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import figures
from .data import limit, load_digits_dataset
from .models import INPUT_SHAPE, TECHNIQUES, build_model, technique_label
from .train import train_technique
from ..module import count

OUTPUT_FILES = ('config.json', 'results.json', 'results.csv', 'results.md')
OUTPUT_DIRS = {'models': '*.npz', 'figures': '*.png'}
# settings that must match for --resume (the rest only choose what to run and how to show it)
RUN_SETTINGS = ('epochs', 'width', 'batch_size', 'lr', 'seed', 'limit_train', 'limit_test')
COLUMNS = (('label', 'Technique'), ('params', 'Params'), ('macs', 'MACs / image'),
           ('seconds_per_epoch', 'Time / epoch (s)'), ('train_acc', 'Train acc (%)'),
           ('test_acc', 'Test acc (%)'))
FIGURES = dict(results='results.png', curves='training_curves.png',
               deformable='deformable_sampling.png', involution='involution_kernels.png',
               octave='octave_maps.png', attention='kernel_attention.png')


class DemoError(Exception):
    """A problem the user can fix (dependencies, output folder, settings); no traceback."""


def require_extra(progress):
    """Import the ``demo`` extra now, with a clear message when it is missing."""
    modules = ['sklearn', 'matplotlib'] + (['tqdm'] if progress else [])
    for name in modules:
        try:
            __import__(name)
        except ImportError as exc:
            raise DemoError(f"numpyconv demo needs the demo extra (scikit-learn, matplotlib, tqdm): "
                            f"pip install 'numpyconv[demo]' ({exc})") from None


@contextlib.contextmanager
def thread_limits(threads):
    """Use ``threads`` Numba threads and BLAS threads (threadpoolctl, which scikit-learn installs;
    without it BLAS keeps its own setting); the previous limits come back on exit."""
    import numba
    try:
        from threadpoolctl import threadpool_limits
        blas = threadpool_limits(limits=threads)
    except ImportError:
        blas = contextlib.nullcontext()
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with blas:
            yield
    finally:
        numba.set_num_threads(previous)


# -- output folder ---------------------------------------------------------------------------------
def _own_files(out):
    files = [out / name for name in OUTPUT_FILES]
    for folder, pattern in OUTPUT_DIRS.items():
        files += sorted((out / folder).glob(pattern))
    return [f for f in files if f.is_file()]


def prepare_output(out, settings, force, resume):
    """Create or check ``out``; returns the rows already finished (``--resume``) or ``[]``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} exists and is not a folder")
    non_empty = out.exists() and any(out.iterdir())
    if resume:
        return _resumed_rows(out, settings)
    if non_empty and not force:
        raise DemoError(f"output folder {out} is not empty; pass --force to start afresh (deletes "
                        f"the demo's results, models and figures there), --resume to continue an "
                        f"interrupted run, or choose another --out")
    for f in _own_files(out) if non_empty else []:
        f.unlink()
    for folder in OUTPUT_DIRS:
        (out / folder).mkdir(parents=True, exist_ok=True)
    (out / 'config.json').write_text(json.dumps(settings, indent=2) + '\n')
    return []


def _resumed_rows(out, settings):
    config = out / 'config.json'
    if not config.is_file():
        raise DemoError(f"--resume: {config} not found; nothing to resume in {out}")
    saved = json.loads(config.read_text())
    changed = {k: (saved.get(k), settings[k]) for k in RUN_SETTINGS if saved.get(k) != settings[k]}
    if changed:
        detail = ', '.join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise DemoError(f"--resume needs the settings of the interrupted run ({detail}); drop the "
                        f"changed options or use --force")
    results = out / 'results.json'
    rows = json.loads(results.read_text()) if results.is_file() else []
    return [r for r in rows if (out / 'models' / f"{r['technique']}.npz").is_file()]


# -- models on disk --------------------------------------------------------------------------------
def save_model(model, path):
    np.savez(path, **model.state_dict())


def load_model(path, technique, width):
    """A :class:`~numpyconv.demo.models.DemoNet` with the weights of ``path``, ready for inference."""
    model = build_model(technique, width)
    with np.load(path) as state:
        model.load_state_dict(dict(state))
    model.finish_schedule()
    return model.eval()


# -- the table ---------------------------------------------------------------------------------------
def _cell(key, value):
    if key in ('train_acc', 'test_acc'):
        return f"{100 * value:.1f}"
    if key == 'params':
        return f"{value:,}"
    if key == 'macs':
        return f"{value / 1e6:.2f} M"
    if key == 'seconds_per_epoch':
        return f"{value:.1f}"
    return str(value)


def in_table_order(rows):
    return sorted(rows, key=lambda r: list(TECHNIQUES).index(r['technique']))


def markdown_table(rows):
    lines = ['| ' + ' | '.join(title for _, title in COLUMNS) + ' |',
             '|' + '|'.join(['---'] + ['---:'] * (len(COLUMNS) - 1)) + '|']
    lines += ['| ' + ' | '.join(_cell(k, r[k]) for k, _ in COLUMNS) + ' |' for r in in_table_order(rows)]
    return '\n'.join(lines)


def write_results(out, rows, settings):
    """results.json, results.csv and results.md (table, settings, figure links)."""
    (out / 'results.json').write_text(json.dumps(rows, indent=1) + '\n')
    keys = ['technique'] + [k for k, _ in COLUMNS]
    with open(out / 'results.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, keys, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(in_table_order(rows))
    links = [f"![{name}](figures/{FIGURES[name]})" for name in FIGURES
             if (out / 'figures' / FIGURES[name]).is_file()]
    text = (f"# numpyconv demo results\n\n{markdown_table(rows)}\n\n"
            f"Settings: {json.dumps(settings)}. Time per epoch: training only (no evaluation).\n\n"
            + '\n\n'.join(links) + '\n')
    (out / 'results.md').write_text(text)


# -- figures -------------------------------------------------------------------------------------------
class _Models(dict):
    """Trained models by technique, loaded from ``models/`` on first use."""

    def __init__(self, out, width):
        super().__init__()
        self.out, self.width = out, width

    def __missing__(self, technique):
        self[technique] = load_model(self.out / 'models' / f'{technique}.npz', technique, self.width)
        return self[technique]


def update_figures(out, rows, technique, models, dataset):
    """Redraw the summary figures and the figure that involves ``technique``."""
    folder = out / 'figures'
    figures.results_chart(in_table_order(rows), folder / FIGURES['results'])
    figures.training_curves(in_table_order(rows), folder / FIGURES['curves'])
    done = [r['technique'] for r in rows]
    image = dataset.x_test[0]
    if technique in figures.DEFORMABLE:
        chosen = {t: models[t] for t in figures.DEFORMABLE if t in done}
        figures.deformable_sampling(chosen, image, folder / FIGURES['deformable'])
    elif technique in figures.ATTENTION:
        chosen = {t: models[t] for t in figures.ATTENTION if t in done}
        figures.attention_figure(chosen, dataset.x_test, dataset.y_test, folder / FIGURES['attention'])
    elif technique == 'involution':
        figures.involution_figure(models[technique], image, folder / FIGURES['involution'])
    elif technique == 'octave':
        figures.octave_figure(models[technique], image, folder / FIGURES['octave'])


# -- the run ---------------------------------------------------------------------------------------------
def _settings(args):
    settings = {k: getattr(args, k) for k in RUN_SETTINGS}
    settings['techniques'] = list(args.techniques)
    return settings


def _result_row(technique, model, history):
    params, macs = count(model, (1,) + INPUT_SHAPE)
    last = history[-1]
    return dict(technique=technique, label=technique_label(technique), params=params, macs=macs,
                seconds_per_epoch=float(np.mean([h['seconds'] for h in history])),
                train_acc=last['train_acc'], test_acc=last['test_acc'], test_loss=last['test_loss'],
                history=history)


def _finish(out, rows, started, interrupted=False):
    print('\n' + markdown_table(rows))
    state = 'interrupted' if interrupted else 'finished'
    print(f"\n{state} after {time.perf_counter() - started:.0f} s; {len(rows)} technique(s) in "
          f"{out}/ (results.md, results.csv, figures/)")
    return 130 if interrupted else 0


def run(args):
    """Train every requested technique, writing results as they finish; returns the exit status."""
    try:
        require_extra(not args.no_progress)
        if args.width % 16:
            raise DemoError(f"--width must be a multiple of 16 (involution and DCNv3/v4 use groups "
                            f"of 16 channels), got {args.width}")
        with thread_limits(args.threads):
            return _run(args)
    except DemoError as exc:
        print(f"numpyconv demo: error: {exc}", file=sys.stderr)
        return 2


def _run(args):
    started = time.perf_counter()
    progress = not args.no_progress
    settings = _settings(args)
    out = Path(args.out)
    rows = prepare_output(out, settings, args.force, args.resume)
    dataset = limit(load_digits_dataset(), args.limit_train, args.limit_test)
    print(f"digits: {len(dataset.x_train)} training and {len(dataset.x_test)} test images "
          f"(1x32x32, deformed); techniques: {', '.join(args.techniques)}")
    models = _Models(out, args.width)
    finished = {r['technique'] for r in rows}
    for technique in [t for t in args.techniques if t not in finished]:
        try:
            model, history = train_technique(
                technique, dataset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                width=args.width, seed=args.seed, progress=progress)
        except KeyboardInterrupt:
            print(f"\ninterrupted during {technique_label(technique)}; keeping the "
                  f"{len(rows)} finished technique(s)", file=sys.stderr)
            return _finish(out, rows, started, interrupted=True)
        save_model(model, out / 'models' / f'{technique}.npz')
        models[technique] = model
        rows.append(_result_row(technique, model, history))
        update_figures(out, rows, technique, models, dataset)
        write_results(out, rows, settings)
    return _finish(out, rows, started)
