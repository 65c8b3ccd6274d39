"""Baselines the benchmarks compare PD-CLM against, trained through the same loop and data.

- :class:`TokenTransformer` over bytes (patch length 1: every byte is a position) or over
  byte-level BPE ids, both with a KV-cached :class:`TokenStream` for generation;
- :class:`BPETokenizer`: byte-level BPE trained with the ``tokenizers`` package on the
  training split. Every byte maps to one printable character first (GPT-2's table), so any
  byte sequence, valid UTF-8 or not, encodes and decodes exactly, and a token's length in
  bytes is its length in characters; control symbols (document delimiters) become one
  separator token that carries no bytes.

Sizes are matched on non-embedding parameters (embedding tables and the output head are
lookups and one projection whose size is set by the vocabulary, not compute per position).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pdclm.io import load_weights, save_weights, write_json_atomic
from pdclm.layers import Stack, init_weights
from pdclm.model.pdclm import LN2
from pdclm.vocab import VOCAB_SIZE


def non_embedding_params(model: nn.Module) -> int:
    """Trainable parameters outside embedding tables and the output head."""
    skip = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        skip |= {id(p) for p in head.parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in skip)


class TokenTransformer(nn.Module):
    """A plain causal transformer over a token vocabulary (bytes, or BPE ids)."""

    def __init__(
        self,
        dim: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 8 / 3,
        vocab: int = VOCAB_SIZE,
    ) -> None:
        super().__init__()
        self.spec = {
            "dim": dim,
            "layers": layers,
            "heads": heads,
            "mlp_ratio": mlp_ratio,
            "vocab": vocab,
        }
        self.embed = nn.Embedding(vocab, dim)
        self.stack = Stack(dim, heads, layers, mlp_ratio)
        self.head = nn.Linear(dim, vocab, bias=False)
        init_weights(self)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: Tensor, entropy: Tensor | None = None) -> Tensor:
        """Logits (B, N-1, V) predicting ``tokens[:, 1:]``; ``entropy`` is ignored."""
        return self.head(self.stack(self.embed(tokens[:, :-1])))

    def start_stream(self, batch: int = 1) -> TokenStream:
        return TokenStream(self, batch)


class TokenStream:
    """Incremental generation: one cached step per token for B rows that advance together."""

    def __init__(self, model: TokenTransformer, batch: int = 1) -> None:
        self.model, self.batch = model, batch
        self.caches = model.stack.new_caches()
        self.length = 0
        self.device = model.head.weight.device

    @torch.no_grad()
    def push(self, tokens: Tensor) -> Tensor:
        """Append one token per row (B,); return logits (B, V) for the token after each."""
        m = self.model
        pos = torch.tensor([self.length], device=self.device)
        self.length += 1
        x = m.embed(tokens.to(self.device).long()[:, None])
        return m.head(m.stack(x, pos, caches=self.caches))[:, -1]


def matched_transformer(
    target: int, dim: int, heads: int, mlp_ratio: float, vocab: int = VOCAB_SIZE
) -> TokenTransformer:
    """The transformer of width ``dim`` whose depth brings its non-embedding parameter count
    closest to ``target``."""
    per_layer = sum(p.numel() for p in Stack(dim, heads, 1, mlp_ratio).blocks.parameters())
    fixed = non_embedding_params(TokenTransformer(dim, 0, heads, mlp_ratio, vocab))
    layers = max(1, round((target - fixed) / per_layer))
    torch.manual_seed(0)
    return TokenTransformer(dim, layers, heads, mlp_ratio, vocab)


def save_baseline(model: TokenTransformer, folder: Path, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "model.safetensors")
    write_json_atomic(folder / "baseline.json", {**model.spec, **(extra or {})})
    return folder


def load_baseline(folder: Path) -> tuple[TokenTransformer, dict]:
    spec = json.loads((folder / "baseline.json").read_text())
    keys = ("dim", "layers", "heads", "mlp_ratio", "vocab")
    model = TokenTransformer(**{k: spec[k] for k in keys})
    load_weights(model, folder / "model.safetensors")
    return model.eval(), spec


# ------------------------------------------------------------------------------------- BPE


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (a bijection on 256 values)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


BYTE_CHARS = _byte_chars()
_TO_CHARS = {b: c for b, c in enumerate(BYTE_CHARS)}  # str.translate table over latin-1 text
_TO_BYTES = {c: b for b, c in enumerate(BYTE_CHARS)}
_WS = "".join(BYTE_CHARS[b] for b in b" \t\n\r")
_LETTER = "A-Za-z\u00a1-\u00ff"  # ASCII letters and the bytes of multi-byte UTF-8 sequences
# GPT-2's pre-tokenisation, written over the mapped characters: words with their leading
# space, digit runs, punctuation runs, whitespace (the last space joins the next word)
SPLIT_PATTERN = (
    f"[{_WS[0]}]?[{_LETTER}]+|[{_WS[0]}]?[0-9]{{1,3}}|[{_WS[0]}]?[^{_LETTER}0-9{_WS}]+"
    f"|[{_WS}]+(?![^{_WS}])|[{_WS}]+"
)
SEP = "<|sep|>"


def to_chars(data: bytes) -> str:
    return data.decode("latin-1").translate(_TO_CHARS)


def byte_runs(symbols: np.ndarray) -> list[bytes]:
    """The byte runs between control symbols (which become separators)."""
    cuts = np.flatnonzero(symbols >= 256)
    runs, last = [], 0
    for c in [*cuts.tolist(), len(symbols)]:
        runs.append(symbols[last:c].astype(np.uint8).tobytes())
        last = c + 1
    return runs


class BPETokenizer:
    """Byte-level BPE over the project's symbol streams (see the module docstring)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.sep = tokenizer.token_to_id(SEP)
        vocab = tokenizer.get_vocab()
        self.vocab_size = tokenizer.get_vocab_size()
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        self.pieces: list[bytes] = [b""] * self.vocab_size
        for piece, i in vocab.items():
            if piece != SEP:
                self.pieces[i] = bytes(_TO_BYTES[c] for c in piece)
                lengths[i] = len(piece)
        self.token_bytes = lengths
        """Bytes each token stands for (0 for the separator)."""

    @classmethod
    def train(cls, runs, vocab_size: int) -> BPETokenizer:
        """Learn merges from byte runs (an iterable of ``bytes``)."""
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(
                f"bench.bpe_vocab must be >= 257 (256 bytes + a separator); got {vocab_size}"
            )
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[SEP],
            initial_alphabet=BYTE_CHARS,
            show_progress=False,
        )
        tok.train_from_iterator((to_chars(r) for r in runs if r), trainer=trainer)
        return cls(tok)

    def save(self, path: Path) -> None:
        self.tok.save(str(path))

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def encode(self, data: bytes) -> list[int]:
        return self.tok.encode(to_chars(data)).ids if data else []

    def encode_symbols(self, symbols: np.ndarray) -> list[int]:
        """A symbol stream as ids: its byte runs encoded, a separator for each control symbol."""
        runs = byte_runs(symbols)
        encoded = self.tok.encode_batch([to_chars(r) for r in runs])
        out: list[int] = []
        for i, e in enumerate(encoded):
            if i:
                out.append(self.sep)
            out.extend(e.ids)
        return out

    def decode(self, ids: list[int]) -> bytes:
        return b"".join(self.pieces[i] for i in ids)


@dataclass
class TokenSplit:
    """Encoded ids in the shape :class:`~pdclm.data.shards.BatchSampler` samples from."""

    shards: list[np.ndarray]
    split: str
    data_dir: Path
    n_symbols: int


def encode_split(tok: BPETokenizer, shards: list[np.ndarray]) -> np.ndarray:
    """All shards of a split as one id array (shards joined by a separator)."""
    ids: list[int] = []
    for s in shards:
        if ids:
            ids.append(tok.sep)
        ids.extend(tok.encode_symbols(np.asarray(s)))
    return np.asarray(ids, dtype=np.uint16 if tok.vocab_size <= 65536 else np.int64)


def train_bpe(train_shards: list[np.ndarray], vocab_size: int, folder: Path) -> dict:
    """Train the tokenizer on the training split and encode it; both timed (they are the BPE
    model's data-pipeline cost). Writes ``tokenizer.json`` and ``train_ids.npy``."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tok = BPETokenizer.train(
        (r for s in train_shards for r in byte_runs(np.asarray(s))), vocab_size
    )
    t1 = time.perf_counter()
    ids = encode_split(tok, train_shards)
    t2 = time.perf_counter()
    tok.save(folder / "tokenizer.json")
    np.save(folder / "train_ids.npy", ids)
    n_bytes = int(tok.token_bytes[ids.astype(np.int64)].sum())
    return {
        "vocab": tok.vocab_size,
        "train_seconds": t1 - t0,
        "encode_seconds": t2 - t1,
        "tokens": int(len(ids)),
        "bytes": n_bytes,
        "bytes_per_token": n_bytes / max(1, len(ids)),
    }


def bpe_losses(
    logits: Tensor, targets: Tensor, token_bytes: Tensor, valid: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean cross-entropy (nats) over real targets, their summed bits, and their summed bytes.

    Separator targets (0 bytes) and padding (``valid`` False) are left out, so bits / bytes is
    bits per byte over exactly the bytes the targets stand for."""
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    nbytes = token_bytes[targets.reshape(-1)].float()
    keep = (nbytes > 0).float()
    if valid is not None:
        keep = keep * valid.reshape(-1).float()
    loss = (ce * keep).sum() / keep.sum().clamp(min=1)
    return loss, (ce * keep).sum() / LN2, (nbytes * keep).sum()


def bpe_loss_fn(token_bytes: Tensor):
    """A loop objective for the BPE model: cross-entropy per token, bits per byte as metric."""

    def loss_fn(model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
        ids = batch[0]
        tb = token_bytes.to(ids.device)
        loss, bits, nbytes = bpe_losses(model(ids), ids[:, 1:], tb)
        return loss, {"bpb": float(bits.detach() / nbytes.clamp(min=1))}

    return loss_fn


def pad_rows(rows: list[list[int]], fill: int) -> tuple[Tensor, Tensor]:
    """Right-padded ids (B, N) and a mask of real positions."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), fill, dtype=torch.long)
    valid = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        valid[i, : len(r)] = True
    return ids, valid


@torch.no_grad()
def bpe_bpb(
    model: nn.Module, tok: BPETokenizer, windows: list[np.ndarray], batch: int = 8
) -> float:
    """Bits per byte of the BPE model over symbol windows (the byte models' held-out windows):
    each window is encoded on its own, so the BPE model reads the same bytes they read."""
    tb = torch.from_numpy(tok.token_bytes)
    device = next(model.parameters()).device
    bits, nbytes = 0.0, 0.0
    for i in range(0, len(windows), batch):
        rows = [tok.encode_symbols(w) for w in windows[i : i + batch]]
        rows = [r for r in rows if len(r) >= 2]
        if not rows:
            continue
        ids, valid = pad_rows(rows, tok.sep)
        ids, valid = ids.to(device), valid.to(device)
        _, b, n = bpe_losses(model(ids), ids[:, 1:], tb.to(device), valid[:, 1:])
        bits, nbytes = bits + float(b), nbytes + float(n)
    return bits / max(1.0, nbytes)
