"""Load rule files into a :class:`~vigil.rules.model.RuleSet`, reporting every problem in every file at once.

``load_rules(paths, overlays=...)`` never raises for what a file contains: each problem becomes a
:class:`~vigil.rules.diagnostics.Diagnostic` with its ``path:line:col``, a rule with any error is left out
of ``RuleSet.rules``, and the caller decides (``RuleSet.ok``) whether to use the set — a hot reload keeps the
last good set running when a new one has errors (reliability.md B4).

Loading takes two passes. The first reads every file (directories recursively: ``*.yaml`` and ``*.yml``,
sorted, hidden entries skipped; a file may hold many ``---`` documents) and sorts the documents into rules,
libraries (``lists:``/``macros:``) and overlays; the libraries of all files form one global namespace. Then
the overlays are applied, in the order given, and the second pass compiles every rule against the final
lists and macros.

Overlays are environment tuning (style.md §3.8): ``overlay: {lists: {NAME: {append: [...]}}}`` or
``{replace: [...]}``, always explicit. They are read only from the files passed as ``overlays`` (``--overlay
FILE`` on the command line, e.g. ``overlays/prod.yaml``); an overlay document found among the rule paths is an
error (E102), so a rule folder cannot change behaviour by where it happens to be deployed, and an overlay file
holds nothing but overlays.

Example::

    >>> from vigil.rules.loader import load_rules
    >>> ruleset = load_rules(["tests/fixtures/rules/good"])
    >>> ruleset.ok, len(ruleset.rules) > 0
    (True, True)
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from pydantic import ValidationError

from vigil.rules.build import Context, build_rule, compile_macro, content_hash
from vigil.rules.build_forms import check_references
from vigil.rules.diagnostics import Diagnostic, sort_key
from vigil.rules.documents import Document, SourceFile, read_file, schema_diagnostics, vocabulary_of
from vigil.rules.model import ListDef, Network, Rule, RuleSet
from vigil.rules.positions import Pos
from vigil.rules.schema import MODELS, DocKind, LibraryDoc, OverlayDoc, document_kind
from vigil.yamlio import describe_type

SUFFIXES: Final = frozenset({".yaml", ".yml"})
_LIB_WORDS: Final = vocabulary_of(LibraryDoc)
_OVERLAY_WORDS: Final = vocabulary_of(OverlayDoc)


def load_rules(
    paths: Sequence[str | Path], *, overlays: Sequence[str | Path] = (), cost_budget: int | None = None
) -> RuleSet:
    """Load every rule, list and macro under ``paths``, apply ``overlays``; see the module docstring."""
    diagnostics: list[Diagnostic] = []
    grouped: dict[DocKind, list[Document]] = {"rule": [], "library": [], "overlay": []}
    for src in _read_all(paths, diagnostics):
        for doc in src.documents:
            kind = _classify(doc, diagnostics)
            if kind == "overlay":
                message = "overlay documents are applied only from files given as overlays (--overlay FILE)"
                diagnostics.append(doc.diagnostic("E102", message, doc.start))
            elif kind is not None:
                grouped[kind].append(doc)
    for src in _read_all(overlays, diagnostics):
        for doc in src.documents:
            kind = _classify(doc, diagnostics)
            if kind == "overlay":
                grouped["overlay"].append(doc)
            elif kind is not None:
                message = f"an overlay file holds only overlay documents, not a {kind} document"
                diagnostics.append(doc.diagnostic("E102", message, doc.start))

    lists, macros, macro_docs = _gather(grouped["library"], diagnostics)
    for doc in grouped["overlay"]:
        _apply_overlay(doc, lists, diagnostics)
    ctx = Context(lists, macros, cost_budget, diagnostics)
    for name, (doc, loc) in macro_docs.items():
        compile_macro(doc, loc, name, ctx)

    rules: list[Rule] = []
    first_seen: dict[str, str] = {}
    for doc in grouped["rule"]:
        rule = build_rule(doc, ctx)
        rid = doc.data.get("id")
        if isinstance(rid, str):
            pos = doc.position(("id",))
            if rid in first_seen:
                message = f"duplicate rule id {rid!r} (first defined at {first_seen[rid]})"
                diagnostics.append(doc.diagnostic("E113", message, pos, rid))
                continue
            first_seen[rid] = f"{doc.path}:{pos[0]}:{pos[1]}"
        if rule is not None:
            rules.append(rule)
    rules, unresolved = check_references(rules)
    diagnostics += unresolved
    return RuleSet(
        rules=tuple(rules),
        lists=lists,
        macros=macros,
        diagnostics=tuple(sorted(diagnostics, key=sort_key)),
        hash=ruleset_hash(rules, lists, macros),
    )


def ruleset_hash(rules: Sequence[Rule], lists: Mapping[str, ListDef], macros: Mapping[str, str]) -> str:
    """sha256 over every rule's content hash and the final lists and macros (what the rules see)."""
    data = {
        "rules": sorted([r.id, r.content_hash] for r in rules),
        "lists": {
            name: sorted(ld.values) if ld.kind == "values" else [str(n) for n in ld.networks]
            for name, ld in lists.items()
        },
        "macros": dict(macros),
    }
    return content_hash(orjson.loads(orjson.dumps(data)))


# -- files -------------------------------------------------------------------------------------------------


def expand(paths: Sequence[str | Path], diagnostics: list[Diagnostic]) -> list[Path]:
    """Files named, and ``*.yaml``/``*.yml`` under folders named (recursive, sorted); each file once."""
    out: list[Path] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found: Iterator[Path] = (
                p
                for p in sorted(path.rglob("*"))
                if p.suffix in SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.exists():
            found = iter((path,))
        else:
            diagnostics.append(Diagnostic("E100", "no such file or directory", str(path)))
            continue
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def _read_all(paths: Sequence[str | Path], diagnostics: list[Diagnostic]) -> list[SourceFile]:
    files = [read_file(p) for p in expand(paths, diagnostics)]
    for src in files:
        diagnostics += src.diagnostics
    return files


def _classify(doc: Document, diagnostics: list[Diagnostic]) -> DocKind | None:
    if doc.data is None:
        return None  # an empty document (a trailing ---)
    if not isinstance(doc.data, dict):
        what = describe_type(doc.data)
        message = f"a document must be a mapping (a rule, lists/macros or an overlay), not {what}"
        diagnostics.append(doc.diagnostic("E102", message, doc.start))
        return None
    kind = document_kind(set(doc.data))
    if kind is None:
        message = (
            "document of no known type: a rule has id: and match:, a library lists: and/or macros:, "
            "an overlay file overlay:"
        )
        diagnostics.append(doc.diagnostic("E102", message, doc.start))
    return kind


# -- lists and macros --------------------------------------------------------------------------------------


def _gather(
    docs: list[Document], diagnostics: list[Diagnostic]
) -> tuple[dict[str, ListDef], dict[str, str], dict[str, tuple[Document, tuple[Any, ...]]]]:
    """Every list and macro of every library document; a name defined twice is E114 at the second."""
    lists: dict[str, ListDef] = {}
    macros: dict[str, str] = {}
    macro_docs: dict[str, tuple[Document, tuple[Any, ...]]] = {}
    where: dict[tuple[str, str], str] = {}
    for doc in docs:
        try:
            MODELS["library"].model_validate(doc.data)
        except ValidationError as exc:
            diagnostics += schema_diagnostics(doc, exc, _LIB_WORDS)
        for section in ("lists", "macros"):
            entries = doc.data.get(section)
            for name, spec in entries.items() if isinstance(entries, dict) else ():
                pos = doc.position((section, name), key=True)
                first = where.setdefault((section, name), f"{doc.path}:{pos[0]}:{pos[1]}")
                if first != f"{doc.path}:{pos[0]}:{pos[1]}":
                    what = "list" if section == "lists" else "macro"
                    message = f"duplicate {what} name {name!r} (first defined at {first})"
                    diagnostics.append(doc.diagnostic("E114", message, pos))
                elif section == "lists":
                    lists[name] = _list_def(doc, name, spec, pos, diagnostics)
                elif isinstance(spec, str):
                    macros[name] = spec
                    macro_docs[name] = (doc, (section, name))
    return lists, macros, macro_docs


def _list_def(doc: Document, name: str, spec: Any, pos: Pos, diagnostics: list[Diagnostic]) -> ListDef:
    """One list; items of the wrong type were reported by the schema and are left out."""
    loc: tuple[Any, ...] = ("lists", name)
    kind = "values"
    items: Any = spec
    if isinstance(spec, dict):
        kind = "cidr" if "cidr" in spec else "values"
        loc += (kind,)
        items = spec.get(kind)
    items = items if isinstance(items, list) else []
    if kind == "cidr":
        networks = _networks(doc, loc, items, diagnostics)
        return ListDef(name, "cidr", networks=networks, path=doc.path, line=pos[0])
    values = frozenset(v for v in items if isinstance(v, str))
    return ListDef(name, "values", values=values, path=doc.path, line=pos[0])


def _networks(
    doc: Document, loc: tuple[Any, ...], items: list[Any], diagnostics: list[Diagnostic]
) -> tuple[Network, ...]:
    """The valid networks of ``items``; each invalid one is E128 at its own line:col."""
    out: list[Network] = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            pos = doc.position((*loc, i))
            diagnostics.append(doc.diagnostic("E128", f"invalid CIDR {item!r}: {exc}", pos))
    return tuple(out)


def _apply_overlay(doc: Document, lists: dict[str, ListDef], diagnostics: list[Diagnostic]) -> None:
    """Append to or replace the lists an overlay names; an unknown list is E133."""
    try:
        MODELS["overlay"].model_validate(doc.data)
    except ValidationError as exc:
        diagnostics += schema_diagnostics(doc, exc, _OVERLAY_WORDS)
    body = doc.data.get("overlay")
    patches = body.get("lists") if isinstance(body, dict) else None
    for name, patch in patches.items() if isinstance(patches, dict) else ():
        loc: tuple[Any, ...] = ("overlay", "lists", name)
        base = lists.get(name)
        if base is None:
            message = f"overlay of unknown list {name!r} (overlays change lists, they do not define them)"
            diagnostics.append(doc.diagnostic("E133", message, doc.position(loc, key=True)))
            continue
        if not isinstance(patch, dict) or len(set(patch) & {"append", "replace"}) != 1:
            continue  # reported by the schema
        op = "append" if "append" in patch else "replace"
        items = patch[op] if isinstance(patch[op], list) else []
        if base.kind == "cidr":
            networks = _networks(doc, (*loc, op), items, diagnostics)
            networks = base.networks + networks if op == "append" else networks
            lists[name] = dataclasses.replace(base, networks=tuple(dict.fromkeys(networks)))
        else:
            values = frozenset(v for v in items if isinstance(v, str))
            lists[name] = dataclasses.replace(base, values=base.values | values if op == "append" else values)
