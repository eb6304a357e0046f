"""``tunewright federate credentials``: a federation's TLS files and site keys, never replaced."""

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tunewright.cli import main


def federate(*args):
    with pytest.raises(SystemExit) as exit_info:
        main(["federate", "credentials", *args])
    return exit_info.value.code


def test_writes_a_ca_a_server_certificate_for_every_host_and_site_keys(tmp_path, capsys):
    folder = tmp_path / "creds"
    assert (
        federate(
            str(folder),
            "--host",
            "127.0.0.1",
            "--host",
            "server.example.org",
            "--site",
            "hospital-a",
        )
        == 0
    )
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((folder / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["server.example.org"]
    private = serialization.load_ssh_private_key(
        (folder / "keys" / "hospital-a").read_bytes(), None
    )
    public = serialization.load_ssh_public_key((folder / "keys" / "hospital-a.pub").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    for secret in (folder / "server.key", folder / "keys" / "hospital-a"):
        assert secret.stat().st_mode & 0o777 == 0o600
    said = capsys.readouterr().err
    assert "authorized_sites" in said and "--auth-key" in said


def test_existing_files_and_bad_site_names_are_refused_and_nothing_is_written(tmp_path, capsys):
    folder = tmp_path / "creds"
    assert federate(str(folder), "--host", "127.0.0.1") == 0
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert federate(str(folder), "--host", "127.0.0.1", "--site", "a") == 2
    assert (
        "holds ca.crt, server.pem, server.key already; nothing was written"
        in capsys.readouterr().err
    )
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    # a site that joins later gets its key alone; its key is never made twice
    assert federate(str(folder), "--site", "late") == 0
    assert (folder / "keys" / "late.pub").is_file() and (folder / "ca.crt").read_bytes() == before[
        folder / "ca.crt"
    ]
    capsys.readouterr()
    assert federate(str(folder), "--site", "late") == 2
    assert "holds keys/late, keys/late.pub already" in capsys.readouterr().err
    assert federate(str(folder)) == 2
    assert federate(str(tmp_path / "other"), "--host", "127.0.0.1", "--site", "../escape") == 2
    assert "a site name is a plain file name" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
