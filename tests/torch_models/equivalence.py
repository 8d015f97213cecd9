"""Comparing a numpyconv network with its PyTorch re-creation through checkpoint files.

``load_through_files`` saves the PyTorch state_dict with ``torch.save`` (zip or legacy format) and
loads it with numpyconv's own reader (``load_checkpoint`` + ``state_dict_of``) into the numpyconv
model, unchanged; ``assert_same_pass`` compares output, input gradient, every parameter gradient and
the buffers after the pass (train-mode running statistics), as relative errors.
"""
import contextlib
import sys
import warnings

import numpy as np
import torch

import numpyconv as nc


def randomize(module, seed, scale=1.0):
    """Random parameters and BatchNorm statistics in place (weights N(0, scale^2 / fan_in), biases
    and norm shifts N(0, 0.1^2), norm scales 1 + N(0, 0.1^2), running variances U(0.5, 1.5))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point:
                t.fill_(3)                                             # num_batches_tracked
            elif name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
            elif t.dim() <= 1:
                base = 1.0 if _is_norm_weight(module, name) else 0.0
                t.copy_(base + 0.1 * torch.randn(t.shape, generator=g, dtype=t.dtype))
            else:
                fan_in = int(np.prod(t.shape[2:] if t.dim() == 5 else t.shape[1:]))
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * scale / fan_in ** 0.5)


def _is_norm_weight(module, name):
    owner = module.get_submodule(name.rsplit('.', 1)[0]) if '.' in name else module
    norms = (torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.BatchNorm1d)
    return isinstance(owner, norms) and name.endswith('weight')


def load_through_files(ours, theirs, tmp_path, legacy, wrap=None):
    """Save ``theirs.state_dict()`` (inside ``{wrap: ...}`` if given) with ``torch.save`` and load it
    into ``ours`` through ``numpyconv.load_checkpoint`` / ``state_dict_of``; check the keys' order."""
    state = theirs.state_dict()
    path = tmp_path / ('legacy.pth' if legacy else 'zip.pth')
    torch.save(state if wrap is None else {wrap: state, 'epoch': 1}, path,
               _use_new_zipfile_serialization=not legacy)
    loaded = nc.state_dict_of(nc.load_checkpoint(path))
    assert list(loaded) == list(state)
    assert list(ours.state_dict()) == list(state)
    ours.load_state_dict(loaded)


@contextlib.contextmanager
def picklable_classes(module):
    """Make the classes of ``module``'s submodules that this test environment defines inside
    functions (``<locals>``) picklable by name for the duration: each is set as an attribute of its
    module under a plain name, as a class of a training script is."""
    renamed = []
    for i, cls in enumerate(dict.fromkeys(type(m) for m in module.modules())):
        if '<locals>' in cls.__qualname__:
            name = f"local{i}_" + cls.__qualname__.replace('.<locals>.', '_')
            renamed.append((cls, cls.__qualname__, name))
            setattr(sys.modules[cls.__module__], name, cls)
            cls.__qualname__ = name
    try:
        yield
    finally:
        for cls, qualname, name in renamed:
            cls.__qualname__ = qualname
            delattr(sys.modules[cls.__module__], name)


def load_whole(ours, theirs, tmp_path, legacy):
    """Save ``theirs`` itself (``torch.save(module)``: the module objects pickled; legacy format inside
    ``{'model': module}``), read it with ``unknown='stub'`` (nothing of the classes is imported) and load
    ``state_dict_of`` of it into ``ours``: the keys, their order and the values of ``theirs.state_dict()``."""
    state = theirs.state_dict()
    path = tmp_path / ('whole_legacy.pth' if legacy else 'whole.pth')
    with picklable_classes(theirs), warnings.catch_warnings():
        warnings.filterwarnings('ignore', "Couldn't retrieve source code")     # the legacy format's
        torch.save({'model': theirs, 'epoch': 1} if legacy else theirs, path,
                   _use_new_zipfile_serialization=not legacy)
    loaded = nc.state_dict_of(nc.load_checkpoint(path, unknown='stub'))
    assert list(loaded) == list(state)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value.numpy(), err_msg=key)
    ours.load_state_dict(loaded)


def relative_error(ours, theirs, floor=1e-300):
    """``max |ours - theirs| / max(max |theirs|, floor)``."""
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    if not theirs.size:
        return 0.0
    return float(np.abs(ours - theirs).max()) / max(float(np.abs(theirs).max()), floor)


def assert_same_pass(ours, theirs, x, *, seed=0, tol=1e-9, call=None, view=None):
    """One forward and backward of both; every quantity within ``tol`` relative error.

    ``call(theirs, x_tensor)`` runs the PyTorch model (default ``theirs(x)``); ``view(y_theirs, y_ours)``
    reshapes the PyTorch output to numpyconv's (default: as is). Returns the relative errors.

    A parameter gradient is compared relative to its own size, or to 1e-6 times the largest
    parameter gradient when it is smaller (a gradient that vanishes in exact arithmetic, e.g. the
    shift of a BatchNorm followed by a train-mode BatchNorm, is rounding noise on both sides).
    """
    theirs.zero_grad(set_to_none=True)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt) if call is None else call(theirs, xt)
    y = ours(x)
    yt_view = yt if view is None else view(yt, y)
    errors = {'output': relative_error(y, yt_view)}
    dout = np.random.default_rng(seed).standard_normal(y.shape)
    yt_view.backward(torch.tensor(dout))
    ours.zero_grad()
    dx = ours.backward(dout)
    errors['x'] = relative_error(dx, xt.grad)
    grads = ours.grads
    named = dict(theirs.named_parameters())
    assert set(grads) == set(named), sorted(set(grads) ^ set(named))
    theirs_grads = {k: p.grad if p.grad is not None else torch.zeros_like(p) for k, p in named.items()}
    floor = 1e-6 * max([float(g.abs().max()) for g in theirs_grads.values() if g.numel()] + [1e-300])
    for key, grad in theirs_grads.items():
        errors[key] = relative_error(grads[key], grad, floor)
    state = ours.state_dict()
    for key, value in theirs.state_dict().items():
        errors['state ' + key] = relative_error(state[key], value)
    worst = max(errors, key=errors.get)
    assert errors[worst] < tol, (worst, errors[worst])
    return errors
