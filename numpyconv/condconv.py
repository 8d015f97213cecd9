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
``dattention`` it returns adds up over them before (eq. 8).
"""
import numpy as np

from ._checks import Cache, check_cache, expect_shape, float_array, same_dtype
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

    ``bias`` and ``route_bias`` may be None. Returns ``(y, cache)``.
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
    """Gradients ``(dx, dweight, dbias, droute_weight, droute_bias)`` (eqs. 6-10)."""
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

    Keys ``weight (E, C_out, C_in//groups, kh, kw)``, ``bias (E, C_out)``, ``route.fc.weight (E, C_in)``,
    ``route.fc.bias (E,)``. Each expert is initialised like a ``Conv2d`` (as TF/timm; d-li14's
    whole-tensor init is sqrt(C_out) times smaller, see docs/derivations/condconv.md, section 6).
    No BatchNorm: train and eval mode compute the same function.
    """
    PARAM_KEYS = ('weight', 'bias', 'route.fc.weight', 'route.fc.bias')

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, num_experts=4, *, dtype=np.float32, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         num_experts, ('in_channels', 'out_channels', 'num_experts'), dtype=dtype, rng=rng)
        self.num_experts = self.num_kernels
        fan_in = int(np.prod(self.kernel_shape[2:]))                       # per expert
        self.add_param('weight', kaiming_uniform(self.rng, self.kernel_shape, self.dtype, fan_in=fan_in))
        if bias:
            self.add_param('bias', default_bias(self.rng, fan_in, self.num_experts * self.out_channels,
                                                self.dtype).reshape(self.kernel_shape[:2]))
        self.route = self.add_module('route', _Route(self.in_channels, self.num_experts,
                                                     dtype=self.dtype, rng=self.rng))

    def run_forward(self, x, *arrays):
        return condconv2d_forward(x, *arrays, *self.conv_args())

    def run_backward(self, dout, cache):
        return condconv2d_backward(dout, cache)

    def attention_macs(self):
        """The routing FC (condconv.md eq. 11)."""
        return self.in_channels * self.num_experts
