//! The `directory` interface: the files and mailbox servers the operator
//! granted a plugin (`[plugins.NAME] files` and `callouts`), and nothing
//! else. A file is read as a table of `key` / `key: value` lines, parsed
//! once and again only when its modification time or size changes; a callout is one short LMTP/SMTP conversation (greeting,
//! LHLO/EHLO, `MAIL FROM:<>`, `RCPT TO`, `QUIT`) bounded by the plugin's
//! deadline. Caching callout answers is the plugin's business (its `kv`).
//! `host` serves it to plugins, beside the other host interfaces.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
    #[error("{path} line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
    /// A cached parse failure (a `Line` error, as text).
    #[error("{message}")]
    Invalid { message: Arc<str> },
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

/// A file read as a table: lower-cased key -> value ("" for a bare key).
type Table = HashMap<String, String>;
/// A parsed table, or why the file is not one (kept, so a broken file is
/// not parsed again until it changes).
type Parsed = Result<Arc<Table>, Arc<str>>;

struct CachedFile {
    modified: Option<SystemTime>,
    len: u64,
    parsed: Parsed,
}

/// Reads a table file: one entry per line, `key` or `key: value`, `#`
/// comments and blank lines ignored, keys lower-cased and free of
/// whitespace; a later line for the same key wins.
pub fn parse_table(path: &str, text: &str) -> Result<Table, DirectoryError> {
    let mut table = Table::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = match line.split_once(':') {
            Some((key, value)) => (key.trim(), value.trim()),
            None => (line, ""),
        };
        let bad = |reason: String| DirectoryError::Line {
            path: path.to_owned(),
            line: index + 1,
            reason,
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(bad(format!(
                "{key:?} is not a key (one word before an optional \":\")"
            )));
        }
        if line.contains(':') && value.is_empty() {
            return Err(bad(format!("{key:?} has a \":\" but no value")));
        }
        table.insert(key.to_lowercase(), value.to_owned());
    }
    Ok(table)
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

    /// Looks `key` up in a file granted to `plugin`, read as a table (see
    /// [`parse_table`]); the file is parsed once per change and cached.
    pub async fn lookup(
        &self,
        plugin: &str,
        path: &str,
        key: &str,
    ) -> Result<Option<String>, DirectoryError> {
        let table = self.table(plugin, path).await?;
        Ok(table.get(&key.to_lowercase()).cloned())
    }

    async fn table(&self, plugin: &str, path: &str) -> Result<Arc<Table>, DirectoryError> {
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
        if let Some(parsed) = self.cached(&granted, modified, meta.len()) {
            return parsed.map_err(|message| DirectoryError::Invalid { message });
        }
        let bytes = tokio::fs::read(&granted).await.map_err(read_error)?;
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(DirectoryError::TooLarge {
                path: path.to_owned(),
            });
        }
        let len = bytes.len() as u64;
        // A table of up to MAX_FILE_SIZE is a map built line by line, CPU
        // time in proportion: on the blocking pool, so it holds no async
        // worker and the sessions scheduled on it.
        let name = path.to_owned();
        let parsed = tokio::task::spawn_blocking(move || {
            parse_table(&name, &String::from_utf8_lossy(&bytes))
                .map(Arc::new)
                .map_err(|e| Arc::<str>::from(e.to_string()))
        })
        .await
        .unwrap_or_else(|e| Err(Arc::from(format!("{path}: parsing failed: {e}"))));
        if let Ok(mut files) = self.files.lock() {
            files.insert(
                granted,
                CachedFile {
                    modified,
                    // The length read, so a file that changed between the
                    // stat and the read is read again next time.
                    len,
                    parsed: parsed.clone(),
                },
            );
        }
        parsed.map_err(|message| DirectoryError::Invalid { message })
    }

    fn cached(&self, path: &Path, modified: Option<SystemTime>, len: u64) -> Option<Parsed> {
        let files = self.files.lock().ok()?;
        let cached = files.get(path)?;
        (modified.is_some() && cached.modified == modified && cached.len == len)
            .then(|| cached.parsed.clone())
    }

    pub fn callout_granted(&self, plugin: &str, protocol: CalloutProtocol, target: &str) -> bool {
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
    // `unix:/path`: a mailbox server on this host, as Dovecot's LMTP
    // socket usually is.
    if let Some(path) = target.strip_prefix("unix:") {
        let stream = tokio::net::UnixStream::connect(path).await?;
        return talk(stream, protocol, address, hostname).await;
    }
    let stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    talk(stream, protocol, address, hostname).await
}

async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    protocol: CalloutProtocol,
    address: &str,
    hostname: &str,
) -> Result<CalloutAnswer, CalloutError> {
    let (read, mut write) = tokio::io::split(stream);
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

    #[test]
    fn tables_parse_keys_values_and_comments() {
        let table = parse_table(
            "r",
            "# head\nAlice@Example.org\n\nsales: alice, bob  # team\n@catchall.example\n",
        )
        .unwrap();
        assert_eq!(table.get("alice@example.org").map(String::as_str), Some(""));
        assert_eq!(table.get("sales").map(String::as_str), Some("alice, bob"));
        assert_eq!(table.get("@catchall.example").map(String::as_str), Some(""));
        assert_eq!(table.len(), 3);
        let err = parse_table("/r", "ok\nnot a key\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/r line 2: \"not a key\" is not a key"),
            "{err}"
        );
        let err = parse_table("/r", "alias:\n").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("no value"), "{err}");
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
            directory.lookup("r", p, "ALICE@example.org").await.unwrap(),
            Some(String::new())
        );
        assert_eq!(
            directory.lookup("r", p, "bob@example.org").await.unwrap(),
            None
        );
        assert!(matches!(
            directory.lookup("other", p, "alice@example.org").await,
            Err(DirectoryError::FileNotGranted { .. })
        ));
        assert!(matches!(
            directory.lookup("r", "/etc/passwd", "root").await,
            Err(DirectoryError::FileNotGranted { .. })
        ));
        std::fs::write(
            &path,
            "alice@example.org\nbob@example.org: alice@example.org\n",
        )
        .unwrap();
        assert_eq!(
            directory.lookup("r", p, "bob@example.org").await.unwrap(),
            Some("alice@example.org".into())
        );
        std::fs::write(&path, "broken line\n").unwrap();
        for _ in 0..2 {
            let err = directory
                .lookup("r", p, "bob@example.org")
                .await
                .unwrap_err();
            assert!(err.to_string().contains("line 1"), "{err}");
        }
    }
}
