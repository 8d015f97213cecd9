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
    args = parser.parse_args(['--techniques', 'odconv,conv,odconv', '--limit-train', '8', '--seeds', '3'])
    assert args.techniques == ['odconv', 'conv'] and args.limit_train == 8 and args.seeds == 3
    defaults = parser.parse_args([])
    assert defaults.techniques == ALL and defaults.seeds == 1 and defaults.seed == 0
    assert technique_list('all') == ALL
    with pytest.raises(argparse.ArgumentTypeError, match="unknown technique.*nope.*choose from"):
        technique_list('conv,nope')
    with pytest.raises(SystemExit):
        parser.parse_args(['--force', '--resume'])
    with pytest.raises(SystemExit):
        parser.parse_args(['--seeds', '0'])


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
    """64 fixed 16x16 images to >= 95% training accuracy within 80 Adam steps, our backward only
    (every technique needs 12-41 steps with seeds 0-2: a two-fold margin)."""
    x, y = segments(64)
    x = np.ascontiguousarray(x[:, :, ::2, ::2])                                 # (64, 1, 16, 16)
    model = build_model(name, 16, seed=0)
    optimizer = nc.Adam(model, lr=1e-2)
    steps = 80
    for step in range(steps):
        model.schedule(step, steps)
        _, correct = train_step(model, optimizer, x, y)
        if correct >= 0.95 * len(y):
            break
    assert correct >= 0.95 * len(y), f"{name}: {correct}/64 after {steps} steps"


# -- temperature schedules ----------------------------------------------------------------------------
def test_schedules_follow_the_official_runs_scaled_to_ours():
    total = 1600                                     # DY-CNN: 160 official epochs of 10 steps
    assert models.dynamic_schedule(0, total) == 34 and models.dynamic_schedule(10, total) == 31
    assert models.dynamic_schedule(109, total) == 4 and models.dynamic_schedule(110, total) == 1
    total = 1000                                     # ODConv: 100 official epochs, 10 annealed
    assert models.odconv_schedule(0, total) == pytest.approx(1 + 29 * 99 / 100)
    assert models.odconv_schedule(49, total) == pytest.approx(15.5)
    assert models.odconv_schedule(99, total) == 1 and models.odconv_schedule(500, total) == 1
    total = 3000                                     # KernelWarehouse: 300 official epochs, 20 annealed
    assert models.kw_schedule(99, total) == pytest.approx(0.5) and models.kw_schedule(199, total) == 0


@pytest.mark.parametrize('name, attribute, start, end', [
    ('dynamic', 'temperature', 34, 1), ('odconv', 'temperature', 30 - 29 / 10, 1),
    ('kw', 'temperature', 1 - 1 / round(100 * 20 / 300), 0)])
def test_model_schedule_sets_both_layers(name, attribute, start, end):
    model = build_model(name, 16)
    model.schedule(0, 100)
    assert [getattr(layer, attribute) for layer in model.technique_layers()] == [pytest.approx(start)] * 2
    model.finish_schedule()
    assert [getattr(layer, attribute) for layer in model.technique_layers()] == [end] * 2


# -- what the figures read ----------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['dcnv1', 'dcnv2', 'dcnv3', 'dcnv4'])
def test_sampling_points_start_on_the_regular_window_and_follow_offsets(name):
    from numpyconv.demo.figures import sampling_points
    model = build_model(name, 16, seed=0)
    x = segments(2)[0]
    (loc1, w1), (locations, weights) = sampling_points(model, x)
    assert loc1.shape == (2, 16, 16, 1, 9, 2) and w1.shape == (2, 16, 16, 1, 9)
    assert locations.shape == (2, 8, 8, 1, 9, 2) and weights.shape == (2, 8, 8, 1, 9)
    window = [(c, r) for r in (2, 3, 4) for c in (4, 5, 6)]                 # (x, y), row-major points
    # zero-initialised offsets; DCNv3/DCNv4 round their grid to float32 as the official core (< 1e-6 px)
    np.testing.assert_allclose(locations[1, 3, 5, 0], window, rtol=0, atol=1e-5)
    shift = np.array([-0.5, 0.25])                                           # (x, y)
    layer = model.technique_layers()[1]
    if name in ('dcnv1', 'dcnv2'):
        layer.conv_offset.params['bias'][:18].reshape(-1, 2)[:] = shift[::-1]   # (dy, dx) pairs
    else:
        bias = (layer.offset if name == 'dcnv3' else layer.offset_mask).params['bias']
        (bias.reshape(-1, 2) if name == 'dcnv3' else bias[:18].reshape(-1, 2))[:] = shift  # (dx, dy)
    moved, _ = sampling_points(model, x)[1]
    np.testing.assert_allclose(moved - locations, np.broadcast_to(shift, locations.shape), atol=1e-6)
    np.testing.assert_array_equal(sampling_points(model, x)[0][0], loc1)    # block1 untouched


def test_sampling_points_are_the_public_sampling_locations_of_the_block_input():
    import numpyconv
    from numpyconv.demo.figures import sampling_points
    model = build_model('dcnv2', 16, seed=1)
    layer = model.technique_layers()[0]
    rng = np.random.default_rng(0)
    for p in layer.conv_offset.params.values():
        p[:] = rng.normal(0, 0.1, p.shape)
    x = segments(3)[0]
    locations, weights = sampling_points(model, x)[0]
    assert model.training                                                    # mode restored
    model.eval()
    inp = model.stem(x)
    out = layer.conv_offset(inp)
    mask = 1 / (1 + np.exp(-out[:, 18:]))
    expected = numpyconv.sampling_locations('deform_conv2d', inp, out[:, :18], layer.params['weight'],
                                            None, 1, 1, 1, mask=mask)
    np.testing.assert_allclose(locations, expected[0], atol=1e-5)
    np.testing.assert_allclose(weights, expected[1], atol=1e-6)
    regular = sampling_points(build_model('dcnv2', 16, seed=1), x)[0][0]
    assert np.abs(locations - regular).max() > 0.1                           # the offsets moved them


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
    (tmp_path / 'results.json').write_text('[]')
    with pytest.raises(DemoError, match="does not hold this demo's runs"):
        prepare_output(tmp_path, _settings(), force=False, resume=True)


# -- several seeds: summary and tables --------------------------------------------------------------
def _run(technique, seed, test_acc, train_acc=0.9, seconds=1.0):
    history = [dict(epoch=1, train_loss=1.0, train_acc=train_acc, test_loss=0.5, test_acc=test_acc,
                    seconds=seconds)]
    return dict(technique=technique, label=models.technique_label(technique), seed=seed, params=10,
                macs=2_000_000, seconds_per_epoch=seconds, train_acc=train_acc, test_acc=test_acc,
                test_loss=0.5, history=history)


def test_spread_is_mean_sample_std_and_range():
    from numpyconv.demo.run import spread
    values = [0.91, 0.95, 0.86]
    stats = spread(values)
    assert stats['mean'] == pytest.approx(np.mean(values)) and stats['values'] == values
    assert stats['std'] == pytest.approx(np.std(values, ddof=1))
    assert (stats['min'], stats['max']) == (0.86, 0.95)
    assert spread([0.5])['std'] is None


def test_summary_groups_runs_by_technique_in_table_order():
    from numpyconv.demo.run import summarise
    runs = [_run('odconv', 1, 0.80), _run('conv', 0, 0.97), _run('odconv', 0, 0.90), _run('conv', 1, 0.95)]
    summary = summarise(runs)
    assert [r['technique'] for r in summary] == ['conv', 'odconv']
    assert summary[1]['seeds'] == [0, 1] and summary[1]['test_acc']['values'] == [0.90, 0.80]
    assert summary[1]['test_acc']['mean'] == pytest.approx(0.85)


def test_tables_show_mean_std_and_min_max_only_for_several_seeds():
    from numpyconv.demo.run import markdown_table, per_seed_table, summarise
    summary = summarise([_run('conv', 0, 0.97), _run('conv', 1, 0.95), _run('odconv', 0, 0.90)])
    single = markdown_table(summary)
    assert single.splitlines()[0] == ('| Technique | Params | MACs / image | Time / epoch (s) | '
                                      'Train acc (%) | Test acc (%) |')
    assert '| Conv | 10 | 2.00 M | 1.0 | 90.0 | 96.0 |' in single
    table = markdown_table(summary, with_spread=True)
    assert 'Seeds' in table and 'Test min-max (%)' in table
    assert '| Conv | 2 | 10 | 2.00 M | 1.0 ± 0.0 | 90.0 ± 0.0 | 90.0-90.0 | 96.0 ± 1.4 | 95.0-97.0 |' in table
    assert '| ODConv (4 kernels) | 1 | 10 | 2.00 M | 1.0 | 90.0 | 90.0-90.0 | 90.0 | 90.0-90.0 |' in table
    per_seed = per_seed_table(summary)
    assert per_seed.splitlines()[0] == '| Test acc (%) | seed 0 | seed 1 |'
    assert '| Conv | 97.0 | 95.0 |' in per_seed and '| ODConv (4 kernels) | 90.0 |  |' in per_seed


def test_summary_figures_take_several_seeds(tmp_path):
    pytest.importorskip('matplotlib')
    from numpyconv.demo import figures
    from numpyconv.demo.run import summarise
    runs = [_run(t, s, 0.9 + 0.01 * s) for t in ('conv', 'dcnv4') for s in range(3)] + [_run('kw', 0, 0.8)]
    summary = summarise(runs)
    figures.results_chart(summary, tmp_path / 'r.png')
    groups = [(r['label'], [x['history'] for x in runs if x['technique'] == r['technique']])
              for r in summary]
    figures.training_curves(groups, tmp_path / 'c.png')
    for name in ('r.png', 'c.png'):
        assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_seed_chooses_weights_and_batch_order_and_reproduces_its_run():
    from numpyconv.demo.train import train_technique
    x, y = segments(40)
    dataset = data.Dataset(x[:32], y[:32], x[32:], y[32:])

    def history(seed):
        return train_technique('conv', dataset, epochs=2, batch_size=8, width=16, seed=seed,
                               progress=False, log=lambda line: None)[1]

    first = history(3)
    assert [h['train_loss'] for h in history(3)] == [h['train_loss'] for h in first]
    assert [h['train_loss'] for h in history(4)] != [h['train_loss'] for h in first]


# -- end to end (needs the demo extra) ----------------------------------------------------------------
@pytest.fixture
def demo_extra():
    pytest.importorskip('sklearn')
    pytest.importorskip('matplotlib')


def _demo(out, *options):
    from numpyconv import cli
    return cli.main(['demo', '--out', str(out), '--epochs', '1', '--width', '16', '--no-progress',
                     *options])


def _csv_rows(out, name='results.csv'):
    with open(out / name) as f:
        return list(csv.DictReader(f))


def _csv_techniques(out):
    return [row['technique'] for row in _csv_rows(out)]


def _segments_dataset(monkeypatch):
    """The run trains on 30 seven-segment digits and tests on 10 (no scikit-learn data)."""
    from numpyconv.demo import run
    x, y = segments(40)
    monkeypatch.setattr(run, 'load_digits_dataset', lambda: data.Dataset(x[:30], y[:30], x[30:], y[30:]))


def test_demo_smoke_writes_table_csv_models_and_figures(demo_extra, tmp_path, capsys):
    names = ['conv', 'octave', 'dynamic', 'odconv', 'dcnv1', 'dcnv3', 'involution']
    status = _demo(tmp_path, '--techniques', ','.join(names), '--limit-train', '24',
                   '--limit-test', '20')
    assert status == 0
    out = capsys.readouterr().out
    assert '| Technique | Params | MACs / image | Time / epoch (s) |' in out and 'Octave' in out
    assert 'Seeds' not in out and '±' not in out                             # one seed: no spread
    assert _csv_techniques(tmp_path) == names
    assert [r['seed'] for r in _csv_rows(tmp_path, 'results_per_seed.csv')] == ['0'] * len(names)
    assert '| DCNv3 |' in (tmp_path / 'results.md').read_text()
    for name in ['results', 'training_curves', 'deformable_sampling', 'involution_kernels',
                 'octave_maps', 'kernel_attention']:
        assert (tmp_path / 'figures' / f'{name}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert sorted(p.stem for p in (tmp_path / 'models').glob('*.npz')) == sorted(f'{n}_seed0' for n in names)
    assert _demo(tmp_path, '--techniques', 'conv') == 2                     # now non-empty
    assert 'is not empty; pass --force' in capsys.readouterr().err


def test_demo_with_several_seeds_writes_spread_everywhere(demo_extra, tmp_path, monkeypatch, capsys):
    _segments_dataset(monkeypatch)
    names = ['conv', 'odconv', 'dcnv4']
    assert _demo(tmp_path, '--techniques', ','.join(names), '--seed', '5', '--seeds', '3',
                 '--epochs', '2') == 0
    out = capsys.readouterr().out
    assert 'seeds: 5, 6, 7' in out and 'seed 7' in out and '9 run(s) of 3 technique(s)' in out
    assert '| Technique | Seeds | Params | MACs / image | Time / epoch (s) | Train acc (%) | ' in out
    assert out.count(' | 3 | ') >= 3 and '±' in out

    per_seed = _csv_rows(tmp_path, 'results_per_seed.csv')
    assert [(r['technique'], r['seed']) for r in per_seed] == [(t, str(s)) for t in names for s in (5, 6, 7)]
    summary = _csv_rows(tmp_path)
    assert [r['technique'] for r in summary] == names and {r['seeds'] for r in summary} == {'3'}
    for row in summary:
        accs = [float(r['test_acc']) for r in per_seed if r['technique'] == row['technique']]
        assert float(row['test_acc_mean']) == pytest.approx(np.mean(accs))
        assert float(row['test_acc_std']) == pytest.approx(np.std(accs, ddof=1))
        assert (float(row['test_acc_min']), float(row['test_acc_max'])) == (min(accs), max(accs))

    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['settings']['seeds'] == 3 and len(results['runs']) == 9
    for r in results['runs']:                                              # every epoch of every seed
        assert [h['epoch'] for h in r['history']] == [1, 2] and r['test_acc'] == r['history'][-1]['test_acc']
    assert [r['test_acc']['values'] for r in results['summary']] == \
        [[float(r['test_acc']) for r in per_seed if r['technique'] == t] for t in names]

    markdown = (tmp_path / 'results.md').read_text()
    assert 'Seeds: 5, 6, 7' in markdown and '| Test acc (%) | seed 5 | seed 6 | seed 7 |' in markdown
    for name in ['results', 'training_curves', 'kernel_attention', 'deformable_sampling']:
        assert (tmp_path / 'figures' / f'{name}.png').is_file()
    assert len(list((tmp_path / 'models').glob('*.npz'))) == 9


def test_interrupted_demo_keeps_finished_results_and_resumes(demo_extra, tmp_path, monkeypatch, capsys):
    from numpyconv.demo import run
    _segments_dataset(monkeypatch)
    real_train = run.train_technique

    def interrupted_on_second(technique, *args, **kwargs):
        if technique == 'separable':
            raise KeyboardInterrupt
        return real_train(technique, *args, **kwargs)

    monkeypatch.setattr(run, 'train_technique', interrupted_on_second)
    assert _demo(tmp_path, '--techniques', 'conv,separable') == 130
    assert _csv_techniques(tmp_path) == ['conv']
    assert 'interrupted during Depthwise-separable seed 0' in capsys.readouterr().err
    monkeypatch.setattr(run, 'train_technique', real_train)
    assert _demo(tmp_path, '--techniques', 'conv,separable', '--resume') == 0
    assert _csv_techniques(tmp_path) == ['conv', 'separable']
    assert len(_runs(tmp_path)) == 2


def _runs(out):
    return json.loads((out / 'results.json').read_text())['runs']


def test_resume_of_a_partly_finished_multi_seed_run_trains_only_the_missing_runs(
        demo_extra, tmp_path, monkeypatch, capsys):
    from numpyconv.demo import run
    _segments_dataset(monkeypatch)
    real_train = run.train_technique
    trained, interrupt = [], [('separable', 1)]

    def train(technique, *args, seed, **kwargs):
        if (technique, seed) in interrupt:
            raise KeyboardInterrupt
        trained.append((technique, seed))
        return real_train(technique, *args, seed=seed, **kwargs)

    monkeypatch.setattr(run, 'train_technique', train)
    options = ('--techniques', 'conv,separable', '--seeds', '3')
    assert _demo(tmp_path, *options) == 130
    assert trained == [('conv', 0), ('separable', 0), ('conv', 1)]           # round by round
    assert 'interrupted during Depthwise-separable seed 1' in capsys.readouterr().err
    first = {(r['technique'], r['seed']): r for r in _runs(tmp_path)}
    assert sorted(first) == sorted(trained)
    (tmp_path / 'models' / 'conv_seed1.npz').unlink()                        # a run without its model

    trained.clear()
    interrupt.clear()
    assert _demo(tmp_path, *options, '--resume') == 0
    assert trained == [('conv', 1), ('separable', 1), ('conv', 2), ('separable', 2)]
    runs = _runs(tmp_path)
    assert [(r['technique'], r['seed']) for r in runs] == [(t, s) for t in ('conv', 'separable')
                                                           for s in range(3)]
    kept = {(r['technique'], r['seed']): r for r in runs}
    for key in [('conv', 0), ('separable', 0)]:
        assert kept[key] == first[key]
    assert [r['seeds'] for r in _csv_rows(tmp_path)] == ['3', '3']
    assert '| Conv | 3 |' in capsys.readouterr().out


def test_resume_with_more_seeds_adds_only_the_new_seeds(demo_extra, tmp_path, monkeypatch):
    from numpyconv.demo import run
    _segments_dataset(monkeypatch)
    assert _demo(tmp_path, '--techniques', 'conv') == 0
    first = _runs(tmp_path)
    real_train, trained = run.train_technique, []

    def train(technique, *args, seed, **kwargs):
        trained.append((technique, seed))
        return real_train(technique, *args, seed=seed, **kwargs)

    monkeypatch.setattr(run, 'train_technique', train)
    assert _demo(tmp_path, '--techniques', 'conv', '--seeds', '2', '--resume') == 0
    assert trained == [('conv', 1)]
    runs = _runs(tmp_path)
    assert [r['seed'] for r in runs] == [0, 1] and runs[0] == first[0]
    assert 'Test min-max (%)' in (tmp_path / 'results.md').read_text()
