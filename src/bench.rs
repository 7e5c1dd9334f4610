//! `shardwallet bench`: being written.
use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub async fn run(_settings: &Settings, _args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench is not built yet")
}
