"""Helpers of the hardening tests (conftest.py turns them into fixtures): a throwaway
certificate authority made at test time, a real `del-server serve` process, a valid private
request to mutate, and polling helpers for metrics that settle asynchronously."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from del_client.bundle import ClientBundle
from del_client.codec import encode_frames, mechanism_params
from del_client.mechanism import BinomialQuantizer, PrivacySpec
from del_client.parameters import MAX_FRAME_PAYLOAD_BYTES
from del_client.proto import inference_pb2, inference_pb2_grpc
from del_client.randomness import seeded_generator_for_tests

# ── A throwaway PKI ─────────────────────────────────────────────────────────────────────


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, issuer, public_key, signing_key, extensions) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


@dataclass(frozen=True)
class Authority:
    """A CA that can issue server and client certificates into a directory."""

    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    directory: Path

    @classmethod
    def create(cls, name: str, directory: Path) -> Authority:
        key = _key()
        usage = x509.KeyUsage(
            digital_signature=True,
            key_cert_sign=True,
            crl_sign=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
        )
        certificate = _certificate(
            _name(name),
            _name(name),
            key.public_key(),
            key,
            [(x509.BasicConstraints(ca=True, path_length=None), True), (usage, True)],
        )
        authority = cls(name, key, certificate, directory)
        (directory / f"{name}.pem").write_bytes(_pem(certificate))
        return authority

    @property
    def ca_file(self) -> Path:
        return self.directory / f"{self.name}.pem"

    def issue(self, name: str, *, server: bool) -> tuple[Path, Path]:
        """(certificate file, key file) for `name`, a server for localhost/127.0.0.1 or a client."""
        key = _key()
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        extensions = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([purpose]), False),
        ]
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            extensions.append((x509.SubjectAlternativeName(names), False))
        certificate = _certificate(
            _name(name), self.certificate.subject, key.public_key(), self.key, extensions
        )
        cert_file, key_file = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_file.write_bytes(_pem(certificate))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        return cert_file, key_file


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class PKI:
    """Two unrelated CAs: `ca` signs the server and the good client, `rogue` a bad client."""

    ca: Authority
    rogue: Authority
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path
    rogue_client_key: Path


# ── Servers ─────────────────────────────────────────────────────────────────────────────


def sample(loopback, name: str, labels: dict[str, str] | None = None) -> float:
    """A metric's current value, read from the server's own registry (no HTTP endpoint)."""
    value = loopback.running.metrics.registry.get_sample_value(name, labels or {})
    assert value is not None, f"{name}{labels or ''} is not exported"
    return value


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(0.02)


@dataclass
class ServerProcess:
    """A real `del-server serve` process on loopback."""

    process: subprocess.Popen
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024


def start_server_process(stories260k: Path, *flags: str, timeout_s: float = 120) -> ServerProcess:
    """`del-server serve` (as its console script runs it), once it reports SERVING."""
    serve = [
        "serve",
        "--port",
        "0",
        "--metrics-port",
        "-1",
        "--log-level",
        "WARNING",
        "--grace-s",
        "1",
    ]
    command = [
        sys.executable,
        "-c",
        "from del_server.cli import main; main()",
        *serve,
        "--model",
        str(stories260k),
        *flags,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile(mode="w+") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        deadline = time.monotonic() + timeout_s
        for line in process.stdout:  # the server prints its port once it is SERVING
            if match := re.search(r"listening on [^:]+:(\d+)", line):
                return ServerProcess(process, int(match.group(1)))
            if time.monotonic() > deadline:
                break
        process.kill()
        process.wait(timeout=10)
        log.seek(0)
        raise RuntimeError(
            f"del-server did not start ({process.returncode}):\n{log.read()[-2000:]}"
        )


def stop_server_process(server: ServerProcess) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)
    server.process.stdout.close()


# ── Requests on the wire ────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class WireKit:
    """The manifest, bundle and a valid spec of a server, to build requests by hand."""

    model: inference_pb2.ModelInfo
    bundle: ClientBundle
    spec: PrivacySpec

    def frames(self, symbols):
        """Frames as large as the server allows (the SDK does the same)."""
        limit = self.model.max_frame_payload_bytes or MAX_FRAME_PAYLOAD_BYTES
        return encode_frames(symbols, self.spec, max_payload_bytes=limit)

    def private_request(self, text: str = "Once upon a time", **sampling):
        """Header, frames and End of a valid private request (greedy, 4 new tokens unless told)."""
        sampling = {"temperature": 0.0, "max_new_tokens": 4, **sampling}
        ids = self.bundle.encode(text)[1:]
        symbols = BinomialQuantizer(self.spec, rng=seeded_generator_for_tests(0)).privatize(
            self.bundle.embed(ids)
        )
        header = inference_pb2.StreamHeader(
            mechanism=mechanism_params(self.spec),
            bundle_digest=self.bundle.digest,
            sampling=inference_pb2.SamplingParams(**sampling),
        )
        return [
            inference_pb2.GenerateRequest(header=header),
            *(inference_pb2.GenerateRequest(frame=f) for f in self.frames(symbols)),
            inference_pb2.GenerateRequest(end=inference_pb2.End()),
        ]


def wire_kit(channel: grpc.Channel, mu: float = 50.0) -> WireKit:
    stub = inference_pb2_grpc.SplitInferenceStub(channel)
    model = stub.GetManifest(inference_pb2.GetManifestRequest(), timeout=30).models[0]
    request = inference_pb2.FetchClientBundleRequest(digest=model.client_bundle_digest)
    data = b"".join(chunk.data for chunk in stub.FetchClientBundle(request, timeout=30))
    bundle = ClientBundle.from_bytes(data, expected_digest=model.client_bundle_digest)
    spec = PrivacySpec.from_mu(mu=mu, dim=bundle.projection_dim, bits=4, clip=bundle.clip)
    return WireKit(model, bundle, spec)
