//! Criterion micro-benchmarks of the shard's hot kernels, in GB/s.
//!
//! Each group reports bytes per second. For kernels that stream over memory
//! (accumulation, optimizer updates, wire encode/decode, the non-finite scan)
//! the bytes are those the kernel reads plus those it writes, so the figures
//! compare with a memcpy, which reads and writes each byte once. For SHA-256
//! they are the bytes hashed, and for chunk split/reassembly, which copies
//! nothing, the payload bytes handled.
//!
//! Groups:
//! - `accumulate`: `wire::add_into`, decode-and-add of wire bytes into an f32
//!   buffer, per wire dtype.
//! - `non_finite_scan`: `wire::first_non_finite` over wire bytes per dtype, and
//!   `decoded_f32`: `Gradient::first_non_finite`, which the shard runs on the
//!   decoded values of every push that must not carry NaN/Inf.
//! - `encode` / `decode`: `wire::encode` and `wire::decode_into` per dtype;
//!   `encode/memcpy` allocates and copies the f32 payload, f32 encode's bound.
//! - `optimizer`: `Optimizer::step` for plain SGD, SGD with momentum, Adam and
//!   AdaGrad.
//! - `chunk`: `chunk::split` then `chunk::Reassembly` of a 64 MiB f32 payload
//!   (which decodes every chunk into the part's f32 buffer as it arrives).
//! - `checksum`: the checkpoint SHA-256 (`checkpoint::write::sha256_hex`).
//! - `update_64m`: SGD-with-momentum and Adam steps on a 64M-element tensor
//!   next to a memcpy of the same bytes (issue 7's target: at least 0.6x).
//! - `subnormal_state`: one SGD-with-momentum push (lr 0.1, momentum 0.9) to
//!   a tensor the size of the MLP's `fc1.weight` (100,352 elements) whose
//!   momentum is 73% subnormal floats with a 0 gradient there (dead ReLU
//!   units), the state measured at clock 1,000 of the README's cluster
//!   example with momentum 0.9: `unflushed` is the kernel without flushing,
//!   `flushed_first` the shard's kernel on that state, `flushed_steady` the
//!   shard's kernel on the state it keeps (those entries already 0).
//! - `tensor_push`: `TensorPart::push` of a whole 1M-element gradient with
//!   SGD with momentum, the path a push takes on the shard under its lock:
//!   `async` applies each push; `sync_round_2_workers` is one round (the
//!   first push taken as the round's sum, the second added, then applied).
//!   Nothing else holds the values, so no update copies them. Reported per
//!   gradient byte pushed; making each gradient is not timed.
//!
//! The small kernels work on 1M elements (4 MiB of f32, one default chunk).
//!
//! ```sh
//! cargo bench -p ps-benches --bench kernels            # everything, about 70 s once built
//! cargo bench -p ps-benches --bench kernels -- update_64m
//! ```
// `criterion_group!` defines a public function without a doc comment.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ps_proto::chunk::{Reassembly, split};
use ps_proto::wire::{self, WireDtype};
use ps_server::Aggregation;
use ps_server::checkpoint::write::sha256_hex;
use ps_server::init::Init;
use ps_server::optim::{Optimizer, OptimizerConfig};
use ps_server::sync::Policy;
use ps_server::tensor::{Gradient, TensorMeta, TensorPart};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Elements of the small kernels' tensors: 4 MiB of f32.
const N: usize = 1 << 20;

/// Elements of the `update_64m` tensor.
const N_64M: usize = 64 << 20;

const DTYPES: [WireDtype; 3] = [WireDtype::F32, WireDtype::F16, WireDtype::Bf16];

/// Values in about [-1, 1], none zero (so no optimizer state decays into
/// subnormals) and all finite.
fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i % 1021) as f32 - 510.5) / 511.0).collect()
}

fn bytes(n: usize) -> Throughput {
    Throughput::Bytes(n as u64)
}

/// Short measurements: these are memory-bound loops with little variance.
fn quick(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
}

fn accumulate(c: &mut Criterion) {
    let src = values(N);
    let mut group = c.benchmark_group("accumulate");
    quick(&mut group);
    for dtype in DTYPES {
        let payload = wire::encode(&src, dtype);
        let mut sum = vec![0f32; N];
        // Read the buffer and the payload, write the buffer.
        group.throughput(bytes(N * 4 + payload.len() + N * 4));
        group.bench_function(format!("add_into/{dtype}"), |b| {
            b.iter(|| wire::add_into(&mut sum, black_box(&payload), dtype));
        });
    }
    group.finish();
}

fn non_finite_scan(c: &mut Criterion) {
    let src = values(N);
    let mut group = c.benchmark_group("non_finite_scan");
    quick(&mut group);
    for dtype in DTYPES {
        let payload = wire::encode(&src, dtype);
        group.throughput(bytes(payload.len()));
        group.bench_function(dtype.name(), |b| {
            b.iter(|| black_box(wire::first_non_finite(black_box(&payload), dtype)));
        });
    }
    // What the shard runs on every push chunk: the check over the decoded values.
    group.throughput(bytes(N * 4));
    group
        .bench_function("decoded_f32", |b| b.iter(|| black_box(wire::first_non_finite_f32(black_box(&src)))));
    group.finish();
}

fn encode_decode(c: &mut Criterion) {
    let src = values(N);
    let mut group = c.benchmark_group("encode");
    quick(&mut group);
    // What f32 encode must approach: allocate and copy the same bytes.
    let f32_payload = wire::encode(&src, WireDtype::F32);
    group.throughput(bytes(N * 4 + N * 4));
    group.bench_function("memcpy", |b| b.iter(|| Bytes::copy_from_slice(black_box(&f32_payload))));
    for dtype in DTYPES {
        group.throughput(bytes(N * 4 + N * dtype.size()));
        group.bench_function(dtype.name(), |b| b.iter(|| wire::encode(black_box(&src), dtype)));
    }
    group.finish();

    let mut group = c.benchmark_group("decode");
    quick(&mut group);
    for dtype in DTYPES {
        let payload = wire::encode(&src, dtype);
        let mut dst = vec![0f32; N];
        group.throughput(bytes(payload.len() + N * 4));
        group.bench_function(dtype.name(), |b| {
            b.iter(|| wire::decode_into(&mut dst, black_box(&payload), dtype));
        });
    }
    group.finish();
}

/// The optimizers measured, with the f32 arrays each step reads and writes
/// (params, grad and state read; params and state written).
fn optimizers() -> [(&'static str, OptimizerConfig, usize); 4] {
    [
        ("sgd", OptimizerConfig::Sgd { learning_rate: 1e-3, momentum: 0.0, weight_decay: 1e-4 }, 2 + 1),
        (
            "sgd_momentum",
            OptimizerConfig::Sgd { learning_rate: 1e-3, momentum: 0.9, weight_decay: 1e-4 },
            3 + 2,
        ),
        ("adam", OptimizerConfig::adam(1e-3), 4 + 3),
        (
            "adagrad",
            OptimizerConfig::AdaGrad { learning_rate: 1e-3, epsilon: 1e-8, initial_accumulator: 0.1 },
            3 + 2,
        ),
    ]
}

fn optimizer(c: &mut Criterion) {
    let grad = values(N);
    let mut group = c.benchmark_group("optimizer");
    quick(&mut group);
    for (name, config, arrays) in optimizers() {
        let mut params = values(N);
        let mut opt = Optimizer::new(config, N);
        group.throughput(bytes(arrays * N * 4));
        group.bench_function(name, |b| b.iter(|| opt.step(&mut params, black_box(&grad), 0.5)));
    }
    group.finish();
}

fn chunk(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; 64 << 20]);
    let mut group = c.benchmark_group("chunk");
    quick(&mut group);
    group.throughput(bytes(payload.len()));
    group.bench_function("split_reassemble_64MiB", |b| {
        b.iter(|| {
            let mut r = Reassembly::new(payload.len() as u64 / 4, ps_proto::WireDtype::F32);
            for (offset, part) in split(black_box(&payload), 4 << 20, 4) {
                r.push(offset, part).expect("split produces a valid chunk sequence");
            }
            r.finish().expect("split covers the whole payload")
        });
    });
    group.finish();
}

fn checksum(c: &mut Criterion) {
    let data: Vec<u8> = (0..16 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut group = c.benchmark_group("checksum");
    quick(&mut group);
    group.throughput(bytes(data.len()));
    group.bench_function("sha256_16MiB", |b| b.iter(|| sha256_hex(black_box(&data))));
    group.finish();
}

/// A 64M-element update next to a memcpy of the same bytes. Each iteration
/// takes tens to hundreds of milliseconds, so samples are flat and few.
fn update_64m(c: &mut Criterion) {
    let grad = values(N_64M);
    let mut params = values(N_64M);
    let mut group = c.benchmark_group("update_64m");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    // Read n*4, write n*4.
    group.throughput(bytes(2 * N_64M * 4));
    group.bench_function("memcpy", |b| b.iter(|| params.copy_from_slice(black_box(&grad))));

    for (name, config, arrays) in optimizers() {
        if name != "sgd_momentum" && name != "adam" {
            continue;
        }
        let mut opt = Optimizer::new(config, N_64M);
        group.throughput(bytes(arrays * N_64M * 4));
        group.bench_function(name, |b| b.iter(|| opt.step(&mut params, black_box(&grad), 0.5)));
    }
    group.finish();
}

/// Elements of the MLP's `fc1.weight` (784 x 128).
const FC1: usize = 784 * 128;

/// Momentum and gradient of `fc1.weight` at clock 1,000 of the README's
/// cluster example with momentum 0.9: 73% of the momentum entries
/// subnormal, with a 0 gradient (dead units); the rest normal.
fn subnormal_momentum() -> (Vec<f32>, Vec<f32>) {
    let dead = |i: usize| i % 100 < 73;
    let momentum = (0..FC1).map(|i| if dead(i) { 1e-39 * (1.0 + (i % 7) as f32) } else { 1e-3 }).collect();
    let grad = (0..FC1).map(|i| if dead(i) { 0.0 } else { 1e-2 }).collect();
    (momentum, grad)
}

/// One push's update on subnormal momentum, without and with flushing.
fn subnormal_state(c: &mut Criterion) {
    let (lr, momentum, scale) = (0.1, 0.9, 0.25);
    let config = OptimizerConfig::Sgd { learning_rate: lr, momentum, weight_decay: 0.0 };
    let (velocity, grad) = subnormal_momentum();
    let params = values(FC1);
    let mut group = c.benchmark_group("subnormal_state");
    quick(&mut group);
    group.throughput(bytes(5 * FC1 * 4));
    group.bench_function("unflushed", |b| {
        b.iter_batched_ref(
            || (params.clone(), velocity.clone()),
            |(p, v)| {
                ps_benches::baselines::sgd_momentum_unflushed(
                    p,
                    black_box(&grad),
                    v,
                    (lr, momentum, 0.0, scale),
                )
            },
            BatchSize::SmallInput,
        )
    });
    let restored = |v: Vec<f32>| Optimizer::restore(config, FC1, 1000, vec![v]).expect("one momentum slot");
    group.bench_function("flushed_first", |b| {
        b.iter_batched_ref(
            || (params.clone(), restored(velocity.clone())),
            |(p, opt)| opt.step(p, black_box(&grad), scale),
            BatchSize::SmallInput,
        )
    });
    let mut steady = restored(velocity.clone());
    let mut p = params.clone();
    steady.step(&mut p, &grad, scale);
    group.bench_function("flushed_steady", |b| b.iter(|| steady.step(&mut p, black_box(&grad), scale)));
    group.finish();
}

/// A part of `N` elements under `policy` with SGD with momentum, for `workers` workers.
fn part(policy: Policy, workers: u32) -> TensorPart {
    let meta = TensorMeta {
        name: "w".into(),
        shape: vec![N as u64],
        offset: 0,
        len: N as u64,
        policy,
        allow_non_finite: false,
        piece_len: 0,
    };
    let config = OptimizerConfig::Sgd { learning_rate: 1e-3, momentum: 0.9, weight_decay: 1e-4 };
    TensorPart::new(meta, Init::Constant(0.5), config, workers, Aggregation::Mean)
}

fn tensor_push(c: &mut Criterion) {
    let grad = values(N);
    let mut group = c.benchmark_group("tensor_push");
    quick(&mut group);

    group.throughput(bytes(N * 4));
    let mut part_async = part(Policy::ASYNC, 1);
    let mut clock = 0;
    group.bench_function("async", |b| {
        b.iter_batched(
            || Gradient { values: grad.clone() },
            |g| {
                let applied = part_async.push(0, clock, g).expect("a push at the next clock");
                clock += 1;
                applied
            },
            BatchSize::LargeInput,
        )
    });

    group.throughput(bytes(2 * N * 4));
    let mut part_sync = part(Policy::SYNC, 2);
    let mut clock = 0;
    group.bench_function("sync_round_2_workers", |b| {
        b.iter_batched(
            || (Gradient { values: grad.clone() }, Gradient { values: grad.clone() }),
            |(g0, g1)| {
                part_sync.push(0, clock, g0).expect("worker 0's push");
                let applied = part_sync.push(1, clock, g1).expect("worker 1's push");
                clock += 1;
                applied
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(
    kernels,
    accumulate,
    non_finite_scan,
    encode_decode,
    optimizer,
    chunk,
    checksum,
    update_64m,
    subnormal_state,
    tensor_push
);
criterion_main!(kernels);
