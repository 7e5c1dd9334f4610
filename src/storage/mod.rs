//! Storage plumbing shared by every shard: migrations, the shard identity check, and
//! the SQL error classification the layers above rely on.
pub mod cached;
pub mod identity;
pub mod migrate;

pub use cached::Cached;

/// How `holding` takes a session advisory lock.
#[derive(Debug, Clone, Copy)]
pub enum LockMode {
    Exclusive,
    Shared,
}

/// Runs `work` while this session holds the advisory lock `key` (waiting for it), then
/// releases it, whatever `work` returned; `work`'s error comes first, then the unlock's.
pub async fn holding<T, E: From<tokio_postgres::Error>>(
    session: &tokio_postgres::Client,
    key: i64,
    mode: LockMode,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let (lock, unlock) = match mode {
        LockMode::Exclusive => ("SELECT pg_advisory_lock($1)", "SELECT pg_advisory_unlock($1)"),
        LockMode::Shared => ("SELECT pg_advisory_lock_shared($1)", "SELECT pg_advisory_unlock_shared($1)"),
    };
    session.execute(lock, &[&key]).await?;
    let value = work.await;
    let unlocked = session.execute(unlock, &[&key]).await;
    let value = value?;
    unlocked?;
    Ok(value)
}

/// A `REPEATABLE READ READ ONLY` transaction: every statement in it reads one snapshot.
pub async fn read_snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

/// SQLSTATE of a failed statement, if it came from the server.
pub fn sqlstate(err: &tokio_postgres::Error) -> Option<&str> {
    err.code().map(|c| c.code())
}

pub fn is_unique_violation(err: &tokio_postgres::Error) -> bool {
    sqlstate(err) == Some("23505")
}

pub fn is_lock_timeout(err: &tokio_postgres::Error) -> bool {
    sqlstate(err) == Some("55P03")
}

/// The shard itself is gone or refusing: a lost or refused connection, a server
/// shutting down or starting up, no connection slot left.
pub fn is_unavailable(err: &tokio_postgres::Error) -> bool {
    match sqlstate(err) {
        Some(code) => matches!(code, "57P01" | "57P02" | "57P03" | "53300") || code.starts_with("08"),
        None => err.is_closed() || std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// Two transactions collided (serialization failure, deadlock): the same request may
/// succeed when sent again.
pub fn is_conflict(err: &tokio_postgres::Error) -> bool {
    matches!(sqlstate(err), Some("40001" | "40P01"))
}

/// Errors worth retrying with the same input: serialization failures, deadlocks,
/// and lost or refused connections.
pub fn is_transient(err: &tokio_postgres::Error) -> bool {
    match sqlstate(err) {
        Some(code) => {
            matches!(code, "40001" | "40P01" | "55P03" | "57P01" | "57P03" | "53300") || code.starts_with("08")
        }
        // No SQLSTATE: a lost connection is worth retrying; a client-side error (a value
        // that cannot be encoded, say) fails the same way every time.
        None => err.is_closed() || std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>()),
    }
}
