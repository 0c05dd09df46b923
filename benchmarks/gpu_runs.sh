#!/usr/bin/env bash
# Full-length trainings side by side on one GPU, within one device call: each run trains until it
# ends or until SECONDS have passed; then every run still going gets SIGTERM, which makes the
# trainer checkpoint and stop (the next `bcvae train` with the same arguments resumes it exactly,
# on any device). Each run comes back as RESULTS/<name>.tar.gz (config, metrics.jsonl, checkpoint,
# summary; no W&B folder, no media), so a 10-minute call advances several runs at once.
#
# usage: bash benchmarks/gpu_runs.sh SECONDS NAME=EXPERIMENT:SEED[:MAX_STEPS] ...
#   RESULTS   where the tarballs and gpu_runs.log go (default: $OUT, else benchmarks/results/gpu-runs)
#   DEVICE    train.device (default cuda; cpu only to test this script)
#   EXTRA     further overrides for every run (default: strict float32, eager, no W&B, no final eval,
#             so the numbers compare with the CPU runs and are evaluated where they land)
#   RUNS      the runs folder (default: a new temporary one); unpacked tarballs there resume
#   FIT_BYTES checkpoints above this size are cut down before packing (default 14 MiB)
#   PART_BYTES if set, nothing is cut: a tarball above this size comes back as NAME.tar.gz.part00,
#             .part01, ... (join them: `cat NAME.tar.gz.part* > NAME.tar.gz`), so an unfinished
#             FactorVAE run (~52 MB) resumes here; 15M keeps one run within the 8 files and 64 MiB
# Example (benchmarks/README.md, "Full-length runs on a lent GPU"):
#   bash benchmarks/gpu_runs.sh 450 capacity25-seed2=capacity25:2 factorvae-seed3=factorvae:3:100000
set -uo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 2 && $1 =~ ^[0-9]+$ ]] || usage
seconds=$1; shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
RESULTS=${RESULTS:-${OUT:-benchmarks/results/gpu-runs}}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-train.amp=off train.compile=off log.wandb_mode=disabled log.progress=false eval.at_end=false eval.every_epochs=0}
PYTHON=${PYTHON:-python3}
runs=${RUNS:-$(mktemp -d)}  # RUNS: resume the runs already there (unpacked tarballs)
mkdir -p "$RESULTS"
logf=$RESULTS/gpu_runs.log
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
threads=$(( $(nproc) / $# )); (( threads >= 1 )) || threads=1

{
  date -u +"start %FT%TZ"
  nvidia-smi -L 2>&1 || true
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
        "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
} >>"$logf" 2>&1

pids=(); names=()
for spec in "$@"; do
  [[ $spec =~ ^([A-Za-z0-9_][A-Za-z0-9_.-]*)=([A-Za-z0-9_]+):([0-9]+)(:([0-9]+))?$ ]] || {
    echo "gpu_runs.sh: bad run '$spec' (NAME=EXPERIMENT:SEED[:MAX_STEPS])" >&2; exit 2; }
  name=${BASH_REMATCH[1]} exp=${BASH_REMATCH[2]} seed=${BASH_REMATCH[3]} steps=${BASH_REMATCH[5]}
  # shellcheck disable=SC2086  # EXTRA is a list of overrides
  "$PYTHON" -m bcvae train "$exp" "seed=$seed" "name=$name" "run_dir=$runs" "train.device=$DEVICE" \
    "train.threads=$threads" ${steps:+"train.max_steps=$steps"} $EXTRA >"$RESULTS/$name.log" 2>&1 &
  pids+=($!); names+=("$name")
done

# A file comes back only under 16 MiB. FactorVAE's discriminator (about 4M parameters) and its Adam
# moments make its checkpoint ~55 MB: a finished run drops them and keeps the VAE's part (~6 MB,
# what evaluation reads); an unfinished one comes back without its checkpoint.
fit() {
  [[ -f $1 ]] && (( $(stat -c %s "$1") > ${FIT_BYTES:-14 * 1024 * 1024} )) || return 0
  "$PYTHON" - "$1" <<'EOF'
import json, os, sys, torch
path = sys.argv[1]
ckpt = torch.load(path, map_location="cpu", weights_only=True)
summary = os.path.join(os.path.dirname(path), "summary.json")  # written when a run completes
if os.path.exists(summary) and json.load(open(summary))["step"] == ckpt["step"]:
    for key in ("disc", "disc_opt"):
        ckpt.pop(key, None)
    torch.save(ckpt, path)
    print(f"{path}: finished at step {ckpt['step']}; discriminator dropped (evaluates, cannot resume)")
else:
    os.remove(path)
    print(f"{path}: unfinished at step {ckpt['step']} and too large to return; dropped (metrics kept)")
EOF
}

deadline=$(( SECONDS + seconds ))
while (( SECONDS < deadline )); do
  alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  (( alive )) || break
  sleep 2
done
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done  # checkpoint at the next step, then stop
grace=$(( SECONDS + 60 ))  # a run that has not stopped by then loses the steps since its last checkpoint
for p in "${pids[@]}"; do
  while kill -0 "$p" 2>/dev/null && (( SECONDS < grace )); do sleep 1; done
  kill -KILL "$p" 2>/dev/null
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; rc=$?
  name=${names[$i]}
  last=$(tail -n 1 "$runs/$name/fold0/metrics.jsonl" 2>/dev/null | cut -c1-60)
  echo "$name: exit $rc after ${SECONDS}s; last metrics line: ${last:-none}" >>"$logf"
  tr '\r' '\n' <"$RESULTS/$name.log" | grep -v '^ *$' | tail -n 5 >>"$logf"
  mkdir -p "$runs/$name" && mv "$RESULTS/$name.log" "$runs/$name/train.log"  # $OUT returns 8 files at most
  [[ -n ${PART_BYTES:-} ]] || fit "$runs/$name/fold0/checkpoint.pt" >>"$logf" 2>&1
  tar czf "$RESULTS/$name.tar.gz" -C "$runs" --exclude=wandb --exclude=media "$name" 2>>"$logf"
  if [[ -n ${PART_BYTES:-} ]] && (( $(stat -c %s "$RESULTS/$name.tar.gz") > $(numfmt --from=iec "$PART_BYTES") )); then
    split -b "$PART_BYTES" -d -a 2 "$RESULTS/$name.tar.gz" "$RESULTS/$name.tar.gz.part" && rm "$RESULTS/$name.tar.gz"
    echo "$name: packed in $(ls "$RESULTS/$name".tar.gz.part* | wc -l) parts of at most $PART_BYTES" >>"$logf"
  fi
done
date -u +"end %FT%TZ" >>"$logf"
cat "$logf"
