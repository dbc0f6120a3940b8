"""A model's tokenizer (`tokenizer.json`, Hugging Face tokenizers format), and streamed decoding."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer as _HFTokenizer

from specd.errors import SpecdError

if TYPE_CHECKING:
    from specd.proto.v1 import worker_pb2


class Tokenizer:
    """Text to token ids and back. From a model directory (`Tokenizer(model_dir)`), or, in the
    router, which has no model files, from the ModelInfo a target worker sends
    (`Tokenizer.from_model_info`). vocab_size: ids from it on are no tokens; eos_token_id: None
    where not known."""

    eos_token_id: int | None
    vocab_size: int

    def __init__(self, model_dir: str | Path, eos_token_id: int | None = None) -> None:
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise SpecdError(f"tokenizer not found: {path}")
        self._adopt(_HFTokenizer.from_file(str(path)), eos_token_id)

    @classmethod
    def from_model_info(cls, info: worker_pb2.ModelInfo) -> Tokenizer:
        """The tokenizer a worker sent with its model's description; vocab_size is the model's."""
        if not info.tokenizer_json:
            raise SpecdError(f"target worker's model {info.model} has no tokenizer.json")
        tokenizer = cls.__new__(cls)
        tokenizer._adopt(_HFTokenizer.from_str(info.tokenizer_json),
                         info.eos_token_id if info.HasField("eos_token_id") else None, info.vocab_size)
        return tokenizer

    def _adopt(self, tok: _HFTokenizer, eos_token_id: int | None, vocab_size: int | None = None) -> None:
        self._tok = tok
        self.eos_token_id = eos_token_id
        self.vocab_size = tok.get_vocab_size() if vocab_size is None else vocab_size

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
