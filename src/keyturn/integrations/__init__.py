"""Integrations with application frameworks (ORM fields); each one a module here."""
