"""common_kernels.runtime.hub: what a model name means (a local path or a hub id), decided without
I/O
beyond one existence check."""

from __future__ import annotations

from pathlib import Path

import pytest

from common_kernels.runtime.hub import local_or_hub, looks_like_path


@pytest.mark.parametrize(
    ("name", "is_path"),
    [
        ("./model", True), ("../model", True), ("/abs/model", True), ("~/model", True),
        (".", True), (".\\model", True), (Path("model"), True),
        ("owner/model", False), ("model", False), ("org-name/model.v2", False),
    ],
)  # fmt: skip
def test_paths_are_told_from_hub_ids_by_their_form(name, is_path) -> None:
    assert looks_like_path(name) is is_path


def test_an_existing_bare_name_is_local(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_or_hub("weights") == "weights"
    (tmp_path / "weights").mkdir()
    assert looks_like_path("weights")
    assert local_or_hub("weights") == Path("weights")


def test_a_missing_path_is_named_and_never_a_hub_id(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        local_or_hub("./nope_dir")
    assert str(info.value) == f"no model folder ./nope_dir (nothing at {tmp_path / 'nope_dir'})"
    with pytest.raises(FileNotFoundError, match=r"^no pipeline folder ~/x_missing_"):
        local_or_hub("~/x_missing_4921", what="pipeline folder")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "home_model").mkdir()
    assert local_or_hub("~/home_model") == tmp_path / "home_model"
    assert local_or_hub("owner/model") == "owner/model"


def test_check_hub_fails_at_once_offline_and_passes_for_cached_repos(tmp_path, monkeypatch):
    from common_kernels.runtime.hub import HubUnreachableError, check_hub, is_cached

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    connections = []
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: connections.append(a))
    with pytest.raises(HubUnreachableError) as info:
        check_hub("owner/model")
    assert str(info.value) == (
        f"owner/model is not in the local hub cache ({tmp_path}) and HF_HUB_OFFLINE is set, so "
        "the hub is not asked; download it on a machine with network access, or give a local "
        "folder (./DIR)"
    )
    assert isinstance(info.value, OSError) and connections == []
    (tmp_path / "models--owner--model" / "snapshots" / "abc123").mkdir(parents=True)
    assert is_cached("owner/model")
    check_hub("owner/model")  # cached: the libraries load it without the network
    assert connections == []


def test_check_hub_gives_up_after_the_timeout_and_names_the_host(tmp_path, monkeypatch):
    from common_kernels.runtime.hub import HubUnreachableError, check_hub
    from common_kernels.runtime.testing import unreachable_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    asked = unreachable_hub(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org:8443")
    with pytest.raises(
        HubUnreachableError,
        match=r"^cannot reach the Hugging Face hub \(hub\."
        r"example\.org\) for owner/model within 5 s \(TimeoutError: timed out\)",
    ):
        check_hub("owner/model")  # fmt: skip
    assert asked == [(("hub.example.org", 8443), 5.0)]

    class Connection:
        def close(self) -> None:
            asked.append("closed")

    monkeypatch.setattr("socket.create_connection", lambda address, timeout: Connection())
    check_hub("owner/model")
    assert asked[-1] == "closed"


def test_check_hub_bounds_a_name_lookup_that_never_answers(tmp_path, monkeypatch):
    """``socket.create_connection``'s timeout does not cover the name lookup: a resolver that
    never answers must still end in the error after ``timeout`` seconds."""
    import threading

    from common_kernels.runtime.hub import HubUnreachableError, check_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    release = threading.Event()

    def silent_resolver(*args, **kwargs):
        release.wait()  # until the test ends: a lookup with no answer
        raise OSError("released")

    monkeypatch.setattr("socket.getaddrinfo", silent_resolver)
    try:
        with pytest.raises(
            HubUnreachableError,
            match=r"^cannot reach the Hugging Face hub \(huggingface\.co\) for owner/model within "
            r"0\.2 s \(TimeoutError: no answer, name lookup included\)",
        ):
            check_hub("owner/model", timeout=0.2)
    finally:
        release.set()


def test_a_name_that_is_neither_a_path_a_known_name_nor_a_hub_id_is_unknown(
    tmp_path: Path, monkeypatch
) -> None:
    from common_kernels.runtime.errors import InvalidArgument
    from common_kernels.runtime.hub import resolve_model_name

    monkeypatch.chdir(tmp_path)
    assert resolve_model_name("owner/name") == "owner/name"
    assert resolve_model_name("sd15", known=["sd15", "sdxl"]) == "sd15"
    (tmp_path / "folder").mkdir()
    assert resolve_model_name("./folder") == Path("./folder")
    with pytest.raises(InvalidArgument) as error:
        resolve_model_name("no_such_model", known=["sd15", "sdxl"])
    assert error.value.argument == "model"
    assert error.value.message == (
        "unknown model 'no_such_model': known names: sd15, sdxl; a local folder starts with ./ "
        "or / (or exists), a hub id is owner/name"
    )
    for bad in ("a/b/c", "/owner", "-x/y"):
        with pytest.raises((InvalidArgument, FileNotFoundError)):
            resolve_model_name(bad)


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", True),
        ("a/b", True),
        ("Org_1/model.v2_x", True),
        (f"{'o' * 96}/{'n' * 96}", True),
        (f"{'o' * 97}/name", False),  # longer than the hub's 96 characters
        ("org/a--b", False),
        ("org/bad..name", False),
        ("org/model.git", False),
        ("org/name-", False),
        ("org/name.", False),
        ("-org/name", False),
        (".org/name", False),
        ("org/na me", False),
        ("name", False),
        ("a/b/c", False),
    ],
)
def test_one_rule_for_a_hub_id(name: str, accepted: bool) -> None:
    from common_kernels.runtime.hub import is_hub_id

    assert is_hub_id(name) is accepted


REFUSED_BY_THE_HUB = ("org/a--b", "org/bad..name", "org/x.git", "org/x-", f"{'o' * 97}/x")


def test_the_hub_itself_refuses_those_ids() -> None:
    """The ids below are refused by huggingface_hub's own check (where it is installed: the
    method packages depend on it, common-kernels does not)."""
    errors = pytest.importorskip("huggingface_hub.errors")
    from huggingface_hub.utils import validate_repo_id

    for name in REFUSED_BY_THE_HUB:
        with pytest.raises(errors.HFValidationError):
            validate_repo_id(name)


def test_a_hub_id_the_hub_would_refuse_is_an_unknown_model() -> None:
    from common_kernels.runtime.errors import InvalidArgument
    from common_kernels.runtime.hub import is_hub_id, resolve_model_name

    for name in REFUSED_BY_THE_HUB:
        assert not is_hub_id(name)
        with pytest.raises(InvalidArgument) as error:
            resolve_model_name(name, argument="vae")
        assert str(error.value) == (
            f"vae: unknown model {name!r}: a local folder starts with ./ or / (or exists), a hub "
            "id is owner/name"
        )


def test_resolve_source_names_its_argument(tmp_path: Path, monkeypatch) -> None:
    from common_kernels.runtime.errors import InvalidArgument, MissingPath
    from common_kernels.runtime.hub import resolve_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "vae").mkdir()
    assert resolve_source("./vae", "vae") == Path("./vae")
    assert resolve_source("owner/vae", "vae") == "owner/vae"
    assert resolve_source("tiny", "model", known=["tiny"]) == "tiny"
    with pytest.raises(MissingPath) as missing:
        resolve_source("./no_{vae}", "vae", what="VAE folder")
    assert isinstance(missing.value, FileNotFoundError) and missing.value.argument == "vae"
    assert (
        str(missing.value) == f"vae: no VAE folder ./no_{{vae}} (nothing at {tmp_path}/no_{{vae}})"
    )
    assert missing.value.for_flags({"vae": "--vae"}).startswith("--vae: no VAE folder ./no_{vae}")
    with pytest.raises(InvalidArgument) as unknown:
        resolve_source("no_such_model", "model_id")
    assert unknown.value.argument == "model_id" and not isinstance(unknown.value, MissingPath)
