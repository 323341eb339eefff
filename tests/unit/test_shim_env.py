"""rsprof.shim.child_env: the environment of a program `rsprof run` launches, as a
one-file (PyInstaller) build must give it (no frozen build needed: frozen= is passed)."""

from __future__ import annotations

from rsprof.shim import child_env

BUNDLE = "/tmp/_MEI12345abcdef"

# What the bootloader leaves in the frozen process's environment (PyInstaller 6).
FROZEN_EXTRA = {
    "_PYI_ARCHIVE_FILE": "/usr/local/bin/rsprof",
    "_PYI_APPLICATION_HOME_DIR": BUNDLE,
    "_PYI_PARENT_PROCESS_LEVEL": "0",
    "_PYI_LINUX_PROCESS_NAME": "rsprof",
    "_MEIPASS2": BUNDLE,
}


def test_frozen_restores_the_users_library_path() -> None:
    base = {"PATH": "/usr/bin", "HOME": "/home/u", "LD_LIBRARY_PATH": f"{BUNDLE}:/opt/lib",
            "LD_LIBRARY_PATH_ORIG": "/opt/lib", **FROZEN_EXTRA}
    assert child_env(base, frozen=True) == {"PATH": "/usr/bin", "HOME": "/home/u",
                                            "LD_LIBRARY_PATH": "/opt/lib"}


def test_frozen_removes_the_library_path_the_user_did_not_have() -> None:
    base = {"PATH": "/usr/bin", "LD_LIBRARY_PATH": BUNDLE, **FROZEN_EXTRA}
    assert child_env(base, frozen=True) == {"PATH": "/usr/bin"}


def test_frozen_keeps_an_empty_library_path() -> None:
    base = {"LD_LIBRARY_PATH": f"{BUNDLE}:", "LD_LIBRARY_PATH_ORIG": ""}
    assert child_env(base, frozen=True) == {"LD_LIBRARY_PATH": ""}


def test_frozen_keeps_everything_else() -> None:
    base = {"LD_PRELOAD": "/usr/lib/libfoo.so", "RUST_LOG": "debug", "PYI_USER_VAR": "x",
            "LD_LIBRARY_PATH": BUNDLE}
    env = child_env(base, frozen=True)
    assert env == {"LD_PRELOAD": "/usr/lib/libfoo.so", "RUST_LOG": "debug",
                   "PYI_USER_VAR": "x"}


def test_not_frozen_is_a_copy() -> None:
    base = {"LD_LIBRARY_PATH": "/opt/lib", "LD_LIBRARY_PATH_ORIG": "/x", "_PYI_X": "1"}
    env = child_env(base, frozen=False)
    assert env == base
    env["NEW"] = "1"
    assert "NEW" not in base


def test_default_follows_sys_frozen(monkeypatch) -> None:
    import sys

    base = {"LD_LIBRARY_PATH": BUNDLE}
    monkeypatch.delattr(sys, "frozen", raising=False)
    assert child_env(base) == base
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert child_env(base) == {}


# -- the shim a one-file rsprof preloads: a copy that outlives the unpacked bundle --


def test_lasting_copy_is_named_by_content(tmp_path) -> None:
    from rsprof.shim import SHIM_NAME, lasting_copy

    bundled = tmp_path / "_MEI1" / "rsprof" / SHIM_NAME
    bundled.parent.mkdir(parents=True)
    bundled.write_bytes(b"\x7fELF shim v1")
    cache = tmp_path / "cache"
    copy = lasting_copy(bundled, cache)
    assert copy.parent.parent == cache and copy.name == SHIM_NAME
    assert copy.read_bytes() == b"\x7fELF shim v1"
    assert copy.stat().st_mode & 0o777 == 0o755
    bundled.unlink()  # rsprof exited: the bundle is gone, the copy stays
    assert copy.is_file()

    again = tmp_path / "_MEI2" / "rsprof" / SHIM_NAME
    again.parent.mkdir(parents=True)
    again.write_bytes(b"\x7fELF shim v1")
    assert lasting_copy(again, cache) == copy  # the same build: the same file

    other = tmp_path / "_MEI3" / "rsprof" / SHIM_NAME
    other.parent.mkdir(parents=True)
    other.write_bytes(b"\x7fELF shim v2")
    newer = lasting_copy(other, cache)
    assert newer != copy and newer.read_bytes() == b"\x7fELF shim v2"
    assert copy.read_bytes() == b"\x7fELF shim v1"  # a running program may still use it


def test_lasting_copy_repairs_a_damaged_copy(tmp_path) -> None:
    from rsprof.shim import SHIM_NAME, lasting_copy

    bundled = tmp_path / "b" / SHIM_NAME
    bundled.parent.mkdir()
    bundled.write_bytes(b"\x7fELF shim")
    copy = lasting_copy(bundled, tmp_path / "cache")
    copy.write_bytes(b"\x7fELF sh")  # truncated
    assert lasting_copy(bundled, tmp_path / "cache") == copy
    assert copy.read_bytes() == b"\x7fELF shim"


def test_lasting_copy_falls_back_to_the_bundle(tmp_path) -> None:
    from rsprof.shim import SHIM_NAME, lasting_copy

    bundled = tmp_path / "b" / SHIM_NAME
    bundled.parent.mkdir()
    bundled.write_bytes(b"\x7fELF shim")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    assert lasting_copy(bundled, blocker / "cache") == bundled


def test_shim_path_when_frozen_is_the_lasting_copy(tmp_path, monkeypatch) -> None:
    import sys

    from rsprof import shim

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    path = shim.shim_path()
    assert path.is_relative_to(tmp_path / "rsprof" / "shim")
    monkeypatch.setattr(sys, "frozen", False)
    assert path.read_bytes() == shim.shim_path().read_bytes()
