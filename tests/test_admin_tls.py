"""TLS on the gRPC port: with --tls-cert/--tls-key the server refuses
plaintext and serves over TLS (a self-signed certificate made here)."""

import datetime
import ipaddress

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tally.v1 import common_pb2
from tests.support import Terminal


def self_signed_certificate(directory) -> tuple[str, str, bytes]:
    """(cert path, key path, cert PEM) for 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tally test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path), cert_pem


def test_with_a_certificate_the_server_refuses_plaintext_and_serves_tls(server_factory, tmp_path):
    cert_path, key_path, cert_pem = self_signed_certificate(tmp_path)
    process = server_factory("--tls-cert", cert_path, "--tls-key", key_path)
    request = health_pb2.HealthCheckRequest(service="tally.v1.PaymentService")
    with pytest.raises(grpc.RpcError) as error:
        health_pb2_grpc.HealthStub(process.channel()).Check(request, timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError):
        Terminal(process.channel()).pay(100)
    secure = grpc.secure_channel(process.address, grpc.ssl_channel_credentials(root_certificates=cert_pem))
    assert health_pb2_grpc.HealthStub(secure).Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    answer, _ = Terminal(secure).pay(100)
    assert answer.result == common_pb2.APPROVED
    # A client that does not trust the certificate gets no service either.
    (tmp_path / "stranger").mkdir()
    _, _, stranger_pem = self_signed_certificate(tmp_path / "stranger")
    untrusting = grpc.secure_channel(process.address, grpc.ssl_channel_credentials(root_certificates=stranger_pem))
    with pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(untrusting).Check(request, timeout=5)


def test_tls_flags_go_together(server_factory, tmp_path):
    cert_path, _, _ = self_signed_certificate(tmp_path)
    with pytest.raises(RuntimeError, match="--tls-cert and --tls-key go together"):
        server_factory("--tls-cert", cert_path)
