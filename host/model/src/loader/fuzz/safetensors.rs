//! Hugging Face directories: `.safetensors` files with any bytes, any
//! header length, tensor entries with any type, shape and offsets, a real
//! checkpoint cut short or overwritten, and `config.json` files with any
//! numbers in them.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Value, json};

use super::{apply, config, edits, interesting_u64, load_checked};

/// The tiny Llama checkpoint the integration tests check against a
/// reference: two layers, hidden size 64, 358 tokens.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama")
}

fn fixture_file(name: &str) -> Vec<u8> {
    std::fs::read(fixture().join(name)).unwrap()
}

/// A directory with the fixture's tokenizer, `config` as config.json and
/// `weights` as model.safetensors.
fn checkpoint(config: &[u8], weights: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture().join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
    dir
}

/// A checkpoint directory with the fixture's config and `weights`.
fn with_weights(weights: &[u8]) -> tempfile::TempDir {
    checkpoint(&fixture_file("config.json"), weights)
}

/// A checkpoint directory with the fixture's weights and `config`.
fn with_config(config: &Value) -> tempfile::TempDir {
    checkpoint(
        config.to_string().as_bytes(),
        &fixture_file("model.safetensors"),
    )
}

/// The fixture's safetensors header (JSON) and its data.
fn fixture_parts() -> (serde_json::Map<String, Value>, Vec<u8>) {
    let bytes = fixture_file("model.safetensors");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// A safetensors file from a header length, a header and data.
fn safetensors(n: u64, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = n.to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    out
}

/// What a header field may say: numbers of every size, negative and
/// fractional numbers, and values of other types.
fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => interesting_u64().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => select(vec![0.0, 0.5, -1.0, 1e300]).prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(Value::from("64")),
    ]
}

fn dtype() -> impl Strategy<Value = Value> {
    select(vec![
        "F32", "F16", "BF16", "F64", "F8_E4M3", "I64", "I32", "U8", "BOOL", "F4", "Q4_0", "",
    ])
    .prop_map(Value::from)
}

/// One change to a tensor's entry in the header.
#[derive(Clone, Debug)]
enum EntryEdit {
    Dtype(Value),
    Shape(Vec<Value>),
    Offsets(Vec<Value>),
    /// Another entry over the same bytes.
    Overlap(String),
    Remove,
}

fn entry_edit() -> impl Strategy<Value = EntryEdit> {
    prop_oneof![
        dtype().prop_map(EntryEdit::Dtype),
        prop::collection::vec(json_number(), 0..5).prop_map(EntryEdit::Shape),
        prop::collection::vec(json_number(), 0..4).prop_map(EntryEdit::Offsets),
        select(vec!["model.norm.weight", "extra", "__metadata__"])
            .prop_map(|name| EntryEdit::Overlap(name.to_owned())),
        Just(EntryEdit::Remove),
    ]
}

/// The numbers of config.json, by path.
const CONFIG_NUMBERS: &[&str] = &[
    "/hidden_size",
    "/intermediate_size",
    "/num_hidden_layers",
    "/num_attention_heads",
    "/num_key_value_heads",
    "/head_dim",
    "/vocab_size",
    "/rms_norm_eps",
    "/rope_theta",
    "/max_position_embeddings",
    "/rope_scaling/factor",
    "/rope_scaling/low_freq_factor",
    "/rope_scaling/high_freq_factor",
    "/rope_scaling/original_max_position_embeddings",
];

/// A DeepSeek-V3 configuration with any sizes over the fixture's
/// weights (a Llama's: the embedding fits, the layers do not): what the
/// loader does with the sizes before it meets a missing tensor.
fn deepseek_config() -> impl Strategy<Value = Value> {
    let size = || prop_oneof![3 => 0u64..=8, 1 => interesting_u64()];
    let sizes = prop::collection::vec(size(), 16);
    (sizes, prop::option::of(size()), any::<bool>()).prop_map(|(s, q_lora_rank, tied)| {
        json!({
            "model_type": "deepseek_v3",
            "vocab_size": 358,
            "hidden_size": if s[0] < 4 { 64 } else { s[0] },
            "intermediate_size": s[1],
            "moe_intermediate_size": s[2],
            "num_hidden_layers": s[3],
            "num_attention_heads": s[4],
            "q_lora_rank": q_lora_rank,
            "kv_lora_rank": s[5],
            "qk_nope_head_dim": s[6],
            "qk_rope_head_dim": s[7],
            "v_head_dim": s[8],
            "n_routed_experts": s[9],
            "n_shared_experts": s[10],
            "num_experts_per_tok": s[11],
            "n_group": s[12],
            "topk_group": s[13],
            "first_k_dense_replace": s[14],
            "moe_layer_freq": s[15],
            "tie_word_embeddings": tied,
        })
    })
}

#[test]
fn the_fixture_loads() {
    let dir = with_weights(&fixture_file("model.safetensors"));
    let loaded = crate::load(dir.path(), &crate::LoadOptions::default()).unwrap();
    assert_eq!(loaded.model.info().vocab_size, 358);
}

/// Load the fixture's weights under `config`, which must be refused with
/// a message containing `expected`.
fn refused(config: &Value, expected: &str) {
    let dir = with_config(config);
    let (result, largest) =
        super::watching(|| crate::load(dir.path(), &crate::LoadOptions::default()));
    let err = result.expect_err("refused");
    assert!(err.to_string().contains(expected), "{err}");
    assert!(largest <= super::MAX_ALLOCATION, "{largest} bytes at once");
}

#[test]
fn llama_sizes_are_checked_before_use() {
    let fixture: Value = serde_json::from_slice(&fixture_file("config.json")).unwrap();
    for (key, value, expected) in [
        // A vector was sized by the layer count: 2^62 layers asked for
        // exabytes before the first missing layer was noticed.
        ("num_hidden_layers", json!(1u64 << 62), "too many to count"),
        (
            "num_hidden_layers",
            json!(1u64 << 40),
            "`model.layers.2.input_layernorm.weight` is missing",
        ),
        // Divided by.
        (
            "num_attention_heads",
            json!(0),
            "`num_attention_heads` is 0",
        ),
        (
            "num_key_value_heads",
            json!(0),
            "`num_key_value_heads` is 0",
        ),
        ("head_dim", json!(0), "the head dimension is 0"),
        ("hidden_size", json!(0), "`hidden_size` is 0"),
        ("head_dim", json!(1u64 << 62), "too many to count"),
    ] {
        let mut config = fixture.clone();
        config[key] = value;
        refused(&config, expected);
    }
}

#[test]
fn deepseek_sizes_are_checked_before_use() {
    let config = |heads: u64, layers: u64| {
        json!({
            "model_type": "deepseek_v3",
            "vocab_size": 358,
            "hidden_size": 64,
            "intermediate_size": 8,
            "moe_intermediate_size": 8,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "q_lora_rank": null,
            "kv_lora_rank": 4,
            "qk_nope_head_dim": 4,
            "qk_rope_head_dim": 4,
            "v_head_dim": 4,
        })
    };
    // heads × (nope + rope) overflowed while naming the query's shape.
    refused(&config(1 << 62, 1), "too many to count");
    refused(&config(0, 1), "`num_attention_heads` is 0");
    refused(&config(1, 0), "`num_hidden_layers` is 0");
    // The fixture's Llama layers do not fit: the first is named.
    refused(
        &config(1, 1 << 40),
        "`model.layers.0.self_attn.q_proj.weight`",
    );
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let dir = with_weights(&bytes);
        prop_assert!(!load_checked(dir.path())?);
    }

    #[test]
    fn any_header_length(
        n in interesting_u64(),
        real_header in any::<bool>(),
        data in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let header = if real_header {
            serde_json::to_vec(&fixture_parts().0).unwrap()
        } else {
            br#"{"model.norm.weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}"#
                .to_vec()
        };
        let dir = with_weights(&safetensors(n, &header, &data));
        prop_assert!(!load_checked(dir.path())?);
    }

    #[test]
    fn any_tensor_entry(
        changes in prop::collection::vec((any::<Index>(), entry_edit()), 1..4),
        extra_data in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let (mut header, mut data) = fixture_parts();
        let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
        for (at, change) in changes {
            let name = &names[at.index(names.len())];
            match change {
                EntryEdit::Remove => {
                    header.remove(name);
                }
                EntryEdit::Overlap(other) => {
                    let entry = header.get(name).cloned().unwrap_or(Value::Null);
                    header.insert(other, entry);
                }
                change => {
                    let Some(Value::Object(entry)) = header.get_mut(name) else {
                        continue;
                    };
                    let (field, value) = match change {
                        EntryEdit::Dtype(v) => ("dtype", v),
                        EntryEdit::Shape(v) => ("shape", Value::Array(v)),
                        EntryEdit::Offsets(v) => ("data_offsets", Value::Array(v)),
                        _ => unreachable!(),
                    };
                    entry.insert(field.to_owned(), value);
                }
            }
        }
        data.extend(extra_data);
        let header = serde_json::to_vec(&header).unwrap();
        let dir = with_weights(&safetensors(header.len() as u64, &header, &data));
        load_checked(dir.path())?;
    }

    #[test]
    fn a_checkpoint_cut_short_or_overwritten(edits in edits()) {
        let mut bytes = fixture_file("model.safetensors");
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        apply(&mut bytes, header, &edits);
        let dir = with_weights(&bytes);
        load_checked(dir.path())?;
    }

    #[test]
    fn any_number_in_the_config(
        changes in prop::collection::vec((select(CONFIG_NUMBERS), json_number()), 1..3),
    ) {
        let mut config: Value = serde_json::from_slice(&fixture_file("config.json")).unwrap();
        for (path, value) in changes {
            *config.pointer_mut(path).unwrap() = value;
        }
        let dir = with_config(&config);
        load_checked(dir.path())?;
    }

    #[test]
    fn any_sizes_in_a_deepseek_config(config in deepseek_config()) {
        let dir = with_config(&config);
        load_checked(dir.path())?;
    }
}
