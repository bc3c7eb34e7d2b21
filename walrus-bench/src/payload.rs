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
}

impl PayloadCodec {
    pub fn new(run_id: u64, size: usize) -> Result<Self, String> {
        if size < HEADER_LEN {
            return Err(format!(
                "--verify needs payloads of at least {HEADER_LEN} bytes to carry their id; \
                 got --size {size}, use a larger --size"
            ));
        }
        Ok(PayloadCodec { run_id, size })
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
        for i in 0..self.size - HEADER_LEN {
            out.push(filler(id, i));
        }
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
        if payload.len() != self.size
            || payload[HEADER_LEN..]
                .iter()
                .enumerate()
                .any(|(i, &b)| b != filler(id, i))
        {
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
