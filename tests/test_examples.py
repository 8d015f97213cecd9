"""Every script in examples/ runs as documented: ``python examples/<name>.py`` exits 0.

The scripts are collected with a glob, so an example added to examples/ is run without editing this
file; each runs in its own interpreter (as a reader runs it), with the repository root on PYTHONPATH.
The walk-throughs assert what they print, so a change in numpyconv that breaks one fails here.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / 'examples'
EXAMPLES = sorted(EXAMPLES_DIR.glob('*.py'))
# a cold Numba cache compiles the kernels an example uses on its first run: minutes on a loaded machine
TIMEOUT = 600

# the walk-throughs, one per family, and the derivation pages their docstrings follow
WALKTHROUGHS = {
    'conv_family.py': ['conv.md'],
    'octave.py': ['octave.md'],
    'dynamic_family.py': ['dynamic.md', 'condconv.md', 'odconv.md', 'kernel_warehouse.md'],
    'deformable.py': ['deformable.md'],
    'dcnv3_dcnv4.py': ['dcnv3.md', 'dcnv4.md'],
    'involution.py': ['involution.md'],
}


def _tail(text, lines=40):
    return '\n'.join(text.splitlines()[-lines:])


@pytest.mark.parametrize('path', EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path):
    env = dict(os.environ, MPLBACKEND='Agg')
    inherited = [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + inherited)        # this checkout's numpyconv first
    try:
        done = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f'{path.name} did not finish within {TIMEOUT} s; its output so far:\n'
                    f'{_tail(timeout.stdout or "")}\n{_tail(timeout.stderr or "")}')
    assert done.returncode == 0, (f'{path.name} exited with {done.returncode}\n--- stdout (end) ---\n'
                                  f'{_tail(done.stdout)}\n--- stderr (end) ---\n{_tail(done.stderr)}')
    assert done.stdout.strip(), f'{path.name} printed nothing'


def test_every_example_is_collected():
    """A script in a subfolder of examples/ would escape the glob above: there must be none."""
    everywhere = {p for p in EXAMPLES_DIR.rglob('*.py') if '__pycache__' not in p.parts}
    not_run = sorted(str(p.relative_to(ROOT)) for p in everywhere - set(EXAMPLES))
    assert not not_run, f'not run by test_example_runs (move them to examples/): {not_run}'
    missing = set(WALKTHROUGHS) - {p.name for p in EXAMPLES}
    assert not missing, f'walk-throughs missing from examples/: {sorted(missing)}'


@pytest.mark.parametrize('path', EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_has_docstring_and_valid_links(path):
    """Each script opens with a docstring; every docs/ page it names exists."""
    source = path.read_text(encoding='utf-8')
    assert re.match(r'\s*(#[^\n]*\n\s*)*[rRuU]?("""|\'\'\')', source), f'{path.name} has no module docstring'
    for page in re.findall(r'docs/[\w/.-]+\.md', source):
        assert (ROOT / page).is_file(), f'{path.name} names {page}, which does not exist'


@pytest.mark.parametrize('name, pages', sorted(WALKTHROUGHS.items()))
def test_walkthrough_names_its_derivation(name, pages):
    docstring = re.match(r'\s*"""(.*?)"""', (EXAMPLES_DIR / name).read_text(encoding='utf-8'), re.S).group(1)
    for page in pages:
        assert (ROOT / 'docs' / 'derivations' / page).is_file(), page
        assert page in docstring, f'{name} does not name docs/derivations/{page} in its docstring'
    assert 'docs/derivations/' in docstring
    assert re.search(r'eq\. \d', docstring), f'{name} cites no equation numbers'
