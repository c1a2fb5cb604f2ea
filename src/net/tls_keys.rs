//! TLS 1.3 record keys that cost an idle connection about 160 bytes, not
//! 1.1 KiB.
//!
//! ring's expanded AEAD key (`LessSafeKey`: the AES round keys and the
//! GHASH table) is 544 bytes, and a session holds two, one per direction,
//! for as long as it lives. An idle connection never uses them. So this
//! provider's TLS 1.3 suites keep only the raw traffic key and IV in the
//! session (what rustls hands them: about 80 bytes a direction with the
//! allocation), and expand a key when a record is
//! sealed or opened, into a cache of the worker thread's that holds at most
//! `tls_key_cache` expanded keys ([`set_cache`], default [`CACHE_KEYS`]):
//! the connections that are busy keep theirs,
//! and a quiet one's is taken by the next connection that needs a slot
//! (the least recently used, by a clock sweep). Memory for keys is then
//! bounded per worker, not per connection.
//!
//! Only the key's storage changes. The record protection is RFC 8446 §5.2
//! as rustls's own providers do it: the nonce is the IV xor the record's
//! sequence number, the additional data the record header, the inner
//! content type is appended before sealing and found after the padding when
//! opening; the AEAD itself is ring's. TLS 1.2 suites are ring's as they
//! are. A record is never sealed with another session's key: a slot is
//! claimed by an id that is never reused, and checked on every use.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ring::aead;
use rustls::crypto::cipher::{
    make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter,
    MessageEncrypter, Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload,
    Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::crypto::CryptoProvider;
use rustls::{ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion, SupportedCipherSuite};

/// Expanded keys a thread keeps at most by default (about 560 KiB when all
/// are used). A worker sealing for more connections than this in turn
/// expands again for some of them (about 0.1-0.3 µs a record).
pub(crate) const CACHE_KEYS: usize = 1024;

/// Sets how many expanded keys this thread keeps (the worker's
/// `tls_key_cache`); keys past a smaller cap are dropped, to be expanded
/// again when used.
pub(crate) fn set_cache(keys: usize) {
    CACHE.with(|c| c.borrow_mut().set_cap(keys));
}

/// The ring provider with its TLS 1.3 suites replaced by ones whose keys are
/// expanded on use (see the module docs); everything else is ring's.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static SUITES: OnceLock<Vec<SupportedCipherSuite>> = OnceLock::new();
    let suites = SUITES.get_or_init(|| {
        rustls::crypto::ring::DEFAULT_CIPHER_SUITES
            .iter()
            .map(|suite| match suite {
                SupportedCipherSuite::Tls13(s) => SupportedCipherSuite::Tls13(lean_suite(s)),
                other => *other,
            })
            .collect()
    });
    Arc::new(CryptoProvider {
        cipher_suites: suites.clone(),
        ..rustls::crypto::ring::default_provider()
    })
}

/// `suite` with its AEAD replaced by a [`Lean`] one of the same algorithm.
/// Made once per process (the statics rustls asks for are leaked once).
fn lean_suite(suite: &'static rustls::Tls13CipherSuite) -> &'static rustls::Tls13CipherSuite {
    let (alg, secrets): (
        &'static aead::Algorithm,
        fn(AeadKey, Iv) -> ConnectionTrafficSecrets,
    ) = match suite.common.suite {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => (&aead::AES_128_GCM, |key, iv| {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        }),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => (&aead::AES_256_GCM, |key, iv| {
            ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        }),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => {
            (&aead::CHACHA20_POLY1305, |key, iv| {
                ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
            })
        }
        _ => return suite,
    };
    let aead_alg: &'static Lean = Box::leak(Box::new(Lean {
        alg,
        secrets,
        fips: suite.aead_alg.fips(),
    }));
    Box::leak(Box::new(rustls::Tls13CipherSuite {
        common: rustls::CipherSuiteCommon {
            suite: suite.common.suite,
            hash_provider: suite.common.hash_provider,
            confidentiality_limit: suite.common.confidentiality_limit,
        },
        hkdf_provider: suite.hkdf_provider,
        aead_alg,
        quic: suite.quic,
    }))
}

/// A TLS 1.3 AEAD whose sessions keep raw keys.
struct Lean {
    alg: &'static aead::Algorithm,
    secrets: fn(AeadKey, Iv) -> ConnectionTrafficSecrets,
    fips: bool,
}

impl Tls13AeadAlgorithm for Lean {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(RecordKey::new(self.alg, key, iv))
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(RecordKey::new(self.alg, key, iv))
    }

    fn key_len(&self) -> usize {
        self.alg.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok((self.secrets)(key, iv))
    }

    fn fips(&self) -> bool {
        self.fips
    }
}

/// Ids of record keys: unique for the process's life, so a cache slot is
/// never taken for another key's.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One direction's traffic key as a session holds it: the raw key (rustls
/// zeroes it when dropped), the IV, and where its expanded form may be.
struct RecordKey {
    alg: &'static aead::Algorithm,
    key: AeadKey,
    iv: Iv,
    id: u64,
    /// The slot of this thread's cache that last held the expanded key.
    slot: u32,
}

impl RecordKey {
    fn new(alg: &'static aead::Algorithm, key: AeadKey, iv: Iv) -> RecordKey {
        RecordKey {
            alg,
            key,
            iv,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            slot: u32::MAX,
        }
    }

    /// Runs `f` with the expanded key, from the cache or expanded now.
    fn with_key<R>(&mut self, f: impl FnOnce(&aead::LessSafeKey) -> R) -> Result<R, Error> {
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let slot = cache.find(self)?;
            Ok(f(slot))
        })
    }
}

impl Drop for RecordKey {
    fn drop(&mut self) {
        // The thread may be ending (its cache gone): nothing to free then.
        let _ = CACHE.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                cache.release(self.id, self.slot);
            }
        });
    }
}

impl MessageEncrypter for RecordKey {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        let nonce = aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, seq).0);
        let aad = aead::Aad::from(make_tls13_aad(total));
        self.with_key(|key| key.seal_in_place_append_tag(nonce, aad, &mut payload))?
            .map_err(|_| Error::EncryptError)?;
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            // TLS 1.3 records say 1.2 on the wire (RFC 8446 §5.1).
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + self.alg.tag_len()
    }
}

impl MessageDecrypter for RecordKey {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        if payload.len() < self.alg.tag_len() {
            return Err(Error::DecryptError);
        }
        let nonce = aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, seq).0);
        let aad = aead::Aad::from(make_tls13_aad(payload.len()));
        let plain = self
            .with_key(|key| key.open_in_place(nonce, aad, payload).map(|p| p.len()))?
            .map_err(|_| Error::DecryptError)?;
        payload.truncate(plain);
        msg.into_tls13_unpadded_message()
    }
}

thread_local! {
    static CACHE: RefCell<KeyCache> = RefCell::new(KeyCache::new(CACHE_KEYS));
}

/// A thread's expanded keys: at most `cap` slots, reused by a clock sweep
/// (a slot used since the hand last passed gets one more round).
struct KeyCache {
    slots: Vec<Slot>,
    cap: usize,
    hand: usize,
    /// Slots whose key was dropped, to take before sweeping.
    free: Vec<u32>,
}

struct Slot {
    /// The key's id; 0: free.
    id: u64,
    used: bool,
    key: Option<aead::LessSafeKey>,
}

impl KeyCache {
    fn new(cap: usize) -> KeyCache {
        KeyCache {
            slots: Vec::new(),
            cap: cap.clamp(1, u32::MAX as usize),
            hand: 0,
            free: Vec::new(),
        }
    }

    fn set_cap(&mut self, cap: usize) {
        self.cap = cap.clamp(1, u32::MAX as usize);
        if self.slots.len() > self.cap {
            self.slots.truncate(self.cap);
            self.slots.shrink_to_fit();
            self.free.retain(|&i| (i as usize) < self.cap);
            self.hand = 0;
        }
    }

    /// The expanded key of `rk`: its own slot if it still holds it, else a
    /// slot taken now and filled.
    fn find(&mut self, rk: &mut RecordKey) -> Result<&aead::LessSafeKey, Error> {
        let i = rk.slot as usize;
        if self.slots.get(i).is_some_and(|s| s.id == rk.id) {
            let slot = &mut self.slots[i];
            slot.used = true;
            return slot.key.as_ref().ok_or(Error::EncryptError);
        }
        let unbound = aead::UnboundKey::new(rk.alg, rk.key.as_ref())
            .map_err(|_| Error::General("a TLS traffic key of the wrong length".into()))?;
        let i = self.take();
        rk.slot = i as u32;
        let slot = &mut self.slots[i];
        *slot = Slot {
            id: rk.id,
            used: true,
            key: Some(aead::LessSafeKey::new(unbound)),
        };
        slot.key.as_ref().ok_or(Error::EncryptError)
    }

    /// A slot to fill: a freed one, a new one below the cap, or the first
    /// the clock hand finds not used since its last pass.
    fn take(&mut self) -> usize {
        while let Some(i) = self.free.pop() {
            let i = i as usize;
            if self.slots.get(i).is_some_and(|s| s.id == 0) {
                return i;
            }
        }
        if self.slots.len() < self.cap {
            self.slots.push(Slot {
                id: 0,
                used: false,
                key: None,
            });
            return self.slots.len() - 1;
        }
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let slot = &mut self.slots[i];
            if !std::mem::replace(&mut slot.used, false) {
                return i;
            }
        }
    }

    /// Key `id` is gone: its slot, if it still holds it, is free.
    fn release(&mut self, id: u64, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            if s.id == id {
                *s = Slot {
                    id: 0,
                    used: false,
                    key: None,
                };
                self.free.push(slot);
            }
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.slots.iter().filter(|s| s.id != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};
    use std::io::{Read, Write};

    struct Pair {
        client: ClientConnection,
        server: ServerConnection,
    }

    /// A server on this provider and a client on ring's own, in memory.
    fn pair() -> Pair {
        pair_with(None)
    }

    /// The same, with the client offering only `suite` when given.
    fn pair_with(suite: Option<SupportedCipherSuite>) -> Pair {
        let (server, client) = super::super::tls::test_configs_offering(suite);
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut pair = Pair {
            client: ClientConnection::new(client, name).expect("client"),
            server: ServerConnection::new(server).expect("server"),
        };
        while pair.client.is_handshaking() || pair.server.is_handshaking() {
            pair.flow().expect("handshake");
        }
        pair
    }

    /// Everything `from` has to write, read and processed by `to`.
    fn pump<A, B>(
        from: &mut rustls::ConnectionCommon<A>,
        to: &mut rustls::ConnectionCommon<B>,
    ) -> Result<(), Error> {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).expect("out");
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).expect("in");
            to.process_new_packets()?;
        }
        Ok(())
    }

    impl Pair {
        /// Moves every pending record both ways until neither has more.
        fn flow(&mut self) -> Result<(), Error> {
            while self.client.wants_write() || self.server.wants_write() {
                pump(&mut self.client, &mut self.server)?;
                pump(&mut self.server, &mut self.client)?;
            }
            Ok(())
        }

        /// `text` from the client to the server and back, checked.
        fn round_trip(&mut self, text: &[u8]) {
            self.client.writer().write_all(text).expect("write");
            self.flow().expect("flow");
            let mut got = vec![0; text.len()];
            self.server
                .reader()
                .read_exact(&mut got)
                .expect("server read");
            assert_eq!(got, text);
            self.server.writer().write_all(text).expect("write");
            self.flow().expect("flow");
            self.client
                .reader()
                .read_exact(&mut got)
                .expect("client read");
            assert_eq!(got, text);
        }
    }

    #[test]
    fn talks_to_ring_with_its_own_suites() {
        let mut p = pair();
        let suite = p.server.negotiated_cipher_suite().expect("suite");
        assert_eq!(suite.suite(), rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        // The session's AEAD is ours, not ring's.
        let SupportedCipherSuite::Tls13(s) = suite else {
            panic!("TLS 1.3 expected");
        };
        assert!(!std::ptr::eq(
            s,
            match rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384 {
                SupportedCipherSuite::Tls13(ring) => ring,
                _ => unreachable!(),
            }
        ));
        p.round_trip(b"hello");
        p.round_trip(&[7u8; 12_000]);
        // A key update from the client: both sides move to new keys.
        p.client.refresh_traffic_keys().expect("key update");
        p.round_trip(b"after the update");
    }

    #[test]
    fn every_tls13_suite_talks_with_ring() {
        use rustls::crypto::ring::cipher_suite as ring;
        for suite in [
            ring::TLS13_AES_128_GCM_SHA256,
            ring::TLS13_AES_256_GCM_SHA384,
            ring::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let mut p = pair_with(Some(suite));
            assert_eq!(
                p.server.negotiated_cipher_suite().map(|s| s.suite()),
                Some(suite.suite())
            );
            p.round_trip(b"every suite");
            p.client.refresh_traffic_keys().expect("key update");
            p.round_trip(b"after the update");
        }
    }

    #[test]
    fn a_cache_made_smaller_and_larger_again_keeps_sessions_working() {
        let mut pairs: Vec<Pair> = (0..4).map(|_| pair()).collect();
        for p in &mut pairs {
            p.round_trip(b"before");
        }
        set_cache(2);
        assert!(CACHE.with(|c| c.borrow().slots.len()) <= 2);
        for p in &mut pairs {
            p.round_trip(b"smaller");
        }
        set_cache(64);
        for p in &mut pairs {
            p.round_trip(b"larger");
        }
        drop(pairs);
        assert_eq!(CACHE.with(|c| c.borrow().held()), 0);
        set_cache(CACHE_KEYS);
    }

    #[test]
    fn every_session_keeps_its_keys_when_more_are_busy_than_the_cache_holds() {
        set_cache(3);
        let mut pairs: Vec<Pair> = (0..5).map(|_| pair()).collect();
        for round in 0..4u8 {
            for (i, p) in pairs.iter_mut().enumerate() {
                p.round_trip(&[round, i as u8, 1, 2, 3]);
            }
            assert!(CACHE.with(|c| c.borrow().held()) <= 3);
        }
        drop(pairs);
        assert_eq!(CACHE.with(|c| c.borrow().held()), 0);
        set_cache(CACHE_KEYS);
    }

    #[test]
    fn a_changed_record_is_refused() {
        let mut p = pair();
        p.client.writer().write_all(b"payload").expect("write");
        let mut wire = Vec::new();
        p.client.write_tls(&mut wire).expect("out");
        let last = wire.len() - 1;
        wire[last] ^= 1;
        p.server.read_tls(&mut &wire[..]).expect("in");
        assert!(matches!(
            p.server.process_new_packets(),
            Err(Error::DecryptError)
        ));
    }
}
