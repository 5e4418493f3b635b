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
// as an otpauth:// URI), confirmation, listing and revocation. The server asks for a code where the
// policy's second_factor section says (internal/server/mfa.go).
//
// Enrollment has two ways. An admin enrolls a principal (Enroll): the
// factor is usable at once. A principal enrolls itself (StartSelf): the seed
// key is created under a pending label, custody/mfa-pending/PRINCIPAL/ID,
// which Verify never looks at, and becomes the principal's factor only when
// another principal with the admin role confirms that enrollment by its ID
// (Confirm relabels the key on the device to custody/mfa/PRINCIPAL). The
// token is thus the one record of who is enrolled and in which state (List
// reads labels, never values); a fleet sharing a token partition shares it.
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
	"slices"
	"strings"
	"time"
)

// TOTP parameters (RFC 6238 defaults; what authenticator apps expect).
const (
	Period      = 30 * time.Second
	Digits      = 6
	SeedBytes   = 20 // 160 bits, RFC 4226's recommendation for SHA-1
	Skew        = 1  // steps accepted on each side of now
	LabelPrefix = "custody/mfa/"
	// PendingPrefix labels self-enrolled keys waiting for confirmation:
	// PendingPrefix + principal + "/" + enrollment id.
	PendingPrefix = "custody/mfa-pending/"
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
	// ErrEnrolled: the principal already has a factor, active or pending
	// (revoke it first).
	ErrEnrolled = errors.New("mfa: principal already has a factor")
	// ErrNoEnrollment: nothing to revoke, or no pending enrollment of that
	// principal with that id to confirm.
	ErrNoEnrollment = errors.New("mfa: no such enrollment")
	// ErrSelfConfirm: a principal tried to confirm its own enrollment.
	ErrSelfConfirm = errors.New("mfa: a principal cannot confirm its own enrollment")
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
	// IsExists recognizes the device's "label already used" (errors.Is(err,
	// hsm.ErrExists) in the daemon); enrollment turns it into ErrEnrolled.
	IsExists func(error) bool
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

// Keys is the device's side of enrollment (*hsm.Token). ImportHMACKey
// makes a key that can never be relabelled; ImportRelabelableHMACKey one
// that RelabelHMACKey can move (both sensitive and non-extractable);
// HMACKeyLabels lists labels by prefix. A used label is an error matching
// the device's ErrExists, a missing one its ErrNotFound (Verifier.NotFound).
type Keys interface {
	Device
	ImportHMACKey(ctx context.Context, label string, secret []byte) error
	ImportRelabelableHMACKey(ctx context.Context, label string, secret []byte) error
	RelabelHMACKey(ctx context.Context, from, to string) error
	DestroyHMACKey(ctx context.Context, label string) error
	HMACKeyLabels(ctx context.Context, prefix string) ([]string, error)
}

// Service enrolls, confirms, lists, revokes and verifies principals'
// factors. Its methods are safe for concurrent use as far as the device
// is (an enrollment's check that none exists and its import are two
// device calls: two enrollments of one principal racing on two daemons
// can leave it with an active and a pending key; revoke removes both).
type Service struct {
	Verifier
	Keys   Keys
	Issuer string // shown by authenticator apps, e.g. "custody"
}

// Enrollment is one principal's factor as List reports it: never a seed.
type Enrollment struct {
	Principal string
	Pending   bool   // self-enrolled, waiting for an admin's confirmation
	ID        string // the pending enrollment's id; "" when active
}

// Enroll (by an admin) generates a seed for principal, imports it into the
// token as its non-extractable HMAC key, usable at once, and returns the
// otpauth:// URI that carries it, to be shown once. The seed exists in
// this process's memory only between its generation and the import
// (cleared after; the URI string, which Go cannot clear, lives until the
// answer is written and collected). A principal with a factor, active or
// pending, is ErrEnrolled: revoke first.
func (s *Service) Enroll(ctx context.Context, principal string) (string, error) {
	if err := s.none(ctx, principal); err != nil {
		return "", err
	}
	seed, err := NewSeed()
	if err != nil {
		return "", err
	}
	defer clear(seed)
	if err := s.Keys.ImportHMACKey(ctx, KeyLabel(principal), seed); err != nil {
		return "", s.exists(principal, err)
	}
	return URI(s.Issuer, principal, seed), nil
}

// StartSelf is a principal's own enrollment: as Enroll, but the key is
// pending (PendingPrefix) and satisfies no requirement until Confirm. It
// returns the URI (shown once) and the enrollment's id, which the
// principal gives the confirming admin out of band, so that the admin
// confirms that enrollment and no other (one made by someone else with
// the principal's Unix account has another id).
func (s *Service) StartSelf(ctx context.Context, principal string) (uri, id string, err error) {
	if err := s.none(ctx, principal); err != nil {
		return "", "", err
	}
	id, err = newEnrollmentID()
	if err != nil {
		return "", "", err
	}
	seed, err := NewSeed()
	if err != nil {
		return "", "", err
	}
	defer clear(seed)
	if err := s.Keys.ImportRelabelableHMACKey(ctx, pendingLabel(principal, id), seed); err != nil {
		return "", "", s.exists(principal, err)
	}
	return URI(s.Issuer, principal, seed), id, nil
}

// Confirm makes principal's pending enrollment id its factor, as admin by
// (the confirming principal): by == principal is ErrSelfConfirm; no such
// pending enrollment is ErrNoEnrollment; an active factor already there is
// ErrEnrolled.
func (s *Service) Confirm(ctx context.Context, by, principal, id string) error {
	if by == principal {
		return fmt.Errorf("%w: %q", ErrSelfConfirm, principal)
	}
	if !idRe.MatchString(id) {
		return fmt.Errorf("%w: %q is not an enrollment id", ErrNoEnrollment, id)
	}
	err := s.Keys.RelabelHMACKey(ctx, pendingLabel(principal, id), KeyLabel(principal))
	if err != nil && s.NotFound != nil && s.NotFound(err) {
		return fmt.Errorf("%w: %q has no pending enrollment %s", ErrNoEnrollment, principal, id)
	}
	return s.exists(principal, err)
}

// List returns every enrollment on the token, active and pending, sorted
// by principal (labels only; a label that is not a principal's is skipped).
func (s *Service) List(ctx context.Context) ([]Enrollment, error) {
	var out []Enrollment
	active, err := s.Keys.HMACKeyLabels(ctx, LabelPrefix)
	if err != nil {
		return nil, err
	}
	for _, l := range active {
		if p := strings.TrimPrefix(l, LabelPrefix); principalRe.MatchString(p) {
			out = append(out, Enrollment{Principal: p})
		}
	}
	pending, err := s.Keys.HMACKeyLabels(ctx, PendingPrefix)
	if err != nil {
		return nil, err
	}
	for _, l := range pending {
		p, id, ok := strings.Cut(strings.TrimPrefix(l, PendingPrefix), "/")
		if ok && principalRe.MatchString(p) && idRe.MatchString(id) {
			out = append(out, Enrollment{Principal: p, Pending: true, ID: id})
		}
	}
	slices.SortFunc(out, func(a, b Enrollment) int { return strings.Compare(a.Principal, b.Principal) })
	return out, nil
}

// Revoke destroys principal's factor, active and pending: its codes stop
// working at once. Nothing to destroy is ErrNoEnrollment. Its replay and
// lockout state in Vault is kept: a new seed's codes are refused for the
// steps already used (at most the current one) and a lock runs out.
func (s *Service) Revoke(ctx context.Context, principal string) error {
	labels, err := s.labels(ctx, principal)
	if err != nil {
		return err
	}
	if len(labels) == 0 {
		return fmt.Errorf("%w: %q has no factor", ErrNoEnrollment, principal)
	}
	for _, l := range labels {
		if err := s.Keys.DestroyHMACKey(ctx, l); err != nil && (s.NotFound == nil || !s.NotFound(err)) {
			return err
		}
	}
	return nil
}

// labels are principal's key labels on the token, active and pending.
func (s *Service) labels(ctx context.Context, principal string) ([]string, error) {
	var out []string
	for _, prefix := range []string{KeyLabel(principal), PendingPrefix + principal + "/"} {
		ls, err := s.Keys.HMACKeyLabels(ctx, prefix)
		if err != nil {
			return nil, err
		}
		for _, l := range ls {
			if l == KeyLabel(principal) || strings.HasPrefix(l, PendingPrefix) {
				out = append(out, l)
			}
		}
	}
	return out, nil
}

// none is ErrEnrolled when principal has a factor, active or pending.
func (s *Service) none(ctx context.Context, principal string) error {
	if !principalRe.MatchString(principal) {
		return fmt.Errorf("mfa: %q is not a principal name", principal)
	}
	ls, err := s.labels(ctx, principal)
	if err != nil {
		return err
	}
	if len(ls) > 0 {
		return fmt.Errorf("%w: %q (revoke it first: custodyctl mfa revoke %s)", ErrEnrolled, principal, principal)
	}
	return nil
}

// exists turns the device's "label in use" into ErrEnrolled.
func (s *Service) exists(principal string, err error) error {
	if err != nil && s.IsExists != nil && s.IsExists(err) {
		return fmt.Errorf("%w: %q: %w", ErrEnrolled, principal, err)
	}
	return err
}

func pendingLabel(principal, id string) string { return PendingPrefix + principal + "/" + id }

// principalRe is the policy's principal name syntax; idRe an enrollment id.
var (
	principalRe = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)
	idRe        = regexp.MustCompile(`^[A-Z2-7]{4}-[A-Z2-7]{4}$`)
)

// newEnrollmentID is 40 random bits in base32, XXXX-XXXX: read aloud
// from the principal to the admin.
func newEnrollmentID() (string, error) {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	e := base32.StdEncoding.EncodeToString(b[:])
	return e[:4] + "-" + e[4:], nil
}
