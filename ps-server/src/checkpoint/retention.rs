//! The checkpoint root over time: listing what is in it, retiring old or
//! failed checkpoints, and cleaning up what a kill left behind.
//!
//! A checkpoint is retired in two steps: its directory is renamed to
//! `.retired-<name>` (atomic; from then on nothing lists it), then deleted.
//! A kill between the two leaves only a hidden leftover, never a directory
//! that looks like a damaged checkpoint; [`clean_leftovers`] removes it at
//! the next start or prune. A checkpoint that failed on one shard gets an
//! empty `.failed-<name>` marker before it is retired, so a shard still
//! writing its share sees the marker and does not leave a half behind.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::error::CheckpointError;
use super::format::{FAILED_PREFIX, MANIFEST, RETIRED_PREFIX, parse_name};
use super::verify::read_manifest;

/// What a checkpoint directory holds.
#[derive(Debug)]
pub enum Found {
    /// A manifest that matches its checksum (the rest is checked on load).
    Complete {
        /// When its last shard file became durable (Unix milliseconds).
        created_unix_ms: u64,
    },
    /// A manifest that cannot be trusted: the reason.
    Invalid(CheckpointError),
    /// No manifest: being written, or a write that never finished.
    Incomplete,
}

/// A checkpoint directory under a root.
#[derive(Debug)]
pub struct Listed {
    /// Its path.
    pub dir: PathBuf,
    /// Its directory name.
    pub name: String,
    /// Its clock, from the name.
    pub clock: u64,
    /// What it holds.
    pub found: Found,
}

impl Listed {
    /// When it was completed, if its manifest verifies.
    pub fn created_unix_ms(&self) -> Option<u64> {
        match self.found {
            Found::Complete { created_unix_ms } => Some(created_unix_ms),
            _ => None,
        }
    }
}

/// Checkpoint directories under `root` (hidden leftovers are not listed),
/// newest first: complete ones by creation time (then clock), the others
/// after them by clock.
pub fn list(root: &Path) -> Result<Vec<Listed>, CheckpointError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root).map_err(CheckpointError::io("read checkpoint directory", root))? {
        let entry = entry.map_err(CheckpointError::io("read checkpoint directory", root))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let Some((clock, _)) = parse_name(&name) else { continue };
        let dir = entry.path();
        let state = if dir.join(MANIFEST).exists() {
            match read_manifest(&dir) {
                Ok(m) => Found::Complete { created_unix_ms: m.created_unix_ms },
                Err(e) => Found::Invalid(e),
            }
        } else {
            Found::Incomplete
        };
        found.push(Listed { dir, name, clock, found: state });
    }
    found.sort_by(|a, b| {
        let key = |l: &Listed| (l.created_unix_ms().is_some(), l.created_unix_ms(), l.clock);
        key(b).cmp(&key(a))
    });
    Ok(found)
}

/// Retires the checkpoint directory `dir`: renames it out of sight, then
/// deletes it. A directory already gone is not an error.
pub fn retire(dir: &Path) -> Result<(), CheckpointError> {
    let (Some(root), Some(name)) = (dir.parent(), dir.file_name()) else { return Ok(()) };
    let hidden = root.join(format!("{RETIRED_PREFIX}{}", name.to_string_lossy()));
    if let Err(e) = fs::rename(dir, &hidden) {
        match e.kind() {
            ErrorKind::NotFound => return Ok(()),
            // A leftover of an earlier retirement is in the way: delete it first.
            _ if hidden.exists() => {
                remove_tree(&hidden)?;
                fs::rename(dir, &hidden).map_err(CheckpointError::io("retire", dir))?;
            }
            _ => return Err(CheckpointError::Io { action: "retire", path: dir.to_path_buf(), source: e }),
        }
    }
    if let Some((clock, _)) = parse_name(&name.to_string_lossy()) {
        super::write::pause_point("retiring", clock);
    }
    remove_tree(&hidden)?;
    tracing::info!(dir = %dir.display(), "deleted checkpoint");
    Ok(())
}

fn remove_tree(path: &Path) -> Result<(), CheckpointError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(CheckpointError::Io { action: "delete", path: path.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

/// The marker saying checkpoint `name` failed on some shard.
fn failed_marker(root: &Path, name: &str) -> PathBuf {
    root.join(format!("{FAILED_PREFIX}{name}"))
}

/// Whether checkpoint `name` failed on some shard (its marker exists).
pub fn has_failed(root: &Path, name: &str) -> bool {
    failed_marker(root, name).exists()
}

/// Marks checkpoint `name` failed (so no shard finishes it) and retires
/// whatever shards wrote of it; retires it even when the mark cannot be
/// made (a full disk may refuse a new directory), then reports that.
pub fn retire_failed(root: &Path, name: &str) -> Result<(), CheckpointError> {
    let marker = failed_marker(root, name);
    let marked = match fs::create_dir(&marker) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => {
            Err(CheckpointError::Io { action: "create", path: marker, source: e })
        }
        _ => Ok(()),
    };
    retire(&root.join(name))?;
    marked
}

/// Deletes complete checkpoints beyond the newest `keep`, and others
/// (incomplete or invalid) older than every kept one; never the newest
/// complete one, nor an incomplete one named after `session` (the
/// requesting shard's current session: it may still be being written, and
/// if it fails the failing shard retires it). Then removes hidden leftovers
/// of retirements.
pub fn prune(root: &Path, keep: usize, session: Option<u64>) -> Result<(), CheckpointError> {
    let listed = list(root)?;
    let complete: Vec<&Listed> = listed.iter().filter(|l| l.created_unix_ms().is_some()).collect();
    let kept = &complete[..complete.len().min(keep.max(1))];
    if let Some(oldest_kept) = kept.iter().map(|l| l.clock).min() {
        for l in &listed {
            let in_flight =
                matches!(l.found, Found::Incomplete) && parse_name(&l.name).map(|n| n.1) == session;
            let keep_it = in_flight
                || kept.iter().any(|k| k.dir == l.dir)
                || (l.created_unix_ms().is_none() && l.clock >= oldest_kept);
            if !keep_it {
                retire(&l.dir)?;
            }
        }
    }
    clean_leftovers(root, false)
}

/// Removes what retirements left (`.retired-*`) and, with `markers`, the
/// markers of failed checkpoints (`.failed-*`; at start, when no shard of
/// this life can still be writing them).
pub fn clean_leftovers(root: &Path, markers: bool) -> Result<(), CheckpointError> {
    for entry in fs::read_dir(root).map_err(CheckpointError::io("read checkpoint directory", root))? {
        let entry = entry.map_err(CheckpointError::io("read checkpoint directory", root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(RETIRED_PREFIX) || (markers && name.starts_with(FAILED_PREFIX)) {
            remove_tree(&entry.path())?;
            tracing::info!(path = %entry.path().display(), "removed the leftover of a deleted checkpoint");
        }
    }
    Ok(())
}

/// Makes `root` ready to hold checkpoints, or says why it cannot: creates
/// it if missing, refuses a path that is not a directory or where a file
/// cannot be created, and removes leftovers of earlier runs.
pub fn prepare_root(root: &Path) -> Result<(), CheckpointError> {
    if root.exists() && !root.is_dir() {
        return Err(CheckpointError::corrupt(root, "is not a directory"));
    }
    fs::create_dir_all(root).map_err(CheckpointError::io("create checkpoint directory", root))?;
    let probe = root.join(format!(".probe-{}", std::process::id()));
    fs::write(&probe, b"")
        .map_err(CheckpointError::io("create a file in the checkpoint directory", &probe))?;
    fs::remove_file(&probe).map_err(CheckpointError::io("delete", &probe))?;
    clean_leftovers(root, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ps-retention-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    #[test]
    fn a_retired_leftover_is_not_listed_and_is_cleaned_up() {
        let root = scratch("leftover");
        let name = super::super::checkpoint_name(4, 1);
        // A kill between the rename and the delete leaves this.
        let leftover = root.join(format!("{RETIRED_PREFIX}{name}"));
        fs::create_dir_all(&leftover).expect("leftover");
        fs::write(leftover.join("shard-0000.json"), b"{}").expect("file");
        assert!(list(&root).expect("list").is_empty(), "a leftover listed as a checkpoint");
        clean_leftovers(&root, false).expect("clean");
        assert!(!leftover.exists());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn retire_failed_leaves_only_the_marker_and_prepare_removes_it() {
        let root = scratch("failed");
        let name = super::super::checkpoint_name(6, 2);
        fs::create_dir_all(root.join(&name)).expect("dir");
        fs::write(root.join(&name).join("shard-0001.safetensors"), b"x").expect("half");
        retire_failed(&root, &name).expect("retire");
        assert!(has_failed(&root, &name));
        assert!(!root.join(&name).exists());
        prepare_root(&root).expect("prepare");
        assert_eq!(fs::read_dir(&root).expect("root").count(), 0);
        let _ = fs::remove_dir_all(&root);
    }

    /// A complete checkpoint at `clock` (no tensors) with a valid manifest and checksum.
    fn complete(root: &Path, clock: u64, session: u64) -> String {
        use super::super::format::{ClusterEntry, MANIFEST_SHA256, Manifest, manifest_sha256_line};
        let name = super::super::checkpoint_name(clock, session);
        let manifest = Manifest {
            format: super::super::format::FORMAT_VERSION,
            name: name.clone(),
            clock,
            policy: crate::sync::Policy::SYNC,
            aggregation: crate::config::Aggregation::Mean,
            num_workers: 1,
            cluster: ClusterEntry { num_shards: 1, split_threshold: 8 },
            created_unix_ms: clock,
            tensors: Vec::new(),
            files: Vec::new(),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("json");
        let dir = root.join(&name);
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join(MANIFEST_SHA256), manifest_sha256_line(&super::super::write::sha256_hex(&json)))
            .expect("checksum");
        fs::write(dir.join(MANIFEST), json).expect("manifest");
        name
    }

    #[test]
    fn prune_spares_incomplete_checkpoints_of_the_current_session() {
        let root = scratch("in-flight");
        let old = complete(&root, 2, 7);
        let newest = complete(&root, 6, 7);
        // Clock 4 of this session is still being written; clock 3 is from an earlier life.
        let in_flight = super::super::checkpoint_name(4, 7);
        let stale = super::super::checkpoint_name(3, 1);
        fs::create_dir_all(root.join(&in_flight)).expect("in flight");
        fs::create_dir_all(root.join(&stale)).expect("stale");
        prune(&root, 1, Some(7)).expect("prune");
        let mut left: Vec<String> = fs::read_dir(&root)
            .expect("root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![in_flight, newest], "{old} and {stale} go, the one in flight stays");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn prepare_refuses_a_file() {
        let root = scratch("file");
        let file = root.join("not-a-dir");
        fs::write(&file, b"x").expect("file");
        let err = prepare_root(&file).expect_err("a file accepted");
        assert!(err.to_string().contains("not-a-dir: is not a directory"), "{err}");
        let _ = fs::remove_dir_all(&root);
    }
}
