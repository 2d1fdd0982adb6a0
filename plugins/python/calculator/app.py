"""`calculator`: exact rational arithmetic as a tool, in Python.

The same tool as `plugins/rust/calculator` (see its header for the grammar,
the output and the limits): `calculate` with `{"expression": "..."}` answers
`{"expression", "result", "decimal"}` as JSON, with the same error kinds and
messages. Python's integers and `fractions.Fraction` do the big-number work.
"""

import sys
from fractions import Fraction

# CPython converts and divides very large ints with this pure-Python module,
# which it imports on first use. A component has no file system to import
# from at run time, so it is imported here, while the component is built.
import _pylong  # noqa: F401

from deepwasm_plugin import Fields, WHITESPACE, json_output, not_found, invalid_input, tool_spec

# Python refuses to turn an int of more than 4,300 digits into a string or
# back (a guard against quadratic-time conversions of untrusted input). The
# limits here (MAX_CHARS of input, MAX_BITS per value, about 30,100 digits)
# already bound that work, and the Rust tool answers up to them.
sys.set_int_max_str_digits(0)

MAX_BITS = 100_000
MAX_CHARS = 10_000
MAX_DEPTH = 100
SIGNIFICANT = 12

SCHEMA = (
    '{"type":"object","properties":{"expression":{"type":"string"}},'
    '"required":["expression"],"additionalProperties":false}'
)
DESCRIPTION = (
    "Evaluate an arithmetic expression exactly with rational numbers: + - * /, "
    "^ with an integer exponent, parentheses and decimal numbers. Returns the exact "
    "result (an integer or a fraction) and its decimal form."
)

DIGITS = "0123456789"


class CalcError(Exception):
    """A message for `invalid-input`."""


def bits(value):
    return max(value.numerator.bit_length(), value.denominator.bit_length())


def checked(value):
    n = bits(value)
    if n > MAX_BITS:
        raise CalcError(f"a value would have {n} bits; the limit is {MAX_BITS}")
    return value


class Parser:
    def __init__(self, text):
        self.chars = text
        self.pos = 0
        self.depth = 0

    def at(self, i):
        return self.chars[i] if i < len(self.chars) else None

    def skip_ws(self):
        while self.pos < len(self.chars) and self.chars[self.pos] in WHITESPACE:
            self.pos += 1

    def peek(self):
        self.skip_ws()
        return self.at(self.pos)

    def unexpected(self, expected):
        c = self.at(self.pos)
        if c is None:
            return CalcError(f"expected {expected} at position {self.pos}, found the end")
        return CalcError(f"expected {expected} at position {self.pos}, found '{c}'")

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise CalcError(f"nesting deeper than {MAX_DEPTH} at position {self.pos}")

    def expr(self):
        acc = self.term()
        while True:
            op = self.peek()
            if op != "+" and op != "-":
                return acc
            self.pos += 1
            rhs = self.term()
            acc = checked(acc + rhs if op == "+" else acc - rhs)

    def term(self):
        acc = self.unary()
        while True:
            c = self.peek()
            if c == "*" and self.at(self.pos + 1) != "*":
                self.pos += 1
                rhs = self.unary()
                acc = checked(acc * rhs)
            elif c == "/":
                at = self.pos
                self.pos += 1
                rhs = self.unary()
                if rhs == 0:
                    raise CalcError(f"division by zero at position {at}")
                acc = checked(acc / rhs)
            else:
                return acc

    def unary(self):
        op = self.peek()
        if op == "+" or op == "-":
            self.pos += 1
            self.enter()
            v = self.unary()
            self.depth -= 1
            return -v if op == "-" else v
        return self.power()

    def power(self):
        base = self.primary()
        c = self.peek()
        if c == "^":
            at = self.pos
            self.pos += 1
        elif c == "*" and self.at(self.pos + 1) == "*":
            at = self.pos
            self.pos += 2
        else:
            return base
        self.enter()
        exponent = self.unary()
        self.depth -= 1
        return power(base, exponent, at)

    def primary(self):
        c = self.peek()
        if c == "(":
            self.pos += 1
            self.enter()
            v = self.expr()
            self.depth -= 1
            if self.peek() != ")":
                raise self.unexpected("')'")
            self.pos += 1
            return v
        if c is not None and (c in DIGITS or c == "."):
            return self.number()
        raise self.unexpected("a number or '('")

    def digits(self):
        start = self.pos
        while self.pos < len(self.chars) and self.chars[self.pos] in DIGITS:
            self.pos += 1
        return self.chars[start : self.pos]

    def number(self):
        start = self.pos
        whole = self.digits()
        frac = ""
        if self.at(self.pos) == ".":
            self.pos += 1
            frac = self.digits()
        if not whole and not frac:
            self.pos = start
            raise self.unexpected("a number")
        return checked(Fraction(int(whole + frac), 10 ** len(frac)))


def power(base, exponent, at):
    if exponent.denominator != 1:
        raise CalcError(f"the exponent at position {at} is not an integer")
    e = exponent.numerator
    if base == 0:
        if e < 0:
            raise CalcError(f"division by zero (0 to a negative power) at position {at}")
        return Fraction(1) if e == 0 else Fraction(0)
    if abs(base) == 1:
        return Fraction(-1) if base < 0 and e % 2 == 1 else Fraction(1)
    size = max(bits(base) - 1, 1)
    n = abs(e)
    if n >= 1 << 64 or n * size > MAX_BITS:
        raise CalcError(
            f"the power at position {at} is too large: the result would pass {MAX_BITS} bits"
        )
    magnitude = Fraction(base.numerator**n, base.denominator**n)
    return checked(1 / magnitude if e < 0 else magnitude)


def evaluate(expression):
    if len(expression) > MAX_CHARS:
        raise CalcError(
            f"the expression has {len(expression)} characters; the limit is {MAX_CHARS}"
        )
    p = Parser(expression)
    value = p.expr()
    p.skip_ws()
    if p.pos < len(p.chars):
        raise p.unexpected("an operator or the end of the expression")
    return value


def exact(value):
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def with_point(digits, places):
    if places == 0:
        return digits
    if len(digits) <= places:
        digits = "0" * (places + 1 - len(digits)) + digits
    return digits[: len(digits) - places] + "." + digits[len(digits) - places :]


def trim_zeros(s):
    if "." not in s:
        return s
    return s.rstrip("0").rstrip(".")


def floor_log10(v):
    """`floor(log10(v))` for `v > 0`."""
    n, d = v.numerator, v.denominator
    # An estimate from the bit lengths, then corrected.
    e = (n.bit_length() - d.bit_length()) * 30103 // 100000

    def at_least(e):
        return n >= d * 10**e if e >= 0 else n * 10 ** (-e) >= d

    while not at_least(e):
        e -= 1
    while at_least(e + 1):
        e += 1
    return e


def round_half_away(v):
    """The integer nearest to `v >= 0`, halves rounded up."""
    q, r = divmod(v.numerator, v.denominator)
    return q + 1 if 2 * r >= v.denominator else q


def decimal(value):
    sign = "-" if value < 0 else ""
    v = abs(value)
    d = v.denominator
    twos = fives = 0
    while d % 2 == 0:
        d //= 2
        twos += 1
    while d % 5 == 0:
        d //= 5
        fives += 1
    if d == 1:
        places = max(twos, fives)
        scaled = v.numerator * 10**places // v.denominator
        return sign + with_point(str(scaled), places)
    e = floor_log10(v)
    shift = SIGNIFICANT - 1 - e
    scaled = v * 10**shift if shift >= 0 else v / 10 ** (-shift)
    digits = str(round_half_away(scaled))
    if len(digits) > SIGNIFICANT:
        digits = digits[:SIGNIFICANT]
        e += 1
    if -6 <= e < 12:
        return "~" + sign + trim_zeros(with_point(digits, SIGNIFICANT - 1 - e))
    return "~" + sign + trim_zeros(with_point(digits, SIGNIFICANT - 1)) + f"e{e}"


def calculate(expression):
    try:
        value = evaluate(expression)
    except CalcError as e:
        raise invalid_input(str(e)) from None
    return json_output({"expression": expression, "result": exact(value), "decimal": decimal(value)})


class ToolProvider:
    def describe(self):
        return [tool_spec("calculate", DESCRIPTION, SCHEMA)]

    def call(self, name, arguments):
        if name != "calculate":
            raise not_found(f'no tool named "{name}"; this plugin has only "calculate"')
        args = Fields.parse("arguments", arguments)
        args.only("expression")
        expression = args.require("expression", args.get_str)
        return calculate(expression)
