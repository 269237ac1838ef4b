//! Prometheus text exposition (format 0.0.4) for the daemons' `/metrics`, and a fixed-bucket
//! histogram cheap enough for hot paths. Names follow Prometheus conventions: base units in the
//! name (`_seconds`, `_bytes`), counters end in `_total`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The content type of an exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One sample: label pairs and a value.
pub type Sample<'a> = (Vec<(&'a str, String)>, f64);

/// Builds one exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&mut self, name: &str, help: &str, kind: &str, samples: &[Sample<'_>]) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (l, v) in samples {
            let _ = writeln!(self.out, "{name}{} {v}", labels(l));
        }
    }

    /// A counter family (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, samples: &[Sample<'_>]) -> &mut Self {
        debug_assert!(name.ends_with("_total"), "{name}");
        self.family(name, help, "counter", samples);
        self
    }

    /// A gauge family.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[Sample<'_>]) -> &mut Self {
        self.family(name, help, "gauge", samples);
        self
    }

    /// A histogram.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(self.out, "{name}_sum {sum}");
        let _ = writeln!(self.out, "{name}_count {count}");
        self
    }

    /// The text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.out)
    }
}

/// A histogram with fixed upper bounds; `observe` is lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (ascending).
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Latency buckets from 0.5 ms to 5 s, in seconds.
    pub fn latency_seconds() -> Self {
        Self::new(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ])
    }

    /// Records one value.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_prometheus_text() {
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(0.005);
        h.observe(0.05);
        h.observe(3.0);
        let text = Exposition::new()
            .counter(
                "x_requests_total",
                "Requests.",
                &[(vec![("reason", "a\"b".into())], 2.0)],
            )
            .histogram("x_latency_seconds", "Latency.", &h)
            .finish();
        assert!(
            text.contains("x_requests_total{reason=\"a\\\"b\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_latency_seconds_bucket{le=\"0.1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("x_latency_seconds_count 3\n"), "{text}");
    }
}
