use std::path::PathBuf;

use candle_core::{DType, Device};
use deepwasm_model::deepseek::{DeepSeekConfig, MlaCache};
use deepwasm_model::{CausalLm, KvCache, LoadOptions, LoadedModel, SeqInput, load};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::util::{fixture, models_dir};

const MODELS: [&str; 4] = [
    "tiny-deepseek-v3",
    "tiny-deepseek-v3-fp8",
    "tiny-deepseek-v2-lite",
    "tiny-deepseek-v2-group",
];

fn goldens(model: &str) -> Value {
    let text =
        std::fs::read_to_string(fixture(&format!("../goldens/deepseek/{model}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The generated checkpoint, checked to be the one the goldens were made from.
fn checkpoint(model: &str, g: &Value) -> PathBuf {
    let dir = models_dir().parent().unwrap().join("fixtures").join(model);
    for (file, want) in g["checkpoint"]["files"].as_object().unwrap() {
        let path = dir.join(file);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|_| panic!("{} is missing: run scripts/setup", path.display()));
        let got = hex::encode(Sha256::digest(&bytes));
        assert_eq!(
            &got,
            want,
            "{} differs from the file the goldens were made from",
            path.display()
        );
    }
    dir
}

fn load_as(dir: &std::path::Path, mla_cache: MlaCache) -> LoadedModel {
    load(
        dir,
        &LoadOptions {
            device: Device::Cpu,
            dtype: Some(DType::F32),
            mla_cache,
        },
    )
    .unwrap()
}

fn step(model: &dyn CausalLm, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
    model
        .forward(&mut [SeqInput {
            adapter: None,
            tokens,
            cache,
        }])
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn log_sum_exp(v: &[f32]) -> f64 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln()
}

/// The largest difference between `logits` and a golden summary (its top
/// 32, its fixed ids, its log-sum-exp); the argmax must be the golden's.
fn compare(logits: &[f32], want: &Value, fixed_ids: &[u32], what: &str) -> f64 {
    let mut worst = 0f64;
    for (id, l) in u32s(&want["top_ids"]).iter().zip(f64s(&want["top_logits"])) {
        worst = worst.max((logits[*id as usize] as f64 - l).abs());
    }
    for (id, l) in fixed_ids.iter().zip(f64s(&want["fixed_logits"])) {
        worst = worst.max((logits[*id as usize] as f64 - l).abs());
    }
    worst = worst.max((log_sum_exp(logits) - want["logsumexp"].as_f64().unwrap()).abs());
    assert_eq!(
        deepwasm_plugins::argmax(logits).token as u64,
        want["next"].as_u64().unwrap(),
        "{what}: argmax"
    );
    worst
}

/// Prefill logits, every decode step through the cache, and the greedy
/// continuation of each tiny checkpoint match mlx-lm's deepseek_v3 /
/// deepseek_v2 (and a float64 port of the modeling file) within 1e-4, with
/// the cache in both forms.
#[test]
fn tiny_deepseek_checkpoints_match_the_reference() {
    for model in MODELS {
        let g = goldens(model);
        let dir = checkpoint(model, &g);
        let fixed = u32s(&g["fixed_ids"]);
        for mode in [MlaCache::Latent, MlaCache::Expanded] {
            let m = load_as(&dir, mode);
            let lm = m.model.as_ref();
            let mut worst = 0f64;
            for case in g["cases"].as_array().unwrap() {
                let what = format!("{model} {mode:?} {}", case["name"]);
                let mut cache = lm.new_cache();
                let logits = step(lm, &u32s(&case["prompt_ids"]), &mut cache);
                worst = worst.max(compare(&logits, &case["prefill"], &fixed, &what));
                let mut greedy = vec![deepwasm_plugins::argmax(&logits).token];
                for (i, s) in case["decode"].as_array().unwrap().iter().enumerate() {
                    let input = s["input"].as_u64().unwrap() as u32;
                    assert_eq!(
                        cache.len() as u64,
                        s["position"].as_u64().unwrap(),
                        "{what}"
                    );
                    let logits = step(lm, &[input], &mut cache);
                    worst = worst.max(compare(&logits, s, &fixed, &format!("{what} step {i}")));
                    greedy.push(deepwasm_plugins::argmax(&logits).token);
                }
                assert_eq!(greedy, u32s(&case["greedy"]), "{what}");
            }
            assert!(
                worst < 1e-4,
                "{model} {mode:?}: logits differ from mlx-lm by up to {worst}"
            );
        }
    }
}

/// The latent cache with absorbed projections computes what the expanded
/// cache computes, on a longer sequence than the goldens (prefill then
/// decode, so both cache paths are exercised).
#[test]
fn the_latent_cache_gives_the_logits_of_the_expanded_one() {
    let g = goldens("tiny-deepseek-v3");
    let dir = checkpoint("tiny-deepseek-v3", &g);
    let latent = load_as(&dir, MlaCache::Latent);
    let expanded = load_as(&dir, MlaCache::Expanded);
    let seq: Vec<u32> = (0..40).map(|i| (i * 3119 + 7) % 128_000).collect();
    let (mut a, mut b) = (latent.model.new_cache(), expanded.model.new_cache());
    let mut worst = 0f32;
    let mut check = |x: Vec<f32>, y: Vec<f32>| {
        worst = worst.max(
            x.iter()
                .zip(&y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max),
        );
    };
    check(
        step(latent.model.as_ref(), &seq[..25], &mut a),
        step(expanded.model.as_ref(), &seq[..25], &mut b),
    );
    for &t in &seq[25..] {
        check(
            step(latent.model.as_ref(), &[t], &mut a),
            step(expanded.model.as_ref(), &[t], &mut b),
        );
    }
    assert!(worst < 1e-4, "latent and expanded caches differ by {worst}");

    // What each cache holds per token, measured: the latent (32) and rotary
    // key (8) per layer against 4 heads × (16 + 8 + 16) per layer.
    let per_token = |c: &KvCache| c.pool().bytes_per_token();
    assert_eq!(per_token(&a), 3 * (32 + 8) * 4);
    assert_eq!(per_token(&b), 3 * 4 * (16 + 8 + 16) * 4);
    assert_eq!(latent.model.info().kv_bytes_per_token, per_token(&a));
    assert_eq!(expanded.model.info().kv_bytes_per_token, per_token(&b));
}

/// On paper, at DeepSeek-V3's full shape in bf16: 61 layers × (512 + 64)
/// numbers per token in the latent cache, against 61 × 128 heads ×
/// (128 + 64 + 128) expanded: 70,272 bytes per token instead of 4,997,120.
#[test]
fn the_latent_cache_of_deepseek_v3_is_71_times_smaller() {
    let cfg: DeepSeekConfig = serde_json::from_value(serde_json::json!({
        "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168,
        "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
        "num_attention_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128
    }))
    .unwrap();
    let latent = cfg.kv_bytes_per_token(MlaCache::Latent, 2);
    let expanded = cfg.kv_bytes_per_token(MlaCache::Expanded, 2);
    assert_eq!((latent, expanded), (70_272, 4_997_120));
    assert_eq!(expanded / latent, 71);
}

/// V3's multi-token-prediction layer ships in the checkpoint but is not part
/// of generation: the model loads without it and ignores it.
#[test]
fn the_multi_token_prediction_layer_is_skipped() {
    let g = goldens("tiny-deepseek-v3");
    let dir = checkpoint("tiny-deepseek-v3", &g);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_nextn_predict_layers"], 1);
    let m = load_as(&dir, MlaCache::Latent);
    assert_eq!(
        m.model.info().layers,
        config["num_hidden_layers"].as_u64().unwrap() as usize
    );
}

/// `deepwasm generate` runs a DeepSeek checkpoint like any other model, with
/// its chat template (the R1 one) under `--chat`.
#[test]
fn generate_runs_deepseek_checkpoints_with_the_r1_template() {
    let g = goldens("tiny-deepseek-v3");
    let dir = checkpoint("tiny-deepseek-v3", &g);
    let o = std::process::Command::new(crate::util::deepwasm_bin())
        .arg("generate")
        .arg("--model")
        .arg(&dir)
        .args([
            "--chat",
            "--prompt",
            "What is 2+2?",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
        ])
        .args(["--ignore-eos", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 4);
    let tokenizer = deepwasm_model::Tokenizer::from_hf_dir(&dir).unwrap();
    let prompt = u32s(&v["prompt_tokens"]);
    let user = tokenizer.token_id("<｜User｜>").unwrap();
    let assistant = tokenizer.token_id("<｜Assistant｜>").unwrap();
    assert_eq!(
        prompt[0],
        tokenizer.bos().unwrap(),
        "the template writes BOS"
    );
    assert!(prompt.contains(&user), "{prompt:?}");
    assert_eq!(
        *prompt.last().unwrap(),
        assistant,
        "the prompt opens the assistant's turn"
    );
}

/// `--dtype` picks the weights' and activations' dtype: bf16 (the GPU's
/// default) runs the whole DeepSeek model on the CPU too, close to f32.
#[test]
fn generate_takes_a_dtype() {
    let g = goldens("tiny-deepseek-v3");
    let dir = checkpoint("tiny-deepseek-v3", &g);
    let run = |dtype: &str| {
        let o = std::process::Command::new(crate::util::deepwasm_bin())
            .arg("generate")
            .arg("--model")
            .arg(&dir)
            .args(["--dtype", dtype, "--prompt", "What is 2+2?"])
            .args([
                "--max-tokens",
                "4",
                "--temperature",
                "0",
                "--ignore-eos",
                "--json",
            ])
            .output()
            .unwrap();
        (
            o.status.success(),
            o.stdout,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let mut tokens = Vec::new();
    for dtype in ["f32", "bf16", "f16"] {
        let (ok, out, err) = run(dtype);
        assert!(ok, "{dtype}: {err}");
        let v: Value = serde_json::from_slice(&out).unwrap();
        tokens.push(u32s(&v["tokens"]));
    }
    assert!(tokens.iter().all(|t| t.len() == 4), "{tokens:?}");
    let (ok, _, err) = run("f8");
    assert!(!ok && err.contains("f8") && err.contains("bf16"), "{err}");
}
