//! A circuit breaker per gateway: closed → open after `threshold` consecutive failed
//! calls → half-open once `open_for` has passed (one probe call at a time) → closed on
//! a successful probe, open again on a failed one. It also keeps the recent outcomes
//! for the admin view.
use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

const RECENT: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

impl Circuit {
    pub const ALL: [Circuit; 3] = [Circuit::Closed, Circuit::Open, Circuit::HalfOpen];

    /// As the admin view and the `state` label of the circuit gauge write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }
}

#[derive(Default)]
struct Inner {
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probing: bool,
    recent: VecDeque<bool>,
}

pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self { threshold: threshold.max(1), open_for, inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn circuit_of(&self, inner: &Inner, now: Instant) -> (Circuit, Duration) {
        match inner.opened_at {
            None => (Circuit::Closed, Duration::ZERO),
            Some(at) => {
                let open_until = at + self.open_for;
                if now < open_until {
                    (Circuit::Open, open_until - now)
                } else {
                    (Circuit::HalfOpen, Duration::ZERO)
                }
            }
        }
    }

    pub fn circuit(&self) -> Circuit {
        self.circuit_of(&self.lock(), Instant::now()).0
    }

    /// Whether new payments are accepted: refused only while open; `Err` says when to
    /// come back.
    pub fn admits_new_payments(&self) -> Result<(), Duration> {
        match self.circuit_of(&self.lock(), Instant::now()) {
            (Circuit::Open, left) => Err(left),
            _ => Ok(()),
        }
    }

    /// Permission for one call. Every `Ok` must be followed by `record`.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let mut inner = self.lock();
        match self.circuit_of(&inner, Instant::now()) {
            (Circuit::Closed, _) => Ok(()),
            (Circuit::Open, left) => Err(left),
            (Circuit::HalfOpen, _) if !inner.probing => {
                inner.probing = true;
                Ok(())
            }
            (Circuit::HalfOpen, _) => Err(self.open_for / 4),
        }
    }

    pub fn record(&self, ok: bool) {
        let mut inner = self.lock();
        inner.recent.push_back(ok);
        if inner.recent.len() > RECENT {
            inner.recent.pop_front();
        }
        if ok {
            inner.consecutive_failures = 0;
            inner.opened_at = None;
            inner.probing = false;
            return;
        }
        inner.consecutive_failures += 1;
        let half_open_probe = inner.probing;
        if half_open_probe || inner.consecutive_failures >= self.threshold {
            if inner.opened_at.is_none() || half_open_probe {
                tracing::warn!(failures = inner.consecutive_failures, "circuit breaker opened");
            }
            inner.opened_at = Some(Instant::now());
            inner.probing = false;
        }
    }

    /// Failed share of the recent calls (0 when there were none), and their count.
    pub fn error_rate(&self) -> (f64, usize) {
        let inner = self.lock();
        let n = inner.recent.len();
        let failed = inner.recent.iter().filter(|ok| !**ok).count();
        (if n == 0 { 0.0 } else { failed as f64 / n as f64 }, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_once_and_closes_on_success() {
        // Open for 300 ms: the checks made while it is open never outlast that, even on a
        // loaded machine; the sleeps outlast it.
        let b = Breaker::new(3, Duration::from_millis(300));
        for _ in 0..2 {
            assert!(b.try_acquire().is_ok());
            b.record(false);
        }
        assert_eq!(b.circuit(), Circuit::Closed);
        b.record(false);
        assert_eq!(b.circuit(), Circuit::Open);
        assert!(b.try_acquire().is_err());
        assert!(b.admits_new_payments().is_err());
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(b.circuit(), Circuit::HalfOpen);
        assert!(b.admits_new_payments().is_ok());
        assert!(b.try_acquire().is_ok(), "one probe");
        assert!(b.try_acquire().is_err(), "only one probe at a time");
        b.record(false);
        assert_eq!(b.circuit(), Circuit::Open, "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(350));
        assert!(b.try_acquire().is_ok());
        b.record(true);
        assert_eq!(b.circuit(), Circuit::Closed);
        let (rate, n) = b.error_rate();
        assert_eq!(n, 5);
        assert!((rate - 0.8).abs() < 1e-9);
    }

    /// The admin view's `circuit` and the gauge's `state` label spell a circuit alike.
    #[test]
    fn circuits_serialise_as_their_labels() {
        for circuit in Circuit::ALL {
            assert_eq!(serde_json::to_value(circuit).expect("json"), circuit.as_str());
        }
    }
}
