//! Compiling components in a child process, under caps on its wall time and
//! memory.
//!
//! Cranelift cannot be interrupted or held to a memory budget: a component
//! of 100,000 tiny functions in 1.1 MB (a "compile bomb") takes ~6 s of a
//! core and ~590 MiB to compile (50,000 take half that), and nothing short
//! of ending the process stops it. So a server compiles each
//! upload in a worker process: the component's bytes go to its stdin, the
//! compiled artifact comes back on its stdout, the kernel holds it to its
//! memory cap and the parent kills it when its time is up.
//!
//! The memory cap is `RLIMIT_DATA` (the heap and every private writable
//! mapping), not `RLIMIT_AS`: the address space also counts the program's
//! own mapped image (~56 MiB for a debug `deepwasm`) and allocator
//! reservations that take no memory, so a cap on it would mean something
//! else for each build. The worker's engine reserves nothing: it has no
//! pooling allocator and instantiates nothing.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use wasmtime::Engine;

use crate::limits::MIB;

/// Wall time a compile may take by default. The slowest legitimate
/// plugins, interpreters built with componentize-js and componentize-py
/// (12–18 MB), compiled in the worker in 14 and 11.5 s of CPU, 20 and 17 s
/// of wall time on a 2-core machine busy with a build (wasmtime 48); a
/// server's compile competes with the model for cores, so this leaves them
/// six times that.
pub const DEFAULT_MAX_COMPILE_TIME: Duration = Duration::from_secs(120);

/// Memory a compile may take by default, in bytes. Compiling the largest
/// legitimate plugins in the worker peaked at 380 MiB of data (`VmData`;
/// 378 MiB resident by `/usr/bin/time -v`) for the componentize-js
/// calculator and 368 MiB (349 MiB resident) for componentize-py's; the
/// built-in JSON-schema sampler takes 62 MiB. This leaves the interpreters
/// 2.7 times their need, for larger apps, and bounds the two compiles a
/// server runs at once (`MAX_COMPILES`) to 2 GiB.
pub const DEFAULT_MAX_COMPILE_MEMORY: u64 = 1024 * MIB;

/// How the worker tells its parent that the component did not compile (the
/// reason is on its stderr): an exit code no panic or signal gives.
const EXIT_INVALID: u8 = 3;

/// How the worker tells its parent that an allocation wasmtime checks
/// itself (a mapping, say) failed; one that Rust's allocator makes aborts.
const EXIT_OUT_OF_MEMORY: u8 = 4;

/// The most of the worker's stderr kept for an error message.
const MAX_STDERR_BYTES: u64 = 16 << 10;

/// A program that compiles components out of process: one whose entry
/// point calls [`compile_worker_main`] (`deepwasm compile-worker`).
#[derive(Clone, Debug)]
pub struct CompileWorker {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Wall time one compile may take; the worker is killed then.
    pub max_time: Duration,
    /// Memory one compile may take, in bytes: the worker's heap and every
    /// other private writable mapping it makes (`RLIMIT_DATA`).
    pub max_memory_bytes: u64,
}

impl CompileWorker {
    /// `program args…` under the default caps.
    pub fn new(program: impl Into<PathBuf>, args: impl IntoIterator<Item = OsString>) -> Self {
        CompileWorker {
            program: program.into(),
            args: args.into_iter().collect(),
            max_time: DEFAULT_MAX_COMPILE_TIME,
            max_memory_bytes: DEFAULT_MAX_COMPILE_MEMORY,
        }
    }

    /// Compile `bytes` in a fresh worker; the serialized component.
    pub(crate) fn compile(&self, bytes: &[u8]) -> Result<Vec<u8>, CompileError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            // A worker out of memory should die at once with one line, not
            // symbolize a backtrace (which needs more memory) first.
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        set_limits(&mut cmd, self.max_time, self.max_memory_bytes);
        let mut child = cmd.spawn().map_err(|e| {
            CompileError::Worker(format!(
                "cannot start the compile worker {}: {e}",
                self.program.display()
            ))
        })?;
        let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("the worker's stdio are pipes");
        };
        // Each pipe has its own thread, so neither side ever waits on a full
        // pipe whatever the sizes; the parent waits for stdout's end (the
        // worker is done) or the deadline, whichever comes first.
        let (done, finished) = mpsc::channel();
        let (status, artifact, errors, timed_out) = std::thread::scope(|s| {
            s.spawn(move || {
                // A worker that died early closed its end: its status tells why.
                let _ = stdin.write_all(bytes);
            });
            let errors = s.spawn(move || {
                let mut text = Vec::new();
                let _ = stderr.take(MAX_STDERR_BYTES).read_to_end(&mut text);
                text
            });
            s.spawn(move || {
                let mut artifact = Vec::new();
                let read = stdout.read_to_end(&mut artifact).map(|_| artifact);
                let _ = done.send(read);
            });
            let (artifact, timed_out) = match finished.recv_timeout(self.max_time) {
                Ok(read) => (Some(read), false),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Killing closes its pipes, which ends the threads above.
                    let _ = child.kill();
                    (None, true)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The reader died: nothing will read what it writes.
                    let _ = child.kill();
                    (None, false)
                }
            };
            let status = child.wait();
            let errors = errors.join().unwrap_or_default();
            (status, artifact, errors, timed_out)
        });
        if timed_out {
            return Err(CompileError::TimeLimit(self.max_time));
        }
        let status = status.map_err(|e| {
            CompileError::Worker(format!("cannot wait for the compile worker: {e}"))
        })?;
        let errors = String::from_utf8_lossy(&errors).trim().to_owned();
        match artifact {
            Some(Ok(artifact)) if status.success() && !artifact.is_empty() => Ok(artifact),
            Some(Err(e)) => Err(CompileError::Worker(format!(
                "cannot read the compile worker's output: {e}"
            ))),
            _ => Err(self.failure(status, errors)),
        }
    }

    /// Why a worker that ended without an artifact did.
    fn failure(&self, status: ExitStatus, errors: String) -> CompileError {
        use std::os::unix::process::ExitStatusExt;
        if status.code() == Some(EXIT_INVALID.into()) {
            return CompileError::Invalid(errors);
        }
        // What Rust's allocator prints before it aborts.
        if status.code() == Some(EXIT_OUT_OF_MEMORY.into())
            || errors.contains("memory allocation of")
        {
            return CompileError::MemoryLimit(self.max_memory_bytes);
        }
        if status.signal() == Some(libc::SIGXCPU) {
            // The CPU-time backstop (see `set_limits`) fired before the
            // parent's deadline: the same cap.
            return CompileError::TimeLimit(self.max_time);
        }
        let errors = if errors.is_empty() {
            "it wrote nothing on stderr".to_owned()
        } else {
            errors
        };
        CompileError::Worker(format!("the compile worker failed ({status}): {errors}"))
    }
}

/// Give the worker its caps before it starts: its memory (`RLIMIT_DATA`),
/// CPU time as a backstop to the parent's deadline (`RLIMIT_CPU`, should the
/// parent be stopped), no core dump of an abort, and death with its parent.
fn set_limits(cmd: &mut Command, max_time: Duration, max_memory: u64) {
    use std::os::unix::process::CommandExt;
    // The worker compiles on one thread, so its CPU time never passes its
    // wall time: this fires only when the parent's deadline did not.
    let cpu_secs = max_time.as_secs().saturating_add(2);
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before `exec`, where only
    // async-signal-safe calls are allowed: `limit_self` makes only system
    // calls and allocates nothing.
    unsafe {
        cmd.pre_exec(move || limit_self(max_memory, cpu_secs, parent));
    }
}

/// The worker's side of [`set_limits`], run between `fork` and `exec`.
fn limit_self(max_memory: u64, cpu_secs: u64, parent: u32) -> std::io::Result<()> {
    let limit = |resource, soft: u64, hard: u64| {
        let rl = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: `setrlimit` reads the struct passed and changes only
        // this process.
        if unsafe { libc::setrlimit(resource, &rl) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    limit(libc::RLIMIT_DATA, max_memory, max_memory)?;
    // SIGXCPU at the soft limit, SIGKILL a second later.
    limit(libc::RLIMIT_CPU, cpu_secs, cpu_secs + 1)?;
    limit(libc::RLIMIT_CORE, 0, 0)?;
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number and changes only
        // this process. It fires when the thread that spawned the worker
        // ends, and that thread waits for the worker (see `compile`).
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The parent may have gone before the line above. (No message:
        // allocating here could deadlock on a lock held at the fork.)
        // SAFETY: `getppid` has no preconditions.
        if unsafe { libc::getppid() } as u32 != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
    Ok(())
}

/// Why a component did not compile.
#[derive(Debug)]
pub(crate) enum CompileError {
    /// The component is not valid WebAssembly (wasmtime's message).
    Invalid(String),
    /// Compiling took longer than the cap.
    TimeLimit(Duration),
    /// Compiling needed more memory than the cap, bytes.
    MemoryLimit(u64),
    /// The worker failed for another reason: a host problem.
    Worker(String),
}

/// The compile worker's entry point: read a component from stdin, compile
/// it with the plugin engine's code generation settings, write the
/// serialized artifact to stdout. A program calls this from its `main` and
/// exits with the code it returns; [`CompileWorker`] runs that program.
pub fn compile_worker_main() -> ExitCode {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("cannot read the component from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let artifact = match precompile(&bytes) {
        Ok(a) => a,
        Err(PrecompileError::Engine(e)) => {
            eprintln!("cannot create the compile engine: {e}");
            return ExitCode::FAILURE;
        }
        Err(PrecompileError::OutOfMemory(e)) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_OUT_OF_MEMORY);
        }
        Err(PrecompileError::Compile(e)) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(&artifact).and_then(|()| out.flush()) {
        eprintln!("cannot write the compiled component: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

enum PrecompileError {
    Engine(String),
    OutOfMemory(String),
    Compile(String),
}

/// The worker's engine: the plugin engine's code generation settings on one
/// thread, without its pooling allocator (it instantiates nothing, and the
/// pool's reserved address space would only count against the worker's
/// limits) or its epoch ticker.
pub(crate) fn worker_engine() -> wasmtime::Result<Engine> {
    Engine::new(&crate::engine::codegen_config(false))
}

/// Compile `bytes` as the worker does; the serialized component.
fn precompile(bytes: &[u8]) -> Result<Vec<u8>, PrecompileError> {
    let engine = worker_engine().map_err(|e| PrecompileError::Engine(format!("{e:#}")))?;
    engine.precompile_component(bytes).map_err(|e| {
        let out_of_memory = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::OutOfMemory)
        });
        if out_of_memory {
            PrecompileError::OutOfMemory(format!("{e:#}"))
        } else {
            PrecompileError::Compile(format!("{e:#}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::hash::{DefaultHasher, Hash, Hasher};

    use wasmtime::component::Component;

    use super::*;
    use crate::{EngineConfig, PluginEngine};

    fn hash(h: impl Hash) -> u64 {
        let mut s = DefaultHasher::new();
        h.hash(&mut s);
        s.finish()
    }

    /// The worker's engine has no pooling allocator, yet what it compiles is
    /// what the plugin engine (pooling, epoch ticker) would: the same
    /// compatibility hash, so the disk cache keys agree, and the artifact
    /// loads and runs there.
    #[test]
    fn the_workers_artifact_loads_in_the_pooling_engine() {
        let plugins = PluginEngine::new(EngineConfig::default()).unwrap();
        let worker = worker_engine().unwrap();
        assert_eq!(
            hash(worker.precompile_compatibility_hash()),
            hash(plugins.engine().precompile_compatibility_hash()),
        );
        let wasm = wat::parse_str(
            r#"(component
                (core module $m (func (export "f") (result i32) i32.const 42))
                (core instance $i (instantiate $m))
                (func (export "f") (result u32) (canon lift (core func $i "f")))
            )"#,
        )
        .unwrap();
        let Ok(artifact) = precompile(&wasm) else {
            panic!("the component did not compile");
        };
        // SAFETY: compiled just above by this crate's worker code.
        let component = unsafe { Component::deserialize(plugins.engine(), &artifact) }.unwrap();
        let mut store = wasmtime::Store::new(plugins.engine(), ());
        store.set_fuel(1_000_000).unwrap();
        store.set_epoch_deadline(1_000_000);
        let instance = wasmtime::component::Linker::new(plugins.engine())
            .instantiate(&mut store, &component)
            .unwrap();
        let f = instance
            .get_typed_func::<(), (u32,)>(&mut store, "f")
            .unwrap();
        assert_eq!(f.call(&mut store, ()).unwrap(), (42,));
    }

    #[test]
    fn invalid_bytes_give_the_compile_error() {
        let Err(PrecompileError::Compile(message)) = precompile(b"\0asm\x0d\0\x01\0junk") else {
            panic!("junk compiled");
        };
        assert!(!message.is_empty());
    }
}
