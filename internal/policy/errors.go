package policy

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers branch on these with errors.Is; the message of a
// returned error adds the detail (which principal, participant, field) for
// logs and for the client's message.
var (
	// ErrInvalid: the policy file does not parse or does not validate. Every
	// such error is a *FieldError.
	ErrInvalid = errors.New("policy: invalid")
	// ErrUnsafeFile: Load refused the file because of its type, mode or owner.
	ErrUnsafeFile = errors.New("policy: unsafe policy file")

	// ErrUnknownCaller: no principal, or more than one, covers the caller.
	ErrUnknownCaller = errors.New("policy: unknown caller")
	// ErrDenied: the principal may not do this. Every more specific denial
	// below also satisfies errors.Is(err, ErrDenied).
	ErrDenied = errors.New("policy: denied")
	// ErrNotParticipant: the principal may not act as that participant.
	ErrNotParticipant = fmt.Errorf("%w: not allowed to act as this participant", ErrDenied)
	// ErrPurpose: the purpose is unknown, or not granted for that participant.
	ErrPurpose = fmt.Errorf("%w: purpose not allowed", ErrDenied)
	// ErrOutsideWindow: a grant would allow the request, but none of its time
	// windows is open now.
	ErrOutsideWindow = fmt.Errorf("%w: outside the allowed time window", ErrDenied)
	// ErrFieldDenied: a requested field is not visible to the purpose.
	ErrFieldDenied = fmt.Errorf("%w: field not visible for this purpose", ErrDenied)
	// ErrSealDenied: no seal_for grant lets the principal seal for that
	// participant (under that transaction id).
	ErrSealDenied = fmt.Errorf("%w: not allowed to seal for this participant", ErrDenied)
)

// FieldError is one problem in a policy file. Path names the offending JSON
// value, e.g. "principals[2].act_as[0].purposes[1]"; it is empty for the
// document as a whole. FieldError satisfies errors.Is(err, ErrInvalid).
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Is reports whether target is ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }
