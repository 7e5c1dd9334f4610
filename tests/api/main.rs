//! End-to-end tests: each test gets its own app (in process, port 0), its own database
//! on every shard server (cloned from a migrated template) and its own Kafka topics.
//! `make test` starts the servers and sets SHARDWALLET_TEST_PG / SHARDWALLET_TEST_KAFKA.
mod containers;
mod helpers;

mod audit;
mod auth;
mod failover;
mod foundation;
mod idempotency;
mod ledger;
mod metrics;
mod openapi;
mod payments;
mod rate_limit;
mod tcc;
mod tcc_failures;
