"""Text inputs: card specs, words with offsets, word removal, validation, token ids."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InvalidRequest, UnknownField
from engine.models.text import TextSpec, TokenIds, parse_texts, remove_words, words


def test_words_carry_offsets_into_the_original_text():
    text = "Great food, café «très» bon!"
    tokens = words(text)
    assert [t.text for t in tokens] == ["Great", "food", "café", "très", "bon"]
    assert all(text[t.start : t.end] == t.text for t in tokens)


def test_remove_words_cuts_words_and_keeps_separators():
    text = "the food, was great"
    tokens = words(text)
    assert remove_words(text, tokens, np.array([True, False, True, True])) == "the , was great"
    assert remove_words(text, tokens, np.ones(4, dtype=bool)) == text


def test_spec_round_trips_and_refuses_paths_as_tokenizer():
    spec = TextSpec.from_dict({"max_chars": 100, "tokenizer": "tokenizer.json", "max_length": 16})
    assert TextSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(InvalidRequest) as caught:
        TextSpec.from_dict({"tokenizer": "../../etc/passwd.json"})
    assert caught.value.field == "card.text.tokenizer"
    with pytest.raises(UnknownField):
        TextSpec.from_dict({"lowercase": True})


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (3, "invalid_text"),
        ("", "empty_text"),
        ("  ... !", "empty_text"),
        ("x" * 51, "text_too_long"),
        ("a " * 11, "text_too_long"),
    ],
)
def test_bad_texts_get_codes(value, code):
    spec = TextSpec(max_chars=50, max_words=10)
    with pytest.raises(InvalidRequest) as caught:
        parse_texts(["fine text", value], spec, max_rows=5)
    assert caught.value.code == code and caught.value.field == "instances[1]"


def test_token_ids_from_a_local_tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        ["the food was great", "the food was awful"], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"])
    )
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    ids, mask = TokenIds(path, max_length=6).encode(["the food was great", "great unknownword"])
    assert ids.shape == (2, 6) and ids.dtype == np.int64
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0] and mask[1].tolist() == [1, 1, 0, 0, 0, 0]
    assert ids[1, 1] == tokenizer.token_to_id("[UNK]") and ids[0, 0] == tokenizer.token_to_id("the")
    with pytest.raises(InvalidRequest) as caught:
        TokenIds(tmp_path / "missing.json", max_length=4)
    assert caught.value.code == "invalid_tokenizer"
