//! What an audit event is: its kind (the catalogue in
//! `docs/audit-events.md`), its outcome, and who acted on what.

use std::fmt;

use palisade_proto::id::DecisionId;

/// How many event kinds there are.
const KINDS: usize = 41;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `palisade-broker init` created a data directory.
    BrokerInitialized,
    /// An admin created an enrollment token.
    TokenCreated,
    /// An enrollment token was redeemed.
    TokenRedeemed,
    /// An enrollment token was refused (unknown, used, expired).
    TokenRefused,
    /// The CA issued a certificate.
    CertificateIssued,
    /// The CA refused to issue a certificate.
    CertificateRefused,
    /// A QUIC connection was accepted.
    QuicAccepted,
    /// A QUIC connection was refused.
    QuicRefused,
    /// The broker allowed a stream.
    StreamAllowed,
    /// The broker denied a stream.
    StreamDenied,
    /// A stream ended.
    StreamEnded,
    /// A connector denied a stream the broker had allowed.
    ConnectorStreamDenied,
    /// A connector connected.
    ConnectorOnline,
    /// A connector disconnected.
    ConnectorOffline,
    /// A policy version became active.
    PolicyActivated,
    /// A policy set was refused.
    PolicyRejected,
    /// An identity was disabled (or re-enabled; see the detail).
    IdentityDisabled,
    /// An admin changed an identity's groups.
    IdentityUpdated,
    /// A sign-in created a session.
    SessionCreated,
    /// A session was revoked (logout, admin, group change).
    SessionRevoked,
    /// A sign-in step succeeded (detail: step, idp, method).
    LoginSucceeded,
    /// A sign-in attempt failed (detail: step and reason).
    LoginFailed,
    /// A WebAuthn credential was registered.
    CredentialRegistered,
    /// A WebAuthn credential was removed (by its owner or an admin).
    CredentialRemoved,
    /// A WebAuthn credential looks cloned (counter regression) and was disabled.
    CredentialAlert,
    /// A device code was handed to a headless CLI.
    DeviceCodeIssued,
    /// A person approved a device code.
    DeviceCodeApproved,
    /// An admin invited a local (passkey-only) account.
    UserInvited,
    /// Live connections were closed because of a revocation.
    TunnelsRevoked,
    /// A burst of failed sign-ins for one account or from one address.
    AlertLoginFailures,
    /// A burst of denied streams for one identity.
    AlertStreamDenials,
    /// One HTTP request on an L7 service, as the connector saw it (model-access audit).
    ConnectorHttpRequest,
    /// A person signed in from a device (user agent) never seen for them before.
    AlertNewDevice,
    /// A person signed in from an address never seen for them before.
    AlertNewAddress,
    /// A connector stayed offline longer than `audit.connector_offline_alert`.
    AlertConnectorOffline,
    /// A connector that was alerted as offline came back.
    AlertConnectorBackOnline,
    /// An identity's HTTP use of a model looks like extraction (prompt sweep, heavy logprobs, volume far above its baseline).
    AlertModelExtraction,
    /// The models a connector found behind an HTTP service (`/v1/models`).
    ConnectorModels,
    /// A step of a CA rotation: a successor prepared, activated or cancelled, the old CA retired.
    CaRotated,
    /// After an extraction alert, an identity was throttled on a service until an admin clears it.
    ThrottleApplied,
    /// An admin cleared an identity's throttle.
    ThrottleCleared,
}

impl EventKind {
    pub(super) const ALL: [Self; KINDS] = [
        Self::BrokerInitialized,
        Self::TokenCreated,
        Self::TokenRedeemed,
        Self::TokenRefused,
        Self::CertificateIssued,
        Self::CertificateRefused,
        Self::QuicAccepted,
        Self::QuicRefused,
        Self::StreamAllowed,
        Self::StreamDenied,
        Self::StreamEnded,
        Self::ConnectorStreamDenied,
        Self::ConnectorOnline,
        Self::ConnectorOffline,
        Self::PolicyActivated,
        Self::PolicyRejected,
        Self::IdentityDisabled,
        Self::IdentityUpdated,
        Self::SessionCreated,
        Self::SessionRevoked,
        Self::LoginSucceeded,
        Self::LoginFailed,
        Self::CredentialRegistered,
        Self::CredentialRemoved,
        Self::CredentialAlert,
        Self::DeviceCodeIssued,
        Self::DeviceCodeApproved,
        Self::UserInvited,
        Self::TunnelsRevoked,
        Self::AlertLoginFailures,
        Self::AlertStreamDenials,
        Self::ConnectorHttpRequest,
        Self::AlertNewDevice,
        Self::AlertNewAddress,
        Self::AlertConnectorOffline,
        Self::AlertConnectorBackOnline,
        Self::AlertModelExtraction,
        Self::ConnectorModels,
        Self::CaRotated,
        Self::ThrottleApplied,
        Self::ThrottleCleared,
    ];

    /// The stable name stored in the `kind` column.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BrokerInitialized => "broker.initialized",
            Self::TokenCreated => "token.created",
            Self::TokenRedeemed => "token.redeemed",
            Self::TokenRefused => "token.refused",
            Self::CertificateIssued => "certificate.issued",
            Self::CertificateRefused => "certificate.refused",
            Self::QuicAccepted => "quic.accepted",
            Self::QuicRefused => "quic.refused",
            Self::StreamAllowed => "stream.allowed",
            Self::StreamDenied => "stream.denied",
            Self::StreamEnded => "stream.ended",
            Self::ConnectorStreamDenied => "connector.stream_denied",
            Self::ConnectorOnline => "connector.online",
            Self::ConnectorOffline => "connector.offline",
            Self::PolicyActivated => "policy.activated",
            Self::PolicyRejected => "policy.rejected",
            Self::IdentityDisabled => "identity.disabled",
            Self::IdentityUpdated => "identity.updated",
            Self::SessionCreated => "session.created",
            Self::SessionRevoked => "session.revoked",
            Self::LoginSucceeded => "login.succeeded",
            Self::LoginFailed => "login.failed",
            Self::CredentialRegistered => "credential.registered",
            Self::CredentialRemoved => "credential.removed",
            Self::CredentialAlert => "credential.alert",
            Self::DeviceCodeIssued => "device_code.issued",
            Self::DeviceCodeApproved => "device_code.approved",
            Self::UserInvited => "user.invited",
            Self::TunnelsRevoked => "tunnels.revoked",
            Self::AlertLoginFailures => "alert.login_failures",
            Self::AlertStreamDenials => "alert.stream_denials",
            Self::ConnectorHttpRequest => "connector.http_request",
            Self::AlertNewDevice => "alert.new_device",
            Self::AlertNewAddress => "alert.new_address",
            Self::AlertConnectorOffline => "alert.connector_offline",
            Self::AlertConnectorBackOnline => "alert.connector_back_online",
            Self::AlertModelExtraction => "alert.model_extraction",
            Self::ConnectorModels => "connector.models",
            Self::CaRotated => "ca.rotated",
            Self::ThrottleApplied => "throttle.applied",
            Self::ThrottleCleared => "throttle.cleared",
        }
    }

    /// The OCSF class this kind maps to: `(class_uid, class name)`; the
    /// category is `class_uid / 1000`. See `docs/audit-events.md`.
    #[must_use]
    pub fn ocsf_class(self) -> (u32, &'static str) {
        const AUTHENTICATION: (u32, &str) = (3002, "Authentication");
        const ACCOUNT_CHANGE: (u32, &str) = (3001, "Account Change");
        const AUTHORIZE_SESSION: (u32, &str) = (3003, "Authorize Session");
        const ENTITY_MANAGEMENT: (u32, &str) = (3004, "Entity Management");
        const NETWORK_ACTIVITY: (u32, &str) = (4001, "Network Activity");
        const DETECTION_FINDING: (u32, &str) = (2004, "Detection Finding");
        const APPLICATION_LIFECYCLE: (u32, &str) = (6002, "Application Lifecycle");
        match self {
            Self::BrokerInitialized => APPLICATION_LIFECYCLE,
            Self::TokenCreated
            | Self::PolicyActivated
            | Self::PolicyRejected
            | Self::CaRotated
            | Self::ThrottleApplied
            | Self::ThrottleCleared => ENTITY_MANAGEMENT,
            Self::TokenRedeemed
            | Self::TokenRefused
            | Self::LoginSucceeded
            | Self::LoginFailed
            | Self::SessionCreated
            | Self::SessionRevoked
            | Self::DeviceCodeIssued
            | Self::DeviceCodeApproved => AUTHENTICATION,
            Self::CertificateIssued
            | Self::CertificateRefused
            | Self::IdentityDisabled
            | Self::IdentityUpdated
            | Self::CredentialRegistered
            | Self::CredentialRemoved
            | Self::UserInvited => ACCOUNT_CHANGE,
            Self::StreamAllowed | Self::StreamDenied | Self::ConnectorStreamDenied => AUTHORIZE_SESSION,
            Self::ConnectorHttpRequest => (4002, "HTTP Activity"),
            Self::ConnectorModels => (5001, "Device Inventory Info"),
            Self::QuicAccepted
            | Self::QuicRefused
            | Self::StreamEnded
            | Self::ConnectorOnline
            | Self::ConnectorOffline
            | Self::TunnelsRevoked => NETWORK_ACTIVITY,
            Self::CredentialAlert
            | Self::AlertLoginFailures
            | Self::AlertStreamDenials
            | Self::AlertNewDevice
            | Self::AlertNewAddress
            | Self::AlertConnectorOffline
            | Self::AlertConnectorBackOnline
            | Self::AlertModelExtraction => DETECTION_FINDING,
        }
    }

    /// Every kind, in catalogue order.
    #[must_use]
    pub fn all() -> [Self; KINDS] {
        Self::ALL
    }

    /// The kind stored under this name, if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// An operation succeeded.
    Success,
    /// An operation failed or was refused.
    Failure,
    /// An access decision allowed.
    Allow,
    /// An access decision denied.
    Deny,
}

impl Outcome {
    /// The outcome whose [`Outcome::as_str`] is `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Success, Self::Failure, Self::Allow, Self::Deny].into_iter().find(|o| o.as_str() == name)
    }

    /// The stable name stored in the `outcome` column.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event to append.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    /// What happened.
    pub kind: EventKind,
    /// How it ended.
    pub outcome: Outcome,
    /// Who acted (a SPIFFE id, `cli`, an admin).
    pub actor: Option<String>,
    /// What was acted on.
    pub subject: Option<String>,
    /// The access decision it belongs to.
    pub decision_id: Option<DecisionId>,
    /// Anything else, as JSON. Never secrets.
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// An event with no actor, subject, decision or detail yet.
    #[must_use]
    pub fn new(kind: EventKind, outcome: Outcome) -> Self {
        Self { kind, outcome, actor: None, subject: None, decision_id: None, detail: serde_json::Value::Null }
    }
    /// Sets who acted.
    #[must_use]
    pub fn actor(mut self, a: impl Into<String>) -> Self {
        self.actor = Some(a.into());
        self
    }
    /// Sets what was acted on.
    #[must_use]
    pub fn subject(mut self, s: impl Into<String>) -> Self {
        self.subject = Some(s.into());
        self
    }
    /// Ties the event to an access decision.
    #[must_use]
    pub fn decision(mut self, id: DecisionId) -> Self {
        self.decision_id = Some(id);
        self
    }
    /// Sets the detail.
    #[must_use]
    pub fn detail(mut self, v: serde_json::Value) -> Self {
        self.detail = v;
        self
    }
}
