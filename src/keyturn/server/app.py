"""The admin HTTP API and page: a thin Starlette shell over the library.

``create_app()`` returns an ASGI app that ``keyturn serve`` runs with uvicorn
and that an existing ASGI app can mount. Every ``/v1`` call needs a bearer
token (``keyturn token create``); the page signs in with one and keeps it in
an HttpOnly, SameSite=Strict cookie, with a double-submit CSRF token on every
POST. Rotations run in a background thread with the CLI's engine and are
audited under the token's name.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from ipaddress import ip_address
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyturn.config import Config
from keyturn.db.database import database_error
from keyturn.db.locking import KeyringLock
from keyturn.engine import jobs
from keyturn.errors import JobNotFound, KeyManagementError, KeyringBusy, KeyturnError
from keyturn.kek import is_managed, new_kek
from keyturn.ops import api_tokens
from keyturn.ops.api_tokens import ApiToken
from keyturn.ops.lifecycle import destroy_key
from keyturn.ops.overview import overview
from keyturn.ops.reports import audit_summary
from keyturn.ops.restore import prune_job, restore_job
from keyturn.ops.rotate import KIND, RotateOptions, Rotator
from keyturn.ops.rotate_kek import rotate_kek
from keyturn.ops.status import status
from keyturn.server import metrics
from keyturn.server import page as html
from keyturn.store import Store
from keyturn.store import open as open_store

log = logging.getLogger("keyturn.server")
SESSION_COOKIE = "keyturn_session"
CSRF_COOKIE = "keyturn_csrf"
SESSION_SECONDS = 8 * 3600
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"


class _FailureLimiter:
    """Counts failed authentications per client; too many in the window → 429.

    Bounded: at most ``max_clients`` are remembered (the least recently failing
    are forgotten first). Beyond that, all clients together may fail at most
    ``limit * GLOBAL_FACTOR`` times a window (:meth:`backstop`), so addresses
    that keep changing cannot guess without end either; the backstop answers
    only failed attempts, so a flood cannot lock out a valid token.
    """

    GLOBAL_FACTOR = 20

    def __init__(self, limit: int, window: float, max_clients: int = 10_000) -> None:
        self.limit, self.window, self.max_clients = limit, window, max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds the client must wait, or 0 if it may try."""
        now = time.monotonic()
        with self._lock:
            seen = self._failures.get(client)
            if seen is None:
                return 0
            wait = self._wait(seen, self.limit, now)
            if not seen:
                del self._failures[client]
            return wait

    def backstop(self) -> int:
        """Seconds before another failed attempt from anywhere is answered with 401."""
        with self._lock:
            return self._wait(self._all, self.limit * self.GLOBAL_FACTOR, time.monotonic())

    def _wait(self, seen: deque[float], limit: int, now: float) -> int:
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if len(seen) < limit:
            return 0
        return max(1, math.ceil(seen[0] + self.window - now))

    def fail(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._all.append(now)
            seen = self._failures.pop(client, None) or deque()
            seen.append(now)
            self._failures[client] = seen  # the most recent last
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)


@dataclass
class _HttpJob:
    """A rotation started over HTTP, as the jobs endpoint reports it."""

    id: str
    actor: str
    state: str = QUEUED
    columns: dict[str, dict[str, int]] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    error: str | None = None
    #: When each column's walk started (monotonic), for rows/s and the ETA.
    started: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        columns: dict[str, dict[str, Any]] = {
            k: dict(v)
            for k, v in dict(self.columns).items()  # the worker adds to it
        }
        now = time.monotonic()
        for name, c in columns.items():
            elapsed = now - self.started.get(name, now)
            rate = c["done"] / elapsed if c["done"] and elapsed > 0 else None
            c["rate"] = round(rate, 1) if rate else None
            left = max(c["total"] - c["done"], 0)
            c["eta_seconds"] = round(left / rate, 1) if rate and self.state == RUNNING else None
        done = sum(c["done"] for c in columns.values())
        total = sum(c["total"] for c in columns.values())
        return {
            "id": self.id,
            "state": self.state,
            "started_by": self.actor,
            "progress": {"done": done, "total": total, "columns": columns},
            "report": self.report,
            "error": self.error,
        }


class _Service:
    """What the routes share: the store, running jobs, the failure limiter."""

    def __init__(self, store: Store, limiter: _FailureLimiter) -> None:
        self.store = store
        self.limiter = limiter
        self.jobs: dict[str, _HttpJob] = {}
        #: Requests refused for a token that does not authenticate (for /metrics).
        self.refused = 0
        self._lock = threading.Lock()
        self._rotate_options = RotateOptions()

    # -- authentication -----------------------------------------------------------

    def authenticate(self, presented: str | None) -> ApiToken | None:
        return self.check(presented)[0]

    def check(self, presented: str | None) -> tuple[ApiToken | None, int]:
        """The token, or None and how long a failed attempt must now wait (0: answer
        401). A token matching a revoked or forged record is also throttled by that
        record's name, whatever address it comes from; a forged one is audited
        until then."""
        if not presented:
            return None, 0
        verdict = api_tokens.authenticate(self.store.audit, presented)
        if verdict.token is not None:
            return verdict.token, 0
        wait = self.limiter.backstop()
        if verdict.refused is not None:
            key = f"token:{verdict.refused}"
            named = self.limiter.retry_after(key)
            if verdict.forged and not named:
                api_tokens.record_refusal(self.store.audit, verdict.refused)
            self.limiter.fail(key)
            wait = max(wait, named)
        return None, wait

    # -- rotations ------------------------------------------------------------------

    def _running_here(self) -> str | None:
        """Why a rotation from this server blocks another; the caller holds the lock."""
        if any(j.state in (QUEUED, RUNNING) for j in self.jobs.values()):
            return "a rotation started from this server is running"
        return None

    def busy(self) -> str | None:
        """Why a rotation cannot start now, or None."""
        with self._lock:
            here = self._running_here()
        if here:
            return here
        job = jobs.running_elsewhere(self.store.engine, KIND)
        return f"rotation job {job.id} is running ({job.owner})" if job is not None else None

    def start_rotation(self, actor: str) -> _HttpJob | KeyringBusy | str:
        """Queue a rotation in a background thread, holding the keyring lock from
        here; the reason it is refused otherwise."""
        reason = self.busy()
        if reason:
            return reason
        with self._lock:  # checked again: another request may have started one meanwhile
            here = self._running_here()
            if here:
                return here
            try:
                lock = KeyringLock(self.store.engine, KIND).acquire()
            except KeyringBusy as exc:
                return exc
            job = _HttpJob(jobs.new_id(), actor)  # the job's id in keyturn_jobs too
            self.jobs[job.id] = job
        threading.Thread(target=self._rotate, args=(job, lock), daemon=True).start()
        return job

    def _rotate(self, job: _HttpJob, lock: KeyringLock) -> None:
        job.state = RUNNING

        def progress(label: str, total: int) -> Callable[[int], None]:
            counts = job.columns.setdefault(label, {"done": 0, "total": total})
            counts["total"] = total
            job.started.setdefault(label, time.monotonic())

            def advance(rows: int) -> None:
                counts["done"] += rows

            return advance

        try:
            with self.store.audit.operation(
                job.actor, "rotate", {"http_job": job.id}, deferred=True
            ) as out:
                report = Rotator(
                    self.store,
                    self._rotate_options,
                    actor=job.actor,
                    progress=progress,
                    before_write=out.begin,
                    lock=lock,
                    job_id=job.id,
                ).run()
                out.update(audit_summary(report))
        except KeyturnError as exc:
            job.error, job.state = str(exc), FAILED
            log.error("rotation %s failed: %s", job.id, exc)
            return
        except Exception as exc:  # a database error: its driver text may hold values
            job.error, job.state = f"{type(exc).__name__}; see the server log", FAILED
            # The driver's first line, quoted text removed; never the traceback,
            # whose exception may carry the statement's values.
            log.error("rotation %s failed: %s", job.id, database_error(exc))
            return
        job.report = report.to_dict()
        job.state = FAILED if report.failed else SUCCEEDED
        resumed = report.extra.get("job")
        if resumed and resumed != job.id:  # an unfinished job was resumed: known by both ids
            self.jobs[resumed] = job

    def job(self, job_id: str) -> dict[str, Any] | None:
        found = self.jobs.get(job_id)
        if found is not None:
            return found.to_dict()
        try:
            db_job = jobs.lookup(self.store.engine, job_id)
        except JobNotFound:
            return None
        state = {jobs.RUNNING: RUNNING, jobs.FAILED: FAILED}.get(db_job.state, SUCCEEDED)
        return {
            "id": db_job.id,
            "state": state,
            "started_by": db_job.created_by,
            "progress": None,
            "report": db_job.report,
            "error": None,
        }

    def rotate_kek(self, actor: str) -> dict[str, Any]:
        """Rotate the KEK from the source the config names (never from a request);
        only where :meth:`rotate_kek_enabled`."""
        spec = self.store.config.server
        with self.store.audit.operation(actor, "rotate-kek", deferred=True) as out:
            new = (
                None if is_managed(self.store.kek) else new_kek(spec.new_kek_env, spec.new_kek_file)
            )
            result = rotate_kek(self.store, new, before_write=out.begin)
            out.update(result.to_dict())
        return result.to_dict()

    def prune(self, job_id: str, actor: str) -> dict[str, Any]:
        """Drop a job's backups (audited by prune itself); a message saying what was done."""
        result = prune_job(self.store, job_id, actor)
        retired = ", ".join(f"v{v}" for v in result.newly_retired) or "none"
        message = (
            f"Job {result.job}: dropped {result.dropped} backed-up token(s) and "
            f"{len(result.removed_files)} file copy(ies); newly retired: {retired}."
        )
        return {**asdict(result), "message": message}

    def restore(self, job_id: str, actor: str) -> dict[str, Any]:
        """Put back the tokens a job replaced, audited as the CLI's restore is."""
        job = jobs.lookup(self.store.engine, job_id)
        with self.store.audit.operation(actor, "restore", {"job": job.id}, deferred=True) as out:
            result = restore_job(self.store, job.id, before_write=out.begin)
            out.update(result.counts())
        message = (
            f"Job {job.id}: restored {result.restored} value(s); {result.changed_since} "
            "changed since and were kept."
        )
        return {**result.to_dict(), "message": message}

    def destroy(self, version: int, actor: str) -> dict[str, Any]:
        """Destroy a retired key version (its own checks and audit entry)."""
        destroy_key(self.store, version, actor)
        return {"version": version, "message": f"Key v{version} was destroyed."}

    def rotate_kek_enabled(self) -> bool:
        spec = self.store.config.server
        return is_managed(self.store.kek) or bool(spec.new_kek_env or spec.new_kek_file)


def _error(status_code: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers or None)


def _busy(exc: KeyringBusy) -> JSONResponse:
    """409 naming what holds the keyring lock, as the CLI's exit 4 does."""
    return JSONResponse({"error": str(exc), "holder": exc.holder}, status_code=409)


def _client(request: Request, trusted: tuple[Any, ...]) -> str:
    """The client's address: the peer's, or, if the peer is a trusted proxy, the
    nearest address in X-Forwarded-For that is not a trusted proxy itself."""
    peer = request.client.host if request.client else "unknown"
    if not trusted or not _in(peer, trusted):
        return peer
    forwarded = [a.strip() for a in request.headers.get("x-forwarded-for", "").split(",")]
    for address in reversed([a for a in forwarded if a]):
        if not _in(address, trusted):
            return address
    return peer


def _in(address: str, networks: tuple[Any, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


Handler = Callable[[Request, ApiToken], Response]


def create_app(
    config_path: str | os.PathLike[str] | Config | None = None,
    *,
    store: Store | None = None,
    max_failures: int = 5,
    failure_window: float = 60.0,
) -> Starlette:
    """The admin ASGI app for the store configured by ``config_path`` (or ``store``).

    Opens the store at once, so a wrong KEK or an unreachable KMS stops the
    server from starting. ``max_failures`` failed authentications from one
    client within ``failure_window`` seconds get 429 with Retry-After.
    """
    service = _Service(
        store or open_store(config_path), _FailureLimiter(max_failures, failure_window)
    )

    def guarded(scope: str, handler: Handler, *, cookie: bool = False) -> Callable[..., Response]:
        """Rate limit, authenticate (bearer, or the page's cookie + CSRF) and check scope."""

        def endpoint(request: Request) -> Response:
            client = _client(request, service.store.config.server.trusted_proxies)
            wait = service.limiter.retry_after(client)
            if wait:
                return _error(
                    429,
                    "too many failed authentications; retry later",
                    **{"Retry-After": str(wait)},
                )
            if cookie:
                presented = request.cookies.get(SESSION_COOKIE)
                if request.method == "POST" and not _csrf_ok(
                    request, request.headers.get("x-csrf-token")
                ):
                    return _error(403, "missing or wrong CSRF token; reload the page")
            else:
                header = request.headers.get("authorization", "")
                kind, _, presented = header.partition(" ")
                presented = presented.strip() if kind.lower() == "bearer" else ""
            token, throttled = service.check(presented)
            if token is None:
                if presented:  # a guess; a request with no credentials is not
                    service.refused += 1
                    service.limiter.fail(client)
                    throttled = max(throttled, service.limiter.backstop())
                if throttled:
                    return _error(
                        429,
                        "too many failed authentications; retry later",
                        **{"Retry-After": str(throttled)},
                    )
                return _error(
                    401,
                    "a valid bearer token is required (`keyturn token create`)",
                    **({} if cookie else {"WWW-Authenticate": "Bearer"}),
                )
            request.state.token_name = token.name
            if not token.allows(scope):
                return _error(
                    403, f"token {token.name!r} has scope {token.scope!r}; this needs {scope!r}"
                )
            return handler(request, token)

        return endpoint

    def healthz(_: Request) -> Response:
        try:
            service.store.ping()
        except Exception:
            return JSONResponse({"status": "unavailable", "database": False}, status_code=503)
        return JSONResponse({"status": "ok", "database": True})

    def openapi(_: Request) -> Response:
        return JSONResponse(html.OPENAPI)

    def encryption(_: Request, __: ApiToken) -> Response:
        return JSONResponse(status(service.store).to_dict())

    def metrics_route(_: Request, __: ApiToken) -> Response:
        store = service.store
        body = metrics.render(
            status(store),
            service.refused,
            jobs.list_all(store.engine),
            store.audit.verify(),
            store.rewrap_needed,
        )
        return Response(body, media_type=metrics.CONTENT_TYPE)

    def rotate(_: Request, token: ApiToken) -> Response:
        job = service.start_rotation(f"token:{token.name}")
        if isinstance(job, KeyringBusy):
            return _busy(job)
        if isinstance(job, str):
            return _error(409, f"{job}; wait for it to finish")
        return JSONResponse(
            {"id": job.id, "state": job.state},
            status_code=202,
            headers={"Location": f"/v1/admin/encryption/jobs/{job.id}"},
        )

    def job(request: Request, _: ApiToken) -> Response:
        found = service.job(request.path_params["job_id"])
        return _error(404, "no such job") if found is None else JSONResponse(found)

    def rotate_kek_route(_: Request, token: ApiToken) -> Response:
        if not service.rotate_kek_enabled():
            return _error(
                403,
                "rotate-kek is not enabled on this server: set [server] "
                "new_kek_env or new_kek_file in keyturn.toml",
            )
        reason = service.busy()
        if reason:
            return _error(409, f"{reason}; wait for it to finish")
        try:
            return JSONResponse(service.rotate_kek(f"token:{token.name}"))
        except KeyringBusy as exc:
            return _busy(exc)
        except KeyturnError as exc:
            return _error(409 if isinstance(exc, KeyManagementError) else 500, str(exc))

    def audit_route(request: Request, _: ApiToken) -> Response:
        try:
            # seq is a 32-bit integer column: a larger ``after`` simply has no entries.
            after = min(max(0, int(request.query_params.get("after", "0"))), 2**31 - 1)
            limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            return _error(400, "after and limit must be integers")
        entries = service.store.audit.entries(after=after, limit=limit + 1)
        more = len(entries) > limit
        entries = entries[:limit]
        return JSONResponse(
            {
                "entries": [e.to_dict() for e in entries],
                "next_after": entries[-1].seq if more and entries else None,
            }
        )

    def lifecycle(action: Callable[[str, str], dict[str, Any]], param: str) -> Handler:
        """An admin action on a job or key: refused (409) while a rotation runs or
        another operation holds the keyring lock, or when its own checks say no."""

        def handler(request: Request, token: ApiToken) -> Response:
            target = request.path_params[param]
            reason = service.busy()
            if reason:
                return _error(409, f"{reason}; wait for it to finish")
            try:
                return JSONResponse(action(target, f"token:{token.name}"))
            except JobNotFound:
                return _error(404, f"no such {param.replace('_', ' ')}")
            except KeyringBusy as exc:
                return _busy(exc)
            except KeyturnError as exc:
                return _error(409, str(exc))

        return handler

    def destroy_version(version: str, actor: str) -> dict[str, Any]:
        if not version.isdigit() or len(version) > 9:
            raise JobNotFound(version)
        return service.destroy(int(version), actor)

    prune_route = lifecycle(service.prune, "job_id")
    restore_route = lifecycle(service.restore, "job_id")
    destroy_route = lifecycle(destroy_version, "version")

    # -- the page ---------------------------------------------------------------------

    def page(request: Request) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        token = service.authenticate(request.cookies.get(SESSION_COOKIE))
        if token is None:
            body = html.sign_in(csrf, request.query_params.get("error"))
        else:
            done = service.jobs.get(request.query_params.get("done", ""))
            body = html.dashboard(
                status(service.store).to_dict(),
                token,
                csrf,
                done.to_dict() if done else None,
                overview(service.store),
            )
        response = HTMLResponse(body, headers=html.SECURITY_HEADERS)
        _set_cookie(request, response, CSRF_COOKIE, csrf)
        return response

    async def sign_in(request: Request) -> Response:
        form = await request.form()
        client = _client(request, service.store.config.server.trusted_proxies)
        back = RedirectResponse("/admin/encryption", status_code=303)
        if service.limiter.retry_after(client):
            log.warning(
                "sign-in refused client=%s: too many failures",
                client,
                extra={"event": "sign_in_refused", "client": client, "reason": "throttled"},
            )
            return RedirectResponse("/admin/encryption?error=locked", status_code=303)
        if not _csrf_ok(request, str(form.get("csrf", ""))):
            log.warning(
                "sign-in refused client=%s: missing or wrong CSRF token",
                client,
                extra={"event": "sign_in_refused", "client": client, "reason": "csrf"},
            )
            return RedirectResponse("/admin/encryption?error=csrf", status_code=303)
        presented = str(form.get("token", "")).strip()
        if service.authenticate(presented) is None:
            service.limiter.fail(client)
            log.warning(
                "sign-in refused client=%s: no live token matches",
                client,
                extra={"event": "sign_in_refused", "client": client, "reason": "no token"},
            )
            return RedirectResponse("/admin/encryption?error=token", status_code=303)
        _set_cookie(request, back, SESSION_COOKIE, presented, max_age=SESSION_SECONDS)
        return back

    async def sign_out(request: Request) -> Response:
        form = await request.form()
        back = RedirectResponse("/admin/encryption", status_code=303)
        if _csrf_ok(request, str(form.get("csrf", ""))):
            back.delete_cookie(SESSION_COOKIE, path="/admin")
        return back

    def page_script(_: Request) -> Response:
        return Response(
            html.SCRIPT, media_type="text/javascript", headers={"Cache-Control": "no-store"}
        )

    def page_style(_: Request) -> Response:
        return Response(html.STYLE, media_type="text/css")

    routes = [
        Route("/healthz", healthz),
        Route("/openapi.json", openapi),
        Route("/v1/admin/encryption", guarded("read", encryption)),
        Route("/v1/admin/encryption/rotate", guarded("rotate", rotate), methods=["POST"]),
        Route("/v1/admin/encryption/jobs/{job_id}", guarded("read", job)),
        Route(
            "/v1/admin/encryption/rotate-kek", guarded("admin", rotate_kek_route), methods=["POST"]
        ),
        Route("/v1/admin/audit", guarded("read", audit_route)),
        Route(
            "/v1/admin/encryption/jobs/{job_id}/prune",
            guarded("admin", prune_route),
            methods=["POST"],
        ),
        Route(
            "/v1/admin/encryption/jobs/{job_id}/restore",
            guarded("admin", restore_route),
            methods=["POST"],
        ),
        Route(
            "/v1/admin/encryption/keys/{version}/destroy",
            guarded("admin", destroy_route),
            methods=["POST"],
        ),
        Route("/metrics", guarded("read", metrics_route)),
        Route("/admin/encryption", page),
        Route("/admin/sign-in", sign_in, methods=["POST"]),
        Route("/admin/sign-out", sign_out, methods=["POST"]),
        Route("/admin/static/admin.js", page_script),
        Route("/admin/static/admin.css", page_style),
        Route("/admin/api/rotate", guarded("rotate", rotate, cookie=True), methods=["POST"]),
        Route("/admin/api/jobs/{job_id}", guarded("read", job, cookie=True)),
        Route(
            "/admin/api/jobs/{job_id}/prune",
            guarded("admin", prune_route, cookie=True),
            methods=["POST"],
        ),
        Route(
            "/admin/api/jobs/{job_id}/restore",
            guarded("admin", restore_route, cookie=True),
            methods=["POST"],
        ),
        Route(
            "/admin/api/keys/{version}/destroy",
            guarded("admin", destroy_route, cookie=True),
            methods=["POST"],
        ),
    ]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        if store is None:  # a store passed in belongs to the caller
            service.store.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        message = "method not allowed" if code == 405 else "no such endpoint (see /openapi.json)"
        return _error(code, message)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(_RequestLog)],
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.keyturn = service
    return app


class _RequestLog:
    """One line per request on the ``keyturn.server`` logger: method, path (never
    the query), status, milliseconds, and the token's name if one was accepted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            token = scope.get("state", {}).get("token_name")
            ms = round((time.perf_counter() - started) * 1000, 1)
            log.info(
                "%s %s %d %.1fms%s",
                scope["method"],
                scope["path"],
                status,
                ms,
                f" token={token}" if token else "",
                extra={
                    "event": "request",
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": ms,
                    "token_name": token,
                },
            )


def _csrf_ok(request: Request, presented: str | None) -> bool:
    expected = request.cookies.get(CSRF_COOKIE)
    return bool(expected and presented) and hmac.compare_digest(
        str(expected).encode(), str(presented).encode()
    )


def _set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None = None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
