"""train/train_vae.py end to end."""

import json

from test_train_common import FAST, idx_data, load_script, run_script  # noqa: F401


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


def test_a_running_vaes_checkpoint_loads_on_its_own(idx_data, tmp_path):
    """benchmarks/eval_vae.py RUN/checkpoint-N: the run writes its model config beside the checkpoints;
    load_model picks the VAE's tensors (not the discriminator's) and refuses a damaged checkpoint."""
    import pytest
    import torch
    from safetensors.torch import load_file

    from hf_ddm.models.vae import VAE
    from hf_ddm.training.checkpoint import CheckpointError, load_model

    out = tmp_path / "vae"
    run_script("train_vae", ["--data_dir", idx_data, "--channels", "1", "--resolution", "8",
                             "--block_out_channels", "8,16", "--norm_num_groups", "4", "--latent_channels", "3",
                             *FAST, "--train_batch_size", "4", "--max_train_steps", "2", "--disc_weight", "0.5",
                             "--disc_start", "0", "--disc_channels", "8", "--checkpointing_steps", "1",
                             "--output_dir", out])
    vae = load_model(VAE, str(out / "checkpoint-1"))
    assert vae.config.latent_channels == 3 and not vae.training
    saved = load_file(out / "checkpoint-1" / "model_1.safetensors")  # model.safetensors: the discriminator
    assert all(torch.equal(v, saved["vae." + k]) for k, v in vae.state_dict().items())
    final = VAE.from_pretrained(out)
    assert not all(torch.equal(v, final.state_dict()[k]) for k, v in vae.state_dict().items())  # step 1, not 2
    with open(out / "checkpoint-1" / "model_1.safetensors", "ab") as f:
        f.write(b"0")
    with pytest.raises(CheckpointError, match="model_1.safetensors"):
        load_model(VAE, str(out / "checkpoint-1"))
    (out / "model_config.json").unlink()
    with pytest.raises(CheckpointError, match="model config"):
        load_model(VAE, str(out / "checkpoint-2"))


def test_vae_with_discriminator_resumes_exactly(idx_data, tmp_path):
    """The adversarial term starts at --disc_start; the discriminator and its optimizer are in every
    checkpoint (Accelerate's safetensors + optimizer tensors, nothing pickled), and a run resumed before
    or after the start ends with the same bits as the uninterrupted one."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from test_train_resume import COMMON, assert_same_run

    args = ["--data_dir", idx_data, "--channels", "1", "--resolution", "8", "--block_out_channels", "8,16",
            "--norm_num_groups", "4", "--latent_channels", "2", "--train_batch_size", "2",
            "--gradient_accumulation_steps", "2", "--random_flip", "--use_ema", "--disc_weight", "0.5",
            "--disc_start", "3", "--disc_channels", "8", *COMMON]
    ref = tmp_path / "ref"
    _, ref_summary = run_script("train_vae", [*args, "--output_dir", ref])
    ck = {s: ref / f"checkpoint-{s}" for s in (1, 3, 5)}
    assert all((c / "model_1.safetensors").exists() and (c / "optimizer_1.bin").exists() for c in ck.values())
    assert not list(ref.glob("checkpoint-*/custom_checkpoint_*"))  # nothing registered for pickling
    disc = {s: load_file(c / "model.safetensors") for s, c in ck.items()}
    assert any("running_mean" in k for k in disc[1])  # the discriminator's (BatchNorm) state is checkpointed
    assert all(torch.equal(disc[1][k], disc[3][k]) for k in disc[1])  # untouched before --disc_start
    assert not all(torch.equal(disc[3][k], disc[5][k]) for k in disc[3])  # trained after it
    log = (ref / "README.md").read_text()
    assert "PatchGAN hinge loss" in log
    for step in (1, 5):
        out = tmp_path / f"from{step}"
        out.mkdir()
        shutil.copytree(ck[step], out / f"checkpoint-{step}")
        _, summary = run_script("train_vae", [*args, "--output_dir", out, "--resume_from_checkpoint", "latest"])
        assert_same_run(ref, ref_summary, out, summary)
        assert load_file(out / "checkpoint-7" / "model.safetensors").keys() == disc[1].keys()
    for k, v in load_file(ref / "checkpoint-7" / "model.safetensors").items():
        assert torch.equal(v, load_file(tmp_path / "from1" / "checkpoint-7" / "model.safetensors")[k])


def test_decoder_only_fine_tuning_keeps_the_latent_space(idx_data, tmp_path):
    """--train_decoder_only (the ft-MSE / ft-EMA recipe): encoder, quant_conv and scaling_factor come out
    bit-identical to the pretrained VAE, so latent models trained on it stay valid; the decoder is trained
    (here with the adversarial term from step 0); without a pretrained VAE the flag is refused by name."""
    import pytest
    import torch
    from safetensors.torch import load_file

    from hf_ddm.training import ConfigError

    base = ["--data_dir", idx_data, "--channels", "1", "--resolution", "8", "--block_out_channels", "8,16",
            "--norm_num_groups", "4", "--latent_channels", "2", *FAST, "--train_batch_size", "4"]
    first = tmp_path / "first"
    run_script("train_vae", [*base, "--max_train_steps", "2", "--output_dir", first])
    tuned = tmp_path / "tuned"
    run_script("train_vae", [*base, "--max_train_steps", "3", "--pretrained_model_path", first,
                             "--train_decoder_only", "--disc_weight", "0.5", "--disc_channels", "8",
                             "--learning_rate", "1e-2", "--output_dir", tuned])
    before, after = load_file(first / "diffusion_pytorch_model.safetensors"), \
        load_file(tuned / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys()
    from hf_ddm.models.vae import VAE

    encoder = [k for k in before if k.split(".")[0] in VAE.ENCODER_PARTS]
    decoder = [k for k in before if k.split(".")[0] in ("decoder", "decoder_in", "decoder_out", "post_quant_conv")]
    assert encoder and decoder and len(encoder) + len(decoder) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert sum(not torch.equal(before[k], after[k]) for k in decoder) >= len(decoder) // 2
    scale = [json.loads((d / "config.json").read_text())["scaling_factor"] for d in (first, tuned)]
    assert scale[0] == scale[1] != 0.18215
    assert "decoder only" in (tuned / "README.md").read_text()
    script = load_script("train_vae")
    with pytest.raises(ConfigError, match="--pretrained_model_path"):
        script.main([str(a) for a in [*base, "--max_train_steps", "1", "--train_decoder_only",
                                      "--output_dir", tmp_path / "refused"]])


def test_stop_at_step_is_an_earlier_point_of_the_longer_run(idx_data, tmp_path, capsys):
    """--stop_at_step N (how the shipped vae8 first stage is step 4,000 of a 12,000-step schedule): the saved
    VAE is bit for bit the longer run's checkpoint-N -- the LR schedule stays that of --max_train_steps, unlike a
    run of N steps --; a run resumed at N only saves, one resumed past N is refused by name, and the card says
    the adversarial term never started."""
    import shutil

    import pytest
    import torch

    from hf_ddm.models.vae import VAE
    from hf_ddm.training.checkpoint import load_model

    base = ["--data_dir", idx_data, "--channels", "1", "--resolution", "8", "--block_out_channels", "8,16",
            "--norm_num_groups", "4", "--latent_channels", "2", *FAST, "--train_batch_size", "4",
            "--lr_scheduler", "cosine", "--learning_rate", "1e-2", "--disc_weight", "0.5", "--disc_start", "4",
            "--disc_channels", "8", "--checkpointing_steps", "1", "--seed", "3"]
    ref = tmp_path / "ref"
    run_script("train_vae", [*base, "--max_train_steps", "6", "--output_dir", ref])
    at3 = load_model(VAE, str(ref / "checkpoint-3")).state_dict()

    def weights(folder):
        return VAE.from_pretrained(folder).state_dict()

    stop = tmp_path / "stop"
    _, summary = run_script("train_vae", [*base, "--max_train_steps", "6", "--stop_at_step", "3", "--output_dir", stop])
    assert summary["global_step"] == 3 and summary["stop_at_step"] == 3
    assert all(torch.equal(v, at3[k]) for k, v in weights(stop).items())
    short = tmp_path / "short"
    run_script("train_vae", [*base, "--max_train_steps", "3", "--output_dir", short])
    assert not all(torch.equal(v, at3[k]) for k, v in weights(short).items())  # a 3-step schedule: other weights
    card = (stop / "README.md").read_text()
    assert "stopped at step 3, before its start at step 4" in card and "over 6 steps, stopped at step 3" in card

    for step, rc in ((3, 0), (5, 2)):
        out = tmp_path / f"resumed{step}"
        out.mkdir()
        shutil.copytree(ref / f"checkpoint-{step}", out / f"checkpoint-{step}")
        shutil.copy(ref / "model_config.json", out)
        run_script("train_vae", [*base, "--max_train_steps", "6", "--stop_at_step", "3", "--resume_from_checkpoint",
                                 "latest", "--output_dir", out], expect_rc=rc)
    assert all(torch.equal(v, at3[k]) for k, v in weights(tmp_path / "resumed3").items())
    assert not (tmp_path / "resumed5" / "config.json").exists()

    with pytest.raises(SystemExit):
        load_script("train_vae").main([str(a) for a in [*base, "--max_train_steps", "6", "--stop_at_step", "0",
                                                        "--output_dir", tmp_path / "zero"]])
    assert "--stop_at_step must be >= 1 (got 0)" in capsys.readouterr().err
