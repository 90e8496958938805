//! A runtime of the library's own for clients whose calls must block their caller (the
//! PostgreSQL store, KMS key providers): the caller's thread waits for the answer whether or
//! not it is inside an async runtime of its own, while the I/O runs here.

use std::future::Future;

/// The runtime that drives background I/O (one worker thread, started on first use).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sledger-io")
            .enable_all()
            .build()
            .expect("a tokio runtime can be built")
    })
}

/// Run `task` on [`runtime`] and wait for it on this thread.
pub(crate) fn run<F>(task: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    futures::executor::block_on(runtime().spawn(task)).expect("a background task does not panic")
}
