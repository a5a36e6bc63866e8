//! The baselines `ps-bench` reports its throughput against, measured in the
//! same run: a TCP pump between two ends on 127.0.0.1, and memcpy.

use std::time::{Duration, Instant};

use ps_proto::WireDtype;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Untimed round trips before the pump is timed.
const WARM_UP_STEPS: usize = 3;

/// Push+pull bytes per second (counted as f32 payload) of a tokio TCP pump
/// on loopback, measured the way a step is: on one warmed-up connection,
/// each round trip sends a tensor of `bytes` bytes of f32 in 1 MiB writes to
/// an echo task that reads it all and sends it back. Round trips repeat for
/// at least [`BASELINE_WINDOW`]; the best of 3 such windows counts, so a
/// noisy moment makes the ratios stricter, not kinder.
///
/// With `dtype` f32 the bytes are sent as they are: the raw TCP baseline. With f16 or bf16 each end does the least any transport of
/// that encoding must: it encodes each 1 MiB write from the tensor's f32
/// values and decodes each 1 MiB read into them, with the same kernels the
/// shards and workers use. That pump, against the f32 one, is the most an
/// encoding can gain on this machine.
pub async fn tcp_pump(bytes: usize, dtype: WireDtype) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        s.set_nodelay(true).ok();
        let mut end = PumpEnd::new(bytes, dtype);
        while end.receive(&mut s).await {
            end.send(&mut s).await;
        }
    });
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.set_nodelay(true).ok();
    let mut end = PumpEnd::new(bytes, dtype);
    for _ in 0..WARM_UP_STEPS {
        end.send(&mut c).await;
        assert!(end.receive(&mut c).await, "echo closed");
    }
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let started = Instant::now();
        let mut trips = 0usize;
        while trips < 3 || started.elapsed() < BASELINE_WINDOW {
            end.send(&mut c).await;
            assert!(end.receive(&mut c).await, "echo closed");
            trips += 1;
        }
        best = best.max(2.0 * (bytes * trips) as f64 / started.elapsed().as_secs_f64());
    }
    drop(c);
    echo.await.expect("echo task");
    best
}

/// How long one window of the TCP baseline pumps.
const BASELINE_WINDOW: Duration = Duration::from_millis(500);

/// Bytes of one write (and at most one read) of the TCP baselines.
const PUMP_WRITE: usize = 1 << 20;

/// One end of a TCP baseline pump: what it sends and where it receives.
struct PumpEnd {
    dtype: WireDtype,
    /// The tensor's bytes of f32.
    bytes: usize,
    /// f16, bf16: the tensor, encoded from on send and decoded into on receive.
    values: Vec<f32>,
    /// f32: what every write sends.
    chunk: Vec<u8>,
    /// Where each read lands.
    buf: Vec<u8>,
}

impl PumpEnd {
    fn new(bytes: usize, dtype: WireDtype) -> Self {
        let values = if dtype == WireDtype::F32 { Vec::new() } else { vec![1e-6; bytes / 4] };
        Self { dtype, bytes, values, chunk: vec![1u8; PUMP_WRITE], buf: vec![0u8; PUMP_WRITE] }
    }

    /// Sends the tensor in writes of [`PUMP_WRITE`] bytes.
    async fn send(&mut self, s: &mut tokio::net::TcpStream) {
        if self.dtype == WireDtype::F32 {
            let mut sent = 0;
            while sent < self.bytes {
                let n = (self.bytes - sent).min(PUMP_WRITE);
                s.write_all(&self.chunk[..n]).await.expect("write");
                sent += n;
            }
            return;
        }
        for block in self.values.chunks(PUMP_WRITE / self.dtype.size()) {
            s.write_all(&ps_proto::wire::encode(block, self.dtype)).await.expect("write");
        }
    }

    /// Receives a whole tensor; false if the peer closed before sending any.
    async fn receive(&mut self, s: &mut tokio::net::TcpStream) -> bool {
        if self.dtype == WireDtype::F32 {
            let mut got = 0;
            while got < self.bytes {
                let n = s.read(&mut self.buf).await.expect("read");
                if n == 0 {
                    assert_eq!(got, 0, "peer closed mid-transfer");
                    return false;
                }
                got += n;
            }
            return true;
        }
        let size = self.dtype.size();
        for (i, block) in self.values.chunks_mut(PUMP_WRITE / size).enumerate() {
            let wire = &mut self.buf[..block.len() * size];
            match s.read_exact(wire).await {
                Err(e) if i == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof => return false,
                read => read.map(drop).expect("read"),
            }
            ps_proto::wire::decode_into(block, wire, self.dtype);
        }
        true
    }
}

/// Bytes per second of copying `bytes` (read + write counted once each: 2x).
pub fn memcpy(bytes: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let reps = (256 << 20) / bytes.max(1) + 1;
    let started = Instant::now();
    for _ in 0..reps {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    2.0 * (bytes * reps) as f64 / started.elapsed().as_secs_f64()
}

/// SGD with momentum as the shard ran it before its state was flushed of
/// subnormal floats: `v = momentum * v + scale * g + wd * p; p -= lr * v`,
/// element by element. The `subnormal_state` benchmark runs it next to the
/// shard's kernel on the same state.
pub fn sgd_momentum_unflushed(
    params: &mut [f32],
    grad: &[f32],
    velocity: &mut [f32],
    (lr, momentum, wd, scale): (f32, f32, f32, f32),
) {
    for ((p, g), v) in params.iter_mut().zip(grad).zip(velocity) {
        *v = momentum * *v + scale * g + wd * *p;
        *p -= lr * *v;
    }
}
