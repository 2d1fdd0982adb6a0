use std::time::{Duration, Instant};

use deepwasm_upstream::UpstreamError;

use crate::fake::*;

const BUSY: &str =
    r#"{"error": {"message": "server busy", "type": "ServiceUnavailable", "code": 503}}"#;

#[test]
fn two_503s_then_a_stream_succeed_on_the_third_try() {
    let fake = Fake::start(|n, _, s| match n {
        0 | 1 => write(s, &json_answer("503 Service Unavailable", BUSY)),
        _ => full_stream(s, &["fine"]),
    });
    let (result, chunks) = complete(&upstream(&fake.url), &request());
    assert_eq!(result.unwrap().attempts, 3);
    assert_eq!(texts(&chunks), ["fine"]);
    assert_eq!(fake.count(), 3);
    // Every try sends the same request.
    let bodies: Vec<_> = fake.requests().into_iter().map(|r| r.body).collect();
    assert!(bodies.iter().all(|b| *b == bodies[0]));
}

#[test]
fn an_upstream_that_always_fails_is_reported_after_every_try() {
    let fake = Fake::start(|_, _, s| {
        write(
            s,
            &json_answer(
                "500 Internal Server Error",
                r#"{"message": "CUDA error", "code": 500}"#,
            ),
        );
    });
    let up = upstream(&fake.url);
    assert_eq!(
        complete(&up, &request()).0,
        Err(UpstreamError::Status {
            status: 500,
            message: "CUDA error".into(),
            retry_after: None
        })
    );
    // `retries` (2) after the first.
    assert_eq!(fake.count(), 3);
}

#[test]
fn a_refused_request_is_not_tried_again() {
    for (status, body) in [
        (
            "400 Bad Request",
            r#"{"object": "error", "message": "This model's maximum context length is 4096 tokens", "type": "BadRequestError", "code": 400}"#,
        ),
        ("401 Unauthorized", r#"{"error": "Unauthorized"}"#),
        ("404 Not Found", r#"{"detail": "Not Found"}"#),
        ("422 Unprocessable Entity", "temperature: must be finite"),
    ] {
        let fake = Fake::start(move |_, _, s| write(s, &json_answer(status, body)));
        match complete(&upstream(&fake.url), &request()).0 {
            Err(UpstreamError::Status {
                status: code,
                message,
                ..
            }) => {
                assert_eq!(code.to_string(), status[..3]);
                assert!(!message.is_empty() && !message.contains('{'), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.count(), 1, "{status}");
    }
}

#[test]
fn retry_after_is_waited_and_reported() {
    let fake = Fake::start(|n, _, s| match n {
        0 => write(
            s,
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        _ => full_stream(s, &["later"]),
    });
    let started = Instant::now();
    let (result, _) = complete(&upstream(&fake.url), &request());
    assert_eq!(result.unwrap().attempts, 2);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
        "{took:?}"
    );

    let fake = Fake::start(|_, _, s| {
        write(
            s,
            "HTTP/1.1 403 Forbidden\r\nRetry-After: 30\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    });
    assert_eq!(
        complete(&upstream(&fake.url), &request()).0,
        Err(UpstreamError::Status {
            status: 403,
            message: "Forbidden".into(),
            retry_after: Some(30)
        })
    );
}

/// A stream that breaks before its first chunk passed nothing on: it is
/// safe to try again.
#[test]
fn a_stream_cut_before_its_first_chunk_is_tried_again() {
    let fake = Fake::start(|n, _, s| match n {
        0 => {
            write(s, SSE_CHUNKED_HEAD);
            // An event with no text, then the connection drops.
            write(s, &chunk(&event("", None)));
        }
        _ => full_stream(s, &["second"]),
    });
    let (result, chunks) = complete(&upstream(&fake.url), &request());
    assert_eq!(result.unwrap().attempts, 2);
    assert_eq!(texts(&chunks), ["second"]);
}
