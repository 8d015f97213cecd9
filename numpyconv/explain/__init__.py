"""``numpyconv explain``: each technique's diagram, drawn from numpyconv's own computation.

Every number, arrow and sampling point in a figure is what numpyconv computes on a small real input
(a handwritten digit from the demo data, see :mod:`numpyconv.explain.data`); the parameter and
multiply-add counts come from :func:`numpyconv.count`. The computation of each figure
(:mod:`~numpyconv.explain.data`) is separate from its drawing (:mod:`~numpyconv.explain.figures`,
:mod:`~numpyconv.explain.style`), and the tests check every fact a figure claims.

    >>> from numpyconv.explain import draw
    >>> draw('conv2d', 'explain_output')              # doctest: +SKIP
    ['explain_output/conv2d.png', 'explain_output/conv2d.txt']

Command line: ``numpyconv explain TECHNIQUE [--out DIR] [--seed S] [--gif]`` or
``numpyconv explain --all [--out DIR]``. Drawing needs matplotlib (``pip install 'numpyconv[demo]'``);
importing this package does not.
"""
import argparse
import numbers
import os
import sys

TECHNIQUES = ('conv2d', 'conv2d_backward', 'depthwise', 'pointwise', 'separable', 'octave', 'dynamic',
              'odconv', 'kernel_warehouse', 'deformable', 'involution')
DEFAULT_OUT = 'explain_output'
EXTRA_MESSAGE = "numpyconv explain draws with matplotlib: pip install 'numpyconv[demo]'"


def _check_technique(technique):
    if technique not in TECHNIQUES:
        raise ValueError(f"technique must be one of {', '.join(TECHNIQUES)}; got {technique!r}")
    return technique


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def facts(technique, seed=0):
    """The facts the figure of ``technique`` draws for ``seed``: a dict of arrays and numbers (its
    keys are listed by the function of that name in :mod:`numpyconv.explain.data`)."""
    from . import data
    return data.TECHNIQUES[_check_technique(technique)](_check_seed(seed))


def draw(technique, out_dir, seed=0, gif=False):
    """Draw ``technique``'s figure into ``out_dir``; return the paths written.

    Parameters
    ----------
    technique : str
        One of :data:`TECHNIQUES`.
    out_dir : str or path
        Folder for ``<technique>.png`` and its caption ``<technique>.txt`` (created if missing).
    seed : int
        Chooses the digits, initialises every layer, picks the positions drawn (default 0). The same
        seed gives the same figure.
    gif : bool
        For ``'conv2d'``: also ``conv2d.gif``, the window sliding over every output position.

    Returns
    -------
    list of str
        The paths written: the PNG, the caption, and the GIF if one was drawn.
    """
    from . import captions, figures, style
    _check_technique(technique)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir must be a folder, got the file {os.fspath(out_dir)!r}")
    os.makedirs(out_dir, exist_ok=True)
    known = facts(technique, seed)
    base = os.path.join(os.fspath(out_dir), technique)
    with style.rc_context():
        fig = figures.DRAW[technique](known)
        paths = [style.save(fig, base + '.png')]
        if gif and technique == 'conv2d':
            paths.append(_conv2d_gif(known, base + '.gif'))
    with open(base + '.txt', 'w', encoding='utf-8') as f:
        f.write(captions.caption(technique, known) + '\n')
    paths.insert(1, base + '.txt')
    return paths


def _conv2d_gif(known, path):
    """One frame per output position (the window sliding row by row), 0.7 s each, looping."""
    from PIL import Image

    from . import data, figures
    no_dither = getattr(Image, 'Dither', Image).NONE                     # Pillow < 9.1: Image.NONE
    frames = [Image.fromarray(rgba).convert('RGB').quantize(colors=128, dither=no_dither)
              for rgba in figures.conv2d_gif_frames(known, data.conv2d_frames(known))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=700, loop=0, optimize=False)
    return path


# -- command line ---------------------------------------------------------------------------------------
def add_arguments(parser):
    """Add the ``explain`` arguments to an ``argparse`` (sub)parser."""
    parser.description = ("Draw each convolution technique's diagram from numpyconv's own computation on a "
                          "small real input; write <technique>.png and its caption <technique>.txt.")
    parser.add_argument('technique', nargs='?', choices=TECHNIQUES, metavar='TECHNIQUE',
                        help=f"one of: {', '.join(TECHNIQUES)}")
    parser.add_argument('--all', action='store_true', help='every technique')
    parser.add_argument('--out', default=DEFAULT_OUT, help='output folder (%(default)s by default)')
    parser.add_argument('--seed', type=_seed_argument, default=0,
                        help='digits, layer initialisation, positions drawn (%(default)s by default)')
    parser.add_argument('--gif', action='store_true',
                        help='conv2d: also an animated GIF of the sliding window')
    return parser


def _seed_argument(text):
    try:
        return _check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None


def main(args):
    """Run ``numpyconv explain`` for parsed ``args``; returns the exit status."""
    if args.all == (args.technique is not None):
        print("numpyconv explain: give one TECHNIQUE or --all", file=sys.stderr)
        return 2
    if args.gif and args.technique not in (None, 'conv2d'):
        print(f"numpyconv explain: --gif draws conv2d's sliding window only, not {args.technique}",
              file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as exc:
        print(f"{EXTRA_MESSAGE} ({exc})", file=sys.stderr)
        return 1
    for technique in TECHNIQUES if args.all else (args.technique,):
        try:
            paths = draw(technique, args.out, seed=args.seed, gif=args.gif)
        except (ValueError, OSError) as exc:
            print(f"numpyconv explain: error: {exc}", file=sys.stderr)
            return 1
        with open(paths[1], encoding='utf-8') as f:
            print(f.read().rstrip())
        print('  wrote ' + ', '.join(paths) + '\n')
    return 0
