"""Check a forward/backward pair you wrote yourself with numpyconv.gradcheck.

Run (numpyconv installed, or from the repository root):
    PYTHONPATH=. python examples/gradcheck_your_own_op.py

1. a 1-D convolution (cross-correlation, as torch.nn.functional.conv1d) with bias;
2. a scaled tanh ``y = tanh(a * x)`` whose scale ``a`` is also differentiated;
3. the same convolution with a deliberately wrong backward: the check fails, and we print the report
   it carries (which input, which element, numerical vs analytical value).
"""
import numpy as np

from numpyconv import GradcheckError, gradcheck


# -- 1. a 1-D convolution: x (N, C_in, L), w (C_out, C_in, K), b (C_out,) -> y (N, C_out, L - K + 1)
def conv1d_forward(x, w, b):
    k = w.shape[2]
    length = x.shape[2] - k + 1
    windows = np.stack([x[:, :, t:t + length] for t in range(k)], axis=2)  # (N, C_in, K, L_out)
    y = np.einsum('nckl,ock->nol', windows, w) + b[None, :, None]
    return y, (windows, w, x.shape)


def conv1d_backward(dy, cache):
    windows, w, x_shape = cache
    length = dy.shape[2]
    dw = np.einsum('nol,nckl->ock', dy, windows)
    db = dy.sum(axis=(0, 2))
    dwindows = np.einsum('nol,ock->nckl', dy, w)                  # (N, C_in, K, L_out)
    dx = np.zeros(x_shape)
    for t in range(w.shape[2]):
        dx[:, :, t:t + length] += dwindows[:, :, t]
    return dx, dw, db


# -- 2. a scaled tanh with a learnable scalar scale
def scaled_tanh_forward(x, a):
    y = np.tanh(a * x)
    return y, (x, a, y)


def scaled_tanh_backward(dy, cache):
    x, a, y = cache
    dz = dy * (1 - y ** 2)
    return dz * a, np.sum(dz * x)            # one gradient per input, in forward's order


# -- 3. a typical mistake: forgetting that the window slides (uses only the first window position)
def conv1d_backward_wrong(dy, cache):
    dx, dw, db = conv1d_backward(dy, cache)
    windows, w, _ = cache
    dw_wrong = np.einsum('no,nck->ock', dy[:, :, 0], windows[:, :, :, 0]) * dy.shape[2]
    return dx, dw_wrong, db


def main():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 9)), rng.standard_normal((4, 3, 3)), rng.standard_normal(4)

    report = gradcheck(conv1d_forward, conv1d_backward, (x, w, b), names=['x', 'w', 'b'])
    print('1-D convolution:\n' + str(report) + '\n')

    report = gradcheck(scaled_tanh_forward, scaled_tanh_backward,
                       (rng.standard_normal((5, 7)), 0.8), names=['x', 'a'])
    print('scaled tanh:\n' + str(report) + '\n')

    big = rng.standard_normal((16, 3, 400))                       # 19200 elements -> random mode
    report = gradcheck(conv1d_forward, conv1d_backward, (big, w, b), names=['x', 'w', 'b'])
    print('1-D convolution, large input (random directions):\n' + str(report) + '\n')

    try:
        gradcheck(conv1d_forward, conv1d_backward_wrong, (x, w, b), names=['x', 'w', 'b'])
    except GradcheckError as failure:
        print('wrong backward, as reported by GradcheckError:\n' + str(failure))
        worst = next(r for r in failure.report.results if not r.ok)
        print(f'\n-> {worst.name}{list(worst.worst_index)}: finite differences say '
              f'{worst.numerical:.6f}, backward says {worst.analytical:.6f}')
    else:
        raise SystemExit('the wrong backward should have failed')


if __name__ == '__main__':
    main()
