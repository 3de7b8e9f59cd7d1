//! Table-driven compatibility rules per format, registry behaviour on a real
//! (SQLite) metadata store, and the validating decoders.

use crate::error::RegistryError;
use crate::formats::{self, SchemaType};
use crate::registry::{Registry, VersionSpec};
use crate::store::Reference;

/// A fresh registry on SQLite in a temp dir, or on a fresh database of the
/// PostgreSQL server at `SLUICE_TEST_POSTGRES` (e.g. postgres://postgres@127.0.0.1:5432).
async fn registry() -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = match std::env::var("SLUICE_TEST_POSTGRES") {
        Ok(server) => {
            let admin = sluice_meta::MetaStore::open(&format!("{server}/postgres"))
                .await
                .unwrap();
            let db = format!("s{}", std::process::id() as u64 * 1000 + rand_suffix());
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(admin.pool())
                .await
                .unwrap();
            format!("{server}/{db}")
        }
        Err(_) => format!("sqlite://{}", dir.path().join("meta.db").display()),
    };
    let meta = sluice_meta::MetaStore::open(&url).await.unwrap();
    (Registry::new(&meta), dir)
}

fn rand_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn avro_rec(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"User","namespace":"t","fields":[{fields}]}}"#)
}

const A_ID: &str = r#"{"name":"id","type":"long"}"#;
const A_NAME: &str = r#"{"name":"name","type":"string"}"#;
const A_NAME_DEFAULT: &str = r#"{"name":"name","type":"string","default":""}"#;
const A_ID_INT: &str = r#"{"name":"id","type":"int"}"#;
const A_ID_STRING: &str = r#"{"name":"id","type":"string"}"#;
const A_ID_UNION: &str = r#"{"name":"id","type":["null","long"],"default":null}"#;

/// (description, type, old, new, level, compatible?)
fn cases() -> Vec<(&'static str, SchemaType, String, String, &'static str, bool)> {
    use SchemaType::*;
    let a = |f: &[&str]| avro_rec(&f.join(","));
    let enum_s = |syms: &str, default: &str| format!(r#"{{"type":"enum","name":"Color","symbols":[{syms}]{default}}}"#);
    let proto = |body: &str| format!("syntax = \"proto3\";\npackage t;\nmessage User {{ {body} }}\n");
    let json = |props: &str, extra: &str| format!(r#"{{"type":"object","properties":{{{props}}}{extra}}}"#);
    vec![
        (
            "avro: add field with default",
            Avro,
            a(&[A_ID]),
            a(&[A_ID, A_NAME_DEFAULT]),
            "BACKWARD",
            true,
        ),
        (
            "avro: add field without default",
            Avro,
            a(&[A_ID]),
            a(&[A_ID, A_NAME]),
            "BACKWARD",
            false,
        ),
        (
            "avro: add field without default, forward",
            Avro,
            a(&[A_ID]),
            a(&[A_ID, A_NAME]),
            "FORWARD",
            true,
        ),
        (
            "avro: remove field without default, forward",
            Avro,
            a(&[A_ID, A_NAME]),
            a(&[A_ID]),
            "FORWARD",
            false,
        ),
        (
            "avro: remove field with default, full",
            Avro,
            a(&[A_ID, A_NAME_DEFAULT]),
            a(&[A_ID]),
            "FULL",
            true,
        ),
        (
            "avro: add field without default, none",
            Avro,
            a(&[A_ID]),
            a(&[A_ID, A_NAME]),
            "NONE",
            true,
        ),
        (
            "avro: promote int to long",
            Avro,
            a(&[A_ID_INT]),
            a(&[A_ID]),
            "BACKWARD",
            true,
        ),
        (
            "avro: demote long to int",
            Avro,
            a(&[A_ID]),
            a(&[A_ID_INT]),
            "BACKWARD",
            false,
        ),
        (
            "avro: promote int to long, full",
            Avro,
            a(&[A_ID_INT]),
            a(&[A_ID]),
            "FULL",
            false,
        ),
        (
            "avro: long to string",
            Avro,
            a(&[A_ID]),
            a(&[A_ID_STRING]),
            "BACKWARD",
            false,
        ),
        (
            "avro: long to nullable long",
            Avro,
            a(&[A_ID]),
            a(&[A_ID_UNION]),
            "BACKWARD",
            true,
        ),
        (
            "avro: nullable long to long",
            Avro,
            a(&[A_ID_UNION]),
            a(&[A_ID]),
            "BACKWARD",
            false,
        ),
        (
            "avro: enum symbol added",
            Avro,
            enum_s(r#""R","G""#, ""),
            enum_s(r#""R","G","B""#, ""),
            "BACKWARD",
            true,
        ),
        (
            "avro: enum symbol removed",
            Avro,
            enum_s(r#""R","G","B""#, ""),
            enum_s(r#""R","G""#, ""),
            "BACKWARD",
            false,
        ),
        (
            "avro: enum symbol removed, reader default",
            Avro,
            enum_s(r#""R","G","B""#, ""),
            enum_s(r#""R","G""#, r#","default":"R""#),
            "BACKWARD",
            true,
        ),
        (
            "avro: record renamed",
            Avro,
            a(&[A_ID]),
            a(&[A_ID]).replace("User", "Person"),
            "BACKWARD",
            false,
        ),
        (
            "avro: type change to array",
            Avro,
            r#""string""#.into(),
            r#"{"type":"array","items":"string"}"#.into(),
            "BACKWARD",
            false,
        ),
        (
            "protobuf: add field",
            Protobuf,
            proto("int64 id = 1;"),
            proto("int64 id = 1; string name = 2;"),
            "FULL",
            true,
        ),
        (
            "protobuf: remove field",
            Protobuf,
            proto("int64 id = 1; string name = 2;"),
            proto("int64 id = 1;"),
            "BACKWARD",
            true,
        ),
        (
            "protobuf: int32 to int64",
            Protobuf,
            proto("int32 id = 1;"),
            proto("int64 id = 1;"),
            "BACKWARD",
            true,
        ),
        (
            "protobuf: int64 to string",
            Protobuf,
            proto("int64 id = 1;"),
            proto("string id = 1;"),
            "BACKWARD",
            false,
        ),
        (
            "protobuf: scalar to message",
            Protobuf,
            proto("int64 id = 1;"),
            proto("User id = 1;"),
            "BACKWARD",
            false,
        ),
        (
            "protobuf: message removed",
            Protobuf,
            proto("int64 id = 1; message Inner { int32 x = 1; }"),
            proto("int64 id = 1;"),
            "BACKWARD",
            false,
        ),
        (
            "protobuf: package changed",
            Protobuf,
            proto("int64 id = 1;"),
            proto("int64 id = 1;").replace("package t;", "package u;"),
            "BACKWARD",
            false,
        ),
        (
            "protobuf: repeated changed",
            Protobuf,
            proto("int64 id = 1;"),
            proto("repeated int64 id = 1;"),
            "BACKWARD",
            false,
        ),
        (
            "json: add property to closed model",
            Json,
            json(r#""id":{"type":"integer"}"#, r#","additionalProperties":false"#),
            json(
                r#""id":{"type":"integer"},"n":{"type":"string"}"#,
                r#","additionalProperties":false"#,
            ),
            "BACKWARD",
            true,
        ),
        (
            "json: add property to open model",
            Json,
            json(r#""id":{"type":"integer"}"#, ""),
            json(r#""id":{"type":"integer"},"n":{"type":"string"}"#, ""),
            "BACKWARD",
            false,
        ),
        (
            "json: remove property from open model",
            Json,
            json(r#""id":{"type":"integer"},"n":{"type":"string"}"#, ""),
            json(r#""id":{"type":"integer"}"#, ""),
            "BACKWARD",
            true,
        ),
        (
            "json: integer widened to number",
            Json,
            json(r#""id":{"type":"integer"}"#, ""),
            json(r#""id":{"type":"number"}"#, ""),
            "BACKWARD",
            true,
        ),
        (
            "json: number narrowed to integer",
            Json,
            json(r#""id":{"type":"number"}"#, ""),
            json(r#""id":{"type":"integer"}"#, ""),
            "BACKWARD",
            false,
        ),
        (
            "json: required added",
            Json,
            json(r#""id":{"type":"integer"}"#, ""),
            json(r#""id":{"type":"integer"}"#, r#","required":["id"]"#),
            "BACKWARD",
            false,
        ),
        (
            "json: required removed",
            Json,
            json(r#""id":{"type":"integer"}"#, r#","required":["id"]"#),
            json(r#""id":{"type":"integer"}"#, ""),
            "BACKWARD",
            true,
        ),
        (
            "json: maxLength decreased",
            Json,
            json(r#""s":{"type":"string","maxLength":10}"#, ""),
            json(r#""s":{"type":"string","maxLength":5}"#, ""),
            "BACKWARD",
            false,
        ),
        (
            "json: maxLength decreased, forward",
            Json,
            json(r#""s":{"type":"string","maxLength":10}"#, ""),
            json(r#""s":{"type":"string","maxLength":5}"#, ""),
            "FORWARD",
            true,
        ),
        (
            "json: enum narrowed",
            Json,
            json(r#""c":{"enum":["r","g","b"]}"#, ""),
            json(r#""c":{"enum":["r","g"]}"#, ""),
            "BACKWARD",
            false,
        ),
        (
            "json: enum widened",
            Json,
            json(r#""c":{"enum":["r","g"]}"#, ""),
            json(r#""c":{"enum":["r","g","b"]}"#, ""),
            "BACKWARD",
            true,
        ),
    ]
}

#[tokio::test]
async fn compatibility_rules_per_format() {
    let (reg, _dir) = registry().await;
    let mut failures = Vec::new();
    for (i, (what, ty, old, new, level, expected)) in cases().into_iter().enumerate() {
        let subject = format!("case-{i}");
        reg.set_setting(&subject, "compatibility", level).await.unwrap();
        reg.register(&subject, ty, &old, &[])
            .await
            .unwrap_or_else(|e| panic!("{what}: old: {e}"));
        let messages = reg
            .check_compatibility(&subject, None, ty, &new, &[])
            .await
            .unwrap_or_else(|e| panic!("{what}: new: {e}"));
        if messages.is_empty() != expected {
            failures.push(format!(
                "{what}: expected compatible={expected}, got messages {messages:?}"
            ));
        }
        let registered = reg.register(&subject, ty, &new, &[]).await;
        match (expected, registered) {
            (true, Ok(_)) => {}
            (false, Err(e)) if e.code == 409 => {}
            (_, r) => failures.push(format!("{what}: register gave {r:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn transitive_levels_check_every_version() {
    let (reg, _dir) = registry().await;
    let v1 = avro_rec(A_ID);
    let v2 = avro_rec(&[A_ID, A_NAME_DEFAULT].join(","));
    // v3 drops the default: readable from v2's data (it has name) but not from v1's.
    let v3 = avro_rec(&[A_ID, A_NAME].join(","));
    for (level, v3_ok) in [
        ("BACKWARD", true),
        ("BACKWARD_TRANSITIVE", false),
        ("FULL_TRANSITIVE", false),
    ] {
        let s = format!("transitive-{level}");
        reg.set_setting(&s, "compatibility", level).await.unwrap();
        reg.register(&s, SchemaType::Avro, &v1, &[]).await.unwrap();
        reg.register(&s, SchemaType::Avro, &v2, &[]).await.unwrap();
        let r = reg.register(&s, SchemaType::Avro, &v3, &[]).await;
        assert_eq!(r.is_ok(), v3_ok, "{level}: {r:?}");
    }
}

#[tokio::test]
async fn equivalent_schemas_share_an_id_and_versions_are_kept() {
    let (reg, _dir) = registry().await;
    let a = r#"{"type": "record", "name": "R", "fields": [{"name": "x", "type": "int"}]}"#;
    let b = r#"{"fields":[{"type":{"type":"int"},"name":"x"}],"name":"R","type":"record"}"#;
    let id1 = reg.register("s1", SchemaType::Avro, a, &[]).await.unwrap();
    let id2 = reg.register("s1", SchemaType::Avro, b, &[]).await.unwrap();
    let id3 = reg.register("s2", SchemaType::Avro, b, &[]).await.unwrap();
    assert_eq!((id1, id1), (id2, id3));
    assert_eq!(reg.versions("s1", false).await.unwrap().len(), 1);
    let v = reg.lookup("s2", SchemaType::Avro, a, &[], false).await.unwrap();
    assert_eq!((v.version, v.schema.id), (1, id1));

    // Soft delete, then permanent; ids are never reused.
    assert_eq!(reg.delete_subject("s1", true).await.unwrap_err().code, 40405);
    assert_eq!(reg.delete_subject("s1", false).await.unwrap(), vec![1]);
    assert_eq!(reg.versions("s1", false).await.unwrap_err().code, 40401);
    assert_eq!(reg.delete_subject("s1", true).await.unwrap(), vec![1]);
    let other = r#"{"type":"record","name":"R","fields":[{"name":"y","type":"int","default":0}]}"#;
    let id4 = reg.register("s1", SchemaType::Avro, other, &[]).await.unwrap();
    assert!(id4 > id1);
}

#[tokio::test]
async fn references_resolve_and_block_deletes() {
    let (reg, _dir) = registry().await;
    let addr = r#"{"type":"record","name":"Address","namespace":"t","fields":[{"name":"city","type":"string"}]}"#;
    reg.register("address", SchemaType::Avro, addr, &[]).await.unwrap();
    let user = r#"{"type":"record","name":"User","namespace":"t","fields":[{"name":"home","type":"t.Address"}]}"#;
    let refs = vec![Reference {
        name: "t.Address".into(),
        subject: "address".into(),
        version: 1,
    }];
    let id = reg.register("user", SchemaType::Avro, user, &refs).await.unwrap();
    assert_eq!(
        reg.referenced_by("address", VersionSpec::Latest).await.unwrap(),
        vec![id]
    );
    assert_eq!(reg.delete_subject("address", false).await.unwrap_err().code, 42206);
    // Without the reference the type is unknown: 422, not a crash.
    let e = reg.register("user2", SchemaType::Avro, user, &[]).await.unwrap_err();
    assert_eq!((e.status, e.code), (422, 42201));
    // Payload validation follows the reference.
    let p = reg.parsed(id).await.unwrap();
    assert!(p.validate(&[8, b'O', b's', b'l', b'o']).is_ok());
    assert!(p.validate(&[8, b'O', b's']).is_err());

    let dep = "syntax = \"proto3\";\npackage t;\nmessage Money { int64 cents = 1; }\n";
    reg.register("money.proto", SchemaType::Protobuf, dep, &[])
        .await
        .unwrap();
    let main = "syntax = \"proto3\";\npackage t;\nimport \"money.proto\";\nimport \"google/protobuf/timestamp.proto\";\nmessage Order { Money total = 1; google.protobuf.Timestamp at = 2; }\n";
    let prefs = vec![Reference {
        name: "money.proto".into(),
        subject: "money.proto".into(),
        version: 1,
    }];
    reg.register("order", SchemaType::Protobuf, main, &prefs).await.unwrap();

    let jdep = r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#;
    reg.register("addr.json", SchemaType::Json, jdep, &[]).await.unwrap();
    let jmain = r#"{"type":"object","properties":{"home":{"$ref":"addr.json"}}}"#;
    let jrefs = vec![Reference {
        name: "addr.json".into(),
        subject: "addr.json".into(),
        version: 1,
    }];
    let jid = reg.register("juser", SchemaType::Json, jmain, &jrefs).await.unwrap();
    let p = reg.parsed(jid).await.unwrap();
    assert!(p.validate(br#"{"home":{"city":"Oslo"}}"#).is_ok());
    assert!(p.validate(br#"{"home":{"town":"Oslo"}}"#).is_err());
}

#[tokio::test]
async fn malformed_schemas_are_422() {
    let (reg, _dir) = registry().await;
    for (ty, text) in [
        (SchemaType::Avro, "{not json"),
        (
            SchemaType::Avro,
            r#"{"type":"record","name":"R","fields":[{"name":"x","type":"nope"}]}"#,
        ),
        (SchemaType::Avro, r#"{"type":"enum","name":"E","symbols":["A","A"]}"#),
        (SchemaType::Protobuf, "syntax = \"proto3\"; message M { int32 x = 1"),
        (
            SchemaType::Protobuf,
            "syntax = \"proto3\"; message M { Unknown x = 1; }",
        ),
        (SchemaType::Json, "[1,2]"),
        (SchemaType::Json, r#"{"type": 12}"#),
    ] {
        let e: RegistryError = reg.register("bad", ty, text, &[]).await.unwrap_err();
        assert_eq!((e.status, e.code), (422, 42201), "{text}: {e}");
    }
}

#[test]
fn avro_validation_walks_the_encoding() {
    let s = formats::parse(
        SchemaType::Avro,
        r#"{"type":"record","name":"R","fields":[{"name":"n","type":"int"},{"name":"s","type":"string"},
            {"name":"o","type":["null","double"]},{"name":"a","type":{"type":"array","items":"long"}}]}"#,
        &[],
    )
    .unwrap();
    // n=1, s="hi", o=null, a=[5] then end
    let good = [2, 4, b'h', b'i', 0, 2, 10, 0];
    assert!(s.validate(&good).is_ok());
    assert!(s.validate(&good[..5]).is_err(), "truncated");
    assert!(s.validate(&[2, 4, b'h', b'i', 6, 0]).is_err(), "union branch 3 of 2");
    assert!(s.validate(&[2, 4, 0xff, 0xfe, 0, 0]).is_err(), "bad utf-8");
    let mut trailing = good.to_vec();
    trailing.push(0);
    assert!(s.validate(&trailing).is_err(), "trailing bytes");
    assert!(s.validate(b"{\"n\": 1}").is_err(), "JSON is not Avro");

    let r = crate::bench::bench_record(7, 1024);
    let b = formats::parse(SchemaType::Avro, crate::bench::BENCH_SCHEMA, &[]).unwrap();
    assert!(b.validate(&r).is_ok());
    assert!((1000..=1100).contains(&r.len()), "{}", r.len());
}

#[test]
fn protobuf_validation_uses_message_indexes() {
    let s = formats::parse(
        SchemaType::Protobuf,
        "syntax = \"proto3\";\nmessage A { int32 x = 1; }\nmessage B { string s = 1; }\n",
        &[],
    )
    .unwrap();
    // index [0] -> A, x = 150
    assert!(s.validate(&[0, 0x08, 0x96, 0x01]).is_ok());
    // index path [1] -> B, field 1 as a varint: wrong wire type for a string
    assert!(s.validate(&[2, 2, 0x08, 0x96, 0x01]).is_err());
    // index 5 does not exist
    assert!(s.validate(&[2, 10, 0x08, 0x01]).is_err());
    assert_eq!(s.record_name(&[1]).as_deref(), Some("B"));
}

#[test]
fn policy_from_topic_configs() {
    use crate::enforce::{Policy, Strategy};
    use std::collections::BTreeMap;
    let m = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(Policy::from_configs(&m(&[])), None);
    assert_eq!(
        Policy::from_configs(&m(&[
            ("confluent.value.schema.validation", "true"),
            (
                "confluent.value.subject.name.strategy",
                "io.confluent.kafka.serializers.subject.RecordNameStrategy"
            ),
            ("sluice.schema.validation.level", "header"),
        ])),
        Some(Policy {
            key: None,
            value: Some(Strategy::Record),
            full: false
        })
    );
    assert_eq!(
        Policy::from_configs(&m(&[("sluice.key.schema.validation", "true")])).map(|p| (p.key, p.full)),
        Some((Some(Strategy::Topic), true))
    );
}

/// Prints the full-validation rate; run with `--ignored --nocapture` (not a timed assertion).
#[test]
#[ignore]
fn bench_avro_validation() {
    let r = crate::bench::bench_avro_validation(std::time::Duration::from_secs(3), 1024).unwrap();
    println!(
        "full Avro validation: {:.0} records/s of {} bytes",
        r.records_per_sec(),
        r.record_bytes
    );
}

#[tokio::test]
async fn enforcer_accepts_valid_batches() {
    // A short run of the produce-path benchmark doubles as a check that valid records pass.
    let r = crate::bench::bench_enforcer(std::time::Duration::from_millis(50), 1024)
        .await
        .unwrap();
    assert!(r.records >= 100);
}

#[tokio::test]
async fn enforcer_rejects_a_batch_with_per_record_errors() {
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    let (reg, _dir) = registry().await;
    let id = reg
        .register("t-value", SchemaType::Avro, r#""string""#, &[])
        .await
        .unwrap();
    let enforcer = crate::Enforcer::new(reg);
    let policy = crate::Policy {
        key: None,
        value: Some(crate::enforce::Strategy::Topic),
        full: true,
    };
    let framed = |body: &[u8]| {
        let mut v = vec![0u8];
        v.extend_from_slice(&(id as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    };
    let values: Vec<Option<Vec<u8>>> = vec![
        Some(framed(&[4, b'o', b'k'])),
        Some(b"junk".to_vec()),
        None,
        Some(framed(&[9, b'x'])),
    ];
    let records: Vec<Record> = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: v.map(bytes::Bytes::from),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::Gzip,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &opts).unwrap();
    let r = enforcer.check("t", &policy, &buf.freeze()).await.unwrap_err();
    let indexes: Vec<i32> = r.record_errors.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, vec![1, 3], "{r:?}");
    assert!(r.record_errors[0].1.contains("wire format"), "{r:?}");
    assert!(r.message.starts_with("2 record(s) failed"), "{r:?}");

    let mut other = crate::Policy { ..policy };
    other.value = Some(crate::enforce::Strategy::TopicRecord);
    assert!(enforcer
        .check("t", &other, &{
            let mut b = bytes::BytesMut::new();
            RecordBatchEncoder::encode(&mut b, &records[..1], &opts).unwrap();
            b.freeze()
        })
        .await
        .is_err());
}

#[tokio::test]
async fn compatibility_follows_references() {
    let (reg, _dir) = registry().await;
    let addr_v1 = r#"{"type":"record","name":"Address","namespace":"t","fields":[{"name":"city","type":"string"}]}"#;
    let addr_v2 = r#"{"type":"record","name":"Address","namespace":"t","fields":[{"name":"city","type":"string"},{"name":"zip","type":"string"}]}"#;
    let addr_v3 = r#"{"type":"record","name":"Address","namespace":"t","fields":[{"name":"city","type":"string"},{"name":"zip","type":"string","default":""}]}"#;
    reg.set_setting("address", "compatibility", "NONE").await.unwrap();
    for a in [addr_v1, addr_v2, addr_v3] {
        reg.register("address", SchemaType::Avro, a, &[]).await.unwrap();
    }
    let user = r#"{"type":"record","name":"User","namespace":"t","fields":[{"name":"home","type":"t.Address"}]}"#;
    let at = |version| {
        vec![Reference {
            name: "t.Address".into(),
            subject: "address".into(),
            version,
        }]
    };
    reg.register("user", SchemaType::Avro, user, &at(1)).await.unwrap();
    // Same text, but the referenced type gained a field without a default: not BACKWARD.
    let m = reg
        .check_compatibility("user", None, SchemaType::Avro, user, &at(2))
        .await
        .unwrap();
    assert!(m.iter().any(|m| m.contains("zip")), "{m:?}");
    assert_eq!(
        reg.register("user", SchemaType::Avro, user, &at(2))
            .await
            .unwrap_err()
            .code,
        409
    );
    // With a default it is.
    let v3 = reg.register("user", SchemaType::Avro, user, &at(3)).await.unwrap();
    assert_eq!(reg.versions("user", false).await.unwrap().last().unwrap().schema_id, v3);
}
