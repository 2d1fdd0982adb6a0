use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deepwasm_upstream::{
    Chunk, CompletionRequest, PromptBody, Secret, Upstream, UpstreamConfig, UpstreamError, Usage,
};
use serde_json::json;

use crate::fake::*;

#[test]
fn chunks_arrive_in_order_with_usage_and_the_request_carries_what_was_asked() {
    let fake = Fake::start(|_, _, s| {
        write(s, SSE_CHUNKED_HEAD);
        write(s, &chunk(": keep-alive\r\n\r\n"));
        write(s, &chunk(&event("Hel", None)));
        // One event split over two chunks, with CRLF line ends.
        let second = event("lo", None).replace('\n', "\r\n");
        let (a, b) = second.split_at(10);
        write(s, &chunk(a));
        std::thread::sleep(Duration::from_millis(20));
        write(s, &chunk(b));
        write(s, &chunk(&event(" world", Some("length"))));
        // Usage comes last, in an event without choices.
        let usage = json!({"choices": [], "usage":
            {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}});
        write(s, &chunk(&format!("data: {usage}\n\n")));
        write(s, &chunk(DONE));
        write(s, LAST_CHUNK);
    });
    let up = Upstream::new(UpstreamConfig {
        api_key: Some(Secret::new("sk-test".into())),
        ..config(&fake.url)
    })
    .unwrap();
    let (result, chunks) = complete(&up, &request());
    let finished = result.unwrap();
    assert_eq!(texts(&chunks), ["Hel", "lo", " world"]);
    assert!(chunks.iter().all(|c| c.token_ids.is_none()));
    assert_eq!(finished.finish_reason.as_deref(), Some("length"));
    assert_eq!(
        finished.usage,
        Some(Usage {
            prompt_tokens: 3,
            completion_tokens: 3
        })
    );
    assert_eq!(finished.attempts, 1);

    let [sent] = &fake.requests()[..] else {
        panic!("{:?}", fake.requests())
    };
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/v1/completions")
    );
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    let body = sent.json();
    assert_eq!(body["model"], "m");
    assert_eq!(body["prompt"], json!([1, 2, 3]));
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["seed"], 42);
    assert_eq!(body["max_tokens"], 16);
    assert!(body.get("logprobs").is_none());
}

/// With `return_token_ids`, vLLM (`--return-tokens-as-token-ids`) and
/// deepwasm name each token `token_id:<id>` in `logprobs.tokens`.
#[test]
fn token_ids_come_from_token_id_names() {
    let fake = Fake::start(|_, _, s| {
        write(s, SSE_HEAD);
        for (text, ids, lps) in [
            ("Hi", vec!["token_id:9", "token_id:10"], vec![-0.5, -0.25]),
            ("!", vec!["token_id:0"], vec![-1.0]),
        ] {
            let e = json!({"choices": [{"index": 0, "text": text, "finish_reason": null,
                "logprobs": {"tokens": ids, "token_logprobs": lps, "top_logprobs": null}}]});
            write(s, &format!("data: {e}\n\n"));
        }
        write(s, &event("", Some("stop")));
        write(s, DONE);
    });
    let up = upstream(&fake.url);
    let req = CompletionRequest {
        return_token_ids: true,
        ..request()
    };
    let (result, chunks) = complete(&up, &req);
    result.unwrap();
    assert_eq!(
        chunks,
        [
            Chunk {
                text: "Hi".into(),
                token_ids: Some(vec![9, 10]),
                logprobs: Some(vec![-0.5, -0.25]),
            },
            Chunk {
                text: "!".into(),
                token_ids: Some(vec![0]),
                logprobs: Some(vec![-1.0]),
            }
        ]
    );
    let body = fake.requests()[0].json();
    assert_eq!(body["logprobs"], 1);
    assert_eq!(body["return_tokens_as_token_ids"], true);
}

/// llama-server reports each token as an entry with an integer `id`.
#[test]
fn token_ids_come_from_llama_server_entries() {
    let fake = Fake::start(|_, _, s| {
        write(s, SSE_HEAD);
        let e = json!({"choices": [{"index": 0, "text": "ab", "finish_reason": null,
            "logprobs": {"content": [{"id": 64, "token": "a", "logprob": -0.1, "bytes": [97]},
                                     {"id": 65, "token": "b", "logprob": -0.2, "bytes": [98]}]}}]});
        write(s, &format!("data: {e}\n\n"));
        // An id with no text (a partial UTF-8 character) still counts.
        let e = json!({"choices": [{"text": "", "finish_reason": "stop"}],
            "completion_probabilities": [{"id": 226, "probs": []}]});
        write(s, &format!("data: {e}\n\n"));
        write(s, DONE);
    });
    let req = CompletionRequest {
        return_token_ids: true,
        ..request()
    };
    let (result, chunks) = complete(&upstream(&fake.url), &req);
    assert_eq!(result.unwrap().finish_reason.as_deref(), Some("stop"));
    let ids: Vec<_> = chunks.iter().map(|c| c.token_ids.clone()).collect();
    assert_eq!(ids, [Some(vec![64, 65]), Some(vec![226])]);
}

/// `http://host:port/v1/` is the same base as `http://host:port`; a text
/// prompt goes as a string.
#[test]
fn a_v1_base_url_and_a_text_prompt() {
    let fake = Fake::start(|_, _, s| full_stream(s, &["ok"]));
    let up = upstream(&format!("{}/v1/", fake.url));
    assert_eq!(up.url(), fake.url);
    let req = CompletionRequest {
        prompt: PromptBody::Text("Say ok".into()),
        ..CompletionRequest::default()
    };
    let (result, chunks) = complete(&up, &req);
    result.unwrap();
    assert_eq!(texts(&chunks), ["ok"]);
    let sent = &fake.requests()[0];
    assert_eq!(sent.path, "/v1/completions");
    assert_eq!(sent.json()["prompt"], "Say ok");
    assert!(sent.header("authorization").is_none());
}

/// Without a configured model, the first one `/v1/models` lists is used,
/// asked once for all requests.
#[test]
fn the_model_is_asked_of_the_upstream_when_not_configured() {
    let fake = Fake::start(|_, req, s| match req.path.as_str() {
        "/v1/models" => write(
            s,
            &json_answer(
                "200 OK",
                r#"{"object": "list", "data": [{"id": "deepseek-v3"}]}"#,
            ),
        ),
        _ => full_stream(s, &["x"]),
    });
    let up = Upstream::new(UpstreamConfig {
        model: None,
        ..config(&fake.url)
    })
    .unwrap();
    for _ in 0..2 {
        complete(&up, &request()).0.unwrap();
    }
    let paths: Vec<_> = fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/models", "/v1/completions", "/v1/completions"]);
    assert_eq!(fake.requests()[2].json()["model"], "deepseek-v3");
}

/// An upstream that ignores `"stream": true` answers with one JSON object:
/// it is one chunk.
#[test]
fn a_whole_json_answer_is_one_chunk() {
    let fake = Fake::start(|_, _, s| {
        let body = json!({"choices": [{"index": 0, "text": "all at once", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3}});
        write(s, &json_answer("200 OK", &body.to_string()));
    });
    let (result, chunks) = complete(&upstream(&fake.url), &request());
    let finished = result.unwrap();
    assert_eq!(texts(&chunks), ["all at once"]);
    assert_eq!(finished.finish_reason.as_deref(), Some("stop"));
    assert_eq!(finished.usage.unwrap().completion_tokens, 3);
}

/// Requests share one client from many tasks; past `max_in_flight` they
/// wait for a slot, and that wait counts toward the first-byte timeout.
#[test]
fn requests_beyond_max_in_flight_wait_for_a_slot() {
    let fake = Fake::start(|_, _, s| {
        write(s, SSE_HEAD);
        write(s, &event("slow", None));
        std::thread::sleep(Duration::from_millis(700));
        write(s, &event("", Some("stop")));
        write(s, DONE);
    });
    let up = Upstream::new(UpstreamConfig {
        max_in_flight: 1,
        first_byte_timeout: Duration::from_millis(300),
        retries: 0,
        ..config(&fake.url)
    })
    .unwrap();
    let results = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            let (up, results) = (up.clone(), results.clone());
            up.handle().clone().spawn(async move {
                // The second starts once the first holds the slot.
                tokio::time::sleep(Duration::from_millis(100 * i)).await;
                let never = AtomicBool::new(false);
                let r = up.complete(&request(), &mut |_| {}, &never).await;
                results.lock().unwrap().push((i, r));
            })
        })
        .collect();
    up.handle().block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let mut results = results.lock().unwrap().drain(..).collect::<Vec<_>>();
    results.sort_by_key(|(i, _)| *i);
    assert!(results[0].1.is_ok(), "{:?}", results[0]);
    match &results[1].1 {
        Err(UpstreamError::Timeout(m)) => assert!(m.contains("slot"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.count(), 1);
}

/// A task on the client's runtime may hold the last clone: dropping it
/// there stops the runtime without blocking (which would panic).
#[test]
fn the_last_clone_may_be_dropped_on_the_clients_own_runtime() {
    let fake = Fake::start(|_, _, s| full_stream(s, &["x"]));
    let up = upstream(&fake.url);
    let handle = up.handle();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    handle.spawn(async move {
        let never = AtomicBool::new(false);
        let result = up.complete(&request(), &mut |_| {}, &never).await;
        drop(up);
        done_tx.send(result).unwrap();
    });
    let result = done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(result.unwrap().attempts, 1);
}
