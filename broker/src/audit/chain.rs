//! The hash chain over `audit_events`.
//!
//! Every row stores `prev_hash` (the previous row's `hash`, or [`GENESIS`] for
//! seq 1) and its own `hash`:
//!
//! ```text
//! hash = hex(SHA-256(
//!     enc("palisade-audit-v1") || enc(prev_hash) || u64be(seq) || i64be(ts_ms) ||
//!     enc(kind) || enc(outcome) || opt(actor) || opt(subject) || opt(decision_id) ||
//!     enc(detail)))
//!
//! enc(s)       = u32be(byte length of s) || UTF-8 bytes of s
//! opt(None)    = 0x00
//! opt(Some(s)) = 0x01 || enc(s)
//! ```
//!
//! `detail` is hashed exactly as stored (the JSON text), never re-serialised,
//! so verification does not depend on a JSON library's key order. Every field
//! is length-prefixed and absent values are distinct from empty strings, so
//! no two different rows encode to the same bytes.

use ring::digest::{Context, SHA256};

/// `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const DOMAIN: &str = "palisade-audit-v1";

/// One row of `audit_events`, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    /// Position in the chain, from 1 without gaps.
    pub seq: i64,
    /// When it was recorded, milliseconds since the epoch.
    pub ts_ms: i64,
    /// [`super::EventKind::as_str`].
    pub kind: String,
    /// [`super::Outcome::as_str`].
    pub outcome: String,
    /// Who acted.
    pub actor: Option<String>,
    /// What was acted on.
    pub subject: Option<String>,
    /// The access decision it belongs to.
    pub decision_id: Option<String>,
    /// JSON text.
    pub detail: String,
    /// Hash of the previous row.
    pub prev_hash: String,
    /// Hash of this row.
    pub hash: String,
}

impl EventRow {
    /// The hash this row should carry, computed from its other columns.
    #[must_use]
    pub fn compute_hash(&self) -> String {
        let mut ctx = Context::new(&SHA256);
        put_str(&mut ctx, DOMAIN);
        put_str(&mut ctx, &self.prev_hash);
        ctx.update(&u64::try_from(self.seq).unwrap_or(0).to_be_bytes());
        ctx.update(&self.ts_ms.to_be_bytes());
        put_str(&mut ctx, &self.kind);
        put_str(&mut ctx, &self.outcome);
        put_opt(&mut ctx, self.actor.as_deref());
        put_opt(&mut ctx, self.subject.as_deref());
        put_opt(&mut ctx, self.decision_id.as_deref());
        put_str(&mut ctx, &self.detail);
        palisade_proto::enroll::hex(ctx.finish().as_ref())
    }
}

fn put_str(ctx: &mut Context, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    ctx.update(&len.to_be_bytes());
    ctx.update(s.as_bytes());
}

fn put_opt(ctx: &mut Context, s: Option<&str>) {
    match s {
        None => ctx.update(&[0]),
        Some(s) => {
            ctx.update(&[1]);
            put_str(ctx, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> EventRow {
        EventRow {
            seq: 1,
            ts_ms: 1_700_000_000_000,
            kind: "token.created".into(),
            outcome: "success".into(),
            actor: Some("cli".into()),
            subject: None,
            decision_id: None,
            detail: "{}".into(),
            prev_hash: GENESIS.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = row().compute_hash();
        assert_eq!(base.len(), 64);
        type Edit = Box<dyn Fn(&mut EventRow)>;
        let edits: Vec<Edit> = vec![
            Box::new(|r| r.seq = 2),
            Box::new(|r| r.ts_ms += 1),
            Box::new(|r| r.kind = "token.redeemed".into()),
            Box::new(|r| r.outcome = "failure".into()),
            Box::new(|r| r.actor = None),
            Box::new(|r| r.subject = Some(String::new())),
            Box::new(|r| r.decision_id = Some("x".into())),
            Box::new(|r| r.detail = "{ }".into()),
            Box::new(|r| r.prev_hash = "1".repeat(64)),
        ];
        for edit in edits {
            let mut r = row();
            edit(&mut r);
            assert_ne!(r.compute_hash(), base);
        }
    }

    #[test]
    fn fields_cannot_bleed_into_each_other() {
        let mut a = row();
        a.actor = Some("ab".into());
        a.subject = Some("c".into());
        let mut b = row();
        b.actor = Some("a".into());
        b.subject = Some("bc".into());
        assert_ne!(a.compute_hash(), b.compute_hash());
    }
}
