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
