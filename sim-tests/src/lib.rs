//! Quiver's simulation tests.
//!
//! Two builds of this crate:
//! - **`--cfg madsim`** (`sim-tests/run`, its own target directory), under madsim's deterministic scheduler, virtual
//!   clock and simulated network, with crashes, partitions, packet loss and clock jumps drawn from a seed:
//!   `meta_sim`, the metadata Raft group alone; `node_sim`, whole nodes (metadata replica, engine, internal gRPC
//!   endpoint) booted as the binary boots them, with an ingest and query workload checked against a model; and the
//!   `quiver-sim` runner that runs many seeds of either. See docs/simulation.md.
//! - **ordinary**: `engine_restart`, a seeded workload against the production engine on the in-memory hot store
//!   with crash-restarts and a model of the rows that must be visible.

/// A small seeded generator (SplitMix64) for workloads that run outside madsim.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// Returns a generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no answer");
        self.next_u64() % n
    }
}

#[cfg(madsim)]
pub mod disk;
#[cfg(not(madsim))]
pub mod engine_restart;
#[cfg(madsim)]
mod faults;
#[cfg(madsim)]
pub mod hot_disk;
#[cfg(madsim)]
mod linearizability;
#[cfg(all(madsim, test))]
mod membership;
#[cfg(madsim)]
pub mod meta_sim;
#[cfg(madsim)]
pub mod node_sim;
#[cfg(madsim)]
pub mod object_store;
#[cfg(madsim)]
mod shard_map;
