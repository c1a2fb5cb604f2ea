//! Criterion micro-benchmarks of hot paths reachable through the public API.
//!
//! `broadcast_frame`: what one broadcast costs before any syscall, for 1,000
//! recipients: foreman's way (encode once with [`foreman::Prepared`], queue a
//! shared reference per recipient) against encoding per recipient, with our
//! codec and with tungstenite's frame encoder.
//!
//! The bus and the registry are crate-private; they get micro-benchmarks here
//! once the library exposes a way in.
//!
//! `cargo bench --bench hot_paths` runs a short profile; `-- --full` the
//! default Criterion timing. Criterion's own command line is not parsed (it
//! would reject the suite's `--full`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use foreman::{Message, Prepared, Protocol};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;

/// Recipients of one broadcast.
const RECIPIENTS: usize = 1000;

fn broadcast_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("broadcast_frame");
    group.throughput(Throughput::Elements(RECIPIENTS as u64));
    for size in [64usize, 512, 16 * 1024] {
        let msg = Message::from("x".repeat(size));
        let mut queues: Vec<Prepared> = Vec::with_capacity(RECIPIENTS);
        group.bench_with_input(
            BenchmarkId::new("prepare_once_share", size),
            &msg,
            |b, msg| {
                b.iter(|| {
                    queues.clear();
                    let frame = Prepared::new(Protocol::WebSocket, msg);
                    for _ in 0..RECIPIENTS {
                        queues.push(frame.clone());
                    }
                    black_box(&queues);
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("encode_per_recipient", size),
            &msg,
            |b, msg| {
                b.iter(|| {
                    queues.clear();
                    for _ in 0..RECIPIENTS {
                        queues.push(Prepared::new(Protocol::WebSocket, msg));
                    }
                    black_box(&queues);
                })
            },
        );
        let payload = bytes::Bytes::from(msg.as_bytes().to_vec());
        let mut out: Vec<Vec<u8>> = (0..RECIPIENTS)
            .map(|_| Vec::with_capacity(size + 16))
            .collect();
        group.bench_with_input(
            BenchmarkId::new("tungstenite_per_recipient", size),
            &payload,
            |b, p| {
                b.iter(|| {
                    for buf in out.iter_mut() {
                        buf.clear();
                        let frame = Frame::message(p.clone(), OpCode::Data(Data::Text), true);
                        frame.format(buf).expect("format into a Vec");
                    }
                    black_box(&out);
                })
            },
        );
    }
    group.finish();
}

fn main() {
    let full = std::env::args().any(|a| a == "--full");
    let mut c = Criterion::default().without_plots();
    if !full {
        c = c
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(1))
            .sample_size(20);
    }
    broadcast_frame(&mut c);
    c.final_summary();
}
