//! What the bench prints: a block after each phase, then the summary (Markdown tables to
//! paste into docs/ARCHITECTURE.md "Performance"), and the same figures as JSON.
use std::{collections::BTreeMap, fmt::Write, time::Duration};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{
    batch::BatchStats,
    cpu::PhaseCpu,
    cross::{CrossResult, Step, StepKind},
    load::{Errors, LocalStats},
    pgbench::Outcome,
    sweep::P99_LIMIT,
};

pub struct Results {
    pub settings: String,
    pub clients: usize,
    pub duration: u64,
    pub local: Option<anyhow::Result<Local>>,
    pub pgbench: Pgbench,
    pub batch: Option<anyhow::Result<Batch>>,
    pub cross: Option<anyhow::Result<CrossResult>>,
}

pub struct Batch {
    pub stats: BatchStats,
    pub cpu: PhaseCpu,
}

/// The batch phase's goal: transfers per second ÷ pgbench transactions per second.
pub const BATCH_GOAL: f64 = 3.0;

pub struct Local {
    pub stats: LocalStats,
    pub cpu: PhaseCpu,
}

pub enum Pgbench {
    Skipped(&'static str),
    Ran { scale: u32, outcome: Outcome, cpu: PhaseCpu },
    Failed(String),
}

/// A quantile in microseconds, `None` when nothing was recorded.
pub fn quantile(h: &Histogram<u64>, q: f64) -> Option<u64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q))
}

/// A quantile in milliseconds, or `n/a` when nothing was recorded.
fn ms(h: &Histogram<u64>, q: f64) -> String {
    match quantile(h, q) {
        Some(us) if us >= 10_000 => format!("{:.0} ms", us as f64 / 1000.0),
        Some(us) => format!("{:.1} ms", us as f64 / 1000.0),
        None => "n/a".into(),
    }
}

fn ms_value(h: &Histogram<u64>, q: f64) -> Value {
    quantile(h, q).map_or(Value::Null, |us| json!(us as f64 / 1000.0))
}

/// CPU seconds per 1,000 transfers; `None` without CPU figure or without transfers.
pub fn per_thousand(cpu_secs: Option<f64>, transfers: u64) -> Option<f64> {
    (transfers > 0).then_some(cpu_secs?).map(|s| s * 1000.0 / transfers as f64)
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.decimals$}"))
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
}

fn samples(errors: &Errors) -> String {
    errors.samples.iter().map(|(k, s)| format!("\n  first {k}: {s}")).collect()
}

pub fn local_details(s: &LocalStats) -> String {
    format!(
        "{} requests in {:.1} s: {} ok ({:.1} TPS), errors: {}\nrequest latency {}{}",
        s.sent,
        s.elapsed.as_secs_f64(),
        s.ok,
        s.tps(),
        counts(&s.errors.counts),
        quantiles(&s.request, &[("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)]),
        samples(&s.errors)
    )
}

/// `p50 8.6 ms, p99 21 ms, ...` for the named quantiles.
fn quantiles(h: &Histogram<u64>, which: &[(&str, f64)]) -> String {
    which.iter().map(|(name, q)| format!("{name} {}", ms(h, *q))).collect::<Vec<_>>().join(", ")
}

pub fn batch_details(s: &BatchStats) -> String {
    format!(
        "{} batches of {} in {:.1} s: {} transfers completed ({:.1} transfers/s), errors: {}\nbatch latency {}{}",
        s.batches,
        s.size,
        s.elapsed.as_secs_f64(),
        s.ok,
        s.tps(),
        counts(&s.errors.counts),
        quantiles(&s.request, &[("p50", 0.5), ("p99", 0.99), ("max", 1.0)]),
        samples(&s.errors)
    )
}

pub fn step_details(step: &Step) -> String {
    let (r, c) = (&step.run, &step.completion);
    let verdict = match (&step.kind, &step.verdict) {
        (StepKind::Sweep, Ok(())) => "  PASS".to_string(),
        (StepKind::Sweep, Err(why)) => format!("  FAIL: {why}"),
        _ => String::new(),
    };
    format!(
        "offered {:.0}/s for {:.0} s: {} due, {} sent (send lag p99 {}), {} not sent (client saturated)\n  \
         {} accepted (202 response p50 {}, p99 {}), {} refused with 503 (response p50 {}, p99 {}; {} with \
         Retry-After), errors: {}\n  completed {}, cancelled: {}, unfinished {} (all final {:.1} s after the \
         last answer, {} shard queries)\n  completion p50 {}, p99 {}, max {}; CPU s: service {}, postgres {:.1}, \
         broker {}{verdict}{}",
        r.rate,
        r.duration.as_secs_f64(),
        r.scheduled,
        r.sent,
        ms(&r.send_lag, 0.99),
        r.saturated,
        r.accepted.len(),
        ms(&r.accepted_latency, 0.5),
        ms(&r.accepted_latency, 0.99),
        r.refused,
        ms(&r.refused_latency, 0.5),
        ms(&r.refused_latency, 0.99),
        r.refused_with_retry_after,
        counts(&r.errors.counts),
        c.completed,
        counts(&c.cancelled),
        c.unfinished,
        c.settle.as_secs_f64(),
        c.queries,
        ms(&c.latency, 0.5),
        ms(&c.latency, 0.99),
        ms(&c.latency, 1.0),
        opt(step.cpu.service, 1),
        step.cpu.postgres,
        opt(step.cpu.broker, 1),
        samples(&r.errors)
    )
}

/// The closing summary, as Markdown.
pub fn summary(res: &Results) -> String {
    let mut out = format!("== shardwallet bench summary ==\n{}\n\n| workload | result |\n|---|---|\n", res.settings);
    let mut row = |w: String, r: String| {
        let _ = writeln!(out, "| {w} | {r} |");
    };
    let closed = format!("{} clients, {} s", res.clients, res.duration);
    let local_tps = match &res.local {
        None => None,
        Some(Err(e)) => {
            row(format!("same-shard transfers, closed loop, {closed}"), format!("failed: {e:#}"));
            None
        }
        Some(Ok(l)) => {
            let s = &l.stats;
            row(
                format!("same-shard transfers, closed loop, {closed}"),
                format!(
                    "{:.1} TPS; request p50 {}, p99 {}, p99.9 {}; errors: {}",
                    s.tps(),
                    ms(&s.request, 0.5),
                    ms(&s.request, 0.99),
                    ms(&s.request, 0.999),
                    counts(&s.errors.counts)
                ),
            );
            Some(s.tps())
        }
    };
    let pg_tps = match &res.pgbench {
        Pgbench::Skipped(why) => {
            row("pgbench tpcb-like".into(), format!("skipped ({why})"));
            None
        }
        Pgbench::Failed(e) => {
            row("pgbench tpcb-like".into(), format!("failed: {e}"));
            None
        }
        Pgbench::Ran { scale, outcome, .. } => {
            row(format!("pgbench tpcb-like, scale {scale}, {closed}, shard-1's server"), outcome.to_string());
            Some(outcome.tps)
        }
    };
    if let (Some(local), Some(pg)) = (local_tps, pg_tps.filter(|t| *t > 0.0)) {
        row("ratio same-shard ÷ pgbench".into(), format!("{:.2}", local / pg));
    }
    match &res.batch {
        None => {}
        Some(Err(e)) => row("same-shard batches".into(), format!("failed: {e:#}")),
        Some(Ok(b)) => {
            let s = &b.stats;
            row(
                format!("same-shard batches of {}, closed loop, {closed}", s.size),
                format!(
                    "{:.1} transfers/s ({} batches); batch p50 {}, p99 {}; errors: {}",
                    s.tps(),
                    s.batches,
                    ms(&s.request, 0.5),
                    ms(&s.request, 0.99),
                    counts(&s.errors.counts)
                ),
            );
            if let Some(pg) = pg_tps.filter(|t| *t > 0.0) {
                let ratio = s.tps() / pg;
                let verdict = if ratio >= BATCH_GOAL { "met" } else { "not met" };
                row("ratio batch transfers/s ÷ pgbench".into(), format!("{ratio:.2} (goal ≥ {BATCH_GOAL}: {verdict})"));
            }
        }
    }
    match &res.cross {
        None => {}
        Some(Err(e)) => row("cross-shard".into(), format!("failed: {e:#}")),
        Some(Ok(cross)) => cross_rows(cross, &mut row),
    }
    if let Some(Ok(cross)) = &res.cross {
        out.push_str(&sweep_table(cross));
    }
    out.push_str(&cpu_table(res));
    out
}

fn cross_rows(cross: &CrossResult, row: &mut impl FnMut(String, String)) {
    let limit = P99_LIMIT.as_millis();
    let Some(cap) = cross.capacity else {
        let tried = cross.sweep.iter().map(|s| format!("{:.0}", s.run.rate)).collect::<Vec<_>>().join(", ");
        row(format!("cross-shard capacity (open loop, p99 completion < {limit} ms)"), format!("none of {tried}/s"));
        return;
    };
    // Every step passed: the service may take more than the highest rate tried.
    let at_least = if cross.sweep.iter().all(|s| s.verdict.is_ok()) { " or more (no step failed)" } else { "" };
    row(
        format!(
            "cross-shard capacity (open loop: highest offered rate with p99 completion < {limit} ms, all completed)"
        ),
        format!("{cap:.0}/s{at_least}"),
    );
    if let Some(half) = &cross.half {
        let c = &half.completion;
        row(
            format!(
                "cross-shard at half capacity ({:.0}/s offered, {:.0} s)",
                half.run.rate,
                half.run.duration.as_secs_f64()
            ),
            format!(
                "completion p50 {}, p99 {}, max {}; {} accepted, {} completed, cancelled: {}, unfinished {}",
                ms(&c.latency, 0.5),
                ms(&c.latency, 0.99),
                ms(&c.latency, 1.0),
                half.run.accepted.len(),
                c.completed,
                counts(&c.cancelled),
                c.unfinished
            ),
        );
    }
    if let Some(over) = &cross.overload {
        let (r, c) = (&over.run, &over.completion);
        row(
            format!("cross-shard overload, 2 × capacity ({:.0}/s offered, {:.0} s)", r.rate, r.duration.as_secs_f64()),
            format!(
                "{} due: {} accepted (202 in p50 {}, p99 {}), {} refused with 503 (in p50 {}, p99 {}; {} with \
                 Retry-After), other errors {}, {} not sent (client saturated); answers by code: {}; accepted \
                 transfers: completion p50 {}, p99 {}, max {}; {} completed, cancelled: {}, unfinished {}",
                r.scheduled,
                r.accepted.len(),
                ms(&r.accepted_latency, 0.5),
                ms(&r.accepted_latency, 0.99),
                r.refused,
                ms(&r.refused_latency, 0.5),
                ms(&r.refused_latency, 0.99),
                r.refused_with_retry_after,
                r.other_errors(),
                r.saturated,
                counts(&r.errors.counts),
                ms(&c.latency, 0.5),
                ms(&c.latency, 0.99),
                ms(&c.latency, 1.0),
                c.completed,
                counts(&c.cancelled),
                c.unfinished
            ),
        );
    }
}

fn sweep_table(cross: &CrossResult) -> String {
    let mut out = String::from(
        "\nCross-shard sweep (open loop; completion = the transfer's completed_at - created_at):\n\n\
         | offered/s | due | send lag p99 | accepted | 503 | other errors | not sent | completed | cancelled \
         | unfinished | completion p50 | p99 | max | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for step in &cross.sweep {
        let (r, c) = (&step.run, &step.completion);
        let _ = writeln!(
            out,
            "| {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.rate,
            r.scheduled,
            ms(&r.send_lag, 0.99),
            r.accepted.len(),
            r.refused,
            r.other_errors(),
            r.saturated,
            c.completed,
            c.cancelled_total(),
            c.unfinished,
            ms(&c.latency, 0.5),
            ms(&c.latency, 0.99),
            ms(&c.latency, 1.0),
            match &step.verdict {
                Ok(()) => "pass".into(),
                Err(why) => format!("fail: {why}"),
            }
        );
    }
    out
}

/// (phase name, transfers the CPU is divided by, CPU) for every phase that ran.
fn cpu_phases(res: &Results) -> Vec<(String, u64, &PhaseCpu)> {
    let mut phases = Vec::new();
    if let Some(Ok(l)) = &res.local {
        phases.push(("same-shard (ok transfers)".to_string(), l.stats.ok, &l.cpu));
    }
    if let Pgbench::Ran { outcome, cpu, .. } = &res.pgbench {
        phases.push(("pgbench (transactions)".to_string(), outcome.transactions.unwrap_or(0), cpu));
    }
    if let Some(Ok(b)) = &res.batch {
        phases.push((format!("same-shard batches of {} (ok transfers)", b.stats.size), b.stats.ok, &b.cpu));
    }
    if let Some(Ok(cross)) = &res.cross {
        let steps = cross.sweep.iter().chain(&cross.half).chain(&cross.overload);
        for step in steps {
            let name = match step.kind {
                StepKind::Sweep => "cross-shard sweep",
                StepKind::Half => "cross-shard half capacity",
                StepKind::Overload => "cross-shard overload",
            };
            let label = format!("{name} {:.0}/s (accepted transfers)", step.run.rate);
            phases.push((label, step.run.accepted.len() as u64, &step.cpu));
        }
    }
    phases
}

fn cpu_table(res: &Results) -> String {
    let mut out = String::from(
        "\nCPU seconds per 1,000 transfers (utime + stime from /proc over the phase, cross-shard steps until \
         their transfers are final):\n\n| phase | transfers | wall s | service | postgres | broker | bench client \
         | postgres processes (steady/new/gone) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (name, n, cpu) in cpu_phases(res) {
        let set = &cpu.postgres_set;
        let _ = writeln!(
            out,
            "| {name} | {n} | {:.1} | {} | {} | {} | {} | {}/{}/{} |",
            cpu.wall.as_secs_f64(),
            opt(per_thousand(cpu.service, n), 3),
            opt(per_thousand(Some(cpu.postgres), n), 3),
            opt(per_thousand(cpu.broker, n), 3),
            opt(per_thousand(cpu.bench, n), 3),
            set.steady,
            set.appeared,
            set.vanished
        );
    }
    out.push_str(
        "\npostgres = every process named postgres (the shard servers, all their backends, including the broker's \
         storage on shard-1 and anything else using those servers), sampled every 1 s: a backend that exits counts \
         up to its last sample. n/a: pid not given or gone.\n",
    );
    out
}

fn cpu_json(cpu: &PhaseCpu, n: u64) -> Value {
    let set = &cpu.postgres_set;
    json!({
        "transfers": n,
        "wall_secs": cpu.wall.as_secs_f64(),
        "cpu_secs": { "service": cpu.service, "postgres": cpu.postgres, "broker": cpu.broker, "bench": cpu.bench },
        "cpu_secs_per_1000": {
            "service": per_thousand(cpu.service, n),
            "postgres": per_thousand(Some(cpu.postgres), n),
            "broker": per_thousand(cpu.broker, n),
            "bench": per_thousand(cpu.bench, n),
        },
        "postgres_processes": { "steady": set.steady, "appeared": set.appeared, "vanished": set.vanished },
    })
}

fn latencies(h: &Histogram<u64>, quantiles: &[(&str, f64)]) -> Value {
    quantiles.iter().map(|(name, q)| (name.to_string(), ms_value(h, *q))).collect::<serde_json::Map<_, _>>().into()
}

const P50_P99_MAX: &[(&str, f64)] = &[("p50_ms", 0.5), ("p99_ms", 0.99), ("max_ms", 1.0)];

fn step_json(step: &Step) -> Value {
    let (r, c) = (&step.run, &step.completion);
    json!({
        "offered_per_sec": r.rate,
        "secs": r.duration.as_secs_f64(),
        "due": r.scheduled,
        "sent": r.sent,
        "not_sent_client_saturated": r.saturated,
        "send_lag": latencies(&r.send_lag, P50_P99_MAX),
        "accepted": r.accepted.len(),
        "accepted_response": latencies(&r.accepted_latency, P50_P99_MAX),
        "refused_503": r.refused,
        "refused_503_with_retry_after": r.refused_with_retry_after,
        "refused_response": latencies(&r.refused_latency, P50_P99_MAX),
        "answers_by_code": r.errors.counts,
        "completed": c.completed,
        "cancelled": c.cancelled,
        "unfinished": c.unfinished,
        "completion": latencies(&c.latency, &[("p50_ms", 0.5), ("p99_ms", 0.99), ("p99_9_ms", 0.999), ("max_ms", 1.0)]),
        "settle_secs": c.settle.as_secs_f64(),
        "passed": step.verdict.is_ok(),
        "verdict": step.verdict.as_ref().err(),
        "cpu": cpu_json(&step.cpu, r.accepted.len() as u64),
    })
}

pub fn json(res: &Results) -> Value {
    let local = match &res.local {
        None => Value::Null,
        Some(Err(e)) => json!({ "error": format!("{e:#}") }),
        Some(Ok(l)) => json!({
            "clients": res.clients,
            "secs": l.stats.elapsed.as_secs_f64(),
            "sent": l.stats.sent,
            "ok": l.stats.ok,
            "tps": l.stats.tps(),
            "errors": l.stats.errors.counts,
            "request": latencies(&l.stats.request, &[("p50_ms", 0.5), ("p99_ms", 0.99), ("p99_9_ms", 0.999), ("max_ms", 1.0)]),
            "cpu": cpu_json(&l.cpu, l.stats.ok),
        }),
    };
    let pgbench = match &res.pgbench {
        Pgbench::Skipped(why) => json!({ "skipped": why }),
        Pgbench::Failed(e) => json!({ "error": e }),
        Pgbench::Ran { scale, outcome, cpu } => json!({
            "scale": scale,
            "clients": res.clients,
            "secs": res.duration,
            "tps": outcome.tps,
            "latency_average_ms": outcome.latency_ms,
            "transactions": outcome.transactions,
            "failed": outcome.failed,
            "cpu": cpu_json(cpu, outcome.transactions.unwrap_or(0)),
        }),
    };
    let ratio = match (&res.local, &res.pgbench) {
        (Some(Ok(l)), Pgbench::Ran { outcome, .. }) if outcome.tps > 0.0 => json!(l.stats.tps() / outcome.tps),
        _ => Value::Null,
    };
    let batch = match &res.batch {
        None => Value::Null,
        Some(Err(e)) => json!({ "error": format!("{e:#}") }),
        Some(Ok(b)) => json!({
            "clients": res.clients,
            "size": b.stats.size,
            "secs": b.stats.elapsed.as_secs_f64(),
            "batches": b.stats.batches,
            "ok": b.stats.ok,
            "tps": b.stats.tps(),
            "errors": b.stats.errors.counts,
            "request": latencies(&b.stats.request, &[("p50_ms", 0.5), ("p99_ms", 0.99), ("max_ms", 1.0)]),
            "cpu": cpu_json(&b.cpu, b.stats.ok),
        }),
    };
    let batch_ratio = match (&res.batch, &res.pgbench) {
        (Some(Ok(b)), Pgbench::Ran { outcome, .. }) if outcome.tps > 0.0 => json!(b.stats.tps() / outcome.tps),
        _ => Value::Null,
    };
    let cross = match &res.cross {
        None => Value::Null,
        Some(Err(e)) => json!({ "error": format!("{e:#}") }),
        Some(Ok(c)) => json!({
            "p99_limit_ms": P99_LIMIT.as_millis() as u64,
            "sweep": c.sweep.iter().map(step_json).collect::<Vec<_>>(),
            "capacity_per_sec": c.capacity,
            "capacity_is_lower_bound": c.sweep.iter().all(|s| s.verdict.is_ok()),
            "half_capacity": c.half.as_ref().map(step_json),
            "overload": c.overload.as_ref().map(step_json),
        }),
    };
    json!({
        "settings": res.settings,
        "same_shard": local,
        "pgbench": pgbench,
        "ratio_same_shard_to_pgbench": ratio,
        "batch": batch,
        "ratio_batch_to_pgbench": batch_ratio,
        "cross_shard": cross,
    })
}

/// Seconds as text without a trailing `.0`.
pub fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_thousand_transfers() {
        assert_eq!(per_thousand(Some(2.5), 5000), Some(0.5));
        assert_eq!(per_thousand(None, 5000), None);
        assert_eq!(per_thousand(Some(2.5), 0), None);
    }

    #[test]
    fn quantiles_of_an_empty_histogram_are_absent() {
        let mut h = super::super::load::histogram().expect("histogram");
        assert_eq!(quantile(&h, 0.99), None);
        assert_eq!(ms(&h, 0.5), "n/a");
        for us in 1..=1000 {
            h.record(us * 1000).expect("in range");
        }
        // 3 significant digits: within 0.1 % of the exact rank.
        let p99 = quantile(&h, 0.99).expect("recorded");
        assert!((989_000..=991_000).contains(&p99), "{p99}");
        assert_eq!(ms(&h, 0.5), "500 ms");
        assert_eq!(secs(Duration::from_millis(2500)), "2.5");
    }
}
