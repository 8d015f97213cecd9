"""Hostile and unusual checkpoints: each gets a value or a ValueError/TypeError naming the problem, never
a crash, a hang, a huge allocation or a private object. Files are built here from pickle opcodes and
zip members (no PyTorch needed, except the cross-checks at the end)."""
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import numpyconv as nc
from numpyconv import checkpoint as ck
from numpyconv import cli
from numpyconv._safe_pickle import MAX_KEY_DEPTH, MAX_SHARED_HASH


def G(module, name):
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def U(text):
    data = text.encode()
    return b'X' + struct.pack('<I', len(data)) + data


def Int(n):
    return b'K' + bytes([n]) if 0 <= n < 256 else b'J' + struct.pack('<i', n)


def T(*items):
    return b'(' + b''.join(items) + b't'


def call(func, *args):
    return func + T(*args) + b'R'


def P(body):
    return b'\x80\x02' + body + b'.'


NEG = b'}(' + U('neg') + b'\x88u'
HOOKS = call(G('collections', 'OrderedDict'))


def pid(key, numel, legacy=False):
    return T(U('storage'), G('torch', 'FloatStorage'), U(key), U('cpu'), Int(numel),
             *([b'N'] if legacy else [])) + b'Q'


def tensor(storage, n, *extra):
    return call(G('torch._utils', '_rebuild_tensor_v2'), storage, Int(0), T(Int(n)), T(Int(1)), b'\x89',
                HOOKS, *extra)


def write_zip(path, pickled, storages=(), compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, 'w', compress) as z:
        z.writestr('archive/data.pkl', pickled)
        for key, data in dict(storages).items():
            z.writestr(f'archive/data/{key}', data)
    return path


def write_legacy(path, pickled, storages):
    with open(path, 'wb') as f:
        for part in (ck.LEGACY_MAGIC, ck.LEGACY_PROTOCOL, {'little_endian': True}):
            f.write(pickle.dumps(part, protocol=2))
        f.write(pickled + pickle.dumps([k for k, _, _ in storages], protocol=2))
        for _, numel, data in storages:
            f.write(struct.pack('<q', numel) + data)
    return path


def load(tmp_path, data, name='p.pkl', **kwargs):
    (tmp_path / name).write_bytes(data)
    return nc.load_checkpoint(tmp_path / name, **kwargs)


def run(code):
    """Run ``code`` in a fresh interpreter (a crash must not take the test run down)."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, env=env)


# -- dict keys and set items ----------------------------------------------------------------------
DEEP_KEYS = {
    'dict key': b'}N' + b'\x85' * 200_000 + b'Ns',
    'set item': b'\x8f(N' + b'\x85' * 200_000 + b'\x90',
    'frozenset item': b'(N' + b'\x85' * 200_000 + b'\x91',
    'Counter key': call(G('collections', 'Counter'), b'](N' + b'\x85' * 200_000 + b'K\x01\x86e'),
}


@pytest.mark.parametrize('body', DEEP_KEYS.values(), ids=list(DEEP_KEYS))
def test_deeply_nested_tuple_keys_are_refused_before_hashing(body, tmp_path):
    (tmp_path / 'deep.pkl').write_bytes(P(body))
    result = run(f"import numpyconv as nc\ntry:\n nc.load_checkpoint({str(tmp_path / 'deep.pkl')!r})\n"
                 f"except ValueError as e:\n print('ValueError', e)")
    assert result.returncode == 0, result.stderr[-500:]
    assert f'nested more than {MAX_KEY_DEPTH} deep' in result.stdout


def test_deep_keys_inside_a_pytorch_zip(tmp_path):
    write_zip(tmp_path / 'deep.pth', P(DEEP_KEYS['dict key']))
    with pytest.raises(ValueError, match='deep.pth .*data.pkl.*nested more than'):
        nc.load_checkpoint(tmp_path / 'deep.pth')


def test_tuple_keys_up_to_the_depth_limit_load(tmp_path):
    key = None
    for _ in range(MAX_KEY_DEPTH):
        key = (key,)
    obj = {key: 1, ('a', 1): 2, 'b': 3}
    assert load(tmp_path, pickle.dumps(obj, protocol=2)) == obj


def test_memo_shared_tuples_are_measured_once_and_their_hashing_bounded(tmp_path):
    # t_k = (t_{k-1}, t_{k-1}): 60 levels, hashing t_60 would visit 2**60 elements
    body = b'N\x85q\x000' + b''.join(b'h%ch%c\x86q%c0' % (k, k, k + 1) for k in range(60))
    start = time.perf_counter()
    with pytest.raises(ValueError, match='hashing the tuple keys'):
        load(tmp_path, P(b'}' + body + b'h\x3cNs'))
    assert time.perf_counter() - start < 5
    # many keys sharing one deep tuple: each measured once, not once per key
    shared = b'N' + b'\x85' * 200 + b'q\x01'
    items = b''.join(Int(i) + b'h\x01\x86N' for i in range(1, 3000))
    loaded = load(tmp_path, P(b'}(' + shared + b'N' + items + b'u'))
    assert len(loaded) == 3000


def collide(n, make_key):
    return P(b'}(' + b''.join(make_key(i) + b'N' for i in range(1, n + 1)) + b'u')


def big_int(value):
    data = value.to_bytes((value.bit_length() + 8) // 8, 'little', signed=True)
    return b'\x8a' + bytes([len(data)]) + data


@pytest.mark.parametrize('make_key, n', [
    (lambda i: big_int(i * (2 ** 61 - 1)), 40_000),                        # ints hashing to 0
    (lambda i: big_int(i * (2 ** 61 - 1)) + b'\x85', 40_000),              # tuples of them
    (lambda i: b'G' + struct.pack('>d', 2.0 ** (61 * (i - 17))), 33),      # floats hashing to 1
], ids=['int', 'tuple', 'float'])
def test_keys_sharing_a_hash_are_refused_quickly(make_key, n, tmp_path):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f'more than {MAX_SHARED_HASH} distinct keys .* share the hash'):
        load(tmp_path, collide(n, make_key))
    assert time.perf_counter() - start < 5
    assert len(load(tmp_path, collide(MAX_SHARED_HASH, make_key))) == MAX_SHARED_HASH


def test_sets_with_colliding_items_are_refused(tmp_path):
    items = b''.join(big_int(i * (2 ** 61 - 1)) for i in range(1, 100))
    with pytest.raises(ValueError, match='share the hash'):
        load(tmp_path, P(b'\x8f(' + items + b'\x90'))
    with pytest.raises(ValueError, match='share the hash'):
        load(tmp_path, P(call(G('builtins', 'frozenset'), b'](' + items + b'e')))


def test_ordinary_keys_still_load(tmp_path):
    obj = {'a': 1, 0: 2, -1: 3, -2: 4, 2 ** 70: 5, 1.5: 6, None: 7, (1, 'x'): 8, True: 9, b'k': 10}
    assert load(tmp_path, pickle.dumps(obj, protocol=2)) == obj
    items = {frozenset({1, 2}), (3, (4,))}
    assert load(tmp_path, pickle.dumps(items, protocol=4)) == items


# -- memory ------------------------------------------------------------------------------------------
def test_repeated_copies_of_one_storage_are_bounded(tmp_path):
    n = 2 ** 20                                           # 4 MB of zeros, deflated to a few KB
    first = tensor(pid('0', n) + b'q\x01', n, NEG)
    body = b']q\x02(' + first + tensor(b'h\x01', n, NEG) * 200 + b'e'
    write_zip(tmp_path / 'amp.pth', P(body), {'0': b'\0' * 4 * n}, zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError, match='amp.pth .*copies made while loading would take'):
        nc.load_checkpoint(tmp_path / 'amp.pth')
    write_zip(tmp_path / 'few.pth', P(b']q\x02(' + first + tensor(b'h\x01', n, NEG) * 3 + b'e'),
              {'0': b'\0' * 4 * n}, zipfile.ZIP_DEFLATED)
    assert [float(a.sum()) for a in nc.load_checkpoint(tmp_path / 'few.pth')] == [0.0] * 4


@pytest.mark.parametrize('copy', [
    call(G('numpy._core.numeric', '_frombuffer'), b'h\x01', call(G('numpy', 'dtype'), U('f4'), b'\x89\x88'),
         T(Int(2 ** 16)), U('C')),
    call(G('builtins', 'bytearray'), b'h\x01'),
], ids=['frombuffer', 'bytearray'])
def test_repeated_copies_of_one_memoized_bytes_are_bounded(copy, tmp_path):
    data = b'B' + struct.pack('<I', 2 ** 18) + b'\0' * 2 ** 18 + b'q\x010'
    with pytest.raises(ValueError, match='copies made while loading would take'):
        load(tmp_path, P(data + b'](' + copy * 3000 + b'e'))
    assert len(load(tmp_path, P(data + b'](' + copy * 3 + b'e'))) == 3


def test_a_stored_pickle_is_interpreted_in_place(tmp_path):
    obj = {'x': list(range(1000))}
    write_zip(tmp_path / 'z.pth', pickle.dumps(obj, protocol=0).replace(b'(dp0', b'(dp0', 1))
    assert nc.load_checkpoint(tmp_path / 'z.pth') == obj
    assert nc.load_checkpoint(tmp_path / 'z.pth', mmap=True) == obj


# -- legacy streams ----------------------------------------------------------------------------------
def test_legacy_neg_conj_and_dtype_change_use_the_stored_values(tmp_path):
    values = np.array([1, -2.5, 3, 4], np.float32)
    cplx = np.array([1 + 2j, 3 - 4j], np.complex64)
    conj = (b'}(' + U('conj') + b'\x88u')
    complex_pid = T(U('storage'), G('torch', 'ComplexFloatStorage'), U('1'), U('cpu'), Int(2), b'N') + b'Q'
    obj = (b'}(' + U('n') + tensor(pid('0', 4, True), 4, NEG)
           + U('c') + call(G('torch._utils', '_rebuild_tensor_v2'),
                           complex_pid, Int(0), T(Int(2)), T(Int(1)), b'\x89', HOOKS, conj)
           + U('d') + call(G('torch._utils', '_rebuild_device_tensor_from_numpy'),
                           tensor(pid('0', 4, True), 4, NEG), G('torch', 'float64'), U('xla'), b'\x89')
           + b'u')
    storages = [('0', 4, values.tobytes()), ('1', 2, cplx.tobytes())]
    path = write_legacy(tmp_path / 'legacy.pth', P(obj), storages)
    loaded = nc.load_checkpoint(path)
    np.testing.assert_array_equal(loaded['n'], -values)
    np.testing.assert_array_equal(loaded['c'], np.conj(cplx))
    assert loaded['d'].dtype == np.float64
    np.testing.assert_array_equal(loaded['d'], -values.astype(np.float64))


def test_a_neg_bit_on_a_bool_tensor_is_refused(tmp_path):
    obj = call(G('torch._utils', '_rebuild_tensor_v2'),
               T(U('storage'), G('torch', 'BoolStorage'), U('0'), U('cpu'), Int(1), b'N') + b'Q',
               Int(0), T(Int(1)), T(Int(1)), b'\x89', HOOKS, NEG)
    with pytest.raises(ValueError, match='bool tensor with the negation bit'):
        nc.load_checkpoint(write_legacy(tmp_path / 'b.pth', P(obj), [('0', 1, b'\x01')]))


def test_legacy_files_in_pickle_protocol_1_and_0(tmp_path):
    def legacy(protocol, pid_text=False):
        with open(tmp_path / 'p.pth', 'wb') as f:
            for part in (ck.LEGACY_MAGIC, ck.LEGACY_PROTOCOL, {'little_endian': True}):
                f.write(pickle.dumps(part, protocol=protocol))
            obj = (b'(dp0\nVw\np1\n' + call(G('torch._utils', '_rebuild_tensor_v2'),
                                            b'P0\n' if pid_text else pid('0', 2, True),
                                            Int(0), T(Int(2)), T(Int(1)), b'I00\n', HOOKS) + b's.')
            f.write(obj + pickle.dumps(['0'], protocol=protocol) + struct.pack('<q', 2)
                    + np.array([1, 2], np.float32).tobytes())
        return tmp_path / 'p.pth'
    np.testing.assert_array_equal(nc.load_checkpoint(legacy(1))['w'], [1, 2])
    with pytest.raises(ValueError, match='pickle protocol 0 writes persistent ids as text'):
        nc.load_checkpoint(legacy(0, pid_text=True))


# -- no private objects --------------------------------------------------------------------------------
DTYPE = call(G('numpy', 'dtype'), U('f8'), b'\x89\x88')
DTYPE_STATE = T(Int(3), U('>'), b'N', b'N', b'N', b'J\xff\xff\xff\xff', b'J\xff\xff\xff\xff', Int(0))


def test_numpy_values_without_their_build(tmp_path):
    assert load(tmp_path, P(DTYPE)) == np.dtype('f8')
    assert load(tmp_path, P(b']' + DTYPE + b'a')) == [np.dtype('f8')]
    reconstruct = call(G('numpy.core.multiarray', '_reconstruct'), G('numpy', 'ndarray'), T(Int(0)),
                       b'C\x01b')
    with pytest.raises(ValueError, match='NumPy array is used before its data'):
        load(tmp_path, P(reconstruct))
    # the list's copy was used before BUILD changes the byte order: refused, not two different values
    with pytest.raises(ValueError, match='after its value was used'):
        load(tmp_path, P(b']' + DTYPE + b'q\x01a' + b'h\x01' + DTYPE_STATE + b'b' + b'a'))
    built = load(tmp_path, P(b']' + DTYPE + b'q\x01' + DTYPE_STATE + b'b' + b'a' + b'h\x01a'))
    assert built == [np.dtype('>f8')] * 2 and built[1].byteorder == '>'


def test_a_storage_alone_loads_as_its_elements(tmp_path):
    values = np.arange(4, dtype=np.float32)
    body = b'}(' + U('s') + pid('0', 4) + b'q\x01' + U('t') + tensor(b'h\x01', 4) + b'u'
    loaded = nc.load_checkpoint(write_zip(tmp_path / 's.pth', P(body), {'0': values.tobytes()}))
    assert type(loaded['s']) is np.ndarray
    np.testing.assert_array_equal(loaded['s'], values)
    assert np.shares_memory(loaded['s'], loaded['t'])
    legacy = write_legacy(tmp_path / 'l.pth', P(b'}(' + U('s') + pid('0', 4, True) + b'u'),
                          [('0', 4, values.tobytes())])
    np.testing.assert_array_equal(nc.load_checkpoint(legacy)['s'], values)


# -- messages and paths ------------------------------------------------------------------------------
def safetensors(path, header, buffer=b''):
    import json
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack('<Q', len(text)) + text + buffer)
    return path


@pytest.mark.parametrize('dtype, shape, message', [
    (['F32'], [1], r"tensor 'w' has dtype \['F32'\]"),
    ({'a': 1}, [1], "tensor 'w' has dtype"),
    ('F32', [0, 2 ** 100], "tensor 'w': shape .* not possible"),
    ('F32', [-1], "tensor 'w' shape entry must be"),
])
def test_safetensors_messages_name_the_file_and_tensor(dtype, shape, message, tmp_path):
    header = {'w': {'dtype': dtype, 'shape': shape, 'data_offsets': [0, 4 if shape == [1] else 0]}}
    path = safetensors(tmp_path / 's.safetensors', header, b'\0' * 4 if shape == [1] else b'')
    with pytest.raises(ValueError, match=rf's\.safetensors .*{message}'):
        nc.load_checkpoint(path)


@pytest.mark.parametrize('header, data, message', [
    ("{'descr': '<f4', 'fortran_order': 1, 'shape': (1,), }", b'\0' * 4, 'fortran_order must be True'),
    ("{'descr': '|S0', 'fortran_order': False, 'shape': (4, 4), }", b'', 'dtype |S0 has no size'),
    ("{'descr': '|V0', 'fortran_order': False, 'shape': (2,), }", b'', 'dtype |V0 has no size'),
])
def test_npy_messages_name_the_fault(header, data, message, tmp_path):
    text = header.encode('latin1')
    with zipfile.ZipFile(tmp_path / 'a.npz', 'w') as z:
        z.writestr('a.npy', b'\x93NUMPY\x01\x00' + struct.pack('<H', len(text)) + text + data)
    with pytest.raises(ValueError, match=f"a.npz .*a.npy: .*{message}"):
        nc.load_checkpoint(tmp_path / 'a.npz')


def test_paths_that_are_not_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.pth') as missing:
        nc.load_checkpoint(tmp_path / 'missing.pth')
    assert isinstance(missing.value, ValueError) and isinstance(missing.value, ck.CheckpointPathError)
    with pytest.raises(IsADirectoryError, match=str(tmp_path)) as directory:
        nc.load_checkpoint(tmp_path)
    assert isinstance(directory.value, ValueError)
    if os.path.exists('/dev/zero'):
        with pytest.raises(ck.CheckpointPathError, match='not a regular file'):
            nc.load_checkpoint('/dev/zero')
    (tmp_path / 'empty').write_bytes(b'')
    with pytest.raises(ValueError, match='size 0'):
        nc.load_checkpoint(tmp_path / 'empty')


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='no named pipes')
def test_a_named_pipe_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / 'fifo')
    result = run(f"import numpyconv as nc\ntry:\n nc.load_checkpoint({str(tmp_path / 'fifo')!r})\n"
                 f"except ValueError as e:\n print('ValueError', e)")
    assert 'not a regular file' in result.stdout, result.stderr[-500:]


def test_save_to_a_directory_or_a_missing_folder_names_the_path(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"'{tmp_path}'$") as directory:
        nc.save_checkpoint({'a': np.zeros(1)}, tmp_path)
    assert isinstance(directory.value, ValueError)
    target = tmp_path / 'no' / 'such' / 'w.pth'
    with pytest.raises(FileNotFoundError, match="w.pth'$") as missing:
        nc.save_checkpoint({'a': np.zeros(1)}, target)
    assert isinstance(missing.value, ValueError) and '.tmp' not in str(missing.value)
    assert os.listdir(tmp_path) == []


# -- saving ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('fmt', ['torch', 'safetensors', 'npz'])
def test_masked_arrays_are_refused(fmt, tmp_path):
    masked = np.ma.masked_array([1.0, -999.0], mask=[False, True])
    with pytest.raises(TypeError, match=r"obj\['m'\] is a masked array"):
        nc.save_checkpoint({'m': masked}, tmp_path / 'm', format=fmt)


def test_deep_nesting_is_refused_when_saving(tmp_path):
    deep = []
    for _ in range(ck._MAX_SAVE_DEPTH - 2):
        deep = [deep]
    nc.save_checkpoint({'x': deep}, tmp_path / 'ok.pth')              # the dict and 199 lists
    assert nc.load_checkpoint(tmp_path / 'ok.pth')['x'] == deep
    for obj in ([deep], {(((((),),),),): [deep]}):
        with pytest.raises(ValueError, match='nested more than'):
            nc.save_checkpoint({'x': obj}, tmp_path / 'deep.pth')
    key = ()
    for _ in range(ck._MAX_SAVE_DEPTH):
        key = (key,)
    with pytest.raises(ValueError, match='nested more than'):
        nc.save_checkpoint({key: 1}, tmp_path / 'deep.pth')


# -- numpyconv inspect -------------------------------------------------------------------------------
def test_inspect_answers_in_one_line_for_hostile_files(tmp_path, capsys):
    (tmp_path / 'deep.pkl').write_bytes(P(DEEP_KEYS['dict key']))
    assert cli.main(['inspect', str(tmp_path / 'deep.pkl')]) == 1
    assert 'nested more than' in capsys.readouterr().err


# -- cross-checks with PyTorch -----------------------------------------------------------------------
def test_legacy_files_with_lazy_bits_equal_torch_load(tmp_path):
    torch = pytest.importorskip('torch')
    obj = {'z': torch.tensor([1 + 2j, 3 - 4j]).conj(), 'n': torch._neg_view(torch.tensor([1.0, 2.0])),
           's': torch.arange(3.0).untyped_storage()}
    for new in (True, False):
        for protocol in (1, 2):
            torch.save(obj, tmp_path / 'x.pth', _use_new_zipfile_serialization=new, pickle_protocol=protocol)
            loaded = nc.load_checkpoint(tmp_path / 'x.pth')
            np.testing.assert_array_equal(loaded['z'], obj['z'].resolve_conj().numpy())
            np.testing.assert_array_equal(loaded['n'], obj['n'].resolve_neg().numpy())
            np.testing.assert_array_equal(loaded['s'], np.frombuffer(bytes(obj['s']), np.uint8))
