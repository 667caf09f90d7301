//! The sluice example filter in Rust: rejects a message whose Subject
//! contains the configured word, tags every other message with
//! X-Filtered-By, and refuses recipients whose local part starts with
//! "noreply".

use std::sync::OnceLock;

use sluice_sdk::{Address, DataResult, Filter, Message, Session, Verdict};

static WORD: OnceLock<String> = OnceLock::new();

struct Example;

impl Filter for Example {
    fn init(config: &str) -> Result<(), String> {
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let word = config["word"].as_str().filter(|word| !word.is_empty());
        let word = word.ok_or("config needs a non-empty \"word\"")?;
        // init runs once per instance, before any hook.
        let _ = WORD.set(word.to_lowercase());
        Ok(())
    }

    fn on_rcpt(_session: &Session, recipient: &Address) -> Verdict {
        if recipient.local_part.to_lowercase().starts_with("noreply") {
            return Verdict::reject_with(550, "5.1.1", "This address accepts no mail");
        }
        Verdict::Next
    }

    fn on_data(_session: &Session, message: &Message) -> DataResult {
        let word = WORD.get().map_or("", String::as_str);
        let subject = message.header("Subject").unwrap_or_default().to_lowercase();
        if subject.contains(word) {
            return Verdict::reject_with(550, "5.7.1", &format!("Subject contains {word:?}")).into();
        }
        DataResult::next().prepend_header("X-Filtered-By", "rust-example")
    }
}

sluice_sdk::export!(Example);
