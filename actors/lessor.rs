//! Lessor: ends leases whose time is up. Every tick it asks the
//! StateMachine which leases this node's clock says are over and, if there
//! are any, proposes one expiry entry for them through Consensus. Only a
//! leader's proposal is accepted (a follower's is refused unproposed), so
//! expiry is the leader's decision; the entry is applied by every node
//! alike, which re-checks each lease against the log's clock, so a lease
//! renewed in the meantime stays. One proposal at a time.

use std::time::Duration;

use actix::prelude::*;
use log::debug;

use super::consensus::ConsensusActor;
use super::messages::{ClientWrite, DueLeases};
use super::state_machine::StateMachineActor;
use crate::kv::Command;
use crate::raft::NodeId;

const T_LEASE: &str = "raftkv::lease";
/// Most leases ended by one entry.
const MAX_PER_ENTRY: usize = 1000;

pub struct Lessor {
    id: NodeId,
    interval: Duration,
    state_machine: Addr<StateMachineActor>,
    consensus: Addr<ConsensusActor>,
    busy: bool,
}

impl Lessor {
    pub fn new(
        id: NodeId,
        interval: Duration,
        state_machine: Addr<StateMachineActor>,
        consensus: Addr<ConsensusActor>,
    ) -> Self {
        Lessor { id, interval, state_machine, consensus, busy: false }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        let (sm, consensus, id) = (self.state_machine.clone(), self.consensus.clone(), self.id);
        let work = async move {
            let now_ms = crate::kv::lease::now_ms();
            let Ok(ids) = sm.send(DueLeases { now_ms, max: MAX_PER_ENTRY }).await else { return };
            if ids.is_empty() {
                return;
            }
            let (reply, answer) = tokio::sync::oneshot::channel();
            let n = ids.len();
            let command = Command::LeaseExpire { now_ms, ids }.encode();
            if consensus.send(ClientWrite { command, reply }).await.is_err() {
                return;
            }
            if let Ok(Ok(_)) = answer.await {
                debug!(target: T_LEASE, "node {id} ended {n} expired leases");
            }
        };
        ctx.spawn(work.into_actor(self).map(|(), act, _| act.busy = false));
    }
}

impl Actor for Lessor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |act, ctx| act.tick(ctx));
    }
}
