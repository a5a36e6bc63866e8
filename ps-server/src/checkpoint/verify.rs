//! Checking a checkpoint before anything is restored from it: every byte of
//! the manifest against `manifest.sha256`, and what the manifest says
//! against every other record of the same checkpoint.
//!
//! A manifest is trusted only when
//! - its SHA-256 equals the one in `manifest.sha256` (so a flipped bit or a
//!   truncated file is caught before it is parsed);
//! - its name and clock equal the directory's name and the clock in it;
//! - it equals the merge of the shard fragments (`shard-NNNN.json`) field
//!   for field: clock, job, tensors, parts, step counts and file checksums;
//! - each shard file's safetensors metadata names the same checkpoint,
//!   clock, shard and per-part optimizer steps, and holds every key the
//!   manifest lists with the part's length.
//!
//! Each failure names the file, the field, and both values.

use std::fs;
use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use serde_json::Value;

use super::error::CheckpointError;
use super::format::{
    FORMAT_VERSION, FileEntry, Fragment, MANIFEST, MANIFEST_SHA256, Manifest, fragment_file,
    parse_manifest_sha256, parse_name, steps_key,
};
use super::write::sha256_hex;

/// Reads `dir/manifest.json`, verifies it against `dir/manifest.sha256`
/// and parses it, refusing newer formats. A missing or malformed checksum
/// file makes the manifest invalid; nothing of an unverified manifest is used.
pub fn read_manifest(dir: &Path) -> Result<Manifest, CheckpointError> {
    let path = dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(CheckpointError::io("read", &path))?;
    let sum_path = dir.join(MANIFEST_SHA256);
    let line = match fs::read_to_string(&sum_path) {
        Ok(line) => line,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::corrupt(
                &path,
                format!("invalid manifest: {MANIFEST_SHA256} is missing"),
            ));
        }
        Err(e) => return Err(CheckpointError::Io { action: "read", path: sum_path, source: e }),
    };
    let expected = parse_manifest_sha256(&line).ok_or_else(|| {
        CheckpointError::corrupt(
            &sum_path,
            format!("invalid manifest checksum: expected \"<sha256>  {MANIFEST}\""),
        )
    })?;
    let got = sha256_hex(&bytes);
    if got != expected {
        return Err(CheckpointError::Checksum {
            path,
            listed_in: MANIFEST_SHA256,
            expected: expected.to_string(),
            got: format!("{got} ({} bytes)", bytes.len()),
        });
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| CheckpointError::corrupt(&path, format!("invalid manifest: not valid JSON: {e}")))?;
    let format = value
        .get("format")
        .and_then(Value::as_u64)
        .ok_or_else(|| CheckpointError::corrupt(&path, "invalid manifest: no \"format\" field"))?;
    if format > u64::from(FORMAT_VERSION) {
        return Err(CheckpointError::NewerFormat { path, got: format as u32, supported: FORMAT_VERSION });
    }
    serde_json::from_value(value)
        .map_err(|e| CheckpointError::corrupt(&path, format!("invalid manifest: {e}")))
}

/// Checks a verified manifest against the directory name and the shard
/// fragments of the checkpoint in `dir`.
pub fn cross_check(dir: &Path, manifest: &Manifest) -> Result<(), CheckpointError> {
    let path = dir.join(MANIFEST);
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let witness = format!("the directory name {dir_name}");
    if let Some((clock, _)) = parse_name(&dir_name) {
        if manifest.name != dir_name {
            return Err(mismatch(&path, "name", &dir_name, &manifest.name, &witness));
        }
        if manifest.clock != clock {
            return Err(mismatch(&path, "clock", &clock.to_string(), &manifest.clock.to_string(), &witness));
        }
    }
    let mut fragments = Vec::new();
    for shard in 0..manifest.cluster.num_shards {
        let frag_path = dir.join(fragment_file(shard));
        let bytes = fs::read(&frag_path).map_err(CheckpointError::io("read fragment", &frag_path))?;
        let fragment: Fragment = serde_json::from_slice(&bytes)
            .map_err(|e| CheckpointError::corrupt(&frag_path, format!("invalid fragment: {e}")))?;
        fragments.push(fragment);
    }
    let merged = Manifest::merge(fragments)
        .map_err(|reason| CheckpointError::corrupt(dir, format!("the shard fragments disagree: {reason}")))?;
    let (ours, theirs) = (to_value(&path, manifest)?, to_value(&path, &merged)?);
    if let Some((field, got, expected)) = first_difference("", &ours, &theirs) {
        return Err(mismatch(&path, &field, &expected, &got, "the merge of the shard fragments"));
    }
    Ok(())
}

/// Checks that the shard file `entry` (its bytes already checksum-verified)
/// says in its metadata what the manifest says of it, and holds each of its
/// parts' keys as F32 arrays of the part's length.
pub fn check_shard_file(
    dir: &Path,
    manifest: &Manifest,
    entry: &FileEntry,
    bytes: &[u8],
) -> Result<(), CheckpointError> {
    let path = dir.join(&entry.name);
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| CheckpointError::corrupt(&path, format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| CheckpointError::corrupt(&path, format!("not a safetensors file: {e}")))?;
    let empty = Default::default();
    let meta = header.metadata().as_ref().unwrap_or(&empty);
    let witness = MANIFEST.to_string();
    let field = |key: &str, expected: String| -> Result<(), CheckpointError> {
        let got = meta.get(key).cloned().unwrap_or_else(|| "missing".into());
        if got == expected {
            Ok(())
        } else {
            Err(mismatch(&path, &format!("metadata {key:?}"), &expected, &got, &witness))
        }
    };
    field("format", manifest.format.to_string())?;
    field("checkpoint", manifest.name.clone())?;
    field("clock", manifest.clock.to_string())?;
    for tensor in &manifest.tensors {
        for part in tensor.parts.iter().filter(|p| p.file == entry.name) {
            field("shard", part.shard.to_string())?;
            field(&steps_key(&tensor.name), part.optimizer_steps.to_string())?;
            for key in std::iter::once(&part.key).chain(part.slots.values()) {
                let view = st
                    .tensor(key)
                    .map_err(|e| CheckpointError::corrupt(&path, format!("tensor {key:?}: {e}")))?;
                if view.dtype() != Dtype::F32 || view.shape() != [part.len as usize] {
                    return Err(mismatch(
                        &path,
                        &format!("tensor {key:?}"),
                        &format!("F32 [{}]", part.len),
                        &format!("{:?} {:?}", view.dtype(), view.shape()),
                        &witness,
                    ));
                }
            }
        }
    }
    Ok(())
}

fn mismatch(path: &Path, field: &str, expected: &str, got: &str, witness: &str) -> CheckpointError {
    CheckpointError::Mismatch {
        path: path.to_path_buf(),
        field: field.to_string(),
        expected: expected.to_string(),
        got: got.to_string(),
        witness: witness.to_string(),
    }
}

fn to_value(path: &Path, manifest: &Manifest) -> Result<Value, CheckpointError> {
    serde_json::to_value(manifest).map_err(|e| CheckpointError::corrupt(path, e.to_string()))
}

/// The first field where `a` and `b` differ: its path (array elements that
/// have a `name` are named by it, e.g. `tensors[w].parts[0].optimizer_steps`),
/// `a`'s value and `b`'s value.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<(String, String, String)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                first_difference(&sub, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (ea, eb))| {
                let label =
                    ea.get("name").and_then(Value::as_str).map_or_else(|| i.to_string(), str::to_string);
                first_difference(&format!("{path}[{label}]"), ea, eb)
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            Some((format!("{path} (entries)"), x.len().to_string(), y.len().to_string()))
        }
        _ if a == b => None,
        _ => Some((path.to_string(), a.to_string(), b.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_names_the_field_by_path_and_element_name() {
        let a = serde_json::json!({"clock": 4, "tensors": [{"name": "w", "parts": [{"steps": 3}]}]});
        let mut b = a.clone();
        assert_eq!(first_difference("", &a, &b), None);
        b["tensors"][0]["parts"][0]["steps"] = 7.into();
        assert_eq!(
            first_difference("", &a, &b),
            Some(("tensors[w].parts[0].steps".into(), "3".into(), "7".into()))
        );
        b["clock"] = 5.into();
        assert_eq!(first_difference("", &a, &b), Some(("clock".into(), "4".into(), "5".into())));
    }
}
