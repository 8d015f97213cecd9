"""Parameter counts and multiply-adds of published models, built by ``numpyconv.models`` and counted
with ``numpyconv.count`` at 224x224 (1000 classes).

Each figure is cited next to its test; where numpyconv counts differently from the published
figure (an unnamed counter, element-wise work), the test records both.
"""
import pytest

import numpyconv as nc
from numpyconv import models

SHAPE = (1, 3, 224, 224)


# -- torchvision (the baseline; torchvision/models/resnet.py, weights metadata) ------------------------------
@pytest.mark.parametrize('builder, num_params, gflops', [
    (models.resnet18, 11_689_512, 1.814),            # ResNet18_Weights.IMAGENET1K_V1: num_params, _ops
    (models.resnet50, 25_557_032, 4.089),            # ResNet50_Weights.IMAGENET1K_V1 / V2
])
def test_torchvision_resnets_match_the_weights_metadata(builder, num_params, gflops):
    """torchvision's ``_ops`` (GFLOPS) counts one per multiply-add of convolutions and fc, as numpyconv."""
    params, macs = nc.count(builder(), SHAPE)
    assert params == num_params
    assert round(macs / 1e9, 3) == gflops


# -- ODConv (OSVAI/ODConv README, ImageNet, reduction 1/16; models/od_resnet.py) ----------------------------
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
    params, macs = nc.count(models.od_resnet18(kernel_num=kernel_num), SHAPE)
    assert round(params / 1e6, 2) == published_millions
    assert macs == madds


@pytest.mark.parametrize('kernel_num, published_millions, published_gmadds', [
    (1, 28.64, 3.916),
    pytest.param(4, 90.67, 4.080, marks=pytest.mark.slow),           # allocates 91M parameters
])
def test_odconv_resnet50_params_match_readme(kernel_num, published_millions, published_gmadds):
    """README: ResNet50 + ODConv 1x 28.64M params / 3.916G MAdds, 4x 90.67M / 4.080G (the plain
    ResNet50: 25.56M / 3.858G there, where torchvision's metadata gives 4.089 GFLOPS).

    The parameter count matches to the published two decimals. numpyconv's multiply-adds (eq. 27)
    exceed the README's, whose counter gives the plain ResNet-50 0.23G fewer than torchvision's:
    recorded, not matched.
    """
    params, macs = nc.count(models.od_resnet50(kernel_num=kernel_num), SHAPE)
    assert round(params / 1e6, 2) == published_millions
    assert 1.0 < macs / (published_gmadds * 1e9) < 1.06


# -- Octave convolution (d-li14/octconv.pytorch README: ResNet-50 on ImageNet) -----------------------------
def test_oct_resnet50_matches_readme():
    """README: OctResNet-50 (alpha=0.5) 25.557M parameters, 2.367 GFLOPs (ResNet-50: 25.557M, 4.089).

    The octave paths run at their own resolutions; numpyconv counts each path's multiply-adds there
    (docs/derivations/octave.md), which gives the published figure to its three decimals.
    """
    params, macs = nc.count(models.oct_resnet50(), SHAPE)
    assert round(params / 1e6, 3) == 25.557
    assert round(macs / 1e9, 3) == 2.367
