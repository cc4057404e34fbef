"""YAML reading for spec files: fast, bounded, and located.

Valid files take the fast path: libyaml (ruamel.yaml's C parser) composes the node
tree, and a small builder turns it into dicts, lists and scalars. ruamel's own safe
constructor and resolver are pure Python and cost ~85% of validating a repository (the
resolver re-derives the YAML version for every scalar), so the builder handles the plain
cases (str, null, bool, decimal int and float, mappings, sequences) and hands anything
else (anchors, merge keys, explicit tags, timestamps, hex ints, duplicate keys,
`%YAML` directives) to ruamel's safe loader, which then decides, so results are the
same either way. Line and column numbers are only needed to report a problem, so the
round-trip loader (pure Python, slower) runs lazily, once per file that has one (`Locator`).

Hostile input is refused before it can cost much: binary and non-UTF-8 files, alias
"billion laughs" bombs (expanded size is computed on the composed node graph, shared
nodes counted once per use, without expanding anything), and nesting too deep to build.
Nesting is checked *before* the C loader sees the text: its composer recurses on the C
stack and crashes the process (SIGSEGV) somewhere past ~10,000 levels. A cheap upper
bound on the depth (regex passes) clears ordinary files; only files whose bound is high
are walked event by event (libyaml's parser keeps its own stack, so that walk is safe).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver, implicit_resolvers
from ruamel.yaml.tag import Tag

try:
    from _ruamel_yaml import CParser
except ImportError:  # pragma: no cover - ruamel.yaml.clib missing: always the stock loader
    CParser = None

from mlp.specs.diagnostics import Loc

# Largest number of nodes a document may expand to through aliases.
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 64
# Files up to this size that libyaml refuses are read again by the YAML 1.2 loader.
PURE_FALLBACK_CHARS = 256 * 1024


@dataclass(frozen=True)
class ParseError(Exception):
    message: str
    line: int = 1  # 1-based
    col: int = 1


_local = threading.local()


def _safe() -> YAML:
    # one instance per thread: a YAML object keeps per-load state (stream, doc_infos, tags),
    # and the controller and webhook workers load snapshots concurrently
    yaml: YAML | None = getattr(_local, "yaml", None)
    if yaml is None:
        yaml = _local.yaml = YAML(typ="safe", pure=False)
    return yaml


def _pure() -> YAML:
    """ruamel's pure-Python YAML 1.2 loader: the fallback when libyaml (YAML 1.1) refuses valid 1.2."""
    yaml: YAML | None = getattr(_local, "pure", None)
    if yaml is None:
        yaml = _local.pure = YAML(typ="safe", pure=True)
    return yaml


def _load_all_12(text: str) -> list[Any]:
    """Documents via libyaml; on a libyaml syntax error, via the YAML 1.2 loader, whose error counts.

    libyaml refuses some valid YAML 1.2, e.g. `from: [team:ml-leads]` (a colon inside a plain
    scalar in a flow sequence, as ruamel itself writes it)."""
    try:
        docs = _fast_load_all(text)
        return docs if docs is not None else list(_safe().load_all(text))
    except YAMLError:
        if len(text) > PURE_FALLBACK_CHARS:
            raise  # the pure loader is several times slower: not for large files
        return list(_pure().load_all(text))


def decode(data: bytes) -> str:
    """Decode UTF-8 spec text, refusing binary files with the position of the first bad byte."""
    for bom, name in (
        (b"\xff\xfe\0\0", "UTF-32"),
        (b"\0\0\xfe\xff", "UTF-32"),
        (b"\xff\xfe", "UTF-16"),
        (b"\xfe\xff", "UTF-16"),
    ):
        if data.startswith(bom):
            raise ParseError(f"{name} text: spec files must be UTF-8 (save this file as UTF-8)", 1, 1)
    nul = data.find(b"\0")
    if nul >= 0:
        line, col = _position(data, nul)
        raise ParseError("binary file: contains a NUL byte (spec files are UTF-8 YAML text)", line, col)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _position(data, exc.start)
        raise ParseError(f"not UTF-8: invalid byte 0x{data[exc.start]:02x}", line, col) from None
    return text.removeprefix("\ufeff")


def _position(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    col = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return line, col


def _marked(exc: YAMLError, text: str = "") -> ParseError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}"
    if context and isinstance(exc, MarkedYAMLError) and "found duplicate key" in str(problem or ""):
        message = f"YAML error: {problem}"
    elif mark is not None and _is_tab_at(text, mark.line, mark.column):
        # libyaml only says "found character that cannot start any token"
        message = "YAML syntax error: tab character in indentation; tabs are not allowed in YAML, indent with spaces"
    elif context:
        message += f" ({context})"
    if mark is None:
        return ParseError(message)
    line, col = mark.line + 1, mark.column + 1
    if text:
        # libyaml may point just past the end of a file without a final newline: keep the
        # position inside the file, so editors and CI annotations can show it
        lines = text.split("\n")
        if line > len(lines):
            line, col = len(lines), len(lines[-1]) + 1
    return ParseError(message, line, col)


def _is_tab_at(text: str, line: int, column: int) -> bool:
    lines = text.split("\n", line + 1)
    return line < len(lines) and "\t" in lines[line][: column + 1]


# Longest run of block-indentation characters at the start of a line.
_BLOCK_PREFIX = re.compile(r"^[ \t?:-]*", re.MULTILINE)
# An innermost flow collection: brackets with no bracket inside.
_INNERMOST_FLOW = re.compile(r"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")


def _depth_bound(text: str) -> int:
    """An upper bound of the nesting depth of any document in `text`, computed cheaply.

    Each block level needs at least one more column of indentation or a `- ` / `? `
    indicator, except a sequence that is a mapping's value (same indentation): so block
    depth <= 2 * prefix + 2. Each flow level is one pass that removes innermost brackets.
    Brackets left over (unbalanced, e.g. inside quoted strings) make the bound unknown.
    """
    block = max((len(p) for p in _BLOCK_PREFIX.findall(text)), default=0)
    flow = 0
    if "[" in text or "{" in text:
        rest = text
        while True:
            rest, removed = _INNERMOST_FLOW.subn("", rest)
            if not removed:
                break
            flow += 1
            if flow > MAX_DEPTH:
                break
        if "[" in rest or "{" in rest:
            flow = MAX_DEPTH + 1
    return 2 * block + 2 + flow


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, located at the first node past the limit."""
    if _depth_bound(text) <= MAX_DEPTH:
        return
    depth = 0
    for event in _safe().parse(text):
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise ParseError(f"nesting deeper than {MAX_DEPTH} levels", mark.line + 1, mark.column + 1)
        elif isinstance(event, CollectionEndEvent):
            depth -= 1


def _check_aliases(text: str) -> None:
    """Refuse documents whose aliases expand beyond MAX_EXPANDED_NODES."""
    yaml = _safe()
    sizes: dict[int, int] = {}

    def size(node: Node, depth: int) -> int:
        if depth > MAX_DEPTH:  # aliases can nest deeper than the text shows
            raise ParseError(
                f"nesting deeper than {MAX_DEPTH} levels", node.start_mark.line + 1, node.start_mark.column + 1
            )
        key = id(node)
        if key in sizes:
            return sizes[key]
        sizes[key] = 1  # a recursive alias counts once instead of looping
        total = 1
        if isinstance(node, MappingNode):
            for k, v in node.value:
                total += size(k, depth + 1) + size(v, depth + 1)
        elif isinstance(node, SequenceNode):
            for item in node.value:
                total += size(item, depth + 1)
        sizes[key] = total
        if total > MAX_EXPANDED_NODES:
            raise ParseError(
                f"YAML alias expansion too large (over {MAX_EXPANDED_NODES} nodes): refusing a possible alias bomb",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
            )
        return total

    for root in yaml.compose_all(text):
        if root is not None:
            size(root, 1)


# --- fast path ------------------------------------------------------------------------------

_CORE = "tag:yaml.org,2002:"
_TAGS = {name: Tag(suffix=_CORE + name) for name in ("str", "int", "float", "bool", "null", "seq", "map")}
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAGS[n] for n in ("str", "int", "float", "bool", "null"))
_SEQ, _MAP = _TAGS["seq"], _TAGS["map"]
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\Z")
_PLAIN_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?\Z")
_TRUE = frozenset(("true", "True", "TRUE"))


def _resolver_table() -> tuple[dict[str, tuple[tuple[Tag, Any], ...]], tuple[tuple[Tag, Any], ...]]:
    """YAML 1.2 implicit resolvers by first character, in ruamel's order, with shared Tag objects."""
    by_char: dict[str, list[tuple[Tag, Any]]] = {}
    anywhere: list[tuple[Tag, Any]] = []
    for versions, tag, regexp, first in implicit_resolvers:
        if (1, 2) not in versions:
            continue
        shared = _TAGS.get(tag.removeprefix(_CORE)) or Tag(suffix=tag)
        compiled = re.compile(regexp.pattern, regexp.flags)  # ruamel's RegExp is a lazy proxy: slow per call
        for ch in first:
            (anywhere if ch is None else by_char.setdefault(ch, [])).append((shared, compiled))
    return {ch: (*found, *anywhere) for ch, found in by_char.items()}, tuple(anywhere)


_BY_CHAR, _ANYWHERE = _resolver_table()


class _SpecResolver(VersionedResolver):
    """ruamel's YAML 1.2 implicit typing from a prebuilt table, returning shared Tag objects."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in _BY_CHAR.get(value[:1], _ANYWHERE):
                    if regexp.match(value):
                        return tag
            return _STR
        return _SEQ if kind is SequenceNode else _MAP


class _Fallback(Exception):
    """The fast builder met something it leaves to ruamel's safe constructor."""


if CParser is not None:

    class _Composer(CParser, _SpecResolver):  # type: ignore[misc, valid-type]
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _SpecResolver.__init__(self, loadumper=self)


def _build(node: Node) -> Any:
    cls, tag = type(node), node.ctag
    if cls is ScalarNode:
        value = node.value
        if tag is _STR:
            return value
        if tag is _NULL:
            return None
        if tag is _BOOL:
            return value in _TRUE
        if tag is _INT and _PLAIN_INT.match(value):
            return int(value)
        if tag is _FLOAT and _PLAIN_FLOAT.match(value):
            return float(value)
    elif cls is SequenceNode and tag is _SEQ:
        return [_build(item) for item in node.value]
    elif cls is MappingNode and tag is _MAP:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if type(key_node) is not ScalarNode:
                mark = key_node.start_mark
                raise ParseError(
                    "YAML error: a mapping key must be a plain value, not a "
                    + ("mapping" if type(key_node) is MappingNode else "list"),
                    mark.line + 1,
                    mark.column + 1,
                )
            key = _build(key_node)
            if key in out:
                raise _Fallback  # the safe constructor reports the duplicate with its position
            out[key] = _build(value_node)
        return out
    raise _Fallback


def _fast_load_all(text: str) -> list[Any] | None:
    """Documents of `text` via libyaml + `_build`, or None when ruamel's constructor must decide."""
    if CParser is None or "&" in text or "%YAML" in text:
        return None
    composer = _Composer(text)
    try:
        docs = []
        while composer.check_node():
            node = composer.get_node()
            docs.append(None if node is None else _build(node))
        return docs
    except _Fallback:
        return None
    finally:
        composer.dispose()


def fast_load_all(text: str) -> list[Any] | None:
    """The fast path for other YAML mlp reads in bulk (rendered manifests): the documents exactly as
    ruamel's safe loader reads them, or None where that loader must decide (anchors, tags, duplicate
    or non-scalar keys). libyaml's syntax errors are raised as they are (ruamel's YAMLError)."""
    try:
        return _fast_load_all(text)
    except ParseError:
        return None


def parse(data: bytes) -> list[Any]:
    """All documents of a spec file, as plain Python data. Raises ParseError."""
    text = decode(data)
    if not text.strip():
        raise ParseError("empty file: expected one or more mlp documents")
    try:
        _check_depth(text)
        if "&" in text and "*" in text:
            _check_aliases(text)
        docs = _load_all_12(text)
    except ParseError:
        raise
    except YAMLError as exc:
        raise _marked(exc, text) from None
    except RecursionError:
        raise ParseError(f"nesting deeper than {MAX_DEPTH} levels") from None
    except (TypeError, ValueError, OverflowError) as exc:
        # ruamel's constructor on odd input: a mapping as a key (TypeError), a bad !!timestamp, ...
        raise ParseError(f"YAML error: cannot read this document ({type(exc).__name__}: {exc})") from None
    if all(d is None for d in docs):
        raise ParseError("empty file: expected one or more mlp documents")
    return docs


class Locator:
    """Maps (file, document, key path) to 1-based line and column, composing each file once.

    Only files with a problem are composed again, and only to the node tree (libyaml's
    marks), never constructed: a repository where every file has an error still costs
    about what loading it did. A key path points at the key of a mapping entry and at the
    item of a sequence; where the path leaves the text (a missing field), at the last node
    it reached.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self._files = files
        self._docs: dict[str, list[Any]] = {}

    def _documents(self, path: str) -> list[Any]:
        if path not in self._docs:
            try:
                self._docs[path] = _compose_all(decode(self._files[path]))
            except Exception:  # positions are best effort; the problem is reported regardless
                self._docs[path] = []
        return self._docs[path]

    def locate(self, path: str, doc: int, loc: Loc) -> tuple[int, int]:
        docs = self._documents(path) if path in self._files else []
        if not 0 <= doc < len(docs) or docs[doc] is None:
            return 1, 1
        node = docs[doc]
        mark = node.start_mark
        for part in loc:
            if isinstance(node, MappingNode):
                wanted = part if isinstance(part, str) else str(part)
                entry = next(((k, v) for k, v in node.value if isinstance(k, ScalarNode) and k.value == wanted), None)
                if entry is None:
                    break
                mark, node = entry[0].start_mark, entry[1]
            elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                mark = node.start_mark
            else:
                break
        return mark.line + 1, mark.column + 1

    def document_start(self, path: str, doc: int) -> tuple[int, int]:
        return self.locate(path, doc, ())


def _compose_all(text: str) -> list[Node | None]:
    """Node trees (with marks) of every document; the same guards as `parse` come first."""
    _check_depth(text)
    if CParser is None or "%YAML" in text:
        return list(_safe().compose_all(text))
    composer = _Composer(text)
    try:
        docs = []
        while composer.check_node():
            docs.append(composer.get_node())
        return docs
    except YAMLError:
        if len(text) > PURE_FALLBACK_CHARS:
            raise
        return list(_pure().compose_all(text))  # valid YAML 1.2 that libyaml refuses
    finally:
        composer.dispose()
