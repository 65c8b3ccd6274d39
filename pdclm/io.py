"""Files written so that a kill at any moment loses nothing, and weights read without pickle.

Every file the project writes that another step reads goes through here: JSON and JSONL
written beside their final name and renamed over it, SHA-256 digests for verification, and
model weights as safetensors (:func:`save_weights`, :func:`load_weights`), whose loader
executes no code and names the keys that do not match. A write that fails (disk full,
read-only folder) removes its temporary file and raises an ``OSError`` naming the final path;
:func:`write_error` turns it into the one line the CLI prints.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pdclm import dist

R = TypeVar("R")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or does not match the model."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
"""Failed writes that are the machine's state, not a bug: the CLI reports them in one line."""


def _failed(e: OSError, path: Path, tmp: Path) -> OSError:
    """``e`` naming ``path`` (a failed ``write`` names no file, a failed open the temporary
    one), after removing the temporary file so that a full disk gets its space back."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
    if e.filename is not None and e.filename != str(tmp):
        return e
    return OSError(e.errno, e.strerror or os.strerror(e.errno or 0), str(path))


def atomic_write(path: Path, data: bytes) -> None:
    """Write beside ``path``, flush to disk and rename over it: a kill at any moment leaves
    either the old file or the new one, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _failed(e, path, tmp) from e


def write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2).encode())


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, all or nothing."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def append_jsonl_atomic(path: Path, row: dict) -> None:
    """Add one JSON line to ``path`` by rewriting it atomically (a plain append can leave half
    a line)."""
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write(path, old + (json.dumps(row, ensure_ascii=False) + "\n").encode())


def save_weights(model: nn.Module, path: Path) -> None:
    """All parameters and persistent buffers as safetensors (contiguous, no shared storage),
    written beside ``path`` and renamed over it, like :func:`atomic_write`."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        try:
            save_file(state, str(tmp))
        except SafetensorError as e:  # its I/O errors carry the errno only in the message
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            n = int(code.group(1))
            raise OSError(n, os.strerror(n), str(tmp)) from e
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _failed(e, path, tmp) from e


def write_error(e: BaseException) -> str | None:
    """One line for a write that failed because of the machine (disk full, read-only or
    forbidden folder), naming the path; None for anything else. torch's zip writer reports a
    full disk only as ``unexpected pos``; the file it was writing is found in its frame."""
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        where = e.filename if e.filename is not None else "a file"
        hint = {
            errno.ENOSPC: "; free some space and run again (files written before are intact)",
            errno.EDQUOT: "; free some space and run again (files written before are intact)",
            errno.EROFS: "; choose another folder (--out)",
        }.get(e.errno, "")
        verb = "cannot write " if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else ""
        return f"{WRITE_ERRNOS[e.errno]}: {verb}{where}{hint}"
    text = str(e)
    if isinstance(e, RuntimeError) and ("inline_container" in text or "StreamWriter" in text):
        where, tb = "a file", e.__traceback__
        while tb is not None:  # the innermost torch.save frame knows the file
            code = tb.tb_frame.f_code
            if code.co_name == "save" and code.co_filename.endswith("serialization.py"):
                f = tb.tb_frame.f_locals.get("f")
                where = str(f) if isinstance(f, str | os.PathLike) else where
            tb = tb.tb_next
        return (
            f"no space left on device (or the disk failed): cannot write {where} "
            f"(torch: {text.splitlines()[0].strip()}); files written before are intact"
        )
    return None


def load_weights(model: nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read weights {path}: {e}") from e
    load_state(model, state, path)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load all of ``state`` into ``model``; a mismatch names the first differing keys."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"weights {source} do not match the model (missing: {missing[:5]}, "
            f"unexpected: {unexpected[:5]}); was it saved with another config?"
        )


# ------------------------------------------------------------------ shared files, whole folders


def main_writes(write: Callable[[], R]) -> R | None:
    """Collective under ``torchrun`` (every rank calls it): rank 0 alone runs ``write`` (it
    writes files every rank shares) while the others wait, so no two ranks ever write the
    same file and none reads one half-written. Returns ``write``'s value on rank 0, None on
    the others. If ``write`` fails on rank 0, the others leave quietly with exit status 2
    (rank 0 reports why) instead of waiting on a rank that has gone."""
    if not dist.active():
        return write()
    if not dist.is_main():
        if not dist.broadcast(True):
            raise SystemExit(2)
        return None
    try:
        out = write()
    except BaseException:
        dist.broadcast(False)
        raise
    dist.broadcast(True)
    return out


CHECKSUMS = "checksums.json"
"""In a folder written by :func:`atomic_folder`: the SHA-256 of every other file in it."""


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a folder too: its entries (the renames) become durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Fill the yielded empty folder (a temporary sibling of ``final``); when the block ends,
    its files' SHA-256 go to ``checksums.json``, everything is synced to disk and the folder
    is renamed to ``final`` (an older ``final`` moved aside first, then removed). A kill at
    any moment leaves the old folder or the new one whole, never a partial one under
    ``final``; the temporary folder of a killed write is cleared by the next one."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        digests = {p.relative_to(tmp).as_posix(): sha256(p) for p in files}
        write_json_atomic(tmp / CHECKSUMS, {"sha256": digests})
        for p in [*files, tmp]:
            fsync(p)
        replace_folder(tmp, final)
        fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final``; an older ``final`` is moved aside
    first and removed after, so a kill leaves one whole folder under one of the names."""
    aside = final.with_name(f".{final.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    if final.exists():
        os.replace(final, aside)
    os.replace(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)


def verify_folder(folder: Path, advice: str) -> bool:
    """Check every file ``checksums.json`` lists against its SHA-256; a missing, truncated or
    altered one raises :class:`CheckpointError` naming the folder, the file and ``advice``.
    False when the folder has no ``checksums.json`` (written before folders had one)."""
    listing = folder / CHECKSUMS
    if not listing.exists():
        return False
    try:
        digests = dict(json.loads(listing.read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{folder}: unreadable {CHECKSUMS} ({e}); {advice}") from e
    check_digests(folder, digests, str(folder), advice)
    return True


def check_digests(folder: Path, digests: dict[str, str], what: str, advice: str) -> None:
    """Every file of ``folder`` named in ``digests`` is there with that SHA-256, or a
    :class:`CheckpointError` says which is missing or altered, in ``what``, and ``advice``."""
    for name, digest in digests.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{what} is incomplete: {name} is missing; {advice}")
        if sha256(path) != digest:
            raise CheckpointError(
                f"{what} is corrupt: {name} does not match its checksum (truncated or "
                f"modified since it was written); {advice}"
            )


def copy_folder(src: Path, dst: Path, advice: str) -> Path:
    """``src`` (verified first, when it has checksums) copied to ``dst`` through
    :func:`atomic_folder`: a killed copy leaves no partial ``dst``."""
    verify_folder(src, advice)
    with atomic_folder(dst) as tmp:
        for f in sorted(src.rglob("*")):
            rel = f.relative_to(src)
            if f.is_file() and rel.as_posix() != CHECKSUMS:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, tmp / rel)
    return dst
