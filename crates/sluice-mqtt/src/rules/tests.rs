use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use serde_json::json;

use super::*;
use crate::message::ForwardProps;

fn msg(topic: &str, payload: &str) -> Message {
    Message {
        topic: ByteString::from(topic.to_string()),
        payload: Bytes::from(payload.to_string()),
        qos: QoS::AtLeastOnce,
        retain: false,
        props: Arc::new(ForwardProps::default()),
        expires_at: None,
        from: Some(Arc::from("car-1")),
        created_ms: 1_700_000_000_000,
    }
}

fn run(sql: &str, topic: &str, payload: &str) -> Vec<serde_json::Value> {
    let rules = Rules::in_memory();
    let rule = Rule::parse("r", sql, "out", None).unwrap();
    rules.rules.write().unwrap().clone_from(&Arc::new(vec![Arc::new(rule)]));
    let m = msg(topic, payload);
    let ctx = MessageCtx {
        clientid: "car-1",
        username: Some("fleet"),
        msg: &m,
    };
    rules
        .on_message(&ctx)
        .into_iter()
        .map(|r| {
            assert_eq!(r.key.as_deref(), Some(&b"car-1"[..]));
            serde_json::from_slice(&r.value).unwrap()
        })
        .collect()
}

#[test]
fn selects_payload_fields_with_where() {
    let sql = r#"SELECT payload.speed AS speed, clientid, upper(username) AS u FROM "cars/+/telemetry" WHERE payload.speed > 100"#;
    assert_eq!(
        run(sql, "cars/1/telemetry", r#"{"speed": 120}"#),
        vec![json!({"speed": 120, "clientid": "car-1", "u": "FLEET"})]
    );
    assert!(run(sql, "cars/1/telemetry", r#"{"speed": 80}"#).is_empty());
    assert!(run(sql, "bikes/1/telemetry", r#"{"speed": 120}"#).is_empty());
}

#[test]
fn nested_output_segments_and_functions() {
    let sql = r#"SELECT payload.a.b, nth(2, split(topic, '/')) AS car, topic_level(3) AS kind,
                 round(payload.t * 1.8 + 32, 1) AS f, concat(clientid, '-', qos) AS tag
                 FROM "cars/#""#;
    assert_eq!(
        run(sql, "cars/42/state", r#"{"a": {"b": "x"}, "t": 21.5}"#),
        vec![json!({"payload": {"a": {"b": "x"}}, "car": "42", "kind": "state", "f": 70.7, "tag": "car-1-1"})]
    );
}

#[test]
fn case_in_like_and_json_functions() {
    let sql = r#"SELECT CASE WHEN payload.v > 10 THEN 'high' ELSE 'low' END AS level,
                 json_encode(payload) AS raw, coalesce(payload.missing, 'none') AS m
                 FROM "t/#" WHERE topic LIKE 't/%' AND qos IN (1, 2) AND payload.v IS NOT NULL"#;
    assert_eq!(
        run(sql, "t/x", r#"{"v": 11}"#),
        vec![json!({"level": "high", "raw": "{\"v\":11}", "m": "none"})]
    );
}

#[test]
fn bad_sql_is_refused_with_the_reason() {
    for (sql, want) in [
        ("SELEC x FROM \"t\"", "parse error"),
        ("SELECT x", "FROM"),
        ("SELECT nope(x) FROM \"t\"", "unknown function"),
        ("SELECT x FROM \"a/#/b\"", "invalid topic filter"),
        ("SELECT x FROM \"$events/nope\"", "unknown event"),
        ("SELECT upper(x, y) FROM \"t\"", "takes 1"),
        ("INSERT INTO t VALUES (1)", "SELECT"),
    ] {
        let err = Rule::parse("r", sql, "out", None)
            .err()
            .unwrap_or_else(|| panic!("{sql} accepted"));
        assert!(err.contains(want), "{sql}: {err}");
    }
}

#[test]
fn counters_and_event_rules() {
    let rules = Rules::in_memory();
    let rule = Rule::parse(
        "ev",
        r#"SELECT clientid, event FROM "$events/client.connected" WHERE clientid <> 'skip'"#,
        "out",
        Some("${event}/${clientid}"),
    )
    .unwrap();
    rules.rules.write().unwrap().clone_from(&Arc::new(vec![Arc::new(rule)]));
    let ev = json!({"event": "client.connected", "clientid": "c1", "timestamp": 5});
    let out = rules.on_event("client.connected", &ev);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key.as_deref(), Some(&b"client.connected/c1"[..]));
    assert!(rules.on_event("client.disconnected", &ev).is_empty());
    assert!(rules
        .on_event(
            "client.connected",
            &json!({"event": "client.connected", "clientid": "skip"})
        )
        .is_empty());
    let m = rules.list()[0].metrics;
    assert_eq!((m.matched, m.passed, m.failed), (2, 1, 0));
}

#[test]
fn templates_render_paths() {
    assert_eq!(render_template("${a}-${b.c}-x", |p| p.to_uppercase()), "A-B.C-x");
    assert_eq!(render_template("plain", |_| unreachable!()), "plain");
    assert_eq!(render_template("${open", |_| "x".into()), "${open");
}
