//! The `sluice` command line: `serve`, `check-config`, `reload`,
//! `pipeline test`, `user …`, `queue …`, `dkim keygen`, `--version`. Errors
//! reach the operator here, with `anyhow`
//! context; the library below reports typed errors.
//!
//! Exit status: 0 on success, 1 on an error (unknown queue id included), 2
//! when a `queue` command or `reload` finds no running server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::admin::{self, AdminClient, ClientError};
use crate::config::{self, Config, LogFormat};
use crate::server::Server;

#[derive(Parser)]
#[command(name = "sluice", version = version(), about = "A mail transfer agent with sandboxed WebAssembly filters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (on the embedded default configuration without --config).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log format: text or json (overrides [log] format).
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Check a configuration file; exit 0 when it is valid.
    CheckConfig { file: PathBuf },
    /// Rebuild the running server's plugins and pipelines from its config
    /// file; exit 1 with the error when they do not build (the running ones
    /// keep serving).
    Reload {
        /// The server's configuration (the embedded default without it):
        /// its data_dir holds the admin socket.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the admin API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Manage SMTP AUTH users (the users file in the data directory).
    User {
        /// Configuration whose data_dir and [auth] apply (default: the
        /// embedded default).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Work with plugin pipelines offline.
    Pipeline {
        #[command(subcommand)]
        action: PipelineAction,
    },
    /// Inspect and act on the running server's queue.
    Queue {
        /// The server's configuration (the embedded default without it):
        /// its data_dir holds the admin socket.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// Evaluate SPF (RFC 7208) for one client over the configured `[dns]`
    /// resolver, as the auth checks do, and print the result.
    Spf {
        #[arg(long, short)]
        config: PathBuf,
        /// The client's address.
        #[arg(long)]
        ip: std::net::IpAddr,
        #[arg(long)]
        helo: String,
        /// The MAIL FROM address; without it, or "", the HELO identity is
        /// checked (RFC 7208 §2.4).
        #[arg(long)]
        mail_from: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Generate a signing key: writes DIR/DOMAIN.SELECTOR.pem (mode 0600)
    /// and prints the DNS TXT record to publish.
    Keygen {
        domain: String,
        selector: String,
        /// rsa (RSA-2048, rsa-sha256) or ed25519 (ed25519-sha256).
        #[arg(long, default_value = "rsa")]
        algorithm: String,
        /// Directory the key file is written to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum PipelineAction {
    /// Replay a recorded message through a listener's pipeline (connect,
    /// helo, mail, each rcpt, data) without a server, and print every
    /// plugin's verdict, edits and time. Exit 0 whatever the verdict.
    Test {
        #[arg(long, short)]
        config: PathBuf,
        /// The listener whose pipeline runs (default: the first).
        #[arg(long)]
        listener: Option<String>,
        /// The message file (RFC 5322; bare LF line ends are accepted).
        #[arg(long)]
        message: PathBuf,
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: std::net::IpAddr,
        #[arg(long, default_value = "client.example")]
        helo: String,
        /// The reverse-path ("" for the null one; default: the address in
        /// the message's From header).
        #[arg(long)]
        from: Option<String>,
        /// A recipient (repeatable; default: the address in the message's
        /// To header).
        #[arg(long)]
        to: Vec<String>,
        /// Answer DNS from this TOML file (names → record types → values)
        /// instead of the configured resolver.
        #[arg(long)]
        dns_fixture: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (NAME is a plain name or local@domain).
    Add {
        name: String,
        /// Read the password from the first line of standard input instead
        /// of prompting twice on the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user.
    Del { name: String },
    /// List user names.
    List,
}

#[derive(Subcommand)]
enum QueueAction {
    /// List queued messages: id, age, sender, recipients, state, next
    /// attempt, last reply.
    List {
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: envelope, each recipient's status and attempt
    /// history, and the message's headers.
    Show {
        id: String,
        /// Print the admin API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Attempt a deferred message now (every deferred message without ID).
    /// Held and quarantined messages are not delivered: release them.
    Flush { id: Option<String> },
    /// Remove a message from the queue without delivering it.
    Delete { id: String },
    /// Keep a message from being delivered until it is released.
    Hold { id: String },
    /// Release a held or quarantined message and attempt it now.
    Release { id: String },
}

fn version() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (wasmtime ",
        env!("SLUICE_WASMTIME_VERSION"),
        ")"
    )
}

/// Taken off the mode of everything this process creates: nothing under
/// the data directory (mail, spool, caches, keys, sockets) is ever open to
/// other users, whatever umask the process was started with; the group
/// keeps read access (a delivery agent sharing the Maildir, say).
const UMASK: u32 = 0o027;

pub fn main() -> ExitCode {
    // Before anything is created. Bits the inherited umask takes off too
    // stay off (a umask of 077 stays 077).
    let inherited = rustix::process::umask(rustix::fs::Mode::from_raw_mode(UMASK));
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(
        UMASK | inherited.as_raw_mode(),
    ));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, log_format } => serve(config, log_format),
        Command::CheckConfig { file } => check_config(&file),
        Command::Reload { config, json } => reload(config, json),
        Command::User { config, command } => user(config, command),
        Command::Queue { config, action } => queue(config, action),
        Command::Pipeline { action } => pipeline(action),
        Command::Dkim { command } => dkim(command),
        Command::Spf {
            config,
            ip,
            helo,
            mail_from,
            json,
        } => spf(&config, ip, &helo, mail_from.as_deref(), json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            let unreachable = e
                .downcast_ref::<ClientError>()
                .is_some_and(ClientError::is_unreachable);
            if unreachable {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `sluice queue …`: one request to the running server's admin endpoint.
fn queue(config_path: Option<PathBuf>, action: QueueAction) -> anyhow::Result<()> {
    let config: Config = match &config_path {
        Some(path) => config::load_file(path)?,
        None => config::default_config()?,
    };
    let client = AdminClient::new(&admin::socket_path(&config.server.data_dir));
    let (method, path) = match &action {
        QueueAction::List { .. } => ("GET", "/queue".to_owned()),
        QueueAction::Show { id, .. } => ("GET", format!("/queue/{}", queue_id(id)?)),
        QueueAction::Flush { id: None } => ("POST", "/queue/flush".to_owned()),
        QueueAction::Flush { id: Some(id) } => ("POST", format!("/queue/{}/flush", queue_id(id)?)),
        QueueAction::Delete { id } => ("DELETE", format!("/queue/{}", queue_id(id)?)),
        QueueAction::Hold { id } => ("POST", format!("/queue/{}/hold", queue_id(id)?)),
        QueueAction::Release { id } => ("POST", format!("/queue/{}/release", queue_id(id)?)),
    };
    let reply = client.request(method, &path)?;
    if !(200..300).contains(&reply.status) {
        anyhow::bail!("{}", reply.error_text());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match action {
        QueueAction::List { json: true } | QueueAction::Show { json: true, .. } => {
            println!("{}", serde_json::to_string_pretty(&reply.body)?);
        }
        QueueAction::List { json: false } => {
            let list: admin::ListView = serde_json::from_value(reply.body)
                .context("the admin endpoint sent an unexpected queue listing")?;
            print!("{}", admin::list_table(&list, now));
        }
        QueueAction::Show { json: false, .. } => {
            let view: admin::ShowView = serde_json::from_value(reply.body)
                .context("the admin endpoint sent an unexpected queue entry")?;
            print!("{}", admin::show(&view, now));
        }
        QueueAction::Flush { id: None } => {
            let count = |key: &str| reply.body[key].as_u64().unwrap_or(0);
            println!(
                "{} message(s) due now; {} held or quarantined left alone",
                count("flushed"),
                count("skipped_held")
            );
        }
        QueueAction::Flush { id: Some(id) } => println!("{} is due now", id.to_lowercase()),
        QueueAction::Delete { id } => println!("{} deleted", id.to_lowercase()),
        QueueAction::Hold { id } => println!("{} held", id.to_lowercase()),
        QueueAction::Release { id } => println!("{} released", id.to_lowercase()),
    }
    Ok(())
}

/// `sluice spf`: one SPF evaluation, printed as `result domain
/// explanation` or as JSON.
fn spf(
    config_path: &std::path::Path,
    ip: std::net::IpAddr,
    helo: &str,
    mail_from: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let config = config::load_file(config_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let check = runtime.block_on(async {
        let dns = crate::dns::Dns::new(&config.dns)?;
        let authenticator = crate::authn::Authenticator::new(&dns, &config.server.hostname);
        anyhow::Ok(match mail_from.filter(|m| !m.is_empty()) {
            Some(sender) => authenticator.spf_mail_from(ip, helo, sender).await,
            None => authenticator.spf_helo(ip, helo).await,
        })
    })?;
    let result = check.outcome.name();
    if json {
        let value = serde_json::json!({
            "result": result,
            "domain": check.domain,
            "explanation": check.explanation,
        });
        println!("{value}");
    } else {
        let explanation = check.explanation.unwrap_or_default();
        println!("{result} {} {explanation}", check.domain);
    }
    Ok(())
}

/// How long `sluice reload` waits: the server compiles every changed
/// component before it answers.
const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// `sluice reload`: `POST /reload` on the running server's admin endpoint.
fn reload(config_path: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let data_dir = match &config_path {
        Some(path) => reload_data_dir(path)?,
        None => config::default_config()?.server.data_dir,
    };
    let client = AdminClient::new(&admin::socket_path(&data_dir)).with_timeout(RELOAD_TIMEOUT);
    let reply = client.request("POST", "/reload")?;
    if !(200..300).contains(&reply.status) {
        anyhow::bail!(
            "reload failed, the previous pipelines keep serving: {}",
            reply.error_text()
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reply.body)?);
        return Ok(());
    }
    let list = |key: &str| -> String {
        reply.body[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!(
        "reloaded in {} ms: pipelines {}; plugins {}",
        reply.body["build_ms"].as_u64().unwrap_or(0),
        list("pipelines"),
        list("plugins")
    );
    let restart = list("restart_needed");
    if !restart.is_empty() {
        println!("changed but not applied (restart to apply): {restart}");
    }
    Ok(())
}

/// The data directory named by a config file that may not be valid: a
/// broken file is exactly what the server must be asked to reload (it
/// reports the errors and keeps its pipelines), so only `[server] data_dir`
/// is read here when the whole file does not load.
fn reload_data_dir(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    if let Ok(config) = config::load_file(path) {
        return Ok(config.server.data_dir);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{}: not TOML, cannot find server.data_dir", path.display()))?;
    let data_dir = table
        .get("server")
        .and_then(|server| server.get("data_dir"))
        .and_then(|dir| dir.as_str())
        .unwrap_or("./data");
    Ok(PathBuf::from(data_dir))
}

/// `sluice pipeline test`.
fn pipeline(action: PipelineAction) -> anyhow::Result<()> {
    let PipelineAction::Test {
        config: config_path,
        listener,
        message,
        client_ip,
        helo,
        from,
        to,
        dns_fixture,
        json,
    } = action;
    let config = config::load_file(&config_path)?;
    let bytes = crate::replay::read_message(&message)
        .with_context(|| format!("reading {}", message.display()))?;
    let from = match from {
        Some(from) => from,
        None => header_address(&bytes, "from")
            .with_context(|| format!("{}: no From address; pass --from", message.display()))?,
    };
    let to = if to.is_empty() {
        vec![header_address(&bytes, "to")
            .with_context(|| format!("{}: no To address; pass --to", message.display()))?]
    } else {
        to
    };
    let input = crate::replay::ReplayInput {
        listener,
        client_ip,
        helo,
        from,
        to,
        message: bytes,
        dns_fixture,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(crate::replay::replay(&config, input))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "listener {} -> pipeline {}",
        report.listener, report.pipeline
    );
    for stage in &report.stages {
        let argument = stage
            .argument
            .as_deref()
            .map(|a| format!(" <{a}>"))
            .unwrap_or_default();
        let reply = stage
            .reply
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        println!("{}{argument}: {}{reply}", stage.stage, stage.outcome);
        for step in &stage.plugins {
            let detail = step
                .detail
                .as_deref()
                .map(|d| format!(" {d}"))
                .unwrap_or_default();
            let shadow = if step.shadow {
                " (shadow, not applied)"
            } else {
                ""
            };
            println!(
                "  {:<16} {}{detail}{shadow} [{:.3} ms]",
                step.plugin,
                step.verdict,
                step.micros as f64 / 1000.0
            );
            for modification in &step.modifications {
                println!("  {:<16}   {modification}", "");
            }
        }
    }
    println!("result: {}", report.result);
    for modification in &report.applied_modifications {
        println!("  {modification}");
    }
    Ok(())
}

/// The address of a header (From, To) of a message: the first `<…>`, or
/// the whole value when it has none.
fn header_address(message: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next()?;
    let line = head.split("\r\n").find(|line| {
        line.split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
    })?;
    let value = line.split_once(':')?.1.trim();
    let address = match (value.find('<'), value.find('>')) {
        (Some(start), Some(end)) if start < end => &value[start + 1..end],
        _ => value.split(',').next()?.trim(),
    };
    (!address.is_empty()).then(|| address.to_owned())
}

/// Checks an id's syntax before asking the server.
fn queue_id(text: &str) -> anyhow::Result<sluice_spool::QueueId> {
    Ok(text.parse()?)
}

/// Checks the file's values, then opens the certificates and DKIM keys it
/// names (creating nothing), and reports every problem of both kinds.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let config::Checked {
        config,
        mut problems,
    } = config::check_file(file)?;
    match crate::assets::Assets::load(&config) {
        Ok(assets) => {
            for warning in assets.warnings {
                eprintln!("warning: {warning}");
            }
        }
        Err(e) => problems.extend(e.diagnostics),
    }
    if !problems.is_empty() {
        return Err(config::ConfigError::Invalid(problems).into());
    }
    // Builtin names are known only to the binary, so they are checked here.
    let known: Vec<&str> = crate::pipeline::builtin_names().collect();
    for plugin in config.plugins.values() {
        if let config::PluginSource::Builtin(name) = &plugin.source {
            if !known.contains(&name.as_str()) {
                anyhow::bail!(
                    "{}: plugins.{}.path: unknown bundled plugin \"builtin:{}\" (bundled: {})",
                    file.display(),
                    plugin.name,
                    name,
                    known.join(", ")
                );
            }
        }
    }
    println!("{}: ok", file.display());
    Ok(())
}

fn user(path: Option<PathBuf>, command: UserCommand) -> anyhow::Result<()> {
    use crate::users::{password, UserFile};
    let config: Config = match &path {
        Some(path) => config::load_file(path)?,
        None => config::default_config()?,
    };
    let file = UserFile::in_data_dir(&config.server.data_dir);
    let min_length = config.auth.min_password_length;
    let new_hash = |name: &str, from_stdin: bool| -> anyhow::Result<String> {
        let password = read_new_password(from_stdin)?;
        password::check_policy(name, &password, min_length)
            .with_context(|| format!("password refused for {name}"))?;
        Ok(password::hash_password(&password)?)
    };
    match command {
        UserCommand::Add {
            name,
            password_stdin,
        } => {
            // Refuse early, before asking for a password.
            if file.contains(&name)? {
                anyhow::bail!(crate::users::UserError::Exists(name.to_lowercase()));
            }
            let hash = new_hash(&name, password_stdin)?;
            file.add(&name, &hash)?;
            println!("user {} added", name.to_lowercase());
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            if !file.contains(&name)? {
                anyhow::bail!(crate::users::UserError::NotFound(name.to_lowercase()));
            }
            let hash = new_hash(&name, password_stdin)?;
            file.set_password(&name, &hash)?;
            println!("password of {} changed", name.to_lowercase());
        }
        UserCommand::Del { name } => {
            file.delete(&name)?;
            println!("user {} deleted", name.to_lowercase());
        }
        UserCommand::List => {
            for name in file.list()? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

fn dkim(command: DkimCommand) -> anyhow::Result<()> {
    use crate::dkim::keygen::{self, KeyType};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let DkimCommand::Keygen {
        domain,
        selector,
        algorithm,
        out,
    } = command;
    let (kind, config_name) = match algorithm.as_str() {
        "rsa" | "rsa-sha256" => (KeyType::Rsa, "rsa-sha256"),
        "ed25519" | "ed25519-sha256" => (KeyType::Ed25519, "ed25519-sha256"),
        other => anyhow::bail!("unknown algorithm {other:?} (expected rsa or ed25519)"),
    };
    let key = keygen::generate(kind, &domain, &selector)?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let path = out.join(format!("{domain}.{selector}.pem"));
    // create_new: never overwrite a key that may already be published.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(key.private_pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("private key written to {}", path.display());
    eprintln!(
        "configure it with:\n  [[dkim.sign]]\n  domain = \"{domain}\"\n  selector = \"{selector}\"\n  key = \"{}\"\n  algorithm = \"{config_name}\"",
        path.display()
    );
    eprintln!("and publish this DNS record:");
    println!("{}", key.dns_record);
    Ok(())
}

/// A new password: one line of standard input, or typed twice on the
/// terminal without echo.
fn read_new_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let password = line.strip_suffix('\n').unwrap_or(&line);
        let password = password.strip_suffix('\r').unwrap_or(password);
        if password.is_empty() {
            anyhow::bail!("no password on standard input");
        }
        return Ok(password.to_owned());
    }
    let first = rpassword::prompt_password("New password: ").context("reading the password")?;
    let second = rpassword::prompt_password("Repeat password: ").context("reading the password")?;
    if first != second {
        anyhow::bail!("the passwords do not match");
    }
    Ok(first)
}

fn serve(path: Option<PathBuf>, log_format: Option<String>) -> anyhow::Result<()> {
    let config: Config = match &path {
        Some(path) => config::load_file(path)?,
        None => config::default_config()?,
    };
    let format = match log_format.as_deref() {
        Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => anyhow::bail!("--log-format: expected text or json, got {other:?}"),
        None => config.log.format,
    };
    init_logging(&config.log.level, format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut server = Server::start(config).await?;
        if let Some(path) = path {
            server = server.with_config_path(path);
        }
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
