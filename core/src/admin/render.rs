//! Text output of `sluice queue list` and `sluice queue show`, from the
//! admin API's answers. Pure functions of the answer and the current time.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::api::{EntryView, ListView, ShowView};
use crate::smtp::dsn::{notify_value, ret_value};

/// Widest FROM / RECIPIENTS cell and LAST REPLY text in the table.
const MAX_ADDRESS: usize = 40;
const MAX_REPLY: usize = 60;

/// The `queue list` table, oldest message first.
pub fn list_table(list: &ListView, now: u64) -> String {
    if list.entries.is_empty() {
        return "The queue is empty.\n".to_owned();
    }
    let header = [
        "ID",
        "AGE",
        "FROM",
        "RECIPIENTS",
        "STATE",
        "NEXT",
        "LAST REPLY",
    ];
    let rows: Vec<[String; 7]> = list
        .entries
        .iter()
        .map(|view| {
            let entry = &view.entry;
            let recipients = match entry.recipients.as_slice() {
                [] => String::new(),
                [one] => one.address.clone(),
                [first, rest @ ..] => format!("{} (+{})", first.address, rest.len()),
            };
            [
                entry.id.to_string(),
                short_duration(now.saturating_sub(entry.received_at)),
                truncate(&sender(&entry.reverse_path), MAX_ADDRESS),
                truncate(&recipients, MAX_ADDRESS),
                view.state.clone(),
                next_attempt(view, now),
                truncate(&last_reply(view).unwrap_or_default(), MAX_REPLY),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    let _ = writeln!(
        out,
        "{} message{}",
        list.count,
        if list.count == 1 { "" } else { "s" }
    );
    out
}

/// The `queue show` report: envelope, per-recipient status and history,
/// then the message's header fields.
pub fn show(view: &ShowView, now: u64) -> String {
    let entry = &view.entry.entry;
    let mut out = String::new();
    let _ = writeln!(out, "id:           {}", entry.id);
    let _ = writeln!(out, "state:        {}", view.entry.state);
    let _ = writeln!(out, "from:         {}", sender(&entry.reverse_path));
    let _ = writeln!(out, "client:       {}", entry.client);
    let _ = writeln!(
        out,
        "received:     {} ({} ago)",
        timestamp(entry.received_at),
        short_duration(now.saturating_sub(entry.received_at))
    );
    let _ = writeln!(out, "size:         {} bytes", entry.size);
    let _ = writeln!(out, "attempts:     {}", entry.attempts);
    let _ = writeln!(out, "next attempt: {}", next_attempt(&view.entry, now));
    if let Some(reason) = &entry.quarantine {
        let _ = writeln!(out, "quarantine:   {reason}");
    }
    if let Some(ret) = entry.dsn.ret {
        let _ = writeln!(out, "dsn ret:      {}", ret_value(ret));
    }
    if let Some(envid) = &entry.dsn.envid {
        let _ = writeln!(out, "dsn envid:    {envid}");
    }
    let _ = writeln!(out, "\nrecipients:");
    for rcpt in &entry.recipients {
        let status = serde_json::to_value(rcpt.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}  {status}, {} attempt{}",
            rcpt.address,
            rcpt.attempts,
            if rcpt.attempts == 1 { "" } else { "s" }
        );
        if let Some(notify) = &rcpt.dsn.notify {
            let _ = writeln!(out, "    notify: {}", notify_value(notify));
        }
        if let Some(orcpt) = &rcpt.dsn.orcpt {
            let _ = writeln!(out, "    orcpt: {};{}", orcpt.addr_type, orcpt.address);
        }
        if rcpt.history.is_empty() {
            if let Some(reply) = &rcpt.last_reply {
                let _ = writeln!(out, "    last reply: {reply}");
            }
        }
        for record in &rcpt.history {
            let _ = writeln!(out, "    {}  {}", timestamp(record.at), record.reply);
        }
    }
    let _ = writeln!(out, "\nheaders:");
    for header in &view.headers {
        let _ = writeln!(out, "  {}: {}", header.name, header.value);
    }
    out
}

fn sender(reverse_path: &str) -> String {
    format!("<{reverse_path}>")
}

fn next_attempt(view: &EntryView, now: u64) -> String {
    match view.state.as_str() {
        "held" | "quarantined" | "damaged" => "-".to_owned(),
        _ if view.entry.next_attempt <= now => "now".to_owned(),
        _ => format!(
            "in {}",
            short_duration(view.entry.next_attempt.saturating_sub(now))
        ),
    }
}

/// The most recent reply over all recipients.
fn last_reply(view: &EntryView) -> Option<String> {
    let recipients = &view.entry.recipients;
    recipients
        .iter()
        .filter_map(|r| r.history.last())
        .max_by_key(|record| record.at)
        .map(|record| record.reply.clone())
        .or_else(|| recipients.iter().find_map(|r| r.last_reply.clone()))
}

/// "45s", "12m", "3h05m", "2d04h".
fn short_duration(seconds: u64) -> String {
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86400);
    if seconds < 60 {
        format!("{seconds}s")
    } else if m < 60 {
        format!("{m}m")
    } else if h < 24 {
        format!("{h}h{:02}m", m % 60)
    } else {
        format!("{d}d{:02}h", h % 24)
    }
}

fn timestamp(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn truncate(text: &str, max: usize) -> String {
    let text = text.replace(['\r', '\n', '\t'], " ");
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::HeaderView;
    use serde_json::json;

    fn view(state: &str, next_attempt: u64) -> EntryView {
        let entry = serde_json::from_value(json!({
            "id": "0123456789abcdef", "reverse_path": "alice@example.org", "received_at": 1000,
            "client": "127.0.0.1:4000", "size": 321, "attempts": 2,
            "next_attempt": next_attempt, "held": state == "held", "quarantine": null,
            "dsn": {"ret": "hdrs", "envid": "QQ314159"},
            "recipients": [
                {"address": "bob@example.net", "status": "deferred", "last_reply": "451 4.4.1 later",
                 "dsn": {"notify": {"success": true, "failure": true, "delay": false},
                         "orcpt": {"addr_type": "rfc822", "address": "Bob@example.net"}},
                 "attempts": 2, "history": [
                    {"at": 1010, "reply": "421 4.3.2 busy"},
                    {"at": 1100, "reply": "451 4.4.1 later"}]},
                {"address": "carol@example.net", "status": "pending", "last_reply": null, "attempts": 0}
            ]
        }))
        .unwrap();
        EntryView {
            entry,
            state: state.into(),
            node: "mx1".into(),
        }
    }

    #[test]
    fn table_lists_every_column() {
        let list = ListView {
            node: "mx1".into(),
            count: 1,
            entries: vec![view("deferred", 1400)],
        };
        let text = list_table(&list, 1200);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for column in [
            "ID",
            "AGE",
            "FROM",
            "RECIPIENTS",
            "STATE",
            "NEXT",
            "LAST REPLY",
        ] {
            assert!(lines[0].contains(column), "{text}");
        }
        let row = lines[1];
        for cell in [
            "0123456789abcdef",
            "3m",
            "<alice@example.org>",
            "bob@example.net (+1)",
            "deferred",
            "in 3m",
            "451 4.4.1 later",
        ] {
            assert!(row.contains(cell), "{cell} missing: {text}");
        }
        // Columns line up: STATE starts at the same offset in both lines.
        assert_eq!(lines[0].find("STATE"), row.find("deferred"));
        assert_eq!(lines[2], "1 message");

        let held = ListView {
            node: "mx1".into(),
            count: 1,
            entries: vec![view("held", 0)],
        };
        let row = list_table(&held, 1200);
        let line = row.lines().nth(1).unwrap();
        let after_state = &line[line.find(" held ").unwrap() + 6..];
        assert!(after_state.trim_start().starts_with("- "), "{row}");
        let empty = ListView {
            node: "mx1".into(),
            count: 0,
            entries: vec![],
        };
        assert_eq!(list_table(&empty, 0), "The queue is empty.\n");
    }

    #[test]
    fn show_has_envelope_history_and_headers() {
        let text = show(
            &ShowView {
                entry: view("deferred", 0),
                headers: vec![HeaderView {
                    name: "Subject".into(),
                    value: "hello".into(),
                }],
            },
            1060,
        );
        for part in [
            "id:           0123456789abcdef",
            "state:        deferred",
            "from:         <alice@example.org>",
            "received:     1970-01-01T00:16:40Z (1m ago)",
            "next attempt: now",
            "  bob@example.net  deferred, 2 attempts",
            "    1970-01-01T00:16:50Z  421 4.3.2 busy",
            "    1970-01-01T00:18:20Z  451 4.4.1 later",
            "  carol@example.net  pending, 0 attempts",
            "dsn ret:      HDRS",
            "dsn envid:    QQ314159",
            "    notify: SUCCESS,FAILURE",
            "    orcpt: rfc822;Bob@example.net",
            "headers:\n  Subject: hello",
        ] {
            assert!(text.contains(part), "{part:?} missing:\n{text}");
        }
    }

    #[test]
    fn durations_and_truncation() {
        assert_eq!(short_duration(59), "59s");
        assert_eq!(short_duration(61), "1m");
        assert_eq!(short_duration(3 * 3600 + 5 * 60), "3h05m");
        assert_eq!(short_duration(2 * 86400 + 4 * 3600), "2d04h");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("a\r\nb", 10), "a  b");
    }
}
