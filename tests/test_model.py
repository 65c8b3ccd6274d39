"""The model: causality through PSE + latent + decoder, cached generation = full forward,
prompt prefill = pushing the prompt."""

from __future__ import annotations

import torch

from pdclm.bench.baselines import TokenTransformer, matched_transformer, non_embedding_params
from pdclm.config import Config
from pdclm.model.pdclm import PDCLM, Stream, complete, next_symbol_loss
from pdclm.pse.entropy import EntropyModel, EntropyStream
from pdclm.vocab import BOS


def small_model(max_len: int = 6, rule: str = "entropy_jump", decoder_window: int = 0) -> PDCLM:
    cfg = Config()
    cfg.model.decoder.window = decoder_window
    cfg.pse.entropy.dim, cfg.pse.entropy.context, cfg.pse.entropy.window = 32, 16, 8
    cfg.pse.encoder.dim, cfg.pse.encoder.window, cfg.pse.encoder.buckets = 32, 8, 64
    cfg.pse.encoder.heads = cfg.model.decoder.heads = 2
    cfg.model.latent.dim, cfg.model.latent.layers = 64, 2
    cfg.pse.patcher.max_len, cfg.pse.patcher.rule = max_len, rule
    model = PDCLM(cfg.pse, cfg.model).eval()
    with torch.no_grad():  # random but not tiny weights, so every path matters
        for p in model.parameters():
            p.normal_(0, 0.15)
    model.threshold.fill_(0.01)
    return model


def random_tokens(n: int, batch: int = 2) -> torch.Tensor:
    t = torch.randint(0, 256, (batch, n))
    t[:, 0] = BOS
    t[:, 17] = ord("\n")
    return t


def test_changing_a_byte_never_changes_earlier_outputs():
    model = small_model()
    tokens = random_tokens(90)
    with torch.no_grad():
        base = model(tokens)
        for t in (5, 30, 60, 88):
            changed = tokens.clone()
            changed[:, t] = (changed[:, t] + 97) % 256
            out = model(changed)
            # logits index j predicts symbol j+1: outputs up to predicting symbol t are unchanged
            assert torch.equal(out[:, :t], base[:, :t]), f"future byte {t} leaked"
            assert not torch.allclose(out[:, t:], base[:, t:]), "the change had no effect at all"


def test_patching_is_real_and_varies():
    model = small_model()
    starts = model.patch(random_tokens(200))
    n = int(starts.sum())
    assert 200 * 2 / 6 < n < 200 * 2, "patches should be longer than one byte and capped"


def test_cached_generation_equals_full_forward():
    """Rows in one stream close patches at different steps; each row still equals the full
    forward pass of that row (logits and patch starts)."""
    for rule in ("entropy_jump", "global", "whitespace", "stride"):
        model = small_model(rule=rule)
        tokens = random_tokens(70, batch=3)
        with torch.no_grad():
            full = model(tokens)
            stream = model.start_stream(batch=3)
            steps, starts = [], [torch.ones(3, dtype=torch.bool)]
            for t in range(69):
                steps.append(stream.push(tokens[:, t]))
                starts.append(stream.start_now.clone())
        assert torch.equal(torch.stack(starts, 1), model.patch(tokens)[:, :70])
        torch.testing.assert_close(torch.stack(steps, 1), full, atol=2e-4, rtol=1e-4)


def test_generate_streams_and_stops():
    model = small_model()
    out = list(
        model.generate(
            [BOS, 65, 66], max_new=30, temperature=1.0, generator=torch.Generator().manual_seed(0)
        )
    )
    assert len(out) == 30 and all(0 <= s < 264 for s in out)
    greedy = list(model.generate([BOS, 65], max_new=5, temperature=0))
    assert greedy == list(model.generate([BOS, 65], max_new=5, temperature=0))


def test_entropy_profile_stream_prefill_and_segments_agree():
    cfg = Config().pse.entropy
    cfg.context, cfg.dim, cfg.window = 16, 32, 8
    model = EntropyModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    x = torch.randint(0, 256, (2, 150))
    full = model.profile(x)
    assert (full[:, 0] == 0).all() and (full[:, 1:] > 0).all()
    assert model.reach == 15  # so pieces of 60 symbols: 3 of them
    torch.testing.assert_close(model.profile(x, chunk=1), full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.profile(x[:1], chunk=1)[0], full[0], atol=1e-4, rtol=1e-4)
    assert model.profile(x[:, :1]).shape == (2, 1)
    stream = EntropyStream(model)
    pushed = torch.stack([stream.push(t) for t in x[:, :-1].unbind(1)], 1)
    torch.testing.assert_close(pushed, full[:, 1:], atol=1e-4, rtol=1e-4)
    # a prompt read at once leaves the stream as pushing it would
    stream = EntropyStream(model)
    torch.testing.assert_close(stream.prefill(x[:, :70]), full[:, :71], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stream.push(x[:, 70]), full[:, 71], atol=1e-4, rtol=1e-4)
    # a prefix's profile never changes when symbols are appended
    torch.testing.assert_close(model.profile(x[:, :70]), full[:, :70])


def test_entropy_depends_on_exactly_its_reach():
    """A symbol more than ``reach`` back never changes an entropy; one within it does."""
    cfg = Config().pse.entropy
    cfg.context, cfg.dim, cfg.layers, cfg.window = 16, 32, 2, 6
    model = EntropyModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    assert model.reach == 11
    x = torch.randint(0, 256, (1, 60))
    y = x.clone()
    y[0, 20] = (y[0, 20] + 1) % 256
    diff = (model.profile(x) - model.profile(y)).abs()[0]
    # profile[t] predicts symbol t from the reach symbols before it: symbol 20 reaches 21 .. 31
    assert diff[:21].max() == 0 and diff[32:].max() < 1e-6
    assert diff[21] > 1e-4 and diff[31] > 1e-4


def test_overfit_one_batch():
    model = small_model()
    for p in model.parameters():
        if p.requires_grad and p.dim() >= 2:
            torch.nn.init.normal_(p, 0, 0.02)
    model.train()
    tokens = random_tokens(64, batch=2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(150):
        loss, _ = next_symbol_loss(model(tokens), tokens[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 5.0 and loss.item() < 0.3, (first, loss.item())


def test_byte_baseline_is_causal_and_matches_size():
    base = TokenTransformer(32, 2, 2).eval()
    x = random_tokens(40)
    y = x.clone()
    y[:, 20] = (y[:, 20] + 1) % 256
    with torch.no_grad():
        assert torch.equal(base(x)[:, :20], base(y)[:, :20])
    m = matched_transformer(500_000, 64, 2, 8 / 3)
    per_layer = sum(p.numel() for p in m.stack.blocks[0].parameters())
    assert abs(non_embedding_params(m) - 500_000) <= per_layer


def test_rows_leaving_the_stream_do_not_change_the_others():
    """Finished rows leave a batched stream (``select``); the rest go on exactly."""
    model = small_model()
    tokens = random_tokens(90, batch=4)
    with torch.no_grad():
        full = model(tokens)
        stream = model.start_stream(batch=4)
        rows = [0, 1, 2, 3]
        for t in range(89):
            if t in (23, 61):  # drop the first row and reverse the order of the others
                stream.select(torch.arange(1, len(rows)).flip(0))
                rows = rows[1:][::-1]
            logits = stream.push(tokens[rows, t])
            torch.testing.assert_close(logits, full[rows, t], atol=2e-4, rtol=1e-4)


def test_a_decoder_window_across_patches_is_causal_and_cached_exactly():
    """``model.decoder.window`` > 0: the decoder reads earlier bytes across patch boundaries;
    future bytes still never reach past outputs, and cached generation equals the forward
    for every patch rule, with rows leaving the stream."""
    tokens = random_tokens(90, batch=3)
    for rule in ("entropy_jump", "global", "whitespace", "stride"):
        model = small_model(rule=rule, decoder_window=24)
        with torch.no_grad():
            full = model(tokens)
            changed = tokens.clone()
            changed[:, 50] = (changed[:, 50] + 97) % 256
            assert torch.equal(model(changed)[:, :50], full[:, :50]), rule
            stream = model.start_stream(batch=3)
            rows = [0, 1, 2]
            for t in range(89):
                if t == 40:
                    stream.select(torch.tensor([2, 0]))
                    rows = [2, 0]
                logits = stream.push(tokens[rows, t])
                torch.testing.assert_close(logits, full[rows, t], atol=2e-4, rtol=1e-4)


def test_a_decoder_window_reaches_bytes_of_earlier_patches():
    """With the window, a byte several patches back changes the decoder's output directly;
    confined to its patch, the decoder sees it only through the encoder and the latent."""
    tokens = random_tokens(80, batch=1)
    changed = tokens.clone()
    changed[:, 30] = (changed[:, 30] + 97) % 256
    for window, reaches in ((0, False), (32, True)):
        model = small_model(rule="stride", decoder_window=window)  # patches of 6 bytes
        with torch.no_grad():
            model.to_latent.weight.zero_()  # no path through the latent
            for block in model.encoder.local.blocks:
                block.attn.proj.weight.zero_()  # nor through the encoder's mixing
            a, b = model(tokens), model(changed)
        moved = not torch.allclose(a[:, 48:60], b[:, 48:60])
        assert moved == reaches, window


ROW_STATE = (*Stream._ROW_STATE, "length")


def test_prefill_leaves_the_stream_as_pushes_do():
    """A prompt read in one pass leaves the stream as pushing it byte by byte does, for every
    patch rule and decoder window: the same next logits, 20 more steps, and the full forward."""
    tokens = random_tokens(90, batch=3)
    for rule in ("entropy_jump", "global", "whitespace", "stride"):
        for window in (0, 24):
            model = small_model(rule=rule, decoder_window=window)
            T = 41 + 7 * len(rule) % 20  # prompts end at different points of their patches
            with torch.no_grad():
                full = model(tokens)
                pushed, filled = model.start_stream(3), model.start_stream(3)
                for t in range(T):
                    ref = pushed.push(tokens[:, t])
                logits = filled.prefill(tokens[:, :T])
                for name in ROW_STATE:
                    a, b = getattr(pushed, name), getattr(filled, name)
                    assert torch.is_tensor(a) or a == b, name
                    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)
                for t in range(T, T + 21):
                    torch.testing.assert_close(logits, ref, atol=2e-5, rtol=1e-5)
                    torch.testing.assert_close(logits, full[:, t - 1], atol=2e-4, rtol=1e-4)
                    ref, logits = pushed.push(tokens[:, t]), filled.push(tokens[:, t])


def test_rows_leaving_a_prefilled_stream_go_on_exactly():
    tokens = random_tokens(80, batch=4)
    for window in (0, 24):
        model = small_model(decoder_window=window)
        with torch.no_grad():
            full = model(tokens)
            stream = model.start_stream(batch=4)
            logits = stream.prefill(tokens[:, :45])
            torch.testing.assert_close(logits, full[:, 44], atol=2e-4, rtol=1e-4)
            rows = [3, 1, 0]  # drop a row and reorder the others
            stream.select(torch.tensor(rows))
            for t in range(45, 79):
                logits = stream.push(tokens[rows, t])
                torch.testing.assert_close(logits, full[rows, t], atol=2e-4, rtol=1e-4)


def test_complete_and_generate_give_the_same_outputs_with_prefill():
    """Ragged prompts: the shared length is prefilled, the rest read byte by byte; greedy
    outputs equal those of reading everything byte by byte."""
    model = small_model(decoder_window=24)
    tokens = random_tokens(100, batch=3)
    prompts = [tokens[0, :50].tolist(), tokens[1, :63].tolist(), tokens[2, :41].tolist()]
    args = (model, prompts, 12, frozenset({300}), 0.0)
    assert complete(*args) == complete(*args, prefill=False)
    greedy = list(model.generate(prompts[1], max_new=8, temperature=0))
    stream, ref = model.start_stream(), []
    with torch.no_grad():
        for s in prompts[1]:
            logits = stream.push_one(s)
        for _ in range(8):
            ref.append(int(logits.argmax()))
            logits = stream.push_one(ref[-1])
    assert greedy == ref
