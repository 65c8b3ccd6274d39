"""Character-level tasks and ``pdclm bench chars``: verifiers, the held-out split (no held-out
item or string is ever trained on), the training rows each model reads, the goal rows, and
the bench end to end on the tiny preset."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from pdclm import config
from pdclm.bench.baselines import (
    BPETokenizer,
    matched_transformer,
    non_embedding_params,
    save_baseline,
)
from pdclm.bench.chars import Encoding, batch_sampler, chars_goals
from pdclm.data.chars import (
    TASKS,
    CharItem,
    held_out_items,
    is_held_out,
    pools,
    training_rows,
    vocabulary,
)
from pdclm.model.io import save_model
from pdclm.model.pdclm import PDCLM
from pdclm.vocab import BOS, EOS, VOCAB_SIZE
from tests.conftest import tiny_config

SHARE = 0.2


def corrupt(answer: str, rng: random.Random) -> str:
    """A wrong answer one edit away from ``answer``."""
    if not answer:
        return "a"
    i = rng.randrange(len(answer))
    other = "0" if answer[i] != "0" else "1"
    return answer[:i] + other + answer[i + 1 :]


def test_the_task_names_match_the_config():
    assert tuple(TASKS) == config.CHARS_TASKS
    assert config.BenchConfig().chars_tasks == list(config.CHARS_TASKS)


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("copy: house", "house"),
        ("spell: house", "h o u s e"),
        ("reverse: house", "esuoh"),
        ("count s in: glasses", "3"),
        ("count z in: glasses", "0"),
        ("insert x after every s: glasses", "glasxsxesx"),
        ("delete every s: glasses", "glae"),
        ("replace every s with t: glasses", "glattet"),
        ("swap beta and gamma: alpha beta gamma delta", "alpha gamma beta delta"),
        ("copy number: 40917", "40917"),
    ],
)
def test_verifiers_know_the_answers_by_hand(question, answer):
    task = next(t for t in TASKS.values() if t.solve(question) is not None)
    assert task.verify(question, answer)
    assert not task.verify(question, answer + "s")


@pytest.mark.parametrize("name", list(TASKS))
def test_each_verifier_accepts_gold_and_rejects_corruptions(name):
    task, rng = TASKS[name], random.Random(0)
    for pool in pools(SHARE):
        for _ in range(40):
            it = task.make(rng, pool)
            assert it.task == name and "\n" not in it.question + it.answer
            assert task.verify(it.question, it.answer)
            assert not task.verify(it.question, corrupt(it.answer, rng))
            assert not task.verify(it.question, it.answer + " ")
            assert not task.verify(it.question + "!", it.answer)  # not a question of the format
    other = next(t for t in TASKS.values() if t is not task)
    assert task.solve(other.make(rng, pools(SHARE)[0]).question) is None


def test_no_held_out_item_or_string_is_ever_trained_on():
    train_pool, held_pool = pools(SHARE)
    assert set(train_pool.words).isdisjoint(held_pool.words)
    assert set(train_pool.words) | set(held_pool.words) == set(vocabulary())
    assert 200 < len(held_pool.words) < len(train_pool.words)
    held = [it for name in TASKS for it in held_out_items(name, 64, 0, SHARE)]
    assert {it.task for it in held} == set(TASKS)
    assert len({it.question for it in held}) == len(held)  # distinct items
    # every string of a held-out question is held out
    for it in held:
        for s in re.findall(r"[a-z]{3,}|[0-9]+", it.question.split(":", 1)[1]):
            assert is_held_out(s, SHARE), (it, s)
    held_texts = {it.text for it in held}
    held_strings = {s for it in held for s in re.findall(r"[a-z]{3,}|[0-9]{3,}", it.question)}
    held_strings -= {"copy", "spell", "reverse", "count", "insert", "after", "every", "delete"}
    held_strings -= {"replace", "with", "swap", "and", "number"}
    for step in range(150):
        for row in training_rows(list(TASKS), SHARE, 0, step, range(4), 128):
            for it in row:
                assert it.text not in held_texts
                found = set(re.findall(r"[a-z]{3,}|[0-9]{3,}", it.question)) & held_strings
                assert not found, (it, found)


def test_training_rows_fill_rows_and_depend_only_on_seed_step_and_row():
    rows = training_rows(list(TASKS), SHARE, 0, 7, range(4), 128)
    assert rows == training_rows(list(TASKS), SHARE, 0, 7, range(4), 128)
    assert rows[2:] == training_rows(list(TASKS), SHARE, 0, 7, range(2, 4), 128)
    assert rows != training_rows(list(TASKS), SHARE, 1, 7, range(4), 128)
    for row in rows:
        assert row and sum(len(it.text.encode()) for it in row) <= 128
    only = training_rows(["reverse"], SHARE, 0, 0, range(2), 64)
    assert {it.task for r in only for it in r} == {"reverse"}
    with pytest.raises(ValueError, match="fits"):
        training_rows(["swap"], SHARE, 0, 0, range(1), 12)


def test_every_model_reads_the_same_items_with_the_loss_on_answers(cfg):
    cfg.bench.chars_tasks = list(TASKS)
    items = [CharItem("reverse", "reverse: house", "esuoh"), CharItem("copy", "copy: ab", "xy")]
    text = "".join(it.text for it in items).encode()
    tok = BPETokenizer.train([text * 20, b"reverse: copy: house\n=> "], 300)
    for enc in (Encoding(None), Encoding(tok)):
        ids, weights = enc.row(items)
        assert len(weights) == len(ids) - 1 and ids[0] == enc.start
        if enc.tok is None:
            assert bytes(ids[1:]) == text
            answered = bytes(s for s, w in zip(ids[1:], weights, strict=True) if w)
        else:
            assert tok.decode(ids[1:]) == text
            answered = tok.decode([s for s, w in zip(ids[1:], weights, strict=True) if w])
        assert answered == b"esuoh\nxy\n"
        tokens, w = batch_sampler(cfg, enc)(3, slice(0, 2))
        assert tokens.shape[0] == 2 and w.shape == (2, tokens.shape[1] - 1)
        assert tokens[0, 0] == enc.start and 0 < w.sum() < w.numel()
        if enc.tok is None:  # byte rows: the pretraining row length, padded with EOS
            assert tokens.shape[1] == cfg.train.seq_len + 1 and enc.start == BOS
            last = int(torch.nonzero(w[0])[-1]) + 1
            assert bytes(tokens[0, 1 : last + 1].tolist()).endswith(b"\n")
            assert (tokens[0, last + 1 :] == EOS).all()


def test_goal_rows_follow_the_accuracies():
    def arm(acc: dict[str, float]) -> dict:
        return {"accuracy": acc, "mean_accuracy": sum(acc.values()) / len(acc)}

    zero = {"copy": 0.0, "reverse": 0.0, "swap": 0.0}
    goals = chars_goals({"pdclm": arm(zero), "byte": arm(zero), "bpe": arm(zero)})
    assert [g["verdict"] for g in goals] == ["not measurable at this size"] * 2 + ["does not hold"]
    trivial = {"copy": 0.0, "reverse": 0.0, "swap": 0.4}  # the same guess from both
    goals = chars_goals({"pdclm": arm(trivial), "byte": arm(trivial), "bpe": arm(trivial)})
    assert [g["verdict"] for g in goals][:2] == ["not measurable at this size"] * 2
    full = {"copy": 1.0, "reverse": 1.0, "swap": 1.0}  # both at the ceiling: it holds
    goals = chars_goals({"pdclm": arm(full), "byte": arm(full), "bpe": arm(full)})
    assert [g["verdict"] for g in goals] == ["holds"] * 3
    pd = {"copy": 0.97, "reverse": 0.95, "swap": 0.2}
    goals = chars_goals(
        {"pdclm": arm(pd), "byte": arm({**pd, "swap": 0.1}), "bpe": arm({**pd, "swap": 0.5})}
    )
    assert [g["verdict"] for g in goals] == ["holds", "does not hold", "holds"]
    assert goals[0]["pdclm"] == 3 and goals[2]["pdclm"] == 0.95


def untrained_arms(cfg, out, asked: list) -> None:
    """What ``bench pretrain`` leaves in ``out`` (a tokenizer and three saved models), made
    without training: the stand-in that keeps the end-to-end test to seconds."""
    asked.append(list(cfg.bench.models))
    text = b"reverse: house\n=> esuoh\ncopy number: 40917\n=> 40917\n" * 4
    tok = BPETokenizer.train([text], 300)
    (out / "bpe").mkdir(parents=True)
    tok.save(out / "bpe" / "tokenizer.json")
    pd = PDCLM(cfg.pse, cfg.model)
    save_model(pd, cfg, out / "models" / "pdclm")
    target, lat = non_embedding_params(pd), cfg.model.latent
    for name, vocab in (("byte", VOCAB_SIZE), ("bpe", tok.vocab_size)):
        model = matched_transformer(target, lat.dim, lat.heads, cfg.model.mlp_ratio, vocab)
        save_baseline(model, out / "models" / name, {"kind": name})


def test_bench_chars_end_to_end_on_tiny(tmp_path, corpus, monkeypatch):
    """With no models in the folder ``bench chars`` runs ``bench pretrain`` there first (a
    stand-in here), fine-tunes the three for the same wall-clock and writes the table, its
    plot and the goal rows."""
    import pdclm.bench.chars as bench_chars
    from pdclm.cli import main
    from tests.test_pipeline import common

    asked: list = []
    monkeypatch.setattr(bench_chars, "bench_pretrain", lambda c, o: untrained_arms(c, o, asked))
    out = tmp_path / "b"
    args = [
        *common(tmp_path, corpus)[:-1],
        *("--bench.models", "pdclm", "pdclm_stride"),
        *("--bench.chars-seconds", "0.5", "--bench.chars-items", "2", "--train.threads", "1"),
        *("--out", str(out), "--publish", str(tmp_path / "pub")),
    ]
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "chars", *args]) == 0
    finally:
        torch.set_num_threads(threads)  # --train.threads sets it for the whole process
    assert asked == [["pdclm", "pdclm_stride", "byte", "bpe"]]  # the configured ones and these
    result = json.loads((out / "bench_chars.json").read_text())
    assert set(result["models"]) == {"pdclm", "byte", "bpe"}
    assert result["tasks"] == list(TASKS) and result["preset"] == "tiny"
    for r in result["models"].values():
        assert set(r["accuracy"]) == set(TASKS) and r["steps"] >= 1
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values())
        assert all(len(e) == 2 for e in r["examples"].values())
    assert [g["claim"] for g in result["goals"]] == [
        "PD-CLM >= byte transformer on every task",
        "PD-CLM >= BPE transformer on the mean",
        "PD-CLM >= 0.95 on copy and reverse of 3-8-letter words",
    ]
    assert (out / "bench_chars.png").exists()
    assert (tmp_path / "pub" / "chars_tiny.json").exists()
    assert "PD-CLM >= BPE transformer on the mean" in (out / "claims.md").read_text()
    assert set(bench_chars.pretrained(tiny_config(tmp_path), out)) == {"pdclm", "byte", "bpe"}
    assert len(asked) == 1  # once saved, the models are reused
