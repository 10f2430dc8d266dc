"""keyturn for Django: encrypted model fields, configuration from settings, ``manage.py keyturn``.

Add ``"keyturn.integrations.django"`` to ``INSTALLED_APPS`` and declare fields
``EncryptedTextField()`` or ``EncryptedCharField(max_length=…)``. The database
comes from ``DATABASES`` (the alias ``KEYTURN["database"]``, default ``"default"``),
the rest from the optional ``KEYTURN`` setting (``kek``, ``apps``,
``cryptoperiod_days``, ``legacy``); the encrypted fields of installed apps are
the configured columns, so no ``keyturn.toml`` is needed. See docs/INTEGRATIONS.md.
"""
