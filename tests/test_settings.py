"""Settings: defaults, the YAML profile, environment overrides, and diagnostics an operator can act on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import Field, SecretStr

from vigil.errors import ConfigError
from vigil.settings import Section, Settings, iter_fields, load, load_settings

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config" / "local.yaml"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths resolve against the current directory: run every test in its own."""
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "profile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problem(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    return str(exc.value)


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(env={})
    assert s.data_dir == tmp_path / "var"
    assert s.log_level == "INFO"
    assert (s.http.host, s.http.port) == ("127.0.0.1", 8470)
    assert s.ingest.drop_dir == tmp_path / "var" / "inbox"
    assert s.ingest.poll_interval == 1.0
    assert s.ingest.max_record_bytes == 4 << 20
    assert s.ingest.max_document_bytes == 64 << 20
    assert s.ingest.format == "auto"
    assert s.output.events_file == tmp_path / "var" / "events.jsonl"
    assert s.output.dead_letter_file == tmp_path / "var" / "dead-letter.jsonl"


def test_shipped_profile_shows_exactly_the_defaults() -> None:
    assert load_settings(SHIPPED, env={}) == load_settings(env={})


def test_default_profile_is_config_local_yaml_when_present(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    write(tmp_path, "http:\n  port: 9001\n", "config/local.yaml")
    assert load_settings(env={}).http.port == 9001
    assert load_settings(env={"VIGIL_CONFIG": str(write(tmp_path, "http: {port: 9002}\n"))}).http.port == 9002


def test_docs_name_every_setting_and_its_variable() -> None:
    readme = (REPO / "config" / "README.md").read_text(encoding="utf-8")
    shipped = SHIPPED.read_text(encoding="utf-8")
    for key, env, _field in iter_fields():
        assert f"`{key}`" in readme, key
        assert f"`{env}`" in readme, env
        assert re.search(rf"^\s*{re.escape(key.rsplit('.', 1)[-1])}:", shipped, re.M), key


def test_yaml_profile(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
data_dir: state            # relative: against the current directory
log_level: debug
http: {host: 0.0.0.0, port: 0}
ingest:
  drop_dir: "{data_dir}/drop"
  poll_interval: 0.25
  max_record_bytes: 1MiB
  format: activity
output:
  events_file: /srv/out/events.jsonl
  dead_letter_file:          # empty: the default
""",
    )
    s = load_settings(path, env={})
    assert s.data_dir == tmp_path / "state"
    assert s.log_level == "DEBUG"
    assert (s.http.host, s.http.port) == ("0.0.0.0", 0)
    assert s.ingest.drop_dir == tmp_path / "state" / "drop"
    assert s.ingest.poll_interval == 0.25
    assert s.ingest.max_record_bytes == 1 << 20
    assert s.ingest.format == "activity"
    assert s.output.events_file == Path("/srv/out/events.jsonl")
    assert s.output.dead_letter_file == tmp_path / "state" / "dead-letter.jsonl"


def test_empty_profile_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "# nothing yet\n"), env={}) == load_settings(env={})


def test_env_beats_yaml_beats_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "log_level: WARNING\nhttp:\n  host: 10.0.0.1\n  port: 1234\n")
    s = load_settings(
        path, env={"VIGIL_HTTP__PORT": "9000", "vigil_data_dir": "/tmp/elsewhere", "VIGIL_LOG_LEVEL": ""}
    )
    assert s.http.port == 9000  # env over YAML
    assert s.http.host == "10.0.0.1"  # YAML kept where env says nothing
    assert s.data_dir == Path("/tmp/elsewhere")  # env over default, names are case-insensitive
    assert s.ingest.drop_dir == Path("/tmp/elsewhere/inbox")
    assert s.log_level == "WARNING"  # an empty variable is unset
    assert s.ingest.poll_interval == 1.0  # default


def test_env_section_as_json(tmp_path: Path) -> None:
    s = load_settings(env={"VIGIL_HTTP": '{"port": 7000}', "VIGIL_HTTP__HOST": "::1"})
    assert (s.http.host, s.http.port) == ("::1", 7000)


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "data_dir: var\nhttp:\n  port: 8470\n\n# scanning\ningest:\n  poll_intervall: 2\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert problem(exc) == f"{path}:7: ingest.poll_intervall: unknown setting (did you mean poll_interval?)"
    assert (exc.value.path, exc.value.line) == (str(path), 7)


def test_unknown_top_level_and_nested_keys_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "colour: red\nhttp:\n  tls:\n    cert: x.pem\n  port: eighty\noutput: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert problem(exc).splitlines() == [
        f"{path}:1: colour: unknown setting",
        f"{path}:3: http.tls: unknown setting",
        f"{path}:5: http.port: Input should be a valid integer, unable to parse string as an integer (got 'eighty')",
        f"{path}:6: output: expected a mapping of settings, got a number",
    ]
    assert (exc.value.path, exc.value.line) == (str(path), 1)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("http:\n  port: 70000\n", 2, "http.port: Input should be less than or equal to 65535"),
        ("ingest:\n  poll_interval: 0\n", 2, "ingest.poll_interval: Input should be greater than 0"),
        ("ingest:\n  format: csv\n", 2, "ingest.format: unknown format; known: auto, activity"),
        ("ingest:\n  max_record_bytes: lots\n", 2, "ingest.max_record_bytes: could not parse value and unit"),
        ("log_level: LOUD\n", 1, "log_level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ],
)
def test_wrong_values(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert problem(exc).startswith(f"{path}:{line}: {fragment}")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("http:\n  port: 1\n host: x\n", 3, "invalid YAML"),
        (
            "http: [1, 2\n",
            2,
            "invalid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow",
        ),
        (
            'x: "open\n\n',
            3,
            "invalid YAML: found unexpected end of stream (while scanning a quoted scalar started on line 1)",
        ),
        ("http:\n  port: 1\n  port: 2\n", 3, "invalid YAML: duplicate key 'port'"),
        ("- a\n- b\n", 1, "expected a mapping of settings at the top level, got a list"),
    ],
)
def test_malformed_yaml(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert problem(exc).startswith(f"{path}:{line}: {fragment}"), problem(exc)
    assert exc.value.line == line


def test_missing_profile(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: settings profile not found"):
        load_settings(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match=r"^VIGIL_CONFIG=.*gone\.yaml: settings profile not found"):
        load_settings(env={"VIGIL_CONFIG": str(tmp_path / "gone.yaml")})


def test_env_errors_name_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 1\n")
    env = {
        "VIGIL_HTTP__PORT": "abc",
        "VIGIL_INGEST__POLL_INTERVALL": "3",
        "VIGIL_HTTP_HOST": "0.0.0.0",
        "VIGIL_OUTPUT": "{not json",
        "VIGIL_NODE_NAME": "unrelated variables are not ours to police",
        "VIGIL_CONFIG": str(path),
    }
    with pytest.raises(ConfigError) as exc:
        load_settings(env=env)
    assert sorted(problem(exc).splitlines()) == [
        "VIGIL_HTTP_HOST: unknown setting (did you mean VIGIL_HTTP__HOST?)",
        "VIGIL_HTTP__PORT: http.port: Input should be a valid integer, unable to parse string as an integer "
        "(got 'abc')",
        "VIGIL_INGEST__POLL_INTERVALL: ingest.poll_intervall: unknown setting (did you mean poll_interval?)",
        "VIGIL_OUTPUT: output: expected a JSON object",
    ]


def test_single_env_error_is_a_plain_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={"VIGIL_HTTP__PORT": "-1"})
    assert exc.value.path == "VIGIL_HTTP__PORT"
    assert exc.value.line is None
    assert (
        str(exc.value) == "VIGIL_HTTP__PORT: http.port: Input should be greater than or equal to 0 (got '-1')"
    )


class VaultSection(Section):
    url: str = "https://vault.example"
    api_token: SecretStr = SecretStr("")
    client_secret: int = 0


class SecretSettings(Settings):
    vault: VaultSection = Field(default_factory=VaultSection)


SECRET = "hunter2-do-not-print"


@pytest.mark.parametrize(
    "text",
    [
        f"vault:\n  api_token: [{SECRET}]\n",
        f"vault:\n  client_secret: {SECRET}\n",
        f"vault:\n  api_token: {SECRET}\n  api_token: {SECRET}x\n",
        f'vault:\n  api_token: "{SECRET}\n  url: x\n',
        f"vault:\n  password: {SECRET}\n",
    ],
)
def test_secrets_are_never_echoed(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(SecretSettings, write(tmp_path, text), env={})
    assert f"{tmp_path / 'profile.yaml'}:" in problem(exc)
    assert "hunter2" not in problem(exc)


def test_secret_env_value_not_echoed_and_summary_redacted() -> None:
    with pytest.raises(ConfigError) as exc:
        load(SecretSettings, env={"VIGIL_VAULT__CLIENT_SECRET": SECRET})
    expected = "vault.client_secret: Input should be a valid integer, unable to parse string as an integer"
    assert problem(exc) == f"VIGIL_VAULT__CLIENT_SECRET: {expected}"
    s = load(SecretSettings, env={"VIGIL_VAULT__API_TOKEN": SECRET, "VIGIL_VAULT__CLIENT_SECRET": "42"})
    assert s.vault.api_token.get_secret_value() == SECRET
    summary = s.summary()
    assert summary["vault"] == {
        "url": "https://vault.example",
        "api_token": "<redacted>",
        "client_secret": "<redacted>",
    }
    assert "hunter2" not in repr(s) + str(summary)


def test_settings_are_frozen() -> None:
    s = load_settings(env={})
    with pytest.raises(ValueError, match="frozen"):
        s.http.port = 1  # type: ignore[misc]
