//! Quiver's wire types: the `.proto` files under `proto/`, the prost messages and tonic services generated from
//! them, and hand-written conversions. No logic and no I/O live here.

/// Version 1 of the internal node API.
pub mod v1 {
    #![allow(unreachable_pub, unused_qualifications, missing_docs, clippy::all)]
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
}
