//! Work that blocks the calling thread (hot-store writes that fsync, chunk encoding): on tokio's blocking thread pool
//! in an ordinary build, at the query runtime's lower scheduling priority ([`crate::cpu`]). The simulation has no thread pool to hand it to (madsim runs every task on one thread, in
//! virtual time), so there it runs inline, in the task that awaits it.

#[cfg(not(madsim))]
use crate::error::Error;
use crate::error::Result;

/// Runs `f` where blocking is acceptable and returns its result; `what` names the work in an error.
///
/// # Errors
///
/// Fails when the work panicked or the runtime is shutting down.
pub(crate) async fn run<F, R>(what: &'static str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    #[cfg(not(madsim))]
    {
        tokio::task::spawn_blocking(move || {
            crate::cpu::lower_this_thread();
            f()
        })
        .await
        .map_err(|e| Error::Internal(format!("{what}: {e}")))
    }
    #[cfg(madsim)]
    {
        let _ = what;
        Ok(f())
    }
}
