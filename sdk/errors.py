"""Exceptions of the SDK: one class per thing a caller may want to catch.

Every error the node can answer (`qnode.transport.errors.ErrorCode`) maps to a class here
through `error_for`; `retriable` says whether the same call may succeed if made again (the SDK
retries those itself inside `retries` / `delivery_timeout_ms` before giving up).
"""

from __future__ import annotations

from qnode.transport.errors import ErrorCode, error_name


class QnodeError(Exception):
    """Base of every SDK error. `code` is the wire error code (or -1), `retriable` a hint."""

    default_code: int = ErrorCode.UNKNOWN_SERVER_ERROR
    default_retriable: bool = False

    def __init__(self, message: str = "", code: int | None = None,
                 retriable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(self.default_code if code is None else code)
        self.retriable = self.default_retriable if retriable is None else retriable

    def __str__(self) -> str:
        return self.message or error_name(self.code)


class RetriableError(QnodeError):
    """Base of the errors the SDK retries itself (leadership moves, timeouts, lost links)."""

    default_retriable = True


class NetworkError(RetriableError):
    """The connection to a node was lost or could not be made."""

    default_code = ErrorCode.NETWORK_EXCEPTION


class RequestTimeoutError(RetriableError):
    """No answer within `request_timeout_ms` (or a blocking call's own timeout)."""

    default_code = ErrorCode.REQUEST_TIMED_OUT


class NotLeaderError(RetriableError):
    """The replica asked is not (or no longer) the partition's leader: refresh metadata."""

    default_code = ErrorCode.NOT_LEADER_OR_FOLLOWER


class LeaderNotAvailableError(RetriableError):
    """The partition has no leader right now (an election is in progress)."""

    default_code = ErrorCode.LEADER_NOT_AVAILABLE


class UnknownTopicError(RetriableError):
    """The topic or partition does not exist (retriable: it may still be being created)."""

    default_code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


class NotEnoughReplicasError(RetriableError):
    """acks=all and the ISR is smaller than `min.insync.replicas`."""

    default_code = ErrorCode.NOT_ENOUGH_REPLICAS


class CorruptRecordError(RetriableError):
    """The node found a bad CRC in a batch we sent (damaged in flight: resend)."""

    default_code = ErrorCode.CORRUPT_MESSAGE


class OffsetOutOfRangeError(QnodeError):
    """A fetch position below the log start or past the log end."""

    default_code = ErrorCode.OFFSET_OUT_OF_RANGE


class RecordTooLargeError(QnodeError):
    """A record or batch larger than `max.message.bytes` (or the producer's batch limits)."""

    default_code = ErrorCode.MESSAGE_TOO_LARGE


class InvalidRecordError(QnodeError):
    """The node refused a well-formed batch (bad counts, offsets, timestamps...)."""

    default_code = ErrorCode.INVALID_RECORD


class OutOfOrderSequenceError(QnodeError):
    """An idempotent producer's sequence has a gap the node cannot accept."""

    default_code = ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER


class ProducerFencedError(QnodeError):
    """Another producer with the same transactional id has a newer epoch."""

    default_code = ErrorCode.PRODUCER_FENCED


class AuthorizationError(QnodeError):
    """The principal is not allowed to do this (topic, group or cluster ACL)."""

    default_code = ErrorCode.TOPIC_AUTHORIZATION_FAILED


class TopicAlreadyExistsError(QnodeError):
    """create_topic of a name that exists."""

    default_code = ErrorCode.TOPIC_ALREADY_EXISTS


class InvalidConfigError(QnodeError):
    """A config key or value the node (or this client) does not accept."""

    default_code = ErrorCode.INVALID_CONFIG


class InvalidRequestError(QnodeError):
    """The node could not parse or does not accept the request as sent."""

    default_code = ErrorCode.INVALID_REQUEST


class UnsupportedVersionError(QnodeError):
    """The node does not serve this API or version."""

    default_code = ErrorCode.UNSUPPORTED_VERSION


class InvalidTopicError(QnodeError):
    """A topic name that is not allowed."""

    default_code = ErrorCode.INVALID_TOPIC_EXCEPTION


class InvalidPartitionsError(QnodeError):
    """A partition count that is not allowed."""

    default_code = ErrorCode.INVALID_PARTITIONS


class InvalidReplicationFactorError(QnodeError):
    """A replication factor larger than the cluster, or below 1."""

    default_code = ErrorCode.INVALID_REPLICATION_FACTOR


class CoordinatorError(RetriableError):
    """The group or transaction coordinator moved, is loading, or is not available."""

    default_code = ErrorCode.COORDINATOR_NOT_AVAILABLE


class GroupError(QnodeError):
    """A consumer-group protocol error (generation, member id, group state...)."""

    default_code = ErrorCode.ILLEGAL_GENERATION


class CommitFailedError(GroupError):
    """The commit cannot succeed: the group rebalanced and these partitions may be elsewhere."""


class FencedInstanceError(GroupError):
    """Another consumer with the same `group_instance_id` took over this member's slot."""

    default_code = ErrorCode.FENCED_INSTANCE_ID


class TransactionError(QnodeError):
    """A transactional call made in the wrong state, or transactions not available."""

    default_code = ErrorCode.INVALID_TXN_STATE


class StorageError(RetriableError):
    """The node hit a disk error for this partition."""

    default_code = ErrorCode.KAFKA_STORAGE_ERROR


class ProducerClosedError(QnodeError):
    """send() on a producer that is closed (or closing)."""


class ConsumerStateError(QnodeError):
    """A consumer call that its state does not allow (e.g. seek on an unassigned partition)."""


class NoOffsetForPartitionError(QnodeError):
    """No valid position and `auto_offset_reset="none"`."""

    default_code = ErrorCode.OFFSET_OUT_OF_RANGE


_E = ErrorCode
_BY_CODE: dict[int, type[QnodeError]] = {
    _E.UNKNOWN_SERVER_ERROR: QnodeError,
    _E.OFFSET_OUT_OF_RANGE: OffsetOutOfRangeError,
    _E.CORRUPT_MESSAGE: CorruptRecordError,
    _E.UNKNOWN_TOPIC_OR_PARTITION: UnknownTopicError,
    _E.INVALID_FETCH_SIZE: InvalidRequestError,
    _E.LEADER_NOT_AVAILABLE: LeaderNotAvailableError,
    _E.NOT_LEADER_OR_FOLLOWER: NotLeaderError,
    _E.REQUEST_TIMED_OUT: RequestTimeoutError,
    _E.MESSAGE_TOO_LARGE: RecordTooLargeError,
    _E.NETWORK_EXCEPTION: NetworkError,
    _E.COORDINATOR_LOAD_IN_PROGRESS: CoordinatorError,
    _E.COORDINATOR_NOT_AVAILABLE: CoordinatorError,
    _E.NOT_COORDINATOR: CoordinatorError,
    _E.INVALID_TOPIC_EXCEPTION: InvalidTopicError,
    _E.RECORD_LIST_TOO_LARGE: RecordTooLargeError,
    _E.NOT_ENOUGH_REPLICAS: NotEnoughReplicasError,
    _E.NOT_ENOUGH_REPLICAS_AFTER_APPEND: NotEnoughReplicasError,
    _E.INVALID_REQUIRED_ACKS: InvalidRequestError,
    _E.ILLEGAL_GENERATION: GroupError,
    _E.INCONSISTENT_GROUP_PROTOCOL: GroupError,
    _E.INVALID_GROUP_ID: GroupError,
    _E.UNKNOWN_MEMBER_ID: GroupError,
    _E.INVALID_SESSION_TIMEOUT: GroupError,
    _E.REBALANCE_IN_PROGRESS: GroupError,
    _E.INVALID_COMMIT_OFFSET_SIZE: GroupError,
    _E.TOPIC_AUTHORIZATION_FAILED: AuthorizationError,
    _E.GROUP_AUTHORIZATION_FAILED: AuthorizationError,
    _E.CLUSTER_AUTHORIZATION_FAILED: AuthorizationError,
    _E.INVALID_TIMESTAMP: InvalidRecordError,
    _E.UNSUPPORTED_VERSION: UnsupportedVersionError,
    _E.TOPIC_ALREADY_EXISTS: TopicAlreadyExistsError,
    _E.INVALID_PARTITIONS: InvalidPartitionsError,
    _E.INVALID_REPLICATION_FACTOR: InvalidReplicationFactorError,
    _E.INVALID_REPLICA_ASSIGNMENT: InvalidReplicationFactorError,
    _E.INVALID_CONFIG: InvalidConfigError,
    _E.NOT_CONTROLLER: CoordinatorError,
    _E.INVALID_REQUEST: InvalidRequestError,
    _E.POLICY_VIOLATION: InvalidConfigError,
    _E.OUT_OF_ORDER_SEQUENCE_NUMBER: OutOfOrderSequenceError,
    _E.DUPLICATE_SEQUENCE_NUMBER: OutOfOrderSequenceError,
    _E.INVALID_PRODUCER_EPOCH: ProducerFencedError,
    _E.INVALID_TXN_STATE: TransactionError,
    _E.INVALID_PRODUCER_ID_MAPPING: TransactionError,
    _E.INVALID_TRANSACTION_TIMEOUT: TransactionError,
    _E.CONCURRENT_TRANSACTIONS: TransactionError,
    _E.KAFKA_STORAGE_ERROR: StorageError,
    _E.UNKNOWN_PRODUCER_ID: OutOfOrderSequenceError,
    _E.NON_EMPTY_GROUP: GroupError,
    _E.GROUP_ID_NOT_FOUND: GroupError,
    _E.FENCED_LEADER_EPOCH: NotLeaderError,
    _E.UNKNOWN_LEADER_EPOCH: NotLeaderError,
    _E.MEMBER_ID_REQUIRED: GroupError,
    _E.FENCED_INSTANCE_ID: FencedInstanceError,
    _E.INVALID_RECORD: InvalidRecordError,
    _E.UNSTABLE_OFFSET_COMMIT: GroupError,
    _E.PRODUCER_FENCED: ProducerFencedError,
}


def error_for(code: int, message: str | None = None) -> QnodeError:
    """The exception for a wire error code (never for NONE); `retriable` follows the code."""
    if code == ErrorCode.NONE:
        raise ValueError("error_for(NONE): there is no error to raise")
    cls = _BY_CODE.get(code, QnodeError)
    try:
        retriable = ErrorCode(code).retriable
    except ValueError:
        retriable = False
    name = error_name(code)
    text = f"{name}: {message}" if message else name
    return cls(text, code=code, retriable=retriable)


def raise_for(code: int, message: str | None = None) -> None:
    """Raise `error_for(code, message)` unless `code` is NONE."""
    if code:
        raise error_for(code, message)
