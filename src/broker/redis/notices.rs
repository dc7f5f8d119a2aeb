//! Bans, unbans and kicks between nodes: enforcing other nodes' notices, and catching up after
//! a (re)connect — writing what was decided here while Redis was away, then learning every
//! ban Redis holds.

use redis::aio::MultiplexedConnection;
use tracing::debug;

use super::{RedisBroker, RedisFailure};
use crate::broker::{control, LocalControl, Notice};
use crate::metrics::labels::BrokerFailure;

/// Ban keys read per SCAN round trip.
const SCAN_COUNT: usize = 1000;

impl RedisBroker {
    /// A notice from the control channel: another node's is enforced here.
    pub(super) fn on_notice(&self, control: &dyn LocalControl, payload: &[u8]) {
        let Some((node, notice)) = control::decode(payload) else {
            self.metrics.broker_error(BrokerFailure::Decode);
            debug!(bytes = payload.len(), "control notice refused");
            return;
        };
        if *node != *self.node {
            control.on_notice(notice);
        }
    }

    /// After a connect: the bans and unbans decided here while Redis was away are written
    /// (and announced), every ban this node knows is written back unless Redis has it, and
    /// every ban Redis holds is enforced here.
    pub(super) async fn catch_up_notices(
        &self,
        conn: &mut MultiplexedConnection,
        control: &dyn LocalControl,
    ) -> Result<(), RedisFailure> {
        let mut pipe = redis::pipe();
        for notice in self.take_pending() {
            self.write_notice(&mut pipe, &notice);
        }
        for (offender, until_ms) in control.bans_in_force() {
            pipe.cmd("SET")
                .arg(self.keys.ban(&offender))
                .arg(until_ms)
                .arg("PXAT")
                .arg(until_ms)
                .arg("NX")
                .ignore();
        }
        if !pipe.is_empty() {
            self.within(pipe.query_async::<()>(conn)).await?;
        }
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .within(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(self.keys.bans_pattern())
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query_async(conn),
                )
                .await?;
            if !keys.is_empty() {
                let ends: Vec<Option<u64>> = self
                    .within(redis::cmd("MGET").arg(&keys).query_async(conn))
                    .await?;
                for (key, until_ms) in keys.iter().zip(ends) {
                    if let (Some(offender), Some(until_ms)) = (self.keys.banned(key), until_ms) {
                        control.on_notice(Notice::Ban { offender, until_ms });
                    }
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}
