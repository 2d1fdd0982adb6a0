//! A fake upstream: a real listener on 127.0.0.1 that reads each request
//! and answers with HTTP/1.1 bytes the test writes by hand, one request per
//! connection (every answer says `Connection: close`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deepwasm_upstream::{
    Chunk, CompletionRequest, Finished, Upstream, UpstreamConfig, UpstreamError,
};
use serde_json::Value;

/// A request as the fake upstream read it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the request body is JSON")
    }
}

pub struct Fake {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Fake {
    /// Serves every connection on its own thread: `script(n, request,
    /// stream)` answers the `n`th (from 0), then the connection closes.
    pub fn start<F>(script: F) -> Fake
    where
        F: Fn(usize, &Received, &mut TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let script = Arc::new(script);
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let (log, script) = (log.clone(), script.clone());
                std::thread::spawn(move || {
                    let Some(request) = read_request(&mut stream) else {
                        return;
                    };
                    log.lock().unwrap().push(request.clone());
                    script(n, &request, &mut stream);
                });
            }
        });
        Fake { url, received }
    }

    /// The requests read so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Received> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
        bytes.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(bytes[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap().split(' ');
    let (method, path) = (first.next().unwrap().into(), first.next().unwrap().into());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = bytes[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
        body.extend_from_slice(&buf[..n]);
    }
    Some(Received {
        method,
        path,
        headers,
        body: String::from_utf8(body).unwrap(),
    })
}

/// Writes `text`, ignoring a client that already left.
pub fn write(stream: &mut TcpStream, text: &str) {
    let _ = stream.write_all(text.as_bytes());
    let _ = stream.flush();
}

/// The head of a streamed answer whose body ends when the connection does.
pub const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

/// The head of a streamed answer in chunked encoding, as the engines send.
pub const SSE_CHUNKED_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
     Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

/// `piece` as one chunk of a chunked body.
pub fn chunk(piece: &str) -> String {
    format!("{:x}\r\n{piece}\r\n", piece.len())
}

/// The end of a chunked body.
pub const LAST_CHUNK: &str = "0\r\n\r\n";

/// A completion event with `text` (and a finish reason).
pub fn event(text: &str, finish: Option<&str>) -> String {
    let event = serde_json::json!({
        "id": "cmpl-1", "object": "text_completion", "model": "m",
        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
        "usage": null,
    });
    format!("data: {event}\n\n")
}

pub const DONE: &str = "data: [DONE]\n\n";

/// A whole answer with a JSON body.
pub fn json_answer(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A complete, successful stream of `texts`.
pub fn full_stream(stream: &mut TcpStream, texts: &[&str]) {
    write(stream, SSE_HEAD);
    for text in texts {
        write(stream, &event(text, None));
    }
    write(stream, &event("", Some("stop")));
    write(stream, DONE);
}

/// A config for `url` with model `m` and timeouts that keep tests short.
pub fn config(url: &str) -> UpstreamConfig {
    UpstreamConfig {
        url: url.into(),
        model: Some("m".into()),
        connect_timeout: Duration::from_secs(1),
        first_byte_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(3),
        ..UpstreamConfig::default()
    }
}

pub fn upstream(url: &str) -> Upstream {
    Upstream::new(config(url)).unwrap()
}

/// A token-id prompt with a seed.
pub fn request() -> CompletionRequest {
    CompletionRequest {
        prompt: deepwasm_upstream::PromptBody::Tokens(vec![1, 2, 3]),
        max_tokens: Some(16),
        seed: Some(42),
        ..CompletionRequest::default()
    }
}

/// `req` completed from this thread, with the chunks it streamed.
pub fn complete(
    up: &Upstream,
    req: &CompletionRequest,
) -> (Result<Finished, UpstreamError>, Vec<Chunk>) {
    let mut chunks = Vec::new();
    let never = AtomicBool::new(false);
    let result = up.complete_blocking(req, &mut |c| chunks.push(c), &never);
    (result, chunks)
}

pub fn texts(chunks: &[Chunk]) -> Vec<&str> {
    chunks.iter().map(|c| c.text.as_str()).collect()
}
