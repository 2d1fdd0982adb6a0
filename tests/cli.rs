use std::io::Write;
use std::process::{Command, Output};

use serde_json::Value;

use crate::util::{artifacts, deepwasm_bin};

fn deepwasm(args: &[&str]) -> Output {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache");
    Command::new(deepwasm_bin())
        .args(args)
        .env("DEEPWASM_COMPONENT_CACHE", cache)
        .output()
        .expect("running deepwasm")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn inspect_names_the_world_imports_and_exports() {
    let o = deepwasm(&["plugin", "inspect", artifacts::WORD_BAN]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("world    sampler"), "{text}");
    assert!(text.contains("deepwasm:plugin/controller@0.1.0"), "{text}");
    assert!(text.contains("deepwasm:plugin/tokenizer@0.1.0"), "{text}");

    let o = deepwasm(&["plugin", "inspect", "--json", artifacts::CALCULATOR]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["world"], "tool");
    assert_eq!(info["name"], "calculator");
    assert_eq!(info["id"].as_str().unwrap().len(), 64);
}

#[test]
fn inspect_of_a_non_component_fails_with_the_cause() {
    let o = deepwasm(&["plugin", "inspect", "Cargo.toml"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("error: cannot load Cargo.toml"), "{err}");
    assert!(
        err.contains("caused by: `Cargo` is not a WebAssembly binary"),
        "{err}"
    );

    let o = deepwasm(&["plugin", "inspect", "no/such/file.wasm"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot read no/such/file.wasm"),
        "{}",
        stderr(&o)
    );
}

fn write_jsonl(rows: &[Value]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for r in rows {
        writeln!(f, "{r}").unwrap();
    }
    f
}

#[test]
fn score_writes_each_reward_and_the_weighted_total() {
    let input = write_jsonl(&[
        serde_json::json!({"prompt": "2+2?", "completion": "<think>4</think>\\boxed{4}", "answer": "4"}),
        serde_json::json!({"prompt": "2+3?", "completion": "\\boxed{6}", "answer": "5"}),
        serde_json::json!({"prompt": "hi", "completion": "<think>x</think>hello"}),
    ]);
    let fmt = format!("{}:0.5", artifacts::R1_FORMAT);
    let o = deepwasm(&[
        "score",
        "--reward",
        &fmt,
        "--reward",
        artifacts::MATH_ACCURACY,
        "--input",
        input.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0]["rewards"],
        serde_json::json!({"r1-format": 1.0, "math-accuracy": 1.0})
    );
    assert_eq!(rows[0]["total"], 1.5);
    assert_eq!(
        rows[1]["rewards"],
        serde_json::json!({"r1-format": 0.0, "math-accuracy": 0.0})
    );
    assert_eq!(rows[1]["total"], 0.0);
    // No ground truth: the accuracy reward does not apply.
    assert_eq!(
        rows[2]["rewards"],
        serde_json::json!({"r1-format": 1.0, "math-accuracy": null})
    );
    assert_eq!(rows[2]["total"], 0.5);
    assert!(
        stderr(&o).contains("scored 3 samples with 2 reward(s)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn score_records_a_failing_sample_and_scores_the_rest() {
    let input = write_jsonl(&[
        serde_json::json!({"completion": "fine"}),
        serde_json::json!({"completion": "TRAP"}),
        serde_json::json!({"completion": "fine"}),
    ]);
    let o = deepwasm(&[
        "score",
        "--reward",
        artifacts::HOSTILE_REWARD,
        "--input",
        input.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["total"], 1.0);
    assert_eq!(rows[1]["total"], Value::Null);
    assert_eq!(rows[1]["errors"]["hostile-reward"]["kind"], "trap");
    assert_eq!(rows[2]["total"], 1.0);
}

#[test]
fn score_refuses_bad_input_naming_the_line() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, r#"{{"completion": "ok"}}"#).unwrap();
    writeln!(f, r#"{{"prompt": "no completion here"}}"#).unwrap();
    let o = deepwasm(&[
        "score",
        "--reward",
        artifacts::R1_FORMAT,
        "--input",
        f.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("missing field `completion`"), "{err}");
    assert!(o.stdout.is_empty(), "nothing is written for a bad input");

    let o = deepwasm(&[
        "score",
        "--reward",
        &format!("{}:lots", artifacts::R1_FORMAT),
        "--input",
        "-",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is not a number"), "{}", stderr(&o));
}
