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
