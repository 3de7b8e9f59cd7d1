//! The data object format: the batches of one flush, back to back, then a
//! footer listing them so that an object can be verified and the offset index
//! rebuilt without the metadata store.
//!
//! ```text
//! object  := batch* footer trailer
//! footer  := version:u8 count:u32 entry*
//! entry   := topic_id:[16] name_len:u16 name partition:i32 base_offset:i64
//!            last_offset:i64 max_timestamp:i64 position:u64 length:u32
//! trailer := footer_len:u32 footer_crc32c:u32 magic:"SLUICEO1"
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::batch;

/// A new flush object's key: `data/<ms>-<node>-<uuid>.sobj` (its time is what compaction
/// ages it by).
pub(crate) fn flush_key(node_id: i32) -> String {
    format!(
        "data/{:013}-{}-{}.sobj",
        sluice_meta::now_ms(),
        node_id,
        Uuid::new_v4().simple()
    )
}

pub const MAGIC: &[u8; 8] = b"SLUICEO1";
pub const TRAILER_LEN: usize = 16;
const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FooterEntry {
    pub topic_id: Uuid,
    pub topic: String,
    pub partition: i32,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub position: u64,
    pub length: u32,
}

impl FooterEntry {
    /// The offset index row for this batch, stored in `object_key`.
    pub fn index_row(&self, object_key: &str) -> sluice_meta::BatchRow {
        sluice_meta::BatchRow {
            topic_id: self.topic_id,
            partition: self.partition,
            base_offset: self.base_offset,
            last_offset: self.last_offset,
            max_timestamp: self.max_timestamp,
            object_key: object_key.to_string(),
            position: self.position as i64,
            length: self.length as i32,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectError {
    #[error("object too short for a trailer")]
    Short,
    #[error("bad magic: not a sluice data object")]
    BadMagic,
    #[error("footer length {0} out of bounds")]
    FooterBounds(usize),
    #[error("footer checksum mismatch")]
    FooterCrc,
    #[error("malformed footer: {0}")]
    Malformed(&'static str),
    #[error("batch at {0} out of bounds or failing its CRC")]
    BadBatch(u64),
}

/// Appends footer and trailer for `entries` to `body` (which holds the batches).
pub fn finish(body: &mut BytesMut, entries: &[FooterEntry]) {
    let start = body.len();
    body.put_u8(VERSION);
    body.put_u32(entries.len() as u32);
    for e in entries {
        body.put_slice(e.topic_id.as_bytes());
        let name = e.topic.as_bytes();
        body.put_u16(name.len() as u16);
        body.put_slice(name);
        body.put_i32(e.partition);
        body.put_i64(e.base_offset);
        body.put_i64(e.last_offset);
        body.put_i64(e.max_timestamp);
        body.put_u64(e.position);
        body.put_u32(e.length);
    }
    let footer_len = body.len() - start;
    let crc = crc32c::crc32c(&body[start..]);
    body.put_u32(footer_len as u32);
    body.put_u32(crc);
    body.put_slice(MAGIC);
}

/// An object made of batches held in other objects: each batch is `(its entry, the
/// object holding it at the entry's position)`. Each partition's batches go together, in
/// offset order, so that a reader of one partition gets a run of adjacent batches with one
/// ranged read. Returns the object's pieces in order (the batches, then footer and
/// trailer) and its footer entries.
pub fn assemble(mut batches: Vec<(&FooterEntry, &Bytes)>) -> (Vec<Bytes>, Vec<FooterEntry>) {
    batches.sort_by_key(|(e, _)| (e.topic_id, e.partition, e.base_offset));
    let mut parts = Vec::with_capacity(batches.len() + 1);
    let mut entries = Vec::with_capacity(batches.len());
    let mut position = 0u64;
    for (e, object) in batches {
        parts.push(object.slice(e.position as usize..(e.position + e.length as u64) as usize));
        entries.push(FooterEntry { position, ..e.clone() });
        position += e.length as u64;
    }
    let mut footer = BytesMut::new();
    finish(&mut footer, &entries);
    parts.push(footer.freeze());
    (parts, entries)
}

/// Reads the trailer; returns the footer's length.
pub fn footer_len(trailer: &[u8], object_len: usize) -> Result<usize, ObjectError> {
    if trailer.len() < TRAILER_LEN || object_len < TRAILER_LEN {
        return Err(ObjectError::Short);
    }
    let t = &trailer[trailer.len() - TRAILER_LEN..];
    if &t[8..16] != MAGIC {
        return Err(ObjectError::BadMagic);
    }
    let len = (&t[0..4]).get_u32() as usize;
    if len + TRAILER_LEN > object_len {
        return Err(ObjectError::FooterBounds(len));
    }
    Ok(len)
}

/// Decodes a footer (without trailer), checking it against the trailer's CRC.
pub fn decode_footer(footer: &[u8], trailer: &[u8], data_len: u64) -> Result<Vec<FooterEntry>, ObjectError> {
    let t = &trailer[trailer.len() - TRAILER_LEN..];
    if crc32c::crc32c(footer) != (&t[4..8]).get_u32() {
        return Err(ObjectError::FooterCrc);
    }
    let mut b = footer;
    let need = |b: &[u8], n: usize| {
        if b.remaining() < n {
            Err(ObjectError::Malformed("truncated"))
        } else {
            Ok(())
        }
    };
    need(b, 5)?;
    if b.get_u8() != VERSION {
        return Err(ObjectError::Malformed("unknown footer version"));
    }
    let count = b.get_u32() as usize;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        need(b, 18)?;
        let mut id = [0u8; 16];
        b.copy_to_slice(&mut id);
        let name_len = b.get_u16() as usize;
        need(b, name_len + 40)?;
        let topic = String::from_utf8(b[..name_len].to_vec()).map_err(|_| ObjectError::Malformed("topic name"))?;
        b.advance(name_len);
        let e = FooterEntry {
            topic_id: Uuid::from_bytes(id),
            topic,
            partition: b.get_i32(),
            base_offset: b.get_i64(),
            last_offset: b.get_i64(),
            max_timestamp: b.get_i64(),
            position: b.get_u64(),
            length: b.get_u32(),
        };
        if e.position.checked_add(e.length as u64).is_none_or(|end| end > data_len) {
            return Err(ObjectError::BadBatch(e.position));
        }
        out.push(e);
    }
    if b.has_remaining() {
        return Err(ObjectError::Malformed("trailing bytes"));
    }
    Ok(out)
}

/// Parses a whole object held in memory: its footer entries.
pub fn parse(object: &[u8]) -> Result<Vec<FooterEntry>, ObjectError> {
    let flen = footer_len(object, object.len())?;
    let data_len = object.len() - TRAILER_LEN - flen;
    decode_footer(&object[data_len..data_len + flen], object, data_len as u64)
}

/// Verifies a whole object: footer, and every batch's CRC and offsets.
pub fn verify(object: &Bytes) -> Result<Vec<FooterEntry>, ObjectError> {
    let entries = parse(object)?;
    for e in &entries {
        let b = &object[e.position as usize..(e.position + e.length as u64) as usize];
        let ok = batch::crc_ok(b)
            && batch::parse_header(b, 0).is_ok_and(|h| {
                (&b[0..8]).get_i64() == e.base_offset
                    && e.base_offset.checked_add(h.last_offset_delta as i64) == Some(e.last_offset)
            });
        if !ok {
            return Err(ObjectError::BadBatch(e.position));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::make_batch;
    use kafka_protocol::records::Compression;
    use proptest::prelude::*;

    fn build(n: usize) -> (Bytes, Vec<FooterEntry>) {
        let mut body = BytesMut::new();
        let mut entries = vec![];
        let id = Uuid::new_v4();
        let mut offset = 0;
        for p in 0..n {
            let b = make_batch(3, -1, 0, 100, Compression::Lz4);
            let mut m = BytesMut::from(&b[..]);
            batch::patch_header(&mut m, offset, 0);
            entries.push(FooterEntry {
                topic_id: id,
                topic: "t".into(),
                partition: p as i32,
                base_offset: offset,
                last_offset: offset + 2,
                max_timestamp: 102,
                position: body.len() as u64,
                length: m.len() as u32,
            });
            body.extend_from_slice(&m);
            offset += 3;
        }
        finish(&mut body, &entries);
        (body.freeze(), entries)
    }

    #[test]
    fn round_trip_and_verify() {
        let (obj, entries) = build(4);
        assert_eq!(verify(&obj).unwrap(), entries);
    }

    #[test]
    fn detects_damage() {
        let (obj, _) = build(2);
        let mut bad = obj.to_vec();
        bad[5] ^= 1; // inside the first batch
        assert!(matches!(verify(&Bytes::from(bad)), Err(ObjectError::BadBatch(0))));
        let mut bad = obj.to_vec();
        let n = bad.len();
        bad[n - 20] ^= 1; // inside the footer
        assert_eq!(verify(&Bytes::from(bad)), Err(ObjectError::FooterCrc));
        assert_eq!(verify(&obj.slice(..obj.len() - 1)), Err(ObjectError::BadMagic));
        assert_eq!(parse(b"short"), Err(ObjectError::Short));
    }

    #[test]
    fn offsets_at_the_limit_do_not_overflow() {
        // Found by fuzzing: base offset i64::MAX plus a delta overflowed in verify.
        let b = make_batch(2, -1, 0, 0, Compression::None);
        let mut m = BytesMut::from(&b[..]);
        batch::patch_header(&mut m, i64::MAX, 0);
        let entry = FooterEntry {
            topic_id: Uuid::nil(),
            topic: "t".into(),
            partition: 0,
            base_offset: i64::MAX,
            last_offset: i64::MAX,
            max_timestamp: 0,
            position: 0,
            length: m.len() as u32,
        };
        finish(&mut m, &[entry]);
        assert_eq!(verify(&m.freeze()), Err(ObjectError::BadBatch(0)));
    }

    proptest! {
        #[test]
        fn footer_round_trips(parts in proptest::collection::vec((any::<i32>(), 0i64..1<<40, 0u32..1000, "[a-z._-]{1,20}"), 0..20)) {
            let data_len = 1_000_000u64;
            let entries: Vec<FooterEntry> = parts.iter().enumerate().map(|(i, (p, off, len, name))| FooterEntry {
                topic_id: Uuid::from_u128(i as u128),
                topic: name.clone(),
                partition: *p,
                base_offset: *off,
                last_offset: off + 1,
                max_timestamp: -1,
                position: i as u64 * 1000,
                length: *len,
            }).collect();
            let mut body = BytesMut::zeroed(data_len as usize);
            finish(&mut body, &entries);
            prop_assert_eq!(parse(&body).unwrap(), entries);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut d = data.clone();
            d.extend_from_slice(MAGIC);
            let _ = parse(&d);
            let _ = parse(&data);
        }
    }
}
