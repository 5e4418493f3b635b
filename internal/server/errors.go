package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"custody/hsm"
	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/ceremony"
	"custody/internal/compliance"
	"custody/internal/envelope"
	"custody/internal/keys"
	"custody/internal/mfa"
	"custody/internal/orders"
	"custody/internal/policy"
	"custody/internal/rewrap"
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
	api.CodeDuplicateApproval:  true,
	api.CodeRequestMismatch:    true,
	api.CodeNotApproved:        true,
	api.CodeDuplicateShare:     true,
	api.CodeNotEnoughShares:    true,
	api.CodeRequestStale:       true,
	api.CodeNotEscrowLabel:     true,
	api.CodeTooManyPending:     true,
	api.CodeRateLimited:        true, // the caller's own limits (per uid)
	api.CodeTooManyConnections: true,
	api.CodeTooManyRefusals:    true,
	api.CodeStatusUnavailable:  true, // participant status unknown: fail closed
	api.CodeMFAUnavailable:     true, // second factor state unknown: fail closed
}

// apiError is an error with its HTTP status and stable code (an api.Code…
// constant); wire gives the body the client sees.
type apiError struct {
	Status        int
	Code, Message string
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

// wire is e as the client sees it, without the status.
func (e *apiError) wire() *api.Error { return &api.Error{Code: e.Code, Message: e.Message} }

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
	return &apiError{Status: http.StatusInternalServerError, Code: api.CodeInternal, Message: "internal error; the daemon log has the details"}
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
	{policy.ErrUnknownCaller, http.StatusForbidden, api.CodeUnknownCaller, says("your Unix user and group map to no principal in the policy; ask an operator to add one")},
	{policy.ErrNotParticipant, http.StatusForbidden, api.CodeNotParticipant, itself},
	{policy.ErrPurpose, http.StatusForbidden, api.CodePurposeDenied, itself},
	{policy.ErrOutsideWindow, http.StatusForbidden, api.CodeOutsideWindow, itself},
	{policy.ErrFieldDenied, http.StatusForbidden, api.CodeFieldDenied, itself},
	{policy.ErrSealDenied, http.StatusForbidden, api.CodeSealDenied, itself},
	{policy.ErrDenied, http.StatusForbidden, api.CodePermissionDenied, itself},
	{compliance.ErrSuspended, http.StatusForbidden, api.CodeParticipantSuspended, itself},
	{compliance.ErrSanctions, http.StatusForbidden, api.CodeSanctionsHit, itself},
	{compliance.ErrKYC, http.StatusForbidden, api.CodeKYCRequired, itself},
	{compliance.ErrApproval, http.StatusForbidden, api.CodeApprovalExpired, itself},
	{compliance.ErrUnavailable, http.StatusServiceUnavailable, api.CodeStatusUnavailable, says("the participant's compliance status cannot be read from Vault and this daemon's copy is older than participant_status.max_stale (or the record in Vault is deleted or malformed); refused until it can be read")},
	{compliance.ErrConflict, http.StatusConflict, api.CodeStatusConflict, itself},
	{mfa.ErrInvalid, http.StatusForbidden, api.CodeMFAInvalid, itself},
	{mfa.ErrLocked, http.StatusForbidden, api.CodeMFALocked, itself},
	{mfa.ErrNotEnrolled, http.StatusForbidden, api.CodeMFARequired, says("this request needs a second factor and your principal has none that is usable: enroll with `custodyctl mfa enroll --self` and have another admin confirm it (`custodyctl mfa confirm PRINCIPAL --enrollment ID`), or an admin enrolls you with `custodyctl mfa enroll PRINCIPAL`; a self-enrollment counts only once confirmed")},
	{mfa.ErrSelfConfirm, http.StatusForbidden, api.CodeMFASelfConfirm, says("a principal cannot confirm its own enrollment: another principal with role admin confirms it")},
	{mfa.ErrNoEnrollment, http.StatusNotFound, api.CodeMFANotEnrolled, itself},
	{mfa.ErrEnrolled, http.StatusConflict, api.CodeMFAEnrolled, itself},
	{mfa.ErrUnavailable, http.StatusServiceUnavailable, api.CodeMFAUnavailable, says("the second factor's shared state cannot be read or written in Vault; refused until it can")},
	{keys.ErrUnknownParticipant, http.StatusNotFound, api.CodeUnknownParticipant, itself},
	{keys.ErrDestroyed, http.StatusGone, api.CodeKeyDestroyed, itself},
	{keys.ErrRotationBusy, http.StatusConflict, api.CodeRotationBusy, says("another daemon of the fleet is rotating this key right now; retry in a few seconds")},
	{keys.ErrActiveVersion, http.StatusConflict, api.CodeKeyActive, itself},
	{keys.ErrUnknownVersion, http.StatusNotFound, api.CodeUnknownKeyVersion, itself},
	{keys.ErrExists, http.StatusConflict, api.CodeParticipantExists, itself},
	{envelope.ErrVersion, http.StatusBadRequest, api.CodeUnsupportedVersion, itself},
	{envelope.ErrTooLarge, http.StatusRequestEntityTooLarge, api.CodeEnvelopeTooLarge, itself},
	{envelope.ErrMalformed, http.StatusBadRequest, api.CodeMalformedEnvelope, itself},
	{envelope.ErrSignature, http.StatusBadRequest, api.CodeSignatureInvalid, says("the envelope header signature does not verify: it was altered or not sealed by this daemon")},
	{envelope.ErrInvalidInput, http.StatusBadRequest, api.CodeBadRequest, itself},
	{rewrap.ErrBadItem, http.StatusBadRequest, api.CodeBadRequest, itself},
	{envelope.ErrNoStanza, http.StatusBadRequest, api.CodeNotRecipient, itself},
	{hsm.ErrUnavailable, http.StatusServiceUnavailable, api.CodeHSMUnavailable, says("the HSM token is unavailable; retry later, and see health")},
	{hsm.ErrIntegrity, http.StatusBadRequest, api.CodeIntegrityFailure, says("the HSM refused to unwrap or decrypt: the envelope was altered")},
	{hsm.ErrNotFound, http.StatusInternalServerError, api.CodeKeyMissing, says("a registered key is missing from the token; an operator must check the token")},
	{orders.ErrUnknown, http.StatusForbidden, api.CodeOrderUnknown, says("no court order with that id; check the authorization field")},
	{orders.ErrMalformed, http.StatusForbidden, api.CodeOrderMalformed, says("the court order record in Vault is malformed; legal intake must re-issue it")},
	{orders.ErrBodyChanged, http.StatusForbidden, api.CodeOrderBodyChanged, says("the court order's body in Vault is not the one first written under its id (rewritten, or its first version deleted); legal intake must issue a new order id and find out who rewrote it")},
	{orders.ErrSignature, http.StatusForbidden, api.CodeOrderSignature, says("a signature on the court order does not verify")},
	{orders.ErrUnknownSigner, http.StatusForbidden, api.CodeOrderUnknownSigner, says("the court order carries a signature by a signer this daemon does not pin")},
	{orders.ErrDuplicateSigner, http.StatusForbidden, api.CodeOrderDuplicateSign, says("the court order carries two signatures by the same signer")},
	{orders.ErrQuorum, http.StatusForbidden, api.CodeOrderQuorum, says("the court order has fewer valid signatures than the configured quorum")},
	{orders.ErrRevoked, http.StatusForbidden, api.CodeOrderRevoked, says("the court order was revoked")},
	{orders.ErrSupersededLive, http.StatusForbidden, api.CodeOrderSupersedes, says("the court order amends an order that is not revoked yet; legal intake must revoke the order it supersedes")},
	{orders.ErrNotYetValid, http.StatusForbidden, api.CodeOrderNotYetValid, says("the court order is not valid yet")},
	{orders.ErrExpired, http.StatusForbidden, api.CodeOrderExpired, says("the court order has expired")},
	{orders.ErrOtherAuditor, http.StatusForbidden, api.CodeOrderOtherAuditor, says("the court order names another auditor")},
	{orders.ErrOutOfScope, http.StatusForbidden, api.CodeOrderOutOfScope, says("the transaction is outside the court order's scope")},
	{orders.ErrPurpose, http.StatusForbidden, api.CodeOrderPurpose, says("the purpose is not the court order's purpose")},
	{orders.ErrExhausted, http.StatusForbidden, api.CodeOrderExhausted, says("the court order has no uses left")},
	{orders.ErrConflict, http.StatusServiceUnavailable, api.CodeOrderContention, says("the court order's use counter kept changing; retry")},
	{orders.ErrSealed, http.StatusServiceUnavailable, api.CodeVaultSealed, says("Vault is sealed; audit decrypts are refused until it is unsealed")},
	{orders.ErrVaultDenied, http.StatusServiceUnavailable, api.CodeVaultDenied, says("Vault refused the daemon's token; an operator must check its Vault policy and token")},
	{orders.ErrTimeout, http.StatusGatewayTimeout, api.CodeVaultTimeout, says("Vault did not answer within vault.timeout")},
	{orders.ErrUnavailable, http.StatusServiceUnavailable, api.CodeVaultUnavailable, func(err error) string {
		msg := "Vault is unreachable; audit decrypts are refused until it is back"
		if note := orders.StatusNote(err); note != "" {
			msg += " (" + note + ")"
		}
		return msg
	}},
	{orders.ErrVaultError, http.StatusServiceUnavailable, api.CodeVaultError, says("Vault answered with an error; see the daemon log")},
	{keys.ErrNoGenesis, http.StatusConflict, api.CodeGenesisRequired, says("the escrow key genesis ceremony has not run on this token; officers run `custodyctl ceremony genesis` first")},
	{keys.ErrNoDaemonKeys, http.StatusConflict, api.CodeGenesisRequired, says("the token has no escrow or signing key yet; officers run the genesis ceremony (`custodyctl ceremony genesis`) first")},
	{ceremony.ErrNotOfficer, http.StatusForbidden, api.CodeNotOfficer, itself},
	{ceremony.ErrUnknownRequest, http.StatusNotFound, api.CodeUnknownRequest, itself},
	{ceremony.ErrSelfApproval, http.StatusForbidden, api.CodeSelfApproval, itself},
	{ceremony.ErrRequestMismatch, http.StatusConflict, api.CodeRequestMismatch, itself},
	{ceremony.ErrExpired, http.StatusForbidden, api.CodeRequestExpired, itself},
	{ceremony.ErrDuplicateApproval, http.StatusConflict, api.CodeDuplicateApproval, itself},
	{ceremony.ErrNotApproved, http.StatusConflict, api.CodeNotApproved, itself},
	{ceremony.ErrWrongBackup, http.StatusBadRequest, api.CodeWrongBackup, itself},
	{ceremony.ErrDuplicateShare, http.StatusConflict, api.CodeDuplicateShare, itself},
	{ceremony.ErrCorruptShare, http.StatusBadRequest, api.CodeCorruptShare, itself},
	{ceremony.ErrNotEnoughShares, http.StatusConflict, api.CodeNotEnoughShares, itself},
	{ceremony.ErrKCV, http.StatusBadRequest, api.CodeKCVMismatch, itself},
	{ceremony.ErrCanary, http.StatusInternalServerError, api.CodeCanaryFailed, itself},
	{ceremony.ErrFormat, http.StatusBadRequest, api.CodeCeremonyMalformed, itself},
	{hsm.ErrExists, http.StatusConflict, api.CodeKeyExists, says("the token already holds a key with that label; nothing was changed")},
	{hsm.ErrSOLogin, http.StatusServiceUnavailable, api.CodeSOLogin, says("the token refused the SO PIN combined from the submitted SO PIN shares: they are not this token's (check ceremony.so_pin_shares); open a new backup request")},
	{ceremony.ErrNoSOPIN, http.StatusConflict, api.CodeSOPINUnavailable, itself},
	{ceremony.ErrUntrustedManifest, http.StatusForbidden, api.CodeManifestUntrusted, itself},
	{ceremony.ErrNotEscrowLabel, http.StatusBadRequest, api.CodeNotEscrowLabel, itself},
	{ceremony.ErrTooManyPending, http.StatusTooManyRequests, api.CodeTooManyPending, itself},
	{ceremony.ErrStale, http.StatusConflict, api.CodeRequestStale, itself},
	{ceremony.ErrInvalidInput, http.StatusBadRequest, api.CodeBadRequest, itself},
	{ceremony.ErrRetireUnconfirmed, http.StatusBadRequest, api.CodeRetireUnconfirmed, itself},
	{ceremony.ErrNotShareHolder, http.StatusForbidden, api.CodeNotShareHolder, itself},
	{context.DeadlineExceeded, http.StatusGatewayTimeout, api.CodeTimeout, says("the request took longer than limits.request_timeout")},
}
