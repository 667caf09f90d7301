//! The aggregate report document: RFC 7489 Appendix C's `feedback`, in its
//! namespace, with `report_metadata`, `policy_published` (the record's
//! tags, defaults filled in as §6.3 gives them) and one `record` per row.

use std::fmt::Write as _;

use super::row::Row;
use crate::authn::dmarc::tag_value;

/// Who reports, and about which period.
pub struct Metadata<'a> {
    pub org_name: &'a str,
    pub email: &'a str,
    pub extra_contact: Option<&'a str>,
    pub report_id: &'a str,
    pub begin: u64,
    pub end: u64,
}

/// The whole XML document.
pub fn document(meta: &Metadata<'_>, domain: &str, record: &str, rows: &[(Row, u64)]) -> String {
    let mut xml = String::with_capacity(1024 + rows.len() * 512);
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str("<feedback xmlns=\"http://dmarc.org/dmarc-xml/0.1\">\n");
    xml.push_str("  <version>1.0</version>\n");
    xml.push_str("  <report_metadata>\n");
    element(&mut xml, 4, "org_name", meta.org_name);
    element(&mut xml, 4, "email", meta.email);
    if let Some(contact) = meta.extra_contact {
        element(&mut xml, 4, "extra_contact_info", contact);
    }
    element(&mut xml, 4, "report_id", meta.report_id);
    xml.push_str("    <date_range>\n");
    element(&mut xml, 6, "begin", &meta.begin.to_string());
    element(&mut xml, 6, "end", &meta.end.to_string());
    xml.push_str("    </date_range>\n  </report_metadata>\n");
    policy_published(&mut xml, domain, record);
    for (row, count) in rows {
        record_element(&mut xml, row, *count);
    }
    xml.push_str("</feedback>\n");
    xml
}

fn policy_published(xml: &mut String, domain: &str, record: &str) {
    let alignment = |tag| match tag_value(record, tag) {
        Some("s") => "s",
        _ => "r",
    };
    let policy = |tag| match tag_value(record, tag)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("reject") => Some("reject"),
        Some("quarantine") => Some("quarantine"),
        Some("none") => Some("none"),
        _ => None,
    };
    let p = policy("p").unwrap_or("none");
    // §6.3: sp defaults to p.
    let sp = policy("sp").unwrap_or(p);
    let pct = tag_value(record, "pct")
        .and_then(|pct| pct.parse::<u32>().ok())
        .filter(|pct| *pct <= 100)
        .unwrap_or(100);
    let fo = tag_value(record, "fo").unwrap_or("0");
    xml.push_str("  <policy_published>\n");
    element(xml, 4, "domain", domain);
    element(xml, 4, "adkim", alignment("adkim"));
    element(xml, 4, "aspf", alignment("aspf"));
    element(xml, 4, "p", p);
    element(xml, 4, "sp", sp);
    element(xml, 4, "pct", &pct.to_string());
    element(xml, 4, "fo", fo);
    xml.push_str("  </policy_published>\n");
}

fn record_element(xml: &mut String, row: &Row, count: u64) {
    let verdict = |aligned: bool| if aligned { "pass" } else { "fail" };
    xml.push_str("  <record>\n    <row>\n");
    element(xml, 6, "source_ip", &row.source_ip.to_string());
    element(xml, 6, "count", &count.to_string());
    xml.push_str("      <policy_evaluated>\n");
    element(xml, 8, "disposition", &row.disposition);
    element(xml, 8, "dkim", verdict(row.dkim_aligned));
    element(xml, 8, "spf", verdict(row.spf_aligned));
    for reason in &row.reasons {
        xml.push_str("        <reason>\n");
        element(xml, 10, "type", &reason.kind);
        if let Some(comment) = &reason.comment {
            element(xml, 10, "comment", comment);
        }
        xml.push_str("        </reason>\n");
    }
    xml.push_str("      </policy_evaluated>\n    </row>\n    <identifiers>\n");
    element(xml, 6, "envelope_from", &row.envelope_from);
    element(xml, 6, "header_from", &row.header_from);
    xml.push_str("    </identifiers>\n    <auth_results>\n");
    for dkim in &row.dkim {
        xml.push_str("      <dkim>\n");
        element(xml, 8, "domain", &dkim.domain);
        if !dkim.selector.is_empty() {
            element(xml, 8, "selector", &dkim.selector);
        }
        element(xml, 8, "result", &dkim.result);
        xml.push_str("      </dkim>\n");
    }
    xml.push_str("      <spf>\n");
    element(xml, 8, "domain", &row.spf.domain);
    element(xml, 8, "scope", &row.spf.scope);
    element(xml, 8, "result", &row.spf.result);
    xml.push_str("      </spf>\n    </auth_results>\n  </record>\n");
}

fn element(xml: &mut String, indent: usize, name: &str, text: &str) {
    let _ = writeln!(xml, "{:indent$}<{name}>{}</{name}>", "", escaped(text));
}

/// Text as XML character data: markup characters escaped, characters XML
/// 1.0 cannot carry left out.
fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if u32::from(c) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dmarc_reports::row::{DkimAuth, Reason, SpfAuth};

    #[test]
    fn the_document_names_policy_rows_and_results() {
        let row = Row {
            source_ip: "127.0.0.2".parse().unwrap(),
            envelope_from: "example.org".into(),
            header_from: "example.org".into(),
            disposition: "quarantine".into(),
            dkim_aligned: false,
            spf_aligned: true,
            reasons: vec![Reason {
                kind: "sampled_out".into(),
                comment: Some("pct=50 <left out>".into()),
            }],
            dkim: vec![DkimAuth {
                domain: "example.org".into(),
                selector: "sel".into(),
                result: "fail".into(),
            }],
            spf: SpfAuth {
                domain: "example.org".into(),
                scope: "mfrom".into(),
                result: "pass".into(),
            },
        };
        let meta = Metadata {
            org_name: "Example & Co",
            email: "dmarc@example.test",
            extra_contact: None,
            report_id: "r1",
            begin: 100,
            end: 200,
        };
        let xml = document(
            &meta,
            "example.org",
            "v=DMARC1; p=reject; pct=50; aspf=s",
            &[(row, 3)],
        );
        assert!(
            xml.contains("<org_name>Example &amp; Co</org_name>"),
            "{xml}"
        );
        assert!(
            xml.contains("<p>reject</p>") && xml.contains("<sp>reject</sp>"),
            "{xml}"
        );
        assert!(
            xml.contains("<pct>50</pct>") && xml.contains("<aspf>s</aspf>"),
            "{xml}"
        );
        assert!(
            xml.contains("<adkim>r</adkim>") && xml.contains("<fo>0</fo>"),
            "{xml}"
        );
        assert!(xml.contains("<count>3</count>"), "{xml}");
        assert!(
            xml.contains("<comment>pct=50 &lt;left out&gt;</comment>"),
            "{xml}"
        );
        assert!(xml.contains("<selector>sel</selector>"), "{xml}");
        assert!(!xml.contains("extra_contact_info"), "{xml}");
    }

    #[test]
    fn control_characters_are_left_out() {
        assert_eq!(escaped("a\u{1}b\u{1f}c"), "abc");
    }
}
