"""Encrypted model fields: kt1 tokens in the database, text on the model."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core import checks
from django.db import models

from keyturn._core.context import column_context
from keyturn._core.tokens import token_length
from keyturn.errors import UnqueryableColumn
from keyturn.integrations.django.conf import store


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

    def _context(self) -> str:
        return column_context(self.model._meta.db_table, self.column)  # type: ignore[attr-defined]

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        """The secret, carrying the token it came from (opened by the Store's opener
        for this column: the fast path of an ORM load)."""
        if value is None or value == "":
            return value
        current = store()
        cached = self.__dict__.get("_keyturn_opener")
        if cached is None or cached[0] is not current:
            cached = self.__dict__["_keyturn_opener"] = (current, current.opener(self._context()))
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
