//! How a listing is ordered: a column expression fixed in the code (never
//! text from a request) and a direction. Rows without a value come last in
//! both directions and on both stores (SQLite and PostgreSQL put NULLs at
//! opposite ends by default).

/// `ORDER BY` for one listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderBy {
    /// The column expression, e.g. `i.name`: always a constant of the caller's code.
    pub expr: &'static str,
    /// Largest first.
    pub descending: bool,
}

impl OrderBy {
    /// Ascending by `expr`.
    #[must_use]
    pub const fn asc(expr: &'static str) -> Self {
        Self { expr, descending: false }
    }

    /// Descending by `expr`.
    #[must_use]
    pub const fn desc(expr: &'static str) -> Self {
        Self { expr, descending: true }
    }

    /// The terms after `ORDER BY`, without the tie-breaker the caller adds.
    #[must_use]
    pub fn sql(&self) -> String {
        let dir = if self.descending { "DESC" } else { "ASC" };
        format!("({expr} IS NULL) ASC, {expr} {dir}", expr = self.expr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_values_sort_last_either_way() {
        assert_eq!(OrderBy::asc("u.email").sql(), "(u.email IS NULL) ASC, u.email ASC");
        assert_eq!(OrderBy::desc("created_at").sql(), "(created_at IS NULL) ASC, created_at DESC");
    }
}
