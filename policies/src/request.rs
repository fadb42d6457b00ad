//! An access request and its translation into Cedar entities and context.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use cedar_policy::{Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression};

use crate::ServiceEntry;
use crate::schema::Vocabulary;

/// Whether a principal is a person or a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// A person (`User::"<id>"`).
    User,
    /// A CI job, AI agent or other enrolled machine (`Machine::"<id>"`).
    Machine,
}

/// Who is asking, as the broker or connector verified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Person or machine.
    pub kind: PrincipalKind,
    /// The stable identity id (the entity id in policies).
    pub id: String,
    /// Display name; a machine's `name` attribute.
    pub name: String,
    /// Group names (`Group::"<name>"`), direct memberships.
    pub groups: Vec<String>,
}

/// What the principal wants to do to the service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Open a tunnel (`Action::"connect"`).
    Connect,
    /// Send one HTTP request to an HTTP service (`Action::"http"`).
    Http {
        /// Upper-case method, e.g. `POST`.
        method: String,
        /// Request path without the query string.
        path: String,
        /// The fields read from a JSON request body; `None` when the body
        /// was not read (not JSON, or empty).
        body: Option<BodyFields>,
    },
}

/// Fields of an OpenAI-compatible JSON request body, as the connector read
/// them. Policies see `model`, `max_tokens` and `n` only when the body set
/// them, and `logprobs` and `stream` whenever a body was read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BodyFields {
    /// The `model` asked for.
    pub model: Option<String>,
    /// The largest of the token caps the body sets (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`).
    pub max_tokens: Option<u64>,
    /// How many answers the workload generates (`n`, or `best_of` if larger).
    pub n: Option<u64>,
    /// Whether the answer may carry log probabilities (`logprobs`,
    /// `top_logprobs` or `prompt_logprobs` set).
    pub logprobs: bool,
    /// Whether the answer is streamed.
    pub stream: bool,
}

/// Facts about the moment of the request, beyond who and what.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// Seconds since the principal last proved a second factor; `None` if
    /// the session never did.
    pub mfa_age_secs: Option<u64>,
    /// How the principal authenticated, e.g. `oidc`, `webauthn`.
    pub auth_methods: Vec<String>,
    /// The client's address as the broker saw it.
    pub source_ip: Option<IpAddr>,
    /// The decision time, seconds since the Unix epoch; policies see the
    /// UTC hour and day of week.
    pub now_unix_secs: u64,
    /// The client's reported version.
    pub client_version: Option<String>,
}

/// One question for the engine: may `principal` do `action` to `service`?
#[derive(Clone, Debug)]
pub struct AccessRequest<'a> {
    /// Who is asking.
    pub principal: &'a Principal,
    /// What they want to do.
    pub action: Action,
    /// The service's catalog name.
    pub service: &'a str,
    /// The circumstances.
    pub context: &'a RequestContext,
}

/// The UTC hour (0..=23) and day of week (0 = Monday ..= 6 = Sunday).
pub(crate) fn hour_and_weekday(now_unix_secs: u64) -> (u64, u64) {
    let days = now_unix_secs / 86_400;
    let hour = (now_unix_secs % 86_400) / 3_600;
    // 1970-01-01 was a Thursday, day 3 counting from Monday = 0.
    (hour, (days + 3) % 7)
}

/// Builds the Cedar request (validated against the schema) and the
/// entities it refers to. The error is a human-readable reason.
pub(crate) fn to_cedar(
    vocab: &Vocabulary,
    request: &AccessRequest<'_>,
    service: &ServiceEntry,
) -> Result<(Request, Entities), String> {
    let principal = principal_entity(vocab, request.principal)?;
    let principal_uid = principal.uid();
    let resource = service_entity(vocab, service)?;
    let resource_uid = resource.uid();

    let groups: BTreeSet<&String> = request.principal.groups.iter().collect();
    let mut entities =
        vec![principal, resource, Entity::new_no_attrs(uid(&vocab.segment, &service.segment), HashSet::new())];
    entities.extend(groups.into_iter().map(|g| Entity::new_no_attrs(uid(&vocab.group, g), HashSet::new())));
    // The entities are built here from typed fields, always in the schema's
    // shape (the engine's tests decide through this path against the
    // validated policies), so they are not re-validated on every request.
    let entities = Entities::from_entities(entities, None).map_err(|e| format!("entities: {e}"))?;

    let action = match request.action {
        Action::Connect => vocab.connect.clone(),
        Action::Http { .. } => vocab.http.clone(),
    };
    let context = context(request)?;
    let request = Request::new(principal_uid, action, resource_uid, context, Some(vocab.schema()))
        .map_err(|e| format!("request does not match the schema: {e}"))?;
    Ok((request, entities))
}

fn uid(kind: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
}

fn principal_entity(vocab: &Vocabulary, principal: &Principal) -> Result<Entity, String> {
    let parents = principal.groups.iter().map(|g| uid(&vocab.group, g)).collect();
    let (kind, attrs) = match principal.kind {
        PrincipalKind::User => (&vocab.user, HashMap::new()),
        PrincipalKind::Machine => (
            &vocab.machine,
            HashMap::from([("name".to_owned(), RestrictedExpression::new_string(principal.name.clone()))]),
        ),
    };
    Entity::new(uid(kind, &principal.id), attrs, parents).map_err(|e| format!("principal: {e}"))
}

fn service_entity(vocab: &Vocabulary, service: &ServiceEntry) -> Result<Entity, String> {
    let labels = service.labels.iter().map(|l| RestrictedExpression::new_string(l.clone()));
    let attrs = HashMap::from([
        ("protocol".to_owned(), RestrictedExpression::new_string(service.protocol.clone())),
        ("labels".to_owned(), RestrictedExpression::new_set(labels)),
    ]);
    let parents = HashSet::from([uid(&vocab.segment, &service.segment)]);
    Entity::new(uid(&vocab.service, &service.name), attrs, parents).map_err(|e| format!("service: {e}"))
}

fn context(request: &AccessRequest<'_>) -> Result<Context, String> {
    let ctx = request.context;
    let (hour, weekday) = hour_and_weekday(ctx.now_unix_secs);
    let methods = ctx.auth_methods.iter().map(|m| RestrictedExpression::new_string(m.clone()));
    let mut pairs = vec![
        ("auth_methods".to_owned(), RestrictedExpression::new_set(methods)),
        ("hour".to_owned(), long(hour)?),
        ("day_of_week".to_owned(), long(weekday)?),
    ];
    if let Some(age) = ctx.mfa_age_secs {
        pairs.push(("mfa_age_secs".to_owned(), long(age)?));
    }
    if let Some(ip) = ctx.source_ip {
        pairs.push(("source_ip".to_owned(), RestrictedExpression::new_ip(cedar_ip(ip))));
    }
    if let Some(version) = &ctx.client_version {
        pairs.push(("client_version".to_owned(), RestrictedExpression::new_string(version.clone())));
    }
    if let Action::Http { method, path, body } = &request.action {
        pairs.push(("method".to_owned(), RestrictedExpression::new_string(method.clone())));
        pairs.push(("path".to_owned(), RestrictedExpression::new_string(path.clone())));
        if let Some(body) = body {
            body_pairs(body, &mut pairs)?;
        }
    }
    Context::from_pairs(pairs).map_err(|e| format!("context: {e}"))
}

fn body_pairs(body: &BodyFields, pairs: &mut Vec<(String, RestrictedExpression)>) -> Result<(), String> {
    pairs.push(("logprobs".to_owned(), RestrictedExpression::new_bool(body.logprobs)));
    pairs.push(("stream".to_owned(), RestrictedExpression::new_bool(body.stream)));
    if let Some(model) = &body.model {
        pairs.push(("model".to_owned(), RestrictedExpression::new_string(model.clone())));
    }
    if let Some(max_tokens) = body.max_tokens {
        pairs.push(("max_tokens".to_owned(), long(max_tokens)?));
    }
    if let Some(n) = body.n {
        pairs.push(("n".to_owned(), long(n)?));
    }
    Ok(())
}

fn long(value: u64) -> Result<RestrictedExpression, String> {
    i64::try_from(value)
        .map(RestrictedExpression::new_long)
        .map_err(|_| format!("{value} is too large for a Cedar Long"))
}

/// Cedar's `ip()` does not accept IPv4-mapped IPv6 notation; a dual-stack
/// listener reports IPv4 clients that way, so unwrap them.
fn cedar_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}
