//! The `kafka` channel: one record per notification on an output topic,
//! for the company's own messaging stack. The record key is the
//! notification id and the producer is idempotent (`enable.idempotence`,
//! `acks=all`), so librdkafka's own retries never duplicate a record and a
//! consumer can drop a resend after a crash by key. The value is the same
//! JSON a webhook carries; headers name the rule and the channel.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::ChannelError;
use crate::config::KafkaChannelConfig;
use crate::notify::Notification;

pub struct KafkaChannel {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl KafkaChannel {
    pub fn new(cfg: &KafkaChannelConfig) -> Result<KafkaChannel, String> {
        let mut client = ClientConfig::new();
        for (k, v) in &cfg.properties {
            client.set(k, v);
        }
        client
            .set("bootstrap.servers", &cfg.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                cfg.timeout.as_millis().max(1).to_string(),
            );
        let producer: FutureProducer = client
            .create()
            .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
        Ok(KafkaChannel {
            producer,
            topic: cfg.topic.clone(),
            timeout: cfg.timeout,
        })
    }

    fn headers(n: &Notification) -> OwnedHeaders {
        OwnedHeaders::new()
            .insert(Header {
                key: "forewarn.rule",
                value: Some(n.rule_id.as_bytes()),
            })
            .insert(Header {
                key: "forewarn.channel",
                value: Some(n.channel.as_bytes()),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json".as_bytes()),
            })
    }

    pub async fn send(&self, n: &Notification) -> Result<(), ChannelError> {
        let value = n.to_json().to_string();
        let record = FutureRecord::to(&self.topic)
            .key(&n.id)
            .payload(&value)
            .headers(Self::headers(n));
        match self.producer.send(record, self.timeout).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(classify(&self.topic, &e)),
        }
    }
}

/// The record `send` would produce, as text.
pub fn preview(topic: &str, n: &Notification) -> Result<String, ChannelError> {
    let value = serde_json::to_string_pretty(&n.to_json())
        .map_err(|e| ChannelError::permanent(e.to_string()))?;
    Ok(format!(
        "topic: {topic}\nkey: {}\nheaders: forewarn.rule={}, forewarn.channel={}, content-type=application/json\n\n{value}\n",
        n.id, n.rule_id, n.channel
    ))
}

/// Records the brokers will never take are permanent; everything else
/// (timeouts, leader moves, a full queue, brokers down) is transient.
fn classify(topic: &str, e: &KafkaError) -> ChannelError {
    use RDKafkaErrorCode as C;
    let code = e.rdkafka_error_code();
    match code {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessage
            | C::InvalidMessageSize
            | C::InvalidRecord
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed,
        ) => ChannelError::permanent(format!(
            "Kafka refused the record for topic {topic:?}: {e}"
        )),
        Some(C::UnknownTopicOrPartition | C::UnknownTopic) => ChannelError::transient(format!(
            "topic {topic:?} does not exist (yet): create it, e.g. kafka-topics --create --topic {topic}; {e}"
        )),
        _ => ChannelError::transient(format!("producing to {topic:?} failed: {e}")),
    }
}
