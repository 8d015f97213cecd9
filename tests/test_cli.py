"""The command line: ``numpyconv check`` and ``numpyconv bench``."""
import io

import numpy as np
import pytest

from numpyconv import check, cli, selftest_cases
from numpyconv.selftest_cases import CheckCase, register


def test_check_runs_every_registered_op_and_passes(capsys):
    assert cli.main(['check']) == 0
    out = capsys.readouterr().out
    for name in check.registered():
        assert name in out
    assert 'FAIL' not in out and f"{len(check.registered())}/{len(check.registered())} ops pass" in out


def test_check_reports_a_wrong_backward():
    def wrong_backward(dout, cache):
        return (2 * dout,)                      # d(x^2)/dx is 2x, not 2

    register('_square_wrong')(lambda rng: CheckCase(lambda x: (x * x, x), wrong_backward,
                                                    (rng.standard_normal(5),), lambda x: x * x))
    try:
        stream = io.StringIO()
        rows = check.run_all(['_square_wrong'], stream=stream)
        assert not rows[0]['ok'] and 'FAIL' in stream.getvalue()
    finally:
        selftest_cases._OP_CASES.pop('_square_wrong')


def test_check_unknown_op():
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        check.run_all(['nope'], stream=io.StringIO())


def test_bench_quick_smoke(capsys, monkeypatch):
    from numpyconv import bench
    monkeypatch.setattr(bench, 'RESNET_LAYERS', [(1, 4, 4, 8, 8, 3)])
    monkeypatch.setattr(bench, 'gemm_peak', lambda dtype: 1e9)
    assert cli.main(['bench', '--dtype', 'float32', '--repeat', '1', '--quick']) == 0
    assert '| N=2 4->4 8x8 3x3 | float32 |' in capsys.readouterr().out
    assert np.isfinite(1.0)


def test_demo_without_the_demo_extra_says_what_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'numpyconv.demo', None)      # import fails like a missing extra
    with pytest.raises(SystemExit, match=r"needs the demo extra: pip install 'numpyconv\[demo\]'"):
        cli.main(['demo'])


@pytest.mark.parametrize('argv, message', [
    (['check', 'no_such_op'], "numpyconv check: error: unknown op 'no_such_op'"),
    (['explain', 'pointwise', '--gif'], "--gif draws conv2d's sliding window only"),
])
def test_command_misuse_ends_in_one_line_on_stderr(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err


@pytest.mark.parametrize('argv', [['check', '--seed', '-1'], ['bench', '--repeat', '0'],
                                  ['bench', '--repeat', 'x']])
def test_integer_options_out_of_range_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and 'must be an integer >=' in capsys.readouterr().err


def test_a_file_where_a_folder_is_expected_is_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / 'taken'
    a_file.write_text('')
    assert cli.main(['explain', 'conv2d', '--out', str(a_file)]) == 1
    assert 'out_dir must be a folder, got the file' in capsys.readouterr().err
    assert cli.main(['conform', 'conv2d', 'numpy:add', '--reproducers', str(a_file), '--cases', '1']) == 2
    assert '--reproducers must be a folder' in capsys.readouterr().err
    with pytest.raises(SystemExit, match='is a folder, not a file'):
        cli.main(['predict', 'resnet18', str(a_file), str(tmp_path)])
