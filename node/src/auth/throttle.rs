//! Back-off after failed logins, per user name, on this node.
//!
//! The first [`FREE_FAILURES`] failed logins of a name cost nothing more than the password derivation; after that
//! every further attempt for the name waits out a lock that doubles with each failure, from one second up to
//! [`LOCK_MAX`], and is refused at once while the lock holds. A successful login clears the name. Names are counted
//! whether a user of that name exists or not, so the back-off tells nothing about which users exist.
//!
//! The table is bounded (10,000 names): past it, names whose lock ran out are forgotten first, and a name new to a
//! full table of locked names is not counted (each attempt still pays the derivation).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Failed logins of a name before the back-off starts.
pub const FREE_FAILURES: u32 = 5;

/// The longest a name stays locked after a failure.
pub const LOCK_MAX: Duration = Duration::from_secs(60);

/// Names tracked at most.
const NAMES_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

/// The failed logins of this node, by user name.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    // A B-tree, not a hash map: no random hash seed is drawn when an engine opens (the simulation's schedules
    // depend on the seeds drawn).
    names: Mutex<BTreeMap<String, Failures>>,
}

/// How long the lock after the `count`-th failure lasts (none before [`FREE_FAILURES`]).
fn lock_for(count: u32) -> Option<Duration> {
    let over = count.checked_sub(FREE_FAILURES)?;
    Some(Duration::from_secs(1u64 << over.min(6)).min(LOCK_MAX))
}

impl LoginThrottle {
    /// How long `user` must still wait before a login is tried; `None` when it may try now.
    pub fn locked(&self, user: &str) -> Option<Duration> {
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let until = names.get(user)?.locked_until?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// Counts a failed login of `user`.
    pub fn failed(&self, user: &str) {
        let now = Instant::now();
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        if names.len() >= NAMES_MAX && !names.contains_key(user) {
            names.retain(|_, f| f.locked_until.is_some_and(|until| until > now));
            if names.len() >= NAMES_MAX {
                return;
            }
        }
        let failures = names.entry(user.to_string()).or_insert(Failures { count: 0, locked_until: None });
        failures.count = failures.count.saturating_add(1);
        failures.locked_until = lock_for(failures.count).map(|lock| now + lock);
    }

    /// Clears `user` after a successful login.
    pub fn succeeded(&self, user: &str) {
        self.names.lock().unwrap_or_else(PoisonError::into_inner).remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_double_from_one_second_after_the_free_failures_and_cap() {
        assert_eq!(lock_for(1), None);
        assert_eq!(lock_for(FREE_FAILURES - 1), None);
        assert_eq!(lock_for(FREE_FAILURES), Some(Duration::from_secs(1)));
        assert_eq!(lock_for(FREE_FAILURES + 1), Some(Duration::from_secs(2)));
        assert_eq!(lock_for(FREE_FAILURES + 5), Some(Duration::from_secs(32)));
        assert_eq!(lock_for(FREE_FAILURES + 6), Some(LOCK_MAX));
        assert_eq!(lock_for(u32::MAX), Some(LOCK_MAX));
    }

    #[tokio::test]
    async fn a_name_is_locked_after_repeated_failures_and_cleared_by_a_success() {
        let about = |d: Option<Duration>, secs: u64| {
            d.is_some_and(|d| d <= Duration::from_secs(secs) && d > Duration::from_secs(secs) / 2)
        };
        let throttle = LoginThrottle::default();
        for _ in 0..FREE_FAILURES - 1 {
            throttle.failed("mallory");
            assert_eq!(throttle.locked("mallory"), None);
        }
        throttle.failed("mallory");
        assert!(about(throttle.locked("mallory"), 1), "{:?}", throttle.locked("mallory"));
        assert_eq!(throttle.locked("alice"), None, "other names are not locked");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(throttle.locked("mallory"), None, "the lock runs out");
        throttle.failed("mallory");
        assert!(about(throttle.locked("mallory"), 2), "the lock doubles on the next failure");
        throttle.succeeded("mallory");
        assert_eq!(throttle.locked("mallory"), None);
        throttle.failed("mallory");
        assert_eq!(throttle.locked("mallory"), None, "a success starts the count over");
    }
}
