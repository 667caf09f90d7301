//! Durable enqueue throughput with group commit: 5 KiB messages from 1, 20
//! and 100 concurrent writers, each enqueue returning only once its
//! message is flushed to disk (what a `250` after DATA waits for).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_spool::{NewMessage, Spool};

fn message(n: u64) -> NewMessage {
    NewMessage {
        reverse_path: "sender@example.org".into(),
        recipients: vec!["rcpt@example.test".into()],
        message: vec![b'x'; 5 * 1024],
        received_at: n,
        client: "127.0.0.1:1".into(),
        quarantine: None,
        dsn: Default::default(),
        recipient_dsn: Vec::new(),
    }
}

fn enqueue(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("spool");
    let mut group = c.benchmark_group("spool_enqueue_5KiB");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    for writers in [1u64, 20, 100] {
        group.bench_with_input(
            BenchmarkId::new("writers", writers),
            &writers,
            |b, &writers| {
                b.iter_custom(|iters| {
                    let spool = spool.clone();
                    runtime.block_on(async move {
                        let start = Instant::now();
                        let mut tasks = Vec::new();
                        for w in 0..writers {
                            let spool = spool.clone();
                            // Writer w takes every writers-th message.
                            let count = iters / writers + u64::from(w < iters % writers);
                            tasks.push(tokio::spawn(async move {
                                for n in 0..count {
                                    spool.enqueue(message(n)).await.expect("enqueue");
                                }
                            }));
                        }
                        for task in tasks {
                            task.await.expect("writer");
                        }
                        start.elapsed()
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, enqueue);
criterion_main!(benches);
