"""Every ```python block in README.md and docs/*.md runs (in the repository root), so the docs
cannot rot."""

from __future__ import annotations

import re

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks():
    for page in PAGES:
        for k, code in enumerate(BLOCK.findall(page.read_text())):
            yield pytest.param(page, code, id=f"{page.name}#{k}")


@pytest.mark.parametrize("page, code", list(_blocks()))
def test_code_block_runs(page, code, monkeypatch):
    monkeypatch.chdir(REPO)
    exec(compile(code, f"{page.name}", "exec"), {"__name__": "__docs__"})


def test_every_page_has_runnable_code_or_is_reference():
    assert any(BLOCK.search(p.read_text()) for p in PAGES)
