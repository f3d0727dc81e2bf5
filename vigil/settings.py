"""Vigil's settings: one pydantic model, read from a YAML profile and overridden by ``VIGIL_*`` variables.

Precedence, highest first: keyword arguments to :class:`Settings`, environment variables
(``VIGIL_HTTP__PORT=9000``; ``__`` separates nesting levels), the YAML profile, the defaults. Profiles and
variables are operator input, so every problem is reported at once, like a compiler:
``config/local.yaml:7: ingest.poll_intervall: unknown setting``; values of settings whose names look
secret (secret, token, password, key) never appear in a message. An empty YAML value means the default.

Paths may start with ``{data_dir}``; relative paths are resolved against the current directory at load
time, so nothing depends on where a later ``chdir`` leaves the process.

Adding a section: subclass :class:`Section` in ``vigil/sections.py``, add it as a field of
:class:`Settings`, and show its keys in ``config/local.yaml`` and ``config/README.md``
(``tests/test_settings.py`` checks both stay complete).
"""

from __future__ import annotations

import difflib
import json
import os
import reprlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from vigil.errors import ConfigError
from vigil.sections import (
    DATA_DIR_TOKEN,
    AlertSettings,
    AuditSettings,
    DetectSettings,
    IngestSettings,
    NodesSettings,
    OutputSettings,
    PlatformSettings,
    ResponseSettings,
    Section,
    StoreSettings,
)
from vigil.sections_azure import AzureSettings
from vigil.sections_http import EventGridAuth, HttpSettings, SourceAuth, SourcesSettings
from vigil.sections_kafka import KafkaSettings
from vigil.yamlio import YamlDocument, describe_type, line_of, read_profile

ENV_PREFIX: Final = "VIGIL_"
ENV_DELIMITER: Final = "__"
#: variables with the prefix that are not settings: the profile path itself, the crash points of the
#: crash-safety tests (streams/crash.py) and the switch to pure-Python window state (detectors/compiled.py)
RESERVED_ENV: Final = frozenset({"VIGIL_CONFIG", "VIGIL_CRASH_AT", "VIGIL_PURE_PYTHON"})
DEFAULT_PROFILE: Final = Path("config/local.yaml")
_SECRET_WORDS: Final = ("secret", "token", "password", "passphrase", "key", "webhook", "connection_string")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseSettings):
    """Every setting of a Vigil process. Build it with :func:`load_settings`, which explains errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        env_ignore_empty=True,
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    data_dir: Path = Field(default=Path("var"), description="root of all local state")
    log_level: LogLevel = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["text", "json"] = Field(
        default="text", description="text, or json: one object per line"
    )
    http: HttpSettings = Field(default_factory=HttpSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    detect: DetectSettings = Field(default_factory=DetectSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    platform: PlatformSettings = Field(default_factory=PlatformSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    response: ResponseSettings = Field(default_factory=ResponseSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    nodes: NodesSettings = Field(default_factory=NodesSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    azure: AzureSettings = Field(default_factory=AzureSettings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        # Frozen model: the resolved values are written once, here, during validation.
        data_dir = _absolute(self.data_dir)
        object.__setattr__(self, "data_dir", data_dir)
        for name, value in self:
            if isinstance(value, Section):
                object.__setattr__(self, name, _resolve_section(value, data_dir))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _MappingEnvSource(settings_cls), _YamlProfileSource(settings_cls))

    def summary(self) -> dict[str, Any]:
        """The settings as JSON-ready data with secret-looking values replaced (for /v1/status and logs)."""
        summary: dict[str, Any] = _redact(self.model_dump(mode="json"))
        return summary


S = TypeVar("S", bound=Settings)


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load the settings: ``path`` (or ``$VIGIL_CONFIG``, or ``config/local.yaml`` if it exists) + ``env``.

    ``env`` defaults to ``os.environ``. Raises :class:`ConfigError` listing every problem found.
    """
    return load(Settings, path, env)


def load(model: type[S], path: str | Path | None = None, env: Mapping[str, str] | None = None) -> S:
    """:func:`load_settings` for any subclass of :class:`Settings` (extensions, tests)."""
    environ: Mapping[str, str] = os.environ if env is None else env
    profile = _choose_profile(path, environ)
    doc = read_profile(profile) if profile is not None else YamlDocument(None, {}, None)
    problems, environ = _check_env(model, environ)
    settings: S | None = None
    token = _SOURCES.set((doc.data, environ))
    try:
        settings = model()
    except ValidationError as exc:
        problems += [_describe(model, err, doc, environ) for err in exc.errors()]
    except SettingsError as exc:  # a nested value pydantic-settings could not decode; names no value
        problems.append((None, None, f"environment: {exc}"))
    finally:
        _SOURCES.reset(token)
    if settings is not None and not problems:
        return settings
    problems.sort(key=lambda p: (p[0] != doc.path, p[1] or 0, p[0] or ""))
    if len(problems) == 1:
        where, line, message = problems[0]
        raise ConfigError(message, path=where, line=line)
    err = ConfigError("\n".join(str(ConfigError(m, path=w, line=n)) for w, n, m in problems))
    err.path, err.line = problems[0][0], problems[0][1]
    raise err


def iter_fields(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[tuple[str, str, FieldInfo]]:
    """Every leaf setting as ``(dotted key, environment variable, field)``; feeds the docs and their test."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, Section):
            yield from iter_fields(ann, f"{key}.")
        else:
            yield key, ENV_PREFIX + key.replace(".", ENV_DELIMITER).upper(), field


def is_secret(name: str) -> bool:
    """Whether a setting's value must never be echoed (judged by its name, so new fields are covered)."""
    return any(word in name.lower() for word in _SECRET_WORDS)


# -- sources ----------------------------------------------------------------------------------------------

_Sources = tuple[dict[str, Any], Mapping[str, str]]
#: what :func:`load` hands to the sources: the plain YAML data and the environment mapping
_SOURCES: ContextVar[_Sources | None] = ContextVar("vigil_settings", default=None)


class _YamlProfileSource(PydanticBaseSettingsSource):
    """The YAML profile read by :func:`load`; a bare ``Settings()`` sees no profile."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        ctx = _SOURCES.get()
        return (ctx[0].get(field_name) if ctx else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        ctx = _SOURCES.get()
        return dict(ctx[0]) if ctx else {}


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading the mapping given to :func:`load` instead of ``os.environ``."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        ctx = _SOURCES.get()
        if ctx is None:
            return super()._load_env_vars()
        return parse_env_vars(ctx[1], self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


# -- diagnostics ------------------------------------------------------------------------------------------

Problem = tuple[str | None, int | None, str]  # (file or variable, line, message)


def _choose_profile(path: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    if path is not None:
        chosen, origin = Path(path), None
    elif environ.get("VIGIL_CONFIG"):
        chosen, origin = Path(environ["VIGIL_CONFIG"]), "VIGIL_CONFIG"
    elif DEFAULT_PROFILE.is_file():
        return DEFAULT_PROFILE
    else:
        return None
    if not chosen.is_file():
        what = "is a directory, not a settings profile" if chosen.is_dir() else "settings profile not found"
        raise ConfigError(
            f"{origin}={chosen}: {what}" if origin else what, path=None if origin else str(chosen)
        )
    return chosen


def _describe(model: type[BaseModel], err: Any, doc: YamlDocument, environ: Mapping[str, str]) -> Problem:
    loc = tuple(err["loc"])
    dotted = ".".join(str(part) for part in loc) or "settings"
    kind = err["type"]
    if kind == "extra_forbidden":
        message = f"{dotted}: unknown setting{_suggest(model, loc)}"
    elif kind in {"model_type", "dict_type", "model_attributes_type"}:
        message = f"{dotted}: expected a mapping of settings, got {describe_type(err.get('input'))}"
    else:
        text = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        secret = any(isinstance(part, str) and is_secret(part) for part in loc)
        scalar = isinstance(value, str | int | float)  # a mapping could hold a secret further down
        shown = f" (got {reprlib.repr(value)})" if scalar and not secret else ""
        message = f"{dotted}: {text}{shown}"
    variable = _env_for(loc, environ)
    if variable is not None:
        return variable, None, message
    return doc.path, line_of(doc.node, loc), message


def _env_for(loc: tuple[Any, ...], environ: Mapping[str, str]) -> str | None:
    """The variable that supplied ``loc`` (or a section above it), if any."""
    best: tuple[int, str] | None = None
    for name, value in environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in RESERVED_ENV or value == "":
            continue
        parts = tuple(upper[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER))
        n = min(len(parts), len(loc))  # the variable sets loc, a section above it, or a key below it
        if parts[:n] == tuple(str(p).lower() for p in loc[:n]) and (best is None or n > best[0]):
            best = (n, name)
    return best[1] if best else None


def _check_env(model: type[Settings], environ: Mapping[str, str]) -> tuple[list[Problem], dict[str, str]]:
    """Problems validation cannot see, and the environment without the variables that caused them.

    A section given whole (``VIGIL_HTTP='{"port": 9000}'``) must be a JSON object. An unknown variable close
    to a real one (``VIGIL_HTTP_PORT``) is a typo; one under a known section (``VIGIL_HTTP__PROT``) is left
    to validation; others are ignored, because the prefix is not ours alone to police.
    """
    known = {env for _, env, _ in iter_fields(model)}
    sections = {ENV_PREFIX + name.upper() for name in model.model_fields} - known
    problems: list[Problem] = []
    kept: dict[str, str] = {}
    for name in sorted(environ):
        value, upper = environ[name], name.upper()
        if upper in sections and value:
            try:
                ok = isinstance(json.loads(value), dict)
            except ValueError:
                ok = False
            if not ok:
                problems.append((name, None, f"{upper[len(ENV_PREFIX) :].lower()}: expected a JSON object"))
                continue
        elif upper.startswith(ENV_PREFIX) and upper not in RESERVED_ENV | known:
            close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.85)
            if close and upper.split(ENV_DELIMITER)[0] not in sections:
                problems.append((name, None, f"unknown setting (did you mean {close[0]}?)"))
        kept[name] = value
    return problems, kept


def _suggest(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _redact(data: Any, secret: bool = False) -> Any:
    if isinstance(data, dict):
        return {k: _redact(v, secret or is_secret(str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [_redact(v, secret) for v in data]
    return "<redacted>" if secret and data not in (None, "") else data


def _resolve_section(section: Section, data_dir: Path) -> Section:
    updates: dict[str, Any] = {}
    for key, value in section:
        if isinstance(value, Path):
            updates[key] = _resolve_path(value, data_dir)
        elif isinstance(value, list) and value and all(isinstance(item, Path) for item in value):
            updates[key] = [_resolve_path(item, data_dir) for item in value]
        elif isinstance(value, Section):
            updates[key] = _resolve_section(value, data_dir)
    return section.model_copy(update=updates) if updates else section


def _resolve_path(path: Path, data_dir: Path) -> Path:
    return _absolute(Path(str(path).replace(DATA_DIR_TOKEN, str(data_dir), 1)))


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser()))


__all__ = [
    "DATA_DIR_TOKEN",
    "AlertSettings",
    "AuditSettings",
    "DetectSettings",
    "EventGridAuth",
    "HttpSettings",
    "IngestSettings",
    "NodesSettings",
    "OutputSettings",
    "PlatformSettings",
    "ResponseSettings",
    "Section",
    "Settings",
    "SourceAuth",
    "SourcesSettings",
    "StoreSettings",
    "is_secret",
    "iter_fields",
    "load",
    "load_settings",
]
