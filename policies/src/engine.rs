//! A compiled policy bundle that answers access requests.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use cedar_policy::{AuthorizationError, Authorizer, Effect, PolicyId, PolicySet, Response};

use crate::cache::ContextUse;
use crate::compile::{PolicyInfo, compile};
use crate::dry_run::DryRunSets;
use crate::request::{AccessRequest, to_cedar};
use crate::schema::{Vocabulary, vocabulary};
use crate::{Decision, DenyReason, Grant, LoadError, PolicyBundle, ServiceEntry, Verdict, read_policy_dir};

/// A validated policy bundle, ready to decide. Cheap to share behind an
/// `Arc`; deciding takes `&self`.
pub struct Engine {
    bundle: PolicyBundle,
    digest: String,
    all: PolicySet,
    set: PolicySet,
    dry_run: DryRunSets,
    context_use: ContextUse,
    policies: Vec<PolicyInfo>,
    services: HashMap<String, usize>,
    vocab: &'static Vocabulary,
    authorizer: Authorizer,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("version", &self.bundle.version)
            .field("digest", &self.digest)
            .field("policies", &self.policies.len())
            .field("services", &self.services.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Parses every file and validates it against the schema (strict
    /// validation), and checks the service catalog.
    ///
    /// # Errors
    ///
    /// The first problem found, as a [`LoadError`] naming the file, line
    /// and column: a syntax error ([`LoadError::Parse`]), a policy that
    /// does not type-check ([`LoadError::Validation`]), a template, an
    /// empty or repeated policy id, a repeated file name, or a malformed
    /// service entry.
    pub fn new(bundle: &PolicyBundle) -> Result<Self, LoadError> {
        let vocab = vocabulary()?;
        let services = index_services(&bundle.services)?;
        let compiled = compile(&bundle.files, vocab)?;
        let context_use = ContextUse::scan(
            compiled.all.policies().map(|p| p.to_cedar()).collect::<Vec<_>>().iter().map(Option::as_deref),
        );
        Ok(Self {
            bundle: bundle.clone(),
            digest: bundle.digest(),
            all: compiled.all,
            set: compiled.set,
            dry_run: DryRunSets { permits: compiled.dry_permits, forbids: compiled.dry_forbids },
            context_use,
            policies: compiled.policies,
            services,
            vocab,
            authorizer: Authorizer::new(),
        })
    }

    /// Reads the `*.cedar` files in `dir` and builds an engine from them.
    ///
    /// # Errors
    ///
    /// Those of [`read_policy_dir`] and [`Engine::new`].
    pub fn from_dir(dir: &Path, services: Vec<ServiceEntry>, version: u64) -> Result<Self, LoadError> {
        let files = read_policy_dir(dir)?;
        Self::new(&PolicyBundle { version, files, services })
    }

    /// The bundle's version.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.bundle.version
    }

    /// The bundle's content digest ([`PolicyBundle::digest`]).
    #[must_use]
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The bundle this engine was built from.
    #[must_use]
    pub fn bundle(&self) -> &PolicyBundle {
        &self.bundle
    }

    /// Every policy, in file order, with its id and location.
    #[must_use]
    pub fn policies(&self) -> &[PolicyInfo] {
        &self.policies
    }

    /// The catalog entry for a service.
    #[must_use]
    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.services.get(name).and_then(|&index| self.bundle.services.get(index))
    }

    /// The compiled set, the schema vocabulary and the catalog entry, for
    /// the explainer: everything [`Engine::decide`] hands to Cedar.
    pub(crate) fn prepare(
        &self,
        request: &AccessRequest<'_>,
    ) -> Result<(cedar_policy::Request, cedar_policy::Entities), Decision> {
        let Some(service) = self.service(request.service) else {
            return Err(Decision::Deny(DenyReason::UnknownService));
        };
        if matches!(request.action, crate::Action::Http { .. }) && service.protocol != "http" {
            return Err(Decision::Deny(DenyReason::Invalid(format!("service `{}` does not speak HTTP", service.name))));
        }
        to_cedar(self.vocab, request, service).map_err(|message| Decision::Deny(DenyReason::Invalid(message)))
    }

    /// Every policy, enforced and dry-run, for the explainer.
    pub(crate) fn policy_set(&self) -> &PolicySet {
        &self.all
    }

    /// Which time-dependent context fields the policies read (the
    /// [`crate::DecisionCache`] keys on exactly those).
    #[must_use]
    pub fn context_use(&self) -> ContextUse {
        self.context_use
    }

    /// Whether any policy is marked `@mode("dry_run")`.
    #[must_use]
    pub fn has_dry_run(&self) -> bool {
        !self.dry_run.is_empty()
    }

    /// Decides a request. Never fails: anything that prevents a clear
    /// answer is a [`DenyReason`]. Dry-run policies are not evaluated.
    #[must_use]
    pub fn decide(&self, request: &AccessRequest<'_>) -> Decision {
        self.evaluate(request, false).decision
    }

    /// Decides a request like [`Engine::decide`] and also reports what the
    /// dry-run policies made of it. They never change the decision.
    #[must_use]
    pub fn verdict(&self, request: &AccessRequest<'_>) -> Verdict {
        self.evaluate(request, true)
    }

    fn evaluate(&self, request: &AccessRequest<'_>, with_dry_run: bool) -> Verdict {
        let denied = |reason| Verdict { decision: Decision::Deny(reason), dry_run: None };
        let Some(service) = self.service(request.service) else {
            return denied(DenyReason::UnknownService);
        };
        if matches!(request.action, crate::Action::Http { .. }) && service.protocol != "http" {
            return denied(DenyReason::Invalid(format!("service `{}` does not speak HTTP", service.name)));
        }
        let (cedar_request, entities) = match to_cedar(self.vocab, request, service) {
            Ok(built) => built,
            Err(message) => return denied(DenyReason::Invalid(message)),
        };
        let response = self.authorizer.is_authorized(&cedar_request, &self.set, &entities);
        let decision = self.interpret(&response, service);
        let dry_run = if with_dry_run {
            self.dry_run.evaluate(&self.authorizer, &cedar_request, &entities, &decision)
        } else {
            None
        };
        Verdict { decision, dry_run }
    }

    fn interpret(&self, response: &Response, service: &ServiceEntry) -> Decision {
        let diagnostics = response.diagnostics();
        let mut reasons: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
        reasons.sort();
        let errors: Vec<(&PolicyId, String)> = diagnostics
            .errors()
            .map(|error| match error {
                AuthorizationError::PolicyEvaluationError(e) => (e.policy_id(), e.to_string()),
            })
            .collect();
        match response.decision() {
            cedar_policy::Decision::Allow => {
                // Cedar skips a policy that errors. A forbid that errored
                // might have matched, so an allow next to it is doubtful.
                let failed_forbid =
                    errors.iter().find(|(id, _)| self.set.policy(id).map(|p| p.effect()) == Some(Effect::Forbid));
                if let Some((_, message)) = failed_forbid {
                    return Decision::Deny(DenyReason::Invalid(message.clone()));
                }
                Decision::Allow(Grant::new(service.name.clone(), service.segment.clone(), reasons, self.bundle.version))
            }
            cedar_policy::Decision::Deny if !reasons.is_empty() => {
                Decision::Deny(DenyReason::Forbidden { policy_ids: reasons })
            }
            cedar_policy::Decision::Deny => match errors.first() {
                Some((_, message)) => Decision::Deny(DenyReason::Invalid(message.clone())),
                None => Decision::Deny(DenyReason::NoPolicyPermits),
            },
        }
    }
}

fn index_services(services: &[ServiceEntry]) -> Result<HashMap<String, usize>, LoadError> {
    let mut index = HashMap::with_capacity(services.len());
    for (position, service) in services.iter().enumerate() {
        check_service(service)?;
        if index.insert(service.name.clone(), position).is_some() {
            return Err(LoadError::DuplicateService { name: service.name.clone() });
        }
    }
    Ok(index)
}

fn check_service(service: &ServiceEntry) -> Result<(), LoadError> {
    let invalid =
        |message: &str| LoadError::InvalidService { service: service.name.clone(), message: message.to_owned() };
    if service.name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if service.segment.is_empty() {
        return Err(invalid("the segment is empty"));
    }
    if !matches!(service.protocol.as_str(), "tcp" | "http") {
        return Err(LoadError::UnknownServiceProtocol {
            service: service.name.clone(),
            protocol: service.protocol.clone(),
        });
    }
    Ok(())
}
