// `word-ban`: a sampler that keeps banned words out of the generated text, in JavaScript.
//
// The same sampler as `plugins/rust/word-ban` (see its header for the exact
// behaviour): config `{"words": [...]}`, ASCII case-insensitive byte
// matching across token boundaries, special tokens never denied, every
// `prepare` decided without logits.
//
// Token bytes are kept as "binary strings" (one UTF-16 code unit per byte),
// so sorting, prefix and substring tests run as the engine's native string
// operations rather than interpreted loops: StarlingMonkey has no JIT.

import * as tokenizer from 'deepwasm:plugin/tokenizer@0.1.0';
import { Fields, TokenBits, defer, deny, sample, specialTokenIds } from './deepwasm_plugin.js';

// How many ids `setup` asks `token-bytes` for at once.
const CHUNK = 4096;
// How many distinct word lists keep their precomputed sets.
const CACHE_SLOTS = 8;

/** Bytes as a binary string, ASCII letters lowercased, each code unit plus `shift`. */
function lowerBinary(bytes, shift = 0) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 8192) {
    const part = Array.from(
      bytes.subarray(i, i + 8192),
      (b) => (b >= 0x41 && b <= 0x5a ? b + 32 : b) + shift,
    );
    s += String.fromCharCode.apply(null, part);
  }
  return s;
}

/** The vocabulary, lowercased, sorted for prefix queries. */
class Index {
  constructor(vocab, specialIds) {
    const n = vocab.length;
    this.vocabSize = n;
    this.special = TokenBits.of(n, specialIds);
    // Special tokens keep no bytes: they match nothing.
    this.tokens = vocab.map((b, t) => (this.special.contains(t) ? '' : lowerBinary(b)));
    // Sort by bytes, ties by id, with the engine's native string sort: a
    // key is the token's bytes shifted up by one (so a shorter prefix sorts
    // first), a 0 separator, then the id in two code units.
    const keyed = [];
    for (let t = 0; t < n; t++) {
      if (this.tokens[t] === '') continue;
      keyed.push(lowerBinary(vocab[t], 1) + '\u0000' + String.fromCharCode(t >>> 16, t & 0xffff));
    }
    keyed.sort();
    this.sorted = new Uint32Array(keyed.length);
    this.keys = new Array(keyed.length);
    keyed.forEach((k, i) => {
      const t = (k.charCodeAt(k.length - 2) << 16) | k.charCodeAt(k.length - 1);
      this.sorted[i] = t;
      this.keys[i] = this.tokens[t];
    });
  }

  static fromTokenizer() {
    const vocabSize = tokenizer.info().vocabSize;
    const vocab = [];
    for (let start = 0; start < vocabSize; start += CHUNK) {
      const end = Math.min(start + CHUNK, vocabSize);
      const ids = new Uint32Array(end - start);
      for (let i = 0; i < ids.length; i++) ids[i] = start + i;
      const chunk = tokenizer.tokenBytes(ids);
      // Be robust to a short answer: missing ids have no bytes.
      for (let i = 0; i < ids.length; i++) vocab.push(chunk[i] || new Uint8Array(0));
    }
    return new Index(vocab, specialTokenIds(tokenizer));
  }

  token(t) {
    return t >= 0 && t < this.vocabSize ? this.tokens[t] : '';
  }

  /** The first position in `keys` whose key is not below `s`. */
  lowerBound(s, lo = 0) {
    let hi = this.keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.keys[mid] < s) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The set of ids whose bytes start with `prefix` (lowercased). */
  startingWith(prefix) {
    const lo = this.lowerBound(prefix);
    let hi = lo;
    while (hi < this.keys.length && this.keys[hi].startsWith(prefix)) hi++;
    return TokenBits.of(this.vocabSize, this.sorted.subarray(lo, hi));
  }

  /** The set of ids whose bytes contain one of `words` (lowercased). */
  containing(words) {
    const set = new TokenBits(this.vocabSize);
    for (let i = 0; i < this.keys.length; i++) {
      const key = this.keys[i];
      if (words.some((w) => key.includes(w))) set.insert(this.sorted[i]);
    }
    return set;
  }
}

/** The `words` field, normalised: lowercased bytes, sorted, no duplicates. */
function readWords(config) {
  const cfg = Fields.parse('config', config);
  cfg.only('words');
  const words = cfg.getStringList('words', []);
  words.forEach((w, i) => {
    if (w === '') throw cfg.error(`words[${i}]`, 'must not be empty');
  });
  const encoder = new TextEncoder();
  return [...new Set(words.map((w) => lowerBinary(encoder.encode(w))))].sort();
}

/** What one word list needs at every step, computed once per list. */
class Ban {
  constructor(index, words) {
    this.keep = Math.max(0, ...words.map((w) => w.length)) - 1;
    this.containing = index.containing(words);
    // For every word w and proper prefix w[..i]: the tokens starting with w[i..].
    this.completions = [];
    for (const w of words) {
      for (let i = w.length - 1; i > 0; i--) {
        this.completions.push([w.slice(0, i), index.startingWith(w.slice(i))]);
      }
    }
  }

  deny(tail) {
    const set = this.containing.copy();
    for (const [prefix, completing] of this.completions) {
      if (tail.endsWith(prefix)) set.union(completing);
    }
    return set;
  }
}

let INDEX = null;
const CACHE = new Map();

function index() {
  if (INDEX === null) INDEX = Index.fromTokenizer();
  return INDEX;
}

function ban(words) {
  const ix = index();
  const key = JSON.stringify(words);
  let entry = CACHE.get(key);
  if (entry === undefined) {
    entry = new Ban(ix, words);
    if (CACHE.size === CACHE_SLOTS) CACHE.delete(CACHE.keys().next().value);
  } else {
    CACHE.delete(key);
  }
  CACHE.set(key, entry);
  return entry;
}

class Sequence {
  constructor(index, ban) {
    this.index = index;
    this.ban = ban;
    this.tail = '';
  }

  static open(config, prompt, params) {
    const words = readWords(config);
    return new Sequence(index(), words.length ? ban(words) : null);
  }

  prepare(step, newTokens) {
    if (this.ban === null) return defer();
    const ix = this.index;
    let tail = this.tail;
    for (const t of newTokens) {
      tail = ix.special.contains(t) ? '' : tail + ix.token(t);
    }
    const keep = this.ban.keep;
    this.tail = tail.length > keep ? tail.slice(tail.length - keep) : tail;
    const d = this.ban.deny(this.tail);
    return d.isEmpty() ? defer() : deny(d);
  }

  decide(step, logits) {
    // `prepare` always decides; a host that calls this anyway gets a defer.
    return sample();
  }
}

export const controller = {
  setup() {
    INDEX = Index.fromTokenizer();
    CACHE.clear();
  },
  Sequence,
};
