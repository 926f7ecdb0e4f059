"""Broker adapters: wrap publish and consume of a client library with a Tally.

Each adapter puts the message id and the W3C trace context in the message's
headers or properties, reads them back on the consumer side (falling back to
the broker's own id), and maps the broker's redelivery information to the
delivery attempt. They share one vocabulary and one consumer contract:
`common`.
"""

__all__ = ["common", "kafka", "mqtt", "nats", "rabbitmq", "redis_streams", "webhooks"]
