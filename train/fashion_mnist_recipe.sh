#!/usr/bin/env bash
# The shipped Fashion-MNIST checkpoints (issue 6), trained with the project's own scripts.
#
#   bash train/fashion_mnist_recipe.sh [stage ...]   stages: vae vae8 ldm_class ldm_class_more classifier guided_unet
#                                                    guided ldm_text ldm_text_more ldm_text_more2 vae_decoder ddpm sde
#
# Environment: DATA (IDX folder, default /usr/share/datasets/fashion-mnist), WORK (run folders, default
# ./runs/fmnist), FIRST_STAGE (the VAE run the latent stages use: vae, the default, or vae8), CLASS_RUN (the
# class LDM run `guided_unet` continues: default ldm_class, or ldm_class_vae8 with FIRST_STAGE=vae8; the shipped
# one continued ldm_class_vae8_more), UNET_RUN (the run whose U-Net `guided` steers: default CLASS_RUN, whose
# null-class branch is unconditional; the shipped guided steers guided_unet_vae8), STEPS_SCALE (multiplies every
# step count, warm-up, discriminator start and validation interval; 1 = the shipped run), BATCH_SCALE (multiplies every batch size; default 1),
# LR_SCALE (multiplies every learning rate; default 1 -- e.g. sqrt(BATCH_SCALE) with large batches), LAUNCH
# (default "python"; e.g. "accelerate launch --mixed_precision bf16" on a GPU), WORKERS (data loader workers,
# default 0), CKPT_STEPS (checkpoint interval, default 500), EXTRA_ARGS (flags added to every training run, e.g.
# "--allow_tf32"). Images are 28x28 padded with the background to 32x32 (--image_fit pad), which is also
# what benchmarks/eval_quality.py's reference network sees. Every run resumes from its last complete
# checkpoint when restarted (with the same STEPS_SCALE / BATCH_SCALE: they set the LR schedule).
#
# On one GPU, e.g. (about 8 minutes a stage on an H200; bigger batches, fewer steps):
#   LAUNCH="accelerate launch --num_processes 1 --mixed_precision bf16" BATCH_SCALE=8 STEPS_SCALE=2 \
#     WORKERS=4 WORK=/data/fmnist bash train/fashion_mnist_recipe.sh vae ldm_class classifier guided ldm_text
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
WORK=${WORK:-runs/fmnist}
SCALE=${STEPS_SCALE:-1}
BSCALE=${BATCH_SCALE:-1}
LRSCALE=${LR_SCALE:-1}
LAUNCH=${LAUNCH:-python}
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
steps() { awk -v a="$1" -v s="$SCALE" 'BEGIN { v = int(a * s); print (v < 1 ? 1 : v) }'; }  # step counts
start() { awk -v a="$1" -v s="$SCALE" 'BEGIN { print int(a * s) }'; }  # step indices that may be 0
batch() { awk -v a="$1" -v s="$BSCALE" 'BEGIN { v = int(a * s); print (v < 1 ? 1 : v) }'; }
lr() { awk -v a="$1" -v s="$LRSCALE" 'BEGIN { printf "%.6g\n", a * s }'; }
COMMON=(--data_dir "$DATA" --channels 1 --resolution 32 --image_fit pad --seed 0
        --checkpointing_steps "${CKPT_STEPS:-500}" --checkpoints_total_limit 2 --resume_from_checkpoint latest
        --dataloader_num_workers "${WORKERS:-0}" "${EXTRA[@]}")
# one latent cache for the latent stages: its file name is a hash of the VAE's weights and the data.
# FIRST_STAGE (default vae): the first-stage run the latent stages encode with; another one (vae8) keeps its
# latent models apart (ldm_class_vae8, classifier_vae8, guided_vae8, ldm_text_vae8).
FIRST_STAGE=${FIRST_STAGE:-vae}
ON=$([ "$FIRST_STAGE" = vae ] && echo "" || echo "_$FIRST_STAGE")
LATENT=(--vae_path "$WORK/$FIRST_STAGE" --latent_cache_dir "$WORK/latent_cache")
mkdir -p "$WORK"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(vae ldm_class classifier guided ldm_text vae_decoder)

for stage in "${stages[@]}"; do
  case "$stage" in
    vae)  # 32x32x1 -> 4x8x8 latents. The LDM first stage: reconstruction NLL (Gaussian, std 0.1) + 1e-6 KL, and
          # from 1/3 of the run a PatchGAN hinge discriminator with taming's adaptive weight (sharp, not blurry)
      $LAUNCH train/train_vae.py "${COMMON[@]}" --block_out_channels 32,64,64 --layers_per_block 1 \
        --latent_channels 4 --no_mid_block_attention --norm_num_groups 16 --train_batch_size "$(batch 64)" \
        --kl_weight 1e-6 --disc_weight 0.5 --disc_start "$(start 2000)" --disc_channels 64 \
        --max_train_steps "$(steps 6000)" --learning_rate "$(lr 2e-4)" --lr_warmup_steps "$(start 100)" \
        --lr_scheduler cosine --validation_steps "$(steps 2000)" --output_dir "$WORK/vae" ;;
    vae8)  # issue 26's first stage: 32x32x1 -> 8x8x8 latents (twice the numbers of `vae`, same latent grid, so a
           # U-Net on it costs the same per step), wider and 4x longer. The run was planned for 12,000 steps with
           # the adversarial term from 4,000; its curve (benchmarks/results/vae8_curve.md) measured reconstruction
           # FD 0.66 at step 4,000 and 1.07-1.51 after the term started, so the shipped first stage is step 4,000
           # of that schedule (--stop_at_step; the other flags are the run's, so it reproduces bit for bit)
      $LAUNCH train/train_vae.py "${COMMON[@]}" --block_out_channels 48,96,96 --layers_per_block 1 \
        --latent_channels 8 --no_mid_block_attention --norm_num_groups 16 --train_batch_size "$(batch 64)" \
        --kl_weight 1e-6 --disc_weight 0.5 --disc_start "$(start 4000)" --disc_channels 64 \
        --max_train_steps "$(steps 12000)" --stop_at_step "$(steps 4000)" --learning_rate "$(lr 2e-4)" \
        --lr_warmup_steps "$(start 200)" --lr_scheduler cosine --validation_steps "$(steps 2000)" \
        --output_dir "$WORK/vae8" ;;
    vae_decoder)  # Stability's ft-MSE/ft-EMA step: the decoder alone, a gentle adversarial term from step 0 (weight
                  # 0.5 at 1e-4 left checkerboard artefacts), encoder (so the latents and every latent model trained
                  # on them) frozen. Ship it into the latent folders with
                  # train/ship_checkpoint.py --refresh space/models/NAME --vae "$WORK/vae_decoder" --command ...
      $LAUNCH train/train_vae.py "${COMMON[@]}" --pretrained_model_path "$WORK/vae" --train_decoder_only \
        --disc_weight 0.1 --disc_start 0 --disc_channels 64 --train_batch_size "$(batch 64)" \
        --max_train_steps "$(steps 500)" --learning_rate "$(lr 3e-5)" --lr_warmup_steps "$(start 20)" \
        --lr_scheduler cosine --validation_steps "$(steps 500)" --output_dir "$WORK/vae_decoder" ;;
    ldm_class)  # class-conditional latent U-Net, classifier-free guidance (10% null class)
      $LAUNCH train/train_ldm.py "${COMMON[@]}" "${LATENT[@]}" --conditioning class \
        --block_out_channels 64,128 --layers_per_block 2 --attention_levels 1 --attention_head_dim 32 \
        --scheduler vp --prediction_type epsilon --cond_drop_prob 0.1 --train_batch_size "$(batch 128)" \
        --max_train_steps "$(steps 6000)" --learning_rate "$(lr 3e-4)" --lr_warmup_steps "$(start 200)" \
        --lr_scheduler cosine --use_ema --validation_steps "$(steps 2000)" --num_inference_steps 25 \
        --guidance_scale 3 --output_dir "$WORK/ldm_class$ON" ;;
    ldm_class_more)  # the class U-Net continued: its loss still fell at the end of the cosine schedule (0.0510
                     # over steps 4-5k, 0.0503 over 5-6k on vae8), so a second cosine run from its EMA weights
      $LAUNCH train/train_ldm.py "${COMMON[@]}" "${LATENT[@]}" --conditioning class \
        --pretrained_model_path "$WORK/ldm_class$ON" --scheduler vp --prediction_type epsilon --cond_drop_prob 0.1 \
        --train_batch_size "$(batch 128)" --max_train_steps "$(steps 6000)" --learning_rate "$(lr 1e-4)" \
        --lr_warmup_steps "$(start 100)" --lr_scheduler cosine --use_ema --validation_steps "$(steps 2000)" \
        --num_inference_steps 25 --guidance_scale 3 --output_dir "$WORK/ldm_class${ON}_more" ;;
    ldm_text)  # text-conditional latent U-Net: a small CLIP text encoder trained jointly, captions that name the
               # class in several phrasings (one per example per epoch), classifier-free guidance (10% empty)
      $LAUNCH train/train_ldm.py "${COMMON[@]}" "${LATENT[@]}" --conditioning text --caption_style varied \
        --block_out_channels 64,128 --layers_per_block 2 --attention_levels 0,1 --attention_head_dim 32 \
        --text_hidden_size 128 --text_layers 2 --text_heads 4 --text_max_length 16 \
        --scheduler vp --prediction_type epsilon --cond_drop_prob 0.1 --train_batch_size "$(batch 128)" \
        --max_train_steps "$(steps 8000)" --learning_rate "$(lr 3e-4)" --lr_warmup_steps "$(start 200)" \
        --lr_scheduler cosine --use_ema --validation_steps "$(steps 2000)" --num_inference_steps 25 \
        --guidance_scale 3 --validation_prompts "a photo of a sneaker" "an ankle boot" "a picture of a handbag" \
        "a pair of trousers" "an image of a dress" "a coat" "a photo of a T-shirt/top" "a sandal" \
        --output_dir "$WORK/ldm_text$ON" ;;
    ldm_text_more)  # the text U-Net and its text encoder continued the same way (the class U-Net's second run took
                    # FD-inf 2.29 -> 1.37 at N = 1,000; the text model sits further from its target)
      $LAUNCH train/train_ldm.py "${COMMON[@]}" "${LATENT[@]}" --conditioning text --caption_style varied \
        --pretrained_model_path "$WORK/ldm_text$ON" --scheduler vp --prediction_type epsilon --cond_drop_prob 0.1 \
        --train_batch_size "$(batch 128)" --max_train_steps "$(steps 6000)" --learning_rate "$(lr 1e-4)" \
        --lr_warmup_steps "$(start 100)" --lr_scheduler cosine --use_ema --validation_steps "$(steps 2000)" \
        --num_inference_steps 25 --guidance_scale 3 --validation_prompts "a photo of a sneaker" "an ankle boot" \
        "a picture of a handbag" "a pair of trousers" "an image of a dress" "a coat" "a photo of a T-shirt/top" \
        "a sandal" --output_dir "$WORK/ldm_text${ON}_more" ;;
    ldm_text_more2)  # issue 26: a third, gentler cosine run of the text U-Net (half ldm_text_more's rate) from
                     # ldm_text_more's EMA weights: its loss still fell (0.0462 over steps 7-8k, 0.0455 over 12-13k)
                     # while its FD-inf at N = 1,000 hovered at 2.3-2.4, and ldm_text missed its targets by 0.02 FD-inf
      $LAUNCH train/train_ldm.py "${COMMON[@]}" "${LATENT[@]}" --conditioning text --caption_style varied \
        --pretrained_model_path "$WORK/ldm_text${ON}_more" --scheduler vp --prediction_type epsilon \
        --cond_drop_prob 0.1 --train_batch_size "$(batch 128)" --max_train_steps "$(steps 3000)" \
        --learning_rate "$(lr 5e-5)" --lr_warmup_steps "$(start 100)" --lr_scheduler cosine --use_ema \
        --validation_steps "$(steps 1000)" --num_inference_steps 25 --guidance_scale 4 --validation_prompts \
        "a photo of a sneaker" "an ankle boot" "a picture of a handbag" "a pair of trousers" "an image of a dress" \
        "a coat" "a photo of a T-shirt/top" "a sandal" --output_dir "$WORK/ldm_text${ON}_more2" ;;
    guided_unet)  # guided's own unconditional U-Net (issue 26): the class U-Net (CLASS_RUN) continued on the null
                  # class alone (--cond_drop_prob 1). Its null branch had seen a tenth of the class runs' batches
                  # (FD-inf 7.6 unguided with DDIM, the class branch 4.0 at w = 1); validation grids at w = 0
                  # show that branch
      $LAUNCH train/train_ldm.py "${COMMON[@]}" "${LATENT[@]}" --conditioning class \
        --pretrained_model_path "$WORK/${CLASS_RUN:-ldm_class$ON}" --scheduler vp --prediction_type epsilon \
        --cond_drop_prob 1 --train_batch_size "$(batch 128)" --max_train_steps "$(steps 3000)" \
        --learning_rate "$(lr 1e-4)" --lr_warmup_steps "$(start 100)" --lr_scheduler cosine --use_ema \
        --validation_steps "$(steps 1000)" --num_inference_steps 25 --guidance_scale 0 \
        --output_dir "$WORK/guided_unet$ON" ;;
    classifier)  # noise-aware classifier on the same VP process, in the same latent space
      $LAUNCH train/train_classifier.py "${COMMON[@]}" "${LATENT[@]}" --scheduler vp \
        --block_out_channels 64,128 --layers_per_block 1 --attention_levels 1 --attention_head_dim 32 \
        --train_batch_size "$(batch 128)" --max_train_steps "$(steps 3000)" --learning_rate "$(lr 3e-4)" \
        --lr_warmup_steps "$(start 100)" --lr_scheduler cosine --validation_steps "$(steps 1000)" \
        --output_dir "$WORK/classifier$ON" ;;
    guided)  # an unconditional U-Net (UNET_RUN: default CLASS_RUN's null-class branch; the shipped guided steers
             # guided_unet_vae8) steered by the noise-aware classifier
      python - "$WORK" "$ON" "${UNET_RUN:-${CLASS_RUN:-ldm_class$ON}}" <<'EOF'
import sys
from hf_ddm.models import NoisyClassifier
from hf_ddm.pipelines import ClassifierGuidedPipeline, LatentDiffusionPipeline
work, on, class_run = sys.argv[1:4]
ldm = LatentDiffusionPipeline.from_pretrained(f"{work}/{class_run}")
clf = NoisyClassifier.from_pretrained(f"{work}/classifier{on}/classifier")
# default_guidance_scale 10 until measured: train/ship_fashion_mnist.sh ships the folder with the scale its
# evaluations pick (GUIDED_SCALE; 8 on vae8, the guided card and the README's quality table say why)
pipe = ClassifierGuidedPipeline(unet=ldm.unet, classifier=clf, scheduler=ldm.scheduler, vae=ldm.vae,
                                class_names=ldm.config.class_names, default_guidance_scale=10.0)
pipe.save_pretrained(f"{work}/guided{on}")
print("saved", f"{work}/guided{on}")
EOF
      ;;
    ddpm)  # pixel-space unconditional DDPM
      $LAUNCH train/train_ddpm.py "${COMMON[@]}" --block_out_channels 32,64,64 --layers_per_block 1 \
        --attention_levels 2 --norm_num_groups 16 --scheduler vp --train_batch_size "$(batch 64)" \
        --max_train_steps "$(steps 20000)" --learning_rate "$(lr 2e-4)" --lr_warmup_steps "$(start 500)" --use_ema \
        --validation_steps "$(steps 5000)" --output_dir "$WORK/ddpm" ;;
    sde)  # pixel-space continuous sub-VP SDE model (SDE samplers, exact ODE likelihood); v-prediction with EDM's
          # weighting and log-normal noise levels: half the time to a given FD (benchmarks/results/convergence.md),
          # and no speckle under the ODE samplers (the epsilon-trained model speckled)
      $LAUNCH train/train_ddpm.py "${COMMON[@]}" --block_out_channels 32,64,64 --layers_per_block 1 \
        --attention_levels 2 --norm_num_groups 16 --scheduler sde --sde subvp --prediction_type v_prediction \
        --loss_weighting edm --timestep_sampling lognormal \
        --train_batch_size "$(batch 64)" --max_train_steps "$(steps 20000)" --learning_rate "$(lr 2e-4)" \
        --lr_warmup_steps "$(start 500)" --use_ema --validation_steps "$(steps 5000)" --output_dir "$WORK/sde" ;;
    *) echo "unknown stage $stage (vae vae8 ldm_class ldm_class_more classifier guided_unet guided ldm_text ldm_text_more ldm_text_more2 vae_decoder ddpm sde)" >&2; exit 2 ;;
  esac
done
