#!/usr/bin/env bash
# Peers side by side (issue 23, part 1): one arm end to end -- train (resumable), sample, score on val.
#   bash benchmarks/peers/setup_env.sh                       # once: the peers' own environment
#   RUN_ROOT=../bg-runs/peers bash benchmarks/peers/run.sh monai     # arms: ours diffusers_example monai lucidrains
#   .venv/bin/python benchmarks/peers/table.py              # results/peers/*.json -> README table
# Budget: 60 CPU-minutes of training per arm on one thread (OMP_NUM_THREADS=1). Steps are fixed in advance from each
# arm's probed CPU seconds per step (STEPS below, probe: peers.py probe ARM); the CPU time each arm really used is
# measured (/usr/bin/time, summed over resumed segments) and reported beside it.
# Scores: every arm's own default sampler at 20 steps on N = 1,712 (the whole val split) and at its default steps
# (1,000 for the DDPM peers) on N = DEFAULT_N (256: 1,000 steps x 1,712 images would cost ~2 CPU-hours per arm),
# plus DDIM 20 for the tools whose default sampler is DDPM; per-image sampling time on one thread.
# PARTS=2 samples a peer's N in 2 one-thread processes at once (where N is a multiple of 128 x PARTS; other N's in
# one process): each 128-image batch is seeded from its index, so the images are the ones a single process makes;
# the time reported is the parts' sum.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${MEDMNIST_ROOT:-}" ] || [ ! -f ../shared/data/bloodmnist.npz ] || export MEDMNIST_ROOT=$(cd ../shared/data && pwd)
: "${MEDMNIST_ROOT:?set MEDMNIST_ROOT to the folder that holds bloodmnist.npz}"
export MEDMNIST_ROOT OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1
ARM=$1
ROOT=${RUN_ROOT:-../bg-runs/peers}
RUN=$ROOT/$ARM
PY=${PEERS_ENV:-../bg-runs/peers-env}/bin/python
OUT=benchmarks/results/peers
DEFAULT_N=${DEFAULT_N:-256}
PARTS=${PARTS:-1}
[[ $PARTS =~ ^[1-9][0-9]*$ ]] || { echo "PARTS must be a whole number >= 1 (sampling processes); got '$PARTS'" >&2; exit 2; }
# CPU seconds per step on one idle thread (probe) -> steps for 3,600 CPU-seconds.
case $ARM in
  ours) STEPS=5100 ;;               # 0.717 s/step (tiny, batch 128, bf16 auto; 120- minus 20-step run)
  diffusers_example) STEPS=20000 ;; # ~0.18 s/step (batch 16; tqdm rate of a one-epoch run): 27 epochs of 748 steps = 20,196
  monai) STEPS=2130 ;;              # 1.692 s/step (batch 128; attention at 14 x 14 and 7 x 7)
  lucidrains) STEPS=10480 ;;        # 0.3435 s/step (batch 16)
  *) echo "unknown arm '$ARM'; the arms are: ours diffusers_example monai lucidrains" >&2; exit 2 ;;
esac
mkdir -p "$RUN" "$OUT"
if [ ! -f "$RUN/.trained" ]; then
  if [ "$ARM" = ours ]; then
    CMD=(.venv/bin/python train_unconditional.py --output_dir "$RUN" --no-class_conditional --max_train_steps $STEPS
         --checkpointing_steps 500 --checkpoints_total_limit 2 --resume_from_checkpoint latest --num_sample_images 0
         --logger none --seed 0)
  else
    CMD=("$PY" benchmarks/peers/peers.py train "$ARM" --run "$RUN" --steps $STEPS)
  fi
  # user / system / wall seconds of this segment (children included), one line per resumed segment
  /usr/bin/time -f "%U %S %e" -a -o "$RUN/cpu_segments.txt" "${CMD[@]}"
  touch "$RUN/.trained"
fi
CPU_S=$(awk '/^[0-9.]+ [0-9.]+ [0-9.]+$/ {s += $1 + $2} END {print s}' "$RUN/cpu_segments.txt")
WALL_S=$(awk '/^[0-9.]+ [0-9.]+ [0-9.]+$/ {s += $3} END {print s}' "$RUN/cpu_segments.txt")

score() {  # NAME STEPS SCHEDULER N
  local name=$1 steps=$2 sched=$3 n=$4 npz=$RUN/samples_$1.npz
  [ -f "$OUT/${ARM}_$name.json" ] && return 0
  if [ ! -f "$npz" ]; then
    if [ "$ARM" = ours ]; then
      local t0=$(date +%s.%N)
      .venv/bin/medgen sample "$RUN" --num-images "$n" --seed 0 --out "$npz" >/dev/null
      python3 -c "import json,sys; s=float(sys.argv[1]); n=int(sys.argv[2]); print(json.dumps({'arm':'ours','sampler_steps':20,'scheduler':'own','num':n,'seed':0,'seconds':round(s,1),'seconds_per_image':round(s/n,4),'threads':1}))" \
        "$(echo "$(date +%s.%N) - $t0" | bc)" "$n" > "${npz%.npz}.json"
    elif [ "$PARTS" -gt 1 ] && [ $((n % (128 * PARTS))) -eq 0 ]; then
      local per=$((n / PARTS)) p pids=()
      for p in $(seq 0 $((PARTS - 1))); do  # part p = batches starting at p*per: seed 0 + start, as in one process
        "$PY" benchmarks/peers/peers.py sample "$ARM" --run "$RUN" --steps "$steps" --scheduler "$sched" --num $per \
          --seed $((p * per)) --out "${npz%.npz}.part$p.npz" &
        pids+=($!)
      done
      for p in "${pids[@]}"; do wait "$p"; done  # a failed part stops the arm (set -e) before any merge
      "$PY" - "$npz" "$PARTS" <<'MERGE'
import json, sys
import numpy as np
out, parts = sys.argv[1], int(sys.argv[2])
names = [out[:-4] + f".part{p}" for p in range(parts)]
info = [json.load(open(n + ".json")) for n in names]
images = np.concatenate([np.load(n + ".npz")["images"] for n in names])
np.savez_compressed(out, images=images)
seconds = sum(i["seconds"] for i in info)
json.dump(dict(info[0], num=len(images), seed=0, seconds=round(seconds, 1),
               seconds_per_image=round(seconds / len(images), 4), parts=parts,
               wall_seconds=max(i["seconds"] for i in info)), open(out[:-4] + ".json", "w"))
MERGE
    else
      "$PY" benchmarks/peers/peers.py sample "$ARM" --run "$RUN" --steps "$steps" --scheduler "$sched" --num "$n" --out "$npz"
    fi
  fi
  local params
  params=$([ "$ARM" = ours ] && echo 1063651 || "$PY" benchmarks/peers/peers.py params | python3 -c "import json,sys; print(json.load(sys.stdin)['$ARM'])")
  .venv/bin/python benchmarks/peers/score.py "$npz" --out "$OUT/${ARM}_$name.json" --extra "$(python3 -c "
import json; print(json.dumps({'arm': '$ARM', 'row': '$name', 'train_steps': $STEPS, 'train_cpu_s': $CPU_S,
 'train_wall_s': $WALL_S, 'parameters': $params, 'threads': 1}))")"
}
score own20 20 own 1712
# lucidrains' own sampler below 1,000 steps is DDIM already; ours: its default sampler is the 20-step one
[ "$ARM" = lucidrains ] || [ "$ARM" = ours ] || score ddim20 20 ddim 1712
score own20_n$DEFAULT_N 20 own "$DEFAULT_N"
[ "$ARM" = ours ] || score own1000_n$DEFAULT_N 1000 own "$DEFAULT_N"
