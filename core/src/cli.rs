//! The `sluice` command line: `serve`, `check-config`, `--version`. Errors
//! reach the operator here, with `anyhow` context; the library below
//! reports typed errors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
}

fn version() -> &'static str {
    concat!(env!("CARGO_PKG_VERSION"), " (wasmtime 48)")
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, log_format } => serve(config, log_format),
        Command::CheckConfig { file } => check_config(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let config = config::load_file(file)?;
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
        let server = Server::start(config).await?;
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
