//! Byte counts as people write them on a command line: `65536`, `512K`,
//! `4M`, `64MiB`, `16G` (binary multiples, the letter in either case).

/// The byte count `text` writes: digits, optionally followed by `K`, `M` or
/// `G` (or `KiB`, `MiB`, `GiB`), each a power of 1024. The error says what
/// was expected.
pub fn parse(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(invalid(text)),
    };
    let n: u64 = number.parse().map_err(|_| invalid(text))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is more bytes than fit in 64 bits"))
}

fn invalid(text: &str) -> String {
    format!("{text:?} is not a byte count: give a number of bytes, optionally with K, M or G (e.g. 512K, 4M)")
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn counts_with_and_without_units() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("65536"), Ok(65536));
        assert_eq!(parse("512K"), Ok(512 << 10));
        assert_eq!(parse("4m"), Ok(4 << 20));
        assert_eq!(parse("64MiB"), Ok(64 << 20));
        assert_eq!(parse("16G"), Ok(16 << 30));
    }

    #[test]
    fn anything_else_is_refused_with_what_to_write() {
        for bad in ["", "M", "4.5M", "-1", "4T", "4 MB", "1e6"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("not a byte count") && err.contains("4M"), "{bad}: {err}");
        }
        assert!(parse("99999999999G").is_err_and(|e| e.contains("64 bits")));
    }
}
