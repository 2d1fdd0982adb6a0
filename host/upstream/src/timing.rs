//! Waiting on the upstream: every wait bounded by a deadline and broken off
//! when the caller cancels, and the pause between two tries.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::error::UpstreamError;

/// How often a wait looks at the cancel flag: a cancelled request lets go of
/// its connection (and the upstream of its sequence) within this.
const CANCEL_POLL: Duration = Duration::from_millis(250);

/// The first pause between tries; it doubles with each try.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// The longest pause between tries: past a couple of seconds an upstream
/// that is restarting is better reported than waited for.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The longest `Retry-After` honoured: the caller's own client is waiting.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(10);

/// Why a wait ended without its result.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Deadline,
    Cancelled,
}

/// The caller's cancel flag, looked at while any wait of one request runs.
pub(crate) struct Watch<'a> {
    cancelled: &'a AtomicBool,
    tick: Interval,
}

impl<'a> Watch<'a> {
    /// Needs a Tokio runtime with timers (it makes an interval).
    pub(crate) fn new(cancelled: &'a AtomicBool) -> Watch<'a> {
        let mut tick = tokio::time::interval(CANCEL_POLL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Watch { cancelled, tick }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// `fut`'s output, unless `deadline` passes or the flag is set first.
    /// Dropping `fut` then is what lets go of a connection.
    pub(crate) async fn until<F: Future>(
        &mut self,
        fut: F,
        deadline: Instant,
    ) -> Result<F::Output, Stop> {
        if self.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let mut fut = std::pin::pin!(fut);
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(deadline));
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Ok(out),
                () = &mut sleep => return Err(Stop::Deadline),
                _ = self.tick.tick() => {
                    if self.is_cancelled() {
                        return Err(Stop::Cancelled);
                    }
                }
            }
        }
    }

    /// Sleeps `pause` unless cancelled.
    pub(crate) async fn pause(&mut self, pause: Duration) -> Result<(), UpstreamError> {
        match self
            .until(std::future::pending::<()>(), Instant::now() + pause)
            .await
        {
            Err(Stop::Cancelled) => Err(UpstreamError::Cancelled),
            Ok(()) | Err(Stop::Deadline) => Ok(()),
        }
    }
}

/// The pause before try `failed + 1`, after `failed` tries ended in `err`:
/// the upstream's `Retry-After` when it gave one (at most
/// [`RETRY_AFTER_MAX`]), else exponential backoff with jitter.
pub(crate) fn pause_after(err: &UpstreamError, failed: u32, rng: &mut XorShift) -> Duration {
    if let UpstreamError::Status {
        retry_after: Some(s),
        ..
    } = err
    {
        return Duration::from_secs(*s).min(RETRY_AFTER_MAX);
    }
    backoff(failed, rng)
}

/// [`BACKOFF_BASE`] × 2^(failed − 1), at most [`BACKOFF_MAX`], of which a
/// random half is waited on top of the other half ("equal jitter"): clients
/// that failed together do not all come back at the same instant.
pub(crate) fn backoff(failed: u32, rng: &mut XorShift) -> Duration {
    let exp = failed.saturating_sub(1).min(16);
    let full = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX);
    let half = full / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rng.next() % (nanos + 1))
}

/// Marsaglia's xorshift64: jitter needs spread, not quality.
pub(crate) struct XorShift(u64);

impl XorShift {
    /// Seeded from the clock, and from a counter so that two seeded in the
    /// same nanosecond still differ.
    pub(crate) fn from_clock() -> XorShift {
        static SEEDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = SEEDS.fetch_add(1, Ordering::Relaxed);
        XorShift((nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let mut rng = XorShift::from_clock();
        for (failed, full) in [
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1600),
            (5, 2000),
            (40, 2000),
        ] {
            let full = Duration::from_millis(full);
            for _ in 0..100 {
                let d = backoff(failed, &mut rng);
                assert!(d >= full / 2 && d <= full, "{failed}: {d:?}");
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap() {
        let mut rng = XorShift::from_clock();
        let status = |s| UpstreamError::Status {
            status: 503,
            message: String::new(),
            retry_after: Some(s),
        };
        assert_eq!(pause_after(&status(3), 1, &mut rng), Duration::from_secs(3));
        assert_eq!(pause_after(&status(600), 1, &mut rng), RETRY_AFTER_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_end_at_the_deadline_or_on_cancel() {
        let flag = AtomicBool::new(false);
        let mut watch = Watch::new(&flag);
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            watch.until(std::future::pending::<()>(), deadline).await,
            Err(Stop::Deadline)
        );
        assert_eq!(watch.until(async { 5 }, deadline).await, Ok(5));
        let started = Instant::now();
        let far = started + Duration::from_secs(3600);
        let wait = watch.until(std::future::pending::<()>(), far);
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            flag.store(true, Ordering::Relaxed);
        };
        let (stopped, ()) = tokio::join!(wait, cancel);
        assert_eq!(stopped, Err(Stop::Cancelled));
        assert!(started.elapsed() <= Duration::from_millis(600) + CANCEL_POLL);
    }
}
