"""The admin HTTP API and page: a Starlette shell over the library (``keyturn serve``)."""

from keyturn.server.app import create_app

__all__ = ["create_app"]
