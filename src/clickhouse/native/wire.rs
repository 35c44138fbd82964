//! The Native format's primitives: VarUInt lengths, length-prefixed bytes
//! and little-endian integers of a column's width. Shared by the block
//! header ([`super::BlockEncoder`]) and the scalar layouts ([`super::leaf`]).

#[inline]
pub(super) fn put_varuint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varuint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// The low `width` bytes of `x`, little-endian: two's complement makes this
/// right for signed and unsigned targets alike once `x` is range-checked.
#[inline]
pub(super) fn put_int(out: &mut Vec<u8>, x: i128, width: u8) {
    match width {
        1 => out.push(x as u8),
        2 => out.extend_from_slice(&(x as i16).to_le_bytes()),
        4 => out.extend_from_slice(&(x as i32).to_le_bytes()),
        8 => out.extend_from_slice(&(x as i64).to_le_bytes()),
        _ => out.extend_from_slice(&x.to_le_bytes()),
    }
}
