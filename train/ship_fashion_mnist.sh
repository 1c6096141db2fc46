#!/usr/bin/env bash
# The shipped latent folders (space/models/ldm_class, guided, ldm_text) from the recipe's runs on the `vae8`
# first stage (issue 26): fp16 weights, the saved sampler and guidance scale, cards with the recipe command,
# hardware and wall time of every stage, and the first stage's own card and measurement in each vae/.
#
#   WORK=runs/fmnist bash train/ship_fashion_mnist.sh [ldm_class] [guided] [ldm_text]
#
# Run after `FIRST_STAGE=vae8 bash train/fashion_mnist_recipe.sh vae8 ldm_class ldm_class_more classifier guided
# ldm_text` (the shipped guided: CLASS_RUN=ldm_class_vae8_more, stage guided_unet, UNET_RUN=guided_unet_vae8; the
# shipped ldm_text: stages ldm_text_more ldm_text_more2 after ldm_text)
# and `python benchmarks/eval_vae.py WORK/vae8 --json benchmarks/results/vae8.json`. Then the few-step steps
# (`python -m hf_ddm.few_step space/models/ldm_class --nfe 4 5 6 8 10`), the quality lanes (`bash
# benchmarks/quality_matrix.sh ...`), their results into the cards (`ship_checkpoint.py --refresh FOLDER --eval
# ...`) and the cards' measured sections (`python train/card_sections.py FOLDER ...`). Environment: WORK (the
# recipe's run folders), CLASS_RUN and TEXT_RUN (below), MODELS (where the folders go, default space/models),
# VAE_EVAL (the first stage's eval_vae JSON), GUIDED_UNET (below), CLASS_SCALE, GUIDED_SCALE, TEXT_SCALE (the
# default_guidance_scale the evaluations pick for ldm_class, guided and ldm_text; without CLASS_SCALE ldm_class
# keeps its training scale), CLASS_INTERVAL, GUIDED_INTERVAL, TEXT_INTERVAL ("LOW HIGH": the
# default_guidance_interval they pick, HIGH inf for no upper end; unset: guidance at every noise level).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/fmnist}
MODELS=${MODELS:-space/models}
VAE="$WORK/vae8"
VAE_EVAL=${VAE_EVAL:-benchmarks/results/vae8.json}
SAMPLER='{"solver": "multistep", "time_grid": "uniform", "denoise_final": false}'
RECIPE="WORK=runs/fmnist FIRST_STAGE=vae8 bash train/fashion_mnist_recipe.sh"
HOW="a shared 2-core CPU, one thread per stage"
SHARED="first stage: \`vae/\` is the recipe's \`vae8\` VAE (32x32x1 -> 8x8x8), the same weights in ldm_class, ldm_text and guided; its card and measurement: \`vae/README.md\`"
FIRST=(--component_card vae="$VAE" --component_eval vae="$VAE_EVAL" --note "$SHARED")
ship() { python train/ship_checkpoint.py "$@" --scheduler "$SAMPLER"; }
interval() { [ -z "${1:-}" ] || { read -r low high <<< "$1"; echo "--default_guidance_interval $low $high"; }; }
# CLASS_RUN / TEXT_RUN: the class and text U-Net runs shipped -- the recipe's first runs (ldm_class_vae8,
# ldm_text_vae8; the default) or their continuations (ldm_class_vae8_more, ldm_text_vae8_more, and the text run's
# second continuation ldm_text_vae8_more2), which the cards then record with the runs they started from. guided
# steers the class run the recipe's guided stage was built from: run that stage with the same CLASS_RUN.
CLASS_RUN=${CLASS_RUN:-ldm_class_vae8}
TEXT_RUN=${TEXT_RUN:-ldm_text_vae8}
continued() {  # RUN BASE STAGE -> STAGES (the recipe stages that made RUN) and BEFORE (the run it continued)
  case "$1" in
    "$2") STAGES="$3"; BEFORE=() ;;
    "$2_more") STAGES="$3 ${3}_more"; BEFORE=("$WORK/$2") ;;
    "$2_more2") STAGES="$3 ${3}_more ${3}_more2"; BEFORE=("$WORK/$2_more" "$WORK/$2") ;;
    *) echo "unknown run $1 ($2, $2_more or $2_more2)" >&2; exit 2 ;;
  esac
}
continued "$CLASS_RUN" ldm_class_vae8 ldm_class; CLASS_STAGES=$STAGES; CLASS_BEFORE=("${BEFORE[@]}")
continued "$TEXT_RUN" ldm_text_vae8 ldm_text; TEXT_STAGES=$STAGES; TEXT_BEFORE=("${BEFORE[@]}")
CLASS_ENV=$([ "$CLASS_RUN" = ldm_class_vae8 ] && echo "" || echo "CLASS_RUN=$CLASS_RUN ")
# GUIDED_UNET: the U-Net guided steers -- unset, the class run's null-class branch; guided_unet_vae8, the recipe's
# guided_unet stage (that class U-Net continued on the null class alone), with the guided stage run with
# UNET_RUN=guided_unet_vae8
case "${GUIDED_UNET:-}" in
  "") GUIDED_ENV=$CLASS_ENV; GUIDED_STAGES="$CLASS_STAGES classifier guided"; GUIDED_RUNS=()
      GUIDED_UNET_IS="the unet is the class LDM's null-class branch" ;;
  guided_unet_vae8) GUIDED_ENV="${CLASS_ENV}UNET_RUN=$GUIDED_UNET "
      GUIDED_STAGES="$CLASS_STAGES guided_unet classifier guided"; GUIDED_RUNS=("$WORK/$GUIDED_UNET")
      GUIDED_UNET_IS="both threads for guided_unet; the unet is the class U-Net continued on the null class alone" ;;
  *) echo "unknown GUIDED_UNET $GUIDED_UNET (unset or guided_unet_vae8)" >&2; exit 2 ;;
esac

for stage in "$@"; do
  case "$stage" in
    ldm_class)
      ship "$WORK/$CLASS_RUN" "$MODELS/ldm_class" --command "$RECIPE vae8 $CLASS_STAGES ($HOW)" \
        ${CLASS_SCALE:+--default_guidance_scale "$CLASS_SCALE"} $(interval "${CLASS_INTERVAL:-}") --extra_runs "${CLASS_BEFORE[@]}" "$VAE" "${FIRST[@]}" ;;
    guided)  # an unconditional U-Net (GUIDED_UNET) steered by the noise-aware latent classifier
      ship "$WORK/guided_vae8" "$MODELS/guided" --default_guidance_scale "${GUIDED_SCALE:-8}" \
        $(interval "${GUIDED_INTERVAL:-}") \
        --command "$GUIDED_ENV$RECIPE vae8 $GUIDED_STAGES ($HOW; $GUIDED_UNET_IS)" \
        --extra_runs "${GUIDED_RUNS[@]}" "$WORK/classifier_vae8" "$WORK/$CLASS_RUN" "${CLASS_BEFORE[@]}" "$VAE" \
        --component_card vae="$VAE" classifier="$WORK/classifier_vae8" --component_eval vae="$VAE_EVAL" \
        --note "$SHARED" ;;
    ldm_text)
      ship "$WORK/$TEXT_RUN" "$MODELS/ldm_text" --default_guidance_scale "${TEXT_SCALE:-4}" \
        $(interval "${TEXT_INTERVAL:-}") \
        --command "$RECIPE vae8 $TEXT_STAGES ($HOW)" --extra_runs "${TEXT_BEFORE[@]}" "$VAE" "${FIRST[@]}" ;;
    *) echo "unknown folder $stage (ldm_class guided ldm_text)" >&2; exit 2 ;;
  esac
done
