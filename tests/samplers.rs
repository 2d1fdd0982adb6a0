use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deepwasm_plugins::{
    Decision, LimitHit, PluginError, Prepared, SamplerPlugin, SamplingParams, World, argmax, top_k,
};

use crate::util::{DEEPSEEK_VOCAB, artifacts, logits, plugin, sandbox};

fn sampler(path: &str) -> SamplerPlugin {
    SamplerPlugin::new(plugin(path), sandbox(World::Sampler, |_| {})).unwrap()
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

fn pick(d: Decision) -> u32 {
    match d {
        Decision::Pick(t) => t,
        other => panic!("expected a pick, got {other:?}"),
    }
}

#[test]
fn greedy_picks_the_argmax_over_the_deepseek_vocabulary() {
    let s = sampler(artifacts::GREEDY);
    let mut seq = s.open("{}", &[1, 2, 3], &params()).unwrap();
    for step in 0..5u32 {
        let values = Arc::new(logits(DEEPSEEK_VOCAB, step as u64));
        let best = argmax(&values).token;
        assert!(matches!(
            seq.prepare(step, &[]).unwrap(),
            Prepared::NeedLogits
        ));
        assert_eq!(pick(seq.decide(step, values).unwrap()), best);
    }
}

#[test]
fn top_k_at_temperature_zero_is_greedy() {
    let s = sampler(artifacts::TOP_K);
    let mut seq = s
        .open(r#"{"k": 40, "temperature": 0}"#, &[], &params())
        .unwrap();
    let values = Arc::new(logits(DEEPSEEK_VOCAB, 7));
    seq.prepare(0, &[]).unwrap();
    assert_eq!(
        pick(seq.decide(0, values.clone()).unwrap()),
        argmax(&values).token
    );
}

#[test]
fn top_k_samples_only_the_top_k_and_repeats_with_its_seed() {
    let s = sampler(artifacts::TOP_K);
    let values = Arc::new(logits(DEEPSEEK_VOCAB, 11));
    let allowed: HashSet<u32> = top_k(&values, 5).iter().map(|t| t.token).collect();
    let run = |seed: u64| -> Vec<u32> {
        let config = format!(r#"{{"k": 5, "temperature": 5.0, "seed": {seed}}}"#);
        let mut seq = s.open(&config, &[], &params()).unwrap();
        (0..64u32)
            .map(|step| {
                seq.prepare(step, &[]).unwrap();
                pick(seq.decide(step, values.clone()).unwrap())
            })
            .collect()
    };
    let a = run(1);
    assert!(
        a.iter().all(|t| allowed.contains(t)),
        "{a:?} outside {allowed:?}"
    );
    assert!(
        a.iter().collect::<HashSet<_>>().len() > 1,
        "a hot temperature should vary: {a:?}"
    );
    assert_eq!(a, run(1), "the same seed gives the same picks");
    assert_ne!(a, run(2), "another seed gives other picks");
}

#[test]
fn setup_is_paid_once_per_instance_and_instances_are_reused() {
    let s = sampler(artifacts::GREEDY);
    assert_eq!(s.idle_instances(), 0);
    // Two sequences at once get two instances.
    let a = s.open("{}", &[], &params()).unwrap();
    let b = s.open("{}", &[], &params()).unwrap();
    drop(a);
    drop(b);
    assert_eq!(s.idle_instances(), 2);
    let calls = s.sandbox().meter.usage().calls;
    // A third sequence reuses an idle instance: one call (open), no
    // instantiation and no setup.
    let c = s.open("{}", &[], &params()).unwrap();
    assert_eq!(s.idle_instances(), 1);
    assert_eq!(s.sandbox().meter.usage().calls, calls + 1);
    drop(c);
}

/// Run one step of the hostile sampler in `mode`; its decision or error.
fn hostile(mode: &str) -> (SamplerPlugin, Result<Decision, PluginError>) {
    // 32 MiB of memory and a second per step, so a memory bomb meets the
    // memory cap before the deadline.
    let s = SamplerPlugin::new(
        plugin(artifacts::HOSTILE_SAMPLER),
        sandbox(World::Sampler, |l| {
            l.memory_bytes = 32 << 20;
            if mode.starts_with("oom") {
                l.call_deadline = Duration::from_secs(5);
            }
        }),
    )
    .unwrap();
    let config = format!(r#"{{"mode": "{mode}"}}"#);
    let mut seq = s.open(&config, &[1], &params()).unwrap();
    let result = seq.prepare(0, &[]).and_then(|p| match p {
        Prepared::NeedLogits => seq.decide(0, Arc::new(logits(1000, 1))),
        Prepared::Decided(d) => Ok(d),
    });
    drop(seq);
    (s, result)
}

#[test]
fn a_looping_sampler_step_is_stopped_at_its_deadline() {
    for mode in ["loop-prepare", "loop-decide"] {
        let start = Instant::now();
        let (s, result) = hostile(mode);
        let elapsed = start.elapsed();
        match result {
            Err(PluginError::Limit {
                limit: LimitHit::Deadline(d),
                plugin,
            }) => {
                assert_eq!(d, Duration::from_millis(25));
                assert_eq!(plugin, "hostile-sampler");
            }
            other => panic!("{mode}: expected the deadline, got {other:?}"),
        }
        assert!(elapsed < Duration::from_secs(2), "{mode} took {elapsed:?}");
        // The failed instance was discarded, not pooled.
        assert_eq!(s.idle_instances(), 0);
        assert_eq!(s.sandbox().meter.usage().limit_hits, 1);
    }
}

#[test]
fn trapping_or_memory_hungry_samplers_end_only_their_sequence() {
    let (s, result) = hostile("trap-prepare");
    assert!(
        matches!(result, Err(PluginError::Trap { .. })),
        "{result:?}"
    );
    // The same plugin serves the next sequence.
    let mut seq = s.open(r#"{"mode": "ok"}"#, &[], &params()).unwrap();
    assert!(matches!(
        seq.prepare(0, &[]).unwrap(),
        Prepared::Decided(Decision::Sample(_))
    ));
    drop(seq);

    let (_, result) = hostile("oom-prepare");
    assert!(
        matches!(result, Err(PluginError::Limit { limit: LimitHit::Memory { limit, .. }, .. }) if limit == 32 << 20),
        "{result:?}"
    );

    let (s, result) = hostile("error");
    assert!(
        matches!(result, Err(PluginError::Guest { .. })),
        "{result:?}"
    );
    // An error value is an answer, not a crash: the instance is kept.
    assert_eq!(s.idle_instances(), 1);
}

#[test]
fn an_out_of_range_token_is_passed_on_for_the_engine_to_refuse() {
    let (_, result) = hostile("bad-token");
    assert_eq!(pick(result.unwrap()), 4_000_000_000);
}

#[test]
fn a_sampler_sleeping_in_wasi_is_stopped_at_its_deadline() {
    for mode in ["sleep-prepare", "sleep-decide"] {
        let start = Instant::now();
        let (s, result) = hostile(mode);
        let elapsed = start.elapsed();
        assert!(
            matches!(result, Err(PluginError::Limit { limit: LimitHit::Deadline(d), .. }) if d == Duration::from_millis(25)),
            "{mode}: expected the deadline, got {result:?}"
        );
        assert!(
            elapsed < Duration::from_millis(25 + 500),
            "{mode} took {elapsed:?}"
        );
        assert_eq!(s.idle_instances(), 0);
    }
}

#[test]
fn a_sampler_sleeping_in_open_is_stopped_at_its_setup_deadline() {
    let s = SamplerPlugin::new(
        plugin(artifacts::HOSTILE_SAMPLER),
        sandbox(World::Sampler, |l| {
            l.setup_deadline = Duration::from_millis(300)
        }),
    )
    .unwrap();
    let start = Instant::now();
    let err = s
        .open(r#"{"mode": "sleep-open"}"#, &[1], &params())
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err, PluginError::Limit { limit: LimitHit::Deadline(d), .. } if d == Duration::from_millis(300)),
        "{err}"
    );
    assert!(
        elapsed < Duration::from_millis(300 + 500),
        "took {elapsed:?}"
    );
}

#[test]
fn a_call_deadline_shorter_than_the_sandbox_holds() {
    // One pool serves requests of different budgets: each call may carry a
    // deadline shorter than its sandbox's.
    let s = SamplerPlugin::new(
        plugin(artifacts::HOSTILE_SAMPLER),
        sandbox(World::Sampler, |l| l.call_deadline = Duration::from_secs(5)),
    )
    .unwrap();
    let mut seq = s
        .open(r#"{"mode": "loop-prepare"}"#, &[1], &params())
        .unwrap();
    let start = Instant::now();
    let err = seq
        .prepare_within(Duration::from_millis(40), 0, &[])
        .unwrap_err();
    assert!(
        matches!(err, PluginError::Limit { limit: LimitHit::Deadline(d), .. } if d == Duration::from_millis(40)),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn host_work_on_a_plugins_token_set_is_bounded_by_the_vocabulary() {
    // `top-k-in` over 20,000 ranges that each cover the whole DeepSeek
    // vocabulary: normalised first, it costs one pass over the logits, not
    // one per range.
    let s = SamplerPlugin::new(
        plugin(artifacts::HOSTILE_SAMPLER),
        sandbox(World::Sampler, |l| l.call_deadline = Duration::from_secs(2)),
    )
    .unwrap();
    let values = logits(DEEPSEEK_VOCAB, 3);
    let best = values
        .iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0 as u32;
    let mut seq = s
        .open(r#"{"mode": "wide-top-k"}"#, &[1], &params())
        .unwrap();
    assert!(matches!(seq.prepare(0, &[]).unwrap(), Prepared::NeedLogits));
    let start = Instant::now();
    let d = seq.decide(0, Arc::new(values)).unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(pick(d), best);
    drop(seq);
    // Over 1,000 tokens the same set is more than twice the vocabulary:
    // refused, naming the plugin.
    let (_, result) = hostile("wide-top-k");
    let err = result.unwrap_err();
    assert!(
        err.to_string().contains("hostile-sampler") && err.to_string().contains("20000 entries"),
        "{err}"
    );
}

#[test]
fn a_tenants_instance_share_bounds_its_live_instances() {
    // A meter with a share of 3 instances, two sampler pools under it.
    let meter = Arc::new(deepwasm_plugins::Meter::with_instance_share(3));
    let pool = |max_idle| {
        SamplerPlugin::with_max_idle(
            plugin(artifacts::HOSTILE_SAMPLER),
            sandbox(World::Sampler, |_| {}).with_meter(meter.clone()),
            max_idle,
        )
        .unwrap()
    };
    let (a, b) = (pool(4), pool(4));
    let ok = r#"{"mode": "ok"}"#;
    let open = |s: &SamplerPlugin| s.open(ok, &[1], &params());
    let held: Vec<_> = (0..3).map(|_| open(&a).unwrap()).collect();
    assert_eq!(meter.usage().live_instances, 3);
    let err = open(&b).unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Limit {
                limit: LimitHit::Instances(3),
                ..
            }
        ),
        "{err}"
    );
    // Back in the pool they still count, but they are given up when the
    // tenant needs the slots for work.
    drop(held);
    assert_eq!(a.idle_instances(), 3);
    assert_eq!(meter.usage().live_instances, 3);
    let in_b: Vec<_> = (0..3).map(|_| open(&b).unwrap()).collect();
    assert_eq!(a.idle_instances(), 0);
    assert_eq!(meter.usage().live_instances, 3);
    drop(in_b);
    // Evicting a pool frees its slots at once.
    assert_eq!(b.evict_idle(), 3);
    assert_eq!(meter.usage().live_instances, 0);
}

#[test]
fn idle_instances_are_counted_engine_wide_and_freed_with_their_pool() {
    let engine =
        deepwasm_plugins::PluginEngine::new(deepwasm_plugins::EngineConfig::default()).unwrap();
    let bytes = std::fs::read(artifacts::HOSTILE_SAMPLER).unwrap();
    let p = engine
        .load(
            "hostile-sampler",
            &bytes,
            &deepwasm_plugins::Grants::default(),
        )
        .unwrap();
    let s = SamplerPlugin::new(p, sandbox(World::Sampler, |_| {})).unwrap();
    let seqs: Vec<_> = (0..2)
        .map(|_| s.open(r#"{"mode": "ok"}"#, &[1], &params()).unwrap())
        .collect();
    assert_eq!(engine.idle_instances().0, 0);
    drop(seqs);
    let (count, bytes) = engine.idle_instances();
    assert_eq!(count, 2);
    assert!(bytes > 0, "their memory is counted");
    // The last handle on the pool goes (a deleted plugin): so do its
    // instances.
    drop(s);
    assert_eq!(engine.idle_instances(), (0, 0));
}

#[test]
fn a_sampler_that_keeps_hitting_its_limits_is_throttled() {
    let s = SamplerPlugin::new(
        plugin(artifacts::HOSTILE_SAMPLER),
        sandbox(World::Sampler, |_| {}),
    )
    .unwrap();
    let looping = |s: &SamplerPlugin| {
        let mut seq = s.open(r#"{"mode": "loop-prepare"}"#, &[1], &params())?;
        seq.prepare(0, &[]).map(drop)
    };
    for _ in 0..deepwasm_plugins::STRIKES {
        let err = looping(&s).unwrap_err();
        assert!(
            matches!(
                err,
                PluginError::Limit {
                    limit: LimitHit::Deadline(_),
                    ..
                }
            ),
            "{err}"
        );
    }
    // Three deadlines in a row: new sequences are refused for a second,
    // at once and without an instance.
    let err = s.open(r#"{"mode": "ok"}"#, &[1], &params()).unwrap_err();
    match err {
        PluginError::Limit {
            limit: LimitHit::Throttled(left),
            ..
        } => assert!(left <= deepwasm_plugins::FIRST_BACKOFF, "{left:?}"),
        other => panic!("expected the throttle, got {other}"),
    }
    assert!(s.throttled().is_some());
    std::thread::sleep(deepwasm_plugins::FIRST_BACKOFF);
    // Then it may try again; an answer clears the strikes.
    let mut seq = s.open(r#"{"mode": "ok"}"#, &[1], &params()).unwrap();
    seq.prepare(0, &[]).unwrap();
    drop(seq);
    assert!(s.throttled().is_none());
    looping(&s).unwrap_err();
    assert!(s.open(r#"{"mode": "ok"}"#, &[1], &params()).is_ok());
}

#[test]
fn a_tenant_keeps_only_its_part_of_the_idle_instances() {
    // A share of 16 slots of the engine's 1,000 gives 4 idle instances,
    // however many pools the tenant has.
    let meter = Arc::new(deepwasm_plugins::Meter::with_instance_share(16));
    assert_eq!(meter.idle_share(), 4);
    let pool = || {
        SamplerPlugin::with_max_idle(
            plugin(artifacts::HOSTILE_SAMPLER),
            sandbox(World::Sampler, |_| {}).with_meter(meter.clone()),
            4,
        )
        .unwrap()
    };
    let (a, b) = (pool(), pool());
    let ok = r#"{"mode": "ok"}"#;
    for s in [&a, &b] {
        let seqs: Vec<_> = (0..3)
            .map(|_| s.open(ok, &[1], &params()).unwrap())
            .collect();
        drop(seqs);
    }
    assert_eq!(a.idle_instances(), 3);
    assert_eq!(b.idle_instances(), 1);
    // The others were dropped, freeing their slots.
    assert_eq!(meter.usage().live_instances, 4);
}
