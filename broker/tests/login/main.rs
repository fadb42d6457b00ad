//! People signing in, through the broker's real HTTP endpoints: a real OpenID
//! provider (`tests/oidc/provider.mjs`, oidc-provider) and a misbehaving one
//! (`tests/oidc/misbehaving.mjs`), a software authenticator, real SQLite.
//! Needs Node.js and `scripts/setup-test-deps` (npm ci in tests/oidc).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod console;
mod device;
mod flow;
mod forge;
mod limits;
mod local;
mod oidc_cases;
mod sessions;
mod support;
mod webauthn_cases;
mod webauthn_flags;
