//! Message sizes on the command line: `64`, `64B`, `1KiB`, `16MiB`, lists (`64,1KiB`), and
//! doubling sweeps (`64B..16MiB`: 64, 128, ... 16 MiB, the 19 sizes of a classic sweep).

/// Parses one size in bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("size {text:?} must start with a whole number"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "size {text:?}: unknown unit {other:?} (use B, KiB, MiB)"
            ));
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Parses a sweep: a list of sizes and `FROM..TO` doubling ranges, comma separated.
pub fn parse_sweep(text: &str) -> Result<Vec<u64>, String> {
    let mut sizes = Vec::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        match part.split_once("..") {
            Some((from, to)) => {
                let (from, to) = (parse_size(from)?, parse_size(to)?);
                if from == 0 || from > to {
                    return Err(format!(
                        "sweep {part:?} must go from a size above 0 up to a larger one"
                    ));
                }
                let mut size = from;
                while size <= to {
                    sizes.push(size);
                    size = size.saturating_mul(2);
                }
            }
            None => sizes.push(parse_size(part)?),
        }
    }
    if sizes.is_empty() {
        return Err("--sizes needs at least one size".to_owned());
    }
    Ok(sizes)
}

/// A size for people: `64B`, `1KiB`, `1.5MiB`.
pub fn human(size: u64) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}MiB", s >> 20),
        s if s >= 1 << 20 => format!("{:.1}MiB", s as f64 / f64::from(1 << 20)),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}KiB", s >> 10),
        s if s >= 1 << 10 => format!("{:.1}KiB", s as f64 / 1024.0),
        s => format!("{s}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_sweep_has_19_sizes() {
        let sizes = parse_sweep("64B..16MiB").expect("sweep");
        assert_eq!(sizes.len(), 19);
        assert_eq!(sizes.first(), Some(&64));
        assert_eq!(sizes.last(), Some(&(16 << 20)));
    }

    #[test]
    fn sizes_and_lists_parse() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_sweep("1,1KiB"), Ok(vec![1, 1024]));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_sweep("0..8").is_err());
        assert!(parse_sweep("16..8").is_err());
        assert_eq!(human(64), "64B");
        assert_eq!(human(1536), "1.5KiB");
        assert_eq!(human(16 << 20), "16MiB");
    }
}
