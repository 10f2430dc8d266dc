"""PyMySQL connections that build a TLS context only for a server that offers TLS.

PyMySQL 1.1+ builds a TLS context for every connection opened without a TLS
option, before it knows whether the server offers TLS (its "preferred" mode: TLS
if offered, plain otherwise). Loading the system's CA certificates for it costs
about 35 ms of CPU each time here, against about 1 ms for the rest of opening a
connection on localhost (docs/PERFORMANCE.md). Those connections now get one
context per process, built as PyMySQL builds it, with the same settings, when
the first server offers TLS; a connection given any TLS option builds its own,
as before. Imported only for ``mysql+pymysql://`` URLs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from ssl import SSLContext, SSLSocket
from typing import Any

from pymysql.connections import Connection
from sqlalchemy import Engine, event


class PreferredContext:
    """Stands in for preferred mode's context: PyMySQL (1.1, 1.2) only calls
    ``wrap_socket``, once the server has said it offers TLS. Anything else asked of
    it is asked of the real context, built then."""

    def __init__(self, build: Callable[[], SSLContext]) -> None:
        self._build: Callable[[], SSLContext] | None = build
        self._lock = threading.Lock()
        self.context: SSLContext | None = None  # built when first used

    def wrap_socket(self, *args: Any, **kwargs: Any) -> SSLSocket:
        return self._built().wrap_socket(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # ours, before __init__ set it (a copy): not the context's
            raise AttributeError(name)
        return getattr(self._built(), name)

    def _built(self) -> SSLContext:
        with self._lock:
            if self.context is None:
                assert self._build is not None
                self.context, self._build = self._build(), None
            return self.context


class SharedPreferredTLS(Connection):  # type: ignore[misc]  # PyMySQL has no type hints
    """A PyMySQL connection whose preferred-mode context is the process's one."""

    _preferred: PreferredContext | None = None

    def _create_ssl_ctx(self, sslp: Any) -> Any:
        if sslp != {}:  # TLS options given (or a context): PyMySQL's own handling
            return super()._create_ssl_ctx(sslp)
        if SharedPreferredTLS._preferred is None:  # two built at once: one is kept
            # PyMySQL's own method, bound to this first connection until it has run.
            build = super()._create_ssl_ctx
            SharedPreferredTLS._preferred = PreferredContext(lambda: build({}))
        return SharedPreferredTLS._preferred


def share_preferred_tls(engine: Engine) -> None:
    """Open ``engine``'s PyMySQL connections as :class:`SharedPreferredTLS`."""

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        return SharedPreferredTLS(*cargs, **cparams)
