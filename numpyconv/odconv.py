r"""ODConv (Omni-Dimensional Dynamic Convolution): four attentions over a bank of kernels.

Li, Zhou, Yao, ICLR 2022. Compatible with OSVAI/ODConv ``modules/odconv.py`` ``ODConv2d`` (same
arguments, state_dict keys, skip rules and initialisation). Full derivation:
docs/derivations/odconv.md (equation numbers below).

Shapes (``A`` the attention width, ``n`` = ``kernel_num``, ``k`` the square kernel size)::

    x                  (N, C_in, H, W)
    weight             (n, C_out, C_in // G, k, k)     the kernels W_i
    fc_weight          (A, C_in, 1, 1)                 W_fc (1x1 conv on the pooled map, no bias)
    bn_weight, bn_bias, bn_running_mean, bn_running_var   (A,)   BatchNorm2d(A)
    channel_fc_weight  (C_in, A, 1, 1), bias (C_in,)   always present
    filter_fc_weight   (C_out, A, 1, 1), bias (C_out,) None for depthwise (C_in == G == C_out)
    spatial_fc_weight  (k*k, A, 1, 1), bias (k*k,)     None for k == 1
    kernel_fc_weight   (n, A, 1, 1), bias (n,)         None for n == 1
    y                  (N, C_out, Ho, Wo)

Forward (``T`` the temperature; a skipped head is the constant 1)::

    p_n  = mean_{h,w} x_n                            (eq. 1)    (N, C_in)
    a_n  = W_fc p_n                                  (eq. 2)    (N, A)
    v    = BN(a)   batch statistics over the N samples in train mode, running ones in eval  (eq. 3)
    h    = relu(v)                                   (eq. 4)
    ca = sigmoid((W_c h + b_c)/T)  (N, C_in);  fa = sigmoid((W_f h + b_f)/T)  (N, C_out)   (eq. 5)
    sa = sigmoid((W_s h + b_s)/T)  (N, k, k);  ka = softmax((W_w h + b_w)/T)  (N, n)       (eq. 6)
    B_n  = sum_i ka[n,i] W_i                         (eq. 7)    one (N, n) @ (n, -1) product
    Wt_n = sa_n * B_n   (sa broadcast over C_out, C_in/G)        (eq. 8)
    xt_n = ca_n * x_n                                (eq. 9)
    u_n  = conv(xt_n; Wt_n)                          (eq. 10)   per-sample conv2d, one batched GEMM
    y_n  = fa_n * u_n                                (eq. 11)
    k == 1 and n == 1 (official ``_forward_impl_pw1x``): u = conv(xt; W_0), shared kernel  (eq. 12)

Backward (given dy)::

    du_n = fa_n * dy_n;   dfa[n,o] = sum_{ij} dy_n[o] u_n[o]                    (eq. 13)
    dxt_n = conv^T(du_n; Wt_n);   dWt_n = corr(xt_n, du_n)                      (eq. 14)
    dca[n,c] = sum_{hw} x_n[c] dxt_n[c];   dx_n = ca_n * dxt_n  (direct path)   (eq. 15)
    dB_n = sa_n * dWt_n;   dsa_n[p,q] = sum_{o,c} B_n[o,c,p,q] dWt_n[o,c,p,q]   (eq. 16)
    dW_i = sum_n ka[n,i] dB_n;   dka[n,i] = <W_i, dB_n>                         (eq. 17)
    pw1x: dW_0 = sum_n corr(xt_n, du_n)                                        (eq. 18)
    dz = d(att) att (1 - att) / T for ca, fa, sa;  dz_w = ka/T (dka - <ka, dka>)  (eq. 19, 20)
    dW_head = sum_n dz_n h_n^T;  db_head = sum_n dz_n;  dh = sum_heads W_head^T dz   (eq. 21)
    dv = dh [v > 0]                                                             (eq. 22)
    train: da = gamma/sqrt(var+eps) (dv - mean_n dv - a_hat mean_n(dv a_hat))  -- couples samples
    eval:  da = dv gamma / sqrt(running_var + eps);  dgamma = sum_n dv a_hat, dbeta = sum_n dv  (eq. 23)
    eval only: d running_mean = -sum_n da,
               d running_var = -sum_n da (a - running_mean) / (2 (running_var + eps))  (eq. 24)
    dW_fc = sum_n da_n p_n^T;  dp_n = W_fc^T da_n                               (eq. 25)
    dx_n += dp_n / (H W)   (broadcast over h, w)                                (eq. 26)

Train mode needs a batch of at least 2 (the BatchNorm statistics are over the batch; PyTorch
raises the same error). It modifies no input: the running statistics after a train-mode step
are ``cache['running_mean']`` / ``cache['running_var']`` (the layer stores them in its buffers, as
``nn.BatchNorm2d``). Temperature: :func:`odconv_temperature` is the official
schedule (eq. 28); the temperature is not part of the state_dict and is 1 for inference.
MACs: eq. 27 (conv, attention FCs, aggregation, channel and filter scaling).
"""

import numpy as np

from ._checks import (Cache, check_cache, count_int, expect_shape, float_array, grad_out, pair, positive_int,
                      real, same_dtype)
from .activations import (relu_backward, relu_forward, sigmoid_backward, sigmoid_forward, softmax_backward,
                          softmax_forward)
from .blocks import batch_norm_backward, batch_norm_forward, linear_backward, linear_forward
from .pooling import global_avg_pool2d_backward, global_avg_pool2d_forward
from .conv import (check_hyper_parameters, check_layer_channels, conv2d_backward, conv2d_forward,
                   conv_geometry)
from .gemm import bank_grad
from .memory import require_memory
from .module import Module, kaiming_normal_fan_out

HEADS = ('channel', 'filter', 'spatial', 'kernel')


# -- configuration rules of the official module ---------------------------------------------------
def odconv_attention_channels(in_planes, reduction=0.0625, min_channel=16):
    """Attention width ``max(int(in_planes * reduction), min_channel)`` (official ``Attention``)."""
    in_planes = positive_int(in_planes, 'in_planes')
    reduction = real(reduction, 'reduction', 0, strict_low=True)
    return max(int(in_planes * reduction), positive_int(min_channel, 'min_channel'))


def head_widths(in_planes, out_planes, kernel_size, groups, kernel_num):
    """``head -> output width``, None for a head the official module skips.

    filter: skipped for depthwise (``in_planes == groups == out_planes``); spatial: skipped for a
    1x1 kernel; kernel: skipped for ``kernel_num == 1``. The channel head always exists.
    """
    depthwise = in_planes == groups and in_planes == out_planes
    return dict(channel=in_planes,
                filter=None if depthwise else out_planes,
                spatial=None if kernel_size == 1 else kernel_size * kernel_size,
                kernel=None if kernel_num == 1 else kernel_num)


def odconv_temperature(iteration, epoch, iters_per_epoch, temp_epoch=10, temp_init=30.0):
    """Official schedule ``utils/misc.py:get_temperature`` (docs eq. 28).

    ``T = 1 + max(0, (temp_init - 1) (total - current) / total)`` with
    ``total = iters_per_epoch * temp_epoch`` and ``current = iteration + epoch * iters_per_epoch``;
    ``main.py`` calls it with ``iteration = batch_idx + 1`` while ``epoch < temp_epoch``.

    >>> odconv_temperature(0, 0, 100), odconv_temperature(0, 5, 100), odconv_temperature(0, 10, 100)
    (30.0, 15.5, 1.0)
    """
    iteration, epoch = count_int(iteration, 'iteration'), count_int(epoch, 'epoch')
    total = positive_int(iters_per_epoch, 'iters_per_epoch') * positive_int(temp_epoch, 'temp_epoch')
    temp_init = real(temp_init, 'temp_init', 1)
    current = int(iteration) + int(epoch) * int(iters_per_epoch)
    return 1.0 + max(0.0, (temp_init - 1.0) * ((total - current) / total))


# -- argument checks ----------------------------------------------------------------------------------
def _check_head(head, width, hidden, weight, bias):
    """A present head needs ``weight (width, A, 1, 1)`` and ``bias (width,)``; a skipped one None."""
    if width is None:
        if weight is not None or bias is not None:
            reason = dict(filter='depthwise (C_in == groups == C_out)', spatial='kernel_size == 1',
                          kernel='kernel_num == 1')[head]
            raise ValueError(f"{head}_fc_weight and {head}_fc_bias must be None: the official ODConv "
                             f"has no {head} attention when {reason}")
        return
    if weight is None or bias is None:
        raise ValueError(f"{head}_fc_weight {(width, hidden, 1, 1)} and {head}_fc_bias ({width},) are "
                         f"required for this configuration, got None")
    float_array(weight, f'{head}_fc_weight', 4, f"({width}, {hidden}, 1, 1)")
    expect_shape(weight, (width, hidden, 1, 1), f'{head}_fc_weight')
    float_array(bias, f'{head}_fc_bias', 1, f"({width},)")
    expect_shape(bias, (width,), f'{head}_fc_bias')


def _check_odconv(x, weight, fc_weight, bn, heads, groups, training):
    """Validate every operand; returns ``groups`` as an int."""
    float_array(x, 'x', 4, "(N, C_in, H, W)")
    float_array(weight, 'weight', 5, "(kernel_num, C_out, C_in // groups, k, k)")
    groups = positive_int(groups, 'groups')
    batch, c_in = x.shape[:2]
    kernel_num, c_out, c_g, kh, kw = weight.shape
    if kh != kw or kernel_num == 0 or c_out == 0:
        raise ValueError(f"weight must have shape (kernel_num >= 1, C_out >= 1, C_in // groups, k, k) "
                         f"with a square kernel, got {weight.shape}")
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide the input channels (x of shape {x.shape}) and "
                         f"the output channels (weight of shape {weight.shape})")
    if c_g * groups != c_in:
        raise ValueError(f"weight must have shape {(kernel_num, c_out, c_in // groups, kh, kw)} for x of "
                         f"shape {x.shape} and groups={groups}, got {weight.shape}")
    float_array(fc_weight, 'fc_weight', 4, "(A, C_in, 1, 1)")
    hidden = fc_weight.shape[0]
    expect_shape(fc_weight, (hidden, c_in, 1, 1), 'fc_weight')
    for name, v in zip(('bn_weight', 'bn_bias', 'bn_running_mean', 'bn_running_var'), bn):
        float_array(v, name, 1, f"({hidden},)")
        expect_shape(v, (hidden,), name)
    widths = head_widths(c_in, c_out, kh, groups, kernel_num)
    for head in HEADS:
        _check_head(head, widths[head], hidden, *heads[head])
    same_dtype(('x', x), ('weight', weight), ('fc_weight', fc_weight),
               *zip(('bn_weight', 'bn_bias', 'bn_running_mean', 'bn_running_var'), bn),
               *((f'{h}_fc_weight', heads[h][0]) for h in HEADS),
               *((f'{h}_fc_bias', heads[h][1]) for h in HEADS))
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be a bool, got {training!r}")
    if training and batch == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"[1, {hidden}, 1, 1]: the attention BatchNorm of ODConv normalises over the "
                         f"batch; use a batch of at least 2 samples or eval mode")
    return groups


# -- attention branch (eqs. 1-6, 19-26) ---------------------------------------------------------------
def _attention_forward(x, fc_weight, bn, heads, temperature, training, momentum, eps):
    """``(attentions, cache)``: ``head -> (N, width)`` array, None for a skipped head."""
    pooled, gap_cache = global_avg_pool2d_forward(x)                          # (N, C_in) (eq. 1)
    hidden, fc_cache = linear_forward(pooled, fc_weight[:, :, 0, 0])          # (N, A) (eq. 2)
    normed, bn_cache = batch_norm_forward(hidden, *bn, training, momentum, eps)  # (eq. 3)
    active, relu_cache = relu_forward(normed)                                 # (eq. 4)
    attentions, head_caches = {}, {}
    for head in HEADS:
        weight, bias = heads[head]
        if weight is None:
            attentions[head] = None
            continue
        logits, linear_cache = linear_forward(active, weight[:, :, 0, 0], bias)  # (N, width)
        if head == 'kernel':
            att, act_cache = softmax_forward(logits, axis=1, temperature=temperature)  # (eq. 6)
        else:
            att, act_cache = sigmoid_forward(logits, temperature)                # (eq. 5, 6)
        attentions[head], head_caches[head] = att, (linear_cache, act_cache)
    cache = dict(gap=gap_cache, fc=fc_cache, bn=bn_cache, relu=relu_cache, heads=head_caches)
    return attentions, cache


def _attention_backward(datt, cache):
    """``(dx from the pooling path, trunk grads, head -> (dweight, dbias))`` (eqs. 19-26)."""
    dactive, head_grads = 0, {}
    for head, (linear_cache, act_cache) in cache['heads'].items():
        backward = softmax_backward if head == 'kernel' else sigmoid_backward
        dlogits, = backward(datt[head], act_cache)                            # (eq. 19, 20)
        dactive_head, dweight, dbias = linear_backward(dlogits, linear_cache)  # (eq. 21)
        dactive = dactive + dactive_head
        head_grads[head] = (dweight[:, :, None, None], dbias)                 # (width, A, 1, 1)
    dnormed, = relu_backward(dactive, cache['relu'])                          # (eq. 22)
    dhidden, dgamma, dbeta, dmean, dvar = batch_norm_backward(dnormed, cache['bn'])  # (eq. 23, 24)
    dpooled, dfc, _ = linear_backward(dhidden, cache['fc'])                   # (eq. 25)
    dx, = global_avg_pool2d_backward(dpooled, cache['gap'])                   # (eq. 26)
    return dx, (dfc[:, :, None, None], dgamma, dbeta, dmean, dvar), head_grads


# -- kernel aggregation (eqs. 7-8, 16-17) ------------------------------------------------------------
def _aggregate_forward(weight, spatial, kernel):
    """Per-sample kernels ``(N, C_out, C_g, k, k)`` and the mixture ``B`` (eqs. 7-8)."""
    n_kernels, k = weight.shape[0], weight.shape[-1]
    if kernel is None:
        mixed = weight[:1]                                                    # (1, C_out, C_g, k, k)
    else:
        mixed = (kernel @ weight.reshape(n_kernels, -1)).reshape((len(kernel),) + weight.shape[1:])
    if spatial is None:
        return mixed, mixed
    return spatial.reshape(-1, 1, 1, k, k) * mixed, mixed                   # (eq. 8)


def _aggregate_backward(dkernels, weight, spatial, kernel, mixed):
    """``(dweight, dspatial (N, k*k), dkernel (N, n))`` from ``dkernels (N, C_out, C_g, k, k)``."""
    batch, (n_kernels, k) = dkernels.shape[0], (weight.shape[0], weight.shape[-1])
    dspatial = None
    dmixed = dkernels
    if spatial is not None:
        dmixed = dkernels * spatial.reshape(batch, 1, 1, k, k)               # (eq. 16)
        dspatial = np.einsum('nocpq,nocpq->npq', np.broadcast_to(mixed, dkernels.shape),
                             dkernels).reshape(batch, k * k)                  # (eq. 16)
    if kernel is None:
        return dmixed.sum(axis=0, keepdims=True), dspatial, None             # (1, C_out, C_g, k, k)
    flat = dmixed.reshape(batch, weight[0].size)                              # (N, C_out*C_g*k*k)
    dweight = bank_grad(kernel, flat).reshape(weight.shape)                   # (eq. 17)
    dkernel = flat @ weight.reshape(n_kernels, -1).T                          # (N, n) (eq. 17)
    return dweight, dspatial, dkernel


# -- the whole technique --------------------------------------------------------------------------------
def odconv2d_forward(x, weight, fc_weight, bn_weight, bn_bias, bn_running_mean, bn_running_var,
                     channel_fc_weight, channel_fc_bias, filter_fc_weight=None, filter_fc_bias=None,
                     spatial_fc_weight=None, spatial_fc_bias=None, kernel_fc_weight=None,
                     kernel_fc_bias=None, stride=1, padding=0, dilation=1, groups=1, temperature=1.0,
                     training=False, momentum=0.1, eps=1e-5):
    """ODConv forward (eqs. 1-12).

    The arrays are the official state_dict values (1x1 conv weights stay 4-D), ``A`` the attention
    width, ``K`` the kernel number. A head the official module skips must be None (see
    :func:`head_widths`). No input is modified.

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
    weight : ndarray (K, C_out, C_in // groups, k, k)
    fc_weight : ndarray (A, C_in, 1, 1)
        The attention trunk's 1x1 convolution (no bias).
    bn_weight, bn_bias, bn_running_mean, bn_running_var : ndarray (A,)
        The trunk's BatchNorm.
    channel_fc_weight, channel_fc_bias : ndarray (C_in, A, 1, 1), (C_in,)
        The channel head (always present).
    filter_fc_weight, filter_fc_bias : ndarray (C_out, A, 1, 1), (C_out,) or None
    spatial_fc_weight, spatial_fc_bias : ndarray (k*k, A, 1, 1), (k*k,) or None
    kernel_fc_weight, kernel_fc_bias : ndarray (K, A, 1, 1), (K,) or None
        The skippable heads.
    stride, padding, dilation, groups
        As :func:`numpyconv.conv2d_forward`.
    temperature : float > 0
        Of the four heads' sigmoid / softmax.
    training : bool
        BatchNorm batch statistics (True) or the running ones (False).
    momentum, eps : float
        The BatchNorm's.

    Returns
    -------
    y : ndarray (N, C_out, Ho, Wo)
    cache : Cache
        ``Cache('odconv2d')`` with ``x``, ``u`` (the convolution before the filter attention; None
        without the filter head), ``out_shape``, ``att`` (each head's attention, None for a skipped
        head), ``attention`` (the attention branch's cache), ``conv`` (the conv2d cache), ``weight``,
        ``mixed`` (None on the one-kernel pointwise path), ``pw1x``, and ``running_mean`` /
        ``running_var`` (the BatchNorm's running statistics after this step).
    """
    heads = dict(channel=(channel_fc_weight, channel_fc_bias), filter=(filter_fc_weight, filter_fc_bias),
                 spatial=(spatial_fc_weight, spatial_fc_bias), kernel=(kernel_fc_weight, kernel_fc_bias))
    bn = (bn_weight, bn_bias, bn_running_mean, bn_running_var)
    groups = _check_odconv(x, weight, fc_weight, bn, heads, groups, training)
    att, att_cache = _attention_forward(x, fc_weight, bn, heads, temperature, training, momentum, eps)
    xt = x * att['channel'][:, :, None, None]                                # (eq. 9)
    pw1x = att['spatial'] is None and att['kernel'] is None
    if pw1x:
        mixed = None
        u, conv_cache = conv2d_forward(xt, weight[0], None, stride, padding, dilation, groups)  # (eq. 12)
    else:
        require_memory((x.shape[0],) + weight.shape[1:], x.dtype, f"x of shape {x.shape} (batch "
                       f"{x.shape[0]}) with weight of shape {weight.shape}", 'the per-sample kernels')
        kernels, mixed = _aggregate_forward(weight, att['spatial'], att['kernel'])  # (eqs. 7-8)
        u, conv_cache = conv2d_forward(xt, kernels, None, stride, padding, dilation, groups)  # (eq. 10)
    filt = att['filter']
    y = u if filt is None else u * filt[:, :, None, None]                     # (eq. 11)
    cache = Cache('odconv2d', x=x, u=None if filt is None else u, out_shape=y.shape, att=att,
                  attention=att_cache, conv=conv_cache, weight=weight, mixed=mixed, pw1x=pw1x,
                  running_mean=att_cache['bn']['running_mean'], running_var=att_cache['bn']['running_var'])
    return y, cache


def odconv2d_backward(dout, cache):
    """Gradients of :func:`odconv2d_forward`, one per array input in its order (eqs. 13-26).

    The running statistics get their eval-mode gradient (eq. 24), zeros in train mode.

    Parameters
    ----------
    dout : ndarray, (N, C_out, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`odconv2d_forward`.
    cache : Cache
        The cache :func:`odconv2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, dweight, dfc_weight, dbn_weight, dbn_bias, dbn_running_mean, dbn_running_var,
        dchannel_fc_weight, dchannel_fc_bias, dfilter_fc_weight, dfilter_fc_bias, dspatial_fc_weight,
        dspatial_fc_bias, dkernel_fc_weight, dkernel_fc_bias)``, each of its input's shape; None for a
        skipped head.
    """
    cache = check_cache(cache, 'odconv2d')
    att, x, weight = cache['att'], cache['x'], cache['weight']
    dout = grad_out(dout, cache['out_shape'], x.dtype)
    datt = {}
    du = dout
    if att['filter'] is not None:
        du = dout * att['filter'][:, :, None, None]                             # (eq. 13)
        datt['filter'] = np.einsum('nohw,nohw->no', dout, cache['u'])          # (eq. 13)
    dxt, dkernels, _ = conv2d_backward(du, cache['conv'])                      # (eq. 14)
    datt['channel'] = np.einsum('nchw,nchw->nc', x, dxt)                       # (eq. 15)
    dx = dxt * att['channel'][:, :, None, None]                                # (eq. 15)
    if cache['pw1x']:
        dweight = dkernels[None]                                               # (eq. 18)
    else:
        dweight, datt['spatial'], datt['kernel'] = _aggregate_backward(
            dkernels, weight, att['spatial'], att['kernel'], cache['mixed'])   # (eqs. 16-17)
    dx_pool, trunk_grads, head_grads = _attention_backward(datt, cache['attention'])
    dx += dx_pool                                                              # (eq. 26)
    per_head = tuple(g for h in HEADS for g in head_grads.get(h, (None, None)))
    return (dx, dweight) + trunk_grads + per_head


# -- layer ------------------------------------------------------------------------------------------------
def _square_kernel(kernel_size):
    kh, kw = pair(kernel_size, 'kernel_size', minimum=1)
    if kh != kw:
        raise ValueError(f"kernel_size must be square (the official spatial attention is k x k), "
                         f"got {kernel_size!r}")
    return kh


class _ODConvAttention(Module):
    """Parameters of the official ``Attention`` (keys ``fc.weight``, ``bn.*``, ``<head>_fc.*``).

    The computation lives in :func:`odconv2d_forward`; this holds the arrays with the official
    initialisation (every 1x1 conv ``kaiming_normal_(mode='fan_out')``, biases 0, BN 1/0) and the
    temperature (default 1.0, not in the state_dict).
    """

    def __init__(self, in_planes, hidden, widths, *, dtype, rng):
        super().__init__(dtype=dtype, rng=rng)
        self.temperature = 1.0
        self.add_param('fc.weight', kaiming_normal_fan_out(self.rng, (hidden, in_planes, 1, 1), self.dtype))
        self.add_param('bn.weight', np.ones(hidden))
        self.add_param('bn.bias', np.zeros(hidden))
        for head in HEADS:
            if widths[head] is not None:
                shape = (widths[head], hidden, 1, 1)
                self.add_param(f'{head}_fc.weight', kaiming_normal_fan_out(self.rng, shape, self.dtype))
                self.add_param(f'{head}_fc.bias', np.zeros(widths[head]))
        self.add_buffer('bn.running_mean', np.zeros(hidden))
        self.add_buffer('bn.running_var', np.ones(hidden))
        self.add_buffer('bn.num_batches_tracked', np.array(0, dtype=np.int64))

    def update_temperature(self, temperature):
        self.temperature = real(temperature, 'temperature', 0, strict_low=True)

    def arrays(self):
        """The arrays in :func:`odconv2d_forward` order after ``x, weight`` (None for skipped heads)."""
        p, b = self._params, self._buffers
        heads = tuple(p.get(f'{h}_fc.{kind}') for h in HEADS for kind in ('weight', 'bias'))
        return (p['fc.weight'], p['bn.weight'], p['bn.bias'], b['bn.running_mean'],
                b['bn.running_var']) + heads


# gradient slots of odconv2d_backward after dx, keyed as the layer's state_dict (None: a buffer)
_GRAD_KEYS = ('weight', 'attention.fc.weight', 'attention.bn.weight', 'attention.bn.bias', None, None) + \
    tuple(f'attention.{h}_fc.{kind}' for h in HEADS for kind in ('weight', 'bias'))


class ODConv2d(Module):
    """OSVAI/ODConv ``ODConv2d`` (same arguments, state_dict keys, skip rules, initialisation).

    ``(N, in_planes, H, W) -> (N, out_planes, Ho, Wo)``. No bias. ``update_temperature(t)`` sets the
    temperature of the four heads (default 1.0, not saved in the state_dict; see
    :func:`odconv_temperature`). In train mode the attention BatchNorm uses batch statistics
    (batch >= 2), updates its running buffers and couples the samples of a batch.

    Parameters
    ----------
    in_planes, out_planes : int
    kernel_size : int or square pair
    stride, padding, dilation, groups
        As :func:`numpyconv.conv2d_forward`.
    reduction : float
        Attention width ``max(int(in_planes * reduction), 16)``.
    kernel_num : int
        ``K``, the number of kernels.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 reduction=0.0625, kernel_num=4, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.in_planes, self.out_planes, self.groups = check_layer_channels(
            in_planes, out_planes, groups, ('in_planes', 'out_planes'))
        self.kernel_num = positive_int(kernel_num, 'kernel_num')
        self.kernel_size = _square_kernel(kernel_size)
        check_hyper_parameters(self.kernel_size, stride, padding, dilation)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        hidden = odconv_attention_channels(self.in_planes, reduction)
        widths = head_widths(self.in_planes, self.out_planes, self.kernel_size, self.groups, self.kernel_num)
        kernel_shape = (self.out_planes, self.in_planes // self.groups, self.kernel_size, self.kernel_size)
        self.add_param('weight', np.stack([kaiming_normal_fan_out(self.rng, kernel_shape, self.dtype)
                                           for _ in range(self.kernel_num)]))  # per kernel, fan_out
        self.attention = self.add_module('attention', _ODConvAttention(
            self.in_planes, hidden, widths, dtype=self.dtype, rng=self.rng))

    def update_temperature(self, temperature):
        """Set the temperature ``T`` of every attention head (official ``update_temperature``)."""
        self.attention.update_temperature(temperature)

    @property
    def temperature(self):
        return self.attention.temperature

    def forward(self, x):
        self._check_input(x, channels=self.in_planes)
        y, self._cache = odconv2d_forward(
            x, self._params['weight'], *self.attention.arrays(), stride=self.stride,
            padding=self.padding, dilation=self.dilation, groups=self.groups,
            temperature=self.attention.temperature, training=self.training)
        if self.training:
            self.attention._track_batch_norm(self._cache, 'bn.')
        return y

    def backward(self, dout):
        dx, *param_grads = odconv2d_backward(dout, self._cache)
        for key, grad in zip(_GRAD_KEYS, param_grads):
            if key is not None and grad is not None:
                self._add_grad(key, grad)
        return dx

    def macs(self, input_shape):
        """Multiply-adds of docs eq. 27: convolution, attention FCs, aggregation, scalings."""
        n, c_in, h, w = self._check_input_shape(input_shape, self.in_planes)
        geo = conv_geometry((h, w), self.kernel_size, self.stride, self.padding, self.dilation)
        out_hw = geo.out_hw[0] * geo.out_hw[1]
        kernel_elems = self.out_planes * (c_in // self.groups) * self.kernel_size ** 2   # P
        hidden = self.attention.params['fc.weight'].shape[0]
        widths = head_widths(self.in_planes, self.out_planes, self.kernel_size, self.groups,
                             self.kernel_num)
        heads = sum(v for v in widths.values() if v is not None)
        pw1x = self.kernel_size == 1 and self.kernel_num == 1
        per_sample = (out_hw * kernel_elems + c_in * hidden + hidden * heads
                      + (0 if pw1x else self.kernel_num * kernel_elems) + c_in * h * w
                      + (0 if widths['filter'] is None else self.out_planes * out_hw))
        return n * per_sample, (n, self.out_planes) + geo.out_hw
