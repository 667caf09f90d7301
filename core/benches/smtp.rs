//! Throughput of the sans-IO SMTP code on the hot path of every message:
//! command parsing and the DATA receiver (dot-unstuffing, line checks).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::smtp::command::parse_command_with;
use sluice::smtp::data::{dot_stuff, DataLimits, DataProgress, DataReceiver};

const COMMANDS: &[&[u8]] = &[
    b"EHLO client.example.org",
    b"MAIL FROM:<sender@example.org> SIZE=5120 BODY=8BITMIME",
    b"RCPT TO:<rcpt@example.test>",
    b"RCPT TO:<\"quoted local\"@example.test> NOTIFY=NEVER",
    b"DATA",
    b"QUIT",
];

fn commands(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_command");
    group.throughput(Throughput::Elements(COMMANDS.len() as u64));
    group.bench_function("transaction", |b| {
        b.iter(|| {
            for line in COMMANDS {
                let _ = std::hint::black_box(parse_command_with(std::hint::black_box(line), false));
            }
        })
    });
    group.finish();
}

/// A message as a client sends it: 76-octet lines, some starting with a
/// dot, stuffed and terminated.
fn wire_message(size: usize) -> Vec<u8> {
    let mut message =
        b"From: a@example.org\r\nTo: b@example.test\r\nSubject: bench\r\n\r\n".to_vec();
    let mut n = 0;
    while message.len() < size {
        let lead = if n % 20 == 0 { "." } else { "x" };
        message.extend_from_slice(format!("{lead}{}\r\n", "y".repeat(73)).as_bytes());
        n += 1;
    }
    let mut wire = Vec::with_capacity(size + 64);
    dot_stuff(&message, &mut wire);
    wire
}

fn data(c: &mut Criterion) {
    let mut group = c.benchmark_group("data_receiver");
    for size in [5 * 1024, 1024 * 1024] {
        let wire = wire_message(size);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &wire, |b, wire| {
            b.iter(|| {
                let mut receiver = DataReceiver::new(DataLimits {
                    max_size: 64 << 20,
                    max_line: 1000,
                });
                // Fed in 16 KiB reads, as the session does.
                for chunk in wire.chunks(16 * 1024) {
                    if let DataProgress::Done { .. } = receiver.feed(chunk) {
                        break;
                    }
                }
                std::hint::black_box(receiver.finish())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, commands, data);
criterion_main!(benches);
