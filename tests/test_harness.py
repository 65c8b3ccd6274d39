"""External evaluation: the lm-eval adapter's figures equal the model's own; ``pdclm export``
writes a model folder that loads back bit-identically."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pdclm.cli import main
from pdclm.config import to_dict
from pdclm.eval.harness import PDCLMScorer
from pdclm.io import write_json_atomic
from pdclm.model.io import load_model, save_model
from pdclm.model.pdclm import PDCLM
from pdclm.train.checkpoint import save_checkpoint
from pdclm.vocab import BOS
from tests.conftest import tiny_config


def random_model(tmp_path: Path | None = None) -> tuple[PDCLM, object]:
    cfg = tiny_config(tmp_path)
    cfg.pse.patcher.threshold = 0.05
    model = PDCLM(cfg.pse, cfg.model).eval()
    with torch.no_grad():  # random but not tiny weights, so every path matters
        for p in model.parameters():
            p.normal_(0, 0.15)
    model.threshold.fill_(0.05)
    return model, cfg


def own_logprob(model: PDCLM, context: str, continuation: str) -> tuple[float, bool]:
    """The model's own figure: one unpadded forward pass over the whole sequence."""
    seq = [BOS, *context.encode(), *continuation.encode()]
    k = len(continuation.encode())
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([seq])).float(), -1)[0]
    picked = logp[-k:].gather(-1, torch.tensor(seq[-k:])[:, None])[:, 0]
    return float(picked.sum()), bool((logp[-k:].argmax(-1) == torch.tensor(seq[-k:])).all())


def test_adapter_loglikelihoods_equal_the_models_own():
    model, cfg = random_model()
    scorer = PDCLMScorer(model, cfg.train.seq_len, batch=3)
    pairs = [
        ("Question: what is 2 + 3?\nAnswer:", " 5"),
        ("short", " and a much longer continuation, with\nnewlines"),
        ("", "x"),
        ("ünïcode ", "ça va"),
    ]
    got = scorer.loglikelihood(pairs)  # batched and right-padded
    for (ctx, cont), (lp, greedy) in zip(pairs, got, strict=True):
        want, want_greedy = own_logprob(model, ctx, cont)
        assert lp == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    # the cached stream (the generation path) gives the same figure
    ctx, cont = pairs[0]
    stream, total = model.start_stream(), 0.0
    with torch.no_grad():
        logits = None
        for s in [BOS, *ctx.encode()]:
            logits = stream.push_one(s)
        for b in cont.encode():
            total += float(F.log_softmax(logits.float(), -1)[b])
            logits = stream.push_one(b)
    assert got[0][0] == pytest.approx(total, abs=1e-3)
    # rolling: a text shorter than a window is one forward pass; a long one is scored in
    # windows, every byte once
    short = "def f(x):\n    return x\n"
    assert scorer.loglikelihood_rolling([short])[0] == pytest.approx(
        own_logprob(model, "", short)[0], abs=1e-4
    )
    long = "abc def ghi\n" * 40  # 480 bytes: several windows of the trained 128
    rolled = scorer.loglikelihood_rolling([long])[0]
    assert rolled < 0 and math_close_per_byte(rolled, len(long), own_logprob(model, "", long)[0])
    out = scorer.generate_until([("abc", {"until": ["\n"], "max_gen_toks": 20})])
    assert len(out) == 1 and "\n" not in out[0] and len(out[0].encode()) <= 20


def math_close_per_byte(a: float, n: int, b: float) -> bool:
    """Windowed and whole-sequence scores of a long text agree per byte within 0.3 nats (they
    differ only in how much context the first bytes of each window see)."""
    return abs(a - b) / n < 0.3


def test_lm_eval_harness_runs_a_local_task(tmp_path, monkeypatch):
    """The harness itself (when installed), offline, on a task file beside its data."""
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from pdclm.eval.harness import lm_class

    model, cfg = random_model(tmp_path)
    save_model(model, cfg, tmp_path / "model")
    monkeypatch.chdir(tmp_path)  # relative data_files resolve against the working directory
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [
        {"q": "2 + 3 =", "choices": [" 5", " 7"], "gold": 0},
        {"q": "The sky is", "choices": [" green", " blue"], "gold": 1},
    ]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_qa.yaml").write_text(
        textwrap.dedent(
            """
            task: tiny_qa
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: qa.jsonl
            test_split: test
            output_type: multiple_choice
            doc_to_text: "{{q}}"
            doc_to_choice: "{{choices}}"
            doc_to_target: "{{gold}}"
            metric_list:
              - metric: acc
            """
        )
    )
    lm = lm_class()(ckpt=str(tmp_path / "model"), batch_size=2)
    res = simple_evaluate(
        model=lm, tasks=["tiny_qa"], task_manager=TaskManager(include_path=str(tasks))
    )
    acc = res["results"]["tiny_qa"]["acc,none"]
    # the harness picks, per question, the choice with the higher log-likelihood
    want = 0
    for r in rows:
        lls = [own_logprob(model, r["q"], c)[0] for c in r["choices"]]
        want += int(max(range(2), key=lambda i: lls[i]) == r["gold"])
    assert acc == pytest.approx(want / len(rows))


def test_export_writes_a_folder_that_loads_back_bit_identically(tmp_path):
    model, cfg = random_model(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    write_json_atomic(run / "config.json", to_dict(cfg))
    step = save_checkpoint(run / "pretrain" / "ckpt", 7, model)
    assert main(["export", str(run / "pretrain" / "ckpt"), "--out", str(tmp_path / "exp")]) == 0
    folder = tmp_path / "exp"
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    saved, exported = (
        load_file(str(step / "model.safetensors")),
        load_file(str(folder / "model.safetensors")),
    )
    assert saved.keys() == exported.keys()
    for k in saved:
        assert torch.equal(saved[k], exported[k]), k
    loaded, lcfg = load_model(folder)  # the Python API
    assert to_dict(lcfg.model) == to_dict(cfg.model)
    assert lcfg.pse.patcher.threshold == pytest.approx(0.05)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.randint(0, 256, (2, 60))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # and `pdclm` reads it: generation from the exported folder
    assert main(["generate", "--ckpt", str(folder), "ab", "--max-bytes", "5"]) == 0
