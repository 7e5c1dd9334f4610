//! Which offered rates the cross-shard sweep tries, whether a step passed, and the
//! capacity the steps show. Pure: `cross` runs the steps.
//!
//! A step passes when every request was sent, accepted (202) and completed, none was
//! cancelled, and the p99 of `completed_at - created_at` is under `P99_LIMIT`. Without
//! `--rates` the search starts at a quarter of the same-shard TPS, multiplies the rate
//! by `FACTOR` while steps pass, halves it (up to `MAX_HALVINGS` times) while the
//! first ones fail, then tries the geometric mean of the best pass and the lowest
//! failure while they are more than `REFINE_ABOVE` apart.
use std::time::Duration;

/// The completion p99 a step must stay under.
pub const P99_LIMIT: Duration = Duration::from_secs(1);
const FACTOR: f64 = 1.5;
const REFINE_ABOVE: f64 = 1.25;
const MAX_HALVINGS: u32 = 3;
/// Default start without a same-shard figure (`--mode cross`).
const DEFAULT_START: f64 = 50.0;

/// How the rates of the sweep are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// `--rates`: in ascending order, until the first failure.
    Rates(Vec<f64>),
    Search {
        start: f64,
        max_steps: usize,
    },
}

/// The first rate of a search: a quarter of the same-shard TPS, at least 10/s.
pub fn start_rate(local_tps: Option<f64>) -> f64 {
    local_tps.filter(|t| t.is_finite() && *t > 0.0).map(|t| (t / 4.0).round().max(10.0)).unwrap_or(DEFAULT_START)
}

impl Plan {
    /// The next rate to try after the steps `done` (rate, passed), or `None` when done.
    pub fn next(&self, done: &[(f64, bool)]) -> Option<f64> {
        match self {
            Plan::Rates(rates) => {
                if done.iter().any(|&(_, passed)| !passed) {
                    return None;
                }
                rates.get(done.len()).copied()
            }
            Plan::Search { start, max_steps } => {
                if done.len() >= *max_steps {
                    return None;
                }
                let next = match bounds(done) {
                    (None, None) => Some(*start),
                    (Some(pass), None) => Some(pass * FACTOR),
                    (None, Some(fail)) => {
                        (fail / 2.0 >= start / f64::from(1 << MAX_HALVINGS) - 0.5).then_some(fail / 2.0)
                    }
                    (Some(pass), Some(fail)) => (fail / pass > REFINE_ABOVE).then(|| (pass * fail).sqrt()),
                };
                next.map(|r| r.round().max(1.0)).filter(|r| !done.iter().any(|&(tried, _)| tried == *r))
            }
        }
    }
}

/// (highest pass below the lowest failure, lowest failure).
fn bounds(done: &[(f64, bool)]) -> (Option<f64>, Option<f64>) {
    let fail = done.iter().filter(|&&(_, passed)| !passed).map(|&(r, _)| r).reduce(f64::min);
    let pass =
        done.iter().filter(|&&(r, passed)| passed && fail.is_none_or(|f| r < f)).map(|&(r, _)| r).reduce(f64::max);
    (pass, fail)
}

/// The capacity: the highest passing rate below every failing one. A pass above a
/// failure is taken as noise, not as capacity.
pub fn capacity(done: &[(f64, bool)]) -> Option<f64> {
    bounds(done).0
}

/// The counts a verdict is made of.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepCounts {
    pub saturated: u64,
    pub accepted: u64,
    pub refused: u64,
    pub other_errors: u64,
    pub cancelled: u64,
    pub unfinished: u64,
    /// p99 of the completed transfers' completion time.
    pub p99: Option<Duration>,
}

/// `Ok` when the step passed, else why not.
pub fn verdict(c: &StepCounts) -> Result<(), String> {
    let mut why = Vec::new();
    for (n, what) in [
        (c.saturated, "not sent (client saturated)"),
        (c.refused, "refused with 503"),
        (c.other_errors, "other errors"),
        (c.cancelled, "cancelled"),
        (c.unfinished, "unfinished"),
    ] {
        if n > 0 {
            why.push(format!("{n} {what}"));
        }
    }
    match c.p99 {
        _ if c.accepted == 0 => why.push("nothing accepted".into()),
        Some(p99) if p99 < P99_LIMIT => {}
        Some(p99) => why.push(format!("p99 {:.0} ms ≥ {} ms", p99.as_secs_f64() * 1000.0, P99_LIMIT.as_millis())),
        None => why.push("nothing completed".into()),
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(start: f64) -> Plan {
        Plan::Search { start, max_steps: 8 }
    }

    /// Runs the plan against a service whose capacity is `capacity`.
    fn sweep(plan: &Plan, capacity: f64) -> Vec<(f64, bool)> {
        let mut done = Vec::new();
        while let Some(rate) = plan.next(&done) {
            done.push((rate, rate <= capacity));
        }
        done
    }

    #[test]
    fn the_search_starts_at_a_quarter_of_the_same_shard_tps() {
        assert_eq!(start_rate(Some(931.0)), 233.0);
        assert_eq!(start_rate(Some(12.0)), 10.0);
        assert_eq!(start_rate(None), 50.0);
        assert_eq!(start_rate(Some(f64::NAN)), 50.0);
    }

    #[test]
    fn the_search_climbs_until_a_failure_then_refines_once() {
        let done = sweep(&search(200.0), 400.0);
        assert_eq!(done, vec![(200.0, true), (300.0, true), (450.0, false), (367.0, true)]);
        assert_eq!(capacity(&done), Some(367.0));
    }

    #[test]
    fn the_search_halves_when_the_start_is_too_high() {
        let done = sweep(&search(200.0), 60.0);
        assert_eq!(done, vec![(200.0, false), (100.0, false), (50.0, true), (71.0, false), (60.0, true)]);
        assert_eq!(capacity(&done), Some(60.0));
    }

    #[test]
    fn the_search_gives_up_below_an_eighth_of_the_start() {
        let done = sweep(&search(200.0), 5.0);
        assert_eq!(done.iter().map(|d| d.0).collect::<Vec<_>>(), vec![200.0, 100.0, 50.0, 25.0]);
        assert_eq!(capacity(&done), None);
    }

    #[test]
    fn the_search_stops_after_max_steps() {
        let plan = Plan::Search { start: 10.0, max_steps: 3 };
        assert_eq!(sweep(&plan, 1e9), vec![(10.0, true), (15.0, true), (23.0, true)]);
    }

    #[test]
    fn listed_rates_run_until_the_first_failure() {
        let plan = Plan::Rates(vec![50.0, 100.0, 200.0, 400.0]);
        assert_eq!(sweep(&plan, 150.0), vec![(50.0, true), (100.0, true), (200.0, false)]);
        assert_eq!(sweep(&plan, 1000.0).len(), 4);
        assert_eq!(capacity(&sweep(&plan, 10.0)), None);
    }

    #[test]
    fn a_pass_above_a_failure_is_not_capacity() {
        assert_eq!(capacity(&[(100.0, true), (150.0, false), (200.0, true)]), Some(100.0));
        assert_eq!(capacity(&[(100.0, true), (150.0, true)]), Some(150.0));
        assert_eq!(capacity(&[]), None);
    }

    #[test]
    fn a_step_passes_only_when_everything_completed_quickly() {
        let ok = StepCounts { accepted: 1000, p99: Some(Duration::from_millis(999)), ..Default::default() };
        assert_eq!(verdict(&ok), Ok(()));
        let slow = StepCounts { p99: Some(Duration::from_secs(1)), ..ok };
        assert_eq!(verdict(&slow), Err("p99 1000 ms ≥ 1000 ms".into()));
        let cancelled = StepCounts { cancelled: 2, refused: 1, ..ok };
        assert_eq!(verdict(&cancelled), Err("1 refused with 503, 2 cancelled".into()));
        let saturated = StepCounts { saturated: 7, ..ok };
        assert_eq!(verdict(&saturated), Err("7 not sent (client saturated)".into()));
        let empty = StepCounts::default();
        assert_eq!(verdict(&empty), Err("nothing accepted".into()));
        let none_completed = StepCounts { accepted: 3, unfinished: 3, ..Default::default() };
        assert_eq!(verdict(&none_completed), Err("3 unfinished, nothing completed".into()));
    }
}
