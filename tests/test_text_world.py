"""The demo's text world (issue 15): corpus builder, chunk sampler, docstring probe, a few-step run."""

from __future__ import annotations

import torch

from lightning_geom.demo.text import (
    PROBE_MODULES,
    ChunkBatches,
    _stdlib_files,
    docstring_probe,
    docstring_sentences,
    stdlib_corpus,
)


def test_corpus_is_deterministic_cached_and_public(tmp_path):
    a = stdlib_corpus(tmp_path, max_bytes=200_000)
    assert list(tmp_path.glob("stdlib_corpus_*.bin"))  # cached
    b = stdlib_corpus(tmp_path, max_bytes=200_000)
    c = stdlib_corpus(tmp_path / "other", max_bytes=200_000)  # rebuilt from scratch
    assert torch.equal(a, b) and torch.equal(a, c) and a.numel() == 200_000 and a.dtype == torch.uint8
    files = _stdlib_files()
    assert files
    for f in files:
        parts = f.parts
        assert not any(p in ("test", "tests", "idlelib") for p in parts)
        assert not f.name.startswith(("test", "_")) or f.name == "__init__.py"


def test_docstring_probe_is_balanced_and_labelled():
    rows = docstring_sentences()
    per = {m: sum(1 for _, mm in rows if mm == m) for m in PROBE_MODULES}
    assert len(set(per.values())) == 1 and min(per.values()) >= 10  # balanced
    probe = docstring_probe(64)
    n = len(rows)
    assert probe["input_ids"].shape == (n, 64) and probe["attention_mask"].shape == (n, 64)
    assert probe["labels"].tolist() == [PROBE_MODULES.index(m) for _, m in rows]
    first = bytes(probe["input_ids"][0, : int(probe["attention_mask"][0].sum())].tolist()).decode()
    assert rows[0][0].encode()[:64].decode(errors="ignore").startswith(first[:20])


def test_chunk_batches_are_contiguous_windows_and_seeded():
    data = torch.arange(1000) % 256
    ds = ChunkBatches(data.to(torch.uint8), seq_len=16, batch_size=4, steps=3, seed=7)
    batches = list(ds)
    assert len(batches) == 3
    for b in batches:
        x, y = b["input_ids"], b["targets"]
        assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])  # targets are the next bytes
        assert torch.equal((x[:, 1:] - x[:, :-1]) % 256, torch.ones(4, 15, dtype=torch.long))  # contiguous
    again = list(ChunkBatches(data.to(torch.uint8), seq_len=16, batch_size=4, steps=3, seed=7))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))


def test_text_demo_runs_and_leaves_the_same_artefacts(tmp_path):
    from lightning_geom.cli import main

    out = tmp_path / "text"
    assert main(["demo", "--world", "text", "--steps", "6", "--layers", "2", "--width", "16", "--every-n-steps", "3",
                 "--no-progress", "--out", str(out)]) == 0
    names = {p.name for p in (out / "geometry").iterdir()}
    assert {"geometry_history.json", "id_profile.png", "id_scale_map.png", "pullback_history.csv"} <= names
    assert (out / "report" / "report.html").is_file() and list((out / "csv").rglob("metrics.csv"))
    import json

    hist = json.loads((out / "geometry" / "geometry_history.json").read_text())
    assert all(r["layers"][0]["label_overlap"] is not None for r in hist)  # labelled probe


def test_presets_cpu_is_the_default_and_gpu_needs_cuda(monkeypatch):
    """Issue 15: `--preset cpu` gives the 2-core sizes (the old defaults); `--preset gpu` the bf16 GPU
    sizes, refused in one line where there is no CUDA; explicit flags win over the preset."""
    import pytest
    import torch

    from lightning_geom.cli import main
    from lightning_geom.demo.run import DemoConfig, preset_config

    assert preset_config("cpu", "digits") == DemoConfig()
    assert preset_config("cpu", "text", steps=5).steps == 5 and preset_config("cpu", "text").world == "text"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="error: --preset gpu: no CUDA device"):
        main(["demo", "--preset", "gpu", "--world", "text", "--out", "/nonexistent/never-written"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = preset_config("gpu", "text", width=192)
    assert (gpu.n_layer, gpu.width, gpu.precision, gpu.accelerator) == (12, 192, "bf16-mixed", "gpu")
    with pytest.raises(ValueError, match="--width 256: the residual width must be a multiple of the 6 attention heads"):
        preset_config("gpu", "text", width=256)  # the text preset's 6 heads (it would fail inside the model)
