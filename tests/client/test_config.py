"""ClientConfig's transport fields are checked at construction, and both clients derive the
same channel and metadata from them (del_client.transport)."""

from __future__ import annotations

import pytest

from del_client.cli import _config, build_parser
from del_client.config import ClientConfig
from del_client.errors import ConfigError
from del_client.transport import call_metadata, channel_credentials, channel_options

TOKEN = "a-token-of-some-length-0123456789"


@pytest.fixture
def pem(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")  # read only when a channel opens
    return path


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"root_certificates": "/no/such/ca.pem"}, "no such file"),
        ({"client_certificate": "PEM"}, "go together"),
        ({"client_key": "PEM"}, "go together"),
        ({"server_name": "del.example"}, "only checked over TLS"),
        ({"retries": -1}, "retries"),
        ({"retries": True}, "retries"),
        ({"retry_backoff_s": -0.1}, "retry_backoff_s"),
        ({"retry_backoff_s": float("nan")}, "retry_backoff_s"),
        ({"root_certificates": 42}, "path to a PEM file"),
        ({"load_balancing": "least_request"}, "load_balancing must be one of"),
    ],
)
def test_invalid_transport_fields_are_refused(pem, fields, message):
    fields = {k: (pem if v == "PEM" else v) for k, v in fields.items()}
    with pytest.raises(ConfigError, match=message):
        ClientConfig("127.0.0.1:50051", **fields)


def test_tls_is_on_when_any_tls_field_is_set(pem):
    assert not ClientConfig("127.0.0.1:50051").uses_tls
    assert ClientConfig("127.0.0.1:50051", tls=True).uses_tls
    assert ClientConfig("127.0.0.1:50051", root_certificates=str(pem)).uses_tls
    mutual = ClientConfig(
        "127.0.0.1:50051", root_certificates=pem, client_certificate=pem, client_key=pem
    )
    assert mutual.uses_tls
    assert mutual.client_key == pem  # paths normalised to Path


def test_both_clients_get_the_same_channel_recipe(pem):
    plain = ClientConfig("127.0.0.1:50051")
    assert channel_credentials(plain) is None
    assert call_metadata(plain) == ()
    named = ClientConfig("10.0.0.7:443", tls=True, server_name="del.example", token=TOKEN)
    assert channel_credentials(named) is not None
    assert channel_options(named) == [
        ("grpc.lb_policy_name", "pick_first"),
        ("grpc.ssl_target_name_override", "del.example"),
    ]
    assert call_metadata(named) == (("authorization", f"Bearer {TOKEN}"),)


def test_the_cli_reads_the_token_from_a_file_or_the_environment(tmp_path, monkeypatch):
    parse = lambda *argv: build_parser().parse_args(["manifest", *argv])  # noqa: E731
    monkeypatch.delenv("DEL_TOKEN", raising=False)
    assert _config(parse("--server", "127.0.0.1:1")).token is None
    monkeypatch.setenv("DEL_TOKEN", TOKEN)
    assert _config(parse("--server", "127.0.0.1:1")).token == TOKEN
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file-0123456789abcdef\n")
    from_file = _config(parse("--server", "127.0.0.1:1", "--token-file", str(token_file)))
    assert from_file.token == "from-the-file-0123456789abcdef"
    with pytest.raises(ConfigError, match="--token-file"):
        _config(parse("--token-file", str(tmp_path / "missing")))


@pytest.mark.parametrize(
    ("target", "hosts"),
    [
        ("127.0.0.1:50051", ("127.0.0.1",)),
        ("[::1]:50051", ("::1",)),
        ("dns:///del-server.del.svc.cluster.local:50051", ("del-server.del.svc.cluster.local",)),
        ("dns:del-server:50051", ("del-server",)),
        ("dns://10.96.0.10/del-server:50051", ("del-server",)),
        ("ipv4:10.0.0.1:50051,10.0.0.2:50051", ("10.0.0.1", "10.0.0.2")),
        ("ipv6:[::1]:50051,[fe80::1]:50051", ("::1", "fe80::1")),
    ],
)
def test_targets_take_grpcs_name_forms(target, hosts):
    assert ClientConfig(target).hosts == hosts


@pytest.mark.parametrize(
    "target",
    [
        "localhost",
        "localhost:0",
        "::1:50051",
        "dns:///",
        "ipv4:10.0.0.1:50051,",
        "ipv4:localhost:50051",
        "ipv6:127.0.0.1:50051",
        "http://a:1",
    ],
)
def test_malformed_targets_are_refused(target):
    with pytest.raises(ConfigError, match="target"):
        ClientConfig(target)


@pytest.mark.parametrize(
    ("url", "instead"),
    [
        ("http://localhost:50051", "write 'localhost:50051'$"),
        ("grpc://10.0.0.7:50051/", "write '10.0.0.7:50051'$"),
        ("http://[::1]:50051", r"write '\[::1\]:50051'$"),
        ("https://del.example.com", "write 'del.example.com:PORT' and turn on TLS"),
    ],
)
def test_a_url_is_refused_with_the_target_to_write_instead(url, instead):
    with pytest.raises(ConfigError, match=f"is a URL, but gRPC targets take no scheme: {instead}"):
        ClientConfig(url)


def test_a_token_goes_in_plaintext_only_when_every_address_is_loopback():
    ClientConfig("ipv4:127.0.0.1:50051,127.0.0.2:50051", token=TOKEN)
    with pytest.raises(ConfigError, match=r"'10\.0\.0\.2'"):
        ClientConfig("ipv4:127.0.0.1:50051,10.0.0.2:50051", token=TOKEN)
