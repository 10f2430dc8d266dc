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
    hint = f"<p class='note'>{_code(note)}</p>" if note else ""
    return (
        f"<section class='card' id='{ident}'><h2>{escape(label)}</h2>"
        f"<p class='value'>{escape(value)}</p>{hint}</section>"
    )


def _code(text: str) -> str:
    """``text`` escaped, with its `backticked` commands rendered as code."""
    parts = escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _table(ident: str, caption: str, heads: list[str], rows: list[str], empty: str) -> str:
    """A table that scrolls sideways on a narrow screen, or ``empty`` if no rows."""
    if not rows:
        return f"<p class='hint' id='{ident}-empty'>{escape(empty)}</p>"
    head = "".join(f"<th scope='col'>{escape(h)}</th>" for h in heads)
    return (
        f"<div class='scroll' role='region' aria-label='{escape(caption)}' tabindex='0'>"
        f"<table id='{ident}'><caption>{_code(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _versions(counts: dict[Any, int]) -> str:
    return ", ".join(f"v{v}: {n}" for v, n in sorted(counts.items(), key=lambda i: int(i[0])))


def _action(action: str, target: str, label: str, confirm: str) -> str:
    """A button the page's script turns into a confirmed, CSRF-protected POST."""
    return (
        f"<button type='button' class='action' data-action='{escape(action)}' "
        f"data-target='{escape(target)}' data-confirm='{escape(confirm)}'>{escape(label)}</button>"
    )


def _is_routine(warning: str) -> bool:
    """A status warning the page shows as a key's state instead: a version
    draining after a rotation is the normal state, not something to fix."""
    return warning.startswith("key v") and " is draining" in warning


def dashboard(
    report: dict[str, Any],
    token: ApiToken,
    csrf: str,
    finished: dict[str, Any] | None,
    overview: Any,
) -> str:
    """The page: cards, what needs attention, jobs, keys, columns, audit."""
    columns = report["columns"]
    per_version: dict[str, int] = {}
    for col in columns:
        for version, n in col["by_version"].items():
            per_version[version] = per_version.get(version, 0) + n
    active = report["active_version"]
    plaintext = sum(c["plaintext"] for c in columns)
    legacy = sum(c["legacy"] for c in columns)
    unknown = sum(c.get("unknown", 0) for c in columns)
    cards = [
        _card(
            "Active key",
            f"v{active}",
            f"{report['active_age_days']:.0f} days old; "
            f"cryptoperiod {report['cryptoperiod_days']} days",
            "card-active",
        ),
        _card(
            "Secrets per key version",
            _versions(per_version) or "none",
            f"{len(columns)} column(s) configured",
            "card-versions",
        ),
        _card(
            "Plaintext values",
            str(plaintext),
            "run `keyturn encrypt-existing` to encrypt them" if plaintext else "",
            "card-plaintext",
        ),
        _card(
            "Legacy values",
            str(legacy),
            "run `keyturn import-legacy` to convert them" if legacy else "",
            "card-legacy",
        ),
    ]
    if unknown:
        cards.append(
            _card(
                "Unknown values",
                str(unknown),
                "shaped like ciphertext no reader opens: see docs/ADOPTING.md",
                "card-unknown",
            )
        )
    warnings = [w for w in report["warnings"] if not _is_routine(w)]
    attention = (
        "<section id='attention'><h2>Needs attention</h2><ul class='warnings'>"
        + "".join(f"<li>{_code(w)}</li>" for w in warnings)
        + "</ul></section>"
        if warnings
        else ""
    )
    admin = token.allows("admin")
    return _layout(
        "keyturn: encryption",
        "<header><h1>Encryption</h1>"
        f"<p class='who'>Signed in as <strong>{escape(token.name)}</strong> "
        f"({escape(token.scope)})</p>"
        "<form method='post' action='/admin/sign-out'>"
        f"<input type='hidden' name='csrf' value='{escape(csrf)}'>"
        "<button type='submit' class='link'>Sign out</button></form></header>"
        f"{_banner(finished)}<p id='notice' role='status' hidden></p>"
        f"<div class='cards'>{''.join(cards)}</div>{attention}"
        + _rotate_section(token, active)
        + _running_section(overview, {c["column"]: c["rows"] for c in columns})
        + _jobs_section(overview, admin)
        + _keys_section(report, overview, admin)
        + _columns_section(columns, overview.last_verify)
        + _audit_section(overview.audit)
        + f"<section><h2>How this works</h2><p>{escape(HOW_IT_WORKS)}</p></section>",
        csrf,
    )


def _banner(finished: dict[str, Any] | None) -> str:
    if finished is None:
        return ""
    r = finished.get("report") or {}
    extra = (
        f"key v{r.get('new_version')} is active; {r.get('rotated', 0)} value(s) "
        f"re-encrypted, {r.get('failed', 0)} failed"
        if finished["state"] == "succeeded"
        else escape(str(finished.get("error") or "see `keyturn jobs`"))
    )
    return (
        f"<p class='banner {escape(finished['state'])}' id='finished' role='status'>"
        f"Rotation {escape(finished['id'])} {escape(finished['state'])}: {extra}.</p>"
    )


def _rotate_section(token: ApiToken, active: int) -> str:
    rotate = (
        f"<button type='button' id='rotate' data-active='{active}'>Rotate data key</button>"
        if token.allows("rotate")
        else "<p class='hint'>Your token's scope is read: ask for a rotate token to rotate.</p>"
    )
    return (
        "<section class='rotate'><h2>Rotate</h2>"
        "<p>Creates a new data key version and re-encrypts every secret with it, online.</p>"
        f"{rotate}<div id='progress' hidden><progress id='bar' max='1' value='0' "
        "aria-label='Rotation progress'></progress>"
        "<span id='progress-text' role='status'></span>"
        "<table id='progress-columns'><caption>Progress per column</caption><thead><tr>"
        "<th scope='col'>Column</th><th scope='col'>Rows done</th><th scope='col'>Rows/s</th>"
        "<th scope='col'>ETA</th></tr></thead><tbody></tbody></table></div></section>"
    )


def _running_section(overview: Any, rows: dict[str, int]) -> str:
    """A job running anywhere (the CLI, another host): its progress per column from
    its checkpoints, rows/s since it started and the time left; the page reloads
    itself every few seconds meanwhile."""
    out = []
    for job in overview.jobs:
        if not job.progress:
            continue
        lines = []
        for column, counts in job.progress.items():
            done = sum(counts.values())
            rate = done / job.elapsed_seconds if job.elapsed_seconds > 0 else 0.0
            total = rows.get(column, 0)
            left = f"{(total - done) / rate:.0f} s" if rate and total > done else "-"
            lines.append(
                f"<tr><td><code>{escape(column)}</code></td><td>{done} / {total}</td>"
                f"<td>{rate:.0f}</td><td>{left}</td></tr>"
            )
        out.append(
            f"<section id='running' data-running='{escape(job.id)}'>"
            f"<h2>Running: {escape(job.kind)} <code>{escape(job.id)}</code></h2>"
            + _table(
                f"running-{job.id}",
                f"Started by {job.created_by}; checkpointed progress, refreshed every 5 s",
                ["Column", "Rows done", "Rows/s", "Time left"],
                lines,
                "No checkpoint yet.",
            )
            + "</section>"
        )
    return "".join(out)


def _jobs_section(overview: Any, admin: bool) -> str:
    rows = []
    for job in overview.jobs:
        totals = ", ".join(f"{n} {k}" for k, n in job.totals.items())
        if job.progress:
            done = sum(sum(c.values()) for c in job.progress.values())
            totals = f"{done} value(s) so far (running)"
        held = _versions(job.backups)
        if job.file_copies:
            held = (held + "; " if held else "") + f"{job.file_copies} file copy"
        actions = ""
        if admin and job.kind == "rotate" and job.state != "running":
            if job.backups and job.state != "restored":
                actions += _action(
                    "restore",
                    job.id,
                    "Restore",
                    f"Put back the tokens job {job.id} replaced, where a row still holds what "
                    "the job wrote (values the app changed since are kept)?",
                )
            if job.has_backups:
                actions += _action(
                    "prune",
                    job.id,
                    "Drop backups",
                    f"Drop the backups of job {job.id} ({held})? `restore {job.id}` will no "
                    "longer be possible; key versions nothing else uses then retire.",
                )
        rows.append(
            f"<tr><td><code>{escape(job.id)}</code></td><td>{escape(job.kind)}</td>"
            f"<td>{escape(job.state)}</td>"
            f"<td>{'v' + str(job.target_version) if job.target_version else ''}</td>"
            f"<td>{escape(job.created_at[:19].replace('T', ' '))}</td>"
            f"<td>{escape(job.created_by)}</td><td>{escape(totals)}</td>"
            f"<td>{escape(held) or 'none'}</td><td>{actions}</td></tr>"
        )
    return (
        "<section id='jobs'><h2>Jobs</h2>"
        + _table(
            "jobs-table",
            "Jobs, newest first: the same ids as `keyturn jobs`",
            ["Job", "Kind", "State", "Key", "Started (UTC)", "By", "Outcome", "Backups", "Actions"],
            rows,
            "No job has run yet.",
        )
        + "</section>"
    )


def _keys_section(report: dict[str, Any], overview: Any, admin: bool) -> str:
    in_backups: dict[int, list[str]] = {}
    for job in overview.jobs:
        for version in job.backups:
            in_backups.setdefault(int(version), []).append(job.id)
    rows = []
    for k in reversed(report["keys"]):
        state = k["state"]
        note = ""
        if state == "draining":
            held = in_backups.get(k["version"], [])
            parts = [f"{k['rows']} value(s)"] if k["rows"] else []
            parts += [f"backups of job {j}" for j in held]
            note = "normal after a rotation; retires once nothing uses it" + (
                f": still used by {', '.join(parts)}" if parts else " (the [apps] grace)"
            )
        action = ""
        if admin and state == "retired":
            action = _action(
                "destroy",
                str(k["version"]),
                "Destroy",
                f"Destroy key v{k['version']}? Its wrapped bytes are erased for good: any "
                "value or backup still sealed under it could never be read again "
                "(keyturn refuses while one exists).",
            )
        rows.append(
            f"<tr><td>v{k['version']}</td><td>{escape(state)}"
            + (f"<br><span class='note'>{escape(note)}</span>" if note else "")
            + f"</td><td>{escape(k['created_at'][:19].replace('T', ' '))}</td>"
            f"<td>{k['age_days']:.1f}</td><td>{k['rows']}</td>"
            f"<td>{escape(k['created_by'])}</td><td>{action}</td></tr>"
        )
    return (
        "<section id='keys'><h2>Keys</h2>"
        + _table(
            "history",
            "Key history, newest first",
            ["Version", "State", "Created (UTC)", "Age (days)", "Secrets", "Created by", "Actions"],
            rows,
            "No key yet.",
        )
        + "</section>"
    )


def _columns_section(columns: list[dict[str, Any]], last_verify: dict[str, Any] | None) -> str:
    failed = (last_verify or {}).get("columns_failed", {})
    rows = [
        f"<tr><td><code>{escape(c['column'])}</code>"
        + (f"<br><span class='note'>rows where {escape(c['where'])}</span>" if c["where"] else "")
        + f"</td><td>{c['rows']}</td><td>{escape(_versions(c['by_version'])) or '-'}</td>"
        f"<td>{c['plaintext']}</td><td>{c['legacy']}</td><td>{c.get('unknown', 0)}</td>"
        f"<td>{c['empty']}</td>"
        f"<td>{failed.get(c['column'], 0) if last_verify else 'not run'}</td></tr>"
        for c in columns
    ]
    when = (
        f"Last <code>keyturn verify</code>: {escape(last_verify['at'][:19].replace('T', ' '))} "
        f"UTC by {escape(last_verify['by'])}, {escape(last_verify['outcome'])}."
        if last_verify
        else "No <code>keyturn verify</code> on record: run it to check every value opens."
    )
    return (
        "<section id='columns'><h2>Columns</h2>"
        + _table(
            "columns-table",
            "Values per configured column",
            [
                "Column",
                "Rows",
                "Per key",
                "Plaintext",
                "Legacy",
                "Unknown",
                "Empty",
                "Failed at last verify",
            ],
            rows,
            "No column is configured.",
        )
        + f"<p class='hint'>{when}</p></section>"
    )


def _audit_section(audit: Any) -> str:
    state = (
        f"<p id='audit-state' class='ok'>All {audit.entries} entries verify.</p>"
        if audit.ok
        else "<div id='audit-state' class='error' role='alert'><p>The audit log fails its "
        "check: run <code>keyturn audit verify</code> (SECURITY.md).</p><ul>"
        + "".join(f"<li>{escape(p)}</li>" for p in audit.problems[:5])
        + "</ul></div>"
    )
    head = (
        "<label for='audit-head'>Signed head: keep a copy outside the database "
        "(<code>keyturn audit verify --head FILE</code> checks against it)</label>"
        f"<textarea id='audit-head' readonly rows='3'>{escape(audit.head)}</textarea>"
        if audit.head
        else ""
    )
    rows = [
        f"<tr><td>{e.seq}</td><td>{escape(e.at[:19].replace('T', ' '))}</td>"
        f"<td>{escape(e.actor)}</td><td>{escape(e.action)}</td>"
        f"<td>{escape(str(e.details.get('outcome', '')))}</td></tr>"
        for e in audit.latest
    ]
    return (
        "<section id='audit'><h2>Audit log</h2>"
        + state
        + head
        + _table(
            "audit-table",
            "Latest audit entries, newest first",
            ["#", "At (UTC)", "Actor", "Action", "Outcome"],
            rows,
            "No audit entry yet.",
        )
        + "</section>"
    )


SCRIPT = """\
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const csrf = document.querySelector("meta[name=csrf-token]").content;
  const notice = document.getElementById("notice");
  const said = window.sessionStorage.getItem("keyturn-notice");
  if (said && notice) {
    notice.hidden = false;
    notice.textContent = said;
    window.sessionStorage.removeItem("keyturn-notice");
  }
  const post = (url) => fetch(url, {
    method: "POST", credentials: "same-origin", headers: {"X-CSRF-Token": csrf},
  });
  const paths = {
    prune: (id) => "/admin/api/jobs/" + encodeURIComponent(id) + "/prune",
    restore: (id) => "/admin/api/jobs/" + encodeURIComponent(id) + "/restore",
    destroy: (id) => "/admin/api/keys/" + encodeURIComponent(id) + "/destroy",
  };
  for (const button of document.querySelectorAll("button.action")) {
    button.addEventListener("click", async () => {
      if (!window.confirm(button.dataset.confirm)) return;
      button.disabled = true;
      const r = await post(paths[button.dataset.action](button.dataset.target));
      const body = await r.json();
      if (!r.ok) {
        notice.hidden = false;
        notice.className = "error";
        notice.textContent = "Refused: " + body.error;
        button.disabled = false;
        return;
      }
      window.sessionStorage.setItem("keyturn-notice", body.message);
      window.location.reload();
    });
  }
  let rotating = false;
  if (document.querySelector("[data-running]")) {  // a job running elsewhere: follow it
    window.setTimeout(() => { if (!rotating) window.location.reload(); }, 5000);
  }
  const button = document.getElementById("rotate");
  if (!button) return;
  const box = document.getElementById("progress");
  const bar = document.getElementById("bar");
  const label = document.getElementById("progress-text");
  const perColumn = document.querySelector("#progress-columns tbody");
  const show = (text) => { box.hidden = false; label.textContent = text; };
  const eta = (s) => s === null ? "-" : s < 60 ? Math.ceil(s) + " s" : Math.ceil(s / 60) + " min";
  const cell = (row, text) => { const td = row.insertCell(); td.textContent = text; };
  button.addEventListener("click", async () => {
    const next = Number(button.dataset.active) + 1;
    if (!window.confirm("Rotate to data key v" + next + " and re-encrypt every secret?")) return;
    rotating = true;
    button.disabled = true;
    show("starting…");
    const started = await post("/admin/api/rotate");
    const body = await started.json();
    if (started.status !== 202) {
      show("Could not start: " + body.error);
      button.disabled = false;
      return;
    }
    const poll = async () => {
      const r = await fetch("/admin/api/jobs/" + body.id, {credentials: "same-origin"});
      const job = await r.json();
      const p = job.progress || {done: 0, total: 0, columns: {}};
      bar.max = Math.max(p.total, 1); bar.value = p.done;
      show("job " + job.id + " " + job.state + ": " + p.done + " / " + p.total + " secrets");
      perColumn.replaceChildren();
      for (const [name, c] of Object.entries(p.columns || {})) {
        const row = perColumn.insertRow();
        cell(row, name);
        cell(row, c.done + " / " + c.total);
        cell(row, c.rate === null ? "-" : String(Math.round(c.rate)));
        cell(row, eta(c.eta_seconds));
      }
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
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 8px 16px; }
header h1 { margin-right: auto; }
section { margin: 20px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 12px; }
.card { background: #fff; border-radius: 8px; padding: 12px 16px; box-shadow: 0 1px 2px #0002; }
.card h2 { font-size: 0.9rem; margin: 0; color: #4a5262; }
.card .value { font-size: 1.6rem; margin: 6px 0; font-weight: 600; }
.note, .hint { color: #4a5262; font-size: 0.85rem; }
.error, .warnings li { color: #a11; }
.ok { color: #176b2c; }
code { font-family: ui-monospace, monospace; background: #e9ecf1; padding: 1px 4px;
       border-radius: 4px; font-size: 0.9em; overflow-wrap: anywhere; }
.banner, #notice { padding: 10px 14px; border-radius: 6px; background: #e4f5e8; }
.banner.failed, #notice.error { background: #fbe4e4; }
.scroll { overflow-x: auto; max-width: 100%; }
td code { white-space: nowrap; }
table { border-collapse: collapse; width: 100%; background: #fff; }
caption { text-align: left; color: #4a5262; font-size: 0.85rem; padding: 4px 0; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e3e6eb;
         vertical-align: top; }
button { font: inherit; padding: 6px 14px; border-radius: 6px; border: 1px solid #345;
         background: #234; color: #fff; cursor: pointer; margin: 2px; }
button.action { padding: 3px 10px; font-size: 0.9rem; background: #fff; color: #234; }
button.link { background: none; color: #234; border: none; text-decoration: underline; }
button:focus-visible, .scroll:focus-visible, textarea:focus-visible {
  outline: 3px solid #1a73e8; outline-offset: 2px; }
button:disabled { opacity: 0.6; cursor: default; }
input[type=password] { font: inherit; padding: 6px; width: 100%; max-width: 28em;
                       display: block; margin: 6px 0; box-sizing: border-box; }
textarea { width: 100%; box-sizing: border-box; font-family: ui-monospace, monospace;
           font-size: 0.8rem; margin-top: 4px; }
progress { width: 60%; }
@media (max-width: 600px) {
  main { padding: 12px; }
  .card .value { font-size: 1.3rem; }
  th, td { padding: 4px 6px; font-size: 0.9rem; }
  progress { width: 100%; }
}
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


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}

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
        "/v1/admin/encryption/jobs/{job_id}/prune": {
            "post": {
                **_op(
                    "Drop a job's backups; key versions nothing else uses retire",
                    "admin",
                    errors=("404", "409"),
                ),
                "parameters": [_JOB_ID],
            }
        },
        "/v1/admin/encryption/jobs/{job_id}/restore": {
            "post": {
                **_op(
                    "Put back the tokens a job replaced where rows still hold what it wrote",
                    "admin",
                    errors=("404", "409"),
                ),
                "parameters": [_JOB_ID],
            }
        },
        "/v1/admin/encryption/keys/{version}/destroy": {
            "post": {
                **_op("Destroy a retired key version nothing uses", "admin", errors=("404", "409")),
                "parameters": [
                    {
                        "name": "version",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer"},
                    }
                ],
            }
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics: values per column and version, plaintext, legacy and "
                "unknown counts, key ages, the cryptoperiod, jobs and their rate, the audit "
                "log's check, refused authentications",
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
