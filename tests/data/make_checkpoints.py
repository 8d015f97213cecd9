"""Write the checkpoint fixtures of tests/test_checkpoint.py (needs PyTorch; the tests do not).

Run from anywhere: ``python tests/data/make_checkpoints.py [GROUP ...]`` (every group by default:
the names of ``GROUPS``). Every file is written next to this script; the values each one must load
as are saved beside it as ``<name>_expected.npz`` (bfloat16 as the float32 PyTorch widens it to), so
that the tests compare without PyTorch. Files:

* ``dtypes_zip.pth`` / ``dtypes_legacy.pth``: every dtype, shared-storage views (transposed, offset,
  strided, expanded), 0-d and zero-size tensors, a parameter, nested lists and tuples; zip and
  legacy format (the legacy file without the uint16 tensor, which PyTorch can not read back from
  it). ``dtypes_big.pth``: the zip file as a big-endian machine writes it, every element
  byte-swapped and ``byteorder`` set to ``big`` (PyTorch here can not write one), checked with
  ``torch.load`` (except the uint16 tensor: PyTorch reads untyped storages of big-endian archives
  without swapping them).
* ``training.pth`` / ``training_legacy.pth``: ``{'state_dict', 'epoch', 'optimizer' (SGD with
  momentum after a step), 'args' (argparse.Namespace), 'best_acc1' (tensor), NumPy values}``.
* ``dataparallel.pth`` (``module.`` prefix), ``mmcls.pth`` (``backbone.``/``head.`` and ``meta``),
  ``config_stub.pth`` (weights beside a yacs-style ``CfgNode`` from a package that is not installed).
* ``whole_module.pth`` / ``whole_module_legacy.pth``: a model of this script saved whole
  (``torch.save(model)``; legacy inside ``{'model': DataParallel(model), 'epoch': 7}``).
* ``bf16.safetensors`` (written here byte by byte), ``arrays.npz``, ``arrays_compressed.npz``.
* ``evil_*``: pickles that would run a command or create a file if unpickled by ``pickle``.
"""
import argparse
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PWNED = '/tmp/numpyconv_checkpoint_pwned'     # the evil payloads create files named PWNED + suffix


def path(name):
    return os.path.join(HERE, name)


def save_expected(name, arrays):
    np.savez(path(f'{name}_expected.npz'), **{k: v.detach().float().numpy() if v.dtype == torch.bfloat16
                                             else v.detach().numpy() for k, v in arrays.items()})


# -- every dtype and view ---------------------------------------------------------------------
def dtype_tensors():
    g = torch.Generator().manual_seed(0)
    floats = torch.randn(2, 3, generator=g, dtype=torch.float64) * 100
    base = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    shared = torch.arange(6, dtype=torch.int64)
    t = OrderedDict()
    t['float64'] = floats
    t['float32'] = floats.float()
    t['float16'] = torch.tensor([[0.5, -1.25, 65504.0], [6e-8, float('inf'), -float('inf')]],
                                dtype=torch.float16)
    t['bfloat16'] = torch.tensor([[1.0, -3.140625, 3e38], [1e-38, float('nan'), -0.0]],
                                 dtype=torch.bfloat16)
    t['int64'] = torch.tensor([[-2 ** 63, 2 ** 63 - 1, 0], [1, -1, 7]], dtype=torch.int64)
    t['int32'] = torch.tensor([-2 ** 31, 2 ** 31 - 1, 5], dtype=torch.int32)
    t['int16'] = torch.tensor([-2 ** 15, 2 ** 15 - 1], dtype=torch.int16)
    t['int8'] = torch.tensor([-128, 127, 3], dtype=torch.int8)
    t['uint8'] = torch.tensor([0, 255, 17], dtype=torch.uint8)
    t['uint16'] = torch.tensor([0, 65535, 17], dtype=torch.int32).to(torch.uint16)
    t['bool'] = torch.tensor([[True, False], [False, True]])
    t['complex64'] = torch.tensor([1 + 2j, -3.5j], dtype=torch.complex64)
    t['complex128'] = torch.tensor([[1e300 - 1j]], dtype=torch.complex128)
    t['base'] = base
    t['base_t'] = base.t()                       # non-contiguous view
    t['base_row'] = base[2]                      # storage offset 10
    t['base_strided'] = base[1:, ::2]            # offset 5, strides (5, 2)
    t['base_flat'] = base.view(-1)[3:7]
    t['base_empty_tail'] = base.view(-1)[20:]    # zero-size, offset at the end of the storage
    t['expanded'] = torch.arange(3, dtype=torch.float32).expand(4, 3)     # stride 0
    t['scalar'] = torch.tensor(3.5)
    t['scalar_int'] = torch.tensor(-7)
    t['empty'] = torch.zeros(0, 3)
    t['empty_4d'] = torch.zeros(2, 0, 1, 3, dtype=torch.float64)
    t['shared_a'] = shared
    t['shared_b'] = shared[2:].view(2, 2)
    return t


def dtype_object(tensors):
    obj = OrderedDict(tensors)
    obj['param'] = torch.nn.Parameter(torch.tensor([0.25, -0.5, 1.0]))
    obj['nested'] = [tensors['int8'], (tensors['scalar'], 5, 'text'), {'deep': [tensors['bool']]}]
    return obj


def expected_of(obj):
    flat = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    flat['nested.0'], flat['nested.1.0'] = obj['nested'][0], obj['nested'][1][0]
    flat['nested.2.deep.0'] = obj['nested'][2]['deep'][0]
    return flat


def swap_units(zip_path):
    """``storage key -> bytes swapped together`` (an element; half of one for complex types), from
    an archive's data.pkl, unpickled with placeholders. An untyped storage (uint16/32/64 tensors)
    takes the size of the tensor dtype that views it."""
    units = {}

    def rebuild_v3(key, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
        units[key] = torch._utils._element_size(dtype)

    class Reader(pickle.Unpickler):
        def find_class(self, module, name):
            if name.endswith('Storage'):
                return name
            if module == 'collections':
                return OrderedDict
            if module == 'torch':
                return getattr(torch, name)
            return rebuild_v3 if name == '_rebuild_tensor_v3' else (lambda *args: None)

        def persistent_load(self, pid):
            if pid[1] != 'UntypedStorage':
                dtype = torch.serialization._get_dtype_from_pickle_storage_type(pid[1])
                units[pid[2]] = torch._utils._element_size(dtype) // (2 if dtype.is_complex else 1)
            return pid[2]

    with zipfile.ZipFile(zip_path) as z:
        name = next(n for n in z.namelist() if n.endswith('/data.pkl'))
        Reader(io.BytesIO(z.read(name))).load()
    return units


def byteswapped(src, dst):
    """Copy a zip checkpoint as a big-endian machine would have written it: every element's bytes
    swapped, ``byteorder`` set to ``big``."""
    units = swap_units(src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w', zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            root, _, rest = info.filename.partition('/')
            if rest == 'byteorder':
                data = b'big'
            elif rest.startswith('data/'):
                unit = units[rest[len('data/'):]]
                if unit > 1:
                    data = np.frombuffer(data, dtype=f'<u{unit}').byteswap().tobytes()
            zout.writestr(info, data)
    return units


def write_dtypes():
    tensors = dtype_tensors()
    obj = dtype_object(tensors)
    torch.save(obj, path('dtypes_zip.pth'))
    # PyTorch writes a uint16 tensor into a legacy stream but can not read it back (its legacy loader
    # asks the untyped storage class for a dtype): the legacy file has every other tensor
    legacy = OrderedDict((k, v) for k, v in obj.items() if k != 'uint16')
    torch.save(legacy, path('dtypes_legacy.pth'), _use_new_zipfile_serialization=False)
    torch.load(path('dtypes_legacy.pth'), weights_only=True)
    save_expected('dtypes', expected_of(obj))
    byteswapped(path('dtypes_zip.pth'), path('dtypes_big.pth'))
    back = torch.load(path('dtypes_big.pth'), weights_only=True)
    for key, value in obj.items():
        if key == 'uint16':     # PyTorch does not swap untyped storages (uint16/32/64) of big archives
            continue
        values = (back[key], value) if key != 'nested' else (back[key][0], value[0])
        assert torch.equal(*values) or torch.allclose(*values, equal_nan=True), key


# -- training checkpoints -----------------------------------------------------------------------
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def trained_tiny():
    torch.manual_seed(0)
    model = Tiny()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss = model(torch.randn(2, 3, 5, 5)).square().sum()
    loss.backward()
    sgd.step()
    return model, sgd


def write_training():
    model, sgd = trained_tiny()
    checkpoint = {'state_dict': model.state_dict(), 'epoch': 90, 'optimizer': sgd.state_dict(),
                  'args': argparse.Namespace(arch='tiny', lr=0.1, epochs=90, batch_size=8, nesterov=False),
                  'best_acc1': torch.tensor(76.125), 'np_value': np.float64(0.25),
                  'np_array': np.arange(4, dtype=np.int32)}
    torch.save(checkpoint, path('training.pth'))
    torch.save(checkpoint, path('training_legacy.pth'), _use_new_zipfile_serialization=False)
    expected = OrderedDict(model.state_dict())
    for index, state in sgd.state_dict()['state'].items():
        expected[f'momentum.{index}'] = state['momentum_buffer']
    expected['best_acc1'] = checkpoint['best_acc1']
    save_expected('training', expected)

    prefixed = OrderedDict(('module.' + k, v) for k, v in model.state_dict().items())
    torch.save({'state_dict': prefixed, 'epoch': 3}, path('dataparallel.pth'))
    mm = OrderedDict([('backbone.conv.' + k, v) for k, v in model.conv.state_dict().items()] +
                     [('backbone.bn.' + k, v) for k, v in model.bn.state_dict().items()] +
                     [('head.fc.' + k, v) for k, v in model.fc.state_dict().items()])
    torch.save({'meta': {'epoch': 12, 'CLASSES': ['cat', 'dog'], 'mmcv_version': '1.7.0'},
                'state_dict': mm}, path('mmcls.pth'))


def write_config_stub():
    """A checkpoint holding an instance of ``yacs.config.CfgNode`` (InternImage's config object),
    from a stand-in module registered only while saving."""
    yacs, config = types.ModuleType('yacs'), types.ModuleType('yacs.config')

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            self.__dict__['__immutable__'] = False

    CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    config.CfgNode, yacs.config = CfgNode, config
    sys.modules.update({'yacs': yacs, 'yacs.config': config})
    try:
        model, _ = trained_tiny()
        cfg = CfgNode({'MODEL': CfgNode({'TYPE': 'intern_image', 'NUM_CLASSES': 1000}), 'SEED': 0})
        torch.save({'model': model.state_dict(), 'config': cfg, 'epoch': 299}, path('config_stub.pth'))
    finally:
        del sys.modules['yacs'], sys.modules['yacs.config']


class WholeNet(torch.nn.Module):
    """A model defined in this script, saved whole: pickled as ``__main__.WholeNet``, with what
    ``state_dict()`` leaves out (a non-persistent buffer, a None parameter, buffer and child) and a
    shared child (its entries appear under both names)."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
        self.register_buffer('scale', torch.tensor([2.0]), persistent=False)
        self.register_buffer('offset', torch.tensor([0.5]))
        self.register_buffer('unset', None)
        self.register_parameter('unused', None)
        self.add_module('skip', None)
        self.head = torch.nn.Linear(3, 4)
        self.tied = self.head


def write_whole_module():
    torch.manual_seed(0)
    model = WholeNet()
    torch.nn.init.normal_(model.features[1].running_mean)
    torch.save(model, path('whole_module.pth'))
    torch.save({'model': torch.nn.DataParallel(model), 'epoch': 7}, path('whole_module_legacy.pth'),
               _use_new_zipfile_serialization=False)
    save_expected('whole_module', model.state_dict())


# -- safetensors and npz ------------------------------------------------------------------------
def write_safetensors():
    """safetensors by hand: 8-byte header length, JSON header (padded to 8 bytes), the buffer."""
    g = torch.Generator().manual_seed(1)
    tensors = OrderedDict([
        ('weight', (torch.randn(3, 4, generator=g) * 10).to(torch.bfloat16)),
        ('bias', torch.randn(3, generator=g)),
        ('steps', torch.tensor([1, -2, 2 ** 40])),
        ('mask', torch.tensor([True, False, True])),
        ('half', torch.tensor([[1.5, -2.0]], dtype=torch.float16)),
        ('empty', torch.zeros(0, 2)),
        ('scalar', torch.tensor(2.0, dtype=torch.float64)),
    ])
    codes = {torch.bfloat16: 'BF16', torch.float32: 'F32', torch.int64: 'I64', torch.bool: 'BOOL',
             torch.float16: 'F16', torch.float64: 'F64'}
    header, blobs, offset = OrderedDict(__metadata__={'format': 'pt'}), [], 0
    for name, t in tensors.items():
        data = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header[name] = {'dtype': codes[t.dtype], 'shape': list(t.shape),
                        'data_offsets': [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b' ' * (-len(text) % 8)
    with open(path('bf16.safetensors'), 'wb') as f:
        f.write(struct.pack('<Q', len(text)) + text + b''.join(blobs))
    save_expected('bf16', tensors)


def write_npz():
    g = np.random.default_rng(2)
    arrays = OrderedDict(conv=g.standard_normal((2, 3, 3, 3)).astype(np.float32),
                         counts=np.arange(5, dtype=np.int64), flags=np.array([True, False]),
                         fortran=np.asfortranarray(g.standard_normal((3, 2))), scalar=np.float64(1.5))
    np.savez(path('arrays.npz'), **arrays)
    np.savez_compressed(path('arrays_compressed.npz'), **arrays)


# -- hostile pickles ----------------------------------------------------------------------------
def command(suffix):
    return f'touch {PWNED}_{suffix}'


def system_pickle(suffix):
    """Protocol 2: ``os.system('touch <PWNED>_<suffix>')`` through REDUCE."""
    text = command(suffix).encode()
    return b'\x80\x02cos\nsystem\nX' + struct.pack('<I', len(text)) + text + b'\x85R.'


def evil_pickles():
    """name -> pickle bytes; each would run a command (or create a file) under ``pickle.loads``."""
    def p0(text):
        return text.encode('latin1')

    c = command
    return {
        'reduce': system_pickle('reduce'),
        # BUILD: a Namespace gets __setstate__ = os.system, then a second BUILD would call it
        'build': b'\x80\x02cargparse\nNamespace\n)\x81}X\x0c\x00\x00\x00__setstate__cos\nsystem\nsb'
                 + b'X' + struct.pack('<I', len(c('build'))) + c('build').encode() + b'b.',
        # INST (protocol 0): os.system('touch ...')
        'inst': p0(f"(S'{c('inst')}'\nios\nsystem\n."),
        # OBJ (protocol 1): builtins.eval of code that creates a file
        'obj': p0(f"(c__builtin__\neval\nS\"open('{PWNED}_obj', 'w')\"\no."),
        # NEWOBJ: subprocess.Popen.__new__ (pickle would then BUILD it)
        'newobj': p0(f"\x80\x02csubprocess\nPopen\nX{chr(len(c('newobj')))}\x00\x00\x00{c('newobj')}"
                     "\x85\x81."),
        # STACK_GLOBAL (protocol 4): builtins.exec of code that creates a file
        'stack_global': b'\x80\x04\x8c\x08builtins\x8c\x04exec\x93\x8c' + bytes([len(
            f"open('{PWNED}_stack_global', 'w')")]) + f"open('{PWNED}_stack_global', 'w')".encode()
            + b'\x85R.',
        # a global from a module that is not imported: importing `this` prints the Zen of Python
        'unknown_module': b'\x80\x02cthis\nd\n)R.',
        # an extension code (copyreg registry)
        'ext': b'\x80\x02\x82\x01.',
    }


def write_evil():
    pickles = evil_pickles()
    for name, data in pickles.items():
        with open(path(f'evil_{name}.pkl'), 'wb') as f:
            f.write(data)
    with zipfile.ZipFile(path('evil_reduce_zip.pth'), 'w') as z:     # os.system inside an archive
        z.writestr('archive/data.pkl', system_pickle('zip'))
        z.writestr('archive/byteorder', b'little')
        z.writestr('archive/version', b'3\n')
    with open(path('evil_reduce_legacy.pth'), 'wb') as f:              # os.system in a legacy stream
        for head in (0x1950a86a20f9469cfc6c, 1001, {'protocol_version': 1001, 'little_endian': True}):
            pickle.dump(head, f, protocol=2)
        f.write(system_pickle('legacy'))


GROUPS = {'dtypes': write_dtypes, 'training': write_training, 'config_stub': write_config_stub,
          'whole_module': write_whole_module, 'safetensors': write_safetensors, 'npz': write_npz,
          'evil': write_evil}


def main(groups):
    for name in groups or GROUPS:
        GROUPS[name]()
    total = sum(os.path.getsize(path(n)) for n in os.listdir(HERE) if not n.endswith('.py'))
    print(f"fixtures written to {HERE} ({total} bytes)")


if __name__ == '__main__':
    main(sys.argv[1:])
