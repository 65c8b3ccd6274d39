"""``pdclm prepare``: sources (files, folders, globs, ``.jsonl``, stdin, the stdlib) to byte shards.

Sources written ``human:PATH`` are human verifier examples (:mod:`pdclm.data.human`), not text:
validated line by line into ``human.jsonl`` beside the shards.

A document becomes the symbol stream ``[BOS, *bytes, EOS]``, stored as ``uint16`` in flat
``{split}_{n:05d}.bin`` shards; no tokenizer, so any bytes are valid input. ``manifest.json``
records what was ingested. It is rewritten atomically after every completed shard, so a killed
``prepare`` resumes where it stopped, and a finished folder is reused as a cache.

Resume works because everything is a pure function of the config and the source bytes: the
document order, each document's split (a hash of its name) and where shards close. A resumed
run replays that order, skips the documents already inside completed shards without reading
them, and rebuilds the unfinished shards exactly as an uninterrupted run would.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from pdclm.config import HUMAN_PREFIX, SHARD_FORMAT, DataConfig, fingerprint, text_sources
from pdclm.data.human import HUMAN_FILE, parse_lines
from pdclm.io import atomic_write, sha256
from pdclm.vocab import BOS, EOS

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
SHARD_RE = re.compile(r"(train|val)_\d{5}\.bin")


class DataError(Exception):
    """A data problem the user can fix; the message names the path involved."""


@dataclass(frozen=True)
class Document:
    """One document, read lazily so that resolving a large corpus costs no memory."""

    name: str
    read: Callable[[], bytes]
    size: int | None = None
    """Byte count when known up front (only used to size the progress bar)."""


# --------------------------------------------------------------------------------------------
# small helpers


def read_manifest(data_dir: str | Path) -> dict[str, Any] | None:
    """The folder's manifest, or None if it has none."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}; delete {data_dir} and prepare again") from e


def _name_hash(name: str, purpose: str) -> str:
    """A stable hash of a document name; ``purpose`` keeps the split and the order independent."""
    return hashlib.sha1(f"{purpose}:{name}".encode("utf-8", "surrogateescape")).hexdigest()


def _val_score(name: str) -> float:
    """A stable number in [0, 1) per document name: the split does not depend on order."""
    return int(_name_hash(name, "split")[:8], 16) / 2**32


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# sources -> documents


def stdlib_sources() -> list[Path]:
    """The standard library's ``.py`` files (not site-packages/dist-packages), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages"}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for f in filenames:
            if f.endswith(".py") and os.path.isfile(os.path.join(dirpath, f)):
                found.append(Path(dirpath, f))
    return sorted(found)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e


def _read_jsonl_line(path: Path, offset: int, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            line = f.readline()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    # Lone surrogates are legal in JSON strings; keep them as bytes rather than fail.
    return json.loads(line)[key].encode("utf-8", "surrogatepass")


def _jsonl_problem(line: bytes, key: str) -> str | None:
    try:
        obj = json.loads(line)
    except ValueError as e:  # includes UnicodeDecodeError
        return f"not valid JSON ({e})"
    if not isinstance(obj, dict):
        return "not a JSON object"
    if key not in obj:
        return f"no '{key}' field"
    if not isinstance(obj[key], str):
        return f"field '{key}' is not a string"
    return None


def _jsonl_documents(path: Path, name: str, key: str) -> list[Document]:
    """One document per line; bad lines are reported on stderr and skipped, never fatal."""
    docs = []
    try:
        with open(path, "rb") as f:
            offset = 0
            for lineno, line in enumerate(f, 1):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                problem = _jsonl_problem(line, key)
                if problem:
                    print(f"warning: {path}:{lineno}: {problem}; line skipped", file=sys.stderr)
                    continue
                read = lambda p=path, o=start: _read_jsonl_line(p, o, key)
                docs.append(Document(f"{name}:{lineno}", read, len(line)))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    return docs


def _file_documents(path: Path, name: str, key: str) -> list[Document]:
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, name, key)
    return [Document(name, lambda p=path: _read_file(p), _size(path))]


def _inside(path: str | Path, exclude: str | None) -> bool:
    if exclude is None:
        return False
    real = os.path.realpath(path)
    return real == exclude or real.startswith(exclude + os.sep)


def _walk(folder: Path, exclude: str | None) -> list[Path]:
    """All regular files below ``folder``, sorted, skipping dot-folders and the output folder."""

    def fail(e: OSError) -> None:
        raise DataError(f"cannot read folder {e.filename}: {e.strerror or e}") from e

    found = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail):
        dirnames[:] = [
            d for d in dirnames if not d.startswith(".") and not _inside(Path(dirpath, d), exclude)
        ]
        found += [Path(dirpath, f) for f in filenames if os.path.isfile(os.path.join(dirpath, f))]
    return sorted(found)


def _stdlib_documents() -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = [
        # Named relative to the stdlib root so the split does not depend on the install path.
        Document(f"stdlib:{p.relative_to(root).as_posix()}", lambda p=p: _read_file(p), _size(p))
        for p in stdlib_sources()
    ]
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it; the .py files still make a corpus
        topics = {}
    for name in sorted(topics):
        data = topics[name].encode("utf-8", "surrogatepass")
        docs.append(Document(f"pydoc:{name}", lambda d=data: d, len(data)))
    return docs


def _stdin_document(stdin: BinaryIO | None) -> Document:
    cache: list[bytes] = []

    def read() -> bytes:  # stdin can be read only once
        if not cache:
            cache.append((stdin or sys.stdin.buffer).read())
        return cache[0]

    return Document("<stdin>", read)


def _paths_documents(paths: list[Path], what: str, key: str, exclude: str | None) -> list[Document]:
    """Documents of the files found by a folder or glob; it is an error if they hold no bytes."""
    paths = [p for p in paths if not _inside(p, exclude)]
    if sum(_size(p) or 0 for p in paths) == 0:
        raise DataError(f"{what} contains no non-empty files")
    return [d for p in paths for d in _file_documents(p, os.path.normpath(p), key)]


def resolve_sources(
    sources: list[str],
    jsonl_field: str = "text",
    stdin: BinaryIO | None = None,
    *,
    exclude: str | Path | None = None,
) -> list[Document]:
    """The documents of ``sources``, in a deterministic order; nothing is read yet.

    ``exclude`` (the output folder) is never ingested, so ``sources=["."]`` cannot eat its own
    shards. A document reachable from two sources is kept once, at its first position.
    """
    if not sources:
        raise DataError("no data sources given (data.sources is empty)")
    skip = os.path.realpath(exclude) if exclude is not None else None
    docs: list[Document] = []
    for src in sources:
        if src == "stdlib":
            docs += _stdlib_documents()
        elif src == "-":
            docs.append(_stdin_document(stdin))
        elif os.path.isdir(src):
            docs += _paths_documents(_walk(Path(src), skip), f"folder {src}", jsonl_field, skip)
        elif os.path.exists(src):
            if not _inside(src, skip):
                docs += _file_documents(Path(src), os.path.normpath(src), jsonl_field)
        elif any(c in src for c in "*?["):
            matches = sorted(glob.glob(src, recursive=True))
            if not matches:
                raise DataError(f"glob pattern '{src}' matches no files")
            paths: list[Path] = []
            for m in matches:
                paths += _walk(Path(m), skip) if os.path.isdir(m) else [Path(m)]
            docs += _paths_documents(paths, f"glob pattern '{src}'", jsonl_field, skip)
        else:
            raise DataError(f"data source not found: {src}")
    seen: set[str] = set()
    unique = []
    for d in docs:
        if d.name not in seen:
            seen.add(d.name)
            unique.append(d)
    return unique


# --------------------------------------------------------------------------------------------
# documents -> shards


def _write_shard(path: Path, symbols: np.ndarray) -> str:
    """Write one shard atomically; returns its sha256."""
    data = symbols.astype(np.uint16, copy=False).tobytes()
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    totals = {}
    for split in SPLITS:
        docs = [d for d in manifest["documents"] if d["split"] == split]
        symbols = sum(s["n_symbols"] for s in manifest["shards"] if s["split"] == split)
        totals[split] = {
            "docs": len(docs),
            "bytes": sum(d["bytes"] for d in docs),
            "symbols": symbols,
        }
    manifest["totals"] = totals
    atomic_write(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def _new_manifest(cfg: DataConfig) -> dict[str, Any]:
    return {
        "version": SHARD_FORMAT,
        "sources": text_sources(cfg.sources),
        "fingerprint": fingerprint(cfg),
        "settings": {
            "jsonl_field": cfg.jsonl_field,
            "max_bytes": cfg.max_bytes,
            "shard_bytes": cfg.shard_bytes,
            "val_fraction": cfg.val_fraction,
        },
        "complete": False,
        "consumed": 0,
        "shards": [],
        "totals": {},
        "documents": [],
    }


def _shards_present(out: Path, manifest: dict[str, Any]) -> bool:
    """Cheap check (existence and size, no hashing) for reusing a finished folder."""
    for s in manifest["shards"]:
        path = out / s["name"]
        if not path.is_file() or path.stat().st_size != 2 * s["n_symbols"]:
            return False
    return True


def _recover(out: Path, manifest: dict[str, Any]) -> None:
    """Make an interrupted folder consistent: drop temp files, keep only verified shards.

    Shards are kept in the order they were completed up to the first missing or corrupt one;
    that one and all later ones (and their documents) are dropped and will be rebuilt.
    """
    for tmp in out.glob("*.tmp"):
        tmp.unlink()
    keep = []
    for s in manifest["shards"]:
        path = out / s["name"]
        if not path.is_file() or sha256(path) != s["sha256"]:
            print(f"warning: {path} is missing or corrupt; rebuilding from it", file=sys.stderr)
            break
        keep.append(s)
    if len(keep) < len(manifest["shards"]):
        manifest["shards"] = keep
        manifest["documents"] = manifest["documents"][: sum(s["n_docs"] for s in keep)]
        manifest["consumed"] = 0  # replay from the start; kept documents are skipped unread
    listed = {s["name"] for s in keep}
    for path in out.iterdir():
        if SHARD_RE.fullmatch(path.name) and path.name not in listed:
            path.unlink()


@dataclass
class _Buffer:
    """The open (unfinished) shard of one split."""

    arrays: list[np.ndarray] = field(default_factory=list)
    docs: list[dict[str, Any]] = field(default_factory=list)
    n_symbols: int = 0
    first: int = -1
    """Index (in ingest order) of its first document: nothing from here on is on disk yet."""


def _encode(data: bytes) -> np.ndarray:
    out = np.empty(len(data) + 2, dtype=np.uint16)
    out[0], out[-1] = BOS, EOS
    out[1:-1] = np.frombuffer(data, dtype=np.uint8)
    return out


def _assign(name: str, val_fraction: float, counts: dict[str, int], last: bool) -> str:
    """The document's split: by name hash, except the last one may fill an empty split."""
    split = "val" if _val_score(name) < val_fraction else "train"
    if last:
        if split == "train" and val_fraction > 0 and counts["val"] == 0 and counts["train"] > 0:
            split = "val"
        elif split == "val" and counts["train"] == 0:
            split = "train"
    return split


def _ingest(
    out: Path, cfg: DataConfig, manifest: dict[str, Any], docs: list[Document], progress: bool
) -> dict[str, Any]:
    index = {d.name: i for i, d in enumerate(docs)}
    done = {d["name"]: d for d in manifest["documents"]}
    for name in done:
        if name not in index:
            raise DataError(
                f"the sources changed since {out} was partly prepared ({name} is gone); "
                f"delete {out} and run prepare again"
            )
    start = manifest["consumed"]
    # Everything before `start` is either inside a completed shard or was empty.
    before = [d for d in done.values() if index[d["name"]] < start]
    total = sum(d["bytes"] for d in before)
    counts = {s: sum(d["split"] == s for d in before) for s in SPLITS}
    shard_no = {s: sum(x["split"] == s for x in manifest["shards"]) for s in SPLITS}
    buffers = {s: _Buffer() for s in SPLITS}

    def candidates() -> Iterator[tuple[int, Document, bytes | None, dict[str, Any] | None]]:
        """Non-empty documents from `start`; those already on disk are not read again."""
        for i in range(start, len(docs)):
            doc = docs[i]
            if doc.name in done:
                yield i, doc, None, done[doc.name]
            elif data := doc.read():
                yield i, doc, data, None

    def close(split: str, position: int) -> None:
        buf = buffers[split]
        name = f"{split}_{shard_no[split]:05d}.bin"
        symbols = np.concatenate(buf.arrays)
        digest = _write_shard(out / name, symbols)
        manifest["shards"].append(
            {
                "name": name,
                "split": split,
                "n_symbols": int(symbols.size),
                "n_docs": len(buf.docs),
                "sha256": digest,
            }
        )
        manifest["documents"] += buf.docs
        shard_no[split] += 1
        buffers[split] = _Buffer()
        pending = [b.first for b in buffers.values() if b.docs]
        manifest["consumed"] = min(pending, default=position)
        _write_manifest(out, manifest)

    sizes = [d.size for d in docs]
    known = None if None in sizes else sum(s or 0 for s in sizes)
    if cfg.max_bytes and known is not None:
        known = min(known, cfg.max_bytes)
    bar = tqdm(
        total=known,
        unit="B",
        unit_scale=True,
        desc=f"prepare {out}",
        disable=not progress,
        file=sys.stderr,
    )
    end = start
    with bar:
        stream = candidates()
        current = next(stream, None)
        while current is not None:
            i, doc, data, entry = current
            nbytes = entry["bytes"] if entry else len(data or b"")
            total += nbytes
            capped = cfg.max_bytes > 0 and total >= cfg.max_bytes
            upcoming = None if capped else next(stream, None)
            if entry is not None:
                counts[entry["split"]] += 1
            else:
                split = _assign(doc.name, cfg.val_fraction, counts, last=upcoming is None)
                counts[split] += 1
                buf = buffers[split]
                if not buf.docs:
                    buf.first = i
                buf.arrays.append(_encode(data or b""))
                buf.docs.append({"name": doc.name, "split": split, "bytes": nbytes})
                buf.n_symbols += nbytes + 2
                if buf.n_symbols >= cfg.shard_bytes:
                    close(split, i + 1)
            bar.update(nbytes)
            end = i + 1
            current = upcoming
    if sum(counts.values()) == 0:
        raise DataError(f"the data sources hold no bytes: {', '.join(cfg.sources)}")
    for split in SPLITS:
        if buffers[split].docs:
            close(split, end)
    manifest["consumed"] = end
    manifest["complete"] = True
    _write_manifest(out, manifest)
    return manifest


def ingest_human(sources: list[str], out: Path) -> dict[str, Any]:
    """Validate the ``human:`` sources line by line into ``out/human.jsonl`` (rewritten whole,
    atomically, every time); each bad line is reported on stderr with its line number and
    reason, listed in the summary, and skipped."""
    paths: list[Path] = []
    for src in sources:
        pattern = src[len(HUMAN_PREFIX) :]
        if os.path.isfile(pattern):
            paths.append(Path(pattern))
        elif any(c in pattern for c in "*?[") and (found := sorted(glob.glob(pattern))):
            paths += [Path(m) for m in found if os.path.isfile(m)]
        else:
            raise DataError(f"human verifier examples not found: {pattern} (source {src})")
    rows, skipped = [], []
    for path in paths:
        good, bad = parse_lines(_read_file(path))
        rows += [ex.to_json() for ex in good]
        for lineno, reason in bad:
            print(f"warning: {path}:{lineno}: {reason}; line skipped", file=sys.stderr)
            skipped.append({"line": f"{path}:{lineno}", "reason": reason})
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write(out / HUMAN_FILE, lines.encode("utf-8", "surrogatepass"))
    return {"sources": [str(p) for p in paths], "examples": len(rows), "skipped": skipped}


def prepare(cfg: DataConfig, *, progress: bool = True, stdin: BinaryIO | None = None) -> dict:
    """Build (or resume, or reuse) the shard folder ``cfg.dir``, and store the human verifier
    examples of its ``human:`` sources beside the shards; returns the manifest."""
    out = Path(cfg.dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"data.dir {out} exists and is not a folder")
    text = text_sources(cfg.sources)
    if len(text) == len(cfg.sources):
        return _prepare_shards(cfg, progress, stdin)
    manifest = _prepare_shards(cfg, progress, stdin) if text else _empty(cfg, out)
    manifest["human"] = ingest_human([s for s in cfg.sources if s not in text], out)
    _write_manifest(out, manifest)
    return manifest


def _empty(cfg: DataConfig, out: Path) -> dict[str, Any]:
    """The manifest of a folder with human verifier examples only (no byte shards)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = _new_manifest(cfg)
    manifest["complete"] = True
    return manifest


def _prepare_shards(cfg: DataConfig, progress: bool, stdin: BinaryIO | None) -> dict[str, Any]:
    out = Path(cfg.dir)
    manifest = read_manifest(out)
    if manifest is not None:
        if manifest.get("fingerprint") != fingerprint(cfg):
            raise DataError(
                f"{out} holds another corpus (prepared from {manifest.get('sources')} with other "
                f"settings); choose another data.dir or delete {out}"
            )
        if manifest["complete"] and _shards_present(out, manifest):
            return manifest
        manifest["complete"] = False
    elif out.is_dir() and any(not p.name.endswith(".tmp") for p in out.iterdir()):
        raise DataError(
            f"{out} is not empty and is not a PD-CLM data folder (no {MANIFEST}); "
            "choose another data.dir or empty it"
        )
    docs = resolve_sources(text_sources(cfg.sources), cfg.jsonl_field, stdin, exclude=out)
    if cfg.max_bytes > 0:
        # Sample across the whole corpus rather than taking the first package or two.
        # a different hash than the split's: ordering by the same one would fill a capped
        # corpus with exactly the documents whose split hash is smallest, i.e. the val ones
        docs.sort(key=lambda d: _name_hash(d.name, "order"))
    out.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        for tmp in out.glob("*.tmp"):
            tmp.unlink()
        manifest = _new_manifest(cfg)
        _write_manifest(out, manifest)
    else:
        _recover(out, manifest)
    return _ingest(out, cfg, manifest, docs, progress)
