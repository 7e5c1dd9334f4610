//! # shardwallet
//!
//! A wallet and double-entry ledger spread over several PostgreSQL shards, with
//! Try/Confirm/Cancel transfers between shards carried by Kafka.
//!
//! # Layout
//! Data flows one way: HTTP → domain types → shard router → shard transaction →
//! ledger → storage.
//!
//! - [`api`]: axum handlers, auth, idempotency, problem+json errors (`api::error`).
//! - [`domain`]: parsed value types (`Amount`, `UserId`, `Currency`, `RoutableId`).
//! - [`sharding`]: `shard-map.toml` and the `Router`, the one place that picks a shard.
//! - [`ledger`]: double-entry rules inside one shard transaction, and `verify`.
//! - [`transfer`]: starting transfers; the TCC state machine (`transfer::tcc`); the sweeper.
//! - [`payments`]: deposits and withdrawals, their state machine (`payments::state`),
//!   worker and reconciler; [`gateways`]: the gateway trait, one module per protocol, mocks.
//! - [`messaging`]: Kafka clients, the transactional outbox relay, the consumer, the DLQ.
//! - [`storage`]: migrations and the shard identity check.
//! - [`secrets`]: the start-up check that refuses known or weak secrets outside `dev`.
//! - [`startup`]: `Application::build` / `run_until_stopped`; [`cli`]: the subcommands.
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod domain;
pub mod gateways;
pub mod ledger;
pub mod messaging;
pub mod payments;
pub mod secrets;
pub mod sharding;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod testdata;
pub mod transfer;
