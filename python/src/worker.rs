//! The Python `Worker`: one short method per operation of
//! [`ps_worker::Worker`], each waiting on the network with the GIL released
//! ([`runtime::wait`]) and raising the typed exception of its error.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ps_worker::{CheckpointState, ClusterSpec, TensorDecl, WorkerConfig, WorkerError};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::arrays::{self, Grad};
use crate::cluster::LocalCluster;
use crate::errors;
use crate::options;
use crate::runtime;

/// A worker of a parameter-server job: connects to every shard and joins
/// the job at construction; leaves it on `leave()` or at the end of a
/// `with` block.
#[pyclass(module = "paramserve._native")]
pub(crate) struct Worker {
    inner: ps_worker::Worker,
    /// Whether `leave` succeeded (a context manager's exit leaves once).
    left: bool,
    /// Version vectors of the last pull or step, by tensor.
    versions: BTreeMap<String, Vec<i64>>,
    /// How long the last pull or step waited on the policy's release rule.
    waited: Duration,
    /// The names declared through this worker (checked against every push's).
    declared: BTreeSet<String>,
    /// Connected without joining: leaving is then a no-op (it would make
    /// the worker of the same id leave).
    observer: bool,
}

/// The value of `r`, a wait on the worker library, or its exception.
fn done<T>(py: Python<'_>, r: PyResult<Result<T, WorkerError>>) -> PyResult<T> {
    r?.map_err(|e| errors::to_py(py, e))
}

/// The cluster `shards` names: a `LocalCluster` or a list of `host:port`.
pub(crate) fn cluster_spec(shards: &Bound<'_, PyAny>, split_threshold: Option<u64>) -> PyResult<ClusterSpec> {
    let mut spec = if let Ok(local) = shards.cast::<LocalCluster>() {
        local.borrow().spec()?
    } else if shards.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyValueError::new_err(
            "shards: expected a list of 'host:port' addresses (or a LocalCluster), got one string",
        ));
    } else {
        let addrs: Vec<String> = shards.extract().map_err(|_| {
            PyValueError::new_err(format!(
                "shards: expected a list of 'host:port' addresses or a LocalCluster, got {}",
                options::type_name(shards)
            ))
        })?;
        ClusterSpec::new(addrs)
    };
    if let Some(t) = split_threshold {
        spec.split_threshold = t;
    }
    Ok(spec)
}

/// Seconds as a `Duration`, refusing negative or non-finite ones.
fn seconds(name: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("{name}: expected seconds >= 0, got {s}")))
}

#[pymethods]
impl Worker {
    /// Connects to every shard and joins the job as worker `worker_id`
    /// (its clock: where the shards say it resumes, 0 for a fresh job).
    #[new]
    #[pyo3(signature = (
        shards, worker_id, *, token=None, tls=None, wire_dtype="f32", namespace="",
        rpc_timeout=30.0, wait_timeout=600.0, retry_for=120.0, split_threshold=None, observer=false
    ))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn new(
        py: Python<'_>,
        shards: &Bound<'_, PyAny>,
        worker_id: u32,
        token: Option<&str>,
        tls: Option<&Bound<'_, PyAny>>,
        wire_dtype: &str,
        namespace: &str,
        rpc_timeout: f64,
        wait_timeout: f64,
        retry_for: f64,
        split_threshold: Option<u64>,
        observer: bool,
    ) -> PyResult<Self> {
        let mut cfg = WorkerConfig::new(cluster_spec(shards, split_threshold)?, worker_id);
        cfg.wire_dtype = options::wire_dtype(wire_dtype)?;
        cfg.namespace = namespace.to_string();
        cfg.rpc_timeout = seconds("rpc_timeout", rpc_timeout)?;
        cfg.wait_timeout = seconds("wait_timeout", wait_timeout)?;
        cfg.retry.give_up_after = seconds("retry_for", retry_for)?;
        cfg.auth_token = token.map(options::token).transpose()?;
        cfg.tls = tls.filter(|t| !t.is_none()).map(options::tls).transpose()?;
        let connected = if observer {
            done(py, runtime::wait(py, ps_worker::Worker::observer(cfg)))?
        } else {
            done(py, runtime::wait(py, ps_worker::Worker::connect(cfg)))?
        };
        Ok(Self {
            inner: connected,
            left: false,
            versions: BTreeMap::new(),
            waited: Duration::ZERO,
            declared: BTreeSet::new(),
            observer,
        })
    }

    /// Returns the worker itself; leaving the block calls `leave()`.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Leaves the job (once). An error of `leave` is raised only when the
    /// block itself raised nothing, so it never hides the block's own.
    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &mut self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let result = self.leave(py);
        match exc_type {
            Some(t) if !t.is_none() => Ok(false),
            _ => result.map(|()| false),
        }
    }

    /// This worker's id.
    #[getter]
    fn id(&self) -> u32 {
        self.inner.id()
    }

    /// The clock the next pull and push use: steps completed so far.
    #[getter]
    fn clock(&self) -> u64 {
        self.inner.clock()
    }

    /// Number of workers in the job (0 for an observer).
    #[getter]
    fn num_workers(&self) -> u32 {
        self.inner.num_workers()
    }

    /// The job's default policy (`'sync'`, `'ssp(3)'`, `'async'`; `None` for an observer).
    #[getter]
    fn default_policy(&self) -> Option<String> {
        self.inner.default_policy().map(|p| p.to_string())
    }

    /// The shard addresses this worker talks to.
    #[getter]
    fn shards(&self) -> Vec<String> {
        self.inner.cluster().shards.clone()
    }

    /// The shapes of the tensors declared through this worker.
    #[getter]
    fn shapes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, shape) in self.inner.shapes() {
            dict.set_item(name, PyTuple::new(py, shape)?)?;
        }
        Ok(dict)
    }

    /// Per tensor, the version vector of the last pull or step: per
    /// worker, the highest clock applied to the values returned (-1: none).
    #[getter]
    fn versions(&self) -> BTreeMap<String, Vec<i64>> {
        self.versions.clone()
    }

    /// Seconds the last pull or step waited for the policy to release it.
    #[getter]
    fn waited(&self) -> f64 {
        self.waited.as_secs_f64()
    }

    /// Declares a tensor on the shards that hold it. Every worker may
    /// declare it; the first declaration creates it, later ones must agree.
    #[pyo3(signature = (name, shape, *, init=None, optimizer=None, policy=None, allow_non_finite=false))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn declare(
        &mut self,
        py: Python<'_>,
        name: &str,
        shape: Vec<usize>,
        init: Option<&Bound<'_, PyAny>>,
        optimizer: Option<&Bound<'_, PyAny>>,
        policy: Option<&Bound<'_, PyAny>>,
        allow_non_finite: bool,
    ) -> PyResult<()> {
        let mut decl = options::init(TensorDecl::new(name, &shape), init)?;
        if let Some(opt) = optimizer.filter(|o| !o.is_none()) {
            decl = decl.optimizer(options::optimizer(opt)?);
        }
        if let Some(p) = policy.filter(|p| !p.is_none()) {
            decl = decl.policy(options::policy(p)?);
        }
        if allow_non_finite {
            decl = decl.allow_non_finite();
        }
        let worker = &mut self.inner;
        done(py, runtime::wait(py, worker.declare(&decl)))?;
        self.declared.insert(name.to_string());
        Ok(())
    }

    /// Pulls every declared tensor at this worker's clock, waiting as the
    /// policy requires; returns float32 arrays of the declared shapes.
    fn pull<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let worker = &self.inner;
        let pulled = done(py, runtime::wait(py, worker.pull()))?;
        self.versions = pulled.versions;
        self.waited = pulled.waited;
        arrays::to_dict(py, pulled.values)
    }

    /// Reads one tensor as an observer: never waits, takes no part in the clocks.
    fn observe<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let worker = &self.inner;
        let (values, _versions) = done(py, runtime::wait(py, worker.observe(name)))?;
        Ok(arrays::to_array(py, values))
    }

    /// Pushes one gradient per declared tensor at this worker's clock, then
    /// advances the clock. (Copies each gradient once: `step` does not.)
    fn push(&mut self, py: Python<'_>, grads: &Bound<'_, PyAny>) -> PyResult<()> {
        let grads = self.gradients(py, grads)?;
        let owned: BTreeMap<String, _> = grads.iter().map(|(n, g)| (n.clone(), g.to_owned_array())).collect();
        let worker = &mut self.inner;
        done(py, runtime::wait(py, worker.push(&owned)))
    }

    /// One training step: pushes `grads` at this worker's clock, advances
    /// the clock, and returns every tensor at the new clock, in one round
    /// trip per tensor part. Rides out shard restarts (the gradients are
    /// then dropped and the checkpoint's values returned).
    fn step<'py>(&mut self, py: Python<'py>, grads: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let grads = self.gradients(py, grads)?;
        let worker = &mut self.inner;
        let pulled = done(py, runtime::wait(py, worker.step(&grads)))?;
        drop(grads);
        self.versions = pulled.versions;
        self.waited = pulled.waited;
        arrays::to_dict(py, pulled.values)
    }

    /// Waits until every live worker has completed `clock` clocks (default: this worker's).
    #[pyo3(signature = (clock=None))]
    fn barrier(&self, py: Python<'_>, clock: Option<u64>) -> PyResult<()> {
        let worker = &self.inner;
        let clock = clock.unwrap_or(worker.clock());
        done(py, runtime::wait(py, worker.barrier(clock)))
    }

    /// Requests the consistent checkpoint at `clock` (default: this
    /// worker's clock), holding exactly the updates of clocks `< clock`.
    /// With `wait`, returns once it is complete on every shard.
    #[pyo3(signature = (clock=None, wait=true))]
    fn checkpoint<'py>(
        &mut self,
        py: Python<'py>,
        clock: Option<u64>,
        wait: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let clock = clock.unwrap_or(self.inner.clock());
        let worker = &mut self.inner;
        let name = done(py, runtime::wait(py, worker.checkpoint(clock)))?;
        let dict = PyDict::new(py);
        dict.set_item("clock", clock)?;
        if wait {
            let worker = &self.inner;
            let cp = done(py, runtime::wait(py, worker.wait_checkpoint(&name)))?;
            dict.set_item("dir", cp.dir)?;
            dict.set_item("bytes", cp.bytes)?;
        }
        dict.set_item("name", name)?;
        dict.set_item("complete", wait)?;
        Ok(dict)
    }

    /// How far checkpoint `name` has got, one dict per shard; with `wait`,
    /// once each shard's file is durable or its write failed.
    #[pyo3(signature = (name, wait=false))]
    fn checkpoint_status<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        wait: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let worker = &self.inner;
        let statuses = done(py, runtime::wait(py, worker.checkpoint_status(name, wait)))?;
        let list = PyList::empty(py);
        for s in statuses {
            let d = PyDict::new(py);
            d.set_item("complete", s.complete)?;
            match s.state {
                CheckpointState::Capturing { captured, expected } => {
                    d.set_item("state", "capturing")?;
                    d.set_item("captured", captured)?;
                    d.set_item("expected", expected)?;
                }
                CheckpointState::Writing => d.set_item("state", "writing")?,
                CheckpointState::Written { bytes } => {
                    d.set_item("state", "written")?;
                    d.set_item("bytes", bytes)?;
                }
                CheckpointState::Failed { error } => {
                    d.set_item("state", "failed")?;
                    d.set_item("error", error)?;
                }
            }
            list.append(d)?;
        }
        Ok(list)
    }

    /// What every shard reports of itself, one dict per shard in shard order.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let worker = &self.inner;
        let statuses = done(py, runtime::wait(py, worker.status()))?;
        let list = PyList::empty(py);
        for s in statuses {
            let d = PyDict::new(py);
            d.set_item("shard", s.shard)?;
            d.set_item("num_shards", s.num_shards)?;
            d.set_item("num_workers", s.num_workers)?;
            d.set_item("default_policy", s.default_policy.to_string())?;
            d.set_item("live_workers", s.live_workers)?;
            d.set_item("checkpoints", s.checkpoints)?;
            let tensors = PyList::empty(py);
            for t in s.tensors {
                let td = PyDict::new(py);
                td.set_item("name", t.name)?;
                td.set_item("offset", t.offset)?;
                td.set_item("len", t.len)?;
                td.set_item("policy", t.policy.to_string())?;
                td.set_item("versions", t.versions)?;
                td.set_item("applied_clock", t.applied_clock)?;
                tensors.append(td)?;
            }
            d.set_item("tensors", tensors)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// Leaves the job: no shard, barrier or other worker waits for this
    /// worker any more. Leaving twice does nothing the second time; an
    /// observer, which never joined, has nothing to leave.
    fn leave(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.left || self.observer {
            self.left = true;
            return Ok(());
        }
        let worker = &self.inner;
        done(py, runtime::wait(py, worker.leave()))?;
        self.left = true;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "Worker(id={}, clock={}, shards={:?}, tensors={})",
            self.inner.id(),
            self.inner.clock(),
            self.inner.cluster().shards,
            self.inner.shapes().len()
        )
    }
}

impl Worker {
    /// Reads `grads` in place, refusing names that were never declared
    /// (the library ignores them, which would hide a typo).
    fn gradients(&self, py: Python<'_>, grads: &Bound<'_, PyAny>) -> PyResult<BTreeMap<String, Grad>> {
        let grads = arrays::grads(grads)?;
        if let Some(name) = grads.keys().find(|n| !self.declared.contains(*n)) {
            let e = WorkerError::UnknownTensor { tensor: name.clone() };
            return Err(errors::to_py(py, e));
        }
        Ok(grads)
    }
}
