//! Finding and reading a checkpoint to restore.
//!
//! Every shard of a restoring cluster runs the same search over the same
//! files, so all pick the same checkpoint: the newest complete one (by
//! manifest creation time) whose every file matches its checksum. A
//! directory without a manifest is skipped, as is one with a corrupt or
//! missing file (the error is logged and reported). A manifest of a newer
//! format stops the search: silently restoring an older checkpoint would lose
//! the newer one's progress.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

use super::error::CheckpointError;
use super::format::{FORMAT_VERSION, MANIFEST, Manifest, PartEntry, TensorEntry};
use super::write::{list, sha256_hex};

/// A verified checkpoint held in memory, ready to be re-partitioned.
#[derive(Debug)]
pub struct Loaded {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Every shard file's bytes, by file name; checksums verified.
    files: BTreeMap<String, Vec<u8>>,
}

/// Reads and parses `dir/manifest.json`, refusing newer formats.
pub fn read_manifest(dir: &Path) -> Result<Manifest, CheckpointError> {
    let path = dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(CheckpointError::io("read", &path))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| CheckpointError::corrupt(&path, format!("not valid JSON: {e}")))?;
    let format = value
        .get("format")
        .and_then(|f| f.as_u64())
        .ok_or_else(|| CheckpointError::corrupt(&path, "no \"format\" field"))?;
    if format > u64::from(FORMAT_VERSION) {
        return Err(CheckpointError::NewerFormat { path, got: format as u32, supported: FORMAT_VERSION });
    }
    serde_json::from_value(value)
        .map_err(|e| CheckpointError::corrupt(&path, format!("invalid manifest: {e}")))
}

/// Loads the checkpoint in `dir` (which must hold a manifest), verifying
/// every file's size and checksum.
pub fn load(dir: &Path) -> Result<Loaded, CheckpointError> {
    let manifest = read_manifest(dir)?;
    let mut files = BTreeMap::new();
    for entry in &manifest.files {
        let path = dir.join(&entry.name);
        let bytes = fs::read(&path).map_err(CheckpointError::io("read", &path))?;
        let sha256 = sha256_hex(&bytes);
        if bytes.len() as u64 != entry.bytes || sha256 != entry.sha256 {
            return Err(CheckpointError::Checksum {
                path,
                expected: format!("{} ({} bytes)", entry.sha256, entry.bytes),
                got: format!("{sha256} ({} bytes)", bytes.len()),
            });
        }
        SafeTensors::deserialize(&bytes)
            .map_err(|e| CheckpointError::corrupt(&path, format!("not a safetensors file: {e}")))?;
        files.insert(entry.name.clone(), bytes);
    }
    Ok(Loaded { dir: dir.to_path_buf(), manifest, files })
}

/// The checkpoint to restore from `path`: exactly that checkpoint if `path`
/// holds a manifest (any failure is an error), else the newest complete,
/// valid checkpoint under the root `path`.
pub fn find_checkpoint(path: &Path) -> Result<Loaded, CheckpointError> {
    if path.join(MANIFEST).exists() {
        return load(path);
    }
    let mut skipped = Vec::new();
    for listed in list(path)? {
        let name = listed.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if listed.created_unix_ms.is_none() && !listed.dir.join(MANIFEST).exists() {
            skipped.push(format!("{name}: incomplete (no manifest)"));
            continue;
        }
        match load(&listed.dir) {
            Ok(loaded) => {
                for s in &skipped {
                    tracing::warn!(skipped = %s, "skipped a checkpoint while restoring");
                }
                return Ok(loaded);
            }
            Err(e @ CheckpointError::NewerFormat { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint is not valid; trying an older one");
                skipped.push(format!("{name}: {e}"));
            }
        }
    }
    Err(CheckpointError::NoneFound { path: path.to_path_buf(), skipped })
}

impl Loaded {
    /// The checkpoint's directory name.
    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Elements `offset..offset + len` of `tensor`, read from the key that
    /// `key` picks in each part covering them (values or a state slot).
    pub fn read_range(
        &self,
        tensor: &TensorEntry,
        key: impl Fn(&PartEntry) -> Option<&str>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<f32>, CheckpointError> {
        let mut out = Vec::with_capacity(len as usize);
        let end = offset + len;
        for part in &tensor.parts {
            let (lo, hi) = (part.offset.max(offset), (part.offset + part.len).min(end));
            if lo >= hi {
                continue;
            }
            let path = self.dir.join(&part.file);
            let bytes = self
                .files
                .get(&part.file)
                .ok_or_else(|| CheckpointError::corrupt(&path, "file is not listed in the manifest"))?;
            let st = SafeTensors::deserialize(bytes)
                .map_err(|e| CheckpointError::corrupt(&path, format!("not a safetensors file: {e}")))?;
            let name = key(part).ok_or_else(|| {
                CheckpointError::corrupt(&path, format!("tensor {:?}: a state slot is missing", tensor.name))
            })?;
            let view = st
                .tensor(name)
                .map_err(|e| CheckpointError::corrupt(&path, format!("tensor {name:?}: {e}")))?;
            if view.dtype() != Dtype::F32 || view.shape() != [part.len as usize] {
                return Err(CheckpointError::corrupt(
                    &path,
                    format!(
                        "tensor {name:?}: expected F32 [{}], got {:?} {:?}",
                        part.len,
                        view.dtype(),
                        view.shape()
                    ),
                ));
            }
            let data = &view.data()[((lo - part.offset) * 4) as usize..((hi - part.offset) * 4) as usize];
            out.extend(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        }
        if out.len() as u64 != len {
            return Err(CheckpointError::corrupt(
                self.dir.join(MANIFEST),
                format!("tensor {:?}: parts cover {} of elements {offset}..{end}", tensor.name, out.len()),
            ));
        }
        Ok(out)
    }
}
