"""The documentation's links point at real things.

For README.md and every Markdown file under docs/: each relative link reaches an existing file (and,
for a ``page.md#anchor`` link, a heading of that page), every docs page is reachable from
docs/index.md, and a link whose text names code, ``[`losses/gan.py: r1_penalty`](...)`` or
``[`models/gan.py: GAN.update_ema`](...)``, points at that file and the file defines that name
(checked with ``ast``, so renaming a function breaks the test, never a docs reader).
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = sorted([REPO / "README.md", *DOCS.rglob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
# [text](target) or [text](target "title"); text may hold `code` but no brackets; images (![..]) included
_LINK = re.compile(r"\[(?P<text>[^\[\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_TEXT = re.compile(r"^`?(?P<path>[\w./-]+\.py)\s*:\s*(?P<name>[A-Za-z_][\w.]*)`?$")
_EXTERNAL = ("http://", "https://", "mailto:")


def links(text: str) -> list[tuple[str, str]]:
    """(text, target) of every Markdown link outside fenced code blocks."""
    return [(m["text"].strip(), m["target"]) for m in _LINK.finditer(_FENCE.sub("", text))]


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces -> hyphens."""
    anchors = set()
    for line in _FENCE.sub("", markdown).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


@lru_cache(maxsize=None)
def definitions(path: Path) -> frozenset[str]:
    """Names a Python file defines: top-level functions, classes and assignments, and ``Class.member``
    for the methods and attributes of its classes (nested classes too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(prefix + node.name)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.Assign):
                names.update(prefix + t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(prefix + node.target.id)

    visit(tree.body, "")
    return frozenset(names)


def check_page(page: Path) -> list[str]:
    """Every problem with the links of ``page``, as readable lines (empty: all good)."""
    problems = []
    for text, target in links(page.read_text()):
        if target.startswith(_EXTERNAL):
            continue
        where = f"{page.parent.name}/{page.name}: [{text}]({target})"
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            problems.append(f"{where}: {resolved} does not exist")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved.read_text()):
            problems.append(f"{where}: {resolved.name} has no heading with anchor #{anchor}")
        code = _CODE_TEXT.match(text)
        if code is None:
            continue
        if resolved.suffix != ".py" or not resolved.as_posix().endswith("/" + code["path"].lstrip("./")):
            problems.append(f"{where}: the text names {code['path']} but the link goes to {file_part}")
        elif code["name"] not in definitions(resolved):
            problems.append(f"{where}: {resolved.name} defines no {code['name']}")
    return problems


def test_the_docs_exist():
    assert (DOCS / "index.md").is_file() and len(PAGES) > 2


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_reach_real_files_and_code_links_name_real_definitions(page):
    problems = check_page(page)
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_index():
    index = DOCS / "index.md"
    linked = {(index.parent / target.partition("#")[0]).resolve() for _, target in links(index.read_text())}
    missing = [str(p.relative_to(REPO)) for p in DOCS.rglob("*.md") if p != index and p.resolve() not in linked]
    assert not missing, f"docs/index.md does not link to {missing}"


def test_the_checker_catches_what_it_is_meant_to(tmp_path):
    """A renamed function, a wrong file, a missing file and a missing heading are all reported."""
    (tmp_path / "code.py").write_text("class Model:\n    def sample(self):\n        pass\n\ndef loss():\n    pass\n")
    (tmp_path / "other.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[`code.py: Model.sample`](code.py) [`code.py:loss`](code.py) [page](other.md#a-heading) [web](https://x.y)\n"
        "```\n[in a code block](nowhere.md)\n```\n"
    )
    assert check_page(page) == []
    page.write_text(
        "[`code.py: renamed_loss`](code.py)\n[`code.py: Model.decode`](code.py)\n[`other.py: loss`](code.py)\n"
        "[gone](missing.md)\n[bad anchor](other.md#no-such-heading)\n"
    )
    problems = check_page(page)
    assert len(problems) == 5, problems
    for expected in ("no renamed_loss", "no Model.decode", "names other.py", "missing.md does not exist",
                     "#no-such-heading"):
        assert any(expected in p for p in problems), (expected, problems)
