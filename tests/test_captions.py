"""Text captions for the text-conditional LDM (hf_ddm.training.captions, train_ldm.py --caption_column)."""

from __future__ import annotations

import re

import pytest
import torch

from hf_ddm.training.captions import FASHION_MNIST_SYNONYMS, CaptionBank, class_phrasings, draw_index
from hf_ddm.training.data import FASHION_MNIST_CLASSES
from test_train_common import FAST, TINY_UNET, load_script, reset_accelerate  # noqa: F401


def _noun(phrase: str) -> str:
    return re.sub(r"^(a pair of|an|a) ", "", phrase)


def test_captions_name_the_class_in_several_phrasings():
    bank = CaptionBank.from_class_names(FASHION_MNIST_CLASSES)
    by_class = [set(bank.captions_of(k)) for k in range(len(FASHION_MNIST_CLASSES))]
    for k, name in enumerate(FASHION_MNIST_CLASSES):
        caps = bank.captions_of(k)
        assert caps[0] == f"a photo of a {name}" and len(caps) >= 20  # the canonical prompt comes first
        nouns = [_noun(p) for p in FASHION_MNIST_SYNONYMS[name]]
        assert all(any(n in c for n in nouns) or name in c for c in caps), name
        assert all(not (by_class[k] & by_class[j]) for j in range(len(by_class)) if j != k)  # no caption is shared
    sneaker = bank.captions_of(FASHION_MNIST_CLASSES.index("Sneaker"))
    assert {"a photo of a sneaker", "a sneaker", "an image of a trainer shoe"} <= set(sneaker)
    assert "an image of an ankle boot" in bank.captions_of(9)  # articles agree
    seven = class_phrasings("7")  # a class without synonyms: its name in every template
    assert seven[0] == "a photo of a 7" and {"a 7", "an image of a 7"} <= set(seven) and len(seven) == 10
    assert CaptionBank.from_class_names(["Bag"], varied=False).texts == ["a photo of a Bag", ""]


def test_same_seed_and_epoch_give_the_same_captions():
    bank = CaptionBank.from_class_names(FASHION_MNIST_CLASSES)
    idx, labels = torch.arange(200), torch.arange(200) % 10
    a = bank.captions(idx, labels, seed=3, epoch=1)
    assert a == bank.captions(idx, labels, seed=3, epoch=1)
    assert a == bank.captions(idx.flip(0), labels.flip(0), seed=3, epoch=1)[::-1]  # per example, not per batch slot
    assert a != bank.captions(idx, labels, seed=3, epoch=2) and a != bank.captions(idx, labels, seed=4, epoch=1)
    assert len(set(a)) > 50  # the phrasings are used, not one per class
    per_example = [{bank.captions([i], [i % 10], seed=0, epoch=e)[0] for e in range(20)} for i in range(5)]
    assert all(len(s) > 5 for s in per_example)  # an example is captioned differently from epoch to epoch
    assert all(0 <= draw_index(0, e, i, 7) < 7 for e in range(5) for i in range(5))


def test_caption_bank_from_texts():
    bank = CaptionBank.from_texts(["a red quokka", ["a blue heron", "a heron in blue"], "a red quokka"], "text")
    assert bank.texts == ["a red quokka", "a blue heron", "a heron in blue", ""] and bank.null_index == 3
    assert bank.options == [[0], [1, 2], [0]] and bank.per_example
    drawn = {tuple(bank.captions([0, 1, 2], None, seed=0, epoch=e)) for e in range(20)}
    assert {d[1] for d in drawn} == {"a blue heron", "a heron in blue"} and {d[0] for d in drawn} == {"a red quokka"}
    with pytest.raises(ValueError, match="example 1 has no caption"):
        CaptionBank.from_texts(["ok", ""], "text")


WORDS = ["quokka", "heron", "walrus", "ibis", "okapi", "tapir", "gecko", "lemur"]


@pytest.fixture(scope="module")
def captioned_dataset(tmp_path_factory):
    """A saved datasets Dataset: images and a text column, no labels."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((16, 16)) * 255).astype("uint8")) for _ in WORDS]
    texts = [f"a photo of a {w}" for w in WORDS]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": images, "text": texts}, features=features)
    path = tmp_path_factory.mktemp("captioned") / "ds"
    ds.save_to_disk(str(path))
    return path, texts


def test_caption_column_conditions_on_the_datasets_text(captioned_dataset, tmp_path):
    """Every caption the text encoder sees is the dataset's caption of that very example (cached latents)."""
    from hf_ddm.models.vae import VAE
    from hf_ddm.training import run_main

    path, texts = captioned_dataset
    torch.manual_seed(0)
    VAE(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16), norm_num_groups=4,
        sample_size=16).save_pretrained(tmp_path / "vae")
    mod = load_script("train_ldm")
    seen = []
    loss, condition = mod.LDMTask.loss, mod.LDMTask._condition

    def spy_loss(self, modules, batch, generator):
        self._spy_index = batch["index"]
        return loss(self, modules, batch, generator)

    def spy_condition(self, modules, labels):
        decoded = self.tokenizer.batch_decode(self.ids[labels], skip_special_tokens=True)
        seen.extend(zip(self._spy_index.tolist(), decoded))
        return condition(self, modules, labels)

    mod.LDMTask.loss, mod.LDMTask._condition = spy_loss, spy_condition
    out = tmp_path / "ldm"
    argv = ["--vae_path", tmp_path / "vae", "--dataset_name", path, "--channels", "1", "--resolution", "16",
            *TINY_UNET, "--attention_levels", "1", *FAST, "--train_batch_size", "4", "--max_train_steps", "4",
            "--caption_column", "text", "--cond_drop_prob", "0", "--text_hidden_size", "16", "--text_heads", "2",
            "--validation_prompts", "a photo of a gecko", "--validation_steps", "4", "--output_dir", out]
    reset_accelerate()
    try:
        assert run_main(mod.main, [str(a) for a in argv]) == 0
    finally:
        reset_accelerate()
    assert len(seen) == 16 and {i for i, _ in seen} == set(range(8))
    assert all(caption == texts[i] for i, caption in seen), seen
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    vocab = pipe.tokenizer.get_vocab()
    assert set(WORDS) <= set(vocab) and pipe.config.class_names is None
    card = (out / "README.md").read_text()
    assert 'prompt="a photo of a gecko"' in card and "the dataset's `text` column" in card
    assert pipe(prompt="a photo of a walrus", num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 1)


def test_caption_column_errors(tmp_path):
    mod = load_script("train_ldm")
    from hf_ddm.training.args import ConfigError

    with pytest.raises(ConfigError, match="need --conditioning text"):
        mod.main(["--vae_path", str(tmp_path), "--data_dir", str(tmp_path), "--conditioning", "class",
                  "--caption_column", "text", "--output_dir", str(tmp_path / "o")])


def test_a_text_run_continued_keeps_its_text_encoder_and_tokenizer(captioned_dataset, tmp_path):
    """--pretrained_model_path on a text pipeline starts from its U-Net *and* its text encoder and tokenizer (the
    U-Net was trained on their embeddings); a tokenizer missing words of the captions is refused by name."""
    from hf_ddm.models.vae import VAE
    from hf_ddm.text import build_tokenizer
    from hf_ddm.training import run_main
    from hf_ddm.training.args import ConfigError
    from transformers import CLIPTextModel

    path, _ = captioned_dataset
    torch.manual_seed(0)
    VAE(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16), norm_num_groups=4,
        sample_size=16).save_pretrained(tmp_path / "vae")
    mod = load_script("train_ldm")
    common = ["--vae_path", tmp_path / "vae", "--dataset_name", path, "--channels", "1", "--resolution", "16",
              *TINY_UNET, "--attention_levels", "1", *FAST, "--train_batch_size", "4", "--max_train_steps", "2",
              "--caption_column", "text", "--validation_steps", "100"]

    def run(*extra):
        reset_accelerate()
        try:
            return run_main(mod.main, [str(a) for a in [*common, *extra]])
        finally:
            reset_accelerate()

    base = tmp_path / "base"
    assert run("--text_hidden_size", "16", "--text_heads", "2", "--output_dir", base) == 0
    started = {}
    init = mod.LDMTask.__init__

    def spy(self, unet, vae, scheduler, args, class_names, text_encoder=None, tokenizer=None, captions=None):
        started.update(encoder={k: v.clone() for k, v in text_encoder.state_dict().items()},
                       vocab=tokenizer.get_vocab(), hidden=args.text_hidden_size, levels=args.block_out_channels)
        init(self, unet, vae, scheduler, args, class_names, text_encoder, tokenizer, captions)

    mod.LDMTask.__init__ = spy
    try:  # the default --text_hidden_size (64) would build another encoder: the saved one's 16 is kept
        assert run("--pretrained_model_path", base, "--output_dir", tmp_path / "more") == 0
    finally:
        mod.LDMTask.__init__ = init
    saved = CLIPTextModel.from_pretrained(base / "text_encoder").state_dict()
    assert started["encoder"].keys() == saved.keys()
    assert all(torch.equal(started["encoder"][k], saved[k]) for k in saved)
    assert started["hidden"] == 16 and started["levels"] == [8, 16]  # the card records the loaded networks
    assert started["vocab"] == build_tokenizer([f"a photo of a {w}" for w in WORDS]).get_vocab()

    build_tokenizer(["a photo of a cat"]).save_pretrained(base / "tokenizer")
    with pytest.raises(ConfigError, match=r"--pretrained_model_path .* lacks words of the training captions \(gecko"):
        mod.main([str(a) for a in [*common, "--pretrained_model_path", base, "--output_dir", tmp_path / "bad"]])
