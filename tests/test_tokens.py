"""Pooled token clouds (issue 10, item 2): every token flattened, a seeded `max_tokens` subsample,
special / first tokens dropped, and the next-token loss of each kept token for a causal LM."""

import math

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from lightning_geom.capture import capture_representations
from lightning_geom.tokens import capture_token_cloud, next_token_losses, token_keep_mask


def _batches(seed: int = 0, vocab: int = 40) -> list[dict[str, torch.Tensor]]:
    """Two right-padded batches of different widths (prompts of 2..9 tokens)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b, t in ((5, 9), (4, 6)):
        ids = torch.randint(4, vocab, (b, t), generator=g)
        lengths = torch.randint(2, t + 1, (b,), generator=g)
        lengths[0] = t
        mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).long()
        ids[:, 0] = 1  # a BOS at every prompt's start
        ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16)).eval()


def _full(lm, batches):
    """(prompt, position, per-layer vector) of every real token, from the per-prompt capture."""
    rows = []
    offset = 0
    for b in batches:
        reps = capture_representations(lm, [b], pooling="tokens")
        for i in range(reps.features[0].shape[0]):
            for t in range(int(reps.lengths[i])):
                rows.append((offset + i, t, [f[i, t] for f in reps.features]))
        offset += reps.features[0].shape[0]
    return rows


def test_all_tokens_flattened_equal_the_per_prompt_capture(lm):
    batches = _batches()
    cloud = capture_token_cloud(lm, batches, max_tokens=None, loss=False)
    rows = _full(lm, batches)
    assert cloud.n_tokens == cloud.available == len(rows) and cloud.loss is None
    assert len(cloud.features) == 3 and cloud.features[0].shape == (len(rows), 16)
    for j, (p, t, vecs) in enumerate(rows):  # prompt order, then position
        assert (int(cloud.prompt[j]), int(cloud.position[j])) == (p, t)
        for f, v in zip(cloud.features, vecs):
            torch.testing.assert_close(f[j], v)


def test_max_tokens_is_a_seeded_subsample_of_the_whole(lm):
    batches = _batches()
    whole = capture_token_cloud(lm, batches, max_tokens=None, loss=False)
    index = {(int(p), int(t)): j for j, (p, t) in enumerate(zip(whole.prompt, whole.position))}
    a = capture_token_cloud(lm, batches, max_tokens=20, seed=3, loss=False)
    b = capture_token_cloud(lm, batches, max_tokens=20, seed=3, loss=False)
    c = capture_token_cloud(lm, batches, max_tokens=20, seed=4, loss=False)
    assert a.n_tokens == 20 and a.available == whole.n_tokens
    assert torch.equal(a.prompt, b.prompt) and torch.equal(a.position, b.position)
    assert not (torch.equal(a.prompt, c.prompt) and torch.equal(a.position, c.position))
    for j, (p, t) in enumerate(zip(a.prompt.tolist(), a.position.tolist())):
        torch.testing.assert_close(a.features[1][j], whole.features[1][index[(p, t)]])
    assert len(set(zip(a.prompt.tolist(), a.position.tolist()))) == 20  # no token twice


class _Echo(nn.Module):
    """A 'model' whose hidden state is the token id itself: a fast stand-in for selection statistics."""

    def forward(self, input_ids, attention_mask=None, output_hidden_states=True):
        return {"hidden_states": (input_ids.unsqueeze(-1).float().repeat(1, 1, 2),)}


def test_the_subsample_is_uniform_over_tokens_and_batches():
    """Every eligible token is kept with probability max_tokens / available, whichever batch it is in."""
    batches = [{"input_ids": torch.arange(s, s + 30).view(3, 10), "attention_mask": torch.ones(3, 10, dtype=torch.long)} for s in (0, 30, 60)]
    counts = torch.zeros(90, dtype=torch.float64)
    runs = 300
    for seed in range(runs):
        cloud = capture_token_cloud(_Echo(), batches, max_tokens=18, seed=seed, loss=False)
        counts[cloud.features[0][:, 0].long()] += 1
    share = counts / runs  # expected 0.2 each; binomial sd ~0.023
    assert float(counts.sum()) == 18 * runs
    assert float((share - 0.2).abs().max()) < 0.12
    for part in share.view(3, 30):  # no batch favoured
        assert abs(float(part.mean()) - 0.2) < 0.03


def test_special_and_first_tokens_are_dropped(lm):
    batches = _batches()
    cloud = capture_token_cloud(lm, batches, max_tokens=None, drop_ids=[1], loss=False)
    whole = capture_token_cloud(lm, batches, max_tokens=None, loss=False)
    assert cloud.n_tokens == whole.n_tokens - 9 and bool((cloud.position > 0).all())  # 9 prompts, one BOS each
    first = capture_token_cloud(lm, batches, max_tokens=None, drop_first=True, loss=False)
    assert torch.equal(first.prompt, cloud.prompt) and torch.equal(first.position, cloud.position)
    assert token_keep_mask(torch.tensor([2]), 3, drop_first=True).tolist() == [[False, True, False]]


def test_next_token_loss_of_every_kept_token(lm):
    batches = _batches()
    cloud = capture_token_cloud(lm, batches, max_tokens=None)
    assert cloud.loss is not None and cloud.loss.shape == (cloud.n_tokens,)
    flat = torch.cat([torch.nn.functional.pad(x["input_ids"], (0, 9 - x["input_ids"].shape[1])) for x in batches])
    masks = torch.cat([torch.nn.functional.pad(x["attention_mask"], (0, 9 - x["attention_mask"].shape[1])) for x in batches])
    with torch.no_grad():
        logits = lm(input_ids=flat, attention_mask=masks).logits.double()
    for j, (p, t) in enumerate(zip(cloud.prompt.tolist(), cloud.position.tolist())):
        n = int(masks[p].sum())
        if t == n - 1:  # the last real token predicts nothing in the prompt
            assert math.isnan(float(cloud.loss[j]))
        else:
            want = -torch.log_softmax(logits[p, t], -1)[flat[p, t + 1]]
            assert float(cloud.loss[j]) == pytest.approx(float(want), abs=1e-4)
    # the logits in slices of one row give the same losses as the whole batch at once
    b = batches[0]
    with torch.no_grad():
        torch.testing.assert_close(next_token_losses(lm, b, max_logits=1), next_token_losses(lm, b), equal_nan=True)


def test_bad_token_cloud_requests_name_the_problem(lm):
    batches = _batches()
    with pytest.raises(ValueError, match="max_tokens"):
        capture_token_cloud(lm, batches, max_tokens=0)
    with pytest.raises(ValueError, match="no token left.*keep the special tokens"):
        capture_token_cloud(lm, batches, drop_ids=range(40))
    pooled = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"token-level hidden states \(B, T, D\)"):
        capture_token_cloud(pooled, [torch.randn(3, 4)], layers=["0"])
    with pytest.raises(ValueError, match="input_ids"):
        next_token_losses(lm, {"x": torch.zeros(2, 3)})


def test_the_loss_and_the_hidden_states_come_from_one_forward(lm):
    """A causal LM's token cloud with its losses runs the model once per batch (the hidden states of
    the forward that makes the logits), and equals the loss-free capture and `next_token_losses`."""
    batches = _batches(seed=2)
    calls = []
    handle = lm.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        with_loss = capture_token_cloud(lm, batches, max_tokens=None, loss=True)
        assert len(calls) == len(batches)
    finally:
        handle.remove()
    plain = capture_token_cloud(lm, batches, max_tokens=None, loss=False)
    for a, b in zip(with_loss.features, plain.features):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    per = torch.cat([torch.nn.functional.pad(next_token_losses(lm, b), (0, 9 - b["input_ids"].shape[1]), value=math.nan) for b in batches])
    torch.testing.assert_close(with_loss.loss, per[with_loss.prompt, with_loss.position], equal_nan=True)


def test_a_layer_of_repeated_token_embeddings_gets_the_id_of_its_distinct_points():
    """Layer 0 of a pooled cloud is the token embedding: every occurrence of a word is the same
    vector, and frequent words repeat more often than the kNN holds neighbours. The layer's ID is
    that of the distinct points (each location once, as DADApy's remove_identical_points), with a
    warning, not an error."""
    from lightning_geom.analysis import GeometrySettings, layer_geometry
    from lightning_geom.geometry import id_profile

    g = torch.Generator().manual_seed(0)
    vocab = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 32, generator=g, dtype=torch.float64)
    zipf = 1.0 / torch.arange(1, 401, dtype=torch.float64)
    tokens = torch.multinomial(zipf, 2000, replacement=True, generator=g)  # the commonest id ~300 times
    x = vocab[tokens]
    rec, idx = layer_geometry(x, None, GeometrySettings(range_max=64))
    distinct = torch.unique(x, dim=0)
    tw, curve = id_profile(distinct, range_max=64)  # DADApy: remove_identical_points, then estimate
    assert rec["error"] is None and f"the ID is that of the {distinct.shape[0]} distinct points" in rec["warning"]
    assert rec["twonn"] == pytest.approx(tw.dim, rel=1e-12) and rec["gride"]["dims"] == list(curve.dims)
    assert 4 < rec["id"] < 8 and idx.shape == (2000, 10)


def test_a_cloud_too_large_for_memory_is_refused_before_it_is_built(lm, monkeypatch):
    import lightning_geom.tokens as tokens_mod

    monkeypatch.setattr(tokens_mod, "available_bytes", lambda device: 100_000)
    with pytest.raises(ValueError, match=r"5,000 tokens x 3 layers .* needs 1.8 MiB on cpu, but 97.7 KiB are free: lower `max_tokens` \(--max-tokens\)"):
        capture_token_cloud(lm, _batches(), max_tokens=5000, loss=False)
    assert capture_token_cloud(lm, _batches(), max_tokens=100, loss=False).n_tokens <= 100  # 100 x 48 x 8 bytes fit
    with pytest.raises(ValueError, match="lower `max_tokens`"):  # None: checked against the tokens seen so far
        monkeypatch.setattr(tokens_mod, "available_bytes", lambda device: 1000)
        capture_token_cloud(lm, _batches(), max_tokens=None, loss=False)


def test_a_tokenizer_s_batch_encoding_is_read_as_the_dict_it_holds(lm):
    """A tokenizer's output (``BatchEncoding``: a mapping, not a ``dict``) passed as the batches: the token
    cloud keeps its next-token losses and the losses are those of the plain dicts (they were dropped,
    and ``next_token_losses`` refused the batch)."""
    from transformers import BatchEncoding

    batches = _batches()
    want = capture_token_cloud(lm, batches, max_tokens=None)
    got = capture_token_cloud(lm, [BatchEncoding(b) for b in batches], max_tokens=None)
    assert got.loss is not None and want.loss is not None
    torch.testing.assert_close(got.loss, want.loss, equal_nan=True)
    for a, b in zip(got.features, want.features):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(next_token_losses(lm, BatchEncoding(batches[0])), next_token_losses(lm, batches[0]), equal_nan=True)
