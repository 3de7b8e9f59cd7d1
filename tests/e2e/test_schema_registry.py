"""Schema registry and broker-side schema enforcement, driven by Confluent's own
Python client: SchemaRegistryClient for the REST API, and the Avro, Protobuf
and JSON Schema serializers/deserializers for data in validating topics.
"""

from __future__ import annotations

import json
import struct
import subprocess

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from conftest import consume_confluent, create_topic, http_get

USER_V1 = json.dumps({
    "type": "record", "name": "User", "namespace": "sluice.test",
    "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"}],
})
USER_V2 = json.dumps({
    "type": "record", "name": "User", "namespace": "sluice.test",
    "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"},
               {"name": "email", "type": ["null", "string"], "default": None}],
})
# Adds a field without a default: not BACKWARD compatible with v1.
USER_BAD = json.dumps({
    "type": "record", "name": "User", "namespace": "sluice.test",
    "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"},
               {"name": "age", "type": "int"}],
})


def sr(broker) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": broker.registry})


def produce_each(broker, topic: str, values: list[bytes | None], keys: list[bytes | None] | None = None) -> list:
    """Produce each value in its own batch; return the delivery error (or None) of each."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0, "retries": 0,
                  "enable.idempotence": False, "message.timeout.ms": 20000})
    results = []
    for i, v in enumerate(values):
        out = []
        p.produce(topic, value=v, key=(keys[i] if keys else None), on_delivery=lambda err, msg: out.append(err))
        p.flush(20)
        assert len(out) == 1, "no delivery report"
        results.append(out[0])
    return results


def metric(broker, name: str, topic: str) -> float:
    status, body, _ = http_get(f"{broker.http}/metrics")
    assert status == 200
    for line in body.splitlines():
        if line.startswith(name + "{") and f'topic="{topic}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_rest_api_with_schema_registry_client(broker):
    c = sr(broker)
    assert sorted(c.get_schema_types()) == ["AVRO", "JSON", "PROTOBUF"]
    id1 = c.register_schema("users-value", Schema(USER_V1, "AVRO"))
    # Re-registering an equivalent schema (other spacing, other key order) keeps the id.
    reordered = json.dumps(json.loads(USER_V1), indent=2, sort_keys=True)
    assert SchemaRegistryClient({"url": broker.registry}).register_schema("users-value", Schema(reordered, "AVRO")) == id1
    assert json.loads(c.get_schema(id1).schema_str) == json.loads(USER_V1)

    assert c.test_compatibility("users-value", Schema(USER_V2, "AVRO"))
    assert not c.test_compatibility("users-value", Schema(USER_BAD, "AVRO"))
    with pytest.raises(SchemaRegistryError) as e:
        c.register_schema("users-value", Schema(USER_BAD, "AVRO"))
    assert e.value.http_status_code == 409 and e.value.error_code == 409

    id2 = c.register_schema("users-value", Schema(USER_V2, "AVRO"))
    assert id2 != id1
    latest = c.get_latest_version("users-value")
    assert (latest.version, latest.schema_id) == (2, id2)
    v1 = c.get_version("users-value", 1)
    assert (v1.version, v1.schema_id, v1.subject) == (1, id1, "users-value")
    found = c.lookup_schema("users-value", Schema(USER_V1, "AVRO"))
    assert (found.version, found.schema_id) == (1, id1)
    assert c.get_versions("users-value") == [1, 2]
    assert "users-value" in c.get_subjects()

    # Same schema under another subject: same id, globally.
    assert c.register_schema("other-value", Schema(USER_V1, "AVRO")) == id1

    # Config: global and per subject.
    assert c.get_compatibility() == "BACKWARD"
    c.set_compatibility("users-value", "NONE")
    assert c.get_compatibility("users-value") == "NONE"
    assert c.register_schema("users-value", Schema(USER_BAD, "AVRO")) > id2

    # Errors carry Confluent's codes.
    for call, status, code in [
        (lambda: c.get_latest_version("no-such-subject"), 404, 40401),
        (lambda: c.get_version("users-value", 99), 404, 40402),
        (lambda: c.get_schema(987654), 404, 40403),
        (lambda: c.register_schema("bad-value", Schema('{"type": "record", "name": "X"', "AVRO")), 422, 42201),
        (lambda: c.register_schema("bad-value", Schema("message {", "PROTOBUF")), 422, 42201),
    ]:
        with pytest.raises(SchemaRegistryError) as e:
            call()
        assert (e.value.http_status_code, e.value.error_code) == (status, code), e.value

    # Soft delete, then permanent delete.
    assert c.delete_version("users-value", 3) == 3
    assert c.get_versions("users-value") == [1, 2]
    with pytest.raises(SchemaRegistryError) as e:
        c.delete_subject("users-value", permanent=True)
    assert e.value.error_code == 40405
    assert c.delete_subject("users-value") == [1, 2]
    assert "users-value" not in c.get_subjects()
    assert c.delete_subject("users-value", permanent=True) == [1, 2, 3]
    # The id still resolves while another subject uses it.
    assert json.loads(c.get_schema(id1).schema_str) == json.loads(USER_V1)


def test_raw_rest_shapes_and_content_type(broker):
    import urllib.request

    def call(method, path, body=None):
        req = urllib.request.Request(broker.registry + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers["Content-Type"], json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], json.loads(e.read())

    status, ctype, body = call("POST", "/subjects/raw-value/versions", {"schema": USER_V1})
    assert status == 200 and ctype == "application/vnd.schemaregistry.v1+json" and "id" in body
    sid = body["id"]
    assert call("GET", f"/schemas/ids/{sid}/versions")[2] == [{"subject": "raw-value", "version": 1}]
    status, _, v = call("GET", "/subjects/raw-value/versions/latest")
    assert (v["subject"], v["version"], v["id"]) == ("raw-value", 1, sid) and "schemaType" not in v
    status, _, body = call("POST", "/compatibility/subjects/raw-value/versions/latest?verbose=true", {"schema": USER_BAD})
    assert body["is_compatible"] is False and any("READER_FIELD_MISSING_DEFAULT_VALUE" in m for m in body["messages"])
    assert call("GET", "/subjects/raw-value/versions/abc")[2]["error_code"] == 42202
    assert call("PUT", "/config", {"compatibility": "SIDEWAYS"})[2]["error_code"] == 42203
    assert call("GET", "/config/raw-value")[2]["error_code"] == 40408
    assert call("GET", "/config/raw-value?defaultToGlobal=true")[2] == {"compatibilityLevel": "BACKWARD"}
    assert call("GET", "/mode")[2] == {"mode": "READWRITE"}
    assert call("PUT", "/mode/raw-value", {"mode": "READONLY"})[2] == {"mode": "READONLY"}
    status, _, body = call("POST", "/subjects/raw-value/versions", {"schema": USER_V2})
    assert (status, body["error_code"]) == (422, 42205)
    assert call("DELETE", "/mode/raw-value")[2] == {"mode": "READONLY"}
    # A malformed body or schema is a 4xx with a message, never a 500.
    for bad in [{"schema": ""}, {"schema": "{]"}, {"schema": "{}", "schemaType": "XML"}, {"schemaa": USER_V1}]:
        status, _, body = call("POST", "/subjects/raw-value/versions", bad)
        assert status == 422 and body["message"], (bad, status, body)

    # References: a record type defined under another subject.
    addr = json.dumps({"type": "record", "name": "Address", "namespace": "sluice.test",
                       "fields": [{"name": "city", "type": "string"}]})
    assert call("POST", "/subjects/address/versions", {"schema": addr})[0] == 200
    person = json.dumps({"type": "record", "name": "Person", "namespace": "sluice.test",
                         "fields": [{"name": "home", "type": "sluice.test.Address"}]})
    status, _, body = call("POST", "/subjects/person-value/versions", {
        "schema": person, "references": [{"name": "sluice.test.Address", "subject": "address", "version": 1}]})
    assert status == 200, body
    pid = body["id"]
    assert call("GET", "/subjects/address/versions/1/referencedby")[2] == [pid]
    assert call("DELETE", "/subjects/address")[2]["error_code"] == 42206
    status, _, body = call("GET", f"/schemas/ids/{pid}")
    assert body["references"] == [{"name": "sluice.test.Address", "subject": "address", "version": 1}]


def test_avro_validation_rejects_bad_records(broker):
    topic = "avro-validated"
    create_topic(broker, topic, config={"confluent.value.schema.validation": "true"})
    c = sr(broker)
    ser = AvroSerializer(c, USER_V1)
    ctx = SerializationContext(topic, MessageField.VALUE)
    good = [ser({"id": i, "name": f"user-{i}"}, ctx) for i in range(3)]
    sid = struct.unpack(">I", good[0][1:5])[0]

    # An id registered for another subject only, and an Avro body that does not decode.
    other_id = c.register_schema("unrelated-value", Schema(USER_V2, "AVRO"))
    wrong_subject = b"\x00" + struct.pack(">I", other_id) + good[0][5:]
    bad_body = b"\x00" + struct.pack(">I", sid) + b"\x02\x7f\x80"
    values = [good[0], b"plain junk", good[1], bad_body, wrong_subject, b"\x00\x00\x00", good[2]]
    errs = produce_each(broker, topic, values)
    codes = [e.code() if e else None for e in errs]
    assert codes == [None, KafkaError.INVALID_RECORD, None, KafkaError.INVALID_RECORD,
                     KafkaError.INVALID_RECORD, KafkaError.INVALID_RECORD, None], [str(e) for e in errs]

    # Only the valid records were stored, and they read back with the deserializer.
    recs = consume_confluent(broker.bootstrap, topic)[0]
    de = AvroDeserializer(c)
    assert [de(r.value, ctx) for r in recs] == [{"id": i, "name": f"user-{i}"} for i in range(3)]
    assert metric(broker, "sluice_schema_rejected_batches_total", topic) == 4

    # Null values (tombstones) pass; keys are not checked unless asked.
    assert produce_each(broker, topic, [None], keys=[b"k"]) == [None]


def test_kafka_python_sees_per_record_errors(broker):
    """kafka-python surfaces the broker's error message for INVALID_RECORD."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError as KPError

    topic = "avro-kp"
    create_topic(broker, topic, config={"sluice.value.schema.validation": "true"})
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, retries=0, linger_ms=0)
    try:
        fut = p.send(topic, b"not avro at all")
        with pytest.raises(KPError) as e:
            fut.get(timeout=20)
        assert "InvalidRecord" in type(e.value).__name__ or "87" in str(e.value) or "INVALID_RECORD" in str(e.value).upper()
        assert "wire format" in str(e.value) or "schema" in str(e.value).lower()
    finally:
        p.close()


def test_header_level_and_key_validation(broker):
    topic = "header-level"
    create_topic(broker, topic, config={
        "sluice.value.schema.validation": "true",
        "sluice.key.schema.validation": "true",
        "sluice.schema.validation.level": "header",
    })
    c = sr(broker)
    vid = c.register_schema(f"{topic}-value", Schema(USER_V1, "AVRO"))
    kid = c.register_schema(f"{topic}-key", Schema('"string"', "AVRO"))
    hdr = lambda i: b"\x00" + struct.pack(">I", i)  # noqa: E731
    # At header level a registered id is enough, even with an undecodable body.
    errs = produce_each(broker, topic, [hdr(vid) + b"\xff\xff", hdr(vid) + b"x", hdr(kid) + b"x"],
                        keys=[hdr(kid) + b"k", hdr(vid) + b"k", hdr(kid) + b"k"])
    assert [e.code() if e else None for e in errs] == [None, KafkaError.INVALID_RECORD, KafkaError.INVALID_RECORD]


def test_record_name_strategy(broker):
    topic = "rns"
    create_topic(broker, topic, config={
        "confluent.value.schema.validation": "true",
        "confluent.value.subject.name.strategy": "io.confluent.kafka.serializers.subject.RecordNameStrategy",
    })
    c = sr(broker)
    from confluent_kafka.schema_registry import record_subject_name_strategy
    ser = AvroSerializer(c, USER_V1, conf={"subject.name.strategy": record_subject_name_strategy})
    ctx = SerializationContext(topic, MessageField.VALUE)
    good = ser({"id": 1, "name": "a"}, ctx)
    assert "sluice.test.User" in c.get_subjects()
    # The same schema registered only under the topic's subject does not satisfy RecordNameStrategy.
    other = json.dumps({"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]})
    oid = c.register_schema(f"{topic}-value", Schema(other, "AVRO"))
    errs = produce_each(broker, topic, [good, b"\x00" + struct.pack(">I", oid) + b"\x02"])
    assert [e.code() if e else None for e in errs] == [None, KafkaError.INVALID_RECORD]


def _order_class():
    """A protobuf message class built at run time (no protoc needed)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="sluice_order.proto", package="sluice.test", syntax="proto3")
    m = fdp.message_type.add(name="Order")
    f = descriptor_pb2.FieldDescriptorProto
    m.field.add(name="id", number=1, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    m.field.add(name="item", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    m.field.add(name="tags", number=3, type=f.TYPE_STRING, label=f.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sluice.test.Order"))


def test_protobuf_validation(broker):
    topic = "proto-validated"
    create_topic(broker, topic, config={"sluice.value.schema.validation": "true"})
    c = sr(broker)
    Order = _order_class()
    ser = ProtobufSerializer(Order, c)
    ctx = SerializationContext(topic, MessageField.VALUE)
    good = [ser(Order(id=i, item=f"item-{i}", tags=["a", "b"]), ctx) for i in range(3)]
    sid = struct.unpack(">I", good[0][1:5])[0]
    # Field 2 (a string) sent as a varint: wrong wire type.
    bad = b"\x00" + struct.pack(">I", sid) + b"\x00" + b"\x10\x05"
    errs = produce_each(broker, topic, [good[0], bad, good[1], b"junk", good[2]])
    assert [e.code() if e else None for e in errs] == [None, KafkaError.INVALID_RECORD, None,
                                                        KafkaError.INVALID_RECORD, None]
    de = ProtobufDeserializer(Order, {"use.deprecated.format": False}, c)
    recs = consume_confluent(broker.bootstrap, topic)[0]
    got = [de(r.value, ctx) for r in recs]
    assert [(o.id, o.item, list(o.tags)) for o in got] == [(i, f"item-{i}", ["a", "b"]) for i in range(3)]
    # The registry serves the schema as .proto text or as a descriptor.
    s = c.get_schema(sid, fmt="serialized")
    assert s.schema_type == "PROTOBUF" and s.schema_str


JSON_SCHEMA = json.dumps({
    "$schema": "http://json-schema.org/draft-07/schema#", "title": "Reading", "type": "object",
    "properties": {"sensor": {"type": "string"}, "value": {"type": "number"}},
    "required": ["sensor", "value"], "additionalProperties": False,
})


def test_json_schema_validation(broker):
    topic = "json-validated"
    create_topic(broker, topic, config={"sluice.value.schema.validation": "true"})
    c = sr(broker)
    ser = JSONSerializer(JSON_SCHEMA, c)
    ctx = SerializationContext(topic, MessageField.VALUE)
    good = [ser({"sensor": f"s{i}", "value": i * 1.5}, ctx) for i in range(3)]
    sid = struct.unpack(">I", good[0][1:5])[0]
    hdr = b"\x00" + struct.pack(">I", sid)
    missing_field = hdr + b'{"sensor": "s9"}'
    not_json = hdr + b"{nope"
    errs = produce_each(broker, topic, [good[0], missing_field, good[1], not_json, good[2]])
    assert [e.code() if e else None for e in errs] == [None, KafkaError.INVALID_RECORD, None,
                                                        KafkaError.INVALID_RECORD, None]
    de = JSONDeserializer(JSON_SCHEMA, schema_registry_client=c)
    recs = consume_confluent(broker.bootstrap, topic)[0]
    assert [de(r.value, ctx) for r in recs] == [{"sensor": f"s{i}", "value": i * 1.5} for i in range(3)]


def test_unknown_strategy_config_refused(broker):
    from confluent_kafka.admin import AdminClient, NewTopic

    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    fs = a.create_topics([NewTopic("bad-strategy", 1, 1, config={"sluice.value.subject.name.strategy": "Nope"})])
    with pytest.raises(Exception) as e:
        fs["bad-strategy"].result(timeout=20)
    assert "Nope" in str(e.value)


def test_cli_schema_commands(broker, tmp_path):
    f = tmp_path / "user.avsc"
    f.write_text(USER_V1)
    run = lambda *a: subprocess.run([str(broker.bin), "schema", "--registry", broker.registry, *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=30)
    r = run("register", "cli-value", "--file", str(f))
    assert r.returncode == 0, r.stderr
    sid = int(r.stdout.strip())
    r = run("get", "cli-value")
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == sid
    assert run("list").stdout.split() == ["cli-value"]
    bad = tmp_path / "bad.avsc"
    bad.write_text(USER_BAD)
    r = run("check", "cli-value", "--file", str(bad))
    assert r.returncode == 1 and "incompatible" in r.stdout
    good = tmp_path / "v2.avsc"
    good.write_text(USER_V2)
    assert run("check", "cli-value", "--file", str(good)).stdout.strip() == "compatible"
    r = run("delete", "cli-value")
    assert r.returncode == 0 and "[1]" in r.stdout
    r = run("get", "cli-value")
    assert r.returncode != 0 and "40401" in r.stderr


def test_brokers_sharing_a_metadata_store_serve_one_registry(make_broker):
    """Ids come from the metadata store: concurrent registrations through two
    brokers get distinct ids, and each broker serves what the other registered."""
    from concurrent.futures import ThreadPoolExecutor

    a = make_broker()
    b = make_broker(start=False)
    b.args[b.args.index("--node-id") + 1] = "1"
    b.args += ["--meta", f"sqlite://{a.data_dir / 'meta.db'}"]
    b.start()
    schemas = [json.dumps({"type": "record", "name": f"R{i}", "fields": [{"name": "x", "type": "int"}]})
               for i in range(20)]

    def reg(i):
        broker = (a, b)[i % 2]
        return SchemaRegistryClient({"url": broker.registry}).register_schema(f"shared-{i}", Schema(schemas[i], "AVRO"))

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(reg, range(20)))
    assert len(set(ids)) == 20
    for broker in (a, b):
        c = sr(broker)
        assert sorted(s for s in c.get_subjects() if s.startswith("shared-")) == sorted(f"shared-{i}" for i in range(20))
        for i, sid in enumerate(ids):
            assert json.loads(c.get_schema(sid).schema_str)["name"] == f"R{i}"
    # Same schema through both brokers: one id, one version per subject.
    same = [sr(x).register_schema("same-value", Schema(schemas[0], "AVRO")) for x in (a, b)]
    assert same == [ids[0], ids[0]] and sr(b).get_versions("same-value") == [1]


def test_protobuf_references_through_the_serializer(broker):
    """ProtobufSerializer registers an imported file as its own subject and
    refers to it; the broker resolves the reference to validate."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    money = descriptor_pb2.FileDescriptorProto(name="sluice/money.proto", package="sluice.money", syntax="proto3")
    m = money.message_type.add(name="Money")
    m.field.add(name="cents", number=1, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    m.field.add(name="currency", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    order = descriptor_pb2.FileDescriptorProto(name="sluice/invoice.proto", package="sluice.test", syntax="proto3",
                                               dependency=["sluice/money.proto"])
    o = order.message_type.add(name="Invoice")
    o.field.add(name="id", number=1, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    o.field.add(name="total", number=2, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL, type_name=".sluice.money.Money")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(money)
    pool.Add(order)
    Invoice = message_factory.GetMessageClass(pool.FindMessageTypeByName("sluice.test.Invoice"))
    Money = message_factory.GetMessageClass(pool.FindMessageTypeByName("sluice.money.Money"))

    topic = "invoices"
    create_topic(broker, topic, config={"sluice.value.schema.validation": "true"})
    c = sr(broker)
    ser = ProtobufSerializer(Invoice, c)
    ctx = SerializationContext(topic, MessageField.VALUE)
    good = ser(Invoice(id=7, total=Money(cents=1250, currency="EUR")), ctx)
    assert "sluice/money.proto" in c.get_subjects()
    latest = c.get_latest_version(f"{topic}-value")
    assert [(r.name, r.subject) for r in latest.schema.references] == [("sluice/money.proto", "sluice/money.proto")]
    sid = struct.unpack(">I", good[1:5])[0]
    # Invoice.total (field 2) must be a message; a varint there is rejected.
    bad = b"\x00" + struct.pack(">I", sid) + b"\x00" + b"\x08\x07\x10\x01"
    errs = produce_each(broker, topic, [good, bad])
    assert [e.code() if e else None for e in errs] == [None, KafkaError.INVALID_RECORD]
    de = ProtobufDeserializer(Invoice, {"use.deprecated.format": False}, c)
    [rec] = consume_confluent(broker.bootstrap, topic)[0]
    got = de(rec.value, ctx)
    assert (got.id, got.total.cents, got.total.currency) == (7, 1250, "EUR")
