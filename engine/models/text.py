"""Text inputs: strings in, words with character offsets, and token ids for token models.

Text methods perturb *words*: maximal runs of word characters (``\\w+``,
Unicode-aware), each with its ``[start, end)`` character offsets into the
original string, so an attribution can be shown on the exact text the user
sent. Removing words keeps the separators around them, so a perturbed text
reads like the original with holes.

A model takes text one of two ways, as its card says:

* a string tensor (``[N, 1]`` or ``[N]``), e.g. a scikit-learn
  ``TfidfVectorizer`` + ``LogisticRegression`` exported by skl2onnx;
* token ids (``[N, L]`` int64, and optionally an attention mask), produced
  from the text by a ``tokenizers`` ``tokenizer.json`` shipped with the
  model and declared in the card. It is read from the model's own directory,
  offline; nothing is downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import InvalidRequest
from engine.models.fields import card_int, card_object

WORD = re.compile(r"\w+")
DEFAULT_MAX_CHARS = 10_000
DEFAULT_MAX_WORDS = 512
_FIELDS = {"max_chars", "max_words", "tokenizer", "max_length"}
_TOKENIZER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\.json$")


@dataclass(frozen=True, slots=True)
class Token:
    """One word of a text and where it sits.

    Attributes:
        text: The word as written.
        start: Offset of its first character.
        end: Offset one past its last character.
    """

    text: str
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        """Return the token as JSON (``{"token", "start", "end"}``)."""
        return {"token": self.text, "start": self.start, "end": self.end}


@dataclass(frozen=True, slots=True)
class TextSpec:
    """How a model takes text.

    Attributes:
        max_chars: Longest text accepted, in characters.
        max_words: Most words accepted (the cost of every text method grows with it).
        tokenizer: File name of a ``tokenizers`` ``tokenizer.json`` stored
            with the model, for token-id models; ``None`` for string-input models.
        max_length: Token ids per text for token-id models (padded or truncated).
    """

    max_chars: int = DEFAULT_MAX_CHARS
    max_words: int = DEFAULT_MAX_WORDS
    tokenizer: str | None = None
    max_length: int = 128

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as card JSON."""
        out: dict[str, Any] = {"max_chars": self.max_chars, "max_words": self.max_words}
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer
            out["max_length"] = self.max_length
        return out

    @classmethod
    def from_dict(cls, data: object, where: str = "card.text") -> TextSpec:
        """Parse and validate the ``text`` object of a card.

        Raises:
            InvalidRequest: ``invalid_card`` naming the field at fault.
            UnknownField: A field this version does not know.
        """
        data = card_object(data, _FIELDS, where)
        max_chars = card_int(data.get("max_chars", DEFAULT_MAX_CHARS), f"{where}.max_chars", 1_000_000)
        max_words = card_int(data.get("max_words", DEFAULT_MAX_WORDS), f"{where}.max_words", 10_000)
        max_length = card_int(data.get("max_length", 128), f"{where}.max_length", 8192)
        tokenizer = data.get("tokenizer")
        # The name becomes a path inside the model's directory: a plain file name, never a path.
        if tokenizer is not None and (not isinstance(tokenizer, str) or not _TOKENIZER_NAME.match(tokenizer)):
            raise InvalidRequest(
                "tokenizer must be a file name like 'tokenizer.json' (no directories)",
                code="invalid_card",
                field=f"{where}.tokenizer",
            )
        return cls(max_chars, max_words, tokenizer, max_length)


def words(text: str) -> list[Token]:
    """Split ``text`` into words with their character offsets."""
    return [Token(m.group(0), m.start(), m.end()) for m in WORD.finditer(text)]


def remove_words(text: str, tokens: list[Token], keep: npt.NDArray[np.bool_]) -> str:
    """Return ``text`` with the words whose ``keep`` entry is false cut out (separators stay).

    Args:
        text: The original text.
        tokens: Its words, from :func:`words`.
        keep: One flag per token.
    """
    parts: list[str] = []
    position = 0
    for token, kept in zip(tokens, keep, strict=True):
        parts.append(text[position : token.start])
        if kept:
            parts.append(token.text)
        position = token.end
    parts.append(text[position:])
    return "".join(parts)


def parse_texts(instances: object, spec: TextSpec, *, max_rows: int, where: str = "instances") -> list[str]:
    """Validate request texts.

    Raises:
        InvalidRequest: ``invalid_instances``, ``empty_input``,
            ``too_many_rows``, ``invalid_text`` (not a string),
            ``empty_text`` (no word in it) or ``text_too_long``, naming the text.
    """
    if not isinstance(instances, list):
        raise InvalidRequest(f"{where} must be a list of texts", code="invalid_instances", field=where)
    if not instances:
        raise InvalidRequest(f"{where} is empty: send at least one text", code="empty_input", field=where)
    if len(instances) > max_rows:
        raise InvalidRequest(
            f"{len(instances)} texts is more than the limit of {max_rows}", code="too_many_rows", field=where
        )
    for i, text in enumerate(instances):
        field = f"{where}[{i}]"
        if not isinstance(text, str):
            raise InvalidRequest("a text must be a string", code="invalid_text", field=field)
        if len(text) > spec.max_chars:
            raise InvalidRequest(
                f"the text has {len(text)} characters, more than the limit of {spec.max_chars}",
                code="text_too_long",
                field=field,
            )
        count = sum(1 for _ in WORD.finditer(text))
        if count == 0:
            raise InvalidRequest("the text has no words to explain", code="empty_text", field=field)
        if count > spec.max_words:
            raise InvalidRequest(
                f"the text has {count} words, more than the limit of {spec.max_words}",
                code="text_too_long",
                field=field,
            )
    return [str(text) for text in instances]


class TokenIds:
    """Token ids for a token-id model, from a ``tokenizers`` file stored with the model.

    Args:
        path: The ``tokenizer.json`` (read locally; never fetched).
        max_length: Ids per text; shorter texts are padded, longer ones truncated.

    Raises:
        InvalidRequest: ``invalid_tokenizer`` when the file cannot be read.
    """

    def __init__(self, path: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own untyped Exception
            raise InvalidRequest(
                f"the tokenizer file cannot be read: {exc}", code="invalid_tokenizer", field="tokenizer"
            ) from exc
        self.max_length = max_length
        padding = self.tokenizer.padding
        self.pad_id = int(padding["pad_id"]) if padding else 0

    def encode(self, texts: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Encode texts to ``(ids, attention_mask)``, both ``(n, max_length)`` int64."""
        ids = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), self.max_length), dtype=np.int64)
        for i, encoding in enumerate(self.tokenizer.encode_batch(texts)):
            row = encoding.ids[: self.max_length]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask


def screen_tokenizer(data: bytes, *, max_bytes: int) -> None:
    """Check an uploaded ``tokenizer.json`` before it is stored: size, UTF-8 JSON, and that ``tokenizers`` reads it.

    Parsing is offline (``Tokenizer.from_str``): a tokenizer file never names anything to download.

    Raises:
        PayloadTooLarge: ``tokenizer_too_large`` over ``max_bytes``.
        InvalidRequest: ``invalid_tokenizer`` when it is not a tokenizer ``tokenizers`` can read.
    """
    from engine.errors import PayloadTooLarge

    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the tokenizer is {len(data):,} bytes, over the limit of {max_bytes:,}",
            code="tokenizer_too_large",
            field="tokenizer",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the tokenizer is not UTF-8 JSON", code="invalid_tokenizer", field="tokenizer") from exc
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises its own untyped Exception on bad JSON or an unknown model
        raise InvalidRequest(
            f"the tokenizer cannot be read by tokenizers: {exc}", code="invalid_tokenizer", field="tokenizer"
        ) from exc
    if tokenizer.get_vocab_size() == 0:
        raise InvalidRequest("the tokenizer has an empty vocabulary", code="invalid_tokenizer", field="tokenizer")
