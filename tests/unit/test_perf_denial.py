"""What rsprof says when perf_event_open is denied: the cause that applies, only."""

from __future__ import annotations

import errno

from rsprof.recording.perf_session import explain_denial

EACCES = OSError(errno.EACCES, "Permission denied")
EPERM = OSError(errno.EPERM, "Operation not permitted")


def test_paranoid_above_two_is_named_for_an_unprivileged_user() -> None:
    text = explain_denial(EACCES, 42, "3", privileged=False, target_uid=1000, our_uid=1000)
    assert "kernel.perf_event_paranoid=3" in text
    assert "CAP_PERFMON" in text and "seccomp" not in text


def test_paranoid_is_not_blamed_when_it_allows_the_event() -> None:
    for paranoid in ("-1", "0", "1", "2"):
        text = explain_denial(EACCES, 42, paranoid, privileged=False, target_uid=1000,
                              our_uid=1000)
        assert text.startswith("perf_event_open returned EACCES for pid 42"), text
        assert f"kernel.perf_event_paranoid={paranoid} allows it for this user" in text
        assert "seccomp" in text and "lower it" not in text


def test_privileged_caller_is_never_told_about_paranoid() -> None:
    text = explain_denial(EPERM, 7, "4", privileged=True, target_uid=0, our_uid=0)
    assert text.startswith("perf_event_open returned EPERM for pid 7")
    assert "CAP_PERFMON or CAP_SYS_ADMIN" in text and "seccomp" in text
    assert "paranoid=4" not in text


def test_another_users_process() -> None:
    text = explain_denial(EACCES, 9, "2", privileged=False, target_uid=0, our_uid=1000)
    assert "belongs to another user" in text and "paranoid" not in text


def test_unreadable_paranoid() -> None:
    text = explain_denial(EACCES, 9, "unknown", privileged=False, target_uid=5, our_uid=5)
    assert "could not be read" in text
