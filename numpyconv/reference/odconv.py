"""Plain-loop definition of ODConv, one sample at a time, in the paper's kernel form.

The attention branch is the chain of plain-loop building blocks (:mod:`numpyconv.reference.blocks`).
Then, for each sample, the kernel with ALL FOUR attentions folded in is built element by element,

    K_n[o, c, p, q] = sum_i  ka[n,i] * sa[n,p,q] * ca[n, g(o)*C_g + c] * fa[n,o] * W_i[o, c, p, q]

(docs/derivations/odconv.md, section 2, "attention on the features equals attention on the
kernel"), and the sample is convolved with it by the plain-loop
:func:`numpyconv.reference.conv.conv2d`. The fast op scales the features instead and aggregates with a
GEMM, so the two share no code path past the building blocks.
"""
import numpy as np

from . import blocks
from .conv import conv2d


def odconv_attentions(x, fc_weight, bn_weight, bn_bias, bn_running_mean, bn_running_var,
                      channel_fc_weight, channel_fc_bias, filter_fc_weight=None, filter_fc_bias=None,
                      spatial_fc_weight=None, spatial_fc_bias=None, kernel_fc_weight=None,
                      kernel_fc_bias=None, temperature=1.0, training=False, eps=1e-5):
    """``(ca (N, C_in), fa (N, C_out) or None, sa (N, k*k) or None, ka (N, n) or None)`` (eqs. 1-6)."""
    pooled = blocks.global_avg_pool2d(x)                                               # (eq. 1)
    hidden = blocks.linear(pooled, fc_weight[:, :, 0, 0])                             # (eq. 2)
    normed = blocks.batch_norm(hidden, bn_weight, bn_bias, bn_running_mean, bn_running_var,
                               training, eps=eps)                                     # (eq. 3)
    active = blocks.relu(normed)                                                      # (eq. 4)

    def head(weight, bias, kind):
        if weight is None:
            return None
        logits = blocks.linear(active, weight[:, :, 0, 0], bias)
        if kind == 'softmax':
            return blocks.softmax(logits, axis=1, temperature=temperature)            # (eq. 6)
        return blocks.sigmoid(logits, temperature=temperature)                        # (eq. 5, 6)

    return (head(channel_fc_weight, channel_fc_bias, 'sigmoid'),
            head(filter_fc_weight, filter_fc_bias, 'sigmoid'),
            head(spatial_fc_weight, spatial_fc_bias, 'sigmoid'),
            head(kernel_fc_weight, kernel_fc_bias, 'softmax'))


def sample_kernel(weight, ca, fa, sa, ka, groups):
    """The kernel of one sample with every attention folded in (1.0 for a skipped attention)."""
    n_kernels, c_out, c_g, k, _ = weight.shape
    o_g = c_out // groups
    kernel = np.zeros(weight.shape[1:], dtype=weight.dtype)
    for i in range(n_kernels):
        for o in range(c_out):
            for c in range(c_g):
                for p in range(k):
                    for q in range(k):
                        kernel[o, c, p, q] += ((1.0 if ka is None else ka[i])
                                               * (1.0 if sa is None else sa[p * k + q])
                                               * ca[(o // o_g) * c_g + c]
                                               * (1.0 if fa is None else fa[o])
                                               * weight[i, o, c, p, q])
    return kernel


def odconv2d(x, weight, fc_weight, bn_weight, bn_bias, bn_running_mean, bn_running_var,
             channel_fc_weight, channel_fc_bias, filter_fc_weight=None, filter_fc_bias=None,
             spatial_fc_weight=None, spatial_fc_bias=None, kernel_fc_weight=None, kernel_fc_bias=None,
             stride=1, padding=0, dilation=1, groups=1, temperature=1.0, training=False, eps=1e-5):
    """``y_n = conv(x_n; K_n)`` with the folded kernel of :func:`sample_kernel`.

    Same arguments as :func:`numpyconv.odconv.odconv2d_forward` (no ``momentum``: the running
    buffers are read, never updated). Needs a batch of at least one sample.
    """
    ca, fa, sa, ka = odconv_attentions(
        x, fc_weight, bn_weight, bn_bias, bn_running_mean, bn_running_var, channel_fc_weight,
        channel_fc_bias, filter_fc_weight, filter_fc_bias, spatial_fc_weight, spatial_fc_bias,
        kernel_fc_weight, kernel_fc_bias, temperature, training, eps)
    outputs = []
    for n in range(x.shape[0]):
        kernel = sample_kernel(weight, ca[n], None if fa is None else fa[n], None if sa is None else sa[n],
                               None if ka is None else ka[n], groups)
        outputs.append(conv2d(x[n:n + 1], kernel, None, stride, padding, dilation, groups)[0])
    return np.stack(outputs)
