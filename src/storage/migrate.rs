//! Applies migrations/*.sql to one shard with refinery. Safe to re-run, and to run from
//! two processes at once: the run holds a session-level advisory lock.
use tokio_postgres::{Client, NoTls};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// An arbitrary, fixed advisory lock key for "migrations in progress".
const MIGRATION_LOCK: i64 = 0x5348_4152_4457_4c54;

#[tracing::instrument(skip(config), fields(shard = %shard))]
pub async fn run(shard: &str, config: &tokio_postgres::Config) -> anyhow::Result<usize> {
    let (mut client, connection) = config.connect(NoTls).await?;
    let conn = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "migration connection closed");
        }
    });
    let applied = run_locked(&mut client).await;
    drop(client);
    let _ = conn.await;
    applied
}

async fn run_locked(client: &mut Client) -> anyhow::Result<usize> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let report = embedded::migrations::runner().run_async(client).await;
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
    let report = report?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied");
    }
    Ok(report.applied_migrations().len())
}

/// Creates the shard's database when its server is up but the database is not there.
pub async fn ensure_database(config: &tokio_postgres::Config) -> anyhow::Result<()> {
    let Some(name) = config.get_dbname() else { return Ok(()) };
    match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => return Ok(()),
        Err(e) if e.code().map(|c| c.code()) != Some("3D000") => return Err(e.into()),
        Err(_) => {}
    }
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, conn) = admin.connect(tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client.batch_execute(&format!("CREATE DATABASE {quoted}")).await {
        Ok(()) => println!("created database {name}"),
        Err(e) if e.code().map(|c| c.code()) == Some("42P04") => {}
        Err(e) => return Err(e.into()),
    }
    drop(client);
    let _ = conn.await;
    Ok(())
}
