"""SoniqSettings: the spec's defaults, env and .env precedence, ranges and typos."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from soniq import Soniq
from soniq.errors import ConfigurationError, UnknownSettingError
from soniq.settings import SoniqSettings, load_settings

SPEC_DEFAULTS = {
    "concurrency": 4,
    "max_retries": 3,
    "priority": 100,
    "queues": ["default"],
    "result_ttl": 300,
    "job_timeout": 300.0,
    "pool_min_size": 5,
    "pool_max_size": 20,
    "pool_headroom": 2,
    "poll_interval": 5.0,
    "heartbeat_interval": 5.0,
    "heartbeat_timeout": 300.0,
    "cleanup_interval": 300.0,
    "error_retry_delay": 5.0,
    "log_level": "INFO",
    "debug": False,
    "environment": "production",
    "database_url": "postgresql://postgres@localhost/soniq",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SONIQ_* variables and no .env leak in from the machine running the tests."""
    import os

    for key in list(os.environ):
        if key.startswith("SONIQ_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_spec_defaults() -> None:
    settings = load_settings({})
    assert {key: getattr(settings, key) for key in SPEC_DEFAULTS} == SPEC_DEFAULTS


def test_every_spec_setting_reads_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "concurrency": ("7", 7), "max_retries": ("9", 9), "priority": ("5", 5),
        "result_ttl": ("60", 60), "job_timeout": ("12.5", 12.5), "pool_min_size": ("1", 1),
        "pool_max_size": ("3", 3), "pool_headroom": ("0", 0), "poll_interval": ("0.5", 0.5),
        "heartbeat_interval": ("0.25", 0.25), "heartbeat_timeout": ("2", 2.0),
        "cleanup_interval": ("1.5", 1.5), "error_retry_delay": ("0.1", 0.1),
        "log_level": ("debug", "DEBUG"), "debug": ("true", True),
        "environment": ("testing", "testing"), "database_url": ("jobs.db", "jobs.db"),
    }
    for key, (raw, _) in values.items():
        monkeypatch.setenv(f"SONIQ_{key.upper()}", raw)
    settings = load_settings({})
    assert {key: getattr(settings, key) for key in values} == {k: v for k, (_, v) in values.items()}


def test_queues_is_a_comma_list_in_env_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SONIQ_QUEUES=emails, reports\n")
    assert load_settings({}).queues == ["emails", "reports"]
    monkeypatch.setenv("SONIQ_QUEUES", "a,b,c")
    assert load_settings({}).queues == ["a", "b", "c"]
    assert load_settings({"queues": ["x"]}).queues == ["x"]


def test_precedence_kwargs_env_dotenv_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert load_settings({}).concurrency == 4
    (tmp_path / ".env").write_text("SONIQ_CONCURRENCY=6\nSONIQ_PRIORITY=50\n")
    assert load_settings({}).concurrency == 6
    monkeypatch.setenv("SONIQ_CONCURRENCY", "8")
    settings = load_settings({})
    assert (settings.concurrency, settings.priority) == (8, 50)
    assert load_settings({"concurrency": 9}).concurrency == 9
    assert Soniq(backend="memory", concurrency=11).settings.concurrency == 11


def test_job_timeout_zero_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIQ_JOB_TIMEOUT", "0")
    assert load_settings({}).job_timeout is None
    assert load_settings({"job_timeout": 0}).job_timeout is None
    assert load_settings({"job_timeout": None}).job_timeout is None


def test_unknown_setting_suggests_the_closest() -> None:
    with pytest.raises(UnknownSettingError, match=r"'concurency'.*did you mean 'concurrency'"):
        Soniq(backend="memory", concurency=3)
    with pytest.raises(UnknownSettingError, match="'zzz'"):
        load_settings({"zzz": 1})


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"max_retries": -1}, "max_retries"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"job_timeout": -1}, "job_timeout"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"heartbeat_interval": 10, "heartbeat_timeout": 5}, "heartbeat_timeout"),
        ({"pool_min_size": 10, "pool_max_size": 5}, "pool_min_size"),
    ],
)
def test_out_of_range_values_name_the_field(overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        load_settings(overrides)


def test_result_ttl_is_at_most_ten_years() -> None:
    """A longer one made every successful job crash the worker (a date past datetime's range)."""
    assert load_settings({"result_ttl": 315_360_000}).result_ttl == 315_360_000
    with pytest.raises(ConfigurationError,
                       match=r"result_ttl: .* less than or equal to 315360000 \(got 315360001\)"):
        load_settings({"result_ttl": 315_360_001})


def test_short_intervals_are_allowed_for_tests() -> None:
    settings = load_settings({"heartbeat_interval": 0.01, "heartbeat_timeout": 0.05,
                              "poll_interval": 0.01, "cleanup_interval": 0.02})
    assert settings.heartbeat_timeout == 0.05


def test_errors_never_echo_the_database_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings({"database_url": "", "concurrency": 0})
    assert "database_url" in str(info.value)


def test_log_level_and_debug_set_the_soniq_logger() -> None:
    Soniq(backend="memory", log_level="warning")
    assert logging.getLogger("soniq").level == logging.WARNING
    Soniq(backend="memory", debug=True)
    assert logging.getLogger("soniq").level == logging.DEBUG
    Soniq(backend="memory")
    assert logging.getLogger("soniq").level == logging.INFO


def test_settings_are_frozen() -> None:
    settings = SoniqSettings()
    with pytest.raises(Exception, match="frozen"):
        settings.concurrency = 2  # type: ignore[misc]


def test_unsafe_settings_are_reported_for_production_only() -> None:
    assert load_settings({}).unsafe() == []
    risky = {"debug": True, "job_timeout": 0, "heartbeat_interval": 5, "heartbeat_timeout": 6}
    problems = load_settings(risky).unsafe()
    assert len(problems) == 3 and "debug" in problems[0] and "job_timeout" in problems[1]
    assert load_settings({**risky, "environment": "development"}).unsafe() == []


def test_listen_url_is_a_postgres_url_kept_out_of_reprs_and_errors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert SoniqSettings().listen_url is None
    monkeypatch.setenv("SONIQ_LISTEN_URL", "postgresql://app:s3cret@db:5432/app")
    settings = SoniqSettings()
    assert settings.listen_url == "postgresql://app:s3cret@db:5432/app"
    assert "s3cret" not in repr(settings)
    monkeypatch.setenv("SONIQ_LISTEN_URL", " ")  # an empty variable means unset
    assert SoniqSettings().listen_url is None
    with pytest.raises(ConfigurationError, match="listen_url: must be a PostgreSQL URL") as exc:
        load_settings({"listen_url": "mysql://app:s3cret@db/app"})
    assert "s3cret" not in exc.value.message


@pytest.mark.parametrize("url", ["memory://", "jobs.db"])
def test_listen_url_is_refused_off_postgres(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="listen_url .*PostgreSQL setting"):
        Soniq(database_url=str(tmp_path / url) if url.endswith(".db") else url,
              listen_url="postgresql://postgres@localhost/soniq")
