"""``numpyconv predict`` and :mod:`numpyconv.predict`: preprocessing, class names, checkpoints, output."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

Image = pytest.importorskip('PIL.Image')

import numpyconv                                                    # noqa: E402
from numpyconv import cli, predict as pr                            # noqa: E402
from numpyconv.models import resnet18                               # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def random_image(shape, seed=0, mode=None):
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return Image.fromarray(pixels, mode) if mode else Image.fromarray(pixels)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A full-size resnet18 with random weights saved as a DataParallel training checkpoint, and
    three small images of different modes."""
    root = tmp_path_factory.mktemp('predict')
    model = resnet18(rng=0)
    state = {'module.' + k: v for k, v in model.state_dict().items()}
    numpyconv.save_checkpoint({'state_dict': state, 'epoch': 90}, root / 'r18.pth')
    random_image((300, 400, 3), 1).save(root / 'wide.png')
    random_image((260, 250), 2).save(root / 'gray.png')
    random_image((230, 240, 4), 3, 'RGBA').save(root / 'alpha.png')
    return root


# -- class names --------------------------------------------------------------------------------
def test_class_names_are_1000_unique_names_in_index_order():
    names = pr.class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert all(n and n == n.strip() for n in names)
    assert names[0] == 'tench' and names[999] == 'toilet tissue'


def test_class_names_equal_torchvisions_metadata():
    pytest.importorskip('torchvision')
    from torchvision.models import ResNet50_Weights
    assert list(pr.class_names()) == ResNet50_Weights.IMAGENET1K_V2.meta['categories']


# -- preprocessing ------------------------------------------------------------------------------
def by_hand(pixels, top, left, crop=224):
    """Crop then (x / 255 - mean) / std, channels first, in float64."""
    window = pixels[top:top + crop, left:left + crop].astype(np.float64) / 255
    return ((window - MEAN) / STD).transpose(2, 0, 1)


@pytest.mark.parametrize('model_name, height, width, top, left', [
    ('resnet50', 256, 256, 16, 16),            # already 256: no resize, crop offset 16
    ('resnet50', 300, 256, 38, 16),            # (300 - 224) / 2 = 38
    ('rednet26', 256, 257, 16, 16),            # round(16.5) = 16 (round half to even)
    ('internimage_t', 224, 301, 0, 38),        # round(38.5) = 38; InternImage resizes to 224
    ('flash_internimage_t', 300, 224, 38, 0),
])
def test_preprocess_without_resize_is_crop_and_normalize(model_name, height, width, top, left):
    pixels = np.random.default_rng(height + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    x = pr.preprocess(Image.fromarray(pixels), model_name)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x, by_hand(pixels, top, left), rtol=0, atol=2e-6)


@pytest.mark.parametrize('model_name', ['resnet18', 'internimage_t'])
def test_preprocess_of_a_plain_colour_is_its_normalized_value(model_name):
    colour = np.array([200, 30, 117], dtype=np.uint8)
    image = Image.fromarray(np.broadcast_to(colour, (97, 131, 3)).copy())
    x = pr.preprocess(image, model_name)
    expected = (colour / 255 - MEAN) / STD
    np.testing.assert_allclose(x, np.broadcast_to(expected[:, None, None], x.shape), atol=2e-6)


def test_preprocess_resizes_the_shorter_side_with_the_networks_filter(monkeypatch):
    seen = []
    original = Image.Image.resize

    def spy(self, size, resample=None, *args, **kwargs):
        seen.append((self.size, size, resample))
        return original(self, size, resample, *args, **kwargs)

    monkeypatch.setattr(Image.Image, 'resize', spy)
    image = random_image((300, 400, 3))
    pr.preprocess(image, 'od_resnet50')
    pr.preprocess(image, 'flash_internimage_t')
    pr.preprocess(random_image((401, 257, 3)), 'resnet18')
    assert seen == [((400, 300), (341, 256), Image.Resampling.BILINEAR),      # int(256 * 400 / 300)
                    ((400, 300), (298, 224), Image.Resampling.BICUBIC),       # int(224 * 400 / 300)
                    ((257, 401), (256, 399), Image.Resampling.BILINEAR)]      # int(256 * 401 / 257)


@pytest.mark.parametrize('mode', ['L', 'P', 'RGBA', 'CMYK', 'LA', 'I'])
def test_other_modes_are_converted_to_rgb_as_torchvisions_loader(mode, tmp_path):
    image = random_image((240, 250, 3), 4).convert(mode)
    path = tmp_path / ('x.tiff' if mode in ('CMYK', 'I') else 'x.png')
    image.save(path)
    with Image.open(path) as opened:
        expected = pr.preprocess(opened.convert('RGB'), 'resnet18')
    np.testing.assert_array_equal(pr.preprocess(path, 'resnet18'), expected)
    np.testing.assert_array_equal(pr.preprocess(str(path), 'resnet18'), expected)


def test_preprocess_does_not_modify_the_image():
    image = random_image((250, 260, 4), 5, 'RGBA')
    before = np.asarray(image).copy()
    pr.preprocess(image, 'resnet18')
    assert image.mode == 'RGBA' and np.array_equal(np.asarray(image), before)


@pytest.mark.parametrize('model_name, size, interpolation', [('resnet50', 256, 'BILINEAR'),
                                                             ('internimage_t', 224, 'BICUBIC')])
@pytest.mark.parametrize('shape', [(300, 400), (401, 257), (256, 256), (120, 90), (224, 1000)])
def test_preprocess_equals_torchvision_transforms(model_name, size, interpolation, shape):
    pytest.importorskip('torch')
    T = pytest.importorskip('torchvision.transforms')
    image = random_image(shape + (3,), sum(shape))
    reference = T.Compose([T.Resize(size, interpolation=getattr(T.InterpolationMode, interpolation)),
                           T.CenterCrop(224), T.ToTensor(), T.Normalize(tuple(MEAN), tuple(STD))])
    np.testing.assert_array_equal(pr.preprocess(image, model_name), reference(image).numpy())


def test_the_table_covers_every_builder_and_unknown_names_fall_back():
    for name in pr.builders():
        assert pr.preprocessing_for(name) in (pr.TORCHVISION, pr.INTERNIMAGE)
    assert pr.preprocessing_for('internimage_s') is pr.INTERNIMAGE
    assert pr.preprocessing_for('FlashInternImage') is pr.INTERNIMAGE
    assert pr.preprocessing_for('ResNet') is pr.TORCHVISION
    with pytest.raises(TypeError, match='model_name'):
        pr.preprocessing_for(50)


def test_bad_images_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        pr.preprocess(tmp_path / 'missing.jpg')
    (tmp_path / 'text.jpg').write_text('not an image')
    with pytest.raises(ValueError, match="can not be read as an image"):
        pr.preprocess(tmp_path / 'text.jpg')
    random_image((50, 60, 3)).save(tmp_path / 'cut.png')
    data = (tmp_path / 'cut.png').read_bytes()
    (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="can not be read as an image"):
        pr.preprocess(tmp_path / 'cut.png')
    with pytest.raises(TypeError, match='file path or a PIL image'):
        pr.preprocess(np.zeros((224, 224, 3)))


# -- the Python API -------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def small():
    return resnet18(base_channels=8, rng=1).eval()


def test_predict_returns_the_sorted_top_k_of_the_softmax(small):
    images = [random_image((240, 260, 3), s) for s in range(3)]
    results = pr.predict(small, images, 'resnet18', top=7, batch_size=2)
    x = np.stack([pr.preprocess(im, 'resnet18') for im in images])
    logits = small.forward(x).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    names = pr.class_names()
    assert len(results) == 3
    for result, p in zip(results, probs):
        assert [i for i, _, _ in result] == list(np.argsort(-p)[:7])
        for index, name, prob in result:
            assert name == names[index]
            np.testing.assert_allclose(prob, p[index], rtol=1e-5)
        got = [prob for _, _, prob in result]
        assert got == sorted(got, reverse=True) and sum(got) <= 1 + 1e-12


def test_predict_does_not_depend_on_the_batch_size(small):
    images = [random_image((230, 230, 3), s) for s in range(3)]
    one = pr.predict(small, images, 'resnet18', batch_size=1)
    three = pr.predict(small, images, 'resnet18', batch_size=3)
    for a, b in zip(one, three):
        assert [i for i, _, _ in a] == [i for i, _, _ in b]
        np.testing.assert_allclose([p for *_, p in a], [p for *_, p in b], rtol=1e-4)


def test_predict_rejects_bad_arguments(small):
    with pytest.raises(TypeError, match='numpyconv Module'):
        pr.predict('resnet18', [random_image((224, 224, 3))])
    with pytest.raises(ValueError, match='top must be an integer >= 1'):
        pr.predict(small, [random_image((224, 224, 3))], top=0)
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1'):
        pr.predict(small, [random_image((224, 224, 3))], batch_size=1.5)
    assert pr.predict(small, []) == []


def test_load_model_names_missing_unexpected_and_misshaped_keys(small):
    state = dict(small.state_dict())
    with pytest.raises(ValueError, match=r"unknown model 'resnet7'; numpyconv.models has: .*resnet18"):
        pr.load_model('resnet7', state)
    del state['fc.bias']
    state['head.fc.weight'] = np.zeros(3)
    with pytest.raises(ValueError, match=r"missing keys 1 \(fc.bias\), unexpected keys 1 \(head.fc.weight\)"):
        pr.load_model('resnet18', {'model': state})
    shape_error = r"does not fit resnet18: .*\.(weight|bias|running_\w+) must have shape \(.*\), got"
    with pytest.raises(ValueError, match=shape_error):
        pr.load_model('resnet18', small.state_dict())


def test_load_model_reads_a_model_saved_whole(tmp_path):
    """torchvision's ResNet-18 saved with ``torch.save(model)``, inside DataParallel: read without its
    classes, the weights equal its state_dict's."""
    torch = pytest.importorskip('torch')
    torchvision = pytest.importorskip('torchvision')
    torch.manual_seed(0)
    module = torchvision.models.resnet18().eval()
    torch.save(torch.nn.DataParallel(module), tmp_path / 'whole.pth')
    model = pr.load_model('resnet18', tmp_path / 'whole.pth')
    for key, value in module.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value.numpy(), err_msg=key)


# -- the command line ---------------------------------------------------------------------------
def parse(out):
    """``{image: (milliseconds, [(rank, prob, name, index), ...])}`` from predict's output."""
    blocks, current = {}, None
    for line in out.splitlines():
        header = re.fullmatch(r'(\S+)  \((\d+\.\d) ms\)', line)
        row = re.fullmatch(r'  (\d+)\. +(\d+\.\d{4})%  (.+) \((\d+)\)', line)
        if header:
            current = blocks[header[1]] = (float(header[2]), [])
        elif row:
            current[1].append((int(row[1]), float(row[2]) / 100, row[3], int(row[4])))
        else:
            assert re.fullmatch(r'\d+ images? in \d+\.\d\d s, \d+\.\d ms per image', line), line
    return blocks


def check_output(out, images, top=5):
    blocks = parse(out)
    assert list(blocks) == [str(p) for p in images]
    names = pr.class_names()
    for milliseconds, rows in blocks.values():
        assert milliseconds > 0
        assert [r[0] for r in rows] == list(range(1, top + 1))
        probs = [r[1] for r in rows]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-4
        assert all(names[index] == name for _, _, name, index in rows)
    return blocks


def test_cli_prints_the_top5_of_each_image(files, capsys):
    images = [files / 'wide.png', files / 'gray.png', files / 'alpha.png']
    argv = ['predict', 'resnet18', str(files / 'r18.pth')] + [str(p) for p in images]
    assert cli.main(argv + ['--batch-size', '2']) == 0
    blocks = check_output(capsys.readouterr().out, images)
    model = pr.load_model('resnet18', files / 'r18.pth')
    expected = pr.predict(model, images, 'resnet18')
    for (_, rows), result in zip(blocks.values(), expected):
        assert [r[3] for r in rows] == [index for index, _, _ in result]


def test_python_m_numpyconv_predict(files):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    image = files / 'gray.png'
    proc = subprocess.run([sys.executable, '-m', 'numpyconv', 'predict', 'resnet18', str(files / 'r18.pth'),
                           str(image), '--top', '3'], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    check_output(proc.stdout, [image], top=3)


def test_cli_progress_without_tqdm(files, capsys, monkeypatch):
    monkeypatch.setattr(pr, 'PROGRESS_FROM', 2)
    monkeypatch.setitem(sys.modules, 'tqdm', None)
    monkeypatch.setattr(pr, 'load_model', lambda name, path: resnet18(base_channels=8, rng=0).eval())
    images = [str(files / 'wide.png'), str(files / 'alpha.png')]
    assert cli.main(['predict', 'resnet18', 'unused.pth'] + images) == 0
    captured = capsys.readouterr()
    assert captured.err.split() == ['[1/2]', '[2/2]']
    check_output(captured.out, images)


@pytest.mark.parametrize('args, message', [
    (['resnet7', '{ckpt}', '{img}'], r"unknown model 'resnet7'; numpyconv.models has: .*resnet50"),
    (['resnet50', '{ckpt}', '{img}'], r"does not fit resnet50: missing keys \d+ \(layer1.0.conv3.weight"),
    (['resnet18', '{dir}/none.pth', '{img}'], r"checkpoint '.*none.pth': no such file"),
    (['resnet18', '{ckpt}', '{dir}/none.jpg'], r"image '.*none.jpg': no such file"),
    (['resnet18', '{ckpt}', '{ckpt}'], r"can not be read as an image"),
    (['resnet18', '{ckpt}', '{img}', '--top', '0'], r"--top must be an integer >= 1"),
])
def test_cli_errors_are_one_clear_line(files, args, message):
    fill = {'ckpt': str(files / 'r18.pth'), 'img': str(files / 'wide.png'), 'dir': str(files)}
    with pytest.raises(SystemExit) as exc:
        cli.main(['predict'] + [a.format(**fill) for a in args])
    assert re.search(message, str(exc.value)) and str(exc.value).startswith('numpyconv predict: error: ')


def test_cli_without_pillow_says_what_to_install(files, monkeypatch):
    monkeypatch.setitem(sys.modules, 'PIL', None)
    with pytest.raises(SystemExit, match=r"needs Pillow: pip install 'numpyconv\[predict\]'"):
        cli.main(['predict', 'resnet18', str(files / 'r18.pth'), str(files / 'wide.png')])
