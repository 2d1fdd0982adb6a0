//! The checkpoints the GPU check writes: DeepSeek-R1-Distill-Qwen-1.5B's
//! and DeepSeek-V2-Lite's shapes from their public config.json files (or
//! tiny widths of the same architectures), and a tiny DeepSeek-V3 in the
//! configuration of `scripts/setup`'s fixture, with or without FP8 weights.

use serde_json::json;

use super::checkpoint::{BOS, EOS, FP8_BLOCK, Spec, TensorSpec};

/// Standard deviation of the throughput checkpoints' random weights:
/// Hugging Face's `initializer_range` for both models. Small enough that
/// activations stay finite through 28 random layers, large enough that
/// logits differ.
pub const STD: f32 = 0.02;

/// How large to make a checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Tiny widths (hidden 64 to 96, vocabulary 1,024), for a CI run on a
    /// few CPU cores; otherwise the model's own widths.
    pub tiny: bool,
    /// Decoder layers; `None`: the model's own depth.
    pub layers: Option<usize>,
}

/// The shapes of deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (its public
/// config.json: Qwen2, hidden 1536, 28 layers, 12 query heads sharing 2
/// key/value heads, biases on the query, key and value projections).
pub fn r1_distill_qwen_1_5b(size: Size) -> Spec {
    let (d, inter, heads, kv_heads, vocab, depth) = if size.tiny {
        (96, 256, 6, 1, 1024, 2)
    } else {
        (1536, 8960, 12, 2, 151_936, 28)
    };
    let layers = size.layers.unwrap_or(depth);
    let hd = d / heads;
    let config = json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": d,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "vocab_size": vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 131_072,
        "use_sliding_window": false,
        "tie_word_embeddings": false,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "initializer_range": STD,
    });
    let mut shards = vec![vec![TensorSpec::random(
        "model.embed_tokens.weight".into(),
        &[vocab, d],
    )]];
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let mut t = vec![
            TensorSpec::ones(p("input_layernorm.weight"), d),
            TensorSpec::ones(p("post_attention_layernorm.weight"), d),
        ];
        for (proj, out) in [
            ("q", heads * hd),
            ("k", kv_heads * hd),
            ("v", kv_heads * hd),
        ] {
            t.push(TensorSpec::random(
                p(&format!("self_attn.{proj}_proj.weight")),
                &[out, d],
            ));
            t.push(TensorSpec::random(
                p(&format!("self_attn.{proj}_proj.bias")),
                &[out],
            ));
        }
        t.push(TensorSpec::random(
            p("self_attn.o_proj.weight"),
            &[d, heads * hd],
        ));
        t.extend(mlp(&p("mlp"), d, inter));
        shards.push(t);
    }
    shards.push(vec![
        TensorSpec::ones("model.norm.weight".into(), d),
        TensorSpec::random("lm_head.weight".into(), &[vocab, d]),
    ]);
    Spec {
        name: "R1-Distill-Qwen-1.5B shape",
        source: "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        config,
        shards,
    }
}

/// The shapes of deepseek-ai/DeepSeek-V2-Lite (its public config.json:
/// multi-head latent attention with a 512-rank latent and no query
/// bottleneck, 64 routed experts of which 6 per token plus 2 shared, the
/// first layer dense, YaRN rotary scaling by 40).
pub fn deepseek_v2_lite(size: Size) -> Spec {
    struct Dims {
        d: usize,
        inter: usize,
        moe_inter: usize,
        heads: usize,
        rank: usize,
        nope: usize,
        rope: usize,
        v: usize,
        experts: usize,
        shared: usize,
        per_token: usize,
        vocab: usize,
        depth: usize,
    }
    let n = if size.tiny {
        Dims {
            d: 64,
            inter: 128,
            moe_inter: 32,
            heads: 4,
            rank: 32,
            nope: 16,
            rope: 8,
            v: 16,
            experts: 8,
            shared: 2,
            per_token: 2,
            vocab: 1024,
            depth: 2,
        }
    } else {
        Dims {
            d: 2048,
            inter: 10_944,
            moe_inter: 1408,
            heads: 16,
            rank: 512,
            nope: 128,
            rope: 64,
            v: 128,
            experts: 64,
            shared: 2,
            per_token: 6,
            vocab: 102_400,
            depth: 27,
        }
    };
    let layers = size.layers.unwrap_or(n.depth);
    let first_dense = 1;
    let config = json!({
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "hidden_size": n.d,
        "intermediate_size": n.inter,
        "moe_intermediate_size": n.moe_inter,
        "num_hidden_layers": layers,
        "num_attention_heads": n.heads,
        "num_key_value_heads": n.heads,
        "q_lora_rank": null,
        "kv_lora_rank": n.rank,
        "qk_nope_head_dim": n.nope,
        "qk_rope_head_dim": n.rope,
        "v_head_dim": n.v,
        "n_routed_experts": n.experts,
        "n_shared_experts": n.shared,
        "num_experts_per_tok": n.per_token,
        "n_group": 1,
        "topk_group": 1,
        "topk_method": "greedy",
        "scoring_func": "softmax",
        "norm_topk_prob": false,
        "routed_scaling_factor": 1.0,
        "first_k_dense_replace": first_dense,
        "moe_layer_freq": 1,
        "hidden_act": "silu",
        "vocab_size": n.vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000,
        "rope_scaling": {
            "type": "yarn",
            "factor": 40,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 0.707,
            "mscale_all_dim": 0.707
        },
        "max_position_embeddings": 163_840,
        "tie_word_embeddings": false,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "initializer_range": STD,
    });
    let mut shards = vec![vec![TensorSpec::random(
        "model.embed_tokens.weight".into(),
        &[n.vocab, n.d],
    )]];
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let mut t = vec![
            TensorSpec::ones(p("input_layernorm.weight"), n.d),
            TensorSpec::ones(p("post_attention_layernorm.weight"), n.d),
            TensorSpec::random(
                p("self_attn.q_proj.weight"),
                &[n.heads * (n.nope + n.rope), n.d],
            ),
            TensorSpec::random(
                p("self_attn.kv_a_proj_with_mqa.weight"),
                &[n.rank + n.rope, n.d],
            ),
            TensorSpec::ones(p("self_attn.kv_a_layernorm.weight"), n.rank),
            TensorSpec::random(
                p("self_attn.kv_b_proj.weight"),
                &[n.heads * (n.nope + n.v), n.rank],
            ),
            TensorSpec::random(p("self_attn.o_proj.weight"), &[n.d, n.heads * n.v]),
        ];
        if i < first_dense {
            t.extend(mlp(&p("mlp"), n.d, n.inter));
        } else {
            t.push(TensorSpec::random(p("mlp.gate.weight"), &[n.experts, n.d]));
            for e in 0..n.experts {
                t.extend(mlp(&p(&format!("mlp.experts.{e}")), n.d, n.moe_inter));
            }
            t.extend(mlp(&p("mlp.shared_experts"), n.d, n.moe_inter * n.shared));
        }
        shards.push(t);
    }
    shards.push(vec![
        TensorSpec::ones("model.norm.weight".into(), n.d),
        TensorSpec::random("lm_head.weight".into(), &[n.vocab, n.d]),
    ]);
    Spec {
        name: "DeepSeek-V2-Lite shape",
        source: "deepseek-ai/DeepSeek-V2-Lite",
        config,
        shards,
    }
}

/// A tiny DeepSeek-V3 in the configuration of `scripts/setup`'s
/// `tiny-deepseek-v3` fixture (queries through a rank-48 bottleneck, 16
/// experts in 4 groups routed by sigmoid scores with a correction bias, 4
/// per token from the best 2 groups, one shared expert, 3 layers), with a
/// vocabulary of 1,024. With `fp8`, the decoder layers' projections are
/// stored as DeepSeek-V3 ships them: float8 e4m3 with one f32 scale per
/// 128×128 block, and a dense MLP 320 wide so that it spans several blocks.
pub fn deepseek_v3(fp8: bool) -> Spec {
    let (d, heads, q_rank, rank, nope, rope, v) = (64, 4, 48, 32, 16, 8, 16);
    let (inter, moe_inter, experts, layers, vocab) = (if fp8 { 320 } else { 128 }, 32, 16, 3, 1024);
    let mut config = json!({
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "hidden_size": d,
        "intermediate_size": inter,
        "moe_intermediate_size": moe_inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "q_lora_rank": q_rank,
        "kv_lora_rank": rank,
        "qk_nope_head_dim": nope,
        "qk_rope_head_dim": rope,
        "v_head_dim": v,
        "n_routed_experts": experts,
        "n_shared_experts": 1,
        "num_experts_per_tok": 4,
        "n_group": 4,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": true,
        "routed_scaling_factor": 2.5,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "hidden_act": "silu",
        "vocab_size": vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000,
        "rope_scaling": {
            "type": "yarn",
            "factor": 40,
            "original_max_position_embeddings": 64,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0
        },
        "max_position_embeddings": 2560,
        "tie_word_embeddings": false,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "initializer_range": STD,
    });
    if fp8 {
        config["quantization_config"] = json!({
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
        });
    }
    let mut shards = vec![vec![TensorSpec::random(
        "model.embed_tokens.weight".into(),
        &[vocab, d],
    )]];
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let mut t = vec![
            TensorSpec::ones(p("input_layernorm.weight"), d),
            TensorSpec::ones(p("post_attention_layernorm.weight"), d),
            TensorSpec::random(p("self_attn.q_a_proj.weight"), &[q_rank, d]),
            TensorSpec::ones(p("self_attn.q_a_layernorm.weight"), q_rank),
            TensorSpec::random(
                p("self_attn.q_b_proj.weight"),
                &[heads * (nope + rope), q_rank],
            ),
            TensorSpec::random(p("self_attn.kv_a_proj_with_mqa.weight"), &[rank + rope, d]),
            TensorSpec::ones(p("self_attn.kv_a_layernorm.weight"), rank),
            TensorSpec::random(p("self_attn.kv_b_proj.weight"), &[heads * (nope + v), rank]),
            TensorSpec::random(p("self_attn.o_proj.weight"), &[d, heads * v]),
        ];
        if i == 0 {
            t.extend(mlp(&p("mlp"), d, inter));
        } else {
            t.push(TensorSpec::random(p("mlp.gate.weight"), &[experts, d]));
            t.push(TensorSpec::random(
                p("mlp.gate.e_score_correction_bias"),
                &[experts],
            ));
            for e in 0..experts {
                t.extend(mlp(&p(&format!("mlp.experts.{e}")), d, moe_inter));
            }
            t.extend(mlp(&p("mlp.shared_experts"), d, moe_inter));
        }
        if fp8 {
            t = t.into_iter().flat_map(TensorSpec::into_fp8).collect();
        }
        shards.push(t);
    }
    shards.push(vec![
        TensorSpec::ones("model.norm.weight".into(), d),
        TensorSpec::random("lm_head.weight".into(), &[vocab, d]),
    ]);
    Spec {
        name: if fp8 {
            "tiny DeepSeek-V3, FP8 (generated)"
        } else {
            "tiny DeepSeek-V3 (generated)"
        },
        source: "deepseek-ai/DeepSeek-V3 (architecture)",
        config,
        shards,
    }
}

/// A gated MLP's three projections under `prefix`.
fn mlp(prefix: &str, d: usize, width: usize) -> [TensorSpec; 3] {
    [
        TensorSpec::random(format!("{prefix}.gate_proj.weight"), &[width, d]),
        TensorSpec::random(format!("{prefix}.up_proj.weight"), &[width, d]),
        TensorSpec::random(format!("{prefix}.down_proj.weight"), &[d, width]),
    ]
}
