"""A tiny text encoder for text-conditional latent diffusion, built locally (nothing downloaded).

The tokenizer is a word-level ``PreTrainedTokenizerFast`` whose vocabulary is the words of the prompts
(class names in a template, e.g. "a photo of a {}"); the encoder is a ``CLIPTextModel`` from a small
``CLIPTextConfig``, trained jointly with the U-Net. Both save with ``save_pretrained``.
"""

from __future__ import annotations

from typing import List, Sequence

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"


def build_tokenizer(texts: Sequence[str], max_length: int = 16):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    norm = normalizers.Lowercase()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))})
    vocab = {tok: i for i, tok in enumerate([PAD, UNK, BOS, EOS] + words)}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer, tok.pre_tokenizer = norm, pre
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}",
                                                       special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
                                   model_max_length=max_length)


def build_text_encoder(tokenizer, hidden_size: int = 64, layers: int = 2, heads: int = 4):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                            num_hidden_layers=layers, num_attention_heads=heads,
                            max_position_embeddings=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return CLIPTextModel(config)


def tokenize(tokenizer, prompts: List[str]):
    out = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    return out.input_ids, out.attention_mask


__all__ = ["build_tokenizer", "build_text_encoder", "tokenize"]
