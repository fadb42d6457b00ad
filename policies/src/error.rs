//! Why a policy bundle could not be loaded.

use std::path::PathBuf;

/// A policy bundle (or a directory of policy files) was refused.
///
/// Every variant that concerns policy text names the file, and where Cedar
/// reports one, the line and column (both 1-based) of the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A policy directory holds no `*.cedar` file.
    #[error("no .cedar files in {}", dir.display())]
    NoPolicyFiles {
        /// The directory that was read.
        dir: PathBuf,
    },

    /// The schema compiled into this crate does not parse: a bug, caught by
    /// this crate's tests.
    #[error("the built-in policy schema is invalid: {message}")]
    Schema {
        /// Cedar's message.
        message: String,
    },

    /// A policy file is not valid Cedar.
    #[error("{file}:{line}:{column}: syntax error: {message}")]
    Parse {
        /// The policy file's name.
        file: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// Cedar's message.
        message: String,
    },

    /// A policy file holds a template (a policy with `?principal` or
    /// `?resource` slots); bundles carry static policies only.
    #[error("{file}:{line}:{column}: policy templates are not supported")]
    Template {
        /// The policy file's name.
        file: String,
        /// 1-based line where the template starts.
        line: usize,
        /// 1-based column where the template starts.
        column: usize,
    },

    /// A policy parses but does not type-check against the schema (strict
    /// validation).
    #[error("{file}:{line}:{column}: policy `{policy_id}` does not match the schema: {message}")]
    Validation {
        /// The policy file's name.
        file: String,
        /// 1-based line of the offending expression.
        line: usize,
        /// 1-based column of the offending expression.
        column: usize,
        /// The policy's id (its `@id` annotation, or `file:line`).
        policy_id: String,
        /// Cedar's message.
        message: String,
    },

    /// A policy's `@id("...")` annotation is empty.
    #[error("{file}:{line}: @id must not be empty")]
    EmptyPolicyId {
        /// The policy file's name.
        file: String,
        /// 1-based line where the policy starts.
        line: usize,
    },

    /// A policy's `@mode("...")` annotation is neither `enforce` nor `dry_run`.
    #[error("{file}:{line}: unknown @mode({mode:?}): use \"enforce\" (the default) or \"dry_run\"")]
    UnknownMode {
        /// The policy file's name.
        file: String,
        /// 1-based line where the policy starts.
        line: usize,
        /// The mode given.
        mode: String,
    },

    /// Two policies share an id.
    #[error("policy id `{id}` is used more than once (in {})", files.join(" and "))]
    DuplicatePolicyId {
        /// The repeated id.
        id: String,
        /// The files of the first and the repeated use (the same name twice
        /// when both are in one file).
        files: Vec<String>,
    },

    /// Two policy files in a bundle have the same name.
    #[error("policy file `{name}` appears more than once in the bundle")]
    DuplicateFile {
        /// The repeated file name.
        name: String,
    },

    /// Two service catalog entries have the same name.
    #[error("service `{name}` is listed more than once")]
    DuplicateService {
        /// The repeated service name.
        name: String,
    },

    /// A service's protocol is neither `tcp` nor `http`.
    #[error("service `{service}` has protocol `{protocol}`; expected \"tcp\" or \"http\"")]
    UnknownServiceProtocol {
        /// The service's name.
        service: String,
        /// The protocol it was given.
        protocol: String,
    },

    /// A service catalog entry is malformed in another way (an empty name
    /// or segment).
    #[error("service `{service}`: {message}")]
    InvalidService {
        /// The service's name (may be empty).
        service: String,
        /// What is wrong.
        message: String,
    },

    /// A file nests brackets or `if`s deeper than [`MAX_NESTING`](crate::MAX_NESTING):
    /// refused before parsing, as Cedar's recursive parser and validator
    /// would exhaust the stack.
    #[error("{file}:{line}:{column}: nested more than {limit} levels deep")]
    TooDeep {
        /// The file's name.
        file: String,
        /// 1-based line where the limit was passed.
        line: usize,
        /// 1-based column where the limit was passed.
        column: usize,
        /// The limit.
        limit: usize,
    },

    /// A file is larger than [`MAX_FILE_BYTES`](crate::MAX_FILE_BYTES).
    #[error("{file}: {bytes} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The file's name.
        file: String,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}
