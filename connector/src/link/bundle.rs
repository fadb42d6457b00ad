//! Signed policy bundles on the connector: verify against the CA before
//! parsing, install, and keep the last good one on disk so a restart during a
//! broker outage still enforces it (for at most `bundle_max_age`).

use std::time::SystemTime;

use palisade_proto::bundle::{BundleSignatureError, SignedBundle};
use palisade_proto::identity::TrustAnchors;

use crate::authorize::{BundleApplied, BundleError, PolicyState};
use crate::store::{Store, StoreError};

/// Why a signed bundle was not installed; the previous one stays in force.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcceptError {
    #[error(transparent)]
    Signature(#[from] BundleSignatureError),
    #[error(transparent)]
    Refused(#[from] BundleError),
}

/// Verifies `signed` against the CA, installs it and, once installed, saves
/// it as the last good bundle. CPU-heavy and blocking: run it off the async workers.
pub(crate) fn accept(
    policy: &PolicyState,
    store: &Store,
    trust: &TrustAnchors,
    signed: SignedBundle,
    now: SystemTime,
) -> Result<BundleApplied, AcceptError> {
    let verified = signed.verify(trust.ca_certs())?;
    let applied = policy.apply(&verified, now)?;
    if let Err(e) = store.save_bundle(verified.signed()) {
        tracing::error!(error = %e, "cannot save the policy bundle; a restart during a broker outage will deny");
    }
    Ok(applied)
}

/// Why the saved bundle was not restored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Accept(#[from] AcceptError),
}

/// Installs the saved bundle if its signature verifies and it is younger than
/// the maximum age. `Ok(None)`: nothing saved.
pub(crate) fn restore(
    policy: &PolicyState,
    store: &Store,
    trust: &TrustAnchors,
    now: SystemTime,
) -> Result<Option<BundleApplied>, RestoreError> {
    let Some(signed) = store.load_bundle()? else { return Ok(None) };
    let verified = signed.verify(trust.ca_certs()).map_err(AcceptError::from)?;
    Ok(Some(policy.apply(&verified, now).map_err(AcceptError::from)?))
}

/// Logs what [`accept`] did; a bad signature is an alert.
pub(crate) fn log_accepted(result: &Result<BundleApplied, AcceptError>) {
    match result {
        Ok(BundleApplied::Installed { version, previous }) => {
            tracing::info!(version, previous, "policy bundle installed");
        }
        Ok(BundleApplied::Unchanged { version }) => tracing::debug!(version, "policy bundle unchanged"),
        Err(AcceptError::Signature(e)) => tracing::error!(
            alert = true,
            error = %e,
            "policy bundle with a bad signature refused; the previous one stays in force"
        ),
        Err(AcceptError::Refused(e)) => {
            tracing::error!(error = %e, "policy bundle refused; the previous one stays in force");
        }
    }
}

#[cfg(test)]
mod tests;
