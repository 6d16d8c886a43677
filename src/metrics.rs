//! Setup outcome metrics through OpenTelemetry's OTLP/HTTP exporter (protobuf).
//!
//! Two counters, each incremented once per setup run:
//! - `userwall.setup.success`, attributes `backend`, `rule_count`, `mode`;
//! - `userwall.setup.failure`, attributes `backend`, `error_code`.
//!
//! No account name or uid is ever an attribute: metrics leave the machine. Sending only happens
//! when analytics are on *and* an endpoint is configured, explicitly or through the standard
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` variables; the
//! exporter's built-in default endpoint is never used. A failure to send is reported in the
//! setup report and never changes setup's outcome.

use crate::setup::SetupReport;
use opentelemetry::metrics::MeterProvider;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{
    WithExportConfig, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use std::time::Duration;

/// Whether and where to send metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// The host's analytics switch (`--analytics`).
    pub enabled: bool,
    /// The full OTLP/HTTP metrics URL (`.../v1/metrics`); `None` reads the standard variables.
    pub endpoint: Option<String>,
}

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The success counter's name.
pub const SUCCESS: &str = "userwall.setup.success";
/// The failure counter's name.
pub const FAILURE: &str = "userwall.setup.failure";

fn env_endpoint_configured() -> bool {
    [
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
        OTEL_EXPORTER_OTLP_ENDPOINT,
    ]
    .iter()
    .any(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()))
}

/// The counter and attributes a report yields.
pub fn measurement(report: &SetupReport) -> (&'static str, Vec<KeyValue>) {
    let backend = KeyValue::new("backend", crate::setup::BACKEND);
    match &report.failure {
        None => (
            SUCCESS,
            vec![
                backend,
                KeyValue::new("rule_count", report.rule_count as i64),
                KeyValue::new("mode", report.mode.name()),
            ],
        ),
        Some(f) => (
            FAILURE,
            vec![backend, KeyValue::new("error_code", f.error_code.as_str())],
        ),
    }
}

/// The URL to post to: the given one, or, when it names only a host (no path or `/`), that host's
/// standard OTLP/HTTP metrics path, `/v1/metrics`.
pub fn metrics_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(trimmed);
    if after_scheme.contains('/') {
        endpoint.to_string()
    } else {
        format!("{trimmed}/v1/metrics")
    }
}

/// Sends the report's counter. Returns `off ...`, `sent` or `failed: ...`; never panics.
pub fn emit(settings: &MetricsSettings, report: &SetupReport) -> String {
    if !settings.enabled {
        return "off".into();
    }
    let endpoint = settings
        .endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    if endpoint.is_none() && !env_endpoint_configured() {
        return format!("off: analytics on but no endpoint (set {OTEL_EXPORTER_OTLP_METRICS_ENDPOINT} or {OTEL_EXPORTER_OTLP_ENDPOINT}, or pass --otlp-endpoint)");
    }
    let run = std::panic::catch_unwind(|| send(settings, report));
    match run {
        Ok(Ok(())) => "sent".into(),
        Ok(Err(e)) => format!("failed: {e}"),
        Err(_) => "failed: the exporter panicked".into(),
    }
}

fn send(settings: &MetricsSettings, report: &SetupReport) -> Result<(), String> {
    let mut builder = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_timeout(EXPORT_TIMEOUT);
    if let Some(endpoint) = settings
        .endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        builder = builder.with_endpoint(metrics_url(endpoint));
    }
    let exporter = builder
        .build()
        .map_err(|e| format!("building the OTLP exporter: {e}"))?;
    // A long interval: the one export we want happens at shutdown, not on a timer.
    let reader = PeriodicReader::builder(exporter)
        .with_interval(Duration::from_secs(3600))
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("userwall")
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    let meter = provider.meter("userwall");
    let (name, attributes) = measurement(report);
    meter.u64_counter(name).build().add(1, &attributes);
    // Shutdown collects and exports once; a flush before it would export the (cumulative)
    // counter a second time.
    provider.shutdown().map_err(|e| format!("exporting: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_host_gets_the_standard_metrics_path() {
        assert_eq!(
            metrics_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/metrics"
        );
        assert_eq!(
            metrics_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/metrics"
        );
        assert_eq!(
            metrics_url("http://h:1/custom/path"),
            "http://h:1/custom/path"
        );
        assert_eq!(
            metrics_url("http://h:1/v1/metrics"),
            "http://h:1/v1/metrics"
        );
    }
}
