"""Bearer tokens of the platform service: which principal a caller is.

The local platform is served over loopback HTTP (:mod:`vigil.platform.service`) to training nodes and the
``vigil platform`` CLI; each of them presents ``Authorization: Bearer <token>``, and the token says which
principal it acts as. The key vault's and the storage's access policies then decide what that principal
may do; this module only answers "who is this".

File format (JSON, mode 0600, replaced atomically with :func:`vigil.fsutil.atomic_write`)::

    {"version": 1,
     "principals": {"node-1": {"sha256": "<hex of SHA-256(token)>", "created": 1767225600.0}}}

Why only hashes: the file sits on disk beside the vault, gets copied into backups and support bundles, and
is readable by whoever gets a shell as the daemon's user; with the tokens themselves in it, any such copy
would be a set of working credentials for every node. With hashes, a copy lets nobody call the API, and
the token exists only where it was handed out (``issue`` returns it once). Plain SHA-256 is enough, no
salt and no slow KDF: the tokens are 256 random bits (``secrets.token_urlsafe(32)``), so there is no
dictionary to attack and no way to brute-force the preimage, and lookups stay cheap on every request.

One token per principal: ``issue`` replaces the principal's previous token, which stops working at once;
that is the rotation step after a leak. ``revoke`` removes the principal. Both take effect in a running
service without a restart, because :meth:`PrincipalTokens.lookup` reloads the file when its identity
(inode, size, modification time) changes, so ``vigil platform`` in another process can issue and revoke.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from vigil.errors import VigilError
from vigil.fsutil import atomic_write

FORMAT_VERSION: Final = 1
#: a principal name: what access policies, events and the audit log name; no "/" (it appears in URLs)
PRINCIPAL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


class TokenFileError(VigilError):
    """The token file cannot be read or parsed (its content is never quoted: it is credentials' hashes)."""


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """What the file keeps about one principal's token: its SHA-256 and when it was issued."""

    principal: str
    sha256: str
    created: float


def token_digest(token: str) -> str:
    """The hex SHA-256 of a token, as stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_principal(name: str) -> str:
    """``name`` when it is a valid principal name, else ValueError."""
    if not PRINCIPAL_RE.fullmatch(name):
        raise ValueError(
            f"invalid principal name {name[:64]!r}: 1-128 letters, digits and . _ : @ -, starting with a "
            "letter or digit"
        )
    return name


class PrincipalTokens:
    """The token file at ``path``: issue, revoke and look up bearer tokens.

    >>> tokens = PrincipalTokens(tmp / "platform.tokens")      # doctest: +SKIP
    >>> token = tokens.issue("node-1")                         # doctest: +SKIP
    >>> tokens.lookup(token)                                   # doctest: +SKIP
    'node-1'

    Safe to share between the event loop and worker threads (one lock); several processes may write the
    file, the last atomic replace wins.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, TokenEntry] = {}
        self._stamp: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return f"PrincipalTokens({str(self.path)!r})"

    def issue(self, principal: str) -> str:
        """A new token for ``principal`` (replacing its previous one); returned once, never stored."""
        check_principal(principal)
        token = secrets.token_urlsafe(32)
        with self._lock:
            entries = dict(self._load())
            entries[principal] = TokenEntry(principal, token_digest(token), time.time())
            self._save(entries)
        return token

    def revoke(self, principal: str) -> bool:
        """Remove ``principal``'s token; True when it had one."""
        with self._lock:
            entries = dict(self._load())
            if entries.pop(principal, None) is None:
                return False
            self._save(entries)
            return True

    def lookup(self, token: str) -> str | None:
        """The principal ``token`` belongs to, or None.

        Every stored hash is compared, in constant time and without stopping at a match, so the time taken
        says nothing about which entry (if any) came close.
        """
        if not token:
            return None
        digest = token_digest(token).encode("ascii")
        with self._lock:
            entries = self._load()
        found: str | None = None
        for entry in entries.values():
            if hmac.compare_digest(digest, entry.sha256.encode("ascii")):
                found = entry.principal
        return found

    def principals(self) -> list[TokenEntry]:
        """Every principal with a token (hashes and issue times, never tokens), sorted by name."""
        with self._lock:
            entries = self._load()
        return [entries[name] for name in sorted(entries)]

    # -- the file --------------------------------------------------------------------------------------

    def _load(self) -> dict[str, TokenEntry]:
        """The entries, read again only when the file changed since the last read (lock held)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._entries, self._stamp = {}, None
            return self._entries
        except OSError as exc:
            raise TokenFileError(f"{self.path}: cannot read the token file: {exc.strerror}") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            try:
                raw = self.path.read_bytes()
            except OSError as exc:
                raise TokenFileError(f"{self.path}: cannot read the token file: {exc.strerror}") from None
            self._entries = _parse(raw, self.path)
            self._stamp = stamp
        return self._entries

    def _save(self, entries: dict[str, TokenEntry]) -> None:
        doc = {
            "version": FORMAT_VERSION,
            "principals": {
                name: {"sha256": e.sha256, "created": e.created} for name, e in sorted(entries.items())
            },
        }
        atomic_write(self.path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")  # mkstemp: 0600
        self._stamp = None  # read back on the next lookup (cheap, and proves the file parses)
        self._entries = entries


def _parse(raw: bytes, path: Path) -> dict[str, TokenEntry]:
    try:
        doc: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TokenFileError(f"{path}: the token file is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise TokenFileError(f"{path}: not a version {FORMAT_VERSION} token file")
    principals = doc.get("principals")
    if not isinstance(principals, dict):
        raise TokenFileError(f"{path}: 'principals' must be an object")
    entries: dict[str, TokenEntry] = {}
    for name, item in principals.items():
        digest = item.get("sha256") if isinstance(item, dict) else None
        created = item.get("created", 0.0) if isinstance(item, dict) else None
        if (
            not PRINCIPAL_RE.fullmatch(name)
            or not isinstance(digest, str)
            or not re.fullmatch(r"[0-9a-f]{64}", digest)
            or not isinstance(created, int | float)
        ):
            raise TokenFileError(f"{path}: malformed entry for principal {name[:64]!r}")
        entries[name] = TokenEntry(name, digest, float(created))
    return entries
