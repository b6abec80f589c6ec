"""A generator of hostile and valid request bodies for the seqrec HTTP contract; its oracle is
devtools/fuzz_oracle.py.

    from devtools.fuzz_oracle import Catalog, check_answer
    from devtools.fuzz_requests import generate
    cat = Catalog.from_export("artifacts/demo")
    for case in generate(cat, n=10_000, seed=0):       # FuzzCase: bytes as sent + what must happen
        status, body = send(case)                      # in process or over HTTP
        problem = check_answer(case, status, body, cat)   # None, or what is wrong

Every case says what the server must answer: a valid request a 200 that obeys the contract
(docs/http-api.md), a bad one a 400 BadRequest whose message names the problem (`fragments`: at
least one must appear), a body over TorchServe's max_request_size a 413. Pure Python (json, random):
used by tests/reliability (in process and against a real TorchServe) and bench/reliability.py.
"""
from __future__ import annotations

import json
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from .fuzz_oracle import JSON, MAX_IDS, MAX_K, Catalog, FuzzCase

# Strings a hostile client likes: control characters, NUL, bidi overrides, lone surrogates
# (legal in JSON text as escapes), astral characters, very long ones.
NASTY = ["", " ", "\x00", "a\x00b", "\x1b[31mred", "\r\n", "\u202eevil", "\ud800", "\udfff\ud800",
         "😀", "𝔘𝔫𝔦", "é" * 50, "'; DROP TABLE items; --", "../../etc/passwd", "%00", "${jndi:x}",
         "\\", '"', "null", "NaN", "1e400", "0x10", "１２", "12 ", " 12", "+12", "012"]



# ---- generation
class _Gen:
    def __init__(self, cat: Catalog, rng: random.Random):
        self.cat, self.r = cat, rng

    # ids
    def known_id(self, as_text: bool = False):
        x = self.r.choice(self.cat.ids)
        return str(x) if as_text and self.cat.id_type == "int" else x

    def unknown_id(self):
        r = self.r
        pick = r.randrange(6)
        if pick == 0:
            return r.choice(NASTY) + str(r.randrange(10 ** 6))  # a string never in the index
        if pick == 1:
            return r.choice([-1, 0, -(2 ** 63), 2 ** 63, 2 ** 64 + 7, 10 ** 30, -(10 ** 40)])
        if pick == 2:
            return "".join(chr(r.choice([r.randrange(0, 32), r.randrange(0x80, 0x800),
                                         r.randrange(0xE000, 0x10FFFF)])) for _ in range(r.randrange(1, 12)))
        if pick == 3:
            return "x" * r.randrange(100, 2000)
        if pick == 4:
            return r.choice(NASTY) or "?"
        return 10 ** 12 + r.randrange(10 ** 6)  # int-shaped, not in the index

    def some_id(self, p_known: float = 0.7):
        if self.r.random() < p_known:
            return self.known_id(as_text=self.r.random() < 0.2)
        return self.unknown_id()

    def ids(self, n: int, p_known: float = 0.7) -> list:
        return [self.some_id(p_known) for _ in range(n)]

    def length(self) -> int:
        r = self.r.random()
        return (self.r.randrange(0, 4) if r < 0.3 else self.r.randrange(4, 60) if r < 0.9
                else self.r.randrange(60, 400) if r < 0.99 else MAX_IDS)

    def history(self) -> list:
        n = self.length()
        style = self.r.randrange(3)
        h = self.ids(n, p_known=self.r.choice([0.0, 0.5, 0.9, 1.0]))
        if style == 0:
            return h
        out = []
        for x in h:
            if style == 2 and self.r.random() < 0.5:
                out.append(x)
                continue
            e = {"item_id": x}
            if self.r.random() < 0.7:
                e["timestamp"] = self.r.choice([1.7e9 + self.r.randrange(10 ** 7), 0, -1.5, 1.7e9, None])
            if self.r.random() < 0.5:
                e["event_type"] = self.r.choice(["view", "cart", "purchase", "", "unknown-type", None,
                                                 self.r.choice(NASTY)])
            if self.r.random() < 0.3:
                e["source"] = self.r.choice(["search", "home", "", None, self.r.choice(NASTY)])
            if self.r.random() < 0.3:
                e["strength"] = self.r.choice([4.5, 1, 0, -2.5, 1e300, None])
            out.append(e)
        return out

    # one valid request
    def valid(self) -> dict:
        r = self.r
        d: Dict[str, Any] = {"history": self.history()}
        if r.random() < 0.8:
            d["k"] = r.choice([1, 2, 5, 10, 20, 50, 100, MAX_K, None, r.randrange(1, MAX_K + 1)])
        if r.random() < 0.4:
            d["exclude_seen"] = r.choice([True, False, None])
        if r.random() < 0.3:
            d["exclude"] = self.ids(r.choice([0, 1, 5, 50, r.randrange(0, 300)]))
        if r.random() < 0.1:
            d["exclude"] = None
        if r.random() < 0.25:
            d["candidates"] = self.ids(r.choice([0, 1, 3, 20, r.randrange(0, 300)]), p_known=0.8)
        if r.random() < 0.3:
            d["user_id"] = r.choice([r.randrange(-10 ** 9, 10 ** 9), "u-" + str(r.randrange(10 ** 6)),
                                     r.choice(NASTY), None, 2 ** 70])
        if r.random() < 0.3:
            d["now"] = r.choice([1.7e9 + r.randrange(10 ** 7), 1.7e9, 0, 1e12, None, 1700000000])
        elif any(isinstance(e, dict) and e.get("timestamp") is not None for e in d["history"]):
            d["now"] = 1.75e9  # so that answers do not depend on the server's clock
        keys = list(d)
        r.shuffle(keys)
        return {k: d[k] for k in keys}

    def encode(self, obj: Any) -> bytes:
        r = self.r.random()
        if r < 0.6:
            return json.dumps(obj).encode()
        if r < 0.8:
            try:
                return json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form: send it escaped
                return json.dumps(obj).encode()
        if r < 0.9:
            return json.dumps(obj, indent=self.r.choice([1, 4, "\t"])).encode()
        return (" \n\t" + json.dumps(obj, separators=(",", ":")) + "\r\n ").encode()


def _valid_case(g: _Gen, max_bytes: int = 1 << 20) -> FuzzCase:
    """A valid request of at most max_bytes (well under TorchServe's max_request_size)."""
    while True:
        obj = g.valid()
        data = g.encode(obj)
        if len(data) <= max_bytes:
            return FuzzCase("valid/request", data, request=obj)


def _bad(kind: str, data: Any, *fragments: str, content_type: str = JSON, g: Optional[_Gen] = None) -> FuzzCase:
    if not isinstance(data, (bytes, bytearray)):
        data = g.encode(data) if g is not None else json.dumps(data).encode()
    return FuzzCase(f"bad/{kind}", bytes(data), content_type, 400, fragments)


def _k_out_of_range(g: _Gen) -> FuzzCase:
    k = g.r.choice([0, -1, -10, MAX_K + 1, 10 ** 6, 2 ** 63, -(2 ** 63), 10 ** 100, -(10 ** 300)])
    return _bad("k_out_of_range", {"history": g.ids(3), "k": k}, "k must be an integer in 1..1000", g=g)


def _wrong_type(g: _Gen) -> FuzzCase:
    r = g.r
    field_, values, fragment = r.choice([
        ("history", ["1,2,3", 5, {"item_id": 1}, True, 1.5], "history must be a list"),
        ("k", ["10", 2.5, True, False, [5], {"k": 5}, 1e3], "k must be an integer"),
        ("exclude_seen", ["true", 1, 0, [], {}], "exclude_seen must be true or false"),
        ("exclude", ["1", 1, {"a": 1}, True], "exclude must be a list"),
        ("candidates", ["1", 7, {"a": 1}, False], "candidates must be a list"),
        ("user_id", [1.5, [1], {"id": 1}, True, False], "user_id must be a string or an integer"),
        ("now", ["today", True, [1], {"t": 1}], "now must be a number"),
    ])
    d = g.valid()
    d[field_] = r.choice(values)
    return _bad(f"wrong_type/{field_}", d, fragment, g=g)


def _bad_id(g: _Gen) -> FuzzCase:
    r = g.r
    where = r.choice(["history", "exclude", "candidates", "event"])
    value = r.choice([1.5, -0.0, 1e20, True, False, None, [1], {"id": 1} if where != "history" else [[]], 3.0])
    d = g.valid()
    del d["history"][MAX_IDS - 1:]  # room for one more
    if where == "event":
        pos = r.randrange(len(d["history"]) + 1)
        d["history"].insert(pos, {"item_id": value})
        return _bad("bad_id/event", d, f"history[{pos}].item_id", g=g)
    lst = list(d.get(where) or [])
    pos = r.randrange(len(lst) + 1)
    lst.insert(pos, value)
    d[where] = lst
    return _bad(f"bad_id/{where}", d, f"{where}[{pos}]", g=g)


def _bad_event(g: _Gen) -> FuzzCase:
    r = g.r
    d = g.valid()
    del d["history"][MAX_IDS - 1:]  # room for one more
    pos = r.randrange(len(d["history"]) + 1)
    what = r.randrange(6)
    if what == 0:
        e, frag = {"item_id": g.known_id(), "timestamp": r.choice(["yesterday", True, [1], {}])}, "timestamp must be a number"
    elif what == 1:
        e, frag = {"item_id": g.known_id(), "event_type": r.choice([1, True, [], {}])}, "event_type must be a string"
    elif what == 2:
        e, frag = {"item_id": g.known_id(), "source": r.choice([1, 2.5, [], {}])}, "source must be a string"
    elif what == 3:
        e, frag = {"item_id": g.known_id(), r.choice(["price", "Item_Id", "", "😀", "__proto__"]): 1}, "unknown field(s)"
    elif what == 5:
        e, frag = {"item_id": g.known_id(), "strength": r.choice(["5", True, [4], {}])}, "strength must be a number"
    else:
        e, frag = r.choice([{}, {"timestamp": 1}, {"event_type": "view"}]), "needs 'item_id'"
    d["history"].insert(pos, e)
    return _bad("bad_event", d, f"history[{pos}]", g=g) if what != 4 else _bad("bad_event", d, frag, g=g)


def _non_finite(g: _Gen) -> FuzzCase:
    """NaN and Infinity as JSON literals (Python's json writes them; the contract refuses them)."""
    r = g.r
    lit = r.choice(["NaN", "Infinity", "-Infinity"])
    where = r.randrange(6)
    hist = json.dumps(g.ids(r.randrange(0, 5)))[1:-1]
    sep = ", " if hist else ""
    if where == 0:
        return _bad("non_finite/id", f'{{"history": [{hist}{sep}{lit}]}}'.encode(), "history[", "not valid JSON")
    if where == 1:
        return _bad("non_finite/timestamp", f'{{"history": [{{"item_id": 1, "timestamp": {lit}}}]}}'.encode(),
                    "history[0].timestamp must be a finite", "not valid JSON")
    if where == 2:
        return _bad("non_finite/now", f'{{"history": [{hist}], "now": {lit}}}'.encode(), "now must be a finite", "not valid JSON")
    if where == 3:
        return _bad("non_finite/k", f'{{"history": [], "k": {lit}}}'.encode(), "k must be an integer", "not valid JSON")
    if where == 4:
        return _bad("non_finite/strength", f'{{"history": [{{"item_id": 1, "strength": {lit}}}]}}'.encode(),
                    "history[0].strength must be a finite", "not valid JSON")
    # 1e400 is valid JSON that overflows a double
    return _bad("non_finite/overflow", f'{{"history": [{{"item_id": 1, "timestamp": 1e400}}]}}'.encode(),
                "history[0].timestamp", "out of range")


def _invalid_json(g: _Gen) -> FuzzCase:
    r = g.r
    what = r.randrange(7)
    if what == 0:  # a valid body cut short
        full = json.dumps(g.valid()).encode()
        return _bad("invalid_json/truncated", full[:r.randrange(1, len(full))], "not valid JSON", "not UTF-8")
    if what == 1:
        return _bad("invalid_json/js_object", r.choice([b"{history: [1]}", b"{'history': [1]}", b'{"history": [1,]}',
                                                       b'{"history": [1] "k": 2}', b'{"history": [01]}',
                                                       b'{"history": [0x10]}', b'{"history": [1]}}', b'{"history"}']),
                    "not valid JSON")
    if what == 2:  # unescaped control characters inside a string
        c = chr(r.randrange(0, 32))
        return _bad("invalid_json/control_char", f'{{"history": ["a{c}b"]}}'.encode(), "not valid JSON")
    if what == 3:
        return _bad("invalid_json/bad_utf8", r.choice([b'{"history": ["\xff"]}', b"\xff\xfe{}", b'{"history": ["\xc3"]}',
                                                      b'{"history": ["\xed\xa0\x80"]}']), "not UTF-8")
    if what == 4:
        return _bad("invalid_json/garbage", bytes(r.randrange(32, 127) for _ in range(r.randrange(1, 200))),
                    "not valid JSON", "must be a JSON object", "'history' is required", "unknown field",
                    "empty")
    if what == 5:  # a number too long for Python's int parser (4300 digits)
        return _bad("invalid_json/huge_int", b'{"history": [' + b"7" * r.randrange(5000, 20000) + b"]}", "not valid JSON")
    return _bad("invalid_json/bom", b"\xef\xbb\xbf" + json.dumps(g.valid()).encode(), "not valid JSON")


def _not_object(g: _Gen) -> FuzzCase:
    value = g.r.choice([[1, 2], [], "history", 42, 1.5, None, True, [{"history": []}]])
    if value is None:  # JSON null reaches the handler as None, i.e. as no body at all
        return _bad("not_object/null", value, "no request body", g=g)
    if isinstance(value, str):
        # The worker decodes a JSON string to a str, which the handler cannot tell from a text/*
        # body, so it parses it as JSON text once more: refused, with a less precise message.
        return _bad("not_object/string", value, "not valid JSON", g=g)
    return _bad("not_object", value, "must be a JSON object", g=g)


def _empty(g: _Gen) -> FuzzCase:
    return _bad("empty", g.r.choice([b"", b" ", b"\n", b"\r\n\t  "]), "empty")


def _missing_history(g: _Gen) -> FuzzCase:
    d = g.valid()
    if g.r.random() < 0.5:
        del d["history"]
    else:
        d["history"] = None
    return _bad("missing_history", d, "'history' is required", g=g)


def _unknown_field(g: _Gen) -> FuzzCase:
    d = g.valid()
    name = g.r.choice(["History", "items", "k ", "", "__proto__", "constructor", "😀", "\u0000", "a" * 300, "limit"])
    d[name] = g.r.choice([1, "x", None, [], {}])
    return _bad("unknown_field", d, "unknown field(s)", g=g)


def _too_many(g: _Gen) -> FuzzCase:
    r = g.r
    where = r.choice(["history", "exclude", "candidates"])
    n = r.choice([MAX_IDS + 1, MAX_IDS + 7, 2 * MAX_IDS, 100_000])
    d = {"history": []}
    d[where] = [r.randrange(10 ** 6) for _ in range(n)]
    return _bad(f"too_many/{where}", d, f"{where} has {n}")


def _deep(g: _Gen) -> FuzzCase:
    r = g.r
    depth = r.choice([3, 50, 400, 5000, 50_000, 200_000])
    if r.random() < 0.5:
        data = b"[" * depth + b"]" * depth
        frag = ("nested too deeply", "must be a JSON object")
    else:
        data = b'{"history": ' + b"[" * depth + b"]" * depth + b"}"
        frag = ("nested too deeply", "history[0]")
    return _bad(f"deep/{depth}", data, *frag)


def _duplicate_keys(g: _Gen) -> FuzzCase:
    """The last duplicate wins (Python's json, and most parsers): a bad last value is refused."""
    return _bad("duplicate_keys", b'{"history": [1], "k": 5, "history": "1"}', "history must be a list")


BAD_GENERATORS: Sequence[Callable[[_Gen], FuzzCase]] = (
    _k_out_of_range, _wrong_type, _bad_id, _bad_event, _non_finite, _invalid_json, _not_object,
    _empty, _missing_history, _unknown_field, _too_many, _deep, _duplicate_keys)
# Rare on purpose: each one is big (10k+ ids, 200k-deep nesting); they still come up dozens of times.
_BAD_WEIGHTS = (10, 14, 12, 10, 8, 12, 5, 3, 4, 6, 1, 1, 1)


def http_cases(cat: Catalog, seed: int = 0, max_request_size: int = 6_553_500) -> List[FuzzCase]:
    """Cases only TorchServe's frontend can judge: content types, forms, query strings, sizes."""
    g = _Gen(cat, random.Random(seed))
    ok = g.valid()
    body = json.dumps(ok).encode()
    echo = {"history": ["é" * 110 + str(i) for i in range(MAX_IDS)], "k": 10}
    out = [
        # Not JSON by Content-Type but a JSON object all the same: the handler parses str/bytes
        # bodies itself (seqrec_contract.parse_body), so these are answered, by design.
        FuzzCase("valid/text_plain", body, "text/plain", request=ok, http_only=True),
        FuzzCase("valid/octet_stream", body, "application/octet-stream", request=ok, http_only=True),
        FuzzCase("valid/json_charset", body, "application/json; charset=utf-8", request=ok, http_only=True),
        FuzzCase("valid/query_string", body, request=ok, http_only=True, query="?k=5&history=1&debug=1"),
        FuzzCase("bad/text_plain_garbage", b"history=1,2,3", "text/plain", 400, ("not valid JSON",), http_only=True),
        FuzzCase("bad/xml", b"<history><id>1</id></history>", "application/xml", 400, ("not valid JSON",), http_only=True),
        # A form's fields arrive as separate parameters, with no body: refused, not guessed at.
        FuzzCase("bad/form_urlencoded", b"history=1&history=2&k=3", "application/x-www-form-urlencoded", 400,
                 ("no request body",), http_only=True),
        FuzzCase("bad/image", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png", 400, ("not UTF-8",), http_only=True),
        FuzzCase("bad/json_with_text_plain_nan", b'{"history": [NaN]}', "text/plain", 400, ("not valid JSON",), http_only=True),
        # Over max_request_size: the frontend refuses before any worker sees it.
        # Valid, with a response far bigger than the request: 10,000 unknown ids of 110 "é" each
        # (2.3 MB of UTF-8) are echoed in unknown_items as \u00e9 escapes (6.7 MB), more than
        # TorchServe's default max_response_size of 6,553,500 bytes.
        FuzzCase("valid/huge_unknown_echo", json.dumps(echo, ensure_ascii=False).encode(), request=echo,
                 http_only=True),
        FuzzCase("bad/oversized", b'{"history": [' + b"1," * (max_request_size // 2) + b"1]}", JSON, 413, http_only=True),
        FuzzCase("bad/oversized_text", b" " * (max_request_size + 1), "text/plain", 413, http_only=True),
    ]
    return out


def generate(cat: Catalog, n: int, seed: int = 0, bad_fraction: float = 0.6) -> Iterator[FuzzCase]:
    """n cases, about bad_fraction of them bad, in a seeded random order."""
    g = _Gen(cat, random.Random(seed))
    for _ in range(n):
        if g.r.random() < bad_fraction:
            yield g.r.choices(BAD_GENERATORS, weights=_BAD_WEIGHTS)[0](g)
        else:
            yield _valid_case(g)
