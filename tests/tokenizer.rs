//! Tokenizers against reference implementations: SmolLM2's GGUF tokenizer
//! against llama.cpp, DeepSeek-R1's tokenizer.json against the pure-Python
//! DeepSeek tokenizer (checked with Hugging Face `tokenizers`), both through
//! the golden files written by `scripts/reference/make-goldens`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use deepwasm_model::{SpecialKind, Tokenizer};
use serde::Deserialize;

fn models_dir() -> PathBuf {
    let cache = std::env::var_os("DEEPWASM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/deepwasm")
        });
    cache.join("models")
}

fn model_file(name: &str) -> PathBuf {
    let path = models_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    path
}

fn smollm2() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = model_file("SmolLM2-135M-Instruct.Q4_1.gguf");
        let mut file = std::fs::File::open(&path).unwrap();
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
        let start = Instant::now();
        let tokenizer = Tokenizer::from_gguf(&content.metadata).unwrap();
        eprintln!("SmolLM2 GGUF tokenizer built in {:?}", start.elapsed());
        tokenizer
    })
}

fn deepseek_r1() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir = model_file("deepseek-r1-tokenizer");
        let start = Instant::now();
        let tokenizer = Tokenizer::from_hf_dir(&dir).unwrap();
        eprintln!("DeepSeek-R1 tokenizer loaded in {:?}", start.elapsed());
        tokenizer
    })
}

#[derive(Deserialize)]
struct Goldens {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    #[serde(default)]
    ids_add_special: Option<Vec<u32>>,
}

fn goldens(name: &str) -> Goldens {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/goldens")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every mismatch at once, with the tokens on both sides.
fn assert_ids(tokenizer: &Tokenizer, cases: &[(String, Vec<u32>, Vec<u32>)]) {
    let pieces = |ids: &[u32]| -> Vec<&str> {
        ids.iter()
            .map(|&id| tokenizer.token_text(id).unwrap_or("?"))
            .collect()
    };
    let failures: Vec<String> = cases
        .iter()
        .filter(|(_, want, got)| want != got)
        .map(|(text, want, got)| {
            format!(
                "{text:?}\n  want {want:?} {:?}\n  got  {got:?} {:?}",
                pieces(want),
                pieces(got)
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_matches_llama_cpp() {
    let tok = smollm2();
    let goldens = goldens("smollm2_tokenize.json");
    let mut cases = Vec::new();
    for case in &goldens.cases {
        cases.push((
            case.text.clone(),
            case.ids.clone(),
            tok.encode(&case.text, false).unwrap(),
        ));
        let with_special = case.ids_add_special.clone().expect("ids_add_special");
        cases.push((
            format!("{} (add special)", case.text),
            with_special,
            tok.encode(&case.text, true).unwrap(),
        ));
    }
    assert_ids(tok, &cases);
}

#[test]
fn deepseek_r1_matches_reference() {
    let tok = deepseek_r1();
    let goldens = goldens("deepseek_r1_tokenize.json");
    let cases: Vec<_> = goldens
        .cases
        .iter()
        .map(|case| {
            (
                case.text.clone(),
                case.ids.clone(),
                tok.encode(&case.text, false).unwrap(),
            )
        })
        .collect();
    assert_ids(tok, &cases);
    assert_eq!(tok.encode("<think>", false).unwrap(), [128798]);
    assert_eq!(tok.encode("</think>", true).unwrap(), [128799]);
}

/// DeepSeek-V3/R1 GGUF files use llama.cpp's `deepseek-v3` pre-tokenizer.
/// With no such file at hand, build its metadata from R1's tokenizer.json as
/// llama.cpp's converter does (special added tokens are CONTROL, the others
/// USER_DEFINED) and check the GGUF path against the same goldens.
#[test]
fn deepseek_v3_gguf_matches_reference() {
    use candle_core::quantized::gguf_file::Value;
    let path = model_file("deepseek-r1-tokenizer/tokenizer.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut tokens = vec![String::new(); 128_815];
    let mut types = vec![Value::I32(1); 128_815];
    for (text, id) in json["model"]["vocab"].as_object().unwrap() {
        tokens[id.as_u64().unwrap() as usize] = text.clone();
    }
    for added in json["added_tokens"].as_array().unwrap() {
        let id = added["id"].as_u64().unwrap() as usize;
        tokens[id] = added["content"].as_str().unwrap().to_owned();
        types[id] = Value::I32(if added["special"].as_bool().unwrap() {
            3
        } else {
            4
        });
    }
    let merges = json["model"]["merges"].as_array().unwrap();
    let string = |s: &str| Value::String(s.to_owned());
    let metadata: HashMap<String, Value> = [
        ("tokenizer.ggml.model", string("gpt2")),
        ("tokenizer.ggml.pre", string("deepseek-v3")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| string(t)).collect()),
        ),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            Value::Array(merges.iter().map(|m| string(m.as_str().unwrap())).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let tok = Tokenizer::from_gguf(&metadata).unwrap();
    let cases: Vec<_> = goldens("deepseek_r1_tokenize.json")
        .cases
        .iter()
        .map(|case| {
            (
                case.text.clone(),
                case.ids.clone(),
                tok.encode(&case.text, false).unwrap(),
            )
        })
        .collect();
    assert_ids(&tok, &cases);
    assert_eq!(tok.encode("<think>", true).unwrap(), [0, 128798]);
    assert_eq!(tok.eos(), [1]);
    assert_eq!(tok.decode(&[0, 128798, 1], true).unwrap(), "<think>");
}

/// SentencePiece GGUF vocabularies (`tokenizer.ggml.model = llama`), on a
/// small vocabulary trained for the purpose, against llama.cpp.
#[test]
fn sentencepiece_gguf_matches_llama_cpp() {
    use candle_core::quantized::gguf_file::Value;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/spm_tiny_tokenize.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let md = &json["metadata"];
    let array = |key: &str, f: &dyn Fn(&serde_json::Value) -> Value| {
        Value::Array(md[key].as_array().unwrap().iter().map(f).collect())
    };
    let id = |key: &str| Value::U32(md[key].as_u64().unwrap() as u32);
    let metadata: HashMap<String, Value> = [
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            array("tokenizer.ggml.tokens", &|v| {
                Value::String(v.as_str().unwrap().into())
            }),
        ),
        (
            "tokenizer.ggml.scores",
            array("tokenizer.ggml.scores", &|v| {
                Value::F32(v.as_f64().unwrap() as f32)
            }),
        ),
        (
            "tokenizer.ggml.token_type",
            array("tokenizer.ggml.token_type", &|v| {
                Value::I32(v.as_i64().unwrap() as i32)
            }),
        ),
        (
            "tokenizer.ggml.bos_token_id",
            id("tokenizer.ggml.bos_token_id"),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            id("tokenizer.ggml.eos_token_id"),
        ),
        (
            "tokenizer.ggml.unknown_token_id",
            id("tokenizer.ggml.unknown_token_id"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let tok = Tokenizer::from_gguf(&metadata).unwrap();
    assert_eq!(tok.bos_text(), Some("<s>"));
    assert_eq!(tok.eos_text(), Some("</s>"));

    let goldens = goldens("spm_tiny_tokenize.json");
    let mut cases = Vec::new();
    for case in &goldens.cases {
        let ids = tok.encode(&case.text, false).unwrap();
        cases.push((case.text.clone(), case.ids.clone(), ids.clone()));
        let with_special = case.ids_add_special.clone().expect("ids_add_special");
        cases.push((
            format!("{} (add special)", case.text),
            with_special,
            tok.encode(&case.text, true).unwrap(),
        ));

        // Decoding drops the space the encoder put in front, and byte
        // fallback makes it lossless, as long as no special token sits in
        // the text (a prefix space follows each one).
        let decoded = tok.decode(&ids, false).unwrap();
        assert_eq!(
            decoded,
            tok.inner().decode(&ids, false).unwrap(),
            "{:?}",
            case.text
        );
        if !case.text.contains('<') {
            assert_eq!(decoded, case.text);
        }
        let mut detok = tok.detokenizer(false);
        let mut streamed: String = ids.iter().map(|&id| detok.push(id)).collect();
        streamed.push_str(&detok.finish());
        assert_eq!(streamed, decoded, "{:?}", case.text);
    }
    assert_ids(&tok, &cases);
}

#[test]
fn decode_inverts_encode() {
    for (name, tok, file) in [
        ("SmolLM2", smollm2(), "smollm2_tokenize.json"),
        ("DeepSeek-R1", deepseek_r1(), "deepseek_r1_tokenize.json"),
    ] {
        for case in goldens(file).cases {
            let ids = tok.encode(&case.text, false).unwrap();
            // Byte-level BPE is lossless, special tokens included.
            assert_eq!(
                tok.decode(&ids, false).unwrap(),
                case.text,
                "{name}: {:?}",
                case.text
            );
            // And agrees with the `tokenizers` decoder.
            assert_eq!(
                tok.inner().decode(&ids, false).unwrap(),
                case.text,
                "{name}: {:?}",
                case.text
            );
        }
    }
}

#[test]
fn bos_follows_the_configuration() {
    // SmolLM2's GGUF: tokenizer.ggml.add_bos_token = false, as llama.cpp
    // (the goldens' ids_add_special) confirms.
    let smol = smollm2();
    assert_eq!(smol.bos(), Some(1));
    assert_eq!(smol.bos_text(), Some("<|im_start|>"));
    assert_eq!(
        smol.encode("Hello", true).unwrap(),
        smol.encode("Hello", false).unwrap()
    );

    // DeepSeek-R1's tokenizer_config.json: add_bos_token = false (its chat
    // template writes the BOS), so nothing is added.
    let r1 = deepseek_r1();
    assert_eq!(r1.bos(), Some(0));
    assert_eq!(r1.bos_text(), Some("<｜begin▁of▁sentence｜>"));
    assert_eq!(
        r1.encode("Hello", true).unwrap(),
        r1.encode("Hello", false).unwrap()
    );
    assert_eq!(r1.encode("<｜begin▁of▁sentence｜>Hi", false).unwrap()[0], 0);

    // The same tokenizer.json with add_bos_token = true adds it.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(
        &config,
        r#"{"add_bos_token": true, "bos_token": {"content": "<｜begin▁of▁sentence｜>"}, "eos_token": "<｜end▁of▁sentence｜>"}"#,
    )
    .unwrap();
    let json = model_file("deepseek-r1-tokenizer/tokenizer.json");
    let with_bos = Tokenizer::from_files(&json, Some(&config)).unwrap();
    let ids = with_bos.encode("Hello", true).unwrap();
    assert_eq!(ids[0], 0);
    assert_eq!(&ids[1..], r1.encode("Hello", false).unwrap());
    assert_eq!(with_bos.encode("", true).unwrap(), [0]);
    assert_eq!(with_bos.decode(&ids, true).unwrap(), "Hello");
}

#[test]
fn end_of_generation_tokens() {
    let smol = smollm2();
    let im_end = smol.token_id("<|im_end|>").unwrap();
    // The GGUF's eos_token_id is <|im_end|>, which ends every chat turn.
    assert_eq!(smol.eos()[0], im_end);
    assert_eq!(smol.eos_text(), Some("<|im_end|>"));
    assert!(
        smol.eos()
            .contains(&smol.token_id("<|endoftext|>").unwrap())
    );

    let r1 = deepseek_r1();
    let end = r1.token_id("<｜end▁of▁sentence｜>").unwrap();
    assert_eq!(end, 1);
    assert_eq!(r1.eos(), [end]);
    assert_eq!(r1.eos_text(), Some("<｜end▁of▁sentence｜>"));
    let kinds: HashMap<u32, SpecialKind> =
        r1.special_tokens().iter().map(|t| (t.id, t.kind)).collect();
    assert_eq!(kinds[&0], SpecialKind::Bos);
    assert_eq!(kinds[&1], SpecialKind::Eos);
    assert_eq!(kinds[&2], SpecialKind::Other);
    // <think> is an added token, not a special one: decode keeps it.
    assert!(!kinds.contains_key(&128798));
    assert_eq!(r1.decode(&[128798, 1], true).unwrap(), "<think>");
}

#[test]
fn vocabulary_and_metadata() {
    let smol = smollm2();
    assert_eq!(smol.vocab_size(), 49152);
    assert_eq!(smol.token_text(2), Some("<|im_end|>"));
    assert_eq!(smol.token_id("Ġthe"), Some(260));
    assert_eq!(smol.token_bytes(260), Some(&b" the"[..]));
    assert!(smol.chat_template().unwrap().contains("<|im_start|>"));
    let specials: Vec<&str> = smol
        .special_tokens()
        .iter()
        .map(|t| t.text.as_str())
        .collect();
    assert_eq!(specials.len(), 17, "{specials:?}");

    let r1 = deepseek_r1();
    assert_eq!(r1.vocab_size(), 128_815);
    assert_eq!(r1.token_id("<think>"), Some(128798));
    assert_eq!(r1.token_id("</think>"), Some(128799));
    assert_eq!(r1.token_text(128798), Some("<think>"));
    assert_eq!(r1.token_bytes(128803), Some("<｜User｜>".as_bytes()));
    assert!(r1.chat_template().unwrap().contains("<｜Assistant｜>"));
    assert_eq!(r1.token_text(128_815), None);
    assert!(r1.decode(&[128_815], false).is_err());
}

const STREAMED: &[&str] = &[
    "emoji 😀🎉👍🏽 and 👨‍👩‍👧‍👦 and 🇫🇷🇯🇵",
    "中文分词测试：你好，世界！日本語のテキスト",
    "한국어 텍스트입니다 🙂 mixed with ASCII",
    "math ∑ x² ≤ ∞ and arrows → ⇒ ⟹ 𝔸𝔹ℂ",
    "<|im_start|>user\n你好 👋<|im_end|>\n<think>\n思考</think>",
];

#[test]
fn detokenizer_streams_whole_characters() {
    for (name, tok) in [("SmolLM2", smollm2()), ("DeepSeek-R1", deepseek_r1())] {
        // Tokens that ended mid-character, so that the holding back is
        // exercised (the texts are chosen to need it with both vocabularies).
        let mut split_tokens = 0;
        for text in STREAMED {
            let ids = tok.encode(text, false).unwrap();
            for skip in [false, true] {
                let mut detok = tok.detokenizer(skip);
                let mut streamed = String::new();
                for &id in &ids {
                    let delta = detok.push(id);
                    assert!(
                        !delta.contains('\u{FFFD}'),
                        "{name}: {text:?} gave {delta:?}"
                    );
                    if delta.is_empty() && !tok.token_bytes(id).unwrap().is_empty() {
                        split_tokens += 1;
                    }
                    streamed.push_str(&delta);
                }
                streamed.push_str(&detok.finish());
                assert_eq!(
                    streamed,
                    tok.decode(&ids, skip).unwrap(),
                    "{name}: {text:?}"
                );
                if !skip {
                    assert_eq!(streamed, *text, "{name}");
                }
            }
        }
        assert!(split_tokens > 0, "{name}: no token ended mid-character");
    }
}

#[test]
fn detokenizer_flushes_incomplete_characters() {
    let tok = smollm2();
    let ids = tok.encode("🎉", false).unwrap();
    assert!(
        ids.len() > 1,
        "🎉 should take several byte-level tokens: {ids:?}"
    );
    let mut detok = tok.detokenizer(false);
    let mut out = String::new();
    for &id in &ids[..ids.len() - 1] {
        out.push_str(&detok.push(id));
    }
    assert_eq!(out, "");
    assert_eq!(detok.finish(), "\u{FFFD}");
    assert_eq!(
        tok.decode(&ids[..ids.len() - 1], false).unwrap(),
        "\u{FFFD}"
    );
}

#[test]
fn token_bytes_concatenate_to_the_text() {
    for (name, tok, file) in [
        ("SmolLM2", smollm2(), "smollm2_tokenize.json"),
        ("DeepSeek-R1", deepseek_r1(), "deepseek_r1_tokenize.json"),
    ] {
        for case in goldens(file).cases {
            let bytes: Vec<u8> = case
                .ids
                .iter()
                .flat_map(|&id| tok.token_bytes(id).unwrap().iter().copied())
                .collect();
            assert_eq!(bytes, case.text.as_bytes(), "{name}: {:?}", case.text);
        }
    }
}

#[test]
fn gguf_errors_name_the_key() {
    use candle_core::quantized::gguf_file::Value;
    let mut metadata = HashMap::new();
    let err = Tokenizer::from_gguf(&metadata).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.model"), "{err}");

    metadata.insert(
        "tokenizer.ggml.model".to_owned(),
        Value::String("gpt2".into()),
    );
    metadata.insert(
        "tokenizer.ggml.pre".to_owned(),
        Value::String("mystery-pre".into()),
    );
    let err = Tokenizer::from_gguf(&metadata).unwrap_err().to_string();
    assert!(
        err.contains("mystery-pre") && err.contains("smollm") && err.contains("deepseek-v3"),
        "{err}"
    );

    metadata.insert(
        "tokenizer.ggml.pre".to_owned(),
        Value::String("smollm".into()),
    );
    let err = Tokenizer::from_gguf(&metadata).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.tokens"), "{err}");

    metadata.insert(
        "tokenizer.ggml.model".to_owned(),
        Value::String("bert".into()),
    );
    let err = Tokenizer::from_gguf(&metadata).unwrap_err().to_string();
    assert!(
        err.contains("bert") && err.contains("tokenizer.ggml.model"),
        "{err}"
    );
}

#[test]
fn missing_files_name_the_path() {
    let err = Tokenizer::from_hf_dir(Path::new("/nonexistent/model"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/model/tokenizer.json"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(&config, r#"{"eos_token": "<not-a-token>"}"#).unwrap();
    let json = model_file("deepseek-r1-tokenizer/tokenizer.json");
    let err = Tokenizer::from_files(&json, Some(&config))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("<not-a-token>"),
        "{err}"
    );
}
