"""A text encoder and tokenizer that need no download: a word-level tokenizer built from a word list
and a small ``CLIPTextModel`` built from a config, trained jointly with the U-Net (LDM's BERT-style
conditioning, at the scale of class-name prompts such as "a photo of a sneaker").

Both are standard transformers objects, so pipelines save and load them with save_pretrained and any
pretrained CLIP text encoder can replace them.
"""

from __future__ import annotations

import re
from typing import Iterable, List

from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def words_of(texts: Iterable[str]) -> List[str]:
    """Sorted unique lower-case words of ``texts`` (the vocabulary of a prompt template set)."""
    # The same split as tokenizers' Whitespace pre-tokenizer.
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t.lower())})


def build_tokenizer(vocabulary: Iterable[str], model_max_length: int = 16) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``vocabulary`` (+ pad/unk/bos/eos), lower-casing, padding to
    ``model_max_length`` and wrapping each prompt in bos ... eos."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=model_max_length,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )


def build_text_encoder(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
) -> CLIPTextModel:
    """A small CLIPTextModel sized to ``tokenizer`` (vocabulary, max length, special ids)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModel(config)


__all__ = ["build_tokenizer", "build_text_encoder", "words_of"]
