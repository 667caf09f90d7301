//! The `directory` interface: the files and mailbox servers the operator
//! granted a plugin (`[plugins.NAME] files` and `callouts`), and nothing
//! else. Files are cached and re-read when their modification time or size
//! changes; a callout is one short LMTP/SMTP conversation (greeting,
//! LHLO/EHLO, `MAIL FROM:<>`, `RCPT TO`, `QUIT`) bounded by the plugin's
//! deadline. Caching callout answers is the plugin's business (its `kv`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::bindings::sluice::filter::directory as wit;
use super::host::HostState;
use crate::config::{CalloutGrant, CalloutProtocol, PluginConfig};

/// Files larger than this are refused rather than copied into a plugin.
const MAX_FILE_SIZE: u64 = 32 << 20;
/// A reply line longer than this ends the callout as garbled.
const MAX_REPLY_LINE: usize = 4096;
/// Nor may a multi-line reply go on forever.
const MAX_REPLY_LINES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("{path} is not in this plugin's [plugins.{plugin}] files")]
    FileNotGranted { plugin: String, path: String },
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_FILE_SIZE} bytes")]
    TooLarge { path: String },
}

/// What a callout learned about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutAnswer {
    Exists,
    /// A 5xx at RCPT, with the server's reply.
    Unknown(String),
    /// A 4xx, or no usable answer.
    Unavailable(String),
}

#[derive(Default)]
struct Grants {
    files: Vec<PathBuf>,
    callouts: Vec<CalloutGrant>,
}

struct CachedFile {
    modified: Option<SystemTime>,
    len: u64,
    text: Arc<str>,
}

/// Every plugin's grants, and the file cache they share.
#[derive(Default)]
pub struct Directory {
    grants: HashMap<String, Grants>,
    files: Mutex<HashMap<PathBuf, CachedFile>>,
}

impl Directory {
    pub fn new(plugins: &BTreeMap<String, PluginConfig>) -> Self {
        let grants = plugins
            .iter()
            .map(|(name, config)| {
                (
                    name.clone(),
                    Grants {
                        files: config.files.clone(),
                        callouts: config.callouts.clone(),
                    },
                )
            })
            .collect();
        Directory {
            grants,
            files: Mutex::new(HashMap::new()),
        }
    }

    /// The text of a file granted to `plugin`, from the cache when the file
    /// has not changed since it was read.
    pub async fn read_file(&self, plugin: &str, path: &str) -> Result<Arc<str>, DirectoryError> {
        let granted = self
            .grants
            .get(plugin)
            .and_then(|g| g.files.iter().find(|f| f.as_path() == Path::new(path)))
            .ok_or_else(|| DirectoryError::FileNotGranted {
                plugin: plugin.to_owned(),
                path: path.to_owned(),
            })?
            .clone();
        let read_error = |source| DirectoryError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = tokio::fs::metadata(&granted).await.map_err(read_error)?;
        if meta.len() > MAX_FILE_SIZE {
            return Err(DirectoryError::TooLarge {
                path: path.to_owned(),
            });
        }
        let modified = meta.modified().ok();
        if let Some(text) = self.cached(&granted, modified, meta.len()) {
            return Ok(text);
        }
        let bytes = tokio::fs::read(&granted).await.map_err(read_error)?;
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(DirectoryError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text: Arc<str> = Arc::from(String::from_utf8_lossy(&bytes).as_ref());
        if let Ok(mut files) = self.files.lock() {
            files.insert(
                granted,
                CachedFile {
                    modified,
                    // The length read, so a file that changed between the
                    // stat and the read is read again next time.
                    len: bytes.len() as u64,
                    text: text.clone(),
                },
            );
        }
        Ok(text)
    }

    fn cached(&self, path: &Path, modified: Option<SystemTime>, len: u64) -> Option<Arc<str>> {
        let files = self.files.lock().ok()?;
        let cached = files.get(path)?;
        (modified.is_some() && cached.modified == modified && cached.len == len)
            .then(|| cached.text.clone())
    }

    fn callout_granted(&self, plugin: &str, protocol: CalloutProtocol, target: &str) -> bool {
        self.grants.get(plugin).is_some_and(|g| {
            g.callouts
                .iter()
                .any(|c| c.protocol == protocol && c.target == target)
        })
    }
}

/// Asks `target` whether it takes `address`, within `budget`.
pub async fn callout(
    protocol: CalloutProtocol,
    target: &str,
    address: &str,
    hostname: &str,
    budget: Duration,
) -> CalloutAnswer {
    if address.is_empty()
        || address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
    {
        return CalloutAnswer::Unknown(format!("{address:?} is not an address"));
    }
    match tokio::time::timeout(budget, conversation(protocol, target, address, hostname)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => CalloutAnswer::Unavailable(format!("{target}: {e}")),
        Err(_) => CalloutAnswer::Unavailable(format!("{target}: no answer within {budget:?}")),
    }
}

#[derive(Debug, thiserror::Error)]
enum CalloutError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
    #[error("garbled reply {0:?}")]
    Garbled(String),
    #[error("{stage}: {reply}")]
    Refused { stage: &'static str, reply: String },
}

async fn conversation(
    protocol: CalloutProtocol,
    target: &str,
    address: &str,
    hostname: &str,
) -> Result<CalloutAnswer, CalloutError> {
    let stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    expect_2xx(&mut read, "greeting").await?;
    let hello = match protocol {
        CalloutProtocol::Lmtp => "LHLO",
        CalloutProtocol::Smtp => "EHLO",
    };
    write
        .write_all(format!("{hello} {hostname}\r\n").as_bytes())
        .await?;
    expect_2xx(&mut read, hello).await?;
    write.write_all(b"MAIL FROM:<>\r\n").await?;
    expect_2xx(&mut read, "MAIL FROM").await?;
    write
        .write_all(format!("RCPT TO:<{address}>\r\n").as_bytes())
        .await?;
    let (code, reply) = read_reply(&mut read).await?;
    // A polite goodbye; the answer is known whatever happens to it.
    let _ = write.write_all(b"QUIT\r\n").await;
    Ok(match code / 100 {
        2 => CalloutAnswer::Exists,
        5 => CalloutAnswer::Unknown(reply),
        _ => CalloutAnswer::Unavailable(reply),
    })
}

async fn expect_2xx<R: AsyncBufReadExt + Unpin>(
    read: &mut R,
    stage: &'static str,
) -> Result<(), CalloutError> {
    let (code, reply) = read_reply(read).await?;
    if code / 100 == 2 {
        Ok(())
    } else {
        Err(CalloutError::Refused { stage, reply })
    }
}

/// One (possibly multi-line) reply: its code and its lines joined.
async fn read_reply<R: AsyncBufReadExt + Unpin>(
    read: &mut R,
) -> Result<(u16, String), CalloutError> {
    let mut text = String::new();
    for _ in 0..MAX_REPLY_LINES {
        let mut line = Vec::new();
        let n = (&mut *read)
            .take(MAX_REPLY_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(CalloutError::Closed);
        }
        let line = String::from_utf8_lossy(&line).trim_end().to_owned();
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| CalloutError::Garbled(line.clone()))?;
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&line);
        match line.as_bytes().get(3) {
            None | Some(b' ') => return Ok((code, text)),
            Some(b'-') => continue,
            Some(_) => return Err(CalloutError::Garbled(line)),
        }
    }
    Err(CalloutError::Garbled(text))
}

fn host_protocol(protocol: wit::CalloutProtocol) -> CalloutProtocol {
    match protocol {
        wit::CalloutProtocol::Lmtp => CalloutProtocol::Lmtp,
        wit::CalloutProtocol::Smtp => CalloutProtocol::Smtp,
    }
}

impl wit::Host for HostState {
    async fn read_file(&mut self, path: String) -> wasmtime::Result<Result<String, String>> {
        let directory = self.services.directory.clone();
        Ok(directory
            .read_file(&self.plugin, &path)
            .await
            .map(|text| text.to_string())
            .map_err(|e| e.to_string()))
    }

    async fn callout_granted(
        &mut self,
        protocol: wit::CalloutProtocol,
        target: String,
    ) -> wasmtime::Result<bool> {
        Ok(self
            .services
            .directory
            .callout_granted(&self.plugin, host_protocol(protocol), &target))
    }

    async fn verify_recipient(
        &mut self,
        protocol: wit::CalloutProtocol,
        target: String,
        address: String,
    ) -> wasmtime::Result<wit::CalloutAnswer> {
        let protocol = host_protocol(protocol);
        if !self
            .services
            .directory
            .callout_granted(&self.plugin, protocol, &target)
        {
            return Ok(wit::CalloutAnswer::Unavailable(format!(
                "{target} is not in this plugin's [plugins.{}] callouts",
                self.plugin
            )));
        }
        let budget = self.call_budget();
        let hostname = self.services.hostname.clone();
        let answer = callout(protocol, &target, &address, &hostname, budget).await;
        tracing::debug!(
            plugin = &*self.plugin,
            session = %self.session_id,
            "callout {target} for {address}: {answer:?}"
        );
        Ok(match answer {
            CalloutAnswer::Exists => wit::CalloutAnswer::Exists,
            CalloutAnswer::Unknown(reply) => wit::CalloutAnswer::Unknown(reply),
            CalloutAnswer::Unavailable(reply) => wit::CalloutAnswer::Unavailable(reply),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-connection mailbox server answering RCPT with `rcpt_reply`;
    /// returns the commands it saw.
    async fn server(rcpt_reply: &'static str) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            write.write_all(b"220 mailbox ready\r\n").await.unwrap();
            let mut seen = Vec::new();
            loop {
                let mut line = String::new();
                if read.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                let line = line.trim_end().to_owned();
                let reply = if line.starts_with("LHLO") {
                    "250-mailbox\r\n250 PIPELINING\r\n"
                } else if line.starts_with("RCPT") {
                    rcpt_reply
                } else if line == "QUIT" {
                    seen.push(line);
                    write.write_all(b"221 bye\r\n").await.unwrap();
                    break;
                } else {
                    "250 ok\r\n"
                };
                seen.push(line);
                write.write_all(reply.as_bytes()).await.unwrap();
            }
            seen
        });
        (target, task)
    }

    #[tokio::test]
    async fn lmtp_callout_maps_reply_classes() {
        for (reply, expected) in [
            ("250 2.1.5 ok\r\n", CalloutAnswer::Exists),
            (
                "550 5.1.1 <x@example.org> User doesn't exist\r\n",
                CalloutAnswer::Unknown("550 5.1.1 <x@example.org> User doesn't exist".into()),
            ),
            (
                "451-4.3.0 try\r\n451 4.3.0 later\r\n",
                CalloutAnswer::Unavailable("451-4.3.0 try 451 4.3.0 later".into()),
            ),
        ] {
            let (target, task) = server(reply).await;
            let answer = callout(
                CalloutProtocol::Lmtp,
                &target,
                "x@example.org",
                "mx.test",
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(answer, expected);
            let seen = task.await.unwrap();
            assert_eq!(
                seen,
                [
                    "LHLO mx.test",
                    "MAIL FROM:<>",
                    "RCPT TO:<x@example.org>",
                    "QUIT"
                ]
            );
        }
    }

    #[tokio::test]
    async fn unreachable_and_bad_addresses() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        drop(listener);
        let answer = callout(
            CalloutProtocol::Smtp,
            &target,
            "a@b",
            "mx",
            Duration::from_secs(5),
        )
        .await;
        assert!(
            matches!(answer, CalloutAnswer::Unavailable(_)),
            "{answer:?}"
        );
        let answer = callout(
            CalloutProtocol::Smtp,
            &target,
            "a@b>\r\nDATA",
            "mx",
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(answer, CalloutAnswer::Unknown(_)), "{answer:?}");
    }

    #[tokio::test]
    async fn files_outside_the_grant_are_refused_and_changes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipients");
        std::fs::write(&path, "alice@example.org\n").unwrap();
        let mut grants = HashMap::new();
        grants.insert(
            "r".to_owned(),
            Grants {
                files: vec![path.clone()],
                callouts: Vec::new(),
            },
        );
        let directory = Directory {
            grants,
            files: Mutex::new(HashMap::new()),
        };
        let p = path.to_str().unwrap();
        assert_eq!(
            &*directory.read_file("r", p).await.unwrap(),
            "alice@example.org\n"
        );
        assert!(matches!(
            directory.read_file("other", p).await,
            Err(DirectoryError::FileNotGranted { .. })
        ));
        assert!(matches!(
            directory.read_file("r", "/etc/passwd").await,
            Err(DirectoryError::FileNotGranted { .. })
        ));
        std::fs::write(&path, "alice@example.org\nbob@example.org\n").unwrap();
        assert!(directory
            .read_file("r", p)
            .await
            .unwrap()
            .contains("bob@example.org"));
    }
}
