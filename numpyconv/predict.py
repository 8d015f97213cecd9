"""Classify images with a network of :mod:`numpyconv.models` and its checkpoint: ``numpyconv predict``.

``numpyconv predict MODEL CHECKPOINT IMAGE... [--top K] [--batch-size B]`` builds
``numpyconv.models.<MODEL>()``, loads the checkpoint (any format :func:`numpyconv.load_checkpoint`
reads; the state_dict is found as :func:`numpyconv.state_dict_of` finds it, DataParallel's
``module.`` prefix stripped), switches to eval mode and, without caches, prints for each image the
``K`` most probable ImageNet-1k classes (softmax of the logits) by name and the time it took.

Each network's images are prepared as its official evaluation prepares them (:data:`PREPROCESSING`),
with Pillow, as torchvision's transforms do on a PIL image:

* the image is read as torchvision's ``default_loader`` reads it: ``PIL.Image.open(path).convert('RGB')``
  (grayscale, palette, RGBA and CMYK images become RGB, alpha dropped);
* ``Resize(resize)``: the shorter side becomes ``resize``, the longer ``int(resize * long / short)``
  (unchanged when the size already fits), with the network's Pillow filter;
* ``CenterCrop(crop)``: top-left corner ``int(round((size - crop) / 2))`` on each axis;
* ``ToTensor``: ``uint8 / 255`` in float32, HWC -> CHW; ``Normalize``: ``(x - mean) / std`` in float32
  with the ImageNet mean ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``.

The table :data:`PREPROCESSING` (builder name -> :class:`Preprocessing`) holds two recipes:

* ``TORCHVISION`` (the ResNet family, the MobileNetV2 family, RedNet): resize 256 bilinear, crop
  224, torchvision's ImageNet evaluation (``resize_size=256``, ``crop_size=224`` of its weights);
* ``INTERNIMAGE`` (``internimage_t``, ``flash_internimage_t``): resize 224 bicubic, crop 224, as
  InternImage's and DCNv4's ``build_transform(is_train=False, config)`` with their config defaults
  (``DATA.IMG_SIZE=224``, ``DATA.INTERPOLATION='bicubic'``, ``TEST.CROP=True``, which resizes to
  ``int(1.0 * IMG_SIZE)`` and centre-crops ``IMG_SIZE``; the T configs change none of these).

RedNet was evaluated with mmcls's pipeline (OpenCV bilinear resize of the shorter side to 256, centre
crop 224, the same mean and std in 0-255 units); here it is prepared with Pillow as the other
ResNets, so pixel values may differ slightly from mmcls's OpenCV resize.

The class names (``numpyconv/data/imagenet_classes.txt``, line ``i`` names logit ``i``) are
torchvision's ImageNet-1k categories.
"""
import contextlib
import importlib
import inspect
import sys
import time
from collections import namedtuple
from functools import lru_cache
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint, state_dict_of
from .module import Module, StateDictError, no_grad

__all__ = ['predict', 'preprocess', 'load_image', 'load_model', 'class_names', 'builders',
           'preprocessing_for', 'Preprocessing', 'PREPROCESSING']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PILLOW_MISSING = "numpyconv predict needs Pillow: pip install 'numpyconv[predict]'"

Preprocessing = namedtuple('Preprocessing', 'resize crop interpolation mean std')
Preprocessing.__doc__ = """How a network's evaluation prepares an image: shorter side resized to
``resize`` with the Pillow filter ``interpolation`` (``'bilinear'`` or ``'bicubic'``), centre crop
``crop`` x ``crop``, ``(x / 255 - mean) / std`` per RGB channel."""

TORCHVISION = Preprocessing(256, 224, 'bilinear', IMAGENET_MEAN, IMAGENET_STD)
INTERNIMAGE = Preprocessing(224, 224, 'bicubic', IMAGENET_MEAN, IMAGENET_STD)

# builder name -> preprocessing of the network's official evaluation (module docstring)
PREPROCESSING = {
    'resnet18': TORCHVISION, 'resnet50': TORCHVISION,
    'od_resnet18': TORCHVISION, 'od_resnet50': TORCHVISION, 'od_mobilenetv2': TORCHVISION,
    'kw_resnet18': TORCHVISION, 'kw_resnet50': TORCHVISION,
    'oct_resnet26': TORCHVISION, 'oct_resnet50': TORCHVISION,
    'cond_mobilenetv2': TORCHVISION, 'dy_resnet18': TORCHVISION,
    'rednet26': TORCHVISION, 'rednet38': TORCHVISION, 'rednet50': TORCHVISION,
    'resnet50_dcnv2': TORCHVISION,
    'internimage_t': INTERNIMAGE, 'flash_internimage_t': INTERNIMAGE,
}


def _require_file(path, what):
    """``Path(path)``; ``ValueError`` naming ``what`` unless it is a file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder, not a file")
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r}: no such file")
    return path


def preprocessing_for(model_name):
    """The :class:`Preprocessing` of a network.

    Parameters
    ----------
    model_name : str
        A builder of :mod:`numpyconv.models` (``'resnet50'``), a key of :data:`PREPROCESSING`; a name
        not in the table gets InternImage's when it contains ``internimage``, else torchvision's.

    Returns
    -------
    Preprocessing
    """
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a builder name such as 'resnet50', got "
                        f"{type(model_name).__name__}")
    if model_name in PREPROCESSING:
        return PREPROCESSING[model_name]
    return INTERNIMAGE if 'internimage' in model_name.lower().replace('_', '') else TORCHVISION


# -- images -----------------------------------------------------------------------------------
def _pil():
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(f"{PILLOW_MISSING} ({exc})") from exc
    return Image


def load_image(image):
    """An image as torchvision's ``default_loader`` reads it: a PIL image in RGB mode.

    Parameters
    ----------
    image : str, os.PathLike or PIL.Image.Image
        A file Pillow can read, or an image already open (converted, not modified).

    Returns
    -------
    PIL.Image.Image in mode ``'RGB'`` (grayscale replicated, palette expanded, alpha dropped).
    """
    Image = _pil()
    if isinstance(image, Image.Image):
        return image if image.mode == 'RGB' else image.convert('RGB')
    if not isinstance(image, (str, Path)):
        raise TypeError(f"image must be a file path or a PIL image, got {type(image).__name__}")
    path = _require_file(image, 'image')
    try:
        with Image.open(path) as opened:
            return opened.convert('RGB')         # convert() decodes the whole file
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"image {str(image)!r} can not be read as an image: {exc}") from exc


def _resize_shorter(image, size, interpolation):
    """torchvision's ``Resize(size)`` on a PIL image: shorter side ``size``, longer side truncated."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) == (width, height):
        return image
    resampling = getattr(_pil(), 'Resampling', _pil())         # Pillow >= 9.1: Image.Resampling
    filters = {'bilinear': resampling.BILINEAR, 'bicubic': resampling.BICUBIC}
    return image.resize((new_w, new_h), filters[interpolation])


def _center_crop(image, crop):
    """torchvision's ``CenterCrop(crop)`` on a PIL image at least ``crop`` x ``crop`` in size."""
    width, height = image.size
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def preprocess(image, model_name='resnet50'):
    """One image prepared as the network's official evaluation prepares it (module docstring).

    Parameters
    ----------
    image : str, os.PathLike or PIL.Image.Image
        An image file or an open image, any mode Pillow converts to RGB.
    model_name : str or Preprocessing
        The builder name whose preprocessing to use (:func:`preprocessing_for`), or the preprocessing.

    Returns
    -------
    ndarray, float32, shape ``(3, crop, crop)`` (``(3, 224, 224)`` for every network here).
    """
    spec = model_name if isinstance(model_name, Preprocessing) else preprocessing_for(model_name)
    rgb = load_image(image)
    if min(rgb.size) < 1:
        raise ValueError(f"image must have at least one pixel, got size {rgb.size}")
    rgb = _center_crop(_resize_shorter(rgb, spec.resize, spec.interpolation), spec.crop)
    x = np.asarray(rgb, dtype=np.uint8).astype(np.float32) / np.float32(255)    # ToTensor
    x = x.transpose(2, 0, 1)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std)                                 # Normalize


# -- classes, builders, checkpoints ----------------------------------------------------------
@lru_cache(maxsize=1)
def class_names():
    """The 1000 ImageNet-1k class names, index ``i`` naming logit ``i`` (a tuple of str)."""
    path = Path(__file__).resolve().parent / 'data' / 'imagenet_classes.txt'
    return tuple(path.read_text(encoding='utf-8').splitlines())


def _models():
    return importlib.import_module('.models', __package__)


def builders():
    """The names of the network builders of :mod:`numpyconv.models` (sorted list of str): its
    public functions that take ``num_classes``."""
    models = _models()
    names = []
    for name in dir(models):
        value = getattr(models, name)
        if name.startswith('_') or not inspect.isfunction(value):
            continue
        with contextlib.suppress(TypeError, ValueError):
            if 'num_classes' in inspect.signature(value).parameters:
                names.append(name)
    return sorted(names)


def _weights(checkpoint):
    """The state_dict inside a loaded checkpoint, DataParallel's ``module.`` prefix stripped."""
    state = state_dict_of(checkpoint)
    keys = [k for k in state if isinstance(k, str)]
    if keys and all(k.startswith('module.') for k in keys):
        state = state_dict_of(checkpoint, prefix='module.')
    return state


def _summary(keys, limit=8):
    keys = list(keys)
    if not keys:
        return 'none'
    shown = ', '.join(map(str, keys[:limit]))
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def load_model(model_name, checkpoint, *, dtype=np.float32):
    """Build ``numpyconv.models.<model_name>()``, load a checkpoint into it, switch to eval mode.

    Parameters
    ----------
    model_name : str
        A builder of :mod:`numpyconv.models` (:func:`builders`).
    checkpoint : str, os.PathLike or dict
        A checkpoint file (any format :func:`numpyconv.load_checkpoint` reads; classes the reader
        does not know become inert placeholders, nothing in the file is run) or a loaded checkpoint /
        state_dict. The state_dict is the first of ``state_dict``, ``model``, ``model_ema`` or the
        whole; a ``module.`` prefix on every key is stripped.
    dtype : numpy float dtype
        The network's dtype.

    Returns
    -------
    Module in eval mode. Raises ``ValueError`` for an unknown model or a checkpoint that does not
    fit it (naming the missing and unexpected keys, or the mis-shaped one).
    """
    names = builders()
    if model_name not in names:
        raise ValueError(f"unknown model {model_name!r}; numpyconv.models has: {', '.join(names)}")
    if isinstance(checkpoint, (str, Path)):
        _require_file(checkpoint, 'checkpoint')
        checkpoint = load_checkpoint(checkpoint, unknown='stub')
    state = _weights(checkpoint)
    model = getattr(_models(), model_name)(dtype=dtype)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise StateDictError(f"the checkpoint does not fit {model_name}: missing keys {_summary(missing)}, "
                             f"unexpected keys {_summary(unexpected)}")
    try:
        model.load_state_dict(state)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the checkpoint does not fit {model_name}: {exc}") from exc
    return model.eval()


# -- prediction --------------------------------------------------------------------------------
def _softmax(logits):
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _top(probs, top, names):
    order = np.argsort(-probs, kind='stable')[:top]
    return [(int(i), names[i] if i < len(names) else f"class {i}", float(probs[i])) for i in order]


def _count(value, name, low=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def run(model, images, model_name=None, *, top=5, batch_size=8):
    """Classify images batch by batch, yielding ``(image, top_k, seconds)`` per image in order.

    ``top_k`` is as in :func:`predict`; ``seconds`` the image's own preprocessing time plus its share
    of its batch's forward pass.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a numpyconv Module (e.g. numpyconv.models.resnet50()), got "
                        f"{type(model).__name__}")
    top, batch_size = _count(top, 'top'), _count(batch_size, 'batch_size')
    if model_name is None:
        model_name = type(model).__name__
    spec = model_name if isinstance(model_name, Preprocessing) else preprocessing_for(model_name)
    images = list(images)
    names = class_names()
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        inputs, prep_seconds = [], []
        for image in batch:
            tic = time.perf_counter()
            inputs.append(preprocess(image, spec))
            prep_seconds.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        with no_grad():
            logits = model.forward(np.stack(inputs).astype(model.dtype, copy=False))
        share = (time.perf_counter() - tic) / len(batch)
        if logits.ndim != 2 or logits.shape[0] != len(batch):
            raise ValueError(f"the model must return logits of shape (N, classes), got {logits.shape}")
        probs = _softmax(logits)
        for image, p, prep in zip(batch, probs, prep_seconds):
            yield image, _top(p, top, names), prep + share


def predict(model, images, model_name=None, *, top=5, batch_size=8):
    """The ``top`` most probable ImageNet-1k classes of each image.

    Parameters
    ----------
    model : Module
        A network of :mod:`numpyconv.models` (e.g. from :func:`load_model`), in eval mode.
    images : iterable of str, os.PathLike or PIL.Image.Image
        Image files or open images.
    model_name : str or Preprocessing, optional
        The builder name choosing the preprocessing (:func:`preprocessing_for`); default: the
        model's class name (torchvision's preprocessing, InternImage's for InternImage networks).
    top : int
        Classes per image.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    list (one per image) of lists of ``(class_index, name, probability)``, most probable first.
    """
    return [result for _, result, _ in run(model, images, model_name, top=top, batch_size=batch_size)]


# -- command line ------------------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument('model', help="a builder of numpyconv.models, e.g. resnet50, od_resnet50, rednet26")
    parser.add_argument('checkpoint', help='the checkpoint file (.pth zip or legacy, .safetensors, .npz)')
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='image files (any format Pillow reads)')
    parser.add_argument('--top', type=int, default=5, help='classes printed per image (default 5)')
    parser.add_argument('--batch-size', type=int, default=8, help='images per forward pass (default 8)')


class _Progress:
    """A tqdm bar on stderr when tqdm is installed, else one ``[k/n]`` line per image on stderr."""

    def __init__(self, total, enabled):
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, unit='image', file=sys.stderr)

    def write(self, text):
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def update(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            print(f"[{self.done}/{self.total}]", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


PROGRESS_FROM = 10       # a progress bar from this many images on


def format_result(image, top_k, seconds):
    """The lines ``numpyconv predict`` prints for one image."""
    lines = [f"{image}  ({seconds * 1000:.1f} ms)"]
    width = len(str(len(top_k)))
    for rank, (index, name, prob) in enumerate(top_k, 1):
        lines.append(f"  {rank:>{width}}. {prob:8.4%}  {name} ({index})")
    return '\n'.join(lines)


def main(args):
    """``numpyconv predict``: returns the exit status; bad input exits with a one-line message."""
    try:
        _pil()
        top, batch_size = _count(args.top, '--top'), _count(args.batch_size, '--batch-size')
        for image in args.images:          # every file checked before the network is built
            _require_file(image, 'image')
        model = load_model(args.model, args.checkpoint)
        progress = _Progress(len(args.images), enabled=len(args.images) >= PROGRESS_FROM)
        total = 0.0
        try:
            for image, top_k, seconds in run(model, args.images, args.model, top=top, batch_size=batch_size):
                progress.write(format_result(image, top_k, seconds))
                progress.update()
                total += seconds
        finally:
            progress.close()
    except (ValueError, TypeError, OSError, ImportError) as exc:
        sys.exit(f"numpyconv predict: error: {exc}")
    n = len(args.images)
    print(f"{n} image{'s' * (n != 1)} in {total:.2f} s, {total / n * 1000:.1f} ms per image")
    return 0

