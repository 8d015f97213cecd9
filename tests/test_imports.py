"""The package's imports point one way: no cycle (imports inside functions included), ``import
numpyconv`` loads no plain-loop reference, and nothing in the package reads the test suite."""
import ast
import subprocess
import sys
from pathlib import Path

import numpyconv

PACKAGE = Path(numpyconv.__file__).resolve().parent


def module_name(path):
    """``numpyconv/conv.py`` -> ``numpyconv.conv``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob('*.py')}


def imported_modules(name, path):
    """The numpyconv modules ``name`` imports anywhere in its source (functions included): for
    ``from X import a``, the submodule ``X.a`` when there is one, else ``X`` itself."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def import_graph():
    return {name: imported_modules(name, path) for name, path in MODULES.items()}


def cycles(graph):
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_every_module():
    graph = import_graph()
    assert 'numpyconv.conv' in graph['numpyconv'] and 'numpyconv.im2col' in graph['numpyconv.conv']
    assert 'numpyconv.gradcheck' in graph['numpyconv.check']      # an import at module level ...
    assert 'numpyconv.check' in graph['numpyconv.cli']             # ... and one inside a function


def test_no_import_cycle_not_even_through_imports_inside_functions():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_op_modules_do_not_import_the_self_test_registry():
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if deps & {'numpyconv.selftest_cases', 'numpyconv.check'})
    assert users == ['numpyconv.check', 'numpyconv.cli']


def test_import_numpyconv_loads_no_reference_module():
    code = ("import sys, numpyconv\n"
            "print(sorted(m for m in sys.modules if m.startswith('numpyconv.reference')))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == '[]'


def test_the_package_reads_nothing_from_the_test_suite():
    """``numpyconv bench`` and the rest run from an installed wheel: no path into ``tests/``."""
    for name, path in MODULES.items():
        strings = {node.value for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not any(s == 'tests' or s.startswith('tests/') for s in strings), name
