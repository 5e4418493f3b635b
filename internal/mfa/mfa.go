// Package mfa is the second factor for decryption: TOTP (RFC 6238:
// HMAC-SHA-1, 6 digits, 30-second steps) whose seed is a sensitive,
// non-extractable CKM_SHA_1_HMAC key on the HSM token, so that every code
// is computed on the device (RFC 4226's truncation of the device's MAC runs
// in the host; the seed never does after enrollment).
//
// Verifier checks a principal's code: ±1 step of clock skew, each step
// accepted once (replay refused), and MaxFailures wrong codes within
// FailureWindow lock the principal's factor for LockFor. That state
// (last accepted step, failures, lock) lives in Vault KV version 2 and is
// written with check-and-set, so it is shared by every daemon of a fleet:
// a code used on one daemon is refused on the others, and a lockout holds
// fleet-wide. Vault not answering refuses (fail closed).
//
// Service adds enrollment (a fresh seed imported into the token, shown once
// as an otpauth:// URI) and revocation. The server asks for a code where the
// policy's second_factor section says (internal/server/mfa.go).
//
// STATUS (issue 15): NOT built yet: the terminal QR code of custodyctl mfa
// enroll, self-enrollment confirmed by an admin, listing who is enrolled,
// and a factor for ceremony approvals (docs/compliance.md, "Not done").
package mfa

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"time"
)

// TOTP parameters (RFC 6238 defaults; what authenticator apps expect).
const (
	Period      = 30 * time.Second
	Digits      = 6
	SeedBytes   = 20 // 160 bits, RFC 4226's recommendation for SHA-1
	Skew        = 1  // steps accepted on each side of now
	LabelPrefix = "custody/mfa/"
)

// Lockout defaults.
const (
	MaxFailures   = 5
	FailureWindow = 15 * time.Minute
	LockFor       = 15 * time.Minute
)

// Errors. ErrInvalid is matched by ErrReplay too.
var (
	ErrInvalid     = errors.New("mfa: wrong code")
	ErrReplay      = fmt.Errorf("%w: this code was already used", ErrInvalid)
	ErrLocked      = errors.New("mfa: factor locked after too many wrong codes")
	ErrNotEnrolled = errors.New("mfa: principal has no factor enrolled")
	ErrUnavailable = errors.New("mfa: state unavailable (Vault)")
)

// Device computes HMAC-SHA-1 with a key on the token (*hsm.Token).
type Device interface {
	HMACSHA1(ctx context.Context, label string, msg []byte) ([]byte, error)
}

// Step is the RFC 6238 time step of t: floor(unix seconds / 30).
func Step(t time.Time) uint64 { return uint64(t.Unix()) / uint64(Period/time.Second) }

// Code is the TOTP of step under the device key label, with digits
// digits (6 for custody; 8 for the RFC's test vectors): RFC 4226 dynamic
// truncation of the device's HMAC-SHA-1 of the big-endian step.
func Code(ctx context.Context, dev Device, label string, step uint64, digits int) (string, error) {
	if digits < 6 || digits > 8 {
		return "", fmt.Errorf("mfa: %d digits, want 6..8", digits)
	}
	var msg [8]byte
	binary.BigEndian.PutUint64(msg[:], step)
	mac, err := dev.HMACSHA1(ctx, label, msg[:])
	if err != nil {
		return "", err
	}
	off := mac[len(mac)-1] & 0x0f
	bin := binary.BigEndian.Uint32(mac[off:off+4]) & 0x7fffffff
	mod := uint32(1)
	for range digits {
		mod *= 10
	}
	return fmt.Sprintf("%0*d", digits, bin%mod), nil
}

// KeyLabel is the token label of principal's seed key.
func KeyLabel(principal string) string { return LabelPrefix + principal }

// NewSeed returns a fresh random seed; the caller imports it into the
// token and clears it.
func NewSeed() ([]byte, error) {
	s := make([]byte, SeedBytes)
	if _, err := rand.Read(s); err != nil {
		return nil, err
	}
	return s, nil
}

// URI is the otpauth:// URI an authenticator app reads (Key Uri Format):
// otpauth://totp/ISSUER:ACCOUNT?secret=BASE32&issuer=ISSUER&algorithm=SHA1&digits=6&period=30.
// It holds the seed: show it once, never log or store it.
func URI(issuer, account string, seed []byte) string {
	secret := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(seed)
	q := url.Values{"secret": {secret}, "issuer": {issuer}, "algorithm": {"SHA1"}, "digits": {"6"}, "period": {"30"}}
	return "otpauth://totp/" + url.PathEscape(issuer+":"+account) + "?" + q.Encode()
}

var codeRe = regexp.MustCompile(`^[0-9]{6}$`)

// State is a principal's verification state at <path>/<principal> in Vault.
type State struct {
	LastStep    uint64    `json:"last_step"`    // the last step accepted: it and older ones are refused
	Failures    int       `json:"failures"`     // wrong codes since WindowStart
	WindowStart time.Time `json:"window_start"` // start of the failure window
	LockedUntil time.Time `json:"locked_until,omitzero"`
}

// KV is the Vault KV version 2 store of the state (orders.KV in the
// daemon); Write with cas returns an error matching ErrCAS on a conflict.
type KV interface {
	Read(ctx context.Context, path string) ([]byte, int, error)
	Write(ctx context.Context, path string, data any, cas int) (int, error)
}

// Verifier checks codes against devices keys and the shared state.
type Verifier struct {
	Device Device
	KV     KV
	Path   string // folder in the KV mount, e.g. "custody/mfa"
	// IsConflict recognizes Write's check-and-set conflict
	// (errors.Is(err, orders.ErrCASConflict) in the daemon).
	IsConflict func(error) bool
	// NotFound recognizes the device's "no such key" (errors.Is(err,
	// hsm.ErrNotFound) in the daemon): the principal is not enrolled.
	NotFound func(error) bool
}

// casAttempts bounds the check-and-set retries of one Verify.
const casAttempts = 8

// Verify checks code for principal at now. nil: accepted, and its step is
// recorded so that it is never accepted again. Otherwise ErrInvalid (wrong
// code, counted), ErrReplay (a step already used; counted too), ErrLocked
// (MaxFailures within FailureWindow: refused without looking at the code
// until the lock ends), ErrNotEnrolled, or ErrUnavailable (Vault: fail closed).
func (v *Verifier) Verify(ctx context.Context, principal, code string, now time.Time) error {
	for range casAttempts {
		err := v.verifyOnce(ctx, principal, code, now)
		if errors.Is(err, errRetry) {
			continue
		}
		return err
	}
	return fmt.Errorf("%w: the state of %q kept changing", ErrUnavailable, principal)
}

var errRetry = errors.New("retry")

func (v *Verifier) verifyOnce(ctx context.Context, principal, code string, now time.Time) error {
	path := v.Path + "/" + principal
	raw, version, err := v.KV.Read(ctx, path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	var st State
	if raw != nil {
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("%w: state of %q does not parse: %v", ErrUnavailable, principal, err)
		}
	} else if version > 0 {
		return fmt.Errorf("%w: state of %q was deleted", ErrUnavailable, principal)
	}
	if now.Before(st.LockedUntil) {
		return fmt.Errorf("%w: until %s", ErrLocked, st.LockedUntil.UTC().Format(time.RFC3339))
	}
	matched, verr := v.match(ctx, principal, code, now, st.LastStep)
	if verr != nil && !errors.Is(verr, ErrInvalid) {
		return verr
	}
	if verr == nil {
		st.LastStep, st.Failures, st.WindowStart, st.LockedUntil = matched, 0, time.Time{}, time.Time{}
	} else {
		if st.Failures == 0 || now.Sub(st.WindowStart) > FailureWindow {
			st.Failures, st.WindowStart = 0, now
		}
		st.Failures++
		if st.Failures >= MaxFailures {
			st.LockedUntil = now.Add(LockFor)
		}
	}
	if _, err := v.KV.Write(ctx, path, st, version); err != nil {
		if v.IsConflict != nil && v.IsConflict(err) {
			return errRetry
		}
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return verr
}

// match returns the step of now-Skew..now+Skew whose code is code, after
// last; ErrReplay for a match at or before last, ErrInvalid for none.
func (v *Verifier) match(ctx context.Context, principal, code string, now time.Time, last uint64) (uint64, error) {
	if !codeRe.MatchString(code) {
		return 0, fmt.Errorf("%w: want %d digits", ErrInvalid, Digits)
	}
	s := Step(now)
	replayed := false
	for d := -Skew; d <= Skew; d++ {
		step := uint64(int64(s) + int64(d))
		want, err := Code(ctx, v.Device, KeyLabel(principal), step, Digits)
		if err != nil {
			if v.NotFound != nil && v.NotFound(err) {
				return 0, fmt.Errorf("%w: %q", ErrNotEnrolled, principal)
			}
			return 0, err
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			if step <= last {
				replayed = true
				continue
			}
			return step, nil
		}
	}
	if replayed {
		return 0, ErrReplay
	}
	return 0, ErrInvalid
}

// Keys is the device's side of enrollment (*hsm.Token).
type Keys interface {
	Device
	ImportHMACKey(ctx context.Context, label string, secret []byte) error
	DestroyHMACKey(ctx context.Context, label string) error
}

// Service enrolls, revokes and verifies principals' factors.
type Service struct {
	Verifier
	Keys   Keys
	Issuer string // shown by authenticator apps, e.g. "custody"
}

// Enroll generates a seed for principal, imports it into the token as its
// non-extractable HMAC key, and returns the otpauth:// URI that carries it,
// to be shown once. The seed exists in this process's memory only between
// its generation and the import (cleared after; the URI string, which Go
// cannot clear, lives until the answer is written and collected). A
// principal already enrolled is the device's ErrExists: revoke first.
func (s *Service) Enroll(ctx context.Context, principal string) (string, error) {
	seed, err := NewSeed()
	if err != nil {
		return "", err
	}
	defer clear(seed)
	if err := s.Keys.ImportHMACKey(ctx, KeyLabel(principal), seed); err != nil {
		return "", err
	}
	return URI(s.Issuer, principal, seed), nil
}

// Revoke destroys principal's seed key; its codes stop working at once.
func (s *Service) Revoke(ctx context.Context, principal string) error {
	return s.Keys.DestroyHMACKey(ctx, KeyLabel(principal))
}
