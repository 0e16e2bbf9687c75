import subprocess
import sys

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
