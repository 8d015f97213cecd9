"""Plain-loop definition of ODConv: the forward in the paper's kernel form, the backward by its equations.

Forward: the attention branch element by element, then, for each sample, the kernel with ALL FOUR
attentions folded in is built element by element,

    K_n[o, c, p, q] = sum_i  ka[n,i] * sa[n,p,q] * ca[n, g(o)*C_g + c] * fa[n,o] * W_i[o, c, p, q]

(docs/derivations/odconv.md, section 2, "attention on the features equals attention on the
kernel"), and the sample is convolved with it by the plain-loop
:func:`numpyconv.reference.conv.conv2d`. The fast op scales the features instead and aggregates with a
GEMM, so the two share no code path. The backward follows the derivation's equations 13-26 one line
each (the features scaled, as there); a skipped head is the constant 1 and gets no gradient.
"""
import math
from itertools import product

import numpy as np

from .conv import conv2d
from .dynamic import affine, per_sample_conv2d_backward, pool, pool_backward

HEADS = ('channel', 'filter', 'spatial', 'kernel')


def _mean(values):
    """The average of a list of numbers; 0.0 for an empty batch (nothing to normalise)."""
    return sum(values) / len(values) if values else 0.0


def _attention(x, fc_weight, bn_weight, bn_bias, bn_running_mean, bn_running_var, heads, temperature,
               training, eps):
    """Every value of the attention branch (eqs. 1-6): a dict with ``p``, ``a``, ``a_hat``,
    ``inv_std``, ``v``, ``h`` and ``att`` (head -> ``(N, width)`` or None for a skipped head)."""
    p = pool(x)                                                                          # (eq. 1)
    a = affine(fc_weight[:, :, 0, 0], p)                                                 # (eq. 2)
    n_batch, width = a.shape
    a_hat, v, inv_std = np.zeros_like(a), np.zeros_like(a), np.zeros(width, dtype=a.dtype)
    for d in range(width):
        if training:                                                 # batch statistics (eq. 3)
            mean = _mean([a[n, d] for n in range(n_batch)])
            var = _mean([(a[n, d] - mean) ** 2 for n in range(n_batch)])
        else:                                                        # running statistics (eq. 3)
            mean, var = bn_running_mean[d], bn_running_var[d]
        inv_std[d] = 1.0 / math.sqrt(var + eps)
        for n in range(n_batch):
            a_hat[n, d] = (a[n, d] - mean) * inv_std[d]                                  # (eq. 3)
            v[n, d] = bn_weight[d] * a_hat[n, d] + bn_bias[d]                            # (eq. 3)
    h = np.maximum(v, 0)                                                                 # (eq. 4)
    att = {}
    for head in HEADS:
        weight, bias = heads[head]
        if weight is None:
            att[head] = None
            continue
        z = affine(weight[:, :, 0, 0], h, bias)                               # logits (eqs. 5, 6)
        att[head] = np.zeros_like(z)
        for n in range(n_batch):
            if head == 'kernel':
                top = max(z[n])                                 # shift by the maximum: same value
                exps = [math.exp((z[n, j] - top) / temperature) for j in range(z.shape[1])]
                for j in range(z.shape[1]):
                    att[head][n, j] = exps[j] / sum(exps)                                # (eq. 6)
            else:
                for j in range(z.shape[1]):
                    att[head][n, j] = 1.0 / (1.0 + math.exp(-z[n, j] / temperature))    # (eqs. 5, 6)
    return dict(p=p, a=a, a_hat=a_hat, inv_std=inv_std, v=v, h=h, att=att)


def _heads(channel_fc_weight, channel_fc_bias, filter_fc_weight, filter_fc_bias, spatial_fc_weight,
           spatial_fc_bias, kernel_fc_weight, kernel_fc_bias):
    """``head -> (weight, bias)``, in the order of :data:`HEADS`."""
    return dict(channel=(channel_fc_weight, channel_fc_bias), filter=(filter_fc_weight, filter_fc_bias),
                spatial=(spatial_fc_weight, spatial_fc_bias), kernel=(kernel_fc_weight, kernel_fc_bias))


def _one(att, n, j):
    """Attention ``att[n, j]``, or 1.0 for a skipped head."""
    return 1.0 if att is None else att[n, j]


def sample_kernel(weight, att, n, groups):
    """The kernel of sample ``n`` with every attention folded in (1.0 for a skipped attention)."""
    n_kernels, c_out, c_g, k, _ = weight.shape
    o_g = c_out // groups
    kernel = np.zeros(weight.shape[1:], dtype=weight.dtype)
    for i, o, c, p, q in product(range(n_kernels), range(c_out), range(c_g), range(k), range(k)):
        kernel[o, c, p, q] += (_one(att['kernel'], n, i) * _one(att['spatial'], n, p * k + q)
                               * att['channel'][n, (o // o_g) * c_g + c] * _one(att['filter'], n, o)
                               * weight[i, o, c, p, q])
    return kernel


def odconv2d(x, weight, fc_weight, bn_weight, bn_bias, bn_running_mean, bn_running_var,
             channel_fc_weight, channel_fc_bias, filter_fc_weight=None, filter_fc_bias=None,
             spatial_fc_weight=None, spatial_fc_bias=None, kernel_fc_weight=None, kernel_fc_bias=None,
             stride=1, padding=0, dilation=1, groups=1, temperature=1.0, training=False, momentum=0.1,
             eps=1e-5):
    """``y (N, C_out, Ho, Wo)``, ``y_n = conv(x_n; K_n)`` with the folded kernel of :func:`sample_kernel`.

    Arguments as :func:`numpyconv.odconv2d_forward`; the running buffers are read (eval mode), never
    updated, so ``momentum`` does not enter.
    """
    heads = _heads(channel_fc_weight, channel_fc_bias, filter_fc_weight, filter_fc_bias,
                   spatial_fc_weight, spatial_fc_bias, kernel_fc_weight, kernel_fc_bias)
    att = _attention(x, fc_weight, bn_weight, bn_bias, bn_running_mean, bn_running_var, heads,
                     temperature, training, eps)['att']
    kernels = np.zeros((x.shape[0],) + weight.shape[1:], dtype=weight.dtype)
    for n in range(x.shape[0]):
        kernels[n] = sample_kernel(weight, att, n, groups)
    return conv2d(x, kernels, None, stride, padding, dilation, groups)


def _features_backward(dout, x, weight, att, stride, padding, dilation, groups):
    """``(dx direct, dweight, datt)``: the convolution with the features scaled (eqs. 7-10) and its
    gradients (eqs. 13-17); ``datt`` maps a head to its attention's gradient (None if skipped)."""
    ca, fa, sa, ka = (att[head] for head in HEADS)
    n_batch, n_kernels, k = x.shape[0], weight.shape[0], weight.shape[-1]
    mixed = np.zeros((n_batch,) + weight.shape[1:], dtype=x.dtype)
    kernels = np.zeros_like(mixed)
    for n, i in product(range(n_batch), range(n_kernels)):
        for o, c, p, q in np.ndindex(*weight.shape[1:]):
            mixed[n, o, c, p, q] += _one(ka, n, i) * weight[i, o, c, p, q]               # (eq. 7)
    for n, o, c, p, q in np.ndindex(*mixed.shape):
        kernels[n, o, c, p, q] = _one(sa, n, p * k + q) * mixed[n, o, c, p, q]           # (eq. 8)
    xt = np.zeros_like(x)
    for n, c, h, w in np.ndindex(*x.shape):
        xt[n, c, h, w] = ca[n, c] * x[n, c, h, w]                                        # (eq. 9)
    u = conv2d(xt, kernels, None, stride, padding, dilation, groups)                     # (eq. 10)

    datt = {head: None if att[head] is None else np.zeros_like(att[head]) for head in HEADS}
    du = np.zeros_like(u)
    for n, o, i, j in np.ndindex(*u.shape):
        du[n, o, i, j] = _one(fa, n, o) * dout[n, o, i, j]                               # (eq. 13)
        if fa is not None:
            datt['filter'][n, o] += dout[n, o, i, j] * u[n, o, i, j]                     # (eq. 13)
    dxt, dkernels, _ = per_sample_conv2d_backward(du, xt, kernels, stride, padding, dilation,
                                                  groups)                                # (eq. 14)
    dx = np.zeros_like(x)
    for n, c, h, w in np.ndindex(*x.shape):
        datt['channel'][n, c] += x[n, c, h, w] * dxt[n, c, h, w]                         # (eq. 15)
        dx[n, c, h, w] = ca[n, c] * dxt[n, c, h, w]                                      # (eq. 15)
    dmixed = np.zeros_like(mixed)
    for n, o, c, p, q in np.ndindex(*mixed.shape):
        dmixed[n, o, c, p, q] = _one(sa, n, p * k + q) * dkernels[n, o, c, p, q]         # (eq. 16)
        if sa is not None:
            datt['spatial'][n, p * k + q] += mixed[n, o, c, p, q] * dkernels[n, o, c, p, q]  # (eq. 16)
    dweight = np.zeros_like(weight)
    for n, i in product(range(n_batch), range(n_kernels)):
        for o, c, p, q in np.ndindex(*weight.shape[1:]):
            dweight[i, o, c, p, q] += _one(ka, n, i) * dmixed[n, o, c, p, q]             # (eq. 17)
            if ka is not None:
                datt['kernel'][n, i] += weight[i, o, c, p, q] * dmixed[n, o, c, p, q]    # (eq. 17)
    return dx, dweight, datt


def _heads_backward(datt, heads, t, temperature):
    """``(dh, [dweight, dbias] per head)`` (eqs. 19-21), None for a skipped head."""
    dh, head_grads = np.zeros_like(t['h']), []
    for head in HEADS:
        head_weight, head_bias = heads[head]
        if head_weight is None:
            head_grads += [None, None]
            continue
        a, da, w = t['att'][head], datt[head], head_weight[:, :, 0, 0]
        dz = np.zeros_like(a)
        for n, j in np.ndindex(*a.shape):
            if head == 'kernel':
                expected = sum(a[n, m] * da[n, m] for m in range(a.shape[1]))   # <ka_n, dka_n>
                dz[n, j] = a[n, j] / temperature * (da[n, j] - expected)                 # (eq. 20)
            else:
                dz[n, j] = da[n, j] * a[n, j] * (1 - a[n, j]) / temperature              # (eq. 19)
        dw, db = np.zeros_like(w), None if head_bias is None else np.zeros_like(head_bias)
        for n, j, d in product(range(a.shape[0]), *map(range, w.shape)):
            dw[j, d] += dz[n, j] * t['h'][n, d]                                          # (eq. 21)
            dh[n, d] += w[j, d] * dz[n, j]                                               # (eq. 21)
        if head_bias is not None:
            for n, j in np.ndindex(*dz.shape):
                db[j] += dz[n, j]                                                        # (eq. 21)
        head_grads += [dw[:, :, None, None], db]
    return dh, head_grads


def _trunk_backward(dh, x, t, fc_weight, bn_weight, bn_running_mean, bn_running_var, training, eps):
    """``(dx through the pooling, dfc_weight, dbn_weight, dbn_bias, drunning_mean, drunning_var)``
    (eqs. 22-26)."""
    dv = dh * (t['v'] > 0)                                                               # (eq. 22)
    a, a_hat, inv_std = t['a'], t['a_hat'], t['inv_std']
    n_batch = a.shape[0]
    da = np.zeros_like(a)
    dgamma, dbeta, dmean, dvar = (np.zeros_like(bn_weight) for _ in range(4))
    for d in range(a.shape[1]):
        for n in range(n_batch):
            dgamma[d] += dv[n, d] * a_hat[n, d]                                   # (eqs. 23, 23a)
            dbeta[d] += dv[n, d]                                                  # (eqs. 23, 23a)
        if training:
            mean_dv = _mean([dv[n, d] for n in range(n_batch)])
            mean_dv_a_hat = _mean([dv[n, d] * a_hat[n, d] for n in range(n_batch)])
            for n in range(n_batch):
                da[n, d] = bn_weight[d] * inv_std[d] * (dv[n, d] - mean_dv
                                                        - a_hat[n, d] * mean_dv_a_hat)   # (eq. 23)
            continue                                          # the buffers do not enter (eq. 24)
        for n in range(n_batch):
            da[n, d] = dv[n, d] * bn_weight[d] * inv_std[d]                              # (eq. 23a)
            dmean[d] += -da[n, d]                                                        # (eq. 24)
            dvar[d] += -da[n, d] * (a[n, d] - bn_running_mean[d]) / (
                2 * (bn_running_var[d] + eps))                                           # (eq. 24)
    w_fc = fc_weight[:, :, 0, 0]
    dfc, dp = np.zeros_like(w_fc), np.zeros_like(t['p'])
    for n, d, c in product(range(n_batch), *map(range, w_fc.shape)):
        dfc[d, c] += da[n, d] * t['p'][n, c]                                             # (eq. 25)
        dp[n, c] += w_fc[d, c] * da[n, d]                                                # (eq. 25)
    return pool_backward(dp, x.shape), dfc[:, :, None, None], dgamma, dbeta, dmean, dvar  # (eq. 26)


def odconv2d_backward(dout, x, weight, fc_weight, bn_weight, bn_bias, bn_running_mean, bn_running_var,
                      channel_fc_weight, channel_fc_bias, filter_fc_weight=None, filter_fc_bias=None,
                      spatial_fc_weight=None, spatial_fc_bias=None, kernel_fc_weight=None,
                      kernel_fc_bias=None, stride=1, padding=0, dilation=1, groups=1, temperature=1.0,
                      training=False, momentum=0.1, eps=1e-5):
    """Gradients of :func:`odconv2d`, one per array input in its order (eqs. 13-26)::

        (dx, dweight, dfc_weight, dbn_weight, dbn_bias, dbn_running_mean, dbn_running_var,
         dchannel_fc_weight, dchannel_fc_bias, dfilter_fc_weight, dfilter_fc_bias,
         dspatial_fc_weight, dspatial_fc_bias, dkernel_fc_weight, dkernel_fc_bias)

    None for a skipped head; the running statistics get zeros in train mode (eq. 24).
    """
    heads = _heads(channel_fc_weight, channel_fc_bias, filter_fc_weight, filter_fc_bias,
                   spatial_fc_weight, spatial_fc_bias, kernel_fc_weight, kernel_fc_bias)
    t = _attention(x, fc_weight, bn_weight, bn_bias, bn_running_mean, bn_running_var, heads,
                   temperature, training, eps)
    dx, dweight, datt = _features_backward(dout, x, weight, t['att'], stride, padding, dilation,
                                           groups)                                       # (eqs. 13-17)
    dh, head_grads = _heads_backward(datt, heads, t, temperature)                        # (eqs. 19-21)
    dx_pool, *trunk_grads = _trunk_backward(dh, x, t, fc_weight, bn_weight, bn_running_mean,
                                            bn_running_var, training, eps)               # (eqs. 22-25)
    return (dx + dx_pool, dweight, *trunk_grads, *head_grads)                            # (eq. 26)
