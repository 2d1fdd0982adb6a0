"""A float64 NumPy forward pass for DeepSeek-V2 and DeepSeek-V3 checkpoints.

The second opinion on the DeepSeek goldens (tests/goldens/deepseek/): written
from the Hugging Face modeling files DeepSeek publishes with its models
(modeling_deepseek.py of DeepSeek-V2-Lite / DeepSeek-V2 and of DeepSeek-V3 /
DeepSeek-R1), independently of mlx-lm, in float64 and without a key/value
cache: each call runs the whole sequence, so nothing here depends on cache
logic. What it implements:

- Multi-head latent attention, expanded: q from q_proj, or q_a_proj ->
  q_a_layernorm -> q_b_proj; kv_a_proj_with_mqa gives the latent (kv_lora_rank)
  and one shared rotary key (qk_rope_head_dim); kv_a_layernorm and kv_b_proj
  expand the latent to per-head no-rope keys and values. Scores are
  q.k * softmax_scale with a causal mask, softmax, times values, o_proj.
- Rotary embedding on the last qk_rope_head_dim dims of q and on the shared
  key, in DeepSeek's interleaved layout: pairs (x[2i], x[2i+1]) turn by
  position * inv_freq[i] (the modeling file reorders to halves and applies
  rotate_half; same dot products).
- YaRN as DeepseekV3YarnRotaryEmbedding / DeepseekV2YarnRotaryEmbedding
  compute it: inv_freq blends the interpolated (1 / (factor * base^(2i/d)))
  and extrapolated (1 / base^(2i/d)) frequencies with a linear ramp between
  the correction dims of beta_fast and beta_slow (floor / ceil, clamped to
  [0, d-1]) for original_max_position_embeddings; cos and sin are multiplied
  by yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor,
  mscale_all_dim); the attention's softmax_scale is q_head_dim^-0.5 times
  yarn_get_mscale(factor, mscale_all_dim)^2 when mscale_all_dim is set, with
  yarn_get_mscale(s, m) = 0.1 m ln(s) + 1 (1 when s <= 1).
- RMSNorm x / sqrt(mean(x^2) + eps) * w (q_a/kv_a layernorms with the modeling
  file's default eps, 1e-6); SiLU-gated MLPs.
- Layers >= first_k_dense_replace (and at multiples of moe_layer_freq) are
  mixtures of experts: routed experts plus n_shared_experts fused into one MLP
  of moe_intermediate_size * n_shared_experts. Routers:
  * V3 "noaux_tc" with sigmoid scores: choice = score + e_score_correction_bias;
    a group's score is the sum of its two best choices; the topk_group best
    groups stay, the others' choices become 0.0; the top num_experts_per_tok
    choices win, weighted by their scores (without the bias), normalised to
    sum 1 when norm_topk_prob (denominator + 1e-20), times
    routed_scaling_factor.
  * V2 softmax scores, "greedy" (the top k scores) or "group_limited_greedy"
    (a group's score is its best score; the other groups' scores become 0.0);
    weights are the scores, normalised when norm_topk_prob (then not scaled),
    else times routed_scaling_factor.
- Weights: safetensors read here (F32, BF16, F8_E4M3), FP8 weights
  dequantized as value * weight_scale_inv per 128x128 block; the
  multi-token-prediction layers (index >= num_hidden_layers) are skipped.

Used by scripts/reference/deepseek-goldens; also runs on its own:

    python3 deepseek_f64.py MODEL_DIR ID [ID ...]   # greedy continuation
"""

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def decode_e4m3(bits):
    """float8_e4m3fn bits -> float64: sign, 4 exponent bits (bias 7), 3
    mantissa bits; exponent 0 is subnormal (m * 2^-9); 0x7f / 0xff are NaN."""
    b = bits.astype(np.int64)
    exponent = (b >> 3) & 0xF
    mantissa = b & 0x7
    magnitude = np.where(
        exponent == 0,
        np.ldexp(mantissa.astype(np.float64), -9),
        np.ldexp((8 + mantissa).astype(np.float64), exponent - 10),
    )
    magnitude = np.where((b & 0x7F) == 0x7F, np.nan, magnitude)
    return np.where(b & 0x80, -magnitude, magnitude)


def read_safetensors(path):
    """name -> (dtype, float64 array); F8_E4M3 decoded to its values."""
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = data[a:b]
        dtype = info["dtype"]
        if dtype == "F32":
            values = np.frombuffer(buf, dtype="<f4").astype(np.float64)
        elif dtype == "BF16":
            values = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        elif dtype == "F8_E4M3":
            values = decode_e4m3(np.frombuffer(buf, dtype=np.uint8))
        else:
            raise ValueError(f"{path}: {name}: unsupported dtype {dtype}")
        out[name] = (dtype, values.reshape(info["shape"]))
    return out


def dequantize_blocks(weight, scale_inv, block):
    """weight * scale_inv, with scale_inv[i, j] for rows i*bo.. and columns
    j*bi.. (the last blocks partial)."""
    bo, bi = block
    rows = np.repeat(scale_inv, bo, axis=0)[: weight.shape[0]]
    full = np.repeat(rows, bi, axis=1)[:, : weight.shape[1]]
    return weight * full


def load(model_dir):
    """(config, name -> float64 weight) for a Hugging Face DeepSeek directory."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for f in files:
        tensors.update(read_safetensors(model_dir / f))
    quant = config.get("quantization_config")
    block = tuple(quant["weight_block_size"]) if quant else None
    layers = config["num_hidden_layers"]
    weights = {}
    for name, (dtype, value) in tensors.items():
        if name.startswith("model.layers.") and int(name.split(".")[2]) >= layers:
            continue  # multi-token prediction
        if name.endswith("_scale_inv"):
            continue
        if dtype == "F8_E4M3":
            weights[name] = dequantize_blocks(value, tensors[name + "_scale_inv"][1], block)
        else:
            weights[name] = value
    return config, weights


# ---------------------------------------------------------------------------
# The forward pass
# ---------------------------------------------------------------------------


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def yarn_get_mscale(scale, mscale):
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_correction_dim(rotations, dim, base, original):
    """The rotary dim whose wavelength fits `rotations` turns in `original`."""
    return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))


def rope_tables(config):
    """(inv_freq [d/2], cos/sin multiplier, softmax scale)."""
    dim = config["qk_rope_head_dim"]
    base = float(config.get("rope_theta", 10000))
    q_head_dim = config["qk_nope_head_dim"] + dim
    softmax_scale = q_head_dim**-0.5
    exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
    scaling = config.get("rope_scaling")
    if scaling is None:
        return 1.0 / base**exponents, 1.0, softmax_scale
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind != "yarn":
        raise ValueError(f"rope_scaling type {kind!r} is not implemented here")
    factor = float(scaling["factor"])
    original = scaling.get("original_max_position_embeddings", 4096)
    beta_fast = scaling.get("beta_fast", 32)
    beta_slow = scaling.get("beta_slow", 1)
    mscale = scaling.get("mscale", 1)
    mscale_all_dim = scaling.get("mscale_all_dim", 0)
    extrapolated = 1.0 / base**exponents
    interpolated = 1.0 / (factor * base**exponents)
    low = max(math.floor(yarn_correction_dim(beta_fast, dim, base, original)), 0)
    high = min(math.ceil(yarn_correction_dim(beta_slow, dim, base, original)), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    keep = 1.0 - ramp  # weight of the extrapolated (original) frequency
    inv_freq = interpolated * (1.0 - keep) + extrapolated * keep
    cos_sin_scale = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
    if mscale_all_dim:
        softmax_scale *= yarn_get_mscale(factor, mscale_all_dim) ** 2
    return inv_freq, cos_sin_scale, softmax_scale


def apply_rope(x, positions, inv_freq, scale):
    """x [..., T, d], interleaved pairs (x[2i], x[2i+1]) turned by
    positions * inv_freq[i]; cos and sin times `scale`."""
    angles = positions[:, None] * inv_freq[None, :]  # [T, d/2]
    cos, sin = np.cos(angles) * scale, np.sin(angles) * scale
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = odd * cos + even * sin
    return out


class Model:
    def __init__(self, config, weights):
        self.c = config
        self.w = weights
        self.v3 = config["model_type"] == "deepseek_v3"
        self.inv_freq, self.cos_sin_scale, self.softmax_scale = rope_tables(config)
        # Per MoE layer and token of the last forward: chosen experts, the
        # experts chosen without the correction bias, and the smallest biased
        # score among the groups kept.
        self.routing = []

    def linear(self, x, name):
        return x @ self.w[name + ".weight"].T

    def mlp(self, x, prefix):
        return self.linear(silu(self.linear(x, f"{prefix}.gate_proj")) * self.linear(x, f"{prefix}.up_proj"), f"{prefix}.down_proj")

    def attention(self, x, layer, positions):
        c, p = self.c, f"model.layers.{layer}.self_attn"
        heads = c["num_attention_heads"]
        nope, rope, vdim, rank = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]
        t = x.shape[0]
        if c.get("q_lora_rank") is None:
            q = self.linear(x, f"{p}.q_proj")
        else:
            q = self.linear(rms_norm(self.linear(x, f"{p}.q_a_proj"), self.w[f"{p}.q_a_layernorm.weight"], 1e-6), f"{p}.q_b_proj")
        q = q.reshape(t, heads, nope + rope).transpose(1, 0, 2)  # [h, T, qd]
        q_nope, q_pe = q[..., :nope], q[..., nope:]
        compressed = self.linear(x, f"{p}.kv_a_proj_with_mqa")
        latent, k_pe = compressed[:, :rank], compressed[:, rank:]
        kv = self.linear(rms_norm(latent, self.w[f"{p}.kv_a_layernorm.weight"], 1e-6), f"{p}.kv_b_proj")
        kv = kv.reshape(t, heads, nope + vdim).transpose(1, 0, 2)
        k_nope, v = kv[..., :nope], kv[..., nope:]
        q_pe = apply_rope(q_pe, positions, self.inv_freq, self.cos_sin_scale)
        k_pe = apply_rope(k_pe[None], positions, self.inv_freq, self.cos_sin_scale)  # [1, T, r]
        scores = (q_nope @ k_nope.transpose(0, 2, 1) + q_pe @ k_pe.transpose(0, 2, 1)) * self.softmax_scale
        scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)
        out = softmax(scores) @ v  # [h, T, v]
        return self.linear(out.transpose(1, 0, 2).reshape(t, heads * vdim), f"{p}.o_proj")

    def route(self, x, prefix):
        """(expert ids [T, k], weights [T, k]) as MoEGate computes them."""
        c = self.c
        k, experts = c["num_experts_per_tok"], c["n_routed_experts"]
        groups, keep_groups = c.get("n_group") or 1, c.get("topk_group") or 1
        logits = self.linear(x, f"{prefix}.gate")
        method = c.get("topk_method", "greedy")
        if c.get("scoring_func", "softmax") == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            scores = softmax(logits)

        def top(values, count):
            return np.argsort(-values, axis=-1, kind="stable")[..., :count]

        def group_mask(group_scores):
            chosen = top(group_scores, keep_groups)
            mask = np.zeros(group_scores.shape, dtype=bool)
            np.put_along_axis(mask, chosen, True, axis=-1)
            return np.repeat(mask, experts // groups, axis=-1)

        if method == "noaux_tc":
            bias = self.w[f"{prefix}.gate.e_score_correction_bias"]

            def select(choice):
                grouped = choice.reshape(-1, groups, experts // groups)
                best_two = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)
                mask = group_mask(best_two)
                return top(np.where(mask, choice, 0.0), k), np.where(mask, choice, np.inf).min(axis=-1)

            ids, min_kept = select(scores + bias)
            unbiased, _ = select(scores)
            weights = np.take_along_axis(scores, ids, axis=-1)
            self.routing.append({"ids": ids, "unbiased": unbiased, "min_kept_choice": min_kept})
        elif method in ("greedy", "gready"):
            ids = top(scores, k)
            weights = np.take_along_axis(scores, ids, axis=-1)
            self.routing.append({"ids": ids})
        elif method == "group_limited_greedy":
            mask = group_mask(scores.reshape(-1, groups, experts // groups).max(axis=-1))
            masked = np.where(mask, scores, 0.0)
            ids = top(masked, k)
            weights = np.take_along_axis(masked, ids, axis=-1)
            self.routing.append({"ids": ids})
        else:
            raise ValueError(f"topk_method {method!r}")
        normalise = k > 1 and c.get("norm_topk_prob", False)
        if normalise:
            weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
        if self.v3 or not normalise:
            weights = weights * c["routed_scaling_factor"]
        return ids, weights

    def moe(self, x, prefix):
        ids, weights = self.route(x, prefix)
        out = np.zeros_like(x)
        for token in range(x.shape[0]):
            for e, g in zip(ids[token], weights[token]):
                out[token] += g * self.mlp(x[token : token + 1], f"{prefix}.experts.{e}")[0]
        if self.c.get("n_shared_experts"):
            out += self.mlp(x, f"{prefix}.shared_experts")
        return out

    def forward(self, ids, last_only=True):
        """Logits (float64) of the last position, or of every position."""
        c = self.c
        self.routing = []
        x = self.w["model.embed_tokens.weight"][np.asarray(ids)]
        positions = np.arange(len(ids), dtype=np.float64)
        eps = c["rms_norm_eps"]
        for layer in range(c["num_hidden_layers"]):
            p = f"model.layers.{layer}"
            x = x + self.attention(rms_norm(x, self.w[f"{p}.input_layernorm.weight"], eps), layer, positions)
            h = rms_norm(x, self.w[f"{p}.post_attention_layernorm.weight"], eps)
            sparse = (
                c.get("n_routed_experts") is not None
                and layer >= c.get("first_k_dense_replace", 0)
                and layer % c.get("moe_layer_freq", 1) == 0
            )
            x = x + (self.moe(h, f"{p}.mlp") if sparse else self.mlp(h, f"{p}.mlp"))
        x = rms_norm(x[-1:] if last_only else x, self.w["model.norm.weight"], eps)
        logits = x @ self.w["lm_head.weight"].T
        return logits[-1] if last_only else logits


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    config, weights = load(argv[0])
    model = Model(config, weights)
    ids = [int(a) for a in argv[1:]]
    out = []
    for _ in range(8):
        logits = model.forward(ids + out)
        out.append(int(np.argmax(logits)))
    print(" ".join(map(str, out)))


if __name__ == "__main__":
    main(sys.argv[1:])
