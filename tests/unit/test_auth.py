"""dapo.auth: where secrets come from, the errors that name the setting, URLs without passwords."""

from __future__ import annotations

from pathlib import Path

import pytest

from dapo import auth, rpc


def test_a_secret_comes_from_the_variable_or_the_file_it_names(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    assert auth.service_token({}) is None
    assert auth.service_token({"DAPO_SERVICE_TOKEN": "t0ken"}) == "t0ken"
    assert auth.service_token({"DAPO_SERVICE_TOKEN_FILE": str(secret)}) == "from-a-file"
    with pytest.raises(ValueError, match="DAPO_SERVICE_TOKEN and DAPO_SERVICE_TOKEN_FILE are both set"):
        auth.service_token({"DAPO_SERVICE_TOKEN": "a", "DAPO_SERVICE_TOKEN_FILE": str(secret)})
    with pytest.raises(ValueError, match=r"DAPO_REDIS_PASSWORD_FILE=/nope: cannot read it"):
        auth.redis_password({"DAPO_REDIS_PASSWORD_FILE": "/nope"})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="the file is empty"):
        auth.api_token({"DAPO_API_TOKEN_FILE": str(tmp_path / "empty")})
    assert auth.new_token() != auth.new_token() and len(auth.new_token()) >= 43


def test_tls_settings_are_checked_naming_the_variable(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("-")
    assert auth.tls_files({}) is None
    with pytest.raises(ValueError, match="DAPO_TLS_KEY_FILE is not set"):
        auth.tls_files({"DAPO_TLS_CERT_FILE": str(pem)})
    with pytest.raises(ValueError, match="DAPO_TLS_CA_FILE is set without"):
        auth.tls_files({"DAPO_TLS_CA_FILE": str(pem)})
    with pytest.raises(ValueError, match="DAPO_TLS_CA_FILE=/no.pem: no such file"):
        auth.tls_files(
            {"DAPO_TLS_CERT_FILE": str(pem), "DAPO_TLS_KEY_FILE": str(pem), "DAPO_TLS_CA_FILE": "/no.pem"}
        )
    tls = auth.tls_files({"DAPO_TLS_CERT_FILE": str(pem), "DAPO_TLS_KEY_FILE": str(pem)})
    assert tls is not None and not tls.is_mutual
    assert auth.uvicorn_tls_options({}) == {} and auth.http_verify({}) is True


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:p%40ss@redis.example/1", "rediss://user:***@redis.example/1"),
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
        ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert auth.redact_url(url) == shown


def test_redis_options_add_the_password_only_when_the_url_has_none() -> None:
    env = {"DAPO_REDIS_PASSWORD": "pw"}
    assert auth.redis_options("redis://h:6379/0", env) == {"password": "pw"}
    assert auth.redis_options("redis://:inline@h:6379/0", env) == {}
    assert auth.redis_options("redis://h:6379/0", {}) == {}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("::", False),
        ("0.0.0.0", False),
        ("10.0.0.2", False),
        ("redis", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert auth.is_loopback(host) is loopback


def test_the_token_check_is_exact() -> None:
    assert rpc.is_authorized([("authorization", "Bearer t")], "t")
    assert rpc.is_authorized((("x", "y"), ("authorization", b"Bearer t")), "t")
    for metadata in (None, [], [("authorization", "Bearer tt")], [("authorization", "t")], [("Bearer", "t")]):
        assert not rpc.is_authorized(metadata, "t"), metadata
