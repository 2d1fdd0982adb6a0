//! GGUF files: any bytes, any header counts, any string and array lengths,
//! any metadata value, any tensor shape, type and offset, and a real small
//! model cut short or overwritten.

use proptest::prelude::*;
use proptest::sample::{Index, select};

use super::{apply, config, edits, interesting_u64, load_checked};

/// GGUF metadata value types, by their ids in the file.
mod ty {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// ggml tensor types, by their ids in the file.
const F32: u32 = 0;
const Q8_0: u32 = 8;

/// A metadata value as the file spells it.
#[derive(Clone, Debug)]
pub(super) enum Meta {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    /// A bool's byte, which may be neither 0 nor 1.
    Bool(u8),
    Str(String),
    /// Items of one type.
    Array(u32, Vec<Meta>),
    /// A type id and bytes, as given: lengths and types that lie.
    Raw(u32, Vec<u8>),
}

impl Meta {
    fn type_id(&self) -> u32 {
        match self {
            Meta::U8(_) => ty::U8,
            Meta::I8(_) => ty::I8,
            Meta::U16(_) => ty::U16,
            Meta::I16(_) => ty::I16,
            Meta::U32(_) => ty::U32,
            Meta::I32(_) => ty::I32,
            Meta::U64(_) => ty::U64,
            Meta::I64(_) => ty::I64,
            Meta::F32(_) => ty::F32,
            Meta::F64(_) => ty::F64,
            Meta::Bool(_) => ty::BOOL,
            Meta::Str(_) => ty::STRING,
            Meta::Array(..) => ty::ARRAY,
            Meta::Raw(id, _) => *id,
        }
    }

    fn strings(items: &[&str]) -> Meta {
        Meta::Array(
            ty::STRING,
            items.iter().map(|s| Meta::Str((*s).to_owned())).collect(),
        )
    }

    /// The value's bytes, without its type id.
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Meta::U8(v) => out.push(*v),
            Meta::I8(v) => out.extend(v.to_le_bytes()),
            Meta::U16(v) => out.extend(v.to_le_bytes()),
            Meta::I16(v) => out.extend(v.to_le_bytes()),
            Meta::U32(v) => out.extend(v.to_le_bytes()),
            Meta::I32(v) => out.extend(v.to_le_bytes()),
            Meta::U64(v) => out.extend(v.to_le_bytes()),
            Meta::I64(v) => out.extend(v.to_le_bytes()),
            Meta::F32(v) => out.extend(v.to_le_bytes()),
            Meta::F64(v) => out.extend(v.to_le_bytes()),
            Meta::Bool(v) => out.push(*v),
            Meta::Str(s) => string(out, s),
            Meta::Array(item, items) => {
                out.extend(item.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for v in items {
                    v.write(out);
                }
            }
            Meta::Raw(_, bytes) => out.extend(bytes),
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// One tensor: its info and its data.
#[derive(Clone, Debug)]
pub(super) struct Tensor {
    pub name: String,
    /// GGUF order: the row length first.
    pub dims: Vec<u64>,
    pub dtype: u32,
    /// Where its data starts in the data section; `None`: where it is.
    pub offset: Option<u64>,
    pub data: Vec<u8>,
}

/// A GGUF file, field by field, so that a test can put any value in any
/// field.
#[derive(Clone, Debug)]
pub(super) struct Gguf {
    pub version: u32,
    /// `None`: the number there is.
    pub tensor_count: Option<u64>,
    pub kv_count: Option<u64>,
    pub metadata: Vec<(String, Meta)>,
    pub tensors: Vec<Tensor>,
}

/// Tensor data is aligned to this many bytes (GGUF's default).
const ALIGNMENT: usize = 32;

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
}

impl Gguf {
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.header();
        pad(&mut out);
        for t in &self.tensors {
            out.extend(&t.data);
            pad(&mut out);
        }
        out
    }

    /// The header, metadata and tensor infos, without the data.
    pub fn header(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        let tensors = self.tensor_count.unwrap_or(self.tensors.len() as u64);
        out.extend(tensors.to_le_bytes());
        let kvs = self.kv_count.unwrap_or(self.metadata.len() as u64);
        out.extend(kvs.to_le_bytes());
        for (key, value) in &self.metadata {
            string(&mut out, key);
            out.extend(value.type_id().to_le_bytes());
            value.write(&mut out);
        }
        let mut at = 0u64;
        for t in &self.tensors {
            string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.dtype.to_le_bytes());
            out.extend(t.offset.unwrap_or(at).to_le_bytes());
            at += t.data.len().next_multiple_of(ALIGNMENT) as u64;
        }
        out
    }
}

/// `n` small f32 weights, varied enough to give varied logits.
fn f32_data(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (((i * 7 % 13) as f32 - 6.0) * 0.02).to_le_bytes())
        .collect()
}

/// `n` weights as Q8_0 blocks: an f16 scale, then 32 signed bytes.
fn q8_0_data(n: usize) -> Vec<u8> {
    assert!(n.is_multiple_of(32));
    let mut out = Vec::new();
    for _ in 0..n / 32 {
        out.extend(half::f16::from_f32(0.02).to_le_bytes());
        out.extend((0..32).map(|i| ((i * 5 % 11) as i8 - 5) as u8));
    }
    out
}

/// A one-layer Llama with a five-token byte-level BPE vocabulary and a
/// chat template: every part of a real GGUF model, in a few kilobytes.
/// Hidden size 32, two heads of 16 sharing one key/value head, MLP
/// width 64; the embedding (tied to the output) and the MLP's gate and up
/// projections are Q8_0, the rest f32.
pub(super) fn tiny_llama() -> Gguf {
    let (d, ff, vocab, kv) = (32u64, 64u64, 5u64, 16u64);
    let meta = |k: &str, v: Meta| (k.to_owned(), v);
    let tensor = |name: &str, dims: &[u64], dtype: u32| {
        let n = dims.iter().product::<u64>() as usize;
        Tensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            dtype,
            offset: None,
            data: if dtype == Q8_0 {
                q8_0_data(n)
            } else {
                f32_data(n)
            },
        }
    };
    Gguf {
        version: 3,
        tensor_count: None,
        kv_count: None,
        metadata: vec![
            meta("general.architecture", Meta::Str("llama".into())),
            meta("general.alignment", Meta::U32(ALIGNMENT as u32)),
            meta("llama.block_count", Meta::U32(1)),
            meta("llama.context_length", Meta::U32(64)),
            meta("llama.embedding_length", Meta::U32(d as u32)),
            meta("llama.feed_forward_length", Meta::U32(ff as u32)),
            meta("llama.attention.head_count", Meta::U32(2)),
            meta("llama.attention.head_count_kv", Meta::U32(1)),
            meta("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
            meta("llama.rope.freq_base", Meta::F32(10_000.0)),
            meta("tokenizer.ggml.model", Meta::Str("gpt2".into())),
            meta("tokenizer.ggml.pre", Meta::Str("smollm".into())),
            meta(
                "tokenizer.ggml.tokens",
                Meta::strings(&["a", "b", "c", "ab", "<|end|>"]),
            ),
            meta(
                "tokenizer.ggml.token_type",
                Meta::Array(ty::I32, [1, 1, 1, 1, 3].map(Meta::I32).to_vec()),
            ),
            meta("tokenizer.ggml.merges", Meta::strings(&["a b"])),
            meta("tokenizer.ggml.eos_token_id", Meta::U32(4)),
            meta("tokenizer.ggml.add_bos_token", Meta::Bool(0)),
            meta(
                "tokenizer.chat_template",
                Meta::Str("{% for m in messages %}{{ m.content }}<|end|>{% endfor %}".into()),
            ),
        ],
        tensors: vec![
            tensor("token_embd.weight", &[d, vocab], Q8_0),
            tensor("blk.0.attn_norm.weight", &[d], F32),
            tensor("blk.0.attn_q.weight", &[d, d], F32),
            tensor("blk.0.attn_k.weight", &[d, kv], F32),
            tensor("blk.0.attn_v.weight", &[d, kv], F32),
            tensor("blk.0.attn_output.weight", &[d, d], F32),
            tensor("blk.0.ffn_norm.weight", &[d], F32),
            tensor("blk.0.ffn_gate.weight", &[d, ff], Q8_0),
            tensor("blk.0.ffn_up.weight", &[d, ff], Q8_0),
            tensor("blk.0.ffn_down.weight", &[ff, d], F32),
            tensor("output_norm.weight", &[d], F32),
        ],
    }
}

/// Write `bytes` as a `.gguf` file in a new directory.
pub(super) fn write(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Any value of one type.
fn meta_scalar() -> impl Strategy<Value = Meta> {
    prop_oneof![
        any::<u8>().prop_map(Meta::U8),
        any::<i8>().prop_map(Meta::I8),
        any::<u16>().prop_map(Meta::U16),
        any::<i16>().prop_map(Meta::I16),
        interesting_u64().prop_map(|v| Meta::U32(v as u32)),
        any::<i32>().prop_map(Meta::I32),
        interesting_u64().prop_map(Meta::U64),
        any::<i64>().prop_map(Meta::I64),
        any::<f32>().prop_map(Meta::F32),
        any::<f64>().prop_map(Meta::F64),
        prop_oneof![4 => 0u8..=1, 1 => any::<u8>()].prop_map(Meta::Bool),
        "\\PC{0,12}".prop_map(Meta::Str),
    ]
}

/// Any value of any type, arrays included, with the lengths inside
/// written truthfully.
fn meta_value() -> impl Strategy<Value = Meta> {
    let array = prop_oneof![
        (meta_scalar(), 0..6usize).prop_map(|(v, n)| Meta::Array(v.type_id(), vec![v; n])),
        prop::collection::vec("\\PC{0,8}", 0..8)
            .prop_map(|s| Meta::Array(ty::STRING, s.into_iter().map(Meta::Str).collect())),
        (meta_scalar(), 0..3usize, 0..3usize).prop_map(|(v, n, m)| {
            let inner = Meta::Array(v.type_id(), vec![v; n]);
            Meta::Array(ty::ARRAY, vec![inner; m])
        }),
    ];
    prop_oneof![3 => meta_scalar(), 1 => array]
}

/// Numbers of each type, mostly those that break sizes.
fn meta_number() -> impl Strategy<Value = Meta> {
    prop_oneof![
        3 => interesting_u64().prop_map(|v| Meta::U32(v as u32)),
        3 => interesting_u64().prop_map(Meta::U64),
        1 => interesting_u64().prop_map(|v| Meta::I32(v as i32)),
        1 => interesting_u64().prop_map(|v| Meta::I64(v as i64)),
        1 => select(vec![0.0, -1.0, 1e-30, 1e30, f32::NAN, f32::INFINITY]).prop_map(Meta::F32),
    ]
}

/// A value whose type id, lengths or nesting say anything: a string
/// length of 2^62, an array of 2^40 strings, arrays of arrays, type ids
/// that do not exist, followed by a few bytes or none.
fn lying_value() -> impl Strategy<Value = Meta> {
    let len = interesting_u64;
    let tail = || prop::collection::vec(any::<u8>(), 0..32);
    prop_oneof![
        (len(), tail()).prop_map(|(n, tail)| {
            let mut bytes = n.to_le_bytes().to_vec();
            bytes.extend(tail);
            Meta::Raw(ty::STRING, bytes)
        }),
        (0u32..16, len(), tail()).prop_map(|(item, n, tail)| {
            let mut bytes = item.to_le_bytes().to_vec();
            bytes.extend(n.to_le_bytes());
            bytes.extend(tail);
            Meta::Raw(ty::ARRAY, bytes)
        }),
        (1usize..80, len(), tail()).prop_map(|(depth, n, tail)| {
            let mut bytes = Vec::new();
            for _ in 0..depth {
                bytes.extend(ty::ARRAY.to_le_bytes());
                bytes.extend(1u64.to_le_bytes());
            }
            bytes.extend(ty::STRING.to_le_bytes());
            bytes.extend(n.to_le_bytes());
            bytes.extend(tail);
            Meta::Raw(ty::ARRAY, bytes)
        }),
        (any::<u32>(), tail()).prop_map(|(id, tail)| Meta::Raw(id, tail)),
    ]
}

/// The tiny model's metadata keys, and keys the loaders read that it
/// leaves out.
fn metadata_key() -> impl Strategy<Value = String> {
    let mut keys: Vec<String> = tiny_llama().metadata.into_iter().map(|(k, _)| k).collect();
    keys.extend(
        [
            "llama.vocab_size",
            "llama.attention.key_length",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.add_eos_token",
        ]
        .map(str::to_owned),
    );
    select(keys)
}

/// Set `key` to `value`, in place if the model has it.
fn set(model: &mut Gguf, key: String, value: Meta) {
    match model.metadata.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => model.metadata.push((key, value)),
    }
}

#[test]
fn the_tiny_model_loads_and_runs() {
    let (_dir, path) = write(&tiny_llama().bytes());
    let loaded = crate::load(&path, &crate::LoadOptions::default()).unwrap();
    assert_eq!(loaded.tokenizer.vocab_size(), 5);
    assert_eq!(loaded.tokenizer.encode("ab", false).unwrap(), [3]);
    let mut cache = loaded.model.new_cache();
    let logits = loaded
        .model
        .forward(&mut [crate::SeqInput {
            adapter: None,
            tokens: &[3, 2],
            cache: &mut cache,
        }])
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(logits.len(), 5);
    assert!(logits.iter().all(|x| x.is_finite()), "{logits:?}");
}

/// Load `model`, which must be refused with a message containing `expected`.
fn refused(model: &Gguf, expected: &str) {
    let (_dir, path) = write(&model.bytes());
    let (result, largest) = super::watching(|| crate::load(&path, &crate::LoadOptions::default()));
    let err = result.expect_err("refused");
    assert!(err.to_string().contains(expected), "{err}");
    assert!(largest <= super::MAX_ALLOCATION, "{largest} bytes at once");
}

#[test]
fn an_alignment_of_zero_is_refused() {
    // candle's reader divides by it.
    let mut model = tiny_llama();
    set(&mut model, "general.alignment".into(), Meta::U32(0));
    refused(&model, "`general.alignment` is 0");
    // The last of several keys is the one that counts, as in candle.
    let mut model = tiny_llama();
    model
        .metadata
        .insert(0, ("general.alignment".into(), Meta::U8(0)));
    let (_dir, path) = write(&model.bytes());
    crate::load(&path, &crate::LoadOptions::default()).unwrap();
}

#[test]
fn a_tensor_too_large_to_count_is_refused() {
    // candle multiplies the dimensions unchecked: 32 × 2^62 overflows.
    let mut model = tiny_llama();
    set(&mut model, "llama.vocab_size".into(), Meta::U64(1 << 62));
    model.tensors[0].dims = vec![32, 1 << 62];
    refused(&model, "too large to count");
}

#[test]
fn a_tensor_of_no_elements_is_refused() {
    // candle views its empty buffer as blocks through a pointer that is
    // not aligned for them: undefined behaviour (an abort in debug builds).
    let mut model = tiny_llama();
    set(&mut model, "llama.vocab_size".into(), Meta::U64(0));
    model.tensors[0].dims = vec![32, 0];
    refused(&model, "has no elements");
}

#[test]
fn sizes_in_the_metadata_are_checked_before_use() {
    for (key, value, expected) in [
        // Heads divided by, and a layer count sized a vector by.
        (
            "llama.attention.head_count",
            0,
            "`num_attention_heads` is 0",
        ),
        (
            "llama.attention.head_count_kv",
            0,
            "`num_key_value_heads` is 0",
        ),
        ("llama.embedding_length", 0, "`hidden_size` is 0"),
        ("llama.attention.key_length", 0, "the head dimension is 0"),
        ("llama.attention.key_length", 1 << 62, "too many to count"),
        (
            "llama.block_count",
            1 << 40,
            "`blk.1.attn_norm.weight` is missing",
        ),
    ] {
        let mut model = tiny_llama();
        set(&mut model, key.into(), Meta::U64(value));
        refused(&model, expected);
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn any_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let (_dir, path) = write(&bytes);
        prop_assert!(!load_checked(&path)?);
    }

    #[test]
    fn any_bytes_after_the_magic_are_refused(
        version in prop_oneof![1u32..=3, any::<u32>()],
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut file = b"GGUF".to_vec();
        file.extend(version.to_le_bytes());
        file.extend(bytes);
        let (_dir, path) = write(&file);
        prop_assert!(!load_checked(&path)?);
    }

    #[test]
    fn any_tensor_and_metadata_counts(
        tensors in prop::option::of(interesting_u64()),
        kvs in prop::option::of(interesting_u64()),
        version in 1u32..=3,
    ) {
        let mut model = tiny_llama();
        model.tensor_count = tensors;
        model.kv_count = kvs;
        model.version = version;
        let (_dir, path) = write(&model.bytes());
        load_checked(&path)?;
    }

    #[test]
    fn any_string_and_array_lengths(
        at in any::<Index>(),
        lie_in_key in any::<bool>(),
        value in lying_value(),
    ) {
        let mut model = tiny_llama();
        let at = at.index(model.metadata.len());
        if lie_in_key {
            // The length of the key of entry `at`, and what follows it.
            let Meta::Raw(_, bytes) = value else {
                return Ok(());
            };
            model.kv_count = Some(model.metadata.len() as u64);
            model.tensor_count = Some(model.tensors.len() as u64);
            model.metadata.truncate(at);
            model.tensors.clear();
            let mut file = model.header();
            file.extend(bytes);
            let (_dir, path) = write(&file);
            load_checked(&path)?;
        } else {
            model.metadata[at].1 = value;
            let (_dir, path) = write(&model.bytes());
            load_checked(&path)?;
        }
    }

    #[test]
    fn any_metadata_values(
        changes in prop::collection::vec(
            (metadata_key(), prop_oneof![3 => meta_number(), 1 => meta_value()]),
            1..4,
        ),
    ) {
        let mut model = tiny_llama();
        for (key, value) in changes {
            set(&mut model, key, value);
        }
        let (_dir, path) = write(&model.bytes());
        load_checked(&path)?;
    }

    #[test]
    fn any_vocabulary_and_width_in_both_the_metadata_and_the_embedding(
        vocab in interesting_u64(),
        width in interesting_u64(),
    ) {
        let mut model = tiny_llama();
        set(&mut model, "llama.vocab_size".into(), Meta::U64(vocab));
        set(&mut model, "llama.embedding_length".into(), Meta::U64(width));
        model.tensors[0].dims = vec![width, vocab];
        let (_dir, path) = write(&model.bytes());
        load_checked(&path)?;
    }

    #[test]
    fn any_tensor_shape_type_and_offset(
        at in any::<Index>(),
        dims in prop::option::of(prop::collection::vec(interesting_u64(), 0..6)),
        dtype in prop::option::of(prop_oneof![0u32..=31, any::<u32>()]),
        offset in prop::option::of(interesting_u64()),
    ) {
        let mut model = tiny_llama();
        let at = at.index(model.tensors.len());
        let t = &mut model.tensors[at];
        if let Some(dims) = dims {
            t.dims = dims;
        }
        if let Some(dtype) = dtype {
            t.dtype = dtype;
        }
        t.offset = offset.or(t.offset);
        let (_dir, path) = write(&model.bytes());
        load_checked(&path)?;
    }

    #[test]
    fn a_model_cut_short_or_overwritten(edits in edits()) {
        let model = tiny_llama();
        let mut bytes = model.bytes();
        apply(&mut bytes, model.header().len(), &edits);
        let (_dir, path) = write(&bytes);
        load_checked(&path)?;
    }
}
