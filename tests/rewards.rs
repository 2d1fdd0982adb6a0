use deepwasm_plugins::{LimitHit, PluginError, RewardPlugin, Sample, World};

use crate::util::{artifacts, plugin, sandbox};

fn reward(path: &str) -> RewardPlugin {
    RewardPlugin::new(plugin(path), sandbox(World::Reward, |_| {})).unwrap()
}

fn sample(prompt: &str, completion: &str, extra: &str) -> Sample {
    Sample {
        prompt: prompt.into(),
        completion: completion.into(),
        completion_tokens: vec![],
        extra: extra.into(),
    }
}

fn scores(reward: &RewardPlugin, samples: &[Sample], config: &str) -> Vec<Option<f64>> {
    reward
        .score(samples, config)
        .into_iter()
        .map(|s| s.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

#[test]
fn r1_format_follows_the_think_then_answer_rule() {
    let r = reward(artifacts::R1_FORMAT);
    let cases = [
        ("", "<think>2+2 is 4</think>The answer is 4.", 1.0),
        ("", "<think>\nreasoning\n</think>\n\\boxed{4}", 1.0),
        ("", "The answer is 4.", 0.0),
        ("", "<think>unfinished reasoning", 0.0),
        ("", "<think>a<think>b</think>c", 0.0),
        ("", " <think>leading space</think>x", 0.0),
        // The R1 chat template opens the reasoning in the prompt.
        (
            "<｜User｜>2+2?<｜Assistant｜><think>\n",
            "it is 4\n</think>\n4",
            1.0,
        ),
        (
            "<｜User｜>2+2?<｜Assistant｜><think>\n",
            "no closing tag",
            0.0,
        ),
    ];
    let samples: Vec<Sample> = cases.iter().map(|(p, c, _)| sample(p, c, "{}")).collect();
    let got = scores(&r, &samples, "{}");
    for ((p, c, want), got) in cases.iter().zip(got) {
        assert_eq!(got, Some(*want), "prompt {p:?} completion {c:?}");
    }
}

#[test]
fn r1_format_strict_mode_wants_one_close_and_an_answer() {
    let r = reward(artifacts::R1_FORMAT);
    let samples = [
        sample("", "<think>a</think>answer", "{}"),
        sample("", "<think>a</think>   ", "{}"),
        sample("", "<think>a</think>b</think>c", "{}"),
    ];
    assert_eq!(
        scores(&r, &samples, "{}"),
        [Some(1.0), Some(1.0), Some(1.0)]
    );
    assert_eq!(
        scores(&r, &samples, r#"{"strict": true}"#),
        [Some(1.0), Some(0.0), Some(0.0)]
    );
}

#[test]
fn math_accuracy_compares_normalised_boxed_answers() {
    let r = reward(artifacts::MATH_ACCURACY);
    let cases = [
        (r"so \boxed{42}", r#"{"answer": "42"}"#, Some(1.0)),
        (r"\boxed{\frac{3}{4}}", r#"{"answer": "0.75"}"#, Some(1.0)),
        (r"\boxed{6/8}", r#"{"answer": "\\frac{3}{4}"}"#, Some(1.0)),
        (r"\boxed{1,234}", r#"{"answer": "1234"}"#, Some(1.0)),
        (r"\boxed{-3}", r#"{"answer": "3"}"#, Some(0.0)),
        (
            r"first \boxed{1} then \boxed{2}",
            r#"{"answer": "2"}"#,
            Some(1.0),
        ),
        (r"\boxed{\text{yes}}", r#"{"answer": "yes"}"#, Some(1.0)),
        ("no boxed answer: 42", r#"{"answer": "42"}"#, Some(0.0)),
        (r"\boxed{42}", "{}", None),
        // The answer after the reasoning counts, not a draft inside it.
        (
            r"<think>maybe \boxed{41}</think> \boxed{42}",
            r#"{"answer": "42"}"#,
            Some(1.0),
        ),
    ];
    let samples: Vec<Sample> = cases.iter().map(|(c, e, _)| sample("", c, e)).collect();
    let got = scores(&r, &samples, "{}");
    for ((c, e, want), got) in cases.iter().zip(got) {
        assert_eq!(got, *want, "completion {c:?} extra {e}");
    }
}

#[test]
fn math_accuracy_reads_the_field_its_config_names() {
    let r = reward(artifacts::MATH_ACCURACY);
    let s = [sample("", r"\boxed{7}", r#"{"solution": "7"}"#)];
    assert_eq!(scores(&r, &s, "{}"), [None]);
    assert_eq!(scores(&r, &s, r#"{"field": "solution"}"#), [Some(1.0)]);
}

#[test]
fn a_bad_config_is_a_guest_error_for_the_whole_batch() {
    let r = reward(artifacts::MATH_ACCURACY);
    let s = [
        sample("", r"\boxed{7}", "{}"),
        sample("", r"\boxed{8}", "{}"),
    ];
    let got = r.score(&s, r#"{"field": 12}"#);
    for score in got {
        match score {
            Err(PluginError::Guest { error, .. }) => {
                assert!(error.to_string().contains("field"), "{error}")
            }
            other => panic!("expected a guest error, got {other:?}"),
        }
    }
}

#[test]
fn scores_are_deterministic_and_independent_of_batching() {
    let r = reward(artifacts::MATH_ACCURACY);
    let samples: Vec<Sample> = (0..200)
        .map(|i| {
            sample(
                "",
                &format!(r"\boxed{{{}}}", i % 7),
                &format!(r#"{{"answer": "{}"}}"#, i % 5),
            )
        })
        .collect();
    let once = scores(&r, &samples, "{}");
    let again = scores(&r, &samples, "{}");
    assert_eq!(once, again);
    let parallel: Vec<Option<f64>> = r
        .score_parallel(&samples, "{}", 2, 16)
        .into_iter()
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(once, parallel);
    let right = once.iter().filter(|s| **s == Some(1.0)).count();
    let expected = (0..200).filter(|i| i % 7 == i % 5).count();
    assert_eq!(right, expected);
}

#[test]
fn a_failing_sample_marks_only_itself() {
    let r = reward(artifacts::HOSTILE_REWARD);
    let texts = [
        "fine", "LOOP", "fine", "TRAP", "fine", "OOM", "fine", "fine",
    ];
    let samples: Vec<Sample> = texts.iter().map(|t| sample("", t, "{}")).collect();
    let got = r.score(&samples, "{}");
    for (text, score) in texts.iter().zip(&got) {
        match (*text, score) {
            ("fine", Ok(Some(s))) => assert_eq!(*s, 1.0),
            (
                "LOOP",
                Err(PluginError::Limit {
                    limit: LimitHit::Fuel(_),
                    ..
                }),
            ) => {}
            ("TRAP", Err(PluginError::Trap { message, .. })) => {
                assert!(message.contains("panicked"), "{message}")
            }
            (
                "OOM",
                Err(PluginError::Limit {
                    limit: LimitHit::Memory { .. },
                    ..
                }),
            ) => {}
            (text, other) => panic!("{text}: unexpected {other:?}"),
        }
    }
    // The plugin keeps serving.
    assert_eq!(scores(&r, &[sample("", "fine", "{}")], "{}"), [Some(1.0)]);
}

#[test]
fn reward_calls_are_metered() {
    let r = reward(artifacts::R1_FORMAT);
    let meter = r.sandbox().meter.clone();
    let before = meter.usage();
    scores(&r, &[sample("", "<think>x</think>y", "{}")], "{}");
    let after = meter.usage();
    assert!(
        after.calls >= before.calls + 2,
        "instantiation and the call: {before:?} -> {after:?}"
    );
    assert!(
        after.fuel > before.fuel,
        "fuel burned: {before:?} -> {after:?}"
    );
}

/// Scores of the hostile reward's `RANDOM` and `CLOCK` samples, which read
/// WASI's random source and clocks.
fn observed(r: &RewardPlugin, samples: &[Sample]) -> Vec<Option<f64>> {
    scores(r, samples, "{}")
}

#[test]
fn randomness_and_clocks_depend_on_the_sample_alone() {
    let r = reward(artifacts::HOSTILE_REWARD);
    let a = sample("p", "RANDOM a", "{}");
    let b = sample("p", "RANDOM b", "{}");
    let clock = sample("p", "CLOCK", "{}");
    let alone: Vec<Option<f64>> = [&a, &b, &clock]
        .into_iter()
        .map(|s| observed(&r, std::slice::from_ref(s))[0])
        .collect();
    // Seeded per sample: two samples draw different numbers...
    assert_ne!(alone[0], alone[1]);
    // ...and the clocks are frozen: epoch wall time, a sleep that takes no
    // time.
    assert_eq!(alone[2], Some(0.0));
    for batch in [
        vec![a.clone(), b.clone(), clock.clone()],
        vec![b.clone(), clock.clone(), a.clone()],
        vec![clock.clone(), a.clone(), a.clone(), b.clone()],
    ] {
        let got = observed(&r, &batch);
        for (s, score) in batch.iter().zip(got) {
            let i = [&a, &b, &clock]
                .iter()
                .position(|x| x.completion == s.completion)
                .unwrap();
            assert_eq!(
                score,
                alone[i],
                "{} in a batch of {}",
                s.completion,
                batch.len()
            );
        }
    }
    let parallel: Vec<Option<f64>> = r
        .score_parallel(&[a.clone(), b.clone(), clock.clone()], "{}", 2, 1)
        .into_iter()
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(parallel, alone);
}

#[test]
fn a_reward_score_is_the_same_in_another_process() {
    // The hostile reward's RANDOM score for this sample, as the `deepwasm
    // score` command computes it in a process of its own.
    let r = reward(artifacts::HOSTILE_REWARD);
    let here = observed(&r, &[sample("p", "RANDOM a", "{}")])[0].unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("samples.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"p\", \"completion\": \"RANDOM a\"}\n{\"prompt\": \"q\", \"completion\": \"fine\"}\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::util::deepwasm_bin())
        .args(["score", "--no-cache", "--reward"])
        .arg(artifacts::HOSTILE_REWARD)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let there = first["rewards"]["hostile-reward"].as_f64().unwrap();
    assert_eq!(there, here, "{first}");
}

#[test]
fn a_score_that_is_not_finite_fails_only_its_sample() {
    let r = reward(artifacts::HOSTILE_REWARD);
    let samples = [
        sample("", "fine", "{}"),
        sample("", "NAN", "{}"),
        sample("", "fine", "{}"),
        sample("", "MAX", "{}"),
    ];
    let got = r.score(&samples, "{}");
    assert_eq!(got[0].as_ref().unwrap(), &Some(1.0));
    assert_eq!(got[2].as_ref().unwrap(), &Some(1.0));
    assert_eq!(got[3].as_ref().unwrap(), &Some(f64::MAX));
    match &got[1] {
        Err(PluginError::Protocol { message, .. }) => {
            assert!(message.contains("NaN"), "{message}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn a_sleeping_reward_does_not_wait() {
    // Time does not pass for a reward: its 20 s sleep ends at once, and
    // the score is what it computes after it.
    let r = reward(artifacts::HOSTILE_REWARD);
    let start = std::time::Instant::now();
    assert_eq!(observed(&r, &[sample("", "SLEEP", "{}")]), [Some(1.0)]);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}
