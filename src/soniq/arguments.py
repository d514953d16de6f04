"""A job's arguments at enqueue: :class:`Parameters` (the function's signature as enqueue checks
it, built once at registration) and :func:`encode_args` (validate, then encode as JSON text)."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic

from soniq.errors import JobArgumentsError
from soniq.serialization import dumps

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["Parameters", "encode_args"]


@dataclass(frozen=True, slots=True)
class Parameters:
    """A job function's signature as enqueue sees it (the ``JobContext`` parameter left out), with
    the name sets that settle the common case without :mod:`inspect` on every enqueue."""

    signature: inspect.Signature
    names: frozenset[str]  # accepted as keywords
    required: frozenset[str]
    any_keyword: bool  # has **kwargs
    #: A positional-only parameter without a default can never be passed as a keyword: every
    #: call goes through ``Signature.bind`` for its error message.
    always_bind: bool

    @classmethod
    def of(cls, func: Callable[..., Any], context_param: str | None) -> Parameters:
        signature = inspect.signature(func)
        params = [p for p in signature.parameters.values() if p.name != context_param]
        keyword = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return cls(
            signature=signature.replace(parameters=params),
            names=frozenset(p.name for p in keyword),
            required=frozenset(p.name for p in keyword if p.default is p.empty),
            any_keyword=any(p.kind is p.VAR_KEYWORD for p in params),
            always_bind=any(p.kind is p.POSITIONAL_ONLY and p.default is p.empty for p in params),
        )

    def check(self, job_name: str, kwargs: Mapping[str, Any]) -> None:
        keys = kwargs.keys()
        if not self.always_bind and self.required <= keys and (
                keys <= self.names
                or (self.any_keyword and all(type(key) is str for key in keys))):
            return
        try:
            self.signature.bind(**kwargs)
        except TypeError as exc:
            raise JobArgumentsError(
                f"arguments for job {job_name!r} do not match its signature {self.signature}: {exc}"
            ) from None


def encode_args(name: str, kwargs: Mapping[str, Any], *, model: type[pydantic.BaseModel] | None,
                parameters: Parameters | None = None) -> str:
    """Validate job arguments (pydantic model, else the function's signature) and encode them."""
    if model is not None:
        try:
            value: Any = model.model_validate(dict(kwargs)).model_dump(mode="json")
        except pydantic.ValidationError as exc:
            raise JobArgumentsError(
                f"arguments for job {name!r} do not match {model.__name__}: "
                + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}"
                            for e in exc.errors())
            ) from None
    else:
        if parameters is not None:
            parameters.check(name, kwargs)
        value = kwargs if type(kwargs) is dict else dict(kwargs)
    return dumps(value, what=_arguments_of(name))


@functools.lru_cache(maxsize=1024)
def _arguments_of(name: str) -> str:
    """How ``dumps`` names a job's arguments in its errors (built once per job name: bulk
    enqueue encodes thousands of jobs of one name)."""
    return f"arguments of job {name!r}"
