"""Every wire error code maps to an SDK exception with the right code and retriable flag."""

from __future__ import annotations

import pytest

from qnode.sdk import errors as e
from qnode.transport.errors import ErrorCode


@pytest.mark.parametrize("code", [c for c in ErrorCode if c is not ErrorCode.NONE])
def test_every_code_maps_to_a_qnode_error(code: ErrorCode) -> None:
    exc = e.error_for(code, "details")
    assert isinstance(exc, e.QnodeError)
    assert exc.code == int(code)
    assert exc.retriable == code.retriable
    assert code.name in str(exc) and "details" in str(exc)


@pytest.mark.parametrize(("code", "cls"), [
    (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, e.UnknownTopicError),
    (ErrorCode.NOT_LEADER_OR_FOLLOWER, e.NotLeaderError),
    (ErrorCode.NOT_ENOUGH_REPLICAS, e.NotEnoughReplicasError),
    (ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND, e.NotEnoughReplicasError),
    (ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER, e.OutOfOrderSequenceError),
    (ErrorCode.PRODUCER_FENCED, e.ProducerFencedError),
    (ErrorCode.INVALID_PRODUCER_EPOCH, e.ProducerFencedError),
    (ErrorCode.MESSAGE_TOO_LARGE, e.RecordTooLargeError),
    (ErrorCode.INVALID_RECORD, e.InvalidRecordError),
    (ErrorCode.REQUEST_TIMED_OUT, e.RequestTimeoutError),
    (ErrorCode.TOPIC_AUTHORIZATION_FAILED, e.AuthorizationError),
    (ErrorCode.TOPIC_ALREADY_EXISTS, e.TopicAlreadyExistsError),
    (ErrorCode.OFFSET_OUT_OF_RANGE, e.OffsetOutOfRangeError),
])
def test_named_classes(code: ErrorCode, cls: type) -> None:
    assert type(e.error_for(code)) is cls


def test_unknown_code_is_a_plain_non_retriable_error() -> None:
    exc = e.error_for(12345, "what")
    assert type(exc) is e.QnodeError
    assert exc.code == 12345 and not exc.retriable
    assert "UNKNOWN(12345)" in str(exc)


def test_none_is_not_an_error() -> None:
    with pytest.raises(ValueError):
        e.error_for(ErrorCode.NONE)
    e.raise_for(0)  # no exception
    with pytest.raises(e.NotLeaderError):
        e.raise_for(ErrorCode.NOT_LEADER_OR_FOLLOWER)


def test_class_defaults_and_overrides() -> None:
    assert e.NotLeaderError().retriable
    assert not e.RecordTooLargeError().retriable
    assert not e.UnknownTopicError("gone", retriable=False).retriable
    assert e.UnknownTopicError().code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_group_errors_live_in_errors_and_stay_importable_from_group_membership() -> None:
    from qnode.sdk import group_membership as gm

    assert gm.CommitFailedError is e.CommitFailedError
    assert gm.FencedInstanceError is e.FencedInstanceError
    assert issubclass(e.CommitFailedError, e.GroupError)
    exc = e.error_for(ErrorCode.FENCED_INSTANCE_ID, "taken over")
    assert type(exc) is e.FencedInstanceError and not exc.retriable
