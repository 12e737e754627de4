//! Quiver's wire types: the `.proto` files under `proto/`, the prost messages and tonic services generated from
//! them, and hand-written conversions. No logic and no I/O live here.
//!
//! Files: `node.proto` (node administration), `raft.proto` (Raft transport between metadata replicas),
//! `meta.proto` (the metadata service: proposals and linearizable reads), `cluster.proto` (membership and
//! administration), `data.proto` (SQL and appends on a node's data) and `shard.proto` (the replication stream
//! between a shard's replicas, and scans of one shard), all in package `quiver.v1`.

// tonic through madsim's facade: tonic itself in an ordinary build, madsim's simulated gRPC under `--cfg madsim`.
extern crate madsim_tonic as tonic;

/// Version 1 of the internal node API.
pub mod v1 {
    #![allow(unreachable_pub, unused_qualifications, missing_docs, clippy::all, clippy::unwrap_used)]
    tonic::include_proto!("quiver.v1");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::v1::NodeStatus;

    #[test]
    fn node_status_round_trips_and_rejects_garbage() {
        let status = NodeStatus {
            node_id: 7,
            version: "0.1.0".into(),
            flight_addr: "127.0.0.1:50051".into(),
            pg_addr: "127.0.0.1:5433".into(),
            http_addr: "127.0.0.1:9464".into(),
            tables: 3,
            catalog_version: 12,
        };
        let bytes = status.encode_to_vec();
        assert_eq!(NodeStatus::decode(bytes.as_slice()).expect("decode"), status);
        assert!(NodeStatus::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }

    #[test]
    fn snapshot_chunk_and_raft_reply_round_trip() {
        use super::v1::{RaftReply, RaftVote, SnapshotChunk, raft_reply};

        let chunk = SnapshotChunk {
            vote: Some(RaftVote { term: 3, node_id: 1, committed: true }),
            meta: b"{}".to_vec(),
            offset: 512,
            data: vec![7; 100],
            done: false,
        };
        assert_eq!(SnapshotChunk::decode(chunk.encode_to_vec().as_slice()).expect("decode"), chunk);
        let reply = RaftReply { result: Some(raft_reply::Result::Error(b"stopped".to_vec())) };
        assert_eq!(RaftReply::decode(reply.encode_to_vec().as_slice()).expect("decode"), reply);
        assert_eq!(RaftReply::decode(&[][..]).expect("empty").result, None, "an empty reply has no result");
    }
}
