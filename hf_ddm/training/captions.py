"""Captions for text-conditional training: a bank of caption strings, the captions each example may take,
and a deterministic draw of one of them per example per epoch.

Two sources:

* **class names** (``CaptionBank.from_class_names``): every caption names the example's class, in several
  phrasings -- templates ("a photo of a {}", "an image of a {}", ...) times synonyms of the class name
  ("sneaker", "trainer shoe", "running shoe", ...; Fashion-MNIST's classes have lists here, any other name
  is used as it is). The first caption of each class is ``prompt_template.format(name)``, the canonical
  prompt that the evaluation and the model card use.
* **a text column** of the dataset (``CaptionBank.from_texts``, ``--caption_column``): each example's own
  caption(s) -- a string or a list of strings per row.

The caption of example ``i`` in epoch ``e`` is ``options[i][h(seed, e, i) mod len(options[i])]``: it changes
from epoch to epoch, is the same on every process and in a resumed run (it depends on nothing but the
seed, the epoch and the example's index), and works as well on cached VAE latents as on pixels. The
tokenizer is built from every caption of the bank, and the bank is tokenized once.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from .utils import step_seed

# {} is a noun phrase *with* its article ("a sneaker", "an ankle boot", "a pair of trousers").
TEMPLATES = (
    "a photo of {}",
    "{}",
    "an image of {}",
    "a picture of {}",
    "a black and white photo of {}",
    "a grayscale image of {}",
    "a product photo of {}",
    "a small photo of {}",
    "a low resolution photo of {}",
    "a centered photo of {}",
)

# Synonyms of Fashion-MNIST's class names (their keys): noun phrases with their article.
FASHION_MNIST_SYNONYMS: Dict[str, List[str]] = {
    "T-shirt/top": ["a t-shirt", "a tee", "a top", "a tee shirt", "a short-sleeved top"],
    "Trouser": ["a trouser", "a pair of trousers", "trousers", "a pair of pants", "pants", "a pair of jeans"],
    "Pullover": ["a pullover", "a sweater", "a jumper", "a knit sweater", "a long-sleeved pullover"],
    "Dress": ["a dress", "a frock", "a summer dress", "a gown", "a long dress"],
    "Coat": ["a coat", "a jacket", "an overcoat", "a winter coat", "a zip-up jacket"],
    "Sandal": ["a sandal", "a summer sandal", "an open shoe", "a strappy sandal", "a flat sandal"],
    "Shirt": ["a shirt", "a button-up shirt", "a collared shirt", "a blouse", "a dress shirt"],
    "Sneaker": ["a sneaker", "a trainer shoe", "a trainer", "a running shoe", "an athletic shoe"],
    "Bag": ["a bag", "a handbag", "a purse", "a tote bag", "a shoulder bag"],
    "Ankle boot": ["an ankle boot", "a boot", "a short boot", "a bootie", "a heeled boot"],
}

_CAPTION_SALT = 0xCA97


def _with_article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def class_phrasings(name: str, prompt_template: str = "a photo of a {}", templates: Sequence[str] = TEMPLATES,
                     synonyms: Optional[Dict[str, List[str]]] = None) -> List[str]:
    """Every caption of class ``name``: ``prompt_template.format(name)`` first, then each template filled with
    each synonym (a known class's list, else the lower-cased name with its article); no duplicates."""
    synonyms = FASHION_MNIST_SYNONYMS if synonyms is None else synonyms
    nouns = synonyms.get(name) or [_with_article(name.lower())]
    out = [prompt_template.format(name)]
    for noun in nouns:
        for t in templates:
            c = t.format(noun)
            if c not in out:
                out.append(c)
    return out


def draw_index(seed: int, epoch: int, index: int, n: int) -> int:
    """Which of ``n`` captions example ``index`` takes in ``epoch``: a hash of (seed, epoch, index)."""
    return step_seed(seed, epoch, index, _CAPTION_SALT) % n if n > 1 else 0


class CaptionBank:
    """``texts``: every caption (the last one is the empty, null caption of classifier-free guidance);
    ``options``: per key (a class label, or an example index with ``per_example``), the indices into
    ``texts`` it may take."""

    def __init__(self, texts: List[str], options: List[List[int]], per_example: bool, source: str):
        if any(not o for o in options):
            raise ValueError("every class / example needs at least one caption")
        self.texts, self.options, self.per_example, self.source = list(texts) + [""], options, per_example, source
        self.null_index = len(self.texts) - 1
        self._ids = self._mask = None

    @classmethod
    def from_class_names(cls, class_names: Sequence[str], prompt_template: str = "a photo of a {}",
                         varied: bool = True) -> "CaptionBank":
        """Captions that name each class (``varied=False``: only ``prompt_template.format(name)``)."""
        texts, options = [], []
        for name in class_names:
            caps = class_phrasings(name, prompt_template) if varied else [prompt_template.format(name)]
            options.append(list(range(len(texts), len(texts) + len(caps))))
            texts.extend(caps)
        source = "class names in several phrasings" if varied else f"class names in `{prompt_template}`"
        return cls(texts, options, per_example=False, source=source)

    @classmethod
    def from_texts(cls, rows: Sequence[Union[str, Sequence[str]]], column: str) -> "CaptionBank":
        """Each example's own caption(s): a string or a non-empty list of strings per row."""
        index: Dict[str, int] = {}
        texts, options = [], []
        for i, row in enumerate(rows):
            caps = [row] if isinstance(row, str) else list(row or [])
            if not caps or not all(isinstance(c, str) and c.strip() for c in caps):
                raise ValueError(f"caption column {column!r}: example {i} has no caption ({row!r})")
            opts = []
            for c in caps:
                c = c.strip()
                if c not in index:
                    index[c] = len(texts)
                    texts.append(c)
                opts.append(index[c])
            options.append(opts)
        return cls(texts, options, per_example=True, source=f"the dataset's `{column}` column")

    def __len__(self) -> int:
        return len(self.texts)

    def captions_of(self, key: int) -> List[str]:
        return [self.texts[j] for j in self.options[key]]

    def draw(self, example_indices: torch.Tensor, class_labels: Optional[torch.Tensor], seed: int,
             epoch: int) -> torch.Tensor:
        """Indices into ``texts`` (long, like ``example_indices``) of the batch's captions in ``epoch``."""
        keys = example_indices if self.per_example else class_labels
        if keys is None:
            raise ValueError("captions from class names need the batch's class labels")
        out = [self.options[int(k)][draw_index(seed, epoch, int(i), len(self.options[int(k)]))]
               for k, i in zip(keys.tolist(), example_indices.tolist())]
        return torch.tensor(out, dtype=torch.long, device=example_indices.device)

    def captions(self, example_indices, class_labels, seed: int, epoch: int) -> List[str]:
        idx = self.draw(torch.as_tensor(example_indices), None if class_labels is None else
                        torch.as_tensor(class_labels), seed, epoch)
        return [self.texts[j] for j in idx.tolist()]

    def tokenized(self, tokenizer):
        """(input_ids, attention_mask) of every caption, computed once."""
        if self._ids is None:
            from ..text import tokenize

            self._ids, self._mask = tokenize(tokenizer, self.texts)
        return self._ids, self._mask


def dataset_captions(dataset, column: str) -> list:
    """The ``column`` of a datasets-backed training set (``--dataset_name`` or an image folder with a
    metadata.jsonl), read without decoding its images."""
    from .args import ConfigError

    hf = getattr(dataset, "ds", None)
    names = getattr(hf, "column_names", None)
    if names is None:
        raise ConfigError(f"--caption_column {column}: the data source has no columns (IDX files carry labels only; "
                          "use --dataset_name or an image folder with a metadata.jsonl)")
    if column not in names:
        raise ConfigError(f"--caption_column {column!r} is not a column of the dataset (columns: {names})")
    return list(hf[column])


class WithIndex(Dataset):
    """``dataset``'s examples plus their ``index`` (what a caption is drawn for)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return {**self.dataset[i], "index": torch.tensor(int(i), dtype=torch.long)}


def with_index(dataset, collate_fn):
    """(dataset, collate_fn) whose batches also carry the examples' ``index``."""

    def collate(examples):
        out = collate_fn([{k: v for k, v in e.items() if k != "index"} for e in examples])
        out["index"] = torch.stack([e["index"] for e in examples])
        return out

    return WithIndex(dataset), collate


__all__ = ["TEMPLATES", "FASHION_MNIST_SYNONYMS", "class_phrasings", "draw_index", "CaptionBank", "dataset_captions",
           "WithIndex", "with_index"]
