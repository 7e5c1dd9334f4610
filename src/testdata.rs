//! Loads testdata/testdata.sql: the file fills a temporary table of (user, currency,
//! amount); each row is then routed to its user's shard and applied through the ledger
//! (user, wallet, and a balanced adjustment), so `verify` stays clean.
use std::path::Path;

use anyhow::Context;

use crate::{
    domain::{Amount, Currency, UserId},
    ledger::{accounts, local, Error},
    sharding::Router,
};

#[derive(Debug, Default)]
pub struct Loaded {
    pub created: usize,
    pub skipped: usize,
}

pub async fn load(router: &Router, file: &Path) -> anyhow::Result<Loaded> {
    let sql = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let first = router.shards().first().context("no shards")?;
    let rows = {
        let client = first.client().await?;
        client.batch_execute(&sql).await.with_context(|| format!("running {}", file.display()))?;
        let rows = client
            .query("SELECT user_id, currency, amount::text FROM testdata_wallets ORDER BY user_id, currency", &[])
            .await?;
        client.batch_execute("DROP TABLE testdata_wallets").await?;
        rows
    };
    let mut loaded = Loaded::default();
    for row in rows {
        let user = UserId::parse(row.get(0)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let currency = Currency::parse(row.get(1)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let amount: String = row.get(2);
        let shard = router.for_user(&user);
        let mut client = shard.client().await?;
        let tx = client.transaction().await?;
        match accounts::create_user(&tx, &user).await {
            Ok(_) | Err(Error::UserExists) => {}
            Err(e) => return Err(e.into()),
        }
        match accounts::create_wallet(&tx, &user, &currency).await {
            Ok(_) => {
                if amount != "0" {
                    let amount = Amount::parse(&amount).map_err(|e| anyhow::anyhow!("{user}: {e}"))?;
                    let bucket = router.bucket_of_user(&user) as u16;
                    local::adjust(&tx, bucket, &user, &currency, &amount, local::Direction::Credit, "testdata").await?;
                }
                loaded.created += 1;
            }
            Err(Error::WalletExists) => loaded.skipped += 1,
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
    }
    Ok(loaded)
}
