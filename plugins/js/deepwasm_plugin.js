// Helpers for deepwasm plugins written in JavaScript (built with componentize-js).
//
// The JavaScript counterpart of the Rust SDK's helpers (`plugins/sdk`): JSON
// configs read field by field with errors that name the field, error values,
// a token bitset that builds `token-set`s, and small constructors for sampler
// decisions and tool specs. Import what you need from a plugin's `app.js`:
//
//     import { Fields } from './deepwasm_plugin.js';
//
//     export const scorer = {
//       score(samples, config) {
//         const cfg = Fields.parse('config', config);
//         cfg.only('strict');
//         const strict = cfg.getBool('strict', false);
//         ...
//       },
//     };
//
// An error goes back to the host by throwing it: `throw invalidInput('...')`
// becomes `error::invalid-input` (componentize-js turns a thrown value into
// the `err` of a function's `result`). Anything else thrown traps.
//
// WIT values in JS (componentize-js / jco conventions): variants are
// `{tag: 'kebab-name', val}`, options are the value or `undefined`,
// `list<u8>` is a `Uint8Array`, records are plain objects with camelCase
// fields, exported resources are classes.
//
// This module imports nothing, so it serves every world; the sampler helpers
// that need the tokenizer take it as an argument.

// --- errors ---------------------------------------------------------------

/** `error::invalid-input`, to throw: the input or config was malformed. */
export function invalidInput(message) {
  return { tag: 'invalid-input', val: String(message) };
}

/** `error::not-found`, to throw: the named thing does not exist. */
export function notFound(message) {
  return { tag: 'not-found', val: String(message) };
}

/** `error::failed`, to throw: anything else that went wrong. */
export function failed(message) {
  return { tag: 'failed', val: String(message) };
}

// --- whitespace -------------------------------------------------------------

// JavaScript's `trim()` differs from Rust's `char::is_whitespace` (it trims
// U+FEFF and not U+0085); plugins that must agree with the Rust ones use the
// Unicode White_Space property, all of it in the BMP.
const WHITESPACE = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003,
  0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f,
  0x3000,
]);

/** Whether the code point `c` is Unicode White_Space. */
export function isWhitespace(c) {
  return WHITESPACE.has(c);
}

/** `s` without trailing Unicode White_Space. */
export function trimEndWs(s) {
  let end = s.length;
  while (end > 0 && WHITESPACE.has(s.charCodeAt(end - 1))) end--;
  return s.slice(0, end);
}

/** `s` without leading and trailing Unicode White_Space. */
export function trimWs(s) {
  let start = 0;
  const t = trimEndWs(s);
  while (start < t.length && WHITESPACE.has(t.charCodeAt(start))) start++;
  return t.slice(start);
}

// --- configs and arguments --------------------------------------------------

function kind(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  switch (typeof v) {
    case 'boolean':
      return 'a boolean';
    case 'number':
      return 'a number';
    case 'string':
      return 'a string';
    default:
      return 'an object';
  }
}

/**
 * A JSON object read field by field; every error names the field.
 *
 * `Fields.parse('config', text)` fails on anything but an object (blank text
 * reads as `{}`). The getters return the default when a field is absent or
 * `null`, and throw `invalid-input` as `config.NAME: why` when it has the
 * wrong type.
 */
export class Fields {
  constructor(what, fields) {
    this.what = what;
    this.fields = fields;
  }

  static parse(what, text) {
    if (trimWs(text) === '') text = '{}';
    let value;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw invalidInput(`${what}: ${e.message}`);
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw invalidInput(`${what}: expected a JSON object, got ${kind(value)}`);
    }
    return new Fields(what, value);
  }

  /** An `invalid-input` error about the field `name`, to throw. */
  error(name, why) {
    return invalidInput(`${this.what}.${name}: ${why}`);
  }

  /** Fail on any field not named in `known`. */
  only(...known) {
    for (const key of Object.keys(this.fields)) {
      if (!known.includes(key)) {
        throw this.error(key, `unknown field; expected one of: ${known.join(', ')}`);
      }
    }
  }

  /** The field's JSON value, or undefined. */
  raw(name) {
    return Object.prototype.hasOwnProperty.call(this.fields, name) ? this.fields[name] : undefined;
  }

  get(name, fallback, check, expected) {
    const v = this.raw(name);
    if (v === undefined || v === null) return fallback;
    if (!check(v)) throw this.error(name, `expected ${expected}, got ${kind(v)}`);
    return v;
  }

  getBool(name, fallback) {
    return this.get(name, fallback, (v) => typeof v === 'boolean', 'a boolean');
  }

  getString(name, fallback) {
    return this.get(name, fallback, (v) => typeof v === 'string', 'a string');
  }

  getNumber(name, fallback) {
    return this.get(name, fallback, (v) => typeof v === 'number', 'a number');
  }

  /** An integer in `[lo, hi]` (default: a u32). */
  getInt(name, fallback, lo = 0, hi = 4294967295) {
    const v = this.get(name, fallback, (v) => Number.isInteger(v), 'an integer');
    if (v !== undefined && (v < lo || v > hi)) {
      throw this.error(name, `${v} is out of range [${lo}, ${hi}]`);
    }
    return v;
  }

  getStringList(name, fallback) {
    const v = this.get(name, fallback, Array.isArray, 'an array of strings');
    if (v === undefined) return v;
    v.forEach((item, i) => {
      if (typeof item !== 'string') {
        throw this.error(`${name}[${i}]`, `expected a string, got ${kind(item)}`);
      }
    });
    return v;
  }

  /** `getter(name)` (for example `fields.getString`), failing when absent. */
  require(name, getter) {
    const v = getter.call(this, name);
    if (v === undefined) throw this.error(name, 'missing');
    return v;
  }
}

// --- token sets ---------------------------------------------------------------

function popcount(w) {
  w = w - ((w >>> 1) & 0x55555555);
  w = (w & 0x33333333) + ((w >>> 2) & 0x33333333);
  return (((w + (w >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/**
 * A set of token ids below `vocabSize`, one bit per token, in the layout of
 * the WIT `bitset` (token `t` is bit `t % 32` of word `t / 32`).
 */
export class TokenBits {
  constructor(vocabSize, words) {
    this.vocabSize = vocabSize;
    this.words = words || new Uint32Array((vocabSize + 31) >>> 5);
  }

  /** The set of `ids` (ids at or past the vocabulary size are ignored). */
  static of(vocabSize, ids) {
    const bits = new TokenBits(vocabSize);
    bits.extend(ids);
    return bits;
  }

  insert(t) {
    if (t >= 0 && t < this.vocabSize) this.words[t >>> 5] |= 1 << (t & 31);
  }

  extend(ids) {
    for (const t of ids) this.insert(t);
  }

  /** Add every token of `other` (same vocabulary size). */
  union(other) {
    const a = this.words;
    const b = other.words;
    for (let i = 0; i < a.length; i++) a[i] |= b[i];
  }

  contains(t) {
    return t >= 0 && t < this.vocabSize && ((this.words[t >>> 5] >>> (t & 31)) & 1) === 1;
  }

  get size() {
    let n = 0;
    for (const w of this.words) if (w) n += popcount(w);
    return n;
  }

  isEmpty() {
    for (const w of this.words) if (w) return false;
    return true;
  }

  copy() {
    return new TokenBits(this.vocabSize, this.words.slice());
  }

  /** The ids in the set, ascending. */
  ids() {
    const out = [];
    const words = this.words;
    for (let i = 0; i < words.length; i++) {
      let w = words[i];
      while (w) {
        const low = w & -w;
        out.push(i * 32 + 31 - Math.clz32(low));
        w ^= low;
      }
    }
    return out;
  }

  /** An id list when there are fewer ids than bitset words, else the bitset. */
  toTokenSet() {
    if (this.size < this.words.length) return { tag: 'ids', val: new Uint32Array(this.ids()) };
    return { tag: 'bitset', val: this.words.slice() };
  }
}

// --- samplers -------------------------------------------------------------------

/** `decision::sample` with this spec (a `TokenBits` is encoded for you). */
export function sample({ allow, deny, bias, params } = {}) {
  if (allow instanceof TokenBits) allow = allow.toTokenSet();
  if (deny instanceof TokenBits) deny = deny.toTokenSet();
  return { tag: 'sample', val: { allow, deny, bias: bias || [], params } };
}

/** `prepared::decided(sample{})`: no opinion, and no logits needed. */
export function defer() {
  return { tag: 'decided', val: sample() };
}

/** `prepared::decided(sample{deny: tokens})`. */
export function deny(tokens) {
  return { tag: 'decided', val: sample({ deny: tokens }) };
}

/** `prepared::decided(sample{allow: tokens})`. */
export function allow(tokens) {
  return { tag: 'decided', val: sample({ allow: tokens }) };
}

/**
 * Every special id (added tokens, BOS, every EOS), sorted, without
 * duplicates. `tokenizer` is the imported interface:
 * `import * as tokenizer from 'deepwasm:plugin/tokenizer@0.1.0'`.
 */
export function specialTokenIds(tokenizer) {
  const info = tokenizer.info();
  const ids = new Set(tokenizer.specialTokens().map((t) => t.id));
  for (const t of info.eos) ids.add(t);
  if (info.bos !== undefined) ids.add(info.bos);
  return [...ids].sort((a, b) => a - b);
}

// --- tools -----------------------------------------------------------------------

/** A `tool-spec`; `parameters` is a JSON Schema as text or as an object. */
export function toolSpec(name, description, parameters) {
  if (typeof parameters !== 'string') parameters = JSON.stringify(parameters);
  return { name, description, parameters };
}

/** `tool-output::json` of a value, compact. */
export function jsonOutput(value) {
  return { tag: 'json', val: JSON.stringify(value) };
}

/** `tool-output::text`. */
export function textOutput(text) {
  return { tag: 'text', val: text };
}
