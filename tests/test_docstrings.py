"""Every public op function and layer constructor documents its arguments (numpydoc).

For every public ``numpyconv.<op>_forward`` / ``<op>_backward``: a ``Parameters`` section naming each
parameter of its signature and a ``Returns`` section (a forward's ``cache`` entry naming its keys).
For every public layer class (a :class:`numpyconv.Module` subclass): a ``Parameters`` section, in
the class or the ``__init__`` docstring, naming each parameter of ``__init__`` (numpydoc gives a
constructor no ``Returns``).
"""
import inspect
import re

import pytest

import numpyconv
from numpyconv.module import Module

_SECTION = re.compile(r'^([ \t]*)(\w[\w ]*)\n\1-{3,}[ \t]*$', re.MULTILINE)
_ENTRY = re.compile(r'^([ \t]*)(\*{0,2}\w+(?:, *\*{0,2}\w+)*)[ \t]*(?::|$)', re.MULTILINE)


def _sections(doc):
    """``{title: body}`` of the numpydoc sections of ``doc`` (already dedented)."""
    heads = list(_SECTION.finditer(doc))
    return {h.group(2).strip(): doc[h.end():heads[k + 1].start() if k + 1 < len(heads) else len(doc)]
            for k, h in enumerate(heads)}


def _documented(body):
    """The names a ``Parameters`` section documents: ``name : type`` lines at its least indentation."""
    entries = list(_ENTRY.finditer(body))
    if not entries:
        return set()
    indent = min(len(e.group(1)) for e in entries)
    return {name.strip().lstrip('*') for e in entries if len(e.group(1)) == indent
            for name in e.group(2).split(',')}


def _signature_names(fn):
    return [p.name for p in inspect.signature(fn).parameters.values() if p.name != 'self']


def _public(predicate):
    names = sorted(n for n in dir(numpyconv) if not n.startswith('_'))
    return [(n, getattr(numpyconv, n)) for n in names if predicate(getattr(numpyconv, n))]


OPS = _public(lambda o: inspect.isfunction(o) and o.__name__.endswith(('_forward', '_backward')))
LAYERS = _public(lambda o: inspect.isclass(o) and issubclass(o, Module))


def _missing(doc, names):
    sections = _sections(inspect.cleandoc(doc or ''))
    if 'Parameters' not in sections:
        return ['the Parameters section']
    return sorted(set(names) - _documented(sections['Parameters']))


def test_the_lists_are_not_empty():
    assert len(OPS) > 40 and len(LAYERS) > 30


@pytest.mark.parametrize('name, fn', OPS, ids=[n for n, _ in OPS])
def test_op_documents_parameters_and_returns(name, fn):
    missing = _missing(fn.__doc__, _signature_names(fn))
    assert not missing, f"{name}: undocumented {missing}"
    assert 'Returns' in _sections(inspect.cleandoc(fn.__doc__)), f"{name}: no Returns section"


@pytest.mark.parametrize('name, fn', [(n, f) for n, f in OPS if n.endswith('_forward')],
                         ids=[n for n, _ in OPS if n.endswith('_forward')])
def test_forward_documents_its_cache(name, fn):
    """The ``cache`` entry of a forward's Returns says what the cache holds (its keys)."""
    returns = _sections(inspect.cleandoc(fn.__doc__ or '')).get('Returns', '')
    entry = re.search(r'^cache\b.*\n((?:[ \t]+\S.*\n?)+)', returns, re.MULTILINE)
    assert entry and '``' in entry.group(1), f"{name}: the cache entry of Returns names no keys"


@pytest.mark.parametrize('name, cls', LAYERS, ids=[n for n, _ in LAYERS])
def test_layer_documents_constructor_parameters(name, cls):
    sections = {}
    for part in (cls.__doc__, cls.__init__.__doc__ if '__init__' in vars(cls) else None):
        sections.update(_sections(inspect.cleandoc(part or '')))
    assert 'Parameters' in sections, f"{name}: no Parameters section"
    undocumented = set(_signature_names(cls.__init__)) - _documented(sections['Parameters'])
    assert not undocumented, f"{name}: undocumented {sorted(undocumented)}"


def _undocumented_example(a, b, c=1):
    """An op.

    Parameters
    ----------
    a : ndarray
        ``(N, C)``.
    b : ndarray
        ``(C,)``.

    Returns
    -------
    out : ndarray
    """


def test_the_check_fails_on_an_undocumented_parameter():
    assert _missing(_undocumented_example.__doc__, _signature_names(_undocumented_example)) == ['c']
    assert _missing('No sections here.', ['a']) == ['the Parameters section']
