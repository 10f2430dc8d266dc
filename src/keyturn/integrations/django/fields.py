"""Encrypted model fields: kt1 tokens in the database, text on the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django import forms
from django.core import checks
from django.db import models

from keyturn._core.context import column_context
from keyturn._core.jsonpath import parse_path
from keyturn._core.tokens import token_length
from keyturn.config import ColumnSpec
from keyturn.documents import JsonFields
from keyturn.errors import ConfigError, UnqueryableColumn
from keyturn.integrations.django import conf
from keyturn.integrations.django.conf import store
from keyturn.store import Store


class _Opened(str):
    """A decrypted value that remembers the token it came from: saved unchanged, the
    same token is written back instead of a new one."""

    token: str


class SecretInput(forms.PasswordInput):
    """Never renders the stored secret into the page; left blank, it keeps it."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        masked = {"placeholder": "•••••••• (unchanged)", "autocomplete": "off"}
        super().__init__(attrs={**masked, **(attrs or {})}, render_value=False)


class SecretFormField(forms.CharField):
    """A form field for an encrypted secret: blank means "keep the stored one"."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(required=False, widget=SecretInput, strip=False)
        kwargs.pop("max_length", None)  # the column's length counts token characters
        super().__init__(**kwargs)

    def has_changed(self, initial: Any, data: Any) -> bool:
        return bool(data)


class _EncryptedMixin:
    """Shared by both fields: strict reads, sealing on save, lookups refused."""

    keyturn_encrypted = True
    # The Store the opener below was made by, and that opener (per field, once).
    _keyturn_opener: tuple[Store, Callable[[str], str]] | None = None

    def _context(self) -> str:
        return column_context(self.model._meta.db_table, self.column)  # type: ignore[attr-defined]

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        """The secret, carrying the token it came from (opened by the Store's opener
        for this column: the fast path of an ORM load)."""
        if value is None or value == "":
            return value
        cached = self._keyturn_opener
        if cached is None or cached[0] is not conf._store:
            current = store()
            cached = self._keyturn_opener = (current, current.opener(self._context()))
        opened = _Opened(cached[1](value))
        opened.token = value
        return opened

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)  # type: ignore[misc]
        if value is None or value == "":
            return value
        if isinstance(value, _Opened):
            return value.token
        return store().encrypt(str(value), context=self._context())

    def formfield(self, **kwargs: Any) -> Any:
        """Masked in forms and the admin (whatever widget the admin would choose)."""
        kwargs.pop("widget", None)
        return super().formfield(**{**kwargs, "form_class": SecretFormField})  # type: ignore[misc]

    def save_form_data(self, instance: Any, data: Any) -> None:
        if data in (None, "") and instance.pk is not None:
            return  # left blank on an existing row: the stored secret stays
        super().save_form_data(instance, data)  # type: ignore[misc]

    def get_lookup(self, lookup_name: str) -> Any:
        if lookup_name == "isnull":
            return super().get_lookup(lookup_name)  # type: ignore[misc]
        raise self._refused(lookup_name)

    def get_transform(self, lookup_name: str) -> Any:
        raise self._refused(lookup_name)

    def _refused(self, what: str) -> UnqueryableColumn:
        return UnqueryableColumn(
            f"{self._context()} is encrypted: the database holds only tokens, so `{what}` on "
            "it would match nothing meaningful; filter in Python after loading, or keep a "
            "separate searchable field (only __isnull works)"
        )


class EncryptedJSONField(models.JSONField):  # type: ignore[misc]
    """A JSON document whose ``fields`` (paths such as ``"$.apiKey"``) are secrets:
    sealed on save and opened on load, each bound to its path
    (``table.column$.apiKey``), as keyturn's commands expect of a column with
    ``json_fields``. The rest of the document is plain JSON: lookups on it work.
    In forms and the admin the secret fields show as ``********``; a field left
    at ``********`` keeps the stored secret."""

    keyturn_encrypted = True

    def __init__(self, *args: Any, fields: Sequence[str] = (), **kwargs: Any) -> None:
        if not fields:
            raise ConfigError('EncryptedJSONField needs fields=["$.apiKey", ...]')
        #: The paths as keyturn.toml's ``json_fields`` spells them (checked now).
        self.keyturn_json_fields = tuple(parse_path(f).text for f in fields)
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> Any:
        name, path, args, kwargs = super().deconstruct()
        return name, path, args, {**kwargs, "fields": list(self.keyturn_json_fields)}

    def _json_fields(self) -> JsonFields:
        current = store()
        cached = self.__dict__.get("_keyturn_fields")
        if cached is None or cached._store is not current:
            meta = self.model._meta
            paths = tuple(parse_path(f) for f in self.keyturn_json_fields)
            spec = ColumnSpec(meta.db_table, self.column, (meta.pk.column,), json_fields=paths)
            cached = self.__dict__["_keyturn_fields"] = JsonFields(current, spec)
        return cached

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        value = super().from_db_value(value, expression, connection)
        if value is None or not isinstance(value, dict | list):
            return value
        return self._json_fields().decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        if isinstance(value, dict | list):
            value = self._json_fields().encrypt(value)
        return super().get_prep_value(value)

    def value_from_object(self, obj: Any) -> Any:
        """What forms and the admin show: the document with its secrets masked."""
        value = super().value_from_object(obj)
        if isinstance(value, dict | list):
            return self._json_fields().mask(value)
        return value

    def save_form_data(self, instance: Any, data: Any) -> None:
        """A secret field submitted as ``********`` keeps the value it had."""
        current = getattr(instance, self.attname, None)
        if isinstance(data, dict | list) and current is not None:
            data = self._json_fields().unmask(data, current)
        super().save_form_data(instance, data)


class EncryptedTextField(_EncryptedMixin, models.TextField):  # type: ignore[misc]
    """An encrypted secret in a text column."""


class EncryptedCharField(_EncryptedMixin, models.CharField):  # type: ignore[misc]
    """An encrypted secret in a varchar column; ``max_length`` counts the token's
    characters, so a system check refuses one too small to hold tokens."""

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors: list[checks.CheckMessage] = super().check(**kwargs)
        smallest = token_length(99, 1)
        if self.max_length is not None and self.max_length < smallest:
            errors.append(
                checks.Error(
                    f"max_length={self.max_length} cannot hold a keyturn token: a secret of n "
                    f"bytes takes {token_length(9, 0)} + about 4n/3 characters "
                    "(docs/FORMAT.md, 'Column width')",
                    obj=self,
                    id="keyturn.E002",
                )
            )
        return errors
