//! The cross-shard phases, all open loop: the sweep that finds the capacity, a run at
//! half of it, and an overload run at twice it. Every step sends for its duration, then
//! waits (reading the shards) until its accepted transfers are final, so the next step
//! starts from an empty pipeline and the step's CPU includes finishing its work.
use std::{sync::Arc, time::Duration};

use super::{
    completion::{self, Completion},
    cpu::{PhaseCpu, Probe},
    load::Target,
    openloop::{self, OpenRun},
    report,
    sweep::{self, Plan, StepCounts},
};
use crate::sharding::Router;

pub struct Ctx<'a> {
    pub target: Arc<Target>,
    pub pairs: Arc<Vec<(usize, usize)>>,
    pub router: &'a Router,
    pub probe: &'a Probe,
    pub step: Duration,
    pub overload: Duration,
    pub max_in_flight: usize,
    /// How long to wait for a step's transfers to become final.
    pub drain: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Sweep,
    Half,
    Overload,
}

pub struct Step {
    pub kind: StepKind,
    pub run: OpenRun,
    pub completion: Completion,
    pub cpu: PhaseCpu,
    pub verdict: Result<(), String>,
}

impl Step {
    pub fn counts(&self) -> StepCounts {
        StepCounts {
            saturated: self.run.saturated,
            accepted: self.run.accepted.len() as u64,
            refused: self.run.refused,
            other_errors: self.run.other_errors(),
            cancelled: self.completion.cancelled_total(),
            unfinished: self.completion.unfinished,
            p99: report::quantile(&self.completion.latency, 0.99).map(Duration::from_micros),
        }
    }
}

pub struct CrossResult {
    pub sweep: Vec<Step>,
    pub capacity: Option<f64>,
    pub half: Option<Step>,
    pub overload: Option<Step>,
}

pub async fn run(ctx: &Ctx<'_>, plan: &Plan) -> anyhow::Result<CrossResult> {
    println!(
        "\n-- cross-shard sweep, open loop, {} s per step (pass: p99 completion < {} ms, nothing cancelled, \
         refused or unsent)",
        ctx.step.as_secs_f64(),
        sweep::P99_LIMIT.as_millis()
    );
    let mut sweep_steps = Vec::new();
    let mut done = Vec::new();
    while let Some(rate) = plan.next(&done) {
        let step = step(ctx, StepKind::Sweep, rate, ctx.step).await?;
        done.push((rate, step.verdict.is_ok()));
        sweep_steps.push(step);
    }
    let capacity = sweep::capacity(&done);
    let Some(cap) = capacity else {
        println!("no offered rate passed: no capacity, so no half-capacity and overload runs");
        return Ok(CrossResult { sweep: sweep_steps, capacity, half: None, overload: None });
    };
    println!("capacity: {cap:.0}/s\n\n-- cross-shard at half capacity");
    let half = step(ctx, StepKind::Half, (cap / 2.0).round().max(1.0), ctx.step).await?;
    println!("\n-- cross-shard overload at twice capacity, {} s", ctx.overload.as_secs_f64());
    let overload = step(ctx, StepKind::Overload, cap * 2.0, ctx.overload).await?;
    Ok(CrossResult { sweep: sweep_steps, capacity, half: Some(half), overload: Some(overload) })
}

async fn step(ctx: &Ctx<'_>, kind: StepKind, rate: f64, duration: Duration) -> anyhow::Result<Step> {
    let meter = ctx.probe.start();
    let run = openloop::run(&ctx.target, &ctx.pairs, rate, duration, ctx.max_in_flight).await?;
    let completion = completion::settle(ctx.router, &run.accepted, ctx.drain).await?;
    let cpu = meter.finish();
    let mut step = Step { kind, run, completion, cpu, verdict: Ok(()) };
    step.verdict = sweep::verdict(&step.counts());
    println!("{}", report::step_details(&step));
    Ok(step)
}
