"""Fields inside JSON documents: a small path syntax, and finding the fields a path
names in a document's text so they can be replaced without touching the rest.

A path is ``$`` followed by segments: ``.name`` (letters, digits, ``_`` and
``-``, not starting with a digit or ``-``), ``["any name"]`` (a JSON string)
and ``[*]`` (every element of an array). Nothing else: no recursive descent,
no index, no filter, no object wildcard, so a path always names the same
fields whatever a document holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from keyturn.errors import ConfigError, InvalidDocument

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# The decoder's scanner: (text, index) -> (value, end); StopIteration if no value starts there.
_scan: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
# What json.dumps escapes in a string; any other text is its own JSON between quotes.
_ESCAPED = re.compile(r'[\x00-\x1f\\"]')
_MISSING = object()
# Member names as they stand quoted in a document's text (the paths' names: few).
_QUOTED: dict[str, str] = {}
# The json module's own string scanner: (text, index after the opening quote) -> (string, end).
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
#: A ``[*]`` segment.
EACH = None


@dataclass(frozen=True)
class JsonPath:
    """A parsed path; ``text`` is its canonical spelling, part of each field's context."""

    text: str
    segments: tuple[str | None, ...]  # a member name, or EACH
    #: No ``[*]``: the path names at most one field of a document.
    direct: bool = True

    def __str__(self) -> str:
        return self.text


def parse_path(text: str) -> JsonPath:
    """Parse ``text``; ConfigError saying what is wrong and what is allowed."""
    usage = (
        f"JSON path {text!r} is not supported: write $ then .name, "
        '["any name"] or [*] (every array element), e.g. "$.headers[*].value"'
    )
    if not isinstance(text, str) or not text.startswith("$"):
        raise ConfigError(usage)
    segments: list[str | None] = []
    pos = 1
    while pos < len(text):
        if text.startswith("[*]", pos):
            segments.append(EACH)
            pos += 3
        elif text.startswith('["', pos):
            try:
                name, end = _scanstring(text, pos + 2)
            except ValueError:
                raise ConfigError(usage) from None
            if not text.startswith("]", end):
                raise ConfigError(usage)
            segments.append(name)
            pos = end + 1
        elif text.startswith(".", pos) and (match := _NAME.match(text, pos + 1)):
            segments.append(match.group())
            pos = match.end()
        else:
            raise ConfigError(usage)
    if not segments:
        raise ConfigError(f"{usage}; $ alone is the whole document: leave json_fields out")
    return JsonPath(_canonical(segments), tuple(segments), EACH not in segments)


def _canonical(segments: Sequence[str | None]) -> str:
    parts = ["$"]
    for segment in segments:
        if segment is EACH:
            parts.append("[*]")
        elif _NAME.fullmatch(segment):
            parts.append(f".{segment}")
        else:
            parts.append(f"[{json.dumps(segment, ensure_ascii=False)}]")
    return "".join(parts)


# A field found in a document: where its value starts and ends in the text, and the value.
Found = tuple[int, int, Any]


def locate(document: str, paths: Sequence[JsonPath]) -> list[list[Found]]:
    """For each path, the fields it names in ``document``, in document order; a
    field holding an object or an array ends at -1. InvalidDocument if the text
    is not exactly one JSON value."""
    if "\\" not in document:
        found = _find_plain(document, paths)
        if found is not None:
            return found
    return _parse(document, paths)


def quick_finder(paths: Sequence[JsonPath]) -> Callable[[Any], list[Found] | None] | None:
    """For paths without ``[*]`` (None if one has it): a function giving each path's
    field, in a document whose fields all hold strings that can be found with one
    parse and a few searches (a batch's hot path), and None for any other
    document (or value that is not text), to :func:`locate` instead. Each
    field's string must stand once in the text (then it is the field's, as in
    :func:`_find_plain`), and each member name on the way as often as the paths
    pass it (else a member may be named twice, and the json module sees only
    the last)."""
    if not paths or not all(path.direct for path in paths):
        return None
    routes = [path.segments for path in paths]
    passed: dict[str, int] = {}  # member name -> the objects passed through it
    for prefix in {route[: k + 1] for route in routes for k in range(len(route))}:
        member = str(prefix[-1])  # no [*] here
        passed[member] = passed.get(member, 0) + 1
    counts = [('"' + name + '"', n) for name, n in passed.items()]

    def find(document: Any) -> list[Found] | None:
        if type(document) is not str or "\\" in document:
            return None
        try:  # json.loads without its wrappers: the C scanner (no leading space), then what trails
            value, end = _scan(document, 0)
            nodes = []
            for route in routes:
                node = value
                for name in route:
                    node = node[name]  # KeyError if missing, TypeError if not an object
                nodes.append(node)
        except (ValueError, StopIteration, KeyError, TypeError):
            return None
        size = len(document)
        if end != size and _ws(document, end) != size:
            return None
        found: list[Found] = []
        for node in nodes:
            if type(node) is not str:
                return None
            quoted = f'"{node}"'
            start = document.find(quoted)
            if start < 0:
                return None
            end = start + len(quoted)
            if document.find(quoted, end) >= 0:
                return None
            found.append((start, end, node))
        for spelled, n in counts:
            if document.count(spelled) != n:
                return None
        return found

    return find


def _find_plain(document: str, paths: Sequence[JsonPath]) -> list[list[Found]] | None:
    """The fast way, for a document without a backslash (most are): parsed by the
    json module, each field's string then found in the text. Without escapes a
    string's text is its value between quotes, and ``"v"`` can only be a whole
    string, so a string found once, and not followed by ``:`` (a member name),
    is the field. None where that does not hold (the same string twice, say),
    or where a member the paths pass through may be named twice in an object
    (the json module keeps only the last; the thorough way sees every one)."""
    try:
        value = _DECODER.decode(document)  # json.loads without its argument checks
    except ValueError:
        raise InvalidDocument("not valid JSON") from None
    found: list[list[Found]] = []
    passed: set[tuple[str, int]] = set()  # (member name, id of the object) on the way
    for path in paths:
        spans: list[Found] = []
        if path.direct:  # no [*]: at most one field, reached by names alone
            node: Any = value
            for name in path.segments:
                if type(node) is not dict:
                    node = _MISSING
                    break
                passed.add((name, id(node)))  # type: ignore[arg-type]
                node = node.get(name, _MISSING)
            fields = [] if node is _MISSING else [node]
        else:
            fields = _leaves(value, path.segments, passed)
        for leaf in fields:
            if type(leaf) is str:
                quoted = '"' + leaf + '"'
                start = document.find(quoted)
                end = start + len(quoted)
                if start < 0 or document.find(quoted, end) >= 0:
                    return None
                after = document[end : end + 1]
                if after == ":" or (
                    after.isspace() and document.startswith(":", _ws(document, end))
                ):
                    return None
                spans.append((start, end, leaf))
            else:
                spans.append((0, -1 if isinstance(leaf, dict | list) else 0, leaf))
        found.append(spans)
    counts: dict[str, int] = {}
    for name, _ in passed:
        counts[name] = counts.get(name, 0) + 1
    for name, n in counts.items():
        spelled = _QUOTED.get(name)
        if spelled is None:
            spelled = _QUOTED[name] = '"' + name + '"'
        if document.count(spelled) != n:
            return None
    return found


def leaves(value: Any, path: JsonPath) -> list[Any]:
    """The values ``path`` names in a parsed document, in document order."""
    return _leaves(value, path.segments, set())


def _leaves(
    value: Any, segments: tuple[str | None, ...], passed: set[tuple[str, int]]
) -> list[Any]:
    """The values ``segments`` lead to; notes in ``passed`` each (member, object) on
    the way."""
    if not segments:
        return [value]
    head, rest = segments[0], segments[1:]
    if head is EACH:
        if isinstance(value, list):
            return [leaf for item in value for leaf in _leaves(item, rest, passed)]
        return []
    if isinstance(value, dict):
        passed.add((head, id(value)))
        if head in value:
            return _leaves(value[head], rest, passed)
    return []


def _parse(document: str, paths: Sequence[JsonPath]) -> list[list[Found]]:
    """The thorough way: only the parts of the document a path descends into are
    parsed by hand; the rest is skipped by the json module's own parser."""
    found: list[list[Found]] = [[] for _ in paths]
    todo = [(i, p.segments) for i, p in enumerate(paths)]
    end = _value(document, _WS.match(document, 0).end(), todo, found)  # type: ignore[union-attr]
    if _WS.match(document, end).end() != len(document):  # type: ignore[union-attr]
        raise InvalidDocument("trailing text after the JSON value")
    return found


def _value(
    text: str, pos: int, todo: list[tuple[int, tuple[str | None, ...]]], found: list[list[Found]]
) -> int:
    """Parse the value at ``pos`` for the paths ``todo`` (index, segments left);
    return where it ends."""
    here = [i for i, rest in todo if not rest]
    deeper = [(i, rest) for i, rest in todo if rest]
    first = text[pos : pos + 1]
    if not deeper or first not in ("{", "["):
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except ValueError:
            raise InvalidDocument("not valid JSON") from None
        for i in here:
            found[i].append((pos, -1 if isinstance(value, dict | list) else end, value))
        return end
    if here:  # a path ends on this container: the field holds an object or array
        try:
            value, _ = _DECODER.raw_decode(text, pos)
        except ValueError:
            raise InvalidDocument("not valid JSON") from None
        for i in here:
            found[i].append((pos, -1, value))
    if first == "{":
        return _object(text, pos, deeper, found)
    return _array(text, pos, deeper, found)


def _object(
    text: str, pos: int, todo: list[tuple[int, tuple[str | None, ...]]], found: list[list[Found]]
) -> int:
    pos = _ws(text, pos + 1)
    if text.startswith("}", pos):
        return pos + 1
    while True:
        if not text.startswith('"', pos):
            raise InvalidDocument("an object member must start with its name")
        try:
            name, pos = _scanstring(text, pos + 1)
        except ValueError:
            raise InvalidDocument("not valid JSON") from None
        pos = _ws(text, pos)
        if not text.startswith(":", pos):
            raise InvalidDocument("':' expected after a member name")
        member = [(i, rest[1:]) for i, rest in todo if rest[0] == name]
        pos = _value(text, _ws(text, pos + 1), member, found)
        pos = _ws(text, pos)
        if text.startswith("}", pos):
            return pos + 1
        if not text.startswith(",", pos):
            raise InvalidDocument("',' or '}' expected in an object")
        pos = _ws(text, pos + 1)


def _array(
    text: str, pos: int, todo: list[tuple[int, tuple[str | None, ...]]], found: list[list[Found]]
) -> int:
    pos = _ws(text, pos + 1)
    if text.startswith("]", pos):
        return pos + 1
    each = [(i, rest[1:]) for i, rest in todo if rest[0] is EACH]
    while True:
        pos = _ws(text, _value(text, pos, each, found))
        if text.startswith("]", pos):
            return pos + 1
        if not text.startswith(",", pos):
            raise InvalidDocument("',' or ']' expected in an array")
        pos = _ws(text, pos + 1)


def _ws(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()  # type: ignore[union-attr]


def splice(document: str, edits: Sequence[tuple[int, int, str]], *, tokens: bool = False) -> str:
    """``document`` with each (start, end) span replaced by the JSON string of its
    text; every other character stays as it was. ``tokens``: every text is a
    keyturn token (``kt1:``, its version, base64url), which needs no escaping."""
    quote = _quote_token if tokens else _quote
    if len(edits) == 1:
        ((start, end, new),) = edits
        return document[:start] + quote(new) + document[end:]
    parts = []
    last = 0
    for start, end, new in sorted(edits):
        parts.append(document[last:start])
        parts.append(quote(new))
        last = end
    parts.append(document[last:])
    return "".join(parts)


def token_splicer(count: int) -> Callable[..., str] | None:
    """For documents of ``count`` fields (1 or 2, else None) found by a quick finder:
    ``f(document, found, *tokens)``, the document with each field's string replaced
    by its token (one token per field, in the paths' order). A batch's hot path,
    so without :func:`splice`'s sort, loop and checks."""
    splicers: dict[int, Callable[..., str]] = {1: _splice_one, 2: _splice_two}
    return splicers.get(count)


def _splice_one(document: str, found: Sequence[Found], token: str) -> str:
    ((start, end, _),) = found
    return f'{document[:start]}"{token}"{document[end:]}'


def _splice_two(document: str, found: Sequence[Found], first: str, second: str) -> str:
    (s0, e0, _), (s1, e1, _) = found
    if s0 < s1:
        return f'{document[:s0]}"{first}"{document[e0:s1]}"{second}"{document[e1:]}'
    return f'{document[:s1]}"{second}"{document[e1:s0]}"{first}"{document[e0:]}'


def _quote(text: str) -> str:
    """``text`` as a JSON string, as ``json.dumps(text, ensure_ascii=False)`` writes it."""
    if _ESCAPED.search(text) is None:
        return '"' + text + '"'  # most text
    return json.dumps(text, ensure_ascii=False)


def _quote_token(token: str) -> str:
    return '"' + token + '"'


def transform(value: Any, path: JsonPath, change: Callable[[Any], Any]) -> Any:
    """A parsed document (dicts and lists) with ``change(field)`` in place of each
    field ``path`` names; the containers on the way are copied, ``value`` is not
    modified."""
    return _transform(value, path.segments, change)


def _transform(value: Any, segments: tuple[str | None, ...], change: Callable[[Any], Any]) -> Any:
    if not segments:
        return change(value)
    head, rest = segments[0], segments[1:]
    if head is EACH and isinstance(value, list):
        return [_transform(v, rest, change) for v in value]
    if head is not EACH and isinstance(value, dict) and head in value:
        return {k: _transform(v, rest, change) if k == head else v for k, v in value.items()}
    return value
