"""Captions, chunking by max_text_len and positive maps, with the real bert-base-uncased tokenizer."""

import pytest
import torch
from gdino_helpers import VOCAB_DIR, needs_vocab

from gdino.errors import GDinoError
from gdino.prompts import PromptTokenizer, build_caption, sanitize_names

pytestmark = needs_vocab


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(VOCAB_DIR)


def test_sanitize_lowercases_and_strips_separators():
    assert sanitize_names(["Person", "traffic  light.", "what?", " T-Shirt "]) == [
        "person",
        "traffic light",
        "what",
        "t-shirt",
    ]


@pytest.mark.parametrize(
    ("names", "message"),
    [(["car", "?."], r"class_names\[1\].*empty"), (["Car", "car."], r"class_names\[1\].*duplicates.*\[0\]")],
)
def test_sanitize_rejects_empty_and_duplicate_names(names, message):
    with pytest.raises(GDinoError, match=message):
        sanitize_names(names)


def test_caption_format():
    assert build_caption(["person", "car", "traffic light"]) == "person . car . traffic light ."


def test_positive_map_matches_hand_computed_spans(tokenizer):
    prompts = ["person", "traffic light", "t-shirt"]
    packer = PromptTokenizer(tokenizer, prompts, max_text_len=256)
    (chunk,) = packer.chunks([0, 1, 2])
    # [CLS] person . traffic light . t - shirt . [SEP]
    #   0     1    2    3      4   5 6 7   8   9   10
    assert chunk.spans == ((1, 2), (3, 5), (6, 9))
    assert list(chunk.input_ids) == tokenizer(chunk.caption)["input_ids"]
    assert chunk.input_ids[2] == chunk.input_ids[5] == 1012 and chunk.input_ids[-1] == 102
    pmap = chunk.positive_map(12)
    expected = torch.zeros(3, 12)
    expected[0, 1] = 1.0
    expected[1, 3:5] = 0.5
    expected[2, 6:9] = 1 / 3
    assert torch.allclose(pmap, expected)
    # class scores are token probabilities averaged over the span
    probs = torch.linspace(0, 1, 12)[None]
    assert torch.allclose(probs @ pmap.T, torch.stack([probs[0, 1], probs[0, 3:5].mean(), probs[0, 6:9].mean()])[None])
    # built once per length and device, and the chunk still compares and hashes by its tokens
    assert chunk.positive_map(12) is pmap and chunk.positive_map(12, "cpu") is chunk.positive_map(12, "cpu")
    assert torch.equal(chunk.positive_map(12, "cpu"), pmap) and chunk.positive_map(16).shape == (3, 16)
    assert chunk == packer._chunk([0, 1, 2]) and hash(chunk) == hash(packer._chunk([0, 1, 2]))


@pytest.mark.parametrize("max_text_len", [256, 32])
def test_thousand_classes_are_chunked_each_exactly_once(tokenizer, max_text_len):
    names = [f"object kind {i}" for i in range(1000)]
    packer = PromptTokenizer(tokenizer, sanitize_names(names), max_text_len)
    chunks = packer.chunks(range(1000))
    assert len(chunks) > 1
    seen = [p for chunk in chunks for p in chunk.prompts]
    assert sorted(seen) == list(range(1000)) and len(seen) == len(set(seen))
    for chunk in chunks:
        assert len(chunk.input_ids) <= max_text_len  # [CLS] and [SEP] included
        assert chunk.input_ids[0] == tokenizer.cls_token_id and chunk.input_ids[-1] == tokenizer.sep_token_id
        for prompt, (start, end) in zip(chunk.prompts, chunk.spans):
            assert tokenizer.decode(chunk.input_ids[start:end]) == names[prompt]
    assert list(chunks[3].input_ids) == tokenizer(chunks[3].caption)["input_ids"]


def test_chunking_a_subset_keeps_the_given_order(tokenizer):
    packer = PromptTokenizer(tokenizer, ["a", "b", "c", "d"], max_text_len=8)  # 3 classes per chunk
    assert [c.prompts for c in packer.chunks([3, 1, 0])] == [(3, 1, 0)]
    assert [c.prompts for c in packer.chunks(range(4))] == [(0, 1, 2), (3,)]


def test_narrowing_a_caption_keeps_its_order_and_only_its_prompts(tokenizer):
    packer = PromptTokenizer(tokenizer, ["a", "b", "c", "d"], max_text_len=8)
    first, second = packer.chunks([2, 0, 1, 3])  # (2, 0, 1), (3,)
    assert packer.narrow(first, {0, 1, 2, 3}) is first  # nothing found: the same caption, answerable again
    assert packer.narrow(first, {1, 2, 3}).prompts == (2, 1)  # 0 found: the caption less 0, in its order
    assert packer.narrow(first, {1, 2, 3}).caption == "c . b ."
    assert packer.narrow(second, {0, 1, 2}) is None


def test_a_name_longer_than_the_text_limit_is_an_error(tokenizer):
    with pytest.raises(GDinoError, match="'a very long name indeed'.*max_text_len 6"):
        PromptTokenizer(tokenizer, ["car", "a very long name indeed"], max_text_len=6)
