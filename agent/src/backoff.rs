//! Exponential backoff with jitter: the one retry pacing of the agent (polling the control
//! plane, resending reports, retrying a revocation, waiting out locked account files).

use std::time::Duration;

/// Delays that double from `first` up to `max`, each drawn uniformly from the upper half.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// From 500 ms up to 30 s (talking to the control plane).
    fn default() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Delays from `first` up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now: uniformly random in [next/2, next]; doubles `next`.
    pub fn delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut backoff = Backoff::default();
        let first = backoff.delay();
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        for _ in 0..20 {
            let delay = backoff.delay();
            assert!(delay <= Duration::from_secs(30));
        }
        assert!(backoff.delay() >= Duration::from_secs(15));
        backoff.reset();
        assert!(backoff.delay() <= Duration::from_millis(500));
    }
}
