"""train/train_vae.py end to end."""

import json

from test_train_common import FAST, idx_data, run_script  # noqa: F401


def test_vae_end_to_end(idx_data, tmp_path):
    out = tmp_path / "vae"
    _, summary = run_script("train_vae", ["--data_dir", idx_data, "--channels", "1", "--resolution", "8",
                                          "--block_out_channels", "8,16", "--norm_num_groups", "4",
                                          "--latent_channels", "2", *FAST, "--train_batch_size", "8",
                                          "--max_train_steps", "3", "--validation_steps", "2", "--use_ema",
                                          "--checkpointing_steps", "2", "--output_dir", out])
    assert summary["global_step"] == 3
    assert {"reconstruction_mse", "kl"} <= set(summary["validation"])
    assert (out / "samples" / "step_0000003.png").exists() and (out / "checkpoint-2").is_dir()
    from hf_ddm.models.vae import VAE

    vae = VAE.from_pretrained(out)
    assert vae.config.latent_channels == 2 and vae.config.in_channels == 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["scaling_factor"] != 0.18215  # set to 1/std(z) at the end
