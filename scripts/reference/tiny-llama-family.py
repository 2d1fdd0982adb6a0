"""Writes the tiny Llama-family test checkpoints and their reference outputs.

Output, under REPO/tests/fixtures/ (REPO is the first argument, by default the
repository this script lives in):

- tiny-llama/: a 2-layer Llama with grouped-query attention (4 query heads,
  2 key/value heads) and Llama 3.1 ("llama3") rotary frequency scaling; one
  float32 `model.safetensors`, separate `lm_head.weight`.
- tiny-qwen2/: a 2-layer Qwen2 (4 query heads, 1 key/value head) with biases
  on the query/key/value projections, tied embeddings, bfloat16 weights
  sharded over two safetensors files with `model.safetensors.index.json`.
- tokenizer.json / tokenizer_config.json in both: a byte-level BPE built
  here (256 byte tokens, merges learned on the sentences below, then the
  special tokens `<|bos|>` and `<|eos|>`).
- tiny-llama-family.json: for each model and three fixed prompts, the
  logits of the last prompt position and an 8-token greedy continuation,
  from the float64 NumPy forward pass in this file; plus tokenizer cases.

The forward pass follows the Hugging Face transformers definitions of the
Llama and Qwen2 decoders (models/llama/modeling_llama.py,
models/qwen2/modeling_qwen2.py), in float64 and without a cache: every
greedy step runs the whole sequence again, so the goldens do not depend on
any key/value cache logic.

Needs numpy and safetensors; tokenizers and Jinja2 check the tokenizer and
render the chat template example. Everything is seeded: running it again
with the same package versions rewrites the same bytes (see
tests/fixtures/README.md for the exact command).
"""

import importlib.metadata
import json
import math
import re
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

SCRIPT = "scripts/reference/tiny-llama-family.py"
SEED = 20250101

# ---------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------

HIDDEN = 64
INTERMEDIATE = 160
LAYERS = 2
HEADS = 4
HEAD_DIM = 16
GREEDY_TOKENS = 8

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

BOS = "<|bos|>"
EOS = "<|eos|>"
MERGES = 100

# The text the merges are learned on.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "The model reads the prompt, then writes one token at a time.",
    "Hello, world! This is a tiny model for tests.",
    "The weights are random, so the text it writes is not English.",
    "Attention looks back at every earlier position in the sequence.",
    "Rotary embeddings turn each query and key by an angle that grows with position.",
    "The tokenizer splits text into words, then merges the most frequent pairs.",
    "There are three prompts and two models in these tests.",
    "It is the same tokenizer for the Llama model and the Qwen model.",
    "Numbers like 12, 345 and 2025 are split into digits and merged too.",
    "We check that the loader reads the same weights the reference used.",
]

# ChatML-style: `<|bos|>` opens a turn, `<|eos|>` closes it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ bos_token + message['role'] + '\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token + 'assistant\\n' }}{% endif %}"
)

# Strings whose ids the goldens record (ASCII: the pre-tokenizer below
# implements the GPT-2 split pattern for ASCII text only).
TOKENIZE_CASES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " leading space and  two spaces",
    "line one\nline two\n\n",
    "it's 2025; don't panic",
    "<|bos|>system\nBe brief.<|eos|>",
    "zebra xylophone QUIZ",
]


def bytes_to_unicode():
    """GPT-2's byte-level alphabet: byte b -> one printable character.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
    themselves; the other 68 bytes take code points 256, 257, ... in byte
    order (so a space, 0x20, becomes 'Ġ' = U+0120).
    """
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_CHARS = bytes_to_unicode()

# GPT-2's pre-tokenizer split pattern with \p{L} and \p{N} written for ASCII.
ASCII_SPLIT = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def pre_tokenize(text):
    """Split ASCII text into words and map each word's bytes to characters."""
    assert text.isascii(), text
    return ["".join(BYTE_CHARS[b] for b in w.encode()) for w in ASCII_SPLIT.findall(text)]


def learn_merges(corpus, count):
    """Byte-pair encoding training: repeatedly merge the most frequent pair.

    Words are counted once per occurrence; each step merges the adjacent pair
    of symbols seen most often (ties: the smallest pair in string order).
    """
    words = {}
    for line in corpus:
        for w in pre_tokenize(line):
            words[w] = words.get(w, 0) + 1
    split = {w: list(w) for w in words}
    merges = []
    for _ in range(count):
        pairs = {}
        for w, n in words.items():
            s = split[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        for w in words:
            split[w] = merge_pair(split[w], best)
    return merges


def merge_pair(symbols, pair):
    """Replace every non-overlapping occurrence of `pair`, left to right."""
    out = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def build_tokenizer():
    """The vocabulary (token -> id), merges, and special token ids."""
    vocab = {BYTE_CHARS[b]: b for b in range(256)}
    merges = learn_merges(CORPUS, MERGES)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    specials = {BOS: len(vocab), EOS: len(vocab) + 1}
    return vocab, merges, specials


def tokenizer_json(vocab, merges, specials):
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in specials.items()
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[a, b] for a, b in merges],
        },
    }


def encode(text, vocab, merges, specials):
    """This file's own BPE encoder, checked against `tokenizers` below.

    Special tokens written in the text are matched first; each stretch
    between them is pre-tokenized, and each word's symbols merged by rank
    (the lowest-ranked adjacent pair first) until no pair has a rank.
    """
    rank = {pair: r for r, pair in enumerate(merges)}
    pattern = "(" + "|".join(re.escape(s) for s in specials) + ")"
    ids = []
    for part in re.split(pattern, text):
        if part in specials:
            ids.append(specials[part])
            continue
        for word in pre_tokenize(part):
            symbols = list(word)
            while len(symbols) > 1:
                ranked = [(rank.get(p, math.inf), p) for p in zip(symbols, symbols[1:])]
                best_rank, best = min(ranked)
                if best_rank == math.inf:
                    break
                symbols = merge_pair(symbols, best)
            ids.extend(vocab[s] for s in symbols)
    return ids


def check_tokenizer(path, vocab, merges, specials):
    """Load tokenizer.json with Hugging Face `tokenizers`; compare ids and
    decode round trips with this file's encoder. Returns the goldens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    assert tok.get_vocab_size(with_added_tokens=True) == len(vocab) + len(specials)
    cases = []
    for text in TOKENIZE_CASES:
        ids = encode(text, vocab, merges, specials)
        theirs = tok.encode(text, add_special_tokens=False).ids
        assert theirs == ids, (text, theirs, ids)
        assert tok.decode(ids, skip_special_tokens=False) == text, text
        cases.append({"text": text, "ids": ids})
    # Ids 0-255 are the bytes, in byte order.
    for b in range(256):
        assert tok.id_to_token(b) == BYTE_CHARS[b]
    return cases


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def f32_to_bf16_bits(x):
    """Round float32 values to bfloat16 (round to nearest, ties to even) and
    return the 16-bit patterns. bfloat16 is the top half of a float32, so
    add 0x7FFF plus the lowest kept bit, then drop the low 16 bits."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    assert np.all(np.isfinite(x))
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_bits_to_f64(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def make_weights(rng, cfg, with_qkv_bias, tied):
    """Random float32 weights under Hugging Face's tensor names, in the order
    of the model's state dict. Linear weights are [out_features, in_features].
    """
    d, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q_out = cfg["num_attention_heads"] * hd
    kv_out = cfg["num_key_value_heads"] * hd

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight():
        # RMSNorm gains near 1, with enough spread to matter.
        return (1.0 + rng.standard_normal(d) * 0.1).astype(np.float32)

    w = {"model.embed_tokens.weight": normal((vocab, d), 0.1)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm_weight()
        w[p + "self_attn.q_proj.weight"] = normal((q_out, d), 0.1)
        w[p + "self_attn.k_proj.weight"] = normal((kv_out, d), 0.1)
        w[p + "self_attn.v_proj.weight"] = normal((kv_out, d), 0.1)
        if with_qkv_bias:
            w[p + "self_attn.q_proj.bias"] = normal(q_out, 0.1)
            w[p + "self_attn.k_proj.bias"] = normal(kv_out, 0.1)
            w[p + "self_attn.v_proj.bias"] = normal(kv_out, 0.1)
        w[p + "self_attn.o_proj.weight"] = normal((d, q_out), 0.05)
        w[p + "post_attention_layernorm.weight"] = norm_weight()
        w[p + "mlp.gate_proj.weight"] = normal((inter, d), 0.1)
        w[p + "mlp.up_proj.weight"] = normal((inter, d), 0.1)
        w[p + "mlp.down_proj.weight"] = normal((d, inter), 0.05)
    w["model.norm.weight"] = norm_weight()
    if not tied:
        w["lm_head.weight"] = normal((vocab, d), 0.15)
    return w


# ---------------------------------------------------------------------------
# safetensors, written here so the bytes do not depend on a library version:
# an 8-byte little-endian header length, a JSON header (padded with spaces to
# a multiple of 8 bytes) mapping each name to dtype, shape and byte range in
# the data that follows, then the raw little-endian tensor data.
# ---------------------------------------------------------------------------


def write_safetensors(path, tensors, metadata):
    """tensors: name -> (dtype string, shape, little-endian bytes)."""
    header = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in sorted(tensors):
            f.write(tensors[name][2])


def f32_entry(a):
    return ("F32", a.shape, np.ascontiguousarray(a, dtype="<f4").tobytes())


def bf16_entry(bits):
    return ("BF16", bits.shape, np.ascontiguousarray(bits, dtype="<u2").tobytes())


def check_safetensors(path, expected):
    """Read a file back with the safetensors package; expected: name ->
    (dtype string, float64 values)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        assert sorted(f.keys()) == sorted(expected), path
        for name, (dtype, values) in expected.items():
            s = f.get_slice(name)
            assert s.get_dtype() == dtype and tuple(s.get_shape()) == values.shape, name
            if dtype == "F32":
                assert np.array_equal(f.get_tensor(name).astype(np.float64), values), name
    # Independently of the library, decode the raw bytes too (BF16 included).
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    for name, (dtype, values) in expected.items():
        a, b = header[name]["data_offsets"]
        data = raw[8 + n + a : 8 + n + b]
        if dtype == "F32":
            got = np.frombuffer(data, dtype="<f4").astype(np.float64)
        else:
            got = bf16_bits_to_f64(np.frombuffer(data, dtype="<u2"))
        assert np.array_equal(got.reshape(values.shape), values), name


# ---------------------------------------------------------------------------
# The reference forward pass, float64
# ---------------------------------------------------------------------------


def rms_norm(x, weight, eps):
    """RMSNorm: x / sqrt(mean(x^2) + eps) * weight, over the hidden axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x):
    """SiLU (swish): x * sigmoid(x)."""
    return x / (1.0 + np.exp(-x))


def inv_freq(cfg):
    """Rotary inverse frequencies: f_i = 1 / theta^(2i/d) for i < d/2, with
    Llama 3.1's scaling when `rope_scaling` says "llama3":

      wavelen_i = 2 pi / f_i
      wavelen_i < old / high_freq_factor   -> f_i unchanged (high frequencies)
      wavelen_i > old / low_freq_factor    -> f_i / factor  (low frequencies)
      otherwise, with s = (old / wavelen_i - low) / (high - low):
                                           -> (1 - s) f_i / factor + s f_i

    where old = original_max_position_embeddings.
    """
    d = cfg["head_dim"]
    f = 1.0 / cfg["rope_theta"] ** (np.arange(0, d, 2, dtype=np.float64) / d)
    scaling = cfg.get("rope_scaling")
    if scaling is None:
        return f
    assert scaling["rope_type"] == "llama3"
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    out = np.empty_like(f)
    for i, fi in enumerate(f):
        wavelen = 2.0 * math.pi / fi
        if wavelen < old / high:
            out[i] = fi
        elif wavelen > old / low:
            out[i] = fi / factor
        else:
            s = (old / wavelen - low) / (high - low)
            out[i] = (1.0 - s) * fi / factor + s * fi
    return out


def rotate_half(x):
    """[x1, x2] -> [-x2, x1], halves of the last axis (GPT-NeoX layout:
    dimension i pairs with i + d/2)."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x, cos, sin):
    """x: [heads, T, d]; cos, sin: [T, d]. x' = x cos + rotate_half(x) sin."""
    return x * cos + rotate_half(x) * sin


def linear(x, weights, name):
    """y = x W^T (+ b when the checkpoint has `name.bias`)."""
    y = x @ weights[name + ".weight"].T
    bias = weights.get(name + ".bias")
    return y if bias is None else y + bias


def forward(cfg, weights, ids):
    """Logits [T, vocab] for token ids [T] at positions 0..T-1."""
    t = len(ids)
    heads, kv_heads, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    group = heads // kv_heads
    eps = cfg["rms_norm_eps"]

    # Rotary tables: angle[p, i] = p * f_i, repeated for both halves.
    angles = np.arange(t, dtype=np.float64)[:, None] * inv_freq(cfg)[None, :]
    angles = np.concatenate([angles, angles], axis=-1)  # [T, hd]
    cos, sin = np.cos(angles), np.sin(angles)

    # Causal mask: position p attends to positions 0..p.
    future = np.triu(np.ones((t, t), dtype=bool), k=1)

    x = weights["model.embed_tokens.weight"][np.asarray(ids)]  # [T, hidden]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."

        # Attention block: x = x + o_proj(attention(rms_norm(x)))
        h = rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        q = linear(h, weights, p + "self_attn.q_proj").reshape(t, heads, hd).transpose(1, 0, 2)
        k = linear(h, weights, p + "self_attn.k_proj").reshape(t, kv_heads, hd).transpose(1, 0, 2)
        v = linear(h, weights, p + "self_attn.v_proj").reshape(t, kv_heads, hd).transpose(1, 0, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        out = np.empty((heads, t, hd))
        for head in range(heads):
            kv = head // group  # grouped-query attention: shared key/value head
            # softmax(q k^T / sqrt(hd) + causal mask) v
            scores = q[head] @ k[kv].T / math.sqrt(hd)
            scores = np.where(future, -np.inf, scores)
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs = probs / probs.sum(axis=-1, keepdims=True)
            out[head] = probs @ v[kv]
        out = out.transpose(1, 0, 2).reshape(t, heads * hd)
        x = x + linear(out, weights, p + "self_attn.o_proj")

        # MLP block (SwiGLU): x = x + down(silu(gate(h)) * up(h)), h = rms_norm(x)
        h = rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
        mlp = silu(linear(h, weights, p + "mlp.gate_proj")) * linear(h, weights, p + "mlp.up_proj")
        x = x + linear(mlp, weights, p + "mlp.down_proj")

    x = rms_norm(x, weights["model.norm.weight"], eps)
    head = weights["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else weights["lm_head.weight"]
    return x @ head.T


def greedy(cfg, weights, prompt, steps):
    """Greedy continuation, the whole sequence recomputed each step. argmax
    takes the lowest id on ties. Returns the ids and each step's margin
    (best logit minus second best)."""
    ids = list(prompt)
    out, margins = [], []
    for _ in range(steps):
        logits = forward(cfg, weights, ids)[-1]
        best = int(np.argmax(logits))
        second = np.max(np.delete(logits, best))
        out.append(best)
        margins.append(float(logits[best] - second))
        ids.append(best)
    return out, margins


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def sig6(x):
    """A float rounded to 6 significant digits."""
    return float(f"{x:.6g}")


def dumps(value, indent=0):
    """JSON with 2-space indentation, except that lists of numbers stay on
    one line (a vocabulary's worth of logits is one line, not hundreds)."""
    pad = "  " * indent
    inner = "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "[" + ", ".join(json.dumps(v) for v in value) + "]"
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False)


def write_json(path, value):
    Path(path).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def llama_config(vocab_size, bos, eos):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": 2,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": dict(LLAMA3_SCALING),
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }


def qwen2_config(vocab_size, bos, eos):
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": 1,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "max_position_embeddings": 256,
        "use_sliding_window": False,
        "tie_word_embeddings": True,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "bfloat16",
    }


def tokenizer_config(add_bos):
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": None,
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 256,
        "chat_template": CHAT_TEMPLATE,
    }


def shard(names, sizes, count):
    """Split tensors, in state-dict order, into `count` consecutive shards of
    about equal byte size, as transformers' save_pretrained does by size."""
    total = sum(sizes[n] for n in names)
    shards = [[] for _ in range(count)]
    filled = 0
    for n in names:
        index = min(count - 1, filled * count // total)
        shards[index].append(n)
        filled += sizes[n]
    return shards


def main():
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]
    out = root / "tests" / "fixtures"
    llama_dir, qwen_dir = out / "tiny-llama", out / "tiny-qwen2"
    for d in (llama_dir, qwen_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)

    # Tokenizer.
    vocab, merges, specials = build_tokenizer()
    v = len(vocab) + len(specials)
    bos, eos = specials[BOS], specials[EOS]
    write_json(llama_dir / "tokenizer.json", tokenizer_json(vocab, merges, specials))
    shutil.copyfile(llama_dir / "tokenizer.json", qwen_dir / "tokenizer.json")
    write_json(llama_dir / "tokenizer_config.json", tokenizer_config(True))
    write_json(qwen_dir / "tokenizer_config.json", tokenizer_config(False))
    tokenize_cases = check_tokenizer(llama_dir / "tokenizer.json", vocab, merges, specials)

    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    chat_messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, world!"},
    ]
    chat_text = env.from_string(CHAT_TEMPLATE).render(
        messages=chat_messages, bos_token=BOS, eos_token=EOS, add_generation_prompt=True
    )

    # Prompts, shared by both models: the BOS token alone; a 7-token
    # sentence; 19 ids drawn over the whole vocabulary, including the first
    # and the last id.
    rng = np.random.default_rng(SEED)
    sentence = "The model reads the prompt."
    prompt7 = encode(sentence, vocab, merges, specials)
    assert len(prompt7) == 7, prompt7
    prompt19 = [0, v - 1] + [int(i) for i in rng.integers(0, v, size=17)]
    prompt19 = [prompt19[i] for i in rng.permutation(19)]
    prompts = [
        {"name": "bos", "ids": [bos]},
        {"name": "sentence", "text": sentence, "ids": prompt7},
        {"name": "spread", "ids": prompt19},
    ]

    models = {}

    # tiny-llama: float32, one file.
    cfg = llama_config(v, bos, eos)
    w32 = make_weights(rng, cfg, with_qkv_bias=False, tied=False)
    write_json(llama_dir / "config.json", cfg)
    write_safetensors(llama_dir / "model.safetensors", {n: f32_entry(a) for n, a in w32.items()}, {"format": "pt"})
    ref = {n: a.astype(np.float64) for n, a in w32.items()}
    check_safetensors(llama_dir / "model.safetensors", {n: ("F32", a) for n, a in ref.items()})
    models["tiny-llama"] = (cfg, ref)

    # tiny-qwen2: bfloat16, two shards and an index.
    cfg = qwen2_config(v, bos, eos)
    w32 = make_weights(rng, cfg, with_qkv_bias=True, tied=True)
    bits = {n: f32_to_bf16_bits(a) for n, a in w32.items()}
    ref = {n: bf16_bits_to_f64(b) for n, b in bits.items()}
    write_json(qwen_dir / "config.json", cfg)
    names = list(bits)
    sizes = {n: bits[n].nbytes for n in names}
    files = [f"model-{i + 1:05d}-of-00002.safetensors" for i in range(2)]
    weight_map = {}
    for file, part in zip(files, shard(names, sizes, 2)):
        write_safetensors(qwen_dir / file, {n: bf16_entry(bits[n]) for n in part}, {"format": "pt"})
        check_safetensors(qwen_dir / file, {n: ("BF16", ref[n]) for n in part})
        weight_map.update({n: file for n in part})
    index = {
        "metadata": {"total_size": sum(sizes.values())},
        "weight_map": dict(sorted(weight_map.items())),
    }
    write_json(qwen_dir / "model.safetensors.index.json", index)
    models["tiny-qwen2"] = (cfg, ref)

    goldens = {
        "generator": SCRIPT,
        "numpy_version": np.__version__,
        "safetensors_version": importlib.metadata.version("safetensors"),
        "tokenizers_version": importlib.metadata.version("tokenizers"),
        "seed": SEED,
        "about": (
            "Reference outputs of the float64 NumPy forward pass in the generator, on the "
            "weights exactly as stored (bfloat16 values for tiny-qwen2). last_logits: the "
            "logits at the last prompt position, 6 significant digits. greedy: 8 argmax "
            "tokens (lowest id on ties), each step recomputing the whole sequence; "
            "greedy_margins: best minus second-best logit at each step."
        ),
        "vocab_size": v,
        "bos_id": bos,
        "eos_id": eos,
        "tokenizer": {
            "cases": tokenize_cases,
            "chat": {"messages": chat_messages, "add_generation_prompt": True, "text": chat_text},
        },
        "models": {},
    }
    for name, (cfg, ref) in models.items():
        cases = []
        for prompt in prompts:
            logits = forward(cfg, ref, prompt["ids"])[-1]
            tokens, margins = greedy(cfg, ref, prompt["ids"], GREEDY_TOKENS)
            case = dict(prompt)
            case["last_logits"] = [sig6(x) for x in logits]
            case["last_logits_std"] = sig6(float(np.std(logits)))
            case["greedy"] = tokens
            case["greedy_margins"] = [sig6(m) for m in margins]
            cases.append(case)
        goldens["models"][name] = {"dir": name, "cases": cases}

    (out / "tiny-llama-family.json").write_text(dumps(goldens) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
