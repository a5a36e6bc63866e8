//! The Python `LocalCluster`: S shards in this process, each serving real
//! gRPC on its own ephemeral port of 127.0.0.1, on the process's runtime.
//! They stop on `stop()`, at the end of a `with` block, or when the object
//! is garbage-collected.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ps_server::{Aggregation, ShardConfig, WorkerLoss};
use ps_worker::ClusterSpec;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::options;
use crate::runtime;

/// How long `stop` lets the shards finish the requests they serve before
/// it cancels them.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Shards of one job running in this process on 127.0.0.1.
#[pyclass(module = "paramserve._native")]
pub(crate) struct LocalCluster {
    /// The running shards; `None` once stopped. Dropping them stops them.
    running: Option<ps_server::LocalCluster>,
    spec: ClusterSpec,
    num_workers: u32,
    policy: String,
    /// The token's file, which the shards read; removed with the cluster.
    token_file: Option<TokenFile>,
}

/// A file holding the cluster's bearer token, removed when dropped.
struct TokenFile(PathBuf);

impl TokenFile {
    /// Writes `token` to a new file only this user can read.
    fn write(token: &str) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("paramserve-token-{}-{n}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::io::Write::write_all(&mut options.open(&path)?, token.as_bytes())?;
        Ok(Self(path))
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl LocalCluster {
    /// The spec workers connect with; an error once the cluster is stopped.
    pub(crate) fn spec(&self) -> PyResult<ClusterSpec> {
        match self.running {
            Some(_) => Ok(self.spec.clone()),
            None => Err(PyRuntimeError::new_err("the LocalCluster is stopped")),
        }
    }
}

/// Milliseconds of `seconds`, refusing negative or non-finite ones.
fn millis(name: &str, seconds: f64) -> PyResult<u64> {
    Duration::try_from_secs_f64(seconds)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| PyValueError::new_err(format!("{name}: expected seconds >= 0, got {seconds}")))
}

#[pymethods]
impl LocalCluster {
    /// Starts `shards` shards of a job of `workers` workers under `policy`
    /// (`'sync'` with `backup_workers`, `'ssp'` with `staleness`, or
    /// `'async'`; ssp and async with `staleness_scaling`) on ephemeral
    /// ports of 127.0.0.1; returns once every shard accepts connections.
    #[new]
    #[pyo3(signature = (
        shards=2, workers=4, policy="ssp", staleness=3, *, backup_workers=0, staleness_scaling="none",
        optimizer=None, aggregation="mean",
        checkpoint_dir=None, token=None, tls_cert=None, tls_key=None, worker_timeout=None,
        on_worker_loss="evict", join_grace=None, split_threshold=None, max_tensor_bytes=None
    ))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn new(
        py: Python<'_>,
        shards: u32,
        workers: u32,
        policy: &str,
        staleness: u32,
        backup_workers: u32,
        staleness_scaling: &str,
        optimizer: Option<&Bound<'_, PyAny>>,
        aggregation: &str,
        checkpoint_dir: Option<PathBuf>,
        token: Option<&str>,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        worker_timeout: Option<f64>,
        on_worker_loss: &str,
        join_grace: Option<f64>,
        split_threshold: Option<u64>,
        max_tensor_bytes: Option<u64>,
    ) -> PyResult<Self> {
        if shards == 0 || workers == 0 {
            return Err(PyValueError::new_err("shards and workers must be at least 1"));
        }
        let token_file = token
            .map(|t| {
                options::token(t)?;
                TokenFile::write(t)
                    .map_err(|e| PyOSError::new_err(format!("cannot write the token file: {e}")))
            })
            .transpose()?;
        let mut template = ShardConfig {
            num_workers: workers,
            policy: options::policy_name(policy)?,
            staleness,
            backup_workers,
            staleness_scaling: staleness_scaling
                .parse()
                .map_err(|e: String| PyValueError::new_err(format!("staleness_scaling: {e}")))?,
            aggregation: match aggregation {
                "mean" => Aggregation::Mean,
                "sum" => Aggregation::Sum,
                other => {
                    return Err(PyValueError::new_err(format!("aggregation: {other:?}: use mean or sum")));
                }
            },
            on_worker_loss: match on_worker_loss {
                "evict" => WorkerLoss::Evict,
                "wait" => WorkerLoss::Wait,
                "fail" => WorkerLoss::Fail,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "on_worker_loss: {other:?}: use evict, wait or fail"
                    )));
                }
            },
            checkpoint_dir,
            auth_token_file: token_file.as_ref().map(|f| f.0.clone()),
            tls_cert,
            tls_key,
            ..ShardConfig::default()
        };
        if let Some(opt) = optimizer.filter(|o| !o.is_none()) {
            template.optimizer = options::optimizer(opt)?;
        }
        if let Some(s) = worker_timeout {
            template.worker_timeout_ms = millis("worker_timeout", s)?;
        }
        if let Some(s) = join_grace {
            template.join_grace_ms = millis("join_grace", s)?;
        }
        if let Some(t) = split_threshold {
            template.split_threshold = t;
        }
        if let Some(b) = max_tensor_bytes {
            template.max_tensor_bytes = b;
        }
        template.validate().map_err(PyValueError::new_err)?;
        let policy = template.default_policy().to_string();
        let running = runtime::wait(py, ps_server::LocalCluster::start(shards, template))?
            .map_err(|e| PyOSError::new_err(format!("cannot start the shards: {e}")))?;
        let spec = running.spec().clone();
        Ok(Self { running: Some(running), spec, num_workers: workers, policy, token_file })
    }

    /// The shards' addresses (`127.0.0.1:PORT`), for `Worker(cluster.shards, id)`
    /// in this or another process.
    #[getter]
    fn shards(&self) -> Vec<String> {
        self.spec.shards.clone()
    }

    /// The number of workers of the job.
    #[getter]
    fn num_workers(&self) -> u32 {
        self.num_workers
    }

    /// The job's default policy, e.g. `'ssp(3)'`.
    #[getter]
    fn policy(&self) -> String {
        self.policy.clone()
    }

    /// Whether the shards are running (not yet stopped).
    #[getter]
    fn running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops every shard: requests in flight are answered or refused
    /// (`UNAVAILABLE`), then the ports are closed. Stopping twice does
    /// nothing the second time.
    fn stop(&mut self, py: Python<'_>) -> PyResult<()> {
        let Some(running) = self.running.take() else { return Ok(()) };
        let stopped = runtime::wait(py, async move {
            // On timeout the cluster is dropped, which cancels its shards.
            match tokio::time::timeout(STOP_WITHIN, running.shutdown()).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Ok(()),
            }
        })?;
        self.token_file = None;
        stopped.map_err(|e| PyRuntimeError::new_err(format!("a shard failed while stopping: {e}")))
    }

    /// Returns the cluster itself; leaving the block stops it.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Stops the cluster.
    #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &mut self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "LocalCluster(shards={:?}, workers={}, policy={}, running={})",
            self.spec.shards,
            self.num_workers,
            self.policy,
            self.running.is_some()
        )
    }
}
