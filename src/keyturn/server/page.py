"""The admin page's HTML, script and style, and the API's OpenAPI document.

Rendered on the server from the status report (counts and key metadata only:
no key, wrapped key or secret is ever on the page). Every value is escaped;
the Content-Security-Policy allows only this server's own script and style.
"""

from __future__ import annotations

from html import escape
from typing import Any

from keyturn.ops.api_tokens import ApiToken

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_SIGN_IN_ERRORS = {
    "token": "That token is not valid (wrong, revoked, or mistyped).",
    "csrf": "The form expired; please try again.",
    "locked": "Too many failed attempts from this address; wait a minute and try again.",
}

HOW_IT_WORKS = (
    "Each secret in the database is encrypted with a data key. The data keys are "
    "themselves encrypted (wrapped) by a key-encryption key that never enters the "
    "database. Rotating the data key creates a new version and re-encrypts every secret "
    "with it in small batches while the application keeps running; old versions are "
    "retired once nothing uses them. Every operation is recorded in a tamper-evident "
    "audit log."
)


def _layout(title: str, body: str, csrf: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title>"
        f"<meta name='csrf-token' content='{escape(csrf)}'>"
        "<link rel='stylesheet' href='/admin/static/admin.css'>"
        "<script src='/admin/static/admin.js' defer></script>"
        f"</head><body><main>{body}</main></body></html>"
    )


def sign_in(csrf: str, error: str | None) -> str:
    message = _SIGN_IN_ERRORS.get(error or "")
    alert = f"<p class='error' role='alert'>{escape(message)}</p>" if message else ""
    return _layout(
        "keyturn: sign in",
        "<h1>keyturn encryption admin</h1>"
        f"{alert}"
        "<form method='post' action='/admin/sign-in' id='sign-in'>"
        f"<input type='hidden' name='csrf' value='{escape(csrf)}'>"
        "<label for='token'>Admin token</label>"
        "<input type='password' id='token' name='token' autocomplete='off' required>"
        "<button type='submit'>Sign in</button></form>"
        "<p class='hint'>Create a token with <code>keyturn token create --name NAME "
        "--scope rotate</code>.</p>",
        csrf,
    )


def _card(label: str, value: str, note: str, ident: str) -> str:
    return (
        f"<section class='card' id='{ident}'><h2>{escape(label)}</h2>"
        f"<p class='value'>{escape(value)}</p><p class='note'>{escape(note)}</p></section>"
    )


def dashboard(
    report: dict[str, Any],
    token: ApiToken,
    csrf: str,
    finished: dict[str, Any] | None,
    audit_entries: int,
) -> str:
    columns = report["columns"]
    per_version: dict[str, int] = {}
    for col in columns:
        for version, n in col["by_version"].items():
            per_version[version] = per_version.get(version, 0) + n
    active = report["active_version"]
    cards = "".join(
        [
            _card(
                "Active key",
                f"v{active}",
                f"{report['active_age_days']:.0f} days old; "
                f"cryptoperiod {report['cryptoperiod_days']} days",
                "card-active",
            ),
            _card(
                "Secrets per key version",
                ", ".join(
                    f"v{v}: {n}" for v, n in sorted(per_version.items(), key=lambda i: int(i[0]))
                )
                or "none",
                f"{len(columns)} column(s) configured",
                "card-versions",
            ),
            _card(
                "Plaintext values",
                str(sum(c["plaintext"] for c in columns)),
                "run `keyturn encrypt-existing` to encrypt them",
                "card-plaintext",
            ),
            _card(
                "Legacy values",
                str(sum(c["legacy"] for c in columns)),
                "run `keyturn import-legacy` to convert them",
                "card-legacy",
            ),
        ]
    )
    history = "".join(
        f"<tr><td>v{k['version']}</td><td>{escape(k['state'])}</td>"
        f"<td>{escape(k['created_at'][:19].replace('T', ' '))}</td>"
        f"<td>{k['age_days']:.1f}</td><td>{k['rows']}</td><td>{escape(k['created_by'])}</td></tr>"
        for k in reversed(report["keys"])
    )
    warnings = "".join(f"<li>{escape(w)}</li>" for w in report["warnings"])
    banner = ""
    if finished is not None:
        r = finished.get("report") or {}
        extra = (
            f"key v{r.get('new_version')} is active; {r.get('rotated', 0)} value(s) "
            f"re-encrypted, {r.get('failed', 0)} failed"
            if finished["state"] == "succeeded"
            else escape(str(finished.get("error") or "see `keyturn jobs`"))
        )
        banner = (
            f"<p class='banner {escape(finished['state'])}' id='finished' role='status'>"
            f"Rotation {escape(finished['state'])}: {extra}.</p>"
        )
    can_rotate = token.allows("rotate")
    rotate = (
        "<button type='button' id='rotate' data-active='" + str(active) + "'>Rotate data key"
        "</button>"
        if can_rotate
        else "<p class='hint'>Your token's scope is read: ask for a rotate token to rotate.</p>"
    )
    return _layout(
        "keyturn: encryption",
        "<header><h1>Encryption</h1>"
        f"<p class='who'>Signed in as <strong>{escape(token.name)}</strong> "
        f"({escape(token.scope)})</p>"
        "<form method='post' action='/admin/sign-out'>"
        f"<input type='hidden' name='csrf' value='{escape(csrf)}'>"
        "<button type='submit' class='link'>Sign out</button></form></header>"
        f"{banner}<div class='cards'>{cards}</div>"
        + (f"<ul class='warnings'>{warnings}</ul>" if warnings else "")
        + "<section class='rotate'><h2>Rotate</h2>"
        "<p>Creates a new data key version and re-encrypts every secret with it, online.</p>"
        f"{rotate}<div id='progress' hidden><progress id='bar' max='1' value='0'></progress>"
        "<span id='progress-text' role='status'></span></div></section>"
        "<section><h2>Key history</h2><table id='history'><thead><tr><th>Version</th>"
        "<th>State</th><th>Created (UTC)</th><th>Age (days)</th><th>Secrets</th>"
        f"<th>Created by</th></tr></thead><tbody>{history}</tbody></table></section>"
        f"<section><h2>How this works</h2><p>{escape(HOW_IT_WORKS)}</p>"
        f"<p class='hint'>Audit log: {audit_entries} entries (<code>keyturn audit verify"
        "</code> checks them).</p></section>",
        csrf,
    )


SCRIPT = """\
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const button = document.getElementById("rotate");
  if (!button) return;
  const csrf = document.querySelector("meta[name=csrf-token]").content;
  const box = document.getElementById("progress");
  const bar = document.getElementById("bar");
  const label = document.getElementById("progress-text");
  const show = (text) => { box.hidden = false; label.textContent = text; };
  button.addEventListener("click", async () => {
    const next = Number(button.dataset.active) + 1;
    if (!window.confirm("Rotate to data key v" + next + " and re-encrypt every secret?")) return;
    button.disabled = true;
    show("starting…");
    const started = await fetch("/admin/api/rotate", {
      method: "POST", credentials: "same-origin", headers: {"X-CSRF-Token": csrf},
    });
    const body = await started.json();
    if (started.status !== 202) {
      show("Could not start: " + body.error);
      button.disabled = false;
      return;
    }
    const poll = async () => {
      const r = await fetch("/admin/api/jobs/" + body.id, {credentials: "same-origin"});
      const job = await r.json();
      const p = job.progress || {done: 0, total: 0};
      bar.max = Math.max(p.total, 1); bar.value = p.done;
      show(job.state + ": " + p.done + " / " + p.total + " secrets");
      if (job.state === "succeeded" || job.state === "failed") {
        window.location.assign("/admin/encryption?done=" + encodeURIComponent(body.id));
      } else {
        window.setTimeout(poll, 400);
      }
    };
    poll();
  });
});
"""

STYLE = """\
body { font-family: system-ui, sans-serif; margin: 0; background: #f5f6f8; color: #1d2330; }
main { max-width: 960px; margin: 0 auto; padding: 24px; }
header { display: flex; align-items: baseline; gap: 16px; }
header h1 { margin-right: auto; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; }
.card { background: #fff; border-radius: 8px; padding: 12px 16px; box-shadow: 0 1px 2px #0002; }
.card h2 { font-size: 0.9rem; margin: 0; color: #5a6272; }
.card .value { font-size: 1.6rem; margin: 6px 0; font-weight: 600; }
.note, .hint { color: #5a6272; font-size: 0.85rem; }
.error, .warnings li { color: #a11; }
.banner { padding: 10px 14px; border-radius: 6px; background: #e4f5e8; }
.banner.failed { background: #fbe4e4; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e3e6eb; }
button { font: inherit; padding: 6px 14px; border-radius: 6px; border: 1px solid #345;
         background: #234; color: #fff; cursor: pointer; }
button.link { background: none; color: #234; border: none; text-decoration: underline; }
input[type=password] { font: inherit; padding: 6px; width: 28em; display: block; margin: 6px 0; }
progress { width: 60%; }
"""

_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}}
        }
    },
}
_AUTH = {"401": _ERROR, "403": _ERROR, "429": _ERROR}


def _op(
    summary: str, scope: str | None, ok: str = "200", errors: tuple[str, ...] = ()
) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: {"description": summary}}
    if scope:
        responses.update(_AUTH)
    responses.update({code: _ERROR for code in errors})
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if scope:
        op["security"] = [{"bearer": []}]
        op["description"] = f"Needs a token with scope `{scope}` or above."
    return op


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "keyturn admin API", "version": "1"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/healthz": {"get": _op("Liveness and database reachability", None, errors=("503",))},
        "/v1/admin/encryption": {
            "get": _op("Status: active key, key history, counts per column", "read")
        },
        "/v1/admin/encryption/rotate": {
            "post": _op(
                "Start a data-key rotation as a background job", "rotate", "202", errors=("409",)
            )
        },
        "/v1/admin/encryption/jobs/{job_id}": {
            "get": {
                **_op("A job's state, progress and report", "read", errors=("404",)),
                "parameters": [
                    {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            }
        },
        "/v1/admin/encryption/rotate-kek": {
            "post": _op(
                "Rewrap every data key under the KEK named by the server's config",
                "admin",
                errors=("409",),
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics: values per column and version, plaintext and legacy "
                "counts, key ages, the cryptoperiod, refused authentications",
                "read",
            )
        },
        "/v1/admin/audit": {
            "get": {
                **_op("Audit entries, oldest first, paginated by seq", "read", errors=("400",)),
                "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
            }
        },
    },
}
