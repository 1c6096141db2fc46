#!/usr/bin/env bash
# The shipped-model recipe (train/fashion_mnist_recipe.sh) on one GPU for a few minutes: each stage gets a
# wall-clock budget (--max_train_seconds) and a step count sized to it, with batches 4x the CPU recipe's,
# bf16 and TF32. The finished folders (EMA weights, no checkpoints) are packed as fp16 into a tar split
# into parts of at most 15 MiB, so that a machine which hands back only small files can return them:
#
#   bash train/gpu_recipe.sh OUT_DIR [stage ...]     stages: vae ldm_class classifier ldm_text sde
#   cat OUT_DIR/fmnist.tar.part-* | tar -x           # -> fmnist/<stage>/ (save_pretrained folders)
#
# Environment: DATA (IDX folder; default .data/fashion-mnist if present, else Debian's), WORK (run
# folders, default /tmp/fmnist_gpu), SECONDS_SCALE (multiplies every stage's budget; default 1), DRY=1 (the
# same commands at tiny sizes on the CPU, for tests). A stage that fails is reported and the rest go on
# (the latent stages need the vae stage's folder).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash train/gpu_recipe.sh OUT_DIR [stage ...]}
shift
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(vae ldm_class classifier ldm_text sde)
if [ -z "${DATA:-}" ]; then
  if [ -d .data/fashion-mnist ]; then DATA=.data/fashion-mnist; else DATA=/usr/share/datasets/fashion-mnist; fi
fi
WORK=${WORK:-/tmp/fmnist_gpu}
SSCALE=${SECONDS_SCALE:-1}
mkdir -p "$OUT" "$WORK"

# stage -> "budget seconds, STEPS_SCALE": steps sized so that each stage ends near its budget on an H200
# (about 5,000 img/s for the latent U-Nets and the VAE at these batches, bf16, no compile).
declare -A PLAN=(
  [vae]="75 0.3" [ldm_class]="60 0.1" [classifier]="30 0.09" [ldm_text]="60 0.08" [sde]="60 0.12"
)
if [ "${DRY:-0}" = 1 ]; then
  PLAN=([vae]="20 0.002" [ldm_class]="20 0.002" [classifier]="20 0.002" [ldm_text]="20 0.002" [sde]="20 0.0005")
  BATCH=0.0625 EXTRA=""
else
  BATCH=4 EXTRA="--mixed_precision bf16 --allow_tf32"
fi

status=0
for stage in "${stages[@]}"; do
  read -r budget scale <<< "${PLAN[$stage]:?unknown stage $stage}"
  budget=$(awk -v b="$budget" -v s="$SSCALE" 'BEGIN { print int(b * s) }')
  t0=$(date +%s)
  echo "== $stage: budget ${budget}s, STEPS_SCALE $scale, BATCH_SCALE $BATCH"
  if LAUNCH="${LAUNCH:-python3}" DATA="$DATA" WORK="$WORK" STEPS_SCALE="$scale" BATCH_SCALE="$BATCH" CKPT_STEPS=100000 WORKERS=4 \
      EXTRA_ARGS="$EXTRA --max_train_seconds $budget" bash train/fashion_mnist_recipe.sh "$stage" \
      > "$WORK/$stage.log" 2>&1; then
    echo "   done in $(( $(date +%s) - t0 ))s"
  else
    status=1
    echo "   FAILED after $(( $(date +%s) - t0 ))s; the end of its log:"
    tail -n 15 "$WORK/$stage.log"
  fi
  grep -h '"global_step"\|"train_seconds_this_run"\|"stopped_by_time_budget"\|"mean_loss_last_10"' \
    "$WORK/$stage/train_summary.json" 2>/dev/null | tr -d ' \n'; echo
done

# Pack: each finished folder without its checkpoints and logs, float32 weights as float16.
python3 - "$WORK" "$OUT" "${stages[@]}" <<'EOF'
import os, shutil, sys, tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

work, out, stages = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
pack = work / "pack" / "fmnist"
shutil.rmtree(pack, ignore_errors=True)
for stage in stages:
    src = work / stage
    if not (src / "train_summary.json").exists():
        continue
    shutil.copytree(src, pack / stage, ignore=shutil.ignore_patterns("checkpoint-*", "logs", "*.log", "validation*"))
for f in pack.rglob("*.safetensors"):
    tensors = load_file(f)
    save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}, f)
tar = out / "fmnist.tar"
with tarfile.open(tar, "w") as t:
    t.add(pack, arcname="fmnist")
data, part = tar.read_bytes(), 15 * 2**20
for i in range(0, len(data), part):
    (out / f"fmnist.tar.part-{i // part:02d}").write_bytes(data[i:i + part])
tar.unlink()
print("packed", sorted(p.name for p in out.glob("fmnist.tar.part-*")), f"{len(data) / 2**20:.1f} MiB")
EOF
exit $status
