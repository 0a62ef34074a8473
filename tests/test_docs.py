"""The docs cannot rot: every ```python block in README.md, CONTRIBUTING.md and docs/*.md runs (in
the repository root); every page has runnable code or is listed as reference; relative links
resolve; `verify SUBCOMMAND` names a real subcommand; no page points outside the repository;
docs/architecture.md names only modules,
paths and names that exist."""

from __future__ import annotations

import importlib
import re

import pytest

from conftest import REPO
from verify.cli import build_parser

PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
REFERENCE_ONLY = {"CONTRIBUTING.md"}  # habits and commands, no Python to run
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
COMMAND = re.compile(r"^\s*(?:\$ )?verify ([a-z][a-z0-9-]*)", re.M)
QUOTED = re.compile(r"`([^`\s]+)`")


def _ids(pages):
    return [pytest.param(p, id=p.name) for p in pages]


def _blocks():
    for page in PAGES:
        for k, code in enumerate(BLOCK.findall(page.read_text())):
            yield pytest.param(page, code, id=f"{page.name}#{k}")


@pytest.mark.parametrize("page, code", list(_blocks()))
def test_code_block_runs(page, code, monkeypatch):
    monkeypatch.chdir(REPO)
    exec(compile(code, f"{page.name}", "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("page", _ids(PAGES))
def test_page_has_runnable_code_or_is_reference(page):
    has_code = bool(BLOCK.search(page.read_text()))
    assert has_code != (page.name in REFERENCE_ONLY), \
        f"{page.name}: {'has code, drop it from' if has_code else 'no ```python block; add one or list it in'} REFERENCE_ONLY"


@pytest.mark.parametrize("page", _ids(PAGES))
def test_links_resolve_and_commands_exist(page):
    text = page.read_text()
    for target in LINK.findall(text):
        if "://" not in target and not target.startswith("mailto:"):
            assert (page.parent / target).exists(), f"{page.name}: link to missing {target}"
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    for name in COMMAND.findall(text):
        assert name in subcommands, f"{page.name}: 'verify {name}' is not a subcommand"
    outside = "/".join(("..", "shared"))  # the workspace's folder beside the repository
    assert outside not in text, f"{page.name} names {outside}, which users do not have"


def _defined_somewhere(name: str) -> bool:
    """`name` is a module / package of verify, or defined (def, class, assignment, parameter)
    in its sources."""
    if (REPO / "verify" / f"{name}.py").is_file() or (REPO / "verify" / name).is_dir():
        return True
    pattern = re.compile(rf"(def|class) {re.escape(name)}\b|^\s*{re.escape(name)}\s*[:=]|"
                         rf"\b{re.escape(name)}: ", re.M)
    return any(pattern.search(p.read_text()) for p in (REPO / "verify").rglob("*.py"))


def _resolves(dotted: str) -> bool:
    """verify.a.b.name: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_architecture_names_only_what_exists():
    text = (REPO / "docs/architecture.md").read_text()
    tokens = set(QUOTED.findall(text))
    missing = []
    for token in sorted(tokens):
        if token.startswith("verify."):
            ok = _resolves(token)
        elif "/" in token:
            ok = "<" in token or (REPO / token.rstrip("/")).exists()
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", token):
            ok = _defined_somewhere(token)
        else:
            continue
        if not ok:
            missing.append(token)
    assert len(tokens) > 40
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"
