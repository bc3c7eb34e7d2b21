//! Payloads that carry a unique id, so `--verify` can tell which
//! acknowledged write came back, which came back twice and which never did.
//!
//! Layout (ASCII, exactly `size` bytes, no spaces so any text protocol keeps
//! it whole): `wb:<run id, 16 hex>:<entry id, 16 hex>:<filler>`. The filler
//! is derived from the entry id, so a payload that was cut, padded or mixed
//! with another is detected as corrupt rather than matched by its header.

/// Bytes taken by the header; the smallest payload `--verify` can use.
pub const HEADER_LEN: usize = 3 + 16 + 1 + 16 + 1;

const MAGIC: &[u8] = b"wb:";

/// Entry ids are `connection << CONN_SHIFT | sequence`: unique across the
/// connections of one run without any coordination between them.
pub const CONN_SHIFT: u32 = 40;

/// Builds the id of the `seq`-th write of connection `conn`.
pub fn entry_id(conn: usize, seq: u64) -> u64 {
    ((conn as u64) << CONN_SHIFT) | (seq & ((1 << CONN_SHIFT) - 1))
}

/// Splits an entry id back into (connection, sequence).
pub fn split_id(id: u64) -> (usize, u64) {
    ((id >> CONN_SHIFT) as usize, id & ((1 << CONN_SHIFT) - 1))
}

/// What a payload read back turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Written by this run, intact.
    Ours(u64),
    /// Not written by this run (another run, another client): not ours to judge.
    Foreign,
    /// Carries this run's header but the bytes are not what was written.
    Corrupt,
}

/// Encodes and decodes the payloads of one run.
#[derive(Debug, Clone)]
pub struct PayloadCodec {
    run_id: u64,
    size: usize,
    /// The alphabet repeated over `26 + size` bytes: the filler of entry
    /// `id` is the slice starting at `id % 26` (see [`filler`]), so encoding
    /// and checking one is a copy and a comparison, not a division per byte
    /// (the check of a READ-heavy run was most of the client's CPU).
    alphabet: Vec<u8>,
}

impl PayloadCodec {
    pub fn new(run_id: u64, size: usize) -> Result<Self, String> {
        if size < HEADER_LEN {
            return Err(format!(
                "--verify needs payloads of at least {HEADER_LEN} bytes to carry their id; \
                 got --size {size}, use a larger --size"
            ));
        }
        let alphabet = (0..26 + size).map(|j| b'a' + (j % 26) as u8).collect();
        Ok(PayloadCodec {
            run_id,
            size,
            alphabet,
        })
    }

    /// The filler of entry `id`: `filler(id, i)` for `i` in `0..size -
    /// HEADER_LEN`.
    fn filler_of(&self, id: u64) -> std::borrow::Cow<'_, [u8]> {
        let len = self.size - HEADER_LEN;
        if id.checked_add(len as u64).is_some() {
            // No wrap-around: (id + i) % 26 == (id % 26 + i) % 26.
            let phase = (id % 26) as usize;
            std::borrow::Cow::Borrowed(&self.alphabet[phase..phase + len])
        } else {
            std::borrow::Cow::Owned((0..len).map(|i| filler(id, i)).collect())
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Appends exactly `size` bytes: the payload of entry `id`.
    pub fn encode_into(&self, id: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        push_hex(out, self.run_id);
        out.push(b':');
        push_hex(out, id);
        out.push(b':');
        out.extend_from_slice(&self.filler_of(id));
    }

    pub fn encode(&self, id: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size);
        self.encode_into(id, &mut out);
        out
    }

    pub fn decode(&self, payload: &[u8]) -> Decoded {
        if payload.len() < HEADER_LEN || !payload.starts_with(MAGIC) {
            return Decoded::Foreign;
        }
        let run = match parse_hex(&payload[3..19]) {
            Some(run) if payload[19] == b':' => run,
            _ => return Decoded::Foreign,
        };
        if run != self.run_id {
            return Decoded::Foreign;
        }
        let id = match parse_hex(&payload[20..36]) {
            Some(id) if payload[36] == b':' => id,
            _ => return Decoded::Corrupt,
        };
        if payload.len() != self.size || payload[HEADER_LEN..] != *self.filler_of(id) {
            return Decoded::Corrupt;
        }
        Decoded::Ours(id)
    }
}

fn filler(id: u64, i: usize) -> u8 {
    b'a' + ((id.wrapping_add(i as u64)) % 26) as u8
}

fn push_hex(out: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(DIGITS[((v >> (shift * 4)) & 0xf) as usize]);
    }
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | d as u64;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_an_id_when_encoded_and_decoded_should_come_back_with_exact_size() {
        let codec = PayloadCodec::new(0xdead_beef, 100).unwrap();
        for id in [0, 1, entry_id(3, 77), u64::MAX] {
            let p = codec.encode(id);
            assert_eq!(p.len(), 100);
            assert!(!p.contains(&b' '), "payloads stay one word");
            assert_eq!(codec.decode(&p), Decoded::Ours(id));
        }
    }

    #[test]
    fn given_any_id_when_encoded_should_hold_the_filler_byte_by_byte() {
        let codec = PayloadCodec::new(7, 100).unwrap();
        for id in [
            0,
            1,
            25,
            26,
            27,
            1 << 40,
            u64::MAX - 30,
            u64::MAX - 70,
            u64::MAX,
        ] {
            let p = codec.encode(id);
            for (i, &b) in p[HEADER_LEN..].iter().enumerate() {
                assert_eq!(b, filler(id, i), "id {id} byte {i}");
            }
            assert_eq!(codec.decode(&p), Decoded::Ours(id), "id {id}");
            // The next entry's filler under this entry's header.
            let mut shifted = p.clone();
            shifted[HEADER_LEN..].copy_from_slice(&codec.encode(id.wrapping_add(1))[HEADER_LEN..]);
            assert_eq!(codec.decode(&shifted), Decoded::Corrupt, "id {id}");
        }
    }

    #[test]
    fn given_the_smallest_size_when_encoded_should_hold_only_the_header() {
        let codec = PayloadCodec::new(1, HEADER_LEN).unwrap();
        let p = codec.encode(42);
        assert_eq!(p.len(), HEADER_LEN);
        assert_eq!(codec.decode(&p), Decoded::Ours(42));
    }

    #[test]
    fn given_a_size_below_the_header_when_creating_should_refuse_with_advice() {
        let err = PayloadCodec::new(1, HEADER_LEN - 1).unwrap_err();
        assert!(err.contains("--size"), "{err}");
    }

    #[test]
    fn given_another_runs_payload_when_decoding_should_be_foreign() {
        let mine = PayloadCodec::new(1, 64).unwrap();
        let theirs = PayloadCodec::new(2, 64).unwrap();
        assert_eq!(mine.decode(&theirs.encode(5)), Decoded::Foreign);
        assert_eq!(mine.decode(b"hello world"), Decoded::Foreign);
        assert_eq!(mine.decode(b""), Decoded::Foreign);
    }

    #[test]
    fn given_a_damaged_payload_when_decoding_should_be_corrupt() {
        let codec = PayloadCodec::new(9, 64).unwrap();
        let good = codec.encode(5);

        let mut flipped = good.clone();
        flipped[50] = b'#';
        assert_eq!(codec.decode(&flipped), Decoded::Corrupt);

        assert_eq!(codec.decode(&good[..63]), Decoded::Corrupt);

        let mut longer = good.clone();
        longer.push(b'a');
        assert_eq!(codec.decode(&longer), Decoded::Corrupt);

        // Another entry's filler under this entry's header.
        let mut swapped = good[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&codec.encode(6)[HEADER_LEN..]);
        assert_eq!(codec.decode(&swapped), Decoded::Corrupt);
    }

    #[test]
    fn given_connection_and_sequence_when_building_an_id_should_split_back() {
        let id = entry_id(15, 123_456);
        assert_eq!(split_id(id), (15, 123_456));
        assert_ne!(entry_id(1, 0), entry_id(0, 1));
    }
}
