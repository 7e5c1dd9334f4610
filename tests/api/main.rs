//! End-to-end tests: each test gets its own app (in process, port 0), its own database
//! on every shard server (cloned from a migrated template) and its own Kafka topics.
//! `make test` starts the servers and sets SHARDWALLET_TEST_PG / SHARDWALLET_TEST_KAFKA.
mod containers;
mod helpers;
mod own_postgres;

mod audit;
mod auth;
mod batch;
mod failover;
mod forged_messages;
mod foundation;
mod idempotency;
mod layers;
mod ledger;
mod metrics;
mod openapi;
mod outage;
mod ownership;
mod payments;
mod payments_doubt;
mod rate_limit;
mod resharding;
mod secrets;
mod sweeper;
mod tcc;
mod tcc_failures;
