"""``numpyconv`` command line: ``demo``, ``check``, ``bench``, ``inspect``, ``predict``, ``conform``,
``explain``."""
import argparse
import sys


def _int_argument(low):
    """An argparse type: an int >= ``low``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    return parse


def _check(args):
    from . import check
    try:
        check.check_names(args.ops)
    except ValueError as exc:
        print(f"numpyconv check: error: {exc}", file=sys.stderr)
        return 2
    rows = check.run_all(args.ops or None, seed=args.seed)
    failed = [r['op'] for r in rows if not r['ok']]
    summary = f"\n{len(rows) - len(failed)}/{len(rows)} ops pass"
    print(summary + (f"; FAILED: {', '.join(failed)}" if failed else ''))
    return 1 if failed else 0


def _bench(args):
    from . import bench
    return bench.main(args)


def _demo(args):
    from . import demo
    return demo.main(args)


def _inspect(args):
    from . import inspection
    return inspection.main(args)


def _explain(args):
    from . import explain
    return explain.main(args)


def _conform(args):
    from .testing import command
    return command.run(args)


def _predict(args):
    from . import predict
    return predict.main(args)


def build_parser():
    parser = argparse.ArgumentParser(prog='numpyconv', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)

    check = sub.add_parser('check', help='gradient-check and self-test every registered op')
    check.add_argument('ops', nargs='*', help='ops to check (default: all)')
    check.add_argument('--seed', type=_int_argument(0), default=0)
    check.set_defaults(run=_check)

    bench = sub.add_parser('bench', help="speed against the machine's GEMM peak and, if installed, PyTorch")
    bench.add_argument('--dtype', choices=['float32', 'float64', 'both'], default='both')
    bench.add_argument('--repeat', type=_int_argument(1), default=5,
                       help='timed repetitions (best is reported)')
    bench.add_argument('--quick', action='store_true', help='smaller batch, for a smoke run')
    bench.set_defaults(run=_bench)

    inspect = sub.add_parser('inspect', help="a checkpoint's tensors by module, and the numpyconv layer each "
                                             "module matches (no code from the file is run)")
    from .inspection import add_arguments as inspect_arguments
    inspect_arguments(inspect)
    inspect.set_defaults(run=_inspect)

    conform = sub.add_parser('conform', help="check another implementation of an op (your kernel) against "
                                             "numpyconv's: edge and random cases, shrunk reproducers")
    from .testing.command import add_arguments as add_conform_arguments
    add_conform_arguments(conform)
    conform.set_defaults(run=_conform)

    predict = sub.add_parser('predict', help="top-5 ImageNet classes of images with a network of "
                                             "numpyconv.models and its checkpoint")
    from .predict import add_arguments as predict_arguments
    predict_arguments(predict)
    predict.set_defaults(run=_predict)

    demo = sub.add_parser('demo', help='train and compare every technique on real handwritten digits')
    try:
        from .demo import add_arguments
    except ImportError as exc:  # the demo extra (scikit-learn, matplotlib) is not installed
        message = f"numpyconv demo needs the demo extra: pip install 'numpyconv[demo]' ({exc})"
        demo.set_defaults(run=lambda args: sys.exit(message))
    else:
        add_arguments(demo)
        demo.set_defaults(run=_demo)

    from .explain import add_arguments as explain_arguments       # imports no matplotlib
    explain = sub.add_parser('explain', help="draw a technique's diagram from numpyconv's own computation")
    explain_arguments(explain).set_defaults(run=_explain)
    return parser


def main(argv=None):
    """Run one command; a file that cannot be read or written ends it with one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except OSError as exc:
        print(f"numpyconv {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
