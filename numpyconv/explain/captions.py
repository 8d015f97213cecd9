"""The caption of each figure: what it shows, with the numbers of this figure (from its facts)."""
import numpy as np


def _counts(facts):
    lines = []
    for name, (params, macs, shape) in facts['counts'].items():
        line = f"  {name}: {params:,} parameters"
        if macs is not None:
            line += f", {macs:,} multiply-adds on an input of shape {shape}"
        lines.append(line)
    return 'Counts (numpyconv.count):\n' + '\n'.join(lines)


def _values(a):
    return '(' + ', '.join(f'{v:.2f}' for v in np.ravel(a)) + ')'


def _digits(facts):
    names = ', '.join(str(d) for d in facts['labels'])
    return f"Input: {facts['source']} ({'classes' if len(facts['labels']) > 1 else 'class'} {names})."


def conv2d(f):
    i, j = f['position']
    return (f"conv2d with stride {f['stride']}, padding {f['padding']}, dilation {f['dilation']} on an 8x8 "
            f"digit (values 0..16) and a 3x3 kernel of small integers. The window of output ({i}, {j}) reads "
            f"the outlined pixels of the zero-padded input; numpyconv.im2col lays every window out as one "
            f"column (column {f['column_index']} is this one), so the whole convolution is one matrix "
            f"product. Its dot product with the weight row is {f['value']:g} = y[{i}, {j}].")


def conv2d_backward(f):
    (p, q), (i, j) = f['tap'], f['position']
    return (f"The gradients of the same convolution for the output gradient dout shown. dW is the "
            f"correlation of the input with dout: dW[{p}, {q}] = {f['tap_value']:g} sums dout times the "
            f"pixels kernel point ({p}, {q}) read. dx is the transposed convolution: every output's "
            f"gradient times the kernel is scattered back onto its window (window ({i}, {j}) shown), the "
            f"scatters add up, and the padding's share is dropped. Pixels that no window reads (with "
            f"stride and dilation both 2, every other row and column) get zero gradient. Both equal "
            f"numpyconv.conv2d_backward.")


def depthwise(f):
    c = len(f['labels'])
    standard, dw = f['counts']['Conv2d'], f['counts']['DepthwiseConv2d']
    return (f"DepthwiseConv2d({c}, 3, padding=1): the input's {c} channels are {c} different digits; each "
            f"output channel is its own input channel convolved with its own 3x3 filter, so no digit leaks "
            f"into another channel. It costs {dw[1]:,} multiply-adds where a Conv2d({c}, {c}, 3) costs "
            f"{standard[1]:,} (1/{c}: one filter per channel instead of {c}).")


def pointwise(f):
    i, j = f['pixel']
    return (f"PointwiseConv2d({f['matrix'].shape[1]}, {f['matrix'].shape[0]}): a 1x1 convolution is the "
            f"matrix W applied to the channel vector of every pixel; at pixel ({i}, {j}) "
            f"W x[:, {i}, {j}] = {_values(f['product'])}. Each output channel mixes "
            f"all the input digits, and no neighbouring pixel is read.")


def separable(f):
    counts = f['counts']
    typical = [n for n in counts if '->' in n]
    small = 100 * counts['SeparableConv2d'][1] / counts['Conv2d'][1]
    big = 100 * counts[typical[0]][1] / counts[typical[1]][1]
    return (f"SeparableConv2d: a depthwise 3x3 convolution (one filter per digit channel), then a pointwise "
            f"1x1 convolution mixing the channels. It needs {small:.1f}% of the multiply-adds of the "
            f"standard Conv2d it replaces at the drawn size, and {big:.1f}% at a typical "
            f"{typical[0].split()[-1]} layer on 56x56 (the ratio is 1/C_out + 1/9 for a 3x3 kernel).")


def octave(f):
    c = f['counts']
    saved = 100 * (1 - c['OctaveConv2d'][1] / c['Conv2d'][1])
    return (f"OctaveConv2d(2, 2, 3, alpha_in=0.5, alpha_out=0.5) on a digit split into its low frequencies "
            f"x_l = avgpool(blur(x)) (a Gaussian blur, then 2x2 averages: half resolution) and the detail "
            f"x_h = x - blur(x). The four paths: "
            f"H->H convolves x_h, H->L pools then convolves, L->H convolves then upsamples, L->L convolves "
            f"at half resolution; y_h = H->H + L->H and y_l = H->L + L->L. The half-resolution paths save "
            f"{saved:.0f}% of the multiply-adds of a Conv2d(2, 2, 3).")


def dynamic(f):
    dy, cc = f['dynamic']['attention'], f['condconv']['attention']
    return (f"DynamicConv2d (DY-CNN, K=4, temperature 1) and CondConv2d (4 experts), untrained (seeded), on "
            f"the stem features of two digits. Each input's attention comes from its globally pooled "
            f"features: DY-CNN's softmax {_values(dy[0])} for A and {_values(dy[1])} for B (each sums to 1); "
            f"CondConv's independent sigmoids {_values(cc[0])} and {_values(cc[1])}. "
            f"The aggregated kernel is the attention-weighted sum of the K kernels, one per input; an "
            f"untrained attention, as here, tells the two inputs apart only slightly.")


def odconv(f):
    a = f['attentions']
    return (f"ODConv2d(3, 4, 3, kernel_num=4), inference mode, on a digit's stem features: four attentions "
            f"from one pooled vector: over the 4 kernels (softmax, {_values(a['kernel'])}), "
            f"over the 3x3 positions, the 3 input channels and the 4 output channels (sigmoids). The "
            f"assembled kernel filter[o] * channel[c] * spatial * sum_i kernel[i] W_i convolved with the "
            f"input gives the layer's output.")


def kernel_warehouse(f):
    m, cells = f['attention'].shape
    return (f"Two KWConv2d(2, 2, 3) layers share one warehouse of {cells} cells (3x3 kernels of one input "
            f"and one output channel). The first layer's attention, for this input, gives each of its {m} "
            f"kernel slices a signed, normalised weight over all {cells} cells (contrasting-driven "
            f"attention, inference: temperature 0), including the cells the second layer starts from; "
            f"each slice is the weighted sum of the cells.")


def deformable(f):
    v4 = f['v4']['weights']
    return (f"Where four deformable convolutions sample around two output pixels of the same input (a "
            f"digit's stem features), against the regular 3x3 grid (hollow circles). Their offset branches "
            f"have seeded random weights, scaled so that each offset component has a root mean square of "
            f"1 pixel over the map (a fresh layer's zero-initialised branch samples the regular grid "
            f"exactly). DCNv1 weights every point 1; DCNv2 modulates each in (0, 1); DCNv3 softmaxes the 9 "
            f"points of each of its 2 groups (they sum to 1); DCNv4 uses the raw values (here from "
            f"{v4.min():.2f} to {v4.max():.2f}). The locations are computed from each op's own arguments "
            f"(deformable.md eq. 3, dcnv3.md eq. 2) in the form of numpyconv.sampling_locations.")


def involution(f):
    return ("Involution2d(8, 3, group_channels=8, reduction_ratio=2) generates a 3x3 kernel at every "
            "position from the features there (shared by the group's 8 channels); the four kernels shown "
            "are those at the marked positions (the last on the background). A Conv2d shares one kernel "
            "per channel pair across all positions.")


CAPTIONS = {'conv2d': conv2d, 'conv2d_backward': conv2d_backward, 'depthwise': depthwise,
            'pointwise': pointwise, 'separable': separable, 'octave': octave, 'dynamic': dynamic,
            'odconv': odconv, 'kernel_warehouse': kernel_warehouse, 'deformable': deformable,
            'involution': involution}


def caption(technique, facts):
    """The caption text of a figure: its description, the input and the counts."""
    return f"{CAPTIONS[technique](facts)}\n{_digits(facts)}\n{_counts(facts)}"
