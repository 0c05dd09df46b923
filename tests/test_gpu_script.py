"""benchmarks/gpu.sh, the GPU check, on a machine without a GPU: its options, --dry-run, a clean
"no CUDA" run that still writes summary.json, and the report it makes from a training's log.
What it does on a GPU is not exercised here (benchmarks/README.md, "GPU check")."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bcvae import config
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu.sh"
STAGES = ["install", "cuda", "tests", "resume", "bench", "train", "graphs", "report"]
GPU_STAGES = ["tests", "resume", "bench", "train", "graphs"]


def no_gpu_env(tmp_path: Path, **extra: str) -> dict:
    """No visible GPU, whatever this machine has: CUDA_VISIBLE_DEVICES is empty and nvidia-smi fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHON", "MAKEFLAGS", "MAKELEVEL")}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nvidia-smi"
    # quotes, a backslash and an escape character: the log tails in summary.json must stay valid JSON
    fake.write_text("#!/bin/sh\nprintf 'NVIDIA-SMI has failed: \"no driver\" \\\\ \\033[31m(simulated)\\n' >&2\nexit 9\n")
    fake.chmod(0o755)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", CUDA_VISIBLE_DEVICES="", **extra)
    return env


def gpu_sh(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def stages(summary: dict) -> dict:
    return {s["name"]: s for s in summary["stages"]}


# ------------------------------------------------------------------ arguments

@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown option '--bogus'"),
    (["--steps"], "option --steps needs a value"),
    (["--steps", "many"], "--steps must be a positive integer, got 'many'"),
    (["--steps=0"], "--steps must be a positive integer, got '0'"),
    (["--budget", "-5"], "--budget must be a positive number of seconds"),
    (["--only", "tests,nope"], "--only: unknown stage 'nope'"),
    (["--dry-run=yes"], "option --dry-run takes no value"),
    (["one", "two"], "more than one results folder"),
])
def test_a_bad_argument_exits_2_with_a_message_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    proc = gpu_sh(*args, env=no_gpu_env(tmp_path, OUT=str(out)))
    assert proc.returncode == 2
    assert message in proc.stderr and "--help" in proc.stderr
    assert proc.stdout == "" and not out.exists()


def test_help_lists_every_option(tmp_path):
    proc = gpu_sh("--help", env=no_gpu_env(tmp_path))
    assert proc.returncode == 0
    for option in ("--dry-run", "--skip-install", "--steps", "--results", "--python", "--torch", "--wheels",
                   "--tests", "--bench-args", "--train-args", "--only", "--budget", "--pack", "--no-pack"):
        assert option in proc.stdout, option


# ------------------------------------------------------------------ --dry-run

@pytest.fixture
def dry_run(tmp_path):
    """A dry run whose --python would leave a mark if anything ran it."""
    mark = tmp_path / "python-ran"
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(mark))}\n")
    python.chmod(0o755)
    results = tmp_path / "results"
    proc = gpu_sh("--dry-run", "--steps", "1234", "--python", str(python), "--results", str(results),
                  env=no_gpu_env(tmp_path))
    summary = json.loads((results / "summary.json").read_text())
    return proc, summary, results, python, mark


def test_dry_run_lists_every_stage_with_its_command_and_runs_nothing(dry_run):
    proc, summary, results, python, mark = dry_run
    assert proc.returncode == 0, proc.stderr
    assert not mark.exists(), "--dry-run executed a command"
    assert [p.name for p in results.iterdir()] == ["summary.json"]  # no logs, no helper, no runs
    assert summary["mode"] == "dry-run" and summary["ok"] is None and summary["steps"] == 1234
    assert [s["name"] for s in summary["stages"]] == STAGES
    for s in summary["stages"]:
        assert s["status"] == "dry-run" and s["exit_code"] is None and s["seconds"] is None, s
        assert s["command"] and s["command"].splitlines()[0] in proc.stdout, s["name"]
        assert s["needs_cuda"] == (s["name"] in GPU_STAGES)
    assert summary["budget_s"] < 600, "the whole check must fit in one 10-minute call"


def test_dry_run_commands_name_the_cuda_tests_the_bench_and_the_training(dry_run):
    proc, summary, results, python, mark = dry_run
    cmd = {name: s["command"] for name, s in stages(summary).items()}
    assert "nvidia-smi -L" in cmd["install"] and "download.pytorch.org/whl/cu128" in cmd["install"]
    assert "nvidia-smi" in cmd["cuda"] and "versions" in cmd["cuda"]
    assert "make bench" in cmd["bench"] and "--quick" in cmd["bench"]
    nodes = [word for word in shlex.split(cmd["tests"]) if "::" in word]
    assert {"test_fastpath.py", "test_train.py"} <= {Path(n.split("::")[0]).name for n in nodes}
    for node in nodes:  # every selected test still exists under that name
        path, name = node.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), node
    words = shlex.split(cmd["train"])
    assert words[:5] == [str(python), "-m", "bcvae", "train", "capacity25"] and words[-1] == "--fresh"
    cfg = config.load(ROOT / "experiments" / "capacity25.yaml", words[5:-1])  # every key exists and validates
    assert (cfg.train.max_steps, cfg.name, cfg.train.device) == (1234, "gpu-check", "cuda")
    assert cfg.run_dir == str(results / "runs") and cfg.log.wandb_mode == "disabled"
    graphs = shlex.split(cmd["graphs"])  # the same training, under its own name, with CUDA graphs
    assert graphs[-1] == "--fresh"
    cfg_graphs = config.load(ROOT / "experiments" / "capacity25.yaml", graphs[5:-1])
    assert (cfg_graphs.name, cfg_graphs.train.compile) == ("gpu-graphs", "graphs")
    assert config.to_dict(cfg_graphs) == {**config.to_dict(cfg), "name": "gpu-graphs",
                                          "train": {**config.to_dict(cfg)["train"], "compile": "graphs"}}


def test_only_selects_stages_and_out_is_the_default_results_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = gpu_sh("--dry-run", "--only", "cuda,train", env=no_gpu_env(tmp_path, OUT=str(out)))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert os.path.realpath(summary["results"]) == os.path.realpath(out)
    assert {n: s["status"] for n, s in stages(summary).items()} == {
        n: "dry-run" if n in ("cuda", "train") else "not-selected" for n in STAGES}


# ------------------------------------------------------------------ no GPU

def test_without_cuda_the_check_says_so_fast_and_still_writes_summary(tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # as where a GPU is lent: results in $OUT, packed (8 files come back there)
    proc = gpu_sh("--python", sys.executable, env=no_gpu_env(tmp_path, OUT=str(out)))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no CUDA" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["results.tar.gz", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is False and summary["mode"] == "run" and summary["packed"]
    by_name = stages(summary)
    install, cuda = by_name["install"], by_name["cuda"]
    assert install["status"] == "failed" and "nothing" not in install["tail"]  # nvidia-smi failed: no download
    assert "no CUDA: nvidia-smi failed" in install["tail"] and '"no driver"' in install["tail"]
    assert cuda["status"] == "failed" and cuda["exit_code"] == 1 and cuda["log"] == "logs/cuda.log"
    assert "no CUDA: torch.cuda.is_available() is False" in cuda["tail"]
    assert 0 <= cuda["seconds"] < 60 and cuda["timeout_s"] <= cuda["cap_s"]
    for name in GPU_STAGES:
        s = by_name[name]
        assert s["status"] == "skipped" and "no CUDA" in s["reason"] and s["exit_code"] is None, s
        assert s["command"], "a skipped stage still records its command"
    assert by_name["report"]["status"] == "ok"
    assert summary["facts"]["cuda_available"] is False
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        assert {"./logs/cuda.log", "./logs/install.log", "./versions.json", "./nvidia-smi.txt"} <= names
        assert "no CUDA" in tar.extractfile("./logs/cuda.log").read().decode()
        assert "simulated" in tar.extractfile("./nvidia-smi.txt").read().decode()


def test_skip_install_is_recorded_and_not_a_failure(tmp_path):
    results = tmp_path / "results"
    proc = gpu_sh("--skip-install", "--only", "install,report", "--python", sys.executable, str(results),
                  env=no_gpu_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((results / "summary.json").read_text())
    assert summary["ok"] is True and not summary["packed"]
    assert stages(summary)["install"]["status"] == "skipped"
    assert stages(summary)["install"]["reason"] == "--skip-install"
    assert (results / "logs" / "report.log").exists()


# ------------------------------------------------------------------ the report stage

TESTS_XML = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.test_fastpath" name="test_a" time="1.0"/>
<testcase classname="tests.test_fastpath" name="test_b"><failure message="x">boom</failure></testcase>
<testcase classname="tests.test_train" name=""><error message="collection failure">no wandb</error></testcase>
<testcase classname="tests.test_fastpath" name="test_c"><skipped message="s"/></testcase>
<testcase classname="tests.test_fastpath" name="test_d"/></testsuite></testsuites>
"""


@pytest.mark.parametrize("rec_last, learns", [(120.0, True), (2500.0, False)])
def test_report_takes_img_per_s_and_the_learning_curve_from_the_runs_log(tmp_path, rec_last, learns):
    results = tmp_path / "results"
    run = results / "runs" / "gpu-check" / "fold0"
    run.mkdir(parents=True)
    rates = [400.0, 20_000.0, 21_000.0, 22_000.0]  # the first interval holds the compilation
    recs = [2800.0, 900.0, 300.0, rec_last]
    rows = [{"step": 50 * (i + 1), "train/loss": r + 5, "train/rec": r, "train/kl": 0.7, "train/C": 0.75,
             "train/img_per_s": v} for i, (r, v) in enumerate(zip(recs, rates))]
    rows.append({"step": 200, "val/rec": rec_last + 3, "val/kl": 0.7})
    lines = [json.dumps(r) for r in rows] + ['{"step": 25']  # a torn last line: the stage was stopped
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    graphs_run = results / "runs" / "gpu-graphs" / "fold0"  # the CUDA-graphs stage, twice as fast
    graphs_run.mkdir(parents=True)
    (graphs_run / "metrics.jsonl").write_text("".join(
        json.dumps({**r, "train/img_per_s": 2 * r["train/img_per_s"]}) + "\n" for r in rows if "train/loss" in r))
    (results / "tests.xml").write_text(TESTS_XML)
    proc = gpu_sh("--only", "report", "--python", sys.executable, "--results", str(results), env=no_gpu_env(tmp_path))
    assert proc.returncode == (0 if learns else 1), proc.stdout + proc.stderr
    summary = json.loads((results / "summary.json").read_text())
    assert stages(summary)["report"]["status"] == ("ok" if learns else "failed")
    facts = summary["facts"]
    assert facts["train_img_per_s_median"] == 21_000 and facts["train_img_per_s_max"] == 22_000
    assert (facts["train_rec_first"], facts["train_rec_last"], facts["train_last_step"]) == (2800, rec_last, 200)
    assert facts["train_learns"] is learns
    assert facts["graphs_img_per_s_median"] == 42_000 and facts["graphs_learns"] is learns
    assert (facts["tests_passed"], facts["tests_failed"], facts["tests_skipped"]) == (2, 2, 1)
    assert "tests.test_fastpath::test_b" in facts["tests_failed_names"]
    train = json.loads((results / "train.json").read_text())
    assert train["img_per_s_first_interval"] == 400 and train["val"]["val/rec"] == rec_last + 3
