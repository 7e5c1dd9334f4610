//! Kafka plumbing: client configuration and topics (`kafka`), message authentication
//! (`auth`: every message is signed by the relay and verified by its consumer), the transactional outbox
//! and its relay (`outbox`), the stage consumer (`consumer`) and the dead-letter topic
//! (`dlq`). Stage messages leave a shard only through the outbox and re-enter through
//! `transfer::tcc::handle`, i.e. through the router like any request.
pub mod auth;
pub mod consumer;
pub mod dlq;
pub mod kafka;
pub mod outbox;
pub mod sampler;
