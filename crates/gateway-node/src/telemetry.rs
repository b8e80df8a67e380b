//! Logs and traces (SPEC section 12). `RUST_LOG` filters the log (default `info`);
//! `telemetry.log_format` picks text or JSON. With `telemetry.otlp_endpoint` set, the node's
//! spans are exported over OTLP/HTTP with JSON bodies to that collector, whatever `RUST_LOG`
//! says: a `connection` span per connection, a `publish` span per publish whose W3C trace
//! context rides the bus envelope to the other nodes, a `deliver` span per node that fans a
//! traced message out (a child of the publish), and an `integration` span per call whose
//! context goes to the backend in `traceparent`. Without an endpoint none of these spans is
//! made. Tokens never reach a log line or a span: the node records no request URI, header or
//! claim set.

use std::collections::HashMap;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{LogFormat, TelemetryConfig};

/// What was installed; [`Telemetry::shutdown`] exports the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter. Call once, before the process exits.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "exporting the last spans failed");
            }
        }
    }
}

/// The OTLP/HTTP traces URL of a collector: its base URL (`http://collector:4318`) with
/// `/v1/traces`, unless the URL names that path already.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Installs the global subscriber, and the OTLP exporter when configured. Call once, from
/// `main`, before the runtime starts (the exporter has a thread of its own).
pub fn init(config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let log = match config.log_format {
        LogFormat::Text => log.boxed(),
        LogFormat::Json => log.json().flatten_event(true).boxed(),
    }
    .with_filter(filter);
    let (traces, provider) = if config.otlp_endpoint.is_empty() {
        (None, None)
    } else {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(traces_url(&config.otlp_endpoint))
            .build()
            .context("telemetry.otlp_endpoint")?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        // The node's own spans, at info and above, whatever the log shows.
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("wsgate"))
            .with_filter(
                Targets::new()
                    .with_target("gateway_node", LevelFilter::INFO)
                    .with_target("room_router", LevelFilter::INFO),
            );
        (Some(layer), Some(provider))
    };
    tracing_subscriber::registry()
        .with(log)
        .with(traces)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(Telemetry { provider })
}

/// The W3C trace context headers (`traceparent`, `tracestate`) of `span`, for a call made in
/// it; none when traces are off.
pub fn trace_headers(span: &tracing::Span) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier
}

/// The W3C `traceparent` of `span`, for an envelope; `None` when traces are off.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    trace_headers(span).remove("traceparent")
}

/// Records deliveries of traced room messages as `deliver` spans in the publisher's trace.
#[derive(Debug)]
pub struct DeliverySpans;

impl room_router::DeliveryTrace for DeliverySpans {
    fn delivered(&self, room: &protocol::RoomName, traceparent: &str, members: usize) {
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
        let span = tracing::info_span!(
            parent: None,
            "deliver",
            otel.kind = "consumer",
            room = %room,
            members = members as i64,
        );
        // A malformed traceparent from another node leaves the span a root of its own.
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_urls_get_the_traces_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn no_trace_context_without_an_exporter() {
        let span = tracing::info_span!("integration");
        assert!(trace_headers(&span).is_empty());
    }
}
