//! The names of the gateway's events, which rules select by (`$events/<name>`).

pub const CLIENT_CONNECTED: &str = "client.connected";
pub const CLIENT_DISCONNECTED: &str = "client.disconnected";
pub const SESSION_SUBSCRIBED: &str = "session.subscribed";
pub const SESSION_UNSUBSCRIBED: &str = "session.unsubscribed";
pub const MESSAGE_DELIVERED: &str = "message.delivered";
pub const MESSAGE_ACKED: &str = "message.acked";
pub const MESSAGE_DROPPED: &str = "message.dropped";

pub const ALL: [&str; 7] = [
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    SESSION_SUBSCRIBED,
    SESSION_UNSUBSCRIBED,
    MESSAGE_DELIVERED,
    MESSAGE_ACKED,
    MESSAGE_DROPPED,
];
