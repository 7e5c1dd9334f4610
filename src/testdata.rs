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
    let shards = router.shards();
    let first = shards.first().context("no shards")?;
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
        let bucket = router.bucket_of_user(&user);
        // Like every write, the load checks inside its transaction that the shard owns
        // the user's bucket, and follows a bucket that moved.
        let (user, currency, amount) = (&user, &currency, &amount);
        let created = router
            .on_owner(bucket, |shard| async move {
                let mut client = shard.client().await?;
                let tx = client.transaction().await?;
                shard.check_write(&tx, bucket).await?;
                match accounts::create_user(&tx, user, bucket).await {
                    Ok(_) | Err(Error::UserExists) => {}
                    Err(e) => return Err(e),
                }
                let created = match accounts::create_wallet(&tx, user, currency).await {
                    Ok(_) => {
                        if amount != "0" {
                            let amount = Amount::parse(amount)
                                .map_err(|e| Error::Invariant(format!("testdata amount of {user}: {e}")))?;
                            let direction = local::Direction::Credit;
                            local::adjust(&tx, bucket as u16, user, currency, &amount, direction, "testdata").await?;
                        }
                        true
                    }
                    Err(Error::WalletExists) => false,
                    Err(e) => return Err(e),
                };
                tx.commit().await?;
                Ok::<_, Error>(created)
            })
            .await?;
        if created {
            loaded.created += 1;
        } else {
            loaded.skipped += 1;
        }
    }
    Ok(loaded)
}
