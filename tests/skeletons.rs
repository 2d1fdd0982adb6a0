//! `deepwasm plugin new` for every language and world, built with the one
//! command its README documents (`cd DIR && deepwasm plugin build`), loaded
//! by `deepwasm plugin inspect`, and run: reward skeletons score through
//! `deepwasm score`, tool and sampler skeletons answer calls, agent
//! skeletons (which need a served model) are loaded only.
//!
//! One test per language builds its four skeletons in turn. Rust skeletons
//! share a target directory under `CARGO_TARGET_TMPDIR`, so only the first
//! compiles the SDK and its dependencies.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use deepwasm_plugins::types::ToolOutput;
use deepwasm_plugins::{
    Decision, Limits, Prepared, SamplerPlugin, SamplingParams, Sandbox, ToolPlugin, World,
};
use serde_json::{Value, json};

use crate::util::{deepwasm_bin, logits, plugin};

const WORLDS: [&str; 4] = ["reward", "sampler", "tool", "agent"];

#[test]
fn rust() {
    skeletons("rust");
}

#[test]
fn python() {
    skeletons("python");
}

#[test]
fn js() {
    skeletons("js");
}

#[test]
fn c() {
    skeletons("c");
}

fn tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// Run `deepwasm args` in `dir`, sharing the tests' component cache.
fn deepwasm(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(deepwasm_bin())
        .current_dir(dir)
        .args(args)
        .env("DEEPWASM_COMPONENT_CACHE", tmp().join("component-cache"))
        .env("CARGO_TARGET_DIR", tmp().join("skeleton-target"))
        .output()
        .expect("running deepwasm");
    assert!(
        out.status.success(),
        "deepwasm {args:?} in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn skeletons(lang: &str) {
    let root = tmp().join("skeletons").join(lang);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    for world in WORLDS {
        let name = format!("my-{world}");
        let dir = root.join(&name);
        deepwasm(
            &root,
            &["plugin", "new", "--lang", lang, "--world", world, &name],
        );
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(
            readme.contains("deepwasm plugin build"),
            "the README shows the build command:\n{readme}"
        );
        let built = deepwasm(&dir, &["plugin", "build"]);
        let said = String::from_utf8_lossy(&built.stdout);
        assert!(
            said.contains(&format!("built {name}.wasm ({world} world, {lang}")),
            "{said}"
        );
        let wasm = dir.join(format!("{name}.wasm"));
        let inspected = deepwasm(
            &dir,
            &["plugin", "inspect", "--json", &format!("{name}.wasm")],
        );
        let info: Value = serde_json::from_slice(&inspected.stdout).unwrap();
        assert_eq!(info["world"], world, "{lang} {world}");
        assert_eq!(info["name"], name.as_str());
        match world {
            "reward" => check_reward(&dir, &name),
            "sampler" => check_sampler(&wasm),
            "tool" => check_tool(&wasm),
            _ => {}
        }
    }
}

/// The reward skeleton scores 1.0 when the completion holds the needle.
fn check_reward(dir: &Path, name: &str) {
    let samples = dir.join("samples.jsonl");
    std::fs::write(
        &samples,
        "{\"completion\": \"<think>2+2 is 4</think>4\"}\n{\"completion\": \"4\"}\n",
    )
    .unwrap();
    let scores = |extra: &[&str]| -> Vec<f64> {
        let mut args = vec!["score", "--reward", "", "--input", "samples.jsonl"];
        let file = format!("{name}.wasm");
        args[2] = &file;
        args.extend_from_slice(extra);
        let out = deepwasm(dir, &args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["total"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(scores(&[]), [1.0, 0.0]);
    let config = format!("{name}={{\"needle\": \"4\"}}");
    assert_eq!(scores(&["--config", &config]), [1.0, 1.0]);
}

/// The sampler skeleton is greedy and stops after `max_steps`.
fn check_sampler(wasm: &Path) {
    let sampler = SamplerPlugin::new(
        plugin(wasm.to_str().unwrap()),
        Sandbox::new(Limits::for_world(World::Sampler)),
    )
    .unwrap();
    let params = SamplingParams {
        temperature: None,
        top_k: None,
        top_p: None,
        min_p: None,
        repetition_penalty: None,
        presence_penalty: None,
        frequency_penalty: None,
        seed: None,
    };
    let mut seq = sampler
        .open(r#"{"max_steps": 2}"#, &[1, 2], &params)
        .unwrap();
    let values = logits(1000, 7);
    let best = (0..values.len())
        .max_by(|&a, &b| values[a].total_cmp(&values[b]).then(b.cmp(&a)))
        .unwrap() as u32;
    let values = Arc::new(values);
    for step in 0..2 {
        let new_tokens = if step == 0 { vec![] } else { vec![best] };
        assert!(matches!(
            seq.prepare(step, &new_tokens).unwrap(),
            Prepared::NeedLogits
        ));
        match seq.decide(step, values.clone()).unwrap() {
            Decision::Pick(t) => assert_eq!(t, best),
            other => panic!("expected a pick, got {other:?}"),
        }
    }
    assert!(matches!(
        seq.prepare(2, &[best]).unwrap(),
        Prepared::Decided(Decision::Stop)
    ));
}

/// The tool skeleton offers `echo`, which counts characters, not bytes.
fn check_tool(wasm: &Path) {
    let tool = ToolPlugin::new(
        plugin(wasm.to_str().unwrap()),
        Sandbox::new(Limits::for_world(World::Tool)),
    )
    .unwrap();
    let specs = tool.describe().unwrap();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].name, "echo");
    let out = tool.call("echo", r#"{"text": "héllo"}"#).unwrap();
    let ToolOutput::Json(answer) = out.output else {
        panic!("expected JSON, got {:?}", out.output);
    };
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer, json!({"text": "héllo", "chars": 5}));
}
