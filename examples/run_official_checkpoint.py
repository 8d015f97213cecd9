"""Run an official network from its checkpoint file without PyTorch: build, load, predict, gradient-check.

Run (numpyconv installed with its ``predict`` extra, or from the repository root)::

    PYTHONPATH=. python examples/run_official_checkpoint.py                  # resnet18, random weights
    PYTHONPATH=. python examples/run_official_checkpoint.py --model od_resnet18 --checkpoint od18.pth

With a checkpoint file released by the network's authors (``--checkpoint``), the same steps
classify with the trained weights; without one, the example writes a checkpoint of random weights
first, so it runs anywhere (the top-5 classes are then meaningless, the mechanics are the same).

1. **Build** the network: ``numpyconv.models.<MODEL>()`` reproduces the official module tree, so its
   ``state_dict()`` keys are the official ones (``conv1.weight``, ``layer1.0.conv1.weight``, ...).
2. **Write a checkpoint** (only without a file on the command line): the state_dict, wrapped as
   training scripts save it (``{'state_dict': ..., 'epoch': ...}``), in PyTorch's zip format with
   ``numpyconv.save_checkpoint``: the file that ``torch.save`` would write and ``torch.load`` reads.
3. **Load it** into a fresh network: ``numpyconv.load_checkpoint`` reads the file without running any
   code from it, ``numpyconv.state_dict_of`` finds the state_dict inside (``state_dict``, ``model`` or
   ``model_ema``), ``load_state_dict`` copies it, refusing missing, unexpected or mis-shaped keys.
4. **Predict** on an image (generated here with Pillow): ``numpyconv.predict.predict`` prepares it as
   the network's official evaluation does (resize, centre crop 224, ImageNet normalisation), runs
   the network in eval mode without caches and returns the top-5 classes with their probabilities.
5. **Gradient-check one block** of the loaded network: ``numpyconv.gradcheck_layer`` runs the block
   (``layer1.0``, in eval mode: BatchNorm uses its running statistics) in a float64 copy on a small
   input and compares the hand-derived backward pass (input gradient and every parameter gradient)
   with central finite differences along random directions.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import numpyconv
from numpyconv.predict import load_model, predict


def build(model_name):
    """Step 1: the network with random weights (``rng`` seeds the initialisation)."""
    network = getattr(numpyconv.models, model_name)(rng=0)
    print(f"1. built {model_name}: {len(network.state_dict())} state_dict entries, "
          f"{sum(p.size for p in network.params.values()):,} parameters")
    return network


def write_checkpoint(network, path):
    """Step 2: the state_dict as a training checkpoint in PyTorch's zip format."""
    numpyconv.save_checkpoint({'state_dict': network.state_dict(), 'epoch': 0}, path, format='torch')
    print(f"2. wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB, PyTorch zip format)")


def load(model_name, path, reference=None):
    """Step 3: a fresh network with the checkpoint's weights, in eval mode."""
    state = numpyconv.state_dict_of(numpyconv.load_checkpoint(path, unknown='stub'))
    network = load_model(model_name, {'state_dict': state})
    if reference is not None:                 # the round trip keeps every value
        assert all(np.array_equal(v, reference[k]) for k, v in network.state_dict().items())
    print(f"3. loaded {len(state)} tensors from {Path(path).name} into a new {model_name}")
    return network


def make_image():
    """A 320x240 test picture: colour gradients and a disc."""
    from PIL import Image
    rows, cols = np.mgrid[0:240, 0:320]
    disc = (rows - 120) ** 2 + (cols - 170) ** 2 < 70 ** 2
    pixels = np.stack([cols * 255 // 319, rows * 255 // 239, np.where(disc, 220, 40)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def classify(network, model_name):
    """Step 4: the top-5 classes of the generated image."""
    tic = time.perf_counter()
    (top5,) = predict(network, [make_image()], model_name)
    print(f"4. top-5 classes of the generated image ({time.perf_counter() - tic:.2f} s):")
    for index, name, prob in top5:
        print(f"     {prob:7.2%}  {name} ({index})")


def check_block(network):
    """Step 5: gradcheck of the first residual block, float64, on a (2, C, 6, 6) input."""
    block = dict(network.named_modules())['layer1.0.']        # prefixes end with '.'
    weights = [w for w in block.params.values() if w.ndim >= 4]   # the first convolution's weight
    channels = weights[0].shape[-3] if weights else 64             # (..., C_out, C_in, kh, kw)
    x = np.random.default_rng(0).standard_normal((2, channels, 6, 6))
    report = numpyconv.gradcheck_layer(block, x, mode='random', n_directions=3)
    worst = max(r.max_rel_error for r in report.results)
    print(f"5. gradcheck of layer1.0 ({type(block).__name__}, float64): {len(report.results)} gradients "
          f"(input and every parameter) agree with finite differences; worst relative error {worst:.1e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description='build, load, predict, gradient-check', allow_abbrev=False)
    parser.add_argument('--model', default='resnet18', help='a builder of numpyconv.models')
    parser.add_argument('--checkpoint', default=None, help="a checkpoint file of that network's weights")
    args, _ = parser.parse_known_args(argv)         # tolerant: a test runner's own arguments are ignored
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            path, reference = Path(args.checkpoint), None
        else:
            network = build(args.model)
            path, reference = Path(tmp) / f'{args.model}.pth', network.state_dict()
            write_checkpoint(network, path)
        network = load(args.model, path, reference)
    classify(network, args.model)
    check_block(network)


if __name__ == '__main__':
    main()
