"""The master key: the one secret that seals every key the local vault keeps at rest.

The vault's SQLite file never holds key material in clear: each version's material is sealed here with
AES-256-GCM, and the associated data names the row (``"<key>/<version>"``), so a sealed blob copied onto
another row fails to open instead of silently becoming that key. Rows the access decisions depend on (a
key's release policy, a version's enabled flag, a grant) carry an HMAC-SHA256 tag from :meth:`row_tag`, so
a row the vault never wrote is detected; what a per-row tag cannot see is a row deleted or rolled back to
an earlier value the vault did write, which would need a counter kept outside the database.

Sealed format (version 1)::

    0x01 ‖ nonce (12 random bytes) ‖ AES-256-GCM ciphertext and 16-byte tag
    associated data = 0x01 ‖ caller's aad            (the format byte is authenticated too)

Random 96-bit nonces are safe for about 2**32 seals under one key; the vault seals once per key version,
far below that. The sealing key and the row-tag key are derived from the master key with HKDF-SHA256 and
distinct labels, so one secret never serves two algorithms.

Where the master key comes from, in order of preference for an operator:

* :meth:`MasterKey.from_file`: 32 random bytes in a file of mode 0600, created with ``O_EXCL`` on first
  start (two processes starting at once cannot end up with two keys). A file that group or others can
  access is refused with the ``chmod 600`` that fixes it: a readable master key is a leaked master key.
* :meth:`MasterKey.from_passphrase`: scrypt (n=2**15, r=8, p=1, 32 MiB, a fraction of a second) over a
  passphrase and a random 16-byte salt persisted beside the vault on first use. A wrong passphrase is not
  detectable here; it surfaces as :class:`~vigil.platform.errors.IntegrityError` on the first read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
import unicodedata
from pathlib import Path
from typing import Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from vigil.errors import ConfigError
from vigil.fsutil import fsync_dir
from vigil.platform.errors import IntegrityError

log = logging.getLogger(__name__)

KEY_SIZE: Final = 32
SALT_SIZE: Final = 16
NONCE_SIZE: Final = 12
FORMAT_VERSION: Final = 1
SCRYPT_N: Final = 2**15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_TAG_SIZE: Final = 16
_SEAL_LABEL: Final = b"vigil.master-key.seal.v1"
_ROW_LABEL: Final = b"vigil.master-key.row-tag.v1"

#: a field of a row that :meth:`MasterKey.row_tag` authenticates
RowField = str | int | float | bool | bytes | None


def write_new_file(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` with mode 0600, only if it does not exist yet (``O_EXCL``).

    True when this call created it, False when it already existed (the caller then reads it). The file and
    its directory are fsynced; on a failure while writing, the partial file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)  # the umask can only narrow 0600, but say it outright
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    fsync_dir(path.parent)
    return True


def read_private_file(path: Path, what: str, *, limit: int = 1 << 20) -> bytes:
    """The bytes of a secret file; ConfigError when it is missing, not a regular file, or open to others.

    The mode is checked on the opened descriptor, so a file swapped between the check and the read is the
    file that was checked.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist", path=str(path)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} is not a regular file", path=str(path))
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{what} can be accessed by group or others (mode {mode:04o}); "
                f"allow only its owner with: chmod 600 {path}",
                path=str(path),
            )
        chunks: list[bytes] = []
        while chunk := os.read(fd, limit + 1):
            chunks.append(chunk)
            if sum(map(len, chunks)) > limit:
                raise ConfigError(f"{what} is larger than {limit} bytes", path=str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _derive(key: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=label).derive(key)


class MasterKey:
    """A 32-byte master key: seals key material at rest and tags rows (see module docstring)."""

    __slots__ = ("_aead", "_row_key", "_source")

    def __init__(self, key: bytes, *, source: str = "memory") -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a master key is exactly {KEY_SIZE} bytes")
        self._aead = AESGCM(_derive(key, _SEAL_LABEL))
        self._row_key = _derive(key, _ROW_LABEL)
        #: where the key came from, for messages: "file:<path>", "passphrase:<salt file>", "memory"
        self._source = source

    @classmethod
    def generate(cls) -> MasterKey:
        """A fresh random key held only in memory (tests and throw-away demonstrations)."""
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_file(cls, path: Path, create: bool = True) -> MasterKey:
        """The key in ``path`` (32 raw bytes, mode 0600); created with ``O_EXCL`` when missing and ``create``.

        ConfigError when the file is missing (and not to be created), is not 32 bytes, or can be read by
        group or others (the message gives the ``chmod 600`` that fixes it).
        """
        path = Path(path)
        if create:
            key = os.urandom(KEY_SIZE)
            if write_new_file(path, key):
                log.info("created a new master key file %s", path)
                return cls(key, source=f"file:{path}")
        data = read_private_file(path, "master key file", limit=4096)
        if len(data) != KEY_SIZE:
            raise ConfigError(
                f"master key file holds {len(data)} bytes, expected {KEY_SIZE}; it is damaged or not a "
                "master key (restore it from backup: a vault sealed under it cannot be opened without it)",
                path=str(path),
            )
        return cls(data, source=f"file:{path}")

    @classmethod
    def from_passphrase(cls, passphrase: str, salt_file: Path) -> MasterKey:
        """scrypt(passphrase, salt) with n=2**15, r=8, p=1; the 16-byte salt is created in ``salt_file``
        on first use and read from it afterwards. The passphrase is NFC-normalised first, so the same
        passphrase typed on two systems gives the same key."""
        if not passphrase:
            raise ValueError("the master key passphrase is empty")
        salt_file = Path(salt_file)
        salt = os.urandom(SALT_SIZE)
        if not write_new_file(salt_file, salt):
            salt = salt_file.read_bytes()
            if len(salt) != SALT_SIZE:
                raise ConfigError(
                    f"salt file holds {len(salt)} bytes, expected {SALT_SIZE}; restore it from backup",
                    path=str(salt_file),
                )
        secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
        key = Scrypt(salt=salt, length=KEY_SIZE, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(secret)
        return cls(key, source=f"passphrase:{salt_file}")

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``plaintext`` encrypted and authenticated, bound to ``aad`` (format in the module docstring)."""
        header = bytes([FORMAT_VERSION])
        nonce = os.urandom(NONCE_SIZE)
        return header + nonce + self._aead.encrypt(nonce, plaintext, header + aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """The plaintext of a :meth:`seal` result; IntegrityError when the master key is not the one that
        sealed it, the blob was changed, or ``aad`` differs (the blob was moved to another row)."""
        if len(blob) < 1 + NONCE_SIZE + _TAG_SIZE or blob[0] != FORMAT_VERSION:
            raise IntegrityError("sealed data is truncated or of an unknown format")
        header, nonce, body = blob[:1], blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :]
        try:
            return self._aead.decrypt(nonce, body, header + aad)
        except InvalidTag:
            raise IntegrityError(
                "sealed data failed its authentication check: wrong master key or passphrase, "
                "or the data was changed or moved"
            ) from None

    def row_tag(self, *fields: RowField) -> bytes:
        """HMAC-SHA256 over an unambiguous encoding of ``fields`` (table name first, by convention)."""
        return hmac.new(self._row_key, _encode_row(fields), hashlib.sha256).digest()

    def row_tag_ok(self, tag: bytes, *fields: RowField) -> bool:
        """Whether ``tag`` is :meth:`row_tag` of ``fields`` (constant-time comparison)."""
        return hmac.compare_digest(tag, self.row_tag(*fields))

    def __repr__(self) -> str:
        return f"MasterKey(source={self._source!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a MasterKey cannot be pickled: it would write the key out in clear")


def _encode_row(fields: tuple[RowField, ...]) -> bytes:
    """JSON with bytes as ``{"b": hex}``: two different field tuples never encode the same."""
    items = [{"b": f.hex()} if isinstance(f, bytes) else f for f in fields]
    return json.dumps(items, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
