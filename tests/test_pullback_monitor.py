import lightning as L
import pytest
import torch
from helpers import TinyGPT, loader, token_data
from test_monitor import RecordingLogger

from lightning_geom.callbacks import GeometryMonitor, PullbackMonitor


def _data(n=48):
    d = token_data(n, t=8)
    d["attention_mask"] = torch.ones_like(d["attention_mask"])  # position -1 is a real token
    return d


def _fit(tmp_path, callbacks, steps=4, logger=None, model=None):
    trainer = L.Trainer(
        max_steps=steps, callbacks=callbacks, logger=logger or RecordingLogger(), default_root_dir=tmp_path,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
    )
    trainer.fit(model or TinyGPT(), loader(_data(), shuffle=True))
    return trainer


def test_keys_schedule_and_oracle_on_last_layer(tmp_path):
    data = _data()
    mon = PullbackMonitor(probe=data, num_samples=16, batch_size=8, top_logits=6, every_n_steps=2, log_spaced=False, figure_every=0, output_dir=str(tmp_path / "g"))
    logger = RecordingLogger()
    model = TinyGPT(n_layer=2)
    _fit(tmp_path, [mon], logger=logger, model=model)
    assert [r["step"] for r in mon.history] == [0, 2, 4]
    # the last hidden state of GPT-2 (after ln_f) maps to the logits linearly: J = W[top rows] at the
    # last position, so the top eigenvalue is the largest squared singular value of W_top.
    model.eval()
    with torch.no_grad():
        probe = {k: v[:16] for k, v in data.items()}
        logits = model.model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits[:, -1]
        top = torch.topk(logits, 6).indices
        w = model.model.lm_head.weight.double()
        expected = torch.stack([torch.linalg.svdvals(w[t]) ** 2 for t in top]).max(dim=1).values.mean()
    last = mon.history[-1]["layers"][-1]
    assert last["top"] == pytest.approx(float(expected), rel=1e-5)
    assert last["numerical_rank"] <= 6
    assert mon.history[0]["layers"][0]["stability"] is None
    assert all(0.0 <= layer["stability"] <= 1.0 + 1e-9 for layer in mon.history[-1]["layers"])


class PullbackRecordingLogger(RecordingLogger):
    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))


def test_logged_metric_keys_and_figures_next_to_geometry(tmp_path):
    data = _data()
    geo = GeometryMonitor(probe=data, every_n_steps=4, log_spaced=False, range_max=8, figure_every=0)
    pb = PullbackMonitor(probe=data, num_samples=8, top_logits=4, every_n_steps=4, log_spaced=False, figure_every=0)
    logger = PullbackRecordingLogger()
    trainer = _fit(tmp_path, [geo, pb], logger=logger, model=TinyGPT(n_layer=2))
    keys = {k for _, call in logger.calls for k in call if k.startswith("pullback/")}
    stats = ("top", "trace", "participation", "effective_rank", "numerical_rank", "log_det", "token_entropy", "stability")
    expected = {f"pullback/{s}/layer_{i:02d}" for s in stats for i in range(3)}
    expected |= {"pullback/time/spectra_s", "pullback/time/total_s", "pullback/time/blocking_s"}  # what each checkpoint cost
    assert keys == expected
    out = tmp_path / "geometry"
    names = {p.name for p in out.iterdir()}
    assert {"pullback_spectra.png", "pullback_history.json", "id_profile.png", "geometry_history.json"} <= names, names
    assert trainer.global_step == 4


def test_failure_warns_and_training_goes_on(tmp_path):
    mon = PullbackMonitor(probe=torch.zeros(8, 3), every_n_steps=2)  # a plain tensor cannot be fed to GPT-2 with hidden states
    with pytest.warns(UserWarning, match="PullbackMonitor skipped step 0"):
        trainer = _fit(tmp_path, [mon], steps=2)
    assert trainer.global_step == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output": "kl"}, "`output` to be one of"),
        ({"top_logits": 0}, '`top_logits` to be "auto", None or a positive integer'),
        ({"top_logits": "all"}, "`top_logits`"),
        ({"top_logits": True}, "`top_logits`"),
    ],
)
def test_constructor_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PullbackMonitor(**kwargs)


def test_pullback_history_csv_holds_the_pullback_numbers(tmp_path):
    """Issue 14: the CSV was written with the geometry columns (only step / epoch / layer filled)."""
    import csv

    from lightning_geom.report.history import save_history

    hist = [{"step": 3, "epoch": 0, "layers": [{"index": 0, "top": 2.5, "trace": 4.0, "stability": None, "spectrum": [2.5, 1.5]}]}]
    save_history(hist, tmp_path, name="pullback_history")
    rows = list(csv.DictReader((tmp_path / "pullback_history.csv").open()))
    assert rows[0]["layer"] == "0" and rows[0]["top"] == "2.5" and rows[0]["trace"] == "4.0"
    assert "spectrum" not in rows[0] and "id" not in rows[0]


def test_default_pulls_back_16_logits_of_an_lm_head_and_restores_older_checkpoints(tmp_path):
    """top_logits="auto" (the default): a 100-token vocabulary is pulled back through its top 16 logits
    (16 nonzero eigenvalues), and a checkpoint written under the former default (None) still restores."""
    mon = PullbackMonitor(probe=_data(), num_samples=8, every_n_steps=2, log_spaced=False, figure_every=0)
    _fit(tmp_path, [mon], steps=2, model=TinyGPT(vocab=100))
    layer0 = mon.history[-1]["layers"][0]
    assert layer0["numerical_rank"] <= 16 and len(layer0["spectrum"]) == 16  # all 100 logits: rank 30 here
    older = PullbackMonitor(top_logits=None)
    assert mon._legacy_state_key == older.state_key != mon.state_key
    assert PullbackMonitor(top_logits=4)._legacy_state_key == PullbackMonitor  # Lightning's default


def test_a_right_padded_probe_is_read_at_each_samples_last_real_token(tmp_path):
    """Three padding columns appended to every probe sequence change nothing: the default position is
    each sample's last real token (it used to be the last column, a padding position)."""
    plain = _data()
    padded = {k: v for k, v in plain.items()}
    padded["input_ids"] = torch.cat([plain["input_ids"], torch.zeros(len(plain["input_ids"]), 3, dtype=plain["input_ids"].dtype)], dim=1)
    padded["attention_mask"] = torch.cat([plain["attention_mask"], torch.zeros(len(plain["attention_mask"]), 3, dtype=plain["attention_mask"].dtype)], dim=1)
    tops = []
    for probe in (plain, padded):
        mon = PullbackMonitor(probe=probe, num_samples=8, top_logits=6, every_n_steps=2, log_spaced=False, at_fit_end=False, figure_every=0)
        torch.manual_seed(0)
        _fit(tmp_path, [mon], steps=1, model=TinyGPT())
        tops.append([layer["top"] for layer in mon.history[0]["layers"]])
    assert tops[1] == pytest.approx(tops[0], rel=1e-4)


def test_models_without_one_head_stack_get_their_own_reason():
    """A base model (no logits) and an encoder-decoder (logits from the decoder) are named as such."""
    from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2Model

    from lightning_geom.capture import NoLogitsError, logits_and_hidden

    batch = {"input_ids": torch.randint(3, 40, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    base = GPT2Model(GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    with pytest.raises(NoLogitsError, match="GPT2Model returns no `logits`"):
        logits_and_hidden(base, batch)
    bart = BartForConditionalGeneration(BartConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                                   decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=16))
    with pytest.raises(NoLogitsError, match="BartForConditionalGeneration is an encoder-decoder model.*run_fn"):
        logits_and_hidden(bart, batch)
