//! Unit tests of [`MetaState::apply`]: outcomes, rejections, versioning and snapshot encoding.

use std::collections::BTreeMap;

use arrow_schema::DataType;

use super::*;
use crate::catalog::{ColumnDef, Sharding, TableKind};
use crate::error::ErrorKind;

fn create(name: &str) -> CatalogCommand {
    CatalogCommand::CreateTable {
        name: name.into(),
        columns: vec![ColumnDef { name: "id".into(), data_type: DataType::Int64, nullable: false }],
        primary_key: vec!["id".into()],
        kind: TableKind::Native,
        options: BTreeMap::new(),
        sharding: Sharding::default(),
        if_not_exists: false,
    }
}

fn create_sharded(name: &str, shards: u32, replicas: u32) -> MetaCommand {
    let mut command = create(name);
    if let CatalogCommand::CreateTable { sharding, .. } = &mut command {
        *sharding = Sharding { shards, replicas, shard_key: vec!["id".into()] };
    }
    MetaCommand::Catalog { command }
}

fn register(node_id: u64) -> MetaCommand {
    MetaCommand::RegisterNode {
        node_id,
        grpc_addr: format!("10.0.0.{node_id}:7000"),
        flight_addr: format!("10.0.0.{node_id}:50051"),
        pg_addr: format!("10.0.0.{node_id}:5432"),
        role: NodeRole::Voter,
    }
}

/// A table of one shard and one copy, placed on the least loaded node.
fn create_one(name: &str) -> MetaCommand {
    MetaCommand::Catalog { command: create(name) }
}

fn applied(state: &mut MetaState, command: MetaCommand) -> MetaOutcome {
    state.apply(command).into_result().expect("command applies")
}

#[test]
fn create_table_places_first_shard_and_drop_removes_it() {
    let mut s = MetaState::new();
    applied(&mut s, register(1));
    let MetaOutcome::TableCreated { table, shards: created } = applied(&mut s, create_one("t")) else {
        panic!("not created")
    };
    let [shard_id] = created[..] else { panic!("one shard: {created:?}") };
    let shard = s.shard(shard_id).expect("shard exists");
    assert_eq!((shard.table_id, shard.replicas.clone(), shard.primary, shard.epoch), (table.id, vec![1], 1, 1));
    assert_eq!((shard.in_sync.clone(), shard.slots), (vec![1], SlotRange::all()));
    assert_eq!(shard.manifest, None);
    let drop = MetaCommand::Catalog { command: CatalogCommand::DropTable { name: "t".into(), if_exists: false } };
    let MetaOutcome::TableDropped { shards, .. } = applied(&mut s, drop) else { panic!("not dropped") };
    assert_eq!(shards, vec![shard_id]);
    assert_eq!(s.shards().count(), 0);
    assert!(s.catalog().table("t").is_none());
}

#[test]
fn external_table_has_no_shard() {
    let mut s = MetaState::new();
    let mut cmd = create("ext");
    if let CatalogCommand::CreateTable { kind, .. } = &mut cmd {
        *kind = TableKind::External {
            definition: "CREATE EXTERNAL TABLE ext ...".into(),
            location: "/x".into(),
            format: "csv".into(),
        };
    }
    let outcome = applied(&mut s, MetaCommand::Catalog { command: cmd });
    assert!(matches!(&outcome, MetaOutcome::TableCreated { shards, .. } if shards.is_empty()), "{outcome:?}");
}

#[test]
fn a_sharded_table_covers_every_slot_once_with_replicas_spread_over_the_nodes() {
    let mut s = MetaState::new();
    for id in 1..=3 {
        applied(&mut s, register(id));
    }
    let MetaOutcome::TableCreated { table, shards } = applied(&mut s, create_sharded("t", 6, 2)) else {
        panic!("not created")
    };
    assert_eq!(table.sharding, Sharding { shards: 6, replicas: 2, shard_key: vec!["id".into()] });
    assert_eq!(shards.len(), 6);
    let records: Vec<&ShardRecord> = shards.iter().map(|id| s.shard(*id).expect("placed")).collect();
    // The slot ranges are contiguous, in order, and cover the slot space.
    let mut next = 0;
    for r in &records {
        assert_eq!(r.slots.start, next, "{:?}", r.slots);
        assert!(r.slots.end > r.slots.start);
        next = r.slots.end;
        assert_eq!(r.replicas.len(), 2);
        assert_ne!(r.replicas[0], r.replicas[1]);
        assert_eq!((r.primary, r.in_sync.clone(), r.epoch), (r.replicas[0], r.replicas.clone(), 1));
    }
    assert_eq!(next, SLOT_COUNT);
    for node in 1..=3 {
        let primaries = records.iter().filter(|r| r.primary == node).count();
        assert_eq!(primaries, 2, "node {node} leads two of six shards");
    }
    // Too many copies for the cluster: one per node, the table keeps its declared factor.
    let MetaOutcome::TableCreated { table, shards } = applied(&mut s, create_sharded("u", 1, 5)) else {
        panic!("not created")
    };
    assert_eq!((table.sharding.replicas, s.shard(shards[0]).map(|r| r.replicas.len())), (5, Some(3)));
}

#[test]
fn shard_configuration_changes_are_compare_and_set_on_the_epoch() {
    let mut s = MetaState::new();
    applied(&mut s, register(1));
    applied(&mut s, register(2));
    let MetaOutcome::TableCreated { shards, .. } = applied(&mut s, create_sharded("t", 1, 2)) else { panic!() };
    let shard_id = shards[0];
    let primary = s.shard(shard_id).expect("shard").primary;
    let backup = 3 - primary;
    let drop_backup = |expected| MetaCommand::SetShardReplicas {
        shard_id,
        replicas: vec![primary, backup],
        in_sync: vec![primary],
        primary,
        expected_epoch: Some(expected),
    };
    let MetaOutcome::ShardReplicasSet { epoch, .. } = applied(&mut s, drop_backup(1)) else { panic!() };
    assert_eq!(epoch, 2);
    assert_eq!(s.shard(shard_id).map(|r| r.in_sync.clone()), Some(vec![primary]));
    // A deposed primary's change, based on the old epoch, is refused.
    let stale = s.apply(drop_backup(1)).outcome.expect_err("stale epoch");
    assert_eq!(stale, Rejection::ShardEpochConflict { shard_id, expected: 1, current: 2 });
    let not_in_sync = MetaCommand::SetShardReplicas {
        shard_id,
        replicas: vec![primary, backup],
        in_sync: vec![primary],
        primary: backup,
        expected_epoch: None,
    };
    assert_eq!(s.apply(not_in_sync).outcome.expect_err("primary must be in sync").kind(), ErrorKind::InvalidRequest);
}

#[test]
fn a_node_marked_down_leaves_every_in_sync_set_and_its_shards_get_new_primaries() {
    let mut s = MetaState::new();
    for node in 1..=3 {
        applied(&mut s, register(node));
    }
    let MetaOutcome::TableCreated { shards, .. } = applied(&mut s, create_sharded("t", 6, 2)) else { panic!() };
    let MetaOutcome::TableCreated { shards: lone, .. } = applied(&mut s, create_sharded("u", 3, 1)) else { panic!() };
    let before: Vec<ShardRecord> = shards.iter().chain(&lone).map(|id| s.shard(*id).cloned().expect("shard")).collect();
    applied(&mut s, MetaCommand::UpdateNodeState { node_id: 2, state: NodeState::Down });
    for old in &before {
        let now = s.shard(old.shard_id).expect("shard");
        assert_eq!(now.replicas, old.replicas, "failover moves no data");
        if !old.in_sync.contains(&2) {
            assert_eq!(now, old, "a shard node 2 has no copy of does not change");
            continue;
        }
        if old.in_sync == [2] {
            assert_eq!(now, old, "a shard whose only in-sync copy is down waits for it");
            continue;
        }
        assert_eq!(now.epoch, old.epoch + 1, "{old:?} -> {now:?}");
        assert!(!now.in_sync.contains(&2), "{now:?}");
        assert!(now.in_sync.contains(&now.primary), "{now:?}");
        if old.primary == 2 {
            assert!(old.in_sync.contains(&now.primary) && now.primary != 2, "promoted from the in-sync set: {now:?}");
        } else {
            assert_eq!(now.primary, old.primary);
        }
    }
    assert!(before.iter().any(|r| r.primary == 2 && r.in_sync.len() == 2), "node 2 led a replicated shard");
    let promoted = before.iter().filter(|r| r.primary == 2 && r.in_sync.len() > 1).count() as u64;
    assert_eq!(s.failovers(), promoted, "each promotion is a failover");
    // A node back with an empty store leaves every in-sync set the same way.
    let node3: Vec<ShardId> =
        s.shards().filter(|r| r.in_sync.contains(&3) && r.in_sync.len() > 1).map(|r| r.shard_id).collect();
    applied(&mut s, MetaCommand::UpdateNodeState { node_id: 2, state: NodeState::Serving });
    applied(&mut s, MetaCommand::LeaveInSync { node_id: 3 });
    for id in node3 {
        let r = s.shard(id).expect("shard");
        assert!(!r.in_sync.contains(&3) && r.primary != 3, "{r:?}");
    }
    let again = s.apply(MetaCommand::LeaveInSync { node_id: 3 });
    assert_eq!(again.outcome, Ok(MetaOutcome::Unchanged));
}

#[test]
fn a_shard_whose_only_in_sync_copy_is_lost_is_led_by_the_copy_that_left_the_in_sync_set_last() {
    let mut s = MetaState::new();
    for node in 1..=3 {
        applied(&mut s, register(node));
    }
    let MetaOutcome::TableCreated { shards, .. } = applied(&mut s, create_sharded("t", 1, 3)) else { panic!() };
    let id = shards[0];
    let set = |in_sync: Vec<u64>, expected| MetaCommand::SetShardReplicas {
        shard_id: id,
        replicas: vec![1, 2, 3],
        in_sync,
        primary: 1,
        expected_epoch: Some(expected),
    };
    applied(&mut s, set(vec![1, 2, 3], 1));
    let e = s.shard(id).expect("shard").epoch;
    applied(&mut s, set(vec![1, 2], e));
    applied(&mut s, set(vec![1], e + 1));
    let r = s.shard(id).expect("shard").clone();
    assert_eq!(r.left_in_sync, BTreeMap::from([(3, e + 1), (2, e + 2)]));
    // Down, node 1 may come back with its copy: the shard waits for it.
    applied(&mut s, MetaCommand::UpdateNodeState { node_id: 1, state: NodeState::Down });
    assert_eq!(s.shard(id), Some(&r));
    // Lost with its disk: node 2, the last to leave the in-sync set, holds every acknowledged write and leads.
    applied(&mut s, MetaCommand::LeaveInSync { node_id: 1 });
    let r = s.shard(id).expect("shard").clone();
    assert_eq!((r.primary, r.in_sync.clone(), r.epoch), (2, vec![2], e + 3));
    assert_eq!(r.left_in_sync, BTreeMap::from([(3, e + 1)]), "the lost copy is never a candidate");
    // Back in sync, a replica leaves the record.
    let back = MetaCommand::SetShardReplicas {
        shard_id: id,
        replicas: vec![1, 2, 3],
        in_sync: vec![2, 3],
        primary: 2,
        expected_epoch: Some(e + 3),
    };
    applied(&mut s, back);
    assert!(s.shard(id).expect("shard").left_in_sync.is_empty());
}

#[test]
fn rejected_commands_change_nothing() {
    let mut s = MetaState::new();
    applied(&mut s, MetaCommand::Bootstrap { cluster_id: "c1".into() });
    applied(&mut s, register(1));
    applied(&mut s, create_one("t"));
    let before = s.clone();
    let set = |replicas: Vec<u64>, primary| MetaCommand::SetShardReplicas {
        shard_id: ShardId(1),
        replicas,
        in_sync: vec![],
        primary,
        expected_epoch: None,
    };
    let rejected = [
        (create_one("t"), ErrorKind::AlreadyExists),
        (create_sharded("u", 0, 1), ErrorKind::InvalidRequest),
        (create_sharded("u", SLOT_COUNT + 1, 1), ErrorKind::InvalidRequest),
        (create_sharded("u", 2, 0), ErrorKind::InvalidRequest),
        (MetaCommand::Bootstrap { cluster_id: "other".into() }, ErrorKind::InvalidRequest),
        (MetaCommand::Heartbeat { node_id: 7, at: 5 }, ErrorKind::NotFound),
        (set(vec![1, 1], 1), ErrorKind::InvalidRequest),
        (set(vec![1], 2), ErrorKind::InvalidRequest),
        (set(vec![1, 4], 1), ErrorKind::NotFound),
        (
            MetaCommand::SetShardManifest {
                shard_id: ShardId(1),
                expected_version: Some(3),
                manifest: ManifestPointer::new(4, "m/4".into()),
                uploaded_from_ms: 0,
                expected_epoch: None,
                tiered_through: 0,
                txn: 0,
            },
            ErrorKind::InvalidRequest,
        ),
        (
            MetaCommand::SetShardManifest {
                shard_id: ShardId(42),
                expected_version: None,
                manifest: ManifestPointer::new(1, "m/1".into()),
                uploaded_from_ms: 0,
                expected_epoch: None,
                tiered_through: 0,
                txn: 0,
            },
            ErrorKind::NotFound,
        ),
    ];
    for (command, kind) in rejected {
        let response = s.apply(command.clone());
        let rejection = response.outcome.clone().expect_err("must be rejected");
        assert_eq!(rejection.kind(), kind, "{command:?} -> {rejection}");
        assert_eq!(response.version, before.version(), "a rejection reports the unchanged version");
        assert_eq!(s, before, "{command:?} changed the state");
    }
    let err = s.apply(create_one("t")).into_result().expect_err("exists");
    assert_eq!(err.to_string(), "table \"t\" already exists");
    // With every node draining, a new table has nowhere to go.
    applied(&mut s, MetaCommand::UpdateNodeState { node_id: 1, state: NodeState::Draining });
    let err = s.apply(create_one("u")).into_result().expect_err("no node");
    assert_eq!(err.to_string(), "no node can hold the shards of table \"u\": every registered node is draining");
}

#[test]
fn version_grows_by_one_per_change_only() {
    let mut s = MetaState::new();
    let mut last = s.version();
    let commands = [
        (register(1), true),
        (register(1), false),
        (MetaCommand::Heartbeat { node_id: 1, at: 10 }, true),
        (MetaCommand::Heartbeat { node_id: 1, at: 9 }, false),
        (MetaCommand::UpdateNodeState { node_id: 1, state: NodeState::Serving }, true),
        (MetaCommand::UpdateNodeState { node_id: 1, state: NodeState::Serving }, false),
        (create_one("a"), true),
        (MetaCommand::Catalog { command: CatalogCommand::DropTable { name: "zz".into(), if_exists: true } }, false),
        (create_one("a"), false),
        (
            MetaCommand::SetShardManifest {
                shard_id: ShardId(1),
                expected_version: None,
                manifest: ManifestPointer::new(1, "m/1".into()),
                uploaded_from_ms: 0,
                expected_epoch: None,
                tiered_through: 0,
                txn: 0,
            },
            true,
        ),
        (register(2), true),
        (
            MetaCommand::SetShardReplicas {
                shard_id: ShardId(1),
                replicas: vec![1, 2],
                in_sync: vec![],
                primary: 2,
                expected_epoch: Some(1),
            },
            true,
        ),
    ];
    for (command, changes) in commands {
        let response = s.apply(command.clone());
        let expected = if changes { last + 1 } else { last };
        assert_eq!(response.version, expected, "{command:?}");
        assert_eq!(s.version(), expected);
        last = expected;
    }
    let shard = s.shard(ShardId(1)).expect("shard");
    assert_eq!((shard.epoch, shard.primary), (2, 2), "replica change bumps the epoch");
    assert_eq!(shard.manifest.as_ref().map(|m| m.version), Some(1));
    assert_eq!(s.node(1).map(|n| (n.state, n.last_heartbeat)), Some((NodeState::Serving, 10)));
}

#[test]
fn manifest_updates_are_compare_and_set() {
    let mut s = MetaState::new();
    applied(&mut s, register(1));
    applied(&mut s, create_one("t"));
    let set = |expected, version| MetaCommand::SetShardManifest {
        shard_id: ShardId(1),
        expected_version: expected,
        manifest: ManifestPointer::new(version, format!("m/{version}")),
        uploaded_from_ms: 0,
        expected_epoch: None,
        tiered_through: 0,
        txn: 0,
    };
    applied(&mut s, set(None, 1));
    applied(&mut s, set(Some(1), 2));
    let stale = s.apply(set(Some(1), 3)).outcome.expect_err("stale writer");
    assert_eq!(stale, Rejection::ManifestVersionConflict { shard_id: ShardId(1), expected: Some(1), current: Some(2) });
    let backwards = s.apply(set(Some(2), 2)).outcome.expect_err("same version");
    assert!(matches!(backwards, Rejection::ManifestVersionConflict { .. }));
}

#[test]
fn a_manifest_commit_at_an_old_epoch_is_refused_and_marks_only_raise_the_tiered_floor() {
    let mut s = MetaState::new();
    applied(&mut s, register(1));
    applied(&mut s, register(2));
    applied(&mut s, create_one("t"));
    let record = s.shard(ShardId(1)).cloned().expect("shard");
    let set = |expected, version, epoch, tiered_through| MetaCommand::SetShardManifest {
        shard_id: ShardId(1),
        expected_version: expected,
        manifest: ManifestPointer::new(version, format!("m/{version}")),
        uploaded_from_ms: 0,
        expected_epoch: Some(epoch),
        tiered_through,
        txn: 0,
    };
    applied(&mut s, set(None, 1, record.epoch, 40));
    assert_eq!(s.shard(ShardId(1)).map(|r| r.tiered_through), Some(40));
    applied(&mut s, set(Some(1), 2, record.epoch, 7));
    assert_eq!(s.shard(ShardId(1)).map(|r| r.tiered_through), Some(40), "the floor never goes back");
    // The shard moves on (a copy added): a commit of the writer that worked at the old epoch is refused.
    let mut replicas = record.replicas.clone();
    replicas.push(if replicas.contains(&1) { 2 } else { 1 });
    applied(
        &mut s,
        MetaCommand::SetShardReplicas {
            shard_id: ShardId(1),
            replicas,
            in_sync: record.in_sync.clone(),
            primary: record.primary,
            expected_epoch: Some(record.epoch),
        },
    );
    let late = s.apply(set(Some(2), 3, record.epoch, 90)).outcome.expect_err("a deposed writer");
    assert_eq!(
        late,
        Rejection::ShardEpochConflict { shard_id: ShardId(1), expected: record.epoch, current: record.epoch + 1 }
    );
    let now = s.shard(ShardId(1)).cloned().expect("shard");
    assert_eq!((now.manifest.map(|m| m.version), now.tiered_through), (Some(2), 40), "nothing moved");
    applied(&mut s, set(Some(2), 3, record.epoch + 1, 90));
    assert_eq!(s.shard(ShardId(1)).map(|r| r.tiered_through), Some(90));
}

#[test]
fn a_collection_fence_refuses_commits_of_older_uploads_and_only_moves_forward() {
    let mut s = MetaState::new();
    applied(&mut s, register(1));
    applied(&mut s, create_one("t"));
    let set = |expected, version, uploaded_from_ms| MetaCommand::SetShardManifest {
        shard_id: ShardId(1),
        expected_version: expected,
        manifest: ManifestPointer::new(version, format!("m/{version}")),
        uploaded_from_ms,
        expected_epoch: None,
        tiered_through: 0,
        txn: 0,
    };
    applied(&mut s, set(None, 1, 1_000));
    let fenced = s.apply(MetaCommand::FenceColdUploads { before_ms: 5_000 }).outcome.expect("fence");
    assert_eq!(fenced, MetaOutcome::ColdUploadsFenced { before_ms: 5_000 });
    let late = s.apply(set(Some(1), 2, 4_999)).outcome.expect_err("an upload begun before the fence");
    assert_eq!(late, Rejection::ColdUploadsFenced { shard_id: ShardId(1), uploaded_from_ms: 4_999, fence_ms: 5_000 });
    assert_eq!(s.shard(ShardId(1)).and_then(|r| r.manifest.as_ref()).map(|m| m.version), Some(1), "nothing moved");
    // A fence never moves back; a commit of an upload begun at or after it applies, as does one of unknown age.
    let again = s.apply(MetaCommand::FenceColdUploads { before_ms: 3_000 }).outcome.expect("fence");
    assert_eq!(again, MetaOutcome::ColdUploadsFenced { before_ms: 5_000 });
    assert_eq!(s.cold_upload_fence_ms(), 5_000);
    applied(&mut s, set(Some(1), 2, 5_000));
    applied(&mut s, set(Some(2), 3, 0));
    let back = MetaState::decode(&s.encode()).expect("decode");
    assert_eq!(back.cold_upload_fence_ms(), 5_000, "the fence is part of the snapshot");
}

#[test]
fn snapshot_round_trips_and_rejects_garbage() {
    let mut s = MetaState::new();
    applied(&mut s, MetaCommand::Bootstrap { cluster_id: "c1".into() });
    applied(&mut s, register(1));
    applied(&mut s, register(2));
    applied(&mut s, create_one("a"));
    applied(&mut s, create_one("b"));
    let back = MetaState::decode(&s.encode()).expect("decode");
    assert_eq!(back, s);
    assert_eq!(back.cluster_id(), Some("c1"));
    // Ids keep growing after a restore: the counters are part of the snapshot.
    let mut back = back;
    let MetaOutcome::TableCreated { shards, .. } = applied(&mut back, create_one("c")) else { panic!("not created") };
    assert_eq!(shards, vec![ShardId(3)]);
    assert!(MetaState::decode(b"{\"cluster_id\": 7").is_err());
}

#[test]
fn replaying_the_same_commands_gives_the_same_state() {
    let commands = [register(1), register(2), create_one("a"), create_one("a"), create_sharded("b", 3, 2)];
    let run = || {
        let mut s = MetaState::new();
        let responses: Vec<MetaResponse> = commands.iter().cloned().map(|c| s.apply(c)).collect();
        (s, responses)
    };
    assert_eq!(run(), run());
}

#[test]
fn the_first_decision_of_a_transaction_stands_until_it_is_forgotten() {
    let mut s = MetaState::new();
    let decide = |txn, commit, at_ms| MetaCommand::DecideTransaction { txn, commit, at_ms };
    assert_eq!(applied(&mut s, decide(7, true, 1_000)), MetaOutcome::TransactionDecided { txn: 7, commit: true });
    let recorded = s.transaction(7).expect("decided");
    assert_eq!((recorded.commit, recorded.at_ms, recorded.version), (true, 1_000, s.version()));
    // The same decision again changes nothing; the other one is refused, naming the one that stands.
    let version = s.version();
    assert_eq!(applied(&mut s, decide(7, true, 2_000)), MetaOutcome::Unchanged);
    let refused = s.apply(decide(7, false, 2_000)).outcome.expect_err("decided already");
    assert_eq!(refused, Rejection::TransactionDecided { txn: 7, commit: true });
    assert_eq!((s.version(), s.transaction(7).map(|d| d.commit)), (version, Some(true)));
    // An abort decided first stands the same way.
    applied(&mut s, decide(8, false, 3_000));
    assert_eq!(s.apply(decide(8, true, 3_001)).outcome, Err(Rejection::TransactionDecided { txn: 8, commit: false }));
    // Forgotten, a decision is gone (a second forget changes nothing); the snapshot keeps the others.
    assert_eq!(
        applied(&mut s, MetaCommand::ForgetTransaction { txn: 7 }),
        MetaOutcome::TransactionForgotten { txn: 7 }
    );
    assert_eq!(applied(&mut s, MetaCommand::ForgetTransaction { txn: 7 }), MetaOutcome::Unchanged);
    assert_eq!((s.transaction(7), s.transaction_count()), (None, 1));
    let back = MetaState::decode(&s.encode()).expect("decode");
    assert_eq!(back.transaction(8).map(|d| d.commit), Some(false));
    // A decision nobody forgot is dropped once a later decider's clock is a day past it.
    applied(&mut s, decide(9, true, 3_000 + DECISION_KEPT_MS));
    assert_eq!(s.transaction(8).map(|d| d.commit), Some(false), "exactly a day: kept");
    applied(&mut s, decide(10, true, 3_001 + DECISION_KEPT_MS));
    assert_eq!((s.transaction(8), s.transaction_count()), (None, 2), "past a day: dropped");
}

#[test]
fn a_pending_manifest_becomes_current_with_its_statements_commit_or_leaves_with_its_abort() {
    let mut s = MetaState::new();
    applied(&mut s, register(1));
    applied(&mut s, create_sharded("t", 2, 1));
    let set = |shard, expected, version, tiered_through, txn| MetaCommand::SetShardManifest {
        shard_id: ShardId(shard),
        expected_version: expected,
        manifest: ManifestPointer::new(version, format!("m/{shard}/{version}")),
        uploaded_from_ms: 0,
        expected_epoch: None,
        tiered_through,
        txn,
    };
    let decide = |txn, commit| MetaCommand::DecideTransaction { txn, commit, at_ms: 1_000 };
    applied(&mut s, set(1, None, 1, 10, 0));
    let proposed = applied(&mut s, set(1, Some(1), 2, 20, 7));
    assert_eq!(proposed, MetaOutcome::ShardManifestProposed { shard_id: ShardId(1), version: 2, txn: 7 });
    applied(&mut s, set(2, None, 1, 30, 7));
    let shard = |s: &MetaState, id| s.shard(ShardId(id)).cloned().expect("shard");
    assert_eq!(shard(&s, 1).manifest.map(|m| m.version), Some(1), "a proposal is not current");
    assert_eq!(shard(&s, 1).tiered_through, 20, "the floor of chunk numbers rises with the proposal");
    // The same proposal again changes nothing; any other commit waits for the decision.
    assert_eq!(applied(&mut s, set(1, Some(1), 2, 20, 7)), MetaOutcome::Unchanged);
    let held = s.apply(set(1, Some(1), 3, 0, 0)).outcome.expect_err("a tiering while a part is pending");
    assert_eq!(held, Rejection::ShardManifestPending { shard_id: ShardId(1), txn: 7 });
    let other = s.apply(set(1, Some(1), 3, 0, 8)).outcome.expect_err("another statement's part");
    assert_eq!(other, Rejection::ShardManifestPending { shard_id: ShardId(1), txn: 7 });
    // The commit makes both current in its own apply, at its version.
    applied(&mut s, decide(7, true));
    let decided = s.transaction(7).expect("decision").version;
    assert_eq!(decided, s.version());
    for (id, version, tiered) in [(1, 2, 20), (2, 1, 30)] {
        let now = shard(&s, id);
        assert_eq!(now.pending, None);
        assert_eq!(now.manifest.as_ref().map(|m| (m.version, m.txn_version)), Some((version, decided)));
        assert_eq!(now.tiered_through, tiered);
    }
    // A later commit keeps the decision's version: the manifest still holds the statement's changes.
    applied(&mut s, set(1, Some(2), 3, 0, 0));
    assert_eq!(shard(&s, 1).manifest.map(|m| m.txn_version), Some(decided));
    // An abort drops the proposal; a proposal of a statement decided already is refused.
    applied(&mut s, set(1, Some(3), 4, 90, 9));
    applied(&mut s, decide(9, false));
    let now = shard(&s, 1);
    assert_eq!((now.manifest.map(|m| m.version), now.pending, now.tiered_through), (Some(3), None, 90));
    let late = s.apply(set(1, Some(3), 4, 90, 9)).outcome.expect_err("a part after its abort");
    assert_eq!(late, Rejection::TransactionDecided { txn: 9, commit: false });
    // A dropped table takes its pending proposals along.
    applied(&mut s, set(2, Some(1), 2, 0, 11));
    applied(&mut s, MetaCommand::Catalog { command: CatalogCommand::DropTable { name: "t".into(), if_exists: false } });
    applied(&mut s, decide(11, true));
    assert!(s.pending_manifests.is_empty(), "nothing is left pending: {:?}", s.pending_manifests);
}
