package compliance

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// ErrRefused is matched by every refusal of Check.
var ErrRefused = errors.New("participant status refuses")

// Refusals, in the order Check tests them.
var (
	ErrSuspended = refused("participant suspended")
	ErrSanctions = refused("sanctions screening not clear")
	ErrKYC       = refused("KYC/KYB not verified")
	ErrApproval  = refused("regulatory approval missing or expired")
)

// ErrUnavailable: the status could not be read from Vault and the cached
// copy, if any, is older than Config.MaxStale. The caller refuses.
var ErrUnavailable = errors.New("participant status unavailable")

// ErrConflict: a change named another version than the current one (two
// reviewers, or a stale read); nothing was written.
var ErrConflict = errors.New("participant status changed since it was read")

type sentinel struct{ msg string }

func (s *sentinel) Error() string        { return s.msg }
func (s *sentinel) Is(target error) bool { return target == ErrRefused }

func refused(msg string) error { return &sentinel{msg} }

// Requirement is what a policy asks of a participant's status for one
// operation. The zero Requirement asks nothing but that the participant
// is not suspended, which every check asks.
type Requirement struct {
	KYC            bool // kyc verified and not expired
	KYB            bool // kyb verified and not expired
	SanctionsClear bool // the last screening is "clear"
	// Approval lists the jurisdictions whose regulatory approval is
	// accepted ("*": any); empty = no approval needed.
	Approval []string
}

// Merge is the requirement asking everything r or o asks.
func (r Requirement) Merge(o Requirement) Requirement {
	out := Requirement{KYC: r.KYC || o.KYC, KYB: r.KYB || o.KYB, SanctionsClear: r.SanctionsClear || o.SanctionsClear}
	switch {
	case len(r.Approval) == 0:
		out.Approval = slices.Clone(o.Approval)
	case len(o.Approval) == 0:
		out.Approval = slices.Clone(r.Approval)
	case slices.Contains(r.Approval, "*"):
		out.Approval = slices.Clone(o.Approval)
	case slices.Contains(o.Approval, "*"):
		out.Approval = slices.Clone(r.Approval)
	default:
		// Both name jurisdictions: only those both accept.
		for _, j := range r.Approval {
			if slices.Contains(o.Approval, j) {
				out.Approval = append(out.Approval, j)
			}
		}
		if len(out.Approval) == 0 {
			out.Approval = []string{"-"} // no jurisdiction satisfies both: nothing matches
		}
	}
	return out
}

// Check decides req for participant id against r (nil: no record) at now.
// It returns nil, or the first refusal in this order: ErrSuspended (always
// checked), ErrSanctions, ErrKYC (KYC, then KYB), ErrApproval. The
// messages name the participant and what is missing, never the
// suspension's reason or the approval's reference.
func Check(id string, r *Record, req Requirement, now time.Time) error {
	if r == nil {
		r = &Record{}
	}
	if r.Suspended {
		return fmt.Errorf("%w: participant %q is suspended; its compliance team must lift the suspension", ErrSuspended, id)
	}
	if req.SanctionsClear && r.Sanctions != SanctionsClear {
		what := "has no clear sanctions screening on record"
		if r.Sanctions == SanctionsHit {
			what = "has a sanctions hit"
		}
		return fmt.Errorf("%w: participant %q %s", ErrSanctions, id, what)
	}
	if req.KYC && !r.KYC.verified(now) {
		return fmt.Errorf("%w: participant %q: KYC is %s", ErrKYC, id, r.KYC.describe(now))
	}
	if req.KYB && !r.KYB.verified(now) {
		return fmt.Errorf("%w: participant %q: KYB is %s", ErrKYC, id, r.KYB.describe(now))
	}
	if len(req.Approval) > 0 {
		a := r.RegulatoryApproval
		switch {
		case a == nil:
			return fmt.Errorf("%w: participant %q has no regulatory approval on record", ErrApproval, id)
		case !now.Before(a.Expires):
			return fmt.Errorf("%w: participant %q: its regulatory approval expired %s", ErrApproval, id, a.Expires.UTC().Format(time.RFC3339))
		case !slices.Contains(req.Approval, "*") && !slices.Contains(req.Approval, a.Jurisdiction):
			return fmt.Errorf("%w: participant %q: its regulatory approval is from %s; the policy accepts %v", ErrApproval, id, a.Jurisdiction, req.Approval)
		}
	}
	return nil
}

func (v *Verification) describe(now time.Time) string {
	switch {
	case v == nil:
		return "not on record"
	case v.State == Verified && v.Expires != nil && !now.Before(*v.Expires):
		return "expired (" + v.Expires.UTC().Format(time.RFC3339) + ")"
	}
	return v.State
}
