//! Arrays across the boundary, without copies where the layout allows.
//!
//! In: a gradient is a C-contiguous, aligned float32 numpy array or CPU
//! torch tensor; [`Grad`] reads its memory in place, with the GIL
//! released, while the call that took it runs (and, with the f32 wire
//! dtype, hands it to the request as shared bytes, so it is never copied in
//! user space). Anything else is refused with a `TypeError` (not an array,
//! not float32) or `ValueError` (not C-contiguous, unaligned, not on the
//! CPU) that says how to convert it.
//!
//! Out: a pulled tensor is the worker library's own buffer, handed to
//! numpy as the array's base (`PyArray::from_owned_array`), so
//! `torch.from_numpy` on it shares it too.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use numpy::{PyArray, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use ps_worker::GradientData;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping};

use crate::options::type_name;

/// A gradient's memory, kept alive and in place by a reference to the
/// numpy array that owns it.
struct Held {
    /// The array; while it lives numpy neither frees nor moves its data.
    _array: Py<PyAny>,
    ptr: *const f32,
    len: usize,
}

// SAFETY: `ptr` points at `len` f32s of `_array`'s buffer, which stays
// valid and in place while `_array` is referenced (numpy refuses to resize
// an array that has other references). Reading it from another thread
// without the GIL is what any GIL-releasing numpy consumer does; the
// documented contract is that Python code does not write the gradient
// while the call that took it runs. Dropping the `Py` off the GIL is
// deferred by PyO3 to the next time a thread holds it.
unsafe impl Send for Held {}
// SAFETY: as for `Send`: only shared reads of the buffer are ever made.
unsafe impl Sync for Held {}

impl Held {
    fn slice(&self) -> &[f32] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: see `Send`; `ptr` is non-null and aligned (checked in `grad`).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A gradient read in place from a numpy array or torch tensor.
pub(crate) struct Grad {
    held: Arc<Held>,
    shape: Vec<usize>,
}

impl GradientData for Grad {
    fn values(&self) -> ArrayViewD<'_, f32> {
        // The shape's product is `len` (numpy's own), so this cannot fail;
        // an empty view would be refused by the shape check anyway.
        ArrayViewD::from_shape(IxDyn(&self.shape), self.held.slice())
            .unwrap_or_else(|_| ndarray::ArrayView1::from(&[] as &[f32]).into_dyn())
    }

    #[cfg(target_endian = "little")]
    fn shared_f32_bytes(&self) -> Option<Bytes> {
        /// The gradient's buffer as the request's bytes.
        struct Shared(Arc<Held>);
        impl AsRef<[f32]> for Shared {
            fn as_ref(&self) -> &[f32] {
                self.0.slice()
            }
        }
        Some(ps_proto::wire::shared_f32_bytes(Shared(Arc::clone(&self.held))))
    }

    #[cfg(not(target_endian = "little"))]
    fn shared_f32_bytes(&self) -> Option<Bytes> {
        None
    }
}

impl Grad {
    /// An owned copy, for calls of the worker library that take `ArrayD`.
    pub(crate) fn to_owned_array(&self) -> ArrayD<f32> {
        self.values().to_owned()
    }
}

/// `obj` as a numpy array: itself, or a CPU torch tensor's shared view.
fn as_numpy<'py>(name: &str, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyUntypedArray>> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        return Ok(array.clone());
    }
    if !is_torch_tensor(obj)? {
        return Err(PyTypeError::new_err(format!(
            "gradient {name:?}: expected a numpy.ndarray or torch.Tensor of float32, got {}",
            type_name(obj)
        )));
    }
    let tensor = obj.call_method0("detach")?;
    let device = tensor.getattr("device")?.getattr("type")?.extract::<String>()?;
    if device != "cpu" {
        return Err(PyValueError::new_err(format!(
            "gradient {name:?}: a torch tensor on device {device:?}; move it to the CPU first (.cpu())"
        )));
    }
    let dtype = tensor.getattr("dtype")?.str()?.to_string();
    if dtype != "torch.float32" {
        return Err(PyTypeError::new_err(format!(
            "gradient {name:?}: dtype {dtype}, expected torch.float32; convert it with .float()"
        )));
    }
    if !tensor.call_method0("is_contiguous")?.extract::<bool>()? {
        return Err(not_contiguous(name));
    }
    // Shares the tensor's storage (and keeps it alive through its base).
    Ok(tensor.call_method0("numpy")?.cast_into::<PyUntypedArray>()?)
}

/// Whether `obj` is a torch tensor (without importing torch).
fn is_torch_tensor(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    for class in obj.get_type().mro().iter() {
        let module = class.getattr("__module__")?;
        if module.extract::<&str>().is_ok_and(|m| m == "torch")
            && class.getattr("__name__")?.extract::<&str>()? == "Tensor"
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn not_contiguous(name: &str) -> PyErr {
    PyValueError::new_err(format!(
        "gradient {name:?}: not C-contiguous (a transposed, sliced or strided view); \
         pass numpy.ascontiguousarray(g) or g.contiguous() for a torch tensor"
    ))
}

/// Reads gradient `name` in place: a float32, C-contiguous, aligned numpy
/// array or CPU torch tensor.
pub(crate) fn grad(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Grad> {
    let array = as_numpy(name, obj)?;
    // One dtype check: the typed cast compares the dtype with float32's.
    let Ok(typed) = array.cast::<PyArrayDyn<f32>>() else {
        return Err(PyTypeError::new_err(format!(
            "gradient {name:?}: dtype {}, expected float32; convert it with .astype(numpy.float32)",
            array.dtype()
        )));
    };
    if !array.is_c_contiguous() {
        return Err(not_contiguous(name));
    }
    if !array.is_aligned() {
        return Err(PyValueError::new_err(format!(
            "gradient {name:?}: its data is not aligned to 4 bytes; pass numpy.ascontiguousarray(g)"
        )));
    }
    let shape = array.shape().to_vec();
    let held = Held { ptr: typed.data(), len: array.len(), _array: array.clone().into_any().unbind() };
    Ok(Grad { held: Arc::new(held), shape })
}

/// Reads every gradient of `grads`, a mapping from tensor name to array.
pub(crate) fn grads(grads: &Bound<'_, PyAny>) -> PyResult<BTreeMap<String, Grad>> {
    let mut out = BTreeMap::new();
    if let Ok(dict) = grads.cast::<PyDict>() {
        // The common case, without building a list of items first.
        for (name, value) in dict.iter() {
            let name: String = name.extract()?;
            let g = grad(&name, &value)?;
            out.insert(name, g);
        }
        return Ok(out);
    }
    let mapping = grads.cast::<PyMapping>().map_err(|_| {
        PyTypeError::new_err(format!(
            "grads: expected a dict of tensor name to array, got {}",
            type_name(grads)
        ))
    })?;
    for item in mapping.items()?.iter() {
        let (name, value): (String, Bound<'_, PyAny>) = item.extract()?;
        let g = grad(&name, &value)?;
        out.insert(name, g);
    }
    Ok(out)
}

/// A pulled tensor as a numpy array that owns its buffer.
pub(crate) fn to_array(py: Python<'_>, array: ArrayD<f32>) -> Bound<'_, PyAny> {
    PyArray::from_owned_array(py, array).into_any()
}

/// Pulled tensors as a dict of numpy arrays that own the pulled buffers.
pub(crate) fn to_dict<'py>(
    py: Python<'py>,
    values: BTreeMap<String, ArrayD<f32>>,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, array) in values {
        dict.set_item(name, to_array(py, array))?;
    }
    Ok(dict)
}
