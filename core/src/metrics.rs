//! Process-wide metrics, rendered in the Prometheus text exposition format
//! (version 0.0.4) by the admin endpoint's `GET /metrics`.
//!
//! Every metric is a static in [`METRICS`]; instrumented code calls one
//! method (`METRICS.messages.inc(&["accepted"])`). Label values come from
//! configuration (listener and plugin names) or from small fixed sets, never
//! from clients, so the number of series stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

/// Upper bounds (seconds) of the hook latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Every metric sluice exports.
pub struct Metrics {
    pub node_info: GaugeVec,
    pub connections_open: GaugeVec,
    pub connections: CounterVec,
    pub connections_refused: CounterVec,
    pub pregreet_drops: CounterVec,
    pub session_timeouts: CounterVec,
    pub session_panics: CounterVec,
    pub messages: CounterVec,
    pub message_bytes: CounterVec,
    pub verdicts: CounterVec,
    pub hook_seconds: HistogramVec,
    pub plugin_faults: CounterVec,
    pub shadow_verdicts: CounterVec,
    pub plugin_instances: CounterVec,
    pub plugin_instance_reuses: CounterVec,
    pub plugin_loads: CounterVec,
    pub milter_round_trips: CounterVec,
    pub reloads: CounterVec,
    pub delivery_attempts: CounterVec,
    pub quarantine_expired: CounterVec,
    pub tls_handshakes: CounterVec,
    pub auth_attempts: CounterVec,
    pub auth_verifications: CounterVec,
    pub auth_lockout_fallbacks: CounterVec,
    pub state_errors: CounterVec,
    pub admin_refused: CounterVec,
    pub dmarc_reports: CounterVec,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    Metrics {
    node_info: GaugeVec::new(
        "sluice_node_info",
        "Always 1; its label is [server] node_name, to tell the nodes sharing one [state] apart.",
        &["node"],
    ),
    connections_open: GaugeVec::new(
        "sluice_connections_open",
        "SMTP connections open now.",
        &["listener"],
    ),
    connections: CounterVec::new(
        "sluice_connections_total",
        "SMTP connections accepted.",
        &["listener"],
    ),
    connections_refused: CounterVec::new(
        "sluice_connections_refused_total",
        "SMTP connections refused by the global or per-IP cap.",
        &["listener"],
    ),
    pregreet_drops: CounterVec::new(
        "sluice_pregreet_drops_total",
        "SMTP clients that talked before the greeting and were dropped with 554.",
        &["listener"],
    ),
    session_timeouts: CounterVec::new(
        "sluice_session_timeouts_total",
        "SMTP sessions closed because the client stalled, by phase: command (idle), data (DATA too slow), write (replies not read), tls_handshake.",
        &["listener", "phase"],
    ),
    session_panics: CounterVec::new(
        "sluice_session_panics_total",
        "SMTP session tasks that panicked (a bug: the connection was dropped, nothing it was not told 250 for was kept).",
        &[],
    ),
    messages: CounterVec::new(
        "sluice_messages_total",
        "Messages received at DATA, by outcome: accepted, rejected, tempfailed, discarded, quarantined.",
        &["outcome"],
    ),
    message_bytes: CounterVec::new(
        "sluice_message_bytes_total",
        "Octets of messages received at DATA, by outcome.",
        &["outcome"],
    ),
    verdicts: CounterVec::new(
        "sluice_plugin_verdicts_total",
        "Verdicts returned by plugins.",
        &["stage", "plugin", "verdict"],
    ),
    hook_seconds: HistogramVec::new(
        "sluice_plugin_hook_duration_seconds",
        "Time a plugin's hook took, host calls included.",
        &["stage", "plugin"],
    ),
    plugin_faults: CounterVec::new(
        "sluice_plugin_faults_total",
        "Plugin hooks that failed (trap, timeout, memory, init) and got their on_error policy.",
        &["plugin", "kind"],
    ),
    plugin_instances: CounterVec::new(
        "sluice_plugin_instances_total",
        "Plugin instances created (instantiate + init): one per session per plugin, or only when none is idle with instances = \"pooled\" or \"reused\".",
        &["plugin"],
    ),
    plugin_instance_reuses: CounterVec::new(
        "sluice_plugin_instance_reuses_total",
        "Sessions that got an idle plugin instance kept from an earlier session (instances = \"pooled\" or \"reused\") instead of a new one.",
        &["plugin"],
    ),
    milter_round_trips: CounterVec::new(
        "sluice_milter_round_trips_total",
        "Commands a milter element sent and waited for an answer to (negotiation included).",
        &["plugin"],
    ),
    plugin_loads: CounterVec::new(
        "sluice_plugin_loads_total",
        "Plugin components loaded at start or reload, by where the machine code came from: hit (the compiled-component cache), stored (compiled, then cached), compiled (no cache).",
        &["plugin", "cache"],
    ),
    shadow_verdicts: CounterVec::new(
        "sluice_plugin_shadow_verdicts_total",
        "Verdicts of plugins in shadow mode: logged and counted, not applied.",
        &["stage", "plugin", "verdict"],
    ),
    reloads: CounterVec::new(
        "sluice_reloads_total",
        "Pipeline reloads by result: ok, failed (the previous pipelines kept serving).",
        &["result"],
    ),
    delivery_attempts: CounterVec::new(
        "sluice_delivery_attempts_total",
        "Per-recipient delivery attempts by result: delivered, deferred, failed (final, DSN sent when there is a reverse-path).",
        &["result"],
    ),
    quarantine_expired: CounterVec::new(
        "sluice_quarantine_expired_total",
        "Quarantined messages removed because they outlived [queue] quarantine_retention.",
        &[],
    ),
    tls_handshakes: CounterVec::new(
        "sluice_tls_handshakes_total",
        "Inbound TLS handshakes by result and protocol version.",
        &["result", "version"],
    ),
    auth_attempts: CounterVec::new(
        "sluice_auth_attempts_total",
        "SMTP AUTH attempts by outcome: success, failure, locked_out.",
        &["outcome"],
    ),
    auth_verifications: CounterVec::new(
        "sluice_auth_verifications_total",
        "SMTP AUTH passwords checked (argon2 run); attempts refused by the lockout are not checked.",
        &[],
    ),
    auth_lockout_fallbacks: CounterVec::new(
        "sluice_auth_lockout_fallbacks_total",
        "SMTP AUTH attempts whose lockout was counted on this node alone because the shared Redis state could not be reached.",
        &[],
    ),
    state_errors: CounterVec::new(
        "sluice_state_errors_total",
        "Plugin kv calls that failed or found no answer in time (Redis unreachable, a sled error); the plugin got the error and decided.",
        &["plugin"],
    ),
    admin_refused: CounterVec::new(
        "sluice_admin_requests_refused_total",
        "Admin API requests over TCP refused, by reason: origin, host (403), missing_token, wrong_token (401), no_token_configured (403).",
        &["reason"],
    ),
    dmarc_reports: CounterVec::new(
        "sluice_dmarc_reports_total",
        "DMARC aggregate reports by outcome: queued (one per destination), unverified_destination (RFC 7489 §7.1), too_large (the destination's size limit), error (counting, writing or queuing failed; logged).",
        &["outcome"],
    ),
}
});

impl Metrics {
    /// Every metric in the text exposition format, followed by `extra`
    /// (gauges computed at scrape time, already rendered).
    pub fn render(&self, extra: &[Gauge]) -> String {
        let mut out = String::new();
        self.node_info.render(&mut out);
        self.connections_open.render(&mut out);
        for counter in [
            &self.connections,
            &self.connections_refused,
            &self.pregreet_drops,
            &self.session_timeouts,
            &self.session_panics,
            &self.messages,
            &self.message_bytes,
            &self.verdicts,
            &self.plugin_faults,
            &self.shadow_verdicts,
            &self.plugin_instances,
            &self.plugin_instance_reuses,
            &self.plugin_loads,
            &self.milter_round_trips,
            &self.reloads,
            &self.delivery_attempts,
            &self.quarantine_expired,
            &self.tls_handshakes,
            &self.auth_attempts,
            &self.auth_verifications,
            &self.auth_lockout_fallbacks,
            &self.state_errors,
            &self.admin_refused,
            &self.dmarc_reports,
        ] {
            counter.render(&mut out);
        }
        self.hook_seconds.render(&mut out);
        for gauge in extra {
            gauge.render(&mut out);
        }
        out
    }
}

/// A metric family's locked series; a panic elsewhere cannot leave a map
/// of numbers inconsistent, so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn key(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|l| (*l).to_owned()).collect()
}

/// `{a="x",b="y"}` with values escaped as the format requires.
fn label_set(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect();
    if let Some((name, value)) = extra {
        pairs.push(format!("{name}=\"{value}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A counter family with labels.
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        CounterVec {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1);
    }

    pub fn add(&self, labels: &[&str], n: u64) {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        *lock(&self.series).entry(key(labels)).or_default() += n;
    }

    /// The current value of one series (0 when it was never incremented).
    pub fn get(&self, labels: &[&str]) -> u64 {
        lock(&self.series).get(&key(labels)).copied().unwrap_or(0)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        for (values, n) in lock(&self.series).iter() {
            let labels = label_set(self.labels, values, None);
            let _ = writeln!(out, "{}{labels} {n}", self.name);
        }
    }
}

/// A gauge family with labels, moved up and down by the code it measures.
pub struct GaugeVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, i64>>,
}

impl GaugeVec {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        GaugeVec {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, labels: &[&str]) {
        *lock(&self.series).entry(key(labels)).or_default() += 1;
    }

    pub fn dec(&self, labels: &[&str]) {
        *lock(&self.series).entry(key(labels)).or_default() -= 1;
    }

    pub fn set(&self, labels: &[&str], value: i64) {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        lock(&self.series).insert(key(labels), value);
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        for (values, n) in lock(&self.series).iter() {
            let labels = label_set(self.labels, values, None);
            let _ = writeln!(out, "{}{labels} {n}", self.name);
        }
    }
}

/// A gauge without labels whose value is computed at scrape time.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub value: f64,
}

impl Gauge {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        let _ = writeln!(out, "{} {}", self.name, self.value);
    }
}

#[derive(Default)]
struct Histogram {
    /// Per bucket (not cumulative; summed when rendered).
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// A histogram family with labels and the fixed latency buckets.
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, Histogram>>,
}

impl HistogramVec {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        HistogramVec {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, labels: &[&str], elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut series = lock(&self.series);
        let histogram = series.entry(key(labels)).or_default();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            histogram.buckets[i] += 1;
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        for (values, h) in lock(&self.series).iter() {
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                let labels = label_set(self.labels, values, Some(("le", &bound.to_string())));
                let _ = writeln!(out, "{}_bucket{labels} {cumulative}", self.name);
            }
            let labels = label_set(self.labels, values, Some(("le", "+Inf")));
            let _ = writeln!(out, "{}_bucket{labels} {}", self.name, h.count);
            let labels = label_set(self.labels, values, None);
            let _ = writeln!(out, "{}_sum{labels} {}", self.name, h.sum);
            let _ = writeln!(out, "{}_count{labels} {}", self.name, h.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_escaped_labels() {
        let c = CounterVec::new("t_total", "Test.", &["plugin"]);
        c.inc(&["a\"b"]);
        c.add(&["a\"b"], 2);
        c.inc(&["z"]);
        let mut out = String::new();
        c.render(&mut out);
        assert_eq!(
            out,
            "# HELP t_total Test.\n# TYPE t_total counter\nt_total{plugin=\"a\\\"b\"} 3\nt_total{plugin=\"z\"} 1\n"
        );
        assert_eq!(c.get(&["z"]), 1);
        assert_eq!(c.get(&["none"]), 0);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = HistogramVec::new("t_seconds", "Test.", &["stage"]);
        h.observe(&["rcpt"], Duration::from_micros(40));
        h.observe(&["rcpt"], Duration::from_millis(3));
        h.observe(&["rcpt"], Duration::from_secs(5));
        let mut out = String::new();
        h.render(&mut out);
        assert!(
            out.contains("t_seconds_bucket{stage=\"rcpt\",le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{stage=\"rcpt\",le=\"0.005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{stage=\"rcpt\",le=\"1\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{stage=\"rcpt\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("t_seconds_count{stage=\"rcpt\"} 3\n"), "{out}");
    }
}
