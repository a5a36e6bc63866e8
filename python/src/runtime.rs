//! The process's Tokio runtime, and the one way a Python call waits on it
//! ([`wait`]): with the GIL released, so other Python threads run, and
//! with Ctrl-C still heard, so a wait on other workers can be interrupted.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// The runtime and the process that started it.
struct Started {
    runtime: Runtime,
    pid: u32,
}

static RUNTIME: OnceLock<Result<Started, String>> = OnceLock::new();

/// How often a wait checks for Python signals (Ctrl-C).
const SIGNALS_EVERY: Duration = Duration::from_millis(100);

/// The runtime every worker and embedded shard of this process runs on:
/// two threads (the shards' tasks and the workers' connections), started
/// at first use. A forked child cannot use its parent's runtime (its
/// threads were not copied), and is told so.
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    let started = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("paramserve")
            .enable_all()
            .build()
            .map(|runtime| Started { runtime, pid: std::process::id() })
            .map_err(|e| e.to_string())
    });
    match started {
        Ok(s) if s.pid == std::process::id() => Ok(&s.runtime),
        Ok(_) => Err(PyRuntimeError::new_err(
            "paramserve was used before this process was forked, and a forked child cannot use \
             its parent's runtime: start worker processes with multiprocessing's 'spawn' \
             (or 'forkserver') start method",
        )),
        Err(e) => Err(PyRuntimeError::new_err(format!("cannot start the Tokio runtime: {e}"))),
    }
}

/// Runs `fut` to completion with the GIL released. Every
/// [`SIGNALS_EVERY`] it takes the GIL briefly to run Python's signal
/// handlers; if one raises (Ctrl-C: `KeyboardInterrupt`), `fut` is dropped
/// and that exception returned. The outer result is that interruption,
/// the inner one `fut`'s own.
pub(crate) fn wait<F, T, E>(py: Python<'_>, fut: F) -> PyResult<Result<T, E>>
where
    F: Future<Output = Result<T, E>> + Send,
    T: Send,
    E: Send,
{
    let rt = runtime()?;
    py.detach(|| {
        rt.block_on(async {
            let mut fut = std::pin::pin!(fut);
            loop {
                tokio::select! {
                    biased;
                    done = &mut fut => return Ok(done),
                    () = tokio::time::sleep(SIGNALS_EVERY) => {
                        Python::attach(|py| py.check_signals())?;
                    }
                }
            }
        })
    })
}
