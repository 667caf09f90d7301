//! The configuration and decisions of `builtin:content`: rules of one
//! matcher (header regex, body regex, attachment extension or type, message
//! size) and one action (reject, quarantine, add a header, discard), checked
//! in order against a message.
//!
//! Nothing here touches the host: `lib.rs` hands in a [`MessageView`] that
//! asks the host lazily, the unit tests hand in a plain struct.

use regex::Regex;
use serde::Deserialize;
use sluice_sdk::{DataResult, Verdict};

use crate::rfc2047;

/// Why the configuration was refused; shown when the pipeline is built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Malformed JSON, an unknown key (serde names it) or a wrong type.
    #[error("content: invalid config: {0}")]
    Json(String),
    #[error("content: rule {rule:?}: {reason}")]
    Rule { rule: String, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    skip_authenticated: bool,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    header: Option<String>,
    pattern: Option<String>,
    body: Option<String>,
    attachment_extension: Option<Vec<String>>,
    attachment_type: Option<Vec<String>>,
    max_size: Option<RawSize>,
    action: String,
    reply: Option<String>,
    add_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

/// What a rule looks at.
#[derive(Debug)]
pub enum Matcher {
    /// A regex on the decoded value of the named header (`None`: any).
    Header {
        name: Option<String>,
        pattern: Regex,
    },
    /// A regex on every decoded text/plain and text/html part.
    Body(Regex),
    /// File name extensions, lower-case, without the leading dot.
    AttachmentExtension(Vec<String>),
    /// MIME types, lower-case; `type/*` matches the whole type.
    AttachmentType(Vec<String>),
    /// Messages larger than this many octets.
    MaxSize(u64),
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Reject {
        code: u16,
        enhanced: String,
        text: String,
    },
    Quarantine,
    AddHeader {
        name: String,
        value: String,
    },
    Discard,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub action: Action,
}

/// The operator's settings, as `[plugins.NAME.config]`.
#[derive(Debug, Default)]
pub struct Config {
    /// Let authenticated (submission) clients through unchecked.
    pub skip_authenticated: bool,
    pub rules: Vec<Rule>,
}

/// One attachment as the host describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentView {
    pub filename: Option<String>,
    pub content_type: String,
}

/// The parts of a message the rules look at; each is fetched only when a
/// rule needs it.
pub trait MessageView {
    fn size(&self) -> u64;
    /// Every header as (name, unfolded value), in order.
    fn headers(&self) -> &[(String, String)];
    /// Decoded text of every text/plain and text/html part.
    fn texts(&self) -> &[String];
    fn attachments(&self) -> &[AttachmentView];
}

/// The decision on one message and the rules that matched, for the log.
#[derive(Debug)]
pub struct Evaluation {
    pub result: DataResult,
    pub matched: Vec<String>,
}

impl Config {
    /// Parses the JSON config and compiles every pattern; an empty string
    /// means no rules.
    pub fn parse(json: &str) -> Result<Config, ConfigError> {
        if json.trim().is_empty() {
            return Ok(Config::default());
        }
        let raw: RawConfig =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        let mut rules = Vec::with_capacity(raw.rule.len());
        for rule in raw.rule {
            let name = rule.name.clone();
            let rule = Rule::from_raw(rule).map_err(|reason| ConfigError::Rule {
                rule: name.clone(),
                reason,
            })?;
            if rules.iter().any(|r: &Rule| r.name == name) {
                return Err(ConfigError::Rule {
                    rule: name,
                    reason: "a rule of this name exists already".into(),
                });
            }
            rules.push(rule);
        }
        Ok(Config {
            skip_authenticated: raw.skip_authenticated,
            rules,
        })
    }

    /// Runs the rules in order: `add_header` rules collect headers and go
    /// on, the first reject, quarantine or discard ends the check.
    pub fn evaluate(&self, message: &dyn MessageView) -> Evaluation {
        let mut result = DataResult::next();
        let mut matched = Vec::new();
        for rule in &self.rules {
            if !rule.matcher.matches(message) {
                continue;
            }
            matched.push(rule.name.clone());
            let verdict = match &rule.action {
                Action::AddHeader { name, value } => {
                    result = result.prepend_header(name, value);
                    continue;
                }
                Action::Reject {
                    code,
                    enhanced,
                    text,
                } => Verdict::reject_with(*code, enhanced, text),
                Action::Quarantine => Verdict::Quarantine(rule.name.clone()),
                Action::Discard => Verdict::Discard,
            };
            result.verdict = verdict;
            break;
        }
        Evaluation { result, matched }
    }
}

impl Rule {
    fn from_raw(raw: RawRule) -> Result<Rule, String> {
        if raw.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        let mut matchers = Vec::new();
        if let Some(header) = raw.header {
            let pattern = raw
                .pattern
                .ok_or("header needs a pattern (a regex on the header's value)")?;
            let name = header.trim();
            if name.is_empty() {
                return Err("header must name a header, or be \"*\" for any".into());
            }
            matchers.push(Matcher::Header {
                name: (name != "*").then(|| name.to_owned()),
                pattern: compile("pattern", &pattern)?,
            });
        } else if raw.pattern.is_some() {
            return Err("pattern belongs to a header matcher: add header = \"NAME\"".into());
        }
        if let Some(body) = raw.body {
            matchers.push(Matcher::Body(compile("body", &body)?));
        }
        if let Some(extensions) = raw.attachment_extension {
            let extensions: Vec<String> = extensions
                .iter()
                .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
                .collect();
            if extensions.is_empty() || extensions.iter().any(String::is_empty) {
                return Err("attachment_extension needs non-empty extensions".into());
            }
            matchers.push(Matcher::AttachmentExtension(extensions));
        }
        if let Some(types) = raw.attachment_type {
            let types: Vec<String> = types
                .iter()
                .map(|t| t.trim().to_ascii_lowercase())
                .collect();
            if types.is_empty() || types.iter().any(|t| !t.contains('/')) {
                return Err("attachment_type needs MIME types such as \"application/zip\"".into());
            }
            matchers.push(Matcher::AttachmentType(types));
        }
        if let Some(size) = raw.max_size {
            let bytes = match size {
                RawSize::Bytes(n) => n,
                RawSize::Text(text) => parse_size(&text)?,
            };
            matchers.push(Matcher::MaxSize(bytes));
        }
        let matcher = match matchers.len() {
            1 => matchers.remove(0),
            0 => {
                return Err(
                    "needs a matcher: header + pattern, body, attachment_extension, \
                            attachment_type or max_size"
                        .into(),
                )
            }
            _ => return Err("has more than one matcher; write one rule per matcher".into()),
        };
        let action = match raw.action.as_str() {
            "reject" => {
                let (code, enhanced, text) = match &raw.reply {
                    Some(reply) => parse_reply(reply)?,
                    None => (
                        550,
                        "5.7.1".to_owned(),
                        format!("message refused by content rule {}", raw.name),
                    ),
                };
                Action::Reject {
                    code,
                    enhanced,
                    text,
                }
            }
            "quarantine" => Action::Quarantine,
            "discard" => Action::Discard,
            "add_header" => {
                let line = raw
                    .add_header
                    .as_deref()
                    .ok_or("action add_header needs add_header = \"Name: value\"")?;
                let (name, value) = parse_header_line(line)?;
                Action::AddHeader { name, value }
            }
            other => {
                return Err(format!(
                    "unknown action {other:?} (reject, quarantine, add_header, discard)"
                ))
            }
        };
        if raw.reply.is_some() && !matches!(action, Action::Reject { .. }) {
            return Err("reply is only for action = \"reject\"".into());
        }
        if raw.add_header.is_some() && !matches!(action, Action::AddHeader { .. }) {
            return Err("add_header is only for action = \"add_header\"".into());
        }
        Ok(Rule {
            name: raw.name,
            matcher,
            action,
        })
    }
}

impl Matcher {
    pub fn matches(&self, message: &dyn MessageView) -> bool {
        match self {
            Matcher::Header { name, pattern } => message.headers().iter().any(|(n, v)| {
                name.as_ref()
                    .is_none_or(|want| want.eq_ignore_ascii_case(n))
                    && pattern.is_match(&rfc2047::decode(v))
            }),
            Matcher::Body(pattern) => message.texts().iter().any(|t| pattern.is_match(t)),
            Matcher::AttachmentExtension(extensions) => message.attachments().iter().any(|a| {
                a.filename
                    .as_deref()
                    .is_some_and(|f| has_extension(f, extensions))
            }),
            Matcher::AttachmentType(types) => message
                .attachments()
                .iter()
                .any(|a| type_matches(&a.content_type, types)),
            Matcher::MaxSize(limit) => message.size() > *limit,
        }
    }
}

fn compile(key: &str, pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("{key} {pattern:?} is not a valid regex: {e}"))
}

/// Whether a file name ends in one of the extensions. Windows ignores
/// trailing dots and spaces, so `evil.exe. ` is an `.exe` too; a double
/// extension (`invoice.pdf.exe`) is judged by its last one, and an entry
/// like `pdf.exe` matches that pair.
fn has_extension(filename: &str, extensions: &[String]) -> bool {
    let name = filename
        .trim_end_matches(['.', ' ', '\t'])
        .to_ascii_lowercase();
    extensions.iter().any(|ext| {
        name.len() > ext.len()
            && name.ends_with(ext.as_str())
            && name.as_bytes()[name.len() - ext.len() - 1] == b'.'
    })
}

fn type_matches(content_type: &str, types: &[String]) -> bool {
    let content_type = content_type.trim().to_ascii_lowercase();
    types.iter().any(|t| match t.strip_suffix("/*") {
        Some(main) => content_type.split_once('/').is_some_and(|(m, _)| m == main),
        None => *t == content_type,
    })
}

/// `"Name: value"` into its parts; the name must be a valid field name.
fn parse_header_line(line: &str) -> Result<(String, String), String> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| format!("add_header {line:?} is not \"Name: value\""))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!(
            "add_header {line:?}: {name:?} is not a header name"
        ));
    }
    if value.contains(['\r', '\n']) {
        return Err(format!("add_header {line:?}: the value must be one line"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// A reject reply: `"text"` (550 5.7.1), or `"554 5.7.0 text"` with its
/// own code; the code must be 5xx.
fn parse_reply(reply: &str) -> Result<(u16, String, String), String> {
    let reply = reply.trim();
    let mut words = reply.splitn(2, ' ');
    let first = words.next().unwrap_or("");
    let Some(code) = (first.len() == 3)
        .then(|| first.parse::<u16>().ok())
        .flatten()
    else {
        return Ok((550, "5.7.1".to_owned(), reply.to_owned()));
    };
    if !(500..600).contains(&code) {
        return Err(format!("reply {reply:?}: a reject needs a 5xx code"));
    }
    let rest = words.next().unwrap_or("").trim_start();
    let (enhanced, text) = match rest.split_once(' ') {
        Some((e, t)) if is_enhanced(e) => (e.to_owned(), t.trim().to_owned()),
        _ if is_enhanced(rest) => (rest.to_owned(), String::new()),
        _ => (String::new(), rest.to_owned()),
    };
    if text.is_empty() {
        return Err(format!("reply {reply:?} has no text"));
    }
    Ok((code, enhanced, text))
}

fn is_enhanced(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && parts[0] == "5"
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A size: bytes, or a number with KB/MB/GB (powers of 1000) or
/// KiB/MiB/GiB (powers of 1024), as in sluice's own config.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("max_size {text:?} is not a size (e.g. 1048576, \"10MiB\")"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("max_size {text:?}: unknown unit {other:?}")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("max_size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::{Header, Modification, Reply};

    #[derive(Default)]
    struct Msg {
        size: u64,
        headers: Vec<(String, String)>,
        texts: Vec<String>,
        attachments: Vec<AttachmentView>,
    }

    impl MessageView for Msg {
        fn size(&self) -> u64 {
            self.size
        }
        fn headers(&self) -> &[(String, String)] {
            &self.headers
        }
        fn texts(&self) -> &[String] {
            &self.texts
        }
        fn attachments(&self) -> &[AttachmentView] {
            &self.attachments
        }
    }

    fn msg_with_subject(subject: &str) -> Msg {
        Msg {
            headers: vec![
                ("From".into(), "a@example.org".into()),
                ("Subject".into(), subject.into()),
            ],
            ..Msg::default()
        }
    }

    fn attachment(name: Option<&str>, ct: &str) -> AttachmentView {
        AttachmentView {
            filename: name.map(str::to_owned),
            content_type: ct.into(),
        }
    }

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    #[test]
    fn empty_config_has_no_rules() {
        let c = config("");
        assert!(c.rules.is_empty() && !c.skip_authenticated);
        let e = c.evaluate(&msg_with_subject("x"));
        assert_eq!(e.result.verdict, Verdict::Next);
    }

    #[test]
    fn subject_regex_rejects_with_the_rule_name() {
        let c = config(
            r#"{"rule":[{"name":"pills","header":"Subject","pattern":"(?i)viagra","action":"reject"}]}"#,
        );
        let e = c.evaluate(&msg_with_subject("Cheap =?utf-8?B?VklBR1JB?= here"));
        assert_eq!(
            e.result.verdict,
            Verdict::Reject(Some(Reply::new(
                550,
                "5.7.1",
                "message refused by content rule pills"
            )))
        );
        assert_eq!(e.matched, vec!["pills".to_string()]);
        let e = c.evaluate(&msg_with_subject("hello"));
        assert_eq!(e.result.verdict, Verdict::Next);
    }

    #[test]
    fn any_header_matcher_checks_every_header() {
        let c =
            config(r#"{"rule":[{"name":"x","header":"*","pattern":"^a@","action":"discard"}]}"#);
        assert_eq!(
            c.evaluate(&msg_with_subject("hi")).result.verdict,
            Verdict::Discard
        );
    }

    #[test]
    fn body_extension_type_and_size_match() {
        let c = config(
            r#"{"rule":[
              {"name":"body","body":"(?i)lottery","action":"quarantine"},
              {"name":"exe","attachment_extension":[".EXE","js"],"action":"reject","reply":"554 5.7.0 no executables"},
              {"name":"msi","attachment_type":["application/x-msdownload","video/*"],"action":"discard"},
              {"name":"big","max_size":"1KiB","action":"reject","reply":"too big for us"}
            ]}"#,
        );
        let body = Msg {
            texts: vec!["plain".into(), "<p>You won the LOTTERY</p>".into()],
            ..Msg::default()
        };
        assert_eq!(
            c.evaluate(&body).result.verdict,
            Verdict::Quarantine("body".into())
        );
        for name in ["invoice.pdf.exe", "run.JS", "evil.exe. "] {
            let m = Msg {
                attachments: vec![attachment(Some(name), "application/octet-stream")],
                ..Msg::default()
            };
            assert_eq!(
                c.evaluate(&m).result.verdict,
                Verdict::reject_with(554, "5.7.0", "no executables"),
                "{name}"
            );
        }
        for name in ["exe", "notexe", "file.exe.pdf"] {
            let m = Msg {
                attachments: vec![attachment(Some(name), "application/pdf")],
                ..Msg::default()
            };
            assert_eq!(c.evaluate(&m).result.verdict, Verdict::Next, "{name}");
        }
        let m = Msg {
            attachments: vec![attachment(None, "Video/MP4")],
            ..Msg::default()
        };
        assert_eq!(c.evaluate(&m).result.verdict, Verdict::Discard);
        let m = Msg {
            size: 1025,
            ..Msg::default()
        };
        assert_eq!(
            c.evaluate(&m).result.verdict,
            Verdict::reject_with(550, "5.7.1", "too big for us")
        );
        let m = Msg {
            size: 1024,
            ..Msg::default()
        };
        assert_eq!(c.evaluate(&m).result.verdict, Verdict::Next);
    }

    #[test]
    fn add_header_continues_and_first_terminal_rule_wins() {
        let c = config(
            r#"{"rule":[
              {"name":"flag","header":"Subject","pattern":"spam","action":"add_header","add_header":"X-Spam-Flag: YES"},
              {"name":"flag2","header":"Subject","pattern":"spam","action":"add_header","add_header":"X-Spam-Rule:flag2"},
              {"name":"hold","header":"Subject","pattern":"spam","action":"quarantine"},
              {"name":"never","header":"Subject","pattern":"spam","action":"discard"}
            ]}"#,
        );
        let e = c.evaluate(&msg_with_subject("some spam"));
        assert_eq!(e.result.verdict, Verdict::Quarantine("hold".into()));
        assert_eq!(e.matched, vec!["flag", "flag2", "hold"]);
        assert_eq!(
            e.result.modifications,
            vec![
                Modification::PrependHeader(Header {
                    name: "X-Spam-Flag".into(),
                    value: "YES".into()
                }),
                Modification::PrependHeader(Header {
                    name: "X-Spam-Rule".into(),
                    value: "flag2".into()
                }),
            ]
        );
    }

    fn error(json: &str) -> String {
        Config::parse(json).unwrap_err().to_string()
    }

    #[test]
    fn bad_rules_name_the_rule() {
        let e = error(r#"{"rule":[{"name":"broken","body":"(unclosed","action":"reject"}]}"#);
        assert!(
            e.contains("rule \"broken\"") && e.contains("not a valid regex"),
            "{e}"
        );
        let e = error(r#"{"rule":[{"name":"two","body":"a","max_size":10,"action":"reject"}]}"#);
        assert!(e.contains("more than one matcher"), "{e}");
        let e = error(r#"{"rule":[{"name":"none","action":"reject"}]}"#);
        assert!(e.contains("needs a matcher"), "{e}");
        let e = error(r#"{"rule":[{"name":"act","body":"a","action":"bounce"}]}"#);
        assert!(e.contains("unknown action \"bounce\""), "{e}");
        let e = error(r#"{"rule":[{"name":"h","header":"Subject","action":"reject"}]}"#);
        assert!(e.contains("needs a pattern"), "{e}");
        let e = error(r#"{"rule":[{"name":"ah","body":"a","action":"add_header"}]}"#);
        assert!(e.contains("add_header"), "{e}");
        let e = error(
            r#"{"rule":[{"name":"ah","body":"a","action":"add_header","add_header":"no colon"}]}"#,
        );
        assert!(e.contains("Name: value"), "{e}");
        let e =
            error(r#"{"rule":[{"name":"r","body":"a","action":"reject","reply":"450 later"}]}"#);
        assert!(e.contains("5xx"), "{e}");
        let e = error(r#"{"rule":[{"name":"s","max_size":"10 parsecs","action":"reject"}]}"#);
        assert!(e.contains("unknown unit"), "{e}");
        let e = error(
            r#"{"rule":[{"name":"d","body":"a","action":"reject"},{"name":"d","body":"b","action":"reject"}]}"#,
        );
        assert!(e.contains("exists already"), "{e}");
        let e = error(r#"{"rules":[]}"#);
        assert!(e.contains("unknown field"), "{e}");
        let e = error(r#"{"rule":[{"name":"u","body":"a","action":"reject","colour":"red"}]}"#);
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn sizes_and_replies_parse() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("10 MB"), Ok(10_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(
            parse_reply("554 5.7.0 go away"),
            Ok((554, "5.7.0".into(), "go away".into()))
        );
        assert_eq!(
            parse_reply("550 go away"),
            Ok((550, String::new(), "go away".into()))
        );
        assert_eq!(
            parse_reply("go away"),
            Ok((550, "5.7.1".into(), "go away".into()))
        );
    }
}
