"""Atomic writes: outputs appear complete or not at all (house style 8).

Files are written to a temporary sibling and renamed; folders are built under a temporary sibling
name and renamed at the end, so an interrupted run never leaves something that looks finished.

Temporaries are named ``.<target name>.<host>-<pid>-<token>.tmp<suffixes>`` (files), ``...partial``
(folders) and ``...old`` (a replaced folder, kept only during the swap); ``<host>`` is a short hash of
the host name. A writer killed with SIGKILL cannot remove its own, so the next writer of the same
target on the same host removes those whose process is gone (and puts an ``.old`` folder back if the
kill came between the two renames of a swap). Temporaries of another host (a shared file system, e.g.
shards of ``segment`` on a cluster) are never touched: their process cannot be asked whether it lives.

Temporaries are created with mode 0666/0777 and the umask applied, so outputs get the user's normal
permissions (mkstemp and mkdtemp would give 0600/0700).

An OSError from creating, writing or renaming an output (full disk, read-only folder, a file where a
folder should be) becomes an :class:`InputError` naming the output and the errno text.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from styleseg.errors import InputError

log = logging.getLogger("styleseg.io.atomic")

#: errnos that say the output side failed, wherever in a writer they are raised
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
_NAME_BYTES = 160  # longer target names are shortened (with a hash) in temporary names: limit 255 bytes


def output_error(target: str | Path, e: OSError) -> InputError:
    """An InputError for a failed write of ``target``: the errno text and what to do about it."""
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free disk space or choose another --out"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "choose another --out, or make the folder writable"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        fix = "choose another --out, or move that file away"
    elif code == errno.ENAMETOOLONG:
        fix = "choose a shorter output path"
    else:
        fix = "check the output folder, or choose another --out"
    what = e.strerror or str(e)
    blocker = _file_in_the_way(Path(target)) if code in (errno.ENOTDIR, errno.EEXIST) else None
    if blocker is not None:
        what = f"{blocker} is a file, not a folder"
    return InputError(target, f"cannot write: {what}", fix)


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing parent of ``path`` that is not a folder (why a mkdir failed), if any."""
    for parent in path.parents:
        if os.path.lexists(parent):
            return None if parent.is_dir() else parent
    return None


def _is_output_error(e: OSError, tmp: Path) -> bool:
    """True if ``e`` is about the output (its errno, or the file it names is the temporary)."""
    if e.errno in _WRITE_ERRNOS:
        return True
    name = e.filename
    return name is not None and os.path.normpath(str(name)).startswith(os.path.normpath(str(tmp)))


def _stem(name: str) -> str:
    """The target name as it appears in its temporaries (shortened with a hash if very long)."""
    if len(name.encode()) <= _NAME_BYTES:
        return name
    return name[: _NAME_BYTES // 4] + "~" + hashlib.sha1(name.encode()).hexdigest()[:12]


#: this host, in temporary names (6 hex digits of a hash of the host name)
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _temp_pattern(name: str) -> re.Pattern[str]:
    """Temporaries of ``name`` written on this host: group 1 the pid, group 2 the kind."""
    return re.compile(rf"^\.{re.escape(_stem(name))}\.{HOST_TAG}-(\d+)-[0-9a-f]{{8}}\.(tmp.*|partial|old)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def clean_stale(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by writers whose process is gone; returns what was removed.

    A stale ``.old`` folder is the previous complete output of an interrupted swap: it is moved back to
    ``path`` if ``path`` is missing, else removed.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    prefix = f".{_stem(path.name)}."
    with os.scandir(parent) as it:  # one listing per write: cheap even beside thousands of outputs
        names = [e.name for e in it if e.name.startswith(prefix)]
    pat = _temp_pattern(path.name)
    matches = [(n, m) for n in names if (m := pat.match(n)) is not None and not _alive(int(m.group(1)))]
    removed: list[Path] = []
    for name, m in sorted(matches, key=lambda t: t[1].group(2) != "old"):  # restore an .old first
        p = parent / name
        if m.group(2) == "old" and not os.path.lexists(path):
            log.warning("restoring %s from the interrupted write that left %s", path, p)
            os.replace(p, path)
            continue
        log.info("removing %s, left by an interrupted writer (pid %s)", p, m.group(1))
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


def _temp_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{_stem(path.name)}.{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}.{kind}")


def _prepare(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(path)
    except OSError as e:
        raise output_error(path, e) from e


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success rename it to ``path``.

    The temporary keeps the full suffix (.nii.gz) so writers that dispatch on extension still work.
    """
    path = Path(path)
    _prepare(path)
    while True:
        tmp = _temp_name(path, "tmp" + "".join(path.suffixes))
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise output_error(path, e) from e
    try:
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as e:
            if _is_output_error(e, tmp):
                raise output_error(path, e) from e
            raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        try:
            tmp.write_text(text)
        except OSError as e:
            raise output_error(path, e) from e


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path`` and rename it into place on success.

    If ``path`` exists and ``overwrite`` is False, raise FileExistsError before doing any work.
    On failure the temporary folder is removed and an existing ``path`` is left untouched. An
    InputError about a file inside the temporary folder is re-raised naming its final place.
    """
    path = Path(path)
    _prepare(path)
    if path.exists() and not overwrite:
        raise FileExistsError(errno.EEXIST, "already exists", str(path))
    while True:
        tmp = _temp_name(path, "partial")
        try:
            tmp.mkdir(0o777)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise output_error(path, e) from e
    try:
        try:
            yield tmp
            if path.exists():
                old = _temp_name(path, "old")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except OSError as e:
            if _is_output_error(e, tmp):
                raise output_error(path, e) from e
            raise
        except InputError as e:
            final = _final_place(e.path, tmp, path)
            if final is None:
                raise
            raise InputError(final, e.problem, e.fix) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _final_place(p: Path | None, tmp: Path, path: Path) -> Path | None:
    """Where ``p`` (inside the temporary folder ``tmp``) would have been in ``path``; None if not inside."""
    if p is None:
        return None
    try:
        return path / Path(p).relative_to(tmp)
    except ValueError:
        return None


def check_output_folder(out: str | Path, inputs: Sequence[str | Path]) -> None:
    """Refuse an output that is one of the inputs or lies inside an input folder: a command would write into the
    data it reads, or replace it."""
    o = Path(out).resolve()
    for p in map(Path, inputs):
        r = p.resolve()
        if o == r or (r.is_dir() and r in o.parents):
            raise InputError(out, f"the output folder is {'the input' if o == r else 'inside the input'} {p}",
                             "choose an --out outside the input folders")
