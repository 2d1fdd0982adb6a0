use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::util::{artifacts, deepwasm_bin, default_model_path, models_dir};

/// `deepwasm bench gpu ARGS --device cpu --report <dir>/report.json`, the
/// generated checkpoints written under `dir`; its output and report.
fn gpu_check(dir: &Path, args: &[&str]) -> (Output, Value) {
    let report = dir.join("report.json");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache");
    let plugins = Path::new(artifacts::TOP_K).parent().unwrap();
    let out = Command::new(deepwasm_bin())
        .args(["bench", "gpu", "--device", "cpu"])
        .args(args)
        .arg("--report")
        .arg(&report)
        .arg("--plugins")
        .arg(plugins)
        .arg("--scratch")
        .arg(dir)
        .env("DEEPWASM_COMPONENT_CACHE", cache)
        .output()
        .expect("running deepwasm");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out,
        serde_json::from_str(&text).expect("the report is JSON"),
    )
}

fn f64_at(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// The GPU check's quick run on the CPU, as CI runs it: every tiny
/// DeepSeek checkpoint and SmolLM2 pass in f32 (batched against one
/// sequence) and in bf16, and both random-weight checkpoints are written,
/// loaded and measured with the built-in and the top-k plugin sampler.
#[test]
fn the_gpu_check_passes_on_the_cpu_with_every_figure_in_its_report() {
    let gguf = default_model_path();
    let dir = tempfile::tempdir().unwrap();
    // Logits kept "on the device" (the CPU here), as on a GPU.
    let (out, r) = gpu_check(dir.path(), &["--quick", "--logits", "device"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(r["passed"], true, "{:#}", r["failures"]);
    assert_eq!(r["failures"], serde_json::json!([]));
    assert_eq!(r["skipped"], serde_json::json!([]), "inputs are missing");
    assert_eq!(r["device"]["requested"], "cpu");
    assert!(
        r["date"].as_str().unwrap().starts_with("20"),
        "{}",
        r["date"]
    );
    assert_eq!(r["quick"], true);

    let models = r["fidelity"]["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "tiny-deepseek-v3",
            "tiny-deepseek-v3-fp8",
            "tiny-deepseek-v2-lite",
            gguf.file_name().unwrap().to_str().unwrap(),
            "tiny Qwen2, R1-Distill's architecture (generated)",
            "tiny DeepSeek-V2, V2-Lite's architecture (generated)",
            "tiny DeepSeek-V3 (generated)",
            "tiny DeepSeek-V3, FP8 (generated)",
        ]
    );
    let fixtures = models_dir().parent().unwrap().join("fixtures");
    for m in models {
        let name = m["name"].as_str().unwrap();
        assert_eq!(m["status"], "checked", "{name}: {m:#}");
        let path = m["path"].as_str().unwrap();
        if name.ends_with("(generated)") {
            assert_eq!(path, "(generated, removed after the check)");
            assert!(m["config"]["model_type"].is_string(), "{name}");
        } else {
            let want = if m["format"] == "gguf" {
                gguf.clone()
            } else {
                fixtures.join(name)
            };
            assert_eq!(Path::new(path), want, "{name}");
        }
        assert_eq!(m["reference"]["greedy"].as_array().unwrap().len(), 3);
        let scale = f64_at(&m["reference"]["logit_absmax"], "logit_absmax");
        let runs = m["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{name}");
        let f32 = &runs[0];
        assert_eq!(
            (f32["device"].as_str(), f32["dtype"].as_str()),
            (Some("cpu"), Some("f32"))
        );
        assert_eq!(f32["passed"], true, "{name}: {f32:#}");
        assert_eq!(f32["greedy_tokens_same"], true, "{name}");
        let max = f64_at(&f32["max_abs_dlogit"], "max_abs_dlogit");
        assert!(max <= 1e-4 + 1e-5 * scale, "{name}: f32 moved by {max}");
        let bf16 = &runs[1];
        assert_eq!(bf16["dtype"], "bf16");
        if m["format"] == "gguf" {
            let status = bf16["status"].as_str().unwrap();
            assert!(status.starts_with("not applicable"), "{status}");
        } else {
            assert_eq!(bf16["passed"], true, "{name}: {bf16:#}");
            let judged = f64_at(&bf16["fraction_of_tolerance"]["judged"], "judged");
            assert!(judged <= 1.0, "{name}: bf16 at {judged} of its tolerance");
        }
    }

    let t = &r["throughput"];
    assert_eq!(t["layers"], 2);
    let batches: Vec<u64> = t["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert_eq!(batches, [1, 16, 64]);
    let models = t["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for (m, arch) in models.iter().zip(["qwen2", "deepseek_v2"]) {
        let name = m["name"].as_str().unwrap();
        assert_eq!(m["status"], "measured", "{name}: {m:#}");
        assert_eq!(m["config"]["model_type"], arch);
        assert_eq!(m["config"]["num_hidden_layers"], 2);
        assert!(
            m["config"]["hidden_size"].as_u64().unwrap() <= 96,
            "tiny widths"
        );
        assert_eq!(m["compute_dtype"], "f32");
        assert!(f64_at(&m["prefill"]["tok_s"], "prefill") > 0.0);
        let rows = m["decode"].as_array().unwrap();
        assert_eq!(rows.len(), 2 * batches.len(), "{name}");
        for (row, (batch, sampler)) in rows.iter().zip(
            batches
                .iter()
                .flat_map(|&b| [(b, "built-in"), (b, "top-k plugin")]),
        ) {
            assert_eq!(row["batch"], batch, "{name}");
            assert_eq!(row["sampler"], sampler, "{name}");
            // 8 steps after each sequence's first token, fewer where a
            // sequence's first came late.
            let tokens = row["tokens"].as_u64().unwrap();
            assert!(tokens > 0 && tokens <= batch * 8, "{name}: {row}");
            assert!(f64_at(&row["tok_s"], "tok_s") > 0.0, "{name}: {row}");
            // Every step's rows stayed on the device; at most a row's
            // bytes came back per row (the tiny vocabulary of 1,024 is
            // copied whole for top-40, past a quarter of its blocks).
            let logits = &row["logits"];
            assert!(
                logits["device_rows"].as_u64().unwrap() >= tokens,
                "{name}: {row}"
            );
            let per_row = f64_at(&logits["to_host_bytes_per_row"], "to_host_bytes_per_row");
            assert!(
                per_row > 0.0 && per_row <= 1024.0 * 4.0 + 64.0,
                "{name}: {row}"
            );
        }
        assert_eq!(m["logits_on_device"], true, "{name}");
    }
    // The generated checkpoints are gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "report.json")
        .collect();
    assert!(left.is_empty(), "{left:?}");

    assert!(
        stdout.contains("| tiny-deepseek-v3 | cpu bf16 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| DeepSeek-V2-Lite shape | 2 |"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("report.json"), "{stdout}");
}

/// Inputs that are not there are skips in the report, not a crash, and
/// leave the check passing.
#[test]
fn the_gpu_check_reports_missing_inputs_as_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("nowhere");
    let (out, r) = gpu_check(
        dir.path(),
        &[
            "--no-throughput",
            "--fixtures",
            nowhere.to_str().unwrap(),
            "--model",
            nowhere.join("model.gguf").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["passed"], true);
    let skipped: Vec<&str> = r["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    // The three fixtures and the GGUF model; the generated checkpoints are
    // still checked.
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert_eq!(
        skipped[0],
        format!(
            "skipped: {} not found",
            nowhere.join("tiny-deepseek-v3").display()
        )
    );
    let models = r["fidelity"]["models"].as_array().unwrap();
    assert_eq!(models[3]["status"], skipped[3]);
    assert_eq!(models.len(), 8);
    assert!(models[4..].iter().all(|m| m["status"] == "checked"));
    assert_eq!(r["throughput"], "skipped: --no-throughput");
}
