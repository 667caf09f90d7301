//! The admin endpoint: a small HTTP/1.1 JSON API for operators and tools,
//! served by the running server on `<data_dir>/admin.sock` (always) and on
//! `[admin] address` (optional, loopback unless `allow_remote`). The spool
//! can be opened by one process only, so `sluice queue …` goes through it.
//!
//! - `api`: routes and what they do to the spool and the scheduler
//! - `http`: listeners, socket file, hyper connection handling
//! - `client`: the CLI's side (blocking request over the unix socket)
//! - `render`: the CLI's text output for `queue list` / `queue show`

mod api;
mod client;
mod http;
mod render;

pub use api::{entry_state, AdminState, ApiResponse, EntryView, HeaderView, ListView, ShowView};
pub use client::{AdminClient, ApiReply, ClientError};
pub use http::{socket_path, AdminError, AdminListeners, AdminServer};
pub use render::{list_table, show};
