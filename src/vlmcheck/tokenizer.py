"""Tok: a ``tokenizers.Tokenizer`` plus the few tokenizer_config.json facts the frameworks read.

No transformers import: the template check runs on the Rust tokenizer, as the scan does.

>>> tok = Tok.load("ckpt/")  # doctest: +SKIP
>>> tok.ids("Hello")  # tokenizer("Hello").input_ids  # doctest: +SKIP
[1, 15043]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmcheck.data.files import not_a_file
from vlmcheck.errors import ModelError
from vlmcheck.model import read_checkpoint_json, read_checkpoint_text, tokenizer_file

# transformers' LlamaTokenizer (LLaVA pins 4.3x) has a `legacy` attribute, True when unset; other classes have none.
_LEGACY_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast")


class Tok:
    """A ``tokenizers.Tokenizer`` plus the tokenizer_config.json facts frameworks read."""

    def __init__(self, backend: Any, config: Mapping[str, Any] | None = None,
                 chat_template: str | None = None) -> None:
        self.backend = backend
        self.config = dict(config or {})
        self.chat_template = chat_template
        self.model_max_length = int(self.config.get("model_max_length") or 10**9)
        if self.model_max_length > 10**9:
            self.model_max_length = 10**9

    @classmethod
    def load(cls, path: str | Path) -> Tok:
        """A folder (or a tokenizer.json) as a checkpoint ships it; the chat template from chat_template.json,
        chat_template.jinja or tokenizer_config.json."""
        from tokenizers import Tokenizer

        folder = Path(path)
        file = folder if folder.is_file() else folder / "tokenizer.json"
        if not_a_file(file) == "not found":
            raise ModelError(f"no tokenizer.json at {path}")
        file = tokenizer_file(file)  # a FIFO or a sparse giant is refused before the tokenizers library reads it
        folder = file.parent
        # read as the checkpoint reader reads them: a FIFO, a file too large or too deep is refused, never skipped
        config = read_checkpoint_json(folder / "tokenizer_config.json")
        chat = config.get("chat_template")
        jinja = read_checkpoint_text(folder / "chat_template.jinja")
        if jinja is not None:
            chat = jinja
        else:
            chat = read_checkpoint_json(folder / "chat_template.json").get("chat_template", chat)
        if isinstance(chat, list):  # named templates: the default one
            chat = next((c.get("template") for c in chat if isinstance(c, dict) and c.get("name") == "default"), None)
        return cls(Tokenizer.from_file(str(file)), config, chat if isinstance(chat, str) else None)

    @property
    def legacy(self) -> bool:
        """``tokenizer.legacy`` as transformers reports it: unset means True (with a warning)."""
        value = self.config.get("legacy")
        return True if value is None else bool(value)

    @property
    def legacy_attribute(self) -> bool:
        """``getattr(tokenizer, "legacy", False)`` (LLaVA's ``preprocess_mpt``): only Llama tokenizer classes have
        the attribute; set in tokenizer_config.json, it is the value."""
        if "legacy" in self.config:
            return self.legacy
        return self.config.get("tokenizer_class") in _LEGACY_CLASSES

    def special(self, name: str) -> str | None:
        """A special token's text from tokenizer_config.json (``bos_token``, ``eos_token``, ...)."""
        value = self.config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        return value if isinstance(value, str) else None

    def token_id(self, text: str | None) -> int | None:
        if text is None:
            return None
        value = self.backend.token_to_id(text)
        return None if value is None else int(value)

    def ids(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """``tokenizer(text, add_special_tokens=...).input_ids``."""
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> Any:
        """The ``tokenizers.Encoding`` (ids, offsets, ``char_to_token``)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens)

    def tokens(self, ids: list[int]) -> list[str]:
        return [self.backend.id_to_token(i) or "?" for i in ids]

    def added(self) -> dict[int, Any]:
        """Added tokens by id (``added_tokens_decoder``)."""
        return {int(k): v for k, v in self.backend.get_added_tokens_decoder().items()}

    def is_special(self, text: str) -> bool:
        return any(t.content == text and t.special for t in self.added().values())

    def behaves_legacy(self, special: str) -> bool | None:
        """Does text after ``special`` get a "▁" prefix (SentencePiece legacy)? None if not applicable."""
        if not self.is_special(special):
            return None
        enc = self.backend.encode(special + "hello", add_special_tokens=False)
        if len(enc.tokens) < 2:
            return None
        return bool(enc.tokens[1].startswith("▁"))

    def special_map(self) -> dict[str, str | None]:
        """What transformers passes every chat template: ``bos_token``, ``eos_token``, ..."""
        return {k: self.special(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
