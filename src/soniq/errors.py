"""Every error Soniq raises on purpose.

Each class's docstring says what went wrong and how to fix it. The tree::

    SoniqError
    ├── ConfigurationError         bad settings, unknown backend, bad URL
    │   └── UnknownSettingError    a keyword/setting that does not exist ("did you mean ...?")
    ├── ValidationError            bad input to enqueue / @app.job, rejected before anything is written
    │   ├── InvalidNameError       a queue or job name that is not a safe identifier
    │   ├── JobArgumentsError      arguments not JSON, not matching the signature or model
    │   ├── SerializationError     a value Soniq cannot store as JSON
    │   └── UnknownJobError        enqueue of a name this app does not know
    ├── DuplicateJobError          two functions registered under one job name
    ├── UnsupportedOperationError  a capability the chosen backend lacks (e.g. ``connection=`` on SQLite)
    ├── AppClosedError             the Soniq instance was closed
    ├── JobNotFoundError           no job with this id (never enqueued, deleted or pruned)
    ├── LeaseLostError             this attempt lost its lease; its writes are refused
    ├── StepFailedError            a durable function's step raised (now or in an earlier attempt)
    ├── NonDeterminismError        a durable function's code no longer matches its saved steps
    ├── DecryptionError            a token was tampered with or made with a key not in SONIQ_SECRET_KEYS
    └── DatabaseError              the database failed or cannot be reached
        ├── DataRejectedError      the database refused a value it can never store (retrying cannot help)
        ├── SchemaMissingError     PostgreSQL has no Soniq schema: run ``soniq setup``
        └── MigrationError         a migration failed to apply

Driver exceptions never leak: each adapter translates them in one place with ``raise ... from exc``.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "AppClosedError",
    "ConfigurationError",
    "DataRejectedError",
    "DatabaseError",
    "DecryptionError",
    "DuplicateJobError",
    "InvalidNameError",
    "JobArgumentsError",
    "JobNotFoundError",
    "LeaseLostError",
    "NonDeterminismError",
    "MigrationError",
    "SchemaMissingError",
    "SerializationError",
    "SoniqError",
    "StepFailedError",
    "UnknownJobError",
    "UnknownSettingError",
    "UnsupportedOperationError",
    "ValidationError",
    "did_you_mean",
]


class SoniqError(Exception):
    """Base class of every error Soniq raises on purpose."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (type(self).__doc__ or type(self).__name__).strip()
        super().__init__(self.message)


class ConfigurationError(SoniqError):
    """A setting or constructor argument is invalid; the message names it and the allowed values."""


class UnknownSettingError(ConfigurationError, TypeError):
    """A keyword that is not a Soniq setting was passed; check its spelling."""


class ValidationError(SoniqError, ValueError):
    """Input was rejected before anything was written; the message says what to change."""


class InvalidNameError(ValidationError):
    """A queue or job name must match ``^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$``."""


class JobArgumentsError(ValidationError, TypeError):
    """Job arguments do not match the job's signature, its pydantic model, or are not JSON."""


class SerializationError(ValidationError):
    """A value cannot be stored as JSON (Soniq never pickles)."""


class UnknownJobError(ValidationError):
    """The job name is not registered on this Soniq instance; decorate the function with
    ``@app.job()`` or set ``enqueue_validation="none"`` for cross-service producers."""


class DuplicateJobError(SoniqError):
    """Another function is already registered under this job name; pass a distinct ``name=``."""


class UnsupportedOperationError(SoniqError):
    """The storage backend in use cannot do this; the message names the backend that can."""


class LeaseLostError(SoniqError):
    """This attempt of the job no longer holds its lease (it was rescued and runs elsewhere, or
    it already ended): its progress or checkpoint was refused. Let it propagate so the stale
    attempt stops; the attempt that holds the lease carries on."""


class StepFailedError(SoniqError):
    """A step of a durable function raised: ``step_key`` names the step, ``error_type`` and
    ``message`` say what it raised (the original exception is the ``__cause__`` on the attempt
    that ran it; a replay raises the same error from the saved step). Catch it to handle the
    failure; let it escape and the attempt fails and the retry runs the step again."""

    def __init__(self, step_key: str, error_type: str, message: str) -> None:
        self.step_key = step_key
        self.error_type = error_type
        super().__init__(f"step {step_key!r} failed: {error_type}: {message}")
        self.message = message


class NonDeterminismError(SoniqError):
    """A durable function reached a step that does not match its saved history (another key,
    function or arguments at that position): its code changed under a running function. The job
    is dead-lettered, never retried; guard changed code with ``ctx.patched(name)``."""


class AppClosedError(SoniqError):
    """This Soniq instance was closed; create a new one."""


class JobNotFoundError(SoniqError, LookupError):
    """No job has this id: it was never enqueued (or not in this database), or it was deleted
    or pruned after ``result_ttl``. Keep results longer with ``result_ttl`` to read them later."""


class DecryptionError(SoniqError):
    """An encrypted value (or job payload) could not be decrypted: it was altered after encryption,
    or it was encrypted with a key that is not in ``SONIQ_SECRET_KEYS``. When rotating keys, keep
    the old key in the list (after the new one) until everything encrypted with it is gone."""


class DatabaseError(SoniqError):
    """The database failed or could not be reached; the message carries the driver's reason."""


class DataRejectedError(DatabaseError):
    """The database refused a value it can never store: too large for it, or a character its
    encoding cannot represent (PostgreSQL SQLSTATE classes 22, 23 and 54; SQLite's data and
    constraint errors). Sending the same statement again fails again; nothing of it was written."""


class SchemaMissingError(DatabaseError):
    """The database has no (or an outdated) Soniq schema. Run ``soniq setup`` (or ``await app.setup()``
    in your deploy step) to create it."""


class MigrationError(DatabaseError):
    """A migration failed to apply; nothing of that migration was committed."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" — did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" — did you mean {matches[0]!r}?" if matches else ""
