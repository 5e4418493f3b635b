// Package ceremony owns the escrow key ceremonies of DESIGN.md: officers and
// their M-of-N approvals, backup (the escrow private key wrapped on the
// device under a fresh KEK; the KEK split with package shamir; each share
// encrypted to one officer's age recipient; a key check value), restore
// into a fresh token from any M shares, and transcripts signed in the
// signed-note format by the daemon's log key and co-signed by officers.
//
// What it owns and where it stops:
//
//   - Officers (officers.go) are declared in an officers file next to the
//     policy: Unix user, age X25519 recipient, Ed25519 note verifier key.
//     The policy still decides who has role "officer"; this file adds the
//     keys. Both must agree for a caller to act as an officer.
//   - Requests and approvals (request.go) live in memory in the daemon
//     (Approvals); a restart forgets pending requests, by design: a quorum
//     is gathered in one sitting. Every step is recorded by the caller
//     (package server) in the access log.
//   - Backup (backup.go) and restore (restore.go) drive a Device (package
//     hsm's Token). The KEK exists in host memory while it is generated,
//     split and imported, and while shares are combined; it is cleared
//     after use (best effort: Go may have copied it, and miekg/pkcs11 copies
//     attribute values into C memory it frees without clearing).
//   - File formats (share.go, backup.go, transcript.go) name their version
//     and algorithms; parsers are strict and fuzzed.
//
// Concurrency: Approvals and Restore are safe for concurrent use; the
// functions are stateless.
package ceremony
