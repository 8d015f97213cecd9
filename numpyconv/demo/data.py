"""The demo's data: scikit-learn's handwritten digits, upscaled and randomly deformed.

``load_digits`` ships 1,797 real 8x8 scans (values 0..16) inside scikit-learn (no download). Each is
upscaled x3.5 to 28x28, centred on a 32x32 canvas (LeNet-5's 2-pixel margin: translations do not
cut strokes, and every feature map of the demo network has an even size, which octave convolution
needs) and given one random affine transformation: rotation, anisotropic scale, shear and
translation. Upscaling and deformation are composed into ONE cubic-spline resampling
(``scipy.ndimage.affine_transform``), so the 8x8 source is interpolated once.

The transformations come from a fixed seed and the train/test split is fixed and stratified, so
every run and every technique sees exactly the same images. Pixels are scaled to [0, 1] and then
standardised with the training set's mean and standard deviation.

:func:`segment_digits` draws a synthetic stand-in without scikit-learn (seven-segment glyphs
through the same deformation pipeline); the tests use it.
"""
import math
from collections import namedtuple

import numpy as np

from .._checks import count_int, positive_int

CANVAS = 32          # side of the network input
DIGIT = 28           # side of the upscaled digit on the canvas
DATA_SEED = 2024     # fixed: the deformations and the split never change between runs
TEST_FRACTION = 0.25

Dataset = namedtuple('Dataset', 'x_train y_train x_test y_test')

# default ranges of the random affine transformation
AFFINE = dict(rotation=20.0,       # degrees, uniform in +-
              scale=(0.8, 1.1),    # per axis
              shear=0.25,          # x += shear * y, uniform in +-
              shift=2.5)           # pixels on the canvas, uniform in +-


def random_affine(rng, source_side, ranges=AFFINE):
    """``(matrix, offset)`` mapping canvas pixel coordinates to source coordinates.

    The forward map sends a source pixel to the canvas: centre it, scale by ``DIGIT / source_side``
    times a random per-axis scale, shear, rotate, then translate to the canvas centre plus a
    random shift. ``scipy.ndimage.affine_transform`` needs the inverse (output -> input).
    """
    angle = math.radians(rng.uniform(-ranges['rotation'], ranges['rotation']))
    sy, sx = rng.uniform(*ranges['scale'], size=2) * (DIGIT / source_side)
    shear = rng.uniform(-ranges['shear'], ranges['shear'])
    rotate = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    forward = rotate @ np.array([[1.0, 0.0], [shear, 1.0]]) @ np.diag([sy, sx])   # (row, col) axes
    matrix = np.linalg.inv(forward)
    source_centre = np.full(2, (source_side - 1) / 2)
    canvas_centre = np.full(2, (CANVAS - 1) / 2) + rng.uniform(-ranges['shift'], ranges['shift'], 2)
    return matrix, source_centre - matrix @ canvas_centre


def deform(images, seed, ranges=AFFINE):
    """Upscale and randomly deform square images ``(N, s, s)`` in [0, 1] -> ``(N, 32, 32)`` float32."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    out = np.empty((len(images), CANVAS, CANVAS), dtype=np.float32)
    for i, image in enumerate(images):
        matrix, offset = random_affine(rng, image.shape[0], ranges)
        out[i] = ndimage.affine_transform(image, matrix, offset, output_shape=(CANVAS, CANVAS),
                                          order=3, mode='constant', cval=0.0)
    return np.clip(out, 0.0, 1.0)


def stratified_split(labels, test_fraction, seed):
    """``(train_index, test_index)``: the same fraction of every class in the test set."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(index) * test_fraction))
        test.append(index[:n_test])
        train.append(index[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def standardise(x_train, x_test):
    """Scale both sets by the training set's pixel mean and standard deviation; add the channel axis."""
    mean, std = x_train.mean(), x_train.std()
    return tuple(((x - mean) / std).astype(np.float32)[:, None] for x in (x_train, x_test))


def make_dataset(images, labels, seed=DATA_SEED, test_fraction=TEST_FRACTION):
    """Deform ``images (N, s, s)`` in [0, 1], split them, standardise: a :class:`Dataset`.

    ``x_*`` are ``(n, 1, 32, 32)`` float32, ``y_*`` ``(n,)`` int64.
    """
    x = deform(images, seed)
    labels = np.asarray(labels, dtype=np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    x_train, x_test = standardise(x[train], x[test])
    return Dataset(x_train, labels[train], x_test, labels[test])


def load_digits_dataset(seed=DATA_SEED):
    """scikit-learn's 1,797 digits, deformed and split (needs the ``demo`` extra)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    return make_dataset(digits.images / 16.0, digits.target, seed)


def limit(dataset, n_train=None, n_test=None):
    """The first ``n_train`` / ``n_test`` samples (None keeps all): the tiny mode of the tests."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a Dataset (x_train, y_train, x_test, y_test), got "
                        f"{type(dataset).__name__}")
    n_train, n_test = (None if n is None else count_int(n, name) for n, name in ((n_train, 'n_train'),
                                                                                  (n_test, 'n_test')))
    return Dataset(dataset.x_train[:n_train], dataset.y_train[:n_train],
                   dataset.x_test[:n_test], dataset.y_test[:n_test])


# -- a synthetic stand-in without scikit-learn ---------------------------------------------------
# seven-segment glyphs on an 8x8 grid: segment -> (row0, col0, row1, col1)
_SEGMENTS = dict(a=(1, 2, 1, 5), b=(1, 5, 4, 5), c=(4, 5, 7, 5), d=(7, 2, 7, 5),
                 e=(4, 2, 7, 2), f=(1, 2, 4, 2), g=(4, 2, 4, 5))
_GLYPHS = ('abcdef', 'bc', 'abged', 'abgcd', 'fgbc', 'afgcd', 'afgedc', 'abc', 'abcdefg', 'abcdfg')


def _glyph(digit, side=8):
    image = np.zeros((side, side))
    for segment in _GLYPHS[digit]:
        r0, c0, r1, c1 = _SEGMENTS[segment]
        image[min(r0, r1):max(r0, r1) + 1, min(c0, c1):max(c0, c1) + 1] = 1.0
    return image


def segment_digits(n, seed=0):
    """``(x (n, 1, 32, 32) float32, y (n,) int64)``: seven-segment digits 0-9, deformed as the real ones.

    No scikit-learn needed; classes cycle 0..9 so any ``n >= 10`` holds every class.
    """
    n = positive_int(n, 'n')
    labels = np.arange(n) % 10
    x = deform(np.stack([_glyph(d) for d in labels]), seed)
    x = ((x - x.mean()) / x.std()).astype(np.float32)[:, None]
    return x, labels.astype(np.int64)
