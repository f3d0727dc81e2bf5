"""``http.read_auth``: the read API wants the local token or a platform API token; probes, ingestion and the
platform keep their own rules; off by default."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from vigil.api import create_app
from vigil.api.read_auth import READ_PREFIXES, is_read
from vigil.settings import load_settings
from vigil.store.sqlite import Store
from vigil.streams import RunState

READS = ["/v1/findings", "/v1/incidents", "/v1/dead-letters", "/v1/rules", "/v1/status", "/metrics"]


def state_for(tmp_path: Path, read_auth: bool) -> RunState:
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        f"data_dir: {tmp_path / 'var'}\nhttp:\n  port: 0\n  read_auth: {str(read_auth).lower()}\n",
        encoding="utf-8",
    )
    state = RunState(settings=load_settings(profile, env={}))
    state.store = Store(tmp_path / "vigil.db")
    state.local_token = "local-token-0123456789"
    return state


def get_all(state: RunState, paths: list[str], token: str | None) -> dict[str, int]:
    async def fetch() -> dict[str, int]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test", headers=headers) as c:
            return {p: (await c.get(p)).status_code for p in paths}

    return asyncio.run(fetch())


def test_off_by_default_every_read_answers(tmp_path: Path) -> None:
    state = state_for(tmp_path, read_auth=False)
    assert load_settings(None, env={}).http.read_auth is False
    assert 401 not in get_all(state, READS, None).values()  # (/v1/rules: 503 with no rule set loaded)


def test_on_reads_want_the_local_token_and_probes_stay_open(tmp_path: Path) -> None:
    state = state_for(tmp_path, read_auth=True)
    assert set(get_all(state, READS, None).values()) == {401}
    assert set(get_all(state, READS, "wrong").values()) == {401}
    let_in = get_all(state, READS, "local-token-0123456789")
    assert 401 not in let_in.values() and let_in["/v1/findings"] == 200, let_in
    assert get_all(state, ["/healthz", "/readyz"], None) == {"/healthz": 200, "/readyz": 503}  # (not ready)


@pytest.mark.parametrize(
    ("method", "path", "closed"),
    [
        ("GET", "/v1/findings", True),
        ("HEAD", "/v1/incidents/abc", True),
        ("GET", "/v1/actions/abc", True),
        ("POST", "/v1/actions/abc/approve", False),  # its own platform-token check
        ("POST", "/v1/events", False),  # ingestion: its own sources' credentials
        ("GET", "/v1/findingsX", False),
        ("GET", "/healthz", False),
    ],
)
def test_what_read_auth_closes(method: str, path: str, closed: bool) -> None:
    assert is_read(method, path) is closed
    assert "/healthz" not in READ_PREFIXES and "/readyz" not in READ_PREFIXES
