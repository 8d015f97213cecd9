r"""CondConv: conditionally parameterised convolution, a sigmoid-routed mixture of ``E`` experts.

Yang et al., NeurIPS 2019. Weights as d-li14/condconv.pytorch ``CondConv2d`` (keys ``weight``,
``bias``); the routing ``route_func`` (GAP -> Linear -> sigmoid) is owned by the layer under the
keys ``route.fc.weight``, ``route.fc.bias``. Full derivation: docs/derivations/condconv.md.

Shapes::

    x            (N, C_in, H, W)
    weight       (E, C_out, C_in // G, kh, kw)   the experts W_e
    bias         (E, C_out) or None
    route_weight (E, C_in), route_bias (E,)      the routing Linear W_r, b_r
    y            (N, C_out, Ho, Wo)

Forward, per sample ``n``::

    p_n  = mean_{h,w} x_n                                    (eq. 1)   (N, C_in)
    z_n  = W_r p_n + b_r                                     (eq. 2)   (N, E)
    r_n  = sigmoid(z_n)      (no normalisation, no temperature)  (eq. 3)
    Wt_n = sum_e r[n,e] W_e;  bt_n = sum_e r[n,e] b_e        (eq. 4)
    y_n  = conv(x_n; Wt_n) + bt_n                            (eq. 5)   per-sample conv2d

Backward (given dy; eqs. 6-7 are the aggregation backward of numpyconv.dynamic)::

    dWt_n = corr(x_n, dy_n);  dbt_n = sum_hw dy_n;  dxc_n = conv^T(dy_n; Wt_n)
    dW_e = sum_n r[n,e] dWt_n;  db_e = sum_n r[n,e] dbt_n                       (eq. 6)
    dr[n,e] = <W_e, dWt_n> + <b_e, dbt_n>                                       (eq. 7)
    dz = dr * r * (1 - r)                                                       (eq. 8)
    dW_r = sum_n dz_n p_n^T;  db_r = sum_n dz_n;  dp_n = W_r^T dz_n             (eq. 9)
    dx_n = dxc_n + dp_n / (H W)                                                 (eq. 10)

To share one routing vector between several convolutions (EfficientNet CondConv blocks), compute
``r`` once and call :func:`numpyconv.dynamic.aggregated_conv2d_forward` for each convolution; the
``dattention`` it returns adds up over them before (eq. 8). The routing alone is the pair
:func:`condconv_routing_forward` / :func:`condconv_routing_backward`; the layers
:class:`CondConvRouting` (d-li14 ``route_func``) and :class:`RoutedCondConv2d` (d-li14
``CondConv2d``, routing given to ``forward``) build d-li14's CondConv MobileNetV2 blocks.
"""
import numpy as np

from ._checks import Cache, check_cache, expect_shape, float_array, grad_out, positive_int, same_dtype
from .activations import sigmoid_backward, sigmoid_forward
from .blocks import linear_backward, linear_forward
from .pooling import global_avg_pool2d_backward, global_avg_pool2d_forward
from .dynamic import (MixtureConv2dBase, aggregated_conv2d_backward, aggregated_conv2d_forward,
                      check_kernel_bank)
from .layers import Linear
from .module import Module, default_bias, kaiming_uniform


def _check_route(x, weight, route_weight, route_bias):
    c_in, experts = x.shape[1], weight.shape[0]
    float_array(route_weight, 'route_weight', 2, "(E, C_in)")
    expect_shape(route_weight, (experts, c_in), 'route_weight')
    if route_bias is not None:
        float_array(route_bias, 'route_bias', 1, "(E,)")
        expect_shape(route_bias, (experts,), 'route_bias')
    same_dtype(('x', x), ('route_weight', route_weight), ('route_bias', route_bias))


def condconv2d_forward(x, weight, bias, route_weight, route_bias, stride=1, padding=0, dilation=1,
                       groups=1):
    """CondConv forward (eqs. 1-5): routing, expert combination, per-sample convolution.

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
    weight : ndarray (E, C_out, C_in // groups, kh, kw)
        The ``E`` experts.
    bias : ndarray (E, C_out) or None
    route_weight : ndarray (E, C_in)
        The routing function's Linear weight.
    route_bias : ndarray (E,) or None
    stride, padding, dilation, groups
        As :func:`numpyconv.conv2d_forward`.

    Returns
    -------
    y : ndarray (N, C_out, Ho, Wo)
    cache : Cache
        ``Cache('condconv2d')`` with the steps' caches ``gap``, ``fc``, ``sigmoid`` and ``conv``
        (:func:`numpyconv.aggregated_conv2d_forward`'s); none of them None.
    """
    groups = check_kernel_bank(x, weight, bias, groups)
    _check_route(x, weight, route_weight, route_bias)
    pooled, gap_cache = global_avg_pool2d_forward(x)                        # (N, C_in) (eq. 1)
    logits, fc_cache = linear_forward(pooled, route_weight, route_bias)     # (N, E) (eq. 2)
    routing, sigmoid_cache = sigmoid_forward(logits)                        # (eq. 3)
    y, conv_cache = aggregated_conv2d_forward(x, routing, weight, bias, stride, padding, dilation,
                                              groups)                       # (eqs. 4, 5)
    return y, Cache('condconv2d', gap=gap_cache, fc=fc_cache, sigmoid=sigmoid_cache, conv=conv_cache)


def condconv2d_backward(dout, cache):
    """Gradients of :func:`condconv2d_forward` (eqs. 6-10).

    Parameters
    ----------
    dout : ndarray, (N, C_out, Ho, Wo)
        Gradient of the loss with respect to the output of :func:`condconv2d_forward`.
    cache : Cache
        The cache :func:`condconv2d_forward` returned (not modified).

    Returns
    -------
    grads : tuple
        ``(dx, dweight, dbias, droute_weight, droute_bias)``, each of its input's shape; None for an
        input given as None.
    """
    cache = check_cache(cache, 'condconv2d')
    dx, drouting, dweight, dbias = aggregated_conv2d_backward(dout, cache['conv'])  # (eqs. 6, 7)
    dlogits, = sigmoid_backward(drouting, cache['sigmoid'])                 # (eq. 8)
    dpooled, droute_weight, droute_bias = linear_backward(dlogits, cache['fc'])  # (eq. 9)
    dx += global_avg_pool2d_backward(dpooled, cache['gap'])[0]              # (eq. 10)
    return dx, dweight, dbias, droute_weight, droute_bias


class _Route(Module):
    """Parameters of d-li14 ``route_func`` (key ``fc.weight``, ``fc.bias``; PyTorch Linear init).

    The computation lives in :func:`condconv2d_forward`.
    """

    def __init__(self, in_channels, num_experts, *, dtype, rng):
        super().__init__(dtype=dtype, rng=rng)
        self.add_module('fc', Linear(in_channels, num_experts, dtype=dtype, rng=self.rng))


class CondConv2d(MixtureConv2dBase):
    """CondConv layer: d-li14 ``CondConv2d`` weights plus its own ``route_func`` routing.

    ``(N, C_in, H, W) -> (N, C_out, Ho, Wo)``. Keys ``weight (E, C_out, C_in//groups, kh, kw)``,
    ``bias (E, C_out)``, ``route.fc.weight (E, C_in)``, ``route.fc.bias (E,)``. Each expert is
    initialised like a ``Conv2d`` (as TF/timm; d-li14's whole-tensor init is sqrt(C_out) times
    smaller, see docs/derivations/condconv.md, section 6). No BatchNorm: train and eval mode compute
    the same function.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation, groups
        As :func:`numpyconv.conv2d_forward`.
    bias : bool
        A bias per expert.
    num_experts : int
        ``E``.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters and buffers.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """
    PARAM_KEYS = ('weight', 'bias', 'route.fc.weight', 'route.fc.bias')

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, num_experts=4, *, dtype=np.float32, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         num_experts, ('in_channels', 'out_channels', 'num_experts'), dtype=dtype, rng=rng)
        self.num_experts = self.num_kernels
        add_experts(self, bias)
        self.route = self.add_module('route', _Route(self.in_channels, self.num_experts,
                                                     dtype=self.dtype, rng=self.rng))

    def run_forward(self, x, *arrays):
        return condconv2d_forward(x, *arrays, *self.conv_args())

    def run_backward(self, dout, cache):
        return condconv2d_backward(dout, cache)

    def attention_macs(self):
        """The routing FC (condconv.md eq. 11)."""
        return self.in_channels * self.num_experts


# -- one routing shared by several convolutions (CondConv MobileNetV2 / EfficientNet blocks) -------
def condconv_routing_forward(x, route_weight, route_bias=None):
    """The routing alone, ``r = sigmoid(W_r GAP(x) + b_r)`` (eqs. 1-3): d-li14 ``route_func``.

    Parameters
    ----------
    x : ndarray (N, C_in, H, W)
        The input the routing looks at (a block's input).
    route_weight : ndarray (E, C_in)
        The routing's fully connected weight (d-li14's ``fc.weight``).
    route_bias : ndarray (E,) or None
        Its bias.

    Returns
    -------
    r : ndarray (N, E)
        Routing weights in (0, 1), to feed :func:`numpyconv.dynamic.aggregated_conv2d_forward`
        (the ``attention`` input) of every convolution that shares them.
    cache : Cache
        ``'condconv_routing'``: ``gap``, ``fc``, ``sigmoid`` (the caches of the global average
        pooling, the linear map and the sigmoid), ``shape`` ``(N, E)`` and ``dtype`` of ``r``.
    """
    float_array(x, 'x', 4, "(N, C_in, H, W)")
    float_array(route_weight, 'route_weight', 2, "(E, C_in)")
    expect_shape(route_weight, (route_weight.shape[0], x.shape[1]), 'route_weight')
    if route_bias is not None:
        float_array(route_bias, 'route_bias', 1, "(E,)")
        expect_shape(route_bias, route_weight.shape[:1], 'route_bias')
    same_dtype(('x', x), ('route_weight', route_weight), ('route_bias', route_bias))
    pooled, gap_cache = global_avg_pool2d_forward(x)                        # (N, C_in) (eq. 1)
    logits, fc_cache = linear_forward(pooled, route_weight, route_bias)     # (N, E) (eq. 2)
    routing, sigmoid_cache = sigmoid_forward(logits)                        # (eq. 3)
    return routing, Cache('condconv_routing', gap=gap_cache, fc=fc_cache, sigmoid=sigmoid_cache,
                          shape=routing.shape, dtype=routing.dtype)


def condconv_routing_backward(dout, cache):
    """``(dx, droute_weight, droute_bias)`` of :func:`condconv_routing_forward` (eqs. 8-10, the
    pooling part of eq. 10).

    Parameters
    ----------
    dout : ndarray (N, E)
        The routing's gradient: the sum of (eq. 7) over the convolutions sharing the routing (eq. 12).
    cache : Cache
        From :func:`condconv_routing_forward`.

    Returns
    -------
    dx : ndarray (N, C_in, H, W)
    droute_weight : ndarray (E, C_in)
    droute_bias : ndarray (E,) or None
        None when ``route_bias`` was None.
    """
    cache = check_cache(cache, 'condconv_routing')
    dout = grad_out(dout, cache['shape'], cache['dtype'])
    dlogits, = sigmoid_backward(dout, cache['sigmoid'])                     # (eq. 8)
    dpooled, droute_weight, droute_bias = linear_backward(dlogits, cache['fc'])  # (eq. 9)
    dx, = global_avg_pool2d_backward(dpooled, cache['gap'])                 # (eq. 10)
    return dx, droute_weight, droute_bias


class CondConvRouting(Module):
    """d-li14 ``route_func(c_in, num_experts)``: ``(N, C_in, H, W) -> (N, E)`` routing weights.

    Keys ``fc.weight (E, C_in)``, ``fc.bias (E,)`` (PyTorch Linear init). ``backward(dr)`` takes
    the routing gradient summed over the convolutions that used the routing and returns ``dx``.

    Parameters
    ----------
    c_in : int
        Input channels.
    num_experts : int
        E.
    dtype : float32 or float64, keyword-only
        Dtype of the parameters.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """

    def __init__(self, c_in, num_experts, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.c_in, self.num_experts = positive_int(c_in, 'c_in'), positive_int(num_experts, 'num_experts')
        self.fc = self.add_module('fc', Linear(self.c_in, self.num_experts, dtype=self.dtype, rng=self.rng))

    def forward(self, x):
        self._check_input(x, channels=self.c_in)
        r, self._cache = condconv_routing_forward(x, self.fc.params['weight'], self.fc.params['bias'])
        return r

    def backward(self, dout):
        dx, dweight, dbias = condconv_routing_backward(dout, self._cache)
        self.fc._add_grad('weight', dweight)
        self.fc._add_grad('bias', dbias)
        return dx

    def macs(self, input_shape):
        """Global pooling and the routing FC (condconv.md eq. 11)."""
        n, c, h, w = self._check_input_shape(input_shape, self.c_in)
        return n * (c * h * w + c * self.num_experts), (n, self.num_experts)


def add_experts(layer, bias):
    """Register a CondConv layer's ``weight`` (and ``bias``) of ``layer.kernel_shape``, each expert
    initialised like a ``Conv2d`` (fan-in ``C_in/groups * kh * kw``; condconv.md section 6)."""
    fan_in = int(np.prod(layer.kernel_shape[2:]))                      # per expert
    layer.add_param('weight', kaiming_uniform(layer.rng, layer.kernel_shape, layer.dtype, fan_in=fan_in))
    if bias:
        layer.add_param('bias', default_bias(layer.rng, fan_in, layer.num_experts * layer.out_channels,
                                             layer.dtype).reshape(layer.kernel_shape[:2]))


class RoutedCondConv2d(MixtureConv2dBase):
    """d-li14 ``CondConv2d`` itself: the expert bank, with the routing given to ``forward``.

    ``forward(x, routing_weight)`` with ``routing_weight (N, E)`` (from a :class:`CondConvRouting`
    shared by a block) returns ``conv(x_n; sum_e r[n,e] W_e) + sum_e r[n,e] b_e`` (eqs. 4-5);
    ``backward(dout)`` returns ``(dx, drouting_weight)`` (eqs. 6-7), accumulating ``weight`` and
    ``bias`` gradients. Keys ``weight (E, C_out, C_in//groups, kh, kw)``, ``bias (E, C_out)``
    (initialised as :class:`CondConv2d`). ``macs`` counts the combination and the convolution (the
    routing is counted where it is computed).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation, groups
        As :func:`numpyconv.conv2d_forward`.
    bias : bool
        A bias per expert.
    num_experts : int
        ``E`` (d-li14's default: 1).
    dtype : float32 or float64, keyword-only
        Dtype of the parameters.
    rng : numpy.random.Generator, int or None, keyword-only
        Source of the initial weights: a Generator, a seed, or None (fresh entropy).
    """
    PARAM_KEYS = ('weight', 'bias')

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, num_experts=1, *, dtype=np.float32, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         num_experts, ('in_channels', 'out_channels', 'num_experts'), dtype=dtype, rng=rng)
        self.num_experts = self.num_kernels
        add_experts(self, bias)

    def forward(self, x, routing_weight):
        self._check_input(x, channels=self.in_channels)
        y, self._cache = aggregated_conv2d_forward(x, routing_weight, self._params['weight'],
                                                   self._params.get('bias'), *self.conv_args())
        return y

    def backward(self, dout):
        dx, drouting, dweight, dbias = aggregated_conv2d_backward(dout, self._cache)   # (eqs. 6-7)
        self._add_grad('weight', dweight)
        if dbias is not None:
            self._add_grad('bias', dbias)
        return dx, drouting

    def attention_macs(self):
        return 0

    def macs(self, input_shape):
        """Combination (eq. 4) and convolution (eq. 5) per sample: eq. 11 without GAP and routing."""
        n, c, h, w = self._check_input_shape(input_shape, self.in_channels)
        total, out_shape = super().macs(input_shape)
        return total - n * c * h * w, out_shape
