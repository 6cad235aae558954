//! `/metrics`: Prometheus text format. Counters kept in memory since the server started;
//! the store's size and path count read from the index when scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub narinfo_hits: AtomicU64,
    pub narinfo_misses: AtomicU64,
    pub upstream_declined: AtomicU64,
    pub client_waits: AtomicU64,
    pub gc_runs: AtomicU64,
    pub gc_failures: AtomicU64,
    pub gc_removed_paths: AtomicU64,
    pub gc_unlinked_nars: AtomicU64,
    pub gc_freed_bytes: AtomicU64,
    pub gc_last_millis: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Connections closed at once because their client had max-connections-per-client open.
    pub connections_refused: AtomicU64,
    /// Connections closed for missing a deadline: headers too slow, idle too long. Shared with
    /// the watchdog, which must not hold the server's state (it may be dropped on an async
    /// thread, and the index may not).
    pub deadline_closures: std::sync::Arc<AtomicU64>,
    /// Requests refused because of a limit (413, 408): decoder memory, NAR size, time, idle.
    pub refused_by_limit: AtomicU64,
}

/// The route a request path belongs to, as a label with few values.
pub fn route_of(path: &str) -> &'static str {
    let item = path.trim_start_matches('/').split_once('/').map_or("", |(_, rest)| rest);
    match path {
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        "/" | "/api/v1/status" => "status",
        "/api/v1/canary/runs" => "canary",
        _ if item == "nix-cache-info" => "nix-cache-info",
        _ if item.ends_with(".narinfo") => "narinfo",
        _ if item.starts_with("nar/") => "nar",
        _ if item.ends_with(".ls") => "ls",
        _ if item.starts_with("log/") => "log",
        _ if item.starts_with("api/") => "api",
        _ => "other",
    }
}

impl Metrics {
    pub fn request(&self, route: &'static str, method: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, method.to_string(), status)).or_default() += 1;
        }
    }

    pub fn render(&self, paths: u64, memberships: u64, stored_bytes: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP flywheel_cache_requests_total HTTP requests by route, method and status.");
        let _ = writeln!(out, "# TYPE flywheel_cache_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((route, method, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "flywheel_cache_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "flywheel_cache_received_bytes_total",
            "Bytes of uploads received.",
            self.bytes_in.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "flywheel_cache_sent_bytes_total",
            "Bytes of narinfos and NARs sent.",
            self.bytes_out.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "flywheel_cache_narinfo_hits_total",
            "narinfo requests answered 200.",
            self.narinfo_hits.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "flywheel_cache_narinfo_misses_total",
            "narinfo requests answered 404.",
            self.narinfo_misses.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "flywheel_cache_upstream_declined_total",
            "narinfo uploads declined because an upstream key signed the path.",
            self.upstream_declined.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "flywheel_cache_client_waits_total",
            "Requests that waited because their client had max-requests-per-client in progress.",
            self.client_waits.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "flywheel_cache_connections_refused_total",
            "Connections closed at once: their client had max-connections-per-client open.",
            self.connections_refused.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "flywheel_cache_deadline_closures_total",
            "Connections closed for missing a deadline: a request's headers (header-timeout), or idle between requests (idle-timeout).",
            self.deadline_closures.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "flywheel_cache_limit_refusals_total",
            "Requests answered 408 or 413: a body too large or too slow, a NAR over a decoding limit.",
            self.refused_by_limit.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "flywheel_cache_connections",
            "Connections open now.",
            self.connections.load(Ordering::Relaxed),
        );
        for (name, help, v) in [
            ("flywheel_cache_gc_runs_total", "Garbage collections the server ran.", &self.gc_runs),
            ("flywheel_cache_gc_failures_total", "Garbage collections that failed.", &self.gc_failures),
            ("flywheel_cache_gc_removed_paths_total", "(cache, path) memberships GC removed.", &self.gc_removed_paths),
            (
                "flywheel_cache_gc_unlinked_nars_total",
                "NAR files GC unlinked (dead and orphan).",
                &self.gc_unlinked_nars,
            ),
            ("flywheel_cache_gc_freed_bytes_total", "Bytes of NAR files GC unlinked.", &self.gc_freed_bytes),
        ] {
            counter(&mut out, name, help, v.load(Ordering::Relaxed));
        }
        gauge(
            &mut out,
            "flywheel_cache_gc_last_duration_milliseconds",
            "How long the last garbage collection took.",
            self.gc_last_millis.load(Ordering::Relaxed),
        );
        gauge(&mut out, "flywheel_cache_paths", "Store paths the server holds.", paths);
        gauge(&mut out, "flywheel_cache_memberships", "(cache, path) pairs: paths summed over caches.", memberships);
        gauge(
            &mut out,
            "flywheel_cache_stored_bytes",
            "Bytes of stored (compressed) NARs the index knows.",
            stored_bytes,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_have_few_label_values() {
        assert_eq!(route_of("/main/nix-cache-info"), "nix-cache-info");
        assert_eq!(route_of("/main/0123.narinfo"), "narinfo");
        assert_eq!(route_of("/pr/nar/abc.nar.zst"), "nar");
        assert_eq!(route_of("/metrics"), "metrics");
        assert_eq!(route_of("/main/0123.ls"), "ls");
        assert_eq!(route_of("/main/log/0123-x.drv"), "log");
        assert_eq!(route_of("/anything/else"), "other");
    }
}
