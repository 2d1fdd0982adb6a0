use deepwasm_upstream::{Secret, Upstream, UpstreamConfig, UpstreamError};
use serde_json::json;

use crate::fake::*;

const KEY: &str = "sk-upstream-0123456789abcdef";

fn keyed(url: &str) -> Upstream {
    Upstream::new(UpstreamConfig {
        api_key: Some(Secret::new(KEY.into())),
        retries: 0,
        ..config(url)
    })
    .unwrap()
}

fn assert_hidden(e: &UpstreamError) {
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains(KEY), "{shown}");
        assert!(!shown.contains(&KEY[..12]), "{shown}");
    }
}

/// An answer built around the `Authorization` header the fake received.
type Echo = Box<dyn Fn(&str) -> String + Send + Sync>;

/// Upstreams that echo the request's key back, in every place a message
/// is taken from.
#[test]
fn the_key_never_appears_in_an_error_even_when_the_upstream_echoes_it() {
    let echoes: Vec<Echo> = vec![
        // OpenAI's error body.
        Box::new(|auth| {
            let body = json!({"error": {"message": format!("invalid key: {auth}"), "code": 401}});
            json_answer("401 Unauthorized", &body.to_string())
        }),
        // A plain-text body, the key past the excerpt's first 190 characters.
        Box::new(|auth| {
            let text = format!("{}{auth}", "x".repeat(190));
            format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            )
        }),
        // A stream of junk.
        Box::new(|auth| format!("{SSE_HEAD}you sent {auth}\n")),
        // Data that is not JSON.
        Box::new(|auth| format!("{SSE_HEAD}data: {auth}\n\n")),
        // An error inside the stream.
        Box::new(|auth| {
            let error = json!({"error": {"message": format!("rejected {auth}")}});
            format!("{SSE_HEAD}data: {error}\n\n")
        }),
    ];
    for echo in echoes {
        let fake =
            Fake::start(move |_, req, s| write(s, &echo(req.header("authorization").unwrap())));
        let up = keyed(&fake.url);
        let err = complete(&up, &request()).0.unwrap_err();
        assert_hidden(&err);
        assert!(
            format!("{err}").contains("[redacted]")
                || matches!(err, UpstreamError::Status { status: 502, .. }),
            "{err}"
        );
    }
}

#[test]
fn the_key_is_not_in_the_served_list_error_or_debug_output() {
    let fake = Fake::start(|_, req, s| {
        let auth = req.header("authorization").unwrap().to_owned();
        let list = json!({"data": [{"id": auth}]});
        write(s, &json_answer("200 OK", &list.to_string()));
    });
    let up = Upstream::new(UpstreamConfig {
        api_key: Some(Secret::new(KEY.into())),
        model: Some("other".into()),
        ..config(&fake.url)
    })
    .unwrap();
    let err = up.probe_blocking().unwrap_err();
    assert!(matches!(err, UpstreamError::Unsupported(_)), "{err:?}");
    assert_hidden(&err);
    assert!(!format!("{up:?}").contains(KEY));
}

#[test]
fn https_and_credentials_in_the_url_are_refused() {
    for url in [
        "https://api.deepseek.example/v1",
        "http://admin:hunter2@10.0.0.5:8000",
        "http://hunter2@10.0.0.5:8000/v1",
    ] {
        match Upstream::new(config(url)) {
            Err(UpstreamError::Unsupported(m)) => assert!(!m.contains("hunter2"), "{m}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    match Upstream::new(config("https://api.deepseek.example")) {
        Err(e) => assert!(e.to_string().contains("https"), "{e}"),
        Ok(_) => unreachable!(),
    }
    match Upstream::new(UpstreamConfig {
        api_key: Some(Secret::new("bad\nkey".into())),
        ..config("http://127.0.0.1:1")
    }) {
        Err(UpstreamError::Unsupported(m)) => assert!(!m.contains("bad"), "{m}"),
        other => panic!("{other:?}"),
    }
}
