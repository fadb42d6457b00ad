//! The Cedar schema every policy and request is checked against, parsed once.

use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{EntityId, EntityTypeName, EntityUid, Schema, Validator};

use crate::LoadError;

/// The text of `policies/schema.cedarschema` (Cedar schema syntax), for
/// showing to admins and for tools that validate policies themselves.
pub const SCHEMA_TEXT: &str = include_str!("../schema.cedarschema");

/// The parsed schema plus the entity type and action names the engine uses
/// to build requests, so request building never parses a name.
pub(crate) struct Vocabulary {
    pub(crate) validator: Validator,
    pub(crate) user: EntityTypeName,
    pub(crate) machine: EntityTypeName,
    pub(crate) group: EntityTypeName,
    pub(crate) segment: EntityTypeName,
    pub(crate) service: EntityTypeName,
    pub(crate) connect: EntityUid,
    pub(crate) http: EntityUid,
}

impl Vocabulary {
    pub(crate) fn schema(&self) -> &Schema {
        self.validator.schema()
    }

    fn build() -> Result<Self, String> {
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA_TEXT).map_err(|e| e.to_string())?;
        let type_name = |name: &str| EntityTypeName::from_str(name).map_err(|e| e.to_string());
        let action_type = type_name("Action")?;
        let action = |id: &str| EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(id));
        Ok(Self {
            user: type_name("User")?,
            machine: type_name("Machine")?,
            group: type_name("Group")?,
            segment: type_name("Segment")?,
            service: type_name("Service")?,
            connect: action("connect"),
            http: action("http"),
            validator: Validator::new(schema),
        })
    }
}

static VOCABULARY: OnceLock<Result<Vocabulary, String>> = OnceLock::new();

pub(crate) fn vocabulary() -> Result<&'static Vocabulary, LoadError> {
    VOCABULARY.get_or_init(Vocabulary::build).as_ref().map_err(|message| LoadError::Schema { message: message.clone() })
}

/// The parsed policy schema ([`SCHEMA_TEXT`]).
///
/// # Errors
///
/// [`LoadError::Schema`] if the built-in schema does not parse (a bug in
/// this crate that its tests catch).
pub fn schema() -> Result<&'static Schema, LoadError> {
    vocabulary().map(Vocabulary::schema)
}
