//! A shard's change log on a replica (docs/rfcs/0001-cluster-data-path.md, "The switch to routed, replicated
//! data"): changes the primary numbered and sent, kept *prepared* (durable, not visible) until the primary's commit
//! point passes them.
//!
//! A prepared change is a record under `0x07 table shard lsn` naming the chunks it adds (number and index entry; the
//! chunks' data is already under their data keys) and the numbers of the chunks it removes. Committing a change
//! writes its index entries and removals, deletes its record and moves the commit point (`0x08 table shard`) in one
//! batch; discarding it (a change the new primary of a failover does not have) deletes the record and the chunks'
//! data. Recovery loads the records and keeps their chunks' data, which has no index entry yet.
//!
//! A change may also settle parts of statements spanning shards ([`Resolution`]): committing it rewrites the index
//! entries of a committed statement's chunks (visible from the decision's metadata version on, untagged) and removes
//! an aborted statement's chunks, on every replica alike. A change that is itself a part of such a statement (`txn`)
//! does not remove chunks: it marks them removed by the statement ([`crate::table::ChunkMeta::removed_by`]), and
//! settling the statement removes them (commit) or clears the marks (abort).

use crate::error::{Error, Result};

/// One prepared change of a shard's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreparedChange {
    /// The change's number in the shard's log.
    pub(crate) lsn: u64,
    /// The epoch at which its primary numbered it: one primary per epoch, so two changes of one number and term
    /// are the same change, and of one number and different terms, changes of two primaries (the later one wins).
    pub(crate) term: u64,
    /// The chunks it adds: number and index entry.
    pub(crate) added: Vec<(u64, Vec<u8>)>,
    /// The numbers of the chunks it removes.
    pub(crate) removed: Vec<u64>,
    /// The statements spanning shards whose parts it settles.
    pub(crate) resolved: Vec<Resolution>,
    /// The statement spanning shards the change is a part of (0: none): its removals are marks until settled.
    pub(crate) txn: u64,
}

/// What the metadata group decided of one statement spanning shards, as a change of a shard's log settles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// The statement.
    pub txn: u64,
    /// Commit (its part becomes visible) or abort (its part is removed).
    pub commit: bool,
    /// The metadata version that recorded the decision: the committed part is visible from it on.
    pub version: u64,
}

/// One change of a shard's log as the replication stream carries it, chunks' data included.
#[derive(Debug, Clone)]
pub(crate) struct LoggedChange {
    /// The change's number in the shard's log.
    pub(crate) lsn: u64,
    /// The epoch at which its primary numbered it.
    pub(crate) term: u64,
    /// The chunks it adds.
    pub(crate) added: Vec<crate::engine::ReplicatedChunk>,
    /// The numbers of the chunks it removes.
    pub(crate) removed: Vec<u64>,
    /// The statements spanning shards whose parts it settles.
    pub(crate) resolved: Vec<Resolution>,
    /// The statement spanning shards the change is a part of (0: none).
    pub(crate) txn: u64,
}

/// The record format's version, first byte of every record: 2 adds the term (version 1 records read as term 0), 3
/// the resolutions (none in earlier records), 4 the statement the change is a part of (0 in earlier records).
const RECORD_VERSION: u8 = 4;

impl PreparedChange {
    /// Encodes the record (the lsn is in its key).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        out.extend_from_slice(&self.term.to_be_bytes());
        out.extend_from_slice(&(self.added.len() as u32).to_be_bytes());
        for (seq, index) in &self.added {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&(index.len() as u32).to_be_bytes());
            out.extend_from_slice(index);
        }
        out.extend_from_slice(&(self.removed.len() as u32).to_be_bytes());
        for seq in &self.removed {
            out.extend_from_slice(&seq.to_be_bytes());
        }
        out.extend_from_slice(&(self.resolved.len() as u32).to_be_bytes());
        for r in &self.resolved {
            out.extend_from_slice(&r.txn.to_be_bytes());
            out.push(u8::from(r.commit));
            out.extend_from_slice(&r.version.to_be_bytes());
        }
        out.extend_from_slice(&self.txn.to_be_bytes());
        out
    }

    /// Decodes the record of change `lsn`; `location` names it in errors.
    pub(crate) fn decode(lsn: u64, bytes: &[u8], location: impl Fn() -> String) -> Result<Self> {
        let corrupt = |detail: &str| Error::Corrupt { location: location(), detail: detail.to_string() };
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8]> {
            if rest.len() < n {
                return Err(corrupt("the prepared change record is truncated"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let u32_of = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize;
        let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        let version = take(1)?[0];
        let term = match version {
            1 => 0,
            2..=RECORD_VERSION => u64_of(take(8)?),
            _ => return Err(corrupt("unknown prepared change record version")),
        };
        let count = u32_of(take(4)?);
        let mut added = Vec::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            let seq = u64_of(take(8)?);
            let len = u32_of(take(4)?);
            added.push((seq, take(len)?.to_vec()));
        }
        let count = u32_of(take(4)?);
        let mut removed = Vec::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            removed.push(u64_of(take(8)?));
        }
        let mut resolved = Vec::new();
        if version >= 3 {
            let count = u32_of(take(4)?);
            for _ in 0..count {
                let txn = u64_of(take(8)?);
                let commit = match take(1)?[0] {
                    0 => false,
                    1 => true,
                    _ => return Err(corrupt("a resolution is neither commit nor abort")),
                };
                resolved.push(Resolution { txn, commit, version: u64_of(take(8)?) });
            }
        }
        let txn = if version >= 4 { u64_of(take(8)?) } else { 0 };
        if !rest.is_empty() {
            return Err(corrupt("the prepared change record has trailing bytes"));
        }
        Ok(Self { lsn, term, added, removed, resolved, txn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_reported() {
        let change = PreparedChange {
            lsn: 9,
            term: 3,
            added: vec![(4, vec![1, 2, 3]), (5, vec![])],
            removed: vec![1, 2],
            resolved: vec![
                Resolution { txn: 7, commit: true, version: 40 },
                Resolution { txn: 8, commit: false, version: 41 },
            ],
            txn: 12,
        };
        let bytes = change.encode();
        assert_eq!(PreparedChange::decode(9, &bytes, || "test".into()).expect("decode"), change);
        for cut in [0, 1, 7, bytes.len() - 1] {
            assert!(PreparedChange::decode(9, &bytes[..cut], || "test".into()).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(PreparedChange::decode(9, &longer, || "test".into()).is_err());
        // A record of the first version has no term, of the first two no resolutions, of the first three no
        // statement.
        let whole = PreparedChange { txn: 0, ..change.clone() };
        let whole_bytes = whole.encode();
        let mut third = whole_bytes[..whole_bytes.len() - 8].to_vec();
        third[0] = 3;
        assert_eq!(PreparedChange::decode(9, &third, || "test".into()).expect("version 3"), whole);
        let plain = PreparedChange { resolved: Vec::new(), txn: 0, ..change.clone() };
        let plain_bytes = plain.encode();
        let without = &plain_bytes[..plain_bytes.len() - 12];
        let mut second = without.to_vec();
        second[0] = 2;
        assert_eq!(PreparedChange::decode(9, &second, || "test".into()).expect("version 2"), plain);
        let mut first = vec![1];
        first.extend_from_slice(&without[9..]);
        let old = PreparedChange::decode(9, &first, || "test".into()).expect("version 1");
        assert_eq!(old, PreparedChange { term: 0, ..plain });
    }
}
