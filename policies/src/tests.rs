//! Unit tests for the crate's internal arithmetic.

use crate::compile::line_column;
use crate::request::hour_and_weekday;

#[test]
fn epoch_was_a_thursday_at_midnight() {
    assert_eq!(hour_and_weekday(0), (0, 3));
}

#[test]
fn known_dates_have_the_right_weekday_and_hour() {
    // 2023-11-14 22:13:20 UTC, a Tuesday.
    assert_eq!(hour_and_weekday(1_700_000_000), (22, 1));
    // 2024-02-29 00:00:00 UTC, a Thursday.
    assert_eq!(hour_and_weekday(1_709_164_800), (0, 3));
    // 2024-03-03 23:59:59 UTC, a Sunday.
    assert_eq!(hour_and_weekday(1_709_510_399), (23, 6));
}

#[test]
fn line_column_counts_from_one_in_characters() {
    let text = "ab\ncdé\nfg";
    assert_eq!(line_column(text, 0), (1, 1));
    assert_eq!(line_column(text, 3), (2, 1));
    assert_eq!(line_column(text, 5), (2, 3));
    // After the two-byte é.
    assert_eq!(line_column(text, 8), (3, 1));
    assert_eq!(line_column(text, 1_000), (3, 3));
}
