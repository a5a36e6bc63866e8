//! TLS and mutual TLS on the gRPC endpoint: the right CA connects and
//! trains; a wrong CA, plaintext, or (with mutual TLS) no client
//! certificate cannot connect.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{ClientTls, RetryPolicy, TensorDecl, Worker, WorkerConfig};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA in `dir`, and files `<name>.pem` / `<name>.key` for certificates it signs.
    fn new(name: &str) -> (Self, rcgen::Certificate, KeyPair) {
        let dir = std::env::temp_dir().join(format!("ps-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("ca");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
        (Self { dir }, ca, key)
    }

    fn issue(&self, name: &str, ca: &rcgen::Certificate, ca_key: &KeyPair) {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        let cert = params.signed_by(&key, ca, ca_key).expect("sign");
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("write cert");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write key");
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(pki: &Pki, mutual: bool) -> ShardConfig {
    ShardConfig {
        num_workers: 1,
        policy: PolicyName::Async,
        tls_cert: Some(pki.path("server.pem")),
        tls_key: Some(pki.path("server.key")),
        tls_client_ca: mutual.then(|| pki.path("ca.pem")),
        ..ShardConfig::default()
    }
}

fn worker_config(spec: &ps_proto::ClusterSpec, tls: Option<ClientTls>) -> WorkerConfig {
    WorkerConfig { retry: RetryPolicy::never(), tls, ..WorkerConfig::new(spec.clone(), 0) }
}

fn tls(ca: &Path, identity: Option<(&Path, &Path)>) -> Option<ClientTls> {
    Some(ClientTls::from_files(ca, "localhost", identity).expect("tls files"))
}

async fn trains(cfg: WorkerConfig) {
    let mut w = Worker::connect(cfg).await.expect("connect over TLS");
    w.declare(&TensorDecl::new("w", &[3])).await.expect("declare");
    w.pull().await.expect("pull");
    w.push(&BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32, 2.0, 3.0]).into_dyn())]))
        .await
        .expect("push");
    assert_eq!(w.pull().await.expect("pull").versions["w"], vec![0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connects_with_the_right_ca_only() {
    let (pki, ca, ca_key) = Pki::new("server");
    pki.issue("server", &ca, &ca_key);
    let (other, _, _) = Pki::new("other");
    let cluster = LocalCluster::start(2, config(&pki, false)).await.expect("cluster");
    trains(worker_config(cluster.spec(), tls(&pki.path("ca.pem"), None))).await;

    let wrong = Worker::connect(worker_config(cluster.spec(), tls(&other.path("ca.pem"), None))).await;
    let wrong = wrong.expect_err("a certificate from another CA was trusted");
    assert!(format!("{wrong:?}").contains("InvalidCertificate"), "{wrong:?}");
    let plain = Worker::connect(worker_config(cluster.spec(), None)).await;
    let message = plain.expect_err("plaintext reached a TLS shard").to_string();
    assert!(message.contains("the shard uses TLS and this worker connected without it"), "{message}");
    assert!(message.contains("--tls-ca"), "{message}");
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let (pki, ca, ca_key) = Pki::new("mutual");
    pki.issue("server", &ca, &ca_key);
    pki.issue("client", &ca, &ca_key);
    let (other, other_ca, other_key) = Pki::new("mutual-other");
    other.issue("client", &other_ca, &other_key);
    let cluster = LocalCluster::start(1, config(&pki, true)).await.expect("cluster");
    let ca_file = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    trains(worker_config(cluster.spec(), tls(&ca_file, Some((&cert, &key))))).await;

    let anonymous = Worker::connect(worker_config(cluster.spec(), tls(&ca_file, None))).await;
    let anonymous = anonymous.expect_err("a client without a certificate was served");
    // TLS 1.3 reports a refused client certificate after the handshake: the first request fails.
    // The connection is closed: UNAVAILABLE or CANCELLED, depending on timing.
    assert!(
        matches!(anonymous.code(), None | Some(tonic::Code::Unavailable | tonic::Code::Cancelled)),
        "{anonymous:?}"
    );
    let (cert, key) = (other.path("client.pem"), other.path("client.key"));
    let stranger = Worker::connect(worker_config(cluster.spec(), tls(&ca_file, Some((&cert, &key))))).await;
    assert!(stranger.is_err(), "a client certificate from another CA was accepted");
    cluster.shutdown().await.expect("shutdown");
}

#[test]
fn ps_server_serves_tls_with_a_token_and_the_operator_command_reaches_it() {
    let (pki, ca, ca_key) = Pki::new("process");
    pki.issue("server", &ca, &ca_key);
    let token = pki.path("token");
    std::fs::write(&token, "op-secret\n").expect("token");
    let checkpoints = pki.path("checkpoints");
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();
    let (_servers, spec) = common::spawn_cluster(
        1,
        8,
        &[
            "--workers",
            "1",
            "--tls-cert",
            &path(&pki.path("server.pem")),
            "--tls-key",
            &path(&pki.path("server.key")),
            "--auth-token-file",
            &path(&token),
            "--checkpoint-dir",
            &path(&checkpoints),
        ],
    );
    let run = |extra: &[&str]| {
        std::process::Command::new(common::ps_worker_bin())
            .args(["checkpoint", "--shards", &spec.shards[0]])
            .args(extra)
            .output()
            .expect("run ps-worker checkpoint")
    };
    let ok = run(&["--tls-ca", &path(&pki.path("ca.pem")), "--auth-token-file", &path(&token)]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout} {}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.starts_with("checkpoint complete at clock 0"), "{stdout}");
    let no_token = run(&["--tls-ca", &path(&pki.path("ca.pem"))]);
    assert!(!no_token.status.success());
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("no bearer token"), "{:?}", no_token);
    let plaintext = run(&["--auth-token-file", &path(&token)]);
    assert!(!plaintext.status.success(), "plaintext reached a TLS shard");
    let stderr = String::from_utf8_lossy(&plaintext.stderr);
    assert!(stderr.contains("the shard uses TLS") && stderr.contains("--tls-ca"), "{stderr}");
}

/// A connection error says why in the TLS library's words and what it
/// means: a TLS client at a plaintext shard, and a shard whose certificate
/// another CA signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_give_the_tls_reason() {
    let (pki, ca, ca_key) = Pki::new("reasons");
    pki.issue("server", &ca, &ca_key);
    let (other, _, _) = Pki::new("reasons-other");
    let tls_cluster = LocalCluster::start(1, config(&pki, false)).await.expect("cluster");
    let plain = ShardConfig { num_workers: 1, policy: PolicyName::Async, ..ShardConfig::default() };
    let plain_cluster = LocalCluster::start(1, plain).await.expect("cluster");
    let to_plain = Worker::connect(worker_config(plain_cluster.spec(), tls(&pki.path("ca.pem"), None))).await;
    let message = to_plain.expect_err("TLS to a plaintext shard").to_string();
    assert!(message.contains("the shard does not use TLS"), "{message}");
    assert!(message.contains("InvalidContentType"), "{message}");
    let wrong = Worker::connect(worker_config(tls_cluster.spec(), tls(&other.path("ca.pem"), None))).await;
    let message = wrong.expect_err("a certificate of another CA").to_string();
    assert!(message.contains("invalid peer certificate"), "{message}");
    assert!(message.contains("not signed by the CA given"), "{message}");
}

/// Runs `ps-server` with `args` and waits (bounded) for it to exit.
fn refused_start(args: &[&std::ffi::OsStr]) -> (std::process::ExitStatus, String, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ps-server"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off", "--workers", "1"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ps-server");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ps-server started despite bad TLS files: {:?}", child.wait_with_output());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status, text(&out.stdout), text(&out.stderr))
}

/// A TLS file the shard cannot use stops `ps-server` before it announces
/// that it listens, with one plain line naming the file and the reason.
#[test]
fn ps_server_refuses_bad_tls_files_before_listening() {
    let (pki, ca, ca_key) = Pki::new("files");
    pki.issue("server", &ca, &ca_key);
    pki.issue("stranger", &ca, &ca_key);
    std::fs::write(pki.path("garbage.key"), "not a key\n").expect("write");
    std::fs::write(pki.path("garbage.pem"), "not a certificate\n").expect("write");
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let cases: [(PathBuf, PathBuf, PathBuf, &str); 4] = [
        (cert.clone(), pki.path("garbage.key"), pki.path("garbage.key"), "no usable PEM private key"),
        (pki.path("garbage.pem"), key.clone(), pki.path("garbage.pem"), "no PEM certificate"),
        (pki.path("missing.pem"), key.clone(), pki.path("missing.pem"), "cannot read it"),
        (cert.clone(), pki.path("stranger.key"), pki.path("stranger.key"), "cannot serve TLS with it"),
    ];
    for (cert, key, named, reason) in cases {
        let (status, stdout, stderr) =
            refused_start(&["--tls-cert".as_ref(), cert.as_os_str(), "--tls-key".as_ref(), key.as_os_str()]);
        assert!(!status.success(), "{stderr}");
        assert!(!stdout.contains("listening"), "announced before failing: {stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(&*named.to_string_lossy()) && lines[0].contains(reason), "{stderr}");
        assert!(!stderr.contains('\x1b'), "colour codes on a stderr that is not a terminal: {stderr:?}");
    }
}
