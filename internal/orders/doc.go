// Package orders gates the audit decrypt on court orders kept in HashiCorp
// Vault.
//
// # What lives where
//
// Three kinds of record live in one KV version 2 mount (Config.Mount, e.g.
// "secret"), each under its own configurable path prefix:
//
//	<orders_path>/<id>       the order: its body and the signers' signatures (Record)
//	<revocations_path>/<id>  a revocation, written once (cas=0); its existence revokes
//	<uses_path>/<id>         the use counter {"uses": n}, updated with check-and-set
//
// The legal intake role creates an order (cas=0), then each signer adds a
// signature (cas = the version read). The body is written once: every
// signature covers the body's canonical encoding (Order.SignedMessage),
// which holds the order's id, so an edited body invalidates all of them and
// a body moved under another id does not verify; and the daemon accepts a
// record only if its body is byte for byte the body of KV version 1 of the
// same entry (ErrBodyChanged otherwise, and also when version 1 was
// deleted, destroyed or pruned), so even a body that carries valid
// signatures cannot replace the first one. A signer signs only the body
// they reviewed: Intake.Sign takes the SHA-256 of its canonical form and
// refuses any other (ErrReviewMismatch).
//
// An amendment is a new order with a new id whose signed Supersedes names
// the order it replaces; it counts only while that order is revoked
// (ErrSupersededLive), so a narrowed order cannot be bypassed by the wider
// one it amends. There are no in-place amendments: a new body under an
// existing id is refused.
//
// The daemon may read orders and revocations and read and write use
// counters, nothing else (policies/vault/custodyd.hcl); the intake role may
// create and sign orders and create revocations, never touch a counter,
// overwrite a revocation, or delete or destroy any version
// (policies/vault/legal-intake.hcl). Vault enforces both. A revocation
// whose current version was deleted or destroyed still revokes: only
// deleting the entry's metadata, which neither policy grants, removes it.
//
// # Trust
//
// Vault is trusted for availability and for the revocation and use-count
// records, not for the orders themselves: the signers' Ed25519 public keys
// are pinned in the daemon's configuration (Config.Signers), and an order
// counts only with Config.Quorum valid signatures from distinct pinned
// signers. A Vault compromise alone cannot mint an order; it can deny
// service, hide a revocation or reset a counter, which is why the daemon's
// access log records the order id, its KV version, its document hash and the
// use number of every audit decrypt.
//
// # The decision
//
// Checker.Authorize runs, in this order: the order exists → its signatures
// are valid and meet the quorum → its body is the one first written (KV
// version 1) → it is not revoked → the order it supersedes, if any, is
// revoked → now is inside [not_before, not_after) → it names this auditor
// → its scope covers the transaction → the purpose matches → the use
// counter is below max_uses and is incremented with check-and-set (retried
// up to casAttempts times on a conflict). The order, its first version,
// its revocation and its counter are read from Vault concurrently, to pay
// one round trip instead of four (an amendment pays one more, for the
// superseded order's revocation); the answers are judged in the order
// above, so the refusal returned is the first one in that order. Each refusal is its own sentinel error (errors.go); all order
// refusals match ErrDenied, all Vault failures match ErrVault. Everything
// fails closed: Vault unreachable, sealed, slower than Config.Timeout,
// refusing the daemon's token, or answering something malformed is a
// refusal. No decision is cached: every call reads Vault again.
//
// A use is consumed when Authorize returns nil, before the caller records
// the decision and unwraps; a decrypt that fails after that still counts.
//
// # Concurrency
//
// A Checker is safe for concurrent use. Use counting is linearized by Vault's
// check-and-set: with max_uses = n, at most n calls ever succeed, however
// many run at once. The daemon's token is held behind a lock and renewed by
// Checker.Run.
//
// # Secrets
//
// The Vault token, AppRole secret id and signers' private keys come from
// files, never from argv or the environment of the daemon, and are never
// logged. Private key bytes are cleared after use (best effort: the Go
// runtime may have copied them).
package orders
