import pytest
import torch
from helpers import TinyGPT, token_data
from torch import nn

from lightning_geom.capture import (
    capture_representations,
    hook_modules,
    match_modules,
    pool,
    split_batch,
)


def test_pool_modes_respect_mask():
    h = torch.arange(24.0).view(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(h, mask, "mean")[0], h[0, :2].mean(0))
    assert torch.equal(pool(h, mask, "last")[0], h[0, 1])
    assert torch.equal(pool(h, mask, "last")[1], h[1, 2])
    assert torch.equal(pool(h, mask, "first"), h[:, 0])
    assert torch.equal(pool(h[:, 0], None, "mean"), h[:, 0])  # (B, D) passes through
    assert torch.equal(pool(h, None, lambda x, m: x.amax(1)), h.amax(1))
    with pytest.raises(ValueError, match="one of 'mean', 'last', 'first'"):
        pool(h, mask, "max")


def test_hidden_states_capture_of_hf_model():
    module = TinyGPT(n_layer=3)
    data = token_data(40)
    module.train()
    batches = [{k: v[:20] for k, v in data.items()}, {k: v[20:] for k, v in data.items()}]
    reps = capture_representations(module, batches)
    assert len(reps.features) == 4  # embeddings + 3 blocks
    assert all(f.shape == (40, 32) and f.dtype == torch.float32 for f in reps.features)
    assert torch.equal(reps.labels, data["labels"])
    assert module.training  # train mode restored
    # the mean pooling of the embeddings equals a hand computation
    with torch.no_grad():
        module.eval()
        hs = module.model(input_ids=data["input_ids"], attention_mask=data["attention_mask"], output_hidden_states=True).hidden_states
    torch.testing.assert_close(reps.features[2], pool(hs[2], data["attention_mask"], "mean"))


def test_hook_capture_by_pattern_and_hooks_removed():
    module = TinyGPT(n_layer=3)
    data = token_data(16)
    # names are relative to the network: the LightningModule's single HF child
    reps = capture_representations(module, [data], layers=["transformer.h.*"], pooling="last")
    assert reps.sources == ("transformer.h.0", "transformer.h.1", "transformer.h.2")
    reps = capture_representations(
        module,
        [data],
        layers=["model.transformer.h.?"],
        model_attr="",  # the LightningModule itself, called through forward_fn
        forward_fn=lambda m, b: m.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]),
    )
    assert len(reps.sources) == 3
    assert all(not m._forward_hooks for m in module.modules())
    # one pattern as a plain string is that pattern (not its characters)
    one = capture_representations(module, [data], layers="transformer.h.*", pooling="last")
    assert one.sources == ("transformer.h.0", "transformer.h.1", "transformer.h.2")
    from lightning_geom.callbacks import GeometryMonitor

    assert GeometryMonitor(probe=data, layers="transformer.h.*").layers == ["transformer.h.*"]


def test_hooks_removed_even_on_error():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(RuntimeError), hook_modules(net, ["0"]):
        raise RuntimeError("boom")
    assert not net[0]._forward_hooks


def test_unknown_pattern_lists_modules():
    with pytest.raises(ValueError, match=r"matches no submodule\. Some that exist: .*model"):
        match_modules(TinyGPT(), ["encoder.layer.*"])


def test_split_batch_kinds():
    x = torch.zeros(2, 3)
    assert split_batch(x) == ((x,), {}, None)
    args, kwargs, labels = split_batch({"input_ids": x, "labels": torch.ones(2)})
    assert "labels" not in kwargs and labels is not None
    args, kwargs, labels = split_batch((x, torch.ones(2)))
    assert args == (x,) and labels.shape == (2,)


def test_model_without_hidden_states_says_what_to_do():
    with pytest.raises(ValueError, match="pass `layers="):
        capture_representations(nn.Sequential(nn.Linear(3, 3)), [torch.zeros(4, 3)], forward_fn=lambda m, b: m(b))


def test_capture_skips_the_lm_head_and_keeps_the_hidden_states():
    """Issue 9: no layer needs the LM head's (B, T, vocab) logits, so capture runs the base model."""
    module = TinyGPT(n_layer=2)
    data = token_data(24)
    calls = []
    handle = module.model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        reps = capture_representations(module, [data])
    finally:
        handle.remove()
    assert calls == []  # the head never ran
    with torch.no_grad():
        module.eval()
        hs = module.model(input_ids=data["input_ids"], attention_mask=data["attention_mask"], output_hidden_states=True).hidden_states
    assert len(reps.features) == len(hs)
    for f, h in zip(reps.features, hs):
        torch.testing.assert_close(f, pool(h, data["attention_mask"], "mean"))


def test_features_can_stay_on_the_capture_device():
    module = TinyGPT(n_layer=2)
    data = token_data(16)
    reps = capture_representations(module, [data], feature_device=None, device="cpu")
    assert all(f.device.type == "cpu" and f.dtype == torch.float32 for f in reps.features)
    assert not any(f.is_inference() for f in reps.features)  # usable outside inference mode


def test_token_capture_of_left_padded_batches_equals_right_padded():
    """pooling="tokens": a prompt's cloud is its first `lengths` positions, also when the batch came
    left-padded (a decoder tokenizer's default): the real tokens are moved to the front."""
    from torch import nn

    from lightning_geom.capture import capture_representations, right_align

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 4)

        def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
            h = self.emb(input_ids)
            return {"hidden_states": (h, 2 * h)}

    torch.manual_seed(0)
    net = Emb()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    right = torch.tensor([p + [0] * (4 - len(p)) for p in prompts])
    left = torch.tensor([[0] * (4 - len(p)) + p for p in prompts])
    mask_r = (torch.arange(4) < torch.tensor([4, 2, 3]).unsqueeze(1)).long()
    mask_l = mask_r.flip(1)
    a = capture_representations(net, [{"input_ids": right, "attention_mask": mask_r}], pooling="tokens")
    b = capture_representations(net, [{"input_ids": left, "attention_mask": mask_l}], pooling="tokens")
    assert torch.equal(a.lengths, b.lengths) and a.lengths.tolist() == [4, 2, 3]
    for fa, fb in zip(a.features, b.features):
        assert torch.equal(fa, fb)
    t, m = right_align([right.unsqueeze(2)], mask_r)  # right-padded: unchanged
    assert torch.equal(t[0].squeeze(2), right) and torch.equal(m, mask_r)


def test_monitor_token_ids_follow_the_right_aligned_clouds():
    from lightning_geom.monitoring.geometry import _aligned_ids

    ids = torch.tensor([[0, 0, 7, 8], [5, 6, 7, 0]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    assert _aligned_ids({"input_ids": ids, "attention_mask": mask}).tolist() == [[7, 8, -1, -1], [5, 6, 7, -1]]


def test_pooled_token_cloud_of_left_padded_batches_equals_right_padded():
    """capture_token_cloud on left-padded batches: the same tokens, features and dropped ids."""
    from torch import nn

    from lightning_geom.tokens import capture_token_cloud

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 4)

        def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
            return {"hidden_states": (self.emb(input_ids),)}

    torch.manual_seed(0)
    net = Emb()
    prompts = [[1, 6, 7, 8], [1, 10], [1, 12, 13]]
    lens = torch.tensor([4, 2, 3])
    mask_r = (torch.arange(4) < lens.unsqueeze(1)).long()
    right = {"input_ids": torch.tensor([p + [0] * (4 - len(p)) for p in prompts]), "attention_mask": mask_r}
    left = {"input_ids": torch.tensor([[0] * (4 - len(p)) + p for p in prompts]), "attention_mask": mask_r.flip(1)}
    a = capture_token_cloud(net, [right], max_tokens=None, drop_ids=[1], loss=False)
    b = capture_token_cloud(net, [left], max_tokens=None, drop_ids=[1], loss=False)
    assert a.features[0].shape[0] == 6  # 9 real tokens, 3 of them the dropped id 1
    assert torch.equal(a.features[0], b.features[0]) and torch.equal(a.prompt, b.prompt) and torch.equal(a.position, b.position)


@pytest.mark.parametrize("how", ["mean", "last", "first"])
def test_pooling_of_left_padded_rows_equals_right_padded(how):
    """Decoder tokenizers often pad on the left: "last" is then position T - 1, not mask.sum() - 1."""
    from lightning_geom.capture import pool

    g = torch.Generator().manual_seed(0)
    real = [torch.randn(n, 3, generator=g) for n in (4, 2, 3)]
    right = torch.zeros(3, 4, 3)
    left = torch.zeros(3, 4, 3)
    mask_r = torch.zeros(3, 4, dtype=torch.long)
    for i, r in enumerate(real):
        right[i, : len(r)] = r
        left[i, 4 - len(r) :] = r
        mask_r[i, : len(r)] = 1
    mask_l = mask_r.flip(1)
    assert torch.allclose(pool(right, mask_r, how), pool(left, mask_l, how))
    want = torch.stack([r.mean(0) if how == "mean" else r[-1] if how == "last" else r[0] for r in real])
    assert torch.allclose(pool(left, mask_l, how), want)


def test_pattern_hint_names_the_repeated_blocks():
    with pytest.raises(ValueError, match=r"Some that exist: the repeated blocks 'model\.transformer\.h\.\*' \(2 modules\)"):
        match_modules(TinyGPT(n_layer=2), ["h.*"])


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (torch.full((4, 6), 500), r"token ids span \[500, 500\], but GPT2LMHeadModel's embedding has 64 rows"),
        (torch.full((4, 6), -100), r"token ids span \[-100, -100\]"),
        (torch.zeros(4, 6), r"token ids are float32 \(4, 6\), but GPT2LMHeadModel starts with an embedding of 64 tokens"),
    ],
)
def test_bad_token_ids_are_named_not_an_index_error(ids, match):
    """An embedding's "index out of range in self" becomes one line: the ids' range against the vocabulary."""
    with pytest.raises(ValueError, match=match):
        capture_representations(TinyGPT(), [ids])


def test_audio_models_pool_over_their_real_frames():
    """wav2vec2's attention_mask counts waveform samples, its hidden states frames: the frames' mask
    comes from the model, so a padded clip's mean is over its real frames only."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2, num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True,
    )
    net = Wav2Vec2Model(cfg).eval()
    x = torch.randn(4, 2000)
    mask = torch.ones(4, 2000, dtype=torch.long)
    mask[1, 1200:] = 0
    reps = capture_representations(net, [{"input_values": x, "attention_mask": mask}], pooling="mean")
    with torch.no_grad():
        h = net(input_values=x, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    frames = net._get_feature_vector_attention_mask(h.shape[1], mask)
    n = int(frames[1].sum())
    assert 0 < n < h.shape[1]
    torch.testing.assert_close(reps.features[-1][1], h[1, :n].mean(0))
    torch.testing.assert_close(reps.features[-1][0], h[0].mean(0))


def test_repeated_blocks_are_the_family_that_holds_the_weights():
    """Four blocks of 12 heads each: the blocks (most parameters), not the 12 heads of block 0."""
    from lightning_geom.capture import repeated_blocks

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList(nn.Linear(8, 2) for _ in range(12))
            self.mlp = nn.Linear(24, 8)

    net = nn.Module()
    net.blocks = nn.ModuleList(Block() for _ in range(4))
    assert repeated_blocks(net) == [f"blocks.{i}" for i in range(4)]
    assert repeated_blocks(nn.Linear(2, 2)) == []


def test_compiled_and_peft_wrapped_models_are_probed_through_the_model_inside():
    """torch.compile's OptimizedModule (or PEFT's PeftModel) around the HF model inside a LightningModule:
    the network is the model inside, read eagerly (nothing is compiled here)."""
    from lightning_geom.capture import resolve_network

    lm = TinyGPT()
    inner = lm.model
    lm.model = torch.compile(inner)
    assert resolve_network(lm) is inner

    class PeftModel(nn.Module):  # the shape of peft's wrapper: adapters live inside the base model
        def __init__(self, base):
            super().__init__()
            self.base_model = base

        def get_base_model(self):
            return self.base_model

    lm.model = PeftModel(inner)
    assert resolve_network(lm) is inner
    reps = capture_representations(lm, [token_data(8)["input_ids"]])
    assert len(reps.features) == 4


def test_a_model_unpickled_in_a_fresh_process_still_returns_its_hidden_states():
    """transformers 5 records hidden states through a process-wide registry filled by each model's
    ``__init__``; a model unpickled in a new process (Lightning's ``ddp_spawn``) is not in it and
    silently returned none: every checkpoint of a ``ddp_spawn`` fit failed. Emptied here in-process."""
    reg = pytest.importorskip("transformers.utils.output_capturing")._CAN_RECORD_REGISTRY
    module = TinyGPT()
    saved = {k: dict.__getitem__(reg, k) for k in list(reg) if "GPT2" in k}
    try:
        for key in saved:
            dict.__delitem__(reg, key)  # the fresh process's registry: no GPT-2 class in it
        ids = token_data(8, 6)["input_ids"]
        assert module.model(input_ids=ids, output_hidden_states=True).hidden_states is None  # a training step first
        reps = capture_representations(module, [token_data(8, 6)])
        assert len(reps.features) == 4  # embeddings + 3 blocks, as in the process that built the model
        assert module.model(input_ids=ids, output_hidden_states=True).hidden_states is not None
    finally:
        dict.update(reg, saved)


def test_torch_transformer_encoder_with_a_padding_mask_is_read_like_in_training():
    """`nn.TransformerEncoder` given a `src_key_padding_mask` without gradients (the capture) turned its
    input into a nested tensor: every block's output was nested and pooling failed. The capture now runs
    PyTorch's attention without that fast path: each block's states equal those with gradients on."""

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 16)
            layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
            self.enc = nn.TransformerEncoder(layer, num_layers=2)

        def forward(self, x):
            return self.enc(self.inp(x), src_key_padding_mask=x.abs().sum(-1) == 0).mean(1)

    torch.manual_seed(0)
    net = Enc().eval()
    x = torch.randn(12, 7, 6)
    x[::2, 5:] = 0  # half the samples padded
    reps = capture_representations(net, [(x, torch.zeros(12, dtype=torch.long))], pooling="mean")
    assert reps.sources == ("enc.layers.0", "enc.layers.1")
    with hook_modules(net, list(reps.sources)) as store:  # the reference: gradients on, no fast path
        net(x)
    for got, name in zip(reps.features, reps.sources):
        assert torch.allclose(got, store[name][-1].mean(1), atol=1e-5)
    assert torch.backends.mha.get_fastpath_enabled()  # the flag is restored


def test_a_forward_that_takes_the_batch_dict_gets_the_batch_dict():
    """`forward(self, batch)` reading `batch["input_ids"]` itself (a common LightningModule style) was
    called as `forward(input_ids=..., ...)`: a TypeError at every checkpoint. Capture and pullback
    now pass such a forward the dict (labels included, as training does)."""
    from lightning_geom.capture import logits_and_hidden

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
            self.head = nn.Linear(8, 2)

        def forward(self, batch):
            h = self.emb(batch["input_ids"])
            for b in self.blocks:
                h = torch.tanh(b(h))
            return self.head(h.mean(1))

    torch.manual_seed(0)
    net = M()
    batch = {"input_ids": torch.randint(0, 10, (20, 5)), "labels": torch.randint(0, 2, (20,))}
    reps = capture_representations(net, [batch])
    assert reps.sources == ("blocks.0", "blocks.1", "blocks.2") and torch.equal(reps.labels, batch["labels"])
    h = net.emb(batch["input_ids"])
    for b, got in zip(net.blocks, reps.features):
        out = b(h)  # a block's output (the tanh is outside it)
        assert torch.allclose(got, out.mean(1), atol=1e-6)
        h = torch.tanh(out)
    logits, hidden = logits_and_hidden(net, batch)
    assert logits.shape == (20, 2) and len(hidden) == 3


def test_an_ids_mask_labels_tuple_is_read_as_ids_mask_and_labels():
    """`TensorDataset(input_ids, attention_mask, labels)` batches: the mask was taken for the labels and
    the ids ran unmasked (padding pooled, no label overlap). Now as the dict {ids, mask, labels} is read."""
    from lightning_geom.capture import batch_last_positions

    module = TinyGPT()
    d = token_data(24, 8)
    as_dict = capture_representations(module, [d])
    as_tuple = capture_representations(module, [(d["input_ids"], d["attention_mask"], d["labels"])])
    assert torch.equal(as_tuple.labels, d["labels"])
    for a, b in zip(as_dict.features, as_tuple.features):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(batch_last_positions((d["input_ids"], d["attention_mask"], d["labels"])), batch_last_positions(d))
    x, y = torch.randn(24, 8), torch.randint(0, 2, (24, 8))  # a (B, T) second item that is no mask stays labels
    assert split_batch((x, y, y))[1] == {}
    ids = d["input_ids"]
    pair_types = (torch.arange(8)[None, :] >= 3).long() * d["attention_mask"]  # token type ids of sentence pairs
    for not_a_mask in (torch.zeros_like(ids), pair_types, torch.randint(0, 2, ids.shape)):
        assert split_batch((ids, not_a_mask, d["labels"]))[1] == {}
    left = torch.flip(d["attention_mask"], dims=[1])  # left padding is a mask too
    assert torch.equal(split_batch((ids, left, d["labels"]))[1]["attention_mask"], left)

    class TwoArgs(nn.Module):  # forward(x, mask): the mask goes second
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(64, 8)
            self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])

        def forward(self, x, mask):
            h = self.emb(x) * mask[..., None]
            for b in self.blocks:
                h = b(h)
            return h

    reps = capture_representations(TwoArgs(), [(d["input_ids"], d["attention_mask"], d["labels"])])
    assert len(reps.features) == 2 and torch.equal(reps.labels, d["labels"])


def test_padded_ids_without_an_attention_mask_are_named():
    """Token ids padded with the model's pad token but no attention_mask: the padding would be pooled as
    text (a different ID, silently). One warning names it; a masked batch or a model without a pad
    token says nothing, and an EOS that is also the pad token needs two in a row."""
    import warnings

    model = TinyGPT()
    model.model.config.pad_token_id = 0
    d = token_data(16, t=8)
    with pytest.warns(UserWarning, match=r"pad token \(id 0\), but the batch has no `attention_mask`"):
        capture_representations(model, [{"input_ids": d["input_ids"]}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capture_representations(model, [d])  # masked: fine
        model.model.config.pad_token_id = model.model.config.eos_token_id = None
        capture_representations(model, [{"input_ids": d["input_ids"]}])  # no pad token known
        model.model.config.pad_token_id = model.model.config.eos_token_id = 5
        ids = torch.full((4, 8), 7)
        ids[:, -1] = 5  # one trailing EOS: the end of a text, not padding
        capture_representations(model, [{"input_ids": ids}])
    ids[:, -2] = 5
    with pytest.warns(UserWarning, match=r"pad token \(id 5\)"):
        capture_representations(model, [{"input_ids": ids}])
    model.model.config.pad_token_id = None  # GPT-2: the tokenizer pads with EOS, the config names no pad token
    with pytest.warns(UserWarning, match=r"pad token \(id 5\)"):
        capture_representations(model, [{"input_ids": ids}])
    from lightning_geom.capture import logits_and_hidden

    with pytest.warns(UserWarning, match=r"pad token \(id 5\).*read as the sample's last token"):  # the pullback's position
        logits_and_hidden(model.model, {"input_ids": ids})


def test_dict_batches_a_forward_cannot_take_are_one_line_or_trimmed():
    """A dict batch for a ``forward(x)``: extra columns (an index) are left out when a key names a
    parameter; a dict none of whose keys is ``x`` (passed whole, for a forward(batch)) fails with one line
    naming the parameter and the fix, not torch's "linear(): argument 'input' must be Tensor, not dict"."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(6, 6) for _ in range(2)])

        def forward(self, x, mask=None):
            for b in self.blocks:
                x = b(x)
            return x

    torch.manual_seed(0)
    net, x, y = Net(), torch.randn(40, 6), torch.arange(40) % 3
    plain = capture_representations(net, [(x, y)])
    extra = capture_representations(net, [{"x": x, "idx": torch.arange(40), "labels": y}])
    assert all(torch.equal(a, b) for a, b in zip(plain.features, extra.features)) and extra.labels.tolist() == y.tolist()
    with pytest.raises(ValueError, match=r"Net.forward\(x\) got the probe batch dict \(features, target\) whole.*batch\['features'\]"):
        capture_representations(net, [{"features": x, "target": y}])


def test_models_set_to_return_tuples_are_read_by_name_and_left_as_they_were():
    """A Hugging Face config with ``return_dict=False`` (TorchScript / ONNX export) makes the model
    return tuples: capture, the pullback's forward, next-token losses and the explorer read them by
    name all the same (each equal to the same model returning its output class), and the config is
    set back afterwards."""
    from transformers import BertConfig, BertForSequenceClassification

    from lightning_geom.capture import logits_and_hidden
    from lightning_geom.navigation import EquivalenceClassExplorer
    from lightning_geom.tokens import next_token_losses

    lm = TinyGPT(n_layer=2).model.eval()  # no dropout: two forwards agree
    data = token_data(12)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    clf = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 50, (4, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 0])}
    def readings() -> dict:
        return {
            "lm": capture_representations(lm, [data]).features,
            "clf": capture_representations(clf, [batch]).features,
            "logits": logits_and_hidden(lm, data)[0].detach(),
            "loss": next_token_losses(lm, data),
            "walk": EquivalenceClassExplorer(clf, steps=2, record_every=1).walk(batch)[0]["steps"][-1]["probs"],
        }

    want = readings()
    for model in (lm, clf):
        model.config.return_dict = False
    got = readings()
    for key in ("lm", "clf"):
        assert len(got[key]) == len(want[key]) == 3
        for a, b in zip(got[key], want[key]):
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(got["logits"], want["logits"])
    torch.testing.assert_close(got["loss"], want["loss"], equal_nan=True)
    torch.testing.assert_close(torch.as_tensor(got["walk"]), torch.as_tensor(want["walk"]))
    assert lm.config.return_dict is False and clf.config.return_dict is False  # the user's setting, back
