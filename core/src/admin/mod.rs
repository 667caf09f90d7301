//! The admin endpoint: a small HTTP/1.1 JSON API for operators and tools,
//! served by the running server on `<data_dir>/admin.sock` (always) and on
//! `[admin] address` (optional, loopback unless `allow_remote`; metrics and
//! health only unless the request bears the admin token). The spool
//! can be opened by one process only, so `sluice queue …` goes through it.
//!
//! - `api`: routes and what they do to the spool and the scheduler
//! - `guard`: what a TCP request may do (Origin, Host, bearer token)
//! - `token`: the bearer token of `[admin] token_file`
//! - `http`: listeners, socket file, hyper connection handling
//! - `client`: the CLI's side (blocking request over the unix socket)
//! - `render`: the CLI's text output for `queue list` / `queue show`

mod api;
mod client;
mod guard;
mod http;
mod render;
mod token;

pub use api::{entry_state, AdminState, ApiResponse, EntryView, HeaderView, ListView, ShowView};
pub use client::{AdminClient, ApiReply, ClientError};
pub use http::{socket_path, AdminError, AdminListeners, AdminServer};
pub use render::{list_table, show};
pub use token::{AdminToken, TokenError};
