//! MTA-STS (RFC 8461): a domain's published promise that its MX hosts
//! take mail over TLS with certificates valid for their names.
//!
//! - `record`: the `_mta-sts.<domain>` TXT record that announces a policy
//! - `policy`: the policy text served over HTTPS, and which MX host names
//!   it allows

mod policy;
mod record;

pub use policy::{Mode, Policy, PolicyError};
pub use record::{Record, RecordError};
