//! A seeded workload against the production engine on the in-memory hot store: ingests, deletes and
//! "crashes" (the engine is dropped mid-workload and reopened on the same store), checked against a model of the
//! acknowledged rows. Every seed is reproducible: the workload draws all its choices from [`crate::SimRng`].

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};

/// Returns a batch of the workload table `(id BIGINT NOT NULL, v BIGINT)` holding `ids`.
pub fn rows(ids: &[i64]) -> RecordBatch {
    let schema =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("v", DataType::Int64, true)]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i * 10))),
        ],
    )
    .expect("columns match the schema")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use quiver_node::engine::{Engine, EngineOptions, StorageLocation};
    use quiver_node::storage::{HotStore, MemoryStore};

    use super::*;
    use crate::SimRng;

    async fn open(store: &Arc<MemoryStore>) -> Arc<Engine> {
        let options = EngineOptions { chunk_rows_target: 64, ..EngineOptions::default() };
        Engine::open_with_store(StorageLocation::Memory, Arc::clone(store) as Arc<dyn HotStore>, options)
            .await
            .expect("open engine")
    }

    async fn visible_ids(engine: &Engine) -> Vec<i64> {
        let out = engine.execute_one("SELECT id FROM t ORDER BY id").await.expect("select");
        out.collect()
            .await
            .expect("rows")
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    /// Runs one seed: random ingests, deletes and crash-restarts; checks after each restart and at the end that the
    /// visible rows equal the model of acknowledged changes, each row exactly once.
    async fn run_seed(seed: u64) {
        let mut rng = SimRng::new(seed);
        let store = Arc::new(MemoryStore::new());
        let mut engine = open(&store).await;
        engine.execute_one("CREATE TABLE t (id BIGINT NOT NULL, v BIGINT)").await.expect("create");
        let mut model = BTreeSet::new();
        let mut next_id = 0i64;
        for step in 0..40 {
            match rng.below(10) {
                0..=5 => {
                    let n = 1 + rng.below(150) as i64;
                    let ids: Vec<i64> = (next_id..next_id + n).collect();
                    next_id += n;
                    let stream = Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                        rows(&ids).schema(),
                        futures::stream::iter([Ok(rows(&ids))]),
                    ));
                    let schema = rows(&ids).schema();
                    let got = engine
                        .ingest("t", quiver_node::engine::IngestMode::Append, schema, stream)
                        .await
                        .expect("ingest");
                    assert_eq!(got, n as u64, "seed {seed} step {step}");
                    model.extend(ids);
                }
                6..=7 => {
                    let m = 2 + rng.below(7) as i64;
                    let r = rng.below(m as u64) as i64;
                    let sql = format!("DELETE FROM t WHERE id % {m} = {r}");
                    let expected = model.iter().filter(|i| *i % m == r).count() as u64;
                    match engine.execute_one(&sql).await.expect("delete") {
                        quiver_node::QueryOutput::Affected { rows, .. } => {
                            assert_eq!(rows, expected, "seed {seed} step {step}: {sql}")
                        }
                        other => panic!("seed {seed}: unexpected output {other:?}"),
                    }
                    model.retain(|i| i % m != r);
                }
                _ => {
                    // The process stops: its metadata replica with it, so the next one owns the store alone.
                    engine.shutdown().await.expect("shutdown");
                    drop(engine);
                    engine = open(&store).await;
                    let want: Vec<i64> = model.iter().copied().collect();
                    assert_eq!(visible_ids(&engine).await, want, "seed {seed} step {step}: after restart");
                }
            }
        }
        let want: Vec<i64> = model.into_iter().collect();
        assert_eq!(visible_ids(&engine).await, want, "seed {seed}: final state (replay with this seed)");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_rows_survive_restarts_exactly_once() {
        for seed in 0..16 {
            run_seed(seed).await;
        }
    }

    #[test]
    fn same_seed_same_choices() {
        let a: Vec<u64> = (0..8).scan(SimRng::new(7), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..8).scan(SimRng::new(7), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, (0..8).scan(SimRng::new(8), |r, _| Some(r.next_u64())).collect::<Vec<_>>());
    }
}
