//! [`MetaConfig`]: the settings of a metadata replica (Raft timing, log compaction, request time limits), and its
//! translation into openraft's configuration.
//!
//! Durations are plain milliseconds here; the node's configuration file parses human strings ("250ms") into them.
//! Defaults suit a cluster on one LAN: a heartbeat every 100 ms and an election after 1 to 2 s of silence keep
//! elections rare under load while failing over within a few seconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;

/// The settings of a metadata replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetaConfig {
    /// The cluster's name in Raft's logs and traces.
    pub cluster_name: String,
    /// How often the leader sends heartbeats, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// The shortest time without a heartbeat after which a follower starts an election, in milliseconds.
    pub election_timeout_min_ms: u64,
    /// The longest such time, in milliseconds; each election picks a random timeout in between.
    pub election_timeout_max_ms: u64,
    /// How many entries are applied since the last snapshot before a new one is built and the log compacted.
    pub snapshot_logs_since_last: u64,
    /// How many entries already in a snapshot are kept in the log, so that slightly lagging replicas catch up from
    /// the log rather than a snapshot.
    pub snapshot_logs_kept: u64,
    /// The largest snapshot chunk sent in one call, in bytes.
    pub snapshot_chunk_bytes_max: u64,
    /// The time allowed to send and install one snapshot chunk, in milliseconds.
    pub install_snapshot_timeout_ms: u64,
    /// The time allowed for a proposal or a linearizable read, forwarding included, in milliseconds.
    pub request_timeout_ms: u64,
    /// The time allowed to connect to a peer, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How many voters the cluster aims for (odd): joining nodes are promoted to voter while there are fewer, and
    /// further nodes stay learners (they still receive the metadata).
    pub voters: usize,
    /// How often every member tells the leader it is alive, in milliseconds.
    pub node_heartbeat_interval_ms: u64,
    /// How long a member may stay silent before the leader marks it down in the node registry, in milliseconds.
    pub node_down_after_ms: u64,
    /// How long a node may stay down before the leader gives each shard it holds a replica on another node, in
    /// milliseconds (0: at once). Shards of fewer copies than their table asks for, and replicas on draining nodes,
    /// are repaired whatever this says.
    pub replica_down_timeout_ms: u64,
    /// Whether the leader moves shard copies on its own so that every node holds about as much hot data (moves under
    /// way finish either way; `quiver admin rebalance` starts moves when this is off).
    pub rebalance: bool,
    /// How far from the mean, in percent of it, a node's load may be before copies move.
    pub rebalance_tolerance_pct: u32,
    /// The most shard copies moving for balance at once, cluster-wide.
    pub rebalance_moves_max: usize,
    /// How far a candidate's wall clock may be from a voter's, in milliseconds, for the voter to grant its pre-vote
    /// (0: not checked). A node whose clock is off could otherwise win an election while the group has no leader,
    /// and then every node with a good clock would measure itself as the one that is off.
    pub max_clock_skew_ms: u64,
    /// How this replica reaches its peers: plaintext or mutual TLS under the cluster CA (set by the node from its
    /// certificate files, never from a file of settings).
    #[serde(skip)]
    pub peer_tls: crate::transport::PeerTls,
    /// The secret a node must present to join, checked before anything changes (`None`: not checked). Set by the node
    /// from its configuration; never shown by `Debug`.
    #[serde(skip)]
    pub join_secret: Option<crate::transport::JoinSecret>,
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self {
            cluster_name: "quiver".into(),
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            snapshot_logs_since_last: 1_000,
            snapshot_logs_kept: 100,
            snapshot_chunk_bytes_max: 1 << 20,
            install_snapshot_timeout_ms: 2_000,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            voters: 3,
            node_heartbeat_interval_ms: 1_000,
            node_down_after_ms: 10_000,
            replica_down_timeout_ms: 300_000,
            rebalance: true,
            rebalance_tolerance_pct: 10,
            rebalance_moves_max: 2,
            max_clock_skew_ms: 500,
            peer_tls: crate::transport::PeerTls::plaintext(),
            join_secret: None,
        }
    }
}

impl MetaConfig {
    /// Checks the settings against each other.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::InvalidConfig`] naming the first setting that is out of range.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let invalid = |detail: String| Err(ClusterError::InvalidConfig { detail });
        if self.heartbeat_interval_ms == 0 {
            return invalid("heartbeat_interval_ms must be positive".into());
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return invalid(format!(
                "election_timeout_min_ms ({}) must exceed heartbeat_interval_ms ({})",
                self.election_timeout_min_ms, self.heartbeat_interval_ms
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return invalid(format!(
                "election_timeout_max_ms ({}) must exceed election_timeout_min_ms ({})",
                self.election_timeout_max_ms, self.election_timeout_min_ms
            ));
        }
        if self.snapshot_logs_since_last == 0 {
            return invalid("snapshot_logs_since_last must be positive".into());
        }
        if self.snapshot_chunk_bytes_max == 0 {
            return invalid("snapshot_chunk_bytes_max must be positive".into());
        }
        if self.voters == 0 || self.voters.is_multiple_of(2) {
            return invalid(format!("voters must be odd and positive, not {}", self.voters));
        }
        if self.request_timeout_ms == 0 || self.install_snapshot_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return invalid("timeouts must be positive".into());
        }
        if self.node_heartbeat_interval_ms == 0 {
            return invalid("node_heartbeat_interval_ms must be positive".into());
        }
        // A single lost or late heartbeat must not mark a node down.
        if self.node_down_after_ms < 3 * self.node_heartbeat_interval_ms {
            return invalid(format!(
                "node_down_after_ms ({}) must be at least three node heartbeat intervals ({})",
                self.node_down_after_ms,
                3 * self.node_heartbeat_interval_ms
            ));
        }
        if self.rebalance_tolerance_pct == 0 || self.rebalance_tolerance_pct > 100 {
            return invalid(format!(
                "rebalance_tolerance_pct must be between 1 and 100, not {}",
                self.rebalance_tolerance_pct
            ));
        }
        if self.rebalance_moves_max == 0 {
            return invalid("rebalance_moves_max must be positive".into());
        }
        Ok(())
    }

    /// Returns how the leader balances shard copies.
    pub(crate) fn balance_settings(&self) -> crate::state::balance::BalanceSettings {
        crate::state::balance::BalanceSettings {
            automatic: self.rebalance,
            tolerance: f64::from(self.rebalance_tolerance_pct) / 100.0,
            moves_max: self.rebalance_moves_max,
        }
    }

    /// Returns how long a node may stay down before its replicas are made again elsewhere.
    pub fn replica_down_timeout(&self) -> Duration {
        Duration::from_millis(self.replica_down_timeout_ms)
    }

    /// Returns the time allowed for a proposal or a linearizable read.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Returns the time allowed to connect to a peer.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Returns how this replica makes channels to its peers.
    pub fn transport(&self) -> crate::transport::PeerTransport {
        crate::transport::PeerTransport::new(self.connect_timeout(), self.peer_tls.clone())
    }

    /// Returns the heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// Returns how often a member heartbeats to the leader.
    pub fn node_heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.node_heartbeat_interval_ms)
    }

    /// Returns how long a member may be silent before it is marked down.
    pub fn node_down_after(&self) -> Duration {
        Duration::from_millis(self.node_down_after_ms)
    }

    /// Returns openraft's configuration for these settings.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::InvalidConfig`] when the settings are invalid.
    pub(crate) fn to_openraft(&self) -> Result<openraft::Config, ClusterError> {
        self.validate()?;
        let config = openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.snapshot_logs_kept,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes_max,
            // Elections are started by `raft::election`, after a pre-vote, not by openraft's timer.
            enable_elect: false,
            ..Default::default()
        };
        config.validate().map_err(|e| ClusterError::InvalidConfig { detail: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_translate() {
        let config = MetaConfig::default();
        config.validate().expect("defaults are valid");
        let raft = config.to_openraft().expect("translates");
        assert_eq!(raft.heartbeat_interval, 100);
        assert_eq!(raft.max_in_snapshot_log_to_keep, 100);
        assert!(!raft.enable_elect, "elections go through the pre-vote");
    }

    #[test]
    fn a_node_is_not_marked_down_after_a_single_missed_heartbeat() {
        let config = MetaConfig { node_heartbeat_interval_ms: 1_000, node_down_after_ms: 2_500, ..Default::default() };
        let err = config.validate().expect_err("too short").to_string();
        assert!(err.contains("node_down_after_ms (2500)") && err.contains("(3000)"), "{err}");
    }

    #[test]
    fn inverted_election_timeouts_are_refused() {
        let config = MetaConfig { election_timeout_min_ms: 500, election_timeout_max_ms: 400, ..Default::default() };
        let err = config.validate().expect_err("invalid");
        assert!(err.to_string().contains("election_timeout_max_ms (400)"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<MetaConfig>(r#"{"heartbeat_interval_ms": 50, "hearbeat": 1}"#)
            .expect_err("typo must fail");
        assert!(err.to_string().contains("hearbeat"), "{err}");
        let config: MetaConfig = serde_json::from_str(r#"{"heartbeat_interval_ms": 50}"#).expect("partial");
        assert_eq!(config.election_timeout_min_ms, MetaConfig::default().election_timeout_min_ms);
    }
}
