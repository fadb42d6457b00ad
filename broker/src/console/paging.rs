//! Server-side paging for the console's tables that grow (people, sessions,
//! machines, connectors, audit): the page and page size read from the
//! query string and checked, and the pager under a table ("Showing 26–50
//! of 212", previous / next links, a page-size picker). Everything is a
//! link or a plain GET form, so it works from the keyboard and without
//! script. Several tables on one page page independently: each has a key,
//! and its parameters are `KEY_page` and `KEY_size`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::layout::{self, Nav};
use super::viewer::Viewer;

/// The page sizes a person can pick.
pub(crate) const SIZES: [u32; 4] = [10, 25, 50, 100];
/// The page size when none is given.
pub(crate) const DEFAULT_SIZE: u32 = 25;
/// The highest page number accepted.
const MAX_PAGE: u64 = 1_000_000;

/// A paging parameter that is not acceptable; the message says what is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PagingError {
    /// Not a whole number from 1 to [`MAX_PAGE`].
    #[error("{param} must be a page number from 1 to {MAX_PAGE}, not {value:?}")]
    Page {
        /// The parameter's name.
        param: String,
        /// What was sent.
        value: String,
    },
    /// Not a column the table can be ordered by.
    #[error("{param} must be one of {allowed}, not {value:?}")]
    Sort {
        /// The parameter's name.
        param: String,
        /// What was sent.
        value: String,
        /// The columns the table offers.
        allowed: String,
    },
    /// Not `asc` or `desc`.
    #[error("{param} must be asc or desc, not {value:?}")]
    Direction {
        /// The parameter's name.
        param: String,
        /// What was sent.
        value: String,
    },
    /// Not one of [`SIZES`].
    #[error("{param} must be one of 10, 25, 50 or 100 rows, not {value:?}")]
    Size {
        /// The parameter's name.
        param: String,
        /// What was sent.
        value: String,
    },
}

/// Which page of a table was asked for (1-based) and how many rows a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Paging {
    pub(crate) page: u64,
    pub(crate) size: u32,
}

impl Default for Paging {
    fn default() -> Self {
        Paging { page: 1, size: DEFAULT_SIZE }
    }
}

impl Paging {
    /// The paging of table `key` in the raw query string `query`.
    pub(crate) fn parse(query: Option<&str>, key: &str) -> Result<Paging, PagingError> {
        let (page_param, size_param) = (format!("{key}_page"), format!("{key}_size"));
        let mut paging = Paging { page: 1, size: DEFAULT_SIZE };
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if k == page_param.as_str() {
                paging.page = v.trim().parse::<u64>().ok().filter(|p| (1..=MAX_PAGE).contains(p)).ok_or_else(|| {
                    PagingError::Page { param: page_param.clone(), value: v.chars().take(40).collect() }
                })?;
            } else if k == size_param.as_str() {
                paging.size = v.trim().parse::<u32>().ok().filter(|s| SIZES.contains(s)).ok_or_else(|| {
                    PagingError::Size { param: size_param.clone(), value: v.chars().take(40).collect() }
                })?;
            }
        }
        Ok(paging)
    }

    /// The rows to show of `total`: a page past the end shows the last one.
    pub(crate) fn window(self, total: u64) -> Window {
        let size = u64::from(self.size);
        let pages = total.div_ceil(size).max(1);
        let page = self.page.min(pages);
        Window { page, pages, size: self.size, offset: (page - 1) * size, total }
    }
}

/// One page of a table of `total` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// The page shown (1-based, at most `pages`).
    pub(crate) page: u64,
    /// How many pages there are (at least 1).
    pub(crate) pages: u64,
    /// Rows per page.
    pub(crate) size: u32,
    /// Rows before this page.
    pub(crate) offset: u64,
    /// Rows in the whole table.
    pub(crate) total: u64,
}

impl Window {
    /// `LIMIT` and `OFFSET` as SQL binds them.
    pub(crate) fn limit_offset(&self) -> (i64, i64) {
        (i64::from(self.size), i64::try_from(self.offset).unwrap_or(i64::MAX))
    }

    /// `Showing 26–50 of 212`, for `shown` rows on this page.
    pub(crate) fn summary(&self, shown: usize) -> String {
        if self.total == 0 || shown == 0 {
            return format!("Showing 0 of {}", self.total);
        }
        let last = self.offset + u64::try_from(shown).unwrap_or(0);
        format!("Showing {}–{} of {}", self.offset + 1, last, self.total)
    }
}

/// `path?query` with table `key`'s paging replaced (`page` None: dropped).
pub(crate) fn link(path: &str, query: Option<&str>, key: &str, page: Option<u64>, size: u32) -> String {
    let (page_param, size_param) = (format!("{key}_page"), format!("{key}_size"));
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k != page_param.as_str() && k != size_param.as_str() {
            out.append_pair(&k, &v);
        }
    }
    if let Some(page) = page {
        out.append_pair(&page_param, &page.to_string());
    }
    if size != DEFAULT_SIZE {
        out.append_pair(&size_param, &size.to_string());
    }
    let query = out.finish();
    if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") }
}

/// The pager under table `key`: what is shown, previous / next, the page size.
pub(crate) fn pager(path: &str, query: Option<&str>, key: &str, w: &Window, shown: usize) -> Markup {
    let moves = Moves {
        summary: w.summary(shown),
        previous: (w.page > 1).then(|| link(path, query, key, Some(w.page - 1), w.size)),
        next: (w.page < w.pages).then(|| link(path, query, key, Some(w.page + 1), w.size)),
        position: Some(format!("Page {} of {}", w.page, w.pages)),
    };
    render(path, query, key, w.size, &moves)
}

/// What a pager offers: built by [`pager`], or by a table paged another way
/// (the audit trail pages by key).
pub(crate) struct Moves {
    /// `Showing 26–50 of 212`.
    pub(crate) summary: String,
    /// Where "Previous" goes; `None` on the first page.
    pub(crate) previous: Option<String>,
    /// Where "Next" goes; `None` on the last page.
    pub(crate) next: Option<String>,
    /// `Page 2 of 9`, when known.
    pub(crate) position: Option<String>,
}

/// The pager markup: links for the moves and a GET form for the page size
/// that keeps every other parameter (and goes back to the first page).
pub(crate) fn render(path: &str, query: Option<&str>, key: &str, size: u32, moves: &Moves) -> Markup {
    let (page_param, size_param) = (format!("{key}_page"), format!("{key}_size"));
    let keep: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k.as_ref() != page_param && k.as_ref() != size_param && k.as_ref() != "before")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    html! {
        nav.pager id={ (key) "-pager" } aria-label={ "Pages of " (key) } {
            span.range role="status" { (moves.summary) }
            @match &moves.previous {
                Some(href) => a.prev rel="prev" href=(href) { "← Previous" },
                None => span.prev.muted aria-disabled="true" { "← Previous" },
            }
            @if let Some(position) = &moves.position { span.page-of { (position) } }
            @match &moves.next {
                Some(href) => a.next rel="next" href=(href) { "Next →" },
                None => span.next.muted aria-disabled="true" { "Next →" },
            }
            form.inline.page-size method="get" action=(path) {
                @for (k, v) in &keep { input type="hidden" name=(k) value=(v); }
                label for={ (key) "-size" } { "Rows per page " }
                select id={ (key) "-size" } name=(size_param) {
                    @for s in SIZES { option value=(s) selected[s == size] { (s) } }
                }
                " " button type="submit" { "Show" }
            }
        }
    }
}

/// 400: a paging parameter was wrong; the page says which and how to fix it.
pub(crate) fn bad_request(viewer: &Viewer, nav: Nav, title: &str, path: &str, e: &PagingError) -> Response {
    let body = html! {
        (layout::notice("error", &e.to_string()))
        p { a href=(path) { "Back to the first page" } }
    };
    (StatusCode::BAD_REQUEST, layout::page(viewer, nav, title, body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_is_read_per_table_and_defaults_to_the_first_page() {
        let q = Some("people_page=3&people_size=10&sessions_page=2&kind=x");
        assert_eq!(Paging::parse(q, "people"), Ok(Paging { page: 3, size: 10 }));
        assert_eq!(Paging::parse(q, "sessions"), Ok(Paging { page: 2, size: DEFAULT_SIZE }));
        assert_eq!(Paging::parse(None, "machines"), Ok(Paging { page: 1, size: DEFAULT_SIZE }));
    }

    #[test]
    fn bad_paging_is_refused_with_a_message_naming_the_parameter() {
        for bad in ["people_page=0", "people_page=-1", "people_page=abc", "people_page=99999999999999999999"] {
            let e = Paging::parse(Some(bad), "people").expect_err(bad);
            assert!(e.to_string().starts_with("people_page must be a page number from 1 to"), "{e}");
        }
        for bad in ["people_size=7", "people_size=100000", "people_size="] {
            let e = Paging::parse(Some(bad), "people").expect_err(bad);
            assert!(e.to_string().contains("people_size must be one of 10, 25, 50 or 100"), "{e}");
        }
        let long = format!("people_page={}", "9".repeat(500));
        assert!(Paging::parse(Some(&long), "people").unwrap_err().to_string().len() < 120, "the echo is cut short");
    }

    #[test]
    fn a_window_clamps_to_the_last_page_and_says_what_it_shows() {
        let w = Paging { page: 2, size: 25 }.window(60);
        assert_eq!((w.page, w.pages, w.offset), (2, 3, 25));
        assert_eq!(w.summary(25), "Showing 26–50 of 60");
        let past = Paging { page: 9, size: 25 }.window(60);
        assert_eq!((past.page, past.offset), (3, 50));
        assert_eq!(past.summary(10), "Showing 51–60 of 60");
        let empty = Paging { page: 1, size: 10 }.window(0);
        assert_eq!((empty.page, empty.pages, empty.offset), (1, 1, 0));
        assert_eq!(empty.summary(0), "Showing 0 of 0");
    }

    #[test]
    fn links_keep_the_other_parameters_and_replace_this_tables() {
        let q = Some("people_page=3&sessions_page=2&kind=a%26b");
        assert_eq!(
            link("/admin/sessions", q, "people", Some(4), 10),
            "/admin/sessions?sessions_page=2&kind=a%26b&people_page=4&people_size=10"
        );
        assert_eq!(link("/admin/machines", None, "machines", None, DEFAULT_SIZE), "/admin/machines");
    }
}
