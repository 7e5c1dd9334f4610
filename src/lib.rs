//! # shardwallet
//!
//! A wallet and double-entry ledger spread over several PostgreSQL shards, with
//! Try/Confirm/Cancel transfers between shards carried by Kafka.
//!
//! # Layout
//! Data flows one way: HTTP → domain types → shard router → shard transaction →
//! ledger → storage. Folders stand on floors and use only those below them
//! (`tests/api/layers.rs` checks it):
//!
//! - [`domain`]: parsed value types (`Amount`, `UserId`, `Currency`, `RoutableId`,
//!   `PaymentMethod`) and the TCC states' names; [`config`]: settings; [`secrets`]: the
//!   start-up check of secrets.
//! - [`telemetry`]: tracing and every metric (plain labels in, no domain types).
//! - [`sharding`]: `shard-map.toml`, the bucket ownership the shards record
//!   (`sharding::ownership`) and the `Router`, the one place that picks a shard;
//!   [`storage`]: migrations, the shard identity check, cached statements.
//! - [`messaging`]: generic Kafka plumbing: clients, message tags, the transactional
//!   outbox relay, the consumer loop and its `Handler`, the DLQ, the sampler.
//! - [`ledger`]: double-entry rules inside one shard transaction, and `verify`. Each
//!   layer above has its own error enum over `ledger::Error`.
//! - [`gateways`]: the gateway trait and `Outcome`, one module per protocol, mocks.
//! - [`transfer`]: starting transfers; the TCC state machine (`transfer::tcc`); the stage
//!   worker; the sweeper. [`payments`]: deposits and withdrawals, their state machine
//!   (`payments::state`), worker and reconciler. [`resharding`]: shards joining the
//!   cluster and buckets moving between them.
//! - [`api`]: axum handlers, auth, idempotency, problem+json errors (`api::error`).
//! - [`startup`]: `Application::build` / `run_until_stopped`; [`testdata`]: the demo
//!   users; [`bench`]: `shardwallet bench`; [`cli`]: the subcommands.
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod domain;
pub mod gateways;
pub mod ledger;
pub mod messaging;
pub mod payments;
pub mod resharding;
pub mod secrets;
pub mod sharding;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod testdata;
pub mod transfer;
