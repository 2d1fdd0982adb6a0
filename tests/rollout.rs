use std::io::Write;
use std::process::Command;

use serde_json::Value;

use crate::util::{artifacts, deepwasm_bin};

/// Three problems of the bundled math set; the third carries a field that
/// makes the hostile reward trap on its samples.
fn prompts() -> tempfile::NamedTempFile {
    let text = std::fs::read_to_string(crate::util::fixture(
        "../../examples/rollout-math/problems.jsonl",
    ))
    .unwrap();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for (i, line) in text.lines().take(3).enumerate() {
        let mut row: Value = serde_json::from_str(line).unwrap();
        if i == 2 {
            row["hostile"] = "TRAP".into();
        }
        writeln!(f, "{row}").unwrap();
    }
    f
}

fn rollout(input: &std::path::Path) -> Vec<Value> {
    let length = format!("{}:0.5", artifacts::LENGTH_PENALTY);
    let o = Command::new(deepwasm_bin())
        .args(["rollout", "--prompts"])
        .arg(input)
        .args([
            "--group-size",
            "4",
            "--max-tokens",
            "16",
            "--temperature",
            "1.0",
            "--seed",
            "11",
            "--chat",
        ])
        .args([
            "--reward",
            artifacts::MATH_ACCURACY,
            "--reward",
            &length,
            "--reward",
            artifacts::HOSTILE_REWARD,
        ])
        .args([
            "--config",
            r#"length-penalty={"max_length": 14, "buffer": 10}"#,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_rollout_gives_groups_with_centred_advantages_and_repeats_exactly() {
    let input = prompts();
    let lines = rollout(input.path());
    assert_eq!(lines.len(), 4, "three groups and a summary");
    let mut saw_spread = false;
    for (i, group) in lines[..3].iter().enumerate() {
        assert_eq!(group["index"], i, "groups come out in the file's order");
        assert!(
            group["extra"]["answer"].is_string() && group["extra"]["id"].is_string(),
            "the row's other fields are echoed under `extra`: {group}"
        );
        assert!(group.get("answer").is_none(), "and only there");
        let completions = group["completions"].as_array().unwrap();
        assert_eq!(completions.len(), 4);
        let advantages: Vec<f64> = completions
            .iter()
            .filter_map(|c| c["advantage"].as_f64())
            .collect();
        assert_eq!(
            advantages.len(),
            4,
            "every sample has a total (length penalty always applies)"
        );
        assert!(
            advantages.iter().sum::<f64>().abs() < 1e-6,
            "group {i}: {advantages:?}"
        );
        saw_spread |= advantages.iter().any(|a| a.abs() > 1e-3);
        for c in completions {
            let tokens = c["tokens"].as_array().unwrap().len();
            assert!((1..=16).contains(&tokens));
            assert_eq!(c["logprobs"].as_array().unwrap().len(), tokens);
            assert!(
                c["logprobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|l| l.as_f64().unwrap() <= 0.0)
            );
            // Weighted total: 1 × accuracy + 0.5 × length penalty (+ the
            // hostile reward's 1.0 where it did not fail).
            let r = &c["rewards"];
            let mut want = r["math-accuracy"].as_f64().unwrap_or(0.0)
                + 0.5 * r["length-penalty"].as_f64().unwrap();
            want += r["hostile-reward"].as_f64().unwrap_or(0.0);
            assert!((c["total"].as_f64().unwrap() - want).abs() < 1e-9);
        }
        // The hostile reward fails on the third row's samples only, each
        // with its reason; the other rewards still score them.
        for c in completions {
            let failed = c["errors"]["hostile-reward"]["kind"] == "trap";
            assert_eq!(failed, i == 2, "row {i}: {c}");
            assert!(c["rewards"]["length-penalty"].is_number());
        }
    }
    assert!(saw_spread, "some group's rewards should differ");
    let summary = &lines[3]["summary"];
    assert_eq!(summary["completions"], 12);
    assert_eq!(summary["reward_failures"], 4);
    // A completion passes when its total reaches the threshold (default 1).
    let totals: Vec<f64> = lines[..3]
        .iter()
        .flat_map(|g| g["completions"].as_array().unwrap())
        .map(|c| c["total"].as_f64().unwrap())
        .collect();
    let passed = totals.iter().filter(|&&t| t >= 1.0).count();
    assert_eq!(summary["pass_threshold"], 1.0);
    assert!((summary["pass_rate"].as_f64().unwrap() - passed as f64 / 12.0).abs() < 1e-12);

    // The same seeds give the same rollout, scores included.
    let again = rollout(input.path());
    assert_eq!(lines[..3], again[..3]);
}

#[test]
fn a_row_without_a_prompt_is_refused_by_line() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, r#"{{"prompt": "1+1?", "answer": "2"}}"#).unwrap();
    writeln!(f, r#"{{"question": "2+2?"}}"#).unwrap();
    let o = Command::new(deepwasm_bin())
        .args(["rollout", "--prompts"])
        .arg(f.path())
        .args(["--reward", artifacts::MATH_ACCURACY])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 2") && err.contains("missing field `prompt`"),
        "{err}"
    );
}

/// Best-of-n returns the candidate with the highest weighted total, the
/// first one on ties, and lists every candidate's scores.
#[test]
fn best_of_returns_the_best_scored_completion() {
    let o = Command::new(deepwasm_bin())
        .args([
            "generate",
            "--prompt",
            "What is 7 + 8? Answer:",
            "--max-tokens",
            "10",
            "--temperature",
            "1",
        ])
        .args([
            "--seed",
            "4",
            "--best-of",
            "5",
            "--reward",
            artifacts::MATH_ACCURACY,
            "--reward",
        ])
        .arg(format!("{}:2", artifacts::LENGTH_PENALTY))
        .args([
            "--reward-config",
            r#"length-penalty={"max_length": 9, "buffer": 8}"#,
        ])
        .args(["--extra", r#"{"answer": "15"}"#, "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let candidates = v["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 5);
    let totals: Vec<f64> = candidates
        .iter()
        .map(|c| c["total"].as_f64().unwrap())
        .collect();
    let max = totals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let first_best = totals.iter().position(|&t| t == max).unwrap();
    assert_eq!(v["best"], first_best, "{totals:?}");
    for c in candidates {
        let r = &c["rewards"];
        let want =
            r["math-accuracy"].as_f64().unwrap() + 2.0 * r["length-penalty"].as_f64().unwrap();
        assert!((c["total"].as_f64().unwrap() - want).abs() < 1e-9);
    }
}
