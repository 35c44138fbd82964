//! Per-shard local tables (`sink = { …, shard_by = "field" }`): each row goes
//! to shard `cityHash64(field value) % shards`, the shards being
//! `clickhouse.urls` in order.
//!
//! The hash is ClickHouse's own `cityHash64` (CityHash v1.0.2) of the field's
//! bytes as the message carries them, so the placement can be checked in
//! SQL: shard `i` holds exactly the rows with
//! `cityHash64(toString(field)) % N = i` (for a String column, `toString`
//! is the value itself; for other types, as long as the producer wrote the
//! value in ClickHouse's canonical text). A message without the field
//! hashes as the empty string.

use crate::redis::Message;

/// How a sharded flow places rows.
#[derive(Debug, Clone)]
pub(crate) struct Sharding {
    field: Box<[u8]>,
    shards: usize,
}

impl Sharding {
    pub(crate) fn new(field: &str, shards: usize) -> Sharding {
        assert!(shards > 0, "at least one shard");
        Sharding {
            field: field.as_bytes().into(),
            shards,
        }
    }

    /// The shard of `m`.
    pub(crate) fn shard_of(&self, m: &Message) -> usize {
        let value = m.field(&self.field).unwrap_or(b"");
        (city_hash64(value) % self.shards as u64) as usize
    }

    /// Splits `messages` by shard, keeping their order within each shard.
    /// Returns only non-empty parts, in shard order.
    pub(crate) fn split(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Vec<(usize, Vec<Message>)> {
        let mut parts: Vec<Vec<Message>> = (0..self.shards).map(|_| Vec::new()).collect();
        for m in messages {
            parts[self.shard_of(&m)].push(m);
        }
        parts
            .into_iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .collect()
    }
}

// CityHash v1.0.2, 64-bit: the version ClickHouse's `cityHash64` uses.
const K0: u64 = 0xc3a5_c85c_97cb_3127;
const K1: u64 = 0xb492_b66f_be98_f273;
const K2: u64 = 0x9ae1_6a3b_2f90_404f;
const K3: u64 = 0xc949_d7c7_509e_6557;

fn fetch64(s: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"))
}

fn fetch32(s: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes")) as u64
}

fn rotate(v: u64, shift: u32) -> u64 {
    if shift == 0 {
        v
    } else {
        v.rotate_right(shift)
    }
}

fn shift_mix(v: u64) -> u64 {
    v ^ (v >> 47)
}

fn hash_len16(u: u64, v: u64) -> u64 {
    const MUL: u64 = 0x9ddf_ea08_eb38_2d69;
    let mut a = (u ^ v).wrapping_mul(MUL);
    a ^= a >> 47;
    let mut b = (v ^ a).wrapping_mul(MUL);
    b ^= b >> 47;
    b.wrapping_mul(MUL)
}

fn hash_len0to16(s: &[u8]) -> u64 {
    let len = s.len();
    if len > 8 {
        let a = fetch64(s, 0);
        let b = fetch64(s, len - 8);
        // RotateByAtLeast1: len is 9..=16 here.
        return hash_len16(a, (b.wrapping_add(len as u64)).rotate_right(len as u32)) ^ b;
    }
    if len >= 4 {
        let a = fetch32(s, 0);
        return hash_len16((len as u64).wrapping_add(a << 3), fetch32(s, len - 4));
    }
    if len > 0 {
        let (a, b, c) = (s[0] as u32, s[len >> 1] as u32, s[len - 1] as u32);
        let y = a.wrapping_add(b << 8);
        let z = (len as u32).wrapping_add(c << 2);
        return shift_mix((y as u64).wrapping_mul(K2) ^ (z as u64).wrapping_mul(K3))
            .wrapping_mul(K2);
    }
    K2
}

fn hash_len17to32(s: &[u8]) -> u64 {
    let len = s.len();
    let a = fetch64(s, 0).wrapping_mul(K1);
    let b = fetch64(s, 8);
    let c = fetch64(s, len - 8).wrapping_mul(K2);
    let d = fetch64(s, len - 16).wrapping_mul(K0);
    hash_len16(
        rotate(a.wrapping_sub(b), 43)
            .wrapping_add(rotate(c, 30))
            .wrapping_add(d),
        a.wrapping_add(rotate(b ^ K3, 20))
            .wrapping_sub(c)
            .wrapping_add(len as u64),
    )
}

fn weak_hash_len32_with_seeds(s: &[u8], at: usize, mut a: u64, mut b: u64) -> (u64, u64) {
    let (w, x, y, z) = (
        fetch64(s, at),
        fetch64(s, at + 8),
        fetch64(s, at + 16),
        fetch64(s, at + 24),
    );
    a = a.wrapping_add(w);
    b = rotate(b.wrapping_add(a).wrapping_add(z), 21);
    let c = a;
    a = a.wrapping_add(x).wrapping_add(y);
    b = b.wrapping_add(rotate(a, 44));
    (a.wrapping_add(z), b.wrapping_add(c))
}

fn hash_len33to64(s: &[u8]) -> u64 {
    let len = s.len();
    let mut z = fetch64(s, 24);
    let mut a = fetch64(s, 0).wrapping_add(
        (len as u64)
            .wrapping_add(fetch64(s, len - 16))
            .wrapping_mul(K0),
    );
    let mut b = rotate(a.wrapping_add(z), 52);
    let mut c = rotate(a, 37);
    a = a.wrapping_add(fetch64(s, 8));
    c = c.wrapping_add(rotate(a, 7));
    a = a.wrapping_add(fetch64(s, 16));
    let vf = a.wrapping_add(z);
    let vs = b.wrapping_add(rotate(a, 31)).wrapping_add(c);
    a = fetch64(s, 16).wrapping_add(fetch64(s, len - 32));
    z = fetch64(s, len - 8);
    b = rotate(a.wrapping_add(z), 52);
    c = rotate(a, 37);
    a = a.wrapping_add(fetch64(s, len - 24));
    c = c.wrapping_add(rotate(a, 7));
    a = a.wrapping_add(fetch64(s, len - 16));
    let wf = a.wrapping_add(z);
    let ws = b.wrapping_add(rotate(a, 31)).wrapping_add(c);
    let r = shift_mix(
        vf.wrapping_add(ws)
            .wrapping_mul(K2)
            .wrapping_add(wf.wrapping_add(vs).wrapping_mul(K0)),
    );
    shift_mix(r.wrapping_mul(K0).wrapping_add(vs)).wrapping_mul(K2)
}

/// CityHash64 v1.0.2 of `s`: ClickHouse's `cityHash64(s)` for a String.
pub fn city_hash64(s: &[u8]) -> u64 {
    let len = s.len();
    if len <= 16 {
        return hash_len0to16(s);
    }
    if len <= 32 {
        return hash_len17to32(s);
    }
    if len <= 64 {
        return hash_len33to64(s);
    }
    let mut x = fetch64(s, 0);
    let mut y = fetch64(s, len - 16) ^ K1;
    let mut z = fetch64(s, len - 56) ^ K0;
    let mut v = weak_hash_len32_with_seeds(s, len - 64, len as u64, y);
    let mut w = weak_hash_len32_with_seeds(s, len - 32, (len as u64).wrapping_mul(K1), K0);
    z = z.wrapping_add(shift_mix(v.1).wrapping_mul(K1));
    x = rotate(z.wrapping_add(x), 39).wrapping_mul(K1);
    y = rotate(y, 33).wrapping_mul(K1);
    let mut at = 0;
    let mut left = (len - 1) & !63;
    loop {
        x = rotate(
            x.wrapping_add(y)
                .wrapping_add(v.0)
                .wrapping_add(fetch64(s, at + 16)),
            37,
        )
        .wrapping_mul(K1);
        y = rotate(y.wrapping_add(v.1).wrapping_add(fetch64(s, at + 48)), 42).wrapping_mul(K1);
        x ^= w.1;
        y ^= v.0;
        z = rotate(z ^ w.0, 33);
        v = weak_hash_len32_with_seeds(s, at, v.1.wrapping_mul(K1), x.wrapping_add(w.0));
        w = weak_hash_len32_with_seeds(s, at + 32, z.wrapping_add(w.1), y);
        std::mem::swap(&mut z, &mut x);
        at += 64;
        left -= 64;
        if left == 0 {
            break;
        }
    }
    hash_len16(
        hash_len16(v.0, w.0)
            .wrapping_add(shift_mix(y).wrapping_mul(K1))
            .wrapping_add(z),
        hash_len16(v.1, w.1).wrapping_add(x),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    /// `SELECT cityHash64(s)` answers from ClickHouse 18.16 for strings of
    /// every length class of the algorithm.
    #[test]
    fn matches_clickhouse_city_hash64() {
        for (s, want) in KNOWN {
            assert_eq!(city_hash64(s.as_bytes()), *want, "cityHash64({s:?})");
        }
    }

    const KNOWN: &[(&str, u64)] = &[
        ("", 11160318154034397263),
        ("a", 2603192927274642682),
        ("ab", 1725057946192985918),
        ("abc", 4220206313085259313),
        ("abcd", 17823623939509273229),
        ("hello wo", 9476491121643390926),
        ("hello wor", 1691989305298326647),
        ("0123456789abcdef", 692747204941329175),
        ("0123456789abcdefg", 792568009951096890),
        ("user_12345678901234567890123", 9193336782388810896),
        ("0123456789abcdef0123456789abcdef", 1759797222395115254),
        ("0123456789abcdef0123456789abcdef!", 3981523954078042969),
        (
            "The quick brown fox jumps over the lazy dog, again and again....",
            8030487693555756406,
        ),
        (
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            5260653789997849295,
        ),
        (
            "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. \
             The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. \
             The quick brown fox jumps over the lazy dog. ",
            17312986543686033960,
        ),
    ];

    fn msg(user: &str) -> Message {
        Message {
            stream: Arc::from("s"),
            id: Bytes::from_static(b"1-0"),
            fields: vec![(
                Bytes::from_static(b"user_id"),
                Bytes::from(user.to_string()),
            )]
            .into(),
            deliveries: 1,
        }
    }

    #[test]
    fn split_keeps_order_and_places_by_hash() {
        let s = Sharding::new("user_id", 3);
        let messages: Vec<Message> = (0..50).map(|i| msg(&format!("u{i}"))).collect();
        let parts = s.split(messages);
        let total: usize = parts.iter().map(|(_, p)| p.len()).sum();
        assert_eq!(total, 50);
        for (shard, part) in &parts {
            for m in part {
                assert_eq!(s.shard_of(m), *shard);
            }
            let nums: Vec<u32> = part
                .iter()
                .map(|m| {
                    std::str::from_utf8(&m.fields.pair(0).1[1..])
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            assert!(nums.windows(2).all(|w| w[0] < w[1]), "order kept: {nums:?}");
        }
        assert_eq!(parts.len(), 3, "50 keys reach every one of 3 shards");
    }
}
