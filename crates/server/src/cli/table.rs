//! Text for people: aligned tables, `key: value` blocks, and times in UTC.
//!
//! Invariant: this is the human output only; `--json` never passes through here.

use std::fmt::Write as _;

use serde_json::Value;

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header_row: Vec<String> = headers.iter().map(|header| (*header).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[index].saturating_sub(cell.chars().count());
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `key: value` lines with the values aligned.
pub fn render_fields(fields: &[(&str, String)]) -> String {
    let width = fields
        .iter()
        .map(|(key, _)| key.chars().count())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for (key, value) in fields {
        let pad = width - key.chars().count();
        let _ = writeln!(text, "{key}:{}  {value}", " ".repeat(pad));
    }
    text
}

/// A field of an API object as text: strings bare, `null` or absent as `-`.
pub fn field(object: &Value, key: &str) -> String {
    match object.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

pub fn flag(object: &Value, key: &str) -> bool {
    object.get(key).and_then(Value::as_bool).unwrap_or(false)
}

pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// A Unix time field as `2026-11-28 10:10 UTC`, or `otherwise` when it is null.
pub fn time_field(object: &Value, key: &str, otherwise: &str) -> String {
    match object.get(key).and_then(Value::as_i64) {
        Some(unix) => time(unix),
        None => otherwise.to_owned(),
    }
}

/// Unix seconds as a UTC date and time to the minute.
pub fn time(unix: i64) -> String {
    let full = auth::token::rfc3339(unix);
    format!("{} {} UTC", &full[..10], &full[11..16])
}

/// Whether a robot or token works: `revoked`, `expired` or `active`.
pub fn status(object: &Value, now: i64) -> &'static str {
    if flag(object, "revoked") {
        "revoked"
    } else if object
        .get("expires_at")
        .and_then(Value::as_i64)
        .is_some_and(|expires_at| expires_at <= now)
    {
        "expired"
    } else {
        "active"
    }
}

/// A robot's grants as `team/app-*:pull,push`, separated by `sep`.
pub fn grants(robot: &Value, sep: &str) -> String {
    let grants = robot
        .get("grants")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    grants
        .iter()
        .map(|grant| {
            let actions: Vec<&str> = grant
                .get("actions")
                .and_then(Value::as_array)
                .map(|actions| actions.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("{}:{}", field(grant, "repositories"), actions.join(","))
        })
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let rows = vec![
            vec!["alice".to_owned(), "developer".to_owned()],
            vec!["bob".to_owned(), "owner".to_owned()],
        ];
        assert_eq!(
            render(&["USER", "ROLE"], &rows),
            "USER   ROLE\nalice  developer\nbob    owner\n"
        );
    }

    #[test]
    fn fields_align_their_values() {
        assert_eq!(
            render_fields(&[("name", "team".into()), ("visibility", "private".into())]),
            "name:        team\nvisibility:  private\n"
        );
    }

    #[test]
    fn times_are_utc_to_the_minute() {
        assert_eq!(time(0), "1970-01-01 00:00 UTC");
        assert_eq!(time(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(time(1_795_870_245), "2026-11-28 12:50 UTC");
    }

    #[test]
    fn status_says_revoked_before_expired() {
        assert_eq!(
            status(&json!({"revoked": false, "expires_at": 200}), 100),
            "active"
        );
        assert_eq!(
            status(&json!({"revoked": false, "expires_at": 50}), 100),
            "expired"
        );
        assert_eq!(
            status(&json!({"revoked": true, "expires_at": 50}), 100),
            "revoked"
        );
        assert_eq!(
            status(&json!({"revoked": false, "expires_at": null}), 100),
            "active"
        );
    }

    #[test]
    fn grants_print_as_written_on_the_command_line() {
        let robot = json!({"grants": [
            {"repositories": "team/app-*", "actions": ["pull", "push"]},
            {"repositories": "team/base", "actions": ["pull"]},
        ]});
        assert_eq!(grants(&robot, " "), "team/app-*:pull,push team/base:pull");
    }
}
