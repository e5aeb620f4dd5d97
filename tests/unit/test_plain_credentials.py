"""mu.aws.plain_credentials finds what botocore finds, or leaves it to botocore.

botocore's default credential chain is the referee: for environments and shared files
drawn from the ways users set credentials (plain keys, tokens, partial sets, named
profiles, assume-role, SSO, credential processes, web identity, broken files), whenever
``plain_credentials`` answers, botocore's session resolves the same keys; and the plain
cases (keys in the environment or in the default profile) are answered without botocore.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from unittest import mock

import botocore.session
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mu.aws import AwsSetup, plain_credentials

ENV_CHOICES = {
    "AWS_ACCESS_KEY_ID": ["AKIAENV", ""],
    "AWS_SECRET_ACCESS_KEY": ["envsecret", ""],
    "AWS_SESSION_TOKEN": ["envtoken", ""],
    "AWS_SECURITY_TOKEN": ["envsecurity"],
    "AWS_PROFILE": ["default", "other", "missing"],
    "AWS_DEFAULT_PROFILE": ["other"],
    "AWS_CREDENTIAL_EXPIRATION": ["2099-01-01T00:00:00Z"],
    "AWS_ROLE_ARN": ["arn:aws:iam::123456789012:role/r"],
    "AWS_DEFAULT_REGION": ["eu-west-1"],
}
SETTINGS = {
    "aws_access_key_id": ["AKIAFILE", ""],
    "aws_secret_access_key": ["filesecret"],
    "aws_session_token": ["filetoken", ""],
    "aws_security_token": ["filesecurity"],
    "region": ["us-east-1"],
    "output": ["json"],
    "role_arn": ["arn:aws:iam::123456789012:role/r"],
    "source_profile": ["other"],
    "credential_process": ["/bin/false"],
    "sso_session": ["s"],
    "web_identity_token_file": ["/nonexistent"],
    "s3": ["\n    addressing_style = path"],
}
PLAIN_SETTINGS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                  "aws_security_token", "region", "output"}
PLAIN_ENV = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
             "AWS_SECURITY_TOKEN", "AWS_DEFAULT_REGION"]


@st.composite
def sections(draw: st.DrawFn, config: bool) -> str:
    text = []
    names = ["default", "other"] + (["profile other", "profile default"] if config else [])
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=2))
    if "default" not in chosen and draw(st.booleans()):
        chosen.insert(0, "default")
    for name in chosen:
        plain = draw(st.integers(0, 3)) > 0  # mostly the plain settings, sometimes any
        choices = sorted(k for k in SETTINGS if not plain or k in PLAIN_SETTINGS)
        keys = draw(st.lists(st.sampled_from(choices), unique=True, max_size=4))
        if plain and draw(st.booleans()):
            keys = ["aws_access_key_id", "aws_secret_access_key",
                    *(k for k in keys if k not in ("aws_access_key_id", "aws_secret_access_key"))]
        text.append(f"[{name}]\n" + "".join(
            f"{k} = {draw(st.sampled_from(SETTINGS[k]))}\n" for k in keys))
    if draw(st.integers(0, 19)) == 0:
        text.append(draw(st.sampled_from(["not a section\n", "[default]\nx = 1\n",
                                          "[DEFAULT]\nregion = x\n"])))
    return "".join(text)


def botocores(home: Path, env: dict[str, str]) -> tuple[str, str, str | None] | None:
    with mock.patch.dict(os.environ, env, clear=True):
        found = botocore.session.Session().get_credentials()
    if found is None:
        return None
    frozen = found.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token


def environment(home: Path, extra: dict[str, str]) -> dict[str, str]:
    return {"HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(home / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"), **extra}


@settings(max_examples=1000, deadline=None)  # about one in twelve is answered here
@given(
    env=(st.dictionaries(st.sampled_from(sorted(ENV_CHOICES)), st.just(""), max_size=4)
         | st.dictionaries(st.sampled_from(PLAIN_ENV), st.just(""), max_size=3)
         | st.just({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
         | st.just({})).flatmap(
        lambda chosen: st.fixed_dictionaries(
            {k: st.sampled_from(ENV_CHOICES[k]) for k in chosen})),
    credentials=st.none() | sections(config=False),
    config=st.none() | sections(config=True),
)
def test_whatever_it_answers_botocore_answers_too(
    env: dict[str, str], credentials: str | None, config: str | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        for name, text in (("credentials", credentials), ("config", config)):
            if text is not None:
                (home / name).write_text(text)
        full = environment(home, env)
        with mock.patch.dict(os.environ, full, clear=True):
            ours = plain_credentials()
        event(f"answered: {ours is not None}")
        if ours is not None:
            assert ours == botocores(home, full)


@pytest.mark.parametrize(("env", "credentials", "config", "expected"), [
    ({"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "S"}, None, None, ("A", "S", None)),
    ({"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "S", "AWS_SESSION_TOKEN": "T"},
     "[default]\naws_access_key_id = F\naws_secret_access_key = G\n", None, ("A", "S", "T")),
    ({}, "[default]\naws_access_key_id = F\naws_secret_access_key = G\n"
         "aws_session_token = T\n", "[default]\nregion = eu-west-1\n", ("F", "G", "T")),
    ({}, None, "[default]\naws_access_key_id = C\naws_secret_access_key = D\n", ("C", "D", None)),
])
def test_plain_keys_are_found_without_botocore(
    tmp_path: Path, env: dict[str, str], credentials: str | None, config: str | None,
    expected: tuple[str, str, str | None],
) -> None:
    for name, text in (("credentials", credentials), ("config", config)):
        if text is not None:
            (tmp_path / name).write_text(text)
    full = environment(tmp_path, env)
    with mock.patch.dict(os.environ, full, clear=True):
        assert plain_credentials() == expected
    assert botocores(tmp_path, full) == expected


@pytest.mark.parametrize(("env", "config"), [
    ({"AWS_PROFILE": "default"}, None),
    ({}, "[default]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = other\n"),
    ({}, "[default]\nsso_session = s\n"),
    ({}, "[default]\ncredential_process = /bin/true\n"),
    ({"AWS_ACCESS_KEY_ID": "A"}, None),
    ({}, None),  # nothing here: container or instance credentials, or none
])
def test_anything_else_is_left_to_botocore(
    tmp_path: Path, env: dict[str, str], config: str | None
) -> None:
    if config is not None:  # beside keys that would be read without that setting
        (tmp_path / "credentials").write_text("[default]\naws_access_key_id = F\n"
                                              "aws_secret_access_key = G\n")
        (tmp_path / "config").write_text(config)
    with mock.patch.dict(os.environ, environment(tmp_path, env), clear=True):
        assert plain_credentials() is None


def test_aws_setup_makes_no_boto3_session_for_plain_keys(tmp_path: Path) -> None:
    env = environment(tmp_path, {"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "S"})
    with mock.patch.dict(os.environ, env, clear=True):
        setup = AwsSetup()
        assert setup.credentials == ("A", "S", None)
        assert setup._session is None
        s3 = setup.s3("http://127.0.0.1:9", "us-east-1")
        assert "X-Amz-Credential=A%2F" in s3.generate_presigned_url(
            "head_bucket", Params={"Bucket": "b"})
        assert setup._session is None
        assert setup.session.get_credentials().get_frozen_credentials().access_key == "A"


def test_aws_setup_asks_botocore_otherwise(tmp_path: Path) -> None:
    (tmp_path / "config").write_text("[profile p]\nregion = us-east-1\n")
    (tmp_path / "credentials").write_text("[p]\naws_access_key_id = P\n"
                                          "aws_secret_access_key = Q\n")
    with mock.patch.dict(os.environ, environment(tmp_path, {"AWS_PROFILE": "p"}), clear=True):
        setup = AwsSetup()
        assert setup.credentials == ("P", "Q", None)
        assert setup._session is not None
