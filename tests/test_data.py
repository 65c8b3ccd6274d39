"""Data layer: ingest round-trip, determinism, errors, resume, and the batch sampler."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pdclm.config import DataConfig
from pdclm.data import ingest
from pdclm.data.ingest import DataError, prepare, resolve_sources
from pdclm.data.shards import BatchSampler, ShardSet, write_profiles
from pdclm.vocab import BOS, EOS


def make_corpus(root: Path) -> dict[str, bytes]:
    """Text, binary and non-UTF-8 files; returns name -> bytes of what must be ingested."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    for i in range(10):
        words = rng.choice(
            [b"alpha", b"beta", b"gamma", b"\n", b"(x)"], size=int(rng.integers(50, 600))
        )
        files[f"text{i:02d}.txt"] = b" ".join(words)
    files["sub/deep/notes.md"] = b"# notes\n" * 40
    files["binary.dat"] = bytes(range(256))
    files["latin1.txt"] = "caf\xe9 na\xefve \xff".encode("latin-1") * 20
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty.txt").write_bytes(b"")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_bytes(b"hidden folder: never ingested")
    return {os.path.normpath(root / rel): data for rel, data in files.items()}


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "corpus"
    root.mkdir()
    return root, make_corpus(root)


def config(tmp_path: Path, sources: list, out: str = "out", **kw) -> DataConfig:
    kw.setdefault("shard_bytes", 1024)
    kw.setdefault("val_fraction", 0.3)
    return DataConfig(sources=[str(s) for s in sources], dir=str(tmp_path / out), **kw)


def decode(data_dir: Path, manifest: dict) -> dict[str, bytes]:
    """name -> bytes, read back from the shards of both splits in manifest order; the chunks
    of a long document (each its own piece) are joined, and must all be there."""
    chunks: dict[str, dict[int | None, bytes]] = {}
    for split in ("train", "val"):
        docs = []
        for s in manifest["shards"]:
            if s["split"] != split:
                continue
            arr = np.memmap(data_dir / s["name"], dtype=np.uint16, mode="r")
            starts = np.flatnonzero(arr == BOS)
            assert starts[0] == 0 and arr[-1] == EOS
            pieces = np.split(np.asarray(arr), starts[1:])
            assert len(pieces) == s["n_docs"]
            for p in pieces:
                assert p[0] == BOS and p[-1] == EOS and not np.any(p[1:-1] > 255)
                docs.append(p[1:-1].astype(np.uint8).tobytes())
        entries = [d for d in manifest["documents"] if d["split"] == split]
        assert len(entries) == len(docs)
        for e, data in zip(entries, docs, strict=True):
            assert len(data) == e["bytes"] > 0
            mine = chunks.setdefault(e["name"], {})
            assert e.get("chunk") not in mine
            mine[e.get("chunk")] = data
    found = {}
    for name, parts in chunks.items():
        if None in parts:
            assert len(parts) == 1
            found[name] = parts[None]
        else:
            n = next(e["chunks"] for e in manifest["documents"] if e["name"] == name)
            assert sorted(parts) == list(range(n)) and n > 1
            found[name] = b"".join(parts[k] for k in range(n))
    return found


def shard_files(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data_dir.glob("*.bin"))}


def test_round_trip_and_manifest(tmp_path, corpus):
    root, files = corpus
    cfg = config(tmp_path, [root])
    m = prepare(cfg, progress=False)
    out = Path(cfg.dir)
    assert m["complete"] and len(m["shards"]) > 2
    assert decode(out, m) == files
    for s in m["shards"]:
        assert hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    for split in ("train", "val"):
        docs = [d for d in m["documents"] if d["split"] == split]
        t = m["totals"][split]
        assert t["docs"] == len(docs) > 0
        assert t["bytes"] == sum(len(files[d["name"]]) for d in docs)
        assert t["symbols"] == t["bytes"] + 2 * t["docs"]
        assert t["symbols"] == sum(s["n_symbols"] for s in m["shards"] if s["split"] == split)
    # Reusing a finished folder returns its manifest without touching it.
    assert prepare(cfg, progress=False) == m


def test_deterministic_and_split_by_document(tmp_path, corpus):
    root, _ = corpus
    a = prepare(config(tmp_path, [root], "a"), progress=False)
    b = prepare(config(tmp_path, [root], "b"), progress=False)
    assert a == b
    assert shard_files(tmp_path / "a") == shard_files(tmp_path / "b")
    train = {d["name"] for d in a["documents"] if d["split"] == "train"}
    val = {d["name"] for d in a["documents"] if d["split"] == "val"}
    assert train and val and not train & val
    assert len(train) + len(val) == len(a["documents"])


def test_jsonl_bad_lines_warned_and_skipped(tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    lines = ['{"text": "first doc"}', "{not json", '{"other": 1}', "", '{"text": "caf\\u00e9"}']
    path.write_text("\n".join(lines) + "\n")
    docs = resolve_sources([str(path)])
    err = capsys.readouterr().err
    assert f"{path}:2" in err and f"{path}:3" in err and f"{path}:4" not in err
    assert [d.name for d in docs] == [f"{path}:1", f"{path}:5"]
    m = prepare(config(tmp_path, [path], val_fraction=0.0), progress=False)
    assert decode(tmp_path / "out", m) == {f"{path}:1": b"first doc", f"{path}:5": "café".encode()}


def test_stdin_and_file_sources(tmp_path):
    single = tmp_path / "one.bin"
    single.write_bytes(b"\x00\xff" * 10)
    cfg = config(tmp_path, ["-", single])
    m = prepare(cfg, progress=False, stdin=io.BytesIO(b"from stdin"))
    assert decode(tmp_path / "out", m) == {"<stdin>": b"from stdin", str(single): b"\x00\xff" * 10}
    # Two documents and val_fraction > 0: each split gets one.
    assert m["totals"]["train"]["docs"] == m["totals"]["val"]["docs"] == 1


def test_source_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="nope.txt"):
        prepare(config(tmp_path, [missing]), progress=False)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DataError, match="empty_dir"):
        prepare(config(tmp_path, [empty]), progress=False)
    (empty / "zero.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty_dir"):
        resolve_sources([str(empty)])
    pattern = str(tmp_path / "*.nothing")
    with pytest.raises(DataError, match=r"\*\.nothing"):
        prepare(config(tmp_path, [pattern]), progress=False)
    assert not (tmp_path / "out").exists()  # bad sources leave no folder behind


def test_empty_corpus_is_an_error(tmp_path):
    f = tmp_path / "blank.txt"
    f.write_bytes(b"")
    with pytest.raises(DataError, match="no bytes"):
        prepare(config(tmp_path, [f]), progress=False)


def test_unreadable_file_chmod(tmp_path):
    f = tmp_path / "secret.txt"
    f.write_bytes(b"top secret")
    f.chmod(0)
    try:
        if os.access(f, os.R_OK):
            pytest.skip("running as root: chmod 000 does not make the file unreadable")
        with pytest.raises(DataError, match="secret.txt"):
            prepare(config(tmp_path, [f]), progress=False)
    finally:
        f.chmod(0o644)


def test_unreadable_file_oserror(tmp_path, monkeypatch):
    f = tmp_path / "locked.txt"
    f.write_bytes(b"content")
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(DataError, match="locked.txt"):
        prepare(config(tmp_path, [f]), progress=False)


def interrupt_after(monkeypatch, n_shards: int) -> None:
    """Make prepare die while writing shard ``n_shards + 1``, leaving its .tmp behind."""
    real = ingest._write_shard
    calls = {"n": 0}

    def write_shard(path: Path, symbols: np.ndarray) -> str:
        calls["n"] += 1
        if calls["n"] > n_shards:
            path.with_name(path.name + ".tmp").write_bytes(b"partial")
            raise KeyboardInterrupt
        return real(path, symbols)

    monkeypatch.setattr(ingest, "_write_shard", write_shard)


def test_resume_after_kill(tmp_path, corpus, monkeypatch):
    root, _ = corpus
    ref = prepare(config(tmp_path, [root], "ref"), progress=False)
    cfg = config(tmp_path, [root])
    out = Path(cfg.dir)
    with monkeypatch.context() as mp:
        interrupt_after(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            prepare(cfg, progress=False)
    partial = json.loads((out / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == 1
    assert list(out.glob("*.tmp"))
    m = prepare(cfg, progress=False)
    assert m == ref
    assert shard_files(out) == shard_files(tmp_path / "ref")
    assert not list(out.glob("*.tmp"))


def test_corrupt_shard_is_redone(tmp_path, corpus, monkeypatch, capsys):
    root, _ = corpus
    ref = prepare(config(tmp_path, [root], "ref"), progress=False)
    cfg = config(tmp_path, [root])
    out = Path(cfg.dir)
    with monkeypatch.context() as mp:
        interrupt_after(mp, 3)
        with pytest.raises(KeyboardInterrupt):
            prepare(cfg, progress=False)
    first = out / json.loads((out / "manifest.json").read_text())["shards"][0]["name"]
    data = bytearray(first.read_bytes())
    data[5] ^= 0xFF
    first.write_bytes(bytes(data))
    m = prepare(cfg, progress=False)
    assert first.name in capsys.readouterr().err
    assert m == ref
    assert shard_files(out) == shard_files(tmp_path / "ref")


def test_other_corpus_in_folder_is_refused(tmp_path, corpus):
    root, _ = corpus
    prepare(config(tmp_path, [root]), progress=False)
    with pytest.raises(DataError, match="another corpus"):
        prepare(config(tmp_path, [root], val_fraction=0.1), progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not overwrite")
    with pytest.raises(DataError, match="foreign"):
        prepare(config(tmp_path, [root], "foreign"), progress=False)


def test_output_folder_inside_source_is_not_ingested(tmp_path, corpus, monkeypatch):
    root, files = corpus
    cfg = DataConfig(sources=[str(root)], dir=str(root / "shards"), shard_bytes=1024)
    with monkeypatch.context() as mp:
        interrupt_after(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            prepare(cfg, progress=False)
    m = prepare(cfg, progress=False)  # the resume walks a folder that now holds shards
    assert decode(root / "shards", m) == files


def test_stdlib_source(tmp_path):
    docs = resolve_sources(["stdlib"])
    names = [d.name for d in docs]
    assert len(docs) > 100
    assert any(n.startswith("pydoc:") for n in names)
    assert not any("site-packages" in n for n in names)
    cfg = config(tmp_path, ["stdlib"], max_bytes=200_000, shard_bytes=65536, val_fraction=0.05)
    m = prepare(cfg, progress=False)
    total = m["totals"]["train"]["bytes"] + m["totals"]["val"]["bytes"]
    assert m["totals"]["val"]["docs"] >= 1
    # Ingested in order-hash order until the cap, which cuts the last document at the byte.
    taken = sorted(m["documents"], key=lambda d: ingest._name_hash(d["name"], "order"))
    assert total - taken[-1]["bytes"] < 200_000 == total
    # ... which samples across the library instead of taking the first files in sorted order.
    assert {d["name"] for d in taken} != set(names[: len(taken)])


def test_a_capped_corpus_keeps_the_validation_share(tmp_path):
    # the cap's document order must not favour either split
    cfg = config(tmp_path, ["stdlib"], max_bytes=3_000_000, shard_bytes=1 << 20, val_fraction=0.1)
    m = prepare(cfg, progress=False)
    docs = m["totals"]["train"]["docs"] + m["totals"]["val"]["docs"]
    assert 0.04 < m["totals"]["val"]["docs"] / docs < 0.2, m["totals"]


# --------------------------------------------------------------------------------------------
# the cache is keyed on content; long documents are chunked; the cap cuts bytes


def words(n: int, seed: int = 0) -> bytes:
    """``n`` bytes of text on one line (no newline: one long document)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([b"alpha ", b"beta ", b"gamma ", b"(x) "])
    return b"".join(vocab[rng.integers(0, len(vocab), size=n // 4 + 1)])[:n]


def test_changed_stdin_is_reingested(tmp_path, capsys):
    cfg = config(tmp_path, ["-"])
    first, other = words(20_000), words(9_000, seed=1)
    a = prepare(cfg, progress=False, stdin=io.BytesIO(first))
    assert decode(tmp_path / "out", a) == {"<stdin>": first}
    capsys.readouterr()
    assert prepare(cfg, progress=False, stdin=io.BytesIO(first)) == a
    err = capsys.readouterr().err
    assert "reusing" in err and "stdin has the same content" in err
    b = prepare(cfg, progress=False, stdin=io.BytesIO(other))
    err = capsys.readouterr().err
    assert "re-ingesting" in err and "stdin differs" in err and "9,000 bytes" in err
    assert decode(tmp_path / "out", b) == {"<stdin>": other}
    assert b["totals"]["train"]["bytes"] + b["totals"]["val"]["bytes"] == len(other)
    # No new input (`pdclm run` after `cat book | pdclm prepare`): the stdin corpus is kept.
    assert prepare(cfg, progress=False, stdin=io.BytesIO(b"")) == b
    assert "stdin is empty or a terminal" in capsys.readouterr().err


def test_empty_stdin_cannot_rebuild(tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_bytes(b"some text")
    cfg = config(tmp_path, ["-", extra])
    prepare(cfg, progress=False, stdin=io.BytesIO(words(5000)))
    extra.write_bytes(b"other text, longer")
    with pytest.raises(DataError, match="extra.txt changed size.*pipe it again"):
        prepare(cfg, progress=False, stdin=io.BytesIO(b""))
    assert decode(tmp_path / "out", ingest.read_manifest(tmp_path / "out"))[str(extra)] == (
        b"some text"  # the cache was left as it was
    )


def test_killed_stdin_prepare_needs_its_input_again(tmp_path, monkeypatch, capsys):
    book = words(60_000)
    kw = {"shard_bytes": 8192, "val_fraction": 0.1}
    ref = prepare(config(tmp_path, ["-"], "ref", **kw), progress=False, stdin=io.BytesIO(book))
    cfg = config(tmp_path, ["-"], **kw)
    with monkeypatch.context() as mp:
        interrupt_after(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            prepare(cfg, progress=False, stdin=io.BytesIO(book))
    with pytest.raises(DataError, match="needs the stdin corpus again.*pipe it again"):
        prepare(cfg, progress=False, stdin=io.BytesIO(b""))
    assert prepare(cfg, progress=False, stdin=io.BytesIO(book)) == ref
    assert "resuming" in capsys.readouterr().err
    assert shard_files(tmp_path / "out") == shard_files(tmp_path / "ref")


def test_changed_file_is_reingested(tmp_path, capsys):
    f = tmp_path / "book.txt"
    f.write_bytes(words(10_000))
    cfg = config(tmp_path, [f])
    a = prepare(cfg, progress=False)
    assert a["inputs"][str(f)]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    capsys.readouterr()
    assert prepare(cfg, progress=False) == a
    assert "reusing" in capsys.readouterr().err
    with open(f, "ab") as fh:
        fh.write(words(50 * 1024, seed=2))
    b = prepare(cfg, progress=False)
    assert "book.txt changed size (10,000 -> 61,200 bytes)" in capsys.readouterr().err
    assert decode(tmp_path / "out", b) == {str(f): f.read_bytes()}
    # Touched but not changed: hashed, found equal, reused (and the new time recorded).
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert prepare(cfg, progress=False)["shards"] == b["shards"]
    assert "1 touched since, with the same SHA-256" in capsys.readouterr().err
    assert prepare(cfg, progress=False)["inputs"][str(f)]["mtime_ns"] == st.st_mtime_ns + 10**9
    assert "touched" not in capsys.readouterr().err
    # Same size, other content, new time: re-ingested.
    f.write_bytes(f.read_bytes().upper())
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    c = prepare(cfg, progress=False)
    assert "book.txt was modified (same size, other content)" in capsys.readouterr().err
    assert decode(tmp_path / "out", c) == {str(f): f.read_bytes()}


def test_file_added_to_a_folder_is_reingested(tmp_path, corpus, capsys):
    root, files = corpus
    cfg = config(tmp_path, [root])
    prepare(cfg, progress=False)
    capsys.readouterr()
    added = root / "sub" / "added.txt"
    added.write_bytes(b"a new document")
    m = prepare(cfg, progress=False)
    assert f"{added} was added" in capsys.readouterr().err
    assert decode(tmp_path / "out", m) == files | {str(added): b"a new document"}
    assert shard_files(tmp_path / "out") == {  # no shard of the old corpus is left behind
        s["name"]: (tmp_path / "out" / s["name"]).read_bytes() for s in m["shards"]
    }
    added.unlink()
    m = prepare(cfg, progress=False)
    assert f"{added} is gone" in capsys.readouterr().err
    assert decode(tmp_path / "out", m) == files


def test_folder_of_an_older_format_is_rebuilt(tmp_path, corpus, capsys):
    root, files = corpus
    cfg = config(tmp_path, [root])
    m = prepare(cfg, progress=False)
    old = {k: v for k, v in m.items() if k != "inputs"} | {"version": 2, "fingerprint": "x"}
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(old))
    assert decode(tmp_path / "out", prepare(cfg, progress=False)) == files
    assert "older pdclm (shard format 2)" in capsys.readouterr().err


def test_one_document_gives_train_and_val(tmp_path):
    book = words(100_000)
    f = tmp_path / "book.txt"
    f.write_bytes(book)
    chunkings = []
    for source, stdin, out in ((f, None, "file"), ("-", io.BytesIO(book), "stdin")):
        cfg = config(tmp_path, [source], out, val_fraction=0.02, shard_bytes=16 * 2**20)
        m = prepare(cfg, progress=False, stdin=stdin)
        name = str(f) if source == f else "<stdin>"
        assert decode(tmp_path / out, m) == {name: book}
        for split in ("train", "val"):
            t = m["totals"][split]
            assert t["docs"] == 1 and t["pieces"] >= 1 and t["bytes"] > 0
            assert t["symbols"] == t["bytes"] + 2 * t["pieces"]
            assert ShardSet.open(tmp_path / out, split).n_symbols == t["symbols"]
        assert m["chunk_bytes"] == ingest.MIN_CHUNK
        assert max(d["bytes"] for d in m["documents"]) <= ingest.MIN_CHUNK
        chunkings.append(sorted((d["chunk"], d["bytes"]) for d in m["documents"]))
    assert chunkings[0] == chunkings[1]


def test_chunks_scale_with_the_expected_validation_bytes(tmp_path):
    assert ingest.chunk_bytes(1000, 0.0) == 0  # nothing held out, nothing cut
    assert ingest.chunk_bytes(10_000, 0.1) == ingest.MIN_CHUNK
    assert ingest.chunk_bytes(10_000_000, 0.1) == 250_000
    assert ingest._bounds(10, 0) == [0, 10]
    assert ingest._bounds(10, 4) == [0, 3, 6, 10]
    f = tmp_path / "big.txt"
    f.write_bytes(words(400_000))
    m = prepare(config(tmp_path, [f], val_fraction=0.1, shard_bytes=2**20), progress=False)
    assert m["chunk_bytes"] == 10_000
    pieces = m["totals"]["train"]["pieces"] + m["totals"]["val"]["pieces"]
    assert pieces == 40 and 0.02 < m["totals"]["val"]["bytes"] / 400_000 < 0.3


def test_max_bytes_cuts_one_long_document(tmp_path, monkeypatch, capsys):
    line = words(1_000_000)
    f = tmp_path / "one_line.txt"
    f.write_bytes(line)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} read whole"))
    cfg = config(tmp_path, [f], max_bytes=30_000, val_fraction=0.1, shard_bytes=2**20)
    m = prepare(cfg, progress=False)
    assert "cut to 30,000 of its 1,000,000 bytes" in capsys.readouterr().err
    assert decode(tmp_path / "out", m) == {str(f): line[:30_000]}
    assert m["totals"]["train"]["pieces"] >= 1 and m["totals"]["val"]["pieces"] >= 1
    # Capped stdin is read no further than the cap, and cut at the byte too.
    cfg = config(tmp_path, ["-"], "stdin", max_bytes=30_000, val_fraction=0.1)
    stream = io.BytesIO(line)
    m = prepare(cfg, progress=False, stdin=stream)
    assert stream.tell() == 30_000
    assert decode(tmp_path / "stdin", m) == {"<stdin>": line[:30_000]}


def test_resume_inside_a_chunked_document(tmp_path, monkeypatch):
    a = tmp_path / "a.txt"  # one document: whole documents cannot fill both splits
    a.write_bytes(words(120_000))
    kw = {"shard_bytes": 20_000, "val_fraction": 0.3}
    ref = prepare(config(tmp_path, [a], "ref", **kw), progress=False)
    assert ref["chunk_bytes"] < 60_000
    assert decode(tmp_path / "ref", ref) == {str(a): a.read_bytes()}
    for n in (1, 2, 4):
        cfg = config(tmp_path, [a], f"cut{n}", **kw)
        with monkeypatch.context() as mp:
            interrupt_after(mp, n)
            with pytest.raises(KeyboardInterrupt):
                prepare(cfg, progress=False)
        partial = json.loads((tmp_path / f"cut{n}" / "manifest.json").read_text())
        done = {(d["name"], d["chunk"]) for d in partial["documents"]}
        # killed with a document only partly on disk: the resume re-reads it, skipping those
        assert any(
            (d["name"], k) not in done for d in partial["documents"] for k in range(d["chunks"])
        )
        assert prepare(cfg, progress=False) == ref
        assert shard_files(tmp_path / f"cut{n}") == shard_files(tmp_path / "ref")


def test_run_problems_are_warned_at_prepare(tmp_path, capsys):
    cfg = config(tmp_path, ["-"], "tiny")
    m = prepare(cfg, progress=False, stdin=io.BytesIO(b"a short text"))
    assert m["totals"]["val"]["pieces"] == 0
    assert "warning: no validation data" in capsys.readouterr().err
    cfg = config(tmp_path, ["-"], "short", val_fraction=0.1)
    prepare(cfg, progress=False, stdin=io.BytesIO(words(20_000)), seq_len=8192)
    err = capsys.readouterr().err
    assert "largest val shard" in err and "largest train shard" in err and "8,193" in err
    prepare(cfg, progress=False, stdin=io.BytesIO(words(20_000)), seq_len=128)
    assert "warning" not in capsys.readouterr().err
    cfg = config(tmp_path, ["-"], "noval", val_fraction=0.0)
    prepare(cfg, progress=False, stdin=io.BytesIO(words(20_000)))
    assert "data.val_fraction is 0" in capsys.readouterr().err


@pytest.fixture
def prepared(tmp_path, corpus) -> Path:
    root, _ = corpus
    cfg = config(tmp_path, [root], shard_bytes=2048)
    prepare(cfg, progress=False)
    return Path(cfg.dir)


def test_shardset_open_errors(tmp_path, prepared):
    with pytest.raises(DataError, match="manifest"):
        ShardSet.open(tmp_path / "nothing", "train")
    ss = ShardSet.open(prepared, "train")
    assert ss.n_symbols == sum(len(s) for s in ss.shards) > 0
    assert len(ss.names) == len(ss.shards) and ss.profile("absent") is None
    m = json.loads((prepared / "manifest.json").read_text())
    m["complete"] = False
    (prepared / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="partly prepared"):
        ShardSet.open(prepared, "train")


def test_batch_sampler(prepared, monkeypatch):
    write_profiles(prepared, "ident", lambda s: s.astype(np.float32), progress=False)
    monkeypatch.setattr(np, "fromfile", lambda *a, **k: pytest.fail("profile recomputed"))
    write_profiles(prepared, "ident", lambda s: s.astype(np.float32), progress=False)
    monkeypatch.undo()

    train = ShardSet.open(prepared, "train")
    sampler = BatchSampler(train, seq_len=32, batch=4, seed=7, profile_tag="ident")
    x, ent = sampler.batch(5)
    assert x.shape == ent.shape == (4, 33)
    assert x.dtype == np.int64 and ent.dtype == np.float32
    assert np.array_equal(ent, x.astype(np.float32))
    again = BatchSampler(train, seq_len=32, batch=4, seed=7, profile_tag="ident").batch(5)
    assert np.array_equal(again[0], x) and np.array_equal(again[1], ent)
    assert not np.array_equal(sampler.batch(6)[0], x)
    assert not np.array_equal(BatchSampler(train, 32, 4, seed=8).batch(5)[0], x)
    assert BatchSampler(train, 32, 4, seed=7).batch(5)[1] is None

    fixed = sampler.fixed_batches(3)
    assert len(fixed) == 3
    for (a, ea), (b, eb) in zip(fixed, sampler.fixed_batches(3), strict=True):
        assert a.shape == (4, 33) and np.array_equal(a, b) and np.array_equal(ea, eb)
        assert np.array_equal(ea, a.astype(np.float32))
    assert not np.array_equal(fixed[0][0], fixed[1][0])

    with pytest.raises(DataError, match="smaller than one sequence"):
        BatchSampler(train, seq_len=train.n_symbols + 10, batch=2, seed=0)
    with pytest.raises(DataError, match="profile"):
        BatchSampler(train, seq_len=32, batch=2, seed=0, profile_tag="missing")


def test_stale_profile_is_recomputed(prepared):
    write_profiles(prepared, "p", lambda s: np.zeros(len(s)), progress=False)
    stale, kept = sorted(p.name for p in prepared.glob("*.bin"))[:2]
    record = prepared / "profile-p" / stale.replace(".bin", ".sha256")
    record.write_text("0" * 64)  # as if the shard had been rebuilt with other content
    split = stale.split("_")[0]
    assert ShardSet.open(prepared, split).profile("p") is None
    write_profiles(prepared, "p", lambda s: np.ones(len(s)), progress=False)
    assert ShardSet.open(prepared, split).profile("p") is not None
    folder = prepared / "profile-p"
    assert np.all(np.fromfile(folder / stale.replace(".bin", ".f16"), np.float16) == 1)
    assert np.all(np.fromfile(folder / kept.replace(".bin", ".f16"), np.float16) == 0)


def test_a_corpus_of_many_documents_is_split_by_whole_documents(tmp_path):
    """Cutting is for corpora whose whole documents cannot fill both splits: with enough
    documents none is cut, so no document has text on both sides."""
    src = tmp_path / "docs"
    src.mkdir()
    for i in range(40):
        (src / f"{i}.txt").write_bytes(words(6_000, seed=i))
    m = prepare(config(tmp_path, [src], "many", val_fraction=0.2), progress=False)
    assert m["chunk_bytes"] == 0 and all("chunk" not in d for d in m["documents"])
    assert m["totals"]["val"]["pieces"] > 0 and m["totals"]["train"]["pieces"] > 0
