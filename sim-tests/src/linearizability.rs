//! A linearizability checker (Wing and Gong's search with Lowe's memoization, as in Knossos and Porcupine): given a
//! history of operations with their invocation and completion times and a sequential model, it looks for one order of
//! the operations that respects real time (an operation that completed before another was invoked comes first) and in
//! which every operation returns what the model returns. Operations whose outcome the client never learned
//! (timeouts, crashes) may take effect at any time after their invocation, or never.
//!
//! Histories are checked one partition at a time (P-compositionality): the catalog as a set of tables is checked table
//! by table, each read of the whole set projected to "does it contain this table". Linearizability of the whole
//! history implies that of each projection, so a violation found in a partition is a real one.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

/// A sequential specification.
pub(crate) trait Model {
    /// The state the operations act on.
    type State: Clone + Eq + Hash + Debug;
    /// What an operation asks.
    type Input: Debug;
    /// What it returns.
    type Output: PartialEq + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;
    /// Applies `input` to `state`: the next state and what the operation returns.
    fn step(&self, state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);
}

/// One operation as a client saw it.
#[derive(Debug, Clone)]
pub(crate) struct Operation<I, O> {
    /// What it asked.
    pub(crate) input: I,
    /// When it was invoked.
    pub(crate) invoked: Duration,
    /// When it completed and what it returned; `None` when the client never learned.
    pub(crate) completed: Option<(Duration, O)>,
}

/// Checks that `history` is linearizable with respect to `model`; the error shows the operations that no order could
/// explain.
pub(crate) fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> Result<(), String> {
    let n = history.len();
    let deadline = |i: usize| history[i].completed.as_ref().map_or(Duration::MAX, |(t, _)| *t);
    // Depth-first search over (operations linearized so far, state), never visiting a pair twice.
    let mut seen: HashSet<(Vec<bool>, M::State)> = HashSet::new();
    let mut stack: Vec<(Vec<bool>, M::State)> = vec![(vec![false; n], model.init())];
    let mut deepest = 0;
    while let Some((done, state)) = stack.pop() {
        let complete = (0..n).all(|i| done[i] || history[i].completed.is_none());
        if complete {
            return Ok(());
        }
        deepest = deepest.max(done.iter().filter(|d| **d).count());
        // The next operation must have been invoked before every pending operation completed.
        let horizon = (0..n).filter(|i| !done[*i]).map(deadline).min().unwrap_or(Duration::MAX);
        for i in (0..n).filter(|i| !done[*i] && history[*i].invoked <= horizon) {
            let (next, output) = model.step(&state, &history[i].input);
            let fits = match &history[i].completed {
                Some((_, expected)) => *expected == output,
                None => true,
            };
            if !fits {
                continue;
            }
            let mut after = done.clone();
            after[i] = true;
            if seen.insert((after.clone(), next.clone())) {
                stack.push((after, next));
            }
        }
    }
    let mut ops: Vec<String> = history
        .iter()
        .map(|op| match &op.completed {
            Some((t, out)) => format!("{:?} at {:?}..{t:?} -> {out:?}", op.input, op.invoked),
            None => format!("{:?} at {:?}.. (outcome unknown)", op.input, op.invoked),
        })
        .collect();
    ops.truncate(12);
    Err(format!(
        "not linearizable: no order explains these {n} operations (at most {deepest} could be ordered): {}",
        ops.join("; ")
    ))
}

/// The catalog seen through one table name: whether it exists.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableModel;

/// An operation on one table name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableOp {
    /// CREATE TABLE (without IF NOT EXISTS).
    Create,
    /// DROP TABLE (without IF EXISTS).
    Drop,
    /// A read of the table list, projected onto this name.
    Read,
}

/// What a [`TableOp`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableOutcome {
    /// The create or drop took effect.
    Done,
    /// The create found the table, or the drop did not.
    Refused,
    /// The read saw the table (`true`) or not.
    Exists(bool),
}

impl Model for TableModel {
    type State = bool;
    type Input = TableOp;
    type Output = TableOutcome;

    fn init(&self) -> bool {
        false
    }

    fn step(&self, exists: &bool, op: &TableOp) -> (bool, TableOutcome) {
        match (op, exists) {
            (TableOp::Create, false) => (true, TableOutcome::Done),
            (TableOp::Create, true) => (true, TableOutcome::Refused),
            (TableOp::Drop, true) => (false, TableOutcome::Done),
            (TableOp::Drop, false) => (false, TableOutcome::Refused),
            (TableOp::Read, e) => (*e, TableOutcome::Exists(*e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn op(input: TableOp, from: u64, to: Option<(u64, TableOutcome)>) -> Operation<TableOp, TableOutcome> {
        Operation { input, invoked: ms(from), completed: to.map(|(t, o)| (ms(t), o)) }
    }

    #[test]
    fn sequential_create_read_drop_read_is_linearizable() {
        let history = [
            op(TableOp::Create, 0, Some((10, TableOutcome::Done))),
            op(TableOp::Read, 11, Some((12, TableOutcome::Exists(true)))),
            op(TableOp::Drop, 13, Some((20, TableOutcome::Done))),
            op(TableOp::Read, 21, Some((22, TableOutcome::Exists(false)))),
        ];
        assert!(check(&TableModel, &history).is_ok());
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_drop_is_caught() {
        let history = [
            op(TableOp::Create, 0, Some((10, TableOutcome::Done))),
            op(TableOp::Drop, 13, Some((20, TableOutcome::Done))),
            op(TableOp::Read, 21, Some((22, TableOutcome::Exists(true)))),
        ];
        let error = check(&TableModel, &history).expect_err("stale read");
        assert!(error.contains("not linearizable"), "{error}");
    }

    #[test]
    fn concurrent_reads_may_fall_on_either_side_but_not_flip_back() {
        // Both reads overlap the drop: either may see the table, but once one read that began after the other ended
        // saw it gone, an even later read cannot see it again.
        let ok = [
            op(TableOp::Create, 0, Some((10, TableOutcome::Done))),
            op(TableOp::Drop, 20, Some((40, TableOutcome::Done))),
            op(TableOp::Read, 21, Some((25, TableOutcome::Exists(false)))),
            op(TableOp::Read, 22, Some((39, TableOutcome::Exists(true)))),
        ];
        assert!(check(&TableModel, &ok).is_ok(), "the second read may be ordered before the drop");
        let flipped = [
            op(TableOp::Create, 0, Some((10, TableOutcome::Done))),
            op(TableOp::Drop, 20, Some((40, TableOutcome::Done))),
            op(TableOp::Read, 21, Some((25, TableOutcome::Exists(false)))),
            op(TableOp::Read, 26, Some((30, TableOutcome::Exists(true)))),
        ];
        assert!(check(&TableModel, &flipped).is_err(), "a later read saw the dropped table again");
    }

    #[test]
    fn an_uncertain_create_may_take_effect_late_or_never() {
        let late = [
            op(TableOp::Create, 0, None),
            op(TableOp::Read, 5, Some((6, TableOutcome::Exists(false)))),
            op(TableOp::Read, 50, Some((51, TableOutcome::Exists(true)))),
        ];
        assert!(check(&TableModel, &late).is_ok());
        let never = [op(TableOp::Create, 0, None), op(TableOp::Read, 50, Some((51, TableOutcome::Exists(false))))];
        assert!(check(&TableModel, &never).is_ok());
        let before = [op(TableOp::Read, 0, Some((1, TableOutcome::Exists(true)))), op(TableOp::Create, 5, None)];
        assert!(check(&TableModel, &before).is_err(), "a read cannot see a create invoked after it ended");
    }

    #[test]
    fn a_refused_create_needs_the_table_to_exist() {
        let history = [op(TableOp::Create, 0, Some((10, TableOutcome::Refused)))];
        assert!(check(&TableModel, &history).is_err());
    }
}
