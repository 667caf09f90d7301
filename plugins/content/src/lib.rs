//! `builtin:content`: data-stage rules on a message's headers, decoded body
//! text, attachments and size, each rejecting, quarantining, discarding or
//! adding a header.
//!
//! The rules and their decision live in [`rules`] (header values are decoded
//! by [`rfc2047`]); this file wires them to the `sluice_sdk` hooks and reads
//! the message from the host only as far as the configured rules need.

// On the host only the unit tests run; the component glue needs the wasm
// host imports.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod rfc2047;
mod rules;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::{OnceCell, RefCell};

    use sluice_sdk::{log, DataResult, Filter, Message, Session};

    use crate::rules::{AttachmentView, Config, MessageView};

    thread_local! {
        // Set by init, once per instance (that is, per session).
        static CONFIG: RefCell<Config> = RefCell::new(Config::default());
    }

    /// The host's message, each part fetched on first use.
    struct Lazy<'a> {
        message: &'a Message,
        headers: OnceCell<Vec<(String, String)>>,
        texts: OnceCell<Vec<String>>,
        attachments: OnceCell<Vec<AttachmentView>>,
    }

    impl MessageView for Lazy<'_> {
        fn size(&self) -> u64 {
            self.message.size()
        }

        fn headers(&self) -> &[(String, String)] {
            self.headers.get_or_init(|| {
                self.message
                    .headers()
                    .into_iter()
                    .map(|h| (h.name, h.value))
                    .collect()
            })
        }

        fn texts(&self) -> &[String] {
            self.texts.get_or_init(|| self.message.body_text())
        }

        fn attachments(&self) -> &[AttachmentView] {
            self.attachments.get_or_init(|| {
                self.message
                    .attachments()
                    .into_iter()
                    .map(|a| AttachmentView {
                        filename: a.filename,
                        content_type: a.content_type,
                    })
                    .collect()
            })
        }
    }

    struct Content;

    impl Filter for Content {
        fn init(config: &str) -> Result<(), String> {
            let config = Config::parse(config).map_err(|e| e.to_string())?;
            CONFIG.with_borrow_mut(|slot| *slot = config);
            Ok(())
        }

        fn on_data(session: &Session, message: &Message) -> DataResult {
            CONFIG.with_borrow(|config| {
                if config.skip_authenticated && session.is_authenticated() {
                    return DataResult::next();
                }
                let view = Lazy {
                    message,
                    headers: OnceCell::new(),
                    texts: OnceCell::new(),
                    attachments: OnceCell::new(),
                };
                let evaluation = config.evaluate(&view);
                if !evaluation.matched.is_empty() {
                    log::info(&format!(
                        "content rules matched: {} -> {:?}",
                        evaluation.matched.join(", "),
                        evaluation.result.verdict
                    ));
                }
                evaluation.result
            })
        }
    }

    sluice_sdk::export!(Content);
}
