"""A Django project for tests/integrations/test_django.py; the database and the app
directory come from DJ_* environment variables the test sets."""

import os
from pathlib import Path

BASE_DIR = Path(os.environ.get("DJ_BASE", Path(__file__).resolve().parents[1]))
SECRET_KEY = "test-only-not-a-secret"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["keyturn.integrations.django", "vault"]
if os.environ.get("DJ_BAD") == "1":
    INSTALLED_APPS.append("badapp")
DATABASES = {
    "default": {
        "ENGINE": os.environ.get("DJ_ENGINE", "django.db.backends.sqlite3"),
        "NAME": os.environ.get("DJ_NAME", str(BASE_DIR / "app.db")),
        "USER": os.environ.get("DJ_USER", ""),
        "PASSWORD": os.environ.get("DJ_PASSWORD", ""),
        "HOST": os.environ.get("DJ_HOST", ""),
        "PORT": os.environ.get("DJ_PORT", ""),
    }
}
KEYTURN = {"apps": {"refresh_seconds": 0.1, "write_margin_seconds": 0.1}}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Writers wait for each other instead of failing with "database is locked" when a
    # read transaction must become a write (as any SQLite app beside a writer needs).
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 30}
elif DATABASES["default"]["ENGINE"].endswith("mysql"):
    # Django's MySQL backend wants mysqlclient, which needs a C toolchain this test
    # machine does not have; PyMySQL (keyturn's own MariaDB driver) stands in for it.
    import pymysql

    pymysql.version_info = (2, 2, 1, "final", 0)
    pymysql.install_as_MySQLdb()
if os.environ.get("DJ_READ_PLAINTEXT") == "1":
    # The take-over's migration mode: plaintext left in the column reads as it is.
    KEYTURN["columns"] = [
        {"table": "vault_credential", "column": "api_key", "primary_key": "id",
         "read_plaintext": True},
    ]  # fmt: skip
if os.environ.get("DJ_ADMIN") == "1":
    INSTALLED_APPS += [
        "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
        "django.contrib.sessions", "django.contrib.messages",
    ]  # fmt: skip
    MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ]
    TEMPLATES = [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ]
            },
        }
    ]
    ROOT_URLCONF = "project.urls"
    ALLOWED_HOSTS = ["testserver", "127.0.0.1"]
if os.environ.get("DJ_ROW_BIND") == "1":  # refused: the Django fields are column-bound
    KEYTURN["columns"] = [
        {"table": "vault_credential", "column": "api_key", "primary_key": "id", "bind": "row"},
    ]
