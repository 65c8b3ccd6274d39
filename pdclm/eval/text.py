"""Bits per byte of a model on any text: a file, a folder of text files or standard input,
read as ``pdclm prepare`` reads it (``pdclm eval --data``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pdclm.config import Config
from pdclm.data.ingest import DataError, resolve_sources
from pdclm.model.pdclm import next_symbol_loss
from pdclm.vocab import BOS, EOS


def text_bpb(model: nn.Module, cfg: Config, source: str) -> dict:
    """Bits per byte of ``model`` on the text of ``source`` (a file, a folder or ``-``): each
    document ``[BOS, *bytes, EOS]``, in windows of the model's ``train.seq_len`` that predict
    each byte once. The model computes its own entropy profile, and so its patches, from the
    text, as in generation."""
    n, rows = cfg.train.seq_len, cfg.train.batch
    total = {"bits": 0.0, "bytes": 0, "documents": 0}
    full: list[np.ndarray] = []

    def score(windows: list[np.ndarray]) -> None:
        t = torch.from_numpy(np.stack(windows))
        k = int((t[:, 1:] < 256).sum())  # byte targets (not the end-of-document symbol)
        if k:
            total["bits"] += float(next_symbol_loss(model(t), t[:, 1:])[1]) * k
            total["bytes"] += k

    with torch.no_grad():
        for doc in resolve_sources([source], cfg.data.jsonl_field):
            data = doc.read(None)  # the whole document
            if not data:
                continue
            total["documents"] += 1
            syms = np.concatenate([[BOS], np.frombuffer(data, np.uint8), [EOS]]).astype(np.int64)
            for start in range(0, len(syms) - 1, n):  # windows overlap by one symbol
                window = syms[start : start + n + 1]
                if len(window) <= n:
                    score([window])  # a document's last, shorter window: alone
                    continue
                full.append(window)
                if len(full) == rows:
                    score(full)
                    full.clear()
        if full:
            score(full)
    if not total["bytes"]:
        raise DataError(f"--data {source}: no text to score (empty)")
    result = {
        "bpb": total["bits"] / total["bytes"],
        "bytes": total["bytes"],
        "documents": total["documents"],
        "data": source,
    }
    return result
