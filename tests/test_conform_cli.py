"""``numpyconv conform``: exit codes, the same report with --jobs 2 as with --jobs 1, reproducers,
clear errors for a candidate that cannot be imported, the progress bar without tqdm."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from numpyconv.cli import main
from numpyconv.testing import command

ROOT = Path(__file__).resolve().parents[1]
OWN = 'numpyconv.testing.own'
KERNELS = '''
import numpy as np
import numpyconv


def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d with an off-by-one: one row too many at the top whenever there is padding."""
    if padding not in (0, (0, 0), 'valid'):
        x = np.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]
    return numpyconv.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)[0]


not_a_function = 3
'''


@pytest.fixture
def kernels(tmp_path, monkeypatch):
    """A directory holding ``my_kernels.py`` (a conv2d with a planted bug), made the current one."""
    (tmp_path / 'my_kernels.py').write_text(KERNELS)
    (tmp_path / 'broken_kernels.py').write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ('my_kernels', 'broken_kernels'):
        sys.modules.pop(name, None)


def run_cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, '-m', 'numpyconv', 'conform', *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_conforming_candidate_exits_0(capsys):
    code = main(['conform', 'deform_conv2d', f'{OWN}:deform_conv2d',
                 '--backward', f'{OWN}:deform_conv2d_backward', '--cases', '40', '--quiet'])
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert 'PASSED: all 40 cases conform' in captured.out and 'reproducer' not in captured.out
    assert '40 cases in' in captured.err


def test_mismatch_exits_1_with_the_report_and_reproducers(kernels, capsys):
    code = main(['conform', 'conv2d', 'my_kernels:conv', '--cases', '30', '--quiet',
                 '--reproducers', 'repro'])
    out = capsys.readouterr().out
    assert code == 1
    assert 'FAILED' in out and 'out differs' in out and '# ---- reproducer of failure 1 ----' in out
    script = kernels / 'repro' / 'conv2d_failure_1.py'
    assert 'from my_kernels import conv as forward' in script.read_text()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(script)], cwd='/', env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0 and 'the candidate disagrees with numpyconv' in run.stderr, run.stderr


def test_jobs_2_gives_the_report_of_jobs_1(kernels):
    one = run_cli(['conv2d', 'my_kernels:conv', '--cases', '60', '--jobs', '1'], kernels)
    two = run_cli(['conv2d', 'my_kernels:conv', '--cases', '60', '--jobs', '2'], kernels)
    assert one.returncode == two.returncode == 1, two.stderr
    assert 'FAILED' in one.stdout and one.stdout == two.stdout
    assert '60 cases in' in two.stderr and 'with 2 job(s)' in two.stderr


def test_jobs_2_deform_conv2d_forward_and_backward_conform():
    """The performance run of docs/conformance.md with fewer cases (numpyconv's op as the candidate)."""
    run = run_cli(['deform_conv2d', f'{OWN}:deform_conv2d', '--backward', f'{OWN}:deform_conv2d_backward',
                   '--cases', '120', '--jobs', '2'], ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'PASSED: all 120 cases conform' in run.stdout


def test_float32_and_options(kernels, capsys):
    code = main(['conform', 'conv2d', 'my_kernels:conv', '--cases', '20', '--dtype', 'float32', '--seed', '5',
                 '--no-shrink', '--no-edge-cases', '--rtol', '1e-3', '--quiet'])
    out = capsys.readouterr().out
    assert code == 1
    assert 'conv2d (float32' in out and 'seed 5' in out and '0 edge, 20 random' in out and '0.001' in out
    assert 'shrunk in' not in out


@pytest.mark.parametrize('args, message', [
    (['conv2d', 'no_such_module:conv'], "cannot import module 'no_such_module'"),
    (['conv2d', 'my_kernels:no_such_function'], "module 'my_kernels' has no attribute 'no_such_function'"),
    (['conv2d', 'my_kernels'], 'must be given as module:function'),
    (['conv2d', 'my_kernels:not_a_function'], 'is not callable'),
    (['conv2d', 'broken_kernels:conv'], "importing module 'broken_kernels'"),
    (['conv2d', 'my_kernels:conv', '--backward', 'my_kernels:nope'], "has no attribute 'nope'"),
    (['conv3d', 'my_kernels:conv'], "unknown op 'conv3d'"),
    (['conv2d', 'my_kernels:conv', '--jobs', '0'], '--jobs must be >= 1'),
    (['conv2d', 'my_kernels:conv', '--cases', '-3'], '--cases must be >= 0'),
])
def test_usage_errors_exit_2_with_one_clear_line(kernels, capsys, args, message):
    assert main(['conform', *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith('numpyconv conform: error:') and 'Traceback' not in err


def test_text_progress_bar_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'tqdm', None)
    bar = command.progress_bar(4, 'conform conv2d')
    assert isinstance(bar, command.TextBar)
    for _ in range(4):
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert err.rstrip().endswith('conform conv2d [' + '#' * 30 + '] 4/4')
