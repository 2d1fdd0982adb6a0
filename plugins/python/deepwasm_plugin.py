"""Helpers for deepwasm plugins written in Python (built with componentize-py).

The Python counterpart of the Rust SDK's helpers (`plugins/sdk`): JSON configs
read field by field with errors that name the field, error constructors, a
token bitset that builds `token-set`s, and small constructors for sampler
decisions and tool specs. Import it from a plugin's `app.py`:

    from deepwasm_plugin import Fields, invalid_input

    class Scorer:
        def score(self, samples, config):
            cfg = Fields.parse("config", config)
            cfg.only("strict")
            strict = cfg.get_bool("strict", False)
            ...

An error is returned to the host by raising it: `raise invalid_input("...")`
becomes `error::invalid-input`. Any other exception traps the instance, which
the host reports as a crash of the plugin.

componentize-py generates the bindings (`wit_world`) while it builds the
component; this module uses only what every world has (`types`), so one copy
serves every world.
"""

import json
import re
import sys

from componentize_py_types import Err
from wit_world.imports import types

__all__ = [
    "Fields",
    "TokenBits",
    "WHITESPACE",
    "allow",
    "defer",
    "deny",
    "failed",
    "invalid_input",
    "json_output",
    "not_found",
    "rstrip_ws",
    "sample",
    "special_token_ids",
    "strip_ws",
    "text_output",
    "tool_spec",
]

# Python's `str.strip()` strips more than Rust's `char::is_whitespace` (the
# separators U+001C..U+001F, for one); plugins that must agree with the Rust
# ones use this set, the Unicode White_Space property.
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def strip_ws(s):
    """`s` without leading and trailing Unicode White_Space."""
    return s.strip(WHITESPACE)


def rstrip_ws(s):
    """`s` without trailing Unicode White_Space."""
    return s.rstrip(WHITESPACE)


# --- errors ---------------------------------------------------------------


def invalid_input(message):
    """`error::invalid-input`, to raise: the input or config was malformed."""
    return Err(types.Error_InvalidInput(str(message)))


def not_found(message):
    """`error::not-found`, to raise: the named thing does not exist."""
    return Err(types.Error_NotFound(str(message)))


def failed(message):
    """`error::failed`, to raise: anything else that went wrong."""
    return Err(types.Error_Failed(str(message)))


# --- configs and arguments --------------------------------------------------


def _kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _no_constant(name):
    raise ValueError(f"{name} is not valid JSON")


class Fields:
    """A JSON object read field by field; every error names the field.

    `Fields.parse("config", text)` fails on anything but an object (blank
    text reads as `{}`). The getters return the default when a field is
    absent or `null`, and raise `invalid-input` as `config.NAME: why` when it
    has the wrong type.
    """

    def __init__(self, what, fields):
        self.what = what
        self.fields = fields

    @classmethod
    def parse(cls, what, text):
        if not strip_ws(text):
            text = "{}"
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise invalid_input(f"{what}: {e}") from None
        if not isinstance(value, dict):
            raise invalid_input(f"{what}: expected a JSON object, got {_kind(value)}")
        return cls(what, value)

    def error(self, name, why):
        """An `invalid-input` error about the field `name`, to raise."""
        return invalid_input(f"{self.what}.{name}: {why}")

    def only(self, *known):
        """Fail on any field not named in `known`."""
        for key in self.fields:
            if key not in known:
                raise self.error(key, "unknown field; expected one of: " + ", ".join(known))

    def raw(self, name):
        """The field's JSON value as Python data, or None."""
        return self.fields.get(name)

    def _get(self, name, default, check, expected):
        value = self.fields.get(name)
        if value is None:
            return default
        if not check(value):
            raise self.error(name, f"expected {expected}, got {_kind(value)}")
        return value

    def get_bool(self, name, default=None):
        return self._get(name, default, lambda v: isinstance(v, bool), "a boolean")

    def get_str(self, name, default=None):
        return self._get(name, default, lambda v: isinstance(v, str), "a string")

    def get_float(self, name, default=None):
        value = self._get(
            name,
            default,
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "a number",
        )
        return None if value is None else float(value)

    def get_int(self, name, default=None, lo=0, hi=2**32 - 1):
        """An integer in `[lo, hi]` (default: a u32)."""
        value = self._get(
            name,
            default,
            lambda v: isinstance(v, int) and not isinstance(v, bool),
            "an integer",
        )
        if value is not None and not lo <= value <= hi:
            raise self.error(name, f"{value} is out of range [{lo}, {hi}]")
        return value

    def get_str_list(self, name, default=None):
        value = self._get(name, default, lambda v: isinstance(v, list), "an array of strings")
        if value is None:
            return None
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{name}[{i}]", f"expected a string, got {_kind(item)}")
        return value

    def require(self, name, getter):
        """`getter(name)` (for example `fields.get_str`), failing when absent."""
        value = getter(name)
        if value is None:
            raise self.error(name, "missing")
        return value


# --- token sets ---------------------------------------------------------------


_NONZERO = re.compile(b"[^\\x00]")


class TokenBits:
    """A set of token ids below `vocab_size`, one bit per token.

    Held as one Python integer (bit `t` is token `t`), so unions and counts
    run at C speed inside the interpreter. `to_token_set()` gives the smaller
    of the id-list and bitset encodings, like the Rust SDK's `TokenBits`.
    """

    __slots__ = ("bits", "vocab_size")

    def __init__(self, vocab_size, bits=0):
        self.vocab_size = vocab_size
        self.bits = bits

    @classmethod
    def of(cls, vocab_size, ids):
        """The set of `ids` (ids at or past the vocabulary size are ignored)."""
        buf = bytearray((vocab_size + 7) // 8)
        for t in ids:
            if 0 <= t < vocab_size:
                buf[t >> 3] |= 1 << (t & 7)
        return cls(vocab_size, int.from_bytes(buf, "little"))

    def insert(self, t):
        if 0 <= t < self.vocab_size:
            self.bits |= 1 << t

    def extend(self, ids):
        self.bits |= TokenBits.of(self.vocab_size, ids).bits

    def union(self, other):
        self.bits |= other.bits

    def contains(self, t):
        return 0 <= t < self.vocab_size and (self.bits >> t) & 1 == 1

    def __len__(self):
        return self.bits.bit_count()

    def is_empty(self):
        return self.bits == 0

    def copy(self):
        return TokenBits(self.vocab_size, self.bits)

    def words(self):
        """The bits as the WIT `bitset` layout: token `t` is bit `t % 32` of word `t / 32`."""
        n = (self.vocab_size + 31) // 32
        # Wasm is little-endian, so native u32s are the wire's words.
        return memoryview(self.bits.to_bytes(n * 4, "little")).cast("I").tolist()

    def ids(self):
        """The ids in the set, ascending."""
        out = []
        raw = self.bits.to_bytes((self.vocab_size + 7) // 8, "little")
        for m in _NONZERO.finditer(raw):
            i, byte = m.start(), raw[m.start()]
            while byte:
                low = byte & -byte
                out.append(i * 8 + low.bit_length() - 1)
                byte ^= low
        return out

    def to_token_set(self):
        """An id list when there are fewer ids than bitset words, else the bitset."""
        if len(self) < (self.vocab_size + 31) // 32:
            return types.TokenSet_Ids(self.ids())
        return types.TokenSet_Bitset(self.words())


# --- samplers -------------------------------------------------------------------


def _controller():
    from wit_world.exports import controller

    return controller


def sample(allow=None, deny=None, bias=None, params=None):
    """`decision::sample` with this spec (a `TokenBits` is encoded for you)."""
    c = _controller()
    if isinstance(allow, TokenBits):
        allow = allow.to_token_set()
    if isinstance(deny, TokenBits):
        deny = deny.to_token_set()
    return c.Decision_Sample(c.SampleSpec(allow, deny, list(bias or []), params))


def defer():
    """`prepared::decided(sample{})`: no opinion, and no logits needed."""
    return _controller().Prepared_Decided(sample())


def deny(tokens):
    """`prepared::decided(sample{deny: tokens})`."""
    return _controller().Prepared_Decided(sample(deny=tokens))


def allow(tokens):
    """`prepared::decided(sample{allow: tokens})`."""
    return _controller().Prepared_Decided(sample(allow=tokens))


def special_token_ids():
    """Every special id (added tokens, BOS, every EOS), sorted, without duplicates."""
    from wit_world.imports import tokenizer

    info = tokenizer.info()
    ids = {t.id for t in tokenizer.special_tokens()}
    ids.update(info.eos)
    if info.bos is not None:
        ids.add(info.bos)
    return sorted(ids)


# --- tools -----------------------------------------------------------------------


def tool_spec(name, description, parameters):
    """A `tool-spec`; `parameters` is a JSON Schema as text or as Python data."""
    if not isinstance(parameters, str):
        parameters = json.dumps(parameters, separators=(",", ":"))
    return types.ToolSpec(name, description, parameters)


def json_output(value):
    """`tool-output::json` of Python data, compact, non-ASCII kept as is."""
    return types.ToolOutput_Json(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def text_output(text):
    """`tool-output::text`."""
    return types.ToolOutput_Text(text)


# Big integers print and parse at any size (the calculator's results).
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(0)
