"""Configuration: defaults, the two profiles, typed overrides, clear errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ils.config import CONFIG_DIR, DEFAULT_CONFIG, Config, ConfigError, load_config, to_dict, to_yaml

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_load_from_the_embedded_local_profile():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert DEFAULT_CONFIG == CONFIG_DIR / "local.yaml"
    local = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert cfg.store.uri == local["store"]["uri"]
    assert cfg.ray.address is None and cfg.ray.num_cpus == local["ray"]["num_cpus"]
    assert cfg.model.size == "tiny" and cfg.train.use_gpu is False
    assert cfg.serve.host == "127.0.0.1"
    assert load_config(None) == load_config(DEFAULT_CONFIG)


def test_cluster_profile_loads():
    cfg = load_config(CONFIG_DIR / "cluster.yaml")
    assert cfg.store.uri.startswith("s3://")
    assert cfg.ray.address == "auto"
    assert cfg.model.size == "7b" and cfg.train.use_gpu is True
    assert cfg.gen.report.backend == "llm" and cfg.gen.detect.backend == "yolo"
    assert isinstance(cfg.gen.anatomy.num_gpus, float) and cfg.gen.anatomy.resources == {"gpu_node": 0.001}


def test_overrides_apply_with_types():
    cfg = load_config(None, [
        "store.uri=s3://bucket/run1", "train.lr=1e-3", "train.max_steps=7", "train.use_gpu=true",
        "gen.anatomy.num_cpus=2", "ray.num_cpus=null", "store.endpoint=http://127.0.0.1:9000",
    ])
    assert cfg.store.uri == "s3://bucket/run1" and cfg.store.endpoint == "http://127.0.0.1:9000"
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 7 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.use_gpu is True
    assert cfg.gen.anatomy.num_cpus == 2.0 and isinstance(cfg.gen.anatomy.num_cpus, float)
    assert cfg.ray.num_cpus is None
    assert load_config(None, ["train.max_steps=1", "train.max_steps=2"]).train.max_steps == 2  # last wins


@pytest.mark.parametrize("override, key", [
    ("train.nosuch=1", "train.nosuch"),
    ("nosection.a=1", "nosection"),
    ("train.max_steps=abc", "train.max_steps"),
    ("train.use_gpu=maybe", "train.use_gpu"),
    ("gen.anatomy.num_cpus=x", "gen.anatomy.num_cpus"),
    ("store=3", "store"),
])
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(None, [override])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])


@pytest.mark.parametrize("text, match", [
    ("store:\n  urii: x\n", "key 'store.urii'"),
    ("sample:\n  n: many\n", "key 'sample.n'"),
    ("nosection:\n  a: 1\n", "key 'nosection'"),
    ("store: [unclosed\n", "not valid YAML.*line"),
    ("store:\n\turi: x\n", "not valid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
])
def test_bad_files(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path)
    assert "\n" not in str(err.value)  # the CLI prints it as one line


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)  # a folder is not a config file


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    cfg = load_config(path)
    assert cfg == Config()


def test_yaml_round_trip():
    cfg = load_config(CONFIG_DIR / "cluster.yaml", ["train.lr=0.01"])
    text = to_yaml(cfg)
    assert yaml.safe_load(text) == to_dict(cfg)
    path_cfg = load_config(None, [])
    assert to_dict(path_cfg)["store"]["uri"] == path_cfg.store.uri


def test_ils_config_command(tmp_path, capsys):
    from ils.cli import main

    assert main(["config", "train.max_steps=11", "store.uri=s3://b/r"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["max_steps"] == 11 and printed["store"]["uri"] == "s3://b/r"
    assert main(["config", "--config", str(CONFIG_DIR / "cluster.yaml")]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["size"] == "7b"
    assert main(["config", "train.nosuch=1"]) == 2
    err = capsys.readouterr().err
    assert "train.nosuch" in err and err.strip().count("\n") == 0
    # Through the real console entry point once.
    proc = subprocess.run([sys.executable, "-m", "ils.cli", "config", "--config", str(tmp_path / "x.yaml")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "not found" in proc.stderr
