// Package api is custodyd's HTTP API on the wire: every request and
// response body and every error code, shared by the daemon
// (internal/server) and its one client (internal/client). docs/api.md
// documents each route with these types.
//
// The package is a leaf: plain structs with their JSON tags, no behaviour
// beyond Error. Changing a tag changes the protocol; add fields, never
// rename one.
package api

import "errors"

// Error is the body of every error response, {"error":{"code","message"}},
// and the error of one item of a batch. Code is one of the Code constants;
// clients branch on it, never on Message.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ErrorBody is the JSON object an error response carries.
type ErrorBody struct {
	Error *Error `json:"error"`
}

// IsCode reports whether err is, or wraps, an *Error with that code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// HeaderTOTP carries the caller's current TOTP code (6 digits) on a
// request that the policy makes need a second factor.
const HeaderTOTP = "Custody-TOTP"

// Error codes are the stable part of every error response
// ({"error":{"code":…,"message":…}}); clients branch on them. docs/api.md
// lists them. Never rename one; add new ones.
const (
	CodeBadRequest          = "bad_request"          // malformed JSON, a missing or invalid field
	CodeBodyTooLarge        = "body_too_large"       // request body over limits.max_body_bytes
	CodeBatchTooLarge       = "batch_too_large"      // more items than limits.max_batch_items
	CodeInvalidID           = "invalid_id"           // an id breaks the id rule (docs/envelope.md)
	CodeUnknownCaller       = "unknown_caller"       // the peer's uid/gid maps to no principal
	CodePermissionDenied    = "permission_denied"    // the principal's roles do not allow the route
	CodeNotParticipant      = "not_participant"      // may not act as that participant
	CodePurposeDenied       = "purpose_denied"       // purpose unknown or not granted for that participant
	CodeOutsideWindow       = "outside_window"       // the grant's time windows exclude now
	CodeFieldDenied         = "field_denied"         // a requested field is not visible for the purpose
	CodeSealDenied          = "seal_denied"          // no seal_for grant lets the principal seal for that participant (and transaction)
	CodeUnknownParticipant  = "unknown_participant"  // no key registered for that id
	CodeUnknownKeyVersion   = "unknown_key_version"  // the envelope names a key version the token lacks
	CodeParticipantExists   = "participant_exists"   // registering an id twice
	CodeMalformedEnvelope   = "malformed_envelope"   // the envelope does not parse
	CodeUnsupportedVersion  = "unsupported_version"  // envelope format version unknown
	CodeEnvelopeTooLarge    = "envelope_too_large"   // envelope or plaintext over the format's limits
	CodeSignatureInvalid    = "signature_invalid"    // header signature does not verify (tampered or foreign)
	CodeNotRecipient        = "not_recipient"        // the envelope has no stanza for that participant
	CodeTransactionMismatch = "transaction_mismatch" // envelope belongs to another transaction than stated
	CodeIntegrityFailure    = "integrity_failure"    // the device refused to unwrap or decrypt: altered data
	CodeKeyMissing          = "key_missing"          // the registry knows the key but the token does not have it
	CodeHSMUnavailable      = "hsm_unavailable"      // token down; retry later
	CodeLogUnavailable      = "log_unavailable"      // the decision could not be recorded; nothing released
	CodeRateLimited         = "rate_limited"         // too many requests of this caller in progress; retry after some finish
	CodeTooManyConnections  = "too_many_connections" // the caller's uid has limits.max_connections_per_caller connections open
	CodeTooManyRefusals     = "too_many_refusals"    // the caller was refused too often recently (limits.refusal_rate, refusal_burst)
	CodeTimeout             = "timeout"              // limits.request_timeout passed
	CodeNotFound            = "not_found"            // no such route or object
	CodeMethodNotAllowed    = "method_not_allowed"   // route exists, other method
	CodeInternal            = "internal"             // a bug or an unexpected token answer; see the daemon log

	// Audit decrypt under a court order (docs/orders.md).
	CodeOrderUnknown       = "order_unknown"              // no order with that id in Vault
	CodeOrderMalformed     = "order_malformed"            // the order record does not parse or breaks a rule
	CodeOrderBodyChanged   = "order_body_changed"         // the record's body is not the one first written under its id
	CodeOrderSignature     = "order_signature"            // a signature does not verify (forged or the body was edited)
	CodeOrderUnknownSigner = "order_unknown_signer"       // signed by a key not pinned in the daemon's configuration
	CodeOrderDuplicateSign = "order_duplicate_signer"     // one signer signed twice
	CodeOrderQuorum        = "order_quorum"               // fewer valid signatures than vault.quorum
	CodeOrderRevoked       = "order_revoked"              // a revocation record exists
	CodeOrderSupersedes    = "order_supersedes_unrevoked" // the order amends an order that is not revoked
	CodeOrderNotYetValid   = "order_not_yet_valid"        // before not_before
	CodeOrderExpired       = "order_expired"              // at or after not_after
	CodeOrderOtherAuditor  = "order_other_auditor"        // the order names another auditor principal
	CodeOrderOutOfScope    = "order_out_of_scope"         // the transaction is outside the order's scope
	CodeOrderPurpose       = "order_purpose"              // the purpose is not the order's
	CodeOrderExhausted     = "order_exhausted"            // max_uses reached
	CodeOrderContention    = "order_contention"           // the use counter kept changing under check-and-set; retry
	CodeVaultUnavailable   = "vault_unavailable"          // Vault unreachable, or audit decrypt not configured
	CodeVaultSealed        = "vault_sealed"               // Vault is sealed
	CodeVaultDenied        = "vault_denied"               // Vault refused the daemon's token (policy, revoked, expired)
	CodeVaultTimeout       = "vault_timeout"              // Vault slower than vault.timeout
	CodeVaultError         = "vault_error"                // Vault answered with another error

	// Participant status (docs/compliance.md).
	CodeParticipantSuspended = "participant_suspended" // the participant is suspended: not sealed for, cannot decrypt
	CodeKYCRequired          = "kyc_required"          // the policy needs KYC (or KYB) verified and unexpired for this
	CodeSanctionsHit         = "sanctions_hit"         // the policy needs a clear sanctions screening; the record has a hit or none
	CodeApprovalExpired      = "approval_expired"      // the policy needs a regulatory approval; missing, expired or another jurisdiction
	CodeStatusUnavailable    = "status_unavailable"    // status unreadable in Vault and the cached copy older than max_stale (or status is off)
	CodeStatusConflict       = "status_conflict"       // the status changed since the version the change names; read it again

	// Second factor (docs/compliance.md, "Second factor").
	CodeMFARequired    = "mfa_required"     // the policy needs a TOTP code here: none sent, or the principal is not enrolled
	CodeMFAInvalid     = "mfa_invalid"      // wrong code, or a code already used (replay)
	CodeMFALocked      = "mfa_locked"       // too many wrong codes: the principal's factor is locked for a while
	CodeMFAUnavailable = "mfa_unavailable"  // the factor's shared state cannot be read or written in Vault (or MFA is not configured)
	CodeMFASelfConfirm = "mfa_self_confirm" // a principal tried to confirm its own enrollment: another admin must
	CodeMFANotEnrolled = "mfa_not_enrolled" // nothing to revoke, or no pending enrollment with that id to confirm
	CodeMFAEnrolled    = "mfa_enrolled"     // the principal already has a factor (active or pending): revoke it first

	// Key lifecycle (docs/keys.md).
	CodeKeyDestroyed      = "key_destroyed"      // the envelope needs a key version that was retired (destroyed)
	CodeKeyActive         = "key_active"         // the active version cannot be retired; rotate first
	CodeRetireUnconfirmed = "retire_unconfirmed" // retire without confirm_rewrapped and rewrapped_count
	CodeRotationBusy      = "rotation_busy"      // another daemon of the fleet is rotating that key; retry

	// Escrow key ceremonies (docs/ceremonies.md).
	CodeCeremonyUnavailable = "ceremony_unavailable" // no ceremony section (officers file) in the configuration
	CodeGenesisRequired     = "genesis_required"     // audit decrypts wait for the genesis ceremony
	CodeNotOfficer          = "not_officer"          // role officer, but the caller's Unix user is not in the officers file
	CodeUnknownRequest      = "unknown_request"      // no pending ceremony request with that id (and kind)
	CodeSelfApproval        = "self_approval"        // the requester approved their own request
	CodeRequestMismatch     = "request_mismatch"     // the approval names another hash or nonce than the request
	CodeRequestExpired      = "request_expired"      // outside the request's window
	CodeDuplicateApproval   = "duplicate_approval"   // this officer already approved
	CodeNotApproved         = "not_approved"         // fewer than M distinct officers approved
	CodeCeremonyMalformed   = "ceremony_malformed"   // a share, manifest, request or transcript does not parse
	CodeWrongBackup         = "wrong_backup"         // the share belongs to another backup
	CodeDuplicateShare      = "duplicate_share"      // that share (index) or that officer's share is already in
	CodeCorruptShare        = "corrupt_share"        // the share does not match the backup's commitment
	CodeNotShareHolder      = "not_share_holder"     // the share names another officer than the caller
	CodeNotEnoughShares     = "not_enough_shares"    // fewer than M shares submitted
	CodeKCVMismatch         = "kcv_mismatch"         // the combined KEK does not match the key check value
	CodeCanaryFailed        = "canary_failed"        // the restored key did not open the canary; it was removed
	CodeKeyExists           = "key_exists"           // the token already holds a key with that label
	CodeSOLogin             = "so_login_refused"     // the token refused the SO PIN combined from the officers' shares
	CodeSOPINUnavailable    = "so_pin_unavailable"   // the token's SO PIN was not split among the officers: no backups
	CodeManifestUntrusted   = "manifest_untrusted"   // the backup manifest is unsigned or not signed by a pinned daemon key
	CodeNotEscrowLabel      = "not_escrow_label"     // only escrow keys are backed up and restored
	CodeTooManyPending      = "too_many_pending"     // the officer (or the daemon) has as many pending requests as allowed
	CodeRequestStale        = "request_stale"        // the token changed since the officers approved; open a new request
)
