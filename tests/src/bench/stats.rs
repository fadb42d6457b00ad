//! Percentiles of one run's samples, and the median (with min–max) of runs.

use serde::Serialize;

/// The `p`th percentile (0–100) of `samples`, nearest-rank; `None` when empty.
#[must_use]
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A metric over several runs: the median, and the spread.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Median of the runs' values.
    pub median: f64,
    /// Smallest run value.
    pub min: f64,
    /// Largest run value.
    pub max: f64,
    /// One value per run, in run order.
    pub runs: Vec<f64>,
}

impl Summary {
    /// `None` when no run produced a finite value.
    #[must_use]
    pub fn of(runs: Vec<f64>) -> Option<Self> {
        let finite: Vec<f64> = runs.iter().copied().filter(|v| v.is_finite()).collect();
        let mut sorted = finite.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        if n == 0 {
            return None;
        }
        let median = if n % 2 == 1 { sorted[n / 2] } else { f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]) };
        Some(Self { median, min: sorted[0], max: sorted[n - 1], runs: finite })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn median_of_runs() {
        let s = Summary::of(vec![3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Summary::of(vec![4.0, 1.0]).expect("values");
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(vec![f64::NAN]).is_none());
    }
}
