// Package compliance owns a participant's compliance status: the record a
// compliance team keeps (KYC, KYB, regulatory approval, sanctions,
// suspension, flags), the requirements a policy puts on it, and the store
// that keeps it in Vault KV version 2 and caches it for the daemon.
//
// The record (Record) is plain data with a strict parser (ParseRecord,
// ParseStored): unknown fields, unknown states and inconsistent records
// are errors. A Requirement is what a policy asks of a participant for one
// operation (sealing for it, or decrypting as it for a purpose);
// Record.Check decides it at an instant and returns one of the refusal
// sentinels (ErrSuspended, ErrSanctions, ErrKYC, ErrApproval), all of which
// match ErrRefused. A participant without a record has every state unknown:
// it meets no requirement but is not suspended.
//
// Store keeps one record per participant at <mount>/data/<path>/<id>,
// written with check-and-set so that two reviewers cannot overwrite each
// other, and caches what it read: a copy younger than Config.CacheTTL is
// used as is; an older one is refreshed from Vault; when Vault does not
// answer, a copy younger than Config.MaxStale is still used and an older one
// (or none) is ErrUnavailable: the caller refuses (fail closed). The cache
// is shared by every request of one daemon, bounded in entries, and safe for
// concurrent use; the daemons of a fleet share nothing but Vault, so a
// change made through one daemon reaches the others within CacheTTL.
//
// What the package never does: decide which operations need which status
// (the policy says it, internal/policy), record decisions (the server
// does), or gate audit decrypts (a valid court order is not blocked by a
// participant's status; docs/compliance.md).
package compliance
