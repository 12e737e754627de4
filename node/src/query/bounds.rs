//! The smallest and largest value of a scan's columns, from the minimum and maximum every chunk keeps per column, for
//! the planner's estimates.
//!
//! A join's row count is estimated from how many distinct values its keys can take; without them DataFusion assumes
//! as many as the larger side has rows, which makes a key-to-foreign-key join (supplier ⋈ lineitem) look as small as
//! its smaller side, and its result gets built into hash tables (and broadcast to every task of a cluster's stage) that
//! hold millions of rows. An integer column's bounds cap its distinct values (`l_suppkey` in 1..=10000 has at most
//! 10000), which is all the estimate needs. Bounds are reported inexact: a chunk keeps the rows it was written with
//! until it is rewritten, and a scan may read fewer.

use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, ScalarValue};

use crate::table::ChunkMeta;

/// Per column of a scan, the bounds of its values, or `None` when some chunk did not know them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ColumnBounds(Vec<Option<(ScalarValue, ScalarValue)>>);

impl ColumnBounds {
    /// The bounds of the table's `columns` over `chunks`; `None` when there are no chunks (nothing is known).
    pub(crate) fn of_chunks<'a>(chunks: impl IntoIterator<Item = &'a ChunkMeta>, columns: &[usize]) -> Option<Self> {
        let mut out: Option<Self> = None;
        for chunk in chunks {
            let one = Self(
                columns
                    .iter()
                    .map(|c| {
                        let (min, max) = (chunk.min.get(*c)?, chunk.max.get(*c)?);
                        (!min.is_null() && !max.is_null()).then(|| (min.clone(), max.clone()))
                    })
                    .collect(),
            );
            match out.as_mut() {
                None => out = Some(one),
                Some(all) => all.merge(&one),
            }
        }
        out
    }

    /// Widens these bounds to cover `other`'s (for the same columns); a column unknown in either is unknown.
    pub(crate) fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine = match (mine.take(), theirs) {
                (Some((min, max)), Some((lo, hi))) => {
                    let min = match lo.partial_cmp(&min) {
                        Some(std::cmp::Ordering::Less) => lo.clone(),
                        Some(_) => min,
                        None => continue,
                    };
                    let max = match hi.partial_cmp(&max) {
                        Some(std::cmp::Ordering::Greater) => hi.clone(),
                        Some(_) => max,
                        None => continue,
                    };
                    Some((min, max))
                }
                _ => None,
            };
        }
        if self.0.len() != other.0.len() {
            self.0.iter_mut().for_each(|b| *b = None);
        }
    }

    /// Sets the inexact minimum and maximum of `stats` (the scan's columns, in the same order) where known.
    pub(crate) fn apply(&self, stats: &mut [ColumnStatistics]) {
        for (column, bounds) in stats.iter_mut().zip(&self.0) {
            if let Some((min, max)) = bounds {
                column.min_value = Precision::Inexact(min.clone());
                column.max_value = Precision::Inexact(max.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(min: Vec<ScalarValue>, max: Vec<ScalarValue>) -> ChunkMeta {
        ChunkMeta {
            rows: 1,
            data_bytes: 1,
            written_ms: 0,
            txn: 0,
            visible_from: 0,
            removed_by: 0,
            null_counts: vec![0; min.len()],
            min,
            max,
        }
    }

    #[test]
    fn bounds_cover_every_chunk_and_a_column_unknown_in_one_chunk_is_unknown() {
        let i = |v: i64| ScalarValue::Int64(Some(v));
        let s = |v: &str| ScalarValue::Utf8(Some(v.into()));
        let chunks = [
            chunk(vec![i(5), s("m"), i(1)], vec![i(9), s("q"), i(2)]),
            chunk(vec![i(-3), s("b"), ScalarValue::Int64(None)], vec![i(7), s("z"), ScalarValue::Int64(None)]),
        ];
        let bounds = ColumnBounds::of_chunks(&chunks, &[0, 1, 2]).expect("chunks");
        assert_eq!(bounds, ColumnBounds(vec![Some((i(-3), i(9))), Some((s("b"), s("z"))), None]));

        // Projected columns come in the scan's order.
        let bounds = ColumnBounds::of_chunks(&chunks, &[1, 0]).expect("chunks");
        let mut stats = vec![ColumnStatistics::new_unknown(), ColumnStatistics::new_unknown()];
        bounds.apply(&mut stats);
        assert_eq!(stats[0].min_value, Precision::Inexact(s("b")));
        assert_eq!(stats[1].max_value, Precision::Inexact(i(9)));

        assert_eq!(ColumnBounds::of_chunks(&[], &[0]), None);
        let mut merged = ColumnBounds::of_chunks(&chunks[..1], &[0]).expect("chunk");
        merged.merge(&ColumnBounds::of_chunks(&chunks[1..], &[0]).expect("chunk"));
        assert_eq!(merged, ColumnBounds(vec![Some((i(-3), i(9)))]));
    }
}
