"""Full VNN-COMP benchmark suites, downloaded from their public repositories with checksums.

The repository ships small subsets in benchmarks/data; `verify benchmarks fetch NAME` brings a
whole suite. The registry (benchmark_suites.json, next to this module) pins each suite to one
repository commit and lists every file with its size and sha256. A fetch writes into a temporary
folder beside the destination and renames it into place only when every file matched: a failed
or interrupted fetch leaves nothing behind. `source` may be a URL prefix (a mirror) or a local
folder laid out like the repository (used by the tests, offline).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from .errors import InputError

REGISTRY = Path(__file__).with_name("benchmark_suites.json")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SuiteFile:
    path: str  # relative to the suite's folder in the repository, '/'-separated
    size: int
    sha256: str


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    repository: str  # owner/name on GitHub
    commit: str
    folder: str  # the suite's folder inside the repository
    files: tuple[SuiteFile, ...]

    @property
    def url(self) -> str:
        """Raw-file URL prefix of the suite's folder at the pinned commit."""
        return f"https://raw.githubusercontent.com/{self.repository}/{self.commit}/{self.folder}"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def load_registry(path: Optional[Path] = None) -> dict[str, Suite]:
    """The suites of a registry JSON file (default: the shipped one), by name."""
    path = REGISTRY if path is None else path
    try:
        data = json.loads(Path(path).read_text())
        return {s["name"]: Suite(s["name"], s["description"], s["repository"], s["commit"],
                                 s["folder"], tuple(SuiteFile(**f) for f in s["files"]))
                for s in data["suites"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a readable benchmark registry ({exc})") from None


def registry_entry(root: Path, name: str, description: str, repository: str, commit: str,
                   folder: str) -> dict:
    """A registry entry for the suite at root/folder (a local checkout of `repository` at
    `commit`): every file under it with its size and sha256. How the shipped registry was made."""
    base = Path(root) / folder
    if not base.is_dir():
        raise InputError(f"{base}: no such folder")
    files = [{"path": p.relative_to(base).as_posix(), "size": p.stat().st_size,
              "sha256": _sha256_of(p)} for p in sorted(base.rglob("*")) if p.is_file()]
    return {"name": name, "description": description, "repository": repository,
            "commit": commit, "folder": folder, "files": files}


def describe(suites: dict[str, Suite]) -> str:
    """`verify benchmarks list`: one line per suite."""
    width = max((len(n) for n in suites), default=4)
    return "\n".join(f"{s.name:<{width}}  {len(s.files):4d} files {s.size / 1e6:7.1f} MB  "
                     f"{s.description} ({s.repository}@{s.commit[:7]})"
                     for s in suites.values())


def fetch(name: str, dest: Path, source: Optional[str] = None,
          registry: Optional[dict[str, Suite]] = None) -> Path:
    """Download suite `name` into dest/name, every file checked against the registry's sha256.

    `source`: None (the suite's GitHub repository), a URL prefix standing for the repository
    root, or a local folder laid out like the repository. Returns the suite's folder. Raises
    InputError (one line; nothing written) on an unknown name, an existing target, a missing
    file or a checksum mismatch."""
    suites = load_registry() if registry is None else registry
    if name not in suites:
        raise InputError(f"unknown benchmark suite '{name}' (known: {', '.join(sorted(suites))})")
    suite = suites[name]
    dest = Path(dest)
    target = dest / name
    if target.exists():
        raise InputError(f"{target}: already exists (remove it or choose another --dest)")
    if not dest.is_dir():
        raise InputError(f"{dest}: the destination folder does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=dest))
    try:
        for f in suite.files:
            relative = PurePosixPath(f.path)
            if relative.is_absolute() or ".." in relative.parts:
                raise InputError(f"registry entry {name}/{f.path}: not a path inside the suite")
            out = tmp.joinpath(*relative.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with _open(suite, f.path, source) as stream, out.open("wb") as sink:
                digest = _sha256(stream, sink)
            if digest != f.sha256:
                raise InputError(f"{name}/{f.path}: sha256 {digest[:16]}... does not match the "
                                 f"registry's {f.sha256[:16]}... (fetch refused, nothing written)")
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _open(suite: Suite, path: str, source: Optional[str]):
    """A binary stream of one file of the suite, from GitHub, a URL prefix or a local folder."""
    if source is not None and "://" not in source:
        local = Path(source) / suite.folder / path
        if not local.is_file():
            raise InputError(f"{local}: missing in --source {source} (fetch of {suite.name} "
                             f"refused, nothing written)")
        return local.open("rb")
    base = suite.url if source is None else f"{source.rstrip('/')}/{suite.folder}"
    url = f"{base}/{path}"
    try:
        return urllib.request.urlopen(url, timeout=60)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"{url}: download failed ({reason}; fetch of {suite.name} refused, "
                         f"nothing written)") from None


def _sha256(stream, sink=None) -> str:
    """The sha256 of what `stream` holds, copied on the way to `sink` when given."""
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest()


def _sha256_of(path: Path) -> str:
    with Path(path).open("rb") as stream:
        return _sha256(stream)
