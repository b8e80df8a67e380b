//! Deliveries and their latency per second of arrival: what a run's plot shows over time, and
//! (merged) its overall latency histogram.
//!
//! Workers record into their own timeline and send it with their final counts; the parent
//! merges them by wall-clock second, so every worker's second lines up.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::worker::{histogram, merge, pairs};

/// One second of a timeline as a worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Second {
    /// Unix time, whole seconds.
    pub at: u64,
    /// Deliveries that arrived in this second.
    pub count: u64,
    /// Their latency (µs) as [value, count] pairs.
    pub latency_us: Vec<(u64, u64)>,
}

/// Deliveries per arrival second, each second with its latency histogram.
#[derive(Debug, Default)]
pub struct Timeline {
    /// The unix second of `seconds[0]`.
    first: u64,
    seconds: Vec<(u64, Histogram<u64>)>,
}

impl Timeline {
    /// Records a delivery arriving at `now_ns` (ns since the epoch) `latency_us` after it
    /// was due.
    pub fn record(&mut self, now_ns: u64, latency_us: u64) {
        let at = now_ns / 1_000_000_000;
        let slot = self.slot(at);
        slot.0 += 1;
        slot.1.saturating_record(latency_us.max(1));
    }

    /// The bucket of unix second `at`, made (with any before it) when missing.
    fn slot(&mut self, at: u64) -> &mut (u64, Histogram<u64>) {
        if self.seconds.is_empty() {
            self.first = at;
        }
        if at < self.first {
            // A clock step backwards: earlier seconds are made in front.
            let missing = (self.first - at) as usize;
            self.seconds
                .splice(0..0, (0..missing).map(|_| (0, histogram())));
            self.first = at;
        }
        let i = (at - self.first) as usize;
        while self.seconds.len() <= i {
            self.seconds.push((0, histogram()));
        }
        &mut self.seconds[i]
    }

    /// Seconds from the first with deliveries to the last, both counted.
    pub fn span_secs(&self) -> usize {
        self.seconds.len()
    }

    /// Every second's latency merged: the run's latency histogram.
    pub fn total(&self) -> Histogram<u64> {
        let mut all = histogram();
        for (_, h) in &self.seconds {
            // Same bounds, so adding cannot fail.
            let _ = all.add(h);
        }
        all
    }

    /// The seconds with deliveries, for a worker's report.
    pub fn to_seconds(&self) -> Vec<Second> {
        self.seconds
            .iter()
            .enumerate()
            .filter(|(_, (c, _))| *c > 0)
            .map(|(i, (count, h))| Second {
                at: self.first + i as u64,
                count: *count,
                latency_us: pairs(h),
            })
            .collect()
    }

    /// Adds a worker's reported seconds.
    pub fn merge(&mut self, seconds: &[Second]) {
        for s in seconds {
            let slot = self.slot(s.at);
            slot.0 += s.count;
            merge(&mut slot.1, &s.latency_us);
        }
    }

    /// Points for a plot: (seconds since the first, deliveries, p50, p99, max in ms) per
    /// second from the first to the last with deliveries (seconds without any are zeros).
    pub fn points(&self) -> Vec<Point> {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        self.seconds
            .iter()
            .enumerate()
            .map(|(i, (count, h))| Point {
                second: i as u64,
                deliveries: *count,
                latency_ms: (*count > 0).then(|| [ms(h, 0.5), ms(h, 0.99), ms(h, 1.0)]),
            })
            .collect()
    }
}

/// One second of a plot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the first second with deliveries.
    pub second: u64,
    /// Deliveries in this second.
    pub deliveries: u64,
    /// p50, p99 and max latency (ms), when there were deliveries.
    pub latency_ms: Option<[f64; 3]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_merge_by_wall_clock_second() {
        let s = 1_000_000_000;
        let mut a = Timeline::default();
        a.record(100 * s + 1, 500);
        a.record(100 * s + 2, 1500);
        a.record(102 * s, 9000);
        let mut b = Timeline::default();
        // Another worker that started a second later and saw a step back.
        b.record(101 * s, 700);
        b.record(99 * s, 800);
        let mut all = Timeline::default();
        all.merge(&a.to_seconds());
        all.merge(&b.to_seconds());
        assert_eq!(all.total().len(), 5);
        let p = all.points();
        assert_eq!(
            p.iter().map(|p| p.deliveries).collect::<Vec<_>>(),
            vec![1, 2, 1, 1]
        );
        assert_eq!(p[0].second, 0);
        assert!(p[3].latency_ms.unwrap()[2] >= 8.9);
        // Empty seconds in between are not reported.
        let mut gap = Timeline::default();
        gap.record(10 * s, 1);
        gap.record(13 * s, 1);
        assert_eq!(gap.to_seconds().len(), 2);
        assert_eq!(gap.points().len(), 4);
        assert_eq!(gap.span_secs(), 4);
    }
}
