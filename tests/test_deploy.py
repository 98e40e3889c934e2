"""``fedlora deploy``'s pieces without starting a process: credentials Flower can read, command lines Flower
parses as meant, and the run folder going where the run config says."""

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.common.config import parse_config_args

from fedlora import deploy
from fedlora.cli import main
from fedlora.config import ConfigError
from server.app import config_from_run_config


def test_certificates_name_the_hosts_and_chain_to_the_ca(tmp_path):
    creds = deploy.Credentials(tmp_path)
    deploy.make_certificates(creds, ["10.1.2.3", "link.example.org"], days=2)
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert san.get_values_for_type(x509.DNSName) == ["link.example.org"]
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert creds.ca_key.stat().st_mode & 0o077 == 0 and creds.server_key.stat().st_mode & 0o077 == 0


def test_supernode_keys_are_openssh_secp384r1_pairs(tmp_path):
    creds = deploy.Credentials(tmp_path)
    private = load_ssh_private_key(deploy.make_supernode_key(creds, 2).read_bytes(), None)
    public = load_ssh_public_key(creds.supernode_pub(2).read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
    assert private.public_key().public_numbers() == public.public_numbers()
    assert creds.supernode_key(2).stat().st_mode & 0o077 == 0


def test_node_config_parses_in_flower_as_built(tmp_path):
    folder = tmp_path / "my images"  # a space: the value must be quoted
    argv = deploy.supernode_argv(
        deploy.Credentials(tmp_path), 1, "127.0.0.1:8000", folder, 3, extra={"members": 16, "on-bad-image": "skip"}
    )
    parsed = parse_config_args([argv[argv.index("--node-config") + 1]])
    assert parsed == {
        "partition-id": 1,
        "num-partitions": 3,
        "data-path": str(folder.resolve()),
        "members": 16,
        "on-bad-image": "skip",
    }
    assert argv[argv.index("--auth-supernode-private-key") + 1].endswith("supernodes/sn1")


def test_superlink_runs_with_tls_and_node_authentication(tmp_path):
    argv = deploy.superlink_argv(deploy.Credentials(tmp_path), "0.0.0.0", 8123)
    assert "--enable-supernode-auth" in argv and "--insecure" not in argv
    assert argv[argv.index("--ssl-certfile") + 1] == str(tmp_path / "server.pem")
    assert argv[argv.index("--port") + 1] == "8123"


def test_output_dir_sets_the_run_folder_and_must_be_absolute(tmp_path):
    cfg = config_from_run_config({"config": "configs/smoke.toml", "output-dir": str(tmp_path / "runs")})
    assert cfg.run.output_dir == str(tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"'output-dir' = 'runs' must be an absolute path"):
        config_from_run_config({"config": "configs/smoke.toml", "output-dir": "runs"})


def test_cli_init_writes_what_each_host_needs(tmp_path, capsys):
    assert main(["deploy", "init", str(tmp_path), "--host", "127.0.0.1", "--supernodes", "2"]) == 0
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert names == [
        "ca.crt",
        "ca.key",
        "server.key",
        "server.pem",
        "supernodes/sn0",
        "supernodes/sn0.pub",
        "supernodes/sn1",
        "supernodes/sn1.pub",
    ]
    assert main(["deploy", "superlink", str(tmp_path), "--print"]) == 0
    assert "--enable-supernode-auth" in capsys.readouterr().out


def test_cli_run_resume_passes_the_run_folder_and_nothing_else(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "smoke"
    assert main(["deploy", "run", str(tmp_path), "--resume", str(run_dir), "--print"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.endswith(f"--run-config 'resume=\"{run_dir}\"'")
    assert main(["deploy", "run", str(tmp_path), "configs/smoke.toml", "--resume", str(run_dir), "--print"]) == 2
    assert "no CONFIG, --set or --output-dir" in capsys.readouterr().err
    assert main(["deploy", "run", str(tmp_path), "configs/smoke.toml", "--print"]) == 2
    assert "--output-dir" in capsys.readouterr().err


def test_cli_worker_and_supernode_worker_name_the_same_socket(tmp_path, capsys):
    creds = deploy.Credentials(tmp_path)
    assert main(["deploy", "worker", str(tmp_path), "1", "--print"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(f"-m clients.worker {creds.worker_socket(1)}")
    argv = ["deploy", "supernode", str(tmp_path), "1", "--superlink", "10.0.0.1:8000", "--data-path", str(tmp_path)]
    assert main([*argv, "--num-partitions", "2", "--worker", "--print"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f'worker="{creds.worker_socket(1)}"' in line and "partition-id=1" in line
