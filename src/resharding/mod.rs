//! Growing the cluster while it serves: shards joining, and (next) buckets moving
//! between shards.
//!
//! Authority lives in the shards (`sharding::ownership`): each records which buckets it
//! owns, is receiving or gave away, and the members it knows, with the map epoch of each
//! change. This module changes those records; the router only reads them.
//!
//! - `members`: `shards add` (a new, empty member) and `shards list` (who owns what).
//! - `moves`: a bucket move's state machine; `copy`: the rows of one bucket;
//!   `mover`: `reshard move` / `rebalance`, a batch of buckets per fence, resumable;
//!   `cleanup`: deleting what a move left on the old shard.
pub mod cleanup;
pub mod copy;
pub mod members;
pub mod mover;
pub mod moves;
