"""What each figure shows, computed by numpyconv: one function per technique, no drawing.

Each ``<technique>(seed)`` returns a dict of the arrays and numbers its figure draws (the "facts"),
computed by numpyconv's public ops and layers on a small real input: handwritten digits from
scikit-learn (the demo data, :mod:`numpyconv.demo.data`) when it is installed, otherwise a drawn
stand-in (:data:`SYNTHETIC_DIGITS`). Every layer is float64 and initialised from ``seed``; where a
figure needs a value that a layer keeps only in its op's cache (an attention, an aggregated kernel,
the offsets it predicted), the function reads it there and says so. Counts come from
:func:`numpyconv.count`. ``tests/test_explain.py`` checks each fact against the computation.

Keys common to every result: ``technique``, ``source`` (where the input digits come from),
``labels`` (their classes) and ``counts`` (``name -> (params, multiply_adds, input_shape)``).
"""
import functools

import numpy as np

import numpyconv as nc

DTYPE = np.float64
SIDE = 16                        # side of the digit in the layer figures (8x8 scans upscaled x2)
CONV = dict(stride=2, padding=2, dilation=2)   # the conv2d / conv2d_backward example's geometry


# -- inputs ---------------------------------------------------------------------------------------
def _art(rows):
    """An 8x8 image (values 0..16) from rows of ``'#'`` (16), ``'+'`` (8) and ``'.'`` (0)."""
    return np.array([[{'#': 16.0, '+': 8.0, '.': 0.0}[ch] for ch in row] for row in rows])


# drawn stand-ins for scikit-learn's 8x8 digits (values 0..16), used when it is not installed
SYNTHETIC_DIGITS = {
    0: _art(['..+##+..', '.#+..+#.', '+#....#+', '##....##', '##....##', '+#....#+', '.#+..+#.',
             '..+##+..']),
    1: _art(['...+#...', '..+##...', '.+###...', '...##...', '...##...', '...##...', '...##...',
             '..+###+.']),
    7: _art(['.######.', '.+...+#.', '.....#+.', '....+#..', '...+#+..', '...##...', '..+#+...',
             '..##....']),
}


@functools.lru_cache(maxsize=1)
def _digit_set():
    """``(images (n, 8, 8) in 0..16, labels (n,), source)``: scikit-learn's digits or the stand-ins."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        labels = np.array(sorted(SYNTHETIC_DIGITS))
        images = np.stack([SYNTHETIC_DIGITS[d] for d in labels])
        return images, labels, 'drawn stand-in digits (scikit-learn is not installed)'
    digits = load_digits()
    return digits.images.astype(DTYPE), digits.target, "scikit-learn's handwritten digits"


def _rng(seed, purpose):
    """An independent generator per (seed, purpose): changing one draw never shifts another."""
    return np.random.default_rng([int(seed), purpose])


def _digits(seed, count):
    """``(images, labels, source)``: ``count`` 8x8 digits (values 0..16) of different classes."""
    images, labels, source = _digit_set()
    rng = _rng(seed, 0)
    classes = rng.permutation(np.unique(labels))[:count]
    picked = [images[rng.choice(np.flatnonzero(labels == c))] for c in classes]
    return np.stack(picked).astype(DTYPE), [int(c) for c in classes], source


def _upscale(images):
    """``(n, 8, 8)`` -> ``(n, 16, 16)``, values kept in 0..16 (bilinear, scipy.ndimage.zoom)."""
    from scipy import ndimage
    return np.stack([np.clip(ndimage.zoom(im, SIDE / im.shape[0], order=1), 0.0, 16.0)
                     for im in images]).astype(DTYPE)


def _stem_features(images, channels, seed):
    """``(n, channels, 16, 16)``: the digits through a seeded ``Conv2d(1, channels, 3, padding=1)``
    and ReLU, the first layer of an untrained network: the multi-channel input of the attention,
    deformable and involution figures."""
    stem = nc.Conv2d(1, channels, 3, padding=1, dtype=DTYPE, rng=_rng(seed, 1))
    return nc.relu_forward(stem(images[:, None]))[0]


def _counted(name, layer, input_shape):
    params, macs = nc.count(layer, input_shape)
    return name, (params, macs, tuple(input_shape))


def _base(technique, labels, source, counts):
    return dict(technique=technique, labels=labels, source=source, counts=dict(counts))


# -- standard convolution and its backward pass ------------------------------------------------------
def _conv_example(seed):
    """The small example of both conv2d figures: one 8x8 digit, a 3x3 kernel of small integers."""
    images, labels, source = _digits(seed, 1)
    x = images[:1, None]                                                  # (1, 1, 8, 8), values 0..16
    weight = _rng(seed, 2).integers(-2, 3, size=(1, 1, 3, 3)).astype(DTYPE)
    weight[0, 0, 1, 1] = weight[0, 0, 1, 1] or 1.0                        # never the zero kernel
    layer = nc.Conv2d(1, 1, 3, bias=False, dtype=DTYPE, **CONV)
    layer.load_state_dict({'weight': weight})
    return x, weight, layer, labels, source


def _padded(x, pad):
    return np.pad(x, pad)


def conv2d(seed=0):
    """The forward pass as im2col and one GEMM (docs/derivations/conv.md, eq. 1, 4).

    Parameters
    ----------
    seed : int
        Chooses the digits, initialises the layers, picks the positions drawn.

    Returns
    -------
    dict
        The keys common to every result and ``x (8, 8)``, ``padded (12, 12)``, ``weight (3, 3)``,
        ``stride``, ``padding``, ``dilation``, ``y (Ho, Wo)`` (conv2d_forward), ``matrix (9, Ho*Wo)``
        (numpyconv.im2col, one column per output position), ``position (i, j)``, ``column_index``,
        ``column``, ``window`` (the ``(row, col)`` indices of the padded input the column reads, in
        kernel order), ``products`` (weight times column), ``value`` (their sum, = ``y[i, j]``).
    """
    x, weight, layer, labels, source = _conv_example(seed)
    y, _ = nc.conv2d_forward(x, weight, None, **CONV)
    cols = nc.im2col(x, 3, **CONV)                                        # (1, 1, 3, 3, Ho, Wo)
    ho, wo = cols.shape[-2:]
    matrix = cols.reshape(9, ho * wo)                                     # rows: kernel points
    i, j = (int(v) for v in _rng(seed, 3).integers(0, (ho, wo)))
    s, d = CONV['stride'], CONV['dilation']
    window = [(i * s + p * d, j * s + q * d) for p in range(3) for q in range(3)]
    column = matrix[:, i * wo + j]
    products = weight.ravel() * column
    return dict(_base('conv2d', labels, source, [_counted('Conv2d', layer, x.shape)]),
                x=x[0, 0], padded=_padded(x[0, 0], CONV['padding']), weight=weight[0, 0], y=y[0, 0],
                matrix=matrix, position=(i, j), column_index=i * wo + j, column=column, window=window,
                products=products, value=float(products.sum()), **CONV)


def conv2d_frames(facts):
    """One ``(position, column_index, window)`` per output position, row by row (the GIF)."""
    ho, wo = facts['y'].shape
    s, d = facts['stride'], facts['dilation']
    return [((i, j), i * wo + j, [(i * s + p * d, j * s + q * d) for p in range(3) for q in range(3)])
            for i in range(ho) for j in range(wo)]


def conv2d_backward(seed=0):
    """``dW`` as the correlation of the input with ``dout`` (eq. 6) and ``dx`` as the scatter of each
    output's gradient over its window, the transposed convolution (eq. 7).

    Parameters
    ----------
    seed : int
        Chooses the digits, initialises the layers, picks the positions drawn.

    Returns
    -------
    dict
        The keys common to every result and ``x``, ``padded``, ``weight``, ``dout (Ho, Wo)`` (small
        integers), ``dweight (3, 3)`` and ``dx (8, 8)`` (conv2d_backward), ``tap (p, q)`` with
        ``tap_samples (Ho, Wo)`` (the padded input read by that kernel point at every output position)
        and ``tap_value`` (= ``dweight[p, q]``), ``position (i, j)`` with ``scatter_one`` (padded-size
        map: ``dout[i, j] * weight`` placed on its window) and ``scatter_all`` (every output's scatter
        added up, padded size; cropped, = ``dx``).
    """
    x, weight, layer, labels, source = _conv_example(seed)
    y, cache = nc.conv2d_forward(x, weight, None, **CONV)
    ho, wo = y.shape[2:]
    dout = _rng(seed, 4).integers(-1, 3, size=y.shape).astype(DTYPE)
    dx, dweight, _ = nc.conv2d_backward(dout, cache)
    s, d, pad = CONV['stride'], CONV['dilation'], CONV['padding']
    padded = _padded(x[0, 0], pad)
    rng = _rng(seed, 5)
    p, q = (int(v) for v in rng.integers(0, 3, size=2))
    tap_samples = padded[p * d:p * d + s * (ho - 1) + 1:s, q * d:q * d + s * (wo - 1) + 1:s]
    scatter_all = np.zeros_like(padded)
    for i in range(ho):
        for j in range(wo):
            window = (slice(i * s, i * s + 2 * d + 1, d), slice(j * s, j * s + 2 * d + 1, d))
            scatter_all[window] += dout[0, 0, i, j] * weight[0, 0]
    i, j = (int(v) for v in rng.integers(0, (ho, wo)))
    scatter_one = np.zeros_like(padded)
    scatter_one[i * s:i * s + 2 * d + 1:d, j * s:j * s + 2 * d + 1:d] = dout[0, 0, i, j] * weight[0, 0]
    return dict(_base('conv2d_backward', labels, source, [_counted('Conv2d', layer, x.shape)]),
                x=x[0, 0], padded=padded, weight=weight[0, 0], dout=dout[0, 0], dweight=dweight[0, 0],
                dx=dx[0, 0], tap=(p, q), tap_samples=tap_samples,
                tap_value=float((dout[0, 0] * tap_samples).sum()), position=(i, j),
                scatter_one=scatter_one, scatter_all=scatter_all, **CONV)


# -- depthwise, pointwise, separable ---------------------------------------------------------------
def _digit_channels(seed, count=3):
    """``(1, count, 16, 16)``: ``count`` different digits as the channels of one input, so that a
    channel that mixes into another is visible."""
    images, labels, source = _digits(seed, count)
    return _upscale(images)[None], labels, source


def depthwise(seed=0):
    """One filter per channel, channels never mixing (conv.md eq. 8), and its cost beside conv2d's.

    Parameters
    ----------
    seed : int
        Chooses the digits, initialises the layers, picks the positions drawn.

    Returns
    -------
    dict
        The keys common to every result and ``x (C, 16, 16)``, ``weight (C, 3, 3)``, ``y (C, 16, 16)``
        (the layer's output), ``alone (C, 16, 16)`` (channel ``c`` convolved on its own with filter
        ``c``: equal to ``y``). Counts: ``DepthwiseConv2d`` and the ``Conv2d`` with the same channels
        and kernel.
    """
    x, labels, source = _digit_channels(seed)
    c = x.shape[1]
    layer = nc.DepthwiseConv2d(c, 3, padding=1, bias=False, dtype=DTYPE, rng=_rng(seed, 6))
    y = layer(x)
    weight = layer.params['weight']                                       # (C, 1, 3, 3)
    alone = np.concatenate([nc.conv2d_forward(x[:, k:k + 1], weight[k:k + 1], None, 1, 1)[0]
                            for k in range(c)], axis=1)
    standard = nc.Conv2d(c, c, 3, padding=1, bias=False, dtype=DTYPE)
    counts = [_counted('DepthwiseConv2d', layer, x.shape), _counted('Conv2d', standard, x.shape)]
    return dict(_base('depthwise', labels, source, counts), x=x[0], weight=weight[:, 0], y=y[0],
                alone=alone[0])


def pointwise(seed=0):
    """The 1x1 convolution as one matrix applied at every pixel (conv.md eq. 11).

    Parameters
    ----------
    seed : int
        Chooses the digits, initialises the layers, picks the positions drawn.

    Returns
    -------
    dict
        The keys common to every result and ``x (C_in, 16, 16)``, ``matrix (C_out, C_in)``, ``y
        (C_out, 16, 16)`` (the layer's output), ``pixel (i, j)``, ``vector`` (``x[:, i, j]``),
        ``product`` (``matrix @ vector``, = ``y[:, i, j]``).
    """
    x, labels, source = _digit_channels(seed)
    layer = nc.PointwiseConv2d(x.shape[1], 2, bias=False, dtype=DTYPE, rng=_rng(seed, 7))
    y = layer(x)
    matrix = layer.params['weight'][:, :, 0, 0]
    ink = np.argwhere(x[0].max(axis=0) > 8.0)                             # pixels some digit covers
    i, j = (int(v) for v in ink[_rng(seed, 8).integers(len(ink))])
    vector = x[0, :, i, j]
    return dict(_base('pointwise', labels, source, [_counted('PointwiseConv2d', layer, x.shape)]),
                x=x[0], matrix=matrix, y=y[0], pixel=(i, j), vector=vector, product=matrix @ vector)


TYPICAL = dict(in_channels=64, out_channels=128, side=56)   # a ResNet stage-1-sized layer


def separable(seed=0):
    """Depthwise then pointwise (MobileNet), with its cost against the standard convolution.

    Parameters
    ----------
    seed : int
        Chooses the digits, initialises the layers, picks the positions drawn.

    Returns
    -------
    dict
        The keys common to every result and ``x (C_in, 16, 16)``, ``dw_weight (C_in, 3, 3)``, ``middle
        (C_in, 16, 16)`` (depthwise output), ``pw_matrix (C_out, C_in)``, ``y (C_out, 16, 16)`` (the
        layer's output; = pointwise of ``middle``). Counts at the drawn size (``SeparableConv2d``,
        ``Conv2d``) and at a typical size (``SeparableConv2d 64->128``, ``Conv2d 64->128``, 56x56).
    """
    x, labels, source = _digit_channels(seed)
    c_in, c_out = x.shape[1], 4
    layer = nc.SeparableConv2d(c_in, c_out, 3, padding=1, bias=False, dtype=DTYPE, rng=_rng(seed, 9))
    y = layer(x)
    p = layer.params
    middle, _ = nc.depthwise_conv2d_forward(x, p['depthwise.weight'], None, 1, 1)
    t_in, t_out, side = TYPICAL['in_channels'], TYPICAL['out_channels'], TYPICAL['side']
    typical_shape = (1, t_in, side, side)
    counts = [_counted('SeparableConv2d', layer, x.shape),
              _counted('Conv2d', nc.Conv2d(c_in, c_out, 3, padding=1, bias=False), x.shape),
              _counted(f'SeparableConv2d {t_in}->{t_out}',
                       nc.SeparableConv2d(t_in, t_out, 3, padding=1, bias=False), typical_shape),
              _counted(f'Conv2d {t_in}->{t_out}', nc.Conv2d(t_in, t_out, 3, padding=1, bias=False),
                       typical_shape)]
    return dict(_base('separable', labels, source, counts), x=x[0], dw_weight=p['depthwise.weight'][:, 0],
                middle=middle[0], pw_matrix=p['pointwise.weight'][:, :, 0, 0], y=y[0])


# -- octave -------------------------------------------------------------------------------------------
def octave(seed=0):
    """The four paths of octave convolution (octave.md eq. 6) on a digit split by frequency.

    The input pair: ``x_l = P blur(x)`` (a Gaussian blur, sigma 1, then the 2x2 average pool: the low
    frequencies at half resolution) and ``x_h = x - blur(x)`` (the detail).

    Parameters
    ----------
    seed : int
        Chooses the digits, initialises the layers, picks the positions drawn.

    Returns
    -------
    dict
        The keys common to every result and ``x``, ``x_h`` ``(16, 16)``, ``x_l (8, 8)``, ``weights``
        (``name -> (3, 3)``); ``paths``: ``name -> map`` for ``h2h`` (conv of ``x_h``), ``h2l`` (conv
        of ``P x_h``), ``l2h`` (``U`` of the conv of ``x_l``, nearest upsampling), ``l2l`` (conv of
        ``x_l``), each computed by the public ops with the layer's weights; ``y_h``, ``y_l`` (the
        layer's outputs, = ``h2h + l2h`` and ``h2l + l2l``). Counts: ``OctaveConv2d`` and ``Conv2d``
        on the same input.
    """
    from scipy import ndimage
    images, labels, source = _digits(seed, 1)
    x = _upscale(images)[:, None]                                          # (1, 1, 16, 16)
    blurred = ndimage.gaussian_filter(x[0, 0], 1.0, mode='constant')[None, None]
    x_l, _ = nc.avg_pool2d_forward(blurred, 2)                             # (1, 1, 8, 8)
    x_h = x - blurred
    layer = nc.OctaveConv2d(2, 2, 3, alpha_in=0.5, alpha_out=0.5, padding=1, dtype=DTYPE,
                            rng=_rng(seed, 10))
    y_h, y_l = layer((x_h, x_l))
    w = {name: layer.params[f'conv_{name}.weight'] for name in ('h2h', 'h2l', 'l2h', 'l2l')}

    def conv(z, name):
        return nc.conv2d_forward(z, w[name], None, 1, 1)[0]
    paths = dict(h2h=conv(x_h, 'h2h'), h2l=conv(nc.avg_pool2d_forward(x_h, 2)[0], 'h2l'),
                 l2h=nc.upsample_nearest2d_forward(conv(x_l, 'l2h'), 2)[0], l2l=conv(x_l, 'l2l'))
    shape = (1, 2) + x.shape[2:]                                          # the layer's input_shape
    counts = [_counted('OctaveConv2d', layer, shape),
              _counted('Conv2d', nc.Conv2d(2, 2, 3, padding=1, bias=False), shape)]
    return dict(_base('octave', labels, source, counts), x=x[0, 0], x_h=x_h[0, 0], x_l=x_l[0, 0],
                weights={k: v[0, 0] for k, v in w.items()},
                paths={k: v[0, 0] for k, v in paths.items()}, y_h=y_h[0, 0], y_l=y_l[0, 0])


# -- attention over kernels -------------------------------------------------------------------------
ATTENTION_CHANNELS = 3


def _two_inputs(seed):
    images, labels, source = _digits(seed, 2)
    images = _upscale(images)
    return _stem_features(images, ATTENTION_CHANNELS, seed), images, labels, source


def dynamic(seed=0):
    """DY-CNN (softmax over K kernels, temperature 1) and CondConv (sigmoid routing) on two digits.

    Parameters
    ----------
    seed : int
        Chooses the digits, initialises the layers, picks the positions drawn.

    Returns
    -------
    dict
        The keys common to every result and, for each of ``'dynamic'`` and ``'condconv'``: ``bank (K,
        C_out, C_in, 3, 3)`` and ``biases (K, C_out)`` (the layer's kernels and biases), ``attention
        (2, K)`` and ``kernels (2, C_out, C_in, 3, 3)`` (the aggregated kernel of each input), ``y (2,
        C_out, 16, 16)`` (the op's output, equal to the layer's). Also ``x (2, C_in, 16, 16)`` and
        ``images (2, 16, 16)``.
    """
    x, images, labels, source = _two_inputs(seed)
    dy = nc.DynamicConv2d(ATTENTION_CHANNELS, 1, 3, padding=1, K=4, dtype=DTYPE, rng=_rng(seed, 11))
    dy.temperature = 1               # the end of the official annealing (34 -> 1)
    cc = nc.CondConv2d(ATTENTION_CHANNELS, 1, 3, padding=1, num_experts=4, dtype=DTYPE,
                       rng=_rng(seed, 12))
    p = dy.params
    y_dy, cache_dy = nc.dynamic_conv2d_forward(x, p['weight'], p['bias'], p['attention.fc1.weight'],
                                               p['attention.fc2.weight'], p['attention.fc2.bias'],
                                               dy.temperature, 1, 1)
    p = cc.params
    y_cc, cache_cc = nc.condconv2d_forward(x, p['weight'], p['bias'], p['route.fc.weight'],
                                           p['route.fc.bias'], 1, 1)
    result = _base('dynamic', labels, source, [_counted('DynamicConv2d', dy, x[:1].shape),
                                               _counted('CondConv2d', cc, x[:1].shape),
                                               _counted('Conv2d', nc.Conv2d(ATTENTION_CHANNELS, 1, 3,
                                                                            padding=1), x[:1].shape)])
    for name, layer, y, cache in (('dynamic', dy, y_dy, cache_dy), ('condconv', cc, y_cc, cache_cc)):
        # the attention and the per-sample aggregated kernels exist only in the op's cache:
        # cache['conv'] is aggregated_conv2d_forward's, whose 'conv' is conv2d_forward's
        result[name] = dict(bank=layer.params['weight'], biases=layer.params['bias'], y=y,
                            attention=cache['conv']['attention'], kernels=cache['conv']['conv']['weight'])
    result.update(x=x, images=images)
    return result


def odconv(seed=0):
    """ODConv's four attentions for one input and the kernel they assemble (odconv.md eq. 5-11).

    Parameters
    ----------
    seed : int
        Chooses the digits, initialises the layers, picks the positions drawn.

    Returns
    -------
    dict
        The keys common to every result and ``bank (n, C_out, C_in, 3, 3)``, ``attentions``: ``kernel
        (n,)``, ``spatial (3, 3)``, ``channel (C_in,)`` (input channels), ``filter (C_out,)`` (output
        channels); ``kernel (C_out, C_in, 3, 3)`` = ``filter[o] * channel[c] * spatial * sum_i
        kernel[i] bank[i]``, the kernel that applied to ``x`` gives the layer's output ``y``. Also
        ``x``, ``image``.
    """
    images, labels, source = _digits(seed, 1)
    x = _stem_features(_upscale(images), ATTENTION_CHANNELS, seed)          # (1, C_in, 16, 16)
    layer = nc.ODConv2d(ATTENTION_CHANNELS, 4, 3, padding=1, kernel_num=4, dtype=DTYPE,
                        rng=_rng(seed, 13)).eval()
    state = {**layer.params, **layer.buffers}
    heads = [state.get(f'attention.{h}_fc.{kind}') for h in ('channel', 'filter', 'spatial', 'kernel')
             for kind in ('weight', 'bias')]
    y, cache = nc.odconv2d_forward(x, state['weight'], state['attention.fc.weight'],
                                   state['attention.bn.weight'], state['attention.bn.bias'],
                                   state['attention.bn.running_mean'], state['attention.bn.running_var'],
                                   *heads, stride=1, padding=1, temperature=layer.temperature,
                                   training=False)
    att = cache['att']              # the four attentions exist only in the op's cache
    spatial_kernel = cache['conv']['weight'][0]   # spatial * sum_i kernel[i] W_i: conv2d's cache only
    kernel = att['filter'][0][:, None, None, None] * att['channel'][0][None, :, None, None] * spatial_kernel
    attentions = dict(kernel=att['kernel'][0], spatial=att['spatial'][0].reshape(3, 3),
                      channel=att['channel'][0], filter=att['filter'][0])
    return dict(_base('odconv', labels, source, [_counted('ODConv2d', layer, x.shape),
                                                 _counted('Conv2d', nc.Conv2d(ATTENTION_CHANNELS, 4, 3,
                                                                              padding=1), x.shape)]),
                bank=state['weight'], attentions=attentions, kernel=kernel, y=y, x=x,
                image=_upscale(images)[0])


KW_CHANNELS = 2


def kernel_warehouse(seed=0):
    """Two KernelWarehouse layers sharing one warehouse; the first layer's attention over its cells
    and the kernel it assembles from them (kernel_warehouse.md eq. 7-11).

    Warehouse cells are whole 3x3 kernels of one input and one output channel
    (``spatial_partition=False``, cell ratios 1/2), so each ``2 -> 2`` layer's kernel is ``m = 4``
    mixtures of the ``M = 8`` cells.

    Parameters
    ----------
    seed : int
        Chooses the digits, initialises the layers, picks the positions drawn.

    Returns
    -------
    dict
        The keys common to every result and ``cells (M, 3, 3)``, ``owner (M,)`` (the layer each cell
        starts with: 0 or 1), ``attention (m, M)`` (``kw_attention_forward``, inference: temperature
        0), ``kernel (C_out, C_in, 3, 3)`` (the layer's assembled kernel), ``rows (C_out, C_in)`` (the
        mixture row of each kernel slice), ``y`` (the op's output, equal to the layer's), ``x``,
        ``image``.
    """
    images, labels, source = _digits(seed, 1)
    x = _stem_features(_upscale(images), KW_CHANNELS, seed)
    manager = nc.WarehouseManager(cell_inplane_ratio=0.5, cell_outplane_ratio=0.5, spatial_partition=False,
                                  dtype=DTYPE, rng=_rng(seed, 14))
    layers = [manager.reserve(KW_CHANNELS, KW_CHANNELS, 3, padding=1, bias=False,
                              warehouse_name='stage1_conv') for _ in range(2)]
    manager.store()
    manager.allocate(layers)
    layer = layers[0].eval()
    state = {**layer.params, **layer.buffers}
    args = [state.get(f'attention.{k}') for k in ('fc1.weight', 'norm1.weight', 'norm1.bias',
                                                 'norm1.running_mean', 'norm1.running_var', 'fc2.weight',
                                                 'fc2.bias')]
    warehouse = layer.warehouse                                           # (M, 1, 1, 3, 3)
    options = dict(start_cell_idx=layer.start_cell_idx, temperature=layer.temperature,
                   temp_bias=layer.temp_bias, training=False)
    attention, _ = nc.kw_attention_forward(x, *args, num_cells=warehouse.shape[0], **options)
    y, cache = nc.kw_conv2d_forward(x, warehouse, *args, kernel_size=3, padding=1, **options)
    kernel = cache['conv']['weight'][0]          # the assembled kernel: only in conv2d's cache
    starts = [lay.start_cell_idx for lay in layers]
    owner = np.searchsorted(starts, np.arange(warehouse.shape[0]), side='right') - 1
    gi = KW_CHANNELS                             # input blocks per output block (cells of 1 channel)
    rows = np.arange(KW_CHANNELS)[:, None] * gi + np.arange(KW_CHANNELS)[None, :]   # (eq. 11), s = 0
    counts = [_counted('KWConv2d (own parameters)', layer, x.shape),
              ('WarehouseManager (shared cells)', (manager.num_params(), None, None)),
              _counted('Conv2d', nc.Conv2d(KW_CHANNELS, KW_CHANNELS, 3, padding=1, bias=False), x.shape)]
    return dict(_base('kernel_warehouse', labels, source, counts), cells=warehouse[:, 0, 0],
                owner=owner, attention=attention, kernel=kernel, rows=rows, y=y, x=x,
                image=_upscale(images)[0])


# -- deformable sampling --------------------------------------------------------------------------------
DEFORM_CHANNELS, DEFORM_GROUPS, POINTS = 4, 2, 9
OFFSET_RMS = 1.0                 # pixels: the random offset branches are scaled to this size
LOGIT_RMS = 1.0                  # and their mask logits (DCNv2, DCNv3) or mask values (DCNv4) to this


def _random_branch(weight, bias, rng, outputs, row_targets):
    """Fill a zero-initialised offset/mask branch (the official start, with which every layer
    samples the regular grid) with seeded Gaussian weights standing in for trained ones, then scale
    each group of output rows so that its outputs have the target root mean square.

    ``outputs(weight, bias)`` returns the branch's outputs channels-last; ``row_targets`` is a list
    of ``(rows, target_rms)``. The branch is linear in its weights, so scaling rows scales outputs.
    """
    weight[...] = rng.standard_normal(weight.shape)
    bias[...] = 0.1 * rng.standard_normal(bias.shape)
    values = outputs()
    for rows, target in row_targets:
        factor = target / (float(np.sqrt(np.mean(np.square(values[..., rows])))) or 1.0)
        weight[rows] *= factor
        bias[rows] *= factor


def _packed_rows(group, first, stop):
    """Rows ``first:stop`` of every group's block of a DCNv4 ``offset_mask`` (dcnv4.md eq. 1)."""
    return np.concatenate([np.arange(g * 3 * POINTS + first, g * 3 * POINTS + stop) for g in range(group)])


def _deform_v1_v2(x, rng):
    """DeformConv2d and ModulatedDeformConv2d with random offset branches:
    ``name -> (layer, y, op args, op kwargs)``."""
    out = {}
    for name, cls in (('v1', nc.DeformConv2d), ('v2', nc.ModulatedDeformConv2d)):
        layer = cls(DEFORM_CHANNELS, DEFORM_CHANNELS, 3, padding=1, dtype=DTYPE, rng=rng)
        targets = [(slice(0, 2 * POINTS), OFFSET_RMS), (slice(2 * POINTS, 3 * POINTS), LOGIT_RMS)]
        _random_branch(layer.params['conv_offset.weight'], layer.params['conv_offset.bias'], rng,
                       lambda: layer.conv_offset(x).transpose(0, 2, 3, 1), targets[:1 + (name == 'v2')])
        y = layer(x)
        op_cache = layer._cache      # the offsets and mask the layer predicted: only in its op's cache
        args = (x, op_cache['offset'], layer.params['weight'], layer.params.get('bias'), 1, 1, 1)
        out[name] = (layer, y, args, dict(mask=op_cache['mask']))
    return out


def _core_arguments(layer):
    """The hyper-parameters a DCNv3/DCNv4 layer passes to its core op, in the op's order."""
    return (layer.kernel_size, layer.stride, layer.pad, layer.dilation, layer.group, layer.group_channels,
            layer.offset_scale, layer.remove_center)


def _deform_v3_v4(x, rng):
    """DCNv3 and DCNv4 (2 groups) with random offset/mask branches:
    ``name -> (layer, y, op args, op kwargs)``."""
    v3 = nc.DCNv3(DEFORM_CHANNELS, 3, pad=1, group=DEFORM_GROUPS, dtype=DTYPE, rng=rng)
    query = v3.dw_conv(x)                                                # (N, H, W, C): the branches' input
    for branch, target in ((v3.offset, OFFSET_RMS), (v3.mask, LOGIT_RMS)):
        _random_branch(branch.params['weight'], branch.params['bias'], rng, lambda: branch(query),
                       [(slice(None), target)])
    y3 = v3(x)
    core = v3._cache['core']          # the core op's value, offsets and softmaxed mask: only in its cache
    args3 = (core['x'], core['offset'], core['mask']) + _core_arguments(v3)

    v4 = nc.DCNv4(DEFORM_CHANNELS, 3, pad=1, group=DEFORM_GROUPS, dw_kernel_size=3, dtype=DTYPE, rng=rng)
    query = v4.offset_mask_dw(x).transpose(0, 2, 3, 1)
    _random_branch(v4.offset_mask.params['weight'], v4.offset_mask.params['bias'], rng,
                   lambda: v4.offset_mask(query),
                   [(_packed_rows(DEFORM_GROUPS, 0, 2 * POINTS), OFFSET_RMS),
                    (_packed_rows(DEFORM_GROUPS, 2 * POINTS, 3 * POINTS), LOGIT_RMS / 2)])
    y4 = v4(x)
    core = v4._cache['core']          # the core op's value and unpacked offsets and mask: only in its cache
    packed = nc.pack_offset_mask(core['offset'], core['mask'], DEFORM_GROUPS, core['channels'])
    args4 = (core['x'], packed) + _core_arguments(v4)  # the op's argument (its unread padding zeroed)
    return {'v3': (v3, y3, args3, {}), 'v4': (v4, y4, args4, {})}


DEFORM_OPS = {'v1': 'deform_conv2d', 'v2': 'deform_conv2d', 'v3': 'dcnv3', 'v4': 'dcnv4'}


def _zero_offsets(version, args, kwargs):
    """The same op arguments with every offset 0 (the regular grid); the weights unchanged."""
    args = list(args)
    if version == 'v4':
        om = args[1].copy()
        om[..., _packed_rows(DEFORM_GROUPS, 0, 2 * POINTS)] = 0
        args[1] = om
    else:
        args[1] = np.zeros_like(args[1])
    return tuple(args), kwargs


def _sample_positions(image, count, rng, min_distance=5):
    """``count`` output positions on the digit's strokes, at least ``min_distance`` apart."""
    candidates = np.argwhere(image > 6.0)
    chosen = []
    for k in rng.permutation(len(candidates)):
        r, c = candidates[k]
        if 2 <= r < image.shape[0] - 2 and 2 <= c < image.shape[1] - 2 and \
                all(abs(r - a) + abs(c - b) >= min_distance for a, b in chosen):
            chosen.append((int(r), int(c)))
        if len(chosen) == count:
            break
    return chosen


def deformable(seed=0):
    """Where DCNv1, DCNv2, DCNv3 and DCNv4 sample on the same input, against the regular grid.

    Input: the digit's stem features ``(1, 4, 16, 16)``; every offset branch gets seeded random
    weights (each offset component scaled to a root mean square of ``OFFSET_RMS`` pixels), since a
    fresh layer's zero-initialised branch samples the regular grid.

    Parameters
    ----------
    seed : int
        Chooses the digits, initialises the layers, picks the positions drawn.

    Returns
    -------
    dict
        The keys common to every result and, for each version ``'v1'``, ``'v2'``, ``'v3'``, ``'v4'``:
        ``op``, ``args``/``kwargs`` (the op's forward arguments, from which the layer's output is
        reproduced), ``locations (1, 16, 16, G, 9, 2)`` and ``weights (1, 16, 16, G, 9)``
        (:func:`numpyconv.sampling_locations`), ``grid`` (the same with zero offsets), ``y`` (the layer's
        output). Also ``image (16, 16)`` and ``positions`` (the output pixels drawn).
    """
    images, labels, source = _digits(seed, 1)
    image = _upscale(images)[0]
    x = _stem_features(image[None], DEFORM_CHANNELS, seed)
    rng = _rng(seed, 15)
    built = {**_deform_v1_v2(x, rng), **_deform_v3_v4(x, rng)}
    result = _base('deformable', labels, source,
                   [_counted(type(layer).__name__, layer, x.shape) for layer, *_ in built.values()])
    for version, (layer, y, args, kwargs) in built.items():
        op = DEFORM_OPS[version]
        locations, weights = nc.sampling_locations(op, *args, **kwargs)
        grid, _ = nc.sampling_locations(op, *_zero_offsets(version, args, kwargs)[0], **kwargs)
        result[version] = dict(op=op, args=args, kwargs=kwargs, locations=locations, weights=weights,
                               grid=grid, y=y, layer=type(layer).__name__)
    result.update(image=image, x=x, positions=_sample_positions(image, 2, rng))
    return result


# -- involution -------------------------------------------------------------------------------------------
INVOLUTION_CHANNELS = 8


def involution(seed=0):
    """The kernel involution generates at several positions next to a convolution's shared kernel.

    ``Involution2d(8, 3, group_channels=8, reduction_ratio=2)`` (one group) on the digit's stem
    features, inference mode.

    Parameters
    ----------
    seed : int
        Chooses the digits, initialises the layers, picks the positions drawn.

    Returns
    -------
    dict
        The keys common to every result and ``positions`` (four output pixels: three on the strokes,
        one on the background), ``kernels (4, 3, 3)`` (the generated kernel there), ``conv_kernel (3,
        3)`` (``Conv2d(8, 8, 3)``'s kernel from input 0 to output 0, the same at every position),
        ``generated (1, 9, 16, 16)`` (every generated kernel), ``y`` (the layer's output), ``x``,
        ``image``.
    """
    images, labels, source = _digits(seed, 1)
    image = _upscale(images)[0]
    x = _stem_features(image[None], INVOLUTION_CHANNELS, seed)
    layer = nc.Involution2d(INVOLUTION_CHANNELS, 3, group_channels=INVOLUTION_CHANNELS, reduction_ratio=2,
                            dtype=DTYPE, rng=_rng(seed, 16)).eval()
    y = layer(x)
    generated = layer._cache['kernel']    # the generated kernels exist only in the op's cache
    rng = _rng(seed, 17)
    positions = _sample_positions(image, 3, rng)
    background = np.argwhere(image < 0.5)
    positions.append(tuple(int(v) for v in background[rng.integers(len(background))]))
    kernels = np.stack([generated[0, :, i, j].reshape(3, 3) for i, j in positions])
    conv = nc.Conv2d(INVOLUTION_CHANNELS, INVOLUTION_CHANNELS, 3, padding=1, dtype=DTYPE, rng=_rng(seed, 18))
    counts = [_counted('Involution2d', layer, x.shape), _counted('Conv2d', conv, x.shape)]
    return dict(_base('involution', labels, source, counts), positions=positions, kernels=kernels,
                conv_kernel=conv.params['weight'][0, 0], generated=generated, y=y, x=x, image=image)


TECHNIQUES = {'conv2d': conv2d, 'conv2d_backward': conv2d_backward, 'depthwise': depthwise,
              'pointwise': pointwise, 'separable': separable, 'octave': octave, 'dynamic': dynamic,
              'odconv': odconv, 'kernel_warehouse': kernel_warehouse, 'deformable': deformable,
              'involution': involution}
