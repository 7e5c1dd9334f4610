//! How a phase's statistics are printed: a detailed block after the phase and one line
//! in the closing summary.
use std::fmt::Write;

use hdrhistogram::Histogram;

use super::load::{Kind, Stats};

impl Stats {
    /// Same-shard throughput: successful transfers per second of the phase.
    pub fn tps(&self) -> f64 {
        self.per_second(self.ok)
    }

    pub fn local_line(&self) -> String {
        format!(
            "{:.1} TPS, p50 {}, p99 {}, p99.9 {} ({} ok, {} errors){}",
            self.tps(),
            ms(&self.request, 0.5),
            ms(&self.request, 0.99),
            ms(&self.request, 0.999),
            self.ok,
            self.error_count(),
            self.first_error()
        )
    }

    pub fn cross_line(&self) -> String {
        format!(
            "{:.1} completed/s, completion p50 {}, p99 {}, p99.9 {} ({} completed, {} cancelled, \
             {} unfinished after 30 s, {} errors); request (202) p50 {}, p99 {}{}",
            self.per_second(self.completed),
            ms(&self.completion, 0.5),
            ms(&self.completion, 0.99),
            ms(&self.completion, 0.999),
            self.completed,
            self.cancelled,
            self.unfinished,
            self.error_count(),
            ms(&self.request, 0.5),
            ms(&self.request, 0.99),
            self.first_error()
        )
    }

    /// The block printed when a phase ends.
    pub fn details(&self, kind: Kind) -> String {
        let mut out = format!(
            "requests {}, ok {}, errors {:?}\n{:.1} ok/s over {:.2} s\n",
            self.sent,
            self.ok,
            self.errors,
            self.tps(),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "request latency: {}", spread(&self.request));
        if let Kind::Cross = kind {
            let _ = writeln!(
                out,
                "completed {} ({:.1}/s), cancelled {}, unfinished after 30 s {}, {} polls, {} poll errors",
                self.completed,
                self.per_second(self.completed),
                self.cancelled,
                self.unfinished,
                self.polls,
                self.poll_errors
            );
            let _ = writeln!(out, "completion latency: {}", spread(&self.completion));
        }
        for (key, sample) in &self.samples {
            let _ = writeln!(out, "first {key}: {sample}");
        }
        out.trim_end().to_string()
    }

    fn first_error(&self) -> String {
        match self.samples.iter().next() {
            Some((key, sample)) => format!("; first error {key}: {}", sample.chars().take(160).collect::<String>()),
            None => String::new(),
        }
    }
}

fn spread(h: &Histogram<u64>) -> String {
    format!("p50 {}, p99 {}, p99.9 {}, max {}", ms(h, 0.5), ms(h, 0.99), ms(h, 0.999), ms(h, 1.0))
}

/// A quantile in milliseconds, or `n/a` when nothing was recorded.
fn ms(h: &Histogram<u64>, quantile: f64) -> String {
    if h.is_empty() {
        return "n/a".into();
    }
    format!("{:.1} ms", h.value_at_quantile(quantile) as f64 / 1000.0)
}
