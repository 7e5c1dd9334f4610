//! Statements prepared once per pooled connection and reused afterwards.
//!
//! A statement sent as text is parsed, described and planned by the server on every
//! call, and costs tokio-postgres two round trips (prepare, then execute). Through
//! these methods each SQL text is prepared once per connection (deadpool's statement
//! cache) and every later call is one round trip with no parsing. Every hot path
//! (transfers, stages, outbox, idempotency) goes through them.
use std::future::Future;

use deadpool_postgres::GenericClient;
use tokio_postgres::{types::ToSql, Error, Row};

pub type Params<'a> = [&'a (dyn ToSql + Sync)];

/// `query`, `query_one`, `query_opt` and `execute` with a cached prepared statement.
pub trait Cached: GenericClient {
    fn cached_query(&self, sql: &str, params: &Params<'_>) -> impl Future<Output = Result<Vec<Row>, Error>> + Send;
    fn cached_query_one(&self, sql: &str, params: &Params<'_>) -> impl Future<Output = Result<Row, Error>> + Send;
    fn cached_query_opt(
        &self,
        sql: &str,
        params: &Params<'_>,
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send;
    fn cached_execute(&self, sql: &str, params: &Params<'_>) -> impl Future<Output = Result<u64, Error>> + Send;
}

impl<C: GenericClient> Cached for C {
    async fn cached_query(&self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query(&statement, params).await
    }

    async fn cached_query_one(&self, sql: &str, params: &Params<'_>) -> Result<Row, Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_one(&statement, params).await
    }

    async fn cached_query_opt(&self, sql: &str, params: &Params<'_>) -> Result<Option<Row>, Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_opt(&statement, params).await
    }

    async fn cached_execute(&self, sql: &str, params: &Params<'_>) -> Result<u64, Error> {
        let statement = self.prepare_cached(sql).await?;
        self.execute(&statement, params).await
    }
}
