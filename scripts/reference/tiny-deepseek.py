"""Writes the tiny DeepSeek test checkpoints.

    python3 scripts/reference/tiny-deepseek.py [OUT_DIR] [--if-changed]
    python3 scripts/reference/tiny-deepseek.py [OUT_DIR] --bench

OUT_DIR defaults to ${DEEPWASM_CACHE:-$HOME/.cache/deepwasm}/fixtures. Each
model is a Hugging Face directory laid out as DeepSeek publishes its models:
config.json (DeepSeek's key names), safetensors weights, and DeepSeek-R1's
tokenizer.json and tokenizer_config.json, copied from
$DEEPWASM_CACHE/models/deepseek-r1-tokenizer/ (scripts/fetch-models).

- tiny-deepseek-v3: DeepSeek-V3/R1 in small. Multi-head latent attention with
  a low-rank query (q_a_proj, q_a_layernorm, q_b_proj), YaRN rotary scaling,
  layer 0 dense, layers 1-2 mixture-of-experts with the sigmoid router, group
  limit and e_score_correction_bias ("noaux_tc"), one shared expert, and one
  multi-token-prediction layer stored as model.layers.3.* (enorm, hnorm,
  eh_proj, embed_tokens, shared_head.{norm,head}, plus a decoder layer), which
  a loader must skip. float32 (the MTP layer's own tensors bfloat16, as in
  DeepSeek's checkpoint).
- tiny-deepseek-v3-fp8: the same architecture with the decoder layers' linear
  weights in F8_E4M3 (float8_e4m3fn) and a float32 `<name>_scale_inv` of
  128x128 block scales beside each, as in DeepSeek-V3's published weights,
  and the `quantization_config` of DeepSeek-V3's config.json. Its dense MLP is
  320 wide (not 128) so that those weights span three blocks, the last one
  partial, along each axis; each block also gets its own magnitude, so every
  block has its own scale. Scales are rounded up to 4 significant bits: an
  e4m3 value (4 significant bits) times its scale is then exact in bfloat16
  and float32, and dequantizing in either gives the same weights.
- tiny-deepseek-v2-lite: DeepSeek-V2-Lite in small: a direct q_proj (no query
  low rank), softmax router, "greedy" top-k, two shared experts; weights
  sharded over two files with model.safetensors.index.json, the split falling
  inside layer 1.
- tiny-deepseek-v2-group: DeepSeek-V2 in small: low-rank query, softmax router
  with "group_limited_greedy", routed_scaling_factor 16. Its YaRN `mscale`
  (1.0) differs from `mscale_all_dim` (0.707), unlike the published V2
  configs, so the cos/sin scale yarn_get_mscale(mscale) /
  yarn_get_mscale(mscale_all_dim) is not 1 and is exercised.

Reproducible byte for byte across NumPy versions: every weight comes from a
SplitMix64 hash of (tensor name, element index) in uint64 arithmetic (which
wraps the same everywhere), mapped to a uniform value in [-1, 1) and scaled
with exact IEEE operations only (multiply, sqrt, rounding to float32); no
random-number generator, no transcendental function. safetensors files are
written here, not by a library. Running it again writes the same bytes; the
SHA-256 of every file is printed and recorded in tests/goldens/deepseek/.

--if-changed: leave a model alone when its files already have the SHA-256
recorded in tests/goldens/deepseek/<model>.json; otherwise (re)write it and
fail if the new files do not have the recorded hashes. This is what
scripts/setup runs.

Needs only NumPy.
"""

import hashlib
import json
import math
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

SCRIPT = "scripts/reference/tiny-deepseek.py"
ROOT = Path(__file__).resolve().parents[2]
GOLDENS = ROOT / "tests" / "goldens" / "deepseek"
SEED = 20250214

VOCAB = 129280  # DeepSeek-V3/R1's vocabulary (tokenizer.json)
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json"]
BLOCK = 128  # FP8 block size (weight_block_size)

# ---------------------------------------------------------------------------
# Configurations: the keys of DeepSeek's config.json files (DeepSeek-V3 /
# DeepSeek-R1, DeepSeek-V2-Lite, DeepSeek-V2), with small sizes.
# ---------------------------------------------------------------------------


def v3_config(intermediate_size=128, fp8=False):
    config = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "ep_size": 1,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "kv_lora_rank": 32,
        "max_position_embeddings": 2560,
        "model_type": "deepseek_v3",
        "moe_intermediate_size": 32,
        "moe_layer_freq": 1,
        "n_group": 4,
        "n_routed_experts": 16,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 4,
        "num_nextn_predict_layers": 1,
        "pretraining_tp": 1,
        "q_lora_rank": 48,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 64,
            "type": "yarn",
        },
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "torch_dtype": "float32",
        "transformers_version": "4.46.3",
        "use_cache": True,
        "v_head_dim": 16,
        "vocab_size": VOCAB,
    }
    if fp8:
        config["quantization_config"] = {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [BLOCK, BLOCK],
        }
    return dict(sorted(config.items()))


def v2_config(group):
    config = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "kv_lora_rank": 32,
        "max_position_embeddings": 2560,
        "model_type": "deepseek_v2",
        "moe_intermediate_size": 32,
        "moe_layer_freq": 1,
        "n_group": 4 if group else 1,
        "n_routed_experts": 16 if group else 8,
        "n_shared_experts": 2,
        "norm_topk_prob": False,
        "num_attention_heads": 4,
        "num_experts_per_tok": 4 if group else 2,
        "num_hidden_layers": 3,
        "num_key_value_heads": 4,
        "pretraining_tp": 1,
        "q_lora_rank": 48 if group else None,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 1.0 if group else 0.707,
            "mscale_all_dim": 0.707,
            "original_max_position_embeddings": 64,
            "type": "yarn",
        },
        "rope_theta": 10000,
        "routed_scaling_factor": 16.0 if group else 1.0,
        "scoring_func": "softmax",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": 2 if group else 1,
        "topk_method": "group_limited_greedy" if group else "greedy",
        "torch_dtype": "float32",
        "transformers_version": "4.39.3",
        "use_cache": True,
        "v_head_dim": 16,
        "vocab_size": VOCAB,
    }
    return dict(sorted(config.items()))


def bench_config():
    """DeepSeek-V3's architecture at ~350M parameters (random weights), big
    enough on a CPU for decode speed, cache size and MoE dispatch to matter:
    `deepwasm bench model --model .../bench-deepseek-v3`. Not a test fixture."""
    config = v3_config()
    config.update(
        hidden_size=768,
        intermediate_size=2048,
        moe_intermediate_size=256,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=16,
        q_lora_rank=384,
        kv_lora_rank=256,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        n_routed_experts=32,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        n_shared_experts=1,
        num_nextn_predict_layers=0,
        max_position_embeddings=4096,
    )
    config["rope_scaling"] = dict(config["rope_scaling"], original_max_position_embeddings=4096)
    return dict(sorted(config.items()))


# name -> (config, weight seed name, fp8, shards)
MODELS = {
    "tiny-deepseek-v3": (v3_config(), "tiny-deepseek-v3", False, 1),
    "tiny-deepseek-v3-fp8": (v3_config(intermediate_size=320, fp8=True), "tiny-deepseek-v3", True, 1),
    "tiny-deepseek-v2-lite": (v2_config(group=False), "tiny-deepseek-v2-lite", False, 2),
    "tiny-deepseek-v2-group": (v2_config(group=True), "tiny-deepseek-v2-group", False, 1),
}

# ---------------------------------------------------------------------------
# Deterministic values: SplitMix64 (Steele, Lea, Flood 2014) over a counter.
# ---------------------------------------------------------------------------

MASK = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def mix64_int(z):
    """SplitMix64's output function on a Python int."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def mix64(z):
    """SplitMix64's output function on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stream_key(text):
    """A 64-bit key for a string: FNV-1a of its UTF-8 bytes, mixed with SEED."""
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return mix64_int(h ^ mix64_int(SEED))


def uniform(text, count):
    """`count` float64 values in [-1, 1), a pure function of (text, index):
    element i is 2 * (mix64(key + (i + 1) * gamma) >> 11) / 2^53 - 1."""
    key = np.uint64(stream_key(text))
    i = np.arange(1, count + 1, dtype=np.uint64)
    z = mix64(key + i * np.uint64(GOLDEN_GAMMA))
    top53 = (z >> np.uint64(11)).astype(np.float64)  # exact: < 2^53
    return top53 * (2.0 / 9007199254740992.0) - 1.0  # exact scaling, exact subtraction


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def linear_weight(seed, name, out_dim, in_dim, gain=1.0):
    """Uniform with variance gain^2 / in_dim: u * gain * sqrt(3 / in_dim)."""
    u = uniform(f"{seed}/{name}", out_dim * in_dim).reshape(out_dim, in_dim)
    return u * (gain * math.sqrt(3.0 / in_dim))


def norm_weight(seed, name, dim):
    """Around 1: 1 + 0.25 u."""
    return 1.0 + 0.25 * uniform(f"{seed}/{name}", dim)


def model_tensors(config, seed):
    """name -> float64 array, DeepSeek's tensor names (incl. the MTP layer)."""
    h = config["hidden_size"]
    heads = config["num_attention_heads"]
    nope, rope, vdim = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    kv_rank, q_rank = config["kv_lora_rank"], config["q_lora_rank"]
    experts = config["n_routed_experts"]
    moe_inter = config["moe_intermediate_size"]
    v3 = config["model_type"] == "deepseek_v3"
    w = {}

    def lin(name, out_dim, in_dim, gain=1.0):
        w[name] = linear_weight(seed, name, out_dim, in_dim, gain)

    def norm(name, dim):
        w[name] = norm_weight(seed, name, dim)

    def mlp(prefix, inter):
        lin(f"{prefix}.gate_proj.weight", inter, h)
        lin(f"{prefix}.up_proj.weight", inter, h)
        lin(f"{prefix}.down_proj.weight", h, inter)

    def decoder_layer(i):
        p = f"model.layers.{i}"
        norm(f"{p}.input_layernorm.weight", h)
        norm(f"{p}.post_attention_layernorm.weight", h)
        a = f"{p}.self_attn"
        if q_rank is None:
            lin(f"{a}.q_proj.weight", heads * (nope + rope), h)
        else:
            lin(f"{a}.q_a_proj.weight", q_rank, h)
            norm(f"{a}.q_a_layernorm.weight", q_rank)
            lin(f"{a}.q_b_proj.weight", heads * (nope + rope), q_rank)
        lin(f"{a}.kv_a_proj_with_mqa.weight", kv_rank + rope, h)
        norm(f"{a}.kv_a_layernorm.weight", kv_rank)
        lin(f"{a}.kv_b_proj.weight", heads * (nope + vdim), kv_rank)
        lin(f"{a}.o_proj.weight", h, heads * vdim)
        if i < config["first_k_dense_replace"]:
            mlp(f"{p}.mlp", config["intermediate_size"])
            return
        # Router logits with a standard deviation of about 1.5.
        lin(f"{p}.mlp.gate.weight", experts, h, gain=1.5)
        if v3:
            # In [0, 0.2): of the order of the gaps between sigmoid scores, so
            # it moves some selections, and never negative, so that every
            # biased score stays above the 0.0 that masks out the groups not
            # chosen (HF's masked_fill(..., 0.0)).
            w[f"{p}.mlp.gate.e_score_correction_bias"] = 0.1 + 0.1 * uniform(
                f"{seed}/{p}.mlp.gate.e_score_correction_bias", experts
            )
        for e in range(experts):
            mlp(f"{p}.mlp.experts.{e}", moe_inter)
        mlp(f"{p}.mlp.shared_experts", moe_inter * config["n_shared_experts"])

    w["model.embed_tokens.weight"] = math.sqrt(3.0) * uniform(f"{seed}/model.embed_tokens.weight", VOCAB * h).reshape(
        VOCAB, h
    )
    layers = config["num_hidden_layers"]
    for i in range(layers):
        decoder_layer(i)
    norm("model.norm.weight", h)
    # Logits with a standard deviation of about 3.
    lin("lm_head.weight", VOCAB, h, gain=3.0)
    for i in range(layers, layers + config.get("num_nextn_predict_layers", 0)):
        decoder_layer(i)
        p = f"model.layers.{i}"
        w[f"{p}.embed_tokens.weight"] = w["model.embed_tokens.weight"]
        norm(f"{p}.enorm.weight", h)
        norm(f"{p}.hnorm.weight", h)
        lin(f"{p}.eh_proj.weight", h, 2 * h)
        norm(f"{p}.shared_head.norm.weight", h)
        w[f"{p}.shared_head.head.weight"] = w["lm_head.weight"]
    return w


def mtp_bf16(name, config):
    """The MTP layer's own tensors, which DeepSeek stores in bfloat16."""
    first_mtp = config["num_hidden_layers"]
    own = ("embed_tokens.weight", "enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.")
    return any(name.startswith(f"model.layers.{first_mtp}.{s}") for s in own)


def is_fp8_weight(name, config):
    """The tensors DeepSeek-V3's checkpoint keeps in F8_E4M3: the 2-D linear
    weights of the decoder layers (attention projections, dense MLP, routed
    and shared experts), not embeddings, norms, the router gate, its bias,
    lm_head, nor the MTP layer's eh_proj / shared_head."""
    linear = name.endswith(("_proj.weight", "_proj_with_mqa.weight"))
    return name.startswith("model.layers.") and linear and not mtp_bf16(name, config)


# ---------------------------------------------------------------------------
# float8_e4m3fn: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits, no
# infinities, 0x7f/0xff NaN, largest finite 448, smallest subnormal 2^-9.
# ---------------------------------------------------------------------------

F8_MAX = 448.0


def f8e4m3_encode(x):
    """float64 -> e4m3fn bits (uint8): round to nearest, ties to even,
    saturating at +-448. Exact: only frexp, ldexp, rint and comparisons."""
    x = np.asarray(x, dtype=np.float64)
    sign = np.signbit(x).astype(np.uint8) << np.uint8(7)
    a = np.minimum(np.abs(x), F8_MAX)
    _, e = np.frexp(a)  # a = m 2^e, m in [0.5, 1)
    exp = np.maximum(e - 1, -6)  # unbiased exponent; -6 also for subnormals
    step_exp = exp - 3  # spacing of representable values at this exponent
    n = np.rint(np.ldexp(a, -step_exp))  # multiple of the spacing, ties to even
    # n in [8, 16] for normals (16: rounded up into the next binade), [0, 8] for subnormals.
    up = n >= 16
    exp = np.where(up, exp + 1, exp)
    n = np.where(up, n / 2, n)
    normal = n >= 8
    bits = np.where(normal, ((exp + 7) << 3) + (n.astype(np.int64) - 8), n.astype(np.int64))
    assert bits.max(initial=0) <= 0x7E, "e4m3 overflow"
    return bits.astype(np.uint8) | sign


def f8e4m3_decode(bits):
    """e4m3fn bits -> float64 (exact)."""
    bits = np.asarray(bits, dtype=np.uint8).astype(np.int64)
    assert not np.any((bits & 0x7F) == 0x7F), "NaN in e4m3 data"
    sign = np.where(bits & 0x80, -1.0, 1.0)
    e = (bits >> 3) & 0xF
    m = bits & 0x7
    value = np.where(e == 0, np.ldexp(m.astype(np.float64), -9), np.ldexp((8 + m).astype(np.float64), e - 10))
    return sign * value


def round_scale_up(s):
    """The smallest value with 4 significant bits that is >= s (s > 0)."""
    m, e = math.frexp(s)  # s = m 2^e, m in [0.5, 1)
    return math.ldexp(math.ceil(m * 16.0), e - 4)


def quantize_fp8(seed, name, weight):
    """Block-wise FP8 as DeepSeek-V3 stores it: for each 128x128 block (the
    last ones partial), scale_inv = max|block| / 448 (rounded up to 4
    significant bits here), bits = e4m3(block / scale_inv). Before that every
    block gets a magnitude of its own (x 0.5 to 1.5), so the blocks' scales
    differ. Returns (bits, scale_inv float32 array, dequantized float64)."""
    out_dim, in_dim = weight.shape
    rows, cols = -(-out_dim // BLOCK), -(-in_dim // BLOCK)
    factors = 1.0 + 0.5 * uniform(f"{seed}/{name}/blocks", rows * cols).reshape(rows, cols)
    bits = np.zeros(weight.shape, dtype=np.uint8)
    scale_inv = np.zeros((rows, cols), dtype=np.float64)
    deq = np.zeros(weight.shape, dtype=np.float64)
    for r in range(rows):
        for c in range(cols):
            sl = (slice(r * BLOCK, (r + 1) * BLOCK), slice(c * BLOCK, (c + 1) * BLOCK))
            block = weight[sl] * factors[r, c]
            s = round_scale_up(float(np.max(np.abs(block))) / F8_MAX)
            assert np.float32(s) == s
            b = f8e4m3_encode(block / s)
            bits[sl] = b
            scale_inv[r, c] = s
            deq[sl] = f8e4m3_decode(b) * s
    assert np.array_equal(deq.astype(np.float32).astype(np.float64), deq)
    return bits, scale_inv.astype(np.float32), deq


# ---------------------------------------------------------------------------
# bfloat16 and safetensors
# ---------------------------------------------------------------------------


def f32_to_bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even (finite input)."""
    u = np.ascontiguousarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    return rounded.astype("<u2")


def entry(dtype, array):
    np_dtype = {"F32": "<f4", "BF16": "<u2", "F8_E4M3": "u1"}[dtype]
    a = np.ascontiguousarray(array, dtype=np_dtype)
    return (dtype, a.shape, a.tobytes())


def write_safetensors(path, tensors):
    """tensors: name -> (dtype, shape, little-endian bytes). An 8-byte
    little-endian header length, the JSON header (names sorted, padded with
    spaces to a multiple of 8 bytes), then the data in the same order."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        size = {"F32": 4, "BF16": 2, "F8_E4M3": 1}[dtype]
        assert offset % size == 0, f"{name} would be misaligned"
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in sorted(tensors):
            f.write(tensors[name][2])


def write_json(path, value):
    Path(path).write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def checkpoint_tensors(config, seed, fp8):
    """name -> safetensors entry."""
    out = {}
    for name, value in model_tensors(config, seed).items():
        if fp8 and is_fp8_weight(name, config):
            bits, scale_inv, _ = quantize_fp8(seed, name, value)
            out[name] = entry("F8_E4M3", bits)
            out[name + "_scale_inv"] = entry("F32", scale_inv)
        elif mtp_bf16(name, config):
            out[name] = entry("BF16", f32_to_bf16_bits(value.astype(np.float32)))
        else:
            out[name] = entry("F32", value.astype(np.float32))
    return out


def shard_of(name):
    """tiny-deepseek-v2-lite's split: the embedding, layer 0, layer 1's
    attention and its experts 0-3 in the first file; the rest in the second."""
    if name == "model.embed_tokens.weight" or name.startswith("model.layers.0."):
        return 1
    if name.startswith("model.layers.1."):
        rest = name[len("model.layers.1.") :]
        if rest.startswith(("self_attn.", "input_layernorm.")):
            return 1
        if rest.startswith("mlp.experts."):
            return 1 if int(rest.split(".")[2]) < 4 else 2
    return 2


def write_model(out_dir, model, tokenizer_dir):
    config, seed, fp8, shards = MODELS[model]
    final = out_dir / model
    tmp = out_dir / f".{model}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_json(tmp / "config.json", config)
    tensors = checkpoint_tensors(config, seed, fp8)
    if shards == 1:
        write_safetensors(tmp / "model.safetensors", tensors)
    else:
        files = {k: f"model-{k:05d}-of-{shards:05d}.safetensors" for k in range(1, shards + 1)}
        weight_map = {}
        for k, file in files.items():
            part = {n: t for n, t in tensors.items() if shard_of(n) == k}
            assert part, file
            write_safetensors(tmp / file, part)
            weight_map.update({n: file for n in part})
        total = sum(len(t[2]) for t in tensors.values())
        write_json(
            tmp / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        )
    for f in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / f, tmp / f)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def file_hashes(model_dir):
    return {p.name: sha256(p) for p in sorted(model_dir.iterdir()) if p.is_file()}


def recorded_hashes(model):
    path = GOLDENS / f"{model}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))["checkpoint"]["files"]


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if_changed = "--if-changed" in argv
    if set(a for a in argv if a.startswith("--")) - {"--if-changed", "--bench"}:
        sys.exit(__doc__)
    if "--bench" in argv:
        # Only the benchmark model, which no golden describes.
        MODELS.clear()
        MODELS["bench-deepseek-v3"] = (bench_config(), "bench-deepseek-v3", False, 1)
    cache = Path(os.environ.get("DEEPWASM_CACHE") or Path.home() / ".cache" / "deepwasm")
    out_dir = Path(args[0]) if args else cache / "fixtures"
    tokenizer_dir = cache / "models" / "deepseek-r1-tokenizer"
    for f in TOKENIZER_FILES:
        if not (tokenizer_dir / f).is_file():
            sys.exit(f"error: {tokenizer_dir / f} is missing; run scripts/fetch-models")
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = False
    for model in MODELS:
        expected = recorded_hashes(model)
        model_dir = out_dir / model
        if if_changed and expected and model_dir.is_dir() and file_hashes(model_dir) == expected:
            print(f"{model}: up to date")
            continue
        write_model(out_dir, model, tokenizer_dir)
        hashes = file_hashes(model_dir)
        for name, digest in hashes.items():
            size = (model_dir / name).stat().st_size
            print(f"{digest}  {model}/{name}  ({size} bytes)")
        if if_changed and expected and hashes != expected:
            print(
                f"error: {model_dir} does not have the SHA-256 recorded in "
                f"{GOLDENS / (model + '.json')} (NumPy {np.__version__})",
                file=sys.stderr,
            )
            failed = True
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
