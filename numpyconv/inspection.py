"""What a state_dict holds: its tensors grouped by module, and the numpyconv layer each group matches.

:func:`inspect_state_dict` walks the module tree the keys describe (``layer1.0.conv1.weight`` is the
tensor ``weight`` of module ``layer1.0.conv1``). At each module it compares the keys and shapes of the
whole subtree with the state_dict keys of numpyconv's layers (which equal the official modules'):

===========================  ==============================================================================
layer                        keys (relative to the module) and shapes
===========================  ==============================================================================
Conv2d                       ``weight`` (O, I/groups, kh, kw) [, ``bias`` (O,)]; DepthwiseConv2d when
                             I/groups is 1 (groups = in_channels), PointwiseConv2d when 1x1
BatchNorm2d / BatchNorm1d    ``running_mean``, ``running_var`` (C,) [, ``weight``, ``bias``,
                             ``num_batches_tracked``]
Linear                       ``weight`` (O, I) [, ``bias`` (O,)]
LayerNorm                    ``weight`` (C,) [, ``bias`` (C,)]
SeparableConv2d              ``depthwise.weight`` (C*m, 1, k, k), ``pointwise.weight`` (O, C*m, 1, 1), biases
OctaveConv2d                 ``conv_h2h.weight`` [, ``conv_h2l``, ``conv_l2h``, ``conv_l2l``] (4-D)
DeformConv2d                 ``weight`` 4-D (no bias), ``conv_offset.weight`` with 2*dg*kh*kw output channels
ModulatedDeformConv2d        the same with 3*dg*kh*kw (offsets and mask) output channels [, ``bias``]
DynamicConv2d                ``weight`` (K, O, I, kh, kw), ``attention.fc1.weight``, ``attention.fc2.*``
ODConv2d                     ``weight`` (K, O, I, kh, kw), ``attention.fc``, ``attention.bn.*``,
                             ``attention.channel_fc.*`` [, ``filter_fc``, ``spatial_fc``, ``kernel_fc``]
CondConv2d                   ``weight`` (E, O, I, kh, kw), ``route.fc.weight`` (E, C), ``route.fc.bias``
Involution2d                 ``conv1.conv.weight``, ``conv1.bn.*``, ``conv2.conv.weight`` (K*K*G, C/r, 1, 1)
KWConv2d                     ``attention.fc1``, ``attention.norm1.*``, ``attention.fc2.*`` [or ``fc3``,
                             ``basis_bias``] (the kernel cells live in the WarehouseManager)
WarehouseManager             ``weights.<i>`` (cells, c_out, c_in, ckh, ckw)
DCNv3                        ``dw_conv.0``, ``dw_conv.1.1`` (LayerNorm), ``offset``, ``mask``, ``input_proj``,
                             ``output_proj`` [, ``center_feature_scale_proj_*``]
DCNv4                        ``offset_mask`` [, ``value_proj``, ``output_proj``]
===========================  ==============================================================================

The first layer whose keys equal the subtree's wins and the walk stops there; otherwise the module's
own tensors form a group (matched alone) and its children are visited in key order. Shapes decide
what the keys can not: the deformable kinds by the offset branch's channels (deform_groups must divide
in_channels; a bias means the modulated kind); both are named when both fit (54 offset channels of a
3x3 kernel: DeformConv2d with 3 groups or ModulatedDeformConv2d with 2). What shapes can not tell
(groups, a depthwise conv's in_channels) is said in the detail.
"""
import sys
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')
MAX_DEPTH = 64      # module nesting below which keys are not split further (one group)
_BN = {'weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'}


@dataclass
class Group:
    """One module's tensors: ``prefix`` (``'layer1.0.conv1.'``, ``''`` for the root), ``layer``
    (the matching numpyconv layer, or None), ``detail`` (what the shapes say about it), ``entries``
    (``(key relative to prefix, shape, dtype)`` in state_dict order) and ``params`` (elements of the
    tensors that are not running statistics)."""

    prefix: str
    layer: str = None
    detail: str = ''
    entries: list = field(default_factory=list)
    params: int = 0


def inspect_state_dict(state):
    """Group the arrays of ``state`` (a state_dict: key -> array) by module and match each group
    with a numpyconv layer.

    Parameters
    ----------
    state : mapping
        ``key -> array``; entries that are not arrays are ignored.

    Returns
    -------
    list of :class:`Group`, in state_dict order.
    """
    arrays = OrderedDict((k, v) for k, v in state.items() if isinstance(k, str) and isinstance(v, np.ndarray))
    groups = []
    _visit('', list(arrays), arrays, groups, 0)
    return groups


def _visit(prefix, keys, arrays, groups, depth):
    if depth == MAX_DEPTH:           # deeper modules stay one group, their keys not split
        groups.append(_group(prefix, keys, arrays, (None, '')))
        return
    shapes = {k: arrays[prefix + k].shape for k in keys}
    match = _match(shapes)
    if match is not None:
        groups.append(_group(prefix, keys, arrays, match))
        return
    own = [k for k in keys if '.' not in k]
    if own:
        groups.append(_group(prefix, own, arrays, _match({k: shapes[k] for k in own}) or (None, '')))
    children = OrderedDict()
    for key in keys:
        if '.' in key:
            head, rest = key.split('.', 1)
            children.setdefault(head, []).append(rest)
    for head, rest in children.items():
        _visit(f'{prefix}{head}.', rest, arrays, groups, depth + 1)


def _group(prefix, keys, arrays, match):
    entries = [(k, arrays[prefix + k].shape, arrays[prefix + k].dtype) for k in keys]
    params = sum(int(np.prod(shape)) for k, shape, _ in entries if not k.endswith(_BUFFERS))
    return Group(prefix, match[0], match[1], entries, params)


# -- matchers: shapes (relative key -> shape) -> (layer, detail) or None --------------------------
def _conv2d(s):
    if set(s) not in ({'weight'}, {'weight', 'bias'}) or len(s['weight']) != 4:
        return None
    o, i, kh, kw = s['weight']
    if 'bias' in s and s['bias'] != (o,):
        return None
    bias = ', bias' if 'bias' in s else ''
    if i == 1 and (kh, kw) != (1, 1):
        return ('DepthwiseConv2d / Conv2d',
                f'{o} out channels, 1 in channel per group (depthwise when groups = in_channels), '
                f'{kh}x{kw}{bias}')
    name = 'PointwiseConv2d / Conv2d' if (kh, kw) == (1, 1) else 'Conv2d'
    return name, f'{o} out channels, {i} in channels per group, {kh}x{kw}{bias}'


def _batch_norm(s):
    if not {'running_mean', 'running_var'} <= set(s) <= _BN:
        return None
    c = s['running_mean']
    if any(v != c for k, v in s.items() if k != 'num_batches_tracked') or len(c) != 1:
        return None
    return 'BatchNorm2d / BatchNorm1d', f'{c[0]} features' + ('' if 'weight' in s else ', affine=False')


def _linear(s):
    if set(s) not in ({'weight'}, {'weight', 'bias'}) or len(s['weight']) != 2:
        return None
    o, i = s['weight']
    if 'bias' in s and s['bias'] != (o,):
        return None
    return 'Linear', f'{i} -> {o}' + (', bias' if 'bias' in s else '')


def _layer_norm(s):
    if set(s) not in ({'weight'}, {'weight', 'bias'}) or len(s['weight']) != 1:
        return None
    if 'bias' in s and s['bias'] != s['weight']:
        return None
    return 'LayerNorm', f"normalized_shape {s['weight'][0]}"


def _dim(shape, i):
    """Dimension ``i`` of ``shape`` for a detail, ``'?'`` when the tensor has fewer dimensions."""
    return shape[i] if len(shape) > i else '?'


def _children(s, name):
    """The shapes of child ``name`` (keys ``name.*``, prefix stripped)."""
    return {k[len(name) + 1:]: v for k, v in s.items() if k.startswith(name + '.')}


def _separable(s):
    dw, pw = _children(s, 'depthwise'), _children(s, 'pointwise')
    if not dw or not pw or len(dw) + len(pw) != len(s):
        return None
    dw_match, pw_match = _conv2d(dw), _conv2d(pw)
    if dw_match is None or pw_match is None or dw['weight'][1] != 1 or pw['weight'][2:] != (1, 1) \
            or pw['weight'][1] != dw['weight'][0]:
        return None
    m_c, _, kh, kw = dw['weight']
    return 'SeparableConv2d', f"{m_c} depthwise channels, {kh}x{kw}, -> {pw['weight'][0]} out channels"


_OCTAVE = ('conv_h2h', 'conv_h2l', 'conv_l2h', 'conv_l2l')


def _octave(s):
    branches = {b: _children(s, b) for b in _OCTAVE}
    present = [b for b in _OCTAVE if branches[b]]
    if 'conv_h2h' not in present or sum(len(branches[b]) for b in present) != len(s) \
            or any(_conv2d(branches[b]) is None for b in present):
        return None
    w = {b: branches[b]['weight'] for b in present}
    in_h, out_h = w['conv_h2h'][1], w['conv_h2h'][0]
    in_l = (w.get('conv_l2h') or w.get('conv_l2l') or (0, 0))[1]
    out_l = (w.get('conv_h2l') or w.get('conv_l2l') or (0, 0))[0]
    return ('OctaveConv2d', f'in {in_h}+{in_l} (high+low, per group), out {out_h}+{out_l}, '
                            f"{'x'.join(map(str, w['conv_h2h'][2:]))}")


def _deformable(s):
    offset = _children(s, 'conv_offset')
    main = {k: v for k, v in s.items() if not k.startswith('conv_offset.')}
    if set(offset) != {'weight', 'bias'} or _conv2d(main) is None or _conv2d(offset) is None:
        return None
    o, i, kh, kw = main['weight']
    (channels, in_channels), points = offset['weight'][:2], kh * kw
    if points == 0:
        return None
    kinds = []
    for name, n in (('DeformConv2d', 2), ('ModulatedDeformConv2d', 3)):
        groups = channels // (n * points)
        # deform_groups divides in_channels; the unmodulated kind (v1) has no bias
        fits = channels % (n * points) == 0 and in_channels % max(groups, 1) == 0
        if fits and not (n == 2 and 'bias' in main):
            kinds.append((name, groups))
    if not kinds:
        return None
    names = ' or '.join(name for name, _ in kinds)
    groups = ' or '.join(f'{name}: deform_groups={dg}' for name, dg in kinds) if len(kinds) > 1 \
        else f'deform_groups={kinds[0][1]}'
    return names, f'{o} out channels, {i} in channels per group, {kh}x{kw}, {groups}'


def _rank5(s, name):
    w = s.get('weight')
    if w is None or len(w) != 5:
        return None
    if 'bias' in s and s['bias'] != w[:2]:
        return None
    k, o, i, kh, kw = w
    return f'{k} {name}, {o} out channels, {i} in channels per group, {kh}x{kw}'


def _dynamic(s):
    expected = {'weight', 'attention.fc1.weight', 'attention.fc2.weight', 'attention.fc2.bias'}
    if set(s) - {'bias'} != expected or _rank5(s, 'kernels') is None:
        return None
    return 'DynamicConv2d', _rank5(s, 'kernels') + f", attention hidden {_dim(s['attention.fc1.weight'], 0)}"


def _odconv(s):
    attention = _children(s, 'attention')
    required = {'fc.weight', 'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var',
                'channel_fc.weight', 'channel_fc.bias'}
    optional = {f'{n}_fc.{p}' for n in ('filter', 'spatial', 'kernel') for p in ('weight', 'bias')}
    if set(s) != {'weight'} | {f'attention.{k}' for k in attention} or 'bias' in s \
            or not required <= set(attention) <= required | optional | {'bn.num_batches_tracked'} \
            or _rank5(s, 'kernels') is None:
        return None
    return 'ODConv2d', _rank5(s, 'kernels') + f", attention hidden {_dim(attention['fc.weight'], 0)}"


def _condconv(s):
    if set(s) - {'bias'} != {'weight', 'route.fc.weight', 'route.fc.bias'} or _rank5(s, 'experts') is None:
        return None
    return 'CondConv2d', _rank5(s, 'experts')


def _involution(s):
    required = {'conv1.conv.weight', 'conv2.conv.weight', 'conv2.conv.bias'} | {
        f'conv1.bn.{k}' for k in ('weight', 'bias', 'running_mean', 'running_var')}
    if set(s) - {'conv1.bn.num_batches_tracked'} != required:
        return None
    reduced, channels = (_dim(s['conv1.conv.weight'], i) for i in (0, 1))
    kkg = _dim(s['conv2.conv.weight'], 0)
    return 'Involution2d', f'{channels} channels, reduced to {reduced}, K*K*groups = {kkg}'


def _kwconv(s):
    attention = {k for k in s if k.startswith('attention.')}
    base = {'attention.fc1.weight', 'attention.fc2.weight'} | {f'attention.norm1.{k}' for k in _BN}
    plain, basis = base | {'attention.fc2.bias'}, base | {'attention.fc3.weight', 'attention.basis_bias'}
    norm_optional = {'attention.norm1.num_batches_tracked'}
    if set(s) - attention - {'bias'} or not (plain - norm_optional <= attention <= plain
                                             or basis - norm_optional <= attention <= basis):
        return None
    hidden, channels = (_dim(s['attention.fc1.weight'], i) for i in (0, 1))
    mode = 'basis' if 'attention.fc3.weight' in s else 'plain'
    return 'KWConv2d', (f'{channels} in channels, attention hidden {hidden}, {mode} mode '
                        f'(cells in the WarehouseManager)')


def _warehouses(s):
    if not s or any(not k.startswith('weights.') or not k[8:].isdigit() or len(v) != 5 for k, v in s.items()):
        return None
    cells = ', '.join(f'{v[0]} cells of {v[1]}x{v[2]}x{v[3]}x{v[4]}' for v in s.values())
    return 'WarehouseManager', f'{len(s)} warehouses: {cells}'


_DCNV3 = {f'{m}.{p}' for m in ('dw_conv.0', 'dw_conv.1.1', 'offset', 'mask', 'input_proj', 'output_proj')
          for p in ('weight', 'bias')}


def _dcnv3(s):
    if set(s) - {'center_feature_scale_proj_weight', 'center_feature_scale_proj_bias'} != _DCNV3:
        return None
    channels, points = _dim(s['input_proj.weight'], 0), _dim(s['mask.weight'], 0)
    return 'DCNv3', (f"{channels} channels, group*points = {points}, "
                     f"{'x'.join(map(str, s['dw_conv.0.weight'][2:]))} depthwise")


def _dcnv4(s):
    core = {'offset_mask.weight', 'offset_mask.bias'}
    projections = {f'{m}.{p}' for m in ('value_proj', 'output_proj') for p in ('weight', 'bias')}
    if set(s) not in (core, core | projections) or len(s['offset_mask.weight']) != 2:
        return None
    rows, channels = s['offset_mask.weight']
    return 'DCNv4', f'{channels} channels, offset_mask rows {rows}' + (
        '' if 'value_proj.weight' in s else ', without_pointwise')


# compound layers first: their keys live in child modules
_MATCHERS = (_separable, _octave, _deformable, _dynamic, _odconv, _condconv, _involution, _kwconv,
             _warehouses, _dcnv3, _dcnv4, _conv2d, _batch_norm, _linear, _layer_norm)


def _match(shapes):
    if not shapes:
        return None
    for matcher in _MATCHERS:
        found = matcher(shapes)
        if found is not None:
            return found
    return None


def format_inspection(groups):
    """The groups of :func:`inspect_state_dict` as text.

    Parameters
    ----------
    groups : list of :class:`Group`

    Returns
    -------
    str: per module a line (prefix, matching layer and what the shapes say, parameter count) and a
    line per tensor (key, shape, dtype); then the total.
    """
    lines = []
    for g in groups:
        name = g.prefix.rstrip('.') or '(root)'
        layer = f'{g.layer}: {g.detail}' if g.layer else '(no numpyconv layer matches these keys)'
        lines.append(f'{name}  {layer}  [{g.params:,} parameters]')
        width = max(len(k) for k, _, _ in g.entries)
        for key, shape, dtype in g.entries:
            lines.append(f'    {key:<{width}}  {str(tuple(shape)):<20} {dtype}')
    total = sum(g.params for g in groups)
    tensors = sum(len(g.entries) for g in groups)
    matched = sum(1 for g in groups if g.layer)
    lines.append(f'total: {total:,} parameters in {tensors} tensors; {matched} of {len(groups)} modules '
                 f'match a numpyconv layer')
    return '\n'.join(lines)


def _describe(value):
    """A one-line description of a checkpoint entry that is not the state_dict."""
    if isinstance(value, np.ndarray):
        scalar = f' = {value.item()!r}' if value.ndim == 0 else ''
        return f'array {tuple(value.shape)} {value.dtype}{scalar}'
    if isinstance(value, dict):
        return f'{type(value).__name__} with {len(value)} keys: {", ".join(map(str, list(value)[:6]))}' + (
            ', ...' if len(value) > 6 else '')
    if isinstance(value, (list, tuple)):
        return f'{type(value).__name__} of {len(value)}'
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + '...'


def add_arguments(parser):
    """The options of ``numpyconv inspect``."""
    parser.add_argument('file', help='a checkpoint: PyTorch .pth (zip or legacy), safetensors, npz')
    parser.add_argument('--key', help="the entry holding the state_dict (default: 'state_dict', "
                                      "'model', 'model_ema' or the file itself)")
    parser.add_argument('--prefix', help="only the modules under this prefix ('module', 'backbone')")
    parser.add_argument('--stub', action='store_true',
                        help='keep objects of unknown classes as inert placeholders (nothing is run)')
    parser.add_argument('--allow', action='append', default=[], metavar='MODULE.NAME',
                        help='a global you trust (imported and called); repeatable')


def main(args):
    """``numpyconv inspect FILE``: the checkpoint's entries, then its state_dict grouped by module."""
    from .checkpoint import (UnsafeCheckpointError, is_pickled_module, load_checkpoint, state_dict_key,
                             state_dict_of)
    try:
        checkpoint = load_checkpoint(args.file, allow=args.allow, unknown='stub' if args.stub else 'error')
        state = state_dict_of(checkpoint, prefix=args.prefix, key=args.key)
    except (ValueError, TypeError, OSError) as exc:
        print(f'numpyconv inspect: {exc}', file=sys.stderr)
        if isinstance(exc, UnsafeCheckpointError):
            print('numpyconv inspect: --stub keeps unknown objects as inert placeholders; '
                  '--allow MODULE.NAME trusts one', file=sys.stderr)
        return 1
    source = state_dict_key(checkpoint, args.key)
    if is_pickled_module(checkpoint):
        print(f'a model saved whole ({checkpoint.name}); the state_dict its state_dict() gives:')
    elif source is not None:
        for key, value in checkpoint.items():
            print(f'{key}: ' + ('the state_dict below' if key == source else _describe(value)))
    others = [k for k, v in state.items() if not isinstance(v, np.ndarray)]
    if others:
        print(f'state_dict entries that are not arrays: {others[:10]}')
    print(format_inspection(inspect_state_dict(state)))
    return 0
