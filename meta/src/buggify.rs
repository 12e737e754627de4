//! Fault points inside production code, FoundationDB's BUGGIFY: `buggify!(p)` is true with probability `p` (drawn
//! from the simulation's seeded RNG) while a simulation run has them switched on (`set_fault_points`, in simulation
//! builds only), and a constant `false` in an ordinary build, which compiles the branch away. Use it to widen rare
//! paths the simulation should reach often: a slow fsync, a slow apply, a late reply.
//!
//! The switch is ours rather than `madsim::buggify`'s, which would also turn on madsim's own network fault (10 % of
//! sends delayed by seconds) and leave the simulated cluster making almost no progress.

/// Whether the fault points fire. Simulation-only, and each seed runs in a process of its own.
#[cfg(madsim)]
static FAULT_POINTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Switches the fault points on or off (simulation builds only).
#[cfg(madsim)]
pub fn set_fault_points(on: bool) {
    FAULT_POINTS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether to fire a fault point of probability `probability` now.
#[cfg(madsim)]
#[doc(hidden)]
pub fn fire(probability: f64) -> bool {
    use madsim::rand::Rng as _;
    FAULT_POINTS.load(std::sync::atomic::Ordering::Relaxed) && madsim::rand::thread_rng().gen_bool(probability)
}

/// Sleeps for a random time below `max_ms` (the body of [`buggify_delay!`](crate::buggify_delay)).
#[cfg(madsim)]
#[doc(hidden)]
pub async fn delay(max_ms: u64) {
    use madsim::rand::Rng as _;
    let ms = madsim::rand::thread_rng().gen_range(1..max_ms.max(2));
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// Whether to take a rare path here; see the module docs. Other crates of the workspace use it as
/// `quiver_meta::buggify!`.
#[macro_export]
macro_rules! buggify {
    ($probability:expr) => {{
        #[cfg(madsim)]
        let fire = $crate::buggify::fire($probability);
        #[cfg(not(madsim))]
        let fire = {
            let _ = $probability;
            false
        };
        fire
    }};
}

/// Sleeps for a random time below `max_ms` milliseconds when `buggify!(probability)` fires (inside an async fn).
#[macro_export]
macro_rules! buggify_delay {
    ($probability:expr, $max_ms:expr) => {
        if $crate::buggify!($probability) {
            #[cfg(madsim)]
            $crate::buggify::delay($max_ms).await;
        }
    };
}
