"""Connections: PyMySQL's preferred-mode TLS context, built only when used; which
of keyturn's tables exist, asked once they were seen."""

from __future__ import annotations

import socket
import ssl

import pytest
from conftest import Database


@pytest.mark.parametrize("database", ["mysql"], indirect=True)
def test_pymysql_builds_no_tls_context_for_a_server_without_tls(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections keyturn opens with no TLS option share one stand-in context, still
    in preferred mode (TLS if the server offers it, plain otherwise). This server
    offers none, so no context is built (PyMySQL built one per connection, 35 ms)."""
    from keyturn.db.database import connect
    from keyturn.db.pymysql_tls import PreferredContext, SharedPreferredTLS

    monkeypatch.setattr(SharedPreferredTLS, "_preferred", None)  # this process's first
    engine = connect(database.url)
    try:
        with engine.connect() as one, engine.connect() as two:
            first, second = one.connection.dbapi_connection, two.connection.dbapi_connection
            assert isinstance(first, SharedPreferredTLS) and first is not second
            assert isinstance(first.ctx, PreferredContext) and first.ctx is second.ctx
            assert first.ssl and not first._ssl_required  # preferred, as PyMySQL's own
            assert one.exec_driver_sql("SHOW SESSION STATUS LIKE 'Ssl_cipher'").all() == [
                ("Ssl_cipher", "")
            ]
            assert first.ctx.context is None
    finally:
        engine.dispose()


def test_the_preferred_context_is_built_once_as_pymysql_builds_it() -> None:
    """A server offering TLS gets a socket wrapped by one context, made by PyMySQL's
    own code for preferred mode: no certificate or host name checked."""
    pytest.importorskip("pymysql")
    from keyturn.db.pymysql_tls import SharedPreferredTLS

    stand_in = SharedPreferredTLS(host="127.0.0.1", defer_connect=True).ctx
    assert stand_in is SharedPreferredTLS(host="127.0.0.1", defer_connect=True).ctx
    pairs = [socket.socketpair() for _ in range(2)]
    wrapped = [stand_in.wrap_socket(ours, do_handshake_on_connect=False) for ours, _ in pairs]
    try:
        assert all(isinstance(s, ssl.SSLSocket) for s in wrapped)
        assert wrapped[0].context is wrapped[1].context is stand_in.context
        assert stand_in.context.verify_mode == ssl.CERT_NONE
        assert not stand_in.context.check_hostname
    finally:
        for end in [*wrapped, *(theirs for _, theirs in pairs)]:
            end.close()
    # Anything else a later PyMySQL might ask of its context is the real one's.
    assert stand_in.verify_mode == ssl.CERT_NONE and stand_in.options == stand_in.context.options


def test_a_connection_given_tls_options_builds_its_own_context() -> None:
    """TLS options (a CA, checks) go through PyMySQL's own handling: their context is
    built for that connection, required, never the shared stand-in."""
    pytest.importorskip("pymysql")
    from keyturn.db.pymysql_tls import SharedPreferredTLS

    options = {"check_hostname": False, "verify_mode": True}
    given = [SharedPreferredTLS(host="127.0.0.1", defer_connect=True, ssl=options) for _ in "ab"]
    assert isinstance(given[0].ctx, ssl.SSLContext) and given[0].ctx is not given[1].ctx
    assert all(c._ssl_required for c in given)
    assert given[0].ctx.verify_mode == ssl.CERT_REQUIRED


def test_the_stand_in_builds_the_real_context_once_whatever_is_asked_first() -> None:
    """Whatever a PyMySQL asks of the stand-in besides ``wrap_socket`` is asked of the
    real context, built then, once."""
    pytest.importorskip("pymysql")
    from keyturn.db.pymysql_tls import PreferredContext

    built: list[ssl.SSLContext] = []

    def build() -> ssl.SSLContext:
        built.append(ssl.create_default_context())
        return built[-1]

    stand_in = PreferredContext(build)
    assert stand_in.context is None and not built
    assert stand_in.check_hostname and stand_in.verify_mode == ssl.CERT_REQUIRED
    assert built == [stand_in.context]
    with pytest.raises(AttributeError):
        stand_in._not_an_attribute  # noqa: B018


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_a_table_seen_outside_a_transaction_is_taken_as_there(database: Database) -> None:
    """keyturn's ``has_table``: an absent table is asked about again; one seen only
    inside a transaction (which may roll back its creation) is asked about again;
    one seen outside any transaction is then taken as there, unasked."""
    from keyturn.db.database import connect, has_table, write_transaction

    engine = connect(database.url)
    try:
        with engine.connect() as conn:
            assert not has_table(conn, "kt_probe")
        with pytest.raises(RuntimeError), write_transaction(engine) as conn:
            conn.exec_driver_sql("CREATE TABLE kt_probe (id INTEGER)")
            assert has_table(conn, "kt_probe")
            raise RuntimeError("roll the creation back")
        with engine.connect() as conn:
            assert not has_table(conn, "kt_probe")
        database.execute("CREATE TABLE kt_probe (id INTEGER)")
        with engine.connect() as conn:
            assert has_table(conn, "kt_probe")
        database.execute("DROP TABLE kt_probe")
        with engine.connect() as conn:
            assert has_table(conn, "kt_probe")  # not asked again
    finally:
        engine.dispose()
