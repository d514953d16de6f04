"""The storage seam's shape (DESIGN.md §2): optional capabilities are declared on
``StorageBackend`` and asked for there, never probed; every adapter offers what it declares."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from soniq.backends.awaiting import AwaitStore
from soniq.backends.base import JobStateStore, StorageBackend
from soniq.backends.memory import MemoryBackend
from soniq.backends.postgres import PostgresBackend
from soniq.backends.sqlite import SqliteBackend
from soniq.backends.steps import StepStore
from soniq.backends.stores import (
    AuditStore,
    DashboardStore,
    DeadLetterStore,
    DefinitionStore,
    LogStore,
    QueueStore,
    ScheduleStore,
    WebhookStore,
    WorkflowStore,
)
from soniq.settings import load_settings

SRC = Path(__file__).resolve().parents[2] / "src" / "soniq"
#: The layers above the seam: they reach storage through ``StorageBackend`` only.
CALLERS = sorted([*(SRC / "features").rglob("*.py"), *(SRC / "dashboard").rglob("*.py"),
                  SRC / "app.py", SRC / "sync.py"])

#: The store protocol of each optional store (``probe`` is the other capability).
STORES: dict[str, type] = {
    "dead_letters": DeadLetterStore, "schedules": ScheduleStore, "webhooks": WebhookStore,
    "logs": LogStore, "dashboard": DashboardStore, "definitions": DefinitionStore,
    "queues": QueueStore, "audit": AuditStore, "workflows": WorkflowStore,
    "job_states": JobStateStore, "steps": StepStore,
}
#: What each adapter offers: every store on all three; a probe where there is a database.
HAS_PROBE = {"memory": False, "sqlite": True, "postgres": True}
#: Pushed ends of awaited jobs (``awaits``): not on SQLite, whose waiters poll.
HAS_AWAITS = {"memory": True, "sqlite": False, "postgres": True}


def _probes(path: Path) -> list[str]:
    """``getattr``/``hasattr`` on something named like a backend or a store, and ``isinstance``
    against a store protocol: the capability sniffing the seam replaces."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
            continue
        name, first = node.func.id, ast.unparse(node.args[0]).lower()
        sniffs = (name in ("getattr", "hasattr") and ("backend" in first or "store" in first)
                  or name == "isinstance" and len(node.args) == 2
                  and ast.unparse(node.args[1]).endswith(("Store", "Backend")))
        if sniffs:
            where = path.relative_to(SRC) if path.is_relative_to(SRC) else path.name
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_callers_ask_the_seam_instead_of_probing() -> None:
    assert len(CALLERS) > 10  # the glob found the packages
    found = [hit for path in CALLERS for hit in _probes(path)]
    assert found == [], "read the capability declared on StorageBackend instead:\n" + "\n".join(
        found)


def test_the_probe_scan_catches_sniffing(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('store = getattr(self._backend, "logs", None)\n'
                      "ok = isinstance(store, LogStore)\n"
                      'name = getattr(job, "name", None)\n')
    assert [hit.split(": ", 1)[1] for hit in _probes(sample)] == [
        "getattr(self._backend, 'logs', None)", "isinstance(store, LogStore)"]


def test_every_capability_of_the_protocol_is_covered() -> None:
    declared = {name for name, member in inspect.getmembers(StorageBackend)
                if isinstance(member, property)}
    assert declared == {*STORES, "probe", "awaits"}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StorageBackend:
    """Each adapter, constructed only (construction does no I/O)."""
    if request.param == "memory":
        return MemoryBackend()
    if request.param == "sqlite":
        return SqliteBackend(str(tmp_path / "unused.db"))
    url = "postgresql://nobody@127.0.0.1:1/unused"
    return PostgresBackend(url, load_settings({"database_url": url}))


def test_adapter_offers_its_declared_capabilities(backend: StorageBackend) -> None:
    assert isinstance(backend, StorageBackend)
    for name, protocol in STORES.items():
        store = getattr(backend, name)  # the test itself may look everywhere
        assert isinstance(store, protocol), (backend.name, name)
        assert store is getattr(backend, name), "one store per backend, not one per access"
        for method, spec in inspect.getmembers(protocol, inspect.isfunction):
            if method.startswith("_"):
                continue
            assert (inspect.iscoroutinefunction(getattr(store, method))
                    == inspect.iscoroutinefunction(spec)), (backend.name, name, method)
    assert isinstance(backend.awaits, AwaitStore) is HAS_AWAITS[backend.name]
    if HAS_PROBE[backend.name]:
        assert backend.probe is not None and inspect.iscoroutinefunction(backend.probe)
    else:
        assert backend.probe is None


class _Bare(MemoryBackend):
    """A backend without any optional capability (what a third-party adapter may declare)."""

    probe = None

    def __init__(self) -> None:
        super().__init__()
        self.dead_letters = self.schedules = self.webhooks = self.logs = None  # type: ignore[assignment]
        self.dashboard = None  # type: ignore[assignment]


@pytest.mark.anyio
async def test_a_missing_capability_is_a_clear_error() -> None:
    from soniq import Soniq
    from soniq.errors import UnsupportedOperationError

    async with Soniq(backend=_Bare()) as app:
        with pytest.raises(UnsupportedOperationError, match=r"no dead-letter store"):
            await app.dead_letter.list_jobs()
        assert app.scheduler.supported is False
        with pytest.raises(UnsupportedOperationError, match=r"no schedule store"):
            await app.scheduler.list()
        with pytest.raises(UnsupportedOperationError, match=r"does not store webhooks"):
            await app.webhooks.list()
        with pytest.raises(UnsupportedOperationError, match=r"does not store job logs"):
            await app.logs.search_logs()
        with pytest.raises(UnsupportedOperationError, match=r"nothing to probe"):
            await app.database_info()


# -- module size and SQL assembly -------------------------------------------------------------------
#: The longest a module in src/ may be.
MAX_LINES = 500
#: The modules holding PostgreSQL's core statements and the event log they write.
CORE_SQL = [SRC / "backends" / "postgres" / name
            for name in ("sql.py", "changes.py", "events.py", "names.py")]
#: Modules whose SQL must be written out in full, never edited into shape (other modules there
#: call ``.replace`` on values: LIKE patterns, passwords, ids).
SQL_MODULES = [*CORE_SQL, SRC / "backends" / "postgres" / "webhooks.py",
               SRC / "backends" / "postgres" / "where.py",
               SRC / "backends" / "postgres" / "slots.py"]


def test_no_module_is_over_500_lines() -> None:
    lengths = {path.relative_to(SRC): len(path.read_text(encoding="utf-8").splitlines())
               for path in SRC.rglob("*.py")}
    assert len(lengths) > 50  # the glob found the package
    assert {path: n for path, n in lengths.items() if n > MAX_LINES} == {}


def _replace_calls(path: Path) -> list[str]:
    """``<anything>.replace(...)`` calls: SQL assembled by editing another statement's text."""
    return [f"{path.name}:{node.lineno}: {ast.unparse(node)[:80]}"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "replace"]


def test_no_sql_is_made_by_string_replacement(tmp_path: Path) -> None:
    assert [hit for path in SQL_MODULES for hit in _replace_calls(path)] == []
    sample = tmp_path / "sample.py"
    sample.write_text('HOOKED = PLAIN.replace("\\n)\\n", "),\\nhooks AS (...)")\n')
    assert [hit.split(": ", 1)[1] for hit in _replace_calls(sample)] == [
        "PLAIN.replace('\\n)\\n', '),\\nhooks AS (...)')"]


def test_the_core_statements_know_no_feature() -> None:
    """PostgreSQL's core SQL imports no feature store, names no feature's table, and records
    events only in the generic event log -- only in the variant that records them."""
    from soniq.backends.postgres import changes, events, sql

    for path in CORE_SQL:
        imported = {node.module for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(node, ast.ImportFrom)}
        assert imported <= {"__future__", "dataclasses", "typing", "soniq.backends.base",
                            "soniq.backends.postgres.events", "soniq.backends.postgres.changes",
                            "soniq.backends.postgres.names", "soniq.backends.postgres.keys",
                            "soniq.backends.postgres.slots"}, path.name
    for schema, prefix in ((None, ""), ("alpha", '"alpha".')):
        q = sql.build(schema)
        texts = [value for module in (sql, changes, events) for value in vars(module).values()
                 if isinstance(value, str)]
        texts += [value for value in vars(q).values() if isinstance(value, str)]
        texts += [value for value in vars(q.slots).values() if isinstance(value, str)]
        texts += [value for value in vars(q.keys).values() if isinstance(value, str)]
        for statements in (q.plain, q.logged):
            texts += [getattr(statements, field) for field in statements.__dataclass_fields__]
        assert len(texts) > 30
        assert not [text for text in texts if "soniq_webhook" in text or "soniq_schedule" in text]
        record = f"INSERT INTO {prefix}soniq_events"
        for field in ("complete_jobs", "heartbeat"):  # hot: record only while this process reads
            assert "soniq_events" not in getattr(q.plain, field), field
            assert getattr(q.logged, field).count(record) == 1, field
        for field in ("cancel_job", "rescue_jobs"):  # rare: while the database names a reader
            for statements in (q.plain, q.logged):
                text = getattr(statements, field)
                assert text.count(record) == 1, field
                assert f"EXISTS (SELECT 1 FROM {prefix}soniq_event_readers)" in text, field


def test_architecture_md_names_only_paths_that_exist() -> None:
    """ARCHITECTURE.md describes the code as it is: every module path it names (``src/...``,
    ``tests/...``) exists, and every class or function it names on a module path is defined
    there; a name that moved makes this fail until the document follows."""
    import re

    root = SRC.parents[1]
    text = (root / "ARCHITECTURE.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"(?:src|tests)/[\w/.]+\w", text))
    assert len(paths) > 30  # the document names its modules by path
    assert sorted(p for p in paths if not (root / p).exists()) == []
    # "`Class.method` (`src/soniq/x.py`)": the class and its method are defined in that module.
    named = re.findall(r"`([A-Z]\w*)(?:\.(\w+))?` \(`(src/soniq/[\w/]+\.py)`", text)
    assert len(named) >= 8
    for cls, method, path in named:
        source = (root / path).read_text(encoding="utf-8")
        for name in filter(None, (cls, method)):
            assert re.search(rf"^\s*(?:async def|def|class) {name}\b", source, re.M), (name, path)
