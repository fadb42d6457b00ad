//! Server-side ordering for the paged tables: a header is a link that orders
//! the whole table (not just the page shown) by its column, and again to
//! reverse. The columns a table can be ordered by are fixed in the code;
//! `KEY_sort` names one of them and `KEY_dir` is `asc` or `desc`. Anything
//! else is refused with a message, like a bad page number.

use maud::{Markup, html};

use super::paging::{Paging, PagingError};
use crate::db::OrderBy;

/// A column a table can be ordered by.
#[derive(Debug)]
pub(crate) struct Column {
    /// Its name in `KEY_sort`.
    pub(crate) name: &'static str,
    /// The SQL expression it orders by (a constant, never request text).
    pub(crate) expr: &'static str,
}

/// The orders one paged table offers.
#[derive(Debug)]
pub(crate) struct Sortable {
    /// The table's key, as for paging.
    pub(crate) key: &'static str,
    pub(crate) columns: &'static [Column],
    /// The order when none is asked for: a column name and whether descending.
    pub(crate) default: (&'static str, bool),
}

/// Which page of a table, in which order.
pub(crate) type Listing = (Paging, Sorted);

/// The paging and order of `table` in `query`.
pub(crate) fn listing(query: Option<&str>, table: &Sortable) -> Result<Listing, PagingError> {
    Ok((Paging::parse(query, table.key)?, table.parse(query)?))
}

/// The order a table is shown in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sorted {
    /// The column's name.
    pub(crate) name: &'static str,
    expr: &'static str,
    /// Largest first.
    pub(crate) descending: bool,
}

impl Sorted {
    /// The database order for this.
    pub(crate) fn order(&self) -> OrderBy {
        OrderBy { expr: self.expr, descending: self.descending }
    }
}

impl Sortable {
    /// The order asked for in `query`, or the default.
    pub(crate) fn parse(&self, query: Option<&str>) -> Result<Sorted, PagingError> {
        let (sort_param, dir_param) = (format!("{}_sort", self.key), format!("{}_dir", self.key));
        let (mut name, mut descending) = self.default;
        let mut asked_dir = None;
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if k == sort_param.as_str() {
                name = self.column(&v).map(|c| c.name).ok_or_else(|| PagingError::Sort {
                    param: sort_param.clone(),
                    value: v.chars().take(40).collect(),
                    allowed: self.columns.iter().map(|c| c.name).collect::<Vec<_>>().join(", "),
                })?;
            } else if k == dir_param.as_str() {
                asked_dir = Some(match v.as_ref() {
                    "asc" => false,
                    "desc" => true,
                    _ => return Err(PagingError::Direction { param: dir_param, value: v.chars().take(40).collect() }),
                });
            }
        }
        if let Some(dir) = asked_dir {
            descending = dir;
        }
        let column = self.column(name).expect("the default names one of the table's columns");
        Ok(Sorted { name: column.name, expr: column.expr, descending })
    }

    /// The first page in the default order.
    pub(crate) fn first_page(&self) -> Listing {
        let (name, descending) = self.default;
        let column = self.column(name).expect("the default names one of the table's columns");
        (Paging::default(), Sorted { name: column.name, expr: column.expr, descending })
    }

    fn column(&self, name: &str) -> Option<&'static Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// A header cell: a link ordering the table by `name` (reversing it if
    /// it is the current order), marked with `aria-sort` when it is.
    pub(crate) fn header(&self, path: &str, query: Option<&str>, now: &Sorted, name: &str, label: &str) -> Markup {
        let current = now.name == name;
        let descending = current && !now.descending;
        let href = self.link(path, query, name, descending);
        let state = current.then_some(if now.descending { "descending" } else { "ascending" });
        let arrow = match state {
            Some("ascending") => " ▲",
            Some(_) => " ▼",
            None => "",
        };
        html! {
            th aria-sort=[state] {
                a.sort href=(href) title={ "Order the whole table by " (label) } { (label) (arrow) }
            }
        }
    }

    /// `path?query` ordered by `name`, back on the first page.
    fn link(&self, path: &str, query: Option<&str>, name: &str, descending: bool) -> String {
        let drop = [format!("{}_sort", self.key), format!("{}_dir", self.key), format!("{}_page", self.key)];
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !drop.iter().any(|d| d.as_str() == k.as_ref()) {
                out.append_pair(&k, &v);
            }
        }
        out.append_pair(&drop[0], name);
        out.append_pair(&drop[1], if descending { "desc" } else { "asc" });
        format!("{path}?{}", out.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: Sortable = Sortable {
        key: "people",
        columns: &[Column { name: "name", expr: "i.name" }, Column { name: "last_sign_in", expr: "u.last_login" }],
        default: ("name", false),
    };

    #[test]
    fn an_order_is_read_from_the_query_or_defaults() {
        assert_eq!(TABLE.parse(None).unwrap().order(), OrderBy::asc("i.name"));
        let q = Some("people_sort=last_sign_in&people_dir=desc&sessions_sort=x");
        assert_eq!(TABLE.parse(q).unwrap().order(), OrderBy::desc("u.last_login"));
        assert_eq!(TABLE.parse(Some("people_dir=desc")).unwrap().order(), OrderBy::desc("i.name"));
    }

    #[test]
    fn only_the_tables_columns_and_two_directions_are_accepted() {
        for bad in ["people_sort=i.name", "people_sort=name;drop table users", "people_sort="] {
            let e = TABLE.parse(Some(bad)).expect_err(bad).to_string();
            assert!(e.starts_with("people_sort must be one of name, last_sign_in"), "{e}");
        }
        let e = TABLE.parse(Some("people_dir=up")).unwrap_err().to_string();
        assert!(e.contains("people_dir must be asc or desc"), "{e}");
    }

    #[test]
    fn a_header_links_to_the_reverse_of_the_current_order_on_the_first_page() {
        let q = Some("people_page=3&people_size=10&people_sort=name&people_dir=asc");
        let now = TABLE.parse(q).unwrap();
        let same = TABLE.header("/admin/users", q, &now, "name", "Name").into_string();
        assert!(same.contains(r#"aria-sort="ascending""#), "{same}");
        assert!(same.contains("/admin/users?people_size=10&amp;people_sort=name&amp;people_dir=desc"), "{same}");
        let other = TABLE.header("/admin/users", q, &now, "last_sign_in", "Last sign-in").into_string();
        assert!(!other.contains("aria-sort") && other.contains("people_sort=last_sign_in&amp;people_dir=asc"));
    }
}
