package compliance

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// FormatVersion is the version of the stored document (Stored.Format).
const FormatVersion = 1

// Verification states of KYC and KYB.
const (
	Verified = "verified"
	Pending  = "pending"
	Expired  = "expired"
)

// Sanctions screening results.
const (
	SanctionsClear = "clear"
	SanctionsHit   = "hit"
)

// Limits of a record's strings.
const (
	MaxReason    = 512 // Change.Reason, Record.SuspendedReason
	MaxReference = 128 // Change.Reference, Approval.Reference
	MaxFlags     = 32
	MaxDocument  = 16 << 10 // a stored document or a PUT body's record
)

// Record is a participant's compliance status, as the compliance team sets
// it: always a whole record (a change replaces it). Every member is
// optional; an absent check is unknown, and an unknown check meets no
// requirement.
type Record struct {
	KYC                *Verification `json:"kyc,omitempty"`
	KYB                *Verification `json:"kyb,omitempty"`
	RegulatoryApproval *Approval     `json:"regulatory_approval,omitempty"`
	// Sanctions is the last screening's result: "clear" or "hit"; "" is
	// not screened.
	Sanctions string `json:"sanctions,omitempty"`
	// Suspended participants can neither be sealed for nor decrypt
	// (whatever the policy says); SuspendedReason is required with it and
	// only with it. Neither is ever shown to an application.
	Suspended       bool   `json:"suspended,omitempty"`
	SuspendedReason string `json:"suspended_reason,omitempty"`
	// Flags are the compliance team's own markers ([a-z][a-z0-9_.-]*, at
	// most 32): informational, no policy decides on them in this version.
	Flags []string `json:"flags,omitempty"`
}

// Verification is a KYC or KYB check: its state and, for a verified one,
// when it expires (a verified check past its expiry counts as expired).
type Verification struct {
	State   string     `json:"state"`
	Expires *time.Time `json:"expires,omitempty"`
}

// Approval is a regulatory approval: the jurisdiction that granted it
// (ISO 3166 code, "EU", or a subdivision such as "US-NY"), the regulator's
// reference and when it expires.
type Approval struct {
	Jurisdiction string    `json:"jurisdiction"`
	Reference    string    `json:"reference"`
	Expires      time.Time `json:"expires"`
}

// Stored is the document at <path>/<id> in Vault: the record and who set
// it, why, on whose reference. Its KV version is the record's version.
type Stored struct {
	Format      int       `json:"format"`
	Participant string    `json:"participant"`
	Status      Record    `json:"status"`
	Updated     time.Time `json:"updated"`
	By          string    `json:"by"` // the principal that set it
	Reason      string    `json:"reason"`
	Reference   string    `json:"reference"`
}

// ErrInvalid is matched by every error of a record or document that does
// not parse or breaks a rule.
var ErrInvalid = errors.New("invalid participant status")

var (
	flagRe         = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)
	jurisdictionRe = regexp.MustCompile(`^[A-Z]{2,3}(-[A-Z0-9]{1,3})?$`)
)

// ParseRecord reads a record strictly: one JSON object, no unknown fields,
// no trailing data, at most MaxDocument bytes, and Validate.
func ParseRecord(data []byte) (Record, error) {
	var r Record
	if err := strictJSON(data, &r); err != nil {
		return Record{}, err
	}
	return r, r.Validate()
}

// ParseStored reads a stored document as strictly as ParseRecord, and
// checks that it names participant id (a document copied under another id
// is refused).
func ParseStored(data []byte, id string) (Stored, error) {
	var s Stored
	if err := strictJSON(data, &s); err != nil {
		return Stored{}, err
	}
	switch {
	case s.Format != FormatVersion:
		return Stored{}, fmt.Errorf("%w: format %d, this build reads %d", ErrInvalid, s.Format, FormatVersion)
	case s.Participant != id:
		return Stored{}, fmt.Errorf("%w: the document names participant %q, stored under %q", ErrInvalid, s.Participant, id)
	case s.Updated.IsZero():
		return Stored{}, fmt.Errorf("%w: updated: required", ErrInvalid)
	}
	if err := validText("by", s.By, 64, true); err != nil {
		return Stored{}, err
	}
	if err := ValidateChange(s.Reason, s.Reference); err != nil {
		return Stored{}, err
	}
	return s, s.Status.Validate()
}

func strictJSON(data []byte, v any) error {
	if len(data) > MaxDocument {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalid, len(data), MaxDocument)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	return nil
}

// Validate checks the record's rules; an error names the field and
// matches ErrInvalid.
func (r Record) Validate() error {
	for name, v := range map[string]*Verification{"kyc": r.KYC, "kyb": r.KYB} {
		if v == nil {
			continue
		}
		switch v.State {
		case Verified:
			if v.Expires == nil {
				return fmt.Errorf("%w: %s.expires: required for a verified check (when it must be renewed)", ErrInvalid, name)
			}
		case Pending, Expired:
		default:
			return fmt.Errorf("%w: %s.state: %q, want verified, pending or expired", ErrInvalid, name, v.State)
		}
	}
	if a := r.RegulatoryApproval; a != nil {
		if !jurisdictionRe.MatchString(a.Jurisdiction) {
			return fmt.Errorf("%w: regulatory_approval.jurisdiction: %q, want an ISO 3166 code such as CH, EU or US-NY", ErrInvalid, a.Jurisdiction)
		}
		if err := validText("regulatory_approval.reference", a.Reference, MaxReference, true); err != nil {
			return err
		}
		if a.Expires.IsZero() {
			return fmt.Errorf("%w: regulatory_approval.expires: required", ErrInvalid)
		}
	}
	switch r.Sanctions {
	case "", SanctionsClear, SanctionsHit:
	default:
		return fmt.Errorf("%w: sanctions: %q, want clear or hit (omit it when not screened)", ErrInvalid, r.Sanctions)
	}
	if r.Suspended {
		if err := validText("suspended_reason", r.SuspendedReason, MaxReason, true); err != nil {
			return err
		}
	} else if r.SuspendedReason != "" {
		return fmt.Errorf("%w: suspended_reason: only with suspended true", ErrInvalid)
	}
	if len(r.Flags) > MaxFlags {
		return fmt.Errorf("%w: flags: %d, at most %d", ErrInvalid, len(r.Flags), MaxFlags)
	}
	for i, f := range r.Flags {
		if !flagRe.MatchString(f) {
			return fmt.Errorf("%w: flags[%d]: %q, want [a-z][a-z0-9_.-]*, at most 64", ErrInvalid, i, f)
		}
		if slices.Contains(r.Flags[:i], f) {
			return fmt.Errorf("%w: flags[%d]: %q appears twice", ErrInvalid, i, f)
		}
	}
	return nil
}

// ValidateChange checks a change's reason and reference: both required,
// printable, at most MaxReason and MaxReference bytes.
func ValidateChange(reason, reference string) error {
	if err := validText("reason", reason, MaxReason, true); err != nil {
		return err
	}
	return validText("reference", reference, MaxReference, true)
}

// validText: valid UTF-8, no control or format characters (no terminal
// escapes, no bidi overrides), trimmed, at most max bytes.
func validText(field, s string, max int, required bool) error {
	switch {
	case s == "" && required:
		return fmt.Errorf("%w: %s: required", ErrInvalid, field)
	case len(s) > max:
		return fmt.Errorf("%w: %s: %d bytes, at most %d", ErrInvalid, field, len(s), max)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s: not UTF-8", ErrInvalid, field)
	case strings.TrimSpace(s) != s:
		return fmt.Errorf("%w: %s: leading or trailing space", ErrInvalid, field)
	}
	for _, c := range s {
		if unicode.IsControl(c) || unicode.Is(unicode.Cf, c) {
			return fmt.Errorf("%w: %s: control or format character %U", ErrInvalid, field, c)
		}
	}
	return nil
}

// verified reports whether v is verified and not expired at now.
func (v *Verification) verified(now time.Time) bool {
	return v != nil && v.State == Verified && v.Expires != nil && now.Before(*v.Expires)
}
