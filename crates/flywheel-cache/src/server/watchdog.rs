//! Deadlines on every connection for a few atomic stores a request: a request's headers must
//! arrive within `header-timeout` of its first byte (of the connection's start, for the first
//! request), and a connection may sit between requests, neither reading nor writing, for
//! `idle-timeout`. One task for the whole server ticks a coarse clock and closes connections past
//! a deadline; nothing is armed per request. (hyper's own header timer is reset for every request
//! and cost a fifth of a narinfo GET's CPU: docs/benchmarks.md.)

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

/// Waiting for a request's headers (since its first byte, or the connection's start).
const HEAD: u8 = 0;
/// A request being handled (its body read by the handler, under the handler's own deadline).
const BUSY: u8 = 1;
/// Between requests: a response may still be going out.
const IDLE: u8 = 2;

pub(super) struct Watchdog {
    start: Instant,
    /// Milliseconds since `start`, as of the last tick.
    now_ms: AtomicU64,
    header_ms: u64,
    idle_ms: u64,
    tick: Duration,
    conns: Mutex<Vec<(Weak<Watched>, AbortHandle)>>,
    /// Called for each connection closed for a deadline.
    on_close: Box<dyn Fn() + Send + Sync>,
}

/// One connection's state, shared by its socket, its service and the watchdog.
pub(super) struct Watched {
    phase: AtomicU8,
    /// When the phase began, or (between requests) when a byte last went out.
    since_ms: AtomicU64,
}

impl Watchdog {
    pub fn new(header: Duration, idle: Duration, on_close: impl Fn() + Send + Sync + 'static) -> Arc<Watchdog> {
        let shortest = header.min(idle);
        Arc::new(Watchdog {
            start: Instant::now(),
            now_ms: AtomicU64::new(0),
            header_ms: header.as_millis() as u64,
            idle_ms: idle.as_millis() as u64,
            tick: (shortest / 8).clamp(Duration::from_millis(50), Duration::from_secs(1)),
            conns: Mutex::new(Vec::new()),
            on_close: Box::new(on_close),
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// A new connection, waiting for its first request.
    pub fn watch(&self) -> Arc<Watched> {
        Arc::new(Watched { phase: AtomicU8::new(HEAD), since_ms: AtomicU64::new(self.now_ms()) })
    }

    /// From now on `conn`'s task is aborted (its socket closed) when it misses a deadline.
    pub fn guard(&self, conn: &Arc<Watched>, task: AbortHandle) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.push((Arc::downgrade(conn), task));
        }
    }

    /// Ticks until the server stops.
    pub async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let now = self.start.elapsed().as_millis() as u64;
            self.now_ms.store(now, Ordering::Relaxed);
            let Ok(mut conns) = self.conns.lock() else { return };
            conns.retain(|(weak, task)| {
                let Some(conn) = weak.upgrade() else { return false };
                let phase = conn.phase.load(Ordering::Acquire);
                let since = conn.since_ms.load(Ordering::Relaxed);
                let limit = match phase {
                    HEAD => self.header_ms,
                    IDLE => self.idle_ms,
                    _ => return true,
                };
                if now.saturating_sub(since) <= limit {
                    return true;
                }
                task.abort();
                (self.on_close)();
                false
            });
        }
    }
}

impl Watched {
    fn enter(&self, phase: u8, now: u64) {
        // The time first: whoever sees the new phase sees its time.
        self.since_ms.store(now, Ordering::Relaxed);
        self.phase.store(phase, Ordering::Release);
    }

    /// Bytes arrived: between requests, the next one has begun.
    pub fn read_some(&self, now: u64) {
        if self.phase.load(Ordering::Relaxed) == IDLE {
            self.enter(HEAD, now);
        }
    }

    /// Bytes went out: between requests, the connection is not idle.
    pub fn wrote_some(&self, now: u64) {
        if self.phase.load(Ordering::Relaxed) == IDLE {
            self.since_ms.store(now, Ordering::Relaxed);
        }
    }

    /// A request's headers arrived: its handler has it.
    pub fn busy(&self, now: u64) {
        self.enter(BUSY, now);
    }

    /// Its handler answered.
    pub fn idle(&self, now: u64) {
        self.enter(IDLE, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_past_a_deadline_is_aborted_and_one_within_is_not() {
        let closed = Arc::new(AtomicU64::new(0));
        let counted = closed.clone();
        let dog = Watchdog::new(Duration::from_millis(200), Duration::from_millis(400), move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        tokio::spawn(dog.clone().run());
        let sleeper = || tokio::spawn(tokio::time::sleep(Duration::from_secs(30)));
        // Sends nothing: closed by the header deadline.
        let (silent, silent_task) = (dog.watch(), sleeper());
        dog.guard(&silent, silent_task.abort_handle());
        // Busy (a long handler): left alone.
        let (busy, busy_task) = (dog.watch(), sleeper());
        dog.guard(&busy, busy_task.abort_handle());
        busy.busy(dog.now_ms());
        // Between requests, writing now and then: not idle.
        let (writing, writing_task) = (dog.watch(), sleeper());
        dog.guard(&writing, writing_task.abort_handle());
        writing.idle(dog.now_ms());
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            writing.wrote_some(dog.now_ms());
        }
        assert!(silent_task.await.is_err_and(|e| e.is_cancelled()));
        assert!(!busy_task.is_finished() && !writing_task.is_finished());
        // Then idle for good: closed.
        let started = Instant::now();
        assert!(writing_task.await.is_err_and(|e| e.is_cancelled()));
        assert!(started.elapsed() < Duration::from_millis(1000));
        assert_eq!(closed.load(Ordering::Relaxed), 2);
        busy_task.abort();
    }
}
