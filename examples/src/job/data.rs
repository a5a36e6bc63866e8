//! Image-classification data sets in the MNIST layout, and each worker's
//! share of them.
//!
//! A data directory holds `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each optionally
//! gzipped. If it also holds `SHA256SUMS` (lines of `<hex>  <name>`, hashes of
//! the decompressed files), every listed file is verified on load.

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use sha2::{Digest, Sha256};

use super::idx::{self, IdxError};

/// Number of classes (labels are `0..CLASSES`).
pub const CLASSES: usize = 10;

/// Why a data set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file is missing or malformed.
    #[error(transparent)]
    Idx(#[from] IdxError),
    /// A file's contents do not match `SHA256SUMS`.
    #[error("{path}: SHA-256 of the decompressed contents is {got}, SHA256SUMS says {expected}")]
    Checksum {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was expected.
        expected: String,
        /// What was received.
        got: String,
    },
    /// Neither the file nor its `.gz` exists.
    #[error("{dir}: no {name} (or {name}.gz) in the data directory; give the directory with --data-dir")]
    Missing {
        /// The data directory.
        dir: PathBuf,
        /// The missing file's name.
        name: String,
    },
    /// The files disagree with each other.
    #[error("{0}")]
    Inconsistent(String),
}

/// Images (one row each, pixels scaled to `[0, 1]`) and their labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `n × pixels`.
    pub images: Array2<f32>,
    /// `n` labels in `0..CLASSES`.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn features(&self) -> usize {
        self.images.ncols()
    }

    /// The examples at `indices`, as a contiguous batch.
    pub fn gather(&self, indices: &[usize]) -> (Array2<f32>, Vec<u8>) {
        (self.images.select(Axis(0), indices), indices.iter().map(|i| self.labels[*i]).collect())
    }

    /// The first `n` examples (all if fewer).
    pub fn head(&self, n: usize) -> (ArrayView2<'_, f32>, &[u8]) {
        let n = n.min(self.len());
        (self.images.slice(ndarray::s![..n, ..]), &self.labels[..n])
    }
}

/// The training and test sets of one directory.
#[derive(Clone, Debug)]
pub struct Splits {
    /// Training examples.
    pub train: Dataset,
    /// Test examples.
    pub test: Dataset,
}

/// Where the data is looked for when no directory is given, relative to the
/// working directory: the repository root, or `examples/` (where `cargo
/// test` runs this crate's tests).
pub const DEFAULT_DATA_DIRS: [&str; 2] = ["examples/data/fashion-mnist", "data/fashion-mnist"];

/// The shipped Fashion-MNIST: the first of [`DEFAULT_DATA_DIRS`] that is a
/// directory (the first if none is, so the error names it). Never a path
/// fixed when the binary was built.
pub fn default_data_dir() -> PathBuf {
    DEFAULT_DATA_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIRS[0]))
}

fn find(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(DataError::Missing { dir: dir.to_path_buf(), name: name.to_string() })
}

fn expected_checksum(dir: &Path, name: &str) -> Result<Option<String>, DataError> {
    let sums = dir.join("SHA256SUMS");
    let text = match std::fs::read_to_string(&sums) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IdxError::Io { path: sums, source }.into()),
    };
    Ok(text.lines().find_map(|line| {
        let (hash, file) = line.split_once(char::is_whitespace)?;
        (file.trim().trim_start_matches('*') == name).then(|| hash.to_ascii_lowercase())
    }))
}

/// Reads one IDX file of the directory, verifying its checksum if listed.
fn read_checked(dir: &Path, name: &str) -> Result<idx::Idx, DataError> {
    let path = find(dir, name)?;
    let idx = idx::read(&path)?;
    if let Some(expected) = expected_checksum(dir, name)? {
        let mut header = vec![0u8, 0, 8, idx.dims.len() as u8];
        for d in &idx.dims {
            header.extend_from_slice(&(*d as u32).to_be_bytes());
        }
        let got = format!("{:x}", Sha256::new().chain_update(&header).chain_update(&idx.data).finalize());
        if got != expected {
            return Err(DataError::Checksum { path, expected, got });
        }
    }
    Ok(idx)
}

fn load_split(dir: &Path, prefix: &str) -> Result<Dataset, DataError> {
    let images = read_checked(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels = read_checked(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let [n, rows, cols] = images.dims[..] else {
        return Err(DataError::Inconsistent(format!(
            "{}: {prefix} images have dimensions {:?}, expected [n, rows, cols]",
            dir.display(),
            images.dims
        )));
    };
    if labels.dims != [n] {
        return Err(DataError::Inconsistent(format!(
            "{}: {n} {prefix} images but label dimensions {:?}",
            dir.display(),
            labels.dims
        )));
    }
    if let Some(bad) = labels.data.iter().find(|l| usize::from(**l) >= CLASSES) {
        return Err(DataError::Inconsistent(format!(
            "{}: {prefix} label {bad} is not in 0..{CLASSES}",
            dir.display()
        )));
    }
    let pixels = images.data.iter().map(|p| f32::from(*p) / 255.0).collect();
    let images = Array2::from_shape_vec((n, rows * cols), pixels)
        .map_err(|e| DataError::Inconsistent(format!("{}: {e}", dir.display())))?;
    Ok(Dataset { images, labels: labels.data })
}

/// Loads the training and test sets of `dir`.
pub fn load(dir: &Path) -> Result<Splits, DataError> {
    let train = load_split(dir, "train")?;
    let test = load_split(dir, "t10k")?;
    if train.features() != test.features() {
        return Err(DataError::Inconsistent(format!(
            "{}: train images have {} pixels, test images {}",
            dir.display(),
            train.features(),
            test.features()
        )));
    }
    Ok(Splits { train, test })
}

/// The minibatches of one worker for one epoch: a seeded shuffle of all
/// examples, cut into `workers` disjoint equal shares, then into batches of
/// `batch` (a partial last batch is dropped).
pub fn worker_batches(
    n: usize,
    worker: u32,
    workers: u32,
    batch: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let share = n / workers as usize;
    let mine = &order[worker as usize * share..(worker as usize + 1) * share];
    mine.chunks_exact(batch.max(1)).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_shares_are_disjoint_and_reshuffled_per_epoch() {
        let shares: Vec<Vec<usize>> = (0..3).map(|w| worker_batches(100, w, 3, 8, 1, 0).concat()).collect();
        let mut all: Vec<usize> = shares.concat();
        assert_eq!(all.len(), 3 * 32);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 96, "shares overlap");
        assert_ne!(worker_batches(100, 0, 3, 8, 1, 0), worker_batches(100, 0, 3, 8, 1, 1));
        assert_eq!(worker_batches(100, 0, 3, 8, 1, 1), worker_batches(100, 0, 3, 8, 1, 1));
    }

    fn write_idx(path: &Path, dims: &[u32], data: &[u8]) {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn loads_a_small_set_and_checks_sums() {
        let dir = std::env::temp_dir().join(format!("data-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for prefix in ["train", "t10k"] {
            write_idx(
                &dir.join(format!("{prefix}-images-idx3-ubyte")),
                &[2, 2, 2],
                &[0, 255, 0, 255, 51, 0, 0, 0],
            );
            write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &[2], &[3, 9]);
        }
        let s = load(&dir).unwrap();
        assert_eq!(s.train.images.row(0).to_vec(), vec![0.0, 1.0, 0.0, 1.0]);
        assert_eq!(s.test.labels, vec![3, 9]);
        std::fs::write(dir.join("SHA256SUMS"), format!("{}  train-labels-idx1-ubyte\n", "0".repeat(64)))
            .unwrap();
        let err = load(&dir).unwrap_err();
        assert!(matches!(err, DataError::Checksum { .. }), "{err}");
        assert!(err.to_string().contains("train-labels-idx1-ubyte"), "{err}");
        std::fs::remove_file(dir.join("SHA256SUMS")).unwrap();
        write_idx(&dir.join("t10k-labels-idx1-ubyte"), &[2], &[3, 10]);
        assert!(load(&dir).unwrap_err().to_string().contains("label 10"));
        std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte")).unwrap();
        assert!(matches!(load(&dir).unwrap_err(), DataError::Missing { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_fashion_mnist_verifies() {
        let s = load(&default_data_dir()).expect("examples/data/fashion-mnist loads and verifies");
        assert_eq!((s.train.len(), s.test.len(), s.train.features()), (60_000, 10_000, 784));
    }
}
