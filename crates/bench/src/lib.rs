//! Shared helpers of pgkill's benchmark programs (`src/bin/*`).
//!
//! Benchmarks are programs that print figures, run side by side with their baseline in
//! the same run; they are never timed assertions inside tests.

use std::time::Duration;

/// Median of a set of durations (zero when empty).
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Milliseconds with one decimal, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}
