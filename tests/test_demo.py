"""``numpyconv demo``: data, template network, training, output folder, figures.

The model-level tests need no demo extra (seven-segment digits from ``data.segment_digits``
stand in for scikit-learn's digits); the end-to-end runs skip without scikit-learn/matplotlib.
"""
import argparse
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

import numpyconv as nc
from numpyconv.demo import add_arguments, data, models, technique_list
from numpyconv.demo.models import TECHNIQUES, build_model
from numpyconv.demo.train import train_step

ALL = list(TECHNIQUES)


def segments(n=64, seed=1):
    return data.segment_digits(n, seed)


# -- the package imports without the demo extra -------------------------------------------------------
def test_importing_the_demo_pulls_in_no_demo_extra():
    code = ("import sys, argparse, numpyconv.demo as d, numpyconv.demo.run;"
            "d.add_arguments(argparse.ArgumentParser()).parse_args([]);"
            "print(sorted(m for m in ('sklearn', 'matplotlib', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'


def test_arguments_and_technique_list():
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(['--techniques', 'odconv,conv,odconv', '--limit-train', '8'])
    assert args.techniques == ['odconv', 'conv'] and args.limit_train == 8
    assert parser.parse_args([]).techniques == ALL
    assert technique_list('all') == ALL
    with pytest.raises(argparse.ArgumentTypeError, match="unknown technique.*nope.*choose from"):
        technique_list('conv,nope')
    with pytest.raises(SystemExit):
        parser.parse_args(['--force', '--resume'])


# -- data -----------------------------------------------------------------------------------------------
def test_segment_digits_are_deterministic_and_standardised():
    x, y = segments(30, seed=3)
    assert x.shape == (30, 1, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    assert sorted(set(y.tolist())) == list(range(10))
    assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-4
    np.testing.assert_array_equal(x, segments(30, seed=3)[0])
    assert not np.array_equal(x, segments(30, seed=4)[0])


def test_deform_keeps_range_and_moves_the_digit():
    square = np.zeros((1, 8, 8))
    square[0, 2:6, 2:6] = 1.0
    plain = data.deform(square, 0, dict(rotation=0.0, scale=(1.0, 1.0), shear=0.0, shift=0.0))[0]
    rows, cols = np.nonzero(plain > 0.5)
    assert plain.min() >= 0 and plain.max() <= 1
    assert abs(rows.mean() - 15.5) < 0.5 and abs(cols.mean() - 15.5) < 0.5     # centred
    assert 12 <= rows.max() - rows.min() + 1 <= 16                               # 4 px * 3.5
    moved = data.deform(square, 0)[0]
    assert not np.allclose(moved, plain)


def test_stratified_split_is_fixed_disjoint_and_balanced():
    labels = np.repeat(np.arange(10), 20)
    train, test = data.stratified_split(labels, 0.25, seed=7)
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == 200
    assert np.all(np.bincount(labels[test]) == 5)
    np.testing.assert_array_equal(test, data.stratified_split(labels, 0.25, seed=7)[1])


def test_make_dataset_standardises_with_training_statistics():
    images = np.random.default_rng(0).random((40, 8, 8))
    ds = data.make_dataset(images, np.arange(40) % 10, seed=1)
    assert ds.x_train.shape == (30, 1, 32, 32) and ds.x_test.shape == (10, 1, 32, 32)
    assert abs(ds.x_train.mean()) < 1e-5 and abs(ds.x_train.std() - 1) < 1e-4
    small = data.limit(ds, 5, 3)
    assert len(small.x_train) == len(small.y_train) == 5 and len(small.x_test) == 3


# -- the template network ---------------------------------------------------------------------------
def test_every_technique_builds_counts_and_keeps_float32():
    x, _ = segments(4)
    for name in ALL:
        model = build_model(name, 16, seed=0)
        params, macs = nc.count(model, (1, 1, 32, 32))
        assert params == sum(v.size for v in model.params.values()) and macs > 0
        out = model(x)
        assert out.shape == (4, 10) and out.dtype == np.float32


def test_conv_network_count_by_hand():
    model = build_model('conv', 16)
    stem, block1, block2, head = 16 * 16 * 16 * 9, 16 * 16 * 16 * 16 * 9, 8 * 8 * 16 * 16 * 9, 16 * 10
    params = 16 * 9 + 2 * 16 * 16 * 9 + 3 * 2 * 16 + 16 * 10 + 10
    assert nc.count(model, (1, 1, 32, 32)) == (params, stem + block1 + block2 + head)
    assert nc.count(model, (3, 1, 32, 32))[1] == 3 * (stem + block1 + block2 + head)


def test_unknown_technique():
    with pytest.raises(ValueError, match="technique must be one of conv, separable.*got 'nope'"):
        build_model('nope')


@pytest.mark.parametrize('name', ['conv', 'octave', 'involution', 'kw'])
def test_network_gradients_are_right(name):
    """The demo's own composite blocks (residual, octave pairs, warehouse as a child) backprop right."""
    model = build_model(name, 16, seed=2, dtype=np.float64)
    x = segments(3)[0][:, :, ::2, ::2].astype(np.float64)                    # (3, 1, 16, 16)
    report = nc.gradcheck_layer(model, x, mode='random', seed=1)
    assert report.ok


@pytest.mark.parametrize('name', ALL)
def test_each_technique_overfits_a_fixed_batch(name):
    """64 fixed images to >= 95% training accuracy within 120 Adam steps, our backward only
    (every technique needs 15-60 steps with seeds 0-2: a two-fold margin)."""
    x, y = segments(64)
    model = build_model(name, 16, seed=0)
    optimizer = nc.Adam(model, lr=1e-2)
    steps = 120
    for step in range(steps):
        model.schedule(step, steps)
        _, correct = train_step(model, optimizer, x, y)
        if correct >= 0.95 * len(y):
            break
    assert correct >= 0.95 * len(y), f"{name}: {correct}/64 after {steps} steps"


# -- temperature schedules ----------------------------------------------------------------------------
def test_schedules_follow_the_official_shapes_scaled_to_the_run():
    total = 1000                                                             # 100 official epochs
    assert models.dynamic_schedule(0, total) == 34 and models.dynamic_schedule(10, total) == 31
    assert models.dynamic_schedule(109, total) == 4 and models.dynamic_schedule(110, total) == 1
    assert models.odconv_schedule(0, total) == pytest.approx(1 + 29 * 99 / 100)
    assert models.odconv_schedule(49, total) == pytest.approx(15.5)
    assert models.odconv_schedule(99, total) == 1 and models.odconv_schedule(500, total) == 1
    assert models.kw_schedule(99, total) == pytest.approx(0.5) and models.kw_schedule(199, total) == 0


@pytest.mark.parametrize('name, attribute, start, end', [
    ('dynamic', 'temperature', 34, 1), ('odconv', 'temperature', 30 - 29 / 10, 1),
    ('kw', 'temperature', 1 - 1 / 20, 0)])
def test_model_schedule_sets_both_layers(name, attribute, start, end):
    model = build_model(name, 16)
    model.schedule(0, 100)
    assert [getattr(layer, attribute) for layer in model.technique_layers()] == [pytest.approx(start)] * 2
    model.finish_schedule()
    assert [getattr(layer, attribute) for layer in model.technique_layers()] == [end] * 2


# -- what the figures read ----------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['dcnv1', 'dcnv2', 'dcnv3', 'dcnv4'])
def test_sampling_locations_start_on_the_regular_window_and_follow_offsets(name):
    model = build_model(name, 16, seed=0).eval()
    layer = model.technique_layers()[1]
    x = segments(2)[0]
    model(x)
    locations, weights = models.sampling_locations(layer)
    assert locations.shape == (2, 8, 8, 1, 9, 2) and weights.shape == (2, 8, 8, 1, 9)
    window = {(r, c) for r in (2, 3, 4) for c in (4, 5, 6)}
    assert {tuple(p) for p in locations[1, 3, 5, 0]} == window                # zero-initialised offsets
    shift = np.array([0.25, -0.5])                                           # (row, col)
    if name in ('dcnv1', 'dcnv2'):
        bias = layer.conv_offset.params['bias']
        bias[:18].reshape(-1, 2)[:] = shift                                  # (dy, dx) pairs
    else:
        linear = layer.offset if name == 'dcnv3' else layer.offset_mask
        bias = linear.params['bias']
        (bias.reshape(-1, 2) if name == 'dcnv3' else bias[:18].reshape(-1, 2))[:] = shift[::-1]  # (dx, dy)
    model(x)
    moved = models.sampling_locations(layer)[0]
    np.testing.assert_allclose(moved - locations, np.broadcast_to(shift, locations.shape), atol=1e-6)


@pytest.mark.parametrize('name', ['dynamic', 'condconv', 'odconv'])
def test_kernel_attention_has_one_weight_per_kernel_and_sample(name):
    model = build_model(name, 16, seed=0)
    model.finish_schedule()
    model.eval()(segments(5)[0])
    for layer in model.technique_layers():
        attention = models.kernel_attention(layer)
        assert attention.shape == (5, 4) and np.all(attention > 0)
        if name != 'condconv':                                               # softmax over kernels
            np.testing.assert_allclose(attention.sum(axis=1), 1, rtol=1e-5)


def test_involution_kernels_shape():
    model = build_model('involution', 32, seed=0).eval()
    model(segments(2)[0])
    kernels = models.involution_kernels(model.technique_layers()[0])
    assert kernels.shape == (2, 2, 3, 3, 16, 16)


# -- saving and loading ---------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ALL)
def test_saved_model_reloads_to_identical_predictions(name, tmp_path):
    from numpyconv.demo.run import load_model, save_model
    x, y = segments(16)
    model = build_model(name, 16, seed=5)
    optimizer = nc.Adam(model, lr=1e-2)
    for step in range(2):
        model.schedule(step, 2)
        train_step(model, optimizer, x, y)
    model.finish_schedule()
    save_model(model, tmp_path / 'm.npz')
    loaded = load_model(tmp_path / 'm.npz', name, 16)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.state_dict().keys() == model.state_dict().keys()


# -- the output folder ------------------------------------------------------------------------------
def _settings(**changes):
    return dict(dict(epochs=1, width=16, batch_size=32, lr=0.01, seed=0, limit_train=None,
                     limit_test=None, techniques=['conv']), **changes)


def test_refuses_a_non_empty_output_folder_without_force(tmp_path):
    from numpyconv.demo.run import DemoError, prepare_output
    (tmp_path / 'notes.txt').write_text('mine')
    with pytest.raises(DemoError, match=r"output folder .* is not empty; pass --force"):
        prepare_output(tmp_path, _settings(), force=False, resume=False)
    assert (tmp_path / 'notes.txt').read_text() == 'mine'
    assert not (tmp_path / 'config.json').exists()


def test_force_deletes_only_the_demos_own_files(tmp_path):
    from numpyconv.demo.run import prepare_output
    prepare_output(tmp_path / 'new' / 'out', _settings(), force=False, resume=False)   # created
    assert (tmp_path / 'new' / 'out' / 'models').is_dir()
    (tmp_path / 'notes.txt').write_text('mine')
    (tmp_path / 'results.csv').write_text('old')
    (tmp_path / 'figures').mkdir()
    (tmp_path / 'figures' / 'results.png').write_bytes(b'old')
    assert prepare_output(tmp_path, _settings(), force=True, resume=False) == []
    assert (tmp_path / 'notes.txt').exists() and not (tmp_path / 'results.csv').exists()
    assert not (tmp_path / 'figures' / 'results.png').exists()
    assert json.loads((tmp_path / 'config.json').read_text())['epochs'] == 1


def test_resume_needs_the_same_settings(tmp_path):
    from numpyconv.demo.run import DemoError, prepare_output
    with pytest.raises(DemoError, match="nothing to resume"):
        prepare_output(tmp_path, _settings(), force=False, resume=True)
    prepare_output(tmp_path, _settings(), force=False, resume=False)
    with pytest.raises(DemoError, match="epochs was 1, now 3"):
        prepare_output(tmp_path, _settings(epochs=3), force=False, resume=True)
    assert prepare_output(tmp_path, _settings(techniques=['odconv']), force=False, resume=True) == []


# -- end to end (needs the demo extra) ----------------------------------------------------------------
@pytest.fixture
def demo_extra():
    pytest.importorskip('sklearn')
    pytest.importorskip('matplotlib')


def _demo(out, *options):
    from numpyconv import cli
    return cli.main(['demo', '--out', str(out), '--epochs', '1', '--width', '16', '--no-progress',
                     *options])


def _csv_techniques(out):
    with open(out / 'results.csv') as f:
        return [row['technique'] for row in csv.DictReader(f)]


def test_demo_smoke_writes_table_csv_models_and_figures(demo_extra, tmp_path, capsys):
    names = ['conv', 'octave', 'dynamic', 'odconv', 'dcnv1', 'dcnv3', 'involution']
    status = _demo(tmp_path, '--techniques', ','.join(names), '--limit-train', '24',
                   '--limit-test', '20')
    assert status == 0
    out = capsys.readouterr().out
    assert '| Technique | Params | MACs / image | Time / epoch (s) |' in out and 'Octave' in out
    assert _csv_techniques(tmp_path) == names
    assert '| DCNv3 |' in (tmp_path / 'results.md').read_text()
    for name in ['results', 'training_curves', 'deformable_sampling', 'involution_kernels',
                 'octave_maps', 'kernel_attention']:
        assert (tmp_path / 'figures' / f'{name}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert sorted(p.stem for p in (tmp_path / 'models').glob('*.npz')) == sorted(names)
    assert _demo(tmp_path, '--techniques', 'conv') == 2                     # now non-empty
    assert 'is not empty; pass --force' in capsys.readouterr().err


def test_interrupted_demo_keeps_finished_results_and_resumes(demo_extra, tmp_path, monkeypatch, capsys):
    from numpyconv.demo import run
    x, y = segments(40)
    monkeypatch.setattr(run, 'load_digits_dataset', lambda: data.Dataset(x[:30], y[:30], x[30:], y[30:]))
    real_train = run.train_technique

    def interrupted_on_second(technique, *args, **kwargs):
        if technique == 'separable':
            raise KeyboardInterrupt
        return real_train(technique, *args, **kwargs)

    monkeypatch.setattr(run, 'train_technique', interrupted_on_second)
    assert _demo(tmp_path, '--techniques', 'conv,separable') == 130
    assert _csv_techniques(tmp_path) == ['conv']
    assert 'interrupted during Depthwise-separable' in capsys.readouterr().err
    monkeypatch.setattr(run, 'train_technique', real_train)
    assert _demo(tmp_path, '--techniques', 'conv,separable', '--resume') == 0
    assert _csv_techniques(tmp_path) == ['conv', 'separable']
    assert len(json.loads((tmp_path / 'results.json').read_text())) == 2
