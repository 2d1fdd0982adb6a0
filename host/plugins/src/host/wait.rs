//! Waiting inside a host call, bounded by the call's deadline.
//!
//! Epoch interruption stops Wasm code, not a host function the guest is
//! blocked in: a guest that sleeps on a clock pollable (`wasi:io/poll.poll`,
//! `pollable.block`) would otherwise keep its caller waiting for as long as
//! it likes, whatever its deadline. These replace WASI's waiting functions
//! with ones that never wait past the deadline of the call in progress; a
//! wait cut short ends the call with the deadline hit, as a loop would.
//!
//! In a deterministic store (rewards) time does not pass: its clocks are
//! frozen, so every pollable is ready at once and what a guest sees never
//! depends on how fast the machine is or how loaded.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};

use crate::host::{HostState, Wasi};
use crate::limits::LimitHit;

/// The WASI version whose `poll` interface we shadow: the one wasmtime-wasi
/// links. Guests importing any other 0.2.x version resolve to it.
const POLL_INTERFACE: &str = "wasi:io/poll@0.2.12";

/// The runtime every bounded wait runs on. Its own, not the caller's: a
/// plugin called from a thread of an embedder's runtime (a server's
/// blocking pool) must not have its wait fail, or panic, because that
/// runtime is shutting down.
static WAITS: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("deepwasm-waits")
        .enable_time()
        .build()
        .expect("cannot start the runtime for plugin waits")
});

/// Run `f` to its end on the waits' runtime, from a thread outside any
/// async context (plugin calls are blocking calls).
fn wait<F: std::future::Future>(f: F) -> F::Output {
    WAITS.block_on(f)
}

/// When the call in progress must end, and how long it was given.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallDeadline {
    pub(crate) at: Instant,
    pub(crate) length: Duration,
}

impl CallDeadline {
    pub(crate) fn after(length: Duration) -> Self {
        CallDeadline {
            at: Instant::now()
                .checked_add(length)
                .unwrap_or_else(far_future),
            length,
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

impl HostState {
    /// The error that ends a call whose deadline passed while the guest was
    /// waiting in the host.
    pub(crate) fn deadline_passed(&mut self) -> wasmtime::Error {
        let length = self.deadline.length;
        self.limiter.hit = Some(LimitHit::Deadline(length));
        wasmtime::Error::msg(format!(
            "deadline of {} ms passed while the plugin waited in a host call",
            length.as_millis()
        ))
    }
}

/// Link the bounded `poll`, `pollable.block` and `pollable.ready` over
/// wasmtime-wasi's own (which must already be in `linker`).
pub(crate) fn shadow_wasi_waits(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL_INTERFACE)?;
    poll.func_wrap("poll", |cx, (list,)| poll_bounded(cx, list).map(|r| (r,)))?;
    poll.func_wrap("[method]pollable.block", |cx, (p,)| block_bounded(cx, p))?;
    poll.func_wrap("[method]pollable.ready", |cx, (p,)| {
        ready(cx, p).map(|r| (r,))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

fn poll_bounded(
    mut cx: StoreContextMut<'_, HostState>,
    list: Vec<Resource<DynPollable>>,
) -> wasmtime::Result<Vec<u32>> {
    let state = cx.data_mut();
    if state.wasi != Wasi::Live {
        if list.is_empty() {
            wasmtime::bail!("empty poll list");
        }
        for p in &list {
            state.table.get(p)?;
        }
        return Ok((0..list.len() as u32).collect());
    }
    let until = tokio::time::Instant::from_std(state.deadline.at);
    let table = &mut state.table;
    let waited = wait(async { tokio::time::timeout_at(until, table.poll(list)).await });
    match waited {
        Ok(ready) => ready,
        Err(_elapsed) => Err(state.deadline_passed()),
    }
}

fn block_bounded(
    mut cx: StoreContextMut<'_, HostState>,
    pollable: Resource<DynPollable>,
) -> wasmtime::Result<()> {
    let state = cx.data_mut();
    if state.wasi != Wasi::Live {
        state.table.get(&pollable)?;
        return Ok(());
    }
    let until = tokio::time::Instant::from_std(state.deadline.at);
    let table = &mut state.table;
    let waited = wait(async { tokio::time::timeout_at(until, table.block(pollable)).await });
    match waited {
        Ok(done) => done,
        Err(_elapsed) => Err(state.deadline_passed()),
    }
}

fn ready(
    mut cx: StoreContextMut<'_, HostState>,
    pollable: Resource<DynPollable>,
) -> wasmtime::Result<bool> {
    let state = cx.data_mut();
    if state.wasi != Wasi::Live {
        state.table.get(&pollable)?;
        return Ok(true);
    }
    wait(state.table.ready(pollable))
}
