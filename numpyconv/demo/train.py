"""Training and evaluation of one demo network with our own backward passes.

Mini-batch Adam (``numpyconv.optim.Adam``) on the mean cross-entropy
(``numpyconv.blocks.cross_entropy_forward/backward``), learning rate on a cosine decay to 0, the
technique's temperature schedule set before every step (``DemoNet.schedule``). The last partial
batch of an epoch is dropped (BatchNorm needs at least two samples; every step sees a full batch).
"""
import math
import time

import numpy as np

from .. import cross_entropy_backward, cross_entropy_forward
from .._checks import count_int, positive_int, real
from ..optim import Adam
from .models import build_model, technique_label


def cosine_lr(base_lr, step, total_steps):
    """``base_lr * (1 + cos(pi * step / total_steps)) / 2``."""
    base_lr, step = real(base_lr, 'base_lr', 0), count_int(step, 'step')
    total_steps = count_int(total_steps, 'total_steps')
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


def batches_per_epoch(n_train, batch_size):
    """Full batches per epoch (one batch of everything when ``n_train < batch_size``)."""
    n_train, batch_size = count_int(n_train, 'n_train'), positive_int(batch_size, 'batch_size')
    if n_train < 2:
        raise ValueError(f"training needs at least 2 samples (BatchNorm statistics), got {n_train}")
    return max(n_train // batch_size, 1)


def train_step(model, optimizer, x, y):
    """One forward, backward and update; returns ``(loss, number of correct predictions)``."""
    optimizer.zero_grad()
    logits = model(x)
    loss, cache = cross_entropy_forward(logits, y)
    model.backward(cross_entropy_backward(1.0, cache)[0])
    optimizer.step()
    return float(loss), int((logits.argmax(axis=1) == y).sum())


def warm_up(technique, x, y, width):
    """One forward/backward of a throwaway model, so that Numba compiles its kernels (or loads
    them from its cache) before the timed epochs."""
    model = build_model(technique, width)
    _, cache = cross_entropy_forward(model(x), y)
    model.backward(cross_entropy_backward(1.0, cache)[0])


def evaluate(model, x, y):
    """``(mean cross-entropy, accuracy)`` in eval mode."""
    logits = model.predict(x)
    loss, _ = cross_entropy_forward(logits, y)
    return float(loss), float((logits.argmax(axis=1) == y).mean())


class _Progress:
    """A tqdm bar over one epoch's samples, showing loss, accuracy and samples/s."""

    def __init__(self, description, total, enabled):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=description, unit='img', leave=False, dynamic_ncols=True,
                            disable=None)                     # None: no bar when not on a terminal

    def update(self, seen, loss, accuracy, seconds):
        if self.bar is not None:
            self.bar.update(seen - self.bar.n)
            self.bar.set_postfix({'loss': f'{loss:.3f}', 'acc': f'{accuracy:.1%}',
                                  'samples/s': f'{seen / max(seconds, 1e-9):.0f}'})

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train_technique(technique, dataset, *, epochs, batch_size=64, lr=3e-3, width=32, seed=0,
                    progress=True, log=print):
    """Train a fresh :class:`~numpyconv.demo.models.DemoNet` on ``dataset``; returns ``(model, history)``.

    ``seed`` chooses the initial weights and the order of the training batches (``dataset`` itself
    is given). ``history`` has one dict per epoch: ``epoch``, ``train_loss``, ``train_acc``
    (running, during the epoch), ``test_loss``, ``test_acc``, ``seconds`` (training time of the
    epoch, without the evaluation and without the Numba compilation, done by :func:`warm_up`
    beforehand). ``log`` receives one summary line per epoch.
    """
    model = build_model(technique, width, seed)
    optimizer = Adam(model, lr=lr)
    rng = np.random.default_rng(seed)
    n_train = len(dataset.x_train)
    per_epoch = batches_per_epoch(n_train, batch_size)
    size = min(batch_size, n_train)
    total_steps = epochs * per_epoch
    label, history = f'{technique_label(technique)} seed {seed}', []
    warm_up(technique, dataset.x_train[:2], dataset.y_train[:2], width)
    for epoch in range(epochs):
        order = rng.permutation(n_train)
        bar = _Progress(f'{label} {epoch + 1}/{epochs}', per_epoch * size, progress)
        loss_sum = correct = seen = 0
        start = time.perf_counter()
        try:
            for b in range(per_epoch):
                step = epoch * per_epoch + b
                optimizer.lr = cosine_lr(lr, step, total_steps)
                model.schedule(step, total_steps)
                index = order[b * size:(b + 1) * size]
                loss, hits = train_step(model, optimizer, dataset.x_train[index], dataset.y_train[index])
                loss_sum, correct, seen = loss_sum + loss * len(index), correct + hits, seen + len(index)
                bar.update(seen, loss_sum / seen, correct / seen, time.perf_counter() - start)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        test_loss, test_acc = evaluate(model, dataset.x_test, dataset.y_test)
        history.append(dict(epoch=epoch + 1, train_loss=loss_sum / seen, train_acc=correct / seen,
                            test_loss=test_loss, test_acc=test_acc, seconds=seconds))
        log(f"{label:30s} epoch {epoch + 1:2d}/{epochs}  loss {loss_sum / seen:.3f}  "
            f"train {correct / seen:6.1%}  test {test_acc:6.1%}  {seconds:6.1f} s "
            f"({seen / seconds:.0f} samples/s)")
    model.finish_schedule()
    return model, history
