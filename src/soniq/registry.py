"""Job definitions: ``JobSpec`` (one registered function and its options), ``JobRegistry`` (one per
Soniq instance), ``TaskRef`` (a typed reference to a job another service runs), and the checks that
reject bad names and arguments before anything is written."""

from __future__ import annotations

import inspect
import re
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from soniq import uniqueness
from soniq.arguments import Parameters, encode_args
from soniq.errors import (
    ConfigurationError,
    DuplicateJobError,
    InvalidNameError,
    JobArgumentsError,
    UnknownJobError,
    ValidationError,
    did_you_mean,
)
from soniq.ids import id_stream, new_id
from soniq.limits import check_limits, check_rate, limit_key, stored_limits, stored_rate
from soniq.serialization import loads, to_utc
from soniq.types import JobContext, JobStatus, JobStream, NewJob

if typing.TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from datetime import datetime, timedelta

    from soniq.limits import Rate
    from soniq.settings import SoniqSettings

__all__ = [
    "RESERVED_ENQUEUE_OPTIONS",
    "JobBuilder",
    "JobRegistry",
    "JobSpec",
    "Parameters",
    "StoredDefaults",
    "TaskRef",
    "job_kwargs",
    "validate_list_filters",
    "validate_name",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")

#: ``enqueue``'s own keywords; a job may not use them as parameter names (they would be ambiguous).
RESERVED_ENQUEUE_OPTIONS = frozenset(
    {"args", "queue", "priority", "scheduled_at", "unique", "dedup_key", "connection"}
)

_JOB_OPTIONS = (
    "name", "queue", "priority", "retries", "max_retries", "retry_delay", "retry_backoff",
    "retry_max_delay", "timeout", "unique", "validate", "args_model", "encrypt",
    "concurrency_limit", "concurrency_key", "ordered", "rate_limit", "rate_key",
    *uniqueness.UNIQUE_OPTIONS,
)


def validate_list_filters(queue: str | None, status: str | None, limit: int, offset: int) -> None:
    """Check ``list_jobs`` arguments: a valid queue name, a known status, sane paging."""
    if queue is not None:
        validate_name(queue, "queue name")
    if status is not None and status not in JobStatus._value2member_map_:
        raise ValidationError(
            f"unknown status {status!r}{did_you_mean(str(status), JobStatus._value2member_map_)};"
            f" use one of {', '.join(JobStatus._value2member_map_)}"
        )
    for label, value, low in (("limit", limit, 1), ("offset", offset, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValidationError(f"{label} must be an integer >= {low}, got {value!r}")


def validate_name(name: object, what: str) -> str:
    """Return ``name`` if it is a safe identifier (``[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid {what} {name!r}: use 1-128 characters of letters, digits, '_', '.', ':' "
            "or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A job known by name only (it runs in another service). ``args_model`` validates arguments
    at enqueue; ``default_queue`` is used when ``enqueue`` names no queue."""

    name: str
    args_model: type[pydantic.BaseModel] | None = None
    default_queue: str | None = None

    def __post_init__(self) -> None:
        validate_name(self.name, "job name")
        if self.default_queue is not None:
            validate_name(self.default_queue, "queue name")


class StoredDefaults(typing.Protocol):
    """What an enqueue of a job name this app has not registered takes from the name's stored
    definition (a :class:`~soniq.backends.stores.JobDefinition`): the defaults a registration
    would give."""

    @property
    def queue(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def encrypt(self) -> bool: ...
    @property
    def options(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One registered job. ``None`` options fall back to the app's settings at enqueue/run time
    (``priority``, ``max_retries``, ``timeout`` -> ``job_timeout``; ``timeout=0`` disables)."""

    name: str
    func: Callable[..., Any]
    queue: str = "default"
    priority: int | None = None
    max_retries: int | None = None
    retry_delay: float | tuple[float, ...] = 0.0
    retry_backoff: bool = False
    retry_max_delay: float | None = None
    timeout: float | None = None
    unique: bool = False
    #: Its uniqueness (``unique=True`` or any of the ``unique_*`` options; see uniqueness.py).
    unique_rule: uniqueness.UniqueRule | None = None
    #: Arguments and result are stored encrypted (``app.signing``'s keys; see features/signing.py).
    encrypt: bool = False
    args_model: type[pydantic.BaseModel] | None = None
    is_async: bool = False
    context_param: str | None = None
    #: How enqueue checks keyword arguments against ``func`` (built once, at registration).
    parameters: Parameters | None = None
    #: At most this many running attempts (per value of ``concurrency_key`` when set).
    concurrency_limit: int | None = None
    #: The argument whose value groups jobs for ``concurrency_limit``.
    concurrency_key: str | None = None
    #: Jobs with the same key start in enqueue order, one at a time.
    ordered: bool = False
    #: Starts share a token bucket per job name (per value of ``rate_key`` when set).
    rate_limit: Rate | None = None
    #: The argument whose value picks the bucket for ``rate_limit``.
    rate_key: str | None = None

    def encode_args(self, kwargs: Mapping[str, Any]) -> str:
        """Check ``kwargs`` against the model or signature and return them as JSON text."""
        return encode_args(self.name, kwargs, model=self.args_model, parameters=self.parameters)

    def limit_key(self, args: Mapping[str, Any]) -> str | None:
        """The stored ``concurrency_key`` of a job with ``args`` (decoded arguments): None when
        the job is not limited, ``''`` for a limit without key, else the key argument's value as
        canonical JSON (its signature default when absent).

        Raises:
            JobArgumentsError: the key argument is missing and has no default.
        """
        if self.concurrency_limit is None:
            return None
        return limit_key(self.name, self.concurrency_key, args,
                         None if self.parameters is None else self.parameters.signature)


def _context_param(func: Callable[..., Any]) -> str | None:
    """The parameter annotated ``JobContext`` (string annotations resolved too), if any."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = getattr(func, "__annotations__", {})
    for pname, hint in hints.items():
        if pname != "return" and (hint is JobContext or hint == "JobContext"):
            return pname
    return None


def _derived_name(func: Callable[..., Any]) -> str:
    module = func.__module__
    if module == "__main__":
        # A script's jobs must have the same name in the producer and in `soniq worker script:app`,
        # which imports it under its file name.
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        path = getattr(main, "__file__", None)
        if spec is not None and spec.name:
            module = spec.name
        elif path:
            module = Path(path).stem
        else:  # an interactive session or `python -c`: there is no module name to share
            return func.__name__
    return f"{module}.{func.__name__}"


def _delays(value: object) -> float | tuple[float, ...]:
    items: Sequence[object] = value if isinstance(value, list | tuple) else [value]
    if not items or not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
                            for v in items):
        raise ConfigurationError(
            f"retry_delay must be a number of seconds >= 0 or a non-empty list of them, got {value!r}"
        )
    delays = tuple(float(v) for v in items)  # type: ignore[arg-type]
    return delays if isinstance(value, list | tuple) else delays[0]


def _number(option: str, value: object, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"{option} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _int(option: str, value: object, low: int, high: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigurationError(f"{option} must be an integer from {low} to {high}, got {value!r}")
    return value


class JobRegistry:
    """The jobs one Soniq instance knows, by name and by function."""

    def __init__(self) -> None:
        self._by_name: dict[str, JobSpec] = {}
        self._by_func: dict[Callable[..., Any], JobSpec] = {}

    def register(self, func: Callable[..., Any], **options: Any) -> JobSpec:
        """Register ``func`` with ``@app.job()`` options; see :meth:`soniq.Soniq.job`."""
        for key in options:
            if key not in _JOB_OPTIONS:
                raise ConfigurationError(
                    f"unknown job option {key!r}{did_you_mean(key, _JOB_OPTIONS)}"
                )
        if not callable(func):
            raise ConfigurationError(f"@app.job() decorates a function, not {func!r}")
        if options.get("name") is None and not _NAME.fullmatch(_derived_name(func)):
            raise InvalidNameError(
                f"cannot derive a valid job name from {_derived_name(func)!r}; pass name=..."
            )
        name = validate_name(options.get("name") or _derived_name(func), "job name")
        model = options.get("validate") or options.get("args_model")
        if model is not None and not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            raise ConfigurationError(f"validate= must be a pydantic model class, got {model!r}")
        retries = options.get("max_retries", options.get("retries"))
        context_param = _context_param(func)
        clashes = sorted(set(inspect.signature(func).parameters) & RESERVED_ENQUEUE_OPTIONS)
        if clashes:
            raise ConfigurationError(
                f"job {name!r} has parameter(s) {', '.join(clashes)} that clash with enqueue's own "
                f"options ({', '.join(sorted(RESERVED_ENQUEUE_OPTIONS))}); rename them"
            )
        parameters = Parameters.of(func, context_param)
        fields = set(model.model_fields) if model else parameters.names
        any_name = model is None and parameters.any_keyword
        limit, limit_by, ordered = check_limits(name, options, fields=fields, any_name=any_name)
        rate, rate_by = check_rate(name, options, fields=fields, any_name=any_name)
        rule = uniqueness.check_unique(name, options, fields=fields, any_name=any_name)
        spec = JobSpec(
            name=name,
            func=func,
            queue=validate_name(options.get("queue", "default"), "queue name"),
            priority=_int("priority", options.get("priority"), -32_768, 32_767),
            max_retries=_int("retries", retries, 0, 1_000),
            retry_delay=_delays(options.get("retry_delay", 0.0)),
            retry_backoff=bool(options.get("retry_backoff", False)),
            retry_max_delay=_number("retry_max_delay", options.get("retry_max_delay")),
            timeout=_number("timeout", options.get("timeout")),
            unique=rule is not None,
            unique_rule=rule,
            encrypt=bool(options.get("encrypt", False)),
            args_model=model,
            is_async=inspect.iscoroutinefunction(func),
            context_param=context_param,
            parameters=parameters,
            concurrency_limit=limit,
            concurrency_key=limit_by,
            ordered=ordered,
            rate_limit=rate,
            rate_key=rate_by,
        )
        existing = self._by_name.get(name)
        if existing is not None and existing.func is not func:
            raise DuplicateJobError(
                f"job name {name!r} is already registered to {existing.func.__qualname__}; "
                "pass a distinct name= to one of them"
            )
        self._by_name[name] = spec
        self._by_func[func] = spec
        return spec

    def resolve(self, target: Callable[..., Any] | str | TaskRef, *,
                strict: bool) -> tuple[JobSpec | None, str, str, Any]:
        """(spec or None, job name, default queue, args model) for an enqueue target: a
        registered function, a job name (unregistered names only when not ``strict``), or a
        :class:`TaskRef`."""
        if isinstance(target, TaskRef):
            spec = self.get(target.name)
            queue = target.default_queue or (spec.queue if spec else "default")
            return spec, target.name, queue, target.args_model or (spec.args_model if spec else None)
        if isinstance(target, str):
            spec = self._by_name.get(target)  # a registered name was checked when registered
            name = target if spec is not None else validate_name(target, "job name")
            if spec is None and strict:
                raise UnknownJobError(
                    f"no job named {name!r} is registered on this app"
                    f"{did_you_mean(name, list(self._by_name))}; register it with "
                    "@app.job(), enqueue a TaskRef, or set enqueue_validation='none'"
                )
            return spec, name, spec.queue if spec else "default", spec.args_model if spec else None
        if callable(target):
            spec = self.spec_for(target)
            if spec is None:
                raise UnknownJobError(
                    f"{getattr(target, '__qualname__', target)!r} is not registered on this app; "
                    "decorate it with @app.job()"
                )
            return spec, spec.name, spec.queue, spec.args_model
        raise ValidationError(
            f"enqueue target must be a registered function, a job name or a TaskRef, "
            f"not {type(target).__name__}"
        )

    def get(self, name: str) -> JobSpec | None:
        return self._by_name.get(name)

    def spec_for(self, func: Callable[..., Any]) -> JobSpec | None:
        return self._by_func.get(func)

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


def job_kwargs(args: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> Mapping[str, Any]:
    """The job arguments of an enqueue call: ``args={...}`` or the keywords, never both."""
    if args is None:
        return kwargs
    if kwargs:
        raise JobArgumentsError(
            f"pass job arguments either as keywords or as args={{...}}, not both "
            f"(got args= and {', '.join(sorted(kwargs))})"
        )
    if not isinstance(args, Mapping):
        raise JobArgumentsError(f"args must be a dict of keyword arguments, not {type(args).__name__}")
    return args


class JobBuilder:
    """What the jobs of one enqueue call share, validated when it is made; calling it validates
    and encodes one job's arguments into a row (nothing is written here). ``many`` names the
    failing ``args_list`` element in errors. ``encode`` is the app's payload codec;
    ``keyed_digest`` hashes the dedup key of an encrypted job (the plain one would be
    guessable)."""

    __slots__ = ("_by_spec", "_dedup_key", "_encode", "_encrypt", "_keyed_digest", "_limit",
                 "_limit_by", "_many", "_model", "_max_attempts", "_rate_by", "_rated", "_spec",
                 "_rule", "name",
                 "priority", "queue", "scheduled_at")

    def __init__(self, registry: JobRegistry, settings: SoniqSettings,
                 target: Callable[..., Any] | str | TaskRef, *, queue: str | None,
                 priority: int | None, scheduled_at: datetime | timedelta | float | None,
                 unique: bool | None, dedup_key: str | None, many: bool,
                 encode: Callable[[str, str], str], keyed_digest: Callable[[str], str],
                 stored: StoredDefaults | None = None,
                 call: Mapping[str, Any] | None = None) -> None:
        spec, name, default_queue, model = registry.resolve(
            target, strict=settings.enqueue_validation == "strict")
        if spec is not None:
            stored = None  # a registration here wins over what workers stored
        elif stored is not None and not (isinstance(target, TaskRef) and target.default_queue):
            default_queue = stored.queue
        if priority is None:
            priority = (spec.priority if spec and spec.priority is not None
                        else stored.priority if stored else settings.priority)
        elif (not isinstance(priority, int) or isinstance(priority, bool)
              or not -32_768 <= priority <= 32_767):
            raise ValidationError(
                f"priority must be an integer from -32768 to 32767, got {priority!r}")
        # Uniqueness: the call's options (``call``: EnqueueOptions' fields) over the job's.
        params = spec.parameters if spec else None
        self._rule = uniqueness.check_unique(
            name, {**(call or {}), "unique": unique},
            base=(spec.unique_rule if spec else
                  uniqueness.stored_rule(name, stored.options) if stored else None),
            fields=(set(model.model_fields) if model else None if params is None else params.names),
            any_name=model is None and params is not None and params.any_keyword,
            dedup_key=dedup_key is not None)
        dedup_key = None if dedup_key is None else uniqueness.check_dedup_key(dedup_key)
        self.name = name
        self.queue = validate_name(queue, "queue name") if queue is not None else default_queue
        self.priority = priority
        self.scheduled_at = to_utc(scheduled_at)
        self._spec = spec
        self._model = model
        self._by_spec = spec is not None and (model is None or not isinstance(target, TaskRef))
        self._max_attempts = (stored.max_attempts if stored else
                              1 + (spec.max_retries if spec and spec.max_retries is not None
                                   else settings.max_retries))
        self._encrypt = spec.encrypt if spec else stored is not None and stored.encrypt
        # The concurrency limit: registered here, else as the job's workers stored it.
        self._limit, self._limit_by = ((spec.concurrency_limit, spec.concurrency_key) if spec
                                       else stored_limits(stored.options) if stored
                                       else (None, None))
        rate, self._rate_by = ((spec.rate_limit, spec.rate_key) if spec
                               else stored_rate(stored.options) if stored else (None, None))
        self._rated = rate is not None
        self._dedup_key = dedup_key
        self._many = many
        self._encode = encode
        self._keyed_digest = keyed_digest

    def __call__(self, job_id: str, job_args: Mapping[str, Any], index: int = 0) -> NewJob:
        """The row of job ``job_id`` (``args_list[index]`` when ``many``)."""
        spec, name = self._spec, self.name
        if self._many and type(job_args) is not dict and not isinstance(job_args, Mapping):
            raise JobArgumentsError(
                f"args_list[{index}] must be a dict, not {type(job_args).__name__}")
        limit = self._limit
        try:
            args_json = (spec.encode_args(job_args) if self._by_spec and spec is not None
                         else encode_args(name, job_args, model=self._model))
            limit_key = (None if limit is None else
                         self._key_of(self._limit_by, "concurrency_key", job_args, args_json))
            rate_key = (self._key_of(self._rate_by, "rate_key", job_args, args_json)
                        if self._rated else None)
            rule = self._rule
            key = (None if rule is None else self._dedup_key or uniqueness.dedup_key_of(
                name, rule, job_args if self._model is None else loads(args_json), args_json,
                None if spec is None or spec.parameters is None else spec.parameters.signature,
                self._keyed_digest if self._encrypt else None))
        except ValidationError as exc:
            if self._many:
                raise type(exc)(f"args_list[{index}]: {exc.message}") from None
            raise
        # Positional: a named tuple built from keywords costs twice as much (bulk builds many).
        args = self._encode(name, args_json)
        if rule is None:
            return NewJob(job_id, name, self.queue, self.priority, args, self._max_attempts,
                          self.scheduled_at, None, limit_key, limit, rate_key)
        return NewJob(job_id, name, self.queue, self.priority, args, self._max_attempts,
                      self.scheduled_at, key, limit_key, limit, rate_key, rule.policy)

    def _key_of(self, by: str | None, option: str, job_args: Mapping[str, Any],
                args_json: str) -> str | None:
        """The stored key (``option``: concurrency or rate) of a limited job. Arguments that
        lack the key argument are refused for a job registered here; for one known only by its
        stored definition (whose signature, and so the argument's default, is not known here)
        the key is left out: the worker that claims a concurrency-limited job sets it or
        dead-letters the job, and a rate-limited one starts outside its bucket."""
        spec = self._spec
        try:
            return limit_key(self.name, by,
                             job_args if self._model is None else loads(args_json),
                             None if spec is None or spec.parameters is None
                             else spec.parameters.signature, option=option)
        except JobArgumentsError:
            if spec is None:
                return None
            raise

    def one(self, job_args: Mapping[str, Any]) -> NewJob:
        """The row of a single job (``enqueue``)."""
        return self(new_id(), job_args)

    def stream(self, args_list: Sequence[Mapping[str, Any]]) -> JobStream:
        """The rows of ``args_list``, each built as it is read."""
        def rows() -> Iterator[NewJob]:
            ids = id_stream(len(args_list))  # the first rows are out before the last ids exist
            for index, (job_id, job_args) in enumerate(zip(ids, args_list, strict=True)):
                yield self(job_id, job_args, index)

        return JobStream(len(args_list), rows(), job_name=self.name, queue=self.queue,
                         scheduled_at=self.scheduled_at,
                         limited=self._limit is not None or self._rated,
                         keyed=self._rule is not None)
