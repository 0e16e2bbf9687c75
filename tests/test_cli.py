import subprocess
import sys

import pytest

from lightning_geom import __version__
from lightning_geom.cli import main


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "digits" in capsys.readouterr().out


def test_digits_table(capsys):
    assert main(["digits", "--range-max", "8"]) == 0
    out = capsys.readouterr().out
    assert "N = 1797 images" in out and "TwoNN ID" in out and "label overlap" in out


def test_geometry_import_is_light():
    code = (
        "import sys, lightning_geom, lightning_geom.geometry;"
        "heavy=[m for m in ('lightning','pytorch_lightning','transformers','wandb','matplotlib','torchmetrics') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_top_level_names_resolve_lazily():
    """`from lightning_geom import GeometryMonitor` works, and only the name asked for pulls its framework in."""
    code = (
        "import sys, lightning_geom as g;"
        "assert 'lightning' not in sys.modules and set(g.__all__) <= set(dir(g));"
        "from lightning_geom import knn, twonn, GeometryMonitor, GeometryCallback, EquivalenceClassExplorer, probe;"
        "from lightning_geom.callbacks import GeometryMonitor as M; assert M is GeometryMonitor;"
        "[getattr(g, n) for n in g.__all__]"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import lightning_geom

        lightning_geom.Nope  # noqa: B018


def test_monitor_core_imports_no_training_framework():
    """Issue 12: the monitor core is framework-free; Lightning and the HF Trainer are only in the shells."""
    code = (
        "import sys; sys.modules['lightning'] = None; sys.modules['pytorch_lightning'] = None;"  # hidden: importing fails
        "import lightning_geom.monitoring as m;"
        "heavy=[x for x in ('lightning','pytorch_lightning','transformers.trainer','wandb') if sys.modules.get(x) is not None];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_demo_resume_keeps_every_earlier_record(tmp_path):
    """Issue 13: resuming the demo into the same folder wiped metrics.csv; --steps 20 crashed in OneCycleLR."""
    import csv
    import json

    from lightning_geom.cli import main

    out = tmp_path / "demo"
    common = ["demo", "--layers", "2", "--width", "16", "--every-n-steps", "10", "--probe-samples", "128",
              "--no-report", "--no-pullback", "--no-progress", "--out", str(out)]
    assert main([*common, "--steps", "20"]) == 0
    first = (out / "csv" / "version_0" / "metrics.csv").read_text()
    hist = json.loads((out / "geometry" / "geometry_history.json").read_text())
    assert [r["step"] for r in hist] == [0, 4, 8, 10, 20]  # the demo's doubling starts at 4
    assert main([*common, "--steps", "20", "--resume"]) == 0  # nothing left to train: nothing lost either
    assert (out / "csv" / "version_0" / "metrics.csv").read_text() == first
    assert json.loads((out / "geometry" / "geometry_history.json").read_text()) == hist
    rows = list(csv.DictReader((out / "csv" / "version_0" / "metrics.csv").open()))
    assert {r["step"] for r in rows if r.get("geometry/id/layer_00")} >= {"0", "10", "20"}


def test_demo_resume_without_a_checkpoint_is_one_line(tmp_path):
    from lightning_geom.cli import main

    with pytest.raises(SystemExit, match="error: --resume: no checkpoint at"):
        main(["demo", "--steps", "4", "--out", str(tmp_path / "x"), "--resume", "--no-report", "--no-pullback"])


def test_demo_bad_sizes_and_out_are_one_line(tmp_path):
    from lightning_geom.cli import main

    with pytest.raises(SystemExit, match=r"error: --width 7: the residual width must be a multiple of the 4 attention heads"):
        main(["demo", "--width", "7", "--out", str(tmp_path / "x")])
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit, match=r"error: --out .*f is a file; pass a folder"):
        main(["demo", "--out", str(tmp_path / "f")])


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["demo", "--steps", "0"], "expected a positive integer"),
        (["probe", "m", "--data", "digits", "--max-samples", "-5"], "expected a positive integer"),
        (["probe", "m", "--data", "digits", "--batch-size", "0"], "expected a positive integer"),
        (["probe", "m", "--data", "digits", "--range-max", "1"], "--range-max: expected an integer >= 2"),
        (["probe", "m", "--data", "digits", "--max-tokens", "2"], "--max-tokens: expected an integer >= 3"),
    ],
)
def test_bad_counts_are_usage_errors(argv, match, capsys):
    from lightning_geom.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "match", "code"),
    [
        (["--index", "5000"], "the digits set has 1797 images", None),
        (["--step-size", "nan"], "finite number > 0", 2),
        (["--tokens", "99"], "Token position 99 is outside the 64 positions", None),
        (["--tokens", "a,b"], "comma-separated positions", 2),
    ],
)
def test_navigate_bad_inputs(tmp_path, extra, match, code, capsys):
    from lightning_geom.cli import main

    ck = tmp_path / "d"
    main(["demo", "--steps", "2", "--layers", "2", "--width", "16", "--probe-samples", "64", "--no-report", "--no-pullback",
          "--no-progress", "--out", str(ck)])
    with pytest.raises(SystemExit) as info:
        main(["navigate", str(ck / "checkpoints" / "last.ckpt"), "--data", "digits", "--steps", "2", "--out", str(tmp_path / "n"), *extra])
    text = str(info.value.code) + capsys.readouterr().err
    assert match in text
    if code is not None:
        assert info.value.code == code


def test_every_written_table_has_no_all_empty_column(tmp_path):
    """Issue 14: pullback_history.csv had only step / epoch / layer filled; no written table may hold an empty column."""
    import csv
    import json

    from lightning_geom.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--steps", "8", "--layers", "2", "--width", "16", "--every-n-steps", "4", "--probe-samples", "128",
                 "--no-progress", "--out", str(out)]) == 0
    tables = list((out / "geometry").glob("*.csv")) + list((out / "report").glob("*.csv"))
    assert {p.name for p in tables} >= {"geometry_history.csv", "pullback_history.csv", "layers.csv"}
    for path in tables:
        rows = list(csv.DictReader(path.open()))
        assert rows, path
        empty = [c for c in rows[0] if all(r[c] in ("", None) for r in rows)]
        assert not empty, (path.name, empty)
    for path in (out / "geometry").glob("*.json"):
        assert json.loads(path.read_text())  # parses, non-empty
    pb = list(csv.DictReader((out / "geometry" / "pullback_history.csv").open()))
    assert {"top", "trace", "effective_rank"} <= set(pb[0])
