//! CPU time of the service, PostgreSQL, the broker and the bench itself over a phase,
//! read from `/proc/<pid>/stat` (utime + stime, in clock ticks).
//!
//! Postgres is every process whose `comm` is `postgres`: the three shard servers, their
//! backends (the service's pooled connections, the bench's own, and anything else that
//! runs on those servers, e.g. the broker's storage on shard-1 or other test suites).
//! Backends come and go, so the set is sampled every second during the phase: a process
//! that exits counts up to its last sample, one that appears counts from zero, and what a
//! short-lived process used between two samples is missed. The counts of each kind are
//! reported with the figure.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How often the set of Postgres processes is re-read during a phase.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// `(comm, utime + stime)` from the text of `/proc/<pid>/stat`. `comm` may contain
/// spaces and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // After ") " come the fields from 3 (state) on; utime and stime are fields 14 and 15.
    let mut fields = text.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 when it cannot be asked.
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n: &u64| n > 0)
        .unwrap_or(100)
}

fn ticks_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|(_, ticks)| ticks)
}

/// Ticks of every process named `name`, by pid.
fn ticks_by_comm(name: &str) -> HashMap<u32, u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return HashMap::new() };
    dir.flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (comm, ticks) = parse_stat(&text)?;
            (comm == name).then_some((pid, ticks))
        })
        .collect()
}

/// What a set of processes that changes during a phase used, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetDelta {
    pub ticks: u64,
    /// Present at the start and at the end.
    pub steady: usize,
    /// Appeared during the phase (counted from zero).
    pub appeared: usize,
    /// Gone before the end (counted up to their last sample).
    pub vanished: usize,
}

/// `start`: ticks at the phase start; `last`: the last ticks seen of every process seen
/// during the phase; `end`: the processes alive at the end. A process whose ticks went
/// down is a reused pid, so it counts as new.
pub fn set_delta(start: &HashMap<u32, u64>, last: &HashMap<u32, u64>, end: &HashSet<u32>) -> SetDelta {
    let mut delta = SetDelta::default();
    for (pid, &now) in last {
        let before = start.get(pid).copied().filter(|&b| b <= now);
        delta.ticks += now - before.unwrap_or(0);
        if !end.contains(pid) {
            delta.vanished += 1;
        } else if before.is_some() {
            delta.steady += 1;
        } else {
            delta.appeared += 1;
        }
    }
    delta
}

/// The processes to measure.
#[derive(Debug, Clone)]
pub struct Probe {
    pub service: Option<u32>,
    /// `--broker-pid`; without it the pid file is read at the start of every phase, so a
    /// broker restarted between phases is still found.
    pub broker_given: Option<u32>,
    pub broker_file: PathBuf,
    pub ticks_per_sec: u64,
}

/// CPU seconds used during one phase; `None` when that process was not known or gone.
#[derive(Debug, Clone, Default)]
pub struct PhaseCpu {
    pub wall: Duration,
    pub service: Option<f64>,
    pub postgres: f64,
    pub postgres_set: SetDelta,
    pub broker: Option<f64>,
    pub bench: Option<f64>,
}

struct Tracker {
    start: HashMap<u32, u64>,
    last: HashMap<u32, u64>,
}

/// A phase being measured; `finish` stops the sampling and returns the figures.
pub struct Meter {
    probe: Probe,
    started: Instant,
    service: Option<u64>,
    broker_pid: Option<u32>,
    broker: Option<u64>,
    bench: Option<u64>,
    tracker: Arc<Mutex<Tracker>>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Probe {
    pub fn start(&self) -> Meter {
        let start = ticks_by_comm("postgres");
        let tracker = Arc::new(Mutex::new(Tracker { last: start.clone(), start }));
        let sampled = tracker.clone();
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = ticks_by_comm("postgres");
                if let Ok(mut t) = sampled.lock() {
                    t.last.extend(now);
                }
            }
        });
        Meter {
            probe: self.clone(),
            started: Instant::now(),
            service: self.service.and_then(ticks_of),
            broker_pid: self.broker(),
            broker: self.broker().and_then(ticks_of),
            bench: ticks_of(std::process::id()),
            tracker,
            sampler,
        }
    }
}

impl Meter {
    pub fn finish(self) -> PhaseCpu {
        self.sampler.abort();
        let end = ticks_by_comm("postgres");
        let alive: HashSet<u32> = end.keys().copied().collect();
        let postgres_set = match self.tracker.lock() {
            Ok(mut t) => {
                t.last.extend(end);
                set_delta(&t.start, &t.last, &alive)
            }
            Err(_) => SetDelta::default(),
        };
        let hz = self.probe.ticks_per_sec as f64;
        let seconds = |before: Option<u64>, pid: Option<u32>| {
            let after = ticks_of(pid?)?;
            Some(after.checked_sub(before?)? as f64 / hz)
        };
        PhaseCpu {
            wall: self.started.elapsed(),
            service: seconds(self.service, self.probe.service),
            postgres: postgres_set.ticks as f64 / hz,
            postgres_set,
            broker: seconds(self.broker, self.broker_pid),
            bench: seconds(self.bench, Some(std::process::id())),
        }
    }
}

impl Probe {
    /// `--broker-pid`, else the pid in the pid file if that process lives.
    pub fn broker(&self) -> Option<u32> {
        self.broker_given.or_else(|| {
            let pid: u32 = std::fs::read_to_string(&self.broker_file).ok()?.trim().parse().ok()?;
            alive(pid).then_some(pid)
        })
    }
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}/stat")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_a_comm_with_spaces_and_parentheses() {
        let text = "4242 (post gres) (x)) S 1 4242 4242 0 -1 4194560 1200 0 0 0 731 269 5 7 20 0 1 0 \
                    9087 226492416 4210 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(parse_stat(text), Some(("post gres) (x)".to_string(), 1000)));
    }

    #[test]
    fn a_truncated_stat_line_is_refused() {
        assert_eq!(parse_stat("1 (postgres) S 1 1 1 0 -1 4194560 1200 0 0 0 731"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let text = std::fs::read_to_string("/proc/self/stat").expect("procfs");
        assert!(parse_stat(&text).is_some(), "{text}");
    }

    #[test]
    fn set_delta_counts_steady_new_and_vanished_processes() {
        let start = HashMap::from([(1, 100), (2, 50), (3, 10), (9, 500)]);
        // 1 steady (+20), 2 vanished after reaching 70 (+20), 3 steady (+0), 4 new (+30),
        // 9 reused by a new process that has 5 ticks (+5), 5 new and gone (+7).
        let last = HashMap::from([(1, 120), (2, 70), (3, 10), (4, 30), (9, 5), (5, 7)]);
        let end = HashSet::from([1, 3, 4, 9]);
        let delta = set_delta(&start, &last, &end);
        assert_eq!(delta, SetDelta { ticks: 20 + 20 + 30 + 5 + 7, steady: 2, appeared: 2, vanished: 2 });
    }
}
