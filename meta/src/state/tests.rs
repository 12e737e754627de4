//! Unit tests of [`MetaState::apply`]: outcomes, rejections, versioning and snapshot encoding.

use std::collections::BTreeMap;

use arrow_schema::DataType;

use super::*;
use crate::catalog::{ColumnDef, TableKind};
use crate::error::ErrorKind;

fn create(name: &str) -> CatalogCommand {
    CatalogCommand::CreateTable {
        name: name.into(),
        columns: vec![ColumnDef { name: "id".into(), data_type: DataType::Int64, nullable: false }],
        primary_key: vec!["id".into()],
        kind: TableKind::Native,
        options: BTreeMap::new(),
        if_not_exists: false,
    }
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

fn create_on(name: &str, node: u64) -> MetaCommand {
    MetaCommand::Catalog { command: create(name), shard_node: Some(node) }
}

fn applied(state: &mut MetaState, command: MetaCommand) -> MetaOutcome {
    state.apply(command).into_result().expect("command applies")
}

#[test]
fn create_table_places_first_shard_and_drop_removes_it() {
    let mut s = MetaState::new();
    applied(&mut s, register(1));
    let MetaOutcome::TableCreated { table, shard: Some(shard_id) } = applied(&mut s, create_on("t", 1)) else {
        panic!("not created with a shard")
    };
    let shard = s.shard(shard_id).expect("shard exists");
    assert_eq!((shard.table_id, shard.replicas.clone(), shard.primary, shard.epoch), (table.id, vec![1], 1, 1));
    assert_eq!(shard.manifest, None);
    let drop = MetaCommand::Catalog {
        command: CatalogCommand::DropTable { name: "t".into(), if_exists: false },
        shard_node: None,
    };
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
    let outcome = applied(&mut s, MetaCommand::Catalog { command: cmd, shard_node: None });
    assert!(matches!(outcome, MetaOutcome::TableCreated { shard: None, .. }), "{outcome:?}");
}

#[test]
fn rejected_commands_change_nothing() {
    let mut s = MetaState::new();
    applied(&mut s, MetaCommand::Bootstrap { cluster_id: "c1".into() });
    applied(&mut s, register(1));
    applied(&mut s, create_on("t", 1));
    let before = s.clone();
    let rejected = [
        (create_on("t", 1), ErrorKind::AlreadyExists),
        (create_on("u", 9), ErrorKind::NotFound),
        (MetaCommand::Catalog { command: create("u"), shard_node: None }, ErrorKind::InvalidRequest),
        (MetaCommand::Bootstrap { cluster_id: "other".into() }, ErrorKind::InvalidRequest),
        (MetaCommand::Heartbeat { node_id: 7, at: 5 }, ErrorKind::NotFound),
        (
            MetaCommand::SetShardReplicas { shard_id: ShardId(1), replicas: vec![1, 1], primary: 1 },
            ErrorKind::InvalidRequest,
        ),
        (
            MetaCommand::SetShardReplicas { shard_id: ShardId(1), replicas: vec![1], primary: 2 },
            ErrorKind::InvalidRequest,
        ),
        (MetaCommand::SetShardReplicas { shard_id: ShardId(1), replicas: vec![1, 4], primary: 1 }, ErrorKind::NotFound),
        (
            MetaCommand::SetShardManifest {
                shard_id: ShardId(1),
                expected_version: Some(3),
                manifest: ManifestPointer { version: 4, location: "m/4".into() },
            },
            ErrorKind::InvalidRequest,
        ),
        (
            MetaCommand::SetShardManifest {
                shard_id: ShardId(42),
                expected_version: None,
                manifest: ManifestPointer { version: 1, location: "m/1".into() },
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
    let err = s.apply(create_on("t", 1)).into_result().expect_err("exists");
    assert_eq!(err.to_string(), "table \"t\" already exists");
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
        (create_on("a", 1), true),
        (
            MetaCommand::Catalog {
                command: CatalogCommand::DropTable { name: "zz".into(), if_exists: true },
                shard_node: None,
            },
            false,
        ),
        (create_on("a", 1), false),
        (
            MetaCommand::SetShardManifest {
                shard_id: ShardId(1),
                expected_version: None,
                manifest: ManifestPointer { version: 1, location: "m/1".into() },
            },
            true,
        ),
        (register(2), true),
        (MetaCommand::SetShardReplicas { shard_id: ShardId(1), replicas: vec![1, 2], primary: 2 }, true),
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
    applied(&mut s, create_on("t", 1));
    let set = |expected, version| MetaCommand::SetShardManifest {
        shard_id: ShardId(1),
        expected_version: expected,
        manifest: ManifestPointer { version, location: format!("m/{version}") },
    };
    applied(&mut s, set(None, 1));
    applied(&mut s, set(Some(1), 2));
    let stale = s.apply(set(Some(1), 3)).outcome.expect_err("stale writer");
    assert_eq!(stale, Rejection::ManifestVersionConflict { shard_id: ShardId(1), expected: Some(1), current: Some(2) });
    let backwards = s.apply(set(Some(2), 2)).outcome.expect_err("same version");
    assert!(matches!(backwards, Rejection::ManifestVersionConflict { .. }));
}

#[test]
fn snapshot_round_trips_and_rejects_garbage() {
    let mut s = MetaState::new();
    applied(&mut s, MetaCommand::Bootstrap { cluster_id: "c1".into() });
    applied(&mut s, register(1));
    applied(&mut s, register(2));
    applied(&mut s, create_on("a", 1));
    applied(&mut s, create_on("b", 2));
    let back = MetaState::decode(&s.encode()).expect("decode");
    assert_eq!(back, s);
    assert_eq!(back.cluster_id(), Some("c1"));
    // Ids keep growing after a restore: the counters are part of the snapshot.
    let mut back = back;
    let MetaOutcome::TableCreated { shard: Some(shard), .. } = applied(&mut back, create_on("c", 1)) else {
        panic!("not created")
    };
    assert_eq!(shard, ShardId(3));
    assert!(MetaState::decode(b"{\"cluster_id\": 7").is_err());
}

#[test]
fn replaying_the_same_commands_gives_the_same_state() {
    let commands = [register(1), register(2), create_on("a", 1), create_on("a", 2), create_on("b", 2)];
    let run = || {
        let mut s = MetaState::new();
        let responses: Vec<MetaResponse> = commands.iter().cloned().map(|c| s.apply(c)).collect();
        (s, responses)
    };
    assert_eq!(run(), run());
}
