"""``soniq doctor``: check the setup a worker depends on and say how to fix what is wrong.

The checks are pure functions of the settings and of ``app.database_info()``, so each verdict is
tested without staging the failure; this module only gathers the facts and prints the verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from soniq.cli._common import AppPath, Target, UsageError, open_app, run
from soniq.cli._output import print_json, print_line, print_table
from soniq.errors import ConfigurationError, DatabaseError, SchemaMissingError, SoniqError
from soniq.settings import redact_url

if TYPE_CHECKING:
    from soniq.settings import SoniqSettings
    from soniq.types import DatabaseInfo

__all__ = ["Check", "doctor", "judge"]

Verdict = Literal["ok", "warn", "fail", "skip"]

#: Clock skew (seconds) above which schedules and delayed jobs visibly drift.
SKEW_WARN = 1.0
SKEW_FAIL = 5.0
#: Connections a worker's own loops hold (claims, finishes, heartbeat/cleanup).
WORKER_CONNECTIONS = 3


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    verdict: Verdict
    detail: str


def doctor(app_path: AppPath = None, /, *,
           json: bool = False, target: Target = Target()) -> int:  # noqa: B008
    """Check the database URL, reachability, schema version, LISTEN/NOTIFY, PgBouncer pooling
    mode, clock skew between this machine and the database, and pool sizing. Exits 3 when a
    check fails (warnings do not fail).

    Parameters
    ----------
    app_path
        Your Soniq instance as module:attribute (optional; default: SONIQ_APP, else settings
        from SONIQ_* env). Pool and statement-cache settings are checked as it configures them.
    json
        Print the checks as JSON.
    """
    try:
        soniq = open_app(target, app_path=app_path)
    except UsageError:
        raise
    except ConfigurationError as exc:
        return _report([Check("database URL", "fail", exc.message)], json)
    info: DatabaseInfo | None = None
    problem: SoniqError | None = None
    try:
        info = run(soniq, soniq.database_info)
    except (DatabaseError, ConfigurationError) as exc:
        problem = exc
    checks = judge(soniq.settings, soniq.backend.name, info, problem,
                   url=redact_url(soniq.settings.database_url))
    return _report(checks, json)


def _report(checks: list[Check], json: bool) -> int:
    failed = any(check.verdict == "fail" for check in checks)
    if json:
        print_json({"ok": not failed, "checks": [
            {"name": c.name, "verdict": c.verdict, "detail": c.detail} for c in checks]})
    else:
        rows = [{"check": c.name, "verdict": c.verdict.upper(), "detail": c.detail} for c in checks]
        print_table(rows, [("verdict", "result"), ("check", "check"), ("detail", "detail")])
        print_line("some checks failed" if failed else "all checks passed",
                   style="bold red" if failed else "bold green")
    return 3 if failed else 0


def judge(settings: SoniqSettings, backend: str, info: DatabaseInfo | None,
          problem: SoniqError | None, *, url: str) -> list[Check]:
    """The verdicts, from the settings and what the database said (``problem``: why it could
    not be asked)."""
    if info is None:
        reason = problem.message if problem is not None else "no answer"
        if isinstance(problem, ConfigurationError):
            return [Check("database URL", "fail", reason)]
        checks = [_url(settings, backend, url)]
        if backend == "postgres":
            checks.append(_pool(settings, None))
        if isinstance(problem, SchemaMissingError):  # the server answered; the database is missing
            return [*checks, Check("reachable", "ok", "the server answered"),
                    Check("schema", "fail", reason)]
        return [*checks, Check("reachable", "fail", reason)]
    checks = [_url(settings, backend, url)]
    round_trip = "" if info["round_trip"] is None else f", round trip {info['round_trip'] * 1000:.1f} ms"
    checks.append(Check("reachable", "ok", f"{info['server_version']}{round_trip}"))
    checks.append(_schema(info))
    if backend == "postgres":
        checks += [_pgbouncer(settings, info), _listen(settings, info), _pool(settings, info)]
    checks.append(_clock(info))
    return checks


def _url(settings: SoniqSettings, backend: str, url: str) -> Check:
    """The URL (redacted), the backend and, when set, ``db_schema``."""
    schema = "" if settings.db_schema is None else f", schema {settings.db_schema}"
    return Check("database URL", "ok", f"{url} ({backend}{schema})")


def _schema(info: DatabaseInfo) -> Check:
    applied, pending = info["applied_migrations"], info["pending_migrations"]
    if not pending:
        return Check("schema", "ok", f"version {applied[-1] if applied else 'none'} (up to date)")
    if not applied:
        return Check("schema", "fail", "no Soniq schema: run `soniq setup`")
    return Check("schema", "fail", f"version {applied[-1]}, {len(pending)} migration(s) pending "
                                   f"({', '.join(pending)}): run `soniq setup`")


def _pgbouncer(settings: SoniqSettings, info: DatabaseInfo) -> Check:
    cache = settings.statement_cache_size
    proxy = bool(info["via_proxy"])
    pooled = bool(info["transaction_pooling"]) or (proxy and info["listen_works"] is False)
    if pooled and cache > 0:
        return Check("pooling mode", "fail",
                     "transaction pooling (PgBouncer or similar) with prepared statements on: set "
                     "SONIQ_STATEMENT_CACHE_SIZE=0 (workers then poll instead of LISTEN)")
    if pooled:
        listen = ("LISTEN on listen_url" if settings.listen_url is not None
                  else f"LISTEN off: workers poll every {settings.poll_interval:g}s")
        return Check("pooling mode", "ok",
                     f"transaction pooling (PgBouncer or similar); statement cache off, {listen}")
    if proxy:
        return Check("pooling mode", "ok", "through a proxy or pooler in session mode"
                     + ("; statement cache off" if cache == 0 else ""))
    if cache == 0:
        return Check("pooling mode", "warn",
                     "direct connection with statement_cache_size=0, the PgBouncer transaction "
                     "pooling mode: prepared statements and LISTEN are off for nothing; unset "
                     "SONIQ_STATEMENT_CACHE_SIZE unless a transaction pooler sits in between")
    return Check("pooling mode", "ok", "direct connection")


def _listen(settings: SoniqSettings, info: DatabaseInfo) -> Check:
    if settings.listen_url is not None:
        return _listen_url(settings.listen_url, info)
    if settings.statement_cache_size == 0:
        return Check("LISTEN/NOTIFY", "skip", "off (statement_cache_size=0): workers poll every "
                                              f"{settings.poll_interval:g}s")
    if info["listen_works"]:
        return Check("LISTEN/NOTIFY", "ok", "a notification arrived; workers wake at once")
    return Check("LISTEN/NOTIFY", "fail",
                 "a notification never arrived (a pooler in transaction mode, or a proxy that "
                 "drops it); workers fall back to polling every "
                 f"{settings.poll_interval:g}s. Connect directly or use session pooling")


def _listen_url(listen_url: str, info: DatabaseInfo) -> Check:
    """LISTEN on the ``listen_url`` connection (PgBouncer for everything else)."""
    where = f"listen_url {redact_url(listen_url)}"
    found = info["listen_url"]
    if found is None:
        return Check("LISTEN/NOTIFY", "skip", f"{where} was not probed")
    if found["error"] is not None:
        return Check("LISTEN/NOTIFY", "fail", f"{where} is unreachable ({found['error']}): "
                                              "workers will not start")
    if found["transaction_pooling"]:
        return Check("LISTEN/NOTIFY", "fail",
                     f"{where} is reached through transaction pooling, where no LISTEN session can "
                     "be held: point it at PostgreSQL directly (or at session pooling)")
    if found["listen_works"]:
        return Check("LISTEN/NOTIFY", "ok", f"on {where}: a notification sent over database_url "
                                            "arrived; workers wake at once")
    return Check("LISTEN/NOTIFY", "fail",
                 f"a notification sent over database_url never arrived on {where}: does it name "
                 "the same database as database_url?")


def _clock(info: DatabaseInfo) -> Check:
    skew = info["clock_skew"]
    if skew is None:
        return Check("clock skew", "skip", "the database uses this machine's clock")
    text = f"database clock is {abs(skew):.2f}s {'ahead of' if skew >= 0 else 'behind'} this machine"
    if abs(skew) >= SKEW_FAIL:
        return Check("clock skew", "fail", f"{text}: delayed jobs and schedules will run off time; "
                                           "sync both clocks (NTP)")
    if abs(skew) >= SKEW_WARN:
        return Check("clock skew", "warn", f"{text}; consider syncing clocks (NTP)")
    return Check("clock skew", "ok", text)


def _pool(settings: SoniqSettings, info: DatabaseInfo | None) -> Check:
    needed = WORKER_CONNECTIONS + settings.pool_headroom
    size = settings.pool_max_size
    if size < needed:
        return Check("pool sizing", "fail",
                     f"pool_max_size={size} is below the {WORKER_CONNECTIONS} connections a "
                     f"worker's loops use plus pool_headroom={settings.pool_headroom}; set "
                     f"SONIQ_POOL_MAX_SIZE>={needed}")
    limit = None if info is None else info["max_connections"]
    if limit is not None and size + 1 > limit:
        return Check("pool sizing", "warn",
                     f"pool_max_size={size} (+1 LISTEN) per worker process exceeds the server's "
                     f"max_connections={limit}; lower SONIQ_POOL_MAX_SIZE")
    return Check("pool sizing", "ok",
                 f"pool_max_size={size} covers {WORKER_CONNECTIONS} worker loops + "
                 f"pool_headroom={settings.pool_headroom}; concurrency={settings.concurrency} "
                 "needs no connections of its own")

