"""The engine over the Kafka log, past one machine (`msgtally worker`).

`partition` is one partition's state machine, offsets, checkpoint and fenced
commits; `worker` the process that owns some partitions through Kafka's
consumer group and drives their machines.
"""

__all__ = ["partition", "worker"]
