"""Output files (`--out`): refused before any work when they cannot be written, and written whole
or not at all.

    out = check_output_file(path)            # InputError now, not a traceback after the work
    with atomic_path(out) as tmp:            # write tmp (any writer: text, savefig, pulp, ...)
        ...                                  # success: tmp replaces out; failure: tmp removed
    write_text_atomically(path, text)        # the two together, for text

Every OSError (permission, read-only file system, full disk) becomes a one-line InputError naming
the path, which the CLI prints with exit code 2.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence, Union

from .errors import InputError

PathLike = Union[str, Path]


def cannot_write(path: PathLike, error: OSError) -> InputError:
    """The one-line error for an OSError met while writing `path`."""
    return InputError(f"{path}: cannot be written ({error.strerror or error})")


def _probe(folder: Path, path: PathLike) -> None:
    """Create and remove a scratch file in `folder`: the one test of writability that holds for
    every user (root included) and file system."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise cannot_write(path, error) from None


def check_output_file(path: PathLike) -> Path:
    """`path` as a Path, once its folder exists and takes a new file; InputError otherwise."""
    out = Path(path)
    if not out.parent.is_dir():
        raise InputError(f"{path}: {out.parent} is a file, not a folder" if out.parent.exists()
                         else f"{path}: the folder {out.parent} does not exist")
    if out.is_dir():
        raise InputError(f"{path}: a folder is there; give a file name")
    _probe(out.parent, path)
    return out


def check_output_folder(path: PathLike, names: Sequence[str] = ()) -> Path:
    """`path` as a folder (made if missing) that takes new files, among them `names` (none of
    which may be a folder there); InputError otherwise, before anything is written."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{path}: a file is there; --out takes a folder")
    for name in names:
        if (out / name).is_dir():
            raise InputError(f"{out / name}: a folder is there, where {name} goes")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise cannot_write(path, error) from None
    _probe(out, path)
    return out


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A scratch path next to `path` (same suffix, so writers that read it keep the format):
    renamed onto `path` when the block succeeds, removed when it fails."""
    out = Path(path)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.part{out.suffix}")
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError as error:
        raise cannot_write(path, error) from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def write_text_atomically(path: PathLike, text: str) -> None:
    """`text` into `path`, whole or not at all."""
    with atomic_path(check_output_file(path)) as tmp:
        tmp.write_text(text)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: PathLike, dpi: int = 120) -> None:
    """A matplotlib figure into `path`, whole or not at all; the figure is closed either way."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
