#!/usr/bin/env bash
# The shipped latent folders (space/models/ldm_class, guided, ldm_text) from the recipe's runs on the `vae8`
# first stage (issue 26): fp16 weights, the saved sampler and guidance scale, cards with the recipe command,
# hardware and wall time of every stage, and the first stage's own card and measurement in each vae/.
#
#   WORK=runs/fmnist bash train/ship_fashion_mnist.sh [ldm_class] [guided] [ldm_text]
#
# Run after `FIRST_STAGE=vae8 bash train/fashion_mnist_recipe.sh vae8 ldm_class classifier guided ldm_text` and
# `python benchmarks/eval_vae.py WORK/vae8 --json benchmarks/results/vae8.json`. Then the few-step steps
# (`python -m hf_ddm.few_step space/models/ldm_class --nfe 4 5 6 8 10`), the quality lanes
# (`bash benchmarks/quality_matrix.sh ...`) and their results into the cards (`ship_checkpoint.py --refresh
# FOLDER --eval ...`). Environment: WORK (the recipe's run folders), MODELS (where the folders go, default
# space/models), VAE_EVAL (the first stage's eval_vae JSON), GUIDED_SCALE, TEXT_SCALE (the default_guidance_scale
# the evaluations pick for guided and ldm_text; ldm_class keeps its training scale).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/fmnist}
MODELS=${MODELS:-space/models}
VAE="$WORK/vae8"
VAE_EVAL=${VAE_EVAL:-benchmarks/results/vae8.json}
SAMPLER='{"solver": "multistep", "time_grid": "uniform", "denoise_final": false}'
RECIPE="WORK=runs/fmnist FIRST_STAGE=vae8 bash train/fashion_mnist_recipe.sh"
HOW="one thread of a shared 2-core CPU per stage"
SHARED="first stage: \`vae/\` is the recipe's \`vae8\` VAE (32x32x1 -> 8x8x8), the same weights in ldm_class, ldm_text and guided; its card and measurement: \`vae/README.md\`"
FIRST=(--component_card vae="$VAE" --component_eval vae="$VAE_EVAL" --note "$SHARED")
ship() { python train/ship_checkpoint.py "$@" --scheduler "$SAMPLER"; }

for stage in "$@"; do
  case "$stage" in
    ldm_class)
      ship "$WORK/ldm_class_vae8" "$MODELS/ldm_class" --command "$RECIPE vae8 ldm_class ($HOW)" \
        --extra_runs "$VAE" "${FIRST[@]}" ;;
    guided)  # the class model's null branch steered by the noise-aware latent classifier
      ship "$WORK/guided_vae8" "$MODELS/guided" --default_guidance_scale "${GUIDED_SCALE:-8}" \
        --command "$RECIPE vae8 ldm_class classifier guided ($HOW; the unet is the class LDM's null-class branch)" \
        --extra_runs "$WORK/classifier_vae8" "$WORK/ldm_class_vae8" "$VAE" \
        --component_card vae="$VAE" classifier="$WORK/classifier_vae8" --component_eval vae="$VAE_EVAL" \
        --note "$SHARED" ;;
    ldm_text)
      ship "$WORK/ldm_text_vae8" "$MODELS/ldm_text" --default_guidance_scale "${TEXT_SCALE:-4}" \
        --command "$RECIPE vae8 ldm_text ($HOW)" --extra_runs "$VAE" "${FIRST[@]}" ;;
    *) echo "unknown folder $stage (ldm_class guided ldm_text)" >&2; exit 2 ;;
  esac
done
