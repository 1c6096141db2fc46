"""A text encoder and tokenizer that need no download: a word-level tokenizer whose vocabulary is the
words of a set of prompts (class names in a template, e.g. "a photo of a {}"), and a small
``CLIPTextModel`` built from a config and trained jointly with the U-Net.

Both are standard transformers objects, so pipelines save and load them with ``save_pretrained`` and a
pretrained CLIP text encoder can replace them.
"""

from __future__ import annotations

from typing import List, Sequence

from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"


def build_tokenizer(texts: Sequence[str], max_length: int = 16) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the (lower-cased, whitespace/punctuation-split) words of ``texts``,
    wrapping each prompt in bos ... eos and padding to ``max_length``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    pre, norm = pre_tokenizers.Whitespace(), normalizers.Lowercase()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))})
    vocab = {tok: i for i, tok in enumerate([PAD, UNK, BOS, EOS] + words)}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer, tok.pre_tokenizer = norm, pre
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS, model_max_length=max_length
    )


def build_text_encoder(tokenizer, hidden_size: int = 64, layers: int = 2, heads: int = 4) -> CLIPTextModel:
    """A small CLIPTextModel sized to ``tokenizer`` (vocabulary, max length, special ids)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModel(config)


def prompt_list(prompt, name: str = "prompt") -> List[str]:
    """``prompt`` (a string, or a list / tuple of strings -- one per image) as a non-empty list of strings;
    anything else a TypeError (not text) or ValueError (an empty list) naming ``name``, before the tokenizer
    meets it."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"{name} must be a string or a list of strings (one per image), got {type(prompt).__name__} "
                        f"{prompt!r}")
    if not prompt:
        raise ValueError(f"{name} is an empty list: pass a string, or a list of strings with one per image")
    bad = [p for p in prompt if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{name} must be a string or a list of strings (one per image), got a list holding "
                        f"{type(bad[0]).__name__} {bad[0]!r}")
    return list(prompt)


def tokenize(tokenizer, prompts: List[str]):
    """(input_ids, attention_mask) padded to the tokenizer's ``model_max_length``: the one tokenisation
    used in training and in the pipeline."""
    out = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    return out.input_ids, out.attention_mask


__all__ = ["build_tokenizer", "build_text_encoder", "prompt_list", "tokenize"]
