//! Rate limiting of failed authentications per client address: after
//! [`FailureLimiter::MAX_FAILURES`] failures within [`FailureLimiter::WINDOW`], further
//! attempts from that address are refused unchecked until the window has passed, which
//! bounds password guessing across connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct FailureLimiter {
    /// Per address: recent failure times, oldest first.
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl FailureLimiter {
    pub const MAX_FAILURES: usize = 10;
    pub const WINDOW: Duration = Duration::from_secs(60);
    /// Addresses tracked at most; beyond it the oldest entries are dropped.
    const MAX_ADDRESSES: usize = 100_000;

    /// Whether `addr` may try to authenticate now.
    pub fn allows(&self, addr: IpAddr) -> bool {
        let mut failures = self.failures.lock().unwrap();
        match failures.get_mut(&addr) {
            None => true,
            Some(times) => {
                times.retain(|t| t.elapsed() < Self::WINDOW);
                times.len() < Self::MAX_FAILURES
            }
        }
    }

    pub fn failed(&self, addr: IpAddr) {
        let mut failures = self.failures.lock().unwrap();
        if failures.len() >= Self::MAX_ADDRESSES {
            failures.retain(|_, times| times.last().is_some_and(|t| t.elapsed() < Self::WINDOW));
        }
        failures.entry(addr).or_default().push(Instant::now());
    }

    /// A successful login clears the address's record.
    pub fn succeeded(&self, addr: IpAddr) {
        self.failures.lock().unwrap().remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_too_many_failures_and_others_are_not() {
        let l = FailureLimiter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..FailureLimiter::MAX_FAILURES {
            assert!(l.allows(a));
            l.failed(a);
        }
        assert!(!l.allows(a));
        assert!(l.allows(b));
        l.succeeded(a);
        assert!(l.allows(a));
    }
}
