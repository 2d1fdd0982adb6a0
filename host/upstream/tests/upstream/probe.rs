use deepwasm_upstream::{Secret, Served, Upstream, UpstreamConfig, UpstreamError};

use crate::fake::*;

/// vLLM's list; SGLang's and deepwasm's have the same shape.
const VLLM: &str = r#"{"object": "list", "data": [
    {"id": "deepseek-ai/DeepSeek-V3", "object": "model", "created": 1, "owned_by": "vllm",
     "root": "/models/DeepSeek-V3", "parent": null, "max_model_len": 163840, "permission": []},
    {"id": "lora-math", "object": "model", "owned_by": "vllm", "root": "lora-math",
     "parent": "deepseek-ai/DeepSeek-V3", "max_model_len": 163840}
]}"#;

/// llama-server's: its own `models` list beside OpenAI's `data`, the
/// context in `meta`.
const LLAMA_SERVER: &str = r#"{"models": [{"name": "qwen2.5-0.5b-instruct-q4_k_m.gguf",
      "model": "qwen2.5-0.5b-instruct-q4_k_m.gguf", "capabilities": ["completion"]}],
  "object": "list",
  "data": [{"id": "qwen2.5-0.5b-instruct-q4_k_m.gguf", "object": "model", "created": 1,
      "owned_by": "llamacpp", "meta": {"vocab_type": 2, "n_vocab": 151936,
      "n_ctx_train": 32768, "n_embd": 896, "n_params": 494032768, "size": 491400032}}]}"#;

fn serving(list: &'static str) -> Fake {
    Fake::start(move |_, _, s| write(s, &json_answer("200 OK", list)))
}

fn probing(fake: &Fake, model: Option<&str>) -> Upstream {
    Upstream::new(UpstreamConfig {
        model: model.map(str::to_owned),
        api_key: Some(Secret::new("sk-probe".into())),
        ..config(&fake.url)
    })
    .unwrap()
}

#[test]
fn a_vllm_list_gives_the_first_model_or_the_configured_one() {
    let fake = serving(VLLM);
    assert_eq!(
        probing(&fake, None).probe_blocking().unwrap(),
        Served {
            model: "deepseek-ai/DeepSeek-V3".into(),
            max_model_len: Some(163840),
            owned_by: Some("vllm".into())
        }
    );
    assert_eq!(
        probing(&fake, Some("lora-math"))
            .probe_blocking()
            .unwrap()
            .model,
        "lora-math"
    );
    let sent = &fake.requests()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("GET", "/v1/models")
    );
    assert_eq!(sent.header("authorization"), Some("Bearer sk-probe"));
}

#[test]
fn a_llama_server_list_gives_its_context_from_meta() {
    let fake = serving(LLAMA_SERVER);
    assert_eq!(
        probing(&fake, None).probe_blocking().unwrap(),
        Served {
            model: "qwen2.5-0.5b-instruct-q4_k_m.gguf".into(),
            max_model_len: Some(32768),
            owned_by: Some("llamacpp".into())
        }
    );
    // A server that reports the context it runs with: that one counts.
    let with_n_ctx: &'static str = LLAMA_SERVER
        .replace("\"n_ctx_train\"", "\"n_ctx\": 4096, \"n_ctx_train\"")
        .leak();
    let fake = serving(with_n_ctx);
    assert_eq!(
        probing(&fake, None).probe_blocking().unwrap().max_model_len,
        Some(4096)
    );
}

#[test]
fn a_model_the_upstream_does_not_serve_is_refused_with_those_it_does() {
    let fake = serving(VLLM);
    match probing(&fake, Some("deepseek-r1")).probe_blocking() {
        Err(UpstreamError::Unsupported(m)) => {
            assert!(m.contains("`deepseek-r1`"), "{m}");
            assert!(m.contains("deepseek-ai/DeepSeek-V3, lora-math"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // Asking again would give the same list.
    assert_eq!(fake.count(), 1);
}

#[test]
fn probe_can_be_awaited_on_the_clients_runtime() {
    let fake = serving(VLLM);
    let up = probing(&fake, None);
    let task = up.handle().spawn({
        let up = up.clone();
        async move { up.probe().await }
    });
    let served = up.handle().block_on(task).unwrap().unwrap();
    assert_eq!(served.max_model_len, Some(163840));
}
