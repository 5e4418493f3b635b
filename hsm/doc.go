// Package hsm is custodyd's only door to the PKCS#11 token that holds its
// private keys. It owns the module's lifetime in the process, the login, a
// pool of sessions and their recovery, key-pair creation and lookup, and the
// device operations the daemon needs: Open (ECDH derive → KEK derive → DEK
// unwrap → AES-GCM decrypt, all on the device) and ECDSA Sign. No private
// key, Z, KEK or DEK ever exists in host memory; only public keys,
// signatures and opened plaintext come back.
//
// # Keys
//
// A key pair has a unique label and CKA_ID = SHA-256(label)[:16] on both
// objects; GenerateKeyPair never overwrites (ErrExists) and serializes
// creation in the process (not across processes: PKCS#11 has no lock for
// that). Private keys are token objects, private, sensitive, never
// extractable (except the escrow key with KeySpec.Backup, which is
// extractable only under a KEK the SO marked trusted), with one usage:
// derive (CKM_ECDH1_DERIVE only) or sign (CKM_ECDSA only), enforced by
// CKA_ALLOWED_MECHANISMS. X25519 keys come from the path the capability
// probe confirmed at Open: PKCS#11 3.0 CKM_EC_MONTGOMERY_KEY_PAIR_GEN, or
// SoftHSM 2.6's Edwards generator with the X25519 OID.
//
// Open's session objects: Z (derive-only), the KEK (unwrap-only, with a
// CKA_UNWRAP_TEMPLATE that forces the DEK to be a sensitive, non-extractable,
// decrypt-only session key) and the DEK are destroyed on every path;
// SessionObjectCount lets tests check that. The KDF profile KDFECBContext is
// the one SoftHSM allows (it has no HKDF): KEK = AES-256-ECB_Z(context). It
// is a PRF of Z keyed by a 32-byte context, not HKDF; see device.KDFECBContext.
//
// RewrapBatch (rewrap.go) moves DEKs to new recipients without them leaving
// the device: each DEK is unwrapped as a sensitive session key that can
// neither encrypt nor decrypt and is CKA_EXTRACTABLE only so that C_WrapKey
// can wrap it under the new KEK (derived from an ephemeral key pair
// generated on the device, one per recipient per batch). While it exists,
// any wrap key in the session could wrap it out; only a holder of the user PIN can open such a session, and on SoftHSM that
// person can read Z anyway (below).
//
// Limits of the token, honestly: SoftHSM has no CKA_DERIVE_TEMPLATE, so
// anyone holding the user PIN can ECDH-derive from a derive key into an
// extractable secret and read Z (a test does exactly that). The user PIN is
// as sensitive as the keys.
//
// # Sessions and concurrency
//
// All Token methods are safe for concurrent use. Open opens Config.Sessions
// sessions (default min(NumCPU, the token's session limit), at least 2) and
// logs in once (login state is per process and token). Every call borrows
// one session for its whole duration, so a multi-step operation is never
// interleaved on a session; waiting for a session honours ctx. More
// sessions than cores gains nothing on SoftHSM. Token-object handles of
// private keys are cached by label; the cache is cleared on every rebuild
// and an entry is dropped on CKR_OBJECT_HANDLE_INVALID (the key deleted by
// another process) and looked up once more.
//
// Bulk work runs in the background (priority.Background on its context): its
// calls take a session only when no other call is waiting for one (for up
// to 50 ms, so that it still moves under a saturating load), and a
// background RewrapBatch gives its session back between two requests as
// soon as another call waits. A rewrap job then costs the applications'
// decrypts at most about one rewrap each in waiting, instead of a batch.
//
// A goroutine in a device call (a cgo call) holds its P until the Go
// runtime's sysmon takes it back, which can take milliseconds in a process
// that was quiet before; with one P per core and every session busy, live
// requests wait for a P. A daemon runs with Procs(GOMAXPROCS, sessions) Ps:
// one more per session (custodyd does, unless GOMAXPROCS is set).
//
// # Recovery
//
// A call that fails with a "session or token lost" code
// (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_USER_NOT_LOGGED_IN,
// CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, CKR_DEVICE_ERROR,
// CKR_CRYPTOKI_NOT_INITIALIZED, ...) — or with any other code while
// C_GetSessionInfo shows its session is gone, because SoftHSM answers a call
// in flight on a closed session with CKR_GENERAL_ERROR,
// CKR_TEMPLATE_INCONSISTENT or CKR_KEY_FUNCTION_NOT_PERMITTED — rebuilds the
// pool and is retried once. One rebuild runs at a time: the pool has a
// generation number, a caller that saw generation g rebuilds only if it is
// still g, the others wait and use the new sessions. A rebuild waits until
// every session of the old generation is given back (SoftHSM reuses session
// handle numbers, so a straggler must never touch a handle that now names
// someone else's session), closes them, re-initializes the module if it was
// finalized under us, finds the slot by label again (slot IDs are not
// stable), opens new sessions and logs in again. If that fails the call
// returns an error wrapping ErrUnavailable; the pool stays broken and the
// next call tries again, at most once per 200 ms. It never needs a restart.
// Info().Rebuilds counts successful rebuilds. Ping is the cheap liveness
// check for health endpoints.
//
// A token that goes away entirely (SoftHSM: its directory is removed) is
// noticed by C_GetTokenInfo failing on its slot: Ping checks it, and so
// does every call that failed with ErrNotFound or a token error. SoftHSM
// keeps serving objects it already holds in memory meanwhile, so it is Ping
// (the daemon runs it periodically) that turns the pool unavailable. A
// rebuild that cannot find the token re-initializes the module
// (C_Finalize/C_Initialize, as for "Memory" below, and only when this Token
// is its sole user), because SoftHSM scans its token directory only there;
// once the token is back, the next rebuild finds it.
//
// To log in again the user PIN stays in process memory as a []byte for the
// Token's lifetime; Close clears it. miekg/pkcs11 takes PINs as Go strings,
// so each C_Login makes a transient copy that cannot be cleared: clearing is
// best effort. PINs come only from files whose mode has no group or other
// bits (ErrPINFile), never from argv or the environment, and are never
// logged. Nothing here logs key material.
//
// # The module in the process
//
// C_Initialize is process-wide. Tokens (and InitToken) on the same module
// path share one reference-counted pkcs11.Ctx; CKR_CRYPTOKI_ALREADY_INITIALIZED
// is accepted, and C_Finalize runs when the last user closes and only if this
// package initialized the module. Token.Close logs out, which also logs out
// any other Token on the same token label in this process.
//
// The envelope v2 chains call the module's functions directly, not through
// miekg/pkcs11 (gcmfields.go): the key half of an open (ECDH, KEK, unwrap,
// destroys), all fields of one open or seal (per field a derive, a GCM
// init, the operation and a destroy; for a seal the DEK's import first) are
// one cgo call each. Through miekg every PKCS#11 call is a cgo call of its
// own, and a SoftHSM call is long enough for the Go runtime to move the
// calling thread's P to another thread: a cold v2 open made 19 of those.
// The function list is found with dlopen(RTLD_NOLOAD) of the same path and
// C_GetFunctionList, and its entries are checked against the exported
// symbols where the module exports them; a module whose list does not
// match is refused at Open.
//
// # DEK handle cache
//
// With Config.DEKCache on, OpenFields (envelope v2) keeps what a cold open
// made on the device instead of destroying it: the DEK, as the derive-only,
// sensitive, non-extractable session object the unwrap template forces,
// and the decrypt-only field keys derived from it. An entry is named by a
// SHA-256 of everything the cold chain feeds the device before the field
// keys (key label, algorithm, KDF, peer public key, KDF context, wrapped
// DEK), so a hit is exactly the DEK a cold open of that stanza would
// unwrap; the field ciphertexts are still authenticated by GCM on every
// open. A hit skips the ECDH derive, the KEK derive and the unwrap (and
// the field-key derives already done): BenchmarkOpenFields4Cached against
// BenchmarkOpenFields4. The host holds only object handles and hashes.
//
// Only a stanza's second open is cached: the first open of each stanza
// (remembered by hash for the last 4 × Entries first opens) destroys what
// it made, as with the cache off. Keeping every first open's objects until
// their eviction made a workload of distinct envelopes 15–20 % slower on
// SoftHSM (measured: cold decrypt through the socket at 16 clients, cache
// on vs off, same machine); the admission filter brings it back to the
// uncached figure, and envelopes opened again are cached from the second
// open. DEKCacheStats.FirstOpens counts the misses that kept nothing.
//
// Bounds: at most Entries stanzas (least recently used evicted), each
// destroyed MaxAge after its unwrap (a janitor runs every MaxAge/4, at
// most 5 s apart); entries of a key are destroyed in DestroyKeyPair before
// the key; a pool rebuild drops every entry (the objects went with their
// sessions: nothing is destroyed by handle then, since handles may be
// reused after a module recycle); Close destroys them all. A hit re-checks
// that its private key still exists on the token (C_GetAttributeValue)
// unless that was confirmed within Recheck: a key destroyed by another
// process is noticed within Recheck, one destroyed through this Token at
// once. With the token away (SoftHSM's directory removed; a partition
// lost), hits keep opening until the next such check, at most Recheck
// later (on SoftHSM the session objects live in the process), and then
// fail as a cold open does. Every authorization (policy, participant
// status, second factor, court order) is the caller's and runs before
// OpenFields on a hit as on a miss; the cache answers only "which DEK",
// never "may you".
//
// What it changes for an attacker: the DEK of a recently opened envelope
// exists on the token for up to MaxAge instead of about a millisecond. It
// is still a session object of this process's sessions, never extractable
// and unable to encrypt, decrypt, wrap or unwrap; only the field keys can
// decrypt, and only through this process's logged-in sessions, which is
// what a holder of the user PIN can do with the private keys anyway. On
// SoftHSM the token runs inside the daemon's process, so "on the token"
// means in SoftHSM's memory, obfuscated by its per-token key, as every
// session key of a cold open is for its lifetime; a network HSM keeps them
// in the HSM. DEKCacheStats counts hits, misses and evictions by reason.
//
// # Private-key copies
//
// SoftHSM 2.6.1 re-reads a token object's files on every use of it (its
// way of supporting several processes on one token): a C_SignInit or an
// ECDH derive with a token key pays ~40-90 µs of file I/O and locks
// (docs/performance.md, cause 2). So a private key found by label is used
// through a session copy of it (C_CopyObject with CKA_TOKEN false; the
// copy keeps CKA_SENSITIVE, CKA_EXTRACTABLE false, the usage attributes,
// and SoftHSM refuses to weaken it, as for the token object): measured, an
// ECDSA signature ~95 → ~64 µs; a cold open, no change beyond noise.
// The copy is on the token like the session keys of every open, visible
// to this process's sessions only, gone with the session that made it;
// the host holds its handle. keycache.go keeps it by label with the token
// object's handle: the token object is looked at again once per
// Config.KeyRecheck (DefaultKeyRecheck, 1 s), and when it is gone the copy
// is destroyed and the caller gets ErrNotFound. A key destroyed through
// this Token (DestroyKeyPair) takes its copy with it at once; one
// destroyed by another process stays usable here for at most KeyRecheck
// (the DEK cache's Recheck is the same kind of window). A negative
// KeyRecheck makes no copies; a token that refuses the copy
// (CKA_COPYABLE false) is used through the token object. A pool rebuild
// drops the copies with their sessions, as it drops the DEK cache.
// SessionObjectCount does not count the copies the cache holds.
//
// # Memory
//
// SoftHSM 2.6.1 keeps every session object it ever created until
// C_Finalize, even after C_DestroyObject (SoftHSMv2 issues 562 and 563;
// fixed upstream after 2.6.1): about 1.7 KiB of process memory per Open,
// which creates three. A daemon on SoftHSM would grow without bound. The
// pool therefore counts session objects and, past Config.RecycleAfter
// (DefaultSoftHSMRecycle on SoftHSM, off on other tokens), rebuilds itself
// with C_Finalize and C_Initialize in between: the same path as recovery
// after a lost token, planned. It runs only when this Token is the module's
// only user in the process; requests wait for it (tens of milliseconds).
// Info().Recycles counts them.
//
// What recycling cannot return: SoftHSM 2.6.1 also loses about 145 bytes
// per ECDH derive on an X25519 key, and C_Finalize does not give them back
// (measured outside this package, plain miekg/pkcs11 calls: 12,000 derives
// per C_Finalize cycle grow the process by 1.7 MB a cycle; P-256 derives and
// AES derives stay flat). SoftHSMv2 issue 896 reports the same kind of leak
// (ASN.1 decoding in OpenSSL) for every use of an EdDSA-type key, which is
// how SoftHSM holds X25519 keys. Every open, rewrap and proof of possession
// with an X25519 key does one derive, so on SoftHSM custodyd's resident set
// grows by 15–22 MB per 100,000 of them (BenchmarkRewrap100kStreaming: 43.8
// → 59.1 MiB from its first to its last quarter, Go heap 6–9 MiB at the
// end). A restart gives it back; a hardware or network HSM does not run
// inside the daemon's process.
//
// # Why not crypto11
//
// ThalesGroup/crypto11 is not used. It cannot derive, wrap or unwrap (no
// ECDH, no C_DeriveKey, no C_UnwrapKey), which is most of what this package
// does; and it owns its own C_Initialize, sessions and login with no access
// to them, so using it for signing would put a second session pool and a
// second recovery path on the same token, and its C_Initialize conflicts
// with ours in one process. The crypto.Signer it would have provided is
// Token.Signer here, some thirty lines over Sign.
//
// # Types, and builds without cgo
//
// What the device shares with the formats and the client — KeyAlg, KDF,
// Usage, OpenRequest, RewrapRequest, PossessionRequest, KeySpec, KeyInfo,
// DataObject, the request limits and the sentinel errors — is declared in
// the cgo-free package custody/internal/device; this package keeps each
// name as an alias (the same types, the same error values), so either name
// works with errors.Is. envelope, pop, keys, ceremony and custodyctl use
// device and never link this package.
//
// The PKCS#11 binding is a C library, so the files that use it build only
// with cgo. Built with CGO_ENABLED=0 the package is its pure-Go API
// (api.go) and nocgo.go, where Open, InitToken and every Token method fail
// with ErrNeedsCgo ("custody/hsm needs cgo (the PKCS#11 module is a C
// library): build with CGO_ENABLED=1"): everything compiles, and custodyd
// built that way refuses to start, saying so. make lint builds both ways.
//
// # Tests
//
// Tests run against a real SoftHSM2 (package hsmtest: tokens on tmpfs, one
// fresh token per test); nothing mocks the token.
package hsm
