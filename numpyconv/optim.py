r"""Optimisers with ``torch.optim``'s update formulas: :class:`SGD` and :class:`Adam`.

An optimiser updates parameter arrays IN PLACE from their gradients. It takes a layer
(``module.params`` / ``module.grads``), a list of layers, or a dict of parameter arrays together
with ``grads=`` (a dict of gradient arrays with the same keys)::

    opt = SGD(model, lr=0.1, momentum=0.9)
    for x, t in batches:
        opt.zero_grad()                       # grads accumulate (+=) in backward
        loss, cache = cross_entropy_forward(model(x), t)
        model.backward(cross_entropy_backward(1.0, cache)[0])
        opt.step()

Per parameter ``theta`` with gradient ``g`` at step ``t = 1, 2, ...`` (docs/derivations/blocks.md);
weight decay is PyTorch's coupled L2 form ``g <- g + weight_decay * theta`` in both:

* SGD (eq. 33): ``b_1 = g_1``, ``b_t = momentum b_{t-1} + (1 - dampening) g_t``;
  ``theta -= lr * (g_t + momentum b_t)`` with Nesterov, ``theta -= lr * b_t`` otherwise
  (``momentum = 0``: ``theta -= lr * g``).
* Adam (eq. 34-35): ``m_t = beta1 m_{t-1} + (1 - beta1) g``, ``v_t = beta2 v_{t-1} + (1 - beta2) g^2``,
  ``theta -= lr / (1 - beta1^t) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)``.

``lr`` may be changed between steps (a schedule); it is checked as the constructor's is. An array
shared by several layers is updated once per step.
"""
import math

import numpy as np

from ._checks import flag, float_array, real
from .module import Module


def _check_grad_shape(key, param, grad):
    if grad.shape != param.shape:
        raise ValueError(f"gradient {key!r} must have the shape of its parameter {param.shape}, "
                         f"got {grad.shape}")


def _sources(module, grads):
    """List of callables, each returning one ``(params, grads)`` pair of dicts."""
    if grads is not None and not isinstance(module, dict):
        raise TypeError(f"grads= goes with a dict of parameter arrays only (a Module brings its own "
                        f"gradients), got grads= with module of type {type(module).__name__}")
    if isinstance(module, Module):
        return [lambda: (module.params, module.grads)]
    if isinstance(module, dict):
        if not isinstance(grads, dict) or set(grads) != set(module):
            given = sorted(grads) if isinstance(grads, dict) else grads
            raise ValueError(f"a dict of parameters needs grads= with the same keys; parameters "
                             f"{sorted(module)}, grads {given!r}")
        for key in module:
            float_array(module[key], f"parameter {key!r}")
            float_array(grads[key], f"gradient {key!r}")
            _check_grad_shape(key, module[key], grads[key])
        return [lambda: (module, grads)]
    if isinstance(module, (list, tuple)) and module and all(isinstance(m, Module) for m in module):
        return [s for m in module for s in _sources(m, None)]
    raise TypeError(f"module must be a numpyconv Module, a non-empty list of Modules or a dict of "
                    f"parameter arrays (with grads=), got {type(module).__name__}")


class _Optimizer:
    """Shared machinery: parameter discovery, per-parameter ``state`` and :meth:`zero_grad`."""

    def __init__(self, module, lr, weight_decay, grads):
        self._sources = _sources(module, grads)
        self.lr = lr
        self.weight_decay = real(weight_decay, 'weight_decay', 0)
        self.state = {}

    @property
    def lr(self):
        """The learning rate, a finite real >= 0 (set it between steps for a schedule)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = real(value, 'lr', 0)

    def _parameters(self):
        """Yield ``(key, param, grad)`` for every distinct parameter array."""
        seen = set()
        for i, source in enumerate(self._sources):
            params, grads = source()
            for name, param in params.items():
                grad = grads[name]
                if id(param) in seen:
                    continue
                seen.add(id(param))
                _check_grad_shape(name, param, grad)
                yield (i, name), param, grad

    def _decayed(self, param, grad):
        return grad + self.weight_decay * param if self.weight_decay else grad

    def zero_grad(self):
        """Set every gradient array to 0 in place."""
        for _, _, grad in self._parameters():
            grad.fill(0)


class SGD(_Optimizer):
    """``torch.optim.SGD(params, lr, momentum, dampening, weight_decay, nesterov)`` (eq. 33)."""

    def __init__(self, module, lr, momentum=0, weight_decay=0, nesterov=False, dampening=0, *,
                 grads=None):
        super().__init__(module, lr, weight_decay, grads)
        self.momentum = real(momentum, 'momentum', 0)
        self.dampening = real(dampening, 'dampening', -math.inf)
        self.nesterov = flag(nesterov, 'nesterov')
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"Nesterov momentum requires a momentum > 0 and zero dampening, got "
                             f"momentum={momentum}, dampening={dampening}")

    def step(self):
        """One update of every parameter, in place."""
        for key, param, grad in self._parameters():
            direction = self._decayed(param, grad)
            if self.momentum:
                buffer = self.state.get(key)
                if buffer is None:
                    buffer = self.state[key] = direction.copy()               # b_1 = g_1
                else:
                    buffer *= self.momentum
                    buffer += (1 - self.dampening) * direction
                direction = direction + self.momentum * buffer if self.nesterov else buffer
            param -= self.lr * direction


class Adam(_Optimizer):
    """``torch.optim.Adam(params, lr, betas, eps, weight_decay)`` (eq. 34-35; no amsgrad)."""

    def __init__(self, module, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, *,
                 grads=None):
        super().__init__(module, lr, weight_decay, grads)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        self.betas = tuple(real(b, f'betas[{i}]', 0, 1) for i, b in enumerate(betas))
        if self.betas[0] == 1 or self.betas[1] == 1:
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        self.eps = real(eps, 'eps', 0)

    def step(self):
        """One update of every parameter, in place."""
        beta1, beta2 = self.betas
        for key, param, grad in self._parameters():
            grad = self._decayed(param, grad)
            state = self.state.setdefault(key, dict(step=0, exp_avg=np.zeros_like(param),
                                                    exp_avg_sq=np.zeros_like(param)))
            state['step'] += 1
            m, v, t = state['exp_avg'], state['exp_avg_sq'], state['step']
            m *= beta1
            m += (1 - beta1) * grad                                               # (eq. 34)
            v *= beta2
            v += (1 - beta2) * grad * grad
            denom = np.sqrt(v) / math.sqrt(1 - beta2 ** t) + self.eps
            param -= self.lr / (1 - beta1 ** t) * (m / denom)                     # (eq. 35)
