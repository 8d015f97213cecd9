"""Parameter counts of published models rebuilt from numpyconv layers (``numpyconv.count``).

Each technique adds its own ``test_<technique>_*`` functions below; the published figures and their
sources are cited next to each test.
"""
import pytest

import numpyconv as nc
from numpyconv.conv import Conv2d
from numpyconv.layers import BatchNorm2d, Linear


# -- ODConv (OSVAI/ODConv README, ImageNet, reduction 1/16; models/od_resnet.py) ----------------------
def _odconv_resnet18(kernel_num):
    """``(layer, input_shape)`` for every layer of od_resnet18 at 224x224.

    Stem ``conv1`` and the ``downsample`` 1x1 convolutions stay plain ``nn.Conv2d``; both 3x3
    convolutions of every BasicBlock are ``ODConv2d(..., reduction=0.0625, kernel_num)``. Max-pool,
    ReLU and dropout have no parameters.
    """
    from numpyconv.odconv import ODConv2d
    layers = [(Conv2d(3, 64, 7, 2, 3, bias=False, rng=0), (1, 3, 224, 224)),
              (BatchNorm2d(64), (1, 64, 112, 112))]
    size, in_planes = 56, 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            out = size // s
            layers += [(ODConv2d(in_planes, planes, 3, s, 1, kernel_num=kernel_num, rng=0),
                        (1, in_planes, size, size)),
                       (BatchNorm2d(planes), (1, planes, out, out)),
                       (ODConv2d(planes, planes, 3, 1, 1, kernel_num=kernel_num, rng=0),
                        (1, planes, out, out)),
                       (BatchNorm2d(planes), (1, planes, out, out))]
            if s != 1 or in_planes != planes:
                layers += [(Conv2d(in_planes, planes, 1, s, bias=False, rng=0), (1, in_planes, size, size)),
                           (BatchNorm2d(planes), (1, planes, out, out))]
            in_planes, size = planes, out
    layers.append((Linear(512, 1000, rng=0), (1, 512)))
    return layers


@pytest.mark.parametrize('kernel_num, published_millions, madds', [
    (1, 11.94, 1_828_491_440),
    pytest.param(4, 44.90, 1_861_449_072, marks=pytest.mark.slow),   # allocates 45M parameters
])
def test_odconv_resnet18_params_match_readme(kernel_num, published_millions, madds):
    """README: ResNet18 + ODConv 1x 11.94M params, + ODConv 4x 44.90M (MAdds 1.838G / 1.916G).

    The parameter count matches to the published two decimals. The MAdds are numpyconv's eq. 27
    of docs/derivations/odconv.md; the README's MAdds come from an unnamed counting tool and are
    not reproduced (see that file).
    """
    counts = [nc.count(layer, shape) for layer, shape in _odconv_resnet18(kernel_num)]
    params = sum(p for p, _ in counts)
    assert round(params / 1e6, 2) == published_millions
    assert sum(m for _, m in counts) == madds
