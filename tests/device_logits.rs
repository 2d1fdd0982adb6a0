//! Logits kept where the forward pass computed them (`LogitsPlacement::Device`,
//! the default on a GPU), forced on the CPU: generation, sampler plugins and
//! logprobs give what host rows give, and each step moves only what its
//! sampler asked for.

use std::time::Duration;

use deepwasm_engine::logits::LogitsPlacement;
use deepwasm_engine::sampling::SamplingParams;
use deepwasm_engine::{
    BuiltinSampler, Completion, Engine, GenerateRequest, MissPolicy, PluginSampler, Prompt,
    SamplerHosting,
};

use crate::util::{artifacts, default_model, plugin};

/// A sampler plugin's component and config, or `None` for the built-in
/// sampler.
type PluginAt<'a> = Option<(&'a str, &'a str)>;

fn placed(placement: LogitsPlacement) -> Engine {
    default_model().clone().with_logits_placement(placement)
}

fn request(params: SamplingParams, logprobs: Option<usize>) -> GenerateRequest {
    GenerateRequest {
        max_tokens: 12,
        logprobs,
        params,
        ..GenerateRequest::new(Prompt::Text {
            text: "The three primary colours are".into(),
            add_special_tokens: true,
        })
    }
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

/// `req` on `engine`, through the sampler plugin `path` with `config` when
/// given, else the built-in sampler.
fn generate(engine: &Engine, req: &GenerateRequest, plugin_at: Option<(&str, &str)>) -> Completion {
    match plugin_at {
        None => engine.generate(req, &mut BuiltinSampler, &mut |_| {}),
        Some((path, config)) => {
            let hosting =
                SamplerHosting::for_engine(engine, Duration::from_millis(500), MissPolicy::Fail);
            let sampler = hosting.load(plugin(path)).unwrap();
            let mut s = PluginSampler::new(
                sampler,
                config,
                Duration::from_millis(500),
                MissPolicy::Fail,
            );
            engine.generate(req, &mut s, &mut |_| {})
        }
    }
    .unwrap()
}

fn sampled_for_ban() -> SamplingParams {
    SamplingParams {
        temperature: 0.6,
        top_p: 0.95,
        seed: Some(5),
        ..SamplingParams::default()
    }
}

#[test]
fn device_rows_decode_what_host_rows_decode() {
    let sampled = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        seed: Some(11),
        ..SamplingParams::default()
    };
    let penalised = SamplingParams {
        presence_penalty: 1.5,
        logit_bias: vec![(28, -5.0)],
        ..greedy()
    };
    let cases: Vec<(&str, GenerateRequest, PluginAt)> = vec![
        ("greedy", request(greedy(), None), None),
        ("greedy with logprobs", request(greedy(), Some(3)), None),
        ("sampled", request(sampled, None), None),
        ("penalised", request(penalised, None), None),
        (
            "top-k plugin",
            request(greedy(), None),
            Some((
                artifacts::TOP_K,
                r#"{"k": 20, "temperature": 0.9, "seed": 3}"#,
            )),
        ),
        (
            "word ban (a deny mask)",
            request(sampled_for_ban(), None),
            Some((
                artifacts::WORD_BAN,
                r#"{"words": ["red", "blue", "green"]}"#,
            )),
        ),
        (
            "probe: top-k",
            request(greedy(), None),
            Some((artifacts::LOGITS_PROBE, r#"{"query": "top-k", "k": 40}"#)),
        ),
        (
            "probe: log-sum-exp",
            request(greedy(), None),
            Some((artifacts::LOGITS_PROBE, r#"{"query": "log-sum-exp"}"#)),
        ),
        (
            "probe: copy-all",
            request(greedy(), None),
            Some((artifacts::LOGITS_PROBE, r#"{"query": "copy-all"}"#)),
        ),
    ];
    let (host, device) = (
        placed(LogitsPlacement::Host),
        placed(LogitsPlacement::Device),
    );
    for (name, req, plugin_at) in &cases {
        let h = generate(&host, req, *plugin_at);
        let d = generate(&device, req, *plugin_at);
        assert_eq!(h.tokens, d.tokens, "{name}");
        assert_eq!(h.tokens.len(), 12, "{name}");
        if let (Some(h), Some(d)) = (&h.logprobs, &d.logprobs) {
            for (h, d) in h
                .iter()
                .zip(d)
                .map(|(h, d)| (h.as_ref().unwrap(), d.as_ref().unwrap()))
            {
                assert_eq!(h.token, d.token);
                assert!(
                    (h.logprob - d.logprob).abs() < 1e-4,
                    "{name}: {h:?} vs {d:?}"
                );
                let ids = |t: &[(u32, f32)]| t.iter().map(|p| p.0).collect::<Vec<_>>();
                assert_eq!(ids(&h.top), ids(&d.top), "{name}");
            }
        }
    }
    assert_eq!(
        host.logits_traffic.device_rows(),
        0,
        "host rows are not counted"
    );
}

/// What one completion of `req` moved per row of logits, and how many rows
/// it copied whole.
fn traffic(req: &GenerateRequest, plugin_at: Option<(&str, &str)>) -> (u64, u64, u64) {
    let engine = placed(LogitsPlacement::Device);
    generate(&engine, req, plugin_at);
    let t = &engine.logits_traffic;
    let rows = t.device_rows();
    assert!(rows >= 12, "{rows} rows for 12 tokens");
    (
        t.to_host_bytes() / rows,
        t.to_device_bytes() / rows,
        t.whole_rows_copied(),
    )
}

#[test]
fn each_step_moves_only_what_its_sampler_asked_for() {
    let vocab = default_model().model.info().vocab_size as u64;
    // Greedy: the maximum and its id.
    assert_eq!(traffic(&request(greedy(), None), None), (8, 0, 0));
    // A plugin's top-40: the block maxima and the blocks that can hold the
    // 40 best, a small part of the row.
    let (down, up, whole) = traffic(
        &request(greedy(), None),
        Some((artifacts::LOGITS_PROBE, r#"{"query": "top-k", "k": 40}"#)),
    );
    assert_eq!(whole, 0);
    assert!(
        down * 5 < vocab * 4,
        "top-40 moved {down} bytes of {}",
        vocab * 4
    );
    assert!(up < 40 * 4 * 2, "{up} bytes of block ids");
    // Logprobs: the normaliser, the chosen token and the top 3.
    let (down, _, whole) = traffic(&request(greedy(), Some(3)), None);
    assert_eq!(whole, 0);
    assert!(down * 5 < vocab * 4, "logprobs moved {down} bytes");
    // The built-in sampler draws where the row is: block sums, then one
    // block; top-p gathers the blocks its cut can reach.
    for sampled in [
        SamplingParams {
            temperature: 0.8,
            seed: Some(1),
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            presence_penalty: 0.5,
            seed: Some(2),
            ..SamplingParams::default()
        },
    ] {
        let (down, _, whole) = traffic(&request(sampled.clone(), None), None);
        assert_eq!(whole, 0, "{sampled:?}");
        assert!(down * 10 < vocab * 4, "{sampled:?} moved {down} bytes");
    }
    // A plugin that asks for the whole row gets it, once per step.
    let (down, _, whole) = traffic(
        &request(greedy(), None),
        Some((artifacts::LOGITS_PROBE, r#"{"query": "copy-all"}"#)),
    );
    assert!(whole >= 12);
    assert!(down >= vocab * 4);
}
