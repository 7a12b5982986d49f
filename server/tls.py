"""TLS on the gRPC port (`--tls-cert PEM --tls-key PEM`).

Owns: binding the server's port, with TLS when a certificate is configured:
then the port speaks only TLS (a plaintext client fails its handshake) and
every service, terminal and admin alike, is reached over it. Without the
flags the port is plaintext, as before (loopback, tests, the README's first
payment).
Used by: server/app.py.
"""

import grpc


def read_pem(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise SystemExit(f"{flag} {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise SystemExit(f"{flag} {path}: not a PEM file")
    return data


def add_port(server, settings) -> int:
    """Bind settings.listen; the port number, 0 if it could not be bound."""
    if settings.tls_cert_file is None:
        return server.add_insecure_port(settings.listen)
    credentials = grpc.ssl_server_credentials(
        ((read_pem(settings.tls_key_file, "--tls-key"), read_pem(settings.tls_cert_file, "--tls-cert")),))
    return server.add_secure_port(settings.listen, credentials)
