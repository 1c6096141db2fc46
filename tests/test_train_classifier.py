"""train/train_classifier.py in pixel and latent space."""

import pytest
import torch

from test_train_common import FAST, TINY_UNET, idx_data, require_scheduler, run_script  # noqa: F401


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_classifier_end_to_end(idx_data, tmp_path, space):
    require_scheduler("vp")
    extra = []
    if space == "latent":
        from hf_ddm.models.vae import VAE

        VAE(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16), norm_num_groups=4
            ).save_pretrained(tmp_path / "vae")
        extra = ["--vae_path", tmp_path / "vae"]
    out = tmp_path / "clf"
    _, s = run_script("train_classifier", ["--data_dir", idx_data, "--channels", "1", "--resolution", "8", *TINY_UNET,
                                           *FAST, "--train_batch_size", "8", "--max_train_steps", "3",
                                           "--validation_steps", "2", "--output_dir", out, *extra])
    assert s["global_step"] == 3 and 0.0 <= s["validation"]["accuracy"] <= 1.0
    from hf_ddm.models.classifier import NoisyClassifier

    clf = NoisyClassifier.from_pretrained(out / "classifier")
    assert clf.config.in_channels == (2 if space == "latent" else 1) and clf.config.num_classes == 10
    logits = clf(torch.zeros(2, clf.config.in_channels, 4 if space == "latent" else 8,
                             4 if space == "latent" else 8), torch.tensor([0, 10])).logits
    assert logits.shape == (2, 10)
    assert (out / "scheduler" / "scheduler_config.json").exists()


def test_classifier_sde_process(idx_data, tmp_path):
    require_scheduler("sde")
    _, s = run_script("train_classifier", ["--data_dir", idx_data, "--channels", "1", "--resolution", "8", *TINY_UNET,
                                           *FAST, "--train_batch_size", "8", "--max_train_steps", "2",
                                           "--output_dir", tmp_path / "clf", "--scheduler", "sde", "--sde", "ve"])
    assert s["global_step"] == 2
