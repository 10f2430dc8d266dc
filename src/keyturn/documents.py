"""The secret fields of a JSON column's documents, for app code: seal them before a
write, open them after a read, mask them for API output.

The fields are the column's ``json_fields``; each is sealed under its own
context (``table.column$.apiKey``, with the row's key where the column is
bound to the row), so a token moved to another field or row fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

from keyturn._core import tokens
from keyturn._core.jsonpath import JsonPath, leaves, locate, splice, transform
from keyturn.config import ColumnSpec
from keyturn.errors import ConfigError, InvalidDocument
from keyturn.store import Store

MASK = "********"
Document = TypeVar("Document", bound=str | dict[str, Any] | list[Any])


class JsonFields:
    """The configured secret fields of one JSON column (``"table.column"``).

    A document is given and returned in the same form: JSON text (spliced, every
    other character kept) or parsed (dicts and lists, copied where changed)."""

    def __init__(self, store: Store, column: str | ColumnSpec) -> None:
        if isinstance(column, ColumnSpec):
            spec: ColumnSpec | None = column
        else:
            spec = next((c for c in store.config.columns if c.name == column), None)
        if spec is None or not spec.json_fields:
            raise ConfigError(
                f"{column} is not a configured column with `json_fields`; add "
                "json_fields = [...] to its [[columns]] entry (docs/ADOPTING.md)"
            )
        self._store = store
        self._spec = spec
        self._fields = spec.fields()

    def __repr__(self) -> str:
        return f"JsonFields({self._spec.name!r}, {[p.text for p, _ in self._fields]})"

    def encrypt(self, document: Document, *, pk: Sequence[Any] | None = None) -> Document:
        """Seal every secret field that holds text and is not a token yet."""

        def seal(field: ColumnSpec, value: str) -> str:
            if tokens.version_of(value) is not None:
                return value
            return self._store.encrypt(value, context=field.context(self._pk(pk)))

        return self._apply(document, seal)

    def decrypt(self, document: Document, *, pk: Sequence[Any] | None = None) -> Document:
        """Open every secret field; InvalidToken if one does not open (a field moved
        from elsewhere, tampered with, or plaintext outside the migration mode)."""

        def open_(field: ColumnSpec, value: str) -> str:
            opened: str = self._store.decrypt(value, context=field.context(self._pk(pk)))
            return opened

        return self._apply(document, open_)

    def mask(self, document: Document) -> Document:
        """Every secret field that holds text replaced by ``********`` (for API output)."""
        return self._apply(document, lambda field, value: MASK)

    def unmask(self, document: Any, stored: Any) -> Any:
        """A parsed document as a form sends it back, with every secret field still
        ``********`` given the value it has in ``stored`` (the opened document)."""
        result = document
        for path, _ in self._fields:
            result = transform(result, path, partial(_unmasked, iter(leaves(stored, path))))
        return result

    def _pk(self, pk: Sequence[Any] | None) -> tuple[Any, ...]:
        if self._spec.bind == "row":
            if pk is None:
                raise ConfigError(
                    f'{self._spec.name} is bound to the row (bind = "row"): pass pk=(…)'
                )
            return tuple(pk)
        return ()

    def _apply(self, document: Document, change: Callable[[ColumnSpec, str], str]) -> Document:
        """``change(field spec, text)`` on every non-empty string field; null and ''
        stay; anything else at a secret path is an InvalidDocument."""

        def one(field: ColumnSpec, path: JsonPath, value: Any) -> Any:
            if value is None or value == "":
                return value
            if not isinstance(value, str):
                raise InvalidDocument(
                    f"{self._spec.name}: field {path.text} holds {_kind(value)}, not a string"
                )
            return change(field, value)

        if isinstance(document, str):
            found = locate(document, [path for path, _ in self._fields])
            edits = []
            for (path, field), spans in zip(self._fields, found, strict=True):
                for start, end, value in spans:
                    new = one(field, path, value)  # an object or array (end -1) is refused
                    if new is not value:
                        edits.append((start, end, new))
            return splice(document, edits) if edits else document  # type: ignore[return-value]
        if not isinstance(document, dict | list):
            raise InvalidDocument(
                f"{self._spec.name}: a document is JSON text, a dict or a list, "
                f"not {_kind(document)}"
            )
        result: Any = document
        for path, field in self._fields:
            result = transform(result, path, partial(one, field, path))
        return result  # type: ignore[no-any-return]


def _unmasked(kept: Iterator[Any], value: Any) -> Any:
    """``value``, or where it is the mask, the stored value at the same place."""
    stored = next(kept, None)
    return stored if value == MASK else value


def _kind(value: Any) -> str:
    """A JSON value's kind, for messages (never the value)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"
