"""A float64 forward pass of SmolLM2-135M-Instruct's GGUF weights, for goldens.

The weights are dequantized by the `gguf` package (the reference reader of
the format, independent of deepwasm and of candle) and the Llama decoder is
computed in float64 numpy: RMSNorm, rotary embeddings in the interleaved
layout llama.cpp's converter leaves Llama's query and key weights in, GQA
causal attention, SwiGLU, tied output embedding. Activations are never
rounded, so this is the exact function the file's weights define; deepwasm's
CPU kernels keep activations in f32 and should agree to ~1e-3.

Writes tests/goldens/smollm2_f64.json: for each prompt (token ids), a
teacher-forced greedy continuation with, at every step, the reference's
best token, its margin over the second, and the 16 highest logits.

    python3 scripts/reference/smollm2-f64.py MODEL.gguf OUT.json
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

PROMPTS = [
    # "The capital of France is"
    [504, 3575, 282, 4649, 314],
    # "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n"
    [1, 4093, 198, 5820, 1296, 3003, 4683, 30, 2, 198, 1, 520, 9531, 198],
]
STEPS = 16
TOP = 16


def field(reader, key):
    f = reader.fields[key]
    return f.parts[f.data[0]][0]


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        self.tensors = {t.name: t for t in r.tensors}
        self.layers = int(field(r, "llama.block_count"))
        self.heads = int(field(r, "llama.attention.head_count"))
        self.kv_heads = int(field(r, "llama.attention.head_count_kv"))
        self.dim = int(field(r, "llama.embedding_length"))
        self.head_dim = self.dim // self.heads
        self.eps = float(field(r, "llama.attention.layer_norm_rms_epsilon"))
        theta = float(field(r, "llama.rope.freq_base"))
        self.inv_freq = 1.0 / theta ** (np.arange(0, self.head_dim, 2) / self.head_dim)
        self.cache = {}

    def w(self, name):
        if name not in self.cache:
            t = self.tensors[name]
            a = dequantize(t.data, t.tensor_type).astype(np.float64)
            self.cache[name] = a.reshape([int(x) for x in reversed(t.shape)])
        return self.cache[name]

    def rms(self, x, name):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * self.w(name)

    def rope(self, q, positions):
        # Interleaved pairs (2i, 2i + 1) rotate by position * inv_freq[i].
        ang = positions[:, None] * self.inv_freq[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        pairs = q.reshape(q.shape[0], q.shape[1], -1, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        return np.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(q.shape)

    def forward(self, ids, kv):
        """Logits after the last of `ids`, appending their keys/values to `kv`."""
        n, start = len(ids), (kv[0][0].shape[0] if kv else 0)
        positions = np.arange(start, start + n, dtype=np.float64)
        x = self.w("token_embd.weight")[ids]
        rep = self.heads // self.kv_heads
        for l in range(self.layers):
            p = f"blk.{l}."
            h = self.rms(x, p + "attn_norm.weight")
            q = (h @ self.w(p + "attn_q.weight").T).reshape(n, self.heads, self.head_dim)
            k = (h @ self.w(p + "attn_k.weight").T).reshape(n, self.kv_heads, self.head_dim)
            v = (h @ self.w(p + "attn_v.weight").T).reshape(n, self.kv_heads, self.head_dim)
            q, k = self.rope(q, positions), self.rope(k, positions)
            if len(kv) <= l:
                kv.append((k, v))
            else:
                kv[l] = (np.concatenate([kv[l][0], k]), np.concatenate([kv[l][1], v]))
            keys, values = kv[l]
            total = keys.shape[0]
            out = np.zeros((n, self.heads, self.head_dim))
            mask = np.triu(np.full((n, total), -np.inf), start + 1)
            for hh in range(self.heads):
                s = q[:, hh] @ keys[:, hh // rep].T / np.sqrt(self.head_dim) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                out[:, hh] = (s / s.sum(-1, keepdims=True)) @ values[:, hh // rep]
            x = x + out.reshape(n, -1) @ self.w(p + "attn_output.weight").T
            h = self.rms(x, p + "ffn_norm.weight")
            g = h @ self.w(p + "ffn_gate.weight").T
            u = h @ self.w(p + "ffn_up.weight").T
            x = x + ((g / (1 + np.exp(-g))) * u) @ self.w(p + "ffn_down.weight").T
        return self.rms(x[-1], "output_norm.weight") @ self.w("token_embd.weight").T


def main():
    model_path, out_path = sys.argv[1], sys.argv[2]
    model = Model(model_path)
    cases = []
    for prompt in PROMPTS:
        kv, feed, steps = [], list(prompt), []
        for _ in range(STEPS):
            logits = model.forward(np.array(feed), kv)
            order = np.argsort(-logits, kind="stable")
            best = int(order[0])
            steps.append({
                "token": best,
                "margin": float(logits[order[0]] - logits[order[1]]),
                "top_ids": [int(i) for i in order[:TOP]],
                "top_logits": [round(float(logits[i]), 6) for i in order[:TOP]],
            })
            feed = [best]
        cases.append({"prompt_ids": prompt, "steps": steps})
    import gguf
    with open(out_path, "w") as f:
        json.dump({
            "generator": "scripts/reference/smollm2-f64.py",
            "about": "float64 numpy forward pass of the GGUF's dequantized weights (gguf package); "
                     "each step feeds the reference's own best token",
            "gguf_version": getattr(gguf, "__version__", "unknown"),
            "numpy_version": np.__version__,
            "cases": cases,
        }, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
