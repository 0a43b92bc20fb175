"""TLS and mutual TLS end to end, with certificates from a CA made at test time: the server is
verified by name and CA, a client without the right certificate never reaches an RPC, and
renewed certificates are picked up without a restart."""

from __future__ import annotations

import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hardening_kit import sample

from del_client import Client, ClientConfig, ServerUnavailableError
from del_client.proto import inference_pb2, inference_pb2_grpc
from del_server.server import HEALTH_LISTENER_MAX_RPCS

PROMPT = "Once upon a time"
SERVING_STATUS = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def tls_server(serve, settings_for, pki):
    settings = settings_for(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with serve(settings) as loopback:
        yield loopback


@pytest.fixture(scope="module")
def mtls_server(serve, settings_for, pki):
    settings = settings_for(
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca.ca_file),
    )
    with serve(settings) as loopback:
        yield loopback


def generate(target: str, tmp_path, **tls) -> str:
    config = ClientConfig(target, deadline_s=20, bundle_cache_dir=tmp_path, retries=0, **tls)
    with Client(config) as client:
        return client.generate(PROMPT, mu=10, max_new_tokens=4).collect().finish_reason


def test_a_client_that_trusts_the_ca_generates_over_tls(tls_server, pki, tmp_path):
    assert generate(tls_server.target, tmp_path, root_certificates=pki.ca.ca_file) in (
        "length",
        "eos",
    )


def test_health_answers_over_tls(tls_server, pki):
    credentials = grpc.ssl_channel_credentials(pki.ca.ca_file.read_bytes())
    with grpc.secure_channel(tls_server.target, credentials) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert check.status == health_pb2.HealthCheckResponse.SERVING


def health_check(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def test_probes_that_cannot_speak_tls_read_health_on_its_own_plaintext_port(
    serve, settings_for, pki
):
    """The kubelet's gRPC probes speak plaintext and carry no client certificate."""
    settings = settings_for(
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca.ca_file),
        health_port=0,
    )
    with serve(settings) as server:
        probe_target = f"127.0.0.1:{server.running.health_port}"
        with grpc.insecure_channel(probe_target) as channel:
            assert health_check(channel) == SERVING_STATUS
            assert health_check(channel, "del.v1.SplitInference") == SERVING_STATUS
            with pytest.raises(grpc.RpcError) as other:  # health is all that port serves
                inference_pb2_grpc.SplitInferenceStub(channel).GetManifest(
                    inference_pb2.GetManifestRequest(), timeout=10
                )
            assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
            watch = health_pb2_grpc.HealthStub(channel).Watch
            request = health_pb2.HealthCheckRequest()
            watches = [watch(request, timeout=10) for _ in range(HEALTH_LISTENER_MAX_RPCS)]
            assert all(next(w).status == SERVING_STATUS for w in watches)
            with pytest.raises(grpc.RpcError) as flood:  # unauthenticated: so it is capped
                health_check(channel)
            assert flood.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for watch in watches:
                watch.cancel()
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError):
            health_check(channel)  # the main port still speaks mutual TLS only
    with grpc.insecure_channel(probe_target) as channel, pytest.raises(grpc.RpcError) as gone:
        health_check(channel)
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "tls",
    [
        pytest.param(lambda pki: {}, id="plaintext client"),
        pytest.param(lambda pki: {"root_certificates": pki.rogue.ca_file}, id="wrong CA"),
        pytest.param(
            lambda pki: {"root_certificates": pki.ca.ca_file, "server_name": "evil.example"},
            id="wrong server name",
        ),
    ],
)
def test_a_client_that_cannot_verify_the_server_is_refused(tls_server, pki, tmp_path, tls):
    with pytest.raises(ServerUnavailableError, match="UNAVAILABLE"):
        generate(tls_server.target, tmp_path, **tls(pki))


def test_mutual_tls_accepts_a_client_certificate_from_the_ca(mtls_server, pki, tmp_path):
    finish = generate(
        mtls_server.target,
        tmp_path,
        root_certificates=pki.ca.ca_file,
        client_certificate=pki.client_cert,
        client_key=pki.client_key,
    )
    assert finish in ("length", "eos")


@pytest.mark.parametrize(
    "client_files",
    [
        pytest.param(lambda pki: {}, id="no client certificate"),
        pytest.param(
            lambda pki: {
                "client_certificate": pki.rogue_client_cert,
                "client_key": pki.rogue_client_key,
            },
            id="certificate from another CA",
        ),
    ],
)
def test_mutual_tls_refuses_a_client_without_a_certificate_from_the_ca(
    mtls_server, pki, tmp_path, client_files
):
    before = sample(mtls_server, "del_requests_total", {"code": "OK"})
    with pytest.raises(ServerUnavailableError):
        generate(
            mtls_server.target, tmp_path, root_certificates=pki.ca.ca_file, **client_files(pki)
        )
    assert sample(mtls_server, "del_requests_total", {"code": "OK"}) == before  # no RPC ran


def test_renewed_certificates_serve_new_connections_without_a_restart(
    serve, settings_for, pki, tmp_path
):
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    with serve(settings_for(tls_cert=str(cert), tls_key=str(key))) as loopback:
        assert generate(loopback.target, tmp_path, root_certificates=pki.ca.ca_file)
        # Renewal by another CA (the easiest change to observe): write the key, then the cert.
        renewed_cert, renewed_key = pki.rogue.issue("renewed-server", server=True)
        shutil.copy(renewed_key, key)
        shutil.copy(renewed_cert, cert)
        assert generate(loopback.target, tmp_path, root_certificates=pki.rogue.ca_file)
        with pytest.raises(ServerUnavailableError):
            generate(loopback.target, tmp_path, root_certificates=pki.ca.ca_file)


def test_a_key_that_does_not_match_its_certificate_fails_at_start(serve, settings_for, pki):
    settings = settings_for(tls_cert=str(pki.server_cert), tls_key=str(pki.client_key))
    with pytest.raises(ValueError, match="TLS files"), serve(settings):
        pass


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tls_cert": "a.pem"}, "tls_cert and tls_key go together"),
        ({"tls_client_ca": "ca.pem"}, "needs tls_cert and tls_key"),
    ],
)
def test_incomplete_tls_settings_are_refused(settings_for, overrides, message):
    with pytest.raises(ValueError, match=message):
        settings_for(**overrides)
