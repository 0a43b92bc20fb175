"""Bearer-token authentication: every RPC but health needs a configured token, a refusal says
nothing beyond UNAUTHENTICATED, the token file rotates without a restart, and the client never
sends a token where it could be read on the wire."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hardening_kit import sample

from del_client import AsyncClient, AuthenticationError, Client, ClientConfig, ConfigError
from del_client.proto import inference_pb2, inference_pb2_grpc
from del_server.auth import TokenStore, parse_tokens

TOKEN = "s3cret-token-for-tests-0123456789"
OTHER = "another-token-for-tests-987654321"
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def auth_server(serve, settings_for):
    with serve(settings_for(auth_tokens=f"{TOKEN},{OTHER}")) as loopback:
        yield loopback


def config(target, tmp_path, token=None, **more) -> ClientConfig:
    return ClientConfig(target, deadline_s=20, bundle_cache_dir=tmp_path, token=token, **more)


def test_a_client_with_a_configured_token_generates(auth_server, tmp_path):
    with Client(config(auth_server.target, tmp_path, TOKEN)) as client:
        assert client.generate(PROMPT, mu=10, max_new_tokens=4).collect().usage.prompt_tokens == 4

    async def run_async():
        async with AsyncClient(config(auth_server.target, tmp_path, OTHER)) as async_client:
            return await async_client.generate(PROMPT, mu=10, max_new_tokens=4).collect()

    assert asyncio.run(run_async()).usage.prompt_tokens == 4


@pytest.mark.parametrize(
    "token", [None, "not-the-token-at-all-0123456789", TOKEN + "x", TOKEN[:-1]]
)
def test_a_missing_or_wrong_token_is_unauthenticated_with_no_details(auth_server, tmp_path, token):
    refused = sample(auth_server, "del_requests_total", {"code": "UNAUTHENTICATED"})
    with Client(config(auth_server.target, tmp_path, token)) as client:
        with pytest.raises(AuthenticationError) as manifest_refused:
            client.manifest()
        assert manifest_refused.value.code == "UNAUTHENTICATED"
        assert manifest_refused.value.details == ""  # nothing for a guesser to learn
        assert "ClientConfig.token" in str(manifest_refused.value)
    # Generate too, spoken directly on the wire (the SDK stops at the manifest).
    with grpc.insecure_channel(auth_server.target) as channel:
        stub = inference_pb2_grpc.SplitInferenceStub(channel)
        metadata = () if token is None else (("authorization", f"Bearer {token}"),)
        end = inference_pb2.GenerateRequest(end=inference_pb2.End())
        with pytest.raises(grpc.RpcError) as failure:
            list(stub.Generate(iter([end]), metadata=metadata, timeout=10))
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not failure.value.details()
    assert sample(auth_server, "del_requests_total", {"code": "UNAUTHENTICATED"}) == refused + 1


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((("authorization", f"Basic {TOKEN}"),), id="another scheme"),
        pytest.param((("authorization", TOKEN),), id="no scheme"),
        pytest.param((("authorization", f"Bearer {TOKEN}"), ("authorization", "x")), id="two"),
        pytest.param((("x-token", f"Bearer {TOKEN}"),), id="another header"),
    ],
)
def test_only_one_bearer_authorization_header_counts(auth_server, metadata):
    with grpc.insecure_channel(auth_server.target) as channel:
        stub = inference_pb2_grpc.SplitInferenceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.GetManifest(inference_pb2.GetManifestRequest(), metadata=metadata, timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_token_but_reflection_does(auth_server):
    with grpc.insecure_channel(auth_server.target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as failure:
            next(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        v1 = channel.stream_stream(  # reflection v1: the same servicer behind the same guard
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as failure:
            next(v1(iter([request]), timeout=10))
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_unauthenticated_caller_cannot_reach_the_parser(auth_server):
    """Garbage from a stranger is refused as unauthenticated, not parsed into INVALID_ARGUMENT."""
    with grpc.insecure_channel(auth_server.target) as channel:
        manifest = channel.unary_unary("/del.v1.SplitInference/GetManifest")
        with pytest.raises(grpc.RpcError) as failure:
            manifest(b"\xff\xff\xff", timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_token_file_rotates_without_a_restart(serve, settings_for, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# rotated by the operator\n{TOKEN}\n")
    with serve(settings_for(auth_tokens_file=str(tokens))) as loopback:
        with Client(config(loopback.target, tmp_path, TOKEN)) as client:
            client.manifest()
        tokens.write_text(f"{OTHER}\n")  # the old token is withdrawn
        for token, accepted in ((OTHER, True), (TOKEN, False)):
            with Client(config(loopback.target, tmp_path, token)) as client:
                attempt = lambda client=client: client.manifest()  # noqa: E731
                if accepted:
                    _eventually(attempt)
                else:
                    with pytest.raises(AuthenticationError):
                        attempt()


def _eventually(call, timeout_s: float = 5.0):
    """The store looks at the file at most once a second."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except AuthenticationError:
            assert time.monotonic() < deadline, "the rotated token was never accepted"
            time.sleep(0.1)


def test_token_store_reloads_a_changed_file_and_keeps_the_old_tokens_on_a_bad_one(tmp_path):
    clock = [0.0]
    path = tmp_path / "tokens"
    path.write_text(TOKEN)
    store = TokenStore(path=path, recheck_s=1.0, clock=lambda: clock[0])
    assert store.accepts(f"Bearer {TOKEN}")
    path.write_text("short")  # invalid: too short, so the reload is refused
    clock[0] += 2
    assert store.accepts(f"Bearer {TOKEN}")
    path.write_text(OTHER)
    clock[0] += 0.5  # within recheck_s: not looked at yet
    assert not store.accepts(f"bearer {OTHER}")
    clock[0] += 1
    assert store.accepts(f"bearer {OTHER}")  # the scheme is case-insensitive
    assert not store.accepts(f"Bearer {TOKEN}")


def test_tokens_must_be_long_and_without_spaces():
    assert parse_tokens(f"\n# comment\n{TOKEN}\n\n{OTHER}\n") == [TOKEN, OTHER]
    with pytest.raises(ValueError, match="at least 16 characters"):
        parse_tokens("password")
    with pytest.raises(ValueError, match="no spaces"):
        parse_tokens("a,b c d e f g h i j k l m n o p q", separator=",")


def test_a_bad_token_file_fails_before_the_model_loads(settings_for, tmp_path):
    from del_server.server import start

    with pytest.raises(ValueError, match="auth_tokens_file"):
        asyncio.run(start(settings_for(auth_tokens_file=str(tmp_path / "missing"))))


def test_the_client_refuses_to_send_a_token_in_plaintext_off_this_machine(tmp_path, pki):
    with pytest.raises(ConfigError, match="plaintext"):
        ClientConfig("10.1.2.3:50051", token=TOKEN, bundle_cache_dir=tmp_path)
    for loopback in ("127.0.0.1:50051", "localhost:50051", "[::1]:50051"):
        ClientConfig(loopback, token=TOKEN, bundle_cache_dir=tmp_path)
    tls = ClientConfig("10.1.2.3:50051", token=TOKEN, root_certificates=pki.ca.ca_file)
    assert TOKEN not in repr(tls)
    for bad in ("abc\r\nx-injected: 1", "two words", ""):
        with pytest.raises(ConfigError, match="token must"):
            ClientConfig("127.0.0.1:50051", token=bad)


def test_settings_never_log_the_tokens(settings_for):
    settings = settings_for(auth_tokens=TOKEN)
    assert TOKEN not in repr(settings)
    assert settings.public_dict()["auth_tokens"] == "<redacted>"


def test_every_protection_at_once_tls_mutual_tls_and_a_token(serve, settings_for, pki, tmp_path):
    settings = settings_for(
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca.ca_file),
        auth_tokens=TOKEN,
    )
    tls = {
        "root_certificates": pki.ca.ca_file,
        "client_certificate": pki.client_cert,
        "client_key": pki.client_key,
    }
    with serve(settings) as loopback:
        with Client(config(loopback.target, tmp_path, TOKEN, **tls)) as client:
            assert client.generate(PROMPT, mu=10, max_new_tokens=2).collect().usage.prompt_tokens
        anonymous = Client(config(loopback.target, tmp_path, None, **tls))
        with anonymous, pytest.raises(AuthenticationError):
            anonymous.manifest()
