//! What a request handler answers with: the connection (`conn`) writes it, in request
//! order, once it is ready.

use futures::future::BoxFuture;
use kafka_protocol::messages::ResponseKind;

/// A response still being worked out, or none at all (acks=0 produce).
pub(crate) enum Reply {
    Now(Box<ResponseKind>),
    Later(BoxFuture<'static, ResponseKind>),
    None,
    /// A SASL token after SaslHandshake v0: sent with its size prefix only, no header.
    RawToken(bytes::Bytes),
}
