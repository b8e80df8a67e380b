//! A histogram that takes many observations at once without a lock.
//!
//! prometheus-client's `Histogram` takes a write lock per observation. Delivery latency is
//! observed for every recipient of every fan-out, from every runtime thread: thousands of
//! lock round trips per publish on one shared lock. Here a fan-out records all the frames it
//! wrote in one call (same entry time, same moment), as a few atomic additions.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A Prometheus histogram of seconds with fixed bucket bounds and atomic counts.
#[derive(Debug)]
pub struct AtomicHistogram {
    /// Upper bounds, ascending; the last bucket (+Inf) has none.
    bounds: Vec<f64>,
    /// One count per bound, plus +Inf.
    counts: Vec<AtomicU64>,
    /// Sum of the observations, in nanoseconds (u64 nanoseconds overflow after 584 years of
    /// summed latency).
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl AtomicHistogram {
    /// Buckets `start`, `start × factor`, ... (`len` bounds).
    pub fn exponential(start: f64, factor: f64, len: u16) -> Self {
        let bounds: Vec<f64> = (0..len).map(|i| start * factor.powi(i.into())).collect();
        AtomicHistogram {
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds,
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records `n` observations of `seconds`.
    pub fn observe_n(&self, seconds: f64, n: u64) {
        if n == 0 {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < seconds);
        self.counts[i].fetch_add(n, Ordering::Relaxed);
        let nanos = (seconds.max(0.0) * 1e9) as u64;
        self.sum_nanos
            .fetch_add(nanos.saturating_mul(n), Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // prometheus-client writes the last bound `f64::MAX` as `+Inf`.
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(&self.counts)
            .map(|(b, c)| (b, c.load(Ordering::Relaxed)))
            .collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn batches_land_in_their_bucket_and_encode_cumulatively() {
        let h = std::sync::Arc::new(AtomicHistogram::exponential(0.001, 10.0, 3));
        h.observe_n(0.0005, 3); // le 0.001
        h.observe_n(0.05, 2); // le 0.1
        h.observe_n(7.0, 1); // +Inf
        h.observe_n(0.5, 0); // nothing
        let mut registry = Registry::default();
        registry.register("lat_seconds", "latency", ArcMetric(h.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "lat_seconds_count 6",
            "lat_seconds_bucket{le=\"0.001\"} 3",
            "lat_seconds_bucket{le=\"0.01\"} 3",
            "lat_seconds_bucket{le=\"0.1\"} 5",
            "lat_seconds_bucket{le=\"+Inf\"} 6",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("lat_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - (0.0015 + 0.1 + 7.0)).abs() < 1e-6, "{sum}");
    }

    #[derive(Debug)]
    struct ArcMetric(std::sync::Arc<AtomicHistogram>);
    impl TypedMetric for ArcMetric {
        const TYPE: MetricType = MetricType::Histogram;
    }
    impl EncodeMetric for ArcMetric {
        fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
            self.0.encode(encoder)
        }
        fn metric_type(&self) -> MetricType {
            Self::TYPE
        }
    }
}
