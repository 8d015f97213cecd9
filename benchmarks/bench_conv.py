"""conv2d forward and forward+backward at ResNet shapes: ``numpyconv bench`` as a script.

    python benchmarks/bench_conv.py [--dtype float32|float64|both] [--repeat 5] [--quick]
"""
import sys

from numpyconv.cli import main

if __name__ == '__main__':
    sys.exit(main(['bench'] + sys.argv[1:]))
