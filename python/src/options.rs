//! Python arguments read into the worker library's types: a policy, an
//! optimizer, an initializer, a wire dtype, a token and TLS settings. Each
//! reader raises a `ValueError` or `TypeError` that names the argument and
//! lists what it accepts.

use std::path::PathBuf;

use ps_proto::optimizer::OptimizerKind;
use ps_worker::{AuthToken, ClientTls, OptimizerConfig, Policy, TensorDecl, WireDtype};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

/// A policy: `"sync"`, `"sync+backup(1)"`, `"async"`, `"async(scaled)"`,
/// `"ssp(3)"`, `"ssp:3"`, `"ssp(3,scaled)"` or `("ssp", 3)`.
pub(crate) fn policy(arg: &Bound<'_, PyAny>) -> PyResult<Policy> {
    if let Ok(t) = arg.cast::<PyTuple>()
        && let Ok((kind, staleness)) = t.extract::<(String, u32)>()
        && kind == "ssp"
    {
        return Ok(Policy::ssp(staleness));
    }
    let text: String = arg.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "policy: expected 'sync', 'ssp(N)', ('ssp', N) or 'async', got {}",
            type_name(arg)
        ))
    })?;
    text.parse().map_err(|e: String| PyValueError::new_err(format!("policy: {e}")))
}

/// A policy given by name and staleness, as `LocalCluster` takes it.
pub(crate) fn policy_name(name: &str) -> PyResult<ps_server::PolicyName> {
    match name {
        "sync" => Ok(ps_server::PolicyName::Sync),
        "ssp" => Ok(ps_server::PolicyName::Ssp),
        "async" => Ok(ps_server::PolicyName::Async),
        other => {
            Err(PyValueError::new_err(format!("policy: unknown policy {other:?}: use sync, ssp or async")))
        }
    }
}

/// An optimizer: a name (`"sgd"`, `"adam"`, `"adagrad"`, with its default
/// settings) or a mapping with `kind` and any of `learning_rate` (or `lr`),
/// `momentum`, `weight_decay`, `beta1`, `beta2`, `epsilon`,
/// `initial_accumulator`.
pub(crate) fn optimizer(arg: &Bound<'_, PyAny>) -> PyResult<OptimizerConfig> {
    let invalid = |e: String| PyValueError::new_err(format!("optimizer: {e}"));
    if let Ok(name) = arg.extract::<String>() {
        let kind: OptimizerKind = name.parse().map_err(invalid)?;
        return Ok(kind.with_defaults(None));
    }
    let dict = arg.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "optimizer: expected a name ('sgd', 'adam', 'adagrad') or a dict with 'kind', got {}",
            type_name(arg)
        ))
    })?;
    let kind: String = dict
        .get_item("kind")?
        .ok_or_else(|| {
            PyValueError::new_err("optimizer: the dict has no 'kind' ('sgd', 'adam' or 'adagrad')")
        })?
        .extract()?;
    let kind: OptimizerKind = kind.parse().map_err(invalid)?;
    let mut lr = None;
    let mut config = kind.with_defaults(None);
    for (key, value) in dict.iter() {
        let key: String = key.extract()?;
        if key == "kind" {
            continue;
        }
        let value: f32 = value
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("optimizer: {key} must be a number")))?;
        let slot = match (&mut config, key.as_str()) {
            (_, "learning_rate" | "lr") => {
                lr = Some(value);
                continue;
            }
            (OptimizerConfig::Sgd { momentum, .. }, "momentum") => momentum,
            (OptimizerConfig::Sgd { weight_decay, .. }, "weight_decay") => weight_decay,
            (OptimizerConfig::Adam { weight_decay, .. }, "weight_decay") => weight_decay,
            (OptimizerConfig::Adam { beta1, .. }, "beta1") => beta1,
            (OptimizerConfig::Adam { beta2, .. }, "beta2") => beta2,
            (OptimizerConfig::Adam { epsilon, .. }, "epsilon") => epsilon,
            (OptimizerConfig::AdaGrad { epsilon, .. }, "epsilon") => epsilon,
            (OptimizerConfig::AdaGrad { initial_accumulator, .. }, "initial_accumulator") => {
                initial_accumulator
            }
            (_, other) => return Err(invalid(format!("{kind} takes no setting {other:?}"))),
        };
        *slot = value;
    }
    if let Some(lr) = lr {
        match &mut config {
            OptimizerConfig::Sgd { learning_rate, .. }
            | OptimizerConfig::Adam { learning_rate, .. }
            | OptimizerConfig::AdaGrad { learning_rate, .. } => *learning_rate = lr,
        }
    }
    config.validate().map_err(invalid)?;
    Ok(config)
}

/// `decl` with the initializer `arg`: `None` or `"zeros"` (zeros), a
/// number (that constant), `("normal", mean, std, seed)` or
/// `("uniform", low, high, seed)`.
pub(crate) fn init(decl: TensorDecl, arg: Option<&Bound<'_, PyAny>>) -> PyResult<TensorDecl> {
    let Some(arg) = arg.filter(|a| !a.is_none()) else { return Ok(decl) };
    if let Ok(s) = arg.cast::<PyString>() {
        return match s.to_str()? {
            "zeros" => Ok(decl),
            other => Err(PyValueError::new_err(format!(
                "init: unknown initializer {other:?}: use 'zeros', a number, ('normal', mean, std, seed) \
                 or ('uniform', low, high, seed)"
            ))),
        };
    }
    if let Ok(value) = arg.extract::<f32>() {
        return Ok(decl.constant(value));
    }
    match arg.extract::<(String, f32, f32, u64)>() {
        Ok((kind, a, b, seed)) if kind == "normal" => Ok(decl.normal(a, b, seed)),
        Ok((kind, a, b, seed)) if kind == "uniform" => Ok(decl.uniform(a, b, seed)),
        _ => Err(PyValueError::new_err(format!(
            "init: expected 'zeros', a number, ('normal', mean, std, seed) or ('uniform', low, high, seed), got {}",
            arg.repr().map(|r| r.to_string()).unwrap_or_else(|_| type_name(arg))
        ))),
    }
}

/// A wire dtype: `"f32"`, `"f16"` or `"bf16"`.
pub(crate) fn wire_dtype(name: &str) -> PyResult<WireDtype> {
    name.parse().map_err(|e: String| PyValueError::new_err(format!("wire_dtype: {e}")))
}

/// A bearer token, checked as the shards check it (printable ASCII).
pub(crate) fn token(token: &str) -> PyResult<AuthToken> {
    AuthToken::new(token).map_err(|e| PyValueError::new_err(format!("token: {e}")))
}

/// TLS to the shards: the path of the CA certificate that signed them, or a
/// dict with `ca`, and optionally `domain` (default `localhost`), `cert`
/// and `key` (a client certificate, for shards that require one).
pub(crate) fn tls(arg: &Bound<'_, PyAny>) -> PyResult<ClientTls> {
    let read = |ca: PathBuf, domain: String, identity: Option<(PathBuf, PathBuf)>| {
        let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        ClientTls::from_files(&ca, &domain, identity).map_err(|e| PyValueError::new_err(format!("tls: {e}")))
    };
    if let Ok(ca) = arg.extract::<PathBuf>() {
        return read(ca, "localhost".into(), None);
    }
    let dict = arg.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "tls: expected the CA certificate's path or a dict with 'ca' (and 'domain', 'cert', 'key'), got {}",
            type_name(arg)
        ))
    })?;
    let get = |key: &str| -> PyResult<Option<PathBuf>> {
        dict.get_item(key)?.filter(|v| !v.is_none()).map(|v| v.extract()).transpose()
    };
    let ca = get("ca")?.ok_or_else(|| PyValueError::new_err("tls: the dict has no 'ca'"))?;
    let domain = match dict.get_item("domain")? {
        Some(d) if !d.is_none() => d.extract()?,
        _ => "localhost".to_string(),
    };
    let identity = match (get("cert")?, get("key")?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(PyValueError::new_err("tls: give both 'cert' and 'key', or neither")),
    };
    read(ca, domain, identity)
}

/// The Python type name of `obj`, for messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}
