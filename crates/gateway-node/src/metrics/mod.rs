//! Prometheus metrics (SPEC section 10). Every listed metric is registered at start, so it is
//! exported at 0 before anything happens. Values the router already counts are read at scrape
//! time by a collector instead of being counted twice.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use room_router::{Deliveries, Router};

/// `wsgate_connections_active`.
pub const CONNECTIONS_ACTIVE: &str = "wsgate_connections_active";
/// `wsgate_connections_total` (the `_total` suffix is added by the encoder).
pub const CONNECTIONS: &str = "wsgate_connections";
/// `wsgate_messages_in_total`.
pub const MESSAGES_IN: &str = "wsgate_messages_in";
/// `wsgate_messages_delivered_total`.
pub const MESSAGES_DELIVERED: &str = "wsgate_messages_delivered";
/// `wsgate_publish_to_delivery_seconds`.
pub const PUBLISH_TO_DELIVERY: &str = "wsgate_publish_to_delivery_seconds";
/// `wsgate_slow_consumer_closes_total`.
pub const SLOW_CONSUMER_CLOSES: &str = "wsgate_slow_consumer_closes";
/// `wsgate_auth_failures_total{reason}`.
pub const AUTH_FAILURES: &str = "wsgate_auth_failures";
/// `wsgate_redis_up`.
pub const REDIS_UP: &str = "wsgate_redis_up";
/// `wsgate_rooms_active`.
pub const ROOMS_ACTIVE: &str = "wsgate_rooms_active";
/// `wsgate_proxy_sessions_active`.
pub const PROXY_SESSIONS_ACTIVE: &str = "wsgate_proxy_sessions_active";

/// `wsgate_bus_malformed_envelopes_total` (wsgate's addition to SPEC section 10).
pub const BUS_MALFORMED: &str = "wsgate_bus_malformed_envelopes";
/// `wsgate_bus_dropped_total` (wsgate's addition to SPEC section 10).
pub const BUS_DROPPED: &str = "wsgate_bus_dropped";

/// Reasons of `wsgate_auth_failures_total`.
pub const AUTH_REASONS: [&str; 3] = ["missing", "invalid", "expired"];

type Labels = Vec<(&'static str, &'static str)>;

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// Open client connections.
    pub connections_active: Gauge,
    /// Connections ever accepted.
    pub connections: Counter,
    /// Client messages received.
    pub messages_in: Counter,
    /// Room and direct messages written to clients.
    /// Deliveries: `wsgate_messages_delivered_total` and the latency histogram.
    pub deliveries: Arc<DeliveryMetrics>,
    /// Refused handshakes by reason.
    auth_failures: Family<Labels, Counter>,
    /// Proxied sessions.
    pub proxy_sessions_active: Gauge,
}

mod histogram;

pub use histogram::AtomicHistogram;

/// Deliveries, counted once per fan-out (room-router's [`Deliveries`]).
#[derive(Debug)]
pub struct DeliveryMetrics {
    /// `wsgate_messages_delivered_total`.
    pub count: Counter,
    /// `wsgate_publish_to_delivery_seconds`: 100 µs to ~6.5 s, doubling, which covers
    /// loopback through cross-region.
    pub latency: AtomicHistogram,
}

impl DeliveryMetrics {
    /// Both at zero.
    pub fn new() -> Arc<DeliveryMetrics> {
        Arc::new(DeliveryMetrics {
            count: Counter::default(),
            latency: AtomicHistogram::exponential(0.0001, 2.0, 17),
        })
    }
}

impl Deliveries for DeliveryMetrics {
    fn delivered(&self, n: u64, since: std::time::Instant) {
        if n > 0 {
            self.count.inc_by(n);
            self.latency.observe_n(since.elapsed().as_secs_f64(), n);
        }
    }
}

/// The registry holds metrics by value; this shares the histogram with the router.
#[derive(Debug)]
struct SharedHistogram(Arc<DeliveryMetrics>);

impl prometheus_client::metrics::TypedMetric for SharedHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for SharedHistogram {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), fmt::Error> {
        self.0.latency.encode(encoder)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

impl Metrics {
    /// Registers every metric; the router's counters are read at scrape time.
    pub fn new(router: Arc<Router>, deliveries: Arc<DeliveryMetrics>) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let connections_active = Gauge::default();
        let connections = Counter::default();
        let messages_in = Counter::default();
        let auth_failures = Family::<Labels, Counter>::default();
        for reason in AUTH_REASONS {
            let _ = auth_failures.get_or_create(&vec![("reason", reason)]);
        }
        let proxy_sessions_active = Gauge::default();
        registry.register(
            CONNECTIONS_ACTIVE,
            "Open client connections",
            connections_active.clone(),
        );
        registry.register(
            CONNECTIONS,
            "Client connections accepted",
            connections.clone(),
        );
        registry.register(MESSAGES_IN, "Client messages received", messages_in.clone());
        registry.register(
            MESSAGES_DELIVERED,
            "Room and direct messages written to clients",
            deliveries.count.clone(),
        );
        registry.register(
            PUBLISH_TO_DELIVERY,
            "Time from a message entering the node to its write to a client socket",
            SharedHistogram(deliveries.clone()),
        );
        registry.register(
            AUTH_FAILURES,
            "Refused handshakes by reason",
            auth_failures.clone(),
        );
        registry.register(
            PROXY_SESSIONS_ACTIVE,
            "Open reverse-proxied sessions",
            proxy_sessions_active.clone(),
        );
        registry.register_collector(Box::new(RouterCollector(router)));
        Arc::new(Metrics {
            registry,
            connections_active,
            connections,
            messages_in,
            deliveries,
            auth_failures,
            proxy_sessions_active,
        })
    }

    /// Counts a refused handshake.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Reads the router's own counters at scrape time.
struct RouterCollector(Arc<Router>);

impl fmt::Debug for RouterCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RouterCollector")
    }
}

impl Collector for RouterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let router = &self.0;
        let slow = router.stats().slow_consumer_closes.load(Ordering::Relaxed);
        let counter = ConstCounter::new(slow);
        counter.encode(encoder.encode_descriptor(
            SLOW_CONSUMER_CLOSES,
            "Connections closed with 1013 because their outbound queue was full",
            None,
            MetricType::Counter,
        )?)?;
        let up = ConstGauge::new(i64::from(router.bus().is_up()));
        up.encode(encoder.encode_descriptor(
            REDIS_UP,
            "1 when the cluster bus is connected (always 1 in embedded mode)",
            None,
            MetricType::Gauge,
        )?)?;
        let bus = router.bus().stats();
        ConstCounter::new(bus.malformed).encode(encoder.encode_descriptor(
            BUS_MALFORMED,
            "Envelopes from other nodes that could not be decoded and were dropped",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(bus.dropped).encode(encoder.encode_descriptor(
            BUS_DROPPED,
            "Envelopes lost between this node and Redis: not sent (Redis down, queue full) or not read in time",
            None,
            MetricType::Counter,
        )?)?;
        let rooms = ConstGauge::new(router.room_count() as i64);
        rooms.encode(encoder.encode_descriptor(
            ROOMS_ACTIVE,
            "Rooms with members on this node",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}
