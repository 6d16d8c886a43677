//! What setup leaves in the state dir for people: a log with one line per step, and a JSON
//! report of the last failure that a successful setup clears.

use crate::errors::ErrorCode;
use serde::Serialize;
use std::fs;
use std::io::Write;
use std::path::Path;

/// The log's file name in the state dir.
pub const LOG_FILE: &str = "setup.log";
/// The error report's file name in the state dir.
pub const ERROR_REPORT_FILE: &str = "last-error.json";

/// One `key=value` line: `<RFC 3339 time> step=<step> outcome=<outcome> k=v ...`. Values with
/// spaces, quotes or `=` are double-quoted with `\"` and `\\` escaped.
pub fn format_line(at: &str, step: &str, outcome: &str, details: &[(String, String)]) -> String {
    let mut line = format!("{at} step={step} outcome={outcome}");
    for (key, value) in details {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        line.push_str(&quote_value(value));
    }
    line
}

fn quote_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if plain {
        return value.to_string();
    }
    let escaped: String = value
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            '\n' => vec!['\\', 'n'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

/// Appends lines to the log, creating it (mode 0644) when missing.
pub fn append(state_dir: &Path, lines: &[String]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(state_dir.join(LOG_FILE))?;
    let mut text = lines.join("\n");
    text.push('\n');
    f.write_all(text.as_bytes())
}

/// The last failure, as written to [`ERROR_REPORT_FILE`].
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ErrorReport {
    /// RFC 3339 time.
    pub at: String,
    /// The failed step.
    pub step: String,
    /// The stable error code.
    pub error_code: String,
    /// The message, which says what to do.
    pub message: String,
}

/// Writes the error report atomically.
pub fn write_error_report(state_dir: &Path, report: &ErrorReport) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(report).expect("serializes") + "\n";
    crate::files::write_atomic(&state_dir.join(ERROR_REPORT_FILE), text.as_bytes(), 0o644)
}

/// Removes the error report; absent is fine.
pub fn clear_error_report(state_dir: &Path) -> std::io::Result<()> {
    match fs::remove_file(state_dir.join(ERROR_REPORT_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Builds a report for a code.
pub fn error_report(at: String, step: &str, code: ErrorCode, message: &str) -> ErrorReport {
    ErrorReport {
        at,
        step: step.into(),
        error_code: code.as_str().into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_quote_only_what_needs_it() {
        let details = vec![
            ("rules".to_string(), "18".to_string()),
            (
                "accounts".to_string(),
                "userwall-offline (uid 999)".to_string(),
            ),
            ("message".to_string(), "a \"b\" c=d".to_string()),
        ];
        assert_eq!(
            format_line("2026-12-04T15:00:00Z", "apply", "ok", &details),
            "2026-12-04T15:00:00Z step=apply outcome=ok rules=18 accounts=\"userwall-offline (uid 999)\" message=\"a \\\"b\\\" c=d\""
        );
    }

    #[test]
    fn error_report_round_trips_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let report = error_report("t".into(), "apply", ErrorCode::NftFailed, "boom");
        write_error_report(dir.path(), &report).unwrap();
        let back: ErrorReport =
            serde_json::from_str(&fs::read_to_string(dir.path().join(ERROR_REPORT_FILE)).unwrap())
                .unwrap();
        assert_eq!(back, report);
        clear_error_report(dir.path()).unwrap();
        clear_error_report(dir.path()).unwrap();
        assert!(!dir.path().join(ERROR_REPORT_FILE).exists());
    }
}
