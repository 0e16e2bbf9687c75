from pathlib import Path

from lightning_geom.cli import main

CONFIG = Path(__file__).parents[1] / "configs" / "demo_igpt_digits.yaml"


def test_lightning_cli_config_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config writes under ./demo_output/cli
    args = [
        "fit", "--config", str(CONFIG), "--trainer.max_steps=3", "--trainer.val_check_interval=3",
        "--model.n_layer=2", "--model.width=16", "--trainer.enable_progress_bar=false",
    ]
    assert main(args) == 0
    geo = tmp_path / "demo_output" / "cli" / "tensorboard" / "version_0" / "geometry"
    assert (geo / "geometry_history.json").exists() and (geo / "id_profile.png").exists()
