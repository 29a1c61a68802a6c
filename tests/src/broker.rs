//! Real MQTT brokers for tests (being written).
