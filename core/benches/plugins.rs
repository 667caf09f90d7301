//! What a plugin costs per session and per hook, for the example filter of
//! each guest language (plugins/examples/, the same filter in Rust, Python,
//! JavaScript, C and Zig) and for `builtin:relay`:
//!
//! - `first_hook/LANG`: a new session's first rcpt hook, which instantiates
//!   the component and runs its `init` (what every session pays once);
//! - `rcpt/LANG` and `data_5KiB/LANG`: one more hook call on a session whose
//!   instance exists.
//!
//! The examples are read from `$SLUICE_EXAMPLES_DIR` (default
//! `$CARGO_TARGET_DIR/examples`, where `plugins/examples/build-all.sh` puts
//! them); a language whose component is missing is left out with a note.
//! Before measuring, the resident memory each live instance costs is printed
//! (RSS growth over 50 sessions holding one instance each).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sluice::config::{self, DnsConfig};
use sluice::dns::Dns;
use sluice::pipeline::message::MessageResource;
use sluice::pipeline::{
    HookArg, MailboxArg, PipelineSet, PluginEngine, SessionFilters, SessionInfo,
};
use sluice_spool::Spool;
use tokio::runtime::Runtime;

const LANGUAGES: &[&str] = &["rust", "python", "javascript", "c", "zig"];

/// A 5 KiB message whose Subject does not contain the filter's word.
fn message() -> Arc<[u8]> {
    let mut text = String::from(
        "From: <sender@example.net>\r\nTo: <alice@example.org>\r\nSubject: quarterly report\r\n\
         Message-ID: <bench@example.net>\r\n\r\n",
    );
    while text.len() < 5 * 1024 {
        text.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    Arc::from(text.into_bytes())
}

fn examples_dir() -> PathBuf {
    match std::env::var_os("SLUICE_EXAMPLES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "/var/tmp/sluice-target".into()),
        )
        .join("examples"),
    }
}

/// Plugin name and `path` value of every filter to measure.
fn filters() -> Vec<(String, String)> {
    let dir = examples_dir();
    let mut found = vec![("relay".to_string(), "builtin:relay".to_string())];
    for lang in LANGUAGES {
        let wasm = dir.join(format!("{lang}-example.wasm"));
        if wasm.exists() {
            found.push((lang.to_string(), wasm.display().to_string()));
        } else {
            eprintln!(
                "note: {} missing, {lang} left out (run plugins/examples/build-all.sh)",
                wasm.display()
            );
        }
    }
    found
}

/// One pipeline per filter, named after it, running it at rcpt and data.
fn config_text(data_dir: &Path, filters: &[(String, String)]) -> String {
    let mut text = format!(
        "[server]\nhostname = \"mx.example.test\"\ndata_dir = \"{}\"\n\n\
         [domains]\nlocal = [\"example.org\"]\n\n\
         [[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\npipeline = \"relay\"\n\n",
        data_dir.display()
    );
    for (name, path) in filters {
        let data = if name == "relay" {
            String::new()
        } else {
            format!("\"{name}\"")
        };
        text.push_str(&format!(
            "[pipeline.{name}]\nrcpt = [\"{name}\"]\ndata = [{data}]\n\n\
             [plugins.{name}]\npath = \"{path}\"\ntimeout = \"5s\"\nmemory = \"256MiB\"\n"
        ));
        if name != "relay" {
            text.push_str(&format!("[plugins.{name}.config]\nword = \"lottery\"\n"));
        }
        text.push('\n');
    }
    text
}

fn session_info() -> SessionInfo {
    SessionInfo {
        id: "bench".into(),
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        client_port: 40000,
        listener: "mx".into(),
        reverse_name: None,
        helo: Some("client.example.net".into()),
        tls: None,
        authenticated_user: None,
        reverse_path: Some("sender@example.net".into()),
        recipients: Vec::new(),
    }
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn plugins(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let filters = filters();
    let config =
        config::load_str(&config_text(dir.path(), &filters), "bench").expect("bench config");
    let spool = Spool::open(&dir.path().join("spool")).expect("spool");
    // No filter here looks anything up; an absent name server is enough.
    let dns = Dns::new(&DnsConfig {
        nameservers: vec!["127.0.0.1:1".parse().expect("address")],
        timeout: Duration::from_millis(100),
        attempts: 1,
        dnssec: Default::default(),
    })
    .expect("resolver");
    let engine = PluginEngine::new(256 << 20, Some(&dir.path().join("cache"))).expect("engine");
    let set = rt
        .block_on(PipelineSet::build(&engine, &config, &spool, &dns))
        .expect("pipelines");
    let info = session_info();
    let recipient = MailboxArg {
        local_part: "alice".into(),
        domain: "example.org".into(),
    };
    let message = message();

    for (name, _) in &filters {
        let pipeline = set.get(name).expect("pipeline");
        let before = resident_kib();
        let held: Vec<SessionFilters> = (0..50)
            .map(|i| {
                let mut filters = SessionFilters::new(pipeline.clone(), format!("held{i}"));
                rt.block_on(filters.run(&info, HookArg::Rcpt(&recipient)));
                filters
            })
            .collect();
        let per_instance = resident_kib().saturating_sub(before) / 50;
        eprintln!("{name}: {per_instance} KiB resident per live instance");
        drop(held);
    }

    let mut group = c.benchmark_group("plugin");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for (name, _) in &filters {
        let pipeline = set.get(name).expect("pipeline");
        group.bench_function(BenchmarkId::new("first_hook", name), |b| {
            b.iter(|| {
                let mut filters = SessionFilters::new(pipeline.clone(), "bench".into());
                rt.block_on(filters.run(&info, HookArg::Rcpt(&recipient)))
            })
        });
        let mut session = SessionFilters::new(pipeline.clone(), "bench".into());
        rt.block_on(session.run(&info, HookArg::Rcpt(&recipient)));
        group.bench_function(BenchmarkId::new("rcpt", name), |b| {
            b.iter(|| rt.block_on(session.run(&info, HookArg::Rcpt(&recipient))))
        });
        if name != "relay" {
            group.bench_function(BenchmarkId::new("data_5KiB", name), |b| {
                b.iter(|| {
                    // A new resource per transaction, as the session makes one.
                    let message = MessageResource::new(Arc::clone(&message));
                    rt.block_on(session.run_data(&info, &message))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, plugins);
criterion_main!(benches);
