"""GGUF models (issue 11): a file or a folder holding one loads through transformers' GGUF support,
with the tokenizer from the same file, and the probe runs on it. The GGUF files are written here by
the ``gguf`` package (tests/gguf_writer.py), never downloaded."""

import json

import pytest
import torch

pytest.importorskip("gguf")

from gguf_writer import tiny_llama, write_gguf  # noqa: E402

from lightning_geom.cli import main  # noqa: E402
from lightning_geom.loading import load_model  # noqa: E402


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
    model = tiny_llama()
    folder = tmp_path_factory.mktemp("gguf")
    return model, write_gguf(model, folder / "tiny-llama-f32.gguf")


@pytest.fixture(scope="module")
def sentences(tmp_path_factory):
    path = tmp_path_factory.mktemp("sent") / "sentences.csv"
    rows = [(f"the quick brown fox jumps over the lazy dog number {i}", "a") for i in range(30)]
    rows += [(f"how much wood would a woodchuck chuck, asked {i} people", "b") for i in range(30)]
    path.write_text("text,label\n" + "\n".join(f'"{t}",{label}' for t, label in rows))
    return path


def test_gguf_file_loads_as_the_model_it_was_written_from(gguf_model):
    model, path = gguf_model
    loaded = load_model(path)
    assert loaded.kind == "hf-text" and type(loaded.module).__name__ == "LlamaForCausalLM"
    enc = loaded.tokenizer(["hello world", "the cat"], return_tensors="pt", padding=True)
    assert enc["input_ids"][0, :5].tolist() == list(b"hello")  # byte-level vocabulary from the file
    with torch.no_grad():
        want = model(**enc).logits
        got = loaded.module(**enc).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_a_folder_holding_one_gguf_file_loads_it(gguf_model):
    _, path = gguf_model
    assert load_model(path.parent).source == str(path)


def test_gguf_bad_inputs_are_one_line_errors(tmp_path, gguf_model):
    _, path = gguf_model
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="2 GGUF files"):
        load_model(two)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_model(fake)


def test_probe_command_on_a_gguf_file(tmp_path, gguf_model, sentences, capsys):
    _, path = gguf_model
    out = tmp_path / "report"
    assert main(["probe", str(path), "--data", str(sentences), "--out", str(out), "--range-max", "8", "--k", "5",
                 "--pullback-samples", "2", "--tokens", "per-prompt", "--token-prompts", "12", "--token-k", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["models"][0]
    assert len(m["layers"]) == 3  # embeddings + 2 blocks
    assert all(v["twonn"] > 0 for v in m["layers"])
    assert -1 <= m["tokens"]["layers"][1]["loss_spearman"] <= 1  # causal LM: per-prompt ID vs loss
    assert "tiny-llama-f32.gguf" in (out / "report.html").read_text()


def test_no_progress_silences_the_gguf_readers_bar(gguf_model, monkeypatch, capfd):
    """--no-progress hid transformers' bars but not the GGUF reader's own tqdm ("Converting and
    de-quantizing GGUF tensors..."), which filled CI logs."""
    import transformers.modeling_gguf_pytorch_utils as reader
    from transformers.utils import logging as hf_logging

    from lightning_geom import loading

    monkeypatch.setattr(reader, "tqdm", reader.tqdm)  # restored after the test
    monkeypatch.setattr(loading, "_QUIET", False)
    _, path = gguf_model
    try:
        loading.quiet_loading()
        load_model(path)
    finally:
        hf_logging.enable_progress_bar()
    assert "de-quantizing" not in capfd.readouterr().err
