package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"custody/hsm"
	"custody/internal/auditlog"
	"custody/internal/ceremony"
	"custody/internal/envelope"
	"custody/internal/keys"
	"custody/internal/orders"
	"custody/internal/policy"
	"custody/internal/rewrap"
)

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

	// Audit decrypt under a court order (audit.go, docs/orders.md).
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

	// Key lifecycle (lifecycle.go).
	CodeKeyDestroyed      = "key_destroyed"      // the envelope needs a key version that was retired (destroyed)
	CodeKeyActive         = "key_active"         // the active version cannot be retired; rotate first
	CodeRetireUnconfirmed = "retire_unconfirmed" // retire without confirm_rewrapped and rewrapped_count
	CodeRotationBusy      = "rotation_busy"      // another daemon of the fleet is rotating that key; retry

	// Escrow key ceremonies (ceremony.go, docs/ceremonies.md).
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

// outcome is how the access log records a request's err: allowed (nil),
// denied (a refusal: the caller is not entitled to what it asked), or
// failed (permitted, but it did not work: bad input, a device or Vault
// error). A refusal is an error whose status is 403 Forbidden — every
// policy, court-order and ceremony-officer refusal (not_officer,
// self_approval, request_expired, not_share_holder, …) has it — or one of
// refusalCodes, the dual-control rules that answer 409.
func outcome(err error) (auditlog.Outcome, string) {
	if err == nil {
		return auditlog.Allowed, ""
	}
	ae := classify(err)
	if ae.Status == http.StatusForbidden || refusalCodes[ae.Code] ||
		errors.Is(err, policy.ErrDenied) || errors.Is(err, policy.ErrUnknownCaller) || errors.Is(err, orders.ErrDenied) {
		return auditlog.Denied, ae.Code
	}
	return auditlog.Failed, ae.Code
}

// refusalCodes are the refusals whose status is not 403: an officer's
// second approval or share, an approval of another text than the request,
// an execution without its quorum or its shares, a request whose effect
// changed, a key that must not be backed up or restored, an officer over
// their pending requests, a caller over its own limits.
var refusalCodes = map[string]bool{
	CodeDuplicateApproval:  true,
	CodeRequestMismatch:    true,
	CodeNotApproved:        true,
	CodeDuplicateShare:     true,
	CodeNotEnoughShares:    true,
	CodeRequestStale:       true,
	CodeNotEscrowLabel:     true,
	CodeTooManyPending:     true,
	CodeRateLimited:        true, // the caller's own limits (per uid)
	CodeTooManyConnections: true,
	CodeTooManyRefusals:    true,
}

// apiError is an error with its HTTP status and stable code.
type apiError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// classify turns any error from the domain packages into an apiError. The
// message of an unexpected error is not shown to the client.
func classify(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	for _, m := range errorMap {
		if errors.Is(err, m.err) {
			return &apiError{Status: m.status, Code: m.code, Message: m.message(err)}
		}
	}
	return &apiError{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error; the daemon log has the details"}
}

type mapping struct {
	err     error
	status  int
	code    string
	message func(error) string
}

func says(msg string) func(error) string { return func(error) string { return msg } }
func itself(err error) string            { return err.Error() }

// errorMap is checked in order: the more specific sentinels come first.
var errorMap = []mapping{
	{policy.ErrUnknownCaller, http.StatusForbidden, CodeUnknownCaller, says("your Unix user and group map to no principal in the policy; ask an operator to add one")},
	{policy.ErrNotParticipant, http.StatusForbidden, CodeNotParticipant, itself},
	{policy.ErrPurpose, http.StatusForbidden, CodePurposeDenied, itself},
	{policy.ErrOutsideWindow, http.StatusForbidden, CodeOutsideWindow, itself},
	{policy.ErrFieldDenied, http.StatusForbidden, CodeFieldDenied, itself},
	{policy.ErrDenied, http.StatusForbidden, CodePermissionDenied, itself},
	{keys.ErrUnknownParticipant, http.StatusNotFound, CodeUnknownParticipant, itself},
	{keys.ErrDestroyed, http.StatusGone, CodeKeyDestroyed, itself},
	{keys.ErrActiveVersion, http.StatusConflict, CodeKeyActive, itself},
	{keys.ErrRotationBusy, http.StatusConflict, CodeRotationBusy, says("another daemon of the fleet is rotating this key right now; retry in a few seconds")},
	{keys.ErrUnknownVersion, http.StatusNotFound, CodeUnknownKeyVersion, itself},
	{keys.ErrExists, http.StatusConflict, CodeParticipantExists, itself},
	{envelope.ErrVersion, http.StatusBadRequest, CodeUnsupportedVersion, itself},
	{envelope.ErrTooLarge, http.StatusRequestEntityTooLarge, CodeEnvelopeTooLarge, itself},
	{envelope.ErrMalformed, http.StatusBadRequest, CodeMalformedEnvelope, itself},
	{envelope.ErrSignature, http.StatusBadRequest, CodeSignatureInvalid, says("the envelope header signature does not verify: it was altered or not sealed by this daemon")},
	{envelope.ErrInvalidInput, http.StatusBadRequest, CodeBadRequest, itself},
	{rewrap.ErrBadItem, http.StatusBadRequest, CodeBadRequest, itself},
	{envelope.ErrNoStanza, http.StatusBadRequest, CodeNotRecipient, itself},
	{hsm.ErrUnavailable, http.StatusServiceUnavailable, CodeHSMUnavailable, says("the HSM token is unavailable; retry later, and see health")},
	{hsm.ErrIntegrity, http.StatusBadRequest, CodeIntegrityFailure, says("the HSM refused to unwrap or decrypt: the envelope was altered")},
	{hsm.ErrNotFound, http.StatusInternalServerError, CodeKeyMissing, says("a registered key is missing from the token; an operator must check the token")},
	{orders.ErrUnknown, http.StatusForbidden, CodeOrderUnknown, says("no court order with that id; check the authorization field")},
	{orders.ErrMalformed, http.StatusForbidden, CodeOrderMalformed, says("the court order record in Vault is malformed; legal intake must re-issue it")},
	{orders.ErrBodyChanged, http.StatusForbidden, CodeOrderBodyChanged, says("the court order's body in Vault is not the one first written under its id (rewritten, or its first version deleted); legal intake must issue a new order id and find out who rewrote it")},
	{orders.ErrSignature, http.StatusForbidden, CodeOrderSignature, says("a signature on the court order does not verify")},
	{orders.ErrUnknownSigner, http.StatusForbidden, CodeOrderUnknownSigner, says("the court order carries a signature by a signer this daemon does not pin")},
	{orders.ErrDuplicateSigner, http.StatusForbidden, CodeOrderDuplicateSign, says("the court order carries two signatures by the same signer")},
	{orders.ErrQuorum, http.StatusForbidden, CodeOrderQuorum, says("the court order has fewer valid signatures than the configured quorum")},
	{orders.ErrRevoked, http.StatusForbidden, CodeOrderRevoked, says("the court order was revoked")},
	{orders.ErrSupersededLive, http.StatusForbidden, CodeOrderSupersedes, says("the court order amends an order that is not revoked yet; legal intake must revoke the order it supersedes")},
	{orders.ErrNotYetValid, http.StatusForbidden, CodeOrderNotYetValid, says("the court order is not valid yet")},
	{orders.ErrExpired, http.StatusForbidden, CodeOrderExpired, says("the court order has expired")},
	{orders.ErrOtherAuditor, http.StatusForbidden, CodeOrderOtherAuditor, says("the court order names another auditor")},
	{orders.ErrOutOfScope, http.StatusForbidden, CodeOrderOutOfScope, says("the transaction is outside the court order's scope")},
	{orders.ErrPurpose, http.StatusForbidden, CodeOrderPurpose, says("the purpose is not the court order's purpose")},
	{orders.ErrExhausted, http.StatusForbidden, CodeOrderExhausted, says("the court order has no uses left")},
	{orders.ErrConflict, http.StatusServiceUnavailable, CodeOrderContention, says("the court order's use counter kept changing; retry")},
	{orders.ErrSealed, http.StatusServiceUnavailable, CodeVaultSealed, says("Vault is sealed; audit decrypts are refused until it is unsealed")},
	{orders.ErrVaultDenied, http.StatusServiceUnavailable, CodeVaultDenied, says("Vault refused the daemon's token; an operator must check its Vault policy and token")},
	{orders.ErrTimeout, http.StatusGatewayTimeout, CodeVaultTimeout, says("Vault did not answer within vault.timeout")},
	{orders.ErrUnavailable, http.StatusServiceUnavailable, CodeVaultUnavailable, func(err error) string {
		msg := "Vault is unreachable; audit decrypts are refused until it is back"
		if note := orders.StatusNote(err); note != "" {
			msg += " (" + note + ")"
		}
		return msg
	}},
	{orders.ErrVaultError, http.StatusServiceUnavailable, CodeVaultError, says("Vault answered with an error; see the daemon log")},
	{keys.ErrNoGenesis, http.StatusConflict, CodeGenesisRequired, says("the escrow key genesis ceremony has not run on this token; officers run `custodyctl ceremony genesis` first")},
	{keys.ErrNoDaemonKeys, http.StatusConflict, CodeGenesisRequired, says("the token has no escrow or signing key yet; officers run the genesis ceremony (`custodyctl ceremony genesis`) first")},
	{ceremony.ErrNotOfficer, http.StatusForbidden, CodeNotOfficer, itself},
	{ceremony.ErrUnknownRequest, http.StatusNotFound, CodeUnknownRequest, itself},
	{ceremony.ErrSelfApproval, http.StatusForbidden, CodeSelfApproval, itself},
	{ceremony.ErrRequestMismatch, http.StatusConflict, CodeRequestMismatch, itself},
	{ceremony.ErrExpired, http.StatusForbidden, CodeRequestExpired, itself},
	{ceremony.ErrDuplicateApproval, http.StatusConflict, CodeDuplicateApproval, itself},
	{ceremony.ErrNotApproved, http.StatusConflict, CodeNotApproved, itself},
	{ceremony.ErrWrongBackup, http.StatusBadRequest, CodeWrongBackup, itself},
	{ceremony.ErrDuplicateShare, http.StatusConflict, CodeDuplicateShare, itself},
	{ceremony.ErrCorruptShare, http.StatusBadRequest, CodeCorruptShare, itself},
	{ceremony.ErrNotEnoughShares, http.StatusConflict, CodeNotEnoughShares, itself},
	{ceremony.ErrKCV, http.StatusBadRequest, CodeKCVMismatch, itself},
	{ceremony.ErrCanary, http.StatusInternalServerError, CodeCanaryFailed, itself},
	{ceremony.ErrFormat, http.StatusBadRequest, CodeCeremonyMalformed, itself},
	{hsm.ErrExists, http.StatusConflict, CodeKeyExists, says("the token already holds a key with that label; nothing was changed")},
	{hsm.ErrSOLogin, http.StatusServiceUnavailable, CodeSOLogin, says("the token refused the SO PIN combined from the submitted SO PIN shares: they are not this token's (check ceremony.so_pin_shares); open a new backup request")},
	{ceremony.ErrNoSOPIN, http.StatusConflict, CodeSOPINUnavailable, itself},
	{ceremony.ErrUntrustedManifest, http.StatusForbidden, CodeManifestUntrusted, itself},
	{ceremony.ErrNotEscrowLabel, http.StatusBadRequest, CodeNotEscrowLabel, itself},
	{ceremony.ErrTooManyPending, http.StatusTooManyRequests, CodeTooManyPending, itself},
	{ceremony.ErrStale, http.StatusConflict, CodeRequestStale, itself},
	{ceremony.ErrInvalidInput, http.StatusBadRequest, CodeBadRequest, itself},
	{ceremony.ErrRetireUnconfirmed, http.StatusBadRequest, CodeRetireUnconfirmed, itself},
	{ceremony.ErrNotShareHolder, http.StatusForbidden, CodeNotShareHolder, itself},
	{context.DeadlineExceeded, http.StatusGatewayTimeout, CodeTimeout, says("the request took longer than limits.request_timeout")},
}
