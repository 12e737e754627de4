//! Wall-clock time for the ages of data (when a chunk was written, what retention expires). Read from `SystemTime`,
//! which the simulation drives, never from anything the simulation cannot.

/// Milliseconds since the Unix epoch now (0 if the clock reads before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
