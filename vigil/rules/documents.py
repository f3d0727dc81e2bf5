"""Reading rule files: bounded, line-aware YAML parsing, and mapping problems back to ``line:col``.

Every file is parsed with ruamel's round-trip loader, which keeps the position of every key and value. The
parser is guarded against hostile input (reliability.md B7): a file over :data:`MAX_FILE_BYTES` is refused
before it is read, and the composer refuses alias nodes (the "billion laughs" bomb needs them, and rule files
have no use for them), more than :data:`MAX_DOCUMENTS` documents and nesting deeper than :data:`MAX_DEPTH` —
all in the one parsing pass, so a hostile file is rejected as fast as it is read. Duplicate keys are reported
(E101) without stopping the parse. YAML timestamps stay strings (the text the analyst wrote).

Positions are 1-based ``(line, col)`` (``positions.py``); ruamel's are 0-based.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import ScalarNode

from vigil.rules.diagnostics import Diagnostic
from vigil.rules.positions import Pos, locate
from vigil.yamlio import describe_type, plain

MAX_FILE_BYTES: Final = 2 << 20
MAX_DOCUMENTS: Final = 10_000
MAX_DEPTH: Final = 64

_DOCUMENT_MARKER: Final = re.compile(r"^---(?=[ \t\r\n]|$)", re.MULTILINE)
#: rule files are YAML 1.2: 1.1's yes/no booleans and sexagesimal numbers are traps
_OLD_VERSION: Final = re.compile(r"^%YAML(?![ \t]+1\.2[ \t]*(?:#.*)?$).*$", re.MULTILINE)


class HostileInputError(YAMLError):
    """Raised by the guarded composer: the file is refused whole (E103)."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


class _GuardedComposer(Composer):
    """The round-trip composer, refusing aliases and too many documents, noting duplicate keys."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False  # anchors are harmless; the aliases that use them are refused

    def compose_document(self) -> Any:
        notes = self.loader.vigil_notes
        notes["documents"] += 1
        if notes["documents"] > MAX_DOCUMENTS:
            raise HostileInputError(
                f"more than {MAX_DOCUMENTS} documents", self.parser.peek_event().start_mark
            )
        start = self.parser.peek_event().start_mark
        node = super().compose_document()
        notes["starts"].append(getattr(node, "start_mark", start))
        return node

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.parser.check_event(AliasEvent):
            event = self.parser.peek_event()
            message = f"YAML alias *{event.anchor} refused: rule files may not use aliases"
            raise HostileInputError(message, event.start_mark)
        return super().compose_node(parent, index)

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[str, Any] = {}
        for key, _ in node.value:
            if isinstance(key, ScalarNode):
                first = seen.setdefault(key.value, key)
                if first is not key:
                    self.loader.vigil_notes["duplicates"].append((key, first))
        return node


class _Constructor(RoundTripConstructor):
    """Round-trip constructor that leaves timestamps as the strings the analyst wrote."""


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _Constructor.construct_yaml_str)


class _Yaml(YAML):
    """The guarded round-trip loader; ``vigil_notes`` is where its composer records what it saw."""

    def __init__(self, notes: dict[str, Any]) -> None:
        super().__init__(typ="rt", pure=True)
        self.Composer = _GuardedComposer
        self.Constructor = _Constructor
        self.allow_duplicate_keys = True  # reported by the composer, with both positions
        self.max_depth = MAX_DEPTH
        self.vigil_notes = notes


#: keys whose values are event data, where ``null`` is a value (a NaN loss reported as null), not a default
_DATA_KEYS: Final = frozenset({"events", "records"})


@dataclass(slots=True)
class Document:
    """One YAML document of a file: its ruamel node (for positions) and its plain data (for validation)."""

    path: str
    index: int
    node: Any
    data: Any
    start: Pos
    text: str

    def position(self, loc: tuple[Any, ...], *, key: bool = False) -> Pos:
        """Position of the value (or of the key, with ``key=True``) at a pydantic ``loc`` in this document."""
        return locate(self.node, loc, self.start, key=key)[0]

    def data_at(self, loc: tuple[Any, ...]) -> Any:
        """The plain value at ``loc`` (None if absent)."""
        cur = self.data
        for part in loc:
            in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
            if not (in_list or (isinstance(cur, dict) and part in cur)):
                return None
            cur = cur[part]
        return cur

    def diagnostic(self, code: str, message: str, pos: Pos, rule_id: str | None = None) -> Diagnostic:
        return Diagnostic(code, message, self.path, pos[0], pos[1], rule_id)


@dataclass(slots=True)
class SourceFile:
    """A parsed file: its documents, and the problems found while reading it."""

    path: str
    documents: list[Document] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def read_file(path: Path) -> SourceFile:
    """Read and parse one file; problems become diagnostics, never exceptions."""
    where = str(path)
    out = SourceFile(where)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            out.diagnostics.append(_too_large(where, size))
            return out
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        out.diagnostics.append(Diagnostic("E100", f"cannot read file: {exc.strerror or exc}", where))
        return out
    if len(data) > MAX_FILE_BYTES:
        out.diagnostics.append(_too_large(where, len(data)))
        return out
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.diagnostics.append(Diagnostic("E100", f"not UTF-8 text (byte {exc.start})", where))
        return out
    parse_text(text, out)
    return out


def _too_large(where: str, size: int) -> Diagnostic:
    message = f"file is {size} bytes; rule files are limited to {MAX_FILE_BYTES} bytes"
    return Diagnostic("E103", message, where)


def parse_text(text: str, out: SourceFile) -> None:
    """Parse every document of ``text`` into ``out``; a syntax error ends it, keeping the documents before."""
    # A cheap pre-check: a file with too many document markers is refused without being parsed.
    for markers, m in enumerate(_DOCUMENT_MARKER.finditer(text), 1):
        if markers > MAX_DOCUMENTS:
            line = text.count("\n", 0, m.start()) + 1
            out.diagnostics.append(
                Diagnostic("E103", f"more than {MAX_DOCUMENTS} documents", out.path, line, 1)
            )
            return
    old = _OLD_VERSION.search(text)
    if old is not None:
        line = text.count("\n", 0, old.start()) + 1
        message = "YAML syntax error: only YAML 1.2 is accepted (write %YAML 1.2, or no directive)"
        out.diagnostics.append(Diagnostic("E101", message, out.path, line, 1))
        return
    notes: dict[str, Any] = {"documents": 0, "starts": [], "duplicates": []}
    yaml = _Yaml(notes)
    nodes: list[Any] = []
    where = out.path
    try:
        nodes.extend(yaml.load_all(text))
    except HostileInputError as exc:
        out.diagnostics.append(Diagnostic("E103", exc.message, where, *_mark(exc.mark)))
        return  # refused whole: nothing of a hostile file is used
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if "maximum depth" in (exc.problem or ""):
            message = f"nesting deeper than {MAX_DEPTH} levels"
            out.diagnostics.append(Diagnostic("E103", message, where, *_mark(mark)))
            return
        problem = exc.problem or "syntax error"
        if exc.context:
            problem += f" ({exc.context}"
            cm = exc.context_mark
            problem += f" on line {cm.line + 1})" if cm is not None and mark and cm.line != mark.line else ")"
        out.diagnostics.append(Diagnostic("E101", f"YAML syntax error: {problem}", where, *_mark(mark)))
    except (YAMLError, Warning) as exc:  # a parser warning is raised when warnings are errors
        out.diagnostics.append(Diagnostic("E101", f"YAML syntax error: {type(exc).__name__}", where, 1, 1))
    except RecursionError:
        out.diagnostics.append(Diagnostic("E103", "nesting too deep", where))
        return
    for key, first in notes["duplicates"]:
        out.diagnostics.append(
            Diagnostic(
                "E101",
                f"duplicate key {key.value!r} (first on line {first.start_mark.line + 1})",
                where,
                *_mark(key.start_mark),
            )
        )
    starts = notes["starts"]
    for i, node in enumerate(nodes):
        start = _mark(starts[i]) if i < len(starts) else (1, 1)
        out.documents.append(Document(where, i, node, plain(node, data_keys=_DATA_KEYS), start, text))


def _mark(mark: Any) -> Pos:
    if mark is None:
        return (1, 1)
    return (mark.line + 1, mark.column + 1)


# -- schema errors -----------------------------------------------------------------------------------------


def schema_diagnostics(
    doc: Document, exc: ValidationError, vocabulary: Mapping[str, frozenset[str]], rule_id: str | None = None
) -> list[Diagnostic]:
    """Every pydantic error of ``exc`` as a located diagnostic, one per position and code."""
    out: dict[tuple[Pos, str], Diagnostic] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if kind == "missing_match":
            continue  # the rule builder reports it from the data, together with every other problem
        if kind == "extra_forbidden":
            pos, path = locate(doc.node, loc, doc.start, key=True)
            name = str(loc[-1])
            code, message = "E110", f"unknown key {name!r}" + _hint(name, loc[:-1], vocabulary)
        elif kind == "missing":
            pos, path = locate(doc.node, loc[:-1], doc.start)
            code, message = "E111", f"missing required key {loc[-1]!r}" + (f" in {path}" if path else "")
        else:
            pos, path = locate(doc.node, loc, doc.start)
            actions = bool(loc) and loc[0] == "actions"
            code = "E132" if actions and kind in {"literal_error", "unknown_action"} else "E112"
            value = err.get("input")
            got = f" (got {_what(value)})" if kind.endswith("_type") else ""
            if kind == "string_type" and isinstance(value, dict) and len(value) == 1:
                got += "; text with ': ' in it reads as a mapping: quote it"
            message = f"{path}: {msg}{got}" if path else f"{msg}{got}"
        out.setdefault((pos, code), doc.diagnostic(code, message, pos, rule_id))
    return list(out.values())


def _what(value: Any) -> str:
    if isinstance(value, TaggedScalar):
        return f"a value tagged {value.tag}: rule files use no YAML tags"
    return describe_type(value)


def _hint(name: str, where: tuple[Any, ...], vocabulary: Mapping[str, frozenset[str]]) -> str:
    """Where a misplaced key belongs, or the nearest key valid where it is to a misspelt one ("" when
    there is neither). ``where`` is pydantic's location of the key's mapping: field names, list indexes,
    and also union tags and the user's own mapping keys, so the key's parent is the nearest field name
    that has keys of its own ("" for the top level)."""
    parents = frozenset().union(*vocabulary.values())
    parent = next((k for k in reversed(where) if isinstance(k, str) and k in parents and k), "")
    places = vocabulary.get(name, frozenset())
    if places and parent not in places:
        where_to = " or ".join(f"under {p!r}" if p else "at the top level" for p in sorted(places))
        return f" here; it goes {where_to}"
    here = [n for n, under in vocabulary.items() if parent in under and n != name]
    hint = difflib.get_close_matches(name, here, n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def vocabulary_of(*models: Any) -> Mapping[str, frozenset[str]]:
    """Every field name of these models and the models nested in them, with the keys it is valid under
    ("" for the top level): for "did you mean" hints, and to say where a key in the wrong place goes."""
    places: dict[str, set[str]] = {}
    pending: list[tuple[Any, str]] = [(m, "") for m in models]
    seen: set[tuple[Any, str]] = set()
    while pending:
        model, parent = pending.pop()
        if (model, parent) in seen:
            continue
        seen.add((model, parent))
        for name, info in model.model_fields.items():
            places.setdefault(name, set()).add(parent)
            for arg in _types_in(info.annotation):
                if isinstance(arg, type) and hasattr(arg, "model_fields") and arg not in models:
                    pending.append((arg, name))
    return {name: frozenset(parents) for name, parents in places.items()}


def _types_in(annotation: Any) -> list[Any]:
    out = [annotation]
    for arg in getattr(annotation, "__args__", ()) or ():
        out += _types_in(arg)
    for meta in getattr(annotation, "__metadata__", ()) or ():
        out += _types_in(meta)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None:
        out.append(origin)
    return out
