//! Where the runtime gets the time: an injectable [`Clock`].

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

/// The runtime's source of time. The engine never reads a clock; the runtime asks this one for "now"
/// and sleeps on it until the engine's next deadline.
pub trait Clock: Send + Sync + 'static {
    /// The current time (UTC).
    fn now(&self) -> Timestamp;

    /// A future that completes once [`now`](Self::now) is at or past `deadline` (UTC).
    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'static, ()>;
}

/// Wall-clock time measured with tokio's monotonic clock from a starting instant.
///
/// Under `#[tokio::test(start_paused = true)]` tokio's clock is paused and jumps straight to the next
/// timer, so a test that waits for an idle timeout of 30 minutes runs in microseconds, deterministically.
/// Make it inside the runtime whose clock it should follow.
#[derive(Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
    origin_at: Timestamp,
}

impl TokioClock {
    /// A clock that reads `start` now and advances with tokio's clock.
    pub fn new(start: Timestamp) -> Self {
        Self { origin: tokio::time::Instant::now(), origin_at: start }
    }

    /// A clock that starts at the system's wall-clock time.
    pub fn system() -> Self {
        Self::new(Timestamp::now())
    }

    fn instant_for(&self, at: Timestamp) -> tokio::time::Instant {
        let ahead = at.duration_since(self.origin_at);
        // Before the origin means "already due"; saturate far-future deadlines instead of overflowing.
        let ahead = Duration::try_from(ahead).unwrap_or(Duration::ZERO).min(Duration::from_secs(100 * 365 * 86_400));
        self.origin + ahead
    }
}

impl fmt::Debug for TokioClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioClock").field("now", &self.now()).finish()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = self.origin.elapsed();
        self.origin_at
            .saturating_add(SignedDuration::try_from(elapsed).unwrap_or(SignedDuration::MAX))
            .unwrap_or(Timestamp::MAX)
    }

    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep_until(self.instant_for(deadline)))
    }
}

/// A clock that moves only when told to ([`set`](Self::set), [`advance`](Self::advance)): for tests on a
/// multi-thread runtime, where tokio's clock cannot be paused.
pub struct ManualClock {
    now: watch::Sender<Timestamp>,
    // Serialises `advance` so concurrent advances add up.
    lock: Mutex<()>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self { now: watch::Sender::new(start), lock: Mutex::new(()) }
    }

    /// Moves the clock to `at` (never back: an earlier time is ignored).
    pub fn set(&self, at: Timestamp) {
        self.now.send_if_modified(|now| {
            if at > *now {
                *now = at;
                true
            } else {
                false
            }
        });
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let now = *self.now.borrow();
        self.set(
            now.saturating_add(SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX)).unwrap_or(Timestamp::MAX),
        );
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock").field("now", &*self.now.borrow()).finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, time stops and the sleep never ends.
            if rx.wait_for(|now| *now >= deadline).await.is_err() {
                futures::future::pending::<()>().await;
            }
        })
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }

    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'static, ()> {
        (**self).sleep_until(deadline)
    }
}
