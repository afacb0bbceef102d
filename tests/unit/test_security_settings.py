"""Kafka SASL/TLS and PostgreSQL TLS settings → the aiokafka options, the FastStream security object
and the asyncpg connect arguments; impossible combinations fail naming the variable.

Certificates are real (a throwaway CA, server and client certificate made with `openssl` in a
temporary directory), so the SSL contexts are built and used for real handshakes: against a local TLS
server for Kafka's, and for the database's through asyncpg against a stand-in that plays PostgreSQL's
part up to the TLS handshake (embedded PostgreSQL is built without TLS)."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from faststream.kafka.security import parse_security
from faststream.security import SASLPlaintext, SASLScram256, SASLScram512
from pydantic import ValidationError

import services.shared.db as db
from services.shared.db import (
    CONNECT_TIMEOUT_SECONDS,
    PLANNING,
    STATEMENT_TIMEOUT_SECONDS,
    asyncpg_connect_kwargs,
    create_engine,
)
from services.shared.kafka import _faststream_security, client_security, make_producer, ssl_context
from services.shared.settings import Settings, get_settings

DATABASE_URL = "postgresql+asyncpg://caselink:secret@db.example.org:5432/caselink"
BOOTSTRAP = "kafka-1.example.org:9093"
PASSWORD = "hunter2-not-in-messages"


@dataclass(frozen=True)
class Certificates:
    """A CA and two certificates it signed: a server's (DNS name `localhost` only) and a client's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of them


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certificates(directory: Path) -> Certificates:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                 "-subj", f"/CN=caselink-test-{ca}", cwd=directory)  # fmt: skip
    for serial, (name, usage, san) in enumerate(
        [("server", "serverAuth", "subjectAltName=DNS:localhost\n"), ("client", "clientAuth", "")], start=2
    ):
        (directory / f"{name}.ext").write_text(
            f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
        )
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=caselink-test-{name}", cwd=directory)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-set_serial", str(serial), "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
                 cwd=directory)  # fmt: skip
    return Certificates(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.crt",
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test certificates")
    return _make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CASELINK_* or PG* variable of the developer's shell leaks in."""
    for name in list(os.environ):
        if name.startswith(("CASELINK_", "PGSSL")):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def kafka(**values: Any) -> Settings:
    return Settings(kafka_bootstrap=BOOTSTRAP, **values)


def database(**values: Any) -> Settings:
    return Settings(database_url=DATABASE_URL, **values)


def failure(call: Any, *args: Any) -> str:
    """The message of the SystemExit that `call(*args)` raises."""
    with pytest.raises(SystemExit) as caught:
        call(*args)
    return str(caught.value.code)


def ca_subjects(context: ssl.SSLContext) -> list[str]:
    return [dict(rdn[0] for rdn in ca["subject"])["commonName"] for ca in context.get_ca_certs()]


# --- settings from the environment -----------------------------------------------------------


def test_security_settings_default_to_plaintext_kafka_and_unset_database_tls() -> None:
    settings = Settings()

    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert settings.kafka_ssl_cafile is None and settings.kafka_ssl_certfile is None
    assert settings.kafka_ssl_keyfile is None and settings.kafka_ssl_check_hostname is True
    assert settings.database_ssl_mode is None
    assert settings.database_ssl_rootcert is None and settings.database_ssl_cert is None
    assert settings.database_ssl_key is None


def test_security_settings_read_from_caselink_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "CASELINK_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CASELINK_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CASELINK_KAFKA_SSL_CAFILE": "/etc/caselink/kafka-ca.pem",
        "CASELINK_KAFKA_SSL_CERTFILE": "/etc/caselink/kafka.pem",
        "CASELINK_KAFKA_SSL_KEYFILE": "/etc/caselink/kafka.key",
        "CASELINK_KAFKA_SSL_CHECK_HOSTNAME": "false",
        "CASELINK_DATABASE_SSL_MODE": "verify-full",
        "CASELINK_DATABASE_SSL_ROOTCERT": "/etc/caselink/pg-ca.pem",
        "CASELINK_DATABASE_SSL_CERT": "/etc/caselink/pg.pem",
        "CASELINK_DATABASE_SSL_KEY": "/etc/caselink/pg.key",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)

    settings = Settings()

    assert settings.kafka_ssl_cafile == Path("/etc/caselink/kafka-ca.pem")
    assert settings.kafka_ssl_certfile == Path("/etc/caselink/kafka.pem")
    assert settings.kafka_ssl_keyfile == Path("/etc/caselink/kafka.key")
    assert settings.kafka_ssl_check_hostname is False
    assert settings.database_ssl_mode == "verify-full"
    assert settings.database_ssl_rootcert == Path("/etc/caselink/pg-ca.pem")
    assert settings.database_ssl_cert == Path("/etc/caselink/pg.pem")
    assert settings.database_ssl_key == Path("/etc/caselink/pg.key")


def test_empty_tls_variables_mean_unset_not_the_current_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "DATABASE_SSL_MODE", "DATABASE_SSL_ROOTCERT"):
        monkeypatch.setenv(f"CASELINK_{name}", "")

    settings = Settings()

    assert settings.kafka_ssl_cafile is None and settings.kafka_ssl_certfile is None
    assert settings.database_ssl_mode is None and settings.database_ssl_rootcert is None


def test_an_unknown_database_ssl_mode_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASELINK_DATABASE_SSL_MODE", "sometimes")

    with pytest.raises(ValidationError, match="database_ssl_mode"):
        Settings()


# --- Kafka: aiokafka options and FastStream security ------------------------------------------


def test_plaintext_kafka_is_unchanged() -> None:
    settings = kafka()

    assert client_security(settings) == {"security_protocol": "PLAINTEXT"}
    assert _faststream_security(settings) is None


def test_ssl_uses_the_system_ca_store_and_checks_host_names_by_default() -> None:
    options = client_security(kafka(kafka_security_protocol="SSL"))

    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
    assert parse_security(_faststream_security(kafka(kafka_security_protocol="SSL")))["security_protocol"] == "SSL"


def test_ssl_with_a_private_ca_trusts_exactly_that_ca(certs: Certificates) -> None:
    context = client_security(kafka(kafka_security_protocol="SSL", kafka_ssl_cafile=certs.ca))["ssl_context"]

    assert ca_subjects(context) == ["caselink-test-ca"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True


def test_turning_off_the_host_name_check_still_verifies_the_chain(certs: Certificates) -> None:
    settings = kafka(kafka_security_protocol="SSL", kafka_ssl_cafile=certs.ca, kafka_ssl_check_hostname=False)
    context = ssl_context(settings)

    assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("mechanism", "security_class"),
    [("PLAIN", SASLPlaintext), ("SCRAM-SHA-256", SASLScram256), ("SCRAM-SHA-512", SASLScram512)],
)
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_gives_aiokafka_and_faststream_the_same_options(
    protocol: str, mechanism: str, security_class: type, certs: Certificates
) -> None:
    tls = {"kafka_ssl_cafile": certs.ca} if protocol == "SASL_SSL" else {}
    settings = kafka(
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="caselink-intake",
        kafka_sasl_password="s3cret",
        **tls,
    )

    options = client_security(settings)
    security = _faststream_security(settings)

    assert isinstance(security, security_class)
    assert security.use_ssl is (protocol == "SASL_SSL")
    assert options["security_protocol"] == protocol
    assert options["sasl_mechanism"] == mechanism
    assert options["sasl_plain_username"] == "caselink-intake" and options["sasl_plain_password"] == "s3cret"
    faststream_options = parse_security(security)
    without_context = {k: v for k, v in options.items() if k != "ssl_context"}
    assert {k: v for k, v in faststream_options.items() if k != "ssl_context"} == without_context
    if protocol == "SASL_SSL":
        assert ca_subjects(options["ssl_context"]) == ca_subjects(faststream_options["ssl_context"])
        assert ca_subjects(options["ssl_context"]) == ["caselink-test-ca"]
    else:
        assert "ssl_context" not in options and faststream_options["ssl_context"] is None


async def test_the_relay_producer_carries_the_security_settings(certs: Certificates) -> None:
    settings = kafka(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="caselink-relay",
        kafka_sasl_password="s3cret",
        kafka_ssl_cafile=certs.ca,
    )

    producer = make_producer(settings, BOOTSTRAP, client_id="caselink-test-relay")

    client = producer.client
    assert client._security_protocol == "SASL_SSL"
    assert client._sasl_mechanism == "SCRAM-SHA-512"
    assert client._sasl_plain_username == "caselink-relay"
    assert ca_subjects(client._ssl_context) == ["caselink-test-ca"]


# --- Kafka: real TLS handshakes against a local server ----------------------------------------


@pytest_asyncio.fixture
async def tls_server(certs: Certificates) -> AsyncIterator[tuple[int, list[str]]]:
    """A TLS server with the `localhost` certificate that asks for (and checks) a client certificate;
    it records the client certificate's common name, or "" when there is none."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(certs.server_cert, certs.server_key)
    context.verify_mode = ssl.CERT_OPTIONAL
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        seen.append(dict(rdn[0] for rdn in peer.get("subject", ()))["commonName"] if peer else "")
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    yield server.sockets[0].getsockname()[1], seen
    server.close()
    await server.wait_closed()


async def handshake(port: int, context: ssl.SSLContext, server_hostname: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_hostname)
    try:
        return await reader.read(2)
    finally:
        writer.close()


async def test_kafka_tls_context_verifies_the_broker_and_presents_the_client_certificate(
    certs: Certificates, tls_server: tuple[int, list[str]]
) -> None:
    port, seen = tls_server
    settings = kafka(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=certs.ca,
        kafka_ssl_certfile=certs.client_cert,
        kafka_ssl_keyfile=certs.client_key,
    )

    assert await handshake(port, ssl_context(settings), "localhost") == b"ok"
    assert seen[-1] == "caselink-test-client"  # mutual TLS

    one_way = kafka(kafka_security_protocol="SSL", kafka_ssl_cafile=certs.ca)
    assert await handshake(port, ssl_context(one_way), "localhost") == b"ok"
    assert seen[-1] == ""


async def test_kafka_tls_refuses_a_broker_of_another_ca_or_another_name(
    certs: Certificates, tls_server: tuple[int, list[str]]
) -> None:
    port, _ = tls_server
    stranger = kafka(kafka_security_protocol="SSL", kafka_ssl_cafile=certs.other_ca)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await handshake(port, ssl_context(stranger), "localhost")

    checked = kafka(kafka_security_protocol="SSL", kafka_ssl_cafile=certs.ca)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await handshake(port, ssl_context(checked), "kafka-1.example.org")

    unchecked = kafka(kafka_security_protocol="SSL", kafka_ssl_cafile=certs.ca, kafka_ssl_check_hostname=False)
    assert await handshake(port, ssl_context(unchecked), "kafka-1.example.org") == b"ok"


# --- Kafka: combinations that cannot work name the variable -----------------------------------


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize(
    "missing", ["CASELINK_KAFKA_SASL_MECHANISM", "CASELINK_KAFKA_SASL_USERNAME", "CASELINK_KAFKA_SASL_PASSWORD"]
)
def test_sasl_without_mechanism_user_or_password_names_the_variable(protocol: str, missing: str) -> None:
    values = {"kafka_sasl_mechanism": "SCRAM-SHA-256", "kafka_sasl_username": "u", "kafka_sasl_password": PASSWORD}
    values[missing.removeprefix("CASELINK_").lower()] = None
    settings = kafka(kafka_security_protocol=protocol, **values)

    for build in (client_security, _faststream_security):
        message = failure(build, settings)
        assert missing in message and protocol in message
        assert PASSWORD not in message


def test_an_unsupported_sasl_mechanism_names_the_variable_and_the_choices() -> None:
    settings = kafka(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="GSSAPI",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
    )

    message = failure(client_security, settings)
    assert "CASELINK_KAFKA_SASL_MECHANISM" in message and "SCRAM-SHA-512" in message and "GSSAPI" in message


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        ("kafka_sasl_mechanism", "CASELINK_KAFKA_SASL_MECHANISM"),
        ("kafka_sasl_username", "CASELINK_KAFKA_SASL_USERNAME"),
        ("kafka_sasl_password", "CASELINK_KAFKA_SASL_PASSWORD"),
    ],
)
@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
def test_sasl_settings_without_a_sasl_protocol_name_the_variable(protocol: str, field: str, variable: str) -> None:
    message = failure(client_security, kafka(kafka_security_protocol=protocol, **{field: "SCRAM-SHA-256"}))

    assert variable in message and "CASELINK_KAFKA_SECURITY_PROTOCOL" in message and protocol in message


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        ("kafka_ssl_cafile", "CASELINK_KAFKA_SSL_CAFILE"),
        ("kafka_ssl_certfile", "CASELINK_KAFKA_SSL_CERTFILE"),
        ("kafka_ssl_keyfile", "CASELINK_KAFKA_SSL_KEYFILE"),
    ],
)
def test_tls_files_without_a_tls_protocol_name_the_variable(field: str, variable: str, certs: Certificates) -> None:
    message = failure(_faststream_security, kafka(**{field: certs.ca}))

    assert variable in message and "PLAINTEXT" in message


def test_a_client_key_without_its_certificate_names_both_variables(certs: Certificates) -> None:
    message = failure(client_security, kafka(kafka_security_protocol="SSL", kafka_ssl_keyfile=certs.client_key))

    assert "CASELINK_KAFKA_SSL_KEYFILE" in message and "CASELINK_KAFKA_SSL_CERTFILE" in message


def test_missing_or_unreadable_tls_files_name_the_variable(certs: Certificates, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    message = failure(client_security, kafka(kafka_security_protocol="SSL", kafka_ssl_cafile=missing))
    assert "CASELINK_KAFKA_SSL_CAFILE" in message and str(missing) in message

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    message = failure(client_security, kafka(kafka_security_protocol="SSL", kafka_ssl_cafile=garbage))
    assert "CASELINK_KAFKA_SSL_CAFILE" in message and str(garbage) in message

    mismatched = kafka(
        kafka_security_protocol="SSL", kafka_ssl_certfile=certs.client_cert, kafka_ssl_keyfile=certs.server_key
    )
    message = failure(client_security, mismatched)
    assert "CASELINK_KAFKA_SSL_CERTFILE" in message and "CASELINK_KAFKA_SSL_KEYFILE" in message


# --- PostgreSQL: asyncpg connect arguments ----------------------------------------------------


def test_unset_database_tls_leaves_the_connect_arguments_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, Any] = {}

    def fake_engine(url: str, **kwargs: Any) -> str:
        captured.update(kwargs, url=url)
        return "engine"

    monkeypatch.setattr(db, "create_async_engine", fake_engine)
    settings = database()

    assert asyncpg_connect_kwargs(settings) == {}
    assert create_engine(settings) == "engine"
    assert captured["url"] == DATABASE_URL
    assert captured["connect_args"] == {
        "server_settings": {"application_name": "caselink", **PLANNING},
        "timeout": CONNECT_TIMEOUT_SECONDS,
        "command_timeout": STATEMENT_TIMEOUT_SECONDS,
    }


@pytest.mark.parametrize("mode", ["disable", "prefer"])
def test_disable_and_prefer_pass_the_mode_to_asyncpg(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, Any] = {}
    monkeypatch.setattr(db, "create_async_engine", lambda url, **kwargs: captured.update(kwargs))

    create_engine(database(database_ssl_mode=mode))

    assert captured["connect_args"] == {
        "server_settings": {"application_name": "caselink", **PLANNING},
        "timeout": CONNECT_TIMEOUT_SECONDS,
        "command_timeout": STATEMENT_TIMEOUT_SECONDS,
        "ssl": mode,
    }


def test_require_encrypts_without_verifying() -> None:
    context = asyncpg_connect_kwargs(database(database_ssl_mode="require"))["ssl"]

    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE and context.check_hostname is False
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_require_with_a_root_certificate_verifies_the_chain_as_libpq_does(certs: Certificates) -> None:
    context = asyncpg_connect_kwargs(database(database_ssl_mode="require", database_ssl_rootcert=certs.ca))["ssl"]

    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is False
    assert ca_subjects(context) == ["caselink-test-ca"]


@pytest.mark.parametrize(("mode", "check_hostname"), [("verify-ca", False), ("verify-full", True)])
def test_verify_modes_check_the_chain_and_for_verify_full_the_host_name(
    mode: str, check_hostname: bool, certs: Certificates
) -> None:
    settings = database(
        database_ssl_mode=mode,
        database_ssl_rootcert=certs.ca,
        database_ssl_cert=certs.client_cert,
        database_ssl_key=certs.client_key,
    )

    context = asyncpg_connect_kwargs(settings)["ssl"]

    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is check_hostname
    assert ca_subjects(context) == ["caselink-test-ca"]


def test_verify_full_without_a_root_certificate_uses_the_system_ca_store() -> None:
    context = asyncpg_connect_kwargs(database(database_ssl_mode="verify-full"))["ssl"]

    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        ("database_ssl_rootcert", "CASELINK_DATABASE_SSL_ROOTCERT"),
        ("database_ssl_cert", "CASELINK_DATABASE_SSL_CERT"),
        ("database_ssl_key", "CASELINK_DATABASE_SSL_KEY"),
    ],
)
@pytest.mark.parametrize("mode", [None, "disable", "prefer"])
def test_database_tls_files_without_a_tls_mode_name_the_variable(
    mode: str | None, field: str, variable: str, certs: Certificates
) -> None:
    message = failure(asyncpg_connect_kwargs, database(database_ssl_mode=mode, **{field: certs.ca}))

    assert variable in message and "CASELINK_DATABASE_SSL_MODE" in message


def test_database_tls_mistakes_name_the_variable(certs: Certificates, tmp_path: Path) -> None:
    message = failure(
        asyncpg_connect_kwargs, database(database_ssl_mode="verify-full", database_ssl_key=certs.client_key)
    )
    assert "CASELINK_DATABASE_SSL_KEY" in message and "CASELINK_DATABASE_SSL_CERT" in message

    missing = tmp_path / "root.crt"
    message = failure(asyncpg_connect_kwargs, database(database_ssl_mode="verify-ca", database_ssl_rootcert=missing))
    assert "CASELINK_DATABASE_SSL_ROOTCERT" in message and str(missing) in message

    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    message = failure(asyncpg_connect_kwargs, database(database_ssl_mode="verify-ca", database_ssl_rootcert=garbage))
    assert "CASELINK_DATABASE_SSL_ROOTCERT" in message

    mismatched = database(
        database_ssl_mode="require", database_ssl_cert=certs.client_cert, database_ssl_key=certs.server_key
    )
    message = failure(asyncpg_connect_kwargs, mismatched)
    assert "CASELINK_DATABASE_SSL_CERT" in message and "CASELINK_DATABASE_SSL_KEY" in message


# --- PostgreSQL: real TLS handshakes with asyncpg ---------------------------------------------
# The embedded PostgreSQL is built without TLS, so a small front plays the server's part of the
# protocol up to the TLS handshake (SSLRequest → 'S' → TLS), records what it saw, and hangs up.

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@dataclass(frozen=True)
class Seen:
    tls: bool
    client_cn: str  # "" without a client certificate


@pytest_asyncio.fixture
async def postgres_front(certs: Certificates) -> AsyncIterator[tuple[int, list[Seen]]]:
    """Answers like a PostgreSQL server with TLS on and the `localhost` certificate; checks client
    certificates signed by the test CA when one is presented."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(certs.server_cert, certs.server_key)
    context.verify_mode = ssl.CERT_OPTIONAL
    seen: list[Seen] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await reader.readexactly(8) != SSL_REQUEST:
                seen.append(Seen(tls=False, client_cn=""))  # a plain startup message
                return
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(context)
            peer = writer.get_extra_info("peercert") or {}
            seen.append(Seen(tls=True, client_cn=dict(rdn[0] for rdn in peer.get("subject", ())).get("commonName", "")))
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client refused the server's certificate
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], seen
    server.close()
    await server.wait_closed()


async def connect(port: int, settings: Settings, host: str = "127.0.0.1") -> None:
    """Connect as a service would; the front hangs up after the handshake, so that error is expected."""
    try:
        conn = await asyncpg.connect(
            f"postgresql://caselink@{host}:{port}/caselink", timeout=10, **asyncpg_connect_kwargs(settings)
        )
    except ssl.SSLCertVerificationError:
        raise
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return
    await conn.close()
    raise AssertionError("the front never completes a connection")


async def test_asyncpg_uses_the_database_tls_settings(
    postgres_front: tuple[int, list[Seen]], certs: Certificates
) -> None:
    port, seen = postgres_front

    before = len(seen)
    await connect(port, database())  # unset: asyncpg's default `prefer`, as before (TLS, then plain)
    assert seen[before] == Seen(tls=True, client_cn="")
    await connect(port, database(database_ssl_mode="disable"))
    assert seen[-1] == Seen(tls=False, client_cn="")
    await connect(port, database(database_ssl_mode="require"))
    assert seen[-1] == Seen(tls=True, client_cn="")
    await connect(port, database(database_ssl_mode="verify-ca", database_ssl_rootcert=certs.ca))
    assert seen[-1] == Seen(tls=True, client_cn="")  # 127.0.0.1 is not in the certificate: fine for verify-ca
    mutual = database(
        database_ssl_mode="verify-ca",
        database_ssl_rootcert=certs.ca,
        database_ssl_cert=certs.client_cert,
        database_ssl_key=certs.client_key,
    )
    await connect(port, mutual)
    assert seen[-1] == Seen(tls=True, client_cn="caselink-test-client")


async def test_asyncpg_refuses_a_server_of_another_ca_or_another_name(
    postgres_front: tuple[int, list[Seen]], certs: Certificates
) -> None:
    port, seen = postgres_front
    verify_full = database(database_ssl_mode="verify-full", database_ssl_rootcert=certs.ca)

    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await connect(port, verify_full)  # the certificate names localhost, not 127.0.0.1
    await connect(port, verify_full, host="localhost")
    assert seen[-1] == Seen(tls=True, client_cn="")

    for mode in ("require", "verify-ca", "verify-full"):
        stranger = database(database_ssl_mode=mode, database_ssl_rootcert=certs.other_ca)
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await connect(port, stranger, host="localhost")


async def test_the_engine_connects_with_the_database_tls_settings(
    postgres_front: tuple[int, list[Seen]], certs: Certificates
) -> None:
    port, seen = postgres_front
    settings = Settings(
        database_url=f"postgresql+asyncpg://caselink@localhost:{port}/caselink",
        database_ssl_mode="verify-full",
        database_ssl_rootcert=certs.ca,
        database_ssl_cert=certs.client_cert,
        database_ssl_key=certs.client_key,
    )
    engine = create_engine(settings)
    try:
        with pytest.raises(Exception) as caught:  # the front hangs up after the handshake
            async with engine.connect():
                pass
        assert not isinstance(caught.value.__cause__ or caught.value, ssl.SSLCertVerificationError)
    finally:
        await engine.dispose()

    assert seen and seen[-1] == Seen(tls=True, client_cn="caselink-test-client")
