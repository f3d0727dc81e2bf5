"""The public key each node attested with: what its telemetry signatures are checked against.

The attestation service binds a node's ephemeral public key into the report it verifies; once the node is
attested, that key is the only one whose signatures make its telemetry trustworthy. The key is public, so
it is kept in a plain JSON file (``{platform.dir}/node-keys.json``, replaced atomically), one entry per node,
replaced by each new attestation (a restarted node attests with a new key). Readers in the daemon reload
the file when it changes, so a separate attestation process would be seen too.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vigil.fsutil import atomic_write


class NodeKeys:
    """node id -> the RSA public key of its latest attestation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._pems: dict[str, str] = {}
        self._keys: dict[str, rsa.RSAPublicKey] = {}

    def set(self, node_id: str, public_key_pem: bytes) -> None:
        with self._lock:
            self._load()
            pems = dict(self._pems)
            pems[node_id] = public_key_pem.decode("ascii")
            atomic_write(self.path, orjson.dumps(pems, option=orjson.OPT_SORT_KEYS))
            self._pems, self._keys, self._stamp = pems, {}, None

    def get(self, node_id: str) -> rsa.RSAPublicKey | None:
        with self._lock:
            self._load()
            key = self._keys.get(node_id)
            if key is None and node_id in self._pems:
                loaded = serialization.load_pem_public_key(self._pems[node_id].encode("ascii"))
                if isinstance(loaded, rsa.RSAPublicKey):
                    key = self._keys[node_id] = loaded
            return key

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._pems, self._keys, self._stamp = {}, {}, None
            return
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._stamp:
            data = orjson.loads(self.path.read_bytes())
            self._pems = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
            self._keys, self._stamp = {}, stamp
