//! The same plugins in four languages: the Rust originals in `plugins/rust`
//! and their Python, JavaScript and C ports (`plugins/{python,js,c}`).
//!
//! Every behaviour test is a function of a plugin's path, run once per
//! language by `polyglot!`, with the same assertions: hand-written
//! expectations where the rule is short, and the Rust build's own answers
//! (the oracle) over larger batteries, compared exactly (scores, decisions,
//! tool output, error kinds; error messages exactly where the plugin writes
//! them, and by the field they name where a JSON library does).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deepwasm_engine::sampling::SamplingParams as EngineParams;
use deepwasm_engine::{
    DEFAULT_STEP_BUDGET, GenerateRequest, MissPolicy, ModelTokenizer, PluginSampler, Prompt,
    SamplerHosting,
};
use deepwasm_plugins::types::ToolOutput;
use deepwasm_plugins::{
    Decision, GuestError, PluginError, Prepared, RewardPlugin, Sample, SamplerPlugin,
    SamplingParams, TokenSet, ToolPlugin, World,
};

use crate::util::{artifacts, default_model, plugin, sandbox};

/// One test per language: `name(path)` for the Rust, Python, JS and C builds.
macro_rules! polyglot {
    ($($test:ident($rust:ident, $python:ident, $js:ident, $c:ident);)*) => {$(
        mod $test {
            use crate::util::artifacts;

            #[test]
            fn rust() {
                super::$test(artifacts::$rust)
            }

            #[test]
            fn python() {
                super::$test(artifacts::$python)
            }

            #[test]
            fn js() {
                super::$test(artifacts::$js)
            }

            #[test]
            fn c() {
                super::$test(artifacts::$c)
            }
        }
    )*};
}

polyglot! {
    r1_format_follows_the_think_then_answer_rule(R1_FORMAT, PYTHON_R1_FORMAT, JS_R1_FORMAT, C_R1_FORMAT);
    r1_format_trims_only_unicode_white_space(R1_FORMAT, PYTHON_R1_FORMAT, JS_R1_FORMAT, C_R1_FORMAT);
    r1_format_scores_a_corpus_as_rust_does(R1_FORMAT, PYTHON_R1_FORMAT, JS_R1_FORMAT, C_R1_FORMAT);
    r1_format_refuses_bad_configs(R1_FORMAT, PYTHON_R1_FORMAT, JS_R1_FORMAT, C_R1_FORMAT);
    calculator_describes_the_same_tool(CALCULATOR, PYTHON_CALCULATOR, JS_CALCULATOR, C_CALCULATOR);
    calculator_does_exact_arithmetic(CALCULATOR, PYTHON_CALCULATOR, JS_CALCULATOR, C_CALCULATOR);
    calculator_answers_as_rust_does(CALCULATOR, PYTHON_CALCULATOR, JS_CALCULATOR, C_CALCULATOR);
    calculator_refuses_bad_calls(CALCULATOR, PYTHON_CALCULATOR, JS_CALCULATOR, C_CALCULATOR);
    word_ban_denies_what_would_complete_a_word(WORD_BAN, PYTHON_WORD_BAN, JS_WORD_BAN, C_WORD_BAN);
    word_ban_decides_as_rust_does(WORD_BAN, PYTHON_WORD_BAN, JS_WORD_BAN, C_WORD_BAN);
    word_ban_refuses_bad_configs(WORD_BAN, PYTHON_WORD_BAN, JS_WORD_BAN, C_WORD_BAN);
    word_ban_steers_the_model_as_rust_does(WORD_BAN, PYTHON_WORD_BAN, JS_WORD_BAN, C_WORD_BAN);
}

/// The guest error of a failed call, or a panic naming what came instead.
fn guest_error<T: std::fmt::Debug>(result: Result<T, PluginError>) -> GuestError {
    match result {
        Err(PluginError::Guest { error, .. }) => error,
        other => panic!("expected an error value from the plugin, got {other:?}"),
    }
}

fn invalid_input<T: std::fmt::Debug>(result: Result<T, PluginError>) -> String {
    match guest_error(result) {
        GuestError::InvalidInput(m) => m,
        other => panic!("expected invalid-input, got {other:?}"),
    }
}

// ---- the R1 format reward --------------------------------------------------------

fn reward(path: &str) -> RewardPlugin {
    RewardPlugin::new(plugin(path), sandbox(World::Reward, |_| {})).unwrap()
}

fn sample(prompt: &str, completion: &str) -> Sample {
    Sample {
        prompt: prompt.into(),
        completion: completion.into(),
        completion_tokens: vec![],
        extra: "{}".into(),
    }
}

fn scores(r: &RewardPlugin, samples: &[Sample], config: &str) -> Vec<Option<f64>> {
    r.score(samples, config)
        .into_iter()
        .map(|s| s.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// Score `(prompt, completion)` pairs with and without `strict`, against
/// the expected (lenient, strict) scores.
fn check_r1(path: &str, cases: &[(&str, &str, f64, f64)]) {
    let r = reward(path);
    let samples: Vec<Sample> = cases.iter().map(|(p, c, _, _)| sample(p, c)).collect();
    let lenient = scores(&r, &samples, "{}");
    let strict = scores(&r, &samples, r#"{"strict": true}"#);
    for (((p, c, want, want_strict), got), got_strict) in cases.iter().zip(lenient).zip(strict) {
        assert_eq!(got, Some(*want), "prompt {p:?} completion {c:?}");
        assert_eq!(
            got_strict,
            Some(*want_strict),
            "strict: prompt {p:?} completion {c:?}"
        );
    }
}

fn r1_format_follows_the_think_then_answer_rule(path: &str) {
    let opened = "<｜User｜>2+2?<｜Assistant｜><think>\n";
    check_r1(
        path,
        &[
            ("", "<think>\nreasoning\n</think>\nanswer", 1.0, 1.0),
            ("", "<think></think>", 1.0, 0.0),
            ("", "<think>a</think>b</think>c", 1.0, 0.0),
            ("", "<think>a<think>b</think>c", 0.0, 0.0),
            ("", "<think>a</think>b<think>", 0.0, 0.0),
            ("", "<think>no close", 0.0, 0.0),
            ("", " <think>a</think>b", 0.0, 0.0),
            ("", "a<think>b</think>c", 0.0, 0.0),
            ("", "</think>", 0.0, 0.0),
            ("", "", 0.0, 0.0),
            ("", "<think</think>x", 0.0, 0.0),
            ("", "<THINK>a</THINK>b", 0.0, 0.0),
            ("", "<think>思考</think>答案", 1.0, 1.0),
            (opened, "4 obviously</think>4", 1.0, 1.0),
            (opened, "<think>4</think>4", 1.0, 1.0),
            (opened, "no close", 0.0, 0.0),
            (opened, "a<think>b</think>c", 0.0, 0.0),
            ("<think> then text", "a</think>b", 0.0, 0.0),
            ("<think>", "a</think> b", 1.0, 1.0),
            ("<think>\t\n ", "a</think>b", 1.0, 1.0),
        ],
    );
}

/// Rust trims `char::is_whitespace` (Unicode White_Space); Python's
/// `str.strip()` and JavaScript's `trim()` trim other sets. The ports must
/// trim exactly the Rust set.
fn r1_format_trims_only_unicode_white_space(path: &str) {
    let mut cases = Vec::new();
    for (ws, is_white_space) in [
        ("\u{85}", true),
        ("\u{a0}", true),
        ("\u{3000}", true),
        ("\u{2028}", true),
        ("\u{b}", true),
        ("\u{1c}", false),
        ("\u{1f}", false),
        ("\u{feff}", false),
        ("\u{200b}", false),
        ("\u{180e}", false),
    ] {
        let strict = if is_white_space { 0.0 } else { 1.0 };
        let answer = format!("<think>a</think>{ws}{ws}");
        cases.push((String::new(), answer, 1.0, strict));
        // After the prompt's `<think>`: opened by the prompt only if the
        // character is white space.
        let prompt = format!("x<think>{ws}");
        let opened = if is_white_space { 1.0 } else { 0.0 };
        cases.push((prompt, "a</think>b".to_owned(), opened, opened));
    }
    let cases: Vec<(&str, &str, f64, f64)> = cases
        .iter()
        .map(|(p, c, a, b)| (p.as_str(), c.as_str(), *a, *b))
        .collect();
    check_r1(path, &cases);
}

/// Deterministic completions assembled from the pieces that matter.
fn r1_corpus() -> Vec<Sample> {
    let pieces = [
        "<think>", "</think>", "<think", "think>", "a", " ", "\n", "\u{85}", "\u{feff}", "é", "</",
        "<", ">", "答",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..600)
        .map(|i| {
            let len = (next() % 7) as usize;
            let completion: String = (0..len)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            let prompt = match i % 3 {
                0 => "",
                1 => "question <think>\n",
                _ => "<think> no",
            };
            sample(prompt, &completion)
        })
        .collect()
}

fn r1_format_scores_a_corpus_as_rust_does(path: &str) {
    let samples = r1_corpus();
    for config in ["{}", r#"{"strict": true}"#, r#"{"strict": false}"#] {
        let want = scores(&reward(artifacts::R1_FORMAT), &samples, config);
        let got = scores(&reward(path), &samples, config);
        assert!(want.contains(&Some(1.0)) && want.contains(&Some(0.0)));
        for ((s, w), g) in samples.iter().zip(&want).zip(&got) {
            assert_eq!(g, w, "{config}: {:?} / {:?}", s.prompt, s.completion);
        }
    }
}

fn r1_format_refuses_bad_configs(path: &str) {
    let r = reward(path);
    let one = [sample("", "<think>x</think>y")];
    let score = |config: &str| r.score(&one, config).remove(0);
    // Blank and null read as the default.
    for config in ["", "  ", r#"{"strict": null}"#] {
        assert_eq!(score(config).unwrap(), Some(1.0), "{config:?}");
    }
    let m = invalid_input(score(r#"{"strict": "yes"}"#));
    assert!(m.starts_with("config.strict: "), "{m}");
    let m = invalid_input(score(r#"{"strikt": true}"#));
    assert_eq!(m, "config.strikt: unknown field; expected one of: strict");
    let m = invalid_input(score(r#"{"strict": true, "b": 1, "a": 2}"#));
    assert_eq!(m, "config.b: unknown field; expected one of: strict");
    let m = invalid_input(score("[1]"));
    assert_eq!(m, "config: expected a JSON object, got an array");
    let m = invalid_input(score("null"));
    assert_eq!(m, "config: expected a JSON object, got null");
    for bad in ["{", "{\"strict\": tru}", "{} {}", "{\"strict\": true,}"] {
        let m = invalid_input(score(bad));
        assert!(m.starts_with("config: "), "{bad}: {m}");
    }
    // A refused config fails the whole batch, every sample with the same error.
    let two = [sample("", "a"), sample("", "b")];
    let all = r.score(&two, "{\"strict\": 1}");
    assert!(all.iter().all(|s| matches!(
        s,
        Err(PluginError::Guest {
            error: GuestError::InvalidInput(_),
            ..
        })
    )));
}

// ---- the calculator tool -----------------------------------------------------------

fn tool(path: &str) -> ToolPlugin {
    ToolPlugin::new(plugin(path), sandbox(World::Tool, |_| {})).unwrap()
}

/// The raw JSON answer of `calculate`, or the guest's error.
fn calculate(t: &ToolPlugin, expression: &str) -> Result<String, GuestError> {
    let args = serde_json::json!({ "expression": expression }).to_string();
    match t.call("calculate", &args) {
        Ok(r) => match r.output {
            ToolOutput::Json(j) => Ok(j),
            ToolOutput::Text(t) => panic!("expected JSON, got text {t:?}"),
        },
        Err(PluginError::Guest { error, .. }) => Err(error),
        Err(e) => panic!("{expression:?}: {e}"),
    }
}

fn calculator_describes_the_same_tool(path: &str) {
    let want = tool(artifacts::CALCULATOR).describe().unwrap();
    let got = tool(path).describe().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, want[0].name);
    assert_eq!(got[0].description, want[0].description);
    assert_eq!(got[0].parameters, want[0].parameters);
}

fn calculator_does_exact_arithmetic(path: &str) {
    let t = tool(path);
    let result = |e: &str| -> (String, String) {
        let v: serde_json::Value = serde_json::from_str(&calculate(&t, e).unwrap()).unwrap();
        assert_eq!(v["expression"], e);
        (
            v["result"].as_str().unwrap().to_owned(),
            v["decimal"].as_str().unwrap().to_owned(),
        )
    };
    for (e, exact, decimal) in [
        ("1/3+1/6", "1/2", "0.5"),
        ("0.1 + 0.2", "3/10", "0.3"),
        ("2*(3+4)", "14", "14"),
        ("-2^2", "-4", "-4"),
        ("2^3^2", "512", "512"),
        ("2**10", "1024", "1024"),
        ("(2/3)^-2", "9/4", "2.25"),
        ("+.5 - 5.", "-9/2", "-4.5"),
        ("(-1)^1000001", "-1", "-1"),
        ("0^0", "1", "1"),
        ("2^64", "18446744073709551616", "18446744073709551616"),
        ("1/3", "1/3", "~0.333333333333"),
        ("-2/3", "-2/3", "~-0.666666666667"),
        ("1/3000", "1/3000", "~0.000333333333333"),
        ("10^15/3", "1000000000000000/3", "~3.33333333333e14"),
        ("1/(7*10^7)", "1/70000000", "~1.42857142857e-8"),
        ("(10^12-1/3)", "2999999999999/3", "~1e12"),
        ("2^-10", "1/1024", "0.0009765625"),
    ] {
        assert_eq!(result(e), (exact.to_owned(), decimal.to_owned()), "{e}");
    }
}

/// Expressions whose answers (or error messages) the ports must give
/// exactly as the Rust calculator does.
fn calculator_battery() -> Vec<String> {
    let mut v: Vec<String> = [
        "1/3+1/6",
        "0.1 + 0.2",
        "(2 + 3) * -4",
        "2^64",
        "2^100",
        "1/4",
        "-2^2",
        "(-2)^2",
        "2^3^2",
        "2**10",
        "2^-1",
        "(2/3)^-2",
        "--3",
        "+-+3",
        "+.5 - 5.",
        "10 - 2 - 3",
        "8 / 2 / 2",
        "(-1)^1000001",
        "1^100000000000000000000",
        "0^0",
        " ( ( 7 ) ) ",
        "(-2)^-3",
        "-(1/3)",
        "1/3*3",
        "7/2",
        "100/3",
        "1/7",
        "2/3",
        "1/6",
        "-1/40",
        "1/8",
        "0",
        "-0",
        "0.000",
        "007.500",
        "1/3000",
        "10^15/3",
        "1/(7*10^7)",
        "(10^12-1/3)",
        "2^-10",
        "10^12/7",
        "-10^20/3",
        "1/(3*10^6)",
        "1/(3*10^7)",
        "999999999999.5",
        "9999999999999/10",
        "99999999999949/100",
        "1/999999999999",
        "2^(2^3)",
        "2^(1/1)",
        "(1/2)^20",
        "123456789012345678901234567890/7",
        "3^-5",
        "0.1^12",
        "0.3^13",
        "1\t+\n2",
        "1\u{a0}+\u{3000}2",
        "1\u{85}+2",
        "2 × 3",
        "1 +",
        "2 3",
        "(1",
        "x",
        "1.2.3",
        "",
        "   ",
        ".",
        "..",
        "1/0",
        "1/(2-2)",
        "0^-1",
        "2^0.5",
        "2^(1/2)",
        "2^100000000",
        "2^99999999999999999999999",
        "(2^60000)*(2^60000)",
        "2^99999",
        "2^100000",
        "3^62000",
        "1/3^62000",
        "(2/3)^40000",
        // Fractions of large coprime parts: reducing them is a gcd of
        // numbers of ~50,000 and ~95,000 bits.
        "(3^30000+1)/(2^47000+3)",
        "1/(3^30000+1) + 1/(2^47000+3)",
        "* 2",
        "2 ** * 3",
        "2 ^",
        "((1)",
        "1)",
        "4 / -2",
        "1\u{1c}+2",
        "1\u{feff}+2",
        "é",
        "😀",
        "2 + 😀",
        "1e5",
        "0x10",
        "1,000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Nesting and length at their limits and just past them.
    for depth in [99, 100, 101] {
        v.push(format!("{}1{}", "(".repeat(depth), ")".repeat(depth)));
        v.push(format!("{}1", "-".repeat(depth)));
    }
    v.push("(".repeat(1000));
    v.push(format!("2{}", "^2".repeat(120)));
    v.push("1".repeat(10_000));
    v.push("1".repeat(10_001));
    v.push(format!("{}1", " ".repeat(9_999)));
    v.push("9".repeat(30_200).chars().take(10_000).collect());
    v.push(format!("0.{}", "3".repeat(9_000)));
    v
}

fn calculator_answers_as_rust_does(path: &str) {
    let rust = tool(artifacts::CALCULATOR);
    let t = tool(path);
    for e in calculator_battery() {
        let want = calculate(&rust, &e);
        let got = calculate(&t, &e);
        let shown: String = e.chars().take(60).collect();
        assert_eq!(got, want, "{shown:?}");
    }
}

fn calculator_refuses_bad_calls(path: &str) {
    let t = tool(path);
    match guest_error(t.call("weather", "{}")) {
        GuestError::NotFound(m) => assert!(m.contains("\"weather\""), "{m}"),
        other => panic!("{other:?}"),
    }
    let m = invalid_input(t.call("calculate", "{}"));
    assert_eq!(m, "arguments.expression: missing");
    let m = invalid_input(t.call("calculate", r#"{"expression": null}"#));
    assert_eq!(m, "arguments.expression: missing");
    let m = invalid_input(t.call("calculate", r#"{"expression": 5}"#));
    assert!(m.starts_with("arguments.expression: "), "{m}");
    let m = invalid_input(t.call("calculate", r#"{"expression": "1", "x": 1}"#));
    assert_eq!(m, "arguments.x: unknown field; expected one of: expression");
    let m = invalid_input(t.call("calculate", "[]"));
    assert_eq!(m, "arguments: expected a JSON object, got an array");
    let m = invalid_input(t.call("calculate", "{\"expression\": \"1\""));
    assert!(m.starts_with("arguments: "), "{m}");
    // Escapes in the arguments reach the expression decoded, and come back
    // re-escaped the way serde_json writes them.
    let out = t
        .call("calculate", r#"{"expression": "1\t+\u0001\"2\"\\\u00e9"}"#)
        .map(|_| ());
    assert!(matches!(
        out,
        Err(PluginError::Guest {
            error: GuestError::InvalidInput(_),
            ..
        })
    ));
    let ok = calculate(&t, "\t1 +\r\n2\u{c}").unwrap();
    assert_eq!(
        ok,
        r#"{"expression":"\t1 +\r\n2\f","result":"3","decimal":"3"}"#
    );
}

// ---- the word-ban sampler ---------------------------------------------------------------

/// The default model's tokenizer, as the `tokenizer` capability.
fn tokenizer() -> Arc<ModelTokenizer> {
    static TOKENIZER: OnceLock<Arc<ModelTokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let engine = default_model();
            Arc::new(ModelTokenizer::new(
                engine.tokenizer.clone(),
                &engine.name,
                engine.model.info().vocab_size,
            ))
        })
        .clone()
}

/// A sampler plugin on the default model, under the sampler world's
/// limits (a 25 ms call deadline, as a failing step budget gives).
fn sampler(path: &str) -> SamplerPlugin {
    SamplerHosting::new(tokenizer(), DEFAULT_STEP_BUDGET, MissPolicy::Fail)
        .load(plugin(path))
        .unwrap()
}

fn params() -> SamplingParams {
    SamplingParams {
        temperature: None,
        top_k: None,
        top_p: None,
        min_p: None,
        repetition_penalty: None,
        presence_penalty: None,
        frequency_penalty: None,
        seed: None,
    }
}

/// The ids a `prepare` answer denies; `None` for a pure defer.
fn denied(p: &Prepared) -> Option<Vec<u32>> {
    let Prepared::Decided(Decision::Sample(spec)) = p else {
        panic!("expected a decided sample, got {p:?}");
    };
    assert!(spec.allow.is_none() && spec.bias.is_empty() && spec.params.is_none());
    spec.deny.as_ref().map(|set| match set {
        TokenSet::Ids(ids) => ids.clone(),
        TokenSet::Bitset(words) => (0..words.len() as u32 * 32)
            .filter(|t| words[(t / 32) as usize] >> (t % 32) & 1 == 1)
            .collect(),
        TokenSet::Ranges(_) => panic!("word-ban sends ids or a bitset"),
    })
}

fn encode(text: &str) -> Vec<u32> {
    default_model()
        .tokenizer
        .encode(text, false)
        .expect("encoding")
}

/// The token bytes of every id, lowercased, from the host's tokenizer.
fn vocab() -> Vec<Vec<u8>> {
    let t = &default_model().tokenizer;
    let n = default_model().model.info().vocab_size as u32;
    (0..n)
        .map(|id| {
            t.token_bytes(id)
                .map(|b| b.to_ascii_lowercase())
                .unwrap_or_default()
        })
        .collect()
}

fn word_ban_denies_what_would_complete_a_word(path: &str) {
    let s = sampler(path);
    let vocab = vocab();
    let eos = default_model().tokenizer.eos().to_vec();
    let contains =
        |hay: &[u8], w: &[u8]| w.len() <= hay.len() && hay.windows(w.len()).any(|x| x == w);

    // No words: a pure defer at every step, no deny set at all.
    let mut seq = s.open("{}", &[], &params()).unwrap();
    assert_eq!(denied(&seq.prepare(0, &[]).unwrap()), None);
    assert_eq!(denied(&seq.prepare(1, &encode(" Paris")).unwrap()), None);
    drop(seq);

    let mut seq = s
        .open(r#"{"words": ["Paris"]}"#, &[1, 2], &params())
        .unwrap();
    let at_start = denied(&seq.prepare(0, &[]).unwrap()).expect("a deny set");
    // Exactly the tokens containing the word, ASCII case-insensitively.
    let want: Vec<u32> = (0..vocab.len() as u32)
        .filter(|&t| contains(&vocab[t as usize], b"paris") && !eos.contains(&t))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(at_start, want);

    // After "Pa": also every token starting with "ris".
    let pa = encode(" Pa");
    let after_pa = denied(&seq.prepare(1, &pa).unwrap()).unwrap();
    let tail: Vec<u8> = pa.iter().flat_map(|&t| vocab[t as usize].clone()).collect();
    assert!(
        tail.ends_with(b"pa"),
        "{:?}",
        String::from_utf8_lossy(&tail)
    );
    let completing: Vec<u32> = (0..vocab.len() as u32)
        .filter(|&t| {
            vocab[t as usize].starts_with(b"ris") || contains(&vocab[t as usize], b"paris")
        })
        .filter(|t| !eos.contains(t))
        .collect();
    for t in &completing {
        assert!(
            after_pa.contains(t),
            "token {t} {:?}",
            String::from_utf8_lossy(&vocab[*t as usize])
        );
    }
    // An end-of-sequence token clears the text seen so far, and is never denied.
    let after_eos = denied(&seq.prepare(2, &eos[..1]).unwrap()).unwrap();
    assert_eq!(after_eos, want);
    assert!(
        eos.iter()
            .all(|t| !after_pa.contains(t) && !after_eos.contains(t))
    );
}

/// Every answer of a scripted sequence, in Debug form.
fn word_ban_script(path: &str, config: &str, text: &str) -> Vec<String> {
    let s = sampler(path);
    let mut seq = s.open(config, &[5, 6, 7], &params()).unwrap();
    let tokens = encode(text);
    let eos = default_model().tokenizer.eos()[0];
    let mut out = vec![format!("{:?}", seq.prepare(0, &[]).unwrap())];
    for (step, chunk) in tokens.chunks(3).enumerate() {
        // Several tokens at once (as after a forced run), then one, then an EOS.
        let step = step as u32 * 3;
        out.push(format!("{:?}", seq.prepare(step + 1, chunk).unwrap()));
        out.push(format!("{:?}", seq.prepare(step + 2, &chunk[..1]).unwrap()));
        if step.is_multiple_of(4) {
            out.push(format!("{:?}", seq.prepare(step + 3, &[eos]).unwrap()));
        }
    }
    // `decide` is a defer for a host that calls it anyway.
    let d = seq
        .decide(
            99,
            Arc::new(crate::util::logits(
                default_model().model.info().vocab_size,
                1,
            )),
        )
        .unwrap();
    out.push(format!("{d:?}"));
    out
}

fn word_ban_decides_as_rust_does(path: &str) {
    let text = "The Parisian parade paused; PARIS pa ri s! Naïve café, the THE the, \
                thermos hello world — Paris, paris, Pa\nris";
    for config in [
        r#"{"words": ["paris"]}"#,
        r#"{"words": ["the", "Paris", "THE", "a"]}"#,
        r#"{"words": ["café", "naïve", " pa", "s!"]}"#,
        r#"{"words": ["e"]}"#,
        r#"{"words": []}"#,
        r#"{"words": null}"#,
    ] {
        let want = word_ban_script(artifacts::WORD_BAN, config, text);
        let got = word_ban_script(path, config, text);
        assert_eq!(want.len(), got.len());
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                w == g,
                "{config}: answer {i} differs:\nrust: {w:.300}\ngot:  {g:.300}"
            );
        }
    }
}

fn word_ban_refuses_bad_configs(path: &str) {
    let s = sampler(path);
    let open = |config: &str| s.open(config, &[], &params()).map(|_| ());
    let m = invalid_input(open(r#"{"words": "foo"}"#));
    assert!(m.starts_with("config.words"), "{m}");
    let m = invalid_input(open(r#"{"words": ["a", 3]}"#));
    assert!(m.starts_with("config.words"), "{m}");
    let m = invalid_input(open(r#"{"words": ["a", ""]}"#));
    assert_eq!(m, "config.words[1]: must not be empty");
    let m = invalid_input(open(r#"{"word": ["a"]}"#));
    assert_eq!(m, "config.word: unknown field; expected one of: words");
    let m = invalid_input(open("[]"));
    assert_eq!(m, "config: expected a JSON object, got an array");
    // A refused config leaves the instance healthy for the next sequence.
    open(r#"{"words": ["ok"]}"#).unwrap();
}

fn word_ban_steers_the_model_as_rust_does(path: &str) {
    let engine = default_model();
    let req = GenerateRequest {
        max_tokens: 12,
        params: EngineParams {
            temperature: 0.0,
            ..EngineParams::default()
        },
        ..GenerateRequest::new(Prompt::Text {
            text: "The capital of France is".into(),
            add_special_tokens: true,
        })
    };
    let run = |path: &str| {
        let s = sampler(path);
        // Setup (the vocabulary index) happens here, outside the step budget.
        s.warm_up().unwrap();
        let budget = Duration::from_millis(25);
        let mut ps = PluginSampler::new(s, r#"{"words": ["paris"]}"#, budget, MissPolicy::Fail);
        engine.generate(&req, &mut ps, &mut |_| {}).unwrap()
    };
    let want = run(artifacts::WORD_BAN);
    let got = run(path);
    assert!(!got.text.to_lowercase().contains("paris"), "{:?}", got.text);
    assert_eq!(got.tokens, want.tokens, "{:?} vs {:?}", got.text, want.text);
}
