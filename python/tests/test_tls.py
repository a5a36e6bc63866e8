"""TLS: a LocalCluster serving TLS, a worker trusting its CA (path or
dict), and a worker that connects without TLS told so. Certificates are
made with the openssl command-line tool (skipped where it is missing)."""

import shutil
import subprocess

import numpy as np
import pytest

import paramserve
from paramserve import errors

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=paramserve test CA", "-days", "2")
    openssl("req", *ec, "-keyout", "shard.key", "-out", "shard.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    openssl(
        "x509", "-req", "-in", "shard.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "shard.pem", "-days", "2", "-extfile", "ext.cnf",
    )
    return d


def test_a_worker_trusting_the_ca_trains_and_one_without_tls_is_told(make_cluster, certs):
    cluster = make_cluster(
        shards=2, workers=1, policy="sync", tls_cert=certs / "shard.pem", tls_key=certs / "shard.key",
        optimizer={"kind": "sgd", "lr": 1.0},
    )
    with paramserve.Worker(cluster.shards, 0, tls=str(certs / "ca.pem")) as w:
        w.declare("w", (3,))
        w.pull()
        np.testing.assert_array_equal(w.step({"w": np.ones(3, np.float32)})["w"], -np.ones(3))
    with paramserve.Worker(cluster.shards, 0, tls={"ca": certs / "ca.pem", "domain": "localhost"}) as w:
        w.declare("w", (3,))
        assert w.pull()["w"].tolist() == [-1.0, -1.0, -1.0]
    with pytest.raises(errors.UnavailableError, match="TLS"):
        paramserve.Worker(cluster.shards, 0, retry_for=1.0)
    with pytest.raises(ValueError, match="cannot read"):
        paramserve.Worker(cluster.shards, 0, tls=str(certs / "missing.pem"))
