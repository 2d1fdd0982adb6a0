// `calculator`: exact rational arithmetic as a tool, in JavaScript.
//
// The same tool as `plugins/rust/calculator` (see its header for the grammar,
// the output and the limits): `calculate` with `{"expression": "..."}`
// answers `{"expression", "result", "decimal"}` as JSON, with the same error
// kinds and messages. Numbers are rationals of `BigInt`s kept in lowest
// terms; positions count Unicode scalar values, as the Rust version does.

import { Fields, isWhitespace, invalidInput, jsonOutput, notFound, toolSpec } from './deepwasm_plugin.js';

const MAX_BITS = 100000;
const MAX_CHARS = 10000;
const MAX_DEPTH = 100;
const SIGNIFICANT = 12;

const SCHEMA =
  '{"type":"object","properties":{"expression":{"type":"string"}},' +
  '"required":["expression"],"additionalProperties":false}';
const DESCRIPTION =
  'Evaluate an arithmetic expression exactly with rational numbers: + - * /, ' +
  '^ with an integer exponent, parentheses and decimal numbers. Returns the exact ' +
  'result (an integer or a fraction) and its decimal form.';

/** A message for `invalid-input`. */
class CalcError {
  constructor(message) {
    this.message = message;
  }
}

// --- rationals: {n, d} with d > 0 and gcd(n, d) = 1 ---------------------------

const abs = (x) => (x < 0n ? -x : x);

function bitLength(x) {
  x = abs(x);
  if (x === 0n) return 0;
  const hex = x.toString(16);
  return (hex.length - 1) * 4 + (32 - Math.clz32(parseInt(hex[0], 16)));
}

/** The bit length of `x >= 0`, known to be at most `n`. */
function shrunk(x, n) {
  // Usually a few bits less: test them one at a time, each a small shift.
  for (let k = 0; k < 64 && n > 0; k++, n--) {
    if (x >> BigInt(n - 1) !== 0n) return n;
  }
  return bitLength(x);
}

// Bits of each number the quotients are computed from, in floating point:
// below 2^53 with room for the cosequence terms added to them.
const LEAD = 50;

/**
 * `gcd(a, b)` by Lehmer's algorithm (Knuth, TAOCP vol. 2, 4.5.2, algorithm
 * L): the quotients of Euclid's algorithm come from the leading LEAD bits of
 * both numbers, and the big numbers are updated once per ~LEAD/2 bits of
 * progress. Plain Euclid on two 95,000-bit numbers makes ~55,000 big
 * remainders, and StarlingMonkey's collector did not reclaim them fast enough
 * to stay under a tool's 128 MiB.
 */
function gcd(a, b) {
  a = abs(a);
  b = abs(b);
  if (a < b) [a, b] = [b, a];
  let n = bitLength(a);
  while (b !== 0n) {
    if (n <= LEAD) {
      while (b !== 0n) [a, b] = [b, a % b];
      return a;
    }
    const shift = BigInt(n - LEAD);
    let x = Number(a >> shift);
    let y = Number(b >> shift);
    // a' = A a + B b, b' = C a + D b, for the quotients known to be right:
    // those that both bounds of the leading bits agree on.
    let [A, B, C, D] = [1, 0, 0, 1];
    while (y + C > 0 && y + D > 0) {
      const q = Math.floor((x + A) / (y + C));
      if (q !== Math.floor((x + B) / (y + D))) break;
      [A, C] = [C, A - q * C];
      [B, D] = [D, B - q * D];
      [x, y] = [y, x - q * y];
    }
    if (B === 0) {
      // Not one quotient was certain (a large one): one step in full.
      [a, b] = [b, a % b];
      n = bitLength(a);
    } else {
      [a, b] = [BigInt(A) * a + BigInt(B) * b, BigInt(C) * a + BigInt(D) * b];
      n = shrunk(a, n);
    }
  }
  return a;
}

function ratio(n, d) {
  if (d < 0n) {
    n = -n;
    d = -d;
  }
  const g = gcd(n, d);
  return g === 1n ? { n, d } : { n: n / g, d: d / g };
}

const int = (n) => ({ n, d: 1n });
const ZERO = int(0n);
const ONE = int(1n);
const add = (a, b) => ratio(a.n * b.d + b.n * a.d, a.d * b.d);
const sub = (a, b) => ratio(a.n * b.d - b.n * a.d, a.d * b.d);
const mul = (a, b) => ratio(a.n * b.n, a.d * b.d);
const div = (a, b) => ratio(a.n * b.d, a.d * b.n);
const neg = (a) => ({ n: -a.n, d: a.d });
const bits = (v) => Math.max(bitLength(v.n), bitLength(v.d));

function checked(v) {
  const n = bits(v);
  if (n > MAX_BITS) throw new CalcError(`a value would have ${n} bits; the limit is ${MAX_BITS}`);
  return v;
}

// --- the parser -----------------------------------------------------------------

const isDigit = (c) => c !== undefined && c >= '0' && c <= '9';

class Parser {
  constructor(chars) {
    this.chars = chars;
    this.pos = 0;
    this.depth = 0;
  }

  skipWs() {
    while (this.pos < this.chars.length && isWhitespace(this.chars[this.pos].codePointAt(0))) {
      this.pos++;
    }
  }

  peek() {
    this.skipWs();
    return this.chars[this.pos];
  }

  unexpected(expected) {
    const c = this.chars[this.pos];
    if (c === undefined) {
      return new CalcError(`expected ${expected} at position ${this.pos}, found the end`);
    }
    return new CalcError(`expected ${expected} at position ${this.pos}, found '${c}'`);
  }

  enter() {
    this.depth++;
    if (this.depth > MAX_DEPTH) {
      throw new CalcError(`nesting deeper than ${MAX_DEPTH} at position ${this.pos}`);
    }
  }

  expr() {
    let acc = this.term();
    for (;;) {
      const op = this.peek();
      if (op !== '+' && op !== '-') return acc;
      this.pos++;
      const rhs = this.term();
      acc = checked(op === '+' ? add(acc, rhs) : sub(acc, rhs));
    }
  }

  term() {
    let acc = this.unary();
    for (;;) {
      const c = this.peek();
      if (c === '*' && this.chars[this.pos + 1] !== '*') {
        this.pos++;
        acc = checked(mul(acc, this.unary()));
      } else if (c === '/') {
        const at = this.pos;
        this.pos++;
        const rhs = this.unary();
        if (rhs.n === 0n) throw new CalcError(`division by zero at position ${at}`);
        acc = checked(div(acc, rhs));
      } else {
        return acc;
      }
    }
  }

  unary() {
    const op = this.peek();
    if (op === '+' || op === '-') {
      this.pos++;
      this.enter();
      const v = this.unary();
      this.depth--;
      return op === '-' ? neg(v) : v;
    }
    return this.power();
  }

  power() {
    const base = this.primary();
    const c = this.peek();
    let at;
    if (c === '^') {
      at = this.pos;
      this.pos += 1;
    } else if (c === '*' && this.chars[this.pos + 1] === '*') {
      at = this.pos;
      this.pos += 2;
    } else {
      return base;
    }
    this.enter();
    const exponent = this.unary();
    this.depth--;
    return power(base, exponent, at);
  }

  primary() {
    const c = this.peek();
    if (c === '(') {
      this.pos++;
      this.enter();
      const v = this.expr();
      this.depth--;
      if (this.peek() !== ')') throw this.unexpected("')'");
      this.pos++;
      return v;
    }
    if (isDigit(c) || c === '.') return this.number();
    throw this.unexpected("a number or '('");
  }

  digits() {
    const start = this.pos;
    while (isDigit(this.chars[this.pos])) this.pos++;
    return this.chars.slice(start, this.pos).join('');
  }

  number() {
    const start = this.pos;
    const whole = this.digits();
    let frac = '';
    if (this.chars[this.pos] === '.') {
      this.pos++;
      frac = this.digits();
    }
    if (whole === '' && frac === '') {
      this.pos = start;
      throw this.unexpected('a number');
    }
    return checked(ratio(BigInt(whole + frac), 10n ** BigInt(frac.length)));
  }
}

function power(base, exponent, at) {
  if (exponent.d !== 1n) throw new CalcError(`the exponent at position ${at} is not an integer`);
  const e = exponent.n;
  if (base.n === 0n) {
    if (e < 0n) throw new CalcError(`division by zero (0 to a negative power) at position ${at}`);
    return e === 0n ? ONE : ZERO;
  }
  if (abs(base.n) === 1n && base.d === 1n) {
    return base.n < 0n && abs(e) % 2n === 1n ? int(-1n) : ONE;
  }
  const size = BigInt(Math.max(bits(base) - 1, 1));
  const n = abs(e);
  if (n >= 1n << 64n || n * size > BigInt(MAX_BITS)) {
    throw new CalcError(
      `the power at position ${at} is too large: the result would pass ${MAX_BITS} bits`,
    );
  }
  // numerator^n and denominator^n are coprime already.
  let num = base.n ** n;
  let den = base.d ** n;
  if (e < 0n) [num, den] = den < 0n || num < 0n ? [-den, -num] : [den, num];
  return checked({ n: num, d: den });
}

function evaluate(expression) {
  const chars = Array.from(expression);
  if (chars.length > MAX_CHARS) {
    throw new CalcError(
      `the expression has ${chars.length} characters; the limit is ${MAX_CHARS}`,
    );
  }
  const p = new Parser(chars);
  const value = p.expr();
  p.skipWs();
  if (p.pos < chars.length) throw p.unexpected('an operator or the end of the expression');
  return value;
}

// --- output -----------------------------------------------------------------------

function exact(v) {
  return v.d === 1n ? v.n.toString() : `${v.n}/${v.d}`;
}

function withPoint(digits, places) {
  if (places === 0) return digits;
  if (digits.length <= places) digits = '0'.repeat(places + 1 - digits.length) + digits;
  return digits.slice(0, digits.length - places) + '.' + digits.slice(digits.length - places);
}

function trimZeros(s) {
  if (!s.includes('.')) return s;
  return s.replace(/0+$/, '').replace(/\.$/, '');
}

/** `floor(log10(v))` for `v > 0`. */
function floorLog10(v) {
  const { n, d } = v;
  // An estimate from the bit lengths, then corrected.
  let e = Math.floor(((bitLength(n) - bitLength(d)) * 30103) / 100000);
  const atLeast = (e) => (e >= 0 ? n >= d * 10n ** BigInt(e) : n * 10n ** BigInt(-e) >= d);
  while (!atLeast(e)) e--;
  while (atLeast(e + 1)) e++;
  return e;
}

function decimal(value) {
  const sign = value.n < 0n ? '-' : '';
  const v = { n: abs(value.n), d: value.d };
  let d = v.d;
  let twos = 0;
  let fives = 0;
  while (d % 2n === 0n) {
    d /= 2n;
    twos++;
  }
  while (d % 5n === 0n) {
    d /= 5n;
    fives++;
  }
  if (d === 1n) {
    const places = Math.max(twos, fives);
    const scaled = (v.n * 10n ** BigInt(places)) / v.d;
    return sign + withPoint(scaled.toString(), places);
  }
  let e = floorLog10(v);
  const shift = SIGNIFICANT - 1 - e;
  // v * 10^shift as a fraction left unreduced: rounding needs only its
  // quotient and remainder, and reducing numbers of ~100,000 bits by
  // Euclid's algorithm costs tens of thousands of huge temporaries.
  const sn = shift >= 0 ? v.n * 10n ** BigInt(shift) : v.n;
  const sd = shift >= 0 ? v.d : v.d * 10n ** BigInt(-shift);
  // Round half away from zero (the fraction is positive).
  const q = sn / sd;
  const r = sn % sd;
  let digits = (2n * r >= sd ? q + 1n : q).toString();
  if (digits.length > SIGNIFICANT) {
    digits = digits.slice(0, SIGNIFICANT);
    e++;
  }
  if (e >= -6 && e < 12) {
    return '~' + sign + trimZeros(withPoint(digits, SIGNIFICANT - 1 - e));
  }
  return '~' + sign + trimZeros(withPoint(digits, SIGNIFICANT - 1)) + `e${e}`;
}

function calculate(expression) {
  let value;
  try {
    value = evaluate(expression);
  } catch (e) {
    if (e instanceof CalcError) throw invalidInput(e.message);
    throw e;
  }
  return jsonOutput({ expression, result: exact(value), decimal: decimal(value) });
}

export const toolProvider = {
  describe() {
    return [toolSpec('calculate', DESCRIPTION, SCHEMA)];
  },

  call(name, args) {
    if (name !== 'calculate') {
      throw notFound(`no tool named ${JSON.stringify(name)}; this plugin has only "calculate"`);
    }
    const fields = Fields.parse('arguments', args);
    fields.only('expression');
    const expression = fields.require('expression', fields.getString);
    return calculate(expression);
  },
};
