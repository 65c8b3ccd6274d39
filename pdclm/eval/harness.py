"""A PD-CLM model behind EleutherAI's lm-evaluation-harness ``LM`` interface.

:class:`PDCLMScorer` does the work and needs no harness: log-likelihoods of continuations
(batched, right-padded: patching and every layer are causal, so padding after a sequence
changes nothing before it), rolling log-likelihoods of whole texts (windows of the trained
length, each target scored once with at least half a window of context), and greedy
generation until a stop string (the cached stream). :func:`lm_class` wraps it as the
harness's ``LM``, registered as ``pdclm`` (lm-eval is the optional ``lmeval`` extra)::

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from pdclm.eval.harness import lm_class
    lm = lm_class()(ckpt="runs/r1")
    simple_evaluate(model=lm, tasks=["my_task"], task_manager=TaskManager(include_path="tasks/"))

Text is UTF-8 bytes; a context starts with the document-start symbol, as training text does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pdclm.model.io import load_model
from pdclm.model.pdclm import PDCLM
from pdclm.vocab import BOS, EOS


class PDCLMScorer:
    def __init__(self, model: PDCLM, max_len: int, batch: int = 8) -> None:
        self.model, self.max_len, self.batch = model.eval(), max_len, batch

    @classmethod
    def from_ckpt(cls, ckpt: str | Path | None, batch: int = 8) -> PDCLMScorer:

        model, cfg = load_model(ckpt)
        return cls(model, cfg.train.seq_len, batch)

    @torch.no_grad()
    def _logprobs(self, seqs: list[list[int]]) -> list[Tensor]:
        """Per sequence, log p(symbol t | symbols before t) for t = 1..len-1."""
        out: list[Tensor] = []
        for i in range(0, len(seqs), self.batch):
            part = seqs[i : i + self.batch]
            n = max(len(s) for s in part)
            x = torch.full((len(part), n), EOS, dtype=torch.long)
            for j, s in enumerate(part):
                x[j, : len(s)] = torch.tensor(s)
            logp = F.log_softmax(self.model(x).float(), dim=-1)
            picked = logp.gather(-1, x[:, 1:, None])[..., 0]
            greedy = logp.argmax(-1) == x[:, 1:]
            out += [
                torch.stack([picked[j, : len(s) - 1], greedy[j, : len(s) - 1].float()])
                for j, s in enumerate(part)
            ]
        return out

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log p(continuation | context) in nats, whether greedy decoding gives it)."""
        seqs, conts = [], []
        for context, continuation in pairs:
            ctx, cont = [BOS, *context.encode()], list(continuation.encode())
            if not cont:
                raise ValueError("an empty continuation has no log-likelihood")
            seq = (ctx + cont)[-(self.max_len + 1) :]  # the trained length; context cut on the left
            seqs.append(seq)
            conts.append(min(len(cont), len(seq) - 1))
        res = []
        for lp, k in zip(self._logprobs(seqs), conts, strict=True):
            res.append((float(lp[0, -k:].sum()), bool(lp[1, -k:].all())))
        return res

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        """log p(text) in nats: every byte scored once, in windows of the trained length."""
        L = self.max_len + 1
        step = max(1, L // 2)
        out = []
        for text in texts:
            seq = [BOS, *text.encode()]
            windows, scored = [], []
            for s in range(1, len(seq), step):  # targets seq[s : s + step]
                lo = max(0, min(s, len(seq)) - (L - step))
                windows.append(seq[lo : s + step])
                scored.append(min(step, len(seq) - s))
            total = 0.0
            for lp, k in zip(self._logprobs(windows), scored, strict=True):
                total += float(lp[0, -k:].sum())
            out.append(total)
        return out

    @torch.no_grad()
    def generate_until(self, requests: list[tuple[str, dict]]) -> list[str]:
        """Greedy continuation of each context until a stop string (not included), the end
        of a document, or ``max_gen_toks`` bytes."""
        out = []
        for context, kwargs in requests:
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            limit = int(kwargs.get("max_gen_toks", 256))
            prompt = [BOS, *context.encode()][-self.max_len :]
            made = bytearray()
            text = ""
            for sym in self.model.generate(prompt, limit, temperature=0.0, stop=(EOS,)):
                if sym >= 256:
                    break
                made.append(sym)
                text = made.decode("utf-8", "replace")
                if any(u and u in text for u in until):
                    break
            cut = min([text.index(u) for u in until if u and u in text] or [len(text)])
            out.append(text[:cut])
        return out


_LM_CLASS = None


def lm_class():
    """The harness's ``LM`` subclass for PD-CLM, registered as ``pdclm`` (needs lm-eval:
    ``pip install -e '.[lmeval]'``)."""
    global _LM_CLASS
    if _LM_CLASS is not None:
        return _LM_CLASS
    try:
        from lm_eval.api.model import LM
        from lm_eval.api.registry import register_model
    except ImportError as e:
        raise ImportError("lm-eval is not installed: pip install -e '.[lmeval]'") from e

    @register_model("pdclm")
    class PDCLMLM(LM):
        """``--model pdclm --model_args ckpt=RUN_OR_MODEL_DIR``."""

        def __init__(self, ckpt: str | None = None, batch_size: int | str = 8, **_: object):
            super().__init__()
            size = int(batch_size) if str(batch_size).isdigit() else 8
            self.scorer = PDCLMScorer.from_ckpt(ckpt, size)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self.scorer.loglikelihood([tuple(r.args) for r in requests])

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self.scorer.loglikelihood_rolling([r.args[0] for r in requests])

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self.scorer.generate_until([tuple(r.args) for r in requests])

    _LM_CLASS = PDCLMLM
    return PDCLMLM
