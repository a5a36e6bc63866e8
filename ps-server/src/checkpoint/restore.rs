//! Finding and reading a checkpoint to restore.
//!
//! Every shard of a restoring cluster runs the same search over the same
//! files, so all pick the same checkpoint: the newest complete one (by
//! manifest creation time) that passes every check of [`super::verify`]
//! and whose every shard file matches its checksum. Each checkpoint passed
//! over is reported with its reason (logged at warn, and returned in
//! [`Loaded::skipped`]): incomplete (no manifest), invalid manifest,
//! checksum mismatch, cross-check mismatch. A manifest of a newer format
//! stops the search: silently restoring an older checkpoint would lose the
//! newer one's progress.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

use super::error::CheckpointError;
use super::format::{MANIFEST, Manifest, PartEntry, TensorEntry};
use super::retention::{Found, list};
use super::verify::{check_shard_file, cross_check, read_manifest};
use super::write::sha256_hex;

/// A verified checkpoint held in memory, ready to be re-partitioned.
#[derive(Debug)]
pub struct Loaded {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The newer checkpoints (or directories) the search passed over, each
    /// with its reason.
    pub skipped: Vec<Skipped>,
    /// Every shard file's bytes, by file name; checksums verified.
    files: BTreeMap<String, Vec<u8>>,
}

/// A checkpoint directory restore did not use, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Its directory name.
    pub name: String,
    /// The kind of problem: `incomplete (no manifest)`, `invalid`,
    /// `checksum mismatch`, `cross-check mismatch`, `unreadable`.
    pub reason: &'static str,
    /// The full error, naming the file and field.
    pub detail: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.name, self.reason, self.detail)
    }
}

impl Skipped {
    fn error(name: &str, e: &CheckpointError) -> Self {
        Self { name: name.to_string(), reason: e.skip_reason(), detail: e.to_string() }
    }
}

/// Loads the checkpoint in `dir` (which must hold a manifest): verifies
/// the manifest (checksum, cross-checks) and every file's size, checksum
/// and metadata.
pub fn load(dir: &Path) -> Result<Loaded, CheckpointError> {
    let manifest = read_manifest(dir)?;
    cross_check(dir, &manifest)?;
    let mut files = BTreeMap::new();
    for entry in &manifest.files {
        let path = dir.join(&entry.name);
        let bytes = fs::read(&path).map_err(CheckpointError::io("read", &path))?;
        let sha256 = sha256_hex(&bytes);
        if bytes.len() as u64 != entry.bytes || sha256 != entry.sha256 {
            return Err(CheckpointError::Checksum {
                path,
                listed_in: MANIFEST,
                expected: format!("{} ({} bytes)", entry.sha256, entry.bytes),
                got: format!("{sha256} ({} bytes)", bytes.len()),
            });
        }
        check_shard_file(dir, &manifest, entry, &bytes)?;
        files.insert(entry.name.clone(), bytes);
    }
    Ok(Loaded { dir: dir.to_path_buf(), manifest, skipped: Vec::new(), files })
}

/// The checkpoint to restore from `path`: exactly that checkpoint if `path`
/// holds a manifest (any failure is an error), else the newest complete,
/// valid checkpoint under the root `path`, with the newer ones it skipped.
pub fn find_checkpoint(path: &Path) -> Result<Loaded, CheckpointError> {
    if path.join(MANIFEST).exists() {
        return load(path);
    }
    let listed = list(path)?;
    for l in &listed {
        if let Found::Invalid(CheckpointError::NewerFormat { path, got, supported }) = &l.found {
            return Err(CheckpointError::NewerFormat {
                path: path.clone(),
                got: *got,
                supported: *supported,
            });
        }
    }
    let mut skipped = Vec::new();
    for (i, l) in listed.iter().enumerate() {
        let error = match &l.found {
            Found::Incomplete => continue,
            Found::Invalid(e) => Skipped::error(&l.name, e),
            Found::Complete { .. } => match load(&l.dir) {
                Ok(mut loaded) => {
                    // Directories that are not complete checkpoints are listed
                    // last; report those at or above the chosen clock.
                    skipped.extend(listed[i + 1..].iter().filter_map(|o| match &o.found {
                        Found::Incomplete if o.clock >= l.clock => Some(Skipped {
                            name: o.name.clone(),
                            reason: "incomplete",
                            detail: "no manifest".into(),
                        }),
                        Found::Invalid(e) if o.clock >= l.clock => Some(Skipped::error(&o.name, e)),
                        _ => None,
                    }));
                    for s in &skipped {
                        tracing::warn!(restoring = %l.name, "skipped checkpoint {s}");
                    }
                    loaded.skipped = skipped;
                    return Ok(loaded);
                }
                Err(e) => Skipped::error(&l.name, &e),
            },
        };
        tracing::warn!("checkpoint is not valid; trying an older one: {error}");
        skipped.push(error);
    }
    for l in listed.iter().filter(|l| matches!(l.found, Found::Incomplete)) {
        skipped.push(Skipped { name: l.name.clone(), reason: "incomplete", detail: "no manifest".into() });
    }
    Err(CheckpointError::NoneFound {
        path: path.to_path_buf(),
        skipped: skipped.iter().map(|s| s.to_string()).collect(),
    })
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
