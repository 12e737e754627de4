//! Randomness, through one seam: the operating system's source in an ordinary build, madsim's seeded generator under
//! `--cfg madsim`, so a simulated run draws the same numbers for the same seed.

use crate::error::Result;

/// A random 64-bit number.
///
/// # Errors
///
/// [`Error::Internal`] when the operating system has no random source.
#[cfg(not(madsim))]
pub(crate) fn random_u64() -> Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| crate::error::Error::Internal(format!("the random source failed: {e}")))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A random 64-bit number, from the simulation's seed.
#[cfg(madsim)]
pub(crate) fn random_u64() -> Result<u64> {
    Ok(madsim::rand::random::<u64>())
}
