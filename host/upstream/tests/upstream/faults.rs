use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use deepwasm_upstream::{Upstream, UpstreamConfig, UpstreamError};
use serde_json::json;

use crate::fake::*;

/// An upstream that accepts and never answers.
fn silent() -> Fake {
    Fake::start(|_, _, _| std::thread::sleep(Duration::from_secs(10)))
}

#[test]
fn a_silent_upstream_times_out_at_the_first_byte_timeout() {
    let fake = silent();
    let up = Upstream::new(UpstreamConfig {
        first_byte_timeout: Duration::from_millis(300),
        retries: 0,
        ..config(&fake.url)
    })
    .unwrap();
    let started = Instant::now();
    let (result, _) = complete(&up, &request());
    let took = started.elapsed();
    match result {
        Err(UpstreamError::Timeout(m)) => assert!(m.contains("300ms"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[test]
fn a_stream_that_stalls_times_out_at_the_idle_timeout_and_is_not_retried() {
    let fake = Fake::start(|_, _, s| {
        write(s, SSE_HEAD);
        write(s, &event("one", None));
        std::thread::sleep(Duration::from_secs(10));
    });
    let up = Upstream::new(UpstreamConfig {
        idle_timeout: Duration::from_millis(300),
        ..config(&fake.url)
    })
    .unwrap();
    let started = Instant::now();
    let (result, chunks) = complete(&up, &request());
    match result {
        Err(UpstreamError::Timeout(m)) => assert!(m.contains("stalled for 300ms"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(texts(&chunks), ["one"]);
    assert_eq!(fake.count(), 1);
}

#[test]
fn junk_after_a_200_head_is_malformed() {
    let fake = Fake::start(|_, _, s| {
        write(s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        write(
            s,
            "<html><body>502 Bad Gateway</body></html>\r\nmore junk\r\n",
        );
    });
    let (result, chunks) = complete(&upstream(&fake.url), &request());
    match result {
        Err(UpstreamError::Malformed(m)) => assert!(m.contains("<html><body>502"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(chunks.is_empty());
    // The same junk would come back: not tried again.
    assert_eq!(fake.count(), 1);
}

#[test]
fn data_that_is_not_json_is_malformed() {
    let fake = Fake::start(|_, _, s| {
        write(s, SSE_HEAD);
        write(s, "data: {\"choices\": [{\"text\": \"cut her\n\n");
    });
    match complete(&upstream(&fake.url), &request()).0 {
        Err(UpstreamError::Malformed(m)) => assert!(m.contains("not JSON"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_answer_that_is_not_http_is_malformed() {
    let fake = Fake::start(|_, _, s| write(s, "SSH-2.0-OpenSSH_9.6\r\n\r\n"));
    match complete(&upstream(&fake.url), &request()).0 {
        Err(UpstreamError::Malformed(m)) => assert!(m.contains("HTTP/1.1"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Two chunks, then the connection closes: mid-chunked-body (a broken
/// connection) or at a clean end of a close-delimited body (a stream that
/// simply stopped). Either way it is cut, and not tried again: the caller
/// has the two chunks.
#[test]
fn a_stream_closed_after_two_chunks_is_cut_and_not_retried() {
    let chunked = Fake::start(|_, _, s| {
        write(s, SSE_CHUNKED_HEAD);
        write(s, &chunk(&event("a", None)));
        write(s, &chunk(&event("b", None)));
    });
    let plain = Fake::start(|_, _, s| {
        write(s, SSE_HEAD);
        write(s, &event("a", None));
        write(s, &event("b", None));
    });
    for fake in [chunked, plain] {
        let (result, chunks) = complete(&upstream(&fake.url), &request());
        assert!(matches!(result, Err(UpstreamError::Cut(_))), "{result:?}");
        assert_eq!(texts(&chunks), ["a", "b"]);
        assert_eq!(fake.count(), 1);
    }
}

/// An engine that fails mid-generation sends an error event: OpenAI's
/// `data: {"error": ...}` (vLLM, SGLang) or llama-server's `error:` line.
#[test]
fn an_error_inside_the_stream_is_a_status() {
    let fake = Fake::start(|_, _, s| {
        write(s, SSE_HEAD);
        write(s, &event("partial", None));
        let error = json!({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}});
        write(s, &format!("data: {error}\n\n"));
        write(s, DONE);
    });
    let (result, chunks) = complete(&upstream(&fake.url), &request());
    assert_eq!(
        result,
        Err(UpstreamError::Status {
            status: 500,
            message: "engine died".into(),
            retry_after: None
        })
    );
    assert_eq!(texts(&chunks), ["partial"]);
    assert_eq!(fake.count(), 1);

    let llama = Fake::start(|_, _, s| {
        write(s, SSE_HEAD);
        write(
            s,
            "error: {\"code\": 400, \"message\": \"the request exceeds the available context size\", \"type\": \"exceed_context_size_error\"}\n\n",
        );
    });
    match complete(&upstream(&llama.url), &request()).0 {
        Err(UpstreamError::Status {
            status: 400,
            message,
            ..
        }) => assert!(message.contains("context size"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(llama.count(), 1);

    let no_code = Fake::start(|_, _, s| {
        write(s, SSE_HEAD);
        write(s, &event("x", None));
        write(s, "data: {\"error\": {\"message\": \"oops\"}}\n\n");
    });
    match complete(&upstream(&no_code.url), &request()).0 {
        Err(UpstreamError::Status { status: 502, .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// The caller gives up mid-stream: the request ends at once, and the
/// connection is closed (the upstream sees its client leave and can stop
/// generating).
#[test]
fn cancelling_mid_stream_returns_quickly_and_closes_the_connection() {
    let (closed_tx, closed_rx) = mpsc::channel();
    let closed_tx = std::sync::Mutex::new(closed_tx);
    let fake = Fake::start(move |_, _, s| {
        write(s, SSE_HEAD);
        write(s, &event("a", None));
        write(s, &event("b", None));
        // Then nothing, until the client hangs up.
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let hung_up = matches!(s.read(&mut buf), Ok(0));
        closed_tx
            .lock()
            .unwrap()
            .send((hung_up, Instant::now()))
            .unwrap();
    });
    let up = upstream(&fake.url);
    let cancelled = Arc::new(AtomicBool::new(false));
    let mut chunks = Vec::new();
    let flag = cancelled.clone();
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        flag.store(true, Ordering::Relaxed);
        Instant::now()
    });
    let result = up.complete_blocking(&request(), &mut |c| chunks.push(c), &cancelled);
    let returned = Instant::now();
    let set_at = setter.join().unwrap();
    assert_eq!(result, Err(UpstreamError::Cancelled));
    assert_eq!(texts(&chunks), ["a", "b"]);
    assert!(
        returned - set_at < Duration::from_millis(750),
        "{:?}",
        returned - set_at
    );
    let (hung_up, at) = closed_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(hung_up);
    assert!(at - set_at < Duration::from_secs(1), "{:?}", at - set_at);
}

#[test]
fn cancelling_before_the_first_byte_returns_quickly() {
    let fake = silent();
    let up = upstream(&fake.url);
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        flag.store(true, Ordering::Relaxed);
    });
    let started = Instant::now();
    let result = up.complete_blocking(&request(), &mut |_| {}, &cancelled);
    assert_eq!(result, Err(UpstreamError::Cancelled));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Already set: nothing is sent.
    let before = fake.count();
    assert_eq!(
        up.complete_blocking(&request(), &mut |_| {}, &cancelled),
        Err(UpstreamError::Cancelled)
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fake.count(), before);
}

#[test]
fn a_closed_port_is_unreachable_after_every_try() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let up = Upstream::new(UpstreamConfig {
        retries: 1,
        ..config(&format!("http://127.0.0.1:{port}"))
    })
    .unwrap();
    let started = Instant::now();
    match complete(&up, &request()).0 {
        Err(UpstreamError::Unreachable(m)) => assert!(m.contains(&port.to_string()), "{m}"),
        other => panic!("{other:?}"),
    }
    // One pause of 100 to 200 ms between the two tries.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}
