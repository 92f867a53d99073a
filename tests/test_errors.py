"""The error tree is by meaning: every error is one of four kinds, and each kind's HTTP status
follows from it (tests/README.md: a rule of one module, no server)."""

from __future__ import annotations

import inspect

import pytest

from rerankd import errors
from rerankd.errors import ClientError, InternalError, RerankdError, StartupError, Unavailable

KINDS = (ClientError, Unavailable, InternalError, StartupError)
LEAVES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, RerankdError) and cls not in (RerankdError, *KINDS)
]


def test_every_error_is_exported() -> None:
    assert {cls.__name__ for cls in LEAVES} | {k.__name__ for k in KINDS} | {"RerankdError"} == set(
        errors.__all__
    )


@pytest.mark.parametrize("cls", LEAVES, ids=lambda c: c.__name__)
def test_every_error_is_of_exactly_one_kind(cls: type[RerankdError]) -> None:
    assert [k for k in KINDS if issubclass(cls, k)] != []
    assert len([k for k in KINDS if issubclass(cls, k)]) == 1


@pytest.mark.parametrize("cls", LEAVES, ids=lambda c: c.__name__)
def test_the_kind_decides_the_status(cls: type[RerankdError]) -> None:
    exc = cls()
    if issubclass(cls, ClientError):
        assert 400 <= exc.status_code < 500
    elif issubclass(cls, Unavailable):
        # A client is always told when to come back.
        assert exc.status_code == 503
        assert exc.retry_after is not None
        assert exc.retry_after > 0
    else:
        assert exc.status_code == 500


def test_unavailable_errors_are_siblings_not_kinds_of_overload() -> None:
    # Catching Overloaded (a full queue) must not also catch a down key store or a deadline.
    for cls in (errors.Timeout, errors.NotReady, errors.EngineUnavailable, errors.KeyStoreUnavailable):
        assert not issubclass(cls, errors.Overloaded)
        assert issubclass(cls, Unavailable)
