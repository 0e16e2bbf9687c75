import json

import lightning as L
import pytest
import torch
from helpers import NanoLM
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)

from lightning_geom.navigation import (
    EquivalenceClassExplorer,
    PatchDecoder,
    TokenDecoder,
    TrajectoryWriter,
    adapter_for,
    write_trajectories,
)


def _bert(seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3, max_position_embeddings=16)
    return BertForSequenceClassification(cfg).double().eval()


def _batch(n=3, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 40, (n, t), generator=g), "attention_mask": torch.ones(n, t, dtype=torch.long)}


def _probs(model, e, batch):
    with torch.no_grad():
        return torch.softmax(model(inputs_embeds=e, attention_mask=batch["attention_mask"]).logits, -1)


def test_simec_drifts_less_than_a_random_walk_and_the_corrector_helps():
    model, batch = _bert(), _batch()
    kw = dict(mode="simec", steps=20, step_size=0.05, record_every=20, output="probs")
    plain = EquivalenceClassExplorer(model, corrector=False, **kw)
    corrected = EquivalenceClassExplorer(model, corrector=True, **kw)
    t_plain, t_corr = plain.walk(batch), corrected.walk(batch)
    # a random walk of the same per-step length, with the same seed machinery
    e0 = model.get_input_embeddings()(batch["input_ids"]).detach()
    g = torch.Generator().manual_seed(0)
    e = e0.clone()
    step = 0.05 * e0.norm(dim=-1).mean(dim=1)
    for _ in range(20):
        z = torch.randn(e.shape, generator=g, dtype=torch.float64)
        z = z / z.reshape(3, -1).norm(dim=1).reshape(3, 1, 1)
        e = e + step.reshape(3, 1, 1) * z
    p0 = _probs(model, e0, batch)
    drift_random = (_probs(model, e, batch) - p0).abs().max(dim=1).values
    drift_plain = torch.tensor([max(abs(a - b) for a, b in zip(t["steps"][-1]["probs"], p0[i].tolist())) for i, t in enumerate(t_plain)])
    drift_corr = torch.tensor([max(abs(a - b) for a, b in zip(t["steps"][-1]["probs"], p0[i].tolist())) for i, t in enumerate(t_corr)])
    dist = torch.tensor([t["steps"][-1]["distance"] for t in t_plain])
    assert (dist > 0.5 * 20**0.5 * step).all()  # the walks really moved (random directions: ~sqrt(steps) x step)
    assert (drift_plain < drift_random).all(), (drift_plain, drift_random)
    assert (drift_corr <= drift_plain + 1e-12).all() and drift_corr.mean() < drift_plain.mean()
    assert all(t["steps"][-1]["pred"] == t["start_pred"] for t in t_corr)


def test_simexp_changes_the_class():
    model, batch = _bert(seed=1), _batch(seed=1)
    ex = EquivalenceClassExplorer(model, mode="simexp", steps=60, step_size=0.05, record_every=5)
    trajs = ex.walk(batch)
    assert all(any(r["pred"] != t["start_pred"] for r in t["steps"]) for t in trajs)
    # the probability of the starting class goes down along the walk
    for t in trajs:
        c = t["start_pred"]
        assert t["steps"][-1]["probs"][c] < t["steps"][0]["probs"][c]


def test_batched_equals_one_by_one_and_seeds_reproduce():
    model, batch = _bert(), _batch()
    ex = EquivalenceClassExplorer(model, mode="simec", steps=5, record_every=5, corrector=False)
    whole = ex.walk(batch)
    again = ex.walk(batch)
    assert json.dumps(whole) == json.dumps(again)
    # one by one: the random directions differ by design (one generator per batch), so compare SiMExp
    ex2 = EquivalenceClassExplorer(model, mode="simexp", steps=4, record_every=2)
    whole = ex2.walk(batch)
    single = [ex2.walk({k: v[i : i + 1] for k, v in batch.items()})[0] for i in range(3)]
    for a, b in zip(whole, single):
        for ra, rb in zip(a["steps"], b["steps"]):
            assert ra["pred"] == rb["pred"] and ra["distance"] == pytest.approx(rb["distance"], rel=1e-9)
            assert ra["probs"] == pytest.approx(rb["probs"], abs=1e-6)


def test_token_decoder_roundtrip():
    model, batch = _bert(), _batch()
    ad = adapter_for(model)
    assert torch.equal(ad.decoder.ids(ad.embed(batch)), batch["input_ids"])
    ex = EquivalenceClassExplorer(model, steps=1, record_every=1)
    first = ex.walk(batch)[0]["steps"][0]["decoded"]
    assert first == batch["input_ids"][0].tolist()


def test_patch_decoder_roundtrip_vit():
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=3)
    model = ViTForImageClassification(cfg).double().eval()
    px = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    ad = adapter_for(model)
    with torch.no_grad():
        imgs = ad.decoder.decode(ad.embed({"pixel_values": px}))
    torch.testing.assert_close(torch.stack(imgs).double(), px, rtol=0, atol=1e-5)
    assert isinstance(ad.decoder, PatchDecoder)


def test_vit_adapter_head_is_the_models_logits_and_walks():
    """transformers 5.2x's ViTModel has its blocks in `layers` (no `encoder`): the head failed with an
    AttributeError at the first step of every ViT walk."""
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3)
    model = ViTForImageClassification(cfg).eval()
    batch = {"pixel_values": torch.rand(2, 3, 8, 8)}
    ad = adapter_for(model)
    with torch.no_grad():
        torch.testing.assert_close(ad.head(ad.embed(batch), batch), model(**batch).logits, rtol=0, atol=1e-6)
    trajs = EquivalenceClassExplorer(model, steps=2, record_every=1).walk(batch)
    assert len(trajs) == 2 and len(trajs[0]["steps"]) >= 2


@pytest.mark.parametrize("arch", ["deit", "dinov2", "beit", "swin"])
def test_other_image_classifiers_are_explored_at_their_patch_embeddings(arch):
    """Any HF ...ForImageClassification with a token `embeddings` module: the head is the whole model
    with that module's output swapped (its own blocks, norms and pooling), equal to the model's logits;
    a patch decoder where the tokens are the patches after one CLS token. (A convolutional stem:
    test_image_models_without_an_adapter_are_refused_not_misread.)"""
    import transformers as T

    torch.manual_seed(0)
    c = dict(image_size=16, num_channels=3, num_labels=3)
    vit_like = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=4, **c)
    model = {
        "deit": lambda: T.DeiTForImageClassification(T.DeiTConfig(intermediate_size=64, **vit_like)),
        "dinov2": lambda: T.Dinov2ForImageClassification(T.Dinov2Config(**vit_like)),
        "beit": lambda: T.BeitForImageClassification(T.BeitConfig(intermediate_size=64, use_absolute_position_embeddings=True, **vit_like)),
        "swin": lambda: T.SwinForImageClassification(T.SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[2, 2], patch_size=4, window_size=2, **c)),
    }[arch]().double().eval()
    px = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    batch = {"pixel_values": px}
    ad = adapter_for(model)
    with torch.no_grad():
        torch.testing.assert_close(ad.head(ad.embed(batch), batch), model(**batch).logits, rtol=0, atol=1e-9)
    if arch in ("dinov2", "beit", "deit"):  # leading tokens + patches with absolute positions: the image comes back
        torch.testing.assert_close(torch.stack(ad.decoder.decode(ad.embed(batch))).double(), px, rtol=0, atol=1e-5)
    trajs = EquivalenceClassExplorer(model, steps=2, record_every=1).walk(batch)
    assert len(trajs) == 2 and len(trajs[0]["steps"]) >= 2


def test_top_attribution_restricts_the_walk_to_one_token():
    model, batch = _bert(), _batch(n=2)
    ex = EquivalenceClassExplorer(model, tokens="top_attribution", steps=3, record_every=3, corrector=False)
    e0 = ex.adapter.embed(batch).detach()
    mask = ex._token_mask(e0, batch)
    assert mask.sum(dim=(1, 2)).tolist() == [1.0, 1.0]
    trajs = ex.walk(batch)
    start, end = trajs[0]["steps"][0]["decoded"], trajs[0]["steps"][-1]["decoded"]
    assert sum(a != b for a, b in zip(start, end)) <= 1


def test_predict_with_trainer_and_writer(tmp_path):
    model = _bert()
    data = _batch(n=4)
    loader = torch.utils.data.DataLoader([{k: v[i] for k, v in data.items()} for i in range(4)], batch_size=2)
    ex = EquivalenceClassExplorer(model, steps=2, record_every=1)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[TrajectoryWriter(tmp_path)])
    out = trainer.predict(ex, loader)
    assert len(out) == 2 and len(out[0]) == 2
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "tokens.csv" in files and "batch000_walk_000.json" in files and "batch001_walk_001.json" in files


def test_demo_image_gpt_walk_and_pixels():
    from lightning_geom.demo import ImageGPT

    torch.manual_seed(0)
    model = ImageGPT(n_layer=2, width=16, heads=2).eval()
    pixels = torch.randint(0, 16, (2, 64))
    ex = EquivalenceClassExplorer(model, steps=2, record_every=2)
    trajs = ex.walk({"pixels": pixels})
    assert trajs[0]["steps"][0]["decoded"][1:] == pixels[0, :-1].tolist()  # [start, p_0 .. p_62]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "walk"}, "one of 'simec', 'simexp'"),
        ({"step_rule": "adaptive"}, "one of 'fixed', 'paper'"),
        ({"steps": 0}, "positive integer"),
        ({"tokens": "first"}, "'all', 'top_attribution'"),
    ],
)
def test_constructor_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EquivalenceClassExplorer(_bert(), **kwargs)


def test_unknown_model_says_how_to_adapt():
    with pytest.raises(TypeError, match="build `Adapter"):
        adapter_for(torch.nn.Identity())


def test_plain_networks_of_float_inputs_are_walked_in_their_input_space(tmp_path):
    """A plain PyTorch classifier of features (or images) had no adapter: it is walked in its input space
    (each sample one flattened row). SiMEC keeps the prediction and drifts far less than a random walk
    of the same length; SiMExp changes it; image-shaped inputs go back to their shape; token ids and
    dicts of several inputs are one line."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    kw = dict(steps=20, step_size=0.05, record_every=20, output="probs")
    trajs = EquivalenceClassExplorer(mlp, mode="simec", **kw).walk((x, torch.zeros(4)))
    p0 = torch.softmax(mlp(x), -1)
    g = torch.Generator().manual_seed(0)
    e = x.clone()
    step = 0.05 * x.norm(dim=1, keepdim=True)
    for _ in range(20):
        z = torch.randn(e.shape, generator=g, dtype=torch.float64)
        e = e + step * z / z.norm(dim=1, keepdim=True)
    drift_random = (torch.softmax(mlp(e), -1) - p0).abs().max(dim=1).values
    drift = torch.tensor([max(abs(a - b) for a, b in zip(t["steps"][-1]["probs"], p0[i].tolist())) for i, t in enumerate(trajs)])
    assert (drift < 0.2 * drift_random).all(), (drift, drift_random)
    assert all(t["steps"][-1]["pred"] == t["start_pred"] and t["steps"][-1]["distance"] > 0 for t in trajs)
    # the walked inputs are recorded (they are the equivalence class's points): the start is the input,
    # each later point is where the record's distance and prediction were measured
    for i, t in enumerate(trajs):
        assert t["decoded_as"] == "input"
        first, last = (torch.tensor(t["steps"][j]["decoded"], dtype=torch.float64) for j in (0, -1))
        torch.testing.assert_close(first, x[i], rtol=1e-6, atol=1e-6)
        assert float((last - x[i]).norm()) == pytest.approx(t["steps"][-1]["distance"], rel=1e-5)
        assert int(mlp(last.unsqueeze(0)).argmax()) == t["steps"][-1]["pred"]
    away = EquivalenceClassExplorer(mlp, mode="simexp", steps=80, step_size=0.05, record_every=5).walk(x)
    assert all(any(r["pred"] != t["start_pred"] for r in t["steps"]) for t in away)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 2)).double().eval()
    imgs = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    out = EquivalenceClassExplorer(conv, steps=3, record_every=3).walk(imgs)
    assert [t["start_pred"] for t in out] == conv(imgs).argmax(-1).tolist()
    assert torch.tensor(out[0]["steps"][0]["decoded"]).shape == (1, 4, 4)  # back in the image's shape
    files = {p.name for p in write_trajectories(trajs + out, tmp_path)}
    assert {"inputs.csv", "walk_004.png", "walk_005.png"} <= files and "tokens.csv" not in files  # images drawn, features tabled
    import csv

    table = list(csv.DictReader((tmp_path / "inputs.csv").open()))
    assert len(table) == 4 * 2 + 2 * 2 and float(table[0]["x5"]) == pytest.approx(float(x[0, 5]), rel=1e-6)
    with pytest.raises(TypeError, match="walks a continuous input space"):
        EquivalenceClassExplorer(mlp, steps=1).walk(torch.randint(0, 5, (2, 6)))
    with pytest.raises(TypeError, match="walks one float input, but the batch dict has 2"):
        EquivalenceClassExplorer(mlp, steps=1).walk({"a": x, "b": x})


def test_token_decoder_with_offset():
    w = torch.eye(4)
    off = torch.full((2, 4), 10.0)
    assert TokenDecoder(w, offset=off).ids(w[[1, 3]].unsqueeze(0) + off).tolist() == [[1, 3]]


def test_mlm_decoder_reads_tokens_through_the_head():
    from transformers import BertForMaskedLM

    from lightning_geom.navigation import MLMDecoder

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=16)
    mlm = BertForMaskedLM(cfg).double().eval()
    batch = _batch(n=2)
    emb = mlm.get_input_embeddings()(batch["input_ids"]).detach()
    ids = MLMDecoder(mlm).ids(emb)
    with torch.no_grad():
        expected = mlm(inputs_embeds=emb).logits.argmax(-1)
    assert torch.equal(ids, expected) and ids.shape == (2, 6)
    # plugs into the explorer as the decoder of a custom adapter
    clf = _bert()
    ad = adapter_for(clf)
    ad.decoder = MLMDecoder(mlm)
    trajs = EquivalenceClassExplorer(adapter=ad, steps=1, record_every=1).walk(batch)
    assert len(trajs[0]["steps"][0]["decoded"]) == 6


def _lm(vocab=100, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=16, attn_implementation="eager")
    return GPT2LMHeadModel(cfg).double().eval()


def test_causal_lm_walks_its_next_token_through_the_top_16_logits():
    """An LM's head is the next-token logits at each prompt's last real token (right padding here), and
    its metric sees each prompt's 16 most likely next tokens (100 > 64 outputs: top_logits="auto")."""
    lm = _lm()
    batch = {"input_ids": torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(1)),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])}
    with torch.no_grad():  # the oracle: the model's own next-token prediction after each prompt's real tokens
        ref = [int(lm(input_ids=batch["input_ids"][i : i + 1, :n]).logits[0, -1].argmax()) for i, n in ((0, 4), (1, 6))]
        top = [lm(input_ids=batch["input_ids"][i : i + 1, :n]).logits[0, -1].topk(16).indices.tolist() for i, n in ((0, 4), (1, 6))]
    ex = EquivalenceClassExplorer(lm, steps=3, record_every=1, corrector=False)
    trajs = ex.walk(batch)
    assert [t["start_pred"] for t in trajs] == ref
    assert [t["classes"] for t in trajs] == top
    assert all(len(rec["probs"]) == 16 for t in trajs for rec in t["steps"])
    assert all(rec["pred"] == t["start_pred"] for t in trajs for rec in t["steps"])  # SiMEC: the same next token
    assert ex._jacobian(ex.adapter.embed(batch), batch, ex._token_mask(ex.adapter.embed(batch), batch)).shape[1] == 16
    every = EquivalenceClassExplorer(lm, steps=1, record_every=1, top_logits=None).walk(batch)
    assert "classes" not in every[0] and len(every[0]["steps"][0]["probs"]) == 100


def test_models_without_a_usable_head_are_named():
    from transformers import GPT2Config, GPT2Model, T5Config, T5Model

    from lightning_geom.capture import NoLogitsError

    base = GPT2Model(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16)).eval()
    with pytest.raises(NoLogitsError, match="GPT2Model has no output head"):
        EquivalenceClassExplorer(base, steps=1).walk({"input_ids": torch.randint(0, 50, (1, 4))})
    t5 = T5Model(T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(TypeError, match="T5Model is an encoder-decoder model"):
        adapter_for(t5)
    with pytest.raises(ValueError, match="`top_logits`"):
        EquivalenceClassExplorer(_bert(), top_logits="all")


def test_records_name_the_classes_from_id2label():
    clf = _bert()
    clf.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    trajs = EquivalenceClassExplorer(clf, steps=1, record_every=1).walk(_batch(n=2))
    names = {0: "neg", 1: "neu", 2: "pos"}
    assert all(t["start_name"] == names[t["start_pred"]] for t in trajs)
    assert all(r["pred_name"] == names[r["pred"]] for t in trajs for r in t["steps"])


def test_image_models_without_an_adapter_are_refused_not_misread():
    """A convolutional classifier (get_input_embeddings not implemented) and a vision encoder whose
    'input embeddings' are a patch convolution are not token models: the TypeError says how to adapt."""
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        ConvNextConfig,
        ConvNextForImageClassification,
    )

    conv = ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3))
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8))
    for model in (conv, clip):
        with pytest.raises(TypeError, match="build `Adapter"):
            adapter_for(model)


@pytest.mark.parametrize(
    ("kwargs", "ids", "match"),
    [
        ({"step_size": -0.1}, None, r"`step_size` to be a finite number > 0"),
        ({"record_every": 0}, None, r"`record_every` to be an integer >= 1"),
        ({}, torch.full((2, 5), 300), r"token ids span \[300, 300\], but GPT2LMHeadModel's embedding has 100 rows"),
        ({}, torch.zeros(2, 5), r"token ids are float32 \(2, 5\)"),
        ({}, torch.arange(5), r"embeddings are \(B, tokens, d\) with B >= 1, but got \(5, 16\).*ids\[None\]"),
        ({}, torch.zeros(0, 5, dtype=torch.long), r"with B >= 1, but got \(0, 5, 16\)"),
    ],
)
def test_bad_settings_and_inputs_are_one_line(kwargs, ids, match):
    model = _lm()
    with pytest.raises(ValueError, match=match):
        EquivalenceClassExplorer(model, steps=2, **kwargs).walk({"input_ids": torch.randint(0, 100, (2, 5)) if ids is None else ids})


class _BagClassifier(torch.nn.Module):
    def __init__(self, vocab=30, d=16):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.out = torch.nn.Linear(d, 3)

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.out(torch.tanh(self.emb(input_ids)).mean(1))}


def test_plain_token_networks_are_walked_in_their_token_embeddings():
    """A plain PyTorch network of token ids (a nanoGPT-style LM, a bag-of-embeddings classifier) had no
    adapter ("walks a continuous input space"): it is explored at the output of the embedding table its
    ids go through (found by hooks, the position table left alone), the head is the network with that
    output swapped in, the class an LM's next token after the last position. The start decodes to the
    input ids; SiMEC keeps the class; the head on the start's embeddings equals the model's logits."""
    torch.manual_seed(0)
    ids = torch.randint(0, 30, (3, 8))
    for model, batch in ((NanoLM().double().eval(), ids), (_BagClassifier().double().eval(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})):
        adapter = adapter_for(model)
        e = adapter.embed(batch)
        assert e.shape == (3, 8, 16)
        with torch.no_grad():
            out = model(ids)
            want = out[0][:, -1] if isinstance(out, tuple) else out["logits"]
            torch.testing.assert_close(adapter.head(e, batch), want)
        trajs = EquivalenceClassExplorer(model, steps=5, step_size=0.01, record_every=5).walk(batch)
        assert [t["decoded_as"] for t in trajs] == ["tokens"] * 3
        assert [t["steps"][0]["decoded"] for t in trajs] == ids.tolist()  # the start is the input
        assert [t["start_pred"] for t in trajs] == want.argmax(-1).tolist()
        assert all(t["steps"][-1]["pred"] == t["start_pred"] and t["steps"][-1]["distance"] > 0 for t in trajs)


def test_the_corrector_of_a_float32_walk_stays_a_correction():
    """In float32 the Gauss-Newton corrector inverted the Jacobian's rounding-level singular values (the
    float64 lstsq default): a 3-step SiMEC walk on a plain LM moved 1,000x its steps and changed class.
    Each correction is now cut at the model's precision and bounded by the step: the walk moves at most
    2 x steps x step, its probabilities stay."""
    torch.manual_seed(0)
    model = NanoLM().eval()  # float32
    ids = torch.randint(0, 30, (2, 12), generator=torch.Generator().manual_seed(0))
    trajs = EquivalenceClassExplorer(model, steps=10, step_size=0.01, record_every=10, output="probs").walk(ids)
    scale = model.wte(ids).norm(dim=-1).mean(dim=1)
    for t, s in zip(trajs, scale.tolist()):
        last = t["steps"][-1]
        assert 0 < last["distance"] <= 2 * 10 * 0.01 * s
        assert last["pred"] == t["start_pred"]
        assert max(abs(a - b) for a, b in zip(last["probs"], t["steps"][0]["probs"])) < 1e-3
