//! The interface between consensus and what it replicates. The consensus
//! shell carries commands as opaque bytes; a state machine gives them
//! meaning. It must be deterministic: the same committed log, applied in
//! order from the same snapshot, yields the same state and outputs on every
//! node.
//!
//! Snapshots: `freeze` takes a consistent copy of the state at `applied()`
//! cheaply (the KV store shares structure with its live map), so the copy
//! is written out by another thread while `apply` goes on; `restore`
//! rebuilds the state from what `Frozen::write_to` wrote.

use std::io::{self, Write};

use bytes::Bytes;

use crate::raft::Index;

pub trait StateMachine: Send + Sized + 'static {
    /// What applying one command produces for the client that proposed it.
    type Output: Clone + Send + 'static;
    type Frozen: Frozen;

    /// Index of the last log entry applied.
    fn applied(&self) -> Index;
    /// Applies the command of log entry `index` (the next one). A command
    /// that cannot be decoded is skipped (every node skips it alike) and
    /// the reason returned.
    fn apply(&mut self, index: Index, command: Bytes) -> Result<Self::Output, String>;
    /// Marks `index` applied without a command (a no-op entry).
    fn skip(&mut self, index: Index);
    /// A consistent copy of the state as of `applied()`.
    fn freeze(&self) -> Self::Frozen;
    /// The state a snapshot at `index` holds.
    fn restore(index: Index, data: Bytes) -> Result<Self, String>;
}

/// A frozen state, written out into a snapshot file off the apply path.
pub trait Frozen: Send + 'static {
    /// The index the state is at.
    fn index(&self) -> Index;
    fn write_to(&self, out: &mut dyn Write) -> io::Result<()>;
}
