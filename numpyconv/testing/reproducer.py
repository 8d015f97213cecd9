"""The reproducer of a conformance failure: a Python script, NumPy and numpyconv only.

The script embeds every array of the (shrunk) case exactly (``np.array([...], dtype=...)`` with
each float written as its shortest round-trip repr), imports the candidate by name when it can be
imported (a module-level function; a function of a script run as ``__main__`` is imported from the
script's file), calls numpyconv's forward and backward and the candidate on copies, and checks
output, gradients and unchanged inputs with the tolerance rule of the run. It raises
``AssertionError`` (or the candidate's own exception) while the candidate disagrees, and prints a
line when it conforms.
"""
import math
import sys
import textwrap
from pathlib import Path

import numpy as np

WIDTH = 100

_CHECK = '''
def check(name, got, want):
    """|got - want| <= max(RTOL |want|, ATOL s), s = max(1, max |want|); NaN meets NaN."""
    if want is None or got is None:
        if got is not want:
            problems.append(f"{name}: candidate gave {type(got).__name__}, numpyconv {type(want).__name__}")
        return
    if not isinstance(got, np.ndarray) or got.shape != want.shape or got.dtype != want.dtype:
        problems.append(f"{name}: candidate gave {type(got).__name__} {getattr(got, 'shape', '')} "
                        f"{getattr(got, 'dtype', '')}, numpyconv {want.shape} {want.dtype}")
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    finite = np.abs(w[np.isfinite(w)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    with np.errstate(all='ignore'):
        bad = ~(np.abs(g - w) <= np.maximum(RTOL * np.abs(w), ATOL * scale))
    bad &= ~((g == w) | (np.isnan(g) & np.isnan(w)))
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        problems.append(f"{name}{list(at)}: candidate {float(g[at])!r}, numpyconv {float(w[at])!r} "
                        f"({int(bad.sum())} of {bad.size} elements differ)")


def unchanged(call, given, original):
    for name, a, b in zip(NAMES, given, original):
        if isinstance(b, np.ndarray) and not np.array_equal(a, b, equal_nan=b.dtype.kind == 'f'):
            problems.append(f"{call} modified its input {name}")


def copies(values):
    return [v.copy() if isinstance(v, np.ndarray) else v for v in values]
'''


def _float_text(v):
    if math.isnan(v):
        return 'np.nan'
    if math.isinf(v):
        return 'np.inf' if v > 0 else '-np.inf'
    return repr(v)


def array_source(a):
    """``np.array([...], dtype=np.<dtype>).reshape(<shape>)`` giving back ``a`` exactly."""
    if a.size == 0:
        return f"np.zeros({a.shape}, dtype=np.{a.dtype.name})"
    values = a.ravel().tolist()
    items = [_float_text(float(v)) for v in values] if a.dtype.kind == 'f' else [str(int(v)) for v in values]
    body = textwrap.wrap(', '.join(items), WIDTH - 4, break_long_words=False, break_on_hyphens=False)
    inner = body[0] if len(body) == 1 else '\n    ' + '\n    '.join(body) + '\n'
    return f"np.array([{inner}], dtype=np.{a.dtype.name}).reshape({a.shape})"


def _value_source(value):
    if isinstance(value, np.ndarray):
        return array_source(value)
    if isinstance(value, tuple) and any(isinstance(v, np.ndarray) for v in value):
        return '(' + ', '.join(_value_source(v) for v in value) + ')'
    return repr(value)


def importable(fn):
    """``(module, name, sys_path_entry)`` such that ``from module import name`` gives ``fn``, or None.

    A function of a script run as ``__main__`` is imported from the script's file (its name without
    ``.py``); ``sys_path_entry`` is the directory to put on ``sys.path`` (None for numpyconv's own).
    """
    module, name = getattr(fn, '__module__', None), getattr(fn, '__qualname__', None)
    loaded = sys.modules.get(module) if module else None
    if loaded is None or not name or '<' in name or '.' in name or getattr(loaded, name, None) is not fn:
        return None
    path = getattr(loaded, '__file__', None)
    if module == '__main__':
        if not path:
            return None
        return Path(path).stem, name, str(Path(path).resolve().parent)
    if module.split('.')[0] == 'numpyconv' or not path:
        return module, name, None
    path = Path(path).resolve()
    depth = module.count('.') + (1 if path.name == '__init__.py' else 0)
    return module, name, str(path.parents[depth])


def _candidate_lines(fn, role, ref):
    """Lines that bind ``role`` ('forward' / 'backward') to the candidate."""
    if ref is not None:                                   # 'module:function' given on the command line
        module, name = ref.split(':', 1)
        bind = f"from {module} import {name} as {role}" if '.' not in name else \
            f"{role} = __import__('importlib').import_module({module!r}).{name}"
        return [f"sys.path.insert(0, {str(Path.cwd())!r})", bind]
    found = importable(fn)
    if found is None:
        return [f"def {role}(*args, **kwargs):   # the candidate {role} could not be imported by name",
                f"    raise NotImplementedError('put the candidate {role} here: {fn!r}')"]
    module, name, root = found
    lines = [] if root is None else [f"sys.path.insert(0, {root!r})"]
    return lines + [f"from {module} import {name} as {role}"]


def _header(settings, failure):
    shrunk = f"shrunk in {failure.shrink_calls} candidate calls" if failure.shrink_calls else "not shrunk"
    first = failure.error.message.splitlines()[0]
    text = [f"Conformance failure of {settings.op} ({settings.dtype}): {first}", '',
            f"From numpyconv.testing.check_against (seed {settings.seed}, case {failure.case}: "
            f"{failure.label}; {shrunk}). Run it: it raises AssertionError while the candidate "
            f"disagrees with numpyconv.{settings.op}.", '', f"Layout: {settings.spec.layout}."]
    lines = [wrapped for paragraph in text for wrapped in (textwrap.wrap(paragraph, WIDTH) or [''])]
    return ['"""' + lines[0]] + lines[1:] + ['"""']


def reproducer(settings, failure, forward, backward, names=None):
    """The script reproducing ``failure`` (a :class:`~numpyconv.testing.conformance.Failure`)."""
    spec, names = settings.spec, names or (None, None)
    required = spec.required()
    lines = _header(settings, failure) + ['import sys', '', 'import numpy as np', '', 'import numpyconv', '']
    bind = _candidate_lines(forward, 'forward', names[0])
    if backward is not None:
        bind += _candidate_lines(backward, 'backward', names[1])
    lines += [line for k, line in enumerate(bind) if not line.startswith('sys.path') or line not in bind[:k]]
    lines.append('')
    for name, value in failure.kwargs.items():
        lines.append(f"{name} = {_value_source(value)}")
    if settings.backward:
        lines.append(f"dout = {_value_source(failure.dout)}")
    names_in_order = list(failure.kwargs)
    lines += [f"NAMES = {tuple(names_in_order)!r}",
              f"args = ({', '.join(required)}{',' if len(required) == 1 else ''})   # positionally",
              f"kwargs = dict({', '.join(f'{n}={n}' for n in names_in_order if n not in required)})",
              f"RTOL, ATOL = {settings.rtol!r}, {settings.atol!r}",
              'problems = []']
    lines += _CHECK.splitlines()
    lines += ['', '',
              f"want, cache = numpyconv.{spec.name}_forward(*args, **kwargs)",
              'given = copies(args) + copies(kwargs.values())',
              f"got = forward(*given[:{len(required)}], **dict(zip(kwargs, given[{len(required)}:])))"]
    lines += _output_checks(spec)
    lines.append("unchanged('forward', given, list(args) + list(kwargs.values()))")
    if settings.backward:
        grad_names = tuple('d' + n for n in spec.arrays)
        lines += [f"want_grads = numpyconv.{spec.name}_backward(dout, cache)",
                  'given = copies(args) + copies(kwargs.values())',
                  f"got_grads = backward({_dout_copy(failure.dout)}, *given[:{len(required)}], "
                  f"**dict(zip(kwargs, given[{len(required)}:])))",
                  'if not isinstance(got_grads, (tuple, list)) or len(got_grads) != len(want_grads):',
                  f"    problems.append(f'backward returned {{type(got_grads).__name__}}, expected "
                  f"{len(grad_names)} gradients')",
                  'else:',
                  f"    for name, g, w in zip({grad_names!r}, got_grads, want_grads):",
                  '        check(name, g, w)',
                  "unchanged('backward', given, list(args) + list(kwargs.values()))"]
    lines += ["assert not problems, 'the candidate disagrees with numpyconv:\\n' + '\\n'.join(problems)",
              f"print('the candidate agrees with numpyconv.{spec.name} on this case')"]
    return '\n'.join(lines) + '\n'


def _output_checks(spec):
    if len(spec.outputs) == 1:
        return [f"check({spec.outputs[0]!r}, got, want)"]
    return [f"if not isinstance(got, (tuple, list)) or len(got) != {len(spec.outputs)}:",
            f'    problems.append(f"forward returned {{type(got).__name__}}, expected {spec.outputs}")',
            'else:',
            f"    for name, g, w in zip({spec.outputs!r}, got, want):",
            '        check(name, g, w)']


def _dout_copy(dout):
    if isinstance(dout, tuple):
        return 'tuple(None if d is None else d.copy() for d in dout)'
    return 'dout.copy()'
