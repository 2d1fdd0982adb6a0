use std::time::{Duration, Instant};

use deepwasm_engine::sampling::SamplingParams;
use deepwasm_engine::{
    Completion, GenerateError, GenerateRequest, MissPolicy, PluginSampler, Prompt, SamplerHosting,
};
use deepwasm_plugins::SamplerPlugin;

use crate::util::{artifacts, default_model, plugin};

/// A sampler plugin on the default model, with the model's tokenizer.
fn sampler_plugin(path: &str, budget: Duration, policy: MissPolicy) -> SamplerPlugin {
    SamplerHosting::for_engine(default_model(), budget, policy)
        .load(plugin(path))
        .unwrap()
}

fn greedy(text: &str, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        max_tokens,
        params: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        ..GenerateRequest::new(Prompt::Text {
            text: text.into(),
            add_special_tokens: true,
        })
    }
}

/// Eight greedy tokens after "Hello", steered by `sampler` in `mode`, a
/// miss failing the request.
fn hello(sampler: &SamplerPlugin, mode: &str) -> Result<Completion, GenerateError> {
    let config = format!(r#"{{"mode": "{mode}"}}"#);
    run(&greedy("Hello", 8), sampler, &config, MissPolicy::Fail)
}

fn run(
    req: &GenerateRequest,
    sampler: &SamplerPlugin,
    config: &str,
    policy: MissPolicy,
) -> Result<Completion, GenerateError> {
    let mut s = PluginSampler::new(sampler.clone(), config, Duration::from_millis(25), policy);
    default_model().generate(req, &mut s, &mut |_| {})
}

#[test]
fn a_word_ban_keeps_a_word_out_of_real_output() {
    let req = greedy("The capital of France is", 12);
    let free = default_model()
        .generate(&req, &mut deepwasm_engine::BuiltinSampler, &mut |_| {})
        .unwrap();
    assert!(free.text.contains("Paris"), "{:?}", free.text);
    let ban = sampler_plugin(
        artifacts::WORD_BAN,
        Duration::from_millis(25),
        MissPolicy::Fail,
    );
    let c = run(&req, &ban, r#"{"words": ["paris"]}"#, MissPolicy::Fail).unwrap();
    assert!(!c.text.to_lowercase().contains("paris"), "{:?}", c.text);
    assert_eq!(c.tokens.len(), 12);
}

#[test]
fn a_plugin_that_samples_itself_is_reproducible() {
    let req = greedy("Once upon a time", 16);
    let top_k = sampler_plugin(
        artifacts::TOP_K,
        Duration::from_millis(25),
        MissPolicy::Fail,
    );
    let cfg = r#"{"k": 8, "temperature": 1.0, "seed": 5}"#;
    let a = run(&req, &top_k, cfg, MissPolicy::Fail).unwrap();
    let b = run(&req, &top_k, cfg, MissPolicy::Fail).unwrap();
    assert_eq!(a.tokens, b.tokens);
    // The instance was reused for the second request: setup ran once.
    assert!(top_k.idle_instances() >= 1);
}

#[test]
fn a_looping_sampler_fails_its_request_fast_under_the_fail_policy() {
    let hostile = sampler_plugin(
        artifacts::HOSTILE_SAMPLER,
        Duration::from_millis(25),
        MissPolicy::Fail,
    );
    let start = Instant::now();
    let err = hello(&hostile, "loop-prepare").unwrap_err();
    let msg = format!("{err}");
    assert!(
        msg.contains("hostile-sampler") && msg.contains("25 ms"),
        "{msg}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    // The next request on the same plugin works.
    let ok = run(
        &greedy("Hello", 4),
        &hostile,
        r#"{"mode": "ok"}"#,
        MissPolicy::Fail,
    )
    .unwrap();
    assert_eq!(ok.tokens.len(), 4);
}

#[test]
fn a_slow_sampler_falls_back_then_stops_at_its_deadline() {
    let policy = MissPolicy::Fallback { max_misses: 3 };
    let hostile = sampler_plugin(
        artifacts::HOSTILE_SAMPLER,
        Duration::from_millis(25),
        policy,
    );
    let err = run(
        &greedy("Hello", 8),
        &hostile,
        r#"{"mode": "loop-prepare"}"#,
        policy,
    )
    .unwrap_err();
    // The first steps were sampled by the built-in sampler while the
    // plugin's call ran on; a fourth miss (or the call's hard deadline of 8
    // budgets, on a slow machine) ended the request, without any step
    // waiting for the plugin past its budget.
    let chain = error_chain(&err);
    assert!(chain.contains("step budget of 25 ms"), "{chain}");
}

/// A sampler plugin on the default model whose setup (and `open`) may run
/// `setup`.
fn slow_setup_plugin(path: &str, setup: Duration) -> SamplerPlugin {
    SamplerHosting::for_engine(
        default_model(),
        Duration::from_millis(250),
        MissPolicy::Wait,
    )
    .with_limits(|l| l.setup_deadline = setup)
    .load(plugin(path))
    .unwrap()
}

/// Generate `a` (steered by `sampler`) and `b` (greedy, built-in) in one
/// batch; the results, when `b`'s last text came, and how many tokens `a`
/// had by then.
fn beside(
    a: &GenerateRequest,
    sampler: &mut PluginSampler,
    b: &GenerateRequest,
) -> (Vec<Result<Completion, GenerateError>>, Duration, usize) {
    // Loaded first: loading the model is not part of the timings.
    let model = default_model();
    let start = Instant::now();
    let a_tokens = std::sync::atomic::AtomicUsize::new(0);
    let b_tokens = std::sync::atomic::AtomicUsize::new(0);
    let a_tokens_when_b_done = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let b_done = std::sync::Mutex::new(Duration::ZERO);
    let mut builtin = deepwasm_engine::BuiltinSampler;
    let mut on_a = |d: &deepwasm_engine::Delta| {
        a_tokens.fetch_add(d.tokens.len(), std::sync::atomic::Ordering::SeqCst);
    };
    let mut on_b = |d: &deepwasm_engine::Delta| {
        let n = b_tokens.fetch_add(d.tokens.len(), std::sync::atomic::Ordering::SeqCst)
            + d.tokens.len();
        if n >= b.max_tokens {
            *b_done.lock().unwrap() = start.elapsed();
            a_tokens_when_b_done.store(
                a_tokens.load(std::sync::atomic::Ordering::SeqCst),
                std::sync::atomic::Ordering::SeqCst,
            );
        }
    };
    let results = model.generate_batch(vec![
        deepwasm_engine::BatchItem {
            req: a,
            sampler,
            on_delta: &mut on_a,
        },
        deepwasm_engine::BatchItem {
            req: b,
            sampler: &mut builtin,
            on_delta: &mut on_b,
        },
    ]);
    let b_done = *b_done.lock().unwrap();
    (results, b_done, a_tokens_when_b_done.into_inner())
}

#[test]
fn a_slow_sampler_holds_only_its_own_sequence_and_is_never_bypassed() {
    // 1.5 s a step against a budget of 250 ms: under the wait policy its
    // sequence sits steps out (the call is cut only at 2 s), while the
    // greedy sequence beside it runs at the model's pace.
    let slow = slow_setup_plugin(artifacts::HOSTILE_SAMPLER, Duration::from_secs(10));
    let mut sampler = PluginSampler::new(
        slow,
        r#"{"mode": "slow-pick", "token": 42, "delay_ms": 1500}"#,
        Duration::from_millis(250),
        MissPolicy::Wait,
    );
    let a = greedy("Hello", 3);
    let b = greedy("The capital of France is", 16);
    let (results, b_done, a_by_then) = beside(&a, &mut sampler, &b);
    let a_out = results[0]
        .as_ref()
        .expect("the slow sampler's request completes");
    // Every token is the plugin's pick: nothing was sampled around it.
    assert_eq!(a_out.tokens, [42, 42, 42]);
    let b_out = results[1].as_ref().unwrap();
    assert_eq!(b_out.tokens.len(), 16);
    // Had the batch waited for the plugin, the 16 greedy tokens would have
    // taken 16 of its 1.5 s steps.
    assert!(
        a_by_then < 3,
        "the slow sequence had {a_by_then} tokens when the other finished"
    );
    assert!(b_done < Duration::from_secs(12), "took {b_done:?}");
}

#[test]
fn a_sampler_that_sets_up_slowly_holds_only_its_own_sequence() {
    // `open` sleeps 60 s; it runs off the batch and is cut at the setup
    // deadline of 6 s, failing only its own request. The greedy request
    // beside it is done long before (were `open` run on the batch's
    // thread, it would wait the 6 s first).
    let slow = slow_setup_plugin(artifacts::HOSTILE_SAMPLER, Duration::from_secs(6));
    let mut sampler = PluginSampler::new(
        slow,
        r#"{"mode": "sleep-open"}"#,
        Duration::from_millis(25),
        MissPolicy::Wait,
    );
    let start = Instant::now();
    let (results, b_done, a_by_then) = beside(&greedy("Hello", 4), &mut sampler, &greedy("Hi", 16));
    let chain = error_chain(results[0].as_ref().unwrap_err());
    assert!(chain.contains("deadline of 6000 ms"), "{chain}");
    assert!(start.elapsed() >= Duration::from_secs(6));
    assert_eq!(results[1].as_ref().unwrap().tokens.len(), 16);
    assert_eq!(a_by_then, 0);
    assert!(b_done < Duration::from_secs(6), "took {b_done:?}");
}

#[test]
fn invalid_sampling_overrides_from_a_plugin_are_its_error() {
    let hostile = sampler_plugin(
        artifacts::HOSTILE_SAMPLER,
        Duration::from_millis(25),
        MissPolicy::Fail,
    );
    let err = hello(&hostile, "bad-params").unwrap_err();
    let chain = error_chain(&err);
    assert!(
        chain.contains("hostile-sampler")
            && chain.contains("invalid parameters")
            && chain.contains("temperature"),
        "{chain}"
    );
    // 200,000 deny ranges over a vocabulary of 49,152: more than twice it,
    // refused on the plugin's thread before the batch ever sees them.
    let err = hello(&hostile, "wide-deny").unwrap_err();
    let chain = error_chain(&err);
    assert!(
        chain.contains("hostile-sampler") && chain.contains("200000 entries"),
        "{chain}"
    );
    // A refused answer is a strike like a trap or a limit hit: after three
    // in a row the plugin takes no new sequence for a while.
    for _ in 0..2 {
        hello(&hostile, "wide-deny").unwrap_err();
    }
    assert!(hostile.throttled().is_some());
    let err = hello(&hostile, "ok").unwrap_err();
    assert!(
        error_chain(&err).contains("throttle"),
        "{}",
        error_chain(&err)
    );
}

#[test]
fn a_trapping_sampler_ends_only_its_own_request() {
    let hostile = sampler_plugin(
        artifacts::HOSTILE_SAMPLER,
        Duration::from_millis(25),
        MissPolicy::Fail,
    );
    let err = hello(&hostile, "trap-prepare").unwrap_err();
    assert!(
        error_chain(&err).contains("plugin `hostile-sampler` trapped"),
        "{}",
        error_chain(&err)
    );
    let err = hello(&hostile, "bad-token").unwrap_err();
    assert!(
        error_chain(&err).contains("outside the vocabulary"),
        "{}",
        error_chain(&err)
    );
    let ok = run(
        &greedy("Hello", 4),
        &hostile,
        r#"{"mode": "ok"}"#,
        MissPolicy::Fail,
    )
    .unwrap();
    assert_eq!(ok.tokens.len(), 4);
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn sampled(text: &str, max_tokens: usize, seed: u64) -> GenerateRequest {
    GenerateRequest {
        params: SamplingParams {
            temperature: 0.8,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        ..greedy(text, max_tokens)
    }
}

/// Every output of the JSON-schema sampler (llguidance compiled into the
/// plugin) parses and validates against its schema, on prompts the model
/// would otherwise answer in prose.
#[test]
fn json_schema_outputs_always_validate() {
    let budget = Duration::from_millis(200);
    let json = sampler_plugin(artifacts::JSON_SCHEMA, budget, MissPolicy::Fail);
    let cases = [
        (
            "Describe a person.",
            serde_json::json!({"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 12},
                "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                "required": ["name", "age"], "additionalProperties": false}),
        ),
        (
            "List some numbers.",
            serde_json::json!({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999},
                "minItems": 2, "maxItems": 4}),
        ),
        (
            "Pick a colour.",
            serde_json::json!({"type": "object", "properties": {
                "color": {"enum": ["red", "green", "blue"]}, "bright": {"type": "boolean"}},
                "required": ["color", "bright"], "additionalProperties": false}),
        ),
        (
            "Tell me about a city.",
            serde_json::json!({"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 16},
                "country": {"type": "string", "maxLength": 16},
                "big": {"type": "boolean"}},
                "required": ["city", "country", "big"], "additionalProperties": false}),
        ),
    ];
    for (i, (prompt, schema)) in cases.iter().enumerate() {
        let config = serde_json::json!({ "schema": schema }).to_string();
        let mut s = PluginSampler::new(json.clone(), &config, budget, MissPolicy::Fail);
        let c = default_model()
            .generate(&sampled(prompt, 96, i as u64), &mut s, &mut |_| {})
            .unwrap();
        assert_eq!(
            c.finish_reason,
            deepwasm_engine::FinishReason::Stop,
            "{prompt}: {:?}",
            c.text
        );
        let value: serde_json::Value =
            serde_json::from_str(&c.text).unwrap_or_else(|e| panic!("{prompt}: {e}: {:?}", c.text));
        let validator = jsonschema::validator_for(schema).unwrap();
        assert!(
            validator.is_valid(&value),
            "{prompt}: {value} does not match {schema}"
        );
    }
}

#[test]
fn regex_outputs_match_the_whole_pattern() {
    let budget = Duration::from_millis(200);
    let re = sampler_plugin(artifacts::REGEX, budget, MissPolicy::Fail);
    let pattern = "[0-9]{3}-[0-9]{4}";
    for seed in 0..3 {
        let config = serde_json::json!({ "pattern": pattern }).to_string();
        let mut s = PluginSampler::new(re.clone(), &config, budget, MissPolicy::Fail);
        let c = default_model()
            .generate(
                &sampled("My phone number is", 32, seed),
                &mut s,
                &mut |_| {},
            )
            .unwrap();
        let t = c.text.as_bytes();
        assert!(
            t.len() == 8
                && t[3] == b'-'
                && t.iter()
                    .enumerate()
                    .all(|(i, b)| i == 3 || b.is_ascii_digit()),
            "{:?}",
            c.text
        );
    }
}

#[test]
fn a_bad_schema_is_refused_with_the_reason() {
    let json = sampler_plugin(
        artifacts::JSON_SCHEMA,
        Duration::from_millis(200),
        MissPolicy::Fail,
    );
    let err = run(
        &greedy("x", 4),
        &json,
        r#"{"schema": {"type": "strin"}}"#,
        MissPolicy::Fail,
    )
    .unwrap_err();
    let chain = error_chain(&err);
    assert!(
        chain.contains("invalid input") && chain.contains("strin"),
        "{chain}"
    );
}

/// The think budget closes the reasoning within budget + 1 tokens of its
/// first token, and the closing tokens it forces go through the model in
/// one forward pass.
#[test]
fn a_think_budget_closes_reasoning_in_one_forced_pass() {
    let engine = default_model();
    let think = sampler_plugin(
        artifacts::THINK_BUDGET,
        Duration::from_millis(25),
        MissPolicy::Fail,
    );
    let budget = 6;
    let config = serde_json::json!({ "budget": budget }).to_string();
    let mut s = PluginSampler::new(think, &config, Duration::from_millis(25), MissPolicy::Fail);
    let req = GenerateRequest {
        ignore_eos: true,
        ..greedy("Question: what is 12 times 12? Think first.\n<think>\n", 24)
    };
    let c = engine.generate(&req, &mut s, &mut |_| {}).unwrap();
    let close = engine.tokenizer.encode("</think>", false).unwrap();
    let forced: Vec<u32> = close
        .iter()
        .copied()
        .chain(engine.tokenizer.encode("\n\n", false).unwrap())
        .collect();
    let at = c
        .tokens
        .windows(forced.len())
        .position(|w| w == forced.as_slice())
        .unwrap_or_else(|| panic!("no forced close in {:?}", c.text));
    assert!(
        at <= budget,
        "the close starts at token {at}, after a budget of {budget}: {:?}",
        c.text
    );
    assert!(c.text.contains("</think>"), "{:?}", c.text);
    // One forward pass per step, the forced run being one step.
    assert_eq!(
        c.timings.forward_passes,
        c.tokens.len() - (forced.len() - 1)
    );
}
