"""Float64 gradchecks of the plain-loop helper pairs the reference backward passes are built from.

The reference backward of each op is compared with the fast backward elsewhere; these check the
shared loops on their own against finite differences, so that a wrong helper is named directly:
octave's 2x2 pooling and upsampling (octave.md eq. 10, 11), the global pooling of the dynamic family
(dynamic.md eq. 1) and the convolution with one kernel per sample (dynamic.md eq. 8).
"""
import numpy as np
import pytest

from numpyconv.gradcheck import gradcheck
from numpyconv.reference import dynamic, octave
from numpyconv.reference.conv import conv2d

RNG = np.random.default_rng(11)


@pytest.mark.parametrize('shape', [(2, 3, 4, 6), (1, 2, 5, 3)])          # odd sizes drop a row/column
def test_avg_pool2_pair(shape):
    gradcheck(octave.avg_pool2, lambda g, x: (octave.avg_pool2_backward(g, x.shape),),
              (RNG.standard_normal(shape),), returns_cache=False)


def test_upsample2_pair():
    gradcheck(octave.upsample2, lambda g, x: (octave.upsample2_backward(g),),
              (RNG.standard_normal((2, 3, 3, 2)),), returns_cache=False)


def test_pooling_and_upsampling_are_adjoint_up_to_scale():
    """<P x, g> = <x, P^T g> and U^T = 4 P^T on even sizes (each 2x2 block)."""
    x, g = RNG.standard_normal((2, 3, 4, 6)), RNG.standard_normal((2, 3, 2, 3))
    assert np.isclose(np.vdot(octave.avg_pool2(x), g), np.vdot(x, octave.avg_pool2_backward(g, x.shape)))
    h = RNG.standard_normal((2, 3, 4, 6))
    np.testing.assert_allclose(octave.upsample2_backward(h), 4 * octave.avg_pool2(h), rtol=1e-13)


def test_pool_pair():
    gradcheck(dynamic.pool, lambda dp, x: (dynamic.pool_backward(dp, x.shape),),
              (RNG.standard_normal((2, 3, 4, 5)),), returns_cache=False)


@pytest.mark.parametrize('stride, padding, dilation, groups', [(1, 1, 1, 1), (2, (1, 0), 1, 2), (1, 2, 2, 1)])
def test_per_sample_conv2d_pair(stride, padding, dilation, groups):
    x = RNG.standard_normal((2, 4, 6, 5))
    weight = RNG.standard_normal((2, 6, 4 // groups, 3, 3))
    bias = RNG.standard_normal((2, 6))

    def forward(x, weight, bias):
        return np.stack([conv2d(x[n:n + 1], weight[n], bias[n], stride, padding, dilation, groups)[0]
                         for n in range(x.shape[0])])

    def backward(dy, x, weight, bias):
        return dynamic.per_sample_conv2d_backward(dy, x, weight, stride, padding, dilation, groups)
    gradcheck(forward, backward, (x, weight, bias), returns_cache=False)
