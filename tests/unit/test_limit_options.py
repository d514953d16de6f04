"""``@app.job(concurrency_limit=, concurrency_key=, ordered=)``: checked at registration, the
key computed at enqueue, and stored in the job's definition."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from soniq import Soniq
from soniq.errors import ConfigurationError, ValidationError
from soniq.runtime.heartbeat import job_definition


def app() -> Soniq:
    return Soniq(backend="memory")


@pytest.mark.parametrize(("options", "message"), [
    ({"concurrency_limit": 0}, "concurrency_limit .* got 0"),
    ({"concurrency_limit": -3}, "got -3"),
    ({"concurrency_limit": True}, "got True"),
    ({"concurrency_limit": 1.5}, "got 1.5"),
    ({"ordered": True}, "ordered=True .* needs a concurrency_key"),
    ({"ordered": True, "concurrency_key": "customer_id", "concurrency_limit": 3},
     "concurrency_limit=3"),
    ({"ordered": "yes", "concurrency_key": "customer_id"}, "ordered must be True or False"),
    ({"concurrency_limit": 2, "concurrency_key": "customer"},
     "must name one of its arguments .*'customer'.*did you mean 'customer_id'"),
    ({"concurrency_key": "customer_id"}, "needs concurrency_limit"),
])
def test_bad_limit_options_are_refused_at_registration(options: dict[str, Any],
                                                       message: str) -> None:
    soniq = app()
    with pytest.raises(ConfigurationError, match=message):
        @soniq.job(**options)
        def charge(customer_id: int, amount: int) -> None: ...


def test_a_key_of_an_args_model_or_kwargs_job() -> None:
    soniq = app()

    class Args(pydantic.BaseModel):
        tenant: str

    soniq.job(name="m", concurrency_limit=1, concurrency_key="tenant", validate=Args)(
        lambda **kw: None)
    with pytest.raises(ConfigurationError, match="tenant"):
        soniq.job(name="m2", concurrency_limit=1, concurrency_key="other", validate=Args)(
            lambda **kw: None)
    soniq.job(name="kw", concurrency_limit=1, concurrency_key="anything")(lambda **kw: None)


def test_ordered_implies_a_limit_of_one() -> None:
    soniq = app()

    @soniq.job(ordered=True, concurrency_key="account")
    def post(account: str) -> None: ...

    spec = soniq.registry.spec_for(post)
    assert spec is not None
    assert (spec.concurrency_limit, spec.concurrency_key, spec.ordered) == (1, "account", True)


def test_the_key_is_stored_as_canonical_json() -> None:
    soniq = app()

    @soniq.job(concurrency_limit=2, concurrency_key="customer")
    def charge(customer: Any, region: str = "eu") -> None: ...

    @soniq.job(concurrency_limit=3, concurrency_key="region")
    def sync(customer: Any, region: str = "eu") -> None: ...

    @soniq.job(concurrency_limit=4)
    def report() -> None: ...

    job = soniq.producer.job(charge, {"customer": {"b": 1, "a": [1, "x"]}})
    assert (job.concurrency_key, job.concurrency_limit) == ('{"a":[1,"x"],"b":1}', 2)
    assert soniq.producer.job(charge, {"customer": "c1"}).concurrency_key == '"c1"'
    assert soniq.producer.job(sync, {"customer": 1}).concurrency_key == '"eu"'  # the default
    assert soniq.producer.job(report, {}).concurrency_key == ""
    unlimited = soniq.job(name="free")(lambda: None)
    assert soniq.producer.job(unlimited, {}).concurrency_key is None


def test_a_missing_key_is_a_validation_error_naming_it() -> None:
    soniq = app()

    @soniq.job(concurrency_limit=2, concurrency_key="customer")
    def charge(**kwargs: Any) -> None: ...

    with pytest.raises(ValidationError, match="lack 'customer'"):
        soniq.producer.job(charge, {"amount": 3})
    with pytest.raises(ValidationError, match=r"args_list\[1\]: .*lack 'customer'"):
        list(soniq.producer.jobs(charge, [{"customer": 1}, {"amount": 3}]))


def test_definitions_carry_the_limits_and_keep_unlimited_digests() -> None:
    soniq = app()

    @soniq.job(name="plain")
    def plain() -> None: ...

    @soniq.job(name="limited", ordered=True, concurrency_key="k")
    def limited(k: int) -> None: ...

    spec_plain, spec_limited = soniq.registry.get("plain"), soniq.registry.get("limited")
    assert spec_plain is not None and spec_limited is not None
    plain_def = job_definition(spec_plain, soniq.settings)
    assert "concurrency_limit" not in plain_def.options
    limited_def = job_definition(spec_limited, soniq.settings)
    assert {key: limited_def.options[key]
            for key in ("concurrency_limit", "concurrency_key", "ordered")} == {
        "concurrency_limit": 1, "concurrency_key": "k", "ordered": True}
    # The digest covers the limits: a changed limit is a new definition.
    soniq2 = app()
    soniq2.job(name="limited", concurrency_limit=2, concurrency_key="k")(limited)
    spec2 = soniq2.registry.get("limited")
    assert spec2 is not None
    assert job_definition(spec2, soniq2.settings).digest != limited_def.digest


@pytest.mark.parametrize(("options", "message"), [
    ({"rate_limit": "5/x"}, "rate_limit of job .* got '5/x'"),
    ({"rate_limit": "0/s"}, "got '0/s'"),
    ({"rate_limit": 5}, "got 5"),
    ({"rate_limit": "5/s", "rate_key": "customer"},
     "rate_key of job .* got 'customer'.*did you mean 'customer_id'"),
    ({"rate_key": "customer_id"}, "rate_key='customer_id' .* needs rate_limit"),
])
def test_bad_rate_options_are_refused_at_registration(options: dict[str, Any],
                                                      message: str) -> None:
    soniq = app()
    with pytest.raises(ConfigurationError, match=message):
        @soniq.job(**options)
        def charge(customer_id: int, amount: int) -> None: ...


def test_a_rate_limit_and_its_key_are_stored_and_computed_at_enqueue() -> None:
    soniq = app()

    @soniq.job(name="fetch", rate_limit=" 20 / m ", rate_key="host")
    def fetch(host: str, path: str = "/") -> None: ...

    @soniq.job(name="ping", rate_limit="1/s")
    def ping() -> None: ...

    spec = soniq.registry.get("fetch")
    assert spec is not None and str(spec.rate_limit) == "20/m" and spec.rate_key == "host"
    assert job_definition(spec, soniq.settings).options["rate_limit"] == "20/m"
    assert soniq.producer.job(fetch, {"host": "a.example"}).rate_key == '"a.example"'
    assert soniq.producer.job(ping, {}).rate_key == ""
    with pytest.raises(ValidationError, match="'host'"):
        soniq.producer.job(fetch, {"path": "/x"})
