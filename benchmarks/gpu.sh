#!/usr/bin/env bash
# The GPU check: one script that, on a CUDA machine and within 10 minutes,
#   install  makes the CUDA build of torch available (keeps one that is already there)
#   cuda     records nvidia-smi and the torch/CUDA versions; fails fast ("no CUDA") without a GPU
#   tests    runs the tests that exercise CUDA (fast path vs eager, bf16 autocast, compiled step, resume)
#   resume   checks exact resume on CUDA through the trainer (fp32 + deterministic algorithms, fp32, defaults)
#   bench    runs `make bench` on the GPU (ARGS=--quick by default)
#   train    trains capacity25 for --steps steps,
#   graphs   trains it again with CUDA graphs (train.compile=graphs), and
#   report   extracts their img/s and learning curves, the bench headline and the test counts.
# Every stage is time-boxed; a failed stage never stops the next ones (without CUDA the GPU stages
# are skipped). Everything goes to one results folder, with summary.json listing each stage's exit
# code, seconds, log and command. `bash benchmarks/gpu.sh --help` lists the options;
# benchmarks/README.md ("GPU check") says how to run it where a GPU is lent.
set -euo pipefail
export LC_NUMERIC=C  # EPOCHREALTIME and awk print a dot

usage() {
  cat <<'EOF'
usage: bash benchmarks/gpu.sh [options] [RESULTS_DIR]

The GPU check (benchmarks/README.md, "GPU check"): install, cuda, tests, resume, bench,
train, report, each time-boxed, all inside --budget seconds; writes RESULTS_DIR/summary.json.

RESULTS_DIR: --results DIR or the argument, else $OUT when set, else
benchmarks/results/gpu-<date>.

options:
  --dry-run            print every stage's command and write summary.json; run nothing
  --skip-install       do not install anything (use --python as it is)
  --steps N            capacity25 training steps (default 3000)
  --results DIR        results folder (wins over $OUT)
  --python PATH        interpreter (default: $PYTHON, else .venv/bin/python if present, else python3)
  --torch SPEC         pip arguments for the CUDA wheel, used only when --python's torch has no CUDA
                       (default "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
  --wheels DIR         install DIR/*.whl offline into a private folder on PYTHONPATH
                       (default: .whl/ when it holds wheels)
  --tests "ARGS"       pytest arguments replacing the default CUDA test selection
  --bench-args "ARGS"  arguments of `make bench` (default "--quick"; "" for the full run)
  --train-args "K=V"   extra config overrides for the training stage
  --only a,b,...       run only these stages (install,cuda,tests,resume,bench,train,graphs,report)
  --budget SECONDS     wall-clock budget of all stages together (default 540)
  --pack / --no-pack   pack the results into results.tar.gz next to summary.json
                       (default: pack when the results folder is $OUT, whose files come back
                       only 8 at a time)
  -h, --help           this text

exit status: 0 when every stage that ran passed, 1 otherwise, 2 for a usage error.
EOF
}

die() {
  echo "gpu.sh: $*" >&2
  echo "Try 'bash benchmarks/gpu.sh --help'." >&2
  exit 2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
INVOCATION="bash benchmarks/gpu.sh${*:+ $*}"

STAGES=(install cuda tests resume bench train graphs report)
STEPS=3000
DRY=0
SKIP_INSTALL=0
RESULTS=""
PY="${PYTHON:-}"
TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
WHEELS=""
TESTS=""
TESTS_SET=0
BENCH_ARGS="--quick"
TRAIN_ARGS=""
ONLY=""
BUDGET=540
PACK=auto

positional() {
  [[ -z $RESULTS ]] || die "more than one results folder given ('$RESULTS' and '$1')"
  [[ -n $1 ]] || die "empty results folder"
  RESULTS=$1
}

while (($#)); do
  opt=$1
  val=""
  inline=0
  if [[ $opt == --*=* ]]; then
    val=${opt#*=}
    opt=${opt%%=*}
    inline=1
  fi
  case $opt in
    --steps | --results | --python | --torch | --wheels | --tests | --bench-args | --train-args | --only | --budget)
      if ((inline == 0)); then
        (($# >= 2)) || die "option $opt needs a value"
        val=$2
        shift
      fi
      case $opt in
        --steps) STEPS=$val ;;
        --results) [[ -n $val ]] || die "--results needs a folder"; RESULTS=$val ;;
        --python) [[ -n $val ]] || die "--python needs a path"; PY=$val ;;
        --torch) TORCH_SPEC=$val ;;
        --wheels) WHEELS=$val ;;
        --tests) TESTS=$val; TESTS_SET=1 ;;
        --bench-args) BENCH_ARGS=$val ;;
        --train-args) TRAIN_ARGS=$val ;;
        --only) ONLY=$val ;;
        --budget) BUDGET=$val ;;
      esac
      ;;
    --dry-run | --skip-install | --pack | --no-pack | -h | --help)
      ((inline == 0)) || die "option $opt takes no value"
      case $opt in
        --dry-run) DRY=1 ;;
        --skip-install) SKIP_INSTALL=1 ;;
        --pack) PACK=1 ;;
        --no-pack) PACK=0 ;;
        -h | --help) usage; exit 0 ;;
      esac
      ;;
    --)
      shift
      for arg in "$@"; do positional "$arg"; done
      break
      ;;
    -*) die "unknown option '$1'" ;;
    *) positional "$1" ;;
  esac
  shift
done

[[ $STEPS =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive integer, got '$STEPS'"
[[ $BUDGET =~ ^[1-9][0-9]*$ ]] || die "--budget must be a positive number of seconds, got '$BUDGET'"
if [[ -n $ONLY ]]; then
  IFS=, read -r -a only_list <<<"$ONLY"
  for name in "${only_list[@]}"; do
    [[ " ${STAGES[*]} " == *" $name "* ]] || die "--only: unknown stage '$name' (stages: ${STAGES[*]})"
  done
fi
if [[ -n $WHEELS && $DRY == 0 ]]; then
  [[ -d $WHEELS ]] || die "--wheels: no folder '$WHEELS'"
fi
if [[ -z $WHEELS ]] && compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  WHEELS=$ROOT/.whl
fi
[[ -z $WHEELS ]] || WHEELS=$(cd "$WHEELS" 2>/dev/null && pwd || echo "$WHEELS")
if [[ -z $PY ]]; then
  if [[ -x $ROOT/.venv/bin/python ]]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
elif [[ $PY == */* ]]; then
  PY=$(cd "$(dirname "$PY")" 2>/dev/null && echo "$(pwd)/$(basename "$PY")" || echo "$PY")
fi

# ------------------------------------------------------------------ the results folder
if [[ -z $RESULTS ]]; then
  if [[ -n ${OUT:-} ]]; then RESULTS=$OUT; else RESULTS=benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S); fi
fi
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
if [[ $PACK == auto ]]; then
  PACK=0
  if [[ -n ${OUT:-} && -d ${OUT:-} && $RESULTS == "$(cd "$OUT" && pwd)" ]]; then PACK=1; fi
fi

SITE=${TMPDIR:-/tmp}/bcvae-gpu-site  # --wheels land here
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"  # the checkout's bcvae, without installing it
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true
unset MAKEFLAGS MFLAGS MAKELEVEL  # `make bench-gpu ARGS=...` must not reach the inner `make bench`

q() { printf '%q' "$1"; }
QPY=$(q "$PY")
QRES=$(q "$RESULTS")

# ------------------------------------------------------------------ the stages
# name -> command (bash), cap (most seconds), floor (seconds kept for it when earlier stages run
# long), whether it needs CUDA.
declare -A CMD CAP FLOOR NEEDS_CUDA

CMD[install]="set -e
if ! nvidia-smi -L; then
  echo 'no CUDA: nvidia-smi failed (no NVIDIA GPU or driver here); not installing the CUDA wheel'
  exit 1
fi"
if [[ -n $WHEELS ]]; then
  CMD[install]+="
$QPY -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(q "$SITE") $(q "$WHEELS")/*.whl"
fi
CMD[install]+="
if $QPY -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)'; then
  $QPY -c 'import torch; print(f\"torch {torch.__version__} is built for CUDA {torch.version.cuda}: kept, nothing downloaded\")'
else
  $QPY -m pip install --retries 1 --timeout 30 --upgrade --force-reinstall $TORCH_SPEC
fi
if ! $QPY -c 'import numpy, h5py, yaml, tqdm, matplotlib, sklearn, scipy, threadpoolctl, filelock, PIL, pytest'; then
  $QPY -m pip install --retries 1 --timeout 30 -e '.[test]'
fi
$QPY -c 'import wandb' 2>/dev/null || echo 'note: wandb is missing, so tests/test_train.py cannot be collected (carry its wheels: --wheels)'
$QPY -c 'import bcvae, torch; print(\"bcvae from\", bcvae.__file__, \"| torch\", torch.__version__, \"| CUDA\", torch.version.cuda)'"
CAP[install]=180 FLOOR[install]=10 NEEDS_CUDA[install]=0

CMD[cuda]="{ nvidia-smi 2>&1 || echo \"nvidia-smi failed (exit \$?)\"; } | tee $QRES/nvidia-smi.txt
$QPY $QRES/gpu_check.py versions $QRES"
CAP[cuda]=60 FLOOR[cuda]=15 NEEDS_CUDA[cuda]=0

# The tests that run on CUDA here: the trainer's train.device=auto picks the GPU. Files that test
# CUDA explicitly (a torch.cuda.is_available() skip, a cuda marker) are added whole.
DEFAULT_TESTS=(
  tests/test_fastpath.py::test_default_fast_path_matches_a_plain_training_loop
  tests/test_fastpath.py::test_channels_last_on_and_off_give_the_same_training
  tests/test_fastpath.py::test_bf16_autocast_on_cpu_is_an_opt_in_close_to_float32
  tests/test_fastpath.py::test_trainer_uses_fused_adam_where_torch_has_it
  tests/test_fastpath.py::test_a_failing_compiler_falls_back_to_eager_with_the_same_result
  tests/test_fastpath.py::test_compiled_training_matches_eager
  tests/test_train.py::test_budget_stop_then_resume_equals_uninterrupted
)
if ((TESTS_SET == 0)); then
  selection=("${DEFAULT_TESTS[@]}")
  while IFS= read -r file; do
    [[ $file == tests/test_gpu_script.py ]] && continue
    kept=()
    for node in "${selection[@]}"; do [[ $node == "$file::"* ]] || kept+=("$node"); done
    selection=("${kept[@]}" "$file")
  done < <(grep -lE 'torch\.cuda\.is_available|pytest\.mark\.cuda|requires_cuda|device=.cuda' tests/test_*.py 2>/dev/null || true)
  TESTS="${selection[*]}"
fi
CMD[tests]="$QPY -m pytest -p no:cacheprovider -v -rA --durations=10 --continue-on-collection-errors --junitxml=$QRES/tests.xml $TESTS"
CAP[tests]=180 FLOOR[tests]=60 NEEDS_CUDA[tests]=1

CMD[resume]="$QPY $QRES/gpu_check.py resume $QRES"
CAP[resume]=150 FLOOR[resume]=45 NEEDS_CUDA[resume]=1

CMD[bench]="if command -v make >/dev/null; then make bench PYTHON=$QPY ARGS=$(q "$BENCH_ARGS"); else $QPY benchmarks/run.py $BENCH_ARGS; fi"
CAP[bench]=180 FLOOR[bench]=60 NEEDS_CUDA[bench]=1

# capacity25 as it is, on the GPU; W&B off (nothing to reach), images every 1,000 steps so the
# logged img/s is the training's. Every key here is in bcvae/config.py.
CMD[train]="$QPY -m bcvae train capacity25 train.max_steps=$STEPS name=gpu-check run_dir=$(q "$RESULTS/runs") train.device=cuda log.wandb_mode=disabled log.progress=false log.every_images=1000 eval.at_end=false${TRAIN_ARGS:+ $TRAIN_ARGS} --fresh"
CAP[train]=240 FLOOR[train]=120 NEEDS_CUDA[train]=1

# The same training with CUDA graphs (train.compile=graphs): its img/s against the stage above.
CMD[graphs]=${CMD[train]//name=gpu-check/name=gpu-graphs}
CMD[graphs]=${CMD[graphs]% --fresh}" train.compile=graphs --fresh"
CAP[graphs]=150 FLOOR[graphs]=60 NEEDS_CUDA[graphs]=1

START_EPOCH=$(date +%s)
CMD[report]="$QPY $QRES/gpu_check.py report $QRES $START_EPOCH"
CAP[report]=30 FLOOR[report]=10 NEEDS_CUDA[report]=0

# ------------------------------------------------------------------ JSON, by hand (no Python needed)
json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  s=$(printf '%s' "$s" | LC_ALL=C tr -d '\001-\010\013\014\016-\037\177')
  printf '"%s"' "$s"
}

json_val() {  # a number, true/false/null, or a string
  if [[ $1 =~ ^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$ || $1 == true || $1 == false || $1 == null ]]; then
    printf '%s' "$1"
  else
    json_str "$1"
  fi
}

log_tail() {  # the last lines of a log as printable ASCII
  [[ -f $1 ]] || return 0
  tail -n "${2:-15}" "$1" | LC_ALL=C tr -cd '\11\12\15\40-\176'
}

now() { printf '%s' "${EPOCHREALTIME:-$(date +%s)}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ------------------------------------------------------------------ running them
declare -A STATUS RC SECS TIMEOUT REASON LOG
DEADLINE=$((START_EPOCH + BUDGET))
CUDA_OK=1

selected() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }

reserve_after() {  # seconds kept for the selected stages after $1
  local after=0 total=0 name
  for name in "${STAGES[@]}"; do
    if ((after)) && selected "$name"; then total=$((total + FLOOR[$name])); fi
    [[ $name == "$1" ]] && after=1
  done
  echo "$total"
}

say() { echo "[gpu.sh] $*"; }

run_stage() {
  local name=$1 cmd=${CMD[$1]}
  if ! selected "$name"; then
    STATUS[$name]=not-selected REASON[$name]="--only $ONLY"
    return 0
  fi
  if ((DRY)); then
    STATUS[$name]=dry-run
    say "stage $name (at most ${CAP[$name]} s$( ((NEEDS_CUDA[$name])) && echo ', needs CUDA')):"
    printf '%s\n' "$cmd" | sed 's/^/    /'
    return 0
  fi
  if [[ $name == install ]] && ((SKIP_INSTALL)); then
    STATUS[$name]=skipped REASON[$name]="--skip-install"
    say "stage install: skipped (--skip-install)"
    return 0
  fi
  if ((NEEDS_CUDA[$name])) && ((CUDA_OK == 0)); then
    STATUS[$name]=skipped REASON[$name]="no CUDA (stage cuda failed: see logs/cuda.log)"
    say "stage $name: skipped, no CUDA"
    return 0
  fi
  local left=$((DEADLINE - $(date +%s) - $(reserve_after "$name")))
  local limit=$((left < CAP[$name] ? left : CAP[$name]))
  if ((limit < 5)); then
    STATUS[$name]=skipped REASON[$name]="out of time: the --budget of $BUDGET s is spent"
    say "stage $name: skipped, out of time"
    return 0
  fi
  mkdir -p "$RESULTS/logs"
  LOG[$name]=logs/$name.log TIMEOUT[$name]=$limit
  say "stage $name: running (at most $limit s) -> logs/$name.log"
  local start rc=0
  start=$(now)
  timeout -k 10 "$limit" bash -c "$cmd" >"$RESULTS/logs/$name.log" 2>&1 </dev/null || rc=$?
  SECS[$name]=$(since "$start") RC[$name]=$rc
  if ((rc == 0)); then
    STATUS[$name]=ok
  elif ((rc == 124 || rc == 137)); then
    STATUS[$name]=timeout
  else
    STATUS[$name]=failed
  fi
  say "stage $name: ${STATUS[$name]} (exit $rc, ${SECS[$name]} s)"
  if ((rc != 0)); then log_tail "$RESULTS/logs/$name.log" 8 | sed 's/^/    | /'; fi
  if [[ $name == cuda && $rc != 0 ]]; then
    CUDA_OK=0
    say "no CUDA: the stages that need a GPU are skipped (logs/cuda.log says why)"
  fi
  return 0
}

write_helper() {
  cat >"$RESULTS/gpu_check.py" <<'PYEOF'
"""Helpers of benchmarks/gpu.sh, written by it into the results folder.

versions RESULTS           the CUDA check: versions.json; exit 1 ("no CUDA") without a usable GPU
resume RESULTS             exact resume on CUDA through the trainer (smoke experiment), three settings
report RESULTS START_EPOCH train.json (img/s, learning curve), bench.json, test counts -> report.json
Each writes "key<TAB>value" lines to RESULTS/facts.tsv, which gpu.sh puts into summary.json.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent  # replaced below by the checkout (argv)


def fact(results: Path, key: str, value) -> None:
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, float):
        text = f"{value:.6g}" if math.isfinite(value) else str(value)
    else:
        text = str(value)
    with open(results / "facts.tsv", "a", encoding="utf-8") as f:
        f.write(f"{key}\t{' '.join(text.split())}\n")


def versions(results: Path) -> int:
    import importlib
    import platform

    info = {"python": platform.python_version(), "executable": sys.executable,
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    for name in ("numpy", "h5py", "triton", "wandb", "pytest"):
        try:
            info[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as err:  # noqa: BLE001 - a missing package is a finding, not a failure
            info[name] = f"missing ({type(err).__name__})"
    import torch

    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                cuda_available=torch.cuda.is_available(), device_count=torch.cuda.device_count())
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(cudnn=torch.backends.cudnn.version(), gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
        a = torch.randn(1024, 1024, device="cuda")
        info["matmul_ok"] = bool(torch.isfinite(a @ a.T).all().item())
    (results / "versions.json").write_text(json.dumps(info, indent=2) + "\n")
    for key in ("torch", "torch_cuda", "cudnn", "gpu", "capability", "gpu_memory_gib", "triton", "wandb",
                "cuda_available"):
        if key in info:
            fact(results, key, info[key])
    print(json.dumps(info, indent=2))
    if not info["cuda_available"]:
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
        print(f"no CUDA: torch.cuda.is_available() is False (torch {torch.__version__}, {build}, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})", file=sys.stderr)
        return 1
    return 0 if info["matmul_ok"] else 1


# Exact resume on CUDA, as tests/test_train.py checks it on a CPU: train the smoke run whole; train it
# again stopping at step 13 (inside epoch 0), resume it to the end; compare the final parameters.
RESUME_SETTINGS = {
    "fp32-deterministic": (['train.compile="off"', 'train.amp="off"'], True),   # exit status: this one
    "fp32": (['train.compile="off"', 'train.amp="off"'], False),
    "default": ([], False),  # what a run uses on CUDA: compiled, bf16 autocast
}


def resume(results: Path) -> int:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (before CUDA starts)
    import torch

    from bcvae import checkpoint, config, train

    smoke = ROOT / "experiments" / "smoke.yaml"
    tmp = Path(tempfile.mkdtemp(prefix="bcvae-gpu-resume-"))
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    out = {}
    try:
        for name, (extra, deterministic) in RESUME_SETTINGS.items():
            # the trainer switches TF32 on for autocast: every setting starts from torch's defaults
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
            torch.use_deterministic_algorithms(deterministic, warn_only=True)
            torch._dynamo.reset()
            common = [f"run_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'data'}", "log.progress=false",
                      "log.wandb_mode=disabled", "eval.at_end=false", "train.device=cuda", *extra]

            def load(run: str, *more: str):
                return config.load(smoke, [*common, f"name={name}-{run}", *more])  # noqa: B023

            tic = time.perf_counter()
            try:
                whole = load("whole")
                train.train(whole)
                part = load("resumed", "train.max_steps=13")
                train.train(part)
                stopped = checkpoint.load_checkpoint(train.run_dir_for(part) / "checkpoint.pt")["step"]
                train.train(load("resumed"))
                a = checkpoint.load_checkpoint(train.run_dir_for(whole) / "checkpoint.pt")
                b = checkpoint.load_checkpoint(train.run_dir_for(part) / "checkpoint.pt")
                diff = max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in a["model"])
                exact = a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
                row = {"exact": exact, "max_abs_diff": diff, "steps": a["step"], "stopped_at": stopped,
                       "deterministic_algorithms": deterministic, "overrides": extra}
            except Exception as err:  # noqa: BLE001 - one setting failing must not hide the others
                row = {"exact": False, "error": f"{type(err).__name__}: {err}"}
            row["seconds"] = round(time.perf_counter() - tic, 1)
            out[name] = row
            fact(results, f"resume_exact_{name}", row["exact"])
            if "max_abs_diff" in row:
                fact(results, f"resume_max_abs_diff_{name}", row["max_abs_diff"])
            print(f"resume on CUDA, {name}: {json.dumps(row)}", flush=True)
    finally:
        torch.use_deterministic_algorithms(False)
        shutil.rmtree(tmp, ignore_errors=True)
    (results / "resume.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out.get("fp32-deterministic", {}).get("exact") else 1


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a torn last line (the stage was stopped)
    return rows


def training_summary(results: Path, name: str, prefix: str) -> tuple[dict | str, bool | None]:
    """img/s and learning curve of the training stage that wrote runs/<name> -> <prefix>.json and
    <prefix>_* facts; returns (the summary, whether it learns: None when it did not run)."""
    metrics = results / "runs" / name / "fold0" / "metrics.jsonl"
    if not metrics.exists():
        return f"no {metrics.relative_to(results)}", None
    rows = _jsonl(metrics)
    trained = [r for r in rows if "train/loss" in r]
    rates = [r["train/img_per_s"] for r in trained if "train/img_per_s" in r]
    steady = rates[1:] or rates  # the first interval holds the compilation and warm-up
    t = {"metrics": str(metrics.relative_to(results)), "last_step": max((r.get("step", 0) for r in rows), default=0)}
    if rates:
        t.update(img_per_s_median=statistics.median(steady), img_per_s_max=max(steady),
                 img_per_s_first_interval=rates[0], intervals=len(rates))
    for key in ("loss", "rec", "kl", "C"):
        values = [r[f"train/{key}"] for r in trained if f"train/{key}" in r]
        if values:
            t[f"{key}_first"], t[f"{key}_last"] = values[0], values[-1]
    val = [r for r in rows if any(k.startswith("val/") for k in r)]
    if val:
        t["val"] = {k: v for k, v in val[-1].items() if k.startswith("val/") and not k.startswith("val/kl_dim")}
    if "rec_first" in t:
        t["learns"] = bool(t["rec_last"] < 0.5 * t["rec_first"])  # Bernoulli NLL: ~2,800 nats at the start
    (results / f"{prefix}.json").write_text(json.dumps(t, indent=2) + "\n")
    for key in ("img_per_s_median", "img_per_s_max", "last_step", "rec_first", "rec_last", "kl_last", "C_last",
                "learns"):
        if key in t:
            fact(results, f"{prefix}_{key}", t[key])
    return t, t.get("learns")


def report(results: Path, start: float) -> int:
    rep, rc = {}, 0
    for name, prefix in (("gpu-check", "train"), ("gpu-graphs", "graphs")):
        rep[prefix], learns = training_summary(results, name, prefix)
        rc = rc or (0 if learns in (None, True) else 1)
    fresh = [p for p in (ROOT / "benchmarks" / "results").glob("latest*.json") if p.stat().st_mtime >= start]
    if fresh:
        newest = max(fresh, key=lambda p: p.stat().st_mtime)
        shutil.copy(newest, results / "bench.json")
        bench = json.loads(newest.read_text())
        rep["bench"] = {"file": newest.name, **{k: bench.get(k) for k in (
            "device", "train_img_s_fast", "train_img_s_eager", "train_img_s_baseline", "fast_over_baseline",
            "matmul_gflops", "train_peak_fraction_fast", "encode_img_s", "seconds_total")}}
        for key, value in rep["bench"].items():
            if isinstance(value, (int, float)):
                fact(results, f"bench_{key}", value)
    else:
        rep["bench"] = "no benchmarks/results/latest*.json written by this run"
    junit = results / "tests.xml"
    if junit.exists():
        import xml.etree.ElementTree as ET

        cases = ET.parse(junit).getroot().iter("testcase")
        counts, failed = {"passed": 0, "failed": 0, "skipped": 0}, []
        for case in cases:
            kinds = {child.tag for child in case}
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            if kinds & {"failure", "error"}:
                counts["failed"] += 1
                failed.append(name)
            elif "skipped" in kinds:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
        rep["tests"] = {**counts, "failed_tests": failed}
        for key, value in counts.items():
            fact(results, f"tests_{key}", value)
        if failed:
            fact(results, "tests_failed_names", " ".join(failed))
    (results / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
    print(json.dumps(rep, indent=2))
    return rc


if __name__ == "__main__":
    command, results = sys.argv[1], Path(sys.argv[2])
    ROOT = Path(os.environ.get("BCVAE_ROOT", Path.cwd()))
    if command == "versions":
        sys.exit(versions(results))
    if command == "resume":
        sys.exit(resume(results))
    if command == "report":
        sys.exit(report(results, float(sys.argv[3])))
    sys.exit(f"unknown command {command!r}")
PYEOF
}

write_summary() {
  local path=$RESULTS/summary.json tmp first=1 name key
  tmp=$(mktemp "$RESULTS/.summary.XXXXXX")
  {
    printf '{\n'
    printf '  "script": "benchmarks/gpu.sh",\n'
    printf '  "invocation": %s,\n' "$(json_str "$INVOCATION")"
    printf '  "mode": %s,\n' "$(json_str "$([[ $DRY == 1 ]] && echo dry-run || echo run)")"
    printf '  "ok": %s,\n' "$OVERALL_OK"
    printf '  "results": %s,\n' "$(json_str "$RESULTS")"
    printf '  "packed": %s,\n' "$([[ $PACK == 1 && $DRY == 0 ]] && echo '"results.tar.gz (checkpoints *.pt left out)"' || echo null)"
    printf '  "started": %s,\n' "$(json_str "$STARTED")"
    printf '  "seconds": %s,\n' "$(awk -v a="$START_EPOCH" -v b="$(date +%s)" 'BEGIN { print b - a }')"
    printf '  "budget_s": %s,\n' "$BUDGET"
    printf '  "steps": %s,\n' "$STEPS"
    printf '  "python": %s,\n' "$(json_str "$PY")"
    printf '  "git_commit": %s,\n' "$(json_str "$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)")"
    printf '  "env": {"PYTHONPATH": %s, "CUDA_VISIBLE_DEVICES": %s},\n' "$(json_str "$PYTHONPATH")" \
      "$(if [[ -n ${CUDA_VISIBLE_DEVICES+x} ]]; then json_str "$CUDA_VISIBLE_DEVICES"; else echo null; fi)"
    printf '  "facts": {'
    if [[ -f $RESULTS/facts.tsv ]]; then
      declare -A seen=()
      local order=() k v
      while IFS=$'\t' read -r k v; do
        [[ -n $k ]] || continue
        [[ -n ${seen[$k]+x} ]] || order+=("$k")
        seen[$k]=$v
      done <"$RESULTS/facts.tsv"
      for key in "${order[@]}"; do
        ((first)) || printf ','
        first=0
        printf '\n    %s: %s' "$(json_str "$key")" "$(json_val "${seen[$key]}")"
      done
    fi
    ((first)) && printf '},\n' || printf '\n  },\n'
    printf '  "stages": ['
    first=1
    for name in "${STAGES[@]}"; do
      ((first)) || printf ','
      first=0
      printf '\n    {"name": %s, "status": %s, ' "$(json_str "$name")" "$(json_str "${STATUS[$name]:-not-run}")"
      printf '"exit_code": %s, "seconds": %s, ' "${RC[$name]:-null}" "${SECS[$name]:-null}"
      printf '"timeout_s": %s, "cap_s": %s, "needs_cuda": %s,\n' "${TIMEOUT[$name]:-null}" "${CAP[$name]}" \
        "$( ((NEEDS_CUDA[$name])) && echo true || echo false)"
      printf '     "log": %s, ' "$(if [[ -n ${LOG[$name]:-} ]]; then json_str "${LOG[$name]}"; else echo null; fi)"
      printf '"reason": %s,\n' "$(if [[ -n ${REASON[$name]:-} ]]; then json_str "${REASON[$name]}"; else echo null; fi)"
      printf '     "command": %s,\n' "$(json_str "${CMD[$name]}")"
      printf '     "tail": %s}' "$(if [[ -n ${LOG[$name]:-} ]]; then json_str "$(log_tail "$RESULTS/${LOG[$name]}" 15)"; else echo null; fi)"
    done
    printf '\n  ]\n}\n'
  } >"$tmp"
  chmod 644 "$tmp"
  mv -f "$tmp" "$path"
}

pack() {  # only summary.json and results.tar.gz stay: $OUT gives back 8 files at most
  local tarball
  tarball=$(mktemp "${TMPDIR:-/tmp}/bcvae-gpu-results.XXXXXX")
  if tar -C "$RESULTS" --exclude='*.pt' --exclude=./summary.json --exclude=./results.tar.gz -czf "$tarball" .; then
    find "$RESULTS" -mindepth 1 -maxdepth 1 ! -name summary.json ! -name results.tar.gz -exec rm -rf {} +
    mv -f "$tarball" "$RESULTS/results.tar.gz"
    say "packed the results into $RESULTS/results.tar.gz ($(du -h "$RESULTS/results.tar.gz" | cut -f1))"
  else
    rm -f "$tarball"
    say "packing failed: the results stay as they are"
  fi
}

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
OVERALL_OK=true
if ((DRY)); then
  say "dry run: nothing is executed; results folder $RESULTS"
else
  say "GPU check -> $RESULTS (budget $BUDGET s, python $PY)"
  rm -f "$RESULTS/facts.tsv"
  write_helper
  export BCVAE_ROOT=$ROOT
fi
for name in "${STAGES[@]}"; do
  run_stage "$name"
  case ${STATUS[$name]} in
    ok | dry-run | not-selected) ;;
    skipped) [[ ${REASON[$name]} == --skip-install ]] || OVERALL_OK=false ;;
    *) OVERALL_OK=false ;;
  esac
done
((DRY)) && OVERALL_OK=null
write_summary
say "summary: $RESULTS/summary.json (ok: $OVERALL_OK)"
for name in "${STAGES[@]}"; do
  printf '  %-8s %-13s exit %-5s %6s s  %s\n' "$name" "${STATUS[$name]}" "${RC[$name]:--}" "${SECS[$name]:--}" \
    "${REASON[$name]:-${LOG[$name]:-}}"
done
if [[ -f $RESULTS/facts.tsv ]]; then
  sed 's/\t/ = /; s/^/  /' "$RESULTS/facts.tsv"
fi
if ((DRY == 0 && PACK == 1)); then pack; fi
[[ $OVERALL_OK != false ]]
