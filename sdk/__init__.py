"""qnode.sdk: the Python client of qnode — Producer, Consumer, Admin (see shared API.md)."""

from qnode.sdk.admin import Admin
from qnode.sdk.consumer import Consumer
from qnode.sdk.errors import QnodeError
from qnode.sdk.futures import RecordFuture
from qnode.sdk.producer import Producer
from qnode.sdk.types import (
    ConfigEntry,
    GroupDescription,
    OffsetAndTimestamp,
    PartitionDescription,
    Record,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)

__all__ = [
    "Admin",
    "ConfigEntry",
    "Consumer",
    "GroupDescription",
    "OffsetAndTimestamp",
    "PartitionDescription",
    "Producer",
    "QnodeError",
    "Record",
    "RecordFuture",
    "RecordMetadata",
    "TopicDescription",
    "TopicPartition",
]
