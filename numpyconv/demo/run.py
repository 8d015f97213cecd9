"""The ``numpyconv demo`` run: output folder rules, the loop over techniques and seeds, tables, figures.

Every technique is trained once per seed (``--seed S --seeds K``: seeds ``S, S+1, ..., S+K-1``); a
seed chooses the initial weights and the order of the training batches, while the data set, its
deformations and the train/test split stay fixed. The runs go round by round: every technique
with seed ``S``, then every technique with ``S+1``, and so on.

Output folder (``--out``)::

    config.json                 the settings (``--resume`` refuses different ones)
    results.md                  the summary table (mean, spread) and the test accuracy per seed
    results.csv                 the summary: one row per technique (mean, std, min, max)
    results_per_seed.csv        one row per technique and seed
    results.json                settings, summary and every run with every epoch's numbers
    models/<technique>_seed<S>.npz   trained state_dict (load with :func:`load_model`)
    figures/*.png               results chart, training curves, technique figures

The folder is created if absent. A non-empty folder is refused unless ``--force`` (deletes the
demo's own files listed above, nothing else) or ``--resume`` (keeps them and skips every finished
(technique, seed) run). Everything is rewritten after each run, so Ctrl-C loses at most the run in
progress; the demo then prints the table of what finished and exits with status 130.
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

OUTPUT_FILES = ('config.json', 'results.json', 'results.csv', 'results_per_seed.csv', 'results.md')
OUTPUT_DIRS = {'models': '*.npz', 'figures': '*.png'}
# settings that must match for --resume (the rest only choose what to run and how to show it)
RUN_SETTINGS = ('epochs', 'width', 'batch_size', 'lr', 'seed', 'limit_train', 'limit_test')
# the numbers of a run that vary with the seed, summarised per technique
MEASURED = ('train_acc', 'test_acc', 'test_loss', 'seconds_per_epoch')
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


def model_path(out, technique, seed):
    """``out/models/<technique>_seed<seed>.npz``."""
    return Path(out) / 'models' / f'{technique}_seed{seed}.npz'


def prepare_output(out, settings, force, resume):
    """Create or check ``out``; returns the runs already finished (``--resume``) or ``[]``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} exists and is not a folder")
    non_empty = out.exists() and any(out.iterdir())
    if resume:
        return _resumed_runs(out, settings)
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


def _resumed_runs(out, settings):
    """The finished runs of ``out/results.json`` whose model file is there."""
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
    if not results.is_file():
        return []
    saved = json.loads(results.read_text())
    if not isinstance(saved, dict) or not isinstance(saved.get('runs'), list):
        raise DemoError(f"--resume: {results} does not hold this demo's runs (a 'runs' list); "
                        f"use --force to start afresh")
    return [r for r in saved['runs'] if model_path(out, r['technique'], r['seed']).is_file()]


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


# -- runs and their summary ---------------------------------------------------------------------------
def _order(technique):
    return list(TECHNIQUES).index(technique)


def in_table_order(runs):
    """Runs (or summary rows) by technique in table order, then by seed."""
    return sorted(runs, key=lambda r: (_order(r['technique']), r.get('seed', 0)))


def spread(values):
    """``dict(mean, std, min, max, values)`` of per-seed numbers; ``std`` is the sample standard
    deviation (``ddof=1``), None for a single seed."""
    v = np.asarray(values, dtype=float)
    return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else None,
                min=float(v.min()), max=float(v.max()), values=[float(x) for x in v])


def summarise(runs):
    """One row per technique (table order): its seeds, params, MACs and the :func:`spread` of every
    ``MEASURED`` number over its seeds."""
    by_technique = {}
    for r in in_table_order(runs):
        by_technique.setdefault(r['technique'], []).append(r)
    rows = []
    for technique, group in by_technique.items():
        row = dict(technique=technique, label=group[0]['label'], seeds=[r['seed'] for r in group],
                   params=group[0]['params'], macs=group[0]['macs'])
        row.update({key: spread([r[key] for r in group]) for key in MEASURED})
        rows.append(row)
    return rows


# -- the tables ------------------------------------------------------------------------------------
def _number(key, value):
    if key in ('train_acc', 'test_acc'):
        return f"{100 * value:.1f}"
    if key == 'seconds_per_epoch':
        return f"{value:.1f}"
    return f"{value:.3f}"


def _mean_std(key, stats):
    text = _number(key, stats['mean'])
    return text if stats['std'] is None else f"{text} ± {_number(key, stats['std'])}"


def _min_max(key, stats):
    return f"{_number(key, stats['min'])}-{_number(key, stats['max'])}"


def _columns(with_spread):
    """``(title, cell(summary row))`` of the summary table; the spread columns only for several seeds."""
    columns = [('Technique', lambda r: r['label'])]
    if with_spread:
        columns.append(('Seeds', lambda r: str(len(r['seeds']))))
    columns += [('Params', lambda r: f"{r['params']:,}"),
                ('MACs / image', lambda r: f"{r['macs'] / 1e6:.2f} M")]
    measured = (('seconds_per_epoch', 'Time / epoch (s)', None),
                ('train_acc', 'Train acc (%)', 'Train min-max (%)'),
                ('test_acc', 'Test acc (%)', 'Test min-max (%)'))
    for key, title, range_title in measured:
        if not with_spread:
            columns.append((title, lambda r, key=key: _number(key, r[key]['mean'])))
            continue
        columns.append((title, lambda r, key=key: _mean_std(key, r[key])))
        if range_title:
            columns.append((range_title, lambda r, key=key: _min_max(key, r[key])))
    return columns


def _markdown(titles, lines):
    out = ['| ' + ' | '.join(titles) + ' |', '|' + '|'.join(['---'] + ['---:'] * (len(titles) - 1)) + '|']
    return '\n'.join(out + ['| ' + ' | '.join(cells) + ' |' for cells in lines])


def markdown_table(summary, with_spread=False):
    """The summary table: one line per technique; with ``with_spread``, mean ± std and min-max."""
    columns = _columns(with_spread)
    return _markdown([t for t, _ in columns], [[cell(r) for _, cell in columns] for r in summary])


def per_seed_table(summary):
    """Test accuracy (%) of every technique (rows) and seed (columns)."""
    seeds = sorted({s for r in summary for s in r['seeds']})
    lines = []
    for r in summary:
        value = dict(zip(r['seeds'], r['test_acc']['values']))
        lines.append([r['label']] + [_number('test_acc', value[s]) if s in value else '' for s in seeds])
    return _markdown(['Test acc (%)'] + [f'seed {s}' for s in seeds], lines)


def _csv(path, keys, rows):
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, keys, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)


def summary_csv_row(row):
    """``row`` flattened: ``<number>_mean``, ``_std`` (empty for one seed), ``_min``, ``_max``."""
    flat = dict(technique=row['technique'], label=row['label'], seeds=len(row['seeds']),
                params=row['params'], macs=row['macs'])
    for key in MEASURED:
        flat.update({f'{key}_{stat}': row[key][stat] for stat in ('mean', 'std', 'min', 'max')})
    return flat


def write_results(out, runs, settings, with_spread):
    """results.json, results.csv (summary), results_per_seed.csv and results.md."""
    runs = in_table_order(runs)
    summary = summarise(runs)
    (out / 'results.json').write_text(json.dumps(dict(settings=settings, summary=summary, runs=runs),
                                                 indent=1) + '\n')
    keys = ['technique', 'label', 'seeds', 'params', 'macs']
    _csv(out / 'results.csv', keys + [f'{key}_{stat}' for key in MEASURED
                                      for stat in ('mean', 'std', 'min', 'max')],
         [summary_csv_row(r) for r in summary])
    _csv(out / 'results_per_seed.csv', ['technique', 'label', 'seed', 'params', 'macs'] + list(MEASURED),
         runs)
    seeds = ', '.join(str(s) for s in sorted({r['seed'] for r in runs}))
    links = [f"![{name}](figures/{FIGURES[name]})" for name in FIGURES
             if (out / 'figures' / FIGURES[name]).is_file()]
    text = [f"# numpyconv demo results\n\n{markdown_table(summary, with_spread)}\n",
            f"Seeds: {seeds} (a seed chooses the initial weights and the order of the training "
            f"batches; the data set, its deformations and the train/test split are fixed). "
            + ("Mean ± sample standard deviation over the seeds; min-max: the lowest and the highest "
               "seed. " if with_spread else '')
            + "Accuracies after the last epoch; time per epoch: training only (no evaluation).\n"]
    if with_spread:
        text.append(per_seed_table(summary) + '\n')
    text += [f"Settings: {json.dumps(settings)}.\n", '\n\n'.join(links) + '\n']
    (out / 'results.md').write_text('\n'.join(text))


# -- figures -------------------------------------------------------------------------------------------
class _Models(dict):
    """Trained models of one seed by technique, loaded from ``models/`` on first use."""

    def __init__(self, out, width, seed):
        super().__init__()
        self.out, self.width, self.seed = out, width, seed

    def __missing__(self, technique):
        self[technique] = load_model(model_path(self.out, technique, self.seed), technique, self.width)
        return self[technique]


def update_figures(out, summary, runs, technique, models, dataset):
    """Redraw the summary figures and, from ``models`` (the first seed's), the figure that involves
    ``technique``."""
    folder = out / 'figures'
    figures.results_chart(summary, folder / FIGURES['results'])
    histories = {}
    for r in in_table_order(runs):
        histories.setdefault(r['technique'], []).append(r['history'])
    figures.training_curves([(r['label'], histories[r['technique']]) for r in summary],
                            folder / FIGURES['curves'])
    done = {r['technique'] for r in runs if r['seed'] == models.seed}
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
    settings['seeds'] = args.seeds
    settings['techniques'] = list(args.techniques)
    return settings


def _run_record(technique, seed, model, history):
    params, macs = count(model, (1,) + INPUT_SHAPE)
    last = history[-1]
    return dict(technique=technique, label=technique_label(technique), seed=seed, params=params,
                macs=macs, seconds_per_epoch=float(np.mean([h['seconds'] for h in history])),
                train_acc=last['train_acc'], test_acc=last['test_acc'], test_loss=last['test_loss'],
                history=history)


def _finish(out, runs, started, with_spread, interrupted=False):
    summary = summarise(runs)
    print('\n' + markdown_table(summary, with_spread))
    state = 'interrupted' if interrupted else 'finished'
    print(f"\n{state} after {time.perf_counter() - started:.0f} s; {len(runs)} run(s) of "
          f"{len(summary)} technique(s) in {out}/ (results.md, results.csv, figures/)")
    return 130 if interrupted else 0


def run(args):
    """Train every requested technique with every seed, writing results as the runs finish; returns
    the exit status."""
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
    settings = _settings(args)
    out = Path(args.out)
    runs = prepare_output(out, settings, args.force, args.resume)
    seeds = [args.seed + i for i in range(args.seeds)]
    with_spread = len(seeds) > 1 or len({r['seed'] for r in runs}) > 1
    dataset = limit(load_digits_dataset(), args.limit_train, args.limit_test)
    print(f"digits: {len(dataset.x_train)} training and {len(dataset.x_test)} test images "
          f"(1x32x32, deformed); techniques: {', '.join(args.techniques)}; "
          f"seeds: {', '.join(map(str, seeds))}")
    models = _Models(out, args.width, args.seed)
    finished = {(r['technique'], r['seed']) for r in runs}
    todo = [(t, s) for s in seeds for t in args.techniques if (t, s) not in finished]
    for technique, seed in todo:
        try:
            model, history = train_technique(
                technique, dataset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                width=args.width, seed=seed, progress=not args.no_progress)
        except KeyboardInterrupt:
            print(f"\ninterrupted during {technique_label(technique)} seed {seed}; keeping the "
                  f"{len(runs)} finished run(s)", file=sys.stderr)
            return _finish(out, runs, started, with_spread, interrupted=True)
        save_model(model, model_path(out, technique, seed))
        if seed == models.seed:
            models[technique] = model
        runs.append(_run_record(technique, seed, model, history))
        update_figures(out, summarise(runs), runs, technique if seed == models.seed else None, models,
                       dataset)
        write_results(out, runs, settings, with_spread)
    return _finish(out, runs, started, with_spread)
