"""The README's tour runs as written: every ```python block, in order, in one namespace.

The tour names a checkpoint file (``od_resnet18_4x.pth``) and a port under test (``my_conv2d``); the
test provides both: the checkpoint is an OD-ResNet-18 4x with random weights, written in PyTorch's
zip format by ``numpyconv.save_checkpoint``, and the port is numpyconv's own conv2d pair, called as
the reference loops are.
"""
import pathlib
import re

import numpy as np

import numpyconv as nc
import numpyconv.testing

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def python_blocks(text):
    return re.findall(r'```python\n(.*?)```', text, flags=re.S)


def my_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return nc.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)[0]


def my_conv2d_backward(dout, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return nc.conv2d_backward(dout, nc.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)[1])


def test_readme_has_the_two_setup_commands_and_stays_short():
    text = README.read_text()
    assert "pip install -q -e '.[demo]' && .venv/bin/numpyconv demo" in text
    assert "pip install -q -e '.[test]' && .venv/bin/python -m pytest -q" in text
    assert len(text.splitlines()) <= 155


def test_readme_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = nc.models.od_resnet18(kernel_num=4, rng=0)
    nc.save_checkpoint({'state_dict': model.state_dict(), 'epoch': 100}, 'od_resnet18_4x.pth')
    namespace = {'my_conv2d': my_conv2d, 'my_conv2d_backward': my_conv2d_backward}
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3
    for block in blocks:
        exec(compile(block, str(README), 'exec'), namespace)
    assert namespace['report'].ok
    assert namespace['logits'].shape == (1, 1000) and namespace['logits'].dtype == np.float32
    layer = namespace['layer']
    np.testing.assert_array_equal(layer.params['weight'], model.state_dict()['layer1.0.conv2.weight'])


def test_readme_tour_fails_on_a_wrong_port():
    """The conformance line of the tour reports a port that is off by a sign."""
    def wrong(x, weight, bias=None, **kwargs):
        return -my_conv2d(x, weight, bias, **kwargs)

    report = numpyconv.testing.check_against('conv2d', wrong, cases=5, shrink=False)
    assert not report.ok
