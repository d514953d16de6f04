"""Signing, encryption and ``@app.job(encrypt=True)`` on every backend, under asyncio and trio."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.fernet import Fernet

from soniq import Soniq
from soniq.errors import ConfigurationError, DecryptionError
from soniq.features.signing import Signing

pytestmark = pytest.mark.anyio

#: A Fernet key used as is, and a plain string that HKDF turns into one.
NEW_KEY = Fernet.generate_key().decode()
OLD_KEY = "old-passphrase-" + secrets.token_hex(16)
OTHER_KEY = Fernet.generate_key().decode()
SECRET_ARG = "s3cret-card-" + secrets.token_hex(6)
SECRET_RESULT = "s3cret-result-" + secrets.token_hex(6)
ALL_SECRETS = (NEW_KEY, OLD_KEY, OTHER_KEY)


@pytest.fixture
async def secure(backend_name: str, database_url: str | None,
                 caplog: pytest.LogCaptureFixture) -> AsyncIterator[Soniq]:
    """A fresh app on each backend with two keys (newest first); logs captured at DEBUG."""
    app = Soniq(database_url=database_url, backend=backend_name if database_url is None else None,
                poll_interval=0.05, heartbeat_interval=0.1, heartbeat_timeout=2.0,
                secret_keys=[NEW_KEY, OLD_KEY], log_level="DEBUG")
    caplog.set_level(logging.DEBUG)
    try:
        yield app
    finally:
        await app.close()
        for secret in (*ALL_SECRETS, SECRET_ARG, SECRET_RESULT):
            assert secret not in caplog.text


def register(app: Soniq) -> None:
    @app.job(name="charge", encrypt=True, retries=3)
    async def charge(card: str, amount: int) -> dict[str, Any]:
        return {"receipt": SECRET_RESULT, "card": card, "amount": amount}

    @app.job(name="plain")
    async def plain(n: int) -> int:
        return n * 2


async def raw_row(app: Soniq, job_id: str) -> tuple[str, str | None]:
    """(args, result) exactly as stored, read around Soniq's own read path."""
    if app.backend.name == "memory":
        row = app.backend._jobs[job_id]  # type: ignore[attr-defined]
        return row["args"], row["result"]
    if app.backend.name == "sqlite":
        with contextlib.closing(sqlite3.connect(app.settings.database_url)) as db:
            args, result = db.execute("SELECT args, result FROM soniq_jobs WHERE id = ?",
                                      (job_id,)).fetchone()
        return args, result
    async with app.backend.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT args::text AS args, result::text AS result FROM soniq_jobs WHERE id = $1::uuid",
            job_id)
    return row["args"], row["result"]


async def write_args(app: Soniq, job_id: str, args: str) -> None:
    """Overwrite a job's stored arguments directly in storage (an attacker with DB access)."""
    if app.backend.name == "memory":
        app.backend._jobs[job_id]["args"] = args  # type: ignore[attr-defined]
    elif app.backend.name == "sqlite":
        with contextlib.closing(sqlite3.connect(app.settings.database_url)) as db:
            db.execute("UPDATE soniq_jobs SET args = ? WHERE id = ?", (args, job_id))
            db.commit()
    else:
        async with app.backend.acquire() as conn:
            await conn.execute("UPDATE soniq_jobs SET args = $1::jsonb WHERE id = $2::uuid",
                               args, job_id)


def flip(token: str) -> str:
    """The token with one character in its ciphertext changed."""
    index = len(token) // 2
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1:]


# -- the Signing API ------------------------------------------------------------------------------
async def test_encrypt_decrypt_round_trip(secure: Soniq) -> None:
    token = await secure.signing.encrypt("hello ✓")
    assert "hello" not in token
    assert await secure.signing.decrypt(token) == "hello ✓"
    assert await secure.signing.decrypt(await secure.signing.encrypt(b"raw bytes")) == "raw bytes"


def test_is_current_tells_whether_a_token_is_under_the_newest_key() -> None:
    signing = Signing([NEW_KEY, OLD_KEY])
    assert signing.is_current(signing.encrypt_now("x"))
    old_token = Signing([OLD_KEY]).encrypt_now("x")
    assert not signing.is_current(old_token)  # readable, but rotate() would move it
    assert signing.decrypt_now(old_token) == "x"
    assert not signing.is_current(flip(signing.encrypt_now("x")))
    assert not signing.is_current("not a token")


async def test_rotation_old_key_still_decrypts_and_rotate_uses_newest(secure: Soniq) -> None:
    old_only = Signing([OLD_KEY])
    token = await old_only.encrypt("made with the old key")
    assert await secure.signing.decrypt(token) == "made with the old key"
    rotated = await secure.signing.rotate(token)
    assert await Signing([NEW_KEY]).decrypt(rotated) == "made with the old key"
    with pytest.raises(DecryptionError):
        await old_only.decrypt(rotated)


async def test_unknown_key_and_tampered_tokens_raise(secure: Soniq) -> None:
    foreign = await Signing([OTHER_KEY]).encrypt("x")
    with pytest.raises(DecryptionError, match="SONIQ_SECRET_KEYS"):
        await secure.signing.decrypt(foreign)
    token = await secure.signing.encrypt("x")
    for bad in (flip(token), "not a token", ""):
        with pytest.raises(DecryptionError):
            await secure.signing.decrypt(bad)
    with pytest.raises(DecryptionError):
        await secure.signing.rotate(foreign)


async def test_sign_verify_with_rotated_keys(secure: Soniq) -> None:
    message = "payload to sign"
    by_new = await Signing([NEW_KEY]).sign(message)
    by_old = await Signing([OLD_KEY]).sign(message)
    assert by_new.startswith("v1:") and by_new != by_old
    assert await secure.signing.sign(message) == by_new  # the newest key signs
    assert await secure.signing.verify(message, by_new)
    assert await secure.signing.verify(message.encode(), by_old)
    assert not await secure.signing.verify("another payload", by_new)
    assert not await secure.signing.verify(message, await Signing([OTHER_KEY]).sign(message))
    version, key_id, mac = by_new.split(":")
    assert not await secure.signing.verify(message, f"{version}:{key_id}:{flip(mac)}")
    assert not await secure.signing.verify(message, f"{version}:{key_id}:")
    assert not await secure.signing.verify(message, "garbage")
    assert not await secure.signing.verify(message, None)  # type: ignore[arg-type]


async def test_missing_keys_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SONIQ_SECRET_KEYS", raising=False)
    app = Soniq(backend="memory")
    with pytest.raises(ConfigurationError, match="SONIQ_SECRET_KEYS"):
        _ = app.signing

    @app.job(name="charge", encrypt=True)
    async def charge(card: str) -> None:
        return None

    with pytest.raises(ConfigurationError, match="SONIQ_SECRET_KEYS"):
        await app.enqueue("charge", card="x")
    assert await app.list_jobs() == []
    with pytest.raises(ConfigurationError, match="SONIQ_SECRET_KEYS"):
        await app.run_worker(run_once=True)  # a worker without keys refuses to start
    await app.close()


async def test_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIQ_SECRET_KEYS", f" {NEW_KEY} , {OLD_KEY} ")
    app = Soniq(backend="memory")
    token = await Signing([OLD_KEY]).encrypt("rotated")
    assert await app.signing.decrypt(token) == "rotated"
    assert await Signing([NEW_KEY]).decrypt(await app.signing.encrypt("newest")) == "newest"
    await app.close()


async def test_secrets_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SONIQ_SECRET_KEYS", raising=False)
    app = Soniq(backend="memory", secret_keys=[NEW_KEY, OLD_KEY])
    shown = [repr(app.settings), str(app.settings), repr(app.signing), repr(app), repr(app.codec),
             str(app.settings.model_dump())]
    for text in shown:
        for key in (NEW_KEY, OLD_KEY):
            assert key not in text
    short = "tiny-" + secrets.token_hex(4)
    with pytest.raises(ConfigurationError) as caught:
        Soniq(backend="memory", secret_keys=[NEW_KEY, short])
    assert short not in str(caught.value) and NEW_KEY not in str(caught.value)
    assert "secret_keys" in str(caught.value)
    await app.close()


# -- @app.job(encrypt=True) end to end --------------------------------------------------------------
async def test_encrypted_job_end_to_end(secure: Soniq) -> None:
    register(secure)
    job_id = await secure.enqueue("charge", card=SECRET_ARG, amount=42)
    args, result = await raw_row(secure, job_id)
    assert SECRET_ARG not in args and set(json.loads(args)) == {"$enc"}
    assert result is None

    assert await secure.run_worker(run_once=True) == 1
    assert await secure.get_result(job_id) == {"receipt": SECRET_RESULT, "card": SECRET_ARG,
                                               "amount": 42}
    args, result = await raw_row(secure, job_id)
    assert result is not None
    for stored in (args, result):
        assert SECRET_ARG not in stored and SECRET_RESULT not in stored
        assert set(json.loads(stored)) == {"$enc"}
    record = await secure.get_job(job_id)
    assert record is not None and SECRET_ARG not in json.dumps(record, default=str)


async def test_plain_jobs_pass_through_and_enqueue_many_encrypts(secure: Soniq) -> None:
    register(secure)
    plain_id = await secure.enqueue("plain", n=21)
    many = await secure.enqueue_many("charge", [{"card": SECRET_ARG, "amount": i} for i in range(3)])
    assert json.loads((await raw_row(secure, plain_id))[0]) == {"n": 21}
    for job_id in many:
        assert SECRET_ARG not in (await raw_row(secure, job_id))[0]
    assert await secure.run_worker(run_once=True) == 4
    assert await secure.get_result(plain_id) == 42
    assert json.loads((await raw_row(secure, plain_id))[1] or "null") == 42
    assert [(await secure.get_result(i))["amount"] for i in many] == [0, 1, 2]


async def test_unique_encrypted_job_dedups_without_plaintext_key(secure: Soniq) -> None:
    @secure.job(name="once", encrypt=True, unique=True)
    async def once(card: str) -> None:
        return None

    first = await secure.enqueue("once", card=SECRET_ARG)
    assert await secure.enqueue("once", card=SECRET_ARG) == first
    assert await secure.enqueue("once", card="other") != first
    record = await secure.get_job(first)
    assert record is not None and record["dedup_key"] is not None
    assert SECRET_ARG not in record["dedup_key"]


async def test_old_key_job_still_runs_after_rotation(secure: Soniq) -> None:
    register(secure)
    job_id = await secure.enqueue("charge", card=SECRET_ARG, amount=1)
    old = Signing([OLD_KEY])
    await write_args(secure, job_id, json.dumps(
        {"$enc": await old.encrypt(json.dumps({"card": SECRET_ARG, "amount": 7}))}))
    await secure.run_worker(run_once=True)
    assert (await secure.get_result(job_id))["amount"] == 7


@pytest.mark.parametrize("tamper", ["flipped", "unknown_key", "plaintext"])
async def test_tampered_row_is_dead_lettered_after_one_attempt(secure: Soniq, tamper: str) -> None:
    register(secure)
    job_id = await secure.enqueue("charge", card=SECRET_ARG, amount=5)
    stored = json.loads((await raw_row(secure, job_id))[0])
    if tamper == "flipped":
        replacement = json.dumps({"$enc": flip(stored["$enc"])})
    elif tamper == "unknown_key":
        replacement = json.dumps({"$enc": await Signing([OTHER_KEY]).encrypt('{"card":"x","amount":1}')})
    else:
        replacement = json.dumps({"card": "attacker", "amount": 1})
    await write_args(secure, job_id, replacement)
    healthy = await secure.enqueue("plain", n=1)

    await secure.run_worker(run_once=True)  # the worker lives on and runs the next job
    record = await secure.get_job(job_id)
    assert record is not None
    assert record["status"] == "dead_letter"
    assert record["attempts"] == 1
    assert record["errors"][-1]["type"] == "CorruptArguments"
    assert "encrypt" in record["errors"][-1]["message"] or "decrypt" in record["errors"][-1]["message"]
    assert await secure.get_result(healthy) == 2
    dumped = json.dumps(record, default=str)
    for key in ALL_SECRETS:
        assert key not in dumped


async def test_worker_created_before_an_encrypted_job_refuses_to_run(secure: Soniq) -> None:
    worker = secure.worker(run_once=True)
    register(secure)
    with pytest.raises(ConfigurationError, match="before calling app.worker"):
        await worker.run()
