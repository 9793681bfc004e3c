"""Kubeconfig lookup order and the one-line errors for missing or bad kubeconfigs."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from ipvslb.endpoints import kubeconfig
from ipvslb.errors import UserError


def write(path: Path, server: str = "https://10.0.0.1:6443", **extra: object) -> str:
    document: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    document.update(extra)
    path.write_text(json.dumps(document))
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {
        name: write(tmp_path / f"{name}.conf") for name in ("explicit", "env", "k0s", "kubeadm")
    }


def well_known(files: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return ((files["k0s"], "k0s"), (files["kubeadm"], "kubeadm"))


def test_explicit_path_wins(files: dict[str, str]) -> None:
    found = kubeconfig.find(files["explicit"], environ={"KUBECONFIG": files["env"]},
                            well_known=well_known(files))
    assert found.paths == (files["explicit"],)
    assert found.origin == "--kubeconfig"


def test_kubeconfig_variable_before_well_known_files(files: dict[str, str]) -> None:
    found = kubeconfig.find(None, environ={"KUBECONFIG": files["env"]},
                            well_known=well_known(files))
    assert found.paths == (files["env"],)
    assert found.origin == "from KUBECONFIG"


def test_kubeconfig_variable_keeps_the_existing_entries_of_a_list(
    files: dict[str, str], tmp_path: Path
) -> None:
    value = f"{tmp_path / 'absent'}:{files['env']}::{files['explicit']}"
    found = kubeconfig.find(None, environ={"KUBECONFIG": value}, well_known=well_known(files))
    assert found.paths == (files["env"], files["explicit"])


def test_k0s_before_kubeadm(files: dict[str, str]) -> None:
    found = kubeconfig.find(None, environ={}, well_known=well_known(files))
    assert found.paths == (files["k0s"],)


def test_kubeadm_when_k0s_is_absent(files: dict[str, str], tmp_path: Path) -> None:
    candidates = ((str(tmp_path / "no-k0s"), "k0s"), (files["kubeadm"], "kubeadm"))
    found = kubeconfig.find(None, environ={}, well_known=candidates)
    assert found.paths == (files["kubeadm"],)
    assert found.origin == "kubeadm"


def test_real_well_known_paths_are_k0s_then_kubeadm() -> None:
    assert [path for path, _ in kubeconfig.WELL_KNOWN] == [
        "/var/lib/k0s/pki/admin.conf", "/etc/kubernetes/admin.conf",
    ]


def one_line_error(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    message = excinfo.value.message
    assert "\n" not in message
    return message


def test_nothing_found(tmp_path: Path) -> None:
    candidates = ((str(tmp_path / "a"), "k0s"), (str(tmp_path / "b"), "kubeadm"))
    with pytest.raises(UserError) as excinfo:
        kubeconfig.find(None, environ={}, well_known=candidates)
    message = one_line_error(excinfo)
    assert str(tmp_path / "a") in message and str(tmp_path / "b") in message
    assert "--kubeconfig" in message


def test_missing_explicit_file_names_it(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.conf")
    with pytest.raises(UserError) as excinfo:
        kubeconfig.find(path, explicit_origin="node.kubeconfig")
    assert one_line_error(excinfo) == f"kubeconfig {path} (node.kubeconfig): no such file"


def test_missing_kubeconfig_variable_file_is_an_error_not_a_fallthrough(
    files: dict[str, str], tmp_path: Path
) -> None:
    path = str(tmp_path / "nope.conf")
    with pytest.raises(UserError) as excinfo:
        kubeconfig.find(None, environ={"KUBECONFIG": path}, well_known=well_known(files))
    assert path in one_line_error(excinfo) and "KUBECONFIG" in excinfo.value.message


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory"):
        kubeconfig.find(str(tmp_path))


def load_error(path: str) -> str:
    with pytest.raises(UserError) as excinfo:
        kubeconfig.load(kubeconfig.Kubeconfig((path,), "--kubeconfig"))
    message = one_line_error(excinfo)
    assert message.startswith(f"kubeconfig {path} (--kubeconfig): ")
    return message.removeprefix(f"kubeconfig {path} (--kubeconfig): ")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("apiVersion: v1\nclusters: [\n  - {name: a\n")
    assert load_error(str(path)).startswith("not valid YAML at line")


def test_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.conf"
    path.write_text("- a\n- b\n")
    assert "expected a kubeconfig mapping" in load_error(str(path))


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.conf"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    assert load_error(str(path)) == "not a text file"


def test_no_clusters(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.conf", clusters=[])
    assert load_error(path) == "no clusters defined"


def test_unknown_current_context(tmp_path: Path) -> None:
    path = write(tmp_path / "ctx.conf", **{"current-context": "elsewhere"})
    assert "elsewhere" in load_error(path)


def test_missing_certificate_authority_file(tmp_path: Path) -> None:
    clusters = [{"name": "c", "cluster": {
        "server": "https://10.0.0.1:6443", "certificate-authority": str(tmp_path / "ca.crt"),
    }}]
    path = write(tmp_path / "ca.conf", clusters=clusters)
    assert str(tmp_path / "ca.crt") in load_error(path)


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    directory = tmp_path_factory.mktemp("ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca"],
                   cwd=directory, check=True, capture_output=True)
    return (directory / "ca.crt").read_bytes()


def with_ca(tmp_path: Path, name: str, ca: bytes) -> str:
    clusters = [{"name": "c", "cluster": {
        "server": "https://10.0.0.1:6443",
        "certificate-authority-data": base64.b64encode(ca).decode(),
    }}]
    return write(tmp_path / name, clusters=clusters)


def test_certificate_authority_data_that_is_not_a_certificate(tmp_path: Path) -> None:
    path = with_ca(tmp_path, "badca.conf", b"hello")
    assert load_error(path) == "the cluster's certificate-authority is not a PEM certificate"


def test_client_certificate_that_is_not_a_certificate(tmp_path: Path, ca_pem: bytes) -> None:
    users = [{"name": "u", "user": {
        "client-certificate-data": base64.b64encode(b"nope").decode(),
        "client-key-data": base64.b64encode(b"nope").decode(),
    }}]
    path = write(tmp_path / "badcert.conf", users=users)
    assert "client-certificate and client-key" in load_error(path)


def test_good_kubeconfig_loads_with_token_and_ca(tmp_path: Path, ca_pem: bytes) -> None:
    path = with_ca(tmp_path, "good.conf", ca_pem)
    client = kubeconfig.load(kubeconfig.Kubeconfig((path,), "--kubeconfig"))
    assert client.configuration.host == "https://10.0.0.1:6443"
    assert client.configuration.auth_settings()["BearerToken"]["value"] == "Bearer t"
    assert Path(client.configuration.ssl_ca_cert).read_bytes() == ca_pem


def test_the_kubernetes_source_fails_to_start_on_a_bad_kubeconfig(tmp_path: Path) -> None:
    from ipvslb.endpoints.kube import KubernetesSource

    path = tmp_path / "broken.conf"
    path.write_text("clusters: [\n")
    source = KubernetesSource(kubeconfig=str(path))
    with pytest.raises(UserError) as excinfo:
        source.start(lambda backends: None)
    assert one_line_error(excinfo).startswith(
        f"kubeconfig {path} (node.kubeconfig): not valid YAML at line"
    )
    source.stop()  # harmless: nothing was started
