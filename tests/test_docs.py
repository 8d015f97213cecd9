"""The documentation holds together: equation citations, relative links, no references outside the repository.

* Every ``(eq. N)`` the code cites exists on the derivation page of its technique, and every
  ``(<page> eq. N)`` on the page named, in the code and in the Markdown files; each page numbers its
  equations once (``\\tag{N}``).
* Every relative link of the Markdown files resolves to a file of the repository.
* No product file names a folder of notes that does not ship, nor speaks of its development history.
"""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ROOT / 'docs' / 'derivations'
PAGE_NAMES = sorted(p.stem for p in PAGES.glob('*.md') if p.stem != 'README')

# Modules whose derivation page is not named after them; the others cite docs/derivations/<module>.md.
PAGE_OF = {
    'activations': 'blocks', 'dropout': 'blocks', 'layers': 'blocks', 'optim': 'blocks',
    'pooling': 'blocks', 'upsample': 'blocks',
    'conv_transpose': 'conv', 'gemm': 'conv', 'im2col': 'conv',
    '_bilinear': 'deformable',
}

_ITEM = r'\d+[a-z]?'
CITATION = re.compile(
    rf"(?:\b(?P<page>{'|'.join(PAGE_NAMES)})(?:\.md)?,?\s+)?"
    rf"eqs?\.\s*\(?(?P<items>{_ITEM}(?:\s*(?:,|-|–|and|to)\s*{_ITEM}\b)*)")
PAGE_CITATION = re.compile(      # in Markdown: "conv.md eq. 6", "[conv.md](conv.md) eq. (6)"
    rf"\b(?P<page>{'|'.join(PAGE_NAMES)})\.md(?:\]\([^)]*\))?,?\s+"
    rf"eqs?\.\s*\(?(?P<items>{_ITEM}(?:\s*(?:,|-|–|and|to)\s*{_ITEM}\b)*)")
TAG = re.compile(r'\\tag\{([^}]+)\}')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)[^)]*\)')

# Text files a user of the product reads or runs.
PRODUCT_GLOBS = ['README.md', 'pyproject.toml', 'docs/**/*.md', 'docs/**/*.py', 'docs/**/*.txt',
                 'numpyconv/**/*.py', 'tests/**/*.py', 'examples/**/*.py', 'examples/**/*.md',
                 'benchmarks/**/*.py', '.ci/*']
FORBIDDEN = ['specs' + '/', '../' + 'shared', 'specs' + ' README', 'specification' + ' README']
# The product speaks of the product: phrases of development history (the narrow, unambiguous ones).
HISTORY = re.compile(r'\b(?:s[e]ssions?|target met|we tried|prototype|previously)\b', re.IGNORECASE)


def equations(page):
    """The equation labels of ``docs/derivations/<page>.md`` (its ``\\tag{...}``), as a list."""
    return TAG.findall((PAGES / f'{page}.md').read_text(encoding='utf-8'))


def cited(items):
    """The labels a citation names: '6, 7' -> 6, 7; '6-8' -> 6, 7, 8; '22a-22b' -> 22a, 22b."""
    labels = []
    for part in re.split(r'\s*(?:,|and)\s*', items):
        ends = re.split(r'\s*(?:-|–|to)\s*', part)
        if len(ends) == 2 and ends[0].isdigit() and ends[1].isdigit():
            labels += [str(i) for i in range(int(ends[0]), int(ends[1]) + 1)]
        else:
            labels += ends
    return labels


def module_page(path):
    """The derivation page a module's bare ``(eq. N)`` refers to, or None."""
    stem = path.stem
    if path.parent.name == 'reference' or path.parent.name == 'numpyconv':
        stem = PAGE_OF.get(stem, stem)
        return stem if stem in PAGE_NAMES else None
    return None


def citing_modules():
    return sorted(p for p in (ROOT / 'numpyconv').rglob('*.py') if CITATION.search(p.read_text('utf-8')))


def product_files():
    seen = set()
    for pattern in PRODUCT_GLOBS:
        for path in ROOT.glob(pattern):
            if path.is_file() and path != pathlib.Path(__file__).resolve() and path not in seen:
                seen.add(path)
                yield path


def markdown_files():
    return sorted([ROOT / 'README.md'] + list((ROOT / 'docs').rglob('*.md')) +
                  list((ROOT / 'examples').glob('*.md')))


@pytest.mark.parametrize('page', PAGE_NAMES)
def test_each_page_numbers_its_equations_once(page):
    labels = equations(page)
    assert labels, f'{page}.md has no numbered equation'
    twice = sorted({label for label in labels if labels.count(label) > 1})
    assert not twice, f'{page}.md numbers these equations more than once: {twice}'


@pytest.mark.parametrize('path', citing_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_equation_exists(path):
    own = module_page(path)
    missing = []
    for number, line in enumerate(path.read_text('utf-8').splitlines(), 1):
        for match in CITATION.finditer(line):
            page = match['page'] or own
            if page is None:
                missing.append(f'line {number}: {match[0]!r} names no page (write "<page>.md eq. N")')
                continue
            absent = [label for label in cited(match['items']) if label not in equations(page)]
            if absent:
                missing.append(f'line {number}: {match[0]!r}: {page}.md has no equation {", ".join(absent)}')
    assert not missing, f'{path.relative_to(ROOT)}:\n' + '\n'.join(missing)


@pytest.mark.parametrize('path', markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_cites_existing_equations(path):
    missing = [f'{match[0]!r}: {match["page"]}.md has no equation {label}'
               for match in PAGE_CITATION.finditer(path.read_text('utf-8'))
               for label in cited(match['items']) if label not in equations(match['page'])]
    assert not missing, f'{path.relative_to(ROOT)}:\n' + '\n'.join(missing)


def test_citation_parsing():
    found = [(m['page'], cited(m['items'])) for m in CITATION.finditer(
        '(eq. 6, 7) (conv.md eq. 5-7) (blocks.md, eqs. 2-4, 22a) eq. (3a) (dcnv3 eq. 2)')]
    assert found == [(None, ['6', '7']), ('conv', ['5', '6', '7']), ('blocks', ['2', '3', '4', '22a']),
                     (None, ['3a']), ('dcnv3', ['2'])]


@pytest.mark.parametrize('path', markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = []
    for target in LINK.findall(path.read_text('utf-8')):
        if re.match(r'[a-z][a-z0-9+.-]*:', target) or target.startswith('#'):
            continue                                                     # a URL or an anchor of the page
        resolved = (path.parent / target.split('#')[0]).resolve()
        if not resolved.exists() or ROOT not in resolved.parents:
            broken.append(target)
    assert not broken, f'{path.relative_to(ROOT)} links to what the repository does not hold: {broken}'


def test_no_product_file_names_notes_that_do_not_ship():
    found = []
    for path in product_files():
        text = path.read_text('utf-8', errors='replace')
        for number, line in enumerate(text.splitlines(), 1):
            found += [f'{path.relative_to(ROOT)}:{number}: {word}' for word in FORBIDDEN if word in line]
    assert not found, '\n'.join(found)


def test_no_product_file_speaks_of_development_history():
    found = [f'{path.relative_to(ROOT)}:{number}: {line.strip()}'
             for path in product_files()
             for number, line in enumerate(path.read_text('utf-8', errors='replace').splitlines(), 1)
             if HISTORY.search(line)]
    assert not found, '\n'.join(found)
