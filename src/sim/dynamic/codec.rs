//! A tonic codec for messages known only by their descriptors: it encodes any
//! [`DynamicMessage`] and decodes into one message type, so one codec serves a method's requests
//! (the simulator's side) or its responses (a client's side).

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage as _};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// Encodes [`DynamicMessage`]s and decodes messages of one type into them.
#[derive(Debug, Clone)]
pub struct DynamicCodec {
    decodes: MessageDescriptor,
}

impl DynamicCodec {
    /// A codec that decodes messages of type `decodes`: a method's input on the server, its
    /// output on a client.
    pub fn new(decodes: MessageDescriptor) -> Self {
        Self { decodes }
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder { decodes: self.decodes.clone() }
    }
}

/// The encoding half of [`DynamicCodec`].
#[derive(Debug, Clone, Copy)]
pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst).map_err(|e| Status::internal(format!("cannot encode {}: {e}", item.descriptor().full_name())))
    }
}

/// The decoding half of [`DynamicCodec`].
#[derive(Debug, Clone)]
pub struct DynamicDecoder {
    decodes: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        DynamicMessage::decode(self.decodes.clone(), src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("not a valid {}: {e}", self.decodes.full_name())))
    }
}
