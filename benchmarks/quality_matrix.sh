#!/usr/bin/env bash
# The README's quality table: every shipped checkpoint under a few samplers and step counts, beside the
# train-vs-test floor at the same N. Single-threaded lanes run side by side (the pixel models are the
# slow part); results land in benchmarks/results/quality/*.json, the table in benchmarks/results/quality.md and
# sample grids (the measured samples) in benchmarks/results/grids/.
#
#   bash benchmarks/quality_matrix.sh            # about 80 min on 2 CPU cores
#   bash benchmarks/quality_matrix.sh ddpm ldm   # some lanes (floor ldm few_step ldm_n10k ldm_text ldm_text_n10k guided
#                                                # guided_n10k interval grids ddpm sde sde_em; table: none; the
#                                                # interval lane is interval_class interval_guided interval_text); the
#                                                # table is rebuilt from every JSON present
#
# Environment: MODELS (the folders measured, default space/models), RESULTS (where quality/, grids/ and quality.md
# go, default benchmarks/results), DRY_RUN (1: each lane's log gets its eval_quality.py arguments, shell-quoted,
# instead of running them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${RESULTS:-benchmarks/results}
R=$OUT/quality
G=$OUT/grids
M=${MODELS:-space/models}
mkdir -p "$R" "$G"
E() {
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' --threads 1 "$@"; echo; return; fi
  OMP_NUM_THREADS=1 python benchmarks/eval_quality.py --threads 1 "$@"
}
# Guidance at every noise level, whatever interval a folder saves (rows written before --guidance_interval
# existed record commands without it: they guided at every level too).
EVERY=(--guidance_interval 0 inf)
SAVED=(--scheduler sde-multistep --scheduler_kwargs '{"time_grid": "uniform", "denoise_final": false}' --steps 25)

lane_floor() {
  for n in 500 1000 2000 10000; do E --floor --num_samples $n --json $R/floor_n$n.json; done
}
lane_ldm() {
  for w in 1 2 3 6; do
    E $M/ldm_class --scheduler vp-ddim --steps 25 --guidance_scale $w "${EVERY[@]}" --num_samples 2000 \
      --json $R/ldm_class_ddim25_w$w.json
  done
  for n in 10 25; do  # the saved scheduler: DPM-Solver++(2M), steps uniform in t
    E $M/ldm_class --scheduler sde-multistep --scheduler_kwargs '{"time_grid": "uniform", "denoise_final": false}' \
      --steps $n --guidance_scale 3 "${EVERY[@]}" --num_samples 2000 --json $R/ldm_class_sdeuniform${n}_w3.json
  done
  for w in 2 2.5 4; do
    E $M/ldm_class --scheduler sde-multistep --scheduler_kwargs '{"time_grid": "uniform", "denoise_final": false}' \
      --steps 25 --guidance_scale $w "${EVERY[@]}" --num_samples 2000 --json $R/ldm_class_sdeuniform25_w$w.json
  done
}
lane_few_step() {  # the folder's optimized steps (set_timesteps(N) runs them; calibrated at its scale and interval)
                  # and diffusers' best at NFE 5, at the folder's scale and interval
  local w g; w=$(default_scale ldm_class); g=$(interval_tag ldm_class)
  for n in 5 10; do
    E $M/ldm_class --steps $n --guidance_scale "$w" --num_samples 2000 --json $R/ldm_class_opt${n}_w$w$g.json
  done
  E $M/ldm_class --scheduler DEISMultistepScheduler --scheduler_kwargs '{"solver_order": 2, "timestep_spacing": "leading"}' \
    --steps 5 --guidance_scale "$w" --num_samples 2000 --json $R/ldm_class_deis2leading5_w$w$g.json
}
lane_ldm_n10k() {  # the headline row: the saved sampler at the folder's scale and interval, N = 10,000; beside it
                  # every level at w = 3 (the lowest scale that meets the accuracy target so) and 2.5
  E $M/ldm_class "${SAVED[@]}" --guidance_scale "$(default_scale ldm_class)" --num_samples 10000 \
    --json $R/ldm_class_sdeuniform25_w$(default_scale ldm_class)$(interval_tag ldm_class)_n10k.json
  for w in 3 2.5; do
    E $M/ldm_class "${SAVED[@]}" --guidance_scale $w "${EVERY[@]}" --num_samples 10000 \
      --json $R/ldm_class_sdeuniform25_w${w}_n10k.json
  done
}
default_scale() { python -c "import json, sys; print(f\"{json.load(open(sys.argv[1]))['default_guidance_scale']:g}\")" "$M/$1/model_index.json"; }
interval_tag() {  # _giLOW-HIGH for a folder's default_guidance_interval (HIGH inf: no upper end); nothing without one
  python -c "import json, sys; i = json.load(open(sys.argv[1])).get('default_guidance_interval')
print('' if not i else f\"_gi{i[0]:g}-{'inf' if i[1] is None else format(i[1], 'g')}\")" "$M/$1/model_index.json"
}
lane_guided_n10k() {  # the headline row: the saved sampler at the folder's scale and interval, N = 10,000
  local s; s=$(default_scale guided)
  E $M/guided "${SAVED[@]}" --guidance_scale "$s" --num_samples 10000 \
    --json $R/guided_sdeuniform25_s${s}$(interval_tag guided)_n10k.json
}
lane_ldm_text_n10k() {  # the headline row: the saved sampler at the folder's scale and interval, N = 10,000
  local w; w=$(default_scale ldm_text)
  E $M/ldm_text "${SAVED[@]}" --guidance_scale "$w" --num_samples 10000 \
    --json $R/ldm_text_sdeuniform25_w${w}$(interval_tag ldm_text)_n10k.json
}
lane_interval() {  # guidance in an interval of noise levels: the sweeps that chose each folder's default interval
  lane_interval_class; lane_interval_guided; lane_interval_text
}
lane_interval_class() {
  for c in "3 0 5" "3.5 0 5" "4 0 5" "4 0.3 5" "3 0 8" "4 0 4" "4.5 0 4" "5 0 3" "6 0 2.5"; do
    set -- $c
    E $M/ldm_class "${SAVED[@]}" --guidance_scale $1 --guidance_interval $2 $3 --num_samples 2000 \
      --json $R/ldm_class_sdeuniform25_w$1_gi$2-$3.json
  done
}
lane_interval_guided() {
  for c in "3 0 20" "5 0 20" "8 0 20" "10 0 20" "12 0 20" "14 0 20" "5 0 10" "8 0 10" "14 0 10" "5 0 5" "8 0 5"; do
    set -- $c
    E $M/guided "${SAVED[@]}" --guidance_scale $1 --guidance_interval $2 $3 --num_samples 1000 \
      --json $R/guided_sdeuniform25_s$1_gi$2-$3.json
  done
}
lane_interval_text() {  # N = 2,000 where the trade sits on the targets
  for c in "4 0 3.5" "4 0 3.75" "4 0 4" "4.25 0 3.5" "4.5 0 3.5"; do
    set -- $c
    E $M/ldm_text "${SAVED[@]}" --guidance_scale $1 --guidance_interval $2 $3 --num_samples 2000 \
      --json $R/ldm_text_sdeuniform25_w$1_gi$2-$3_n2000.json
  done
}
lane_guided() {  # classifier scale s = 0 ignores the classifier
  for s in 0 1 3 10; do
    E $M/guided --scheduler vp-ddim --steps 25 --guidance_scale $s "${EVERY[@]}" --num_samples 1000 \
      --json $R/guided_ddim25_s$s.json
  done
  for s in 6 8 10 14; do  # the saved scheduler at every level (the default scale and interval: lane interval_guided)
    E $M/guided --scheduler sde-multistep --scheduler_kwargs '{"time_grid": "uniform", "denoise_final": false}' \
      --steps 25 --guidance_scale $s "${EVERY[@]}" --num_samples 1000 --json $R/guided_sdeuniform25_s$s.json
  done
}
lane_grids() {  # 100 samples each at the folder's scale and interval; column j is class j for the conditional models
  E $M/ldm_class --scheduler vp-ddim --steps 25 --guidance_scale "$(default_scale ldm_class)" --num_samples 100 \
    --grid $G/ldm_class.png --json $R/grid_ldm_class.json
  E $M/guided --scheduler vp-ddim --steps 25 --guidance_scale "$(default_scale guided)" --num_samples 100 \
    --grid $G/guided.png --json $R/grid_guided.json
}
lane_ldm_text() {
  E $M/ldm_text --scheduler vp-ddim --steps 25 --guidance_scale 3 "${EVERY[@]}" --num_samples 500 --grid $G/ldm_text.png \
    --json $R/ldm_text_ddim25_w3.json
  E $M/ldm_text --scheduler vp-ddim --steps 25 --guidance_scale 3 "${EVERY[@]}" --num_samples 1000 \
    --json $R/ldm_text_ddim25_w3_n1000.json
  for w in 2 3 4; do  # the saved scheduler at every level (the default scale and interval: lane interval_text)
    E $M/ldm_text --scheduler sde-multistep --scheduler_kwargs '{"time_grid": "uniform", "denoise_final": false}' \
      --steps 25 --guidance_scale $w "${EVERY[@]}" --num_samples 1000 --json $R/ldm_text_sdeuniform25_w${w}_n1000.json
  done
}
lane_ddpm() {  # the shipped ddpm (H200); ddpm_cpu_*.json are the replaced 0.1 CPU checkpoint's rows
  E $M/ddpm --scheduler sde-multistep --steps 20 --num_samples 1000 --json $R/ddpm_gpu_multistep20.json
}
lane_sde() {
  E $M/sde --scheduler sde-multistep --steps 10 --num_samples 1000 --json $R/sde_multistep10.json
  E $M/sde --scheduler sde-multistep --steps 25 --num_samples 1000 --json $R/sde_multistep25.json
  E $M/sde --scheduler sde-ode_heun --steps 25 --num_samples 1000 --nll_samples 50 --grid $G/sde.png \
    --json $R/sde_heun25.json
}
lane_table() { :; }  # nothing sampled: `quality_matrix.sh table` rebuilds quality.md from the JSONs present
lane_sde_em() {  # the reverse SDE: many steps, a lane of its own
  E $M/sde --scheduler sde-euler_maruyama --steps 100 --num_samples 500 --json $R/sde_em100.json
  E $M/sde --scheduler sde-euler_maruyama --steps 250 --num_samples 500 --json $R/sde_em250.json
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(floor ldm few_step ldm_n10k ldm_text ldm_text_n10k guided guided_n10k interval grids ddpm
                                  sde sde_em)
pids=()
for s in "${stages[@]}"; do "lane_$s" > "$R/lane_$s.log" 2>&1 & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
shopt -s nullglob
files=()
for g in floor_n ldm_class_ ldm_text_ guided_ ddpm_ sde_; do m=("$R/$g"*.json); [ ${#m[@]} -gt 0 ] && files+=($(ls -v "${m[@]}")); done
python benchmarks/quality_table.py "${files[@]}" > "$OUT/quality.md"
cat "$OUT/quality.md"
