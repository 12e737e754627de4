//! The key layout of a metadata replica in its [`MetaStore`](crate::MetaStore).
//!
//! ```text
//! 0x01                     vote            JSON of openraft Vote            written synced
//! 0x02                     committed       JSON of Option<LogId>            written unsynced (a hint for replay)
//! 0x03                     last purged     JSON of LogId                    written with the purge, same batch
//! 0x04 index:u64 BE        log entry       JSON of openraft Entry           written synced
//! 0x05                     snapshot meta   JSON of SnapshotMeta             written synced, same batch as data
//! 0x06                     snapshot data   the snapshot's bytes (JSON of MetaState)
//! ```
//!
//! Log keys hold the index big-endian so that byte order is index order: a range scan reads entries in log order,
//! and the last entry is the first of a descending scan.

/// The vote.
pub(crate) const VOTE: &[u8] = &[0x01];
/// The last committed log id known to this replica.
pub(crate) const COMMITTED: &[u8] = &[0x02];
/// The id of the last purged log entry.
pub(crate) const LAST_PURGED: &[u8] = &[0x03];
/// The prefix byte of log entries.
const LOG: u8 = 0x04;
/// The current snapshot's metadata.
pub(crate) const SNAPSHOT_META: &[u8] = &[0x05];
/// The current snapshot's data.
pub(crate) const SNAPSHOT_DATA: &[u8] = &[0x06];

/// Returns the key of the log entry at `index`.
pub(crate) fn log(index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = LOG;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Returns the first key after every log entry.
pub(crate) fn log_end() -> [u8; 1] {
    [LOG + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index() {
        let indexes = [0u64, 1, 255, 256, 65_535, 1 << 40, u64::MAX];
        for pair in indexes.windows(2) {
            assert!(log(pair[0]) < log(pair[1]), "{} < {}", pair[0], pair[1]);
            assert!(log(pair[1]).as_slice() < log_end().as_slice());
        }
        assert!(
            SNAPSHOT_META >= log_end().as_slice() && LAST_PURGED < log(0).as_slice(),
            "other keys lie outside the log range"
        );
    }
}
