//! Bans, unbans, kicks and revocations between nodes: enforcing other nodes' notices, and catching up after
//! a (re)connect — writing what was decided here while Redis was away, then learning every
//! ban and revocation Redis holds.

use tracing::debug;

use super::conn::{Batch, Conn};
use super::{RedisBroker, RedisFailure};
use crate::broker::{control, LocalControl, Notice};
use crate::metrics::labels::BrokerFailure;

/// Ban and revocation keys read per SCAN round trip.
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

    /// After a connect: the bans, unbans and revocations decided here while Redis was away
    /// are written (and announced), every ban and revocation this node knows is written back
    /// unless Redis has it, and every one Redis holds is enforced here.
    pub(super) async fn catch_up_notices(
        &self,
        conn: &mut Conn,
        control: &dyn LocalControl,
    ) -> Result<(), RedisFailure> {
        let mut pipe = Batch::new();
        for notice in self.take_pending() {
            self.write_notice(&mut pipe, &notice);
        }
        let bans = control
            .bans_in_force()
            .into_iter()
            .map(|(offender, until_ms)| (self.keys.ban(&offender), until_ms));
        let revocations = control
            .revocations_in_force()
            .into_iter()
            .map(|(revoked, until_ms)| (self.keys.revoked(&revoked), until_ms));
        for (key, until_ms) in bans.chain(revocations) {
            pipe.cmd("SET")
                .arg(key)
                .arg(until_ms)
                .arg("PXAT")
                .arg(until_ms)
                .arg("NX")
                .ignore();
        }
        if !pipe.is_empty() {
            self.within(pipe.query::<()>(conn)).await?;
        }
        for (key, until_ms) in self.scan_ends(conn, &self.keys.bans_pattern()).await? {
            if let Some(offender) = self.keys.banned(&key) {
                control.on_notice(Notice::Ban { offender, until_ms });
            }
        }
        for (key, until_ms) in self.scan_ends(conn, &self.keys.revoked_pattern()).await? {
            if let Some(revoked) = self.keys.revoked_of(&key) {
                control.on_notice(Notice::Revoke { revoked, until_ms });
            }
        }
        Ok(())
    }

    /// Every key matching `pattern` whose value is an end (Unix milliseconds), with it, from
    /// every server (every master of a cluster).
    async fn scan_ends(
        &self,
        conn: &mut Conn,
        pattern: &str,
    ) -> Result<Vec<(String, u64)>, RedisFailure> {
        let mut found = Vec::new();
        for server in self.within(conn.servers()).await? {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, keys): (u64, Vec<String>) =
                    self.within(conn.query_on(&server, &scan)).await?;
                if !keys.is_empty() {
                    let mut get = Batch::new();
                    for key in &keys {
                        get.cmd("GET").arg(key);
                    }
                    let ends: Vec<Option<u64>> = self.within(get.query(conn)).await?;
                    for (key, until_ms) in keys.into_iter().zip(ends) {
                        if let Some(until_ms) = until_ms {
                            found.push((key, until_ms));
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(found)
    }
}
