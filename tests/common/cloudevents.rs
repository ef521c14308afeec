//! Messages read back as CloudEvents by the CloudEvents SDK, through the Kafka protocol binding's
//! binary mode: `ce_specversion` makes a record an event, every other `ce_` header is an attribute
//! (or an extension), `content-type` is `datacontenttype`, the value is the data. The SDK parses and
//! validates each attribute (the spec version, `time` as RFC 3339...).

use cloudevents::Event;
use cloudevents::event::SpecVersion;
use cloudevents::message::{
    BinaryDeserializer, BinarySerializer, Encoding, Error, MessageAttributeValue,
    MessageDeserializer, Result, StructuredDeserializer, StructuredSerializer,
};

use super::kafka::Received;

/// One Kafka record as the binding sees it.
struct Record<'a>(&'a Received);

impl BinaryDeserializer for Record<'_> {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(self, mut visitor: V) -> Result<R> {
        let version = self
            .0
            .header("ce_specversion")
            .ok_or(Error::WrongEncoding {})?;
        let version = SpecVersion::try_from(version)?;
        let attributes = version.attribute_names();
        visitor = visitor.set_spec_version(version)?;
        for (name, value) in &self.0.headers {
            let value = MessageAttributeValue::String(value.clone());
            if name == "content-type" {
                visitor = visitor.set_attribute("datacontenttype", value)?;
                continue;
            }
            let Some(attribute) = name.strip_prefix("ce_") else {
                continue;
            };
            if attribute == "specversion" {
                continue;
            }
            visitor = if attributes.contains(&attribute) {
                visitor.set_attribute(attribute, value)?
            } else {
                visitor.set_extension(attribute, value)?
            };
        }
        if self.0.tombstone {
            visitor.end()
        } else {
            visitor.end_with_data(self.0.raw.as_bytes().to_vec())
        }
    }
}

impl StructuredDeserializer for Record<'_> {
    fn deserialize_structured<R: Sized, V: StructuredSerializer<R>>(self, _: V) -> Result<R> {
        // The bridge publishes in binary mode only.
        Err(Error::WrongEncoding {})
    }
}

impl MessageDeserializer for Record<'_> {
    fn encoding(&self) -> Encoding {
        match self.0.header("ce_specversion") {
            Some(_) => Encoding::BINARY,
            None => Encoding::UNKNOWN,
        }
    }
}

/// `message` as a CloudEvent, or why it is not one.
pub fn event(message: &Received) -> Result<Event> {
    MessageDeserializer::into_event(Record(message))
}
