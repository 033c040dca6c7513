"""The API's proto names follow buf's STANDARD lint rules, checked on the descriptors.

``make buf-lint`` runs buf itself where it is installed; this test enforces the rules the
API relies on everywhere, without buf: enum values prefixed with their enum and a zero
value ``*_UNSPECIFIED``, one ``<Rpc>Request``/``<Rpc>Response`` per RPC used by no other,
lower_snake_case fields, a versioned package that matches its directory, services named
``*Service``. The notary proto is the one exception: it keeps notary-signer's names and
numbers exactly (notary-server's generated client depends on them), as buf.yaml says too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# notary-signer's wire interface: never renamed (see protos/signer/notary/signer.proto)
EXCEPTED = {"signer/notary/signer.proto"}

LOWER_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
PASCAL = re.compile(r"^[A-Z][A-Za-z0-9]*$")
UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
VERSION = re.compile(r"^v\d+((alpha|beta)\d*)?$")


def upper_snake(name: str) -> str:
    """``SignatureRequestState`` -> ``SIGNATURE_REQUEST_STATE`` (buf's enum prefix)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))


def descriptors(tmp_path: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    """Every proto under protos/, compiled from source by protoc (grpc_tools)."""
    out = tmp_path / "set.pb"
    subprocess.run(
        [
            *(sys.executable, "-m", "grpc_tools.protoc"),
            *(f"-I{PROTOS}", f"--descriptor_set_out={out}"),
            *proto_files(),
        ],
        check=True,
        capture_output=True,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return [f for f in files if f.name in proto_files()]


def messages(
    prefix: str, found: list[descriptor_pb2.DescriptorProto]
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for message in found:
        name = f"{prefix}.{message.name}"
        yield name, message
        yield from messages(name, list(message.nested_type))


def enums(file: descriptor_pb2.FileDescriptorProto) -> Iterator[descriptor_pb2.EnumDescriptorProto]:
    yield from file.enum_type
    for _, message in messages(file.package, list(file.message_type)):
        yield from message.enum_type


def problems(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """What buf's STANDARD rules (the ones named in the module docstring) say of ``file``."""
    found: list[str] = []
    parts = file.package.split(".")
    if not all(LOWER_SNAKE.match(p) for p in parts):
        found.append(f"package {file.package!r} is not lower_snake_case")
    if len(parts) < 2 or not VERSION.match(parts[-1]):
        found.append(f"package {file.package!r} does not end in a version (v1, v2beta1, ...)")
    if str(Path(file.name).parent) != "/".join(parts):
        found.append(f"package {file.package!r} does not match the directory of {file.name}")
    for enum in enums(file):
        prefix = upper_snake(enum.name) + "_"
        if not enum.value or enum.value[0].number != 0:
            found.append(f"enum {enum.name}: the first value must be 0")
        elif enum.value[0].name != prefix + "UNSPECIFIED":
            found.append(f"enum {enum.name}: the zero value must be {prefix}UNSPECIFIED")
        for value in enum.value:
            if not value.name.startswith(prefix) or not UPPER_SNAKE.match(value.name):
                found.append(f"enum value {value.name} should be prefixed with {prefix}")
    for name, message in messages(file.package, list(file.message_type)):
        if not PASCAL.match(message.name):
            found.append(f"message {name} is not PascalCase")
        for field in message.field:
            if not LOWER_SNAKE.match(field.name):
                found.append(f"field {name}.{field.name} is not lower_snake_case")
    used: dict[str, str] = {}
    for service in file.service:
        if not service.name.endswith("Service") or not PASCAL.match(service.name):
            found.append(f"service {service.name} should be PascalCase and end in Service")
        for method in service.method:
            rpc = f"{service.name}.{method.name}"
            if not PASCAL.match(method.name):
                found.append(f"rpc {rpc} is not PascalCase")
            for type_name, suffix in (
                (method.input_type, "Request"),
                (method.output_type, "Response"),
            ):
                short = type_name.rsplit(".", 1)[-1]
                allowed = {method.name + suffix, service.name + method.name + suffix}
                if type_name.lstrip(".").rsplit(".", 1)[0] != file.package or short not in allowed:
                    found.append(
                        f"rpc {rpc}: {suffix.lower()} type {short} should be {method.name}{suffix}"
                    )
                if type_name in used:
                    found.append(f"rpc {rpc}: {short} is also the {used[type_name]}")
                used[type_name] = f"{suffix.lower()} of {rpc}"
    return found


def test_the_api_protos_pass_the_standard_rules(tmp_path: Path) -> None:
    files = descriptors(tmp_path)
    checked = [f for f in files if f.name not in EXCEPTED]
    assert {f.package for f in checked} >= {"signer_api.v1"}
    assert {f.name: problems(f) for f in checked} == {f.name: [] for f in checked}


def test_the_notary_proto_is_the_one_exception_and_keeps_notarys_names(tmp_path: Path) -> None:
    """Excepted explicitly (here and in buf.yaml), and the rules would indeed flag it: the
    exception is needed, not a leftover."""
    by_name = {f.name: f for f in descriptors(tmp_path)}
    assert set(EXCEPTED) <= set(by_name)
    notary = by_name["signer/notary/signer.proto"]
    assert notary.package == "proto"  # notary's package: its method paths are /proto.Signer/...
    assert problems(notary)
    buf_yaml = (ROOT / "buf.yaml").read_text()
    for name in EXCEPTED:
        assert f"protos/{name}" in buf_yaml


def test_the_checker_catches_what_buf_would() -> None:
    """The rules above refuse the names signer.v1 had before (so they can fail in CI)."""
    file = descriptor_pb2.FileDescriptorProto(name="signer/v1/old.proto", package="signer.v1")
    enum = file.enum_type.add(name="KeyState")
    enum.value.add(name="KEY_STATE_UNSPECIFIED", number=0)
    enum.value.add(name="ACTIVE", number=1)
    key = file.message_type.add(name="Key")
    key.field.add(name="keyId", number=1)
    file.message_type.add(name="GetKeyRequest")
    service = file.service.add(name="KeyService")
    service.method.add(
        name="GetKey", input_type=".signer.v1.GetKeyRequest", output_type=".signer.v1.Key"
    )
    service.method.add(
        name="RetireKey", input_type=".signer.v1.GetKeyRequest", output_type=".signer.v1.Key"
    )
    found = "\n".join(problems(file))
    assert "ACTIVE should be prefixed with KEY_STATE_" in found
    assert "Key.keyId is not lower_snake_case" in found
    assert "response type Key should be GetKeyResponse" in found
    assert "GetKeyRequest is also the request of KeyService.GetKey" in found
    assert problems(descriptor_pb2.FileDescriptorProto(name="a/b.proto", package="a")) == [
        "package 'a' does not end in a version (v1, v2beta1, ...)",
    ]


def buf() -> str | None:
    local = ROOT / ".venv" / "buf" / "node_modules" / ".bin" / "buf"
    return shutil.which("buf") or (str(local) if local.exists() else None)


@pytest.mark.skipif(buf() is None, reason="buf is not installed (make deps installs it with npm)")
def test_buf_lint_passes() -> None:
    result = subprocess.run([buf() or "buf", "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
