"""Class names -> captions -> token spans -> positive maps.

Grounding DINO scores text tokens, not classes. We build the token ids of each caption ourselves from
the per-name token lists, so every class's token span is known exactly by construction: no decoded
phrase matching (which re-spaces "t-shirt" and merges neighbouring classes) and no silent truncation
(the vocabulary is split into chunks that fit `max_text_len`, special tokens included).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gdino.errors import GDinoError

PERIOD, QUESTION = ".", "?"
CACHE_SIZE = 4096
MAX_LISTED = 10  # problems named in one error message
LIST_SEPARATORS = re.compile("[,;]")
log = logging.getLogger(__name__)


def sanitize_name(name: str) -> str:
    """Lower-case, drop the phrase separators "." and "?", collapse whitespace."""
    return " ".join(name.lower().replace(PERIOD, " ").replace(QUESTION, " ").split())


def sanitize_each(names: Sequence[str], source: str = "class_names") -> list[str]:
    """Sanitise every name; a name that is not a string or is empty once sanitised is an error naming it."""
    cleaned = []
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise GDinoError(f"{source}[{index}]: must be a string, got {name!r}")
        clean = sanitize_name(name)
        if not clean:
            raise GDinoError(f"{source}[{index}]: {name!r} is empty once '.' and '?' are removed")
        cleaned.append(clean)
    return cleaned


def sanitize_names(names: Sequence[str], source: str = "class_names") -> list[str]:
    """Sanitise every name; duplicate results are errors that name both entries (two classes, one phrase)."""
    cleaned, seen = sanitize_each(names, source), {}
    for index, clean in enumerate(cleaned):
        if clean in seen:
            first = seen[clean]
            raise GDinoError(
                f"{source}[{index}]: {names[index]!r} duplicates {source}[{first}] {names[first]!r} "
                f"(both read {clean!r})"
            )
        seen[clean] = index
    return cleaned


def warn_list_like(names: Sequence[str], source: str) -> None:
    """Warn about class names that look like a pasted list ("person, car, dog").

    The model reads such a name as one phrase and gives every box found for it that one class, which
    is rarely what was meant; a vocabulary is a list of names.
    """
    pasted = [(i, n) for i, n in enumerate(names) if len([p for p in LIST_SEPARATORS.split(n) if p.strip()]) > 1]
    if pasted:
        listed = ", ".join(f"{source}[{i}] {n!r}" for i, n in pasted)
        log.warning(
            "%s %s one class name holding ',' or ';': the model reads it as one phrase. To detect "
            "several classes, give them as a list, e.g. [person, car, dog]",
            listed,
            "is" if len(pasted) == 1 else "are each",
        )


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
    """Tokenises prompts once and packs any subset of them into captions that fit the model.

    Prompts are compared as the model sees them: by their token ids, after the tokenizer's own
    normalisation (bert-base-uncased lower-cases, strips accents and drops zero-width characters, so
    "café" and "cafe" are one word to it). Two prompts the model cannot tell apart would label every
    object twice: in a vocabulary asked as a whole they are refused, naming both; with
    `merge_identical` (noun chunks, where each image asks only its own phrases) a caption holds the
    first of them only. A prompt the tokenizer reads as nothing but unknown tokens ([UNK]) is refused:
    the model would see no word of it.
    """

    def __init__(self, tokenizer, prompts: Sequence[str], max_text_len: int, merge_identical: bool = False):
        self.prompts = list(prompts)
        self.max_text_len = max_text_len
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.period_id = tokenizer.convert_tokens_to_ids(PERIOD)
        self.tokens = [tuple(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in self.prompts]
        problems = self._size_problems()
        if not merge_identical:
            problems += identical_prompt_problems(tokenizer, self.prompts, self.tokens)
        problems += unknown_token_problems(tokenizer, self.prompts, self.tokens)
        if problems:
            more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
            raise GDinoError("; ".join(problems[:MAX_LISTED]) + more)
        self._cache: dict[tuple[int, ...], list[Chunk]] = {}

    def _size_problems(self) -> list[str]:
        limit = self.max_text_len - 3  # [CLS] name . [SEP]
        problems = []
        for index, (prompt, ids) in enumerate(zip(self.prompts, self.tokens)):
            if not ids:
                problems.append(f"prompt {index} {prompt!r} produces no tokens")
            elif len(ids) > limit:
                problems.append(
                    f"prompt {index} {prompt!r} is {len(ids)} tokens long; the model's max_text_len "
                    f"{self.max_text_len} leaves room for at most {limit}"
                )
        return problems

    def chunks(self, prompt_ids: Sequence[int]) -> list[Chunk]:
        """Greedy packing in the given order; every distinct prompt lands in exactly one chunk."""
        key = tuple(prompt_ids)
        if key not in self._cache:
            if len(self._cache) >= CACHE_SIZE:  # noun-chunk runs have one set per image: stay bounded
                self._cache.clear()
            self._cache[key] = self._pack(self._distinct(key))
        return self._cache[key]

    def _distinct(self, prompt_ids: tuple[int, ...]) -> tuple[int, ...]:
        """The first of each group of prompts with the same tokens: one question, asked once."""
        first: dict[tuple[int, ...], int] = {}
        for pid in prompt_ids:
            first.setdefault(self.tokens[pid], pid)
        return tuple(first.values())

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


def unknown_token_problems(tokenizer, prompts: Sequence[str], tokens: Sequence[tuple[int, ...]]) -> list[str]:
    """A message naming the prompts made of unknown tokens only (refused); those partly unknown are logged."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    unreadable = []
    for index, (prompt, ids) in enumerate(zip(prompts, tokens)):
        unknown = sum(i == unk for i in ids)
        if ids and unknown == len(ids):
            unreadable.append(f"{index} {prompt!r}")
        elif unknown:
            log.warning(
                "prompt %d %r: %d of its %d tokens are unknown to the model's tokenizer, which reads %s",
                index,
                prompt,
                unknown,
                len(ids),
                tokenizer.convert_ids_to_tokens(list(ids)),
            )
    if not unreadable:
        return []
    return [
        f"prompt{'s' if len(unreadable) > 1 else ''} {', '.join(unreadable)}: only unknown tokens "
        f"({tokenizer.unk_token}) to the model's tokenizer, so the model cannot read "
        f"{'them' if len(unreadable) > 1 else 'it'}; write names with words the tokenizer knows"
    ]


def identical_prompt_problems(tokenizer, prompts: Sequence[str], tokens: Sequence[tuple[int, ...]]) -> list[str]:
    """One message per prompt whose token ids equal an earlier prompt's, naming both.

    Prompts of unknown tokens only are left to `unknown_token_problems` (they all read [UNK]).
    """
    first: dict[tuple[int, ...], int] = {}
    problems = []
    for index, ids in enumerate(tokens):
        if not ids or set(ids) == {tokenizer.unk_token_id}:
            continue
        earlier = first.setdefault(ids, index)
        if earlier != index:
            problems.append(
                f"prompts {earlier} {prompts[earlier]!r} and {index} {prompts[index]!r} are the same to the "
                f"model's tokenizer (both read {tokenizer.convert_ids_to_tokens(list(ids))}), so the model "
                "cannot tell them apart; keep one of them"
            )
    return problems


def build_caption(names) -> str:
    """TAO/IDEA caption format: "a . b . c ." """
    return " . ".join(names) + " ."
