//! ElectionTimer: the node's clock. Every tick it tells Consensus what time
//! it is; Consensus turns elapsed time into ticks of the core, whose
//! counters decide when an election timeout or a heartbeat is due (the
//! randomized timeout itself is drawn inside the core from an injected
//! seed, so it can be tested without real time). Holds no Raft state.

use std::time::Duration;

use actix::prelude::*;

use super::messages::Tick;

/// Anyone → ElectionTimer: stop ticking (the node is shutting down).
pub struct Stop;

impl Message for Stop {
    type Result = ();
}

pub struct ElectionTimer {
    interval: Duration,
    consensus: Recipient<Tick>,
    handle: Option<SpawnHandle>,
}

impl ElectionTimer {
    pub fn new(interval: Duration, consensus: Recipient<Tick>) -> Self {
        ElectionTimer { interval, consensus, handle: None }
    }
}

impl Actor for ElectionTimer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let h = ctx.run_interval(self.interval, |act, _| act.consensus.do_send(Tick));
        self.handle = Some(h);
    }
}

impl Handler<Stop> for ElectionTimer {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        if let Some(h) = self.handle.take() {
            ctx.cancel_future(h);
        }
    }
}
