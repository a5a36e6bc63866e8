//! Reader of the IDX format (the MNIST family's files), unsigned-byte data only.
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of
//! dimensions, each dimension as a big-endian u32, then the data. The reader
//! checks every field and the exact length, and names the file in every error.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a file is not a valid IDX file.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    /// The file could not be read (or decompressed).
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        #[source]
        /// The underlying error.
        source: std::io::Error,
    },
    /// The magic number is wrong.
    #[error("{path}: not an IDX file of unsigned bytes: magic bytes {got:02x?}, expected [00, 00, 08, n]")]
    Magic {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was received.
        got: Vec<u8>,
    },
    /// The file is shorter or longer than its header says.
    #[error("{path}: header promises {expected} bytes in all, the file has {got}")]
    Length {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was expected.
        expected: u64,
        /// What was received.
        got: u64,
    },
    /// The dimensions are not what the caller needs.
    #[error("{path}: {detail}")]
    Shape {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// The contents of an IDX file: dimensions and row-major bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// `dims.product()` bytes.
    pub data: Vec<u8>,
}

/// Reads an IDX file, gunzipping it first when its name ends in `.gz`.
pub fn read(path: &Path) -> Result<Idx, IdxError> {
    let io = |source| IdxError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file).read_to_end(&mut bytes).map_err(io)?;
    } else {
        std::io::BufReader::new(file).read_to_end(&mut bytes).map_err(io)?;
    }
    parse(&bytes, path)
}

/// Parses IDX bytes; `path` only names the source in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Idx, IdxError> {
    let magic_err =
        || IdxError::Magic { path: path.to_path_buf(), got: bytes.iter().take(4).copied().collect() };
    let [0, 0, 0x08, ndims, ..] = *bytes else { return Err(magic_err()) };
    if ndims == 0 {
        return Err(magic_err());
    }
    let header = 4 + 4 * usize::from(ndims);
    if bytes.len() < header {
        return Err(IdxError::Length {
            path: path.to_path_buf(),
            expected: header as u64,
            got: bytes.len() as u64,
        });
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let expected = dims.iter().map(|d| *d as u64).product::<u64>() + header as u64;
    if bytes.len() as u64 != expected {
        return Err(IdxError::Length { path: path.to_path_buf(), expected, got: bytes.len() as u64 });
    }
    Ok(Idx { dims, data: bytes[header..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn parses_a_good_file() {
        let idx = parse(&file(&[2, 3], &[1, 2, 3, 4, 5, 6]), Path::new("x")).unwrap();
        assert_eq!(idx.dims, vec![2, 3]);
        assert_eq!(idx.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn rejects_truncated_and_padded_files() {
        let err = parse(&file(&[2, 3], &[1, 2, 3]), Path::new("short.idx")).unwrap_err();
        assert_eq!(err.to_string(), "short.idx: header promises 18 bytes in all, the file has 15");
        let err = parse(&file(&[1], &[1, 2]), Path::new("long.idx")).unwrap_err();
        assert!(matches!(err, IdxError::Length { expected: 9, got: 10, .. }), "{err}");
        let err = parse(&[0, 0, 8, 3, 0, 0], Path::new("header.idx")).unwrap_err();
        assert!(matches!(err, IdxError::Length { .. }), "{err}");
    }

    #[test]
    fn rejects_wrong_magic() {
        let mut b = file(&[1], &[1]);
        b[2] = 0x0d; // float data
        let err = parse(&b, Path::new("f.idx")).unwrap_err();
        assert!(err.to_string().starts_with("f.idx: not an IDX file"), "{err}");
        assert!(matches!(parse(b"PK\x03\x04", Path::new("zip")), Err(IdxError::Magic { .. })));
        assert!(matches!(parse(&[], Path::new("empty")), Err(IdxError::Magic { .. })));
    }

    #[test]
    fn reads_gzip_and_names_missing_files() {
        let dir = std::env::temp_dir().join(format!("idx-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.idx.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &file(&[2], &[7, 9])).unwrap();
        std::fs::write(&path, enc.finish().unwrap()).unwrap();
        assert_eq!(read(&path).unwrap().data, vec![7, 9]);
        // A gzip file cut short is an I/O error naming the file.
        let gz = std::fs::read(&path).unwrap();
        std::fs::write(&path, &gz[..gz.len() / 2]).unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.to_string().contains("a.idx.gz"), "{err}");
        let err = read(&dir.join("missing.idx")).unwrap_err();
        assert!(err.to_string().contains("missing.idx: cannot read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
