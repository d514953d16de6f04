"""``SoniqSettings``: every setting any part of Soniq reads, in one place.

Precedence, highest first: keyword arguments > ``SONIQ_*`` environment variables > ``.env`` file
in the working directory > defaults. Durations are float seconds. A feature that needs a setting
adds its field here.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pydantic
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from soniq.errors import ConfigurationError, UnknownSettingError, did_you_mean

__all__ = ["DB_SCHEMA", "DEFAULT_DATABASE_URL", "LONGEST_DELAY", "SECRET_URL_PARAMS", "SoniqSettings",
           "load_settings", "redact_url"]

DEFAULT_DATABASE_URL = "postgresql://postgres@localhost/soniq"

#: Settings whose values are never echoed in an error (passwords).
_SECRET_FIELDS = ("database_url", "listen_url", "secret_keys")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SECRET_URL_PARAMS = frozenset({"password", "passfile", "sslpassword"})
#: Ten years in seconds: the longest ``result_ttl``, and the cap on retry delays and snoozes
#: (a later date could overflow ``datetime`` and crash the worker that computes it).
LONGEST_DELAY = 10 * 365 * 86_400
#: A ``db_schema`` Soniq accepts: lowercase letters, digits and ``_``, starting with a letter or
#: ``_``, at most 63 bytes (PostgreSQL's longest identifier); ``pg_*`` is PostgreSQL's own. Quoted
#: and unquoted, such a name is the same schema.
DB_SCHEMA = re.compile(r"(?!pg_)[a-z_][a-z0-9_]{0,62}")


class SoniqSettings(BaseSettings):
    """Soniq's configuration. Every field is also read from ``SONIQ_<FIELD>`` and ``.env``."""

    model_config = SettingsConfigDict(
        env_prefix="SONIQ_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        frozen=True,
    )

    database_url: str = Field(DEFAULT_DATABASE_URL, min_length=1, repr=False,
                              description="PostgreSQL URL, or a SQLite path ending .db/.sqlite/.sqlite3")
    concurrency: int = Field(4, ge=1, le=10_000, description="jobs a worker runs at once")
    max_retries: int = Field(3, ge=0, le=1_000, description="retries for jobs that set none")
    priority: int = Field(100, ge=-32_768, le=32_767,
                          description="priority for jobs that set none; lower runs first")
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["default"],
        description="queues for your code to read (comma-separated in env); not a worker filter",
    )
    result_ttl: int = Field(300, ge=0, le=LONGEST_DELAY,
                            description="seconds a finished job's row and result are kept (at most "
                                        "315360000, ten years)")
    max_result_bytes: int = Field(
        16 * 2**20, ge=1, le=256 * 2**20,
        description="largest result a job may return, in bytes of JSON (after encryption, if "
                    "any); a larger one fails the attempt ('result could not be stored')")
    max_error_bytes: int = Field(
        64 * 2**10, ge=256, le=16 * 2**20,
        description="bytes of an error's message, and of its traceback, stored per failed "
                    "attempt; the middle of a longer text is cut")
    job_timeout: float | None = Field(300.0, ge=0,
                                      description="seconds a job may run; 0 or None disables")
    pool_min_size: int = Field(5, ge=0, le=1_000)
    pool_max_size: int = Field(20, ge=1, le=1_000)
    pool_headroom: int = Field(2, ge=0, le=1_000,
                               description="connections kept free for app.backend.acquire() in jobs")
    poll_interval: float = Field(5.0, gt=0, le=3_600)
    heartbeat_interval: float = Field(5.0, gt=0, le=3_600)
    heartbeat_timeout: float = Field(300.0, gt=0, le=86_400)
    definitions_cache_ttl: float = Field(
        60.0, ge=0, le=86_400,
        description="seconds a producer keeps the stored definition (queue, priority, max "
                    "attempts) of a job name it enqueues without registering it; 0: read it at "
                    "every enqueue")
    cleanup_interval: float = Field(300.0, gt=0, le=86_400)
    unknown_job_grace: float = Field(
        3600.0, ge=0, le=LONGEST_DELAY,
        description="seconds a job must have been due, with no live worker registering its name, "
                    "before the cleanup dead-letters it (a rolling deploy's new job waits for "
                    "the new workers meanwhile), checked every cleanup_interval")
    maintenance_statement_timeout: float = Field(
        60.0, ge=0, le=86_400,
        description="PostgreSQL: seconds each housekeeping statement may run (ANALYZE when a worker "
                    "starts, the rescue, pruning, rollups), set per transaction (SET LOCAL: safe "
                    "with PgBouncer) over the role's or database's statement_timeout; 0 for none")
    error_retry_delay: float = Field(5.0, gt=0, le=3_600)
    shutdown_timeout: float = Field(30.0, ge=0, le=86_400,
                                    description="seconds running jobs get to finish on shutdown")
    log_level: str = Field("INFO", description="level of the 'soniq' logger")
    debug: bool = Field(False, description="DEBUG diagnostics")
    environment: str = Field("production", min_length=1)
    enqueue_validation: Literal["strict", "none"] = Field(
        "strict", description="'none' lets producers enqueue job names they have not registered"
    )
    jobs_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="modules imported by `soniq worker` (comma-separated)"
    )
    statement_cache_size: int = Field(
        100, ge=0, description="asyncpg prepared-statement cache; 0 for PgBouncer transaction pooling"
    )
    listen_url: str | None = Field(
        None, repr=False,
        description="PostgreSQL: a direct (or session-pooled) URL to the same database, used only "
                    "for the worker's LISTEN connection, while database_url goes through PgBouncer "
                    "in transaction mode; LISTEN then stays on with statement_cache_size=0")
    db_schema: str | None = Field(
        None,
        description="PostgreSQL: the schema holding every table, function, sequence, lock key and "
                    "notification channel of this instance (created by `soniq setup`); unset, "
                    "Soniq uses the connection's default schema (public). Lowercase letters, "
                    "digits and _; not pg_*. SQLite and memory refuse it")
    scheduler_interval: float = Field(1.0, gt=0, le=3_600,
                                      description="seconds between a worker's scheduler ticks")
    scheduler_misfire: Literal["skip", "catch_up_once"] = Field(
        "skip", description="missed fire times (after downtime): 'skip' them and wait for the next "
                            "one, or 'catch_up_once' (one job for all of them)"
    )
    scheduler_misfire_grace: float = Field(
        60.0, gt=0, le=86_400,
        description="seconds a fire time may be late and still count as on time (at least 2 ticks)",
    )
    webhook_timeout: float = Field(10.0, gt=0, le=300, description="seconds per webhook request")
    webhook_max_attempts: int = Field(8, ge=1, le=100,
                                      description="attempts per webhook delivery before 'failed'")
    webhook_retry_delay: float = Field(
        5.0, gt=0, le=3_600, description="seconds before a webhook's first retry (doubles each time)")
    webhook_max_retry_delay: float = Field(3_600.0, gt=0, le=86_400,
                                           description="longest wait between webhook retries")
    webhook_allow_private: bool = Field(
        False, description="allow webhook targets on loopback/private/link-local addresses")
    webhook_poll_interval: float = Field(1.0, gt=0, le=3_600,
                                         description="seconds between webhook delivery ticks")
    webhook_reload_interval: float = Field(
        5.0, ge=0, le=3_600, description="seconds a worker caches the webhook endpoint list")
    webhook_delivery_retention: float = Field(
        7 * 86_400.0, gt=0, le=3_650 * 86_400,
        description="seconds delivered and failed webhook deliveries are kept (for deliveries() "
                    "and the dashboard) before a worker deletes them, checked every "
                    "cleanup_interval; pending ones are never deleted")
    audit_retention: float = Field(
        90 * 86_400.0, ge=0, le=LONGEST_DELAY,
        description="seconds audit log entries (queue changes, dashboard writes) are kept before a "
                    "worker deletes them, checked every cleanup_interval; 0 keeps them forever")
    secret_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, repr=False,
        description="keys for app.signing and @app.job(encrypt=True), newest first (comma-separated "
                    "in env): each a Fernet key, or any string of 16+ characters (HKDF-SHA256 derives "
                    "the key); never logged or shown",
    )

    capture_job_logs: bool = Field(
        False, description="store the log records emitted inside jobs (app.logs); touching "
                           "app.logs also turns capture on")
    job_log_level: str = Field("INFO", description="lowest level of job log records kept")
    job_log_flush_interval: float = Field(
        0.5, gt=0, le=3_600, description="seconds between a worker's batched job-log writes")
    job_log_buffer_size: int = Field(
        10_000, ge=1, description="job log records held in memory while they cannot be written; "
                                  "the oldest are dropped first")

    @field_validator("queues", "jobs_modules", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("secret_keys", mode="before")
    @classmethod
    def _secret_list(cls, value: Any) -> Any:
        if isinstance(value, str | SecretStr):
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("secret_keys", mode="after")
    @classmethod
    def _secret_length(cls, value: list[SecretStr]) -> list[SecretStr]:
        for index, key in enumerate(value):
            if len(key.get_secret_value().strip()) < 16:
                # Never echo the key itself, only where it is in the list.
                raise ValueError(f"key #{index + 1} is shorter than 16 characters; use a Fernet key "
                                 "(Fernet.generate_key()) or a long random string")
        return value

    @field_validator("listen_url", mode="before")
    @classmethod
    def _postgres_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip() or None  # SONIQ_LISTEN_URL= (empty) means unset
            if value is not None and not value.startswith(("postgresql://", "postgres://")):
                raise ValueError("must be a PostgreSQL URL (postgresql://...)")
        return value

    @field_validator("db_schema", mode="before")
    @classmethod
    def _schema_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip() or None  # SONIQ_DB_SCHEMA= (empty) means unset
            if value is not None and not DB_SCHEMA.fullmatch(value):
                raise ValueError("must be a schema name of lowercase letters, digits and _ "
                                 "(starting with a letter or _, at most 63 characters, not pg_*)")
        return value

    @field_validator("job_timeout", mode="after")
    @classmethod
    def _zero_disables(cls, value: float | None) -> float | None:
        return None if value == 0 else value

    @field_validator("log_level", "job_log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper()
            if value not in _LOG_LEVELS:
                raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SoniqSettings:
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(
                f"heartbeat_timeout ({self.heartbeat_timeout}) must exceed heartbeat_interval "
                f"({self.heartbeat_interval}), or live workers would be declared dead"
            )
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) must not exceed pool_max_size "
                f"({self.pool_max_size})"
            )
        return self

    def unsafe(self) -> list[str]:
        """Warnings about settings that are risky in ``environment`` (the CLI logs them at start)."""
        if self.environment.lower() not in ("production", "prod"):
            return []
        problems = []
        if self.debug:
            problems.append("debug is on in production: DEBUG logs are verbose and may show job data")
        if self.job_timeout is None:
            problems.append("job_timeout is disabled in production: a hung job holds its slot forever")
        if self.heartbeat_timeout < 3 * self.heartbeat_interval:
            problems.append(
                f"heartbeat_timeout ({self.heartbeat_timeout:g}s) is under 3 heartbeat_interval "
                f"({self.heartbeat_interval:g}s): a briefly busy worker may be declared dead")
        return problems

    def apply_logging(self) -> None:
        """Set the ``soniq`` logger's level from ``log_level`` (``debug`` forces DEBUG)."""
        logging.getLogger("soniq").setLevel("DEBUG" if self.debug else self.log_level)


def load_settings(overrides: dict[str, Any]) -> SoniqSettings:
    """Build settings from keyword overrides, env and ``.env``, with Soniq's own errors.

    Unknown keywords raise :class:`UnknownSettingError` with a suggestion; invalid values raise
    :class:`ConfigurationError` naming the field, the value and what is allowed.
    """
    fields = SoniqSettings.model_fields
    for key in overrides:
        if key not in fields:
            raise UnknownSettingError(f"unknown setting {key!r}{did_you_mean(key, fields)}")
    try:
        return SoniqSettings(**overrides)
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if not field:
                problems.append(message)
            elif field.partition(".")[0] in _SECRET_FIELDS:
                problems.append(f"{field}: {message}")
            else:
                problems.append(f"{field}: {message} (got {error.get('input')!r})")
        raise ConfigurationError("invalid Soniq settings: " + "; ".join(problems)) from None


def redact_url(url: str) -> str:
    """``url`` with its password (and any password-like query parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:***@{hostinfo}" if has_password else f"{user}@{hostinfo}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if k.lower() in SECRET_URL_PARAMS else v) for k, v in pairs],
                              safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # unparseable: show nothing that could be a secret
        return "<unparseable database URL>"
