#!/usr/bin/env bash
# The shipped Fashion-MNIST checkpoints (issue 6), trained with the project's own scripts.
#
#   bash train/fashion_mnist_recipe.sh [stage ...]      stages: vae ldm_class classifier guided ddpm sde
#
# Environment: DATA (IDX folder, default /usr/share/datasets/fashion-mnist), WORK (run folders, default
# ./runs/fmnist), STEPS_SCALE (multiplies every step count; 1 = the shipped run), LAUNCH (default
# "python"; e.g. "accelerate launch --mixed_precision bf16" on a GPU). Images are 28x28 padded with the
# background to 32x32 (--image_fit pad), which is also what benchmarks/eval_quality.py's reference
# network sees. Every run resumes from its last complete checkpoint when restarted.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
WORK=${WORK:-runs/fmnist}
SCALE=${STEPS_SCALE:-1}
LAUNCH=${LAUNCH:-python}
steps() { python -c "print(max(1, int($1 * $SCALE)))"; }
COMMON=(--data_dir "$DATA" --channels 1 --resolution 32 --image_fit pad --seed 0
        --checkpointing_steps 500 --checkpoints_total_limit 2 --resume_from_checkpoint latest)
mkdir -p "$WORK"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(vae ldm_class classifier guided)

for stage in "${stages[@]}"; do
  case "$stage" in
    vae)  # 32x32x1 -> 4x8x8 latents; beta-ELBO with a Gaussian decoder of std 0.1
      $LAUNCH train/train_vae.py "${COMMON[@]}" --block_out_channels 32,64,64 --layers_per_block 1 \
        --latent_channels 4 --no_mid_block_attention --norm_num_groups 16 --train_batch_size 64 \
        --max_train_steps "$(steps 3000)" --learning_rate 2e-4 --lr_warmup_steps 100 --lr_scheduler cosine \
        --validation_steps 1000 --output_dir "$WORK/vae" ;;
    ldm_class)  # class-conditional latent U-Net, classifier-free guidance (10% null class)
      $LAUNCH train/train_ldm.py "${COMMON[@]}" --vae_path "$WORK/vae" --conditioning class \
        --block_out_channels 64,128 --layers_per_block 2 --attention_levels 1 --attention_head_dim 32 \
        --scheduler vp --prediction_type epsilon --cond_drop_prob 0.1 --train_batch_size 128 \
        --max_train_steps "$(steps 6000)" --learning_rate 3e-4 --lr_warmup_steps 200 --lr_scheduler cosine \
        --use_ema --validation_steps 2000 --num_inference_steps 25 --guidance_scale 3 --output_dir "$WORK/ldm_class" ;;
    classifier)  # noise-aware classifier on the same VP process, in the same latent space
      $LAUNCH train/train_classifier.py "${COMMON[@]}" --vae_path "$WORK/vae" --scheduler vp \
        --block_out_channels 64,128 --layers_per_block 1 --attention_levels 1 --attention_head_dim 32 \
        --train_batch_size 128 --max_train_steps "$(steps 3000)" --learning_rate 3e-4 --lr_warmup_steps 100 \
        --lr_scheduler cosine --validation_steps 1000 --output_dir "$WORK/classifier" ;;
    guided)  # the class model's unconditional branch (null class) steered by the noise-aware classifier
      python - "$WORK" <<'EOF'
import sys
from hf_ddm.models import NoisyClassifier
from hf_ddm.pipelines import ClassifierGuidedPipeline, LatentDiffusionPipeline
work = sys.argv[1]
ldm = LatentDiffusionPipeline.from_pretrained(f"{work}/ldm_class")
clf = NoisyClassifier.from_pretrained(f"{work}/classifier/classifier")
pipe = ClassifierGuidedPipeline(unet=ldm.unet, classifier=clf, scheduler=ldm.scheduler, vae=ldm.vae,
                                class_names=ldm.config.class_names)
pipe.save_pretrained(f"{work}/guided")
print("saved", f"{work}/guided")
EOF
      ;;
    ddpm)  # pixel-space unconditional DDPM
      $LAUNCH train/train_ddpm.py "${COMMON[@]}" --block_out_channels 32,64,64 --layers_per_block 1 \
        --attention_levels 2 --norm_num_groups 16 --scheduler vp --train_batch_size 64 \
        --max_train_steps "$(steps 20000)" --learning_rate 2e-4 --lr_warmup_steps 500 --use_ema \
        --validation_steps 5000 --output_dir "$WORK/ddpm" ;;
    sde)  # pixel-space continuous sub-VP SDE model (SDE samplers, exact ODE likelihood)
      $LAUNCH train/train_ddpm.py "${COMMON[@]}" --block_out_channels 32,64,64 --layers_per_block 1 \
        --attention_levels 2 --norm_num_groups 16 --scheduler sde --sde subvp --prediction_type epsilon \
        --train_batch_size 64 --max_train_steps "$(steps 20000)" --learning_rate 2e-4 --lr_warmup_steps 500 \
        --use_ema --validation_steps 5000 --output_dir "$WORK/sde" ;;
    *) echo "unknown stage $stage (vae ldm_class classifier guided ddpm sde)" >&2; exit 2 ;;
  esac
done
