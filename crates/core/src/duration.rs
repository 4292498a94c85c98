//! Durations as users type them: `500ms`, `30s`, `5m`, `1h`, `2h30m`, `1d`.

use std::time::Duration;

/// A duration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {why} (use e.g. 500ms, 30s, 5m, 1h, 2h30m)")]
pub struct DurationError {
    /// What the user typed.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Parses a duration: one or more `<number><unit>` parts with units `ms`, `s`, `m`, `h`, `d`
/// (largest first, each at most once). A bare `0` is zero.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        input: input.to_owned(),
        why,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(err("it is empty"));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    let mut last_rank = usize::MAX;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_len);
        let (rank, per_unit) = match unit {
            "d" => (4, Duration::from_secs(86_400)),
            "h" => (3, Duration::from_secs(3_600)),
            "m" | "min" => (2, Duration::from_secs(60)),
            "s" => (1, Duration::from_secs(1)),
            "ms" => (0, Duration::from_millis(1)),
            "" => return Err(err("a unit is missing")),
            _ => return Err(err("unknown unit")),
        };
        if rank >= last_rank {
            return Err(err("units must go from largest to smallest, each once"));
        }
        last_rank = rank;
        let part = u32::try_from(value)
            .ok()
            .and_then(|v| per_unit.checked_mul(v))
            .ok_or_else(|| err("the number is too large"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| err("the number is too large"))?;
        rest = after;
    }
    Ok(total)
}

/// Formats a duration compactly for people: `850ms`, `42s`, `5m03s`, `2h07m`, `3d04h`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.subsec_millis()),
        1..=59 => format!("{secs}s"),
        60..=3_599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600..=86_399 => format!("{}h{:02}m", secs / 3_600, (secs % 3_600) / 60),
        _ => format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2h30m"), Ok(Duration::from_secs(9000)));
        assert_eq!(
            parse_duration("1d2h3m4s5ms"),
            Ok(Duration::from_millis(93_784_005))
        );
        assert_eq!(parse_duration(" 10m "), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "5",
            "5x",
            "x5s",
            "s",
            "5m2h",
            "5s5s",
            "-5s",
            "1.5h",
            "99999999999h",
            "5 m",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.to_string().contains("use e.g."), "{e}");
        }
        assert_eq!(parse_duration("5x").map_err(|e| e.why), Err("unknown unit"));
    }

    #[test]
    fn formats() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_secs(42)), "42s");
        assert_eq!(format_duration(Duration::from_secs(303)), "5m03s");
        assert_eq!(format_duration(Duration::from_secs(7620)), "2h07m");
        assert_eq!(format_duration(Duration::from_secs(273_600)), "3d04h");
    }
}
