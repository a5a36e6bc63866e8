//! `paramserve._native`: the parameter server's worker library
//! (`ps-worker`) and embedded shards (`ps-server`) for Python. The Python
//! package `paramserve` re-exports these classes next to its pure-Python
//! parts (exceptions, the PyTorch glue).
//!
//! # Layout
//! Each module has one job; a module knows only those below it.
//! - `worker` — [`worker::Worker`], the Python `Worker`: one short method per
//!   operation of `ps_worker::Worker`, each waiting with the GIL released.
//! - `cluster` — [`cluster::LocalCluster`], shards on 127.0.0.1 in this process.
//! - `bench` — the same step loop in Rust alone, for the benchmark's baseline.
//! - `options` — Python arguments (policy, optimizer, init, wire dtype,
//!   token, TLS) read into the worker library's types.
//! - `arrays` — gradients read in place from numpy arrays and torch
//!   tensors; pulled tensors handed over as numpy arrays without a copy.
//! - `errors` — every `WorkerError` as the typed exception of
//!   `paramserve.errors` it stands for.
//! - `runtime` — the process's Tokio runtime, and the one way a call waits
//!   on it: GIL released, Ctrl-C heard.
//! - `logging` — the library's logs to stderr, filtered by `PARAMSERVE_LOG`.

mod arrays;
mod bench;
mod cluster;
mod errors;
mod logging;
mod options;
mod runtime;
mod worker;

use pyo3::prelude::*;

/// tonic allocates a message-sized buffer per RPC; glibc would mmap and
/// page-fault each one (see DESIGN §7), mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The native module: `Worker`, `LocalCluster` and the benchmark's Rust loop.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::init();
    m.add_class::<worker::Worker>()?;
    m.add_class::<cluster::LocalCluster>()?;
    m.add_function(wrap_pyfunction!(bench::rust_step_loop, m)?)?;
    Ok(())
}
