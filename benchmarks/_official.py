"""The PyTorch re-creations of the official modules, from the test suite of this repository.

The benchmarks that compare a layer with its official module load them from ``tests/`` by path (they
live beside the tests that prove them equal to numpyconv); run the benchmarks from a clone of the
repository.
"""
import importlib.util
from pathlib import Path


def load_test_module(name):
    """Import ``tests/<name>.py`` of the repository by path."""
    path = Path(__file__).resolve().parents[1] / 'tests' / f'{name}.py'
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the benchmarks need numpyconv's repository")
    spec = importlib.util.spec_from_file_location(f'_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
