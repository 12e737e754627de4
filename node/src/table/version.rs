//! The chunk list of a shard at one moment ([`Chunks`]), shared by every reader that started then.
//!
//! A commit makes a new list and readers keep the one they started with, so a commit must not copy the whole list:
//! a shard that took many single-row inserts holds tens of thousands of chunks, and a copy per insert makes each
//! commit cost more than the last. The list is kept as runs of up to [`RUN`] chunks, each shared between
//! versions; a change copies only the runs it touches (an insert: the last run, usually) and the list of runs, so it
//! costs O(chunks / RUN + RUN) instead of O(chunks).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::replica::Chunk;

/// The chunks a run holds before it is split in two.
const RUN: usize = 256;

/// A shard's chunks, in sequence order, numbers unique. Cheap to share; changed by making a new one
/// ([`Runs::changed`]).
pub(crate) type Chunks = Runs<Arc<Chunk>>;

/// Something the list keeps in order of its number.
pub(crate) trait Numbered: Clone {
    /// Its number, unique in a list.
    fn number(&self) -> u64;
}

impl Numbered for Arc<Chunk> {
    fn number(&self) -> u64 {
        self.seq
    }
}

/// Items in order of their numbers, numbers unique, kept as shared runs.
#[derive(Debug)]
pub(crate) struct Runs<T> {
    /// Non-empty runs, each in order, every number of a run below every number of the next.
    runs: Vec<Arc<[T]>>,
    len: usize,
}

impl<T> Default for Runs<T> {
    fn default() -> Self {
        Runs { runs: Vec::new(), len: 0 }
    }
}

impl<T: Numbered> Runs<T> {
    /// The list of `chunks`, in any order (numbers unique).
    pub(crate) fn new(mut chunks: Vec<T>) -> Self {
        chunks.sort_by_key(T::number);
        let len = chunks.len();
        Runs { runs: chunks.chunks(RUN).map(Arc::from).collect(), len }
    }

    /// How many chunks.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks in sequence order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + Clone {
        self.runs.iter().flat_map(|run| run.iter())
    }

    /// The chunk with the lowest number.
    pub(crate) fn first(&self) -> Option<&T> {
        self.runs.first().and_then(|run| run.first())
    }

    /// The chunk with the highest number.
    pub(crate) fn last(&self) -> Option<&T> {
        self.runs.last().and_then(|run| run.last())
    }

    /// The chunk numbered `seq`, if present.
    pub(crate) fn get(&self, seq: u64) -> Option<&T> {
        let run = self.runs.get(self.run_of(seq))?;
        run.binary_search_by_key(&seq, T::number).ok().map(|i| &run[i])
    }

    /// The position of the run that holds `seq` or would take it: the first whose last number is not below it,
    /// else the last run.
    fn run_of(&self, seq: u64) -> usize {
        let i = self.runs.partition_point(|run| run.last().is_some_and(|c| c.number() < seq));
        i.min(self.runs.len().saturating_sub(1))
    }

    /// The list without the chunks numbered in `removed` and with `added` (numbers not present, or also in
    /// `removed`: the new chunk takes the old one's place). Copies only the runs that change.
    pub(crate) fn changed(&self, removed: &HashSet<u64>, mut added: Vec<T>) -> Self {
        if removed.is_empty() && added.is_empty() {
            return Runs { runs: self.runs.clone(), len: self.len };
        }
        if self.runs.is_empty() {
            return Runs::new(added);
        }
        added.sort_by_key(T::number);
        // The changes of each run touched, by its position.
        let mut touched: BTreeMap<usize, (Vec<u64>, Vec<T>)> = BTreeMap::new();
        for seq in removed {
            touched.entry(self.run_of(*seq)).or_default().0.push(*seq);
        }
        for chunk in added {
            touched.entry(self.run_of(chunk.number())).or_default().1.push(chunk);
        }
        let mut runs: Vec<Arc<[T]>> = Vec::with_capacity(self.runs.len() + 1);
        let mut len = 0;
        let mut from = 0;
        for (at, (gone, new)) in touched {
            for run in &self.runs[from..at] {
                len += run.len();
                runs.push(Arc::clone(run));
            }
            from = at + 1;
            let gone: HashSet<u64> = gone.into_iter().collect();
            let merged = merge(self.runs[at].iter().filter(|c| !gone.contains(&c.number())).cloned(), new);
            len += merged.len();
            if merged.len() > 2 * RUN {
                runs.extend(merged.chunks(RUN).map(Arc::from));
            } else if !merged.is_empty() {
                // A run left small joins the one before it while both fit in one run.
                match runs.last() {
                    Some(previous) if merged.len() < RUN / 4 && previous.len() + merged.len() <= RUN => {
                        let joined: Vec<T> = previous.iter().cloned().chain(merged).collect();
                        *runs.last_mut().expect("checked") = Arc::from(joined);
                    }
                    _ => runs.push(Arc::from(merged)),
                }
            }
        }
        for run in &self.runs[from..] {
            len += run.len();
            runs.push(Arc::clone(run));
        }
        Runs { runs, len }
    }
}

/// `a` and `b` (each in sequence order) in sequence order.
fn merge<T: Numbered>(a: impl Iterator<Item = T>, b: Vec<T>) -> Vec<T> {
    let mut a = a.peekable();
    let mut b = b.into_iter().peekable();
    let mut out = Vec::with_capacity(a.size_hint().0 + b.len());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.number() < y.number(),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
}

impl<T: Numbered> std::ops::Index<usize> for Runs<T> {
    type Output = T;

    /// The chunk at position `i` in sequence order (panics past the end, as a slice does).
    fn index(&self, i: usize) -> &T {
        self.iter().nth(i).expect("chunk position out of range")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::{Numbered, RUN, Runs};

    /// An item numbered `.0`, told apart from another of its number by `.1`.
    #[derive(Debug, Clone, PartialEq)]
    struct Item(u64, u32);

    impl Numbered for Item {
        fn number(&self) -> u64 {
            self.0
        }
    }

    fn check(runs: &Runs<Item>, model: &BTreeMap<u64, Item>) {
        let listed: Vec<Item> = runs.iter().cloned().collect();
        let expected: Vec<Item> = model.values().cloned().collect();
        assert_eq!(listed, expected);
        assert_eq!(runs.len(), model.len());
        assert_eq!(runs.is_empty(), model.is_empty());
        assert_eq!(runs.first(), model.values().next());
        assert_eq!(runs.last(), model.values().next_back());
        assert!(runs.runs.iter().all(|r| !r.is_empty() && r.len() <= 2 * RUN), "runs stay bounded");
        for (n, item) in model.iter().step_by(7) {
            assert_eq!(runs.get(*n), Some(item));
        }
        assert_eq!(runs.get(u64::MAX), None);
    }

    #[test]
    fn changes_keep_the_order_and_copy_only_the_runs_they_touch() {
        // A deterministic generator: the same sequence of changes on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below.max(1)
        };
        let mut model: BTreeMap<u64, Item> = (1..=1000).map(|n| (n * 2, Item(n * 2, 0))).collect();
        let mut runs = Runs::new(model.values().rev().cloned().collect());
        check(&runs, &model);
        let mut top = 2001;
        for round in 1..=600u32 {
            let before = Runs { runs: runs.runs.clone(), len: runs.len };
            let mut removed = HashSet::new();
            let mut added = Vec::new();
            match next(4) {
                // Appends, as inserts mostly are; one a little below the top (an insert numbered before another
                // committed first).
                0 | 1 => {
                    for _ in 0..=next(3) {
                        top += 2;
                        added.push(Item(top, round));
                    }
                    if next(2) == 0 {
                        added.push(Item(top - 1, round));
                    }
                }
                // Removals anywhere, and the odd replacement of a chunk by another of its number.
                2 => {
                    let keys: Vec<u64> = model.keys().copied().collect();
                    for _ in 0..=next(20) {
                        if let Some(k) = keys.get(next(keys.len() as u64) as usize) {
                            removed.insert(*k);
                        }
                    }
                    if let Some(k) = removed.iter().next().copied() {
                        added.push(Item(k, round));
                    }
                }
                // A prefix goes (tiering).
                _ => removed.extend(model.keys().take(next(300) as usize).copied()),
            }
            for k in &removed {
                model.remove(k);
            }
            for item in &added {
                model.insert(item.0, item.clone());
            }
            runs = runs.changed(&removed, added);
            check(&runs, &model);
            // Runs the change did not touch are the same objects, not copies: an append copies the last run (split
            // in up to three when it grew past its bound).
            if removed.is_empty() {
                let copied =
                    runs.runs.iter().filter(|r| !before.runs.iter().any(|b| std::sync::Arc::ptr_eq(r, b))).count();
                assert!(copied <= 3, "round {round}: an append copied {copied} runs");
            }
        }
        let emptied = runs.changed(&model.keys().copied().collect(), Vec::new());
        check(&emptied, &BTreeMap::new());
        let again = emptied.changed(&HashSet::new(), vec![Item(5, 1), Item(3, 1)]);
        check(&again, &BTreeMap::from([(3, Item(3, 1)), (5, Item(5, 1))]));
        assert_eq!(again[1], Item(5, 1));
    }

    #[test]
    fn an_append_copies_at_most_one_run() {
        let runs = Runs::new((0..10_000).map(|n| Item(n, 0)).collect());
        let appended = runs.changed(&HashSet::new(), vec![Item(10_000, 1)]);
        let copied = appended.runs.iter().filter(|r| !runs.runs.iter().any(|b| std::sync::Arc::ptr_eq(r, b))).count();
        assert_eq!(copied, 1);
        assert_eq!(appended.len(), 10_001);
    }
}
