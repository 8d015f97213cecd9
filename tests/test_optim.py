"""SGD and Adam: hand formulas (eq. 33-35), in-place updates, inputs accepted, errors, torch."""
import numpy as np
import pytest

import numpyconv.layers as L
from numpyconv.activations import ReLU
from numpyconv.blocks import cross_entropy_backward, cross_entropy_forward
from numpyconv.module import Sequential
from numpyconv.optim import SGD, Adam

RNG = np.random.default_rng(5)


def gradient_sequence(shape, steps=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(steps)]


def run(make_optimizer, theta0, grads):
    """Apply ``grads`` one step each to a dict-held parameter; return its trajectory."""
    params, grad_arrays = {'w': theta0.copy()}, {'w': np.zeros_like(theta0)}
    opt = make_optimizer(params, grad_arrays)
    trajectory = []
    for g in grads:
        grad_arrays['w'][...] = g
        opt.step()
        trajectory.append(params['w'].copy())
    return trajectory


def sgd_by_hand(theta, grads, lr, momentum=0.0, weight_decay=0.0, nesterov=False, dampening=0.0):
    out, buf = [], None
    for g in grads:
        d = g + weight_decay * theta
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        theta = theta - lr * d
        out.append(theta)
    return out


def adam_by_hand(theta, grads, lr, beta1, beta2, eps, weight_decay=0.0):
    out, m, v = [], 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(theta)
    return out


@pytest.mark.parametrize('kwargs', [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1),
])
def test_sgd_matches_hand_formula(kwargs):
    theta0, grads = RNG.standard_normal((3, 2)), gradient_sequence((3, 2))
    got = run(lambda p, g: SGD(p, grads=g, **kwargs), theta0, grads)
    for a, b in zip(got, sgd_by_hand(theta0, grads, **kwargs)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_sgd_single_step_by_hand():
    params, grads = {'w': np.array([1.0, -2.0])}, {'w': np.array([0.5, 0.25])}
    SGD(params, 0.1, weight_decay=0.2, grads=grads).step()
    np.testing.assert_allclose(params['w'], [1.0 - 0.1 * (0.5 + 0.2), -2.0 - 0.1 * (0.25 - 0.4)])


@pytest.mark.parametrize('kwargs', [dict(), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)])
def test_adam_matches_hand_formula(kwargs):
    theta0, grads = RNG.standard_normal(5), gradient_sequence(5, steps=5)
    got = run(lambda p, g: Adam(p, grads=g, **kwargs), theta0, grads)
    full = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) | kwargs
    expected = adam_by_hand(theta0, grads, full['lr'], *full['betas'], full['eps'], full['weight_decay'])
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_adam_first_step_moves_every_coordinate_by_lr():
    # m_1 / sqrt(v_1) after bias correction is sign(g): |step| = lr (up to eps)
    params, grads = {'w': np.zeros(4)}, {'w': np.array([3.0, -1e-3, 50.0, -2.0])}
    Adam(params, lr=0.01, eps=0.0, grads=grads).step()
    np.testing.assert_allclose(params['w'], -0.01 * np.sign(grads['w']), rtol=1e-12)


def test_updates_module_params_in_place_and_zero_grad():
    model = Sequential(L.Linear(3, 4, rng=0), L.Linear(4, 2, rng=1))
    arrays = {k: id(v) for k, v in model.params.items()}
    before = {k: v.copy() for k, v in model.params.items()}
    for g in model.grads.values():
        g[...] = 1.0
    opt = SGD(model, lr=0.5)
    opt.step()
    assert {k: id(v) for k, v in model.params.items()} == arrays
    for k, v in model.params.items():
        assert v.dtype == np.float32
        np.testing.assert_allclose(v, before[k] - 0.5, rtol=1e-6)
    opt.zero_grad()
    assert all(not g.any() for g in model.grads.values())


def test_list_of_modules_and_shared_array_updated_once():
    a, b = L.Linear(2, 2, dtype=np.float64, rng=0), L.Linear(2, 2, dtype=np.float64, rng=1)
    before_a = a.params['weight'].copy()
    for layer in (a, b):
        for g in layer.grads.values():
            g[...] = 1.0
    SGD([a, b, a], lr=0.1).step()                      # a listed twice: still one update
    np.testing.assert_allclose(a.params['weight'], before_a - 0.1)


def test_does_not_mutate_gradients_and_keeps_float32():
    params = {'w': np.ones(3, dtype=np.float32)}
    grads = {'w': np.array([1.0, 2.0, 3.0], dtype=np.float32)}
    for opt in (SGD(params, 0.1, momentum=0.9, weight_decay=0.1, grads=grads),
                Adam(params, weight_decay=0.1, grads=grads)):
        opt.step()
        opt.step()
        np.testing.assert_array_equal(grads['w'], [1.0, 2.0, 3.0])
        assert params['w'].dtype == np.float32


def test_training_reduces_loss():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4))
    t = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = Sequential(L.Linear(4, 8, dtype=np.float64, rng=0), ReLU(),
                       L.Linear(8, 2, dtype=np.float64, rng=1))
    opt = Adam(model, lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss, cache = cross_entropy_forward(model(x), t)
        model.backward(cross_entropy_backward(1.0, cache)[0])
        opt.step()
        losses.append(loss)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize('call, error, match', [
    (lambda: SGD(ReLU(), lr=-1), ValueError, 'lr'),
    (lambda: SGD(ReLU(), lr=0.1, momentum=-0.5), ValueError, 'momentum'),
    (lambda: SGD(ReLU(), lr=0.1, nesterov=True), ValueError, 'Nesterov momentum requires'),
    (lambda: SGD(ReLU(), lr=0.1, momentum=0.9, nesterov=True, dampening=0.1), ValueError, 'zero dampening'),
    (lambda: Adam(ReLU(), betas=(0.9, 1.0)), ValueError, r'betas must lie in \[0, 1\)'),
    (lambda: Adam(ReLU(), betas=0.9), TypeError, 'betas must be a pair'),
    (lambda: Adam(ReLU(), eps=-1.0), ValueError, 'eps'),
    (lambda: SGD({'w': np.zeros(2)}, 0.1), ValueError, 'needs grads='),
    (lambda: SGD({'w': np.zeros(2)}, 0.1, grads={'v': np.zeros(2)}), ValueError, 'same keys'),
    (lambda: SGD('model', 0.1), TypeError, 'module must be a numpyconv Module'),
    (lambda: SGD([], 0.1), TypeError, 'non-empty list'),
    (lambda: SGD({'w': np.zeros(2)}, 0.1, grads={'w': np.zeros(3)}), ValueError,
     r"gradient 'w' must have the shape of its parameter \(2,\), got \(3,\)"),
    (lambda: SGD(L.Linear(2, 3), 0.1, grads={'weight': np.zeros((3, 2))}), TypeError,
     'grads= goes with a dict of parameter arrays only'),
    (lambda: Adam([L.Linear(2, 3)], 0.1, grads='nonsense'), TypeError, 'grads= goes with a dict'),
    (lambda: SGD({'w': [0.0, 1.0]}, 0.1, grads={'w': [0.0, 1.0]}), TypeError,   # not AttributeError
     "parameter 'w' must be a numpy.ndarray, got list"),
    (lambda: Adam({'w': np.zeros(2, int)}, grads={'w': np.zeros(2, int)}), TypeError,   # at construction
     "parameter 'w' must be float32 or float64, got dtype int64"),
    (lambda: SGD({'w': np.zeros(2)}, 0.1, grads={'w': np.zeros(2, complex)}), TypeError,
     "gradient 'w' must be float32 or float64"),
])
def test_bad_arguments_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()


# -- PyTorch trajectories --------------------------------------------------------------------------
@pytest.mark.parametrize('name, kwargs', [
    ('SGD', dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)),
    ('SGD', dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ('Adam', dict(lr=0.01, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.02)),
])
def test_trajectory_matches_torch_optim(name, kwargs):
    torch = pytest.importorskip('torch')
    layer = L.Linear(3, 2, dtype=np.float64, rng=0)
    tlayer = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        for key, p in tlayer.named_parameters():
            p.copy_(torch.tensor(layer.params[key]))
    opt = {'SGD': SGD, 'Adam': Adam}[name](layer, **kwargs)
    topt = getattr(torch.optim, name)(tlayer.parameters(), **kwargs)
    for seed in range(6):
        grads = {k: np.random.default_rng(seed + 10 * i).standard_normal(v.shape)
                 for i, (k, v) in enumerate(layer.params.items())}
        for key, p in tlayer.named_parameters():
            p.grad = torch.tensor(grads[key])
            layer.grads[key][...] = grads[key]
        opt.step()
        topt.step()
    for key, p in tlayer.named_parameters():
        np.testing.assert_allclose(layer.params[key], p.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_a_gradient_replaced_by_one_of_another_shape_is_refused_at_step():
    params, grads = {'w': np.zeros(2)}, {'w': np.zeros(2)}
    opt = SGD(params, 0.1, grads=grads)
    grads['w'] = np.zeros(3)
    with pytest.raises(ValueError, match=r"gradient 'w' must have the shape of its parameter \(2,\), "
                                         r"got \(3,\)"):
        opt.step()
    np.testing.assert_array_equal(params['w'], np.zeros(2))
