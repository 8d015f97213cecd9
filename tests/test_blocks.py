"""Building blocks: reference, gradcheck, identities, running statistics, errors, torch."""
import math

import numpy as np
import pytest

from numpyconv import blocks as B
from numpyconv.activations import softmax_forward
from numpyconv.gradcheck import gradcheck
from numpyconv.reference import blocks as ref

RNG = np.random.default_rng(2024)


def normal(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def labels_for(n, k):
    return np.random.default_rng(n * 31 + k).integers(0, k, size=n)


# One row per case: name -> (forward(*inputs), backward, make_inputs(dtype), reference(*inputs)).
RM, RV = np.array([0.3, -0.2, 0.1]), np.array([0.5, 2.0, 1.3])
CASES = {
    'linear': (B.linear_forward, B.linear_backward,
               lambda dt: (normal(3, 4, dtype=dt), normal(5, 4, dtype=dt), normal(5, dtype=dt)),
               ref.linear),
    'linear_no_bias': (B.linear_forward, B.linear_backward,
                       lambda dt: (normal(3, 4, dtype=dt), normal(2, 4, dtype=dt), None), ref.linear),
    'linear_3d': (B.linear_forward, B.linear_backward,
                  lambda dt: (normal(2, 3, 4, dtype=dt), normal(5, 4, dtype=dt), normal(5, dtype=dt)),
                  lambda x, w, b: ref.linear(x.reshape(6, 4), w, b).reshape(2, 3, 5)),
    # batch_norm: every array input checked, the running statistics too (zero gradient in training,
    # eq. 22a in eval)
    'bn_train_2d': (lambda *a: B.batch_norm_forward(*a, True), B.batch_norm_backward,
                    lambda dt: (normal(4, 3, dtype=dt), normal(3, dtype=dt), normal(3, dtype=dt),
                                RM.astype(dt), RV.astype(dt)),
                    lambda x, w, b, rm, rv: ref.batch_norm(x, w, b, rm, rv, True)),
    'bn_train_3d': (lambda *a: B.batch_norm_forward(*a, True, eps=1e-3), B.batch_norm_backward,
                    lambda dt: (normal(2, 3, 4, dtype=dt), normal(3, dtype=dt), normal(3, dtype=dt),
                                None, None),
                    lambda x, w, b, rm, rv: ref.batch_norm(x, w, b, None, None, True, eps=1e-3)),
    'bn_train_4d': (lambda *a: B.batch_norm_forward(*a, True), B.batch_norm_backward,
                    lambda dt: (normal(2, 3, 3, 2, dtype=dt), normal(3, dtype=dt), normal(3, dtype=dt),
                                RM.astype(dt), RV.astype(dt)),
                    lambda x, w, b, rm, rv: ref.batch_norm(x, w, b, rm, rv, True)),
    'bn_train_no_affine': (lambda *a: B.batch_norm_forward(*a, True), B.batch_norm_backward,
                           lambda dt: (normal(3, 3, 2, 2, dtype=dt), None, None, None, None),
                           lambda x, w, b, rm, rv: ref.batch_norm(x, w, b, None, None, True)),
    'bn_eval_4d': (lambda *a: B.batch_norm_forward(*a, False), B.batch_norm_backward,
                   lambda dt: (normal(2, 3, 2, 3, dtype=dt), normal(3, dtype=dt), normal(3, dtype=dt),
                               RM.astype(dt), RV.astype(dt)),
                   lambda x, w, b, rm, rv: ref.batch_norm(x, w, b, rm, rv, False)),
    'bn_eval_no_affine': (lambda *a: B.batch_norm_forward(*a, False, eps=1e-3), B.batch_norm_backward,
                          lambda dt: (normal(3, 3, 2, dtype=dt), None, None, RM.astype(dt), RV.astype(dt)),
                          lambda x, w, b, rm, rv: ref.batch_norm(x, w, b, rm, rv, False, eps=1e-3)),
    'layer_norm': (B.layer_norm_forward, B.layer_norm_backward,
                   lambda dt: (normal(4, 5, dtype=dt), normal(5, dtype=dt), normal(5, dtype=dt)),
                   ref.layer_norm),
    'layer_norm_3d_eps': (lambda x, w, b: B.layer_norm_forward(x, w, b, eps=1e-6), B.layer_norm_backward,
                          lambda dt: (normal(2, 3, 4, dtype=dt), normal(4, dtype=dt), None),
                          lambda x, w, b: ref.layer_norm(x, w, b, eps=1e-6)),
    'cross_entropy': (B.cross_entropy_forward, B.cross_entropy_backward,      # labels: integer, no gradient
                      lambda dt: (normal(5, 4, dtype=dt), labels_for(5, 4)), ref.cross_entropy),
}


@pytest.mark.parametrize('name', CASES)
def test_forward_matches_reference(name):
    forward, _, make, reference = CASES[name]
    inputs = make(np.float64)
    out, _ = forward(*inputs)
    np.testing.assert_allclose(out, reference(*inputs), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize('name', CASES)
def test_gradcheck(name):
    forward, backward, make, _ = CASES[name]
    gradcheck(forward, backward, make(np.float64), mode='full')


@pytest.mark.parametrize('name', CASES)
def test_float32_preserved_and_close(name):
    forward, backward, make, reference = CASES[name]
    inputs = make(np.float32)
    out, cache = forward(*inputs)
    grads = backward(np.ones(np.shape(out), dtype=np.float32), cache)
    assert out.dtype == np.float32
    assert all(g is None or g.dtype == np.float32 for g in grads)
    expected = reference(*[a.astype(np.float64) if a is not None and a.dtype.kind == 'f' else a
                           for a in inputs])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', CASES)
def test_inputs_and_dout_not_mutated(name):
    forward, backward, make, _ = CASES[name]
    inputs = make(np.float64)
    copies = [None if a is None else a.copy() for a in inputs]
    out, cache = forward(*inputs)
    dout = np.asarray(normal(*np.shape(out)))
    dout_copy = dout.copy()
    backward(dout, cache)
    for a, c in zip(inputs, copies):
        assert a is None or np.array_equal(a, c)
    np.testing.assert_array_equal(dout, dout_copy)


def test_gradient_tuple_has_none_for_none_inputs():
    x, w = normal(3, 4), normal(2, 4)
    y, cache = B.linear_forward(x, w)
    assert B.linear_backward(np.ones_like(y), cache)[2] is None
    y, cache = B.layer_norm_forward(x, None, None)
    assert B.layer_norm_backward(np.ones_like(y), cache)[1:] == (None, None)
    y, cache = B.batch_norm_forward(x, None, None, None, None, True)
    assert B.batch_norm_backward(np.ones_like(y), cache)[1:] == (None, None, None, None)
    y, cache = B.cross_entropy_forward(x, np.array([0, 3, 1]))
    assert B.cross_entropy_backward(1.0, cache)[1] is None                  # integer labels


# -- identities ------------------------------------------------------------------------------
def test_batch_norm_eval_with_unit_running_stats_is_affine():
    x, w, b = normal(3, 4, 2, 2), normal(4), normal(4)
    y, cache = B.batch_norm_forward(x, w, b, np.zeros(4), np.ones(4), False, eps=1e-5)
    scale = w / math.sqrt(1 + 1e-5)
    np.testing.assert_allclose(y, x * scale[:, None, None] + b[:, None, None], rtol=1e-13)
    dout = normal(*y.shape)
    np.testing.assert_allclose(B.batch_norm_backward(dout, cache)[0], dout * scale[:, None, None],
                               rtol=1e-13)


def test_batch_norm_eval_equals_train_with_batch_statistics():
    x, w, b = normal(4, 3, 2, 2), normal(3), normal(3)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    y_train, _ = B.batch_norm_forward(x, w, b, None, None, True)
    y_eval, _ = B.batch_norm_forward(x, w, b, mean, var, False)
    np.testing.assert_allclose(y_eval, y_train, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize('shape', [(5, 3), (2, 3, 4), (2, 3, 2, 3)])
def test_batch_norm_running_stats_returned_in_cache_inputs_untouched(shape):
    x = normal(*shape)
    running_mean, running_var = normal(3), 1 + RNG.random(3)
    before = running_mean.copy(), running_var.copy()
    expected = ref.batch_norm_running_stats(x, running_mean, running_var, momentum=0.3)
    _, cache = B.batch_norm_forward(x, None, None, running_mean, running_var, True, momentum=0.3)
    np.testing.assert_array_equal(running_mean, before[0])
    np.testing.assert_array_equal(running_var, before[1])
    np.testing.assert_allclose(cache['running_mean'], expected[0], rtol=1e-13)
    np.testing.assert_allclose(cache['running_var'], expected[1], rtol=1e-13)


def test_batch_norm_running_stats_by_hand():
    x = np.array([[1.0], [2.0], [4.0]])                     # one channel, m = 3
    _, cache = B.batch_norm_forward(x, None, None, np.array([0.0]), np.array([1.0]), True)
    # mean 7/3; unbiased variance ((1-7/3)^2 + (2-7/3)^2 + (4-7/3)^2) / 2 = 7/3
    np.testing.assert_allclose(cache['running_mean'], [0.1 * 7 / 3])
    np.testing.assert_allclose(cache['running_var'], [0.9 + 0.1 * 7 / 3])
    _, cache = B.batch_norm_forward(x, None, None, cache['running_mean'], cache['running_var'], False)
    np.testing.assert_allclose(cache['running_mean'], [0.1 * 7 / 3])   # eval: unchanged


def test_batch_norm_train_couples_samples_eval_does_not():
    x, w, b = normal(3, 2, 2, 2), normal(2), normal(2)
    dout = np.zeros_like(x)
    dout[0] = normal(2, 2, 2)                                # loss depends on sample 0 only
    _, cache = B.batch_norm_forward(x, w, b, None, None, True)
    assert np.abs(B.batch_norm_backward(dout, cache)[0][1:]).max() > 1e-3
    _, cache = B.batch_norm_forward(x, w, b, np.zeros(2), np.ones(2), False)
    np.testing.assert_array_equal(B.batch_norm_backward(dout, cache)[0][1:], 0.0)


def test_batch_norm_train_dx_orthogonal_to_constants():
    # (eq. 20): y is invariant to shifting a channel (and, with eps = 0, to scaling it about its
    # mean), so dx sums to 0 per channel and is orthogonal to x_hat
    x, w = normal(4, 3, 2, 2), normal(3)
    y, cache = B.batch_norm_forward(x, w, None, None, None, True, eps=0.0)
    dx = B.batch_norm_backward(normal(*y.shape), cache)[0]
    np.testing.assert_allclose(dx.sum(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose((dx * cache['x_hat']).sum(axis=(0, 2, 3)), 0.0, atol=1e-12)


def test_layer_norm_shift_and_scale_invariance():
    x, w, b = normal(3, 6), normal(6), normal(6)
    y, _ = B.layer_norm_forward(x, w, b)
    shift = normal(3, 1)
    np.testing.assert_allclose(B.layer_norm_forward(x + shift, w, b)[0], y, rtol=1e-12, atol=1e-12)
    y0 = B.layer_norm_forward(x, w, b, eps=0.0)[0]
    np.testing.assert_allclose(B.layer_norm_forward(7.5 * x, w, b, eps=0.0)[0], y0, rtol=1e-12, atol=1e-12)


def test_layer_norm_has_no_batch_coupling():
    x, w, b = normal(3, 5), normal(5), normal(5)
    _, cache = B.layer_norm_forward(x, w, b)
    dout = np.zeros_like(x)
    dout[0] = normal(5)
    np.testing.assert_array_equal(B.layer_norm_backward(dout, cache)[0][1:], 0.0)


def test_cross_entropy_values_and_gradient():
    z = normal(6, 4)
    t = labels_for(6, 4)
    loss, cache = B.cross_entropy_forward(z, t)
    p = softmax_forward(z)[0]
    np.testing.assert_allclose(loss, -np.log(p[np.arange(6), t]).mean(), rtol=1e-13)
    np.testing.assert_allclose(B.cross_entropy_forward(z + 500.0, t)[0], loss, rtol=1e-12)
    np.testing.assert_allclose(B.cross_entropy_forward(np.zeros((3, 5)), t[:3])[0], math.log(5))
    dz = B.cross_entropy_backward(2.0, cache)[0]
    np.testing.assert_allclose(dz.sum(axis=1), 0.0, atol=1e-15)
    np.testing.assert_allclose(dz, 2.0 * (p - np.eye(4)[t]) / 6, rtol=1e-12)
    assert isinstance(loss, np.float64)
    assert np.allclose(B.cross_entropy_backward(np.array(2.0), cache)[0], dz)


# -- batch 0 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('forward, backward, inputs', [
    (B.linear_forward, B.linear_backward, (np.zeros((0, 4)), normal(3, 4), normal(3))),
    (lambda x, w, b: B.batch_norm_forward(x, w, b, np.zeros(3), np.ones(3), True), B.batch_norm_backward,
     (np.zeros((0, 3, 2, 2)), normal(3), normal(3))),
    (lambda x, w, b: B.batch_norm_forward(x, w, b, np.zeros(3), np.ones(3), False), B.batch_norm_backward,
     (np.zeros((0, 3)), normal(3), normal(3))),
    (B.layer_norm_forward, B.layer_norm_backward, (np.zeros((0, 4)), normal(4), normal(4))),
])
def test_batch_zero(forward, backward, inputs):
    with np.errstate(all='raise'):
        out, cache = forward(*inputs)
        grads = backward(np.zeros_like(out), cache)
    assert out.shape[0] == 0 and grads[0].shape == inputs[0].shape
    for g, a in zip(grads[1:], inputs[1:]):
        np.testing.assert_array_equal(g, np.zeros_like(a))


def test_batch_zero_keeps_running_stats_and_cross_entropy_is_nan():
    running_mean, running_var = normal(3), 1 + RNG.random(3)
    before = running_mean.copy(), running_var.copy()
    B.batch_norm_forward(np.zeros((0, 3)), None, None, running_mean, running_var, True)
    np.testing.assert_array_equal(running_mean, before[0])
    np.testing.assert_array_equal(running_var, before[1])
    loss, cache = B.cross_entropy_forward(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    assert np.isnan(loss) and B.cross_entropy_backward(1.0, cache)[0].shape == (0, 3)


# -- errors ------------------------------------------------------------------------------------------
def test_batch_norm_single_value_per_channel_raises():
    with pytest.raises(ValueError, match='Expected more than 1 value per channel when training'):
        B.batch_norm_forward(normal(1, 3), None, None, None, None, True)
    with pytest.raises(ValueError, match='Expected more than 1 value per channel when training'):
        B.batch_norm_forward(normal(1, 3, 1, 1), None, None, None, None, True)
    B.batch_norm_forward(normal(1, 3, 2, 1), None, None, None, None, True)   # m = 2 is fine
    B.batch_norm_forward(normal(1, 3), None, None, np.zeros(3), np.ones(3), False)


@pytest.mark.parametrize('call, error, match', [
    (lambda: B.linear_forward(normal(3, 4), normal(5, 3)), ValueError, r'x must have shape \(\.\.\., 3\)'),
    (lambda: B.linear_forward(normal(3, 4), normal(5, 4), normal(4)),
     ValueError, r'bias must have shape \(5,\)'),
    (lambda: B.linear_forward(np.ones((3, 4), dtype=int), normal(5, 4)), TypeError, 'x must be float32'),
    (lambda: B.linear_forward(normal(3, 4), normal(5, 4, dtype=np.float32)), TypeError, 'same float dtype'),
    (lambda: B.batch_norm_forward(normal(2, 3, 4, 4, 1), None, None, None, None, True), ValueError,
     r'x must be \(N, C\), \(N, C, L\) or \(N, C, H, W\)'),
    (lambda: B.batch_norm_forward(normal(2, 3), normal(4), None, None, None, True), ValueError,
     r'weight must have shape \(3,\)'),
    (lambda: B.batch_norm_forward(normal(2, 3), None, None, np.zeros(3), None, False), ValueError,
     'eval-mode batch_norm needs running_mean and running_var'),
    (lambda: B.batch_norm_forward(normal(2, 3), None, None, None, None, 1),
     TypeError, 'training must be a bool'),
    (lambda: B.batch_norm_forward(normal(2, 3), None, None, None, None, True, momentum=1.5), ValueError,
     'momentum'),
    (lambda: B.layer_norm_forward(normal(3, 4), normal(3), None),
     ValueError, r'weight must have shape \(4,\)'),
    (lambda: B.layer_norm_forward(np.float64(1.0), None, None), TypeError, 'numpy.ndarray'),
    (lambda: B.cross_entropy_forward(normal(3, 4), np.array([0, 1, 4])),
     ValueError, r'labels must lie in \[0, 4\)'),
    (lambda: B.cross_entropy_forward(normal(3, 4), np.array([0.0, 1.0, 2.0])),
     TypeError, 'labels must be an integer'),
    (lambda: B.cross_entropy_forward(normal(3, 4), np.array([0, 1])),
     ValueError, r'labels must have shape \(3,\)'),
    (lambda: B.cross_entropy_forward(normal(3, 4, 1), np.array([0, 1, 2])),
     ValueError, r'logits must be \(N, num_classes\)'),
])
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_backward_checks_dout_shape():
    _, cache = B.cross_entropy_forward(normal(2, 3), np.array([0, 1]))
    with pytest.raises(ValueError, match=r'dout must have shape \(\)'):
        B.cross_entropy_backward(np.ones(2), cache)


def test_read_only_running_stats_are_fine_in_training():
    running_mean, running_var = np.zeros(3), np.ones(3)
    running_mean.flags.writeable = running_var.flags.writeable = False   # never written
    _, cache = B.batch_norm_forward(normal(4, 3), None, None, running_mean, running_var, True)
    assert cache['running_mean'].flags.writeable and np.abs(cache['running_mean']).max() > 0
    B.batch_norm_forward(normal(4, 3), None, None, running_mean, running_var, False)


def test_cross_entropy_backward_rejects_bool_dout():
    _, cache = B.cross_entropy_forward(normal(2, 3), np.array([0, 1]))
    with pytest.raises(TypeError, match='dout must be a float .* got bool True'):
        B.cross_entropy_backward(True, cache)


# -- PyTorch cross-checks (skipped without torch) -------------------------------------------------
def _torch_grads(torch, fn, inputs, dout):
    ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in inputs]
    out = fn(*ts)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), [None if t is None else t.grad.numpy() for t in ts]


def _torch_cases(torch):
    F = torch.nn.functional
    return {
        'linear': (F.linear, B.linear_forward, B.linear_backward, (normal(2, 3, 4), normal(5, 4), normal(5))),
        'batch_norm_train': (lambda x, w, b: F.batch_norm(x, None, None, w, b, True),
                             lambda x, w, b: B.batch_norm_forward(x, w, b, None, None, True),
                             B.batch_norm_backward, (normal(3, 2, 3, 2), normal(2), normal(2))),
        'batch_norm_eval': (lambda x, w, b: F.batch_norm(x, torch.tensor(RM), torch.tensor(RV), w, b, False),
                            lambda x, w, b: B.batch_norm_forward(x, w, b, RM, RV, False),
                            B.batch_norm_backward, (normal(4, 3), normal(3), normal(3))),
        'layer_norm': (lambda x, w, b: F.layer_norm(x, (5,), w, b, 1e-6),
                       lambda x, w, b: B.layer_norm_forward(x, w, b, 1e-6),
                       B.layer_norm_backward, (normal(2, 3, 5), normal(5), normal(5))),
        'cross_entropy': (lambda z: F.cross_entropy(z, torch.tensor(labels_for(5, 4))),
                          lambda z: B.cross_entropy_forward(z, labels_for(5, 4)),
                          B.cross_entropy_backward, (normal(5, 4),)),
    }


@pytest.mark.parametrize('name', ['linear', 'batch_norm_train', 'batch_norm_eval', 'layer_norm',
                                  'cross_entropy'])
def test_matches_torch(name):
    torch = pytest.importorskip('torch')
    torch_fn, forward, backward, inputs = _torch_cases(torch)[name]
    out, cache = forward(*inputs)
    dout = np.asarray(normal(*np.shape(out)))
    expected, expected_grads = _torch_grads(torch, torch_fn, inputs, dout)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    for g, e in zip(backward(dout, cache), expected_grads):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)


def test_batch_norm_running_stats_match_torch():
    torch = pytest.importorskip('torch')
    x = normal(4, 3, 2, 2)
    running_mean, running_var = normal(3), 1 + RNG.random(3)
    t_mean, t_var = torch.tensor(running_mean), torch.tensor(running_var)
    for _ in range(3):                                   # torch updates in place; ours returns them
        _, cache = B.batch_norm_forward(x, None, None, running_mean, running_var, True, momentum=0.2)
        running_mean, running_var = cache['running_mean'], cache['running_var']
        torch.nn.functional.batch_norm(torch.tensor(x), t_mean, t_var, training=True, momentum=0.2)
    np.testing.assert_allclose(running_mean, t_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(running_var, t_var.numpy(), rtol=1e-12)
