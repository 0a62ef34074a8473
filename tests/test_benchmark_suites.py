"""`verify benchmarks list|fetch`: checksummed, atomic downloads, tested offline against a local
folder laid out like the repository."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import BENCHMARK_DATA
from verify import benchmark_suites
from verify.benchmark_suites import fetch, load_registry, registry_entry
from verify.cli import main
from verify.errors import InputError


@pytest.fixture
def fake_repo(tmp_path, monkeypatch) -> Path:
    """A two-suite 'repository' in tmp_path/repo and a registry of it, installed as the shipped one."""
    root = tmp_path / "repo"
    for suite, files in {"tiny": {"a.onnx": b"net", "specs/p.vnnlib": b"(assert true)"},
                         "other": {"x.csv": b"a,b,1\n"}}.items():
        for name, data in files.items():
            path = root / "benchmarks" / suite / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    entries = [registry_entry(root, n, f"{n} suite", "owner/repo", "0" * 40, f"benchmarks/{n}")
               for n in ("tiny", "other")]
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"suites": entries}))
    monkeypatch.setattr(benchmark_suites, "REGISTRY", registry)
    return root


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_fetch_from_a_local_source_copies_every_file(fake_repo, tmp_path, capsys):
    dest = tmp_path / "dest"
    dest.mkdir()
    assert main(["benchmarks", "fetch", "tiny", "--source", str(fake_repo), "--dest", str(dest)]) == 0
    assert "fetched tiny" in capsys.readouterr().out
    assert (dest / "tiny/specs/p.vnnlib").read_bytes() == b"(assert true)"
    assert (dest / "tiny/a.onnx").read_bytes() == b"net"
    assert _leftovers(dest) == ["tiny"]  # no temporary folder left behind


def test_checksum_mismatch_is_refused_in_one_line_and_writes_nothing(fake_repo, tmp_path, capsys):
    (fake_repo / "benchmarks/tiny/specs/p.vnnlib").write_bytes(b"(assert false)")
    dest = tmp_path / "dest"
    dest.mkdir()
    code = main(["benchmarks", "fetch", "tiny", "--source", str(fake_repo), "--dest", str(dest)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "tiny/specs/p.vnnlib: sha256" in err and "Traceback" not in err
    assert _leftovers(dest) == []


def test_missing_file_unknown_suite_and_existing_target_are_refused(fake_repo, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (fake_repo / "benchmarks/tiny/a.onnx").unlink()
    with pytest.raises(InputError, match="a.onnx: missing in --source"):
        fetch("tiny", dest, str(fake_repo))
    assert _leftovers(dest) == []
    with pytest.raises(InputError, match="unknown benchmark suite 'nope'.*other, tiny"):
        fetch("nope", dest, str(fake_repo))
    (dest / "other").mkdir()
    with pytest.raises(InputError, match="already exists"):
        fetch("other", dest, str(fake_repo))


def test_registry_paths_must_stay_inside_the_suite(fake_repo, tmp_path):
    registry = json.loads(benchmark_suites.REGISTRY.read_text())
    registry["suites"][1]["files"][0]["path"] = "../escape.csv"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(registry))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(InputError, match="not a path inside the suite"):
        fetch("other", dest, str(fake_repo), registry=load_registry(bad))
    assert _leftovers(dest) == [] and not (tmp_path / "escape.csv").exists()


def test_list_names_every_shipped_suite(capsys):
    assert main(["benchmarks", "list"]) == 0
    out = capsys.readouterr().out
    suites = load_registry()
    assert {"acasxu", "mnistfc", "verivital", "cifar10_resnet", "test"} <= set(suites)
    assert all(name in out for name in suites)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("bundled, suite, pattern, count", [
    ("acasxu", "acasxu", "*/*.*n*", 36), ("vnncomp2021/test", "test", "*/*.*n*", 9),
    ("vnncomp2021/verivital", "verivital", "*/*.*n*", 62),
    ("vnncomp2021/cifar10_resnet", "cifar10_resnet", "*/*.*n*", 18),
    ("mnist_fc", "mnistfc", "onnx/*.onnx", 3)])  # 2022's mnist_fc properties differ from 2021's
def test_shipped_checksums_match_the_bundled_copies(bundled, suite, pattern, count):
    """The bundled ONNX/VNN-LIB files are byte-identical copies of the upstream ones, so the
    registry's sha256 of each (found by file name) must be theirs."""
    by_name = {Path(f.path).name: f for f in load_registry()[suite].files}
    files = sorted(p for p in (BENCHMARK_DATA / bundled).glob(pattern)
                   if p.suffix in (".onnx", ".vnnlib"))
    assert len(files) == count
    for path in files:
        entry = by_name[path.name]
        assert (entry.size, entry.sha256) == (path.stat().st_size, _sha256(path)), path
