"""``pdclm prepare``: sources (files, folders, globs, ``.jsonl``, stdin, the stdlib) to byte shards.

Sources written ``human:PATH`` are human verifier examples (:mod:`pdclm.data.human`), not text:
validated line by line into ``human.jsonl`` beside the shards.

A document becomes the symbol stream ``[BOS, *bytes, EOS]``, stored as ``uint16`` in flat
``{split}_{n:05d}.bin`` shards; no tokenizer, so any bytes are valid input. A document longer
than the folder's chunk size is split into near-equal chunks, each its own ``[BOS..EOS]`` piece
with its own split, so one book (or one stdin) yields both train and val data and no split
unit outweighs a quarter of the expected validation bytes. ``data.max_bytes`` caps the bytes
read, cutting the last document, so a huge file under a small cap is never read whole.

``manifest.json`` records what was ingested, including every input file's size, modification
time and (when it was read whole) SHA-256, and stdin's SHA-256. A finished folder is reused as
a cache only while those still match; any change re-ingests it, and either way one line says
why. The manifest is rewritten atomically after every completed shard, so a killed
``prepare`` resumes where it stopped.

Resume works because everything is a pure function of the config and the source bytes: the
document order, the chunking, each piece's split (a hash of its name) and where shards close.
A resumed run replays that order, skips the documents already inside completed shards without
reading them, and rebuilds the unfinished shards exactly as an uninterrupted run would.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
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
STDIN = "<stdin>"
"""The stdin document's name and its key among a manifest's inputs."""
MIN_CHUNK = 4096
"""No document this short is split: smaller pieces would mostly add BOS/EOS boundaries."""
VAL_PIECES = 4
"""A chunk holds at most 1/VAL_PIECES of the expected validation bytes, so that val gets a few
pieces' worth even when the corpus is one document."""


class DataError(Exception):
    """A data problem the user can fix; the message names the path involved."""


@dataclass(frozen=True)
class Document:
    """One document, read lazily so that resolving a large corpus costs no memory."""

    name: str
    read: Callable[[int | None], bytes]
    """Its bytes, at most ``limit`` of them (None: all): a cap reads only what it keeps."""
    size: int | None = None
    """Byte count when known up front (sizes the chunks and the progress bar)."""
    source: str | None = None
    """The input file this document is the whole of; its SHA-256 is recorded when read whole."""


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


def chunk_bytes(total: int, val_fraction: float) -> int:
    """The longest piece a corpus of ``total`` bytes is cut into for the train/val split
    when whole documents cannot give validation its share (:func:`whole_documents_suffice`):
    a quarter of the expected validation bytes, so one long document still yields val data,
    but never under :data:`MIN_CHUNK` (0: none is cut, as nothing is held out)."""
    if val_fraction <= 0:
        return 0
    return max(MIN_CHUNK, math.ceil(total * val_fraction / VAL_PIECES))


def whole_documents_suffice(docs: list[Document], total: int, val_fraction: float) -> bool:
    """Would whole documents, split by name, give validation at least a chunk's worth of
    bytes and training at least half its share? Then no document is cut: a document with
    pieces on both sides would leak its text into validation (the common case, a corpus of
    many documents, splits as before)."""
    seen = val = 0
    for d in docs:
        size = min(d.size or 0, total - seen)
        seen += size
        if _val_score(d.name) < val_fraction:
            val += size
        if seen >= total:
            break
    enough_val = val >= total * val_fraction / VAL_PIECES
    return val_fraction <= 0 or (enough_val and seen - val >= total * (1 - val_fraction) / 2)


def _bounds(n: int, chunk: int) -> list[int]:
    """Offsets cutting ``n`` bytes into the fewest near-equal pieces of at most ``chunk``."""
    k = math.ceil(n / chunk) if chunk else 1
    return [n * j // k for j in range(k + 1)]


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


def _read_file(path: Path, limit: int | None = None) -> bytes:
    try:
        if limit is None:
            return path.read_bytes()
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e


def _read_jsonl_line(path: Path, offset: int, key: str, limit: int | None) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            line = f.readline()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    # Lone surrogates are legal in JSON strings; keep them as bytes rather than fail.
    return json.loads(line)[key].encode("utf-8", "surrogatepass")[:limit]


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


def _jsonl_documents(
    path: Path, name: str, key: str, digests: dict[str, str] | None
) -> list[Document]:
    """One document per line; bad lines are reported on stderr and skipped, never fatal. The
    file is read whole here anyway, so its SHA-256 goes to ``digests`` for the manifest."""
    docs = []
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            offset = 0
            for lineno, line in enumerate(f, 1):
                h.update(line)
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                problem = _jsonl_problem(line, key)
                if problem:
                    print(f"warning: {path}:{lineno}: {problem}; line skipped", file=sys.stderr)
                    continue
                read = lambda limit, p=path, o=start: _read_jsonl_line(p, o, key, limit)
                docs.append(Document(f"{name}:{lineno}", read, len(line)))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    if digests is not None:
        digests[name] = h.hexdigest()
    return docs


def _file_documents(
    path: Path, name: str, key: str, digests: dict[str, str] | None
) -> list[Document]:
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, name, key, digests)
    return [Document(name, lambda limit, p=path: _read_file(p, limit), _size(path), name)]


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
        Document(
            f"stdlib:{p.relative_to(root).as_posix()}",
            lambda limit, p=p: _read_file(p, limit),
            _size(p),
            os.path.normpath(p),
        )
        for p in stdlib_sources()
    ]
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it; the .py files still make a corpus
        topics = {}
    for name in sorted(topics):
        data = topics[name].encode("utf-8", "surrogatepass")
        docs.append(Document(f"pydoc:{name}", lambda limit, d=data: d[:limit], len(data)))
    return docs


def _stdin_document(stdin: BinaryIO | None) -> Document:
    """Read here, whole: stdin can be read only once, and its size decides the chunking."""
    data = (stdin or sys.stdin.buffer).read()
    return Document(STDIN, lambda limit: data[:limit], len(data))


def _nonempty(paths: list[Path], what: str, exclude: str | None) -> list[Path]:
    """The files a folder or glob found, outside the output folder; an error if all are empty."""
    paths = [p for p in paths if not _inside(p, exclude)]
    if sum(_size(p) or 0 for p in paths) == 0:
        raise DataError(f"{what} contains no non-empty files")
    return paths


def _source_files(src: str, exclude: str | None) -> list[Path]:
    """The files one text source (a file, folder, glob or ``stdlib``; not stdin) stands for."""
    if src == "stdlib":
        return stdlib_sources()
    if os.path.isdir(src):
        return _nonempty(_walk(Path(src), exclude), f"folder {src}", exclude)
    if os.path.exists(src):
        return [] if _inside(src, exclude) else [Path(src)]
    if any(c in src for c in "*?["):
        matches = sorted(glob.glob(src, recursive=True))
        if not matches:
            raise DataError(f"glob pattern '{src}' matches no files")
        paths: list[Path] = []
        for m in matches:
            paths += _walk(Path(m), exclude) if os.path.isdir(m) else [Path(m)]
        return _nonempty(paths, f"glob pattern '{src}'", exclude)
    raise DataError(f"data source not found: {src}")


def resolve_sources(
    sources: list[str],
    jsonl_field: str = "text",
    stdin: BinaryIO | None = None,
    *,
    exclude: str | Path | None = None,
    digests: dict[str, str] | None = None,
) -> list[Document]:
    """The documents of ``sources``, in a deterministic order; nothing is read yet but stdin
    (and ``.jsonl`` files, scanned for their line offsets; their SHA-256 go to ``digests``).

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
        else:
            for p in _source_files(src, skip):
                docs += _file_documents(p, os.path.normpath(p), jsonl_field, digests)
    seen: set[str] = set()
    unique = []
    for d in docs:
        if d.name not in seen:
            seen.add(d.name)
            unique.append(d)
    return unique


# --------------------------------------------------------------------------------------------
# what the cache is keyed on: the inputs' sizes, modification times and contents


def list_inputs(sources: list[str], exclude: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Size and modification time of every file the sources name (stdin aside), by path; the
    SHA-256 is filled in when ingest reads a file whole. Costs a ``stat`` per file, no reads."""
    skip = os.path.realpath(exclude) if exclude is not None else None
    found: dict[str, dict[str, Any]] = {}
    for src in sources:
        if src == "-":
            continue
        for p in _source_files(src, skip):
            key = os.path.normpath(p)
            if key in found:
                continue
            try:
                st = os.stat(p)
            except OSError as e:
                raise DataError(f"cannot read {p}: {e.strerror or e}") from e
            found[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": None}
    return found


def _file_digest(path: str) -> str | None:
    try:
        return sha256(Path(path))
    except OSError:
        return None


def compare_inputs(
    old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]
) -> tuple[list[str], int]:
    """What differs between the inputs a manifest recorded and those found now, one phrase
    each, and how many files were touched without changing. A file whose size is the same but
    whose modification time moved is hashed: it changed only if the hash differs from the
    recorded one (or none was recorded). Unchanged files carry their recorded hash into ``new``."""
    changes, touched = [], 0
    for key, rec in new.items():
        was = old.get(key)
        if was is None:
            changes.append("stdin is new" if key == STDIN else f"{key} was added")
        elif key == STDIN:
            if rec["sha256"] != was["sha256"]:
                changes.append(
                    f"stdin differs ({rec['size']:,} bytes, sha256 {rec['sha256'][:12]}; "
                    f"was {was['size']:,} bytes, {was['sha256'][:12]})"
                )
        elif rec["size"] != was["size"]:
            changes.append(f"{key} changed size ({was['size']:,} -> {rec['size']:,} bytes)")
        elif rec["mtime_ns"] != was["mtime_ns"]:
            digest = _file_digest(key) if was.get("sha256") else None
            if digest is None:
                changes.append(f"{key} was modified (same size; no recorded hash to compare)")
            elif digest != was["sha256"]:
                changes.append(f"{key} was modified (same size, other content)")
            else:
                rec["sha256"] = digest
                touched += 1
        else:
            rec["sha256"] = was.get("sha256")
    changes += [
        "stdin is no longer a source" if k == STDIN else f"{k} is gone" for k in old if k not in new
    ]
    return changes, touched


def _summary(changes: list[str]) -> str:
    shown = "; ".join(changes[:3])
    return shown + (f"; and {len(changes) - 3} more changes" if len(changes) > 3 else "")


def _reuse_reason(inputs: dict[str, dict[str, Any]], touched: int, kept_stdin: bool) -> str:
    """Why the recorded inputs still describe the sources, in one phrase."""
    parts = []
    files = sum(k != STDIN for k in inputs)
    if files:
        plural = "s" if files > 1 else ""
        parts.append(
            f"{files} input file{plural} with the same sizes and modification times"
            if not touched
            else f"{files} input file{plural} with the same sizes and contents ({touched} "
            "touched since, with the same SHA-256)"
        )
    if STDIN in inputs:
        rec = inputs[STDIN]
        what = f"{rec['size']:,} bytes, sha256 {rec['sha256'][:12]}"
        parts.append(
            f"stdin is empty or a terminal, so the corpus read from stdin before is kept ({what})"
            if kept_stdin
            else f"stdin has the same content ({what})"
        )
    return "same sources and settings; " + "; ".join(parts)


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
        pieces = [d for d in manifest["documents"] if d["split"] == split]
        symbols = sum(s["n_symbols"] for s in manifest["shards"] if s["split"] == split)
        totals[split] = {
            "docs": len({d["name"] for d in pieces}),
            "pieces": len(pieces),
            "bytes": sum(d["bytes"] for d in pieces),
            "symbols": symbols,
        }
    manifest["totals"] = totals
    atomic_write(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def _settings(cfg: DataConfig) -> dict[str, Any]:
    return {
        "jsonl_field": cfg.jsonl_field,
        "max_bytes": cfg.max_bytes,
        "shard_bytes": cfg.shard_bytes,
        "val_fraction": cfg.val_fraction,
    }


def _new_manifest(
    cfg: DataConfig, inputs: dict[str, dict[str, Any]] | None = None, chunk: int = 0
) -> dict[str, Any]:
    return {
        "version": SHARD_FORMAT,
        "sources": text_sources(cfg.sources),
        "fingerprint": fingerprint(cfg),
        "settings": _settings(cfg),
        "chunk_bytes": chunk,
        "complete": False,
        "consumed": 0,
        "shards": [],
        "totals": {},
        "inputs": inputs or {},
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
    that one and all later ones (and their documents) are dropped and will be rebuilt. Shards
    the manifest does not list (an interrupted write, or the corpus a re-ingest replaces) go.
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


@dataclass
class _Piece:
    """A whole document or one chunk of a long one: the unit of the train/val split."""

    doc: int
    """Index of its document in ingest order."""
    entry: dict[str, Any]
    """Its manifest entry: name, split, bytes, and for a chunk its ``chunk`` and ``chunks``."""
    data: memoryview | None
    """Its bytes; None when it is already inside a completed shard."""
    ends_doc: bool


def _encode(data: bytes | memoryview) -> np.ndarray:
    out = np.empty(len(data) + 2, dtype=np.uint16)
    out[0], out[-1] = BOS, EOS
    out[1:-1] = np.frombuffer(data, dtype=np.uint8)
    return out


def _assign(name: str, val_fraction: float, counts: dict[str, int], last: bool) -> str:
    """The piece's split: by name hash, except the last one may fill an empty split."""
    split = "val" if _val_score(name) < val_fraction else "train"
    if last:
        if split == "train" and val_fraction > 0 and counts["val"] == 0 and counts["train"] > 0:
            split = "val"
        elif split == "val" and counts["train"] == 0:
            split = "train"
    return split


def _split_key(entry: dict[str, Any]) -> str:
    """What a piece's split is hashed from: a whole document's name, or name and chunk."""
    return entry["name"] if "chunk" not in entry else f"{entry['name']}#{entry['chunk']}"


def _ingest(
    out: Path,
    cfg: DataConfig,
    manifest: dict[str, Any],
    docs: list[Document],
    progress: bool,
    digests: dict[str, str],
) -> dict[str, Any]:
    index = {d.name: i for i, d in enumerate(docs)}
    done: dict[str, dict[int | None, dict[str, Any]]] = {}
    for d in manifest["documents"]:
        if d["name"] not in index:
            raise DataError(
                f"the sources changed since {out} was partly prepared ({d['name']} is gone); "
                f"delete {out} and run prepare again"
            )
        done.setdefault(d["name"], {})[d.get("chunk")] = d
    start = manifest["consumed"]
    # Everything before `start` is either inside a completed shard or was empty.
    before = [d for d in manifest["documents"] if index[d["name"]] < start]
    counts = {s: sum(d["split"] == s for d in before) for s in SPLITS}
    shard_no = {s: sum(x["split"] == s for x in manifest["shards"]) for s in SPLITS}
    buffers = {s: _Buffer() for s in SPLITS}
    cap, chunk = cfg.max_bytes, manifest["chunk_bytes"]
    notes: list[str] = []

    def pieces() -> Iterator[_Piece]:
        """Non-empty pieces from `start`, up to the byte cap; a document whose pieces are all
        on disk already is not read again."""
        total = sum(d["bytes"] for d in before)
        for i in range(start, len(docs)):
            doc, mine = docs[i], done.get(docs[i].name, {})
            if cap and total >= cap:
                notes.append(f"{len(docs) - i:,} documents not read")
                return
            first = next(iter(mine.values()), None)
            if first is not None and len(mine) == first.get("chunks", 1):
                keys = sorted(mine, key=lambda k: k or 0)
                for j, k in enumerate(keys):
                    yield _Piece(i, mine[k], None, j == len(keys) - 1)
                total += sum(e["bytes"] for e in mine.values())
                continue
            limit = cap - total if cap else None
            data = doc.read(limit)
            if doc.source is not None and (limit is None or len(data) < limit):
                digests[doc.source] = hashlib.sha256(data).hexdigest()
            if limit is not None and doc.size is not None and doc.size > len(data) == limit:
                notes.append(f"{doc.name} cut to {limit:,} of its {doc.size:,} bytes")
            total += len(data)
            if not data:
                continue
            bounds = _bounds(len(data), chunk)
            n, view = len(bounds) - 1, memoryview(data)
            for k in range(n):
                entry = {"name": doc.name, "split": "", "bytes": bounds[k + 1] - bounds[k]}
                if n > 1:
                    entry |= {"chunk": k, "chunks": n}
                if (kept := mine.get(entry.get("chunk"))) is not None:
                    yield _Piece(i, kept, None, k == n - 1)
                else:
                    yield _Piece(i, entry, view[bounds[k] : bounds[k + 1]], k == n - 1)

    def save() -> None:
        for key, digest in digests.items():
            if key in manifest["inputs"]:
                manifest["inputs"][key]["sha256"] = digest
        _write_manifest(out, manifest)

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
        save()

    sizes = [d.size for d in docs]
    known = None if None in sizes else sum(s or 0 for s in sizes)
    if cap and known is not None:
        known = min(known, cap)
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
        stream = pieces()
        current = next(stream, None)
        while current is not None:
            p = current
            upcoming = next(stream, None)
            if p.data is None:
                counts[p.entry["split"]] += 1
            else:
                split = _assign(_split_key(p.entry), cfg.val_fraction, counts, upcoming is None)
                p.entry["split"] = split
                counts[split] += 1
                buf = buffers[split]
                if not buf.docs:
                    buf.first = p.doc
                buf.arrays.append(_encode(p.data))
                buf.docs.append(p.entry)
                buf.n_symbols += len(p.data) + 2
                if buf.n_symbols >= cfg.shard_bytes:
                    # a document with pieces still to come is not done: a resume re-reads it
                    close(split, p.doc + 1 if p.ends_doc else p.doc)
            bar.update(p.entry["bytes"])
            end = p.doc + 1
            current = upcoming
    if sum(counts.values()) == 0:
        raise DataError(f"the data sources hold no bytes: {', '.join(cfg.sources)}")
    for split in SPLITS:
        if buffers[split].docs:
            close(split, end)
    if notes:
        print(f"prepare: data.max_bytes ({cap:,}) reached: {'; '.join(notes)}", file=sys.stderr)
    manifest["consumed"] = end
    manifest["complete"] = True
    save()
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


def run_problems(manifest: dict[str, Any], cfg: DataConfig, seq_len: int = 0) -> list[str]:
    """What in a prepared folder will stop a later ``pdclm run``, one line each: it needs a
    val split, and (with ``seq_len``, the run's ``train.seq_len``) a shard of each split that
    holds one training sequence of ``seq_len + 1`` symbols."""
    largest = {
        s: max((x["n_symbols"] for x in manifest["shards"] if x["split"] == s), default=0)
        for s in SPLITS
    }
    found = []
    if cfg.val_fraction <= 0:
        found.append(
            "data.val_fraction is 0, so there is no validation split; `pdclm run` and "
            "`pdclm eval` stop without one (set data.val_fraction > 0)"
        )
    elif not largest["val"]:
        t = manifest["totals"]["train"]
        found.append(
            f"no validation data: the corpus ({t['bytes']:,} bytes in {t['pieces']} piece(s)) "
            f"is too small to hold a share out (documents of {MIN_CHUNK:,} bytes or less are "
            "never split); `pdclm run` will stop with 'no val shards'; add data"
        )
    for split in SPLITS:
        if seq_len and 0 < largest[split] <= seq_len:
            more = ", raise data.val_fraction" if split == "val" else ""
            found.append(
                f"the largest {split} shard holds {largest[split]:,} symbols, fewer than one "
                f"training sequence ({seq_len + 1:,}: train.seq_len + 1); `pdclm run` will "
                f"stop; add data{more} or lower train.seq_len"
            )
    return found


def prepare(
    cfg: DataConfig, *, progress: bool = True, stdin: BinaryIO | None = None, seq_len: int = 0
) -> dict:
    """Build (or resume, or reuse, or rebuild when its inputs changed) the shard folder
    ``cfg.dir``, and store the human verifier examples of its ``human:`` sources beside the
    shards; returns the manifest. Problems that will stop a later run (see
    :func:`run_problems`; ``seq_len`` is its ``train.seq_len``, 0: unknown) are warned about
    on stderr now rather than discovered then."""
    out = Path(cfg.dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"data.dir {out} exists and is not a folder")
    text = text_sources(cfg.sources)
    manifest = _prepare_shards(cfg, progress, stdin) if text else _empty(cfg, out)
    if len(text) < len(cfg.sources):
        manifest["human"] = ingest_human([s for s in cfg.sources if s not in text], out)
        _write_manifest(out, manifest)
    if text:
        for problem in run_problems(manifest, cfg, seq_len):
            print(f"warning: {problem}", file=sys.stderr)
    return manifest


def _empty(cfg: DataConfig, out: Path) -> dict[str, Any]:
    """The manifest of a folder with human verifier examples only (no byte shards)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = _new_manifest(cfg)
    manifest["complete"] = True
    return manifest


def _older_format(manifest: dict[str, Any], cfg: DataConfig) -> bool:
    """Was the folder prepared by an older pdclm from the same sources and settings?"""
    return (
        manifest.get("version") != SHARD_FORMAT
        and manifest.get("sources") == text_sources(cfg.sources)
        and manifest.get("settings") == _settings(cfg)
    )


def _read_stdin(stream: BinaryIO, max_bytes: int, earlier: bool) -> bytes | None:
    """Stdin, at most ``max_bytes`` of it when capped (the rest could never be ingested); None
    when it brings nothing new and an ``earlier`` stdin corpus exists, which is then kept: so
    ``pdclm run`` after ``cat book | pdclm prepare`` neither blocks on a terminal nor replaces
    the book with nothing."""
    if earlier and stream.isatty():
        return None
    data = stream.read(max_bytes) if max_bytes > 0 else stream.read()
    return None if earlier and not data else data


def _needed_stdin(out: Path) -> Callable[[int | None], bytes]:
    def read(limit: int | None) -> bytes:
        raise DataError(
            f"{out} needs the stdin corpus again to finish, but stdin is empty; pipe it again"
        )

    return read


def _prepare_shards(cfg: DataConfig, progress: bool, stdin: BinaryIO | None) -> dict[str, Any]:
    out = Path(cfg.dir)
    text = text_sources(cfg.sources)
    manifest = read_manifest(out)
    stale = None  # why the folder's corpus must be rebuilt, if it must
    if manifest is not None and manifest.get("fingerprint") != fingerprint(cfg):
        if not _older_format(manifest, cfg):
            raise DataError(
                f"{out} holds another corpus (prepared from {manifest.get('sources')} with other "
                f"settings); choose another data.dir or delete {out}"
            )
        stale = f"it was prepared by an older pdclm (shard format {manifest.get('version')})"
    elif (
        manifest is None
        and out.is_dir()
        and any(not p.name.endswith(".tmp") for p in out.iterdir())
    ):
        raise DataError(
            f"{out} is not empty and is not a PD-CLM data folder (no {MANIFEST}); "
            "choose another data.dir or empty it"
        )

    inputs = list_inputs(text, exclude=out)
    stdin_data: bytes | None = b""
    if "-" in text:
        earlier = (manifest or {}).get("inputs", {}).get(STDIN) if stale is None else None
        stdin_data = _read_stdin(stdin or sys.stdin.buffer, cfg.max_bytes, earlier is not None)
        inputs[STDIN] = (
            earlier
            if stdin_data is None
            else {"size": len(stdin_data), "sha256": hashlib.sha256(stdin_data).hexdigest()}
        )
    kept_stdin = stdin_data is None

    touched = 0
    if manifest is not None and stale is None:
        if "inputs" not in manifest:
            stale = "its manifest records no input sizes or hashes"
        else:
            changes, touched = compare_inputs(manifest["inputs"], inputs)
            stale = _summary(changes) if changes else None
    if manifest is not None and stale is None:
        reason = _reuse_reason(inputs, touched, kept_stdin)
        manifest["inputs"] = inputs  # the new modification times of touched files
        if manifest["complete"] and _shards_present(out, manifest):
            if touched:
                _write_manifest(out, manifest)
            print(f"prepare: reusing {out}: {reason}", file=sys.stderr)
            return manifest
        what = "rebuilding the missing shards of" if manifest["complete"] else "resuming"
        print(f"prepare: {what} {out}: {reason}", file=sys.stderr)
        manifest["complete"] = False
    elif manifest is not None:
        if kept_stdin:
            raise DataError(f"{out} must be rebuilt ({stale}), but stdin is empty; pipe it again")
        print(f"prepare: re-ingesting {out}: {stale}", file=sys.stderr)
        manifest = None

    digests: dict[str, str] = {}
    docs = resolve_sources(
        text, cfg.jsonl_field, io.BytesIO(stdin_data or b""), exclude=out, digests=digests
    )
    if kept_stdin:
        size = inputs[STDIN]["size"]
        docs = [Document(STDIN, _needed_stdin(out), size) if d.name == STDIN else d for d in docs]
    if cfg.max_bytes > 0:
        # Sample across the whole corpus rather than taking the first package or two.
        # a different hash than the split's: ordering by the same one would fill a capped
        # corpus with exactly the documents whose split hash is smallest, i.e. the val ones
        docs.sort(key=lambda d: _name_hash(d.name, "order"))
    out.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        total = sum(d.size or 0 for d in docs)
        if cfg.max_bytes > 0:
            total = min(total, cfg.max_bytes)
        chunk = 0 if whole_documents_suffice(docs, total, cfg.val_fraction) else None
        chunk = chunk_bytes(total, cfg.val_fraction) if chunk is None else chunk
        manifest = _new_manifest(cfg, inputs, chunk)
        _write_manifest(out, manifest)
    _recover(out, manifest)  # also drops the shards of a corpus being replaced
    return _ingest(out, cfg, manifest, docs, progress, digests)
