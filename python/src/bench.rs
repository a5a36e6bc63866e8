//! The benchmark's baseline: the same step loop as a Python training loop
//! makes, in Rust alone, on the same runtime and cluster, so the
//! difference between the two is what the Python layer costs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ndarray::{ArcArray, IxDyn};
use ps_worker::{TensorDecl, WorkerConfig, WorkerError};
use pyo3::prelude::*;

use crate::{errors, options, runtime, worker};

/// Joins `cluster` as `worker_id` (tensor names under `namespace`),
/// declares `shapes` (zeros), pulls, then makes `steps` steps pushing zero
/// gradients (shared, not copied: the library's fastest path) and returns
/// each step's wall time in seconds. Leaves the job at the end.
#[pyfunction]
#[pyo3(signature = (cluster, worker_id, shapes, steps, *, namespace="rust", wire_dtype="f32"))]
pub(crate) fn rust_step_loop(
    py: Python<'_>,
    cluster: &Bound<'_, PyAny>,
    worker_id: u32,
    shapes: BTreeMap<String, Vec<usize>>,
    steps: usize,
    namespace: &str,
    wire_dtype: &str,
) -> PyResult<Vec<f64>> {
    let mut cfg = WorkerConfig::new(worker::cluster_spec(cluster, None)?, worker_id);
    cfg.namespace = namespace.to_string();
    cfg.wire_dtype = options::wire_dtype(wire_dtype)?;
    let grads: BTreeMap<String, ArcArray<f32, IxDyn>> =
        shapes.iter().map(|(n, s)| (n.clone(), ArcArray::zeros(IxDyn(s)))).collect();
    let run = async move {
        let mut w = ps_worker::Worker::connect(cfg).await?;
        for (name, shape) in &shapes {
            w.declare(&TensorDecl::new(name.as_str(), shape)).await?;
        }
        w.pull().await?;
        let mut times = Vec::with_capacity(steps);
        for _ in 0..steps {
            let start = Instant::now();
            let pulled = w.step(&grads).await?;
            drop(pulled);
            times.push(start.elapsed());
        }
        w.leave().await?;
        Ok::<_, WorkerError>(times)
    };
    let times = runtime::wait(py, run)?.map_err(|e| errors::to_py(py, e))?;
    Ok(times.iter().map(Duration::as_secs_f64).collect())
}
