"""Dropout, channel dropout and stochastic depth: references, gradcheck with explicit masks,
statistics of the random draw, PyTorch (masks read from its outputs), timm's rule, layers, errors."""
import numpy as np
import pytest

import numpyconv
from numpyconv import dropout as D
from numpyconv.gradcheck import gradcheck, gradcheck_layer
from numpyconv.module import count
from numpyconv.reference import dropout as ref_dropout_op
from numpyconv.reference.dropout import (drop_path as ref_drop_path,
                                         drop_path_backward as ref_drop_path_backward,
                                         dropout2d as ref_dropout2d,
                                         dropout2d_backward as ref_dropout2d_backward,
                                         dropout_backward as ref_dropout_backward)

RNG = np.random.default_rng(83)
F64 = dict(dtype=np.float64, rng=0)


def normal(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


# op -> (forward, backward, reference, reference backward, x shape, mask shape, probability keyword)
OPS = {
    'dropout': (D.dropout_forward, D.dropout_backward, ref_dropout_op, ref_dropout_backward,
                (3, 4, 5), (3, 4, 5), 'p'),
    'dropout2d': (D.dropout2d_forward, D.dropout2d_backward, ref_dropout2d, ref_dropout2d_backward,
                  (3, 4, 2, 3), (3, 4, 1, 1), 'p'),
    'drop_path': (D.drop_path_forward, D.drop_path_backward, ref_drop_path, ref_drop_path_backward,
                  (5, 2, 3, 2), (5, 1, 1, 1), 'drop_prob'),
}


@pytest.mark.parametrize('name', OPS)
@pytest.mark.parametrize('p', [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize('use_mask', [True, False])
def test_matches_reference(name, p, use_mask):
    forward, backward, reference, reference_backward, shape, mask_shape, key = OPS[name]
    x = normal(*shape)
    kwargs = {key: p, 'mask': RNG.random(mask_shape) < 0.5} if use_mask else {key: p, 'rng': 7}
    y, cache = forward(x, **kwargs)
    dout = normal(*shape)
    np.testing.assert_allclose(y, reference(x, **kwargs), rtol=1e-15)
    dx, dmask = backward(dout, cache)
    assert dmask is None
    np.testing.assert_allclose(dx, reference_backward(dout, x, **kwargs)[0], rtol=1e-15)


@pytest.mark.parametrize('name', OPS)
def test_gradcheck_with_an_explicit_mask(name):
    forward, backward, _, _, shape, mask_shape, key = OPS[name]
    mask = RNG.random(mask_shape) < 0.6
    gradcheck(lambda x, m: forward(x, **{key: 0.3}, mask=m), backward, (normal(*shape), mask), mode='full')


@pytest.mark.parametrize('name', OPS)
def test_eval_is_the_identity_and_p_zero_keeps_everything(name):
    forward, backward, _, _, shape, mask_shape, key = OPS[name]
    x, dout = normal(*shape), normal(*shape)
    for kwargs in ({key: 0.7, 'training': False}, {key: 0.0}):
        y, cache = forward(x, **kwargs)
        assert y is not x
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(backward(dout, cache)[0], dout)
    y, cache = forward(x, **{key: 1.0})                                        # everything dropped
    np.testing.assert_array_equal(y, 0.0)
    np.testing.assert_array_equal(backward(dout, cache)[0], 0.0)


@pytest.mark.parametrize('name', OPS)
def test_draws_are_reproducible_unbiased_and_shaped(name):
    forward, backward, _, _, _, _, key = OPS[name]
    shape = (400, 50, 1, 1) if name != 'drop_path' else (20000, 1, 1, 1)
    x = np.ones(shape)
    y, cache = forward(x, **{key: 0.3}, rng=11)
    np.testing.assert_array_equal(forward(x, **{key: 0.3}, rng=11)[0], y)
    assert not np.array_equal(forward(x, **{key: 0.3}, rng=12)[0], y)
    kept = cache['keep'].mean()
    assert abs(kept - 0.7) < 0.02                                  # 20000 draws: 4.6 standard deviations
    np.testing.assert_allclose(y.mean(), 1.0, atol=0.03)           # inverted scaling keeps the mean
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.7])
    grad = backward(np.ones(shape), cache)[0]
    np.testing.assert_array_equal(grad, y)                          # dx = dout * the same multiplier


def test_channels_and_samples_are_dropped_whole():
    x = np.ones((6, 8, 3, 3))
    y, cache = D.dropout2d_forward(x, 0.5, rng=3)
    per_channel = y.reshape(6, 8, 9)
    assert (per_channel.min(axis=2) == per_channel.max(axis=2)).all() and cache['keep'].shape == (6, 8, 1, 1)
    y, cache = D.drop_path_forward(x, 0.5, rng=3)
    per_sample = y.reshape(6, -1)
    assert (per_sample.min(axis=1) == per_sample.max(axis=1)).all() and cache['keep'].shape == (6, 1, 1, 1)
    mask = np.array([1, 0, 1, 1, 0, 0], bool)[:, None, None, None]
    y, _ = D.drop_path_forward(x, 0.5, scale_by_keep=False, mask=mask)
    np.testing.assert_array_equal(y.reshape(6, -1).max(axis=1), [1, 0, 1, 1, 0, 0])


def test_float32_batch_zero_and_no_mutation():
    x = normal(2, 3, 4, 4, dtype=np.float32)
    copy = x.copy()
    for forward, backward, _, _, _, _, key in OPS.values():
        y, cache = forward(x, **{key: 0.4}, rng=0)
        assert y.dtype == backward(np.ones_like(y), cache)[0].dtype == np.float32
        np.testing.assert_array_equal(x, copy)
        y0, cache0 = forward(x[:0], **{key: 0.4}, rng=0)
        assert y0.shape == (0, 3, 4, 4) and backward(y0, cache0)[0].shape == (0, 3, 4, 4)


# -- PyTorch and timm ---------------------------------------------------------------------------------
def test_dropout_matches_torch_given_its_mask():
    torch = pytest.importorskip('torch')
    x = normal(4, 5, 6) + 10.0                                         # no zeros: the mask is y != 0
    for p in (0.2, 0.5, 0.9):
        xt = torch.tensor(x, requires_grad=True)
        torch.manual_seed(1)
        yt = torch.nn.functional.dropout(xt, p)
        dout = normal(*x.shape)
        yt.backward(torch.tensor(dout))
        mask = yt.detach().numpy() != 0
        y, cache = D.dropout_forward(x, p, mask=mask)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-15)
        np.testing.assert_allclose(D.dropout_backward(dout, cache)[0], xt.grad.numpy(), rtol=1e-15)


def test_dropout2d_matches_torch_given_its_mask():
    torch = pytest.importorskip('torch')
    x = normal(4, 6, 3, 2) + 10.0
    xt = torch.tensor(x, requires_grad=True)
    torch.manual_seed(2)
    yt = torch.nn.functional.dropout2d(xt, 0.4)
    dout = normal(*x.shape)
    yt.backward(torch.tensor(dout))
    mask = (yt.detach().numpy() != 0)[:, :, :1, :1]
    y, cache = D.dropout2d_forward(x, 0.4, mask=mask)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-15)
    np.testing.assert_allclose(D.dropout2d_backward(dout, cache)[0], xt.grad.numpy(), rtol=1e-15)


def test_p_one_multiplies_by_zero_as_torch():
    torch = pytest.importorskip('torch')
    x = np.array([[1.0, np.inf, -2.0]])
    with np.errstate(invalid='ignore'):
        y, _ = D.dropout_forward(x, 1.0, rng=0)
    expected = torch.nn.functional.dropout(torch.tensor(x), 1.0).numpy()
    np.testing.assert_array_equal(y, expected)                                        # inf * 0: NaN


def _timm_drop_path(torch, x, drop_prob, scale_by_keep):
    """timm's drop_path (timm.layers.drop), written out: one Bernoulli draw per sample."""
    keep_prob = 1 - drop_prob
    random_tensor = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


@pytest.mark.parametrize('drop_prob, scale_by_keep', [(0.3, True), (0.3, False), (0.8, True)])
def test_drop_path_matches_timm_given_its_mask(drop_prob, scale_by_keep):
    torch = pytest.importorskip('torch')
    x = normal(12, 3, 2, 2) + 10.0
    xt = torch.tensor(x, requires_grad=True)
    torch.manual_seed(3)
    yt = _timm_drop_path(torch, xt, drop_prob, scale_by_keep)
    dout = normal(*x.shape)
    yt.backward(torch.tensor(dout))
    mask = (yt.detach().numpy() != 0)[:, :1, :1, :1]
    y, cache = D.drop_path_forward(x, drop_prob, scale_by_keep=scale_by_keep, mask=mask)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-15)
    np.testing.assert_allclose(D.drop_path_backward(dout, cache)[0], xt.grad.numpy(), rtol=1e-15)


# -- layers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('make, torch_name, shape', [
    (lambda: D.Dropout(0.3, **F64), 'Dropout', (4, 5)),
    (lambda: D.Dropout2d(0.3, **F64), 'Dropout2d', (2, 3, 4, 4)),
    (lambda: D.DropPath(0.3, **F64), None, (4, 3, 2, 2)),
])
def test_layers_train_eval_keys_and_gradients(make, torch_name, shape):
    layer, x = make(), normal(*shape)
    if torch_name is not None:
        torch = pytest.importorskip('torch')
        assert list(getattr(torch.nn, torch_name)(0.3).state_dict()) == []
    assert layer.state_dict() == {} and count(layer, shape) == (0, 0)
    y = layer(x)
    mask = layer._cache['keep']
    dout = normal(*shape)
    np.testing.assert_allclose(layer.backward(dout), dout * mask / 0.7, rtol=1e-15)   # the forward's mask
    assert not np.array_equal(layer(x), y) or mask.all()                          # a new draw each call
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer.backward(dout), dout)
    gradcheck_layer(layer, x, mode='full')


def test_layers_are_reproducible_from_their_rng_and_exported():
    x = normal(6, 7)
    np.testing.assert_array_equal(D.Dropout(0.5, rng=4)(x), D.Dropout(0.5, rng=4)(x))
    assert D.Dropout(inplace=True).inplace and D.DropPath().drop_prob == 0.0 and D.DropPath().scale_by_keep
    for name in ('Dropout', 'Dropout2d', 'DropPath', 'dropout_forward', 'dropout2d_backward',
                 'drop_path_forward'):
        assert hasattr(numpyconv, name)
    assert not isinstance(D.Dropout2d(), D.Dropout)


# -- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize('call, error, match', [
    (lambda: D.dropout_forward(normal(3), 1.5), ValueError, r'p must be a probability in \[0, 1\], got 1.5'),
    (lambda: D.dropout_forward(normal(3), -0.1), ValueError, 'p must be a probability'),
    (lambda: D.dropout_forward(normal(3), float('nan')), ValueError, 'p must be a probability'),
    (lambda: D.dropout_forward(normal(3), '0.5'), TypeError, 'p must be a real number'),
    (lambda: D.dropout_forward(normal(3), True), TypeError, 'p must be a real number'),
    (lambda: D.dropout_forward(normal(3), 0.5, training=1), TypeError, 'training must be a bool'),
    (lambda: D.dropout_forward(normal(3, 2), 0.5, mask=np.ones(3, bool)), ValueError,
     r'mask must have shape \(3, 2\), got \(3,\)'),
    (lambda: D.dropout_forward(normal(3), 0.5, mask=np.ones(3)), TypeError, 'mask must be a boolean array'),
    (lambda: D.dropout_forward(normal(3), 0.5, mask=[True, False, True]), TypeError,
     'mask must be a boolean numpy.ndarray'),
    (lambda: D.dropout2d_forward(normal(2, 3, 4, 4), 0.5, mask=np.ones((2, 3), bool)), ValueError,
     r'mask must have shape \(2, 3, 1, 1\)'),
    (lambda: D.dropout2d_forward(normal(3, 4, 4), 0.5), ValueError, r'x must be \(N, C, H, W\)'),
    (lambda: D.drop_path_forward(normal(4, 2), 2.0), ValueError, 'drop_prob must be a probability'),
    (lambda: D.drop_path_forward(normal(4, 2), 0.5, scale_by_keep=None), TypeError,
     'scale_by_keep must be a bool'),
    (lambda: D.drop_path_forward(normal(4, 2), 0.5, mask=np.ones((4, 2), bool)), ValueError,
     r'mask must have shape \(4, 1\)'),
    (lambda: D.drop_path_forward(np.float64(1.0), 0.5), TypeError, 'numpy.ndarray'),
    (lambda: D.dropout_forward(np.arange(3), 0.5), TypeError, 'x must be float32 or float64'),
    (lambda: D.Dropout(1.2), ValueError, 'p must be a probability'),
    (lambda: D.DropPath(-1), ValueError, 'drop_prob must be a probability'),
    (lambda: D.Dropout(0.5, inplace='no'), TypeError, 'inplace must be a bool'),
    (lambda: D.dropout_backward(np.ones(3), D.drop_path_forward(normal(3), 0.5)[1]), TypeError,
     'dropout_backward was given the cache of drop_path_forward'),
])
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()
