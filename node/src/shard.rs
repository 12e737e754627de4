//! The cluster data path on a node (docs/rfcs/0001-cluster-data-path.md): which shard each row of a table belongs
//! to.
//!
//! - [`slot`]: the fixed encoding of a row's shard key and its hash to one of the
//!   [`SLOT_COUNT`](quiver_meta::SLOT_COUNT) slots.
//! - [`ShardMap`]: a table's shards by slot range, as the metadata's shard map has them, and the split of a batch
//!   of rows into the batches of each shard.
//!
//! The metadata group decides where shards live (`quiver_meta`'s placement); this module only answers "which
//! shard", identically on every node, because the slot of a row depends on nothing but its key's values.

pub mod slot;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use quiver_meta::{MetaState, ShardId, SlotRange, TableDef};

use crate::error::{Error, Result};

/// A table's shards in slot order, with the columns of its shard key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// Each shard's slot range and id, ordered by range; the ranges cover every slot once.
    shards: Vec<(SlotRange, ShardId)>,
    /// The shard key's columns (indices in the table's schema); empty: the table has no shard key.
    key: Vec<usize>,
}

impl ShardMap {
    /// Returns the map of `table` in `state`.
    ///
    /// # Errors
    ///
    /// [`Error::Internal`] when the table has no shards, its ranges do not cover the slot space once, or its shard
    /// key names a column it does not have: the metadata guarantees all three for a native table.
    pub fn of(state: &MetaState, table: &TableDef) -> Result<Self> {
        let mut shards: Vec<(SlotRange, ShardId)> =
            state.table_shards(table.id).map(|r| (r.slots, r.shard_id)).collect();
        shards.sort_unstable();
        let broken = |why: String| Error::Internal(format!("shard map of table \"{}\": {why}", table.name));
        let mut next = 0;
        for (range, id) in &shards {
            if range.start != next || range.end <= range.start {
                return Err(broken(format!("shard {id} owns slots {range}, expected a range from {next}")));
            }
            next = range.end;
        }
        if next != quiver_meta::SLOT_COUNT {
            return Err(broken(format!("the shards cover slots up to {next} only")));
        }
        let key = table
            .sharding
            .shard_key
            .iter()
            .map(|k| {
                table.columns.iter().position(|c| &c.name == k).ok_or_else(|| broken(format!("no key column {k}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { shards, key })
    }

    /// Returns the table's shards in slot order.
    pub fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.shards.iter().map(|(_, id)| *id)
    }

    /// Returns whether rows are routed by a key; a table without one sends each statement whole to one shard.
    pub fn has_key(&self) -> bool {
        !self.key.is_empty()
    }

    /// Returns the shard owning `slot`.
    pub fn shard_of(&self, slot: u32) -> ShardId {
        let i = self.shards.partition_point(|(range, _)| range.end <= slot);
        self.shards.get(i).or(self.shards.last()).map(|(_, id)| *id).expect("a shard map is never empty")
    }

    /// Splits `batch` into the rows of each shard, in slot order, leaving out shards that get no row. Rows keep
    /// their order within a shard.
    ///
    /// # Errors
    ///
    /// Fails when the batch lacks a key column or has one of a type that cannot be hashed.
    ///
    /// # Panics
    ///
    /// Panics when the map has no key ([`ShardMap::has_key`]); the caller routes such a table's statements whole.
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<(ShardId, RecordBatch)>> {
        assert!(self.has_key(), "split needs a shard key");
        let slots = slot::slots(batch, &self.key)?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.shards.len()];
        for (row, slot) in slots.into_iter().enumerate() {
            let i = self.shards.partition_point(|(range, _)| range.end <= slot);
            rows[i].push(row as u32);
        }
        let mut out = Vec::new();
        for (i, indices) in rows.into_iter().enumerate() {
            if indices.is_empty() {
                continue;
            }
            let part = if indices.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(indices))?
            };
            out.push((self.shards[i].1, part));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use quiver_meta::{CatalogCommand, ColumnDef, MetaCommand, MetaOutcome, NodeRole, Sharding, TableKind};

    use super::*;

    fn state_with_table(shards: u32, key: &[&str]) -> (MetaState, TableDef) {
        let mut state = MetaState::new();
        for node_id in 1..=3 {
            let register = MetaCommand::RegisterNode {
                node_id,
                grpc_addr: format!("10.0.0.{node_id}:50052"),
                flight_addr: String::new(),
                pg_addr: String::new(),
                role: NodeRole::Voter,
            };
            state.apply(register).into_result().expect("registered");
        }
        let command = CatalogCommand::CreateTable {
            name: "t".into(),
            columns: vec![
                ColumnDef { name: "id".into(), data_type: DataType::Int64, nullable: false },
                ColumnDef { name: "v".into(), data_type: DataType::Utf8, nullable: true },
            ],
            primary_key: vec!["id".into()],
            kind: TableKind::Native,
            options: BTreeMap::new(),
            sharding: Sharding { shards, replicas: 2, shard_key: key.iter().map(|k| k.to_string()).collect() },
            if_not_exists: false,
        };
        let MetaOutcome::TableCreated { table, .. } =
            state.apply(MetaCommand::Catalog { command }).into_result().expect("created")
        else {
            panic!("not created")
        };
        (state, table)
    }

    #[test]
    fn split_sends_each_row_to_the_shard_owning_its_slot_and_loses_none() {
        let (state, table) = state_with_table(4, &["id"]);
        let map = ShardMap::of(&state, &table).expect("map");
        assert_eq!(map.shards().count(), 4);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        let ids: Vec<i64> = (0..10_000).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(StringArray::from_iter(ids.iter().map(|i| Some(format!("v{i}"))))),
            ],
        )
        .expect("batch");
        let parts = map.split(&batch).expect("split");
        assert_eq!(parts.len(), 4, "10,000 keys reach every shard");
        let mut seen = Vec::new();
        for (shard, part) in &parts {
            // About a quarter each: the hash spreads consecutive keys.
            assert!((2_000..3_000).contains(&part.num_rows()), "shard {shard}: {}", part.num_rows());
            let ids = part.column(0).as_any().downcast_ref::<Int64Array>().expect("ids");
            for id in ids.values() {
                let slot = slot::slot_of_key(&[slot::KeyValue::Int(*id)]);
                assert_eq!(map.shard_of(slot), *shard, "id {id} in slot {slot}");
                seen.push(*id);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, ids, "every row once");
    }

    #[test]
    fn a_map_needs_ranges_covering_every_slot_once() {
        let (mut state, table) = state_with_table(2, &[]);
        let map = ShardMap::of(&state, &table).expect("map");
        assert!(!map.has_key());
        let [first, second] = [map.shard_of(0), map.shard_of(quiver_meta::SLOT_COUNT - 1)];
        assert_ne!(first, second);
        assert_eq!(map.shard_of(2047), first);
        assert_eq!(map.shard_of(2048), second);
        // Dropping the table leaves no shard: the map refuses rather than route into nothing.
        let drop = CatalogCommand::DropTable { name: "t".into(), if_exists: false };
        state.apply(MetaCommand::Catalog { command: drop }).into_result().expect("dropped");
        let e = ShardMap::of(&state, &table).expect_err("no shards").to_string();
        assert!(e.contains("table \"t\""), "{e}");
    }
}
