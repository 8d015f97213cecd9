"""The private backward steps that the public op pairs are built from, each checked on its own:
float64 finite differences (``numpyconv.gradcheck``) where the step is a function's gradient, the
plain-loop reference where it is a loop.

* ``blocks._eval_batch_norm`` / ``_eval_batch_norm_backward`` (eq. 21, 22, 18, 22a) with respect to
  x, gamma, beta and both running statistics, and ``_channel_affine_backward``'s sums;
* ``pooling._max_forward_loop`` / ``_max_backward_loop`` (eq. 44-46) against the reference loops;
* ``dropout._masked`` / ``_masked_backward`` (eq. 55-56) with a given mask, in training and eval;
* the steps of the ODConv reference backward (``reference/odconv.py``: ``_features_backward``,
  ``_heads_backward``, ``_trunk_backward``) and of the KernelWarehouse attention's
  (``reference/kernel_warehouse.py``: ``_logits_backward`` then ``_trunk_backward``), each against
  finite differences of the part of the reference forward it differentiates;
* ``deformable._chunk_backward`` on one chunk against the public backward, and over several chunks;
* ``models.oct_resnet.OctaveConvBN._part_backward`` (BatchNorm then ReLU of one frequency part).
"""
import numpy as np
import pytest

import numpyconv
from numpyconv import blocks, deformable, dropout, pooling, reference
from numpyconv.im2col import loop_geo
from numpyconv.reference import conv as ref_conv
from numpyconv.reference import kernel_warehouse as ref_kw
from numpyconv.reference import odconv as ref_od

RNG = np.random.default_rng(11)


def normal(*shape):
    return RNG.standard_normal(shape)


# -- eval-mode BatchNorm -------------------------------------------------------------------------
@pytest.mark.parametrize('shape', [(2, 3, 4, 5), (3, 4), (2, 3, 6)])
def test_eval_batch_norm_backward_gradcheck(shape):
    c = shape[1]
    axes = (0,) + tuple(range(2, len(shape)))
    vector_shape = (1, c) + (1,) * (len(shape) - 2)

    def forward(x, weight, bias, running_mean, running_var):
        return blocks._eval_batch_norm(x, weight, bias, running_mean, running_var, 1e-5, vector_shape, axes)

    inputs = (normal(*shape), normal(c), normal(c), normal(c), RNG.random(c) + 0.5)
    numpyconv.gradcheck(forward, blocks._eval_batch_norm_backward, inputs)


def test_channel_affine_backward_sums_and_gradient():
    x, dout = normal(3, 4, 7, 6), normal(3, 4, 7, 6)
    mean, s, gamma = normal(4), RNG.random(4) + 0.5, normal(4)
    dx, total, total_x_hat = blocks._channel_affine_backward(dout, x, mean, s, gamma)
    v = (1, 4, 1, 1)
    x_hat = (x - mean.reshape(v)) * s.reshape(v)
    np.testing.assert_allclose(dx, dout * (gamma * s).reshape(v), rtol=1e-14)
    np.testing.assert_allclose(total, dout.sum(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(total_x_hat, (dout * x_hat).sum(axis=(0, 2, 3)), rtol=1e-12)


# -- max pooling loops ---------------------------------------------------------------------------
@pytest.mark.parametrize('kernel_size, stride, padding, dilation, ceil_mode',
                         [(3, 2, 1, 1, False), ((2, 3), (2, 1), (1, 1), (1, 2), True)])
def test_max_backward_loop_is_the_reference_backward(kernel_size, stride, padding, dilation, ceil_mode):
    x = normal(2, 3, 9, 8)
    geo = pooling.pool_geometry(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    best = np.empty(x.shape[:2] + geo.out_hw)
    arg = np.empty(best.shape, dtype=np.int32)
    pooling._max_forward_loop(x, loop_geo(geo), best, arg)
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    np.testing.assert_array_equal(best, reference.max_pool2d(x, *args))
    dout, dx = normal(*best.shape), np.zeros_like(x)
    pooling._max_backward_loop(dout, arg, loop_geo(geo), dx)
    np.testing.assert_allclose(dx, reference.max_pool2d_backward(dout, x, *args)[0], rtol=1e-14)


# -- dropout's masked product --------------------------------------------------------------------
@pytest.mark.parametrize('training', [True, False])
def test_masked_backward_gradcheck(training):
    x = normal(2, 3, 4)
    mask = RNG.random(x.shape) >= 0.3

    def forward(a):
        return dropout._masked('dropout', a, 0.3, training, None, mask, x.shape, 1 / 0.7)

    def backward(dout, cache):
        return dropout._masked_backward(dout, cache, 'dropout')[:1]

    numpyconv.gradcheck(forward, backward, (x,))


def gradcheck_loops(forward, backward, inputs):
    """Finite differences in a few random directions (the reference loops are slow)."""
    numpyconv.gradcheck(forward, backward, inputs, returns_cache=False, mode='random', n_directions=4)


# -- the ODConv reference's steps ------------------------------------------------------------------
HEADS = ref_od.HEADS


def test_odconv_features_backward_gradcheck():
    # y_n = conv(x_n; kernel folded from W and the four attentions), the attentions as inputs
    n, c_in, c_out, k, kernel_num, groups = 2, 4, 4, 3, 2, 2
    geometry = dict(stride=1, padding=1, dilation=1, groups=groups)

    def forward(x, weight, *att):
        att = dict(zip(HEADS, att))
        return np.concatenate([ref_conv.conv2d(x[i:i + 1], ref_od.sample_kernel(weight, att, i, groups),
                                               None, 1, 1, 1, groups) for i in range(n)])

    def backward(dout, x, weight, *att):
        dx, dweight, datt = ref_od._features_backward(dout, x, weight, dict(zip(HEADS, att)), **geometry)
        return (dx, dweight) + tuple(datt[h] for h in HEADS)

    inputs = (normal(n, c_in, 4, 5), normal(kernel_num, c_out, c_in // groups, k, k), RNG.random((n, c_in)),
              RNG.random((n, c_out)), RNG.random((n, k * k)), RNG.random((n, kernel_num)))
    gradcheck_loops(forward, backward, inputs)


def test_odconv_heads_backward_gradcheck():
    # the four attentions from the trunk's h: sigmoid(z / T), softmax(z / T) for the kernel head
    n, hidden, widths, temperature = 3, 5, dict(channel=4, filter=6, spatial=9, kernel=2), 1.7

    def attentions(h, params):
        out = []
        for i, head in enumerate(HEADS):
            z = (h @ params[2 * i][:, :, 0, 0].T + params[2 * i + 1]) / temperature
            if head == 'kernel':
                e = np.exp(z - z.max(axis=1, keepdims=True))
                out.append(e / e.sum(axis=1, keepdims=True))
            else:
                out.append(1 / (1 + np.exp(-z)))
        return tuple(out)

    def backward(datt, h, *params):
        heads = ref_od._heads(*params)
        t = dict(h=h, att=dict(zip(HEADS, attentions(h, params))))
        dh, head_grads = ref_od._heads_backward(dict(zip(HEADS, datt)), heads, t, temperature)
        return (dh, *head_grads)

    params = []
    for head in HEADS:
        params += [normal(widths[head], hidden, 1, 1), normal(widths[head])]
    gradcheck_loops(lambda h, *p: attentions(h, p), backward, (normal(n, hidden), *params))


@pytest.mark.parametrize('training', [True, False])
def test_odconv_trunk_backward_gradcheck(training):
    # h = relu(bn(fc(pool(x)))), the attention branch's trunk
    no_heads = {head: (None, None) for head in HEADS}

    def forward(x, fc_weight, bn_weight, bn_bias, running_mean, running_var):
        return ref_od._attention(x, fc_weight, bn_weight, bn_bias, running_mean, running_var, no_heads, 1.0,
                                 training, 1e-5)['h']

    def backward(dh, x, fc_weight, bn_weight, bn_bias, running_mean, running_var):
        t = ref_od._attention(x, fc_weight, bn_weight, bn_bias, running_mean, running_var, no_heads, 1.0,
                              training, 1e-5)
        return ref_od._trunk_backward(dh, x, t, fc_weight, bn_weight, running_mean, running_var, training,
                                      1e-5)

    hidden = 5
    inputs = (normal(3, 4, 3, 4), normal(hidden, 4, 1, 1), RNG.random(hidden) + 0.5, normal(hidden),
              normal(hidden), RNG.random(hidden) + 0.5)
    gradcheck_loops(forward, backward, inputs)


# -- the KernelWarehouse attention's steps ---------------------------------------------------------
@pytest.mark.parametrize('training', [True, False])
def test_kw_logits_and_trunk_backward_gradcheck(training):
    # z (N*m, M + 1): the trunk's logits mapped to the cell basis (eq. 6), before the activation
    num_cells, m, num_local, num_basis, hidden, start = 5, 2, 2, 3, 6, 1

    def attention(x, fc1, gamma, beta, mean, var, fc2, fc3, basis_bias):
        return ref_kw._attention(x, fc1, gamma, beta, mean, var, fc2, None, fc3, basis_bias, num_cells, start,
                                 0.0, None, training, 1e-5)

    def backward(dz, *inputs):
        x, fc1, gamma, _, _, _, fc2, fc3, basis_bias = inputs
        t = attention(*inputs)
        dlogits, dfc3, dbasis_bias = ref_kw._logits_backward(dz, t, fc3, basis_bias, num_cells)
        dx, dfc1, dgamma, dbeta, dmean, dvar, dfc2, _ = ref_kw._trunk_backward(dlogits, x, t, fc1, gamma, fc2,
                                                                               None, training)
        return dx, dfc1, dgamma, dbeta, dmean, dvar, dfc2, dfc3, dbasis_bias

    inputs = (normal(3, 4, 4, 3), normal(hidden, 4), 1 + 0.1 * normal(hidden), 0.1 * normal(hidden),
              normal(hidden), RNG.random(hidden) + 0.5, normal(m * (num_local + num_basis + 1), hidden),
              normal(num_cells - num_local, num_basis), 0.1 * normal(m * (num_cells + 1)))
    gradcheck_loops(lambda *a: attention(*a)['z'], backward, inputs)


# -- deformable convolution, one chunk of samples ------------------------------------------------
def test_deformable_chunk_backward_is_the_backward_of_its_chunk():
    x, weight = normal(3, 4, 6, 5), normal(6, 2, 3, 3)
    offset, mask, dout = normal(3, 2 * 2 * 9, 6, 5), RNG.random((3, 2 * 9, 6, 5)), normal(3, 6, 6, 5)
    _, cache = numpyconv.deform_conv2d_forward(x, offset, weight, padding=1, mask=mask)
    dx, doffset, dweight, _, dmask = numpyconv.deform_conv2d_backward(dout, cache)
    geo, chunk = cache['geo'], slice(1, 3)
    plan, cols = deformable._columns(x[chunk], offset[chunk], mask[chunk], geo)
    dx_chunk = np.empty_like(x[chunk])
    doffset_chunk, dmask_chunk, dweight_chunk = deformable._chunk_backward(
        dout[chunk], x[chunk], offset[chunk], mask[chunk], weight, cache['groups'], geo, plan, cols, dx_chunk)
    np.testing.assert_allclose(dx_chunk, dx[chunk], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(doffset_chunk, doffset[chunk], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dmask_chunk, dmask[chunk], rtol=1e-12, atol=1e-12)
    _, cache_first = numpyconv.deform_conv2d_forward(x[:1], offset[:1], weight, padding=1, mask=mask[:1])
    dweight_first = numpyconv.deform_conv2d_backward(dout[:1], cache_first)[2]
    np.testing.assert_allclose(dweight_chunk + dweight_first, dweight, rtol=1e-12, atol=1e-12)


def test_deformable_backward_over_one_sample_chunks_equals_one_chunk():
    x, weight, offset = normal(3, 2, 5, 5), normal(4, 2, 3, 3), normal(3, 18, 5, 5)
    dout = normal(3, 4, 5, 5)
    whole = numpyconv.deform_conv2d_backward(dout, numpyconv.deform_conv2d_forward(x, offset, weight,
                                                                                    padding=1)[1])
    before = numpyconv.set_column_budget(1)                  # every sample its own chunk
    try:
        chunked = numpyconv.deform_conv2d_backward(dout, numpyconv.deform_conv2d_forward(x, offset, weight,
                                                                                          padding=1)[1])
    finally:
        numpyconv.set_column_budget(before)
    for a, b in zip(whole, chunked):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# -- OctResNet: one frequency part's BatchNorm and ReLU --------------------------------------------
@pytest.mark.parametrize('training', [True, False])
def test_octave_part_backward_gradcheck(training):
    from numpyconv.models.oct_resnet import OctaveConvBN
    block = OctaveConvBN(4, 6, 3, padding=1, act=True, dtype=np.float64, rng=0)
    block.train(training)

    def forward(y):
        return block._part_forward('h', y)

    def backward(dy, y):
        block._part_forward('h', y)
        return (block._part_backward('h', dy),)

    numpyconv.gradcheck(forward, backward, (normal(2, 3, 4, 4),), returns_cache=False)
