"""Class names -> captions -> token spans -> positive maps.

Grounding DINO scores text tokens, not classes. We build the token ids of each caption ourselves from
the per-name token lists, so every class's token span is known exactly by construction: no decoded
phrase matching (which re-spaces "t-shirt" and merges neighbouring classes) and no silent truncation
(the vocabulary is split into chunks that fit `max_text_len`, special tokens included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gdino.errors import GDinoError

PERIOD, QUESTION = ".", "?"
CACHE_SIZE = 4096


def sanitize_name(name: str) -> str:
    """Lower-case, drop the phrase separators "." and "?", collapse whitespace."""
    return " ".join(name.lower().replace(PERIOD, " ").replace(QUESTION, " ").split())


def sanitize_names(names: Sequence[str], source: str = "class_names") -> list[str]:
    """Sanitise every name; empty or duplicate results are errors that name the offending entries."""
    cleaned, seen = [], {}
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise GDinoError(f"{source}[{index}]: must be a string, got {name!r}")
        clean = sanitize_name(name)
        if not clean:
            raise GDinoError(f"{source}[{index}]: {name!r} is empty once '.' and '?' are removed")
        if clean in seen:
            first = seen[clean]
            raise GDinoError(
                f"{source}[{index}]: {name!r} duplicates {source}[{first}] {names[first]!r} (both read {clean!r})"
            )
        seen[clean] = index
        cleaned.append(clean)
    return cleaned


@dataclass(frozen=True)
class Chunk:
    """One caption: its token ids and, per prompt it holds, the [start, end) token span."""

    prompts: tuple[int, ...]  # indices into the vocabulary of prompts
    input_ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    caption: str  # human-readable, for logs and output only; the model sees `input_ids`
    _maps: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def positive_map(self, max_text_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(prompts x max_text_len), each row uniform over its span so that scores average the tokens.

        Built once per length and device and kept with the chunk (chunks are cached and reused for every
        batch, pass and annealing step): treat the result as read-only.
        """
        key = (max_text_len, None if device is None else torch.device(device))
        if key not in self._maps:
            pmap = torch.zeros(len(self.spans), max_text_len)
            for row, (start, end) in enumerate(self.spans):
                pmap[row, start:end] = 1.0 / (end - start)
            self._maps[key] = pmap if device is None else pmap.to(device)
        return self._maps[key]


class PromptTokenizer:
    """Tokenises prompts once and packs any subset of them into captions that fit the model."""

    def __init__(self, tokenizer, prompts: Sequence[str], max_text_len: int):
        self.prompts = list(prompts)
        self.max_text_len = max_text_len
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.period_id = tokenizer.convert_tokens_to_ids(PERIOD)
        self.tokens = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in self.prompts]
        limit = max_text_len - 3  # [CLS] name . [SEP]
        for index, (prompt, ids) in enumerate(zip(self.prompts, self.tokens)):
            if not ids:
                raise GDinoError(f"prompt {index} {prompt!r} produces no tokens")
            if len(ids) > limit:
                raise GDinoError(
                    f"prompt {index} {prompt!r} is {len(ids)} tokens long; the model's max_text_len "
                    f"{max_text_len} leaves room for at most {limit}"
                )
        self._cache: dict[tuple[int, ...], list[Chunk]] = {}

    def chunks(self, prompt_ids: Sequence[int]) -> list[Chunk]:
        """Greedy packing in the given order; every prompt lands in exactly one chunk."""
        key = tuple(prompt_ids)
        if key not in self._cache:
            if len(self._cache) >= CACHE_SIZE:  # noun-chunk runs have one set per image: stay bounded
                self._cache.clear()
            self._cache[key] = self._pack(key)
        return self._cache[key]

    def narrow(self, chunk: Chunk, prompt_ids: set[int]) -> Chunk | None:
        """The caption of `chunk`'s prompts that are in `prompt_ids`, in the chunk's order (None if none are).

        Later passes ask each first-pass caption again, less its classes already found, instead of
        packing the missing classes anew: a caption whose classes were all missed stays the same, so its
        earlier answer can be reused. A subset of a caption that fits also fits.
        """
        kept = tuple(p for p in chunk.prompts if p in prompt_ids)
        if kept == chunk.prompts:
            return chunk
        return self.chunks(kept)[0] if kept else None

    def _pack(self, prompt_ids: tuple[int, ...]) -> list[Chunk]:
        chunks, current = [], []
        used = 2  # [CLS] and [SEP]
        for pid in prompt_ids:
            cost = len(self.tokens[pid]) + 1  # the name and its "."
            if current and used + cost > self.max_text_len:
                chunks.append(self._chunk(current))
                current, used = [], 2
            current.append(pid)
            used += cost
        if current:
            chunks.append(self._chunk(current))
        return chunks

    def _chunk(self, prompt_ids: list[int]) -> Chunk:
        ids, spans = [self.cls_id], []
        for pid in prompt_ids:
            spans.append((len(ids), len(ids) + len(self.tokens[pid])))
            ids.extend(self.tokens[pid])
            ids.append(self.period_id)
        ids.append(self.sep_id)
        return Chunk(tuple(prompt_ids), tuple(ids), tuple(spans), build_caption(self.prompts[p] for p in prompt_ids))


def build_caption(names) -> str:
    """TAO/IDEA caption format: "a . b . c ." """
    return " . ".join(names) + " ."
