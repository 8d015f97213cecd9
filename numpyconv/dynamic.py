r"""Dynamic Convolution (DY-CNN): softmax attention over ``K`` convolution kernels.

Chen et al., CVPR 2020. Compatible with kaijieshi7/Dynamic-convolution-Pytorch ``Dynamic_conv2d``
(state_dict keys ``weight``, ``bias``, ``attention.fc1.weight``, ``attention.fc2.weight``,
``attention.fc2.bias``). Full derivation: docs/derivations/dynamic.md (equation numbers below).

Shapes::

    x          (N, C_in, H, W)
    weight     (K, C_out, C_in // G, kh, kw)     the K kernels W_k
    bias       (K, C_out) or None                the K biases b_k
    fc1_weight (D, C_in, 1, 1)                   W1 (1x1 conv on the pooled map, no bias)
    fc2_weight (K, D, 1, 1), fc2_bias (K,)       W2, b2
    y          (N, C_out, Ho, Wo)

Forward, per sample ``n`` (no BatchNorm: samples never interact)::

    p_n  = mean_{h,w} x_n                        (eq. 1)     (N, C_in)
    a_n  = W1 p_n;   r_n = relu(a_n)             (eq. 2, 3)  (N, D)
    z_n  = W2 r_n + b2                           (eq. 4)     (N, K)
    pi_n = softmax(z_n / T)                      (eq. 5)
    Wt_n = sum_k pi[n,k] W_k;  bt_n = sum_k pi[n,k] b_k      (eq. 6)  one (N,K)@(K,-1) product
    y_n  = conv(x_n; Wt_n) + bt_n                (eq. 7)     per-sample conv2d, one batched GEMM

Backward (given dy)::

    dWt_n = corr(x_n, dy_n); dbt_n = sum_hw dy_n; dxc_n = conv^T(dy_n; Wt_n)          (eq. 8)
    dW_k  = sum_n pi[n,k] dWt_n;        db_k = sum_n pi[n,k] dbt_n                       (eq. 9)
    dpi[n,k] = <W_k, dWt_n> + <b_k, dbt_n>                                              (eq. 10)
    dz_n  = (pi_n / T) * (dpi_n - <pi_n, dpi_n>)                                        (eq. 11)
    dW2 = sum_n dz_n r_n^T;  db2 = sum_n dz_n;  dr_n = W2^T dz_n                        (eq. 12)
    da_n = dr_n * [a_n > 0];  dW1 = sum_n da_n p_n^T;  dp_n = W1^T da_n                 (eq. 13, 14)
    dx_n = dxc_n + dp_n / (H W)   (broadcast over h, w)                                 (eq. 15)

Temperature: the official ``update_temperature()`` does ``T -= 3`` unless ``T == 1``
(:func:`dynamic_temperature`, eq. 16); it is not part of the state_dict.

The kernel aggregation and per-sample convolution (eqs. 6-10) are also a public op,
:func:`aggregated_conv2d_forward` / :func:`aggregated_conv2d_backward`, taking the attention as an
input; CondConv (``numpyconv.condconv``) uses it with sigmoid routing.
"""
import math
import numbers

import numpy as np

from ._checks import Cache, check_cache, count_int, expect_shape, float_array, positive_int, real, same_dtype
from .activations import relu_backward, relu_forward, softmax_backward, softmax_forward
from .blocks import linear_backward, linear_forward
from .pooling import global_avg_pool2d_backward, global_avg_pool2d_forward
from .conv import (Conv2d, check_hyper_parameters, check_layer_channels, conv2d_backward,
                   conv2d_forward, conv_geometry)
from .gemm import bank_grad
from .memory import require_memory
from .module import Module, kaiming_normal_fan_out, uniform


# -- kernel aggregation + per-sample convolution (eqs. 6-10) ------------------------------------
def check_kernel_bank(x, weight, bias, groups):
    """Validate ``x (N, C_in, H, W)``, ``weight (K, C_out, C_in//groups, kh, kw)``, ``bias (K, C_out)``.

    Returns ``groups`` as an int. Shared by the dynamic-kernel ops (DY-CNN, CondConv).
    """
    float_array(x, 'x', 4, "(N, C_in, H, W)")
    float_array(weight, 'weight', 5, "(K, C_out, C_in // groups, kh, kw)")
    groups = positive_int(groups, 'groups')
    c_in, (k, c_out) = x.shape[1], weight.shape[:2]
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels, got x of shape {x.shape}")
    if c_out % groups:
        raise ValueError(f"groups={groups} must divide the output channels, got weight of shape "
                         f"{weight.shape}")
    if weight.shape[2] * groups != c_in:
        raise ValueError(f"weight must have shape {(k, c_out, c_in // groups) + weight.shape[3:]} "
                         f"(K, C_out, C_in // groups, kh, kw) for x of shape {x.shape} and "
                         f"groups={groups}, got {weight.shape}")
    if bias is not None:
        float_array(bias, 'bias', 2, "(K, C_out)")
        expect_shape(bias, (k, c_out), 'bias')
    same_dtype(('x', x), ('weight', weight), ('bias', bias))
    return groups


def _check_attention(x, attention, weight):
    float_array(attention, 'attention', 2, "(N, K)")
    expect_shape(attention, (x.shape[0], weight.shape[0]), 'attention')
    same_dtype(('x', x), ('attention', attention))


def aggregated_conv2d_forward(x, attention, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``y_n = conv(x_n; sum_k attention[n,k] W_k) + sum_k attention[n,k] b_k`` (eq. 6, 7).

    ``attention`` is any per-sample mixing weight (DY-CNN softmax, CondConv sigmoid routing, or one
    routing vector shared by several convolutions).

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
    attention : ndarray (N, K)
    weight : ndarray (K, C_out, C_in // groups, kh, kw)
        The bank of ``K`` kernels.
    bias : ndarray (K, C_out) or None
    stride, padding, dilation : int or pair
        As :func:`numpyconv.conv2d_forward`.
    groups : int

    Returns
    -------
    y : ndarray (N, C_out, Ho, Wo)
    cache : Cache
        ``Cache('aggregated_conv2d')`` with ``conv`` (the per-sample conv2d's cache), ``attention``,
        ``weight`` and ``bias`` (None when given as None).
    """
    groups = check_kernel_bank(x, weight, bias, groups)
    _check_attention(x, attention, weight)
    n, k = attention.shape
    require_memory((n,) + weight.shape[1:], x.dtype, f"x of shape {x.shape} (batch {n}) with weight of "
                   f"shape {weight.shape}", 'the per-sample kernels')
    kernels = attention @ weight.reshape(k, -1)                          # (N, C_out*C_g*kh*kw) (eq. 6)
    kernels = kernels.reshape((n,) + weight.shape[1:])                   # (N, C_out, C_g, kh, kw)
    biases = None if bias is None else attention @ bias                  # (N, C_out)
    y, conv_cache = conv2d_forward(x, kernels, biases, stride, padding, dilation, groups)  # (eq. 7)
    return y, Cache('aggregated_conv2d', conv=conv_cache, attention=attention, weight=weight, bias=bias)


def aggregated_conv2d_backward(dout, cache):
    """Gradients of :func:`aggregated_conv2d_forward` (eq. 8-10).

    Parameters
    ----------
    dout : ndarray, (N, C_out, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`aggregated_conv2d_forward`.
    cache : Cache
        The cache :func:`aggregated_conv2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, dattention, dweight, dbias)``, each of its input's shape; ``dbias`` None without bias.
    """
    cache = check_cache(cache, 'aggregated_conv2d')
    attention, weight, bias = cache['attention'], cache['weight'], cache['bias']
    n, k = attention.shape
    dx, dkernels, dbiases = conv2d_backward(dout, cache['conv'])          # (eq. 8, dout checked there)
    dkernels = dkernels.reshape(n, weight[0].size)                       # (N, C_out*C_g*kh*kw)
    dweight = bank_grad(attention, dkernels).reshape(weight.shape)       # (eq. 9)
    dattention = dkernels @ weight.reshape(k, -1).T                      # (N, K) (eq. 10)
    dbias = None
    if bias is not None:
        dbias = attention.T @ dbiases                                    # (K, C_out) (eq. 9)
        dattention += dbiases @ bias.T                                   # (eq. 10)
    return dx, dattention, dweight, dbias


# -- DY-CNN: the whole technique ----------------------------------------------------------------
def _check_dynamic_attention(x, weight, fc1_weight, fc2_weight, fc2_bias):
    c_in, k = x.shape[1], weight.shape[0]
    float_array(fc1_weight, 'fc1_weight', 4, "(D, C_in, 1, 1)")
    hidden = fc1_weight.shape[0]
    expect_shape(fc1_weight, (hidden, c_in, 1, 1), 'fc1_weight')
    float_array(fc2_weight, 'fc2_weight', 4, "(K, D, 1, 1)")
    expect_shape(fc2_weight, (k, hidden, 1, 1), 'fc2_weight')
    if fc2_bias is not None:
        float_array(fc2_bias, 'fc2_bias', 1, "(K,)")
        expect_shape(fc2_bias, (k,), 'fc2_bias')
    same_dtype(('x', x), ('fc1_weight', fc1_weight), ('fc2_weight', fc2_weight), ('fc2_bias', fc2_bias))


def dynamic_conv2d_forward(x, weight, bias, fc1_weight, fc2_weight, fc2_bias, temperature=1.0, stride=1,
                           padding=0, dilation=1, groups=1):
    """DY-CNN forward (eqs. 1-7): attention branch, kernel aggregation, per-sample convolution.

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
    weight : ndarray (K, C_out, C_in // groups, kh, kw)
    bias : ndarray (K, C_out) or None
    fc1_weight : ndarray (D, C_in, 1, 1)
        The attention's first 1x1 convolution (no bias).
    fc2_weight : ndarray (K, D, 1, 1)
    fc2_bias : ndarray (K,) or None
    temperature : float > 0
        The softmax temperature T (1: the plain softmax; :class:`DynamicConv2d` passes its current T).
    stride, padding, dilation : int or pair
        As :func:`numpyconv.conv2d_forward`.
    groups : int

    Returns
    -------
    y : ndarray (N, C_out, Ho, Wo)
    cache : Cache
        ``Cache('dynamic_conv2d')`` with the steps' caches ``gap``, ``fc1``, ``relu``, ``fc2``,
        ``softmax`` and ``conv`` (:func:`aggregated_conv2d_forward`'s); none of them None.
    """
    groups = check_kernel_bank(x, weight, bias, groups)
    _check_dynamic_attention(x, weight, fc1_weight, fc2_weight, fc2_bias)
    pooled, gap_cache = global_avg_pool2d_forward(x)                              # (N, C_in) (eq. 1)
    hidden, fc1_cache = linear_forward(pooled, fc1_weight[:, :, 0, 0])            # (N, D) (eq. 2)
    active, relu_cache = relu_forward(hidden)                                     # (eq. 3)
    logits, fc2_cache = linear_forward(active, fc2_weight[:, :, 0, 0], fc2_bias)  # (N, K) (eq. 4)
    pi, softmax_cache = softmax_forward(logits, axis=1, temperature=temperature)  # (eq. 5)
    y, conv_cache = aggregated_conv2d_forward(x, pi, weight, bias, stride, padding, dilation, groups)
    cache = Cache('dynamic_conv2d', gap=gap_cache, fc1=fc1_cache, relu=relu_cache, fc2=fc2_cache,
                  softmax=softmax_cache, conv=conv_cache)
    return y, cache


def dynamic_conv2d_backward(dout, cache):
    """Gradients of :func:`dynamic_conv2d_forward` (eqs. 8-15).

    Parameters
    ----------
    dout : ndarray, (N, C_out, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`dynamic_conv2d_forward`.
    cache : Cache
        The cache :func:`dynamic_conv2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, dweight, dbias, dfc1_weight, dfc2_weight, dfc2_bias)``, each of its input's shape;
        ``dbias`` / ``dfc2_bias`` None when the forward got None.
    """
    cache = check_cache(cache, 'dynamic_conv2d')
    dx, dpi, dweight, dbias = aggregated_conv2d_backward(dout, cache['conv'])    # (eqs. 8-10)
    dlogits, = softmax_backward(dpi, cache['softmax'])                           # (eq. 11)
    dactive, dfc2_weight, dfc2_bias = linear_backward(dlogits, cache['fc2'])     # (eq. 12)
    dhidden, = relu_backward(dactive, cache['relu'])                             # (eq. 13)
    dpooled, dfc1_weight, _ = linear_backward(dhidden, cache['fc1'])             # (eq. 14)
    dx += global_avg_pool2d_backward(dpooled, cache['gap'])[0]                   # (eq. 15)
    return (dx, dweight, dbias, dfc1_weight[:, :, None, None], dfc2_weight[:, :, None, None],
            dfc2_bias)


# -- temperature schedule -----------------------------------------------------------------------
def _check_official_temperature(temperature):
    """Dynamic_conv2d asserts ``T % 3 == 1`` so that the schedule (eq. 16) reaches 1."""
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature >= 1 and temperature % 3 == 1):
        raise ValueError(f"temperature must be >= 1 with temperature % 3 == 1 (1, 4, ..., 31, 34, ...), "
                         f"as Dynamic_conv2d asserts, got {temperature!r}")
    return temperature


def dynamic_temperature(epoch, initial=34):
    """Temperature after ``epoch`` calls of the official ``update_temperature()`` (eq. 16).

    Each call does ``T -= 3`` unless ``T == 1``, i.e. ``T(epoch) = max(1, initial - 3*epoch)``;
    kaijieshi7's ``main.py`` calls it once per epoch: 34, 31, ..., 4, 1, 1, ...

    >>> [dynamic_temperature(e) for e in (0, 1, 10, 11, 50)]
    [34, 31, 4, 1, 1]
    """
    epoch = count_int(epoch, 'epoch')
    _check_official_temperature(initial)
    return max(1, initial - 3 * epoch)


# -- layers ---------------------------------------------------------------------------------------
class MixtureConv2dBase(Module):
    """Plumbing shared by :class:`DynamicConv2d` and ``CondConv2d`` (a bank of kernels mixed per sample).

    Checks the constructor arguments (``arg_names`` names the channel and kernel-count arguments as
    the subclass calls them), runs the subclass's functional pair on the parameters ``PARAM_KEYS``
    (None when absent, e.g. without bias), accumulates their gradients, and counts multiply-adds:
    global pooling + ``attention_macs()`` per sample + the aggregation (eq. 6) + the convolution (eq. 7)
    (eq. 17). Subclasses define ``PARAM_KEYS``, ``run_forward(x, *arrays)``, ``run_backward(dout, cache)``
    and ``attention_macs()``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, num_kernels,
                 arg_names, *, dtype, rng):
        super().__init__(dtype=dtype, rng=rng)
        in_name, out_name, kernels_name = arg_names
        self.in_channels, self.out_channels, self.groups = check_layer_channels(
            in_channels, out_channels, groups, (in_name, out_name))
        self.num_kernels = positive_int(num_kernels, kernels_name)
        self.kernel_size = check_hyper_parameters(kernel_size, stride, padding, dilation)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.kernel_shape = ((self.num_kernels, self.out_channels, self.in_channels // self.groups)
                             + self.kernel_size)                          # (K, C_out, C_g, kh, kw)

    def forward(self, x):
        self._check_input(x, channels=self.in_channels)
        params = self.params
        y, self._cache = self.run_forward(x, *[params.get(key) for key in self.PARAM_KEYS])
        return y

    def backward(self, dout):
        dx, *param_grads = self.run_backward(dout, self._cache)
        for key, grad in zip(self.PARAM_KEYS, param_grads):
            if grad is not None:
                self._add_grad(key, grad)
        return dx

    def conv_args(self):
        return self.stride, self.padding, self.dilation, self.groups

    def macs(self, input_shape):
        n, c_in, h, w = self._check_input_shape(input_shape, self.in_channels)
        geo = conv_geometry((h, w), self.kernel_size, self.stride, self.padding, self.dilation)
        per_output = c_in // self.groups * geo.kernel[0] * geo.kernel[1]
        has_bias = 'bias' in self._params
        aggregation = self.num_kernels * self.out_channels * (per_output + has_bias)    # (eq. 6)
        convolution = self.out_channels * geo.out_hw[0] * geo.out_hw[1] * per_output     # (eq. 7)
        per_sample = c_in * h * w + self.attention_macs() + aggregation + convolution    # (eq. 17)
        return n * per_sample, (n, self.out_channels) + geo.out_hw


class _Attention2d(Module):
    """Parameters of kaijieshi7 ``attention2d`` (keys ``fc1.weight``, ``fc2.weight``, ``fc2.bias``).

    The computation lives in :func:`dynamic_conv2d_forward`; this only holds the 1x1 convolutions
    with the official initialisation (``kaiming_normal_(mode='fan_out')``, ``fc2.bias = 0``).
    """

    def __init__(self, in_planes, hidden, num_kernels, *, dtype, rng):
        super().__init__(dtype=dtype, rng=rng)
        self.add_module('fc1', Conv2d(in_planes, hidden, 1, bias=False, dtype=dtype, rng=self.rng))
        self.add_module('fc2', Conv2d(hidden, num_kernels, 1, dtype=dtype, rng=self.rng))
        self.load_state_dict({
            'fc1.weight': kaiming_normal_fan_out(self.rng, (hidden, in_planes, 1, 1), self.dtype),
            'fc2.weight': kaiming_normal_fan_out(self.rng, (num_kernels, hidden, 1, 1), self.dtype),
            'fc2.bias': np.zeros(num_kernels)})


class DynamicConv2d(MixtureConv2dBase):
    """DY-CNN layer, kaijieshi7 ``Dynamic_conv2d`` (same arguments, keys and initialisation).

    ``(N, in_planes, H, W) -> (N, out_planes, Ho, Wo)``. Hidden width ``int(in_planes * ratio) + 1``
    (``K`` when ``in_planes == 3``). No BatchNorm: train and eval mode compute the same function.

    Parameters
    ----------
    in_planes, out_planes : int
    kernel_size : int or pair
        (the official module takes an int).
    ratio : float
        The attention's hidden width factor.
    stride, padding, dilation, groups
        As :func:`numpyconv.conv2d_forward`.
    bias : bool
        A bias per kernel, ``(K, out_planes)``.
    K : int
        Number of kernels.
    temperature : int
        The softmax temperature, starts at 34 (``T % 3 == 1``); not saved in the state_dict: after
        loading a checkpoint trained to T = 1, set ``layer.temperature = 1``.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """
    PARAM_KEYS = ('weight', 'bias', 'attention.fc1.weight', 'attention.fc2.weight', 'attention.fc2.bias')

    def __init__(self, in_planes, out_planes, kernel_size, ratio=0.25, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, K=4, temperature=34, *, dtype=np.float32, rng=None):
        super().__init__(in_planes, out_planes, kernel_size, stride, padding, dilation, groups, K,
                         ('in_planes', 'out_planes', 'K'), dtype=dtype, rng=rng)
        self.in_planes, self.out_planes, self.K = self.in_channels, self.out_channels, self.num_kernels
        self.temperature = temperature
        ratio = real(ratio, 'ratio', -math.inf)                          # any finite real, as official
        self.hidden = self.K if self.in_planes == 3 else int(self.in_planes * ratio) + 1
        if self.hidden < 1:
            raise ValueError(f"ratio={ratio!r} gives a hidden width of {self.hidden} for "
                             f"in_planes={in_planes}")
        fan_in = int(np.prod(self.kernel_shape[2:]))                     # per kernel
        bound = math.sqrt(6.0 / fan_in)                                  # kaiming_uniform_(weight[i]), a=0
        self.add_param('weight', uniform(self.rng, bound, self.kernel_shape, self.dtype))
        if bias:
            self.add_param('bias', np.zeros(self.kernel_shape[:2]))
        self.attention = self.add_module('attention', _Attention2d(self.in_planes, self.hidden, self.K,
                                                                   dtype=self.dtype, rng=self.rng))

    @property
    def temperature(self):
        """The softmax temperature T (eq. 5); must satisfy ``T % 3 == 1`` as in the official code."""
        return self._temperature

    @temperature.setter
    def temperature(self, value):
        self._temperature = _check_official_temperature(value)

    def update_temperature(self):
        """The official per-epoch step: ``T -= 3`` unless ``T == 1`` (eq. 16). Returns the new T."""
        self.temperature = dynamic_temperature(1, self.temperature)
        return self.temperature

    def run_forward(self, x, *arrays):
        return dynamic_conv2d_forward(x, *arrays, self.temperature, *self.conv_args())

    def run_backward(self, dout, cache):
        return dynamic_conv2d_backward(dout, cache)

    def attention_macs(self):
        """FC1 and FC2 of the attention (eq. 17)."""
        return self.in_planes * self.hidden + self.hidden * self.K
