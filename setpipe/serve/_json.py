"""``POST /predict`` bodies to a raw-feature SetBatch, in memory a small multiple of the body.

Bodies up to ``ORJSON_MAX_BYTES`` are decoded whole by orjson (C, ~10 µs for a 50-element
set) and checked by ``data.request.sets_to_batch``; at that size even a worst case of
Python objects (~32 bytes a number, ~16x the text) stays near 1 MB. What orjson refuses
(NaN, malformed text, bytes that are not UTF-8) goes to the parser below, which names it.

Bigger bodies never become a document. ``parse_sets`` walks the bytes once, in the one
shape a request has (``{"sets": [{"features": {NAME: [numbers]}, "context": {...}}]}``):

* sets are counted as they come, and the first one past ``--max-sets`` stops the parse;
* an array's elements are counted from its commas before any number is converted, and a
  set past ``--max-elements-per-set`` stops the parse there;
* numbers are converted a piece of text at a time (``PIECE_BYTES``: orjson on at most
  ~128k numbers, then checked as float64) straight into one float32 block that grows in
  place with the batch and becomes the SetBatch's values.

So a request costs its body, 4 bytes a number (at least 2 bytes of text each, so at most
2x the body and ~0.5x for jets) and a few MB, whatever its shape; a body over a limit is
refused having read only as far as the limit. Errors name the set, field and element as
``sets_to_batch`` does (``sets[3].features.part_eta[7]: expected a number, found "x"``);
malformed JSON as the standard library's decoder names it (message, line, column, char).
Nothing in a request reaches pickle or the file system.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from setpipe.data.request import (
    BadRequest,
    Limits,
    check_numbers,
    context_row,
    describe,
    expect_keys,
    too_many_elements,
    too_many_sets,
)
from setpipe.spec.models import JobSpec

if TYPE_CHECKING:
    from setpipe.data.batch import SetBatch

ORJSON_MAX_BYTES = 64 * 1024
"""Bodies up to this are decoded whole by orjson; larger ones are parsed as a stream."""
PIECE_BYTES = 1 << 18
"""Text of one array converted at once: bounds the Python objects alive (~35k floats, ~5 MB)."""

_WS = re.compile(rb"[ \t\n\r]*")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_SIMPLE_STRING = re.compile(rb'"([^"\\\x00-\x1f]*)"')
_PLAIN_NUMBER_TEXT = b"0123456789+-.eE \t\n\r,"  # all that an array of plain JSON numbers holds
_LITERALS = (  # -Infinity before the numbers: "-" alone is not one
    (b"-Infinity", -math.inf),
    (b"Infinity", math.inf),
    (b"NaN", math.nan),
    (b"true", True),
    (b"false", False),
    (b"null", None),
)
_OPEN_OBJECT, _CLOSE_OBJECT = ord("{"), ord("}")
_OPEN_ARRAY, _CLOSE_ARRAY = ord("["), ord("]")
_QUOTE, _COMMA, _COLON, _BACKSLASH = ord('"'), ord(","), ord(":"), ord("\\")


def check_utf8(body: bytes | bytearray) -> None:
    """422 naming the first byte that is not UTF-8, as ``bytes.decode`` names it.

    Checked a piece at a time (never a str the size of the body); pieces are cut before a
    character's first byte, so positions are the body's own.
    """
    if body.isascii():
        return
    view = memoryview(body)
    start = 0
    while start < len(body):
        end = min(start + PIECE_BYTES, len(body))
        while start < end < len(body) and body[end] & 0xC0 == 0x80:  # a continuation byte
            end -= 1
        try:
            codecs.utf_8_decode(view[start:end], "strict", True)
        except UnicodeDecodeError as err:
            first, last = start + err.start, start + err.end - 1
            where = (
                f"byte 0x{body[first]:02x} in position {first}"
                if first == last
                else f"bytes in position {first}-{last}"
            )
            raise BadRequest(
                422, f"body: not valid JSON ('utf-8' codec can't decode {where}: {err.reason})"
            ) from None
        start = end


def parse_sets(body: bytes | bytearray, job: JobSpec, limits: Limits) -> SetBatch:
    """The sets of a ``POST /predict`` body, checked and packed as they are read (see above).

    Raises BadRequest: 413 for a limit (at the first set or element past it), 422 for
    anything else, naming ``sets[i].field[j]`` or, for malformed JSON, the position.
    """
    check_utf8(body)
    return _Parser(body, job, limits).parse()


class _Parser:
    """One body, read left to right once; ``values`` grows as the sets' elements arrive."""

    def __init__(self, body: bytes | bytearray, job: JobSpec, limits: Limits) -> None:
        self.body = body
        self.view = memoryview(body)
        self.size = len(body)
        self.limits = limits
        self.features = job.data.elements.feature_names
        self.column = {name: f for f, name in enumerate(self.features)}
        self.context_names = list(job.data.context)
        self.width = len(self.features)
        self.values = np.empty(0, dtype=np.float32)  # [rows * width], row-major, grown in place
        self.rows = 0
        self.sizes: list[int] = []
        self.contexts: list[list[float]] = []

    # ------------------------------------------------------------------ the request's shape

    def parse(self) -> SetBatch:
        i = self._ws(0)
        if self._at(i) != _OPEN_OBJECT:
            raise BadRequest(
                422, f'body: expected an object {{"sets": [...]}}, found {self._describe(i)}'
            )
        seen = False
        i = self._ws(i + 1)
        more = self._at(i) != _CLOSE_OBJECT
        i = i if more else i + 1
        while more:
            key, i = self._key(i)
            if key != "sets":
                raise BadRequest(422, f"body.{key}: unknown field; expected sets")
            if seen:
                raise BadRequest(422, "body.sets: given twice; send one list of sets")
            seen = True
            i = self._sets(i)
            i, more = self._next(i, _CLOSE_OBJECT)
        i = self._ws(i)
        if i < self.size:
            raise self._syntax("Extra data", i)
        if not seen:
            raise BadRequest(422, "sets: expected a non-empty list of sets, found null")
        return self._batch()

    def _sets(self, i: int) -> int:
        if self._at(i) != _OPEN_ARRAY:
            raise BadRequest(
                422, f"sets: expected a non-empty list of sets, found {self._describe(i)}"
            )
        i = self._ws(i + 1)
        if self._at(i) == _CLOSE_ARRAY:
            raise BadRequest(422, "sets: expected a non-empty list of sets, found an empty list")
        count, more = 0, True
        while more:
            if count == self.limits.max_sets:
                raise too_many_sets(self.limits)
            i = self._set(i, f"sets[{count}]")
            count += 1
            i, more = self._next(i, _CLOSE_ARRAY)
        return i

    def _set(self, i: int, where: str) -> int:
        if self._at(i) != _OPEN_OBJECT:
            raise BadRequest(
                422, f"{where}: expected an object with features, found {self._describe(i)}"
            )
        given: dict[str, Any] = {}
        i = self._ws(i + 1)
        more = self._at(i) != _CLOSE_OBJECT
        i = i if more else i + 1
        while more:
            key, i = self._key(i)
            if key not in ("features", "context"):
                raise BadRequest(422, f"{where}.{key}: unknown field; expected features, context")
            if key in given:
                raise BadRequest(422, f"{where}.{key}: given twice")
            if key == "features":
                i = self._features(i, where)
                given[key] = True
            else:
                given[key], i = self._context(i, where)
            i, more = self._next(i, _CLOSE_OBJECT)
        if "features" not in given:
            raise BadRequest(
                422, f"{where}.features: expected an object of feature lists, found nothing"
            )
        self.contexts.append(context_row(where, given.get("context", {}), self.context_names))
        return i

    def _features(self, i: int, where: str) -> int:
        """One set's feature lists, written into ``values`` as rows ``self.rows...``."""
        if self._at(i) != _OPEN_OBJECT:
            raise BadRequest(
                422,
                f"{where}.features: expected an object of feature lists, found {self._describe(i)}",
            )
        seen: list[str] = []
        n = 0  # elements of the set, from the first list read
        i = self._ws(i + 1)
        more = self._at(i) != _CLOSE_OBJECT
        i = i if more else i + 1
        while more:
            name, i = self._key(i)
            if name not in self.column:
                raise BadRequest(
                    422,
                    f"{where}.features.{name}: not an element feature of this model; expected "
                    f"{', '.join(self.features)}",
                )
            if name in seen:
                raise BadRequest(422, f"{where}.features.{name}: given twice")
            i, n = self._numbers(i, where, name, seen[0] if seen else None, n)
            seen.append(name)
            i, more = self._next(i, _CLOSE_OBJECT)
        missing = [name for name in self.features if name not in seen]
        if missing:
            raise BadRequest(
                422,
                f"{where}.features: missing {', '.join(missing)}; expected "
                f"{', '.join(self.features)}",
            )
        self.rows += n
        self.sizes.append(n)
        return i

    def _numbers(self, i: int, where: str, name: str, first: str | None, n: int) -> tuple[int, int]:
        """The list of feature ``name`` into its column; (end, elements). ``first`` names the
        set's first list read (None: this one), whose length ``n`` every other must have."""
        at = f"{where}.features.{name}"
        if self._at(i) != _OPEN_ARRAY:
            raise BadRequest(422, f"{at}: expected a list of numbers, found {self._describe(i)}")
        start = i + 1
        close = self.body.find(b"]", start)
        stop = self.size if close < 0 else close
        nested = [k for c in b'"[{' if (k := self.body.find(c, start, stop)) >= 0]
        if nested or close < 0:
            self._not_plain(at, start, min(nested) if nested else self.size)  # always raises
        empty = self._ws(start) >= close
        count = 0 if empty else self.body.count(b",", start, close) + 1
        if first is None:
            if count == 0:
                raise BadRequest(422, f"{where}: empty set; a set needs at least one element")
            if count > self.limits.max_elements_per_set:
                raise too_many_elements(where, count, self.limits)
            n = count
            self._reserve(self.rows + n)
        elif count != n:
            self._convert(at, start, close, None)  # a bad entry is named first, as in the list
            raise BadRequest(422, f"{at}: expected {n} values like {first}, found {count}")
        begin = self.rows * self.width + self.column[name]
        column = self.values[begin : begin + n * self.width : self.width]  # this set's rows
        self._convert(at, start, close, column)
        return close + 1, n

    def _context(self, i: int, where: str) -> tuple[dict[str, Any], int]:
        if self._at(i) != _OPEN_OBJECT:
            raise BadRequest(422, f"{where}.context: expected an object, found {self._describe(i)}")
        ctx: dict[str, Any] = {}
        i = self._ws(i + 1)
        more = self._at(i) != _CLOSE_OBJECT
        i = i if more else i + 1
        while more:
            key, i = self._key(i)
            if self._at(i) in (_OPEN_ARRAY, _OPEN_OBJECT):  # never a number: named right away
                if key not in self.context_names:
                    names = self.context_names
                    expect_keys(f"{where}.context", {key: 0}, names, "a context feature")
                raise BadRequest(
                    422, f"{where}.context.{key}: expected a number, found {self._describe(i)}"
                )
            ctx[key], i = self._scalar(i)
            i, more = self._next(i, _CLOSE_OBJECT)
        return ctx, i

    def _batch(self) -> SetBatch:
        import torch

        from setpipe.data.batch import SetBatch

        self.values.resize(self.rows * self.width, refcheck=False)  # drop the growth slack
        offsets = np.zeros(len(self.sizes) + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=offsets[1:])
        return SetBatch(
            values=torch.from_numpy(self.values.reshape(self.rows, self.width)),
            offsets=torch.from_numpy(offsets),
            context=(
                torch.tensor(self.contexts, dtype=torch.float32) if self.context_names else None
            ),
        )

    # ------------------------------------------------------------------ numbers

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` rows; grows by a quarter at least (realloc: no copy of the old)."""
        need = rows * self.width
        if need > self.values.size:
            grown = max(need, self.values.size + self.values.size // 4)
            self.values.resize(grown, refcheck=False)

    def _convert(self, at: str, start: int, close: int, out: np.ndarray | None) -> None:
        """Check the plain list text ``body[start:close]`` and write its numbers to ``out``
        (None: check only), a piece of at most ~PIECE_BYTES at a time, cut at commas."""
        done = 0
        while start < close:
            stop = close
            if close - start > PIECE_BYTES:
                stop = self.body.rfind(b",", start, start + PIECE_BYTES)
                if stop < 0:  # one "number" of a MiB: let the piece go to its end
                    stop = self.body.find(b",", start + PIECE_BYTES, close)
                    stop = close if stop < 0 else stop
            numbers = self._piece(at, start, stop, done)
            if out is not None:
                out[done : done + numbers.size] = numbers
            done += numbers.size
            start = stop + 1

    def _piece(self, at: str, start: int, stop: int, first: int) -> np.ndarray:
        """The numbers of ``body[start:stop]`` (entries ``first``... of the list at ``at``)."""
        text = bytearray(b"[")
        text += self.view[start:stop]
        text += b"]"
        numbers = None
        if text.translate(None, _PLAIN_NUMBER_TEXT) == b"[]":
            with contextlib.suppress(orjson.JSONDecodeError):  # "1,,2", "--1": named below
                # Only JSON ints and floats can come out of text of these bytes.
                numbers = np.asarray(orjson.loads(text), dtype=np.float64)
        if numbers is None:  # NaN, true, a typo: the standard library names it
            numbers = self._piece_by_json(at, text, start - 1, first)
        check_numbers(at, numbers, first)
        return numbers

    def _piece_by_json(self, at: str, text: bytearray, offset: int, first: int) -> np.ndarray:
        try:  # a huge integer reads as inf (float of its digits), like the fast path's strtod
            items = json.loads(text.decode("utf-8"), parse_int=float)
        except json.JSONDecodeError as err:
            raise self._syntax(err.msg, offset + err.pos) from None
        for k, item in enumerate(items):
            if not isinstance(item, float):
                raise BadRequest(
                    422, f"{at}[{first + k}]: expected a number, found {describe(item)}"
                )
        return np.asarray(items, dtype=np.float64)

    def _not_plain(self, at: str, start: int, nested: int) -> None:
        """Raise for a list whose text holds a string, list or object at ``nested`` (or has no
        end: ``nested`` is the body's end): its plain entries before are checked first."""
        comma = self.body.rfind(b",", start, nested)
        if comma >= 0:
            self._convert(at, start, comma, None)
        entry = comma + 1 if comma >= 0 else start
        index = 0 if comma < 0 else self.body.count(b",", start, comma) + 1
        token = self._ws(entry)
        if token < nested:  # a number (or junk) before the string/list/object or the end
            self._convert(at, token, self._tail(token, nested), None)
            raise self._syntax("Expecting ',' delimiter", nested)
        if nested >= self.size:
            raise self._syntax("Expecting value", self.size)
        raise BadRequest(422, f"{at}[{index}]: expected a number, found {self._describe(nested)}")

    def _tail(self, start: int, end: int) -> int:
        """End of the text in ``body[start:end]`` without trailing whitespace."""
        while end > start and self.body[end - 1] in b" \t\n\r":
            end -= 1
        return end

    # ------------------------------------------------------------------ tokens

    def _at(self, i: int) -> int:
        return self.body[i] if i < self.size else -1

    def _ws(self, i: int) -> int:
        return _WS.match(self.body, i).end()  # type: ignore[union-attr]  # matches ""

    def _next(self, i: int, close: int) -> tuple[int, bool]:
        """After a value in an object or list: (where the next item starts, whether one does)."""
        i = self._ws(i)
        c = self._at(i)
        if c == _COMMA:
            return self._ws(i + 1), True
        if c == close:
            return i + 1, False
        raise self._syntax("Expecting ',' delimiter", i)

    def _key(self, i: int) -> tuple[str, int]:
        """An object's key and its colon: (key, where its value starts)."""
        if self._at(i) != _QUOTE:
            raise self._syntax("Expecting property name enclosed in double quotes", i)
        key, i = self._string(i)
        i = self._ws(i)
        if self._at(i) != _COLON:
            raise self._syntax("Expecting ':' delimiter", i)
        return key, self._ws(i + 1)

    def _string(self, i: int) -> tuple[str, int]:
        simple = _SIMPLE_STRING.match(self.body, i)
        if simple:
            return simple.group(1).decode("utf-8"), simple.end()
        end = i + 1  # escapes or control characters: find the closing quote, then json reads it
        while True:
            end = self.body.find(b'"', end)
            if end < 0:
                raise self._syntax("Unterminated string starting at", i)
            backslashes = 0
            while self.body[end - 1 - backslashes] == _BACKSLASH:
                backslashes += 1
            if backslashes % 2 == 0:
                break
            end += 1
        try:
            return json.loads(bytes(self.view[i : end + 1]).decode("utf-8")), end + 1
        except json.JSONDecodeError as err:
            raise self._syntax(err.msg, i + err.pos) from None

    def _scalar(self, i: int) -> tuple[Any, int]:
        """A string, number or literal at ``i``: (value, end)."""
        if self._at(i) == _QUOTE:
            return self._string(i)
        for text, value in _LITERALS:
            if self.body.startswith(text, i):
                return value, i + len(text)
        number = _NUMBER.match(self.body, i)
        if number is None:
            raise self._syntax("Expecting value", i)
        text = number.group()
        exact = len(text) <= 18 and not any(c in text for c in b".eE")
        return (int(text) if exact else float(text)), number.end()

    def _describe(self, i: int) -> str:
        """The value at ``i`` as an error names it, read no further than that needs."""
        c = self._at(i)
        if c == _OPEN_ARRAY:
            return "an empty list" if self._at(self._ws(i + 1)) == _CLOSE_ARRAY else "a list"
        if c == _OPEN_OBJECT:
            return "an object"
        return describe(self._scalar(i)[0])

    def _syntax(self, message: str, pos: int) -> BadRequest:
        """The 422 for malformed JSON, worded as ``json.JSONDecodeError`` words it."""
        line = self.body.count(b"\n", 0, pos) + 1
        column = pos - self.body.rfind(b"\n", 0, pos)
        return BadRequest(
            422, f"body: not valid JSON ({message}: line {line} column {column} (char {pos}))"
        )
