//! `hostile-tool`: a tool plugin that misbehaves on purpose, one tool per
//! attack, for the host's containment tests. Never grant it to anything real.
//!
//! `describe` lists every tool below; `call(name, arguments)` runs it
//! (`arguments` is a JSON object; unknown names are `not-found`):
//!
//! | tool        | arguments                    | behaviour |
//! |-------------|------------------------------|-----------|
//! | `spin`      | `{}`                         | loops forever on a counter kept opaque to the optimiser (`black_box`): burns fuel / epoch time |
//! | `alloc`     | `{}`                         | allocates 1 MiB vectors forever, writing one byte per 4 KiB page so the memory is really touched, and keeps them all: grows linear memory until the host's limit, then traps (allocation failure aborts) |
//! | `recurse`   | `{}`                         | unbounded non-tail recursion on scalars only, so every frame lives on the engine's call stack: meets the host's stack limit |
//! | `recurse-frames` | `{}`                    | unbounded non-tail recursion with a 256-byte frame kept live by `black_box`: overflows the shadow stack in linear memory (an out-of-bounds memory access trap under wasmtime) |
//! | `panic`     | `{}`                         | a Rust `panic!` (prints the message to stderr, then aborts: a trap) |
//! | `trap`      | `{}`                         | executes the wasm `unreachable` instruction |
//! | `flood`     | `{}`                         | writes lines to stdout and stderr in a loop forever, ignoring write errors |
//! | `read-file` | `{"path": "/etc/passwd"}`    | `std::fs::read_to_string(path)`; `text` with the content, or `error: <io error>` |
//! | `list-dir`  | `{"path": "/"}`              | `std::fs::read_dir(path)`; `text` with one entry name per line, or `error: <io error>` |
//! | `env`       | `{}`                         | `json` `{"vars": {…std::env::vars()}, "args": […std::env::args()]}` |
//! | `connect`   | `{"addr": "127.0.0.1:PORT"}` | really attempts a TCP connection with `std::net::TcpStream::connect` (wasi:sockets on wasm32-wasip2); `text` `connected to <peer>` or `error: <io error>` |
//! | `spin-log`  | `{}`                         | calls the `log` import (level `info`) in an infinite loop |
//! | `kv-fill`   | `{}`                         | `kv.set("kv-fill/<i>", value)` with values of 1 KiB, 2 KiB, 4 KiB, … until `set` fails; `text` with the error (`LimitExceeded("…")` style), or traps on running out of memory if the host never refuses |
//! | `ok`        | `{}`                         | `text` `ok` |
//!
//! `path` defaults to `/etc/passwd` for `read-file` and `/` for `list-dir`;
//! `addr` is required for `connect`.

use std::hint::black_box;
use std::io::Write;

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::log::{self, Level};
use deepwasm_sdk::tool::{self, Guest, kv};
use deepwasm_sdk::types::{Error, ToolOutput, ToolSpec};

const NO_ARGS: &str = r#"{"type":"object","properties":{},"additionalProperties":false}"#;
const PATH_ARG: &str =
    r#"{"type":"object","properties":{"path":{"type":"string"}},"additionalProperties":false}"#;
const ADDR_ARG: &str = r#"{"type":"object","properties":{"addr":{"type":"string"}},"required":["addr"],"additionalProperties":false}"#;

const TOOLS: &[(&str, &str, &str)] = &[
    ("spin", "Loops forever.", NO_ARGS),
    ("alloc", "Allocates and touches memory forever.", NO_ARGS),
    ("recurse", "Recurses without bound.", NO_ARGS),
    (
        "recurse-frames",
        "Recurses without bound with big frames in linear memory.",
        NO_ARGS,
    ),
    ("panic", "Panics.", NO_ARGS),
    ("trap", "Executes the unreachable instruction.", NO_ARGS),
    ("flood", "Writes to stdout and stderr forever.", NO_ARGS),
    ("read-file", "Tries to read a file.", PATH_ARG),
    ("list-dir", "Tries to list a directory.", PATH_ARG),
    (
        "env",
        "Returns the environment variables and arguments.",
        NO_ARGS,
    ),
    ("connect", "Tries to open a TCP connection.", ADDR_ARG),
    ("spin-log", "Logs forever.", NO_ARGS),
    (
        "kv-fill",
        "Stores ever larger values until the store refuses.",
        NO_ARGS,
    ),
    ("sleep", "Sleeps 30 s in WASI (a clock pollable).", NO_ARGS),
    ("ok", "Returns \"ok\".", NO_ARGS),
];

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn alloc() -> ! {
    const MIB: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Zeroed allocations may be served by fresh pages without writing
        // them; the loop below touches every page for real.
        let mut block = vec![0u8; MIB];
        for i in (0..MIB).step_by(4096) {
            block[i] = (i / 4096) as u8 | 1;
        }
        hoard.push(black_box(block));
        black_box(&hoard);
    }
}

/// Recursion whose frames hold only scalars: no shadow-stack frame, so it is
/// the engine's call stack that overflows.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return depth;
    }
    recurse(depth + 1).wrapping_mul(black_box(depth) | 1)
}

/// Recursion whose 256-byte frames live on the shadow stack in linear memory.
#[inline(never)]
fn recurse_frames(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    if black_box(depth) == u64::MAX {
        return frame[0];
    }
    // Using the frame after the call keeps it live and the call non-tail.
    recurse_frames(depth + 1).wrapping_add(frame[(depth % 32) as usize])
}

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::unreachable()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::process::abort()
    }
}

fn flood() -> ! {
    let line = "hostile-tool flood: ".to_string() + &"x".repeat(100);
    let mut n = 0u64;
    loop {
        let _ = writeln!(std::io::stdout(), "{line} {n}");
        let _ = writeln!(std::io::stderr(), "{line} {n}");
        n = black_box(n.wrapping_add(1));
    }
}

fn read_file(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(content) => content,
        Err(e) => format!("error: {e}"),
    }
}

fn list_dir(path: &str) -> String {
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .map(|e| match e {
                Ok(e) => e.file_name().to_string_lossy().into_owned(),
                Err(e) => format!("error: {e}"),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("error: {e}"),
    }
}

fn env() -> String {
    let vars: serde_json::Map<String, serde_json::Value> = std::env::vars()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    let args: Vec<String> = std::env::args().collect();
    serde_json::json!({ "vars": vars, "args": args }).to_string()
}

fn connect(addr: &str) -> String {
    match std::net::TcpStream::connect(addr) {
        Ok(stream) => match stream.peer_addr() {
            Ok(peer) => format!("connected to {peer}"),
            Err(_) => format!("connected to {addr}"),
        },
        Err(e) => format!("error: {e}"),
    }
}

fn spin_log() -> ! {
    let mut n = 0u64;
    loop {
        log::log(Level::Info, &format!("hostile-tool spin-log {n}"));
        n = black_box(n.wrapping_add(1));
    }
}

fn kv_fill() -> String {
    let mut size = 1024usize;
    let mut i = 0u64;
    loop {
        let value = vec![0xA5u8; size];
        if let Err(e) = kv::set(&format!("kv-fill/{i}"), &value) {
            return format!("{e:?}");
        }
        i += 1;
        size = size.saturating_mul(2);
    }
}

struct HostileTool;

impl Guest for HostileTool {
    fn describe() -> Vec<ToolSpec> {
        TOOLS
            .iter()
            .map(|(name, description, schema)| tool::spec(name, description, schema))
            .collect()
    }

    fn call(name: String, arguments: String) -> Result<ToolOutput, Error> {
        let args = Fields::parse("arguments", &arguments)?;
        let text = match name.as_str() {
            "spin" => spin(),
            "alloc" => alloc(),
            "recurse" => {
                let n = recurse(0);
                format!("returned {n}")
            }
            "recurse-frames" => {
                let n = recurse_frames(0);
                format!("returned {n}")
            }
            "panic" => panic!("hostile-tool: deliberate panic"),
            "trap" => trap(),
            "flood" => flood(),
            "read-file" => read_file(&args.get_or("path", "/etc/passwd".to_string())?),
            "list-dir" => list_dir(&args.get_or("path", "/".to_string())?),
            "env" => return Ok(ToolOutput::Json(env())),
            "connect" => connect(&args.require::<String>("addr")?),
            "spin-log" => spin_log(),
            "kv-fill" => kv_fill(),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(30));
                "slept".to_string()
            }
            "ok" => "ok".to_string(),
            _ => return Err(Error::not_found(format!("no tool named {name:?}"))),
        };
        Ok(ToolOutput::Text(text))
    }
}

deepwasm_sdk::export_tool!(HostileTool);
