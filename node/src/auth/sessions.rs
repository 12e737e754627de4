//! Open sessions per user on this node, bounded by `limits.connections_per_user`: a PostgreSQL-wire connection
//! holds a [`SessionSlot`] from its login until it closes, and a Flight SQL call that runs a statement holds one (in
//! a count of its own) until its response ends, so one user (or one leaked password) cannot take every connection
//! or worker a node can serve.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The sessions of each user on this node.
#[derive(Debug)]
pub struct Sessions {
    limit: usize,
    // A B-tree, not a hash map: no random hash seed is drawn when an engine opens (the simulation's schedules
    // depend on the seeds drawn).
    open: Mutex<BTreeMap<String, usize>>,
}

/// One open session of a user; the count goes down when it is dropped.
#[derive(Debug)]
pub struct SessionSlot {
    sessions: Arc<Sessions>,
    user: String,
}

impl Sessions {
    /// At most `limit` sessions per user (0: no limit).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Sessions { limit, open: Mutex::new(BTreeMap::new()) })
    }

    /// The limit per user (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Opens a session of `user`; `None` when the user has `limit` open already.
    pub fn open(self: &Arc<Self>, user: &str) -> Option<SessionSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(user.to_string()).or_insert(0);
        if self.limit != 0 && *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(SessionSlot { sessions: Arc::clone(self), user: user.to_string() })
    }

    /// The sessions `user` has open.
    pub fn count(&self, user: &str) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).get(user).copied().unwrap_or(0)
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut open = self.sessions.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_up_to_the_limit_and_a_closed_session_frees_its_place() {
        let sessions = Sessions::new(2);
        let a = sessions.open("alice").expect("first");
        let b = sessions.open("alice").expect("second");
        assert!(sessions.open("alice").is_none(), "the third is refused");
        let bob = sessions.open("bob").expect("other users have their own count");
        assert_eq!(sessions.count("alice"), 2);
        drop(a);
        let c = sessions.open("alice").expect("a place came free");
        drop((b, c, bob));
        assert_eq!(sessions.count("alice"), 0);
        assert_eq!(sessions.count("bob"), 0);
        let unlimited = Sessions::new(0);
        let many: Vec<_> = (0..100).map(|_| unlimited.open("alice").expect("no limit")).collect();
        assert_eq!(unlimited.count("alice"), many.len());
    }
}
