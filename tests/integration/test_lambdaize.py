"""mu lambdaize: executable checks, the zip, and deployment (moto mock, moto server, aws CLI).

Binaries are compiled here with gcc (a static one, a dynamic one, and a dynamic one needing
a private shared library found through its RUNPATH).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

import mu
from mu.cli import main
from mu.errors import ConfigError
from mu.lambdaize import (
    LambdaizeOptions,
    build_bundle,
    env_defaults,
    function_name,
    handler_source,
    inspect_executable,
    lambdaize,
)

POST_ARGS = "-i -d -o ##OUTFILE## ##INFILE##"


def _handler_missing() -> bool:
    try:
        handler_source()
    except ConfigError:
        return True
    return False


needs_handler = pytest.mark.skipif(
    _handler_missing(), reason="the worker's lambda_function.py is not there yet"
)


# -------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """hello_static, hello_dynamic, and uses_lib (+ libmuhello.so beside it)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("bin")
    (out / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("hi");return 0;}\n')
    (out / "lib.c").write_text("int muhello(void){return 42;}\n")
    (out / "uses.c").write_text("int muhello(void);\nint main(void){return muhello()-42;}\n")

    def cc(*args: str) -> None:
        subprocess.run(["gcc", *args], cwd=out, check=True, capture_output=True)

    cc("-static", "-O1", "-o", "hello_static", "hello.c")
    cc("-O1", "-o", "hello_dynamic", "hello.c")
    cc("-shared", "-fPIC", "-o", "libmuhello.so", "lib.c")
    cc("-o", "uses_lib", "uses.c", "-L.", "-lmuhello", "-Wl,-rpath,$ORIGIN")
    return {p.name: p for p in out.iterdir()}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in (
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "MEM_SIZE",
        "TIMEOUT",
        "AWS_ROLE",
        "SKIP_UPLOAD",
        "ALLOW_LD",
        "REGION",
    ):
        monkeypatch.delenv(var, raising=False)


def members(zip_bytes: bytes) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        return {info.filename: info for info in zf.infolist()}


def mode_of(info: zipfile.ZipInfo) -> int:
    return (info.external_attr >> 16) & 0o777


def read(zip_bytes: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        return zf.read(name)


# -------------------------------------------------------------------------------- refusals


def test_missing_executable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        inspect_executable(tmp_path / "nope")


def test_not_executable(tmp_path: Path, binaries: dict[str, Path]) -> None:
    copy = tmp_path / "hello"
    shutil.copy(binaries["hello_static"], copy)
    copy.chmod(0o644)
    with pytest.raises(ConfigError, match="not executable"):
        inspect_executable(copy)


def test_not_elf_and_no_shebang(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"MZ\x90\x00 not a program")
    blob.chmod(0o755)
    with pytest.raises(ConfigError, match="neither an ELF executable nor a script"):
        inspect_executable(blob)


@pytest.mark.parametrize("line", ["#!/usr/bin/perl", "#!/usr/bin/env ruby", "#!"])
def test_script_with_unavailable_interpreter(tmp_path: Path, line: str) -> None:
    script = tmp_path / "job.sh"
    script.write_text(f"{line}\necho hi\n")
    script.chmod(0o755)
    with pytest.raises(ConfigError, match=r"#! line|Lambda's runtime does not provide"):
        inspect_executable(script)


@pytest.mark.parametrize("line", ["#!/bin/sh", "#!/bin/bash -e", "#!/usr/bin/env python3"])
def test_script_with_available_interpreter(tmp_path: Path, line: str) -> None:
    script = tmp_path / "job"
    script.write_text(f"{line}\necho hi\n")
    script.chmod(0o755)
    info = inspect_executable(script)
    assert info.kind == "script" and info.architecture == "x86_64" and not info.dynamic


def test_dynamic_refused_with_2016_advice(binaries: dict[str, Path]) -> None:
    with pytest.raises(ConfigError) as info:
        inspect_executable(binaries["hello_dynamic"])
    message = str(info.value)
    assert "dynamically linked" in message
    assert "build it statically (e.g. make STATIC=1)" in message
    assert "--allow-dynamic" in message


def test_static_elf(binaries: dict[str, Path]) -> None:
    info = inspect_executable(binaries["hello_static"])
    assert (info.kind, info.architecture, info.dynamic) == ("elf", "x86_64", False)


@pytest.mark.parametrize(
    ("machine", "arch"), [(0xB7, "arm64"), (0x28, None), (0x03, None)]
)  # EM_AARCH64, EM_ARM, EM_386
def test_elf_machine_picks_architecture(
    tmp_path: Path, binaries: dict[str, Path], machine: int, arch: str | None
) -> None:
    data = bytearray(binaries["hello_static"].read_bytes())
    data[18:20] = machine.to_bytes(2, "little")  # e_machine
    patched = tmp_path / "patched"
    patched.write_bytes(bytes(data))
    patched.chmod(0o755)
    if arch is None:
        with pytest.raises(ConfigError, match="Lambda runs EM_X86_64"):
            inspect_executable(patched)
    else:
        assert inspect_executable(patched).architecture == arch


def test_env_defaults() -> None:
    env = {
        "MEM_SIZE": "1024",
        "TIMEOUT": "60",
        "AWS_ROLE": "arn:r",
        "SKIP_UPLOAD": "1",
        "ALLOW_LD": "0",
        "REGION": "us-east-1, eu-west-1",
    }
    assert env_defaults(env) == {
        "memory": 1024,
        "timeout": 60,
        "role": "arn:r",
        "skip_upload": True,
        "regions": ("us-east-1", "eu-west-1"),
    }
    with pytest.raises(ConfigError, match="MEM_SIZE='lots'"):
        env_defaults({"MEM_SIZE": "lots"})


def test_function_name(binaries: dict[str, Path]) -> None:
    name = function_name(binaries["hello_static"])
    stem, suffix = name.rsplit("_", 1)
    assert stem == "hello_static" and len(suffix) == 8 and suffix.isalnum()
    assert function_name("x", "given-name") == "given-name"
    with pytest.raises(ConfigError, match="function name"):
        function_name("x", "bad name!")


# -------------------------------------------------------------------------------- the zip


@needs_handler
def test_zip_contents_and_exec_bits(tmp_path: Path, binaries: dict[str, Path]) -> None:
    extra_exec = tmp_path / "helper.sh"
    extra_exec.write_text("#!/bin/sh\n")
    extra_exec.chmod(0o755)
    extra_data = tmp_path / "table.txt"
    extra_data.write_text("data\n")
    bundle = build_bundle(binaries["hello_static"], "", POST_ARGS, [extra_exec, extra_data])
    entries = members(bundle.zip_bytes)
    assert list(entries) == sorted(entries) == list(bundle.entries)
    for required in (
        "lambda_function.py",
        "mu/__init__.py",
        "mu/errors.py",
        "mu/protocol.py",
        "mu_command.json",
        "hello_static",
        "helper.sh",
        "table.txt",
    ):
        assert required in entries
    worker = Path(mu.__file__).parent / "worker"
    for path in worker.rglob("*.py"):
        if "__pycache__" not in path.parts:
            assert f"mu/worker/{path.relative_to(worker).as_posix()}" in entries
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in entries)
    assert not any(name.startswith(("mu/tls", "mu/cli", "backends/")) for name in entries)
    assert mode_of(entries["hello_static"]) == 0o755
    assert mode_of(entries["helper.sh"]) == 0o755
    assert mode_of(entries["table.txt"]) == 0o644
    assert mode_of(entries["lambda_function.py"]) == 0o644
    assert all(stat.S_ISREG(info.external_attr >> 16) for info in entries.values())
    assert json.loads(read(bundle.zip_bytes, "mu_command.json")) == {
        "command": f"./hello_static {POST_ARGS}"
    }
    assert read(bundle.zip_bytes, "lambda_function.py") == handler_source()
    assert read(bundle.zip_bytes, "hello_static") == binaries["hello_static"].read_bytes()
    assert bundle.architecture == "x86_64"


@needs_handler
def test_zip_is_reproducible(tmp_path: Path, binaries: dict[str, Path]) -> None:
    exe = tmp_path / "hello_static"
    shutil.copy(binaries["hello_static"], exe)
    first = build_bundle(exe, "time", POST_ARGS)
    os.utime(exe, (1_000_000_000, 1_000_000_000))
    second = build_bundle(exe, "time", POST_ARGS)
    assert first.zip_bytes == second.zip_bytes
    assert first.code_sha256 == second.code_sha256
    assert json.loads(read(first.zip_bytes, "mu_command.json"))["command"] == (
        f"time ./hello_static {POST_ARGS}"
    )
    assert build_bundle(exe, "", "other").code_sha256 != first.code_sha256


@needs_handler
def test_dynamic_binary_with_allow_dynamic(binaries: dict[str, Path]) -> None:
    bundle = build_bundle(binaries["uses_lib"], "", "-x", allow_dynamic=True)
    entries = members(bundle.zip_bytes)
    assert "solibs/libmuhello.so" in entries
    assert not any(n.startswith("solibs/") and ("libc.so" in n or "ld-linux" in n) for n in entries)
    assert read(bundle.zip_bytes, "solibs/libmuhello.so") == binaries["libmuhello.so"].read_bytes()
    command = json.loads(read(bundle.zip_bytes, "mu_command.json"))["command"]
    assert command == "LD_LIBRARY_PATH=./solibs ./uses_lib -x"
    only_libc = build_bundle(binaries["hello_dynamic"], allow_dynamic=True)
    assert not any(n.startswith("solibs/") for n in members(only_libc.zip_bytes))


@needs_handler
def test_bundle_imports_in_a_fresh_interpreter(tmp_path: Path, binaries: dict[str, Path]) -> None:
    bundle = build_bundle(binaries["hello_static"])
    zpath = tmp_path / "bundle.zip"
    zpath.write_bytes(bundle.zip_bytes)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import lambda_function; "
        "assert callable(lambda_function.lambda_handler); "
        "assert 'mu.tls' not in sys.modules and 'OpenSSL' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(zpath)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_duplicate_names_refused(tmp_path: Path, binaries: dict[str, Path]) -> None:
    if _handler_missing():
        pytest.skip("the worker's lambda_function.py is not there yet")
    clash = tmp_path / "mu_command.json"
    clash.write_text("{}")
    with pytest.raises(ConfigError, match="would overwrite"):
        build_bundle(binaries["hello_static"], extra_files=[clash])
    with pytest.raises(ConfigError, match="extra file"):
        build_bundle(binaries["hello_static"], extra_files=[tmp_path / "absent"])


# -------------------------------------------------------------------------------- deploying


@needs_handler
@pytest.mark.usefixtures("aws_env", "fresh_cwd")
def test_deploy_with_moto_checks_every_parameter(
    binaries: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MEM_SIZE", "1024")
    monkeypatch.setenv("TIMEOUT", "60")
    monkeypatch.setenv("REGION", "us-east-1,eu-west-1")
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        role = iam.create_role(RoleName="mu-exec", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        monkeypatch.setenv("AWS_ROLE", role)
        exe = str(binaries["hello_static"])
        assert main(["lambdaize", exe, "", POST_ARGS, "--name", "hello_ab12cd34"]) == 0
        out = capsys.readouterr().out
        decoder = json.JSONDecoder()
        docs, pos = [], 0
        while pos < len(out.strip()):
            doc, end = decoder.raw_decode(out, pos)
            docs.append(doc)
            pos = end + 1
        assert [d["FunctionArn"].split(":")[3] for d in docs] == ["us-east-1", "eu-west-1"]
        zip_bytes = Path("hello_ab12cd34.zip").read_bytes()
        for region in ("us-east-1", "eu-west-1"):
            client = boto3.client("lambda", region_name=region)
            conf = client.get_function_configuration(FunctionName="hello_ab12cd34")
            assert conf["Runtime"] == "python3.12"
            assert conf["Role"] == role
            assert conf["Handler"] == "lambda_function.lambda_handler"
            assert conf["MemorySize"] == 1024
            assert conf["Timeout"] == 60
            assert conf["Architectures"] == ["x86_64"]
            assert conf["Description"] == "hello_static"
            assert conf["Version"] == "$LATEST"
            assert conf["CodeSha256"] == build_bundle(exe, "", POST_ARGS).code_sha256
            versions = client.list_versions_by_function(FunctionName="hello_ab12cd34")
            assert [v["Version"] for v in versions["Versions"]] == ["$LATEST", "1"]  # Publish
            invoke_config = client.get_function_event_invoke_config(FunctionName="hello_ab12cd34")
            assert invoke_config["MaximumRetryAttempts"] == 0
            client.close()
        assert len(zip_bytes) > 0

        # Deploying the same bundle again is recognised by its CodeSha256: nothing changes.
        assert (
            main(
                [
                    "lambdaize",
                    exe,
                    "",
                    POST_ARGS,
                    "--name",
                    "hello_ab12cd34",
                    "--region",
                    "us-east-1",
                ]
            )
            == 0
        )
        capsys.readouterr()
        client = boto3.client("lambda", region_name="us-east-1")
        versions = client.list_versions_by_function(FunctionName="hello_ab12cd34")
        assert len(versions["Versions"]) == 2
        # A changed command is a new bundle: new code, new version.
        assert (
            main(
                [
                    "lambdaize",
                    exe,
                    "",
                    "-q -v",
                    "--name",
                    "hello_ab12cd34",
                    "--region",
                    "us-east-1",
                    "--memory",
                    "2048",
                ]
            )
            == 0
        )
        conf = client.get_function_configuration(FunctionName="hello_ab12cd34")
        assert conf["MemorySize"] == 2048
        assert conf["CodeSha256"] == build_bundle(exe, "", "-q -v").code_sha256
        client.close()
        iam.close()


@needs_handler
@pytest.mark.usefixtures("aws_env", "fresh_cwd")
def test_deploy_errors(binaries: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    exe = str(binaries["hello_static"])
    with mock_aws():
        assert main(["lambdaize", exe]) == 2
        assert "AWS_ROLE or pass --role" in capsys.readouterr().err
        role = "arn:aws:iam::123456789012:role/absent"
        assert main(["lambdaize", exe, "--role", role, "--region", "mars-1"]) == 2
        assert "unknown region 'mars-1'" in capsys.readouterr().err
        assert main(["lambdaize", exe, "--role", role]) == 1
        err = capsys.readouterr().err
        assert "create function hello_static_" in err and "InvalidParameterValueException" in err
    assert main(["lambdaize", str(binaries["hello_dynamic"]), "--role", role]) == 2
    assert "make STATIC=1" in capsys.readouterr().err


@needs_handler
@pytest.mark.usefixtures("aws_env", "fresh_cwd")
def test_skip_upload_needs_no_backend(
    binaries: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKIP_UPLOAD", "1")
    assert main(["lambdaize", str(binaries["uses_lib"]), "--allow-dynamic", "--name", "u"]) == 0
    assert "not uploaded" in capsys.readouterr().out
    assert "solibs/libmuhello.so" in members(Path("u.zip").read_bytes())
    result = lambdaize(LambdaizeOptions(str(binaries["hello_static"]), skip_upload=True), None)
    assert result.functions == {} and result.zip_path.is_file()


@pytest.fixture
def moto_server(aws_env: None) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@needs_handler
@pytest.mark.usefixtures("fresh_cwd")
def test_aws_cli_sees_the_registered_function(
    moto_server: str, binaries: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    aws = shutil.which("aws")
    if aws is None:
        pytest.skip("the aws CLI is not installed")
    iam = boto3.client("iam", endpoint_url=moto_server, region_name="us-east-1")
    role = iam.create_role(RoleName="mu-exec", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    iam.close()
    argv = [
        "lambdaize",
        str(binaries["hello_static"]),
        "",
        POST_ARGS,
        "--role",
        role,
        "--endpoint-url",
        moto_server,
        "--name",
        "hello_cli12345",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    listed = subprocess.run(
        [
            aws,
            "lambda",
            "list-functions",
            "--endpoint-url",
            moto_server,
            "--region",
            "us-east-1",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    functions = {f["FunctionName"]: f for f in json.loads(listed.stdout)["Functions"]}
    assert functions["hello_cli12345"]["MemorySize"] == 1536
    assert functions["hello_cli12345"]["Timeout"] == 180
    assert (
        functions["hello_cli12345"]["CodeSha256"]
        == build_bundle(binaries["hello_static"], "", POST_ARGS).code_sha256
    )


@needs_handler
@pytest.mark.usefixtures("aws_env", "fresh_cwd")
def test_aws_cli_sees_what_lambdaize_registered_in_the_emulator(
    binaries: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("emulator.server", reason="the emulator package is not there yet")
    aws = shutil.which("aws")
    if aws is None:
        pytest.skip("the aws CLI is not installed")
    from backends.local import LocalLauncher

    with LocalLauncher() as running:
        argv = [
            "lambdaize",
            str(binaries["hello_static"]),
            "",
            POST_ARGS,
            "--backend",
            "local",
            "--endpoint-url",
            running.endpoint_url,
            "--name",
            "hello_emu12345",
        ]
        assert main(argv) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["FunctionName"] == "hello_emu12345"
        listed = subprocess.run(
            [
                aws,
                "lambda",
                "list-functions",
                "--endpoint-url",
                running.endpoint_url,
                "--region",
                "us-east-1",
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        names = [f["FunctionName"] for f in json.loads(listed.stdout)["Functions"]]
        assert "hello_emu12345" in names
        assert running.function_exists("hello_emu12345", "us-east-1")


@needs_handler
def test_several_programs_in_one_bundle(tmp_path: Path, binaries: dict[str, Path]) -> None:
    """``also``: each program is checked and shipped executable; the command names the first;
    programs for two architectures cannot share a function."""
    bundle = build_bundle(binaries["hello_static"], "", POST_ARGS, also=[binaries["uses_lib"]],
                          allow_dynamic=True)
    entries = members(bundle.zip_bytes)
    assert mode_of(entries["hello_static"]) == mode_of(entries["uses_lib"]) == 0o755
    assert "solibs/libmuhello.so" in entries  # the second program's library
    assert json.loads(read(bundle.zip_bytes, "mu_command.json")) == {
        "command": f"./hello_static {POST_ARGS}"
    }
    with pytest.raises(ConfigError, match="dynamically linked"):
        build_bundle(binaries["hello_static"], also=[binaries["uses_lib"]])
    data = bytearray(binaries["hello_static"].read_bytes())
    data[18:20] = (0xB7).to_bytes(2, "little")  # EM_AARCH64
    arm = tmp_path / "arm"
    arm.write_bytes(bytes(data))
    arm.chmod(0o755)
    with pytest.raises(ConfigError, match=r"built for arm64 but .* for x86_64"):
        build_bundle(binaries["hello_static"], also=[arm])
