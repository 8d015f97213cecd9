"""Checkpoints: reading PyTorch's zip and legacy formats, safetensors and npz without PyTorch, safely;
writing what ``torch.load(weights_only=True)`` reads. Fixtures in tests/data (made by
tests/data/make_checkpoints.py, which needs PyTorch; these tests do not, except the cross-checks)."""
import argparse
import glob
import io
import json
import mmap
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import types
import warnings
import zipfile
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import numpyconv as nc
from numpyconv import checkpoint as ck
from numpyconv._safe_pickle import GlobalRef, Global, PersistentId, Reduce, Stub, Writer

DATA = Path(__file__).parent / 'data'
PWNED = '/tmp/numpyconv_checkpoint_pwned'
EVIL = sorted(Path(p).stem[len('evil_'):] for p in glob.glob(str(DATA / 'evil_*.pkl')))


def expected(name):
    with np.load(DATA / f'{name}_expected.npz') as f:
        return OrderedDict((k, f[k]) for k in f.files)


def get(obj, path):
    for part in path.split('.'):
        obj = obj[int(part)] if isinstance(obj, (list, tuple)) else obj[part]
    return obj


def assert_same(actual, want, what=''):
    assert isinstance(actual, np.ndarray), what
    assert actual.dtype == want.dtype, (what, actual.dtype, want.dtype)
    assert actual.shape == want.shape, (what, actual.shape, want.shape)
    np.testing.assert_array_equal(actual, want, err_msg=what)


# -- hand-made files --------------------------------------------------------------------------
def hooks():
    return Reduce(Global('collections', 'OrderedDict'), ())


def tensor(key, size, stride, offset=0, numel=None, storage='FloatStorage', legacy=False,
           func='_rebuild_tensor_v2'):
    """The pickled call PyTorch writes for a tensor on storage ``key``."""
    pid = ('storage', Global('torch', storage), key, 'cpu', numel) + ((None,) if legacy else ())
    return Reduce(Global('torch._utils', func), (PersistentId(pid), offset, size, stride, False, hooks()))


def write_zip(path, obj, storages=(), byteorder=b'little', root='archive'):
    """A PyTorch zip archive: ``obj`` (bytes or a Writer tree) as data.pkl, ``storages`` key -> bytes."""
    pickled = obj if isinstance(obj, bytes) else Writer().dumps(obj)
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr(f'{root}/data.pkl', pickled)
        z.writestr(f'{root}/byteorder', byteorder)
        for key, data in dict(storages).items():
            z.writestr(f'{root}/data/{key}', data)
        z.writestr(f'{root}/version', b'3\n')
    return path


def write_legacy(path, obj, storages=(), keys=None):
    """A legacy stream: magic, protocol, sys info, ``obj``, keys, then each ``(key, numel, bytes)``."""
    pickled = obj if isinstance(obj, bytes) else Writer().dumps(obj)
    storages = list(storages)
    with open(path, 'wb') as f:
        for head in (ck.LEGACY_MAGIC, ck.LEGACY_PROTOCOL, {'protocol_version': 1001, 'little_endian': True}):
            f.write(pickle.dumps(head, protocol=2))
        f.write(pickled)
        f.write(pickle.dumps([k for k, _, _ in storages] if keys is None else keys, protocol=2))
        for _, numel, data in storages:
            f.write(struct.pack('<q', numel) + data)
    return path


def write_safetensors(path, header, buffer=b'', length=None):
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text) if length is None else length) + text + buffer)
    return path


def floats(n):
    return np.arange(n, dtype=np.float32).tobytes()


# -- every dtype and view ------------------------------------------------------------------------
DTYPE_FILES = ['dtypes_zip.pth', 'dtypes_legacy.pth', 'dtypes_big.pth']


@pytest.mark.parametrize('mmap', [False, True])
@pytest.mark.parametrize('name', DTYPE_FILES)
def test_every_dtype_and_view_loads_exactly(name, mmap):
    loaded = nc.load_checkpoint(DATA / name, mmap=mmap)
    assert type(loaded) is OrderedDict
    want = expected('dtypes')
    if name == 'dtypes_legacy.pth':          # PyTorch can not read uint16 back from a legacy stream
        del want['uint16']
    top = [k for k in want if '.' not in k]
    assert list(loaded)[:len(top)] == top and list(loaded)[len(top):] == ['nested']
    for key, value in want.items():
        assert_same(get(loaded, key), value, f"{name}: {key}")
    assert loaded['nested'][1][1:] == (5, 'text') and isinstance(loaded['nested'][1], tuple)
    assert isinstance(loaded['nested'], list) and isinstance(loaded['nested'][2], dict)
    assert loaded['bfloat16'].dtype == np.float32       # bfloat16 widens to float32, exactly


@pytest.mark.parametrize('name', DTYPE_FILES)
def test_views_of_one_storage_share_memory(name):
    loaded = nc.load_checkpoint(DATA / name)
    for key in ('base_t', 'base_row', 'base_strided', 'base_flat'):
        assert np.shares_memory(loaded['base'], loaded[key]), key
    assert np.shares_memory(loaded['shared_a'], loaded['shared_b'])
    assert not np.shares_memory(loaded['base'], loaded['float32'])
    assert loaded['base_t'].strides == (4, 20) and loaded['expanded'].strides == (0, 4)
    loaded['base'][2, 0] = -1.0                          # writable, and visible through the views
    assert loaded['base_t'][0, 2] == -1.0 and loaded['base_row'][0] == -1.0


def test_mmap_gives_read_only_views_of_the_file():
    mapped = nc.load_checkpoint(DATA / 'dtypes_zip.pth', mmap=True)
    read = nc.load_checkpoint(DATA / 'dtypes_zip.pth')
    for key, value in mapped.items():
        if isinstance(value, np.ndarray):
            assert not value.flags.writeable, key
            assert read[key].flags.writeable, key
    assert np.shares_memory(mapped['base'], mapped['base_t'])
    owner = mapped['base']
    while not isinstance(owner, (mmap.mmap, memoryview)):
        owner = owner.base
    assert isinstance(getattr(owner, 'obj', owner), mmap.mmap)      # the bytes are the file's
    with pytest.raises(ValueError):
        mapped['base'][0, 0] = 1.0


def test_big_endian_archive_gives_native_arrays():
    big = nc.load_checkpoint(DATA / 'dtypes_big.pth', mmap=True)
    little = nc.load_checkpoint(DATA / 'dtypes_zip.pth')
    for key in ('float64', 'int32', 'complex128', 'uint16', 'base_t'):
        assert big[key].dtype.isnative and big[key].dtype == little[key].dtype
        np.testing.assert_array_equal(big[key], little[key])


# -- training checkpoints and state_dict_of -------------------------------------------------------
@pytest.mark.parametrize('name', ['training.pth', 'training_legacy.pth'])
def test_training_checkpoint(name):
    loaded = nc.load_checkpoint(DATA / name)
    assert list(loaded) == ['state_dict', 'epoch', 'optimizer', 'args', 'best_acc1', 'np_value', 'np_array']
    want = expected('training')
    state = loaded['state_dict']
    assert type(state) is OrderedDict and list(state) == [k for k in want if '.' in k and
                                                          not k.startswith('momentum')]
    assert isinstance(state._metadata, OrderedDict) and state._metadata['bn'] == {'version': 2}
    for key in state:
        assert_same(state[key], want[key], key)
    assert loaded['epoch'] == 90 and type(loaded['epoch']) is int
    args = loaded['args']
    assert isinstance(args, argparse.Namespace)
    assert vars(args) == {'arch': 'tiny', 'lr': 0.1, 'epochs': 90, 'batch_size': 8, 'nesterov': False}
    optimizer = loaded['optimizer']
    group = optimizer['param_groups'][0]
    assert group['lr'] == 0.1 and group['momentum'] == 0.9 and group['params'] == list(range(6))
    for index, value in optimizer['state'].items():
        assert_same(value['momentum_buffer'], want[f'momentum.{index}'])
    assert_same(loaded['best_acc1'], want['best_acc1'])
    assert loaded['np_value'] == 0.25 and type(loaded['np_value']) is np.float64
    assert_same(loaded['np_array'], np.arange(4, dtype=np.int32))


def test_state_dict_of_the_usual_layouts():
    want = expected('training')
    keys = [k for k in want if '.' in k and not k.startswith('momentum')]
    assert list(nc.state_dict_of(nc.load_checkpoint(DATA / 'training.pth'))) == keys
    dp = nc.load_checkpoint(DATA / 'dataparallel.pth')
    for prefix in ('module.', 'module'):
        state = nc.state_dict_of(dp, prefix=prefix)
        assert list(state) == keys
        assert_same(state['conv.weight'], want['conv.weight'])
    mm = nc.load_checkpoint(DATA / 'mmcls.pth')
    assert list(nc.state_dict_of(mm, prefix='backbone')) == [k for k in keys if not k.startswith('fc')]
    assert list(nc.state_dict_of(mm, prefix='head.')) == ['fc.weight', 'fc.bias']
    assert nc.state_dict_of(mm, key='meta')['CLASSES'] == ['cat', 'dog']


def test_state_dict_of_order_of_candidates_and_errors():
    a, b, c = np.zeros(1), np.ones(1), np.full(1, 2.0)
    assert nc.state_dict_of({'model_ema': {'w': c}, 'model': {'w': b}})['w'] is b
    assert nc.state_dict_of({'model': 'resnet50', 'model_ema': {'w': c}})['w'] is c   # a name, skipped
    assert nc.state_dict_of({'state_dict': {'w': a}, 'model': {'w': b}})['w'] is a
    assert nc.state_dict_of({'w': a}) == {'w': a}
    with pytest.raises(ValueError, match="key 'model' is not in the checkpoint") as info:
        nc.state_dict_of({'w': a}, key='model')
    assert isinstance(info.value, KeyError)
    with pytest.raises(TypeError, match=r"checkpoint\['epoch'\] is a int"):
        nc.state_dict_of({'epoch': 3}, key='epoch')
    with pytest.raises(TypeError, match='checkpoint must be a dict'):
        nc.state_dict_of([a])
    with pytest.raises(ValueError, match=r"no key of checkpoint starts with 'module\.'.*'conv\.'"):
        nc.state_dict_of({'conv.weight': a}, prefix='module')
    with pytest.raises(ValueError, match='prefix must be'):
        nc.state_dict_of({'conv.weight': a}, prefix='.')


def test_a_config_object_from_a_missing_package_needs_stub_mode():
    with pytest.raises(nc.UnsafeCheckpointError, match=r'yacs\.config\.CfgNode is not in the allow-list'):
        nc.load_checkpoint(DATA / 'config_stub.pth')
    loaded = nc.load_checkpoint(DATA / 'config_stub.pth', unknown='stub')
    want = expected('training')
    for key, value in nc.state_dict_of(loaded).items():
        assert_same(value, want[key])
    config = loaded['config']
    assert isinstance(config, Stub) and config.name == 'yacs.config.CfgNode'
    assert config.state == {'__immutable__': False} and config.args == ()
    assert config.dictitems['SEED'] == 0 and config.dictitems['MODEL'].dictitems['TYPE'] == 'intern_image'
    assert 'yacs' not in sys.modules
    with pytest.raises(ValueError, match='can not be imported'):
        nc.load_checkpoint(DATA / 'config_stub.pth', allow=['yacs.config.CfgNode'])


# -- models saved whole (torch.save(model)) ----------------------------------------------------
def test_a_model_saved_whole_gives_the_state_dict_its_state_dict_would():
    with pytest.raises(nc.UnsafeCheckpointError, match=r'__main__\.WholeNet is a class of the script'):
        nc.load_checkpoint(DATA / 'whole_module.pth')
    whole = nc.load_checkpoint(DATA / 'whole_module.pth', unknown='stub')
    assert isinstance(whole, Stub) and whole.name == '__main__.WholeNet' and ck.is_pickled_module(whole)
    want = expected('whole_module')
    state = nc.state_dict_of(whole)
    assert list(state) == list(want)      # no non-persistent buffer, no None entry, the shared child twice
    assert 'scale' not in state and 'tied.weight' in state and 'features.1.num_batches_tracked' in state
    for key, value in state.items():
        assert_same(value, want[key], key)


def test_a_wrapped_model_saved_whole_inside_a_training_checkpoint():
    loaded = nc.load_checkpoint(DATA / 'whole_module_legacy.pth', unknown='stub')
    assert loaded['epoch'] == 7 and loaded['model'].name == 'torch.nn.parallel.data_parallel.DataParallel'
    assert ck.state_dict_key(loaded) == 'model'
    want = expected('whole_module')
    assert list(nc.state_dict_of(loaded)) == ['module.' + k for k in want]
    for key, value in nc.state_dict_of(loaded, prefix='module').items():
        assert_same(value, want[key], key)


def test_a_model_saved_whole_feeds_a_numpyconv_layer():
    state = nc.state_dict_of(nc.load_checkpoint(DATA / 'whole_module.pth', unknown='stub'))
    conv = nc.Conv2d(2, 3, 3, dtype=np.float32)
    conv.load_state_dict(nc.state_dict_of(state, prefix='features.0'))
    np.testing.assert_array_equal(conv.params['weight'], state['features.0.weight'])


def test_a_prefixed_state_dict_is_refused_with_the_prefix_to_strip():
    conv = nc.Conv2d(2, 3, 3, dtype=np.float32)
    prefixed = {'module.' + k: v for k, v in conv.state_dict().items()}
    with pytest.raises(ValueError, match=r"every key starts with 'module\.': numpyconv\.state_dict_of"
                                                r"\(checkpoint, prefix='module'\) strips it"):
        conv.load_state_dict(prefixed)
    conv.load_state_dict(nc.state_dict_of(prefixed, prefix='module'))
    with pytest.raises(KeyError) as info:                        # other keys: no hint
        conv.load_state_dict({'module.other': np.zeros(1)})
    assert 'every key starts' not in str(info.value)


def module_stub(name='Net', parameters=None, buffers=None, modules=None, **extra):
    stub = Stub(f'pkg.{name}')
    stub.state = dict(training=True, _parameters=dict(parameters or {}), _buffers=dict(buffers or {}),
                      _modules=dict(modules or {}), **extra)
    return stub


def test_pickled_module_trees_a_file_can_forge_are_refused_clearly(monkeypatch):
    loop = module_stub(parameters={'w': np.ones(2)})
    loop.state['_modules']['again'] = module_stub(modules={'back': loop})
    with pytest.raises(ValueError, match=r"'again\.back' contains itself"):
        nc.state_dict_of(loop)
    odd = module_stub(modules={'child': Stub('pkg.NotAModule')})
    with pytest.raises(ValueError, match=r"child 'child' is Stub\('pkg.NotAModule'\), not a torch.nn.Module"):
        nc.state_dict_of(odd)
    with pytest.raises(ValueError, match=r"_parameters of sub has a key 3 of type int"):
        nc.state_dict_of(module_stub(modules={'sub': module_stub(parameters={3: np.ones(1)})}))
    shared = module_stub(parameters={'w': np.ones(1)})
    for _ in range(30):                       # 2**30 paths through a few dozen objects
        shared = module_stub(modules={'a': shared, 'b': shared})
    monkeypatch.setattr(ck, '_MAX_MODULES', 10_000)
    with pytest.raises(ValueError, match='more than 10000 module visits'):
        nc.state_dict_of(shared)
    assert not ck.is_pickled_module(Stub('pkg.Net')) and not ck.is_pickled_module({'_parameters': {}})
    with pytest.raises(TypeError, match=r"dict or a pickled torch.nn.Module .*got Stub\('pkg.Net'\)"):
        nc.state_dict_of(Stub('pkg.Net'))


def test_the_saving_scripts_dangerous_names_stay_refused(tmp_path):
    path = tmp_path / 'main_eval.pkl'
    path.write_bytes(b'\x80\x02c__main__\neval\nX\x01\x00\x00\x001\x85R.')
    for unknown in ('error', 'stub'):
        with pytest.raises(nc.UnsafeCheckpointError, match=r'refused global __main__\.eval'):
            nc.load_checkpoint(path, unknown=unknown)
    with pytest.raises(ValueError, match='never allowed'):
        nc.load_checkpoint(DATA / 'whole_module.pth', allow=('__main__.WholeNet',))


def test_newobj_ex_of_an_unknown_class_is_a_stub_with_its_keywords(tmp_path):
    path = tmp_path / 'k.pkl'
    path.write_bytes(b'\x80\x04cunknown_mod\nCls\n\x8c\x01x\x85}\x8c\x01aK\x01s\x92.')
    with pytest.raises(nc.UnsafeCheckpointError, match='unknown_mod.Cls is not in the allow-list'):
        nc.load_checkpoint(path)
    stub = nc.load_checkpoint(path, unknown='stub')
    assert stub.name == 'unknown_mod.Cls' and stub.args == ('x',) and stub.kwargs == {'a': 1}


def test_allowed_globals_are_imported_and_called_as_pickle_would(tmp_path):
    path = tmp_path / 'fraction.pkl'
    path.write_bytes(pickle.dumps({'third': Fraction(1, 3)}, protocol=2))
    message = r"fractions\.Fraction.*allow=\('fractions\.Fraction',\)"
    with pytest.raises(nc.UnsafeCheckpointError, match=message):
        nc.load_checkpoint(path)
    assert nc.load_checkpoint(path, allow=('fractions.Fraction',)) == {'third': Fraction(1, 3)}
    stubbed = nc.load_checkpoint(path, unknown='stub')['third']
    assert isinstance(stubbed, Stub) and stubbed.name == 'fractions.Fraction' and stubbed.args == (1, 3)


@pytest.mark.parametrize('allow', [('os.system',), ('builtins.eval',), ('subprocess.Popen',),
                                   ('numpy.testing._private.utils.runstring',), ('pickle.loads',)])
def test_dangerous_names_can_not_be_allowed(allow):
    with pytest.raises(ValueError, match='is never allowed'):
        nc.load_checkpoint(DATA / 'training.pth', allow=allow)


def test_option_errors():
    with pytest.raises(ValueError, match="unknown must be 'error' or 'stub'"):
        nc.load_checkpoint(DATA / 'training.pth', unknown='ignore')
    with pytest.raises(TypeError, match='mmap must be a bool'):
        nc.load_checkpoint(DATA / 'training.pth', mmap=1)
    with pytest.raises(ValueError, match="'module.name' strings"):
        nc.load_checkpoint(DATA / 'training.pth', allow=['Fraction'])
    with pytest.raises(FileNotFoundError):
        nc.load_checkpoint(DATA / 'missing.pth')


# -- safetensors, npz, npy, plain pickles ----------------------------------------------------------
@pytest.mark.parametrize('mmap', [False, True])
def test_safetensors_with_bfloat16(mmap):
    loaded = nc.load_checkpoint(DATA / 'bf16.safetensors', mmap=mmap)
    want = expected('bf16')
    assert list(loaded) == list(want)
    for key, value in want.items():
        assert_same(loaded[key], value, key)
        assert loaded[key].flags.writeable is not mmap


@pytest.mark.parametrize('mmap', [False, True])
@pytest.mark.parametrize('name', ['arrays.npz', 'arrays_compressed.npz'])
def test_npz_as_numpy_reads_it(name, mmap):
    loaded = nc.load_checkpoint(DATA / name, mmap=mmap)
    with np.load(DATA / name) as f:
        assert list(loaded) == f.files
        for key in f.files:
            assert_same(loaded[key], f[key], key)
    assert loaded['fortran'].flags.f_contiguous
    if mmap and name == 'arrays.npz':
        assert not loaded['conv'].flags.writeable


def test_npy_and_plain_pickles(tmp_path):
    array = np.arange(6, dtype='>i2').reshape(2, 3)
    np.save(tmp_path / 'a.npy', array)
    assert_same(nc.load_checkpoint(tmp_path / 'a.npy'), array)
    obj = {'w': np.arange(3.0), 'n': np.int64(4), 's': {1, 2}, 'f': frozenset('ab'), 'c': 1 + 2j,
           'b': b'\x00\xff', 'ba': bytearray(b'xy'), 'r': range(3), 'sl': slice(1, None),
           'ns': types.SimpleNamespace(a=1, b=[2.5])}
    for protocol in range(6):
        (tmp_path / 'p.pkl').write_bytes(pickle.dumps(obj, protocol=protocol))
        loaded = nc.load_checkpoint(tmp_path / 'p.pkl')
        assert_same(loaded['w'], obj['w'])
        assert {k: v for k, v in loaded.items() if k != 'w'} == {k: v for k, v in obj.items() if k != 'w'}


def test_object_arrays_are_refused(tmp_path):
    (tmp_path / 'o.pkl').write_bytes(pickle.dumps(np.array([None, 1], dtype=object), protocol=2))
    with pytest.raises(nc.UnsafeCheckpointError, match='object arrays'):
        nc.load_checkpoint(tmp_path / 'o.pkl')
    np.savez(tmp_path / 'o.npz', a=np.array([{'x': 1}], dtype=object))
    with pytest.raises(ValueError, match='object arrays hold pickles'):
        nc.load_checkpoint(tmp_path / 'o.npz')


# -- hostile files: code --------------------------------------------------------------------------
def wrapped(name, container, tmp_path):
    """The evil pickle ``name`` as a plain file, as data.pkl of a zip archive, or as the object
    pickle of a legacy stream."""
    data = (DATA / f'evil_{name}.pkl').read_bytes()
    if container == 'plain':
        return DATA / f'evil_{name}.pkl'
    if container == 'zip':
        return write_zip(tmp_path / 'evil.pth', data)
    return write_legacy(tmp_path / 'evil.pth', data)


@pytest.mark.parametrize('unknown', ['error', 'stub'])
@pytest.mark.parametrize('container', ['plain', 'zip', 'legacy'])
@pytest.mark.parametrize('name', [n for n in EVIL if n != 'unknown_module'])
def test_payloads_are_refused_before_anything_runs(name, container, unknown, tmp_path):
    for leftover in glob.glob(PWNED + '*'):
        os.unlink(leftover)
    path = wrapped(name, container, tmp_path)
    with pytest.raises(nc.UnsafeCheckpointError,
                       match=r'os\.system|builtins\.e(val|xec)|subprocess\.Popen|extension codes'):
        nc.load_checkpoint(path, unknown=unknown)
    assert glob.glob(PWNED + '*') == []


@pytest.mark.parametrize('name', ['evil_reduce_zip.pth', 'evil_reduce_legacy.pth'])
def test_payload_fixtures_in_pytorch_files(name):
    with pytest.raises(nc.UnsafeCheckpointError, match=r'refused global os\.system'):
        nc.load_checkpoint(DATA / name, unknown='stub')
    assert glob.glob(PWNED + '*') == []


def test_build_on_loaded_objects_never_calls_setstate(tmp_path):
    """A second BUILD after putting ``__setstate__`` into an object's dict is the classic way to make
    pickle call it; here BUILD only fills the dict, with ordinary names."""
    stub = b'cunknown_pkg.mod\nfn\n'
    for name in (b'__setstate__', b'__reduce_ex__'):
        first = (b'\x80\x02ccollections\nOrderedDict\n)R}X' + struct.pack('<I', len(name)) + name + stub
                 + b'sb')
        (tmp_path / 'b.pkl').write_bytes(first + b'X\x03\x00\x00\x00argb.')
        with pytest.raises(nc.UnsafeCheckpointError, match=f"attribute '{name.decode()}' of a OrderedDict"):
            nc.load_checkpoint(tmp_path / 'b.pkl', unknown='stub')
    (tmp_path / 'b.pkl').write_bytes(b'\x80\x02ccollections\nOrderedDict\n)R}X\x01\x00\x00\x00x' + stub
                                     + b'sbX\x03\x00\x00\x00argb.')
    with pytest.raises(ValueError, match='must be a dict of attributes, got str'):
        nc.load_checkpoint(tmp_path / 'b.pkl', unknown='stub')
    (tmp_path / 'b.pkl').write_bytes(b'\x80\x02ccollections\nOrderedDict\n)R}X\x01\x00\x00\x00x' + stub
                                     + b'sb.')
    loaded = nc.load_checkpoint(tmp_path / 'b.pkl', unknown='stub')
    assert isinstance(loaded, OrderedDict) and isinstance(loaded.x, GlobalRef)
    assert loaded.x.name == 'unknown_pkg.mod.fn'


@pytest.mark.parametrize('opcodes, message', [
    (b'\x80\x02cos\nsystem\n.', 'refused global os.system'),
    (b'\x80\x02cposix\nsystem\n.', 'refused global posix.system'),
    (b'\x80\x02cnt\nsystem\n.', 'refused global nt.system'),
    (b'\x80\x02c__builtin__\ngetattr\n.', 'refused global builtins.getattr'),
    (b'\x80\x02cbuiltins\n__import__\n.', 'refused global builtins.__import__'),
    (b'\x80\x02cnumpy.testing._private.utils\nrunstring\n.', 'refused global numpy.testing'),
    (b'\x80\x02coperator\nattrgetter\n.', 'refused global operator.attrgetter'),
    (b'\x80\x02ctorch\nload\n.', 'refused global torch.load'),
    (b'\x80\x02ccollections\nOrderedDict\n(t\x81)b.', 'must be a dict of attributes'),
    (b'\x80\x02ccollections\nOrderedDict\n.', None),
    (b'\x80\x02c1bad\nname\n.', 'malformed global'),
    (b'\x80\x02ccollections\nOrderedDict\n)R)R.', 'not a global it named'),
    (b'\x80\x02N]\x81.', 'NEWOBJ arguments'),
    (b'\x80\x02X\x07\x00\x00\x00storageQ.', 'persistent ids are read only inside PyTorch'),
    (b'\x80\x05\x97.', 'out-of-band'),
    (b'\x80\x02\x83\x01\x00.', 'extension codes'),
    (b'\x80\x04csubprocess\nPopen\n)}\x92.', 'refused global subprocess.Popen'),
    (b'\x80\x04ccollections\nOrderedDict\n)}\x8c\x01aK\x01s\x92.', None),
])
def test_calling_opcodes_are_restricted(opcodes, message, tmp_path):
    (tmp_path / 'x.pkl').write_bytes(opcodes)
    for unknown in ('error', 'stub'):
        if message is None:         # harmless: a reference, or NEWOBJ_EX of an allowed class
            loaded = nc.load_checkpoint(tmp_path / 'x.pkl', unknown=unknown)
            assert isinstance(loaded, (GlobalRef, OrderedDict))
            continue
        with pytest.raises(ValueError, match=message.replace('.', r'\.')):
            nc.load_checkpoint(tmp_path / 'x.pkl', unknown=unknown)


def run_isolated(code):
    """Run ``code`` in a fresh interpreter (clean ``sys.modules``); returns its stdout."""
    env = dict(os.environ, PYTHONPATH=str(Path(nc.__file__).parent.parent))
    done = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_loading_a_malicious_file_imports_nothing_it_names():
    out = run_isolated(f"""
        import sys
        import numpyconv as nc
        before = set(sys.modules)
        for unknown in ('error', 'stub'):
            for name in ('evil_unknown_module.pkl', 'evil_reduce_zip.pth', 'evil_newobj.pkl',
                         'evil_obj.pkl', 'config_stub.pth'):
                try:
                    nc.load_checkpoint({str(DATA)!r} + '/' + name, unknown=unknown)
                except ValueError as exc:
                    print(type(exc).__name__)
        new = set(sys.modules) - before
        print('NEW', sorted(m for m in new if m.split('.')[0] in ('this', 'subprocess', 'yacs', 'os')))
        print('THIS' if 'this' in sys.modules else 'NO-THIS')
    """)
    assert 'NEW []' in out and 'NO-THIS' in out and 'Beautiful is better' not in out


def test_numpyconv_checkpoint_never_imports_torch(tmp_path):
    out = run_isolated(f"""
        import sys, glob
        import numpy as np
        import numpyconv as nc
        for path in glob.glob({str(DATA)!r} + '/*'):
            if not path.endswith('.py') and 'evil' not in path:
                nc.load_checkpoint(path, unknown='stub')
                nc.load_checkpoint(path, unknown='stub', mmap=True)
        for fmt in ('torch', 'safetensors', 'npz'):
            nc.save_checkpoint({{'w': np.ones(3, np.float32)}}, {str(tmp_path)!r} + '/x.' + fmt, format=fmt)
            nc.load_checkpoint({str(tmp_path)!r} + '/x.' + fmt)
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'safetensors')))
    """)
    assert out.strip() == '[]'


# -- hostile files: numbers -----------------------------------------------------------------------
def load_small(path, **kwargs):
    """Load a hostile file; the peak of memory allocated while trying stays under 8 MB."""
    tracemalloc.start()
    try:
        return nc.load_checkpoint(path, **kwargs)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 * 2 ** 20, f"{peak} bytes allocated"


@pytest.mark.parametrize('size, stride, offset, message', [
    ((2,), (1,), 3, 'reaches element 4 of storage 0, which holds 4'),
    ((2, 2), (2, 1), 1, 'reaches element 4'),
    ((5,), (1,), 0, 'reaches element 4'),
    ((2,), (-1,), 1, 'tensor stride entry must be an int >= 0'),
    ((-1,), (1,), 0, 'tensor size entry must be an int >= 0'),
    ((2,), (1,), -1, 'storage offset must be an int >= 0'),
    ((2 ** 40, 2 ** 40), (1, 1), 0, 'too large to address'),
    ((2 ** 20, 2 ** 20), (1, 1), 0, 'reaches element'),
    ((2 ** 62,), (0,), 0, 'too large to address'),
    ((2 ** 31, 2 ** 31, 2 ** 31), (0, 0, 0), 0, 'too large to address'),
    ((2,), (1, 1), 0, 'differ in length'),
    ((1,) * 65, (1,) * 65, 0, 'at most 64'),
    ((2.0,), (1,), 0, 'tensor size entry must be an int'),
    ((True,), (1,), 0, 'tensor size entry must be an int'),
    ('ab', (1,), 0, 'tensor size must be a tuple'),
])
def test_views_outside_their_storage_are_refused(size, stride, offset, message, tmp_path):
    obj = {'t': tensor('0', size, stride, offset, numel=4)}
    path = write_zip(tmp_path / 'v.pth', obj, {'0': floats(4)})
    with pytest.raises(ValueError, match=message):
        load_small(path)
    legacy = write_legacy(tmp_path / 'v_legacy.pth', {'t': tensor('0', size, stride, offset, numel=4,
                                                                  legacy=True)}, [('0', 4, floats(4))])
    with pytest.raises(ValueError, match=message):
        load_small(legacy)


def test_zero_size_tensors_accept_any_offset_as_pytorch_does(tmp_path):
    path = write_zip(tmp_path / 'z.pth', {'t': tensor('0', (0, 3), (3, 1), 100, numel=4)}, {'0': floats(4)})
    assert nc.load_checkpoint(path)['t'].shape == (0, 3)


@pytest.mark.parametrize('numel, data, message', [
    (10 ** 12, floats(4), r'needs 4000000000000 bytes, member .* holds 16'),
    (4, floats(3), 'needs 16 bytes'),
    (-1, floats(4), 'storage numel must be an int >= 0'),
])
def test_storage_sizes_are_checked_against_the_member(numel, data, message, tmp_path):
    path = write_zip(tmp_path / 's.pth', {'t': tensor('0', (1,), (1,), numel=numel)}, {'0': data})
    with pytest.raises(ValueError, match=message):
        load_small(path)


def test_legacy_storages_are_checked_against_the_file_before_allocation(tmp_path):
    path = write_legacy(tmp_path / 'l.pth', {'t': tensor('0', (1,), (1,), numel=10 ** 12, legacy=True)},
                        [('0', 4, floats(4))])
    with pytest.raises(ValueError, match='storages of 4000000000008 bytes are declared but the file has'):
        load_small(path)
    path = write_legacy(tmp_path / 'l2.pth', {'t': tensor('0', (1,), (1,), numel=4, legacy=True)},
                        [('0', 5, floats(4))])
    with pytest.raises(ValueError, match='holds 5 elements, the object pickle says 4'):
        load_small(path)
    path = write_legacy(tmp_path / 'l3.pth', {'t': tensor('0', (1,), (1,), numel=4, legacy=True)},
                        [('0', 4, floats(4))], keys=['0', '0'])
    with pytest.raises(ValueError, match='does not name each storage'):
        load_small(path)


@pytest.mark.parametrize('obj, storages, message', [
    ({'t': tensor('1', (1,), (1,), numel=1)}, {'0': floats(1)}, "storage 1 has no member 'archive/data/1'"),
    ([tensor('0', (1,), (1,), numel=1), tensor('0', (1,), (1,), numel=2)], {'0': floats(1)},
     'named with 8 and 4 bytes'),
    ({'t': tensor('0', (1,), (1,), numel=1, storage='QInt8Storage')}, {'0': b'\x00'},
     'quantized tensors are not supported'),
    ({'t': tensor('0', (1,), (1,), numel=1, storage='FooStorage')}, {'0': b'\x00'},
     'torch.FooStorage is not in the allow-list'),
    ({'t': Reduce(Global('torch._utils', '_rebuild_tensor_v2'), ('0', 0, (1,), (1,), False, hooks()))}, {},
     "storage must be a storage persistent id, got str"),
    ({'t': Reduce(Global('torch._utils', '_rebuild_tensor_v2'), ())}, {}, 'takes 6 or 7 arguments'),
    ({'t': Reduce(Global('torch._utils', '_rebuild_tensor_v2'),
                  (PersistentId(('storage', Global('torch', 'FloatStorage'), '0', 'cpu', 1)), 0,
                   (2 ** 16, 2 ** 16), (0, 0), False, hooks(), {'neg': True}))}, {'0': floats(1)},
     'expanded view'),
    ({'t': Reduce(Global('torch._utils', '_rebuild_tensor_v2'),
                  (PersistentId(('storage', Global('torch', 'FloatStorage'), '0', 'cpu', 1)), 0, (1,),
                   (1,), False, hooks(), {'sparse': True}))}, {'0': floats(1)}, 'metadata .* not understood'),
    ({'t': PersistentId(('module', Global('torch', 'FloatStorage'), 'x', 'y'))}, {}, "kind 'module' refused"),
    ({'t': PersistentId('storage')}, {}, 'must be a tuple'),
    ({'t': PersistentId(('storage', 'FloatStorage', '0', 'cpu', 1))}, {'0': floats(1)},
     'must be a torch storage class'),
    ({'t': Reduce(Global('torch._utils', '_rebuild_qtensor'), ())}, {}, 'quantized tensors are not'),
    ({'t': Reduce(Global('torch._utils', '_rebuild_tensor_v3'),
                  (PersistentId(('storage', Global('torch', 'UntypedStorage'), '0', 'cpu', 3)), 0, (1,), (1,),
                   False, hooks(), Global('torch', 'float32')))}, {'0': b'abc'},
     'not a whole number of float32 elements'),
    ({'t': Reduce(Global('torch._utils', '_rebuild_tensor_v3'),
                  (PersistentId(('storage', Global('torch', 'UntypedStorage'), '0', 'cpu', 1)), 0, (1,), (1,),
                   False, hooks(), Global('torch', 'float8_e4m3fn')))}, {'0': b'a'}, 'float8'),
])
def test_malformed_tensors_and_storages(obj, storages, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        load_small(write_zip(tmp_path / 'm.pth', obj, storages))


@pytest.mark.parametrize('opcodes, message', [
    (b'\x80\x02\x8b\xff\xff\xff\x7f.', 'needs 2147483647 bytes'),              # LONG4 past the end
    (b'\x80\x02X\xff\xff\xff\xff.', 'needs 4294967295 bytes'),                 # BINUNICODE past the end
    (b'\x80\x02\x8d' + b'\xff' * 8 + b'.', 'needs 18446744073709551615 bytes'),  # BINUNICODE8
    (b'\x80\x02\x96' + b'\xff' * 7 + b'\x7f.', 'bytes at byte'),                # BYTEARRAY8
    (b'\x80\x02h\x05.', 'memo slot 5 was never written'),
    (b'\x80\x02.', 'IndexError'),
    (b'\x80\x02t.', 'no MARK'),
    (b'\x80\x02\xff.', 'unknown pickle opcode 0xff'),
    (b'\x80\x07N.', 'protocol 7 is not supported'),
    (b'\x80\x02}]Ns.', 'not hashable'),
    (b'\x80\x02)Na.', 'APPEND to a tuple'),
    (b'\x80\x02]NNs.', 'SETITEM on a list'),
    (b'\x80\x02N', 'before its STOP'),
    (b'\x80\x02I' + b'9' * 5000 + b'\n.', 'INT of 5000 digits'),
    (b'\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R.', 'object arrays'),
    (b'\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R'
     b'C\x02ab\x86R.', 'needs 8 bytes, got 2'),
    (b'\x80\x02(' * 2000 + b'N.', None),                                       # deep MARKs: fine
])
def test_malformed_pickles_raise_value_errors(opcodes, message, tmp_path):
    (tmp_path / 'p.pkl').write_bytes(opcodes)
    if message is None:
        assert load_small(tmp_path / 'p.pkl') is None
        return
    with pytest.raises(ValueError, match=message):
        load_small(tmp_path / 'p.pkl')


def test_numpy_arrays_in_pickles_are_size_checked(tmp_path):
    data = bytearray(pickle.dumps(np.arange(4, dtype=np.float64), protocol=2))
    i = data.index(b'K\x04\x85')                      # the shape (4,) becomes (200,)
    data[i:i + 2] = b'K\xc8'
    (tmp_path / 'a.pkl').write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r'shape \(200,\) \(float64\) needs 1600 bytes, the file holds 32'):
        load_small(tmp_path / 'a.pkl')


# safetensors headers: (header, buffer, declared length or None, message)
GOOD = {'a': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 8]}}


@pytest.mark.parametrize('header, buffer, length, message', [
    (GOOD, floats(2), 10 ** 18, 'header of 1000000000000000000 bytes declared'),
    (GOOD, floats(2), 2 ** 64 - 1, 'header of'),
    ({'a': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 8]},
      'b': {'dtype': 'F32', 'shape': [2], 'data_offsets': [4, 12]}}, floats(3), None, 'tile the buffer'),
    ({'a': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 8]}}, floats(1), None, 'cover 8 bytes of a 4'),
    ({'a': {'dtype': 'F32', 'shape': [2], 'data_offsets': [8, 16]}}, floats(4), None, 'starts at byte 8'),
    ({'a': {'dtype': 'F32', 'shape': [3], 'data_offsets': [0, 8]}}, floats(2), None, 'needs 12 bytes'),
    ({'a': {'dtype': 'F32', 'shape': [2 ** 62, 2 ** 62], 'data_offsets': [0, 8]}}, floats(2), None, 'needs'),
    ({'a': {'dtype': 'F32', 'shape': [-2], 'data_offsets': [0, 8]}}, floats(2), None, 'int >= 0'),
    ({'a': {'dtype': 'F8_E4M3', 'shape': [2], 'data_offsets': [0, 2]}}, b'ab', None, "dtype 'F8_E4M3'"),
    ({'a': {'dtype': 'F32', 'shape': [2]}}, floats(2), None, 'exactly dtype, shape and data_offsets'),
    ([1, 2], b'', None, 'unknown format'),
    (b'{} ', b'', None, None),
    (b'{"a": 1, "a": 2}', b'', None, 'duplicate keys'),
    (b'{"a": ' + b'[' * 100000 + b']' * 100000 + b'}', b'', None, 'not valid JSON'),
    (b'{"a": \xff}', b'', None, 'not valid JSON'),
    ({'__metadata__': {'x': 1}}, b'', None, '__metadata__ must map strings to strings'),
])
def test_hostile_safetensors_headers(header, buffer, length, message, tmp_path):
    path = write_safetensors(tmp_path / 'h.safetensors', header, buffer, length)
    if message is None:
        assert load_small(path) == {}
        return
    if length is not None and length > 2 ** 40:          # a header this long is not taken for safetensors
        message = 'unknown format|header of'
    with pytest.raises(ValueError, match=message):
        load_small(path)


def test_npz_member_headers_are_checked(tmp_path):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.arange(4.0))
    data = buffer.getvalue().replace(b"(4,)", b"(4000000000000,)".ljust(4, b' ')[:4])
    text = buffer.getvalue().replace(b"'shape': (4,), }", b"'shape': (10**12,), }")
    for payload, message in ((data, '.npy|needs'), (text, 'not understood|needs')):
        with zipfile.ZipFile(tmp_path / 'h.npz', 'w') as z:
            z.writestr('a.npy', payload)
        with pytest.raises(ValueError, match=message):
            load_small(tmp_path / 'h.npz')
    with zipfile.ZipFile(tmp_path / 'h.npz', 'w') as z:
        z.writestr('a.txt', b'x')
    with pytest.raises(ValueError, match="neither data.pkl .* member 'a.txt'"):
        load_small(tmp_path / 'h.npz')


def test_zip_bombs_and_broken_archives(tmp_path):
    # a deflated data.pkl declaring far more bytes than deflate can produce from its data
    path = tmp_path / 'bomb.pth'
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as z:
        z.writestr('archive/data.pkl', b'\x80\x02N.' + b'\x00' * 1000)
    data = bytearray(path.read_bytes())
    central = data.index(b'PK\x01\x02')
    data[central + 24:central + 28] = struct.pack('<I', 2 ** 32 - 2)   # uncompressed size: 4 GB
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match='more than deflate can produce'):
        load_small(path)
    # two members whose data overlap (the same local header twice)
    path = write_zip(tmp_path / 'overlap.pth', {'t': tensor('0', (1,), (1,), numel=1)}, {'0': floats(1)})
    with zipfile.ZipFile(path) as z:
        offset = z.getinfo('archive/data/0').header_offset
    data = bytearray(path.read_bytes())
    entries = [i for i in range(len(data)) if data[i:i + 4] == b'PK\x01\x02']
    byteorder_entry = entries[1]
    data[byteorder_entry + 42:byteorder_entry + 46] = struct.pack('<I', offset)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match='overlap|local header'):
        load_small(path)
    # a member declared past the end of the file
    path = write_zip(tmp_path / 'past.pth', {'t': tensor('0', (1,), (1,), numel=1)}, {'0': floats(1)})
    data = bytearray(path.read_bytes())
    entry = [i for i in range(len(data)) if data[i:i + 4] == b'PK\x01\x02'][2]
    data[entry + 20:entry + 28] = struct.pack('<II', 10 ** 9, 10 ** 9)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match='past the end of the file'):
        load_small(path)
    # a member whose local header would be outside the file
    path = write_zip(tmp_path / 'outside.pth', {'t': tensor('0', (1,), (1,), numel=1)}, {'0': floats(1)})
    data = bytearray(path.read_bytes())
    entry = [i for i in range(len(data)) if data[i:i + 4] == b'PK\x01\x02'][2]
    data[entry + 42:entry + 46] = struct.pack('<I', len(data) + 100)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match='outside the file|not a readable zip'):
        load_small(path)


def test_corrupt_storage_bytes_fail_the_crc_check(tmp_path):
    data = bytearray((DATA / 'dtypes_zip.pth').read_bytes())
    with zipfile.ZipFile(DATA / 'dtypes_zip.pth') as z:
        info = z.getinfo('dtypes_zip/data/0')
    start = info.header_offset + 30 + len(info.filename) + 64
    position = data.index(b'PK\x03\x04', info.header_offset + 4) - 20
    assert position > start - 64
    data[position] ^= 0xFF
    (tmp_path / 'c.pth').write_bytes(bytes(data))
    with pytest.raises(ValueError, match='CRC-32|corrupt'):
        nc.load_checkpoint(tmp_path / 'c.pth')


FIXTURES = ['dtypes_zip.pth', 'dtypes_legacy.pth', 'training.pth', 'training_legacy.pth',
            'bf16.safetensors', 'arrays.npz', 'arrays_compressed.npz']


@pytest.mark.parametrize('name', FIXTURES)
def test_truncated_files_raise_value_errors(name, tmp_path):
    data = (DATA / name).read_bytes()
    cuts = sorted(set(np.linspace(0, len(data) - 1, 40).astype(int)) | set(range(len(data) - 24, len(data))))
    for cut in cuts:
        path = tmp_path / f'cut{cut}'
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError):
            nc.load_checkpoint(path)


@pytest.mark.parametrize('name', FIXTURES)
def test_corrupted_bytes_load_or_raise_value_errors(name, tmp_path):
    data = (DATA / name).read_bytes()
    rng = np.random.default_rng(sum(map(ord, name)))
    path = tmp_path / 'x'
    for trial in range(60):
        damaged = bytearray(data)
        for position in rng.integers(0, len(data), size=rng.integers(1, 4)):
            damaged[position] = rng.integers(0, 256)
        path.write_bytes(bytes(damaged))
        try:
            nc.load_checkpoint(path, unknown='stub')
        except ValueError:
            pass


def test_unknown_formats_are_named(tmp_path):
    for data, message in ((b'', 'empty file'), (b'hello world', 'unknown format'),
                          (b'\x00' * 300 + b'ustar', 'unknown format'),
                          (b'\x00' * 257 + b'ustar' + b'\x00' * 10, "tar archive: PyTorch's tar format")):
        (tmp_path / 'u').write_bytes(data)
        with pytest.raises(ValueError, match=message):
            nc.load_checkpoint(tmp_path / 'u')
    with zipfile.ZipFile(tmp_path / 'two.pth', 'w') as z:
        z.writestr('a/data.pkl', b'\x80\x02N.')
        z.writestr('b/data.pkl', b'\x80\x02N.')
    with pytest.raises(ValueError, match='2 data.pkl members'):
        nc.load_checkpoint(tmp_path / 'two.pth')
    (tmp_path / 'p').write_bytes(pickle.dumps(1, protocol=2) + b'more')
    with pytest.raises(ValueError, match='magic number is missing'):
        nc.load_checkpoint(tmp_path / 'p')


def test_any_archive_root_name_and_missing_byteorder(tmp_path):
    path = tmp_path / 'r.pth'
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('my model v2/data.pkl', Writer().dumps({'t': tensor('0', (2,), (1,), numel=2)}))
        z.writestr('my model v2/data/0', floats(2))
    assert_same(nc.load_checkpoint(path)['t'], np.arange(2, dtype=np.float32))
    with pytest.raises(ValueError, match="byteorder member says 'middle'"):
        nc.load_checkpoint(write_zip(tmp_path / 'b.pth', None, byteorder=b'middle'))


# -- writing ----------------------------------------------------------------------------------------
def sample_checkpoint():
    g = np.random.default_rng(0)
    state = OrderedDict([('conv.weight', g.standard_normal((4, 3, 3, 3)).astype(np.float32)),
                         ('conv.bias', np.zeros(4, np.float32)),
                         ('bn.num_batches_tracked', np.array(7, dtype=np.int64))])
    return {'state_dict': state, 'epoch': 90, 'lr': 0.1, 'name': 'résumé', 'flag': True, 'none': None,
            'big': 2 ** 70, 'neg': -5, 'c': 1.5 - 2j, 'tuple': (1, 'a', (2.5,)), 'list': [np.float32(2.5)],
            3: 'int key', (1, 'x'): 'tuple key',
            'arrays': [g.standard_normal((3, 2)).T, np.arange(10, dtype='>i4')[::3],
                       np.zeros((0, 2), np.int8), np.array([True, False]), np.arange(3, dtype=np.uint16),
                       np.array([1 + 1j], np.complex64), np.float16([1, 2]), np.uint8([255]), np.int16([-3]),
                       np.int32([7]), np.float64(3.0)]}


def assert_tree_equal(loaded, original, where='obj', native=True):
    if isinstance(original, (np.ndarray, np.generic)):
        want = np.asarray(original)
        assert_same(loaded, want.astype(want.dtype.newbyteorder('=')) if native else want, where)
    elif isinstance(original, dict):
        assert type(loaded) is type(original) and list(loaded) == list(original), where
        for k in original:
            assert_tree_equal(loaded[k], original[k], f"{where}[{k!r}]", native)
    elif isinstance(original, (list, tuple)):
        assert type(loaded) is type(original) and len(loaded) == len(original), where
        for i, (a, b) in enumerate(zip(loaded, original)):
            assert_tree_equal(a, b, f"{where}[{i}]", native)
    else:
        assert type(loaded) is type(original) and loaded == original, where


@pytest.mark.parametrize('mmap', [False, True])
def test_torch_format_round_trip(mmap, tmp_path):
    obj = sample_checkpoint()
    nc.save_checkpoint(obj, tmp_path / 'ck.pth')
    assert_tree_equal(nc.load_checkpoint(tmp_path / 'ck.pth', mmap=mmap), obj)
    with zipfile.ZipFile(tmp_path / 'ck.pth') as z:
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            if '/data/' in info.filename:
                assert (info.header_offset + 30 + len(info.filename) + len(info.extra)) % 64 == 0


def test_the_same_array_twice_shares_one_storage(tmp_path):
    w = np.arange(4.0)
    nc.save_checkpoint({'a': w, 'b': w, 'c': w.copy()}, tmp_path / 's.pth')
    loaded = nc.load_checkpoint(tmp_path / 's.pth')
    assert np.shares_memory(loaded['a'], loaded['b']) and not np.shares_memory(loaded['a'], loaded['c'])


@pytest.mark.parametrize('fmt', ['safetensors', 'npz'])
def test_flat_formats_round_trip(fmt, tmp_path):
    g = np.random.default_rng(1)
    obj = OrderedDict([('z.last', g.standard_normal((2, 3)).astype(np.float32).T), ('a', np.arange(5)),
                       ('mask', np.array([True])), ('half', np.float16([1.5])), ('empty', np.zeros((0, 3))),
                       ('scalar', np.array(2.0)), ('big', np.arange(3, dtype='>f8')), ('u', np.uint32([9]))])
    nc.save_checkpoint(obj, tmp_path / f'x.{fmt}', format=fmt)
    assert_tree_equal(nc.load_checkpoint(tmp_path / f'x.{fmt}'), dict(obj), native=fmt != 'npz')
    if fmt == 'npz':
        with np.load(tmp_path / 'x.npz') as f:
            assert f.files == list(obj)


@pytest.mark.parametrize('fmt', ['torch', 'safetensors'])
def test_bfloat16_keys_round_to_nearest_even(fmt, tmp_path):
    values = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.1415927, -0.0, np.inf, np.nan, 3.4e38, 1e-40],
                      np.float32)
    obj = {'w': values, 'b': values.astype(np.float64), 'keep': values}
    key = 'w'
    nc.save_checkpoint(obj, tmp_path / 'bf', format=fmt, bfloat16=[key, 'b'])
    loaded = nc.load_checkpoint(tmp_path / 'bf')
    want = np.array([1.0, 1.0, 1 + 2 ** -6, 3.140625, -0.0, np.inf, np.nan, np.inf, 2.0 ** -133], np.float32)
    for k in ('w', 'b'):
        assert loaded[k].dtype == np.float32
        np.testing.assert_array_equal(loaded[k], want)
    assert np.signbit(loaded['w'][4])
    assert_same(loaded['keep'], values)


def test_bfloat16_rounding_matches_a_reference():
    bits = np.random.default_rng(3).integers(0, 2 ** 32, size=20000, dtype=np.uint64).astype(np.uint32)
    bits[:4] = [0x3F808000, 0x3F818000, 0x7F7FFFFF, 0xFF800001]       # ties both ways, overflow, NaN
    x = bits.view(np.float32)
    got = ck.float32_to_bfloat16(x)
    for b, g in zip(bits.tolist(), got.tolist()):
        value = np.uint32(b).view(np.float32)
        if np.isnan(value):
            assert g == 0x7FC0
            continue
        low, high = b >> 16, (b >> 16) + 1
        rest = b & 0xFFFF
        want = high if rest > 0x8000 or (rest == 0x8000 and low & 1) else low
        assert g == want & 0xFFFF, hex(b)
    np.testing.assert_array_equal(ck.bfloat16_to_float32(got).view(np.uint32) & 0xFFFF, 0)


@pytest.mark.parametrize('obj, kwargs, error, message', [
    ({'a': {1, 2}}, {}, TypeError, r"obj\['a'\] is a builtins.set"),
    ({'a': [1, argparse.Namespace()]}, {}, TypeError, r"obj\['a'\]\[1\] is a argparse.Namespace"),
    ({'a': np.array(['x'])}, {}, TypeError, r"obj\['a'\] has dtype <U1"),
    ({'a': np.array([None], dtype=object)}, {}, TypeError, 'has dtype object'),
    ({'a': np.zeros(2, np.float128 if hasattr(np, 'float128') else 'M8[s]')}, {}, TypeError, 'has dtype'),
    ({b'k': 1}, {}, TypeError, 'has a key of type bytes'),
    ([b'bytes'], {}, TypeError, r'obj\[0\] is a builtins.bytes'),
    ({'a': np.ones(2)}, {'format': 'onnx'}, ValueError, "format must be 'torch', 'safetensors' or 'npz'"),
    ({'a': {'b': np.ones(2)}}, {'format': 'safetensors'}, TypeError, r"obj\['a'\] is a dict; safetensors"),
    ([np.ones(2)], {'format': 'npz'}, TypeError, 'takes a flat dict'),
    ({'a': np.ones(2)}, {'format': 'npz', 'bfloat16': ['a']}, ValueError, 'npz has no bfloat16'),
    ({'a': np.ones(2)}, {'bfloat16': ['b']}, ValueError, r"bfloat16 names \['b'\], which are not arrays"),
    ({'a': np.ones(2, np.int32)}, {'bfloat16': ['a']}, ValueError, 'holds int32 values, not floats'),
    ({'a': np.ones(2, np.int32)}, {'format': 'safetensors', 'bfloat16': 'a'}, ValueError, 'holds int32'),
    ({'__metadata__': np.ones(2)}, {'format': 'safetensors'}, TypeError, "not '__metadata__'"),
    ({'a': np.ones(2, np.complex128)}, {'format': 'safetensors'}, TypeError, 'safetensors does not hold'),
])
def test_save_errors_name_what_and_where(obj, kwargs, error, message, tmp_path):
    with pytest.raises(error, match=message):
        nc.save_checkpoint(obj, tmp_path / 'x', **kwargs)
    assert os.listdir(tmp_path) == []          # nothing written, not even a temporary file


def test_save_refuses_cycles(tmp_path):
    loop = {'a': []}
    loop['a'].append(loop)
    with pytest.raises(ValueError, match=r"obj\['a'\]\[0\] contains itself"):
        nc.save_checkpoint(loop, tmp_path / 'x')


def test_layers_state_dict_round_trip(tmp_path):
    layer = nc.ODConv2d(8, 8, 3, padding=1, rng=0)
    nc.save_checkpoint(layer.state_dict(), tmp_path / 'od.pth')
    other = nc.ODConv2d(8, 8, 3, padding=1, rng=1)
    other.load_state_dict(nc.load_checkpoint(tmp_path / 'od.pth'))
    for key, value in layer.state_dict().items():
        assert_same(other.state_dict()[key], value, key)


# -- cross-checks with PyTorch ----------------------------------------------------------------------
def torch_equal(torch, loaded, original, where='obj'):
    """``loaded`` (from torch.load) equals ``original`` (the NumPy tree that was saved)."""
    if isinstance(original, (np.ndarray, np.generic)):
        want = np.asarray(original)
        assert isinstance(loaded, torch.Tensor), where
        name = want.dtype.newbyteorder('=').name
        assert str(loaded.dtype) == f'torch.{name}'.replace('bool_', 'bool'), where
        assert tuple(loaded.shape) == want.shape, where
        np.testing.assert_array_equal(loaded.numpy(), want, err_msg=where)
    elif isinstance(original, dict):
        assert type(loaded) is type(original) and list(loaded) == list(original), where
        for k in original:
            torch_equal(torch, loaded[k], original[k], f"{where}[{k!r}]")
    elif isinstance(original, (list, tuple)):
        assert type(loaded) is type(original) and len(loaded) == len(original), where
        for i, (a, b) in enumerate(zip(loaded, original)):
            torch_equal(torch, a, b, f"{where}[{i}]")
    else:
        assert type(loaded) is type(original) and loaded == original, where


def test_torch_loads_what_numpyconv_saves(tmp_path):
    torch = pytest.importorskip('torch')
    obj = sample_checkpoint()
    nc.save_checkpoint(obj, tmp_path / 'ck.pth')
    for mapped in (False, True):
        torch_equal(torch, torch.load(tmp_path / 'ck.pth', weights_only=True, mmap=mapped), obj)


def test_torch_reads_numpyconv_bfloat16_as_its_own_rounding(tmp_path):
    torch = pytest.importorskip('torch')
    bits = np.random.default_rng(4).integers(0, 2 ** 32, size=5000, dtype=np.uint64).astype(np.uint32)
    bits[:3] = [0x3F808000, 0x3F818000, 0x7F7FFFFF]
    x = bits.view(np.float32)
    nc.save_checkpoint({'w': x}, tmp_path / 'bf.pth', bfloat16=['w'])
    loaded = torch.load(tmp_path / 'bf.pth', weights_only=True)['w']
    own = torch.from_numpy(x.copy()).to(torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    same = (loaded.view(torch.int16) == own.view(torch.int16)) | (torch.isnan(loaded) & torch.isnan(own))
    assert bool(same.all())
    torch.save({'w': own}, tmp_path / 'theirs.pth')
    np.testing.assert_array_equal(nc.load_checkpoint(tmp_path / 'theirs.pth')['w'], own.float().numpy())


def random_tensor(torch, g, dtype):
    shape = tuple(int(n) for n in torch.randint(0, 4, (int(torch.randint(0, 4, (1,), generator=g)),),
                                                generator=g))
    base = (torch.randn((6,) + shape, generator=g) * 50)
    if dtype == torch.bool:
        base = base > 0
    elif not dtype.is_floating_point and not dtype.is_complex:
        base = base.round()
    base = base.to(dtype)
    choice = int(torch.randint(0, 5, (1,), generator=g))
    if choice == 1 and base.dim() > 1:
        return base.transpose(0, -1)
    if choice == 2:
        return base[1:]
    if choice == 3 and base.dim() > 1:
        return base[::2, ..., :1]
    if choice == 4:
        return base[0]
    return base


def test_load_checkpoint_equals_torch_load_on_random_files(tmp_path):
    torch = pytest.importorskip('torch')
    g = torch.Generator().manual_seed(0)
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128]
    for trial in range(30):
        obj = OrderedDict()
        for i in range(int(torch.randint(1, 8, (1,), generator=g))):
            dtype = dtypes[int(torch.randint(0, len(dtypes), (1,), generator=g))]
            obj[f't{i}'] = random_tensor(torch, g, dtype)
        obj['shared'] = obj['t0'].reshape(-1)[:1]
        obj['nested'] = [obj['t0'], {'x': (obj['t0'], 3)}]
        for legacy in (False, True):
            path = tmp_path / f'r{trial}{legacy}.pth'
            torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
            ours, theirs = nc.load_checkpoint(path), torch.load(path, weights_only=True)
            compare_with_torch(torch, ours, theirs, f'trial {trial} legacy={legacy}')
            if theirs['t0'].untyped_storage().data_ptr() == theirs['shared'].untyped_storage().data_ptr():
                assert np.shares_memory(ours['t0'], ours['shared']) or ours['t0'].size == 0


def compare_with_torch(torch, ours, theirs, where):
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach()
        want = theirs.float().numpy() if theirs.dtype == torch.bfloat16 else theirs.numpy()
        assert_same(ours, want, where)
        assert ours.strides == tuple(s * ours.itemsize for s in theirs.stride()), where
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs), where
        for k in theirs:
            compare_with_torch(torch, ours[k], theirs[k], f"{where}[{k!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            compare_with_torch(torch, a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, where


def test_fixtures_match_torch_load():
    torch = pytest.importorskip('torch')
    for name in ('dtypes_zip.pth', 'dtypes_legacy.pth', 'training.pth', 'mmcls.pth', 'dataparallel.pth'):
        theirs = torch.load(DATA / name, weights_only=False)
        ours = nc.load_checkpoint(DATA / name)
        for key in theirs:
            if isinstance(theirs[key], (torch.Tensor, dict)):
                compare_with_torch(torch, ours[key], theirs[key], f'{name}[{key!r}]')


def test_whole_modules_pickled_by_torch_load_in_stub_mode(tmp_path):
    torch = pytest.importorskip('torch')
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    for legacy in (False, True):
        torch.save(model, tmp_path / 'm.pth', _use_new_zipfile_serialization=not legacy)
        with pytest.raises(nc.UnsafeCheckpointError, match='torch.nn.modules'):
            nc.load_checkpoint(tmp_path / 'm.pth')
        loaded = nc.load_checkpoint(tmp_path / 'm.pth', unknown='stub')
        assert isinstance(loaded, Stub) and loaded.name == 'torch.nn.modules.container.Sequential'
        conv = loaded.state['_modules']['0']
        assert conv.name == 'torch.nn.modules.conv.Conv2d'
        assert_same(conv.state['_parameters']['weight'], model[0].weight.detach().numpy())


def test_files_torch_writes_in_less_common_ways(tmp_path):
    torch = pytest.importorskip('torch')
    u16 = torch.tensor([1, 65535, 7], dtype=torch.int32).to(torch.uint16)
    torch.save({'u': u16}, tmp_path / 'u.pth', _use_new_zipfile_serialization=False)   # torch can not read it
    assert_same(nc.load_checkpoint(tmp_path / 'u.pth')['u'], np.array([1, 65535, 7], np.uint16))
    torch.serialization.set_crc32_options(False)                 # members with a zero CRC-32
    try:
        torch.save({'w': torch.arange(3.0)}, tmp_path / 'nocrc.pth')
    finally:
        torch.serialization.set_crc32_options(True)
    assert_same(nc.load_checkpoint(tmp_path / 'nocrc.pth')['w'], np.arange(3, dtype=np.float32))
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1))
    with warnings.catch_warnings():                              # TorchScript is deprecated
        warnings.simplefilter('ignore')
        torch.jit.save(torch.jit.script(module), tmp_path / 'ts.pt')
    with pytest.raises(nc.UnsafeCheckpointError, match='TorchScript archive'):
        nc.load_checkpoint(tmp_path / 'ts.pt')
    conv = nc.load_checkpoint(tmp_path / 'ts.pt', unknown='stub').state['0']
    assert_same(conv.state['weight'], module[0].weight.detach().numpy())
