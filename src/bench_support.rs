//! Entry points for the crate's own micro-benchmarks (`benches/hot_paths.rs`)
//! into crate-private hot paths. Not part of the API: hidden from the docs and
//! free to change.

use crate::cluster::registry::Registry;
use crate::cluster::wire::{self as bus_wire, Record, Target};
use crate::id::ConnId;
use bytes::{Bytes, BytesMut};

/// Encodes `n` broadcast deliveries of `payload` onto one bus link's buffer
/// and decodes them again, as a sending and a receiving worker do. Returns how
/// many records came out (`n`).
pub fn bus_round_trip(payload: &Bytes, n: usize) -> usize {
    let mut link = BytesMut::new();
    let rec = Record::Deliver {
        target: Target::All {
            exclude: Vec::new(),
        },
        payload: payload.clone(),
    };
    for _ in 0..n {
        bus_wire::encode(&mut link, &rec);
    }
    let mut seen = 0;
    while let Ok(Some(_)) = bus_wire::decode(&mut link) {
        seen += 1;
    }
    seen
}

/// The replica's work for `conns` connections spread over 4 workers: open,
/// bind a uid (10 connections per uid), join one of `groups` groups; then list
/// every group's members; then close them all. Returns the members listed
/// (`conns`).
pub fn registry_churn(conns: usize, groups: usize) -> usize {
    let mut r = Registry::default();
    let ids: Vec<ConnId> = (0..conns)
        .map(|i| ConnId::new((i % 4) as u16, i as u32, i as u64))
        .collect();
    let names: Vec<String> = (0..groups.max(1)).map(|g| format!("room{g}")).collect();
    for (i, id) in ids.iter().enumerate() {
        r.open(*id);
        r.bind(*id, &format!("user{}", i / 10));
        r.join(*id, &names[i % names.len()]);
    }
    let listed = names.iter().map(|g| r.group_members(g).count()).sum();
    for id in &ids {
        r.close(*id);
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_entry_points_do_what_they_say() {
        assert_eq!(bus_round_trip(&Bytes::from_static(b"\x81\x02hi"), 100), 100);
        assert_eq!(registry_churn(1000, 7), 1000);
    }
}

/// The cluster link's RESP2 codec, for `benches/redis_link.rs`.
pub mod resp {
    pub use crate::cluster::resp::Value;
    use bytes::BytesMut;

    /// Appends one command (an array of bulk strings) to `out`.
    pub fn encode<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
        crate::cluster::resp::encode(out, args)
    }

    /// Takes one complete reply off the front of `buf`; `Ok(None)` while it
    /// is incomplete, `Err` when the bytes are not RESP2.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Value>, String> {
        crate::cluster::resp::decode(buf).map_err(|e| e.0.to_string())
    }
}
