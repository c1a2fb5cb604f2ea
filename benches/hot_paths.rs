//! Criterion micro-benchmarks of hot paths reachable through the public API.
//!
//! `broadcast_frame`: what one broadcast costs before any syscall, for 1,000
//! recipients: foreman's way (encode once with [`foreman::Prepared`], queue a
//! shared reference per recipient) against encoding per recipient, with our
//! codec and with tungstenite's frame encoder.
//!
//! `bus`: one worker encoding broadcast deliveries onto a bus link and the
//! other decoding them (`foreman::bench_support::bus_round_trip`).
//!
//! `registry`: a replica's work for N connections: open, bind, join, list
//! group members, close (`foreman::bench_support::registry_churn`).
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

fn bus(c: &mut Criterion) {
    const RECORDS: usize = 1000;
    let mut group = c.benchmark_group("bus");
    group.throughput(Throughput::Elements(RECORDS as u64));
    for size in [64usize, 512, 16 * 1024] {
        let payload = bytes::Bytes::from(vec![b'x'; size]);
        group.bench_with_input(BenchmarkId::new("round_trip", size), &payload, |b, p| {
            b.iter(|| black_box(foreman::bench_support::bus_round_trip(p, RECORDS)))
        });
    }
    group.finish();
}

fn registry(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry");
    for conns in [1_000usize, 10_000] {
        group.throughput(Throughput::Elements(conns as u64));
        group.bench_with_input(BenchmarkId::new("churn", conns), &conns, |b, &n| {
            b.iter(|| black_box(foreman::bench_support::registry_churn(n, 50)))
        });
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
    bus(&mut c);
    registry(&mut c);
    c.final_summary();
}
