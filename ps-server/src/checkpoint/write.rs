//! Writing one shard's share of a checkpoint, durably and atomically.
//!
//! Order of operations (each file is written under a temporary name,
//! fsynced, renamed, and its directory fsynced):
//! 1. `shard-NNNN.safetensors` — the shard's parts and optimizer state;
//! 2. `shard-NNNN.json` — the shard's fragment: that file's checksum and parts;
//! 3. once every shard's fragment is present, `manifest.sha256` and then
//!    `manifest.json`, merged from the fragments by whichever shard sees
//!    them all (several may; they write identical bytes). A crash before
//!    the manifest's rename leaves a directory that is not a checkpoint;
//!    restore skips it.
//! 4. old checkpoints beyond the newest `keep` are retired
//!    ([`super::retention`]).
//!
//! A shard whose steps 1-2 fail marks the checkpoint failed and retires the
//! directory, so the shares other shards finished do not stay behind; a
//! shard that finds the checkpoint marked failed stops writing its share.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};
use sha2::{Digest, Sha256};

use super::error::CheckpointError;
use super::format::{
    FORMAT_VERSION, FileEntry, Fragment, JobEntry, MANIFEST, MANIFEST_SHA256, Manifest, PartEntry,
    TensorEntry, fragment_file, manifest_sha256_line, shard_file, slot_key, steps_key, values_key,
};
use super::retention::{has_failed, prune, retire_failed};
use super::{CutId, PartSnapshot};
use crate::meta::TensorMeta;

/// What a shard writes into every checkpoint besides its parts.
#[derive(Clone, Debug)]
pub struct CutInfo {
    /// The checkpoint root: one subdirectory per checkpoint.
    pub root: PathBuf,
    /// This shard.
    pub shard: u32,
    /// The cluster and job.
    pub job: JobEntry,
    /// Complete checkpoints to keep (at least 1).
    pub keep: usize,
    /// Checkpoints registered and not yet written or failed at once (at least 1).
    pub max_pending: usize,
}

/// The outcome of a successful shard write.
#[derive(Clone, Debug)]
pub struct Written {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Bytes of the shard's safetensors file.
    pub bytes: u64,
    /// Whether this shard wrote the manifest (the checkpoint is complete).
    pub manifest: bool,
}

/// Test hook: with `PS_TEST_PAUSE_AT` set to `<point>` or `<point>@<clock>`,
/// the writer prints `checkpoint paused at <point>` and stops there for good
/// (for the checkpoint at `clock` only, if given), so a test can kill the
/// process at an exact point of the write. Points: `before-files`,
/// `between-files`, `before-manifest-rename`, and `retiring` (a checkpoint
/// being pruned, at its clock, renamed out of sight but not yet deleted).
pub(crate) fn pause_point(point: &str, clock: u64) {
    let wanted = std::env::var("PS_TEST_PAUSE_AT").ok();
    let matches = wanted.as_deref().is_some_and(|w| match w.split_once('@') {
        Some((p, c)) => p == point && c.parse() == Ok(clock),
        None => w == point,
    });
    if matches {
        println!("checkpoint paused at {point}");
        let _ = std::io::stdout().flush();
        loop {
            std::thread::park();
        }
    }
}

/// A borrowed f32 array as a safetensors tensor.
struct F32View<'a> {
    data: &'a [f32],
    shape: [usize; 1],
}

impl<'a> F32View<'a> {
    fn new(data: &'a [f32]) -> Self {
        Self { data, shape: [data.len()] }
    }
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        // Safetensors stores little-endian; so does every target we build for.
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(self.data))
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Fsyncs a directory so the names created or renamed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(CheckpointError::io("fsync directory", dir))
}

/// Creates `path` with `bytes` and fsyncs it; on failure removes it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let written = File::create(path).map_err(CheckpointError::io("create", path)).and_then(|mut f| {
        f.write_all(bytes).map_err(CheckpointError::io("write", path))?;
        f.sync_all().map_err(CheckpointError::io("fsync", path))
    });
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// Writes `bytes` to `dir/name` under a temporary name, fsyncs and renames it.
fn write_atomically(dir: &Path, name: &str, tmp_suffix: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
    let tmp = dir.join(format!("{name}.tmp{tmp_suffix}"));
    write_synced(&tmp, bytes)?;
    let dest = dir.join(name);
    fs::rename(&tmp, &dest).map_err(CheckpointError::io("rename into", &dest))?;
    sync_dir(dir)
}

/// SHA-256 of a file, lower-case hex, and its size; fsyncs it on the way.
fn hash_and_sync(path: &Path) -> Result<(String, u64), CheckpointError> {
    let mut f = File::open(path).map_err(CheckpointError::io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(CheckpointError::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    f.sync_all().map_err(CheckpointError::io("fsync", path))?;
    Ok((format!("{:x}", hasher.finalize()), bytes))
}

/// SHA-256 of a byte slice, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Serializes `views` to `path` as safetensors, fsyncs it, and returns its
/// SHA-256 and size.
fn write_tensors(
    path: &Path,
    views: Vec<(String, F32View<'_>)>,
    metadata: HashMap<String, String>,
) -> Result<(String, u64), CheckpointError> {
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => {
            CheckpointError::Io { action: "write", path: path.to_path_buf(), source }
        }
        other => CheckpointError::corrupt(path, format!("cannot serialize: {other}")),
    })?;
    hash_and_sync(path)
}

/// Writes this shard's parts of checkpoint `cut` and, if every other shard
/// has already written its share, the manifest; then prunes old checkpoints.
/// If this shard's share cannot be written, the checkpoint is marked failed
/// and its directory retired (best effort), so it never becomes a checkpoint
/// and no other shard's share is left behind.
pub fn write_shard_cut(
    info: &CutInfo,
    cut: &CutId,
    parts: &[(TensorMeta, PartSnapshot)],
) -> Result<Written, CheckpointError> {
    let dir = info.root.join(&cut.name);
    let bytes = match write_share(info, cut, &dir, parts) {
        Ok(bytes) => bytes,
        // This share failed because another shard retired the directory.
        Err(_) if has_failed(&info.root, &cut.name) => {
            let _ = retire_failed(&info.root, &cut.name);
            return Err(CheckpointError::FailedElsewhere { path: dir });
        }
        Err(e) => {
            if let Err(cleanup) = retire_failed(&info.root, &cut.name) {
                tracing::warn!(error = %cleanup, "could not delete the rest of a failed checkpoint");
            }
            return Err(e);
        }
    };
    // Another shard failed after this one looked: do not leave this share behind.
    if has_failed(&info.root, &cut.name) {
        let _ = retire_failed(&info.root, &cut.name);
        return Err(CheckpointError::FailedElsewhere { path: dir });
    }

    // 3. The manifest, if this shard is the last one.
    let manifest = finish_manifest(&dir, info.job.num_shards, info.shard, cut.clock)?;
    let session = super::format::parse_name(&cut.name).map(|(_, session)| session);
    if manifest && let Err(e) = prune(&info.root, info.keep.max(1), session) {
        tracing::warn!(error = %e, "could not delete old checkpoints");
    }
    Ok(Written { dir, bytes, manifest })
}

/// Steps 1 and 2: this shard's safetensors file and fragment, durable.
/// Returns the file's size.
fn write_share(
    info: &CutInfo,
    cut: &CutId,
    dir: &Path,
    parts: &[(TensorMeta, PartSnapshot)],
) -> Result<u64, CheckpointError> {
    pause_point("before-files", cut.clock);
    if has_failed(&info.root, &cut.name) {
        return Err(CheckpointError::FailedElsewhere { path: dir.to_path_buf() });
    }
    fs::create_dir_all(dir).map_err(CheckpointError::io("create directory", dir))?;
    sync_dir(&info.root)?;

    // 1. The shard's tensors.
    let file_name = shard_file(info.shard);
    let tmp = dir.join(format!("{file_name}.tmp"));
    let mut views: Vec<(String, F32View<'_>)> = Vec::new();
    let mut tensors = Vec::new();
    for (meta, snap) in parts {
        views.push((values_key(&meta.name), F32View::new(crate::array::as_slice(&snap.values))));
        let mut slots = BTreeMap::new();
        for (slot, data) in snap.optimizer.slots() {
            let key = slot_key(slot, &meta.name);
            views.push((key.clone(), F32View::new(data)));
            slots.insert(slot.to_string(), key);
        }
        tensors.push(TensorEntry {
            name: meta.name.clone(),
            shape: meta.shape.clone(),
            policy: meta.policy,
            allow_non_finite: meta.allow_non_finite,
            optimizer: *snap.optimizer.config(),
            parts: vec![PartEntry {
                shard: info.shard,
                offset: meta.offset,
                len: meta.len,
                file: file_name.clone(),
                key: values_key(&meta.name),
                slots,
                optimizer_steps: snap.optimizer.steps(),
            }],
        });
    }
    let mut metadata = HashMap::from([
        ("format".to_string(), FORMAT_VERSION.to_string()),
        ("checkpoint".to_string(), cut.name.clone()),
        ("clock".to_string(), cut.clock.to_string()),
        ("shard".to_string(), info.shard.to_string()),
    ]);
    for (meta, snap) in parts {
        metadata.insert(steps_key(&meta.name), snap.optimizer.steps().to_string());
    }
    // A failed write leaves no temporary file behind to fill the disk.
    let (sha256, bytes) = write_tensors(&tmp, views, metadata).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    let dest = dir.join(&file_name);
    fs::rename(&tmp, &dest).map_err(CheckpointError::io("rename into", &dest))?;
    sync_dir(dir)?;
    pause_point("between-files", cut.clock);

    // 2. The fragment that vouches for it.
    let fragment = Fragment {
        format: FORMAT_VERSION,
        name: cut.name.clone(),
        clock: cut.clock,
        shard: info.shard,
        job: info.job.clone(),
        written_unix_ms: unix_ms(),
        file: FileEntry { name: file_name, bytes, sha256 },
        tensors,
    };
    let json =
        serde_json::to_vec_pretty(&fragment).map_err(|e| CheckpointError::corrupt(dir, e.to_string()))?;
    write_atomically(dir, &fragment_file(info.shard), "", &json)?;
    Ok(bytes)
}

/// Writes the manifest if every shard's fragment is present. Returns whether it did.
fn finish_manifest(dir: &Path, num_shards: u32, shard: u32, clock: u64) -> Result<bool, CheckpointError> {
    let mut fragments = Vec::new();
    for s in 0..num_shards {
        let path = dir.join(fragment_file(s));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(CheckpointError::Io { action: "read", path, source: e }),
        };
        let f: Fragment = serde_json::from_slice(&bytes)
            .map_err(|e| CheckpointError::corrupt(&path, format!("invalid fragment: {e}")))?;
        fragments.push(f);
    }
    let manifest = Manifest::merge(fragments).map_err(|reason| CheckpointError::corrupt(dir, reason))?;
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::corrupt(dir, e.to_string()))?;
    // The checksum goes in first: a manifest is never without it.
    write_atomically(
        dir,
        MANIFEST_SHA256,
        &format!("-{shard}"),
        manifest_sha256_line(&sha256_hex(&json)).as_bytes(),
    )?;
    let tmp = dir.join(format!("{MANIFEST}.tmp-{shard}"));
    write_synced(&tmp, &json)?;
    pause_point("before-manifest-rename", clock);
    let dest = dir.join(MANIFEST);
    fs::rename(&tmp, &dest).map_err(CheckpointError::io("rename into", &dest))?;
    sync_dir(dir)?;
    Ok(true)
}
