"""The secure storage interface: containers of objects, envelope-encrypted, with locks and access rules.

Each object is encrypted with its own AES-256 data key; the data key is stored only wrapped by the
container's key-vault key (:class:`~vigil.platform.keyvault.WrappedKey`). Rotating that key and calling
:meth:`Storage.rewrap` re-wraps every data key under the new version without touching the data. Objects are
written and read as streams of chunks (``chunk_size``, at least 64 KiB), each chunk sealed with AES-256-GCM
and bound to its object, index and whether it is the last one, so a tampered, reordered or truncated object
raises :class:`~vigil.platform.errors.IntegrityError` on read.

A container lock applies to every principal, its owner too: ``read_only`` refuses writes and deletes,
``no_access`` refuses reads as well (:class:`~vigil.platform.errors.LockedError`). Access rules grant a
principal :class:`StorageOp` on a container; anything not granted is
:class:`~vigil.platform.errors.ForbiddenError`. Public access (``public_read``) is a flag the lock-down
remediator turns off, as on Azure.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


class Lock(enum.StrEnum):
    NONE = "none"
    READ_ONLY = "read_only"
    NO_ACCESS = "no_access"


class StorageOp(enum.StrEnum):
    READ = "read"  # get objects, list
    WRITE = "write"  # put and delete objects
    ADMIN = "admin"  # locks, access rules, public access, rewrap, delete the container


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    name: str
    key_name: str
    lock: Lock
    public_read: bool
    #: principal -> granted operations
    access: dict[str, frozenset[StorageOp]] = field(default_factory=dict)
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    container: str
    name: str
    size: int
    chunk_size: int
    key_version: str  # the vault key version its data key is wrapped by now
    created: float
    metadata: dict[str, str] = field(default_factory=dict)


class Storage(Protocol):
    """An object store (local, or Azure Blob Storage with client-side envelope encryption)."""

    async def create_container(self, principal: str, name: str, *, key_name: str) -> ContainerInfo: ...

    async def get_container(self, principal: str, name: str) -> ContainerInfo: ...

    async def list_containers(self, principal: str) -> list[ContainerInfo]: ...

    async def delete_container(self, principal: str, name: str) -> None: ...

    async def set_lock(self, principal: str, container: str, lock: Lock) -> ContainerInfo: ...

    async def set_public_read(self, principal: str, container: str, public: bool) -> ContainerInfo: ...

    async def set_access(
        self, principal: str, container: str, grantee: str, ops: frozenset[StorageOp]
    ) -> ContainerInfo:
        """Replace ``grantee``'s operations on the container (an empty set removes the grantee)."""
        ...

    async def put(
        self,
        principal: str,
        container: str,
        name: str,
        data: bytes | AsyncIterator[bytes],
        *,
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """Encrypt and store ``data`` (bytes or a stream of byte blocks of any size); replaces an object."""
        ...

    def get(self, principal: str, container: str, name: str) -> AsyncIterator[bytes]:
        """Stream the decrypted object, chunk by chunk; each chunk is authenticated before it is yielded."""
        ...

    async def read(self, principal: str, container: str, name: str) -> bytes:
        """The whole decrypted object (small objects; use :meth:`get` for large ones)."""
        ...

    async def head(self, principal: str, container: str, name: str) -> ObjectInfo: ...

    async def list_objects(self, principal: str, container: str, *, prefix: str = "") -> list[ObjectInfo]: ...

    async def delete(self, principal: str, container: str, name: str) -> None: ...

    async def set_suspended(self, principal: str, grantee: str, suspended: bool, *, reason: str = "") -> None:
        """Suspend (or restore) every access rule of ``grantee`` at once, keeping them: quarantine."""
        ...

    async def rewrap(self, principal: str, container: str) -> int:
        """Re-wrap every object's data key under the container key's current version; returns how many."""
        ...
