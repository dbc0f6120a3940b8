"""The tokenizer of a model directory (`tokenizer.json`, Hugging Face tokenizers format)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from specd.errors import SpecdError


class Tokenizer:
    def __init__(self, model_dir: str | Path, eos_token_id: int | None = None) -> None:
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise SpecdError(f"tokenizer not found: {path}")
        self._tok = _HFTokenizer.from_file(str(path))
        self.eos_token_id = eos_token_id
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


class StreamDecoder:
    """Turns a growing token sequence into text deltas, holding back incomplete UTF-8 characters."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, ids: list[int]) -> str:
        self._ids.extend(ids)
        text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):  # a multi-byte character is split across tokens
            return ""
        delta, self._emitted = text[self._emitted :], len(text)
        return delta

    def flush(self) -> str:
        """The text still held back at the end of the stream (an incomplete character decodes as
        U+FFFD, as in a decode of the whole sequence)."""
        text = self._tokenizer.decode(self._ids)
        delta, self._emitted = text[self._emitted :], len(text)
        return delta
