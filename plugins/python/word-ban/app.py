"""`word-ban`: a sampler that keeps banned words out of the generated text, in Python.

The same sampler as `plugins/rust/word-ban` (see its header for the exact
behaviour): config `{"words": [...]}`, ASCII case-insensitive byte matching
across token boundaries, special tokens never denied, every `prepare`
decided without logits. The sequence resource is in `controller.py`.

Token sets are Python integers used as bitsets (`TokenBits`), so the
per-step work is a handful of big-integer ORs; the sets of tokens that start
with each suffix of each word are computed once per word list in `open`.
"""

from bisect import bisect_left

from deepwasm_plugin import Fields, TokenBits, special_token_ids
from wit_world.imports import tokenizer

# How many ids `setup` asks `token-bytes` for at once.
CHUNK = 4096
# How many distinct word lists keep their precomputed sets.
CACHE_SLOTS = 8


def successor(prefix):
    """The smallest byte string greater than every string starting with `prefix`."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes([p[-1] + 1])


class Index:
    """The vocabulary, lowercased, sorted for prefix queries."""

    def __init__(self, vocab, special_ids):
        n = len(vocab)
        self.vocab_size = n
        self.special = TokenBits.of(n, special_ids)
        special = self.special
        # Special tokens keep no bytes: they match nothing.
        self.tokens = [b"" if special.contains(t) else vocab[t].lower() for t in range(n)]
        tokens = self.tokens
        self.sorted = sorted((t for t in range(n) if tokens[t]), key=tokens.__getitem__)
        self.keys = [tokens[t] for t in self.sorted]

    @classmethod
    def from_tokenizer(cls):
        vocab_size = tokenizer.info().vocab_size
        vocab = []
        start = 0
        while start < vocab_size:
            end = min(start + CHUNK, vocab_size)
            chunk = list(tokenizer.token_bytes(list(range(start, end))))
            # Be robust to a short answer: missing ids have no bytes.
            chunk = (chunk + [b""] * (end - start))[: end - start]
            vocab.extend(bytes(b) for b in chunk)
            start = end
        return cls(vocab, special_token_ids())

    def token(self, t):
        return self.tokens[t] if 0 <= t < self.vocab_size else b""

    def starting_with(self, prefix):
        """The set of ids whose bytes start with `prefix` (lowercased)."""
        lo = bisect_left(self.keys, prefix)
        succ = successor(prefix)
        hi = len(self.keys) if succ is None else bisect_left(self.keys, succ, lo)
        return TokenBits.of(self.vocab_size, self.sorted[lo:hi])

    def containing(self, words):
        """The set of ids whose bytes contain one of `words` (lowercased)."""
        tokens = self.tokens
        return TokenBits.of(
            self.vocab_size,
            (t for t in self.sorted if any(w in tokens[t] for w in words)),
        )


def read_words(config):
    """The `words` field, normalised: lowercased bytes, sorted, no duplicates."""
    cfg = Fields.parse("config", config)
    cfg.only("words")
    words = cfg.get_str_list("words", [])
    for i, w in enumerate(words):
        if w == "":
            raise cfg.error(f"words[{i}]", "must not be empty")
    return tuple(sorted({w.encode("utf-8").lower() for w in words}))


class Ban:
    """What one word list needs at every step, computed once per list."""

    def __init__(self, index, words):
        self.words = words
        self.keep = max((len(w) for w in words), default=0) - 1
        self.containing = index.containing(words)
        # For every word w and proper prefix w[:i]: the tokens starting with w[i:].
        self.completions = [
            (w[:i], index.starting_with(w[i:])) for w in words for i in range(len(w) - 1, 0, -1)
        ]

    def deny(self, tail):
        bits = self.containing.bits
        for prefix, completing in self.completions:
            if tail.endswith(prefix):
                bits |= completing.bits
        return TokenBits(self.containing.vocab_size, bits)


INDEX = None
CACHE = {}


def index():
    global INDEX
    if INDEX is None:
        INDEX = Index.from_tokenizer()
    return INDEX


def ban(words):
    ix = index()
    entry = CACHE.pop(words, None)
    if entry is None:
        entry = Ban(ix, words)
        if len(CACHE) == CACHE_SLOTS:
            del CACHE[next(iter(CACHE))]
    CACHE[words] = entry
    return entry


class Controller:
    def setup(self):
        global INDEX
        INDEX = Index.from_tokenizer()
        CACHE.clear()
