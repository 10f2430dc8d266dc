"""``GET /metrics``: the keyring and every configured column in Prometheus' text
format, built with prometheus-client from the same counts as ``status`` (one
pass per column in the database, no value read), never a key or a secret."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from keyturn.engine.jobs import RUNNING, Job, counts_by_column, seconds_running
from keyturn.keys.audit import AuditCheck
from keyturn.ops.status import StatusReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(
    report: StatusReport,
    refused_authentications: int,
    jobs: Sequence[Job] = (),
    audit: AuditCheck | None = None,
    rewrap_needed: Mapping[str, int] | None = None,
) -> bytes:
    """The metrics of one status report, the jobs, the audit log's check and this
    process's legacy or plaintext reads, in the exposition format."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    values = gauge(
        "keyturn_values", "Values (tokens) per column and key version", ("column", "version")
    )
    plaintext = gauge("keyturn_plaintext_values", "Values still in plaintext", ("column",))
    legacy = gauge("keyturn_legacy_values", "Values in a legacy layout", ("column",))
    unknown = gauge(
        "keyturn_unknown_values", "Values shaped like ciphertext no reader opens", ("column",)
    )
    invalid = gauge("keyturn_invalid_values", "JSON fields that are not a string", ("column",))
    empty = gauge("keyturn_empty_values", "NULL or empty values", ("column",))
    for column in report.columns:
        for version, n in column.by_version.items():
            values.labels(column.column, str(version)).set(n)
        plaintext.labels(column.column).set(column.plaintext)
        legacy.labels(column.column).set(column.legacy)
        unknown.labels(column.column).set(column.unknown)
        invalid.labels(column.column).set(column.invalid)
        empty.labels(column.column).set(column.empty)
    state = gauge("keyturn_key_state", "1 for each key version's state", ("version", "state"))
    rows = gauge("keyturn_key_values", "Configured values under each key version", ("version",))
    for key in report.keys:
        state.labels(str(key.version), key.state).set(1)
        rows.labels(str(key.version)).set(key.rows)
    gauge("keyturn_active_version", "The key version new values are sealed under").set(
        report.active_version
    )
    gauge("keyturn_active_key_age_days", "Age of the active key version, in days").set(
        report.active_age_days
    )
    gauge("keyturn_cryptoperiod_days", "The configured cryptoperiod, in days").set(
        report.cryptoperiod_days
    )
    gauge("keyturn_warnings", "Warnings `keyturn status` prints").set(len(report.warnings))
    gauge("keyturn_refused_authentications", "Requests refused for a missing or wrong token").set(
        refused_authentications
    )
    states = gauge("keyturn_jobs", "Jobs (rotations, imports) by kind and state", ("kind", "state"))
    for (kind, job_state), n in Counter((j.kind, j.state) for j in jobs).items():
        states.labels(kind, job_state).set(n)
    done = gauge(
        "keyturn_job_values",
        "Values a running job has handled so far, by column and outcome",
        ("job", "column", "outcome"),
    )
    rate = gauge(
        "keyturn_job_rows_per_second",
        "Values a running job has handled per second since it started",
        ("job",),
    )
    for job in jobs:
        if job.state != RUNNING:
            continue
        handled = 0
        for name, counts in counts_by_column(job).items():
            for outcome, n in counts.items():
                path, _, category = outcome.rpartition("\t")  # a JSON field's path, if any
                done.labels(job.id, name + path, category).set(n)
                handled += n
        elapsed = seconds_running(job)
        rate.labels(job.id).set(round(handled / elapsed, 1) if elapsed > 0 else 0)
    if audit is not None:
        gauge("keyturn_audit_ok", "1 if every audit entry and the head verify, else 0").set(
            1 if audit.ok else 0
        )
        gauge("keyturn_audit_entries", "Entries in the audit log").set(audit.entries)
    reads = gauge(
        "keyturn_rewrap_needed_reads",
        "Legacy or plaintext values this process read (an app exports its own)",
        ("column",),
    )
    for name, n in (rewrap_needed or {}).items():
        reads.labels(name).set(n)
    return generate_latest(registry)
