package ceremony

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers branch on these with errors.Is.
var (
	// ErrOfficers: the officers file is malformed or names an unknown user.
	ErrOfficers = errors.New("ceremony: invalid officers file")
	// ErrNotOfficer: the caller is not a declared officer.
	ErrNotOfficer = errors.New("ceremony: caller is not a declared officer")
	// ErrUnknownRequest: no pending request with that id.
	ErrUnknownRequest = errors.New("ceremony: unknown request")
	// ErrSelfApproval: the requester tried to approve their own request.
	ErrSelfApproval = errors.New("ceremony: a requester cannot approve their own request")
	// ErrRequestMismatch: the approval names another hash or nonce than the request.
	ErrRequestMismatch = errors.New("ceremony: approval does not match the request (hash or nonce)")
	// ErrExpired: the request's approval window has closed (or not opened).
	ErrExpired = errors.New("ceremony: outside the request's approval window")
	// ErrDuplicateApproval: this officer already approved the request.
	ErrDuplicateApproval = errors.New("ceremony: officer already approved this request")
	// ErrTooManyPending: the requester (or the daemon) has as many pending
	// requests as allowed.
	ErrTooManyPending = errors.New("ceremony: too many pending requests")
	// ErrNotApproved: fewer than M distinct officers approved the request.
	ErrNotApproved = errors.New("ceremony: request lacks its quorum of approvals")
	// ErrFormat: a share file, backup manifest, request or transcript does not parse.
	ErrFormat = errors.New("ceremony: malformed file")
	// ErrWrongBackup: a share belongs to another backup.
	ErrWrongBackup = errors.New("ceremony: share belongs to another backup")
	// ErrDuplicateShare: a share with that index (or from that officer) was already submitted.
	ErrDuplicateShare = errors.New("ceremony: duplicate share")
	// ErrCorruptShare: a share does not match the backup's commitment for its index.
	ErrCorruptShare = errors.New("ceremony: share does not match the backup's commitment")
	// ErrNotEnoughShares: fewer than M shares were submitted.
	ErrNotEnoughShares = errors.New("ceremony: not enough shares")
	// ErrKCV: the combined KEK does not match the backup's key check value.
	ErrKCV = errors.New("ceremony: key check value mismatch")
	// ErrCanary: the restored key did not open the backup's canary envelope; the key was removed.
	ErrCanary = errors.New("ceremony: canary envelope did not open with the restored key")
	// ErrUntrustedManifest: a backup manifest is unsigned, or not signed by a
	// key pinned in ceremony.trusted_backup_signers, or its signature fails.
	ErrUntrustedManifest = errors.New("ceremony: backup manifest is not signed by a trusted daemon")
	// ErrNotEscrowLabel: only escrow keys (custody/escrow/v<N>) are backed up
	// and restored; never participant, signing or log keys.
	ErrNotEscrowLabel = errors.New("ceremony: only escrow key labels can be backed up or restored")
	// ErrNoSOPIN: the token's SO PIN was not split among the officers, so no
	// backup can log the security officer in.
	ErrNoSOPIN = errors.New("ceremony: no SO PIN share record for this token")
	// ErrTranscript: a transcript's signatures do not verify or a required signer is missing.
	ErrTranscript = errors.New("ceremony: transcript does not verify")
)

// Sentinel errors of the Service (service.go). Their messages say what to
// do; an input error's text is only its message.
var (
	// ErrInvalidInput: a request's kind, params, m, n or window is out of
	// range, or a param the daemon writes was given.
	ErrInvalidInput = errors.New("ceremony: invalid request input")
	// ErrRetireUnconfirmed: a retire request without rewrapped_count.
	ErrRetireUnconfirmed = errors.New("ceremony: retire without the count of the last rewrap run")
	// ErrNotShareHolder: the share (or share file) is another officer's.
	ErrNotShareHolder = errors.New("ceremony: the share is another officer's")
	// ErrStale: what the officers approved no longer describes the token.
	ErrStale = errors.New("ceremony request is stale")
)

// inputError is an error whose text is msg alone and which is kind for
// errors.Is.
type inputError struct {
	kind error
	msg  string
}

func (e *inputError) Error() string { return e.msg }
func (e *inputError) Unwrap() error { return e.kind }

func inputErrorf(kind error, format string, args ...any) error {
	return &inputError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

func badInput(format string, args ...any) error {
	return inputErrorf(ErrInvalidInput, format, args...)
}
