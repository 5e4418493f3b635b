package orders

import (
	"errors"
	"fmt"
)

// ErrDenied is matched by every refusal that comes from the order itself
// (as opposed to Vault failing): ErrUnknown, ErrMalformed, ErrBodyChanged,
// ErrSignature, ErrUnknownSigner, ErrDuplicateSigner, ErrQuorum,
// ErrRevoked, ErrSupersededLive, ErrNotYetValid, ErrExpired,
// ErrOtherAuditor, ErrOutOfScope, ErrPurpose, ErrExhausted.
var ErrDenied = errors.New("court order refuses")

// ErrVault is matched by every failure to get an answer from Vault:
// ErrUnavailable, ErrSealed, ErrVaultDenied, ErrTimeout, ErrConflict and
// ErrVaultError. All of them deny.
var ErrVault = errors.New("vault")

// Order refusals.
var (
	ErrUnknown   = denied("no such order")          // no order record under that id
	ErrMalformed = denied("malformed order record") // the record does not parse or breaks a rule
	// ErrBodyChanged: the record's current body is not the body of its
	// first KV version, or that first version is gone (deleted, destroyed,
	// or pruned by the mount's max_versions). An order body is written
	// once; a later write may add signatures, never change what they cover.
	ErrBodyChanged     = denied("order body differs from the one first written under its id")
	ErrSignature       = denied("an order signature does not verify") // a pinned signer's signature is wrong
	ErrUnknownSigner   = denied("order signed by a signer not pinned in the daemon's configuration")
	ErrDuplicateSigner = denied("order signed twice by the same signer")
	ErrQuorum          = denied("order has fewer valid signatures than the quorum")
	ErrRevoked         = denied("order revoked")
	// ErrSupersededLive: the order amends (Order.Supersedes) an order that
	// is not revoked; an amendment counts only once the order it replaces
	// can no longer be used.
	ErrSupersededLive = denied("order amends an order that is not revoked")
	ErrNotYetValid    = denied("order not yet valid")
	ErrExpired        = denied("order expired")
	ErrOtherAuditor   = denied("order names another auditor")
	ErrOutOfScope     = denied("transaction outside the order's scope")
	ErrPurpose        = denied("purpose differs from the order's")
	ErrExhausted      = denied("order has no uses left")
)

// Vault failures.
var (
	ErrUnavailable = vaultErr("vault unreachable")                                   // connection refused, reset, DNS, 5xx other than sealed
	ErrSealed      = vaultErr("vault sealed")                                        // Vault answered 503 sealed
	ErrVaultDenied = vaultErr("vault refused the daemon's token")                    // 403: policy does not allow it, or the token is revoked or expired
	ErrTimeout     = vaultErr("vault slower than the configured timeout")            // Config.Timeout passed
	ErrConflict    = vaultErr("use counter check-and-set conflicts did not resolve") // casAttempts conflicts in a row
	ErrVaultError  = vaultErr("vault returned an error")                             // any other error answer
)

type sentinel struct {
	msg    string
	parent error
}

func (e *sentinel) Error() string        { return e.msg }
func (e *sentinel) Is(target error) bool { return target == e.parent }

func denied(msg string) error   { return &sentinel{msg, ErrDenied} }
func vaultErr(msg string) error { return &sentinel{msg, ErrVault} }

// ErrReviewMismatch is returned by Intake.Sign when the body in Vault is
// not the body the signer reviewed (its SHA-256 differs); nothing is
// signed. The error is a *ReviewMismatchError.
var ErrReviewMismatch = errors.New("the order body in Vault is not the body you reviewed")

// ReviewMismatchError says what Vault holds instead of the reviewed body.
type ReviewMismatchError struct {
	ID       string // the order id
	Reviewed string // the SHA-256 the signer confirmed
	InVault  *Order // the body Vault holds now
}

func (e *ReviewMismatchError) Error() string {
	return fmt.Sprintf("order %q: %v: Vault's body has sha256 %s, you reviewed %s; nothing was signed",
		e.ID, ErrReviewMismatch, e.InVault.BodySHA256(), e.Reviewed)
}

func (e *ReviewMismatchError) Is(target error) bool { return target == ErrReviewMismatch }
