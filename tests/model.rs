use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use deepwasm_model::{CausalLm, LoadOptions, ModelError, SeqInput, load};
use serde_json::Value;

use crate::util::{default_model_path, fixture};

fn goldens() -> Value {
    let text = std::fs::read_to_string(fixture("tiny-llama-family.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f32_opts() -> LoadOptions {
    LoadOptions {
        device: Device::Cpu,
        dtype: Some(DType::F32),
        ..LoadOptions::default()
    }
}

fn logits(model: &dyn CausalLm, tokens: &[u32], cache: &mut deepwasm_model::KvCache) -> Vec<f32> {
    let out = model
        .forward(&mut [SeqInput {
            adapter: None,
            tokens,
            cache,
        }])
        .unwrap();
    out.squeeze(0).unwrap().to_vec1().unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// Prefill logits and greedy continuations of the tiny Hugging Face
/// checkpoints (f32 Llama with llama3 rope scaling and GQA; sharded bf16
/// Qwen2 with query/key/value biases and tied embeddings) against an
/// independent float64 implementation.
#[test]
fn tiny_hf_checkpoints_match_the_reference() {
    let g = goldens();
    for (name, spec) in g["models"].as_object().unwrap() {
        let m = load(&fixture(spec["dir"].as_str().unwrap()), &f32_opts()).unwrap();
        for case in spec["cases"].as_array().unwrap() {
            let prompt = ids(&case["ids"]);
            let want: Vec<f64> = case["last_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let mut cache = m.model.new_cache();
            let got = logits(m.model.as_ref(), &prompt, &mut cache);
            let diff = max_abs_diff(&got, &want);
            assert!(
                diff < 1e-4,
                "{name} {}: prefill logits differ by {diff}",
                case["name"]
            );

            // Greedy decode, one token per step through the cache.
            let mut next = argmax(&got);
            let mut greedy = vec![next];
            for _ in 1..ids(&case["greedy"]).len() {
                next = argmax(&logits(m.model.as_ref(), &[next], &mut cache));
                greedy.push(next);
            }
            assert_eq!(greedy, ids(&case["greedy"]), "{name} {}", case["name"]);
        }
    }
}

/// Decoding through the cache gives the logits a fresh prefill of the whole
/// sequence gives, and sequences batched together give what they give alone.
#[test]
fn cached_decode_and_batching_agree_with_prefill() {
    let m = load(&fixture("tiny-llama"), &f32_opts()).unwrap();
    let model = m.model.as_ref();
    let seq: Vec<u32> = (0..24).map(|i| (i * 37 % 350) as u32).collect();

    let mut full = model.new_cache();
    let whole = logits(model, &seq, &mut full);

    let mut cache = model.new_cache();
    logits(model, &seq[..10], &mut cache);
    for &t in &seq[10..23] {
        logits(model, &[t], &mut cache);
    }
    let step = logits(model, &seq[23..], &mut cache);
    let diff = whole
        .iter()
        .zip(&step)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "cached decode differs from prefill by {diff}");
    assert_eq!(cache.len(), 24);

    // Two sequences of different lengths and positions in one forward pass.
    let mut a = model.new_cache();
    let mut b = model.new_cache();
    logits(model, &seq[..5], &mut a);
    let alone_a = logits(model, &seq[5..8], &mut a.clone());
    let alone_b = logits(model, &seq[..11], &mut b.clone());
    let both = model
        .forward(&mut [
            SeqInput {
                adapter: None,
                tokens: &seq[5..8],
                cache: &mut a,
            },
            SeqInput {
                adapter: None,
                tokens: &seq[..11],
                cache: &mut b,
            },
        ])
        .unwrap();
    let both: Vec<Vec<f32>> = both.to_vec2().unwrap();
    for (alone, batched) in [(&alone_a, &both[0]), (&alone_b, &both[1])] {
        let diff = alone
            .iter()
            .zip(batched)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "batched logits differ by {diff}");
    }
    assert_eq!((a.len(), b.len()), (8, 11));
}

/// Copy a fixture directory to a temporary one the test may break.
fn scratch_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn rewrite_weights(dir: &std::path::Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    f(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = scratch_copy("tiny-llama");
    rewrite_weights(dir.path(), |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    let err = load(dir.path(), &f32_opts()).unwrap_err();
    assert!(
        matches!(err, ModelError::MissingTensor { ref name, .. } if name == "model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_with_both_shapes() {
    let dir = scratch_copy("tiny-llama");
    rewrite_weights(dir.path(), |t| {
        t.insert(
            "model.norm.weight".into(),
            Tensor::ones(63, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load(dir.path(), &f32_opts()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("model.norm.weight") && msg.contains("[63]") && msg.contains("[64]"),
        "{msg}"
    );
}

#[test]
fn an_unknown_architecture_is_refused_with_the_supported_list() {
    let dir = scratch_copy("tiny-llama");
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(&config, text).unwrap();
    let err = load(dir.path(), &f32_opts()).unwrap_err();
    assert!(
        matches!(err, ModelError::UnknownArchitecture { ref found, .. } if found == "gpt_neox"),
        "{err}"
    );
    assert!(err.to_string().contains("llama"), "{err}");
}

#[test]
fn truncated_checkpoints_are_refused() {
    let dir = scratch_copy("tiny-llama");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(dir.path(), &f32_opts()).unwrap_err();
    assert!(err.to_string().contains("safetensors"), "{err}");

    let gguf = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    let bytes = std::fs::read(default_model_path()).unwrap();
    std::fs::write(gguf.path(), &bytes[..bytes.len() - 4096]).unwrap();
    let err = load(gguf.path(), &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bytes") || msg.contains("remaining"), "{msg}");
}

#[test]
fn a_directory_without_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path(), &f32_opts()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
}
