import json
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)

from lightning_geom.capture import capture_representations
from lightning_geom.cli import main
from lightning_geom.loading import LoadedModel, load_model
from lightning_geom.probing import load_probe_data, probe

WORDS = "the a cat dog sat ran on under mat log red blue big small quick slow".split()


def _word_tokenizer():
    """A word-level tokenizer over WORDS, built offline with the `tokenizers` library."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    tok = _word_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS) + 4, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, num_labels=2, max_position_embeddings=64)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        label = i % 2
        words = rng.choice(WORDS[:8] if label else WORDS[8:], size=6)
        rows.append({"text": " ".join(words), "label": "animal" if label else "colour"})
    (path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (path / "data.csv").write_text("sentence,label\n" + "\n".join(f"{r['text']},{r['label']}" for r in rows))
    (path / "lines.txt").write_text("\n".join(r["text"] for r in rows))
    (path / "empty.txt").write_text("\n\n")
    return path


def test_probe_hf_text_folder_end_to_end(tmp_path, text_model, text_data, capsys):
    out = tmp_path / "rep"
    assert main(["probe", str(text_model), "--data", str(text_data / "data.jsonl"), "--out", str(out), "--range-max", "16", "--pullback-samples", "8", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["models"][0]
    assert len(m["layers"]) == 4 and m["n_samples"] == 120
    assert [r["index"] for r in m["layers"]] == [0, 1, 2, 3]
    assert all(0 <= r["label_overlap"] <= 1 and 0 <= r["retrieval"] <= 1 for r in m["layers"])
    assert len(m["overlap_matrix"]) == 4 and m["overlap_matrix"][1][1] == 1.0
    assert m["best_retrieval_layer"] in range(4)
    assert m["pullback"] and "effective_rank" in m["pullback"][0]
    page = (out / "report.html").read_text()
    for section in ("id='summary'", "id='id-profile'", "id='gride'", "id='overlap'", "id='labels'", "id='pullback'", "id='numbers'", "id='settings'"):
        assert section in page
    assert page.count("data:image/png;base64,") == 6  # + the layer x scale map (issue 11)
    assert "id='scales'" in page and "plateau" in page
    assert {"id_profile.png", "id_scale_map.png", "overlap_matrix.png", "layers.csv"} <= {p.name for p in out.iterdir()}
    # metrics.json as the README says: layer_NN keys as in the monitor, and the layer x scale map
    assert list(m["by_layer"]) == ["layer_00", "layer_01", "layer_02", "layer_03"]
    assert m["by_layer"]["layer_02"]["index"] == 2
    assert m["id_map"]["ranks"] == [1, 2, 4, 8] and len(m["id_map"]["gride"]) == 4 and len(m["id_map"]["gride"][0]) == 4
    assert "n_change_points" in m["phase"] and "plateaus" in m["phase"]
    st = metrics["settings"]  # issue 14: the values used, never None for a default
    assert st["k"] == 10 and st["pooling"] == "mean" and st["range_max"] == 16 and st["device"] == "cpu"
    assert st["layers"].startswith("hidden_states") and st["gride_scale_n1"] in (1, 2, 4, 8) and st["lightning_geom"]
    out_text = capsys.readouterr().out
    assert "best retrieval layer" in out_text and "plateau" in out_text


def test_csv_columns_and_plain_text(tmp_path, text_model, text_data):
    loaded = load_model(text_model)
    d = load_probe_data(str(text_data / "data.csv"), loaded, text_column="sentence")
    assert d.n == 120 and d.labels is not None and d.label_names == ["animal", "colour"]
    d2 = load_probe_data(str(text_data / "lines.txt"), loaded)
    assert d2.labels is None
    report = probe([loaded], d2, range_max=8, pullback_samples=0, progress=False)
    assert report.models[0]["layers"][0]["label_overlap"] is None


@pytest.mark.parametrize("arch", ["vit", "convnext"])
def test_probe_image_folder(tmp_path, arch):
    """A ViT (token hidden states) and a ConvNeXt (feature maps (B, C, H, W): positions are the tokens)."""
    from PIL import Image
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

    torch.manual_seed(0)
    model_dir = tmp_path / arch
    if arch == "vit":
        cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=2)
        ViTForImageClassification(cfg).save_pretrained(model_dir)
    else:
        cfg = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=16, num_labels=2)
        ConvNextForImageClassification(cfg).save_pretrained(model_dir)
        ConvNextImageProcessor(size={"shortest_edge": 16}, crop_pct=1.0).save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    for c, base in (("dark", 40), ("light", 200)):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(30):
            arr = np.clip(base + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / c / f"{i}.png")
    out = tmp_path / "rep"
    assert main(["probe", str(model_dir), "--data", str(tmp_path / "imgs"), "--out", str(out), "--range-max", "8", "--pullback-samples", "4"]) == 0
    m = json.loads((out / "metrics.json").read_text())["models"][0]
    assert m["n_samples"] == 60 and len(m["layers"]) == 3
    assert m["layers"][0]["label_overlap"] > 0.9  # dark vs light pixels separate at the embeddings


@pytest.fixture(scope="module")
def demo_checkpoints(tmp_path_factory):
    from lightning_geom.demo import DigitsDataModule, ImageGPT

    path = tmp_path_factory.mktemp("ck")
    L.seed_everything(0)
    ck = ModelCheckpoint(dirpath=path, filename="s{step}", every_n_train_steps=3, save_top_k=-1)
    trainer = L.Trainer(max_steps=6, logger=False, callbacks=[ck], enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(ImageGPT(n_layer=2, width=16, heads=2, max_steps=6), datamodule=DigitsDataModule(batch_size=32))
    return sorted(path.glob("*.ckpt"))


def test_probe_demo_checkpoints_emergence(tmp_path, demo_checkpoints):
    out = tmp_path / "rep"
    args = ["probe", *map(str, demo_checkpoints), "--data", "digits", "--max-samples", "400", "--out", str(out), "--pullback-samples", "8"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["name"] for m in metrics["models"]] == ["s=step=3", "s=step=6"] or len(metrics["models"]) == 2
    assert all(len(m["layers"]) == 3 and m["n_samples"] == 400 for m in metrics["models"])
    assert metrics["models"][0]["layers"][1]["label_overlap"] > 0.1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["probe", "/no/such/folder", "--data", "digits"], "No such model file or folder"),
        (["probe", "org/some-hub-model", "--data", "digits"], "Hub names are not downloaded"),
    ],
)
def test_bad_model_paths(args, match, capsys):
    with pytest.raises(SystemExit, match=match):
        main(args)


def test_bad_data(tmp_path, text_model, text_data):
    loaded = load_model(text_model)
    with pytest.raises(ValueError, match="no column 'body'"):
        load_probe_data(str(text_data / "data.csv"), loaded, text_column="body")
    with pytest.raises(ValueError, match="is empty: put one text per line"):
        load_probe_data(str(text_data / "empty.txt"), loaded)
    with pytest.raises(ValueError, match="No such data file"):
        load_probe_data(str(tmp_path / "nope.csv"), loaded)
    for name in ("latin1.txt", "latin1.csv"):  # another encoding: file, line of the first bad byte, the fix
        (tmp_path / name).write_bytes("text,label\nthe cat,a\ncaf\xe9 dog,b\n".encode("latin-1"))
        with pytest.raises(ValueError, match=rf"{name}:3: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
            load_probe_data(str(tmp_path / name), loaded)
    with pytest.raises(ValueError, match="plain text .* --label-column 'topic' has nothing to name"):
        load_probe_data(str(text_data / "lines.txt"), loaded, label_column="topic")
    few = load_probe_data(str(text_data / "lines.txt"), loaded, max_samples=5)
    with pytest.raises(ValueError, match="5 samples are too few for k = 10"):
        probe([loaded], few, progress=False)


def test_binary_files_say_what_they_are_and_json_documents_of_columns_are_read(tmp_path, text_model):
    """A pickle / a Parquet table under another suffix given as --data was read as UTF-8 text (a Parquet
    file gave one garbage 'text'); a {column: [values]} JSON (pandas / datasets to_dict) failed on its
    first record. (A .parquet is read as a table: test_parquet_tables_...)"""
    import json


    loaded = load_model(text_model)
    (tmp_path / "x.pkl").write_bytes(b"\x80\x04\x95\x05\x00")
    (tmp_path / "t.dat").write_bytes(b"PAR1\x15\x04\x00\x00 rows")
    (tmp_path / "blob.txt").write_bytes(b"abc\x00\x01def")
    for name, kind in (("x.pkl", "a pickle"), ("t.dat", "a Parquet table"), ("blob.txt", "a binary file")):
        with pytest.raises(ValueError, match=rf"{name} is {kind}, not text: --data reads texts .* lightning_geom.probe\(model"):
            load_probe_data(str(tmp_path / name), loaded)
    texts, labels = [f"the cat number {i}" for i in range(24)], [i % 2 for i in range(24)]
    (tmp_path / "cols.json").write_text(json.dumps({"text": texts, "label": labels}))
    (tmp_path / "data.json").write_text(json.dumps({"data": [{"text": t, "label": y} for t, y in zip(texts, labels)]}))
    (tmp_path / "array.json").write_text(json.dumps([{"text": t, "label": y} for t, y in zip(texts, labels)]))
    read = [load_probe_data(str(tmp_path / n), loaded) for n in ("cols.json", "data.json", "array.json")]
    assert all(d.n == 24 and d.labels.tolist() == labels for d in read)
    assert all(torch.equal(d.batches[0]["input_ids"], read[2].batches[0]["input_ids"]) for d in read)
    (tmp_path / "ragged.json").write_text(json.dumps({"text": texts, "label": labels[:5]}))
    with pytest.raises(ValueError, match=r"ragged.json: the columns have different lengths \(text: 24, label: 5\)"):
        load_probe_data(str(tmp_path / "ragged.json"), loaded)


def test_incomplete_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a complete Hugging Face model folder"):
        load_model(tmp_path)


def test_python_api(text_model, text_data):
    import lightning_geom

    rep = lightning_geom.probe(str(text_model), str(text_data / "data.jsonl"), range_max=8, pullback_samples=0, progress=False)
    assert isinstance(rep, lightning_geom.GeometryReport)
    assert "<html>" in rep.to_html() and json.loads(rep.to_json())["models"][0]["n_samples"] == 120


def test_python_probe_of_texts_in_memory_with_a_tokenizer(text_model, text_data):
    """A model and its tokenizer in a notebook: `probe(model, texts, tokenizer=tok)` (or `(texts, labels)`)
    gives the numbers the file gives; a model without one says to pass `tokenizer=`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import lightning_geom

    rows = [json.loads(line) for line in (text_data / "data.jsonl").read_text().splitlines()]
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    model = AutoModelForSequenceClassification.from_pretrained(text_model)
    tok = AutoTokenizer.from_pretrained(text_model)
    opts = dict(range_max=8, pullback_samples=0, progress=False)
    mem = json.loads(lightning_geom.probe(model, (texts, labels), tokenizer=tok, **opts).to_json())["models"][0]
    disk = json.loads(lightning_geom.probe(str(text_model), str(text_data / "data.jsonl"), **opts).to_json())["models"][0]
    assert mem["n_samples"] == 120 and [la["label_overlap"] for la in mem["layers"]] == [la["label_overlap"] for la in disk["layers"]]
    assert [la["id"] for la in mem["layers"]] == pytest.approx([la["id"] for la in disk["layers"]], rel=1e-6)
    unlabelled = json.loads(lightning_geom.probe(model, texts, tokenizer=str(text_model), **opts).to_json())["models"][0]
    assert "label_overlap" not in unlabelled["layers"][0] or unlabelled["layers"][0]["label_overlap"] is None
    with pytest.raises(ValueError, match="pass `tokenizer=`"):
        lightning_geom.probe(model, texts, **opts)
    # rows of text not tokenized yet (JSON records, a Dataset before map(tokenizer), (text, label) pairs):
    # tokenized with the tokenizer, the same numbers as (texts, labels)
    names = sorted(set(labels))
    label_tensors = [{"sentence": t, "idx": i, "label": torch.tensor(names.index(y))} for i, (t, y) in enumerate(zip(texts, labels))]
    import pandas as pd

    for form in (rows, list(zip(texts, labels)), label_tensors, pd.DataFrame(rows)):
        got = json.loads(lightning_geom.probe(model, form, tokenizer=tok, **opts).to_json())["models"][0]
        assert [la["label_overlap"] for la in got["layers"]] == [la["label_overlap"] for la in mem["layers"]]
        assert [la["id"] for la in got["layers"]] == pytest.approx([la["id"] for la in mem["layers"]], rel=1e-6)
    with pytest.raises(ValueError, match="pass `tokenizer=`"):
        lightning_geom.probe(model, rows, **opts)
    with pytest.raises(ValueError, match="3 labels for 120 texts"):
        lightning_geom.probe(model, (texts, labels[:3]), tokenizer=tok, **opts)
    with pytest.raises(ValueError, match="text number 1 is empty"):
        lightning_geom.probe(model, ["a b", " "], tokenizer=tok, **opts)


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "lightning_geom.cli", "--help"], capture_output=True, text=True).stdout
    for cmd in ("demo", "probe", "navigate", "fit", "digits"):
        assert cmd in out


def test_navigate_command_on_a_text_classifier_folder(tmp_path, text_model):
    out = tmp_path / "nav"
    assert main(["navigate", str(text_model), "--text", "the cat sat on the mat", "--text", "red blue big", "--steps", "4", "--record-every", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 2 and all(s["distance"] > 0 for s in summary)
    walk = json.loads((out / "walk_000.json").read_text())
    assert [r["step"] for r in walk["steps"]] == [0, 2, 4]
    assert walk["steps"][0]["decoded"][:3] == ["[CLS]", "the", "cat"]
    assert (out / "tokens.csv").exists()


def test_navigate_command_on_a_causal_lm_folder(tmp_path):
    """An LM walks its next token (at the last real position), named by the tokenizer; a base model
    without a head is a one-line error."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(WORDS) + 4, n_embd=16, n_layer=2, n_head=2, n_positions=32, attn_implementation="eager")
    lm, base = GPT2LMHeadModel(cfg).eval(), GPT2Model(cfg)
    for folder, net in (("lm", lm), ("base", base)):
        net.save_pretrained(tmp_path / folder)
        _word_tokenizer().save_pretrained(tmp_path / folder)
    out = tmp_path / "nav"
    assert main(["navigate", str(tmp_path / "lm"), "--text", "the cat sat on the mat", "--text", "red dog", "--steps", "2", "--record-every", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ids = _word_tokenizer()(["the cat sat on the mat"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = int(lm(input_ids=ids).logits[0, -1].argmax())
    assert summary[0]["start_pred"] == expected and summary[0]["start_name"] == _word_tokenizer().convert_ids_to_tokens(expected)
    with pytest.raises(SystemExit, match="error: GPT2Model has no output head"):
        main(["navigate", str(tmp_path / "base"), "--text", "the cat", "--steps", "1", "--out", str(tmp_path / "nav2")])


def test_lightning_checkpoint_brings_the_tokenizer_its_hf_model_was_read_with(tmp_path, text_data):
    """A checkpoint of a wrapper around an HF LM: the tokenizer comes from the folder its hyperparameters
    (and the model's config._name_or_path) name; without one there, --tokenizer FOLDER supplies it."""
    import shutil

    from helpers import PretrainedLM, loader, token_data
    from transformers import GPT2Config, GPT2LMHeadModel

    from lightning_geom.loading import load_model

    folder = tmp_path / "lm"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS) + 4, n_embd=16, n_layer=2, n_head=2, n_positions=32)).save_pretrained(folder)
    _word_tokenizer().save_pretrained(folder)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(PretrainedLM(str(folder)), loader(token_data(16, t=8, vocab=len(WORDS) + 4), batch_size=8))
    ckpt = tmp_path / "lm.ckpt"
    trainer.save_checkpoint(ckpt)
    assert load_model(ckpt, module="helpers.PretrainedLM").tokenizer is not None
    args = ["probe", str(ckpt), "--module", "helpers.PretrainedLM", "--data", str(text_data / "lines.txt"), "--pullback-samples", "0"]
    assert main([*args, "--out", str(tmp_path / "r1")]) == 0
    nav = ["navigate", str(ckpt), "--module", "helpers.PretrainedLM", "--text", "the cat sat", "--steps", "1", "--out", str(tmp_path / "n")]
    assert main(nav) == 0  # the wrapper's HF LM is navigated, its next tokens named
    assert json.loads((tmp_path / "n" / "summary.json").read_text())[0]["start_name"] in WORDS + ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for f in folder.iterdir():  # the tokenizer moves elsewhere: the checkpoint no longer finds it
        if "token" in f.name or f.name.startswith("vocab") or f.name.startswith("special"):
            shutil.move(str(f), tok_dir / f.name)
    with pytest.raises(SystemExit, match="pass --tokenizer FOLDER"):
        main([*args, "--out", str(tmp_path / "r2")])
    assert main([*args, "--tokenizer", str(tok_dir), "--out", str(tmp_path / "r3")]) == 0


def test_navigate_demo_checkpoint(tmp_path, demo_checkpoints):
    out = tmp_path / "nav"
    assert main(["navigate", str(demo_checkpoints[-1]), "--data", "digits", "--index", "0", "--steps", "2", "--record-every", "1", "--out", str(out)]) == 0
    assert (out / "walk_000.png").exists() and (out / "walk_000.json").exists()


def test_probe_data_from_a_datamodule_config(tmp_path, demo_checkpoints):
    cfg = tmp_path / "data.yaml"
    cfg.write_text("data:\n  class_path: lightning_geom.demo.DigitsDataModule\n  init_args:\n    val_fraction: 0.2\n")
    loaded = load_model(demo_checkpoints[-1])
    d = load_probe_data(str(cfg), loaded, max_samples=300)
    assert d.n >= 300 and d.labels is not None and len(d.labels) == d.n
    report = probe([loaded], d, range_max=16, pullback_samples=0, progress=False)
    assert report.models[0]["n_samples"] == d.n
    with pytest.raises(ValueError, match="needs `data: {class_path"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("trainer: {}\n")
        load_probe_data(str(bad), loaded)


def test_probe_fails_loudly_when_every_layer_fails(tmp_path, text_model, text_data):
    """Issue 13: texts that all map to one vector fail every layer; the command must not write an empty
    report and exit 0. A `--range-max` below 2 is refused before any work."""
    same = tmp_path / "same.txt"
    same.write_text("the cat sat on the mat\n" * 40)
    args = ["probe", str(text_model), "--data", str(same), "--out", str(tmp_path / "r"), "--pullback-samples", "0"]
    with pytest.raises(SystemExit, match="every layer failed.*only 1 distinct points among 40"):
        main(args)
    assert not (tmp_path / "r" / "report.html").exists()
    args = ["probe", str(text_model), "--data", str(text_data / "data.jsonl"), "--out", str(tmp_path / "r"), "--range-max", "1"]
    with pytest.raises(SystemExit) as info:  # a usage error (exit code 2), before any model is loaded
        main(args)
    assert info.value.code == 2 and not (tmp_path / "r" / "report.html").exists()


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("a.csv", "text,label\nhello world,a\nthe cat,\n", r"a\.csv:3: empty label"),
        ("b.csv", "text,label\nhello world,a\nthe cat,NaN\n", r"b\.csv:3: empty label"),
        ("c.csv", "text,label\nhello world,a\nthe cat\n", r"c\.csv:3: empty label"),  # short row
        ("d.jsonl", '{"text": "hello", "label": "a"}\n{"text": null, "label": "b"}\n', r"d\.jsonl:2: no text"),
        ("e.jsonl", '{"text": "hello", "label": "a"}\n{"text": "x", "label": "b"\n', r"e\.jsonl:2: invalid JSON"),
        ("f.jsonl", '{"text": "hello", "label": "a"}\n["x"]\n', r"f\.jsonl:2: expected a JSON object"),
        ("g.csv", "text,label\nhello,a,extra\n", r"g\.csv:2: 3 cells for 2 header columns"),
    ],
)
def test_malformed_records_are_named_by_file_and_line(tmp_path, text_model, name, text, match):
    loaded = load_model(text_model)
    with pytest.raises(ValueError, match=match):
        load_probe_data(_write(tmp_path, name, text), loaded)


def test_bom_unlabeled_and_single_class(tmp_path, text_model):
    loaded = load_model(text_model)
    rows = "".join(f"the cat sat {i},{'ab'[i % 2]}\n" for i in range(20))
    d = load_probe_data(_write(tmp_path, "bom.csv", "\ufefftext,label\n" + rows), loaded)  # BOM before the header
    assert d.n == 20 and d.label_names == ["a", "b"]
    with pytest.warns(UserWarning, match="1 records without a label were dropped"):
        d = load_probe_data(_write(tmp_path, "gap.csv", "text,label\n" + rows + "no label here,\n"), loaded, drop_unlabeled=True)
    assert d.n == 20
    one = "".join(f"the cat sat {i},a\n" for i in range(20))
    with pytest.warns(UserWarning, match="same label"):
        d = load_probe_data(_write(tmp_path, "one.csv", "text,label\n" + one), loaded)
    assert d.labels is None  # no label overlap of 1.0 that means nothing


def test_colliding_checkpoint_names_use_their_paths():
    from lightning_geom.probing.report import _names

    assert _names(["runs/a/last.ckpt", "runs/b/last.ckpt"]) == ["a/last.ckpt", "b/last.ckpt"]
    assert _names(["x/step=1.ckpt", "x/step=2.ckpt"]) == ["step=1", "step=2"]


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory):
    from lightning_geom.cli import main as cli_main

    out = tmp_path_factory.mktemp("demo")
    cli_main(["demo", "--steps", "4", "--layers", "2", "--width", "16", "--every-n-steps", "2", "--probe-samples", "64",
              "--no-report", "--no-pullback", "--no-progress", "--out", str(out)])
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("truncated", "is not a readable checkpoint"),
        ("not_a_ckpt", "is not a readable checkpoint"),
        ("device_cuda", "--device .*: no CUDA device here|.*"),
        ("device_banana", "not a device name"),
        ("out_is_file", "exists and is not a folder"),
        ("module_missing", "cannot import 'nosuch'"),
        ("module_not_a_model", "is not a LightningModule class"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(tmp_path, demo_ckpt, case, match):
    """Issue 13: one line that names the problem and the fix, before any computation, exit code 1."""
    import torch

    ckpt = str(demo_ckpt)
    extra: list[str] = []
    if case == "truncated":
        bad = tmp_path / "t.ckpt"
        bad.write_bytes(demo_ckpt.read_bytes()[:1000])
        ckpt = str(bad)
    elif case == "not_a_ckpt":
        bad = tmp_path / "x.ckpt"
        bad.write_text("x")
        ckpt = str(bad)
    elif case == "device_cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra = ["--device", "cuda"]
    elif case == "device_banana":
        extra = ["--device", "banana"]
    elif case == "out_is_file":
        (tmp_path / "f").write_text("")
        extra = ["--out", str(tmp_path / "f")]
    elif case == "module_missing":
        extra = ["--module", "nosuch.Module"]
    elif case == "module_not_a_model":
        extra = ["--module", "lightning_geom.demo.DigitsDataModule"]
    args = ["probe", ckpt, "--data", "digits", "--max-samples", "200", "--pullback-samples", "0"]
    if "--out" not in extra:
        args += ["--out", str(tmp_path / "rep")]
    with pytest.raises(SystemExit) as info:
        main(args + extra)
    msg = str(info.value.code)
    assert msg.startswith("error: ") and "\n" not in msg
    import re

    assert re.search(match, msg), msg


def test_probe_per_prompt_tokens_with_the_shuffled_control(tmp_path, text_model, text_data):
    """Issue 10: --tokens per-prompt writes the per-prompt token ID per layer (and the shuffled control)."""
    out = tmp_path / "tok"
    args = ["probe", str(text_model), "--data", str(text_data / "data.jsonl"), "--out", str(out), "--range-max", "16",
            "--pullback-samples", "0", "--tokens", "per-prompt", "--token-prompts", "24", "--token-k", "3", "--shuffle-control"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())["models"][0]
    tok = m["tokens"]
    assert tok["prompts"] == 24 and len(tok["layers"]) == len(m["layers"])
    for r in tok["layers"]:
        assert r["token_id"] > 0 and r["token_id_shuffled"] > 0 and r["n_prompts"] + tok["dropped"] == 24
    page = (out / "report.html").read_text()
    assert "id='tokens'" in page and (out / "token_profile.png").is_file()
    # the per-prompt ID x layer table, and the per-layer summaries beside the pooled-sentence numbers
    import csv

    table = list(csv.DictReader((out / "token_prompts.csv").open()))
    assert [int(r["prompt"]) for r in table] == tok["kept_prompts"] and len(table) == 24 - tok["dropped"]
    for r in tok["layers"]:
        i = r["index"]
        for row, v, w in zip(table, r["per_prompt"], r["per_prompt_shuffled"]):
            assert (row[f"id_layer_{i}"] == "") == (v is None) and (v is None or float(row[f"id_layer_{i}"]) == v)
            assert (row[f"id_shuffled_layer_{i}"] == "") == (w is None)
    rows = list(csv.DictReader((out / "layers.csv").open()))
    assert [float(row["token_id"]) for row in rows] == [r["token_id"] for r in tok["layers"]]
    assert "token_id_shuffled" in rows[0] and "token_loss_spearman" not in rows[0]  # an encoder: no loss


def test_probe_tokens_correlate_per_prompt_id_with_the_lm_loss(tmp_path, text_data):
    """Issue 10: for a causal LM, the per-prompt ID's Pearson / Spearman correlation with the per-prompt loss."""
    from scipy import stats
    from transformers import GPT2Config, GPT2LMHeadModel

    from lightning_geom.probing.report import _prompt_losses

    path = tmp_path / "gpt2"
    tok = _word_tokenizer()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS) + 4, n_embd=32, n_layer=2, n_head=2, n_positions=64)).save_pretrained(path)
    tok.save_pretrained(path)
    out = tmp_path / "rep"
    assert main(["probe", str(path), "--data", str(text_data / "data.jsonl"), "--out", str(out), "--range-max", "16",
                 "--pullback-samples", "0", "--tokens", "per-prompt", "--token-prompts", "30", "--token-k", "3"]) == 0
    m = json.loads((out / "metrics.json").read_text())["models"][0]
    layer = m["tokens"]["layers"][1]
    assert -1 <= layer["loss_spearman"] <= 1 and -1 <= layer["loss_pearson"] <= 1
    # the oracle: scipy on the same per-prompt numbers
    loaded = load_model(path)
    data = load_probe_data(str(text_data / "data.jsonl"), loaded, max_samples=30, batch_size=32)
    batch = {k: v[:30] for k, v in data.batches[0].items()}
    losses = _prompt_losses(loaded.module, [batch], torch.device("cpu"))
    kept = losses[batch["attention_mask"].sum(1) > 3]
    assert layer["loss_spearman"] == pytest.approx(stats.spearmanr(layer["per_prompt"], kept.numpy())[0], abs=1e-9)
    assert m["tokens"]["loss_mean"] == pytest.approx(float(kept.mean()), rel=1e-6)
    import csv

    table = list(csv.DictReader((out / "token_prompts.csv").open()))
    assert [float(r["loss"]) for r in table] == pytest.approx(kept.tolist(), rel=1e-6)
    assert [float(r["id_layer_1"]) for r in table] == layer["per_prompt"]


def test_probe_pooled_token_cloud_with_the_lm_loss(tmp_path, text_data):
    """Issue 10, item 2: --tokens pooled: all texts' tokens as one cloud per layer (seeded --max-tokens
    subsample, special tokens left out), its ID profile, and for a causal LM the next-token loss."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lightning_geom.geometry import gride, knn, twonn
    from lightning_geom.tokens import capture_token_cloud

    path = tmp_path / "gpt2"
    tok = _word_tokenizer()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS) + 4, n_embd=32, n_layer=2, n_head=2, n_positions=64)).save_pretrained(path)
    tok.save_pretrained(path)
    out = tmp_path / "rep"
    assert main(["probe", str(path), "--data", str(text_data / "data.jsonl"), "--out", str(out), "--range-max", "16",
                 "--pullback-samples", "0", "--tokens", "both", "--token-prompts", "20", "--token-k", "3", "--max-tokens", "300"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["models"][0]
    cloud = m["token_cloud"]
    # 120 texts of 6 words + [CLS] + [SEP]: 960 tokens, 720 without the special ones
    assert cloud["available"] == 720 and cloud["n_tokens"] == 300 and cloud["special_tokens_dropped"]
    assert len(cloud["layers"]) == 3 and m["tokens"] is not None
    assert metrics["settings"]["tokens"] == ["per_prompt", "pooled"] and metrics["settings"]["max_tokens"] == 300
    # the oracle: the same cloud, measured directly with the geometry core
    loaded = load_model(path)
    data = load_probe_data(str(text_data / "data.jsonl"), loaded, max_samples=2000, batch_size=32)
    batches = [{key: v for key, v in b.items() if key != "labels"} for b in data.batches]
    direct = capture_token_cloud(loaded.module, batches, max_tokens=300, seed=0, drop_ids=tok.all_special_ids)
    from lightning_geom.analysis import GeometrySettings, layer_k

    x = direct.features[1]
    nb = knn(x, layer_k(300, GeometrySettings(range_max=16, overlap_k=10, label_k=10)))
    if not nb.all_distinct:  # tokens after a shared prefix are copies: the ID is that of the distinct points
        x = torch.unique(x, dim=0)
        nb = knn(x, layer_k(len(x), GeometrySettings(range_max=16, overlap_k=10, label_k=10)))
    assert cloud["layers"][1]["twonn"] == pytest.approx(twonn(nb).dim, rel=1e-6)
    n1 = cloud["layers"][1]["id_n1"]
    assert cloud["layers"][1]["id"] == pytest.approx(gride(nb, n1=n1).dim, rel=1e-4)
    assert cloud["loss_mean"] == pytest.approx(float(direct.loss[torch.isfinite(direct.loss)].mean()), rel=1e-6)
    assert all(r["loss_neighbors"] is None or -1 <= r["loss_neighbors"] <= 1 for r in cloud["layers"])
    page = (out / "report.html").read_text()
    assert "pooled token cloud" in page.lower() and "300 of 720 tokens" in page
    # special tokens kept on request; a bad mode is one line
    assert main(["probe", str(path), "--data", str(text_data / "data.jsonl"), "--out", str(tmp_path / "r2"), "--range-max", "8",
                 "--pullback-samples", "0", "--tokens", "pooled", "--keep-special-tokens", "--max-tokens", "5000"]) == 0
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["models"][0]["token_cloud"]["n_tokens"] == 960
    with pytest.raises(ValueError, match="tokens"):
        probe(load_model(path), data, tokens="pooledd", progress=False)


def test_pullback_share_caps_the_pullback_samples(text_model, text_data):
    """Issue 11: by default the pullback statistics stop before taking a quarter of the probe's time;
    one flag (share 1) measures every requested sample. At least one sample is always measured."""
    data = load_probe_data(str(text_data / "data.jsonl"), load_model(text_model), max_samples=40, batch_size=40)
    full = probe(load_model(text_model), data, range_max=8, pullback_samples=6, pullback_share=1.0, progress=False)
    tiny = probe(load_model(text_model), data, range_max=8, pullback_samples=6, pullback_share=1e-9, progress=False)
    assert full.models[0]["pullback_samples_used"] == 6 and tiny.models[0]["pullback_samples_used"] == 1
    assert full.settings["pullback_share"] == 1.0 and len(full.models[0]["pullback"]) == len(full.models[0]["layers"])
    assert all(r["top"] > 0 for r in tiny.models[0]["pullback"])
    with pytest.raises(ValueError, match="pullback_share"):
        probe(load_model(text_model), data, range_max=8, pullback_share=0, progress=False)


@pytest.mark.parametrize("arch", ["t5", "t5-encoder", "bart"])
def test_probe_encoder_decoder_models_through_their_encoder(tmp_path, text_data, arch):
    """An encoder-decoder model (T5, BART) is probed through its encoder: its decoder needs targets.
    A saved T5EncoderModel loads as itself (AutoModel would build a T5Model that needs decoder inputs)."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        T5Config,
        T5EncoderModel,
        T5ForConditionalGeneration,
    )

    v = len(WORDS) + 4
    t5 = T5Config(vocab_size=v, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0, pad_token_id=0)
    if arch == "t5":
        model = T5ForConditionalGeneration(t5)
    elif arch == "t5-encoder":
        model = T5EncoderModel(t5)
    else:
        model = BartForConditionalGeneration(BartConfig(vocab_size=v, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                                                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0))
    path = tmp_path / arch
    model.save_pretrained(path)
    _word_tokenizer().save_pretrained(path)
    out = tmp_path / "rep"
    assert main(["probe", str(path), "--data", str(text_data / "data.jsonl"), "--out", str(out), "--range-max", "8", "--pullback-samples", "2"]) == 0
    m = json.loads((out / "metrics.json").read_text())["models"][0]
    assert len(m["layers"]) == 3 and all(r["twonn"] > 0 for r in m["layers"])  # embeddings + the 2 encoder blocks
    # no pullback (the logits need the decoder): the report says why instead of dropping the section silently
    assert m["pullback"] is None and ("no output head" if arch == "t5-encoder" else "encoder-decoder") in m["pullback_note"]
    assert "id='no-pullback'" in (out / "report.html").read_text()


def test_token_diagnostics_count_unknown_tokens_and_copies():
    from lightning_geom.probing.data import token_diagnostics

    ids = torch.tensor([[2, 9, 9, 3, 0], [2, 9, 9, 3, 0], [2, 5, 6, 7, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    share, copies, n = token_diagnostics([{"input_ids": ids, "attention_mask": mask}], unk_id=9, special_ids=[2, 3, 9])
    assert (copies, n) == (1, 3) and share == pytest.approx(4 / 7)  # specials (2, 3) are not counted; unk is
    # a copy across batches counts too (masked padding never does)
    share, copies, n = token_diagnostics([{"input_ids": ids[:1], "attention_mask": mask[:1]}, {"input_ids": ids[1:2, :4]}], unk_id=None)
    assert (share, copies, n) == (0.0, 1, 2)


def test_probe_warns_when_texts_tokenize_to_copies_or_unknowns(tmp_path, text_model):
    from lightning_geom.loading import load_model
    from lightning_geom.probing.data import load_probe_data

    model_dir = text_model
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(["zzz qqq"] * 30 + [" ".join(WORDS[i : i + 4]) for i in range(10)]) + "\n")
    with pytest.warns(UserWarning) as rec:
        load_probe_data(str(data), load_model(model_dir), label_column=None)
    text = " ".join(str(w.message) for w in rec)
    assert "29 of 40 texts are token-for-token copies" in text
    assert "unknown token" in text


def test_layer_errors_say_a_common_cause_once():
    from lightning_geom.analysis import layer_errors

    recs = [{"index": 0, "error": "E: a"}, {"index": 1, "error": "E: a"}, {"index": 2}, {"index": 3, "error": "E: b"}]
    assert layer_errors(recs) == ["layer_00, layer_01: E: a", "layer_03: E: b"]


def test_lm_token_states_and_losses_from_one_forward_equal_the_two_pass_capture(tmp_path, text_data):
    """The per-prompt section's one-forward path (token states + losses) gives the same token clouds as
    capture_representations(pooling="tokens") and the same losses as _prompt_losses."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lightning_geom.probing.report import _prompt_losses, _token_states_and_losses

    path = tmp_path / "gpt2"
    tok = _word_tokenizer()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS) + 4, n_embd=32, n_layer=2, n_head=2, n_positions=64)).save_pretrained(path)
    tok.save_pretrained(path)
    loaded = load_model(path)
    data = load_probe_data(str(text_data / "data.jsonl"), loaded, max_samples=40, batch_size=16)
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in data.batches]
    dev = torch.device("cpu")
    feats, lens, losses = _token_states_and_losses(loaded.module, batches, dev)
    reps = capture_representations(loaded.module, batches, pooling="tokens", device=dev)
    assert len(feats) == len(reps.features) == 3
    for a, b in zip(feats, reps.features):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(lens, reps.lengths)
    torch.testing.assert_close(losses, _prompt_losses(loaded.module, batches, dev), rtol=1e-5, atol=1e-6)


def test_lm_probe_shares_its_forward_with_the_pooled_token_cloud(tmp_path, text_data):
    """--tokens pooled on a causal LM: the sequence features come from the token cloud's forward
    (one forward, not two), and every per-layer number equals a probe without the token cloud."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path / "gpt2"
    tok = _word_tokenizer()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS) + 4, n_embd=32, n_layer=2, n_head=2, n_positions=64)).save_pretrained(path)
    tok.save_pretrained(path)
    common = ["--data", str(text_data / "data.jsonl"), "--range-max", "16", "--pullback-samples", "0"]
    for pooling in ("mean", "last"):
        a, b = tmp_path / f"plain_{pooling}", tmp_path / f"pooled_{pooling}"
        assert main(["probe", str(path), *common, "--pooling", pooling, "--out", str(a)]) == 0
        assert main(["probe", str(path), *common, "--pooling", pooling, "--out", str(b), "--tokens", "pooled", "--max-tokens", "200"]) == 0
        ma = json.loads((a / "metrics.json").read_text())["models"][0]
        mb = json.loads((b / "metrics.json").read_text())["models"][0]
        assert mb["token_cloud"]["n_tokens"] == 200
        assert ma["layers"] == mb["layers"] and ma["overlap_matrix"] == mb["overlap_matrix"]


def test_report_closes_every_figure_it_draws(tmp_path, text_model, text_data):
    """pyplot keeps every figure it makes until closed (a leak in notebooks and long-running processes;
    the suite used to hit matplotlib's 20-figure warning): the figures are made outside pyplot, and
    to_html() and write() leave none open."""
    import matplotlib.pyplot as plt

    rep = probe([load_model(text_model)], load_probe_data(str(text_data / "data.jsonl"), load_model(text_model)), range_max=8,
                pullback_samples=0, progress=False)
    plt.close("all")
    rep.to_html()
    assert plt.get_fignums() == []
    rep.write(tmp_path / "r")
    assert plt.get_fignums() == []


def test_csv_cells_keep_their_newlines_and_semicolon_files_are_read(tmp_path):
    """Quoted cells may hold newlines (and U+2028), which the reader used to split and glue back without
    them; a header without commas but with ';' (a spreadsheet export) names the delimiter."""
    import csv as csv_module

    from lightning_geom.probing.data import _texts

    texts = ["first line\nsecond line", "a\u2028b, with a comma", "plain"]
    comma = tmp_path / "multi.csv"
    with comma.open("w", newline="", encoding="utf-8") as fh:
        w = csv_module.writer(fh)
        w.writerow(["text", "label"])
        w.writerows([[t, i % 2] for i, t in enumerate(texts)])
    got, labels = _texts(comma, "text", "label")
    assert got == texts and [str(v) for v in labels] == ["0", "1", "0"]
    semi = tmp_path / "semi.csv"
    semi.write_text("text;label\nthe cat, the dog;animal\nred;colour\n", encoding="utf-8")
    got, labels = _texts(semi, "text", "label")
    assert got == ["the cat, the dog", "red"] and [str(v) for v in labels] == ["animal", "colour"]


def test_one_text_per_line_means_newlines_only(tmp_path):
    """A U+2028 or a form feed inside a line of a .txt / .jsonl file stays inside its text."""
    import json as json_module

    from lightning_geom.probing.data import _texts

    txt = tmp_path / "lines.txt"
    txt.write_text("one\u2028still one\r\ntwo\x0ctwo\n\nthree\n", encoding="utf-8")
    assert _texts(txt, "text", None)[0] == ["one\u2028still one", "two\x0ctwo", "three"]
    jl = tmp_path / "rows.jsonl"
    jl.write_text("\n".join(json_module.dumps({"text": t}, ensure_ascii=False) for t in ["a\u2028b", "c"]), encoding="utf-8")
    assert _texts(jl, "text", None)[0] == ["a\u2028b", "c"]


def test_images_16_bit_scaled_and_unreadable_files_left_out(tmp_path):
    """A 16-bit PNG is scaled by 65535 (PIL's convert("RGB") clips it to white), and a corrupt file in an
    image folder is warned about and left out instead of ending the probe."""
    from PIL import Image

    from lightning_geom.loading import LoadedModel
    from lightning_geom.probing.data import load_rgb

    rng = np.random.default_rng(0)
    deep = (rng.random((6, 5)) * 65535).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    got = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert got.shape == (6, 5, 3) and np.abs(got[..., 0].astype(float) - deep / 65535 * 255).max() <= 0.5
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    loaded = LoadedModel(module=torch.nn.Identity(), kind="module", source="identity")
    with pytest.warns(UserWarning, match=r"1 image file\(s\) could not be read.*b/broken.png"):
        data = load_probe_data(str(tmp_path / "imgs"), loaded)
    assert data.n == 6 and data.labels.tolist().count(1) == 3


@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ("data:\n  class_path: nosuch.Module\n", r"dm.yaml: class_path 'nosuch.Module': cannot import 'nosuch'"),
        ("data:\n  class_path: lightning_geom.demo.DigitsDataModule\n  init_args:\n    nosucharg: 3\n", "init_args do not fit DigitsDataModule"),
        ("data: [1, 2\n", r"dm.yaml:2: not valid YAML"),
        ("data:\n  class_path: lightning_geom.demo.DigitsDataModule\n", r"does not run on .*\(pixels.*Is --data the kind of input"),
    ],
)
def test_datamodule_yaml_and_model_data_mismatch_errors(tmp_path, text_model, yaml_text, match):
    (tmp_path / "dm.yaml").write_text(yaml_text)
    with pytest.raises(SystemExit, match=match):
        main(["probe", str(text_model), "--data", str(tmp_path / "dm.yaml"), "--out", str(tmp_path / "r"), "--pullback-samples", "0"])


def test_layer_pattern_matching_nothing_names_the_blocks(text_model, text_data):
    """A --layers pattern that matches nothing is its own error (not a model / data mismatch), and says
    which patterns would match: the repeated blocks and the top-level submodules."""
    loaded = load_model(text_model)
    data = load_probe_data(str(text_data / "lines.txt"), loaded, max_samples=40)
    with pytest.raises(ValueError) as info:
        probe([loaded], data, layers=["layer.*"], progress=False)
    msg = str(info.value)
    assert "matches no submodule" in msg and "'bert.encoder.layer.*' (" in msg and "does not run" not in msg


@pytest.mark.parametrize(
    ("which", "extra", "match"),
    [
        ("text", ["--data", "digits"], "reads texts, not the inputs of --data digits: pass --text"),
        ("text", ["--text", " "], "--text number 1 is empty"),
        ("text", ["--text", "a cat", "--index", "2"], "--index picks samples of --data"),
        ("demo", ["--text", "a cat"], "reads the digit images, not the inputs of --text: pass --data digits"),
    ],
)
def test_navigate_inputs_of_the_wrong_kind_are_one_line(tmp_path, text_model, demo_ckpt, which, extra, match):
    model = str(text_model if which == "text" else demo_ckpt)
    with pytest.raises(SystemExit) as info:
        main(["navigate", model, *extra, "--steps", "2", "--out", str(tmp_path / "nav")])
    msg = str(info.value.code)
    assert msg.startswith("error: ") and "\n" not in msg and match in msg, msg


def test_python_probe_of_data_in_memory(tmp_path):
    """probe() takes what the monitors take: an (inputs, labels) tuple for a plain PyTorch network (its
    blocks found by capture), a dict of token ids for a Hugging Face model; the labels are read."""
    from helpers import PlainBlocks, TinyGPT, plain_data, token_data

    x, y = plain_data()
    rep = probe(PlainBlocks().eval(), (x, y), progress=False, pullback_samples=1, range_max=8)
    layers = rep.models[0]["layers"]
    assert len(layers) == 3 and all(r.get("label_overlap") is not None for r in layers)
    assert "in memory (192 samples)" in rep.data
    assert rep.models[0]["pullback_note"] is None and len(rep.models[0]["pullback"]) == 3  # tuple batches too
    data = token_data(96)
    rep = probe(TinyGPT().model, {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}, progress=False, pullback_samples=0, range_max=8)
    assert len(rep.models[0]["layers"]) == 4
    rep.write(tmp_path / "rep")
    assert (tmp_path / "rep" / "report.html").is_file()


def test_python_probe_option_and_layer_mistakes_are_named():
    """A misspelt option names the closest one; a network with no blocks to find is the layer choice's
    fault (the whole hint, not cut mid-word or blamed on the data)."""
    net, x = torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.randn(40, 4)
    with pytest.raises(TypeError, match=r"probe got an unexpected keyword argument 'token_propmts' \(did you mean `token_prompts`\?\)"):
        probe(net, x, token_propmts=3, progress=False)
    with pytest.raises(ValueError) as info:
        probe(net, x, k=3, progress=False)
    msg = str(info.value)
    assert msg.endswith("Some that exist: the top-level modules 0.") and "does not run" not in msg and "repeated blocks '" not in msg
    assert probe(net, x, k=3, layers=["0"], progress=False).models[0]["layers"][0]["id"] > 0


def test_a_folder_of_checkpoints_is_its_checkpoints_in_step_order(tmp_path):
    from lightning_geom.commands.probe import expand_checkpoint_folders

    ck = tmp_path / "ck"
    ck.mkdir()
    for name in ("s-step=10.ckpt", "s-step=9.ckpt", "last.ckpt", "s-step=100.ckpt"):
        (ck / name).write_text("")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "x.ckpt").write_text("")
    one = tmp_path / "one"
    one.mkdir()
    (one / "last.ckpt").write_text("")
    got = expand_checkpoint_folders([str(ck), str(hf), str(one), "other.ckpt"])
    assert got == [str(ck / "s-step=9.ckpt"), str(ck / "s-step=10.ckpt"), str(ck / "s-step=100.ckpt"), str(hf), str(one / "last.ckpt"), "other.ckpt"]


def test_a_whole_pickled_module_is_probed_and_bare_weights_are_one_line(tmp_path, demo_checkpoints):
    """`torch.save(model, "model.pt")` is how many users keep a model: probed as the module itself.
    A bare state_dict cannot rebuild a model: one line naming the three formats that can."""
    from lightning_geom.demo import ImageGPT

    lm = ImageGPT.load_from_checkpoint(str(demo_checkpoints[-1]), map_location="cpu")
    torch.save(lm, tmp_path / "model.pt")
    out = tmp_path / "rep"
    assert main(["probe", str(tmp_path / "model.pt"), "--data", "digits", "--max-samples", "200", "--out", str(out), "--pullback-samples", "0", "--no-progress"]) == 0
    got = json.loads((out / "metrics.json").read_text())["models"][0]
    ckpt_out = tmp_path / "rep_ckpt"
    assert main(["probe", str(demo_checkpoints[-1]), "--data", "digits", "--max-samples", "200", "--out", str(ckpt_out), "--pullback-samples", "0", "--no-progress"]) == 0
    want = json.loads((ckpt_out / "metrics.json").read_text())["models"][0]
    assert [la["id"] for la in got["layers"]] == [la["id"] for la in want["layers"]]  # the same model, the same numbers
    torch.save(lm.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(SystemExit, match=r"bare weights \(a state_dict\).*torch.save\(model, path\)") as err:
        main(["probe", str(tmp_path / "weights.pt"), "--data", "digits"])
    assert len(str(err.value).splitlines()) == 1


def test_an_unreadable_checkpoint_in_a_folder_is_skipped_a_named_one_is_an_error(tmp_path, demo_checkpoints, capsys):
    """A run still writing its newest checkpoint: probing the folder reports the others and names the
    skipped file; the same file named on the command line is an error."""
    import shutil

    ck = tmp_path / "ck"
    ck.mkdir()
    shutil.copy(demo_checkpoints[0], ck / "s-step=3.ckpt")
    (ck / "s-step=6.ckpt").write_bytes(demo_checkpoints[-1].read_bytes()[:5000])
    out = tmp_path / "rep"
    main(["probe", str(ck), "--data", "digits", "--out", str(out), "--max-samples", "120", "--pullback-samples", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert "skipped " in err and "s-step=6.ckpt is not a readable checkpoint" in err
    assert [m["name"] for m in json.loads((out / "metrics.json").read_text())["models"]] == ["s-step=3"]
    with pytest.raises(SystemExit, match="s-step=6.ckpt is not a readable checkpoint"):
        main(["probe", str(ck / "s-step=6.ckpt"), "--data", "digits", "--out", str(out)])


def test_probe_of_a_tabular_checkpoint_reads_numbers_and_arrays(tmp_path, capsys):
    """A model without a tokenizer (features in, classes out) is probed from a CSV of numbers (was: "has no
    tokenizer, so it cannot read the text file"; pandas' unnamed row-index column left out) or from array
    files (.npy, .npz, .pt: were refused as binary); all give the same layers as the same data in memory,
    and mistakes are one line."""
    from helpers import FlatBlocks

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(FlatBlocks(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32))
    ckpt = tmp_path / "tab.ckpt"
    trainer.save_checkpoint(ckpt)
    names = ["cat", "dog", "eel"]
    (tmp_path / "t.csv").write_text("f0,f1,f2,f3,f4,f5,label\n" + "\n".join(",".join([*(repr(float(v)) for v in r), names[int(c)]]) for r, c in zip(x, y)))
    (tmp_path / "n.csv").write_text("a,b,c,d,e,f,cls\n" + "\n".join(",".join([*(repr(float(v)) for v in r), str(int(c))]) for r, c in zip(x, y)))
    (tmp_path / "idx.csv").write_text(",f0,f1,f2,f3,f4,f5,label\n" + "\n".join(",".join([str(i), *(repr(float(v)) for v in r), str(int(c))]) for i, (r, c) in enumerate(zip(x, y))))
    np.save(tmp_path / "x.npy", x.numpy())
    np.savez(tmp_path / "xy.npz", features=x.numpy(), labels=y.numpy())
    torch.save((x, y), tmp_path / "xy.pt")
    model = load_model(ckpt, module="helpers.FlatBlocks")
    expected = probe(model.module, (x, y), k=5, pullback_samples=0, progress=False).models[0]["layers"]
    for data, extra in (("t.csv", []), ("n.csv", ["--label-column", "cls"]), ("idx.csv", []), ("xy.npz", []), ("xy.pt", []), ("x.npy", [])):
        out = tmp_path / data.replace(".", "_")
        assert main(["probe", str(ckpt), "--module", "helpers.FlatBlocks", "--data", str(tmp_path / data), "--k", "5", "--pullback-samples", "0", "--out", str(out), *extra]) == 0
        got = json.loads((out / "metrics.json").read_text())["models"][0]["layers"]
        assert [r["id"] for r in got] == pytest.approx([r["id"] for r in expected], rel=1e-6)
        overlap = [r["label_overlap"] for r in got]
        if data == "x.npy":
            assert overlap[0] is None
        else:
            assert overlap == pytest.approx([r["label_overlap"] for r in expected], rel=1e-9), data
    (tmp_path / "bad.csv").write_text("f0,f1,f2,f3,f4,f5,label\n" + "1,2,3,4,5,x,0\n" * 3)
    np.savez(tmp_path / "two.npz", a=x.numpy(), b=x.numpy())
    (tmp_path / "junk.pt").write_bytes(b"not a tensor file")
    (tmp_path / "nan.csv").write_text("f0,f1,f2,f3,f4,f5,label\n" + "1,2,3,4,5,6,0\n" + "1,2,nan,4,5,6,1\n")
    x_nan = x.clone()
    x_nan[7, 3] = float("inf")
    np.save(tmp_path / "nan.npy", x_nan.numpy())
    for data, match in (("bad.csv", r"bad.csv:2: column 'f5' holds 'x', not a number"), ("two.npz", "cannot tell the inputs among the arrays a, b"),
                        ("nan.csv", r"nan.csv:3: 1 of 2 rows hold NaN or infinite"), ("nan.npy", r"1 samples \(the first: number 7\) hold NaN or infinite"),
                        ("junk.pt", "not a readable array file"), ("tab.ckpt", "is a model file, not data")):
        with pytest.raises(SystemExit, match=match):
            main(["probe", str(ckpt), "--module", "helpers.FlatBlocks", "--data", str(tmp_path / data), "--out", str(tmp_path / "bad")])


def test_module_path_imports_from_the_working_directory(tmp_path, monkeypatch):
    """`lightning-geom probe x.ckpt --module mymod.MyModule` run from the folder holding mymod.py: a console
    script does not put that folder on sys.path (``python -m`` does), so the import failed."""
    import sys as _sys

    from lightning_geom.loading import import_class

    (tmp_path / "lg_user_module_xyz.py").write_text("from helpers import FlatBlocks\n\nclass Mine(FlatBlocks):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_sys, "path", [p for p in _sys.path if p not in ("", str(tmp_path))])
    cls = import_class("lg_user_module_xyz.Mine", "--module lg_user_module_xyz.Mine")
    assert cls.__name__ == "Mine"
    with pytest.raises(ValueError, match="cannot import 'lg_no_such_module'"):
        import_class("lg_no_such_module.Mine", "--module")
    _sys.modules.pop("lg_user_module_xyz", None)


def test_tokenized_arrays_go_to_a_text_model_by_name(tmp_path, text_model, text_data):
    """An .npz / .pt of the tokenizer's own output (``input_ids``, ``attention_mask``, ``label``) is the
    same probe as the texts it came from: the arrays a model takes by name are passed by name."""
    from transformers import AutoTokenizer

    rows = [json.loads(line) for line in (text_data / "data.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(text_model)
    enc = tok([r["text"] for r in rows], padding=True, return_tensors="np")
    labels = np.array([int(r["label"] == "colour") for r in rows])  # the texts' classes in sorted-name order
    np.savez(tmp_path / "tok.npz", input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], label=labels)
    torch.save({"input_ids": torch.from_numpy(enc["input_ids"]), "attention_mask": torch.from_numpy(enc["attention_mask"]), "y": torch.from_numpy(labels)}, tmp_path / "tok.pt")
    common = ["--k", "5", "--pullback-samples", "0"]
    assert main(["probe", str(text_model), "--data", str(text_data / "data.jsonl"), *common, "--out", str(tmp_path / "texts")]) == 0
    want = json.loads((tmp_path / "texts" / "metrics.json").read_text())["models"][0]["layers"]
    for name in ("tok.npz", "tok.pt"):
        assert main(["probe", str(text_model), "--data", str(tmp_path / name), *common, "--out", str(tmp_path / name.replace(".", "_"))]) == 0
        got = json.loads((tmp_path / name.replace(".", "_") / "metrics.json").read_text())["models"][0]["layers"]
        assert [r["id"] for r in got] == pytest.approx([r["id"] for r in want], rel=1e-9)
        assert [r["label_overlap"] for r in got] == pytest.approx([r["label_overlap"] for r in want], rel=1e-9)


def test_navigate_a_tabular_checkpoint_from_a_data_file(tmp_path):
    """`navigate --data file --index ...` walks rows of a CSV / array file through a model of float inputs
    (navigate knew only --text, --image and the digits); SiMEC keeps each row's class; bad rows / files
    are one line."""
    from helpers import FlatBlocks

    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(FlatBlocks(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=25))
    ckpt = tmp_path / "tab.ckpt"
    trainer.save_checkpoint(ckpt)
    (tmp_path / "t.csv").write_text("a,b,c,d,e,f,label\n" + "\n".join(",".join([*(repr(float(v)) for v in r), str(int(c))]) for r, c in zip(x, y)))
    np.savez(tmp_path / "t.npz", x=x.numpy(), y=y.numpy())
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({**{f"f{i}": x[:, i].tolist() for i in range(6)}, "target": y.tolist()}), tmp_path / "t.parquet")
    model = load_model(ckpt, module="helpers.FlatBlocks").module.eval()
    with torch.no_grad():
        want = model(x[[3, 7]]).argmax(-1).tolist()
    for data in ("t.csv", "t.npz", "t.parquet"):  # the parquet's `target` is the label column, left out of the inputs
        out = tmp_path / data.replace(".", "_")
        args = ["navigate", str(ckpt), "--module", "helpers.FlatBlocks", "--data", str(tmp_path / data), "--index", "3", "7", "--steps", "4", "--out", str(out), "--no-progress"]
        assert main(args) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert [s["start_pred"] for s in summary] == want and all(s["end_pred"] == s["start_pred"] and s["distance"] > 0 for s in summary)
    with pytest.raises(SystemExit, match=r"--index 50: .*t.npz has 50 samples"):
        main(["navigate", str(ckpt), "--module", "helpers.FlatBlocks", "--data", str(tmp_path / "t.npz"), "--index", "50", "--out", str(tmp_path / "n")])
    with pytest.raises(SystemExit):
        main(["navigate", str(ckpt), "--module", "helpers.FlatBlocks", "--data", str(tmp_path / "t.txt"), "--out", str(tmp_path / "n")])


def test_an_encoder_only_head_of_an_encoder_decoder_config_gets_its_pullback():
    """WhisperForAudioClassification's config says encoder-decoder, but the model is the encoder and a
    head: it was refused the pullback ("its logits need decoder inputs"). Models that hold a decoder
    (T5, BART) still are. Its layers are the encoder's hidden states, as before."""
    from transformers import WhisperConfig, WhisperForAudioClassification

    torch.manual_seed(0)
    cfg = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=50, num_labels=3)
    model = WhisperForAudioClassification(cfg).eval()
    x, y = torch.randn(40, 16, 100), torch.arange(40) % 3
    m = probe(model, {"input_features": x, "labels": y}, k=5, range_max=8, pullback_samples=2, progress=False).models[0]
    assert m.get("pullback_note") is None and len(m["pullback"]) == 3 and all(p["trace"] > 0 for p in m["pullback"])
    with torch.no_grad():
        states = model.encoder(x[:8], output_hidden_states=True).hidden_states
    got = capture_representations(model, [{"input_features": x[:8]}]).features
    assert all(torch.allclose(a, h.mean(1), atol=1e-6) for a, h in zip(got, states))


def test_parquet_tables_are_read_like_their_jsonl_and_csv(tmp_path, text_model, text_data, monkeypatch):
    """A Parquet table (what Hugging Face datasets and pandas save) of texts and labels gives the report of
    the same records as JSON lines, and one of numbers (a pandas index column left out) that of the
    same CSV for a model without a tokenizer; without pyarrow, one line says what to install."""
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers import FlatBlocks

    rows = [json.loads(line) for line in (text_data / "data.jsonl").read_text().splitlines()]
    pq.write_table(pa.table({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}), tmp_path / "texts.parquet")
    opts = dict(range_max=8, pullback_samples=0, progress=False)
    loaded = load_model(text_model)
    want = probe([loaded], load_probe_data(str(text_data / "data.jsonl"), loaded), **opts).models[0]["layers"]
    got = probe([loaded], load_probe_data(str(tmp_path / "texts.parquet"), loaded), **opts).models[0]["layers"]
    assert [r["label_overlap"] for r in got] == [r["label_overlap"] for r in want]
    assert [r["id"] for r in got] == pytest.approx([r["id"] for r in want], rel=1e-9)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 6, generator=g)
    y = (x[:, 0] > 0).long()
    cols = {f"f{i}": x[:, i].tolist() for i in range(6)}
    pq.write_table(pa.table({"__index_level_0__": list(range(60)), **cols, "label": y.tolist()}), tmp_path / "num.parquet")
    (tmp_path / "num.csv").write_text("f0,f1,f2,f3,f4,f5,label\n" + "\n".join(",".join([*(repr(float(v)) for v in r), str(int(c))]) for r, c in zip(x, y)))
    tab = LoadedModel(module=FlatBlocks(), kind="module", source="FlatBlocks")
    with pytest.warns(UserWarning, match="row index"):
        from_parquet = probe([tab], load_probe_data(str(tmp_path / "num.parquet"), tab), k=5, **opts).models[0]["layers"]
    from_csv = probe([tab], load_probe_data(str(tmp_path / "num.csv"), tab), k=5, **opts).models[0]["layers"]
    assert [r["id"] for r in from_parquet] == [r["id"] for r in from_csv]
    assert [r["label_overlap"] for r in from_parquet] == [r["label_overlap"] for r in from_csv]

    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="broken.parquet: not a readable Parquet table"):
        load_probe_data(str(tmp_path / "broken.parquet"), loaded)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(ValueError, match=r"texts.parquet is a Parquet table: reading it needs pyarrow \(pip install pyarrow\)"):
        load_probe_data(str(tmp_path / "texts.parquet"), loaded)


def test_arrow_tables_and_saved_datasets_of_texts_or_tokens(tmp_path, text_model, text_data):
    """Hugging Face datasets' `save_to_disk` folders (Arrow IPC stream shards beside state.json) and .arrow
    files are read as tables: texts with labels give the report of the same records as JSON lines, and
    records tokenized already (input_ids / attention_mask lists, no text) the same report again; a folder
    of several splits names them."""
    import pyarrow as pa

    rows = [json.loads(line) for line in (text_data / "data.jsonl").read_text().splitlines()]
    tok = load_model(text_model).tokenizer
    enc = tok([r["text"] for r in rows], truncation=True, max_length=128)

    def save(folder, columns):
        folder.mkdir(parents=True)
        table = pa.table(columns)
        with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))

    labels = [r["label"] for r in rows]
    save(tmp_path / "texts", {"text": [r["text"] for r in rows], "label": labels})
    save(tmp_path / "tokens", {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "label": labels})
    save(tmp_path / "splits" / "train", {"text": ["a"], "label": ["x"]})
    save(tmp_path / "splits" / "test", {"text": ["a"], "label": ["x"]})
    (tmp_path / "splits" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    opts = dict(range_max=8, pullback_samples=0, progress=False)
    loaded = load_model(text_model)
    want = probe([loaded], load_probe_data(str(text_data / "data.jsonl"), loaded), **opts).models[0]["layers"]
    for spec in ("texts", "tokens", "tokens/data-00000-of-00001.arrow"):
        data = load_probe_data(str(tmp_path / spec), loaded)
        assert data.n == 120 and data.label_names == ["animal", "colour"], spec
        got = probe([loaded], data, **opts).models[0]["layers"]
        assert [r["label_overlap"] for r in got] == [r["label_overlap"] for r in want], spec
        assert [r["id"] for r in got] == pytest.approx([r["id"] for r in want], rel=1e-6), spec
    with pytest.raises(ValueError, match=r"holds several splits \(test, train\): pass one of them, e.g. .*splits/test"):
        load_probe_data(str(tmp_path / "splits"), loaded)


def test_a_table_s_label_column_named_otherwise_is_read_as_the_labels(tmp_path, text_model, text_data):
    """By default the labels are the `label` column, else `labels`, `target`, `y`, `class`, ... (any case):
    a tabular CSV with sklearn's `target` column had it read as a feature (the answer leaked into the
    geometry, and the model got one input too many), and a text table's `target` was silently unused."""
    from helpers import FlatBlocks

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 6, generator=g)
    y = (x[:, 0] > 0).long()
    body = "\n".join(",".join([*(repr(float(v)) for v in r), str(int(c))]) for r, c in zip(x, y))
    tab = LoadedModel(module=FlatBlocks(), kind="module", source="FlatBlocks")
    opts = dict(k=5, range_max=8, pullback_samples=0, progress=False)
    want = probe(tab.module, (x, y), **opts).models[0]["layers"]
    for name in ("target", "Target", "y", "class"):
        (tmp_path / f"{name}.csv").write_text(",".join([*(f"f{i}" for i in range(6)), name]) + "\n" + body)
        data = load_probe_data(str(tmp_path / f"{name}.csv"), tab)
        assert data.labels is not None and data.batches[0][0].shape[1] == 6, name
        got = probe([tab], data, **opts).models[0]["layers"]
        assert [r["label_overlap"] for r in got] == pytest.approx([r["label_overlap"] for r in want], rel=1e-9), name
    rows = [json.loads(line) for line in (text_data / "data.jsonl").read_text().splitlines()]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": r["text"], "target": r["label"]}) for r in rows))
    loaded = load_model(text_model)
    assert load_probe_data(str(tmp_path / "t.jsonl"), loaded).label_names == ["animal", "colour"]
    with pytest.raises(ValueError, match=r"has no column 'kind' \(columns: text, target\); pass --label-column"):
        load_probe_data(str(tmp_path / "t.jsonl"), loaded, label_column="kind")


def test_a_module_that_loads_its_network_from_the_hub_is_built_from_a_local_folder(tmp_path, monkeypatch, capsys):
    """A checkpoint of a module whose __init__ calls from_pretrained(<hub name>) failed offline with
    transformers' OSError: it is one line naming the hyperparameter and the fix, and
    `--init-arg name=DIR` (``init_args``) builds it from a local folder, the checkpoint's weights then
    loaded over it (equal to the trained ones)."""
    import transformers
    from helpers import HubClassifier
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "local")  # the architecture (other weights)
    with monkeypatch.context() as m:  # "online": the hub name resolves
        torch.manual_seed(1)
        trained = BertForSequenceClassification(cfg)
        m.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", lambda *a, **k: trained)
        module = HubClassifier()
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "hub.ckpt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"HubClassifier.__init__ loads a model from the Hugging Face Hub.*pass --init-arg name=DIR"):
        load_model(tmp_path / "hub.ckpt", module="helpers.HubClassifier")
    loaded = load_model(tmp_path / "hub.ckpt", module="helpers.HubClassifier", init_args={"name": str(tmp_path / "local")})
    for a, b in zip(loaded.module.model.parameters(), trained.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(SystemExit):
        main(["probe", str(tmp_path / "hub.ckpt"), "--init-arg", "name", "--data", "digits"])
    assert "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--init-arg sets a Lightning checkpoint's hyperparameters"):
        main(["probe", str(tmp_path / "local"), "--init-arg", "name=x", "--data", "digits", "--out", str(tmp_path / "r")])


def test_pandas_tables_are_probe_data(tmp_path):
    """A DataFrame (features and a `target` column), an (X DataFrame, y Series) pair, (X, y) with y a list or
    array of class names or ints (scikit-learn style), and a DataFrame of texts (with a tokenizer) are probe data for `probe()` and the monitors, equal to the same numbers
    as tensors; they were iterated as column names (one opaque error). A column of texts among the
    features is one line with the fix."""
    import pandas as pd
    from helpers import FlatBlocks

    from lightning_geom import GeometryMonitor
    from lightning_geom.monitoring.probe import probe_batches

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 6, generator=g)
    y = (x[:, 0] > 0).long()
    df = pd.DataFrame(x.double().numpy(), columns=[f"f{i}" for i in range(6)])
    df["target"] = ["pos" if v else "neg" for v in y.tolist()]
    model = FlatBlocks()
    opts = dict(k=5, range_max=8, pullback_samples=0, progress=False)
    want = probe(model, (x, y), **opts).models[0]["layers"]
    names = np.array(df["target"].tolist())  # scikit-learn style: y as an array / list of class names or ints
    for form in (df, (df.drop(columns="target"), df["target"]), (df.drop(columns="target"), y.numpy()),
                 (x.numpy(), names), (x, names.tolist()), (x.numpy(), y.tolist())):
        got = probe(model, form, **opts).models[0]["layers"]
        assert [r["label_overlap"] for r in got] == [r["label_overlap"] for r in want]
        assert [r["id"] for r in got] == pytest.approx([r["id"] for r in want], rel=1e-6)
    batches = probe_batches(df, num_samples=60, batch_size=32)  # the monitors' reading
    assert torch.equal(torch.cat([b[1] for b in batches]), y) and batches[0][0].shape == (32, 6)
    bad = df.assign(city="Rome")
    with pytest.raises(TypeError, match=r"column\(s\) city hold other values .*pd.get_dummies"):
        GeometryMonitor(probe=bad)


def test_token_analyses_of_a_plain_network_of_token_ids():
    """A plain PyTorch LM fed (B, T) integer ids (no dict, no input_ids key) had no token analyses
    ("needs token inputs (input_ids)"): per-prompt (with the shuffled control) and pooled clouds run
    on its ids, the per-prompt IDs equal those of its captured token states."""
    from helpers import NanoLM

    from lightning_geom.analysis import token_geometry

    torch.manual_seed(0)
    model = NanoLM().eval()
    ids = torch.randint(0, 30, (24, 12))
    labels = torch.arange(24) % 2
    rep = probe(model, (ids, labels), tokens="both", shuffle_control=True, token_prompts=24, token_k=4,
                k=5, range_max=8, pullback_samples=0, progress=False).models[0]
    want, _ = token_geometry(capture_representations(model, [ids], pooling="tokens").features, torch.full((24,), 12), k=4)
    assert [r["token_id"] for r in rep["tokens"]["layers"]] == pytest.approx([r["token_id"] for r in want], rel=1e-6)
    assert all(r["token_id_shuffled"] > 0 for r in rep["tokens"]["layers"]) and rep["token_cloud"]["layers"]


def test_rows_of_sentence_pairs_are_tokenized_as_pairs(text_model, text_data):
    """Rows with two text fields and a label (NLI's premise / hypothesis) were refused ("tokenize them
    first"); with a tokenizer they are tokenized as tokenizer(first, second), as the model was trained."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import lightning_geom
    from lightning_geom.probing.data import text_probe_data, text_rows

    texts = [json.loads(line)["text"] for line in (text_data / "data.jsonl").read_text().splitlines()]
    rows = [{"premise": a, "hypothesis": b, "label": i % 2} for i, (a, b) in enumerate(zip(texts, texts[1:] + texts[:1]))]
    tok = AutoTokenizer.from_pretrained(text_model)
    got, labels = text_rows(rows)
    assert got[0] == (rows[0]["premise"], rows[0]["hypothesis"]) and labels[:2] == [0, 1]
    data = text_probe_data(got, labels, tok, batch_size=200)
    want = tok([r["premise"] for r in rows], [r["hypothesis"] for r in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
    assert torch.equal(data.batches[0]["input_ids"], want["input_ids"])
    model = AutoModelForSequenceClassification.from_pretrained(text_model)
    rep = lightning_geom.probe(model, rows, tokenizer=tok, range_max=8, pullback_samples=0, progress=False).models[0]
    assert rep["n_samples"] == 120 and rep["layers"][-1]["label_overlap"] is not None
    pairs = [(r["premise"], r["hypothesis"]) for r in rows]
    as_pair = lightning_geom.probe(model, (pairs, [r["label"] for r in rows]), tokenizer=tok, range_max=8, pullback_samples=0, progress=False).models[0]
    assert [r["id"] for r in as_pair["layers"]] == pytest.approx([r["id"] for r in rep["layers"]], rel=1e-9)
    with pytest.raises(ValueError, match=r"text number 1 is empty \(in its pair\)"):
        text_probe_data([("a b", "c"), ("a", " ")], None, tok)


def test_a_csv_of_text_pairs_with_two_text_columns(tmp_path, text_model, text_data):
    """`--text-column premise,hypothesis` reads two columns as text pairs (tokenizer(first, second)); the
    report equals the same rows given in memory."""
    import lightning_geom

    texts = [json.loads(line)["text"] for line in (text_data / "data.jsonl").read_text().splitlines()]
    rows = [{"premise": a, "hypothesis": b, "label": i % 2} for i, (a, b) in enumerate(zip(texts, texts[1:] + texts[:1]))]
    (tmp_path / "nli.csv").write_text("premise,hypothesis,label\n" + "\n".join(f"{r['premise']},{r['hypothesis']},{r['label']}" for r in rows))
    loaded = load_model(text_model)
    opts = dict(range_max=8, pullback_samples=0, progress=False)
    from_file = probe([loaded], load_probe_data(str(tmp_path / "nli.csv"), loaded, text_column="premise,hypothesis"), **opts).models[0]["layers"]
    in_memory = lightning_geom.probe(loaded.module, rows, tokenizer=loaded.tokenizer, **opts).models[0]["layers"]
    assert [r["id"] for r in from_file] == pytest.approx([r["id"] for r in in_memory], rel=1e-9)
    with pytest.raises(ValueError, match=r"has no column 'claim'"):
        load_probe_data(str(tmp_path / "nli.csv"), loaded, text_column="premise,claim")


def test_navigate_a_plain_token_checkpoint_from_text(tmp_path, text_model):
    """`navigate --text` on a checkpoint of a plain token network (forward(idx), no HF config) with
    --tokenizer: the texts go in as bare ids, the walk is decoded to tokens and its classes named."""
    from helpers import NanoModule

    tok = load_model(text_model).tokenizer
    torch.manual_seed(0)
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(NanoModule(vocab=len(tok)))
    trainer.save_checkpoint(tmp_path / "nano.ckpt")
    text = "red green cat"
    out = tmp_path / "nav"
    assert main(["navigate", str(tmp_path / "nano.ckpt"), "--module", "helpers.NanoModule", "--tokenizer", str(text_model),
                 "--text", text, "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    rows = (out / "tokens.csv").read_text().splitlines()
    assert rows[0].startswith("sample,step,pred,pred_name") and " ".join(tok.tokenize(text)) in rows[1]
