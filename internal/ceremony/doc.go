// Package ceremony owns the escrow key ceremonies of DESIGN.md: officers and
// their M-of-N approvals, backup (the escrow private key wrapped on the
// device under a fresh KEK; the KEK split with package shamir; each share
// encrypted to one officer's age recipient; a key check value), restore
// into a fresh token from any M shares, and transcripts signed in the
// signed-note format by the daemon's log key and co-signed by officers;
// and the daemon's Service that runs them.
//
// What it owns and where it stops:
//
//   - Officers (officers.go) are declared in an officers file next to the
//     policy: Unix user, age X25519 recipient, Ed25519 note verifier key.
//     The policy still decides who has role "officer"; this file adds the
//     keys. Both must agree for a caller to act as an officer: package
//     server checks the role, then Service.Officers().ByUID.
//   - Service (service.go) is the daemon's ceremonies, built by NewService:
//     pending requests and their approvals (Approvals, request.go), what
//     each requester chose, the share collectors (collect.go), the
//     executed requests' outputs. They live in memory; a restart forgets
//     pending requests, by design: a quorum is gathered in one sitting.
//     What officers approve is computed from the token and the key
//     registry (effects.go) and computed again just before a request runs
//     (ErrStale if it changed). Executing (execute.go) is Claim, then Run:
//     the caller records the claim in the access log between the two, so
//     the decision is durable before the token is touched. Outputs are
//     0600 files in 0700 directories under the output directory, written
//     with package durable. The service does not authenticate callers or
//     record anything: package server does both, one access-log entry per
//     step.
//   - Backup (backup.go) and restore (restore.go) drive a Device (package
//     hsm's Token). The KEK exists in host memory while it is generated,
//     split and imported, and while shares are combined; it is cleared
//     after use (best effort: Go may have copied it, and miekg/pkcs11 copies
//     attribute values into C memory it frees without clearing).
//   - File formats (share.go, backup.go, transcript.go) name their version
//     and algorithms; parsers are strict and fuzzed.
//
// The package is cgo-free (custodyctl imports it): the device and the key
// registry are interfaces (ServiceDevice, Keys) with package device and
// package keys types.
//
// Concurrency: Service, Approvals and Collector are safe for concurrent
// use; the functions are stateless.
package ceremony
