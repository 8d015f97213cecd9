"""``numpyconv demo``: train and compare every technique on real handwritten digits.

One template network (:mod:`numpyconv.demo.models`) with the technique under test in its two
blocks, trained with our own backward passes on scikit-learn's digits, upscaled and randomly
deformed (:mod:`numpyconv.demo.data`), once per seed (``--seeds K``: mean and spread per technique).
After each (technique, seed) run the results (terminal table, ``results.md``, ``results.csv``,
``results_per_seed.csv``, ``results.json``), the trained weights (``models/<technique>_seed<S>.npz``)
and the figures (``figures/*.png``) are rewritten, so an interrupted run keeps everything finished
so far; ``--resume`` continues it.

Importing this package needs only the core install: scikit-learn, matplotlib and tqdm (the
``demo`` extra) are imported when the demo runs.
"""
import argparse
import sys
from pathlib import Path

from .models import TECHNIQUES

DEFAULTS = dict(epochs=15, width=32, batch_size=32, lr=1e-2, seed=0, seeds=1, threads=1)


def technique_list(text):
    """``'conv,odconv'`` -> ``['conv', 'odconv']`` (``'all'``: every technique, in table order)."""
    if text.strip() == 'all':
        return list(TECHNIQUES)
    names = [t.strip() for t in text.split(',') if t.strip()]
    unknown = [t for t in names if t not in TECHNIQUES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown technique(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from: all, {', '.join(TECHNIQUES)}")
    return list(dict.fromkeys(names))


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_arguments(parser):
    """Add the ``demo`` options to an ``argparse`` (sub)parser."""
    parser.add_argument('--techniques', type=technique_list, default=list(TECHNIQUES),
                        metavar='LIST', help=f"comma-separated, or 'all' (default): "
                                             f"{', '.join(TECHNIQUES)}")
    parser.description = ("Train one small CNN per technique (and per seed) on scikit-learn's "
                          "handwritten digits (upscaled, randomly deformed) with numpyconv's own "
                          "backward passes; write a results table (terminal, Markdown, CSV, JSON), "
                          "trained weights and figures.")
    parser.add_argument('--epochs', type=_positive, default=DEFAULTS['epochs'],
                        help='%(default)s by default')
    parser.add_argument('--width', type=_positive, default=DEFAULTS['width'],
                        help='channels of every block, a multiple of 16 (involution and DCNv3/v4 '
                             'groups of 16 channels); %(default)s by default')
    parser.add_argument('--batch-size', type=_positive, default=DEFAULTS['batch_size'],
                        help='%(default)s by default')
    parser.add_argument('--lr', type=_positive_float, default=DEFAULTS['lr'],
                        help='Adam learning rate, cosine decay to 0 (%(default)s by default)')
    parser.add_argument('--seed', type=int, default=DEFAULTS['seed'],
                        help='first seed: initial weights and the order of the training batches (the '
                             'data set, its deformations and the train/test split are fixed); '
                             '%(default)s by default')
    parser.add_argument('--seeds', type=_positive, default=DEFAULTS['seeds'], metavar='K',
                        help='train every technique K times, with seeds SEED, SEED+1, ..., and report '
                             'the mean, standard deviation and min-max per technique (%(default)s '
                             'by default)')
    parser.add_argument('--out', type=Path, default=Path('demo_output'),
                        help='output folder (%(default)s by default)')
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument('--force', action='store_true',
                          help="start afresh in a non-empty output folder (deletes the demo's own "
                               "files there, nothing else)")
    existing.add_argument('--resume', action='store_true',
                          help='continue an interrupted run in --out, skipping the finished '
                               '(technique, seed) runs')
    parser.add_argument('--limit-train', type=_positive, default=None, metavar='N',
                        help='use only the first N training images (tiny mode for tests)')
    parser.add_argument('--limit-test', type=_positive, default=None, metavar='N',
                        help='use only the first N test images')
    parser.add_argument('--threads', type=_positive, default=DEFAULTS['threads'],
                        help='BLAS and Numba threads (default 1: the per-sample GEMMs are small, and '
                             'one thread is the fastest and steadiest on a busy machine)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    return parser


def main(args):
    """Run the demo for parsed ``args``; returns the exit status."""
    from .run import run
    try:
        return run(args)
    except KeyboardInterrupt:            # raised outside a technique's training (e.g. figures)
        print("\ninterrupted; the results finished so far are in", args.out, file=sys.stderr)
        return 130
