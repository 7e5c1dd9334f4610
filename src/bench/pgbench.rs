//! The baseline: pgbench's tpcb-like transaction (three updates, a select and an
//! insert) on one PostgreSQL server, run with the same clients and duration.
use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::Context;

/// Initialising scale 10 takes seconds; this only guards against a hung pgbench.
const INIT_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub tps: f64,
    pub latency_ms: Option<f64>,
    pub failed: Option<u64>,
    /// "number of transactions actually processed".
    pub transactions: Option<u64>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} TPS", self.tps)?;
        if let Some(latency) = self.latency_ms {
            write!(f, ", latency average {latency:.3} ms")?;
        }
        match self.failed {
            Some(n) if n > 0 => write!(f, ", {n} failed transactions"),
            _ => Ok(()),
        }
    }
}

/// Creates the database if missing and re-initialises it at `scale`; returns the
/// pgbench binary for `run`.
pub async fn prepare(url: &str, scale: u32) -> anyhow::Result<PathBuf> {
    ensure_database(url).await?;
    let binary = find_binary()?;
    let scale = scale.to_string();
    run_pgbench(&binary, &["-i", "-q", "-s", &scale, url], INIT_TIMEOUT).await.context("pgbench -i")?;
    Ok(binary)
}

/// Runs tpcb-like with `clients` for `seconds`.
pub async fn run(binary: &Path, url: &str, clients: usize, seconds: u64) -> anyhow::Result<Outcome> {
    let (clients, jobs) = (clients.to_string(), clients.min(2).to_string());
    let seconds_text = seconds.to_string();
    let args = ["-c", &clients, "-j", &jobs, "-T", &seconds_text, "-b", "tpcb-like", url];
    let output = run_pgbench(binary, &args, Duration::from_secs(seconds + 120)).await?;
    parse(&output).with_context(|| format!("no tps line in pgbench's output:\n{output}"))
}

/// pgbench cannot create its database: connect to `postgres` on the same server.
async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let config = tokio_postgres::Config::from_str(url).context("--pgbench-url")?;
    let name = config.get_dbname().context("--pgbench-url names no database")?.to_string();
    match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => return Ok(()),
        Err(e) if e.code().map(|c| c.code()) != Some("3D000") => {
            return Err(e).with_context(|| format!("connecting to {name}"))
        }
        Err(_) => {}
    }
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin.connect(tokio_postgres::NoTls).await.context("connecting to postgres")?;
    let connection = tokio::spawn(connection);
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let created = client.batch_execute(&format!("CREATE DATABASE {quoted}")).await;
    drop(client);
    let _ = connection.await;
    match created {
        Ok(()) => println!("created database {name}"),
        Err(e) if e.code().map(|c| c.code()) == Some("42P04") => {}
        Err(e) => return Err(e).with_context(|| format!("creating database {name}")),
    }
    Ok(())
}

/// `pgbench` on PATH, else the newest /usr/lib/postgresql/<version>/bin/pgbench.
fn find_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = std::env::split_paths(&path).map(|d| d.join("pgbench")).find(|p| p.is_file()) {
        return Ok(found);
    }
    let mut installed: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.split('.').next()?.parse().ok()?;
            Some((version, entry.path().join("bin/pgbench")))
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    installed.sort();
    installed.pop().map(|(_, p)| p).context("pgbench not found on PATH nor in /usr/lib/postgresql/*/bin")
}

async fn run_pgbench(binary: &Path, args: &[&str], limit: Duration) -> anyhow::Result<String> {
    let child = tokio::process::Command::new(binary).args(args).kill_on_drop(true).output();
    let output = tokio::time::timeout(limit, child)
        .await
        .with_context(|| format!("pgbench did not finish within {} s", limit.as_secs()))?
        .with_context(|| format!("running {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!("pgbench exited with {}: {}", output.status, stderr.trim());
    }
    Ok(stdout)
}

/// Reads `tps = N (without initial connection time)` (pgbench 14+; older ones say
/// `excluding connections establishing`), `latency average = X ms` and, from 15 on,
/// `number of failed transactions: N (...)`.
fn parse(output: &str) -> Option<Outcome> {
    let tps_line = output.lines().find(|l| {
        l.starts_with("tps = ")
            && (l.contains("without initial connection time") || l.contains("excluding connections"))
    })?;
    let tps = number_after(tps_line, "tps = ")?;
    let latency_ms = output.lines().find_map(|l| number_after(l, "latency average = "));
    let count = |prefix: &str| output.lines().find_map(|l| number_after(l, prefix)).map(|n| n as u64);
    let failed = count("number of failed transactions: ");
    let transactions = count("number of transactions actually processed: ");
    Some(Outcome { tps, latency_ms, failed, transactions })
}

fn number_after(line: &str, prefix: &str) -> Option<f64> {
    let rest = line.strip_prefix(prefix)?;
    // `processed: 10000/10000` with -t: the count before the slash.
    rest.split(|c: char| c.is_whitespace() || c == '/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_15_summary() {
        let output = "transaction type: <builtin: TPC-B (sort of)>\nscaling factor: 10\n\
                      number of transactions actually processed: 58000\n\
                      number of failed transactions: 0 (0.000%)\n\
                      latency average = 11.021 ms\ninitial connection time = 40.5 ms\n\
                      tps = 2903.456789 (without initial connection time)\n";
        let outcome = parse(output).expect("parsed");
        let expected =
            Outcome { tps: 2903.456789, latency_ms: Some(11.021), failed: Some(0), transactions: Some(58000) };
        assert_eq!(outcome, expected);
    }

    #[test]
    fn ignores_the_tps_line_that_includes_connection_time() {
        let output = "tps = 10.0 (including connections establishing)\n\
                      tps = 12.5 (excluding connections establishing)\n";
        assert_eq!(parse(output).map(|o| o.tps), Some(12.5));
        assert_eq!(parse("tps = 10.0 (including connections establishing)\n"), None);
    }
}
