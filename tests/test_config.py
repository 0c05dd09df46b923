"""Config loading: every mistake is one clear message naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcvae import config
from bcvae.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(path, overrides)
    return str(info.value)


def test_defaults_and_name_from_file(tmp_path):
    cfg = config.load(write(tmp_path, "", "my_exp.yaml"))
    assert cfg.name == "my_exp"
    assert cfg.loss.objective == "capacity" and cfg.loss.gamma == 1000.0 and cfg.train.batch_size == 64


def test_overrides_apply_with_command_line_floats(tmp_path):
    cfg = config.load(write(tmp_path, "train:\n  lr: 5.0e-4\n"),
                      ["train.lr=1e-4", "seed=2", "data.fold=3", "train.max_steps=7", "eval.metrics=mig,dci"])
    assert cfg.train.lr == 1e-4 and cfg.seed == 2 and cfg.data.fold == 3 and cfg.train.max_steps == 7
    assert cfg.eval.metrics == ["mig", "dci"]


def test_budget_and_fold_keys_exist():
    cfg = config.Config()
    for key in ("train.epochs", "train.steps_per_epoch", "train.max_steps", "data.fold"):
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name)


def test_unknown_key_suggests(tmp_path):
    msg = error_of(write(tmp_path, "train:\n  lrr: 1.0e-3\n"))
    assert "exp.yaml" in msg and "train.lrr" in msg and "did you mean 'train.lr'" in msg
    msg = error_of(write(tmp_path, "trian:\n  lr: 1.0e-3\n"))
    assert "'trian'" in msg and "'train'" in msg


def test_yaml_string_float_is_rejected_with_the_fix(tmp_path):
    msg = error_of(write(tmp_path, "train:\n  lr: 5e-4\n"))
    assert "train.lr" in msg and "'5e-4'" in msg and "5.0e-4" in msg


@pytest.mark.parametrize("text,key", [
    ("train:\n  batch_size: 6.5\n", "train.batch_size"),
    ("train:\n  batch_size: true\n", "train.batch_size"),
    ("model:\n  arch: 3\n", "model.arch"),
    ("train:\n  channels_last: 1\n", "train.channels_last"),
    ("train: 3\n", "train"),
])
def test_wrong_types(tmp_path, text, key):
    assert key in error_of(write(tmp_path, text))


@pytest.mark.parametrize("override,key", [
    ("train.lr=0", "train.lr"), ("train.lr=-1e-3", "train.lr"), ("data.fold=10", "data.fold"),
    ("data.fold=-1", "data.fold"), ("loss.objective=vae", "loss.objective"), ("data.k=1", "data.k"),
    ("loss.likelihood=poisson", "loss.likelihood"), ("eval.metrics=mig,irs", "eval.metrics"),
    ("train.batch_size=0", "train.batch_size"), ("loss.gamma=-1", "loss.gamma"),
    ("loss.latent_kl_max=2", "loss.latent_kl_max"),   # ten latents of 2 nats cannot hold C_max = 25
    ("train.adam_eps=0", "train.adam_eps"), ("train.grad_clip=-1", "train.grad_clip"),
    ("train.grad_clip=.inf", "train.grad_clip"), ("train.optimizer=rmsprop", "train.optimizer"),
    ("train.sgd_momentum=1", "train.sgd_momentum"), ("train.sgd_momentum=-0.1", "train.sgd_momentum"),
])
def test_out_of_range(tmp_path, override, key):
    msg = error_of(write(tmp_path, ""), [override])
    assert key in msg and "exp.yaml" in msg


def test_missing_file_lists_experiments(tmp_path):
    write(tmp_path, "", "capacity25.yaml")
    msg = error_of(tmp_path / "capacity52.yaml")
    assert "capacity52.yaml" in msg and "not found" in msg and "capacity25" in msg


def test_malformed_override(tmp_path):
    assert "key=value" in error_of(write(tmp_path, ""), ["train.lr"])


def test_round_trip_through_dict(tmp_path):
    cfg = config.load(ROOT / "experiments" / "capacity25.yaml", ["seed=3"])
    config.save(cfg, tmp_path / "c.yaml")
    import yaml

    again = config.from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert again == cfg


def test_resume_conflicts_ignore_budget_and_logging():
    a = config.Config(name="x")
    b = config.Config(name="x")
    b.train.epochs, b.train.max_steps, b.log.every_train = 99, 5, 7
    assert config.resume_conflicts(config.to_dict(a), b) == []
    b.train.lr = 1e-3
    assert config.resume_conflicts(config.to_dict(a), b) == ["train.lr: 0.0005 -> 0.001"]


def test_every_experiment_file_loads_and_has_a_header():
    files = sorted((ROOT / "experiments").glob("*.yaml"))
    assert {"capacity25", "bcvae2d_original", "beta1", "beta4", "factorvae", "btcvae", "smoke"} <= {
        f.stem for f in files}
    for path in files:
        cfg = config.load(path)
        assert path.read_text().startswith("#"), f"{path} needs a header comment naming its paper"
        assert cfg.name == path.stem


def test_paper_settings():
    cap = config.load(ROOT / "experiments" / "capacity25_paper.yaml")
    assert (cap.loss.objective, cap.loss.gamma, cap.loss.c_max, cap.loss.c_steps) == ("capacity", 1000, 25, 100_000)
    assert (cap.loss.likelihood, cap.train.lr, cap.train.batch_size, cap.model.z_dim) == ("bernoulli", 5e-4, 64, 10)
    orig = config.load(ROOT / "experiments" / "bcvae2d_original.yaml")
    assert (orig.train.batch_size, orig.train.lr, orig.train.epochs, orig.loss.gamma) == (576, 5e-3, 80, 10)
    assert (orig.train.lr_decay, orig.train.lr_decay_epochs, orig.model.arch, orig.model.z_dim) == (0.95, 10, "original", 6)
    assert orig.loss.likelihood == "gaussian" and orig.loss.c_steps == 100_000
    assert (orig.loss.kl_scale, orig.train.lr_decay_first) == ("batch_over_n", 1)
    fixed = config.flatten(config.to_dict(config.load(ROOT / "experiments" / "bcvae2d_fixed.yaml")))
    differ = {k for k, v in config.flatten(config.to_dict(orig)).items() if fixed[k] != v}
    assert differ == {"name", "loss.kl_scale"}   # the fix is the scaling and nothing else


@pytest.mark.parametrize("variant, key", [("capacity25_leaky", "model.arch"), ("capacity25_g100", "loss.gamma")])
def test_capacity25_variants_change_one_setting(variant, key):
    """Each variant asks one question of capacity25.yaml, so it must differ from it in one key."""
    base = config.flatten(config.to_dict(config.load(ROOT / "experiments" / "capacity25.yaml")))
    other = config.flatten(config.to_dict(config.load(ROOT / "experiments" / f"{variant}.yaml")))
    assert {k for k, v in base.items() if other[k] != v} == {"name", key}


def test_pyproject_and_environment_name_the_same_dependencies():
    import re
    import tomllib

    import yaml

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))

    def name(req: str) -> str:
        return re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0].lower()

    assert {name(r) for r in project["dependencies"]} == {name(r) for r in pip if not r.startswith("-e")}


def test_on_off_switches_survive_yaml_booleans(tmp_path):
    cfg = config.load(write(tmp_path, "train:\n  compile: off\n  amp: on\n"), ["train.compile=on", "train.amp=off"])
    assert (cfg.train.compile, cfg.train.amp) == ("on", "off")
    assert config.load(write(tmp_path, "train:\n  compile: off\n")).train.compile == "off"
    assert "model.arch" in error_of(write(tmp_path, "model:\n  arch: off\n"))


def test_a_per_latent_cap_belongs_to_the_capacity_objective():
    assert config.load(config.experiment_path("capacity25"), ["loss.latent_kl_max=3.7"]).loss.latent_kl_max == 3.7
    with pytest.raises(ConfigError, match="loss.latent_kl_max"):
        config.load(config.experiment_path("beta4"), ["loss.latent_kl_max=3.7"])
