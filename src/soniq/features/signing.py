"""Signing and encryption with the ``SONIQ_SECRET_KEYS`` keys: ``app.signing`` and the payload
codec behind ``@app.job(encrypt=True)``.

Keys (newest first; comma-separated in the environment):

- A Fernet key (44 characters of URL-safe base64, ``Fernet.generate_key()``) is used as is.
- Any other string (16+ characters) is stretched with HKDF-SHA256 (fixed salt, info
  ``soniq fernet key v1``) into a Fernet key. HKDF is not a password hash: use long random strings,
  not passwords.
- The HMAC-SHA256 signing key of each entry is derived with HKDF-SHA256 from the same material
  (info ``soniq signing key v1``), so signatures and ciphertexts never share a key.

Rotation: encryption always uses the first key; decryption and verification accept every key. To
rotate, put the new key first and keep the old one after it until ``rotate()`` (or the jobs'
``result_ttl``) has replaced what was made with it. There is no fallback key: without keys every
operation raises :class:`~soniq.errors.ConfigurationError` (a random per-process key would make
stored data undecryptable after a restart).

Encrypted jobs store ``{"$enc": "<Fernet token>"}`` as their arguments and result, so the stored
value stays a JSON object. A ``unique=True`` encrypted job's dedup key is an HMAC of its canonical
arguments under the newest key (not a plain hash, which could be brute-forced for small argument
spaces); a key rotation therefore lets one duplicate of a still-queued job in. A ``dedup_key=`` you
pass is stored as given: do not put secrets in it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from soniq.errors import ConfigurationError, DecryptionError
from soniq.serialization import dumps, loads

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pydantic import SecretStr

    from soniq.registry import JobRegistry
    from soniq.runtime import PayloadCodec

__all__ = ["ENVELOPE_KEY", "EncryptingCodec", "Signing"]

#: The single key of a stored encrypted payload: ``{"$enc": "<Fernet token>"}``.
ENVELOPE_KEY = "$enc"

_SALT = b"soniq secret keys"
_SIGNATURE_VERSION = "v1"
_MISSING_KEYS = (
    "no secret keys are configured: set SONIQ_SECRET_KEYS (comma-separated, newest first; "
    "generate one with `python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'`) or pass Soniq(secret_keys=[...])"
)


def _hkdf(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(material)


class _Key:
    """One configured key: its Fernet, its HMAC key and a short public id for signatures."""

    __slots__ = ("fernet", "key_id", "mac_key")

    def __init__(self, secret: str) -> None:
        material = secret.strip().encode()
        try:
            raw = base64.urlsafe_b64decode(material)
        except (binascii.Error, ValueError):
            raw = b""
        if len(material) == 44 and len(raw) == 32:  # already a Fernet key
            fernet_key = material
        else:
            fernet_key = base64.urlsafe_b64encode(_hkdf(material, b"soniq fernet key v1"))
            raw = material
        self.fernet = Fernet(fernet_key)
        self.mac_key = _hkdf(raw, b"soniq signing key v1")
        # A hash of a derived key: names the key in signatures without revealing anything usable.
        self.key_id = hashlib.sha256(b"soniq key id" + self.mac_key).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"<key {self.key_id}>"

    def mac(self, message: bytes) -> str:
        return hmac.new(self.mac_key, message, hashlib.sha256).hexdigest()


def _to_bytes(value: str | bytes, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


class Signing:
    """Encrypt, decrypt, sign and verify with the configured keys (``app.signing``).

    The methods are async for the public API; the work is a few microseconds of CPU and never
    blocks on I/O. Tokens are Fernet tokens (AES-128-CBC + HMAC-SHA256, timestamped); signatures
    are ``v1:<key id>:<hex HMAC-SHA256>``.

    Raises:
        ConfigurationError: no keys are configured (set ``SONIQ_SECRET_KEYS``).
    """

    __slots__ = ("_keys", "_multi")

    def __init__(self, secret_keys: Sequence[SecretStr | str]) -> None:
        secrets = [k if isinstance(k, str) else k.get_secret_value() for k in secret_keys]
        secrets = [s for s in secrets if s.strip()]
        if not secrets:
            raise ConfigurationError(_MISSING_KEYS)
        self._keys = tuple(_Key(s) for s in secrets)
        self._multi = MultiFernet([key.fernet for key in self._keys])

    def __repr__(self) -> str:
        return f"<Signing keys={len(self._keys)} current={self._keys[0].key_id}>"

    # -- sync core (the payload codec runs inside the worker's hot path) -------------------------
    def encrypt_now(self, plaintext: str | bytes) -> str:
        """Encrypt with the newest key; returns a Fernet token (text)."""
        return self._multi.encrypt(_to_bytes(plaintext, "plaintext")).decode("ascii")

    def decrypt_now(self, token: str) -> str:
        """Decrypt a token made with any configured key.

        Raises:
            DecryptionError: the token was altered, is not a token, or its key is not configured.
        """
        return self._decrypt_bytes(token).decode("utf-8")

    def _decrypt_bytes(self, token: str | bytes) -> bytes:
        try:
            return self._multi.decrypt(_to_bytes(token, "token"))
        except (InvalidToken, TypeError):
            raise DecryptionError(
                "cannot decrypt: the token was altered, is not a Soniq token, or was encrypted with "
                "a key that is not in SONIQ_SECRET_KEYS (keep old keys after the new one while "
                "rotating)"
            ) from None

    def is_current(self, token: str) -> bool:
        """True when ``token`` is intact and was made with the newest key (so :meth:`rotate`
        would not move it to another key); False for older keys and for anything unreadable."""
        try:
            self._keys[0].fernet.decrypt(_to_bytes(token, "token"))
        except (InvalidToken, TypeError):
            return False
        return True

    def digest(self, message: str | bytes) -> str:
        """HMAC-SHA256 of ``message`` under the newest key, hex (no version prefix)."""
        return self._keys[0].mac(_to_bytes(message, "message"))

    # -- public async API ------------------------------------------------------------------------
    async def encrypt(self, plaintext: str | bytes) -> str:
        """Encrypt ``plaintext`` with the newest key; returns a Fernet token."""
        return self.encrypt_now(plaintext)

    async def decrypt(self, token: str) -> str:
        """Decrypt ``token`` with whichever configured key made it.

        Raises:
            DecryptionError: tampered token, not a token, or made with an unknown key.
        """
        return self.decrypt_now(token)

    async def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` (made with any configured key) with the newest key.

        Raises:
            DecryptionError: as for :meth:`decrypt`.
        """
        try:
            return self._multi.rotate(_to_bytes(token, "token")).decode("ascii")
        except (InvalidToken, TypeError):
            raise DecryptionError(
                "cannot rotate: the token was altered, is not a Soniq token, or was encrypted with "
                "a key that is not in SONIQ_SECRET_KEYS"
            ) from None

    async def sign(self, message: str | bytes) -> str:
        """``v1:<key id>:<hex HMAC-SHA256>`` of ``message`` under the newest key."""
        key = self._keys[0]
        return f"{_SIGNATURE_VERSION}:{key.key_id}:{key.mac(_to_bytes(message, 'message'))}"

    async def verify(self, message: str | bytes, signature: str) -> bool:
        """True when ``signature`` is a valid signature of ``message`` under any configured key.

        Every key is tried with a constant-time comparison; anything malformed is simply False.
        """
        if not isinstance(signature, str):
            return False
        version, _, rest = signature.partition(":")
        key_id, _, mac = rest.partition(":")
        if version != _SIGNATURE_VERSION or not mac:
            return False
        data = _to_bytes(message, "message")
        valid = False
        for key in self._keys:
            # No early exit: the time taken does not depend on which key (if any) matched.
            same_id = hmac.compare_digest(key.key_id.encode(), key_id.encode())
            same_mac = hmac.compare_digest(key.mac(data).encode(), mac.encode())
            valid |= same_id and same_mac
        return valid


def _envelope_token(value: Any) -> str | None:
    """The token of ``{"$enc": token}``, else None."""
    if isinstance(value, dict) and len(value) == 1:
        token = value.get(ENVELOPE_KEY)
        if isinstance(token, str):
            return token
    return None


class EncryptingCodec:
    """A :class:`~soniq.runtime.PayloadCodec` that encrypts the arguments and result of jobs
    registered with ``encrypt=True`` and passes every other job through to ``inner`` untouched.

    Stored arguments of an encrypted job that are not an envelope are refused (somebody wrote
    plaintext into the row); an envelope found on a job without ``encrypt=True`` is still decrypted,
    so turning encryption off does not strand jobs already queued.
    """

    def __init__(self, registry: JobRegistry, signing: Callable[[], Signing],
                 inner: PayloadCodec) -> None:
        self._registry = registry
        self._signing = signing
        self.inner = inner

    def __repr__(self) -> str:
        return f"<EncryptingCodec inner={self.inner!r}>"

    def encrypts(self, job_name: str) -> bool:
        spec = self._registry.get(job_name)
        return spec is not None and spec.encrypt

    def encode_args(self, job_name: str, args_json: str) -> str:
        args_json = self.inner.encode_args(job_name, args_json)
        if not self.encrypts(job_name):
            return args_json
        return self.seal(args_json)

    def seal(self, text: str) -> str:
        """``text`` (stored arguments, already encoded) as the envelope an encrypted job stores;
        the producer seals a job it has not registered whose stored definition says encrypt."""
        return dumps({ENVELOPE_KEY: self._signing().encrypt_now(text)})

    def decode_args(self, job_name: str, stored: str) -> dict[str, Any]:
        value = self.inner.decode_args(job_name, stored)
        token = _envelope_token(value)
        if token is not None:
            return self.inner.decode_args(job_name, self._signing().decrypt_now(token))
        if self.encrypts(job_name):
            raise DecryptionError(
                f"job {job_name!r} has encrypt=True but its stored arguments are not encrypted; "
                "the row was written by something other than Soniq's enqueue"
            )
        return value

    def encode_result(self, job_name: str, value: Any) -> str:
        text = self.inner.encode_result(job_name, value)
        if not self.encrypts(job_name):
            return text
        return dumps({ENVELOPE_KEY: self._signing().encrypt_now(text)})

    def decode_result(self, job_name: str, value: Any, *, encrypted: bool = False) -> Any:
        """The plaintext result of a job as read back from storage (already JSON-decoded);
        ``encrypted``: the job is encrypted though not registered here."""
        token = _envelope_token(value) if encrypted or self.encrypts(job_name) else None
        if token is None:
            return value
        return loads(self._signing().decrypt_now(token))
